"""Peers of the FP8 dense prefill: FlashAttention-3's FP8 path (`fa3-fwd`
wheel, `flash_attn_func` on float8_e4m3fn Q/K/V with f32 descales) and its
bf16 path, one sequence of 16384 tokens, 32 query heads over 8 KV heads of
128, scale 1/sqrt(128); no mask and causal. The bench's case names
(`dense-prefill-16k-fp8`, `dense-prefill-16k-causal-fp8`).

Same timing as the other peer scripts (`timing.median_us`); TFLOP/s =
4 * 32 * 128 * visible pairs / time. The FP8 output is checked against the
bf16 path on the dequantized inputs (relative error of the whole output):
a peer that does not match is null in the map.

usage: python3 dense_prefill_fp8_torch.py OUT.json
needs: fa3-fwd (wheel)
"""
import json
import math
import sys

import torch

from timing import median_us

N, H, HKV, D = 16384, 32, 8, 128
SCALE = 1.0 / math.sqrt(D)


def main(out_path):
    import fa3_fwd_interface as fa3i

    torch.manual_seed(0)
    dev = "cuda"
    qf = torch.randn(1, N, H, D, device=dev) * 2
    kf = torch.randn(1, N, HKV, D, device=dev) * 2
    vf = torch.randn(1, N, HKV, D, device=dev) * 2
    q8, k8, v8 = (t.to(torch.float8_e4m3fn) for t in (qf, kf, vf))
    qb, kb, vb = (t.to(torch.bfloat16) for t in (q8, k8, v8))
    ones = torch.ones(1, HKV, device=dev, dtype=torch.float32)
    res = {}
    for case, causal in [("dense-prefill-16k-fp8", False), ("dense-prefill-16k-causal-fp8", True)]:
        pairs = N * N if not causal else N * (N + 1) / 2
        flops = 4 * H * D * pairs
        rec = {}
        fp8 = lambda: fa3i.flash_attn_func(q8, k8, v8, softmax_scale=SCALE, causal=causal,
                                           q_descale=ones, k_descale=ones, v_descale=ones)
        bf = lambda: fa3i.flash_attn_func(qb, kb, vb, softmax_scale=SCALE, causal=causal)
        o8 = fp8()
        o8 = o8[0] if isinstance(o8, tuple) else o8
        ob = bf()
        ob = ob[0] if isinstance(ob, tuple) else ob
        err = ((o8.float() - ob.float()).norm() / ob.float().norm()).item()
        for peer, fn in [("fa3-fp8", fp8), ("fa3-bf16", bf)]:
            us = median_us(fn, reps=10)
            rec[peer] = {"us": us, "tflops": flops / us / 1e6}
            print(f"{case:<32} {peer:<10} {us:9.1f} us {flops / us / 1e6:7.1f} TFLOP/s", flush=True)
        rec["fa3-fp8"]["rel_err_vs_bf16"] = err
        ok = err < 0.1
        res[case] = {"fa3-fp8": rec["fa3-fp8"]["us"] if ok else None, "fa3-bf16": rec["fa3-bf16"]["us"]}
        res["_records_" + case] = rec
    res["_gpu"] = torch.cuda.get_device_name()
    with open(out_path, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])

"""FlashInfer peer of the MSA decode attention: its paged decode kernel
(`BatchDecodeWithPagedKVCacheWrapper`, tensor cores) over the selected pages.

Each (sequence, KV head) becomes one FlashInfer request of 16 pages with one
KV head and `group` query heads; the pool is laid out for it (one KV head per
page, NHD) before timing, so this peer pays for no gather. Contexts are
multiples of 128, so every selected page is full. Same shapes and timing as
`msa_attention_torch.py` (`timing.median_us`).

usage: python3 msa_attention_flashinfer.py OUT.json [case ...]
needs: flashinfer-python and apache-tvm-ffi (kernels JIT-compile on first use)
"""
import json
import sys

import torch

from timing import median_us

D, TOPK, BLK = 128, 16, 128
dev = "cuda"

CASES = {
    "msa-decode-b64-32k": (64, 32 * 1024, 64, 4),
    "msa-decode-b1-128k": (1, 128 * 1024, 64, 4),
    "msa-decode-tp8": (128, 32 * 1024, 8, 1),
}


def run_case(batch, ctx, n_heads, n_kv):
    del ctx  # only the 16 selected pages per request are read
    import flashinfer

    group = n_heads // n_kv
    reqs = batch * n_kv
    # Selected pages only (16 per request): the rest of the context is never read.
    kv = torch.randn(reqs * TOPK, 2, BLK, 1, D, dtype=torch.bfloat16, device=dev)
    perm = torch.randperm(reqs * TOPK, device=dev, dtype=torch.int32)
    indptr = torch.arange(0, reqs * TOPK + 1, TOPK, dtype=torch.int32, device=dev)
    last = torch.full((reqs,), BLK, dtype=torch.int32, device=dev)
    q = torch.randn(reqs, group, D, dtype=torch.bfloat16, device=dev)
    ws = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
    w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD", use_tensor_cores=True)
    w.plan(indptr, perm, last, group, 1, D, BLK, q_data_type=torch.bfloat16,
           kv_data_type=torch.bfloat16, sm_scale=D ** -0.5)
    return median_us(lambda: w.run(q, kv))


if __name__ == "__main__":
    out = sys.argv[1]
    names = sys.argv[2:] or list(CASES)
    res = {}
    for n in names:
        try:
            res[n] = {"flashinfer-decode-tc": run_case(*CASES[n])}
        except Exception as e:  # a peer that cannot run is recorded, not fatal
            print(f"{n}: flashinfer failed: {e!r}", flush=True)
            res[n] = {"flashinfer-decode-tc": None}
        print(n, res[n], flush=True)
    json.dump(res, open(out, "w"), indent=1)

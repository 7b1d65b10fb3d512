"""Dense peers of the MSA prefill: causal `scaled_dot_product_attention` on
the same prompt (64 query heads over 4 KV heads, head_dim 128, bf16), which
block-sparse attention has to beat. Same timing as the other peer scripts.

usage: python3 msa_prefill_torch.py OUT.json [case ...]
"""
import json
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from timing import median_us

CASES = {"msa-prefill-8k": 8 * 1024, "msa-prefill-32k": 32 * 1024}
H, KVH, D = 64, 4, 128


def dense(n, backend):
    q = torch.randn(1, H, n, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, KVH, n, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, KVH, n, D, device="cuda", dtype=torch.bfloat16)
    # cuDNN and flash take GQA through repeated KV heads (made outside timing).
    k, v = k.repeat_interleave(H // KVH, 1), v.repeat_interleave(H // KVH, 1)

    def run():
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return median_us(run, reps=3, batches=3)


if __name__ == "__main__":
    out = sys.argv[1]
    res = {}
    for name in sys.argv[2:] or list(CASES):
        res[name] = {}
        for label, be in [("dense-sdpa-cudnn-causal", SDPBackend.CUDNN_ATTENTION),
                          ("dense-sdpa-flash-causal", SDPBackend.FLASH_ATTENTION)]:
            try:
                res[name][label] = dense(CASES[name], be)
            except Exception as e:  # recorded, not fatal
                print(f"{name} {label}: {e!r}", flush=True)
                res[name][label] = None
        print(name, res[name], flush=True)
    json.dump(res, open(out, "w"), indent=1)

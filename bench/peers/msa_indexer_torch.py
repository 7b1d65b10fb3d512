"""PyTorch peers of the MSA indexer, written as a user would: gather the
paged index-K, batched matmul, mask, block max, torch.topk.

Same shapes as `bench` (tests/src/bin/bench.rs): 4 index heads of 128, top-16,
init 0, local 1, page = block = 128 tokens, shuffled page table. Times are per
call: back-to-back calls between CUDA events, median of 5 batches. Also measures the bf16
tensor-core rate (a large torch.matmul) used as the prefill limit.

usage: python3 msa_indexer_torch.py OUT.json [case ...]
"""
import json
import sys

import torch

from timing import median_us

H, D, TOPK, BLK = 4, 128, 16, 128
SCALE = D ** -0.5
dev = "cuda"


def paged(seqlens):
    pages = [(s + BLK - 1) // BLK for s in seqlens]
    total, maxp = sum(pages), max(pages)
    pool = torch.randn(total, BLK, D, device=dev, dtype=torch.bfloat16)
    perm = torch.randperm(total, device=dev)
    lookup = torch.zeros(len(seqlens), maxp, dtype=torch.long, device=dev)
    nxt = 0
    for b, n in enumerate(pages):
        lookup[b, :n] = perm[nxt:nxt + n]
        nxt += n
    return pool, lookup, maxp


def decode_peer(seqlens, contiguous=False):
    """q: [B, H, D]; every sequence's key count seqlen; local block forced."""
    B = len(seqlens)
    pool, lookup, maxp = paged(seqlens)
    q = torch.randn(B, H, D, device=dev, dtype=torch.bfloat16)
    sl = torch.tensor(seqlens, device=dev)
    pos = torch.arange(maxp * BLK, device=dev)
    nblocks = (sl - 1) // BLK + 1
    kc = pool[lookup].view(B, maxp * BLK, D) if contiguous else None

    def run():
        k = kc if contiguous else pool[lookup].view(B, maxp * BLK, D)
        s = torch.bmm(q, k.transpose(1, 2)).float() * SCALE           # [B, H, keys]
        s = s.masked_fill(pos[None, None, :] >= sl[:, None, None], float("-inf"))
        blk = s.view(B, H, maxp, BLK).amax(-1)                          # [B, H, blocks]
        blk.scatter_(2, (nblocks - 1)[:, None, None].expand(B, H, 1), 1e29)
        return torch.topk(blk, min(TOPK, maxp), dim=-1).indices
    return median_us(run)


def prefill_peer(q_len, cache_len):
    keys = cache_len + q_len
    pool, lookup, maxp = paged([keys])
    q = torch.randn(H, q_len, D, device=dev, dtype=torch.bfloat16)
    qpos = cache_len + torch.arange(q_len, device=dev)
    pos = torch.arange(maxp * BLK, device=dev)
    causal = pos[None, :] > qpos[:, None]                               # [q, keys]
    local = (qpos // BLK)[None, :, None].expand(H, q_len, 1)

    def run():
        k = pool[lookup[0]].view(maxp * BLK, D)
        s = torch.matmul(q, k.t())                                      # [H, q, keys] bf16
        s = s.masked_fill(causal[None], float("-inf"))
        blk = s.view(H, q_len, maxp, BLK).amax(-1).float() * SCALE
        blk.scatter_(2, local, 1e29)
        return torch.topk(blk, min(TOPK, maxp), dim=-1).indices
    return median_us(run, reps=5)


def matmul_tflops():
    n = 8192
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    us = median_us(lambda: a @ b, reps=20)
    return 2 * n ** 3 / (us * 1e-6) / 1e12


CASES = {
    "idx-decode-b64-32k": lambda: {
        "torch-gather-bmm-topk": decode_peer([32 * 1024] * 64),
        "torch-bmm-topk-contiguous-keys": decode_peer([32 * 1024] * 64, contiguous=True),
    },
    "idx-decode-b1-128k": lambda: {
        "torch-gather-bmm-topk": decode_peer([128 * 1024]),
        "torch-bmm-topk-contiguous-keys": decode_peer([128 * 1024], contiguous=True),
    },
    "idx-prefill-8k": lambda: {"torch-gather-matmul-topk": prefill_peer(8 * 1024, 0)},
    "idx-prefill-chunk": lambda: {"torch-gather-matmul-topk": prefill_peer(4 * 1024, 60 * 1024)},
}

if __name__ == "__main__":
    out = sys.argv[1]
    names = sys.argv[2:] or list(CASES)
    res = {"_bf16_matmul_tflops": matmul_tflops(), "_torch": torch.__version__}
    print(f"bf16 matmul 8192^3: {res['_bf16_matmul_tflops']:.0f} TFLOP/s", flush=True)
    for n in names:
        res[n] = CASES[n]()
        torch.cuda.empty_cache()
        print(n, {k: round(v, 1) for k, v in res[n].items()}, flush=True)
    json.dump(res, open(out, "w"), indent=1)

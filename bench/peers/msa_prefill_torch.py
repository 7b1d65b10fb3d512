"""Peers of the MSA prefill (64 query heads over 4 KV heads, head_dim 128,
bf16, one prompt):

- `flex-attention-blockmask`: what a PyTorch user writes for MSA prefill:
  compiled `flex_attention` with a `BlockMask` (128 × 128 tiles) built from
  per-token selections drawn like the Rust bench's (each token: its own block
  plus up to 15 random earlier ones, per KV head) and a `mask_mod` that keeps
  exactly the selected, causally visible keys. The mask is built outside the
  timing; its density is recorded.
- dense causal `scaled_dot_product_attention` (cuDNN and flash) on the same
  prompt, which block-sparse attention has to beat.

Same timing as the other peer scripts.

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


def selections(n, topk=16):
    """bool [KVH, n, blocks]: each token's own block and up to topk - 1
    distinct random earlier blocks (the bench's distribution)."""
    nb = (n + 127) // 128
    t = torch.arange(n, device="cuda")
    own = t // 128
    blk = torch.arange(nb, device="cuda")
    r = torch.rand(KVH, n, nb, device="cuda")
    r = r.masked_fill(blk[None, None, :] >= own[None, :, None], -1.0)
    k = min(topk - 1, nb)
    top = r.topk(k, dim=-1)
    sel = torch.zeros(KVH, n, nb, dtype=torch.bool, device="cuda")
    sel.scatter_(-1, top.indices, top.values >= 0)
    sel[:, t, own] = True
    return sel


def flex(n):
    """Compiled flex_attention over a BlockMask built from the selections:
    a (128-query, 128-key) tile is visited when any query of the tile chose
    the key block (and it is causally visible); `mask_mod` keeps exactly the
    chosen, visible keys inside it. Built from block-level data
    (`BlockMask.from_kv_blocks`): `create_block_mask` would evaluate the
    per-token mask densely (32 GiB at 8K)."""
    from torch.nn.attention.flex_attention import BlockMask, flex_attention
    sel = selections(n)
    g = H // KVH
    nb = n // 128

    def mask_mod(b, h, qi, kv):
        return sel[h // g, qi, kv // 128] & (kv <= qi)

    tiles = sel.view(KVH, nb, 128, nb).any(2)
    tiles &= torch.ones(nb, nb, dtype=torch.bool, device="cuda").tril()
    tiles = tiles.repeat_interleave(g, 0)[None]  # [1, H, q blocks, kv blocks]
    kv_num = tiles.sum(-1, dtype=torch.int32)
    kv_idx = torch.argsort(tiles.to(torch.int8), dim=-1, descending=True, stable=True)
    bm = BlockMask.from_kv_blocks(kv_num, kv_idx.to(torch.int32), BLOCK_SIZE=128,
                                  mask_mod=mask_mod, seq_lengths=(n, n))
    q = torch.randn(1, H, n, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, KVH, n, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, KVH, n, D, device="cuda", dtype=torch.bfloat16)
    fa = torch.compile(flex_attention)

    def run():
        return fa(q, k, v, block_mask=bm, enable_gqa=True)
    us = median_us(run, reps=3, batches=3)
    dens = tiles.float().mean().item() * 100
    print(f"flex n={n}: {dens:.1f}% of all 128x128 tiles visited "
          f"(causal half: 50%)", flush=True)
    return us


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
        try:
            res[name]["flex-attention-blockmask"] = flex(CASES[name])
        except Exception as e:  # recorded, not fatal
            print(f"{name} flex: {e!r}", flush=True)
            res[name]["flex-attention-blockmask"] = None
        print(name, res[name], flush=True)
    json.dump(res, open(out, "w"), indent=1)

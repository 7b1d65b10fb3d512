"""PyTorch peers of MSA block-sparse attention decode, written as a user would:
gather the selected pages of the paged KV cache, then
torch.nn.functional.scaled_dot_product_attention.

Same shapes as `bench` (tests/src/bin/bench.rs): head_dim 128, bf16,
page = block = 128 tokens, top-16 selected blocks per (sequence, kv head),
shuffled page table, one query token per sequence (decode). The selected
blocks are distinct random block ids of the sequence, always including the
last one. KV cache laid out like MAX: kv_blocks [pages, 2 (K, V), 1 (layers),
128, n_kv_heads, 128]; d_indices [n_kv_heads, batch, topk] logical block ids.

The GQA group is folded into SDPA's query-length dimension: q becomes
[batch * n_kv, 1, group, 128] against K/V [batch * n_kv, 1, topk * 128, 128].
This is exact for decode, where all the group's heads share the keys and mask.

Times are per call: back-to-back calls between CUDA events, median of 5
batches. Also records the bytes each case must read ("_bytes_<case>": the
selected K and V, plus q and the output) and the device-to-device copy
bandwidth ("_copy_gbs", bytes read + written) so bandwidths can be compared.

usage: python3 msa_attention_torch.py OUT.json [case ...]
"""
import json
import sys

import torch

from timing import median_us
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

D, TOPK, BLK = 128, 16, 128
SCALE = D ** -0.5
dev = "cuda"


def inputs(seqlens, H, KVH):
    """Paged KV cache, shuffled page table, q and the selected block ids."""
    B = len(seqlens)
    pages = [(s + BLK - 1) // BLK for s in seqlens]
    total, maxp = sum(pages), max(pages)
    assert min(pages) >= TOPK, "every sequence needs at least topk blocks"
    kv_blocks = torch.randn(total, 2, 1, BLK, KVH, D, device=dev, dtype=torch.bfloat16)
    perm = torch.randperm(total, device=dev)
    lookup = torch.zeros(B, maxp, dtype=torch.long, device=dev)
    nxt = 0
    for b, n in enumerate(pages):
        lookup[b, :n] = perm[nxt:nxt + n]
        nxt += n
    sl = torch.tensor(seqlens, device=dev)
    nb = (sl + BLK - 1) // BLK                                         # [B] blocks
    # topk - 1 distinct random ids among blocks 0 .. nb-2, plus the last block
    r = torch.rand(KVH, B, maxp, device=dev)
    r = r.masked_fill(torch.arange(maxp, device=dev) >= (nb - 1)[None, :, None], 2.0)
    others = r.topk(TOPK - 1, dim=-1, largest=False).indices          # [KVH, B, TOPK-1]
    last = (nb - 1)[None, :, None].expand(KVH, B, 1)
    d_indices = torch.cat([others, last], -1).int()                    # [KVH, B, TOPK]
    q = torch.randn(B, H, D, device=dev, dtype=torch.bfloat16)
    return kv_blocks, lookup, sl, d_indices, q


def gather(kv_blocks, lookup, d_indices, which, barange, kh):
    """K (which=0) or V (which=1) of the selected pages: [B*KVH, 1, TOPK*BLK, D].
    barange = arange(B)[:, None, None], kh = arange(KVH)[None, :, None]."""
    KVH, B, _ = d_indices.shape
    phys = lookup[barange, d_indices.permute(1, 0, 2)]                 # [B, KVH, TOPK]
    # kv_blocks[:, which, 0] is [pages, BLK, KVH, D]; the two index tensors (dims
    # 0 and 2) are not adjacent, so their broadcast shape comes first:
    # [B, KVH, TOPK] + [BLK, D]
    x = kv_blocks[:, which, 0][phys, :, kh]                            # [B, KVH, TOPK, BLK, D]
    return x.reshape(B * KVH, 1, TOPK * BLK, D)


def check(out, kv_blocks, lookup, sl, d_indices, q, G):
    """Max |out - ref| against an f32 loop reference on the first and last
    sequence (every kv head)."""
    KVH, B, _ = d_indices.shape
    err = 0.0
    for b in sorted({0, B - 1}):
        for kh in range(KVH):
            blks = d_indices[kh, b].tolist()
            pg = [lookup[b, x].item() for x in blks]
            k = torch.cat([kv_blocks[p, 0, 0, :, kh] for p in pg]).float()   # [TOPK*BLK, D]
            v = torch.cat([kv_blocks[p, 1, 0, :, kh] for p in pg]).float()
            pos = torch.cat([torch.arange(x * BLK, (x + 1) * BLK, device=dev) for x in blks])
            qq = q[b, kh * G:(kh + 1) * G].float()                       # [G, D]
            s = (qq @ k.t()) * SCALE
            s = s.masked_fill(pos[None, :] >= sl[b], float("-inf"))
            ref = torch.softmax(s, -1) @ v
            got = out[b, kh * G:(kh + 1) * G].float()
            err = max(err, (got - ref).abs().max().item())
    return err


def decode_case(B, seqlen, H, KVH):
    G = H // KVH
    kv_blocks, lookup, sl, d_indices, q = inputs([seqlen] * B, H, KVH)
    qf = q.view(B * KVH, 1, G, D)            # heads kh*G .. (kh+1)*G share kv head kh
    # constant index helpers, made once outside the timed region
    barange = torch.arange(B, device=dev)[:, None, None]               # [B, 1, 1]
    kh = torch.arange(KVH, device=dev)[None, :, None]                  # [1, KVH, 1]
    cols = torch.arange(BLK, device=dev)
    res = {}

    # 1. what a user would write: gather + tail mask + SDPA, PyTorch picks the
    #    backend (a mask is given, so no flash). The seqlens of these cases are
    #    multiples of 128, so the mask is all true, but it is built and applied.
    def gather_sdpa():
        k = gather(kv_blocks, lookup, d_indices, 0, barange, kh)
        v = gather(kv_blocks, lookup, d_indices, 1, barange, kh)
        pos = d_indices.permute(1, 0, 2)[..., None] * BLK + cols        # [B, KVH, TOPK, BLK]
        # pos keeps the permuted strides of d_indices: reshape, not view
        mask = (pos < sl[:, None, None, None]).reshape(B * KVH, 1, 1, TOPK * BLK)
        o = F.scaled_dot_product_attention(qf, k, v, attn_mask=mask, scale=SCALE)
        return o.reshape(B, H, D)

    try:
        out = gather_sdpa()
        print(f"  torch-gather-sdpa: max err vs f32 reference {check(out, kv_blocks, lookup, sl, d_indices, q, G):.2e}",
              flush=True)
        res["torch-gather-sdpa"] = median_us(gather_sdpa)
    except Exception as e:  # noqa: BLE001
        print(f"  torch-gather-sdpa failed: {type(e).__name__}: {e}", flush=True)
        res["torch-gather-sdpa"] = None
    torch.cuda.empty_cache()

    # 2. K and V gathered before timing, contiguous; only SDPA is timed, cuDNN
    #    backend forced (flash if cuDNN refuses). No mask: the tail mask cannot be
    #    expressed without one, and it is not needed because the seqlens of these
    #    cases (32768, 131072) are multiples of 128, so every selected block is full.
    k = gather(kv_blocks, lookup, d_indices, 0, barange, kh).contiguous()
    v = gather(kv_blocks, lookup, d_indices, 1, barange, kh).contiguous()
    done = False
    for backend, name in ((SDPBackend.CUDNN_ATTENTION, "cudnn-sdpa-pregathered"),
                          (SDPBackend.FLASH_ATTENTION, "flash-sdpa-pregathered")):
        def sdpa():
            return F.scaled_dot_product_attention(qf, k, v, scale=SCALE)
        try:
            with sdpa_kernel(backend):
                o = sdpa().reshape(B, H, D)
                torch.cuda.synchronize()
                if res.get("torch-gather-sdpa") is not None:
                    print(f"  {name}: max |diff| vs torch-gather-sdpa "
                          f"{(o.float() - out.float()).abs().max().item():.2e}", flush=True)
                res[name] = median_us(sdpa)
            done = True
            break
        except Exception as e:  # noqa: BLE001
            print(f"  {name} failed: {type(e).__name__}: {e}", flush=True)
    if not done:
        res["cudnn-sdpa-pregathered"] = None
    return res


def case_bytes(B, H, KVH):
    """Selected K and V, plus q and the output."""
    return B * KVH * TOPK * BLK * D * 2 * 2 + 2 * B * H * D * 2


def copy_gbs():
    n = 1 << 30
    src = torch.ones(n, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    us = median_us(lambda: dst.copy_(src))
    del src, dst
    torch.cuda.empty_cache()
    return 2 * n / (us * 1e-6) / 1e9


SHAPES = {                       # name: (batch, seqlen_k, q heads, kv heads)
    "msa-decode-b64-32k": (64, 32 * 1024, 64, 4),
    "msa-decode-b1-128k": (1, 128 * 1024, 64, 4),
    "msa-decode-tp8": (128, 32 * 1024, 8, 1),
}

if __name__ == "__main__":
    out = sys.argv[1]
    names = sys.argv[2:] or list(SHAPES)
    torch.manual_seed(0)
    res = {"_copy_gbs": copy_gbs(), "_torch": torch.__version__}
    print(f"d2d copy 1 GiB: {res['_copy_gbs']:.0f} GB/s (read + write)", flush=True)
    for n in names:
        B, S, H, KVH = SHAPES[n]
        res[n] = decode_case(B, S, H, KVH)
        res["_bytes_" + n] = case_bytes(B, H, KVH)
        torch.cuda.empty_cache()
        line = {k: (None if v is None else
                    f"{v:.1f} us ({res['_bytes_' + n] / (v * 1e3):.0f} GB/s)")
                for k, v in res[n].items()}
        print(n, line, flush=True)
    json.dump(res, open(out, "w"), indent=1)

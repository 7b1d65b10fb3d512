"""Peers of the dense flash prefill: 32 query heads over 8 KV heads (GQA 4),
head_dim 128, bf16, scale 1/sqrt(128).

Cases (the Rust bench's names; one record per case per peer):

- `dense-prefill-16k`: one sequence of 16384 tokens, no mask.
- `dense-prefill-16k-causal`: the same, causal.
- `dense-prefill-8x2k`: 8 ragged (varlen) sequences of 2048, causal. SDPA
  takes them as a dense batch of 8 x 2048 (the same FLOPs).
- `dense-prefill-16k-paged128` / `-paged64` / `-paged32` / `-paged16`:
  causal, K/V read from a paged cache whose pages (128 / 64 / 32 / 16
  tokens) are shuffled (randperm).
- `dense-prefill-16k-sw4096`: causal sliding window, key k visible from
  query q iff k <= q and q - k < 4096.
- `dense-prefill-16k-sinks`: causal with one sink logit per head:
  out = sum e^x V / (e^sink[h] + sum e^x).

Peers (each where it supports the case):

- `sdpa-cudnn`, `sdpa-flash` (`-batchN` for the N-sequence cases): torch SDPA under
  `sdpa_kernel(CUDNN_ATTENTION / FLASH_ATTENTION)` with `enable_gqa=True`;
  where a backend rejects enable_gqa, K/V heads are expanded outside the
  timing and the record's note says so.
- `fa3` / `fa3-varlen`: FlashAttention-3 (`fa3_fwd_interface` of the fa3-fwd
  wheel: forward only, no paged KV, no local window), native GQA.
- `flex-blockmask-window` (sw4096) and `flex-lse-sink-rescale` (sinks):
  compiled `flex_attention` with a `BlockMask` (`create_block_mask`, 128 x 128
  tiles); the sinks peer asks for the lse and rescales out * sigmoid(lse -
  sink) inside the same compiled function (the rescale is timed).
- `flashinfer-ragged` (plain, causal, 8x2k), `flashinfer-ragged-window`
  (sw4096, window_left=4095), `flashinfer-paged` (paged cases,
  BatchPrefillWithPagedKVCacheWrapper, NHD, shuffled pages): only where
  `import flashinfer` works; its kernels JIT-compile on first use (minutes).
- `fa3-contiguous`, `sdpa-cudnn-contiguous` under the paged case names:
  the same causal 16k on contiguous K/V (no page table), so NOT paged peers;
  the names say so.

Every peer's output is checked, outside the timing, against an fp32
reference on a few sampled query rows (sinks and window included); a peer
whose output does not match gets null in the bench map (so the bench never
takes a wrong peer as best) and keeps its time and error in its record.

Same timing as the other peer scripts (`timing.median_us`). Rate:
4 * 32 * 128 * visible (query, key) pairs / time (no mask: n^2, causal
n(n+1)/2 per sequence, window sum_q min(q + 1, 4096); the sink is not a pair).

Output, merged by `bench --peers` by case name: {case: {peer: us | null}},
plus keys the bench ignores: `_records_<case>` ({peer: record with case,
peer, us, tflops, visible_pairs, flops, max_abs_err, max_rel_err, check,
error, note, reps, batches, compile_s}), `_visible_pairs_<case>`, `_torch`,
`_gpu`, `_fa3_fwd`, `_flashinfer`. A peer that fails or does not match the
reference is null in the map; its record says why.

usage: python3 dense_prefill_torch.py OUT.json [case ...]
env:   PEERS=fa3,flex  runs only the peers whose name contains one of the
       words, and then merges peer by peer into OUT.json if it exists (e.g.
       a FlashInfer-only call: PEERS=flashinfer).
needs: fa3-fwd (wheel) for the fa3 peers; flashinfer-python and
       apache-tvm-ffi for the flashinfer peers; the others use torch alone.
"""
import json
import math
import time
import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from timing import median_us, peer_command_line

H, KVH, D = 32, 8, 128
G = H // KVH
SCALE = D ** -0.5
BF16 = torch.bfloat16
dev = "cuda"

CASES = {
    "dense-prefill-16k": dict(seqs=1, n=16384, causal=False),
    "dense-prefill-16k-causal": dict(seqs=1, n=16384, causal=True),
    "dense-prefill-8x2k": dict(seqs=8, n=2048, causal=True),
    "dense-prefill-4x4k": dict(seqs=4, n=4096, causal=True),
    "dense-prefill-2x8k": dict(seqs=2, n=8192, causal=True),
    "dense-prefill-16k-paged128": dict(seqs=1, n=16384, causal=True, page=128),
    "dense-prefill-16k-paged64": dict(seqs=1, n=16384, causal=True, page=64),
    "dense-prefill-16k-paged32": dict(seqs=1, n=16384, causal=True, page=32),
    "dense-prefill-16k-paged16": dict(seqs=1, n=16384, causal=True, page=16),
    "dense-prefill-16k-sw4096": dict(seqs=1, n=16384, causal=True, window=4096),
    "dense-prefill-16k-sinks": dict(seqs=1, n=16384, causal=True, sinks=True),
}


def visible_pairs(c):
    """Exact count of visible (query, key) pairs over all sequences."""
    n, w = c["n"], c.get("window")
    if not c["causal"]:
        per = n * n
    elif w:
        per = w * (w + 1) // 2 + (n - w) * w if n > w else n * (n + 1) // 2
        assert per == sum(min(q + 1, w) for q in range(n))
    else:
        per = n * (n + 1) // 2
    return c["seqs"] * per


class Data:
    """One case's inputs, token-major: q [T, H, D], k/v [T, KVH, D] (T = all
    tokens of all sequences), and the sink logits [H] (fp32) where the case
    has them. Each peer lays them out as it wants, outside the timing."""

    def __init__(self, c):
        g = torch.Generator(device=dev).manual_seed(0)
        self.seqs, self.n = c["seqs"], c["n"]
        t = self.seqs * self.n
        self.q = torch.randn(t, H, D, generator=g, device=dev, dtype=BF16)
        self.k = torch.randn(t, KVH, D, generator=g, device=dev, dtype=BF16)
        self.v = torch.randn(t, KVH, D, generator=g, device=dev, dtype=BF16)
        self.sink = (torch.randn(H, generator=g, device=dev, dtype=torch.float32)
                     if c.get("sinks") else None)

    def blhd(self, x):  # [B, L, heads, D] (FA3), a view
        return x.view(self.seqs, self.n, x.shape[1], D)

    def bhld(self, x):  # [B, heads, L, D] (SDPA, flex), a copy
        return self.blhd(x).transpose(1, 2).contiguous()

    def indptr(self):
        return torch.arange(0, self.seqs * self.n + 1, self.n, dtype=torch.int32,
                            device=dev)


def from_bhld(o):
    return o.transpose(1, 2).reshape(-1, H, D)


def from_blhd(o):
    return o.reshape(-1, H, D)


# ---- peers: each builds (fn, to_tokens, note); fn() is what is timed and
# to_tokens(fn()) is its output as [T, H, D] for the check.

def sdpa(backend):
    def build(c, d):
        q, k, v = d.bhld(d.q), d.bhld(d.k), d.bhld(d.v)
        causal = c["causal"]

        def call(k_, v_, gqa):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k_, v_, is_causal=causal,
                                                      scale=SCALE, enable_gqa=gqa)
        note = (f"torch SDPA {backend.name}, [B={d.seqs}, H, L={d.n}, D]"
                + (f", {d.seqs} sequences as a dense batch" if d.seqs > 1 else ""))
        try:
            with warnings.catch_warnings(record=True) as ws:
                warnings.simplefilter("always")
                call(k, v, True)
                torch.cuda.synchronize()
            return (lambda: call(k, v, True)), from_bhld, note + ", enable_gqa=True"
        except RuntimeError as e:
            why = "; ".join(str(w.message) for w in ws)[:400] or repr(e)[:400]
        ke, ve = k.repeat_interleave(G, 1), v.repeat_interleave(G, 1)
        return ((lambda: call(ke, ve, False)), from_bhld,
                note + f", K/V heads expanded {KVH}->{H} outside the timing "
                f"(enable_gqa rejected: {why})")
    return build


def fa3(c, d):
    import fa3_fwd_interface as fa3i
    q, k, v = d.blhd(d.q), d.blhd(d.k), d.blhd(d.v)
    causal = c["causal"]
    return ((lambda: fa3i.flash_attn_func(q, k, v, softmax_scale=SCALE, causal=causal)),
            from_blhd, f"fa3_fwd flash_attn_func, [B={d.seqs}, L, H, D], native GQA")


def fa3_varlen(c, d):
    import fa3_fwd_interface as fa3i
    cu, n = d.indptr(), d.n
    return ((lambda: fa3i.flash_attn_varlen_func(
                d.q, d.k, d.v, cu, cu, n, n, softmax_scale=SCALE, causal=c["causal"])),
            from_blhd, f"fa3_fwd flash_attn_varlen_func, {d.seqs} x {n} tokens "
            "[T, H, D], cu_seqlens, native GQA")


def contiguous(build, what):
    def b(c, d):
        fn, to, note = build(c, d)
        return fn, to, (f"{note}; CONTIGUOUS K/V, no page table: not a paged peer "
                        f"({what})")
    return b


def _fi_workspace():
    return torch.empty(256 << 20, dtype=torch.uint8, device=dev)


def flashinfer_ragged(c, d):
    import flashinfer
    ip = d.indptr()
    w = flashinfer.BatchPrefillWithRaggedKVCacheWrapper(_fi_workspace(), "NHD")
    win = c.get("window")
    w.plan(ip, ip, H, KVH, D, causal=c["causal"],
           window_left=win - 1 if win else -1, sm_scale=SCALE,
           q_data_type=BF16, kv_data_type=BF16)
    note = (f"flashinfer {flashinfer.__version__} BatchPrefillWithRaggedKVCacheWrapper "
            f"NHD, {d.seqs} x {d.n}, backend {getattr(w, '_backend', '?')}"
            + (f", window_left={win - 1}" if win else ""))
    return (lambda: w.run(d.q, d.k, d.v)), from_blhd, note


def flashinfer_paged(c, d):
    import flashinfer
    ps, n = c["page"], d.n
    pages = n // ps
    g = torch.Generator(device=dev).manual_seed(1)
    perm = torch.randperm(pages, generator=g, device=dev)  # logical page i -> perm[i]
    kc = torch.empty(pages, ps, KVH, D, dtype=BF16, device=dev)
    vc = torch.empty_like(kc)
    kc[perm] = d.k.view(pages, ps, KVH, D)
    vc[perm] = d.v.view(pages, ps, KVH, D)
    qo = torch.tensor([0, n], dtype=torch.int32, device=dev)
    kv_ip = torch.tensor([0, pages], dtype=torch.int32, device=dev)
    last = torch.tensor([ps], dtype=torch.int32, device=dev)
    w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(_fi_workspace(), "NHD")
    w.plan(qo, kv_ip, perm.to(torch.int32), last, H, KVH, D, ps, causal=True,
           sm_scale=SCALE, q_data_type=BF16, kv_data_type=BF16)
    note = (f"flashinfer {flashinfer.__version__} BatchPrefillWithPagedKVCacheWrapper "
            f"NHD, page_size {ps}, {pages} pages shuffled, backend "
            f"{getattr(w, '_backend', '?')}")
    return (lambda: w.run(d.q, (kc, vc))), from_blhd, note


def flex_window(c, d):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    win, n = c["window"], d.n

    def sliding_causal(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx - kv_idx < win)
    bm = create_block_mask(sliding_causal, None, None, n, n, device=dev, BLOCK_SIZE=128)
    q, k, v = d.bhld(d.q), d.bhld(d.k), d.bhld(d.v)
    fa = torch.compile(flex_attention, dynamic=False)
    return ((lambda: fa(q, k, v, block_mask=bm, scale=SCALE, enable_gqa=True)),
            from_bhld, f"torch.compile(flex_attention), BlockMask 128x128 "
            f"(create_block_mask, sliding causal {win}), enable_gqa=True")


def flex_sinks(c, d):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    try:
        from torch.nn.attention.flex_attention import AuxRequest
        req = AuxRequest(lse=True)

        def flex_lse(q, k, v, bm):
            o, aux = flex_attention(q, k, v, block_mask=bm, scale=SCALE,
                                    enable_gqa=True, return_aux=req)
            return o, aux.lse
    except ImportError:
        def flex_lse(q, k, v, bm):
            return flex_attention(q, k, v, block_mask=bm, scale=SCALE,
                                  enable_gqa=True, return_lse=True)

    def attn(q, k, v, bm, sink):
        # natural-log lse of the visible scores; out_sink = out / (1 + e^(sink - lse))
        o, lse = flex_lse(q, k, v, bm)
        return (o.float() * torch.sigmoid(lse - sink[None, :, None])[..., None]).to(o.dtype)

    def causal(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx
    n = d.n
    bm = create_block_mask(causal, None, None, n, n, device=dev, BLOCK_SIZE=128)
    q, k, v = d.bhld(d.q), d.bhld(d.k), d.bhld(d.v)
    note = ("flex_attention causal BlockMask 128x128 with lse, then "
            "out * sigmoid(lse - sink) (timed)")
    try:
        fa = torch.compile(attn, dynamic=False, fullgraph=True)
        fa(q, k, v, bm, d.sink)
        return ((lambda: fa(q, k, v, bm, d.sink)), from_bhld,
                note + "; one torch.compile(fullgraph) of both")
    except Exception as e:  # fall back: compiled flex, eager rescale
        why = repr(e)[:300]
    fl = torch.compile(flex_lse, dynamic=False)

    def run():
        o, lse = fl(q, k, v, bm)
        return (o.float() * torch.sigmoid(lse - d.sink[None, :, None])[..., None]).to(o.dtype)
    return run, from_bhld, note + f"; compiled flex, eager rescale (fullgraph failed: {why})"


PEERS = {
    "dense-prefill-16k": [("sdpa-cudnn", sdpa(SDPBackend.CUDNN_ATTENTION)),
                          ("sdpa-flash", sdpa(SDPBackend.FLASH_ATTENTION)),
                          ("fa3", fa3), ("flashinfer-ragged", flashinfer_ragged)],
    "dense-prefill-16k-causal": [("sdpa-cudnn", sdpa(SDPBackend.CUDNN_ATTENTION)),
                                 ("sdpa-flash", sdpa(SDPBackend.FLASH_ATTENTION)),
                                 ("fa3", fa3), ("flashinfer-ragged", flashinfer_ragged)],
    "dense-prefill-8x2k": [("sdpa-cudnn-batch8", sdpa(SDPBackend.CUDNN_ATTENTION)),
                           ("sdpa-flash-batch8", sdpa(SDPBackend.FLASH_ATTENTION)),
                           ("fa3-varlen", fa3_varlen),
                           ("flashinfer-ragged", flashinfer_ragged)],
    "dense-prefill-4x4k": [("sdpa-cudnn-batch4", sdpa(SDPBackend.CUDNN_ATTENTION)),
                           ("fa3-varlen", fa3_varlen)],
    "dense-prefill-2x8k": [("sdpa-cudnn-batch2", sdpa(SDPBackend.CUDNN_ATTENTION)),
                           ("fa3-varlen", fa3_varlen)],
    "dense-prefill-16k-sw4096": [("flex-blockmask-window", flex_window),
                                 ("flashinfer-ragged-window", flashinfer_ragged)],
    "dense-prefill-16k-sinks": [("flex-lse-sink-rescale", flex_sinks)],
}
for _ps in (128, 16):
    PEERS[f"dense-prefill-16k-paged{_ps}"] = [
        ("flashinfer-paged", flashinfer_paged),
        ("fa3-contiguous", contiguous(fa3, "fa3-fwd is built without paged KV")),
        ("sdpa-cudnn-contiguous",
         contiguous(sdpa(SDPBackend.CUDNN_ATTENTION), "SDPA has no page table")),
    ]
# The page sizes between: the paged peer only (the contiguous ones are the
# same runs as above).
for _ps in (64, 32):
    PEERS[f"dense-prefill-16k-paged{_ps}"] = [("flashinfer-paged", flashinfer_paged)]


# ---- the check: fp32 reference on sampled rows

def check_rows(c):
    """Global token indices checked: both ends, the first rows (where a sink
    weighs most), tile edges, the window edge, a few random rows, in the
    first, middle and last sequence."""
    n, w = c["n"], c.get("window")
    pos = {0, 1, 2, 3, 127, 128, n // 2, n - 1}
    if w:
        pos |= {w - 1, w, w + 1, w + 200}
    g = torch.Generator().manual_seed(2)
    pos |= set(torch.randint(0, n, (4,), generator=g).tolist())
    pos = sorted(p for p in pos if p < n)
    seqs = sorted({0, c["seqs"] // 2, c["seqs"] - 1})
    return [(s, pos) for s in seqs]


def reference(c, d):
    """[(rows, out fp32 [R, H, D])] by the definition (mask, window, sink)."""
    res = []
    for s, pos in check_rows(c):
        base = s * d.n
        rows = torch.tensor(pos, device=dev) + base
        qq = d.q[rows].float()                                   # [R, H, D]
        kk = d.k[base:base + d.n].float().repeat_interleave(G, 1)  # [L, H, D]
        vv = d.v[base:base + d.n].float().repeat_interleave(G, 1)
        x = torch.einsum("rhd,lhd->rhl", qq, kk) * SCALE
        qp = torch.tensor(pos, device=dev)[:, None]
        kp = torch.arange(d.n, device=dev)[None, :]
        vis = torch.ones(len(pos), d.n, dtype=torch.bool, device=dev)
        if c["causal"]:
            vis &= kp <= qp
        if c.get("window"):
            vis &= qp - kp < c["window"]
        x = x.masked_fill(~vis[:, None, :], float("-inf"))
        m = x.amax(-1)
        if d.sink is not None:
            m = torch.maximum(m, d.sink[None, :])
        e = torch.exp(x - m[..., None])
        den = e.sum(-1)
        if d.sink is not None:
            den = den + torch.exp(d.sink[None, :] - m)
        res.append((rows, torch.einsum("rhl,lhd->rhd", e, vv) / den[..., None]))
    return res


def max_err(ref, out_tokens):
    """(max abs error, max error relative to the reference's largest entry of
    the same (row, head)), both over the checked rows; NaN stays NaN."""
    ab, rel = [], []
    for rows, r in ref:
        e = (out_tokens[rows].float() - r).abs().amax(-1)  # [R, H]
        ab.append(e.amax())
        rel.append((e / r.abs().amax(-1)).amax())
    return torch.stack(ab).amax().item(), torch.stack(rel).amax().item()


# A wrong mask or a lost sink moves a checked row by several percent of its
# size; bf16 rounding moves it by well under one.
REL_TOL = 0.05


# ---- driver

def reps_for(c):
    return (20, 5) if c["seqs"] * c["n"] * c["n"] <= 1 << 26 else (10, 5)


def _measure(rec, c, d, ref, build):
    t0 = time.time()
    fn, to_tokens, rec["note"] = build(c, d)
    out = fn()
    torch.cuda.synchronize()
    rec["compile_s"] = round(time.time() - t0, 1)  # build + first call (compile, JIT)
    ab, rel = max_err(ref, to_tokens(out))
    del out
    ok = math.isfinite(rel) and rel <= REL_TOL
    rec["max_abs_err"] = ab if math.isfinite(ab) else str(ab)
    rec["max_rel_err"] = rel if math.isfinite(rel) else str(rel)
    rec["check"] = "ok" if ok else "MISMATCH"
    us = median_us(fn, reps=rec["reps"], batches=rec["batches"])
    rec["us"], rec["tflops"] = us, rec["flops"] / (us * 1e-6) / 1e12
    if not ok:
        rec["error"] = (f"output does not match the fp32 reference (max rel err {rel:.3g}, "
                        f"tolerance {REL_TOL})")
    return ok


def run_peer(case, c, d, ref, peer, build):
    reps, batches = reps_for(c)
    pairs = visible_pairs(c)
    rec = dict(case=case, peer=peer, us=None, tflops=None, visible_pairs=pairs,
               flops=4 * H * D * pairs, max_abs_err=None, max_rel_err=None, check=None,
               error=None, note=None, reps=reps, batches=batches, compile_s=None)
    try:
        ok = _measure(rec, c, d, ref, build)
    except Exception as e:  # a peer that cannot run is recorded, not fatal
        rec["error"] = repr(e)[:1000]
        ok = False
    torch.cuda.empty_cache()
    tf = f"{rec['tflops']:.0f} TFLOP/s" if rec["tflops"] else "-"
    print(f"{case} {peer}: {rec['us']} us, {tf}, check {rec['check']} "
          f"(rel err {rec['max_rel_err']}), build + first call {rec['compile_s']} s"
          + (f", ERROR {rec['error']}" if rec["error"] else "")
          + (f"\n    {rec['note']}" if rec["note"] else ""), flush=True)
    return (rec["us"] if ok else None), rec


def versions():
    v = {"_torch": torch.__version__, "_gpu": torch.cuda.get_device_name()}
    from importlib import metadata
    for key, dist in [("_fa3_fwd", "fa3-fwd"), ("_flashinfer", "flashinfer-python")]:
        try:
            v[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            v[key] = None
    return v


if __name__ == "__main__":
    out, names, only, res = peer_command_line(CASES)
    for key, val in versions().items():  # a partial run keeps versions it did not load
        if val is not None or key not in res:
            res[key] = val
    if not only:  # the limit our TFLOP/s are a fraction of, in the same run
        from msa_indexer_torch import matmul_tflops
        res["_bf16_matmul_tflops"] = matmul_tflops()
        print(f"bf16 matmul 8192^3: {res['_bf16_matmul_tflops']:.0f} TFLOP/s", flush=True)
    t_all = time.time()
    for name in names:
        c = CASES[name]
        peers = [(p, b) for p, b in PEERS[name] if not only or any(w in p for w in only)]
        if not peers:
            continue
        d = Data(c)
        ref = reference(c, d)
        res.setdefault(name, {})
        recs = res.setdefault(f"_records_{name}", {})
        res[f"_visible_pairs_{name}"] = visible_pairs(c)
        for peer, build in peers:
            res[name][peer], recs[peer] = run_peer(name, c, d, ref, peer, build)
        print(name, res[name], flush=True)
        del d, ref
        torch.cuda.empty_cache()
        json.dump(res, open(out, "w"), indent=1)  # after each case: partial results survive
    print(f"all cases: {time.time() - t_all:.0f} s", flush=True)
    json.dump(res, open(out, "w"), indent=1)

"""PyTorch peers of the MLA FP8 lightning indexer (DeepSeek-V3.2), written as
a user would: gather the paged FP8 index-K, upcast, einsum, ReLU, weight by
qs and sum over heads, times the key scales, causal mask, torch.topk.

Semantics (shared/spec/mla-fp8-indexer.md): q e4m3 [rows, H = 64, 128], qs f32
[rows, H]; index-K cache of 64-token pages, k e4m3 [num_pages, 64, 128] and
one f32 scale per token k_scale [num_pages, 64]; a shuffled page table lookup
i32 [batch, max_pages]. For row t of sequence b at position q_pos:

    score[s] = k_scale[s] * sum_h relu(dot(q[t, h], k[s])) * qs[t, h]

for the visible keys s (s < seqlen_k, causal: s <= q_pos), then the 2048
positions with the highest scores, descending (torch.topk sorted), -1 where
fewer than 2048 keys are visible. Output i32 [rows, 2048].

Cases (the Rust bench's names; one record per case per peer):

- `mla-idx-prefill-16k`: one sequence, 16384 new tokens, cache_len 0, causal.
- `mla-idx-decode-b64-64k`: 64 sequences, 1 new token each after 65535
  cached (seqlen_k 65536), causal.
- `mla-idx-decode-b1-128k`: one sequence, 1 new token, seqlen_k 131072.

Data: torch seed 0 (a generator on the device, reseeded per case): q and k
torch.randn(...).to(torch.float8_e4m3fn), qs uniform in [-1, 1), k_scale
uniform in [0.5, 2) (the bench's ranges), pages shuffled (randperm).

Peers (both time the whole call: the page gather, the upcast, the dots, the
head reduction, the mask, the top-k, the -1 padding and the i32 output):

- `torch-einsum`: k gathered with index_select over the page table (as
  bytes, a uint8 view of the e4m3 cache: the same copy), q and k upcast to
  bf16 (`.to(torch.bfloat16)`: exact for e4m3), dots by torch.einsum in bf16
  (f32 accumulation, the dots rounded to bf16), relu, then upcast to f32 and
  weighted by qs with an einsum over the heads, times k_scale, masked_fill
  -inf, torch.topk(2048). Decode is one batched call over all sequences
  (keys padded to max_pages * 64, masked); prefill goes 1024 rows at a time,
  each chunk against its causal prefix of keys (the keys up to its last
  row), so memory stays bounded; the prefill gathers the pages once per call.
- `torch-einsum-f32`: the same in f32 (DeepGEMM's reference written the same
  way), matmul with TF32 as torch leaves it (off by default; the note says).

Every peer's output is checked, outside the timing, against an f64
reference on sampled rows (both ends, page and chunk edges, the 2048 edge,
a few random rows; first, middle and last sequence): the selected positions
must be visible, distinct, as many as min(2048, visible keys) and the rest
-1, and `recall` (the share of the exact top-2048 among them) must be at
least RECALL_TOL (bf16 dots move a few scores near the cut). A peer that
fails the check gets null in the bench map and keeps its time and error in
its record.

Same timing as the other peer scripts (`timing.median_us`). Rates:
tflops = 2 * H * 128 * visible (query, key) pairs / us / 1e6 (visible: the
causal pairs, sum over rows of min(q_pos + 1, seqlen_k); the chunked peer
computes more, `computed_pairs`, but is rated on the visible ones, as the
bench is); decode also has bytes_read = sum of seqlen_k * (128 + 4) + rows
* H * (128 + 4) (the keys and their scales, q and qs: the bench's count) and
gbs = bytes_read / us / 1e3.

Output, merged by `bench --peers` by case name: {case: {peer: us | null}},
plus keys the bench ignores or reads apart: `_records_<case>` ({peer:
record with case, peer, us, rows, seqs, seqlen_k, heads, top_k, page_size,
visible_pairs, computed_pairs, flops, tflops, bytes_read, gbs, recall,
check, note, error, reps, batches}), `_visible_pairs_<case>`, `_torch`,
`_gpu`, and on a full run (no PEERS) `_fp8_matmul_tflops` (torch._scaled_mm
e4m3 8192^3 with bf16 output, the rate the bench rates its FP8 logits
against) and `_fp8_matmul_note`. A peer that fails is null in the map; its
record says why.

usage: python3 mla_indexer_torch.py OUT.json [case ...]
       python3 mla_indexer_torch.py --cpu-smoke   (tiny shapes on the CPU,
       perf_counter timing, nothing written; exits 1 if a check fails)
env:   PEERS=f32  runs only the peers whose name contains one of the words,
       and then merges peer by peer into OUT.json if it exists.
"""
import json
import math
import sys
import time

import torch

from timing import median_us, peer_command_line

H, D, PAGE, TOPK = 64, 128, 64, 2048
CHUNK = 1024
E4M3 = torch.float8_e4m3fn
RECALL_TOL = 0.97
dev = "cuda"

# seqs: (q_len, cache_len) per sequence; seqlen_k = cache_len + q_len.
CASES = {
    "mla-idx-prefill-16k": dict(seqs=[(16384, 0)]),
    "mla-idx-decode-b64-64k": dict(seqs=[(1, 65535)] * 64),
    "mla-idx-decode-b1-128k": dict(seqs=[(1, 131071)]),
}

# --cpu-smoke: the same code paths on tiny shapes (ragged decode, a prefill
# with partial pages and chunks, top_k above some rows' visible keys).
SMOKE_CASES = {
    "mla-idx-prefill-16k": dict(seqs=[(1000, 0)], top_k=128, chunk=256),
    "mla-idx-decode-b64-64k": dict(seqs=[(1, 699), (1, 649), (1, 63), (1, 99)], top_k=128),
    "mla-idx-decode-b1-128k": dict(seqs=[(1, 4999)], top_k=2048),
}


class Data:
    """One case's inputs, laid out as the Rust bench's: q [rows, H, D] e4m3,
    qs [rows, H] f32, k [pages, PAGE, D] e4m3, k_scale [pages, PAGE] f32,
    lookup [batch, max_pages] i32 (shuffled; unused entries 0). Host-side
    per-sequence ints (q_len, cache_len, seqlen_k, pages, row offset) are
    plain lists, as a serving loop would hold them."""

    def __init__(self, c):
        g = torch.Generator(device=dev).manual_seed(0)
        self.q_len = [ql for ql, _ in c["seqs"]]
        self.cache = [cl for _, cl in c["seqs"]]
        self.seqlen_k = [ql + cl for ql, cl in c["seqs"]]
        self.pages = [(n + PAGE - 1) // PAGE for n in self.seqlen_k]
        self.row_off = [0]
        for ql in self.q_len:
            self.row_off.append(self.row_off[-1] + ql)
        self.rows, self.batch = self.row_off[-1], len(self.q_len)
        self.max_pages, total = max(self.pages), sum(self.pages)
        self.q = torch.randn(self.rows, H, D, generator=g, device=dev).to(E4M3)
        self.qs = torch.rand(self.rows, H, generator=g, device=dev) * 2 - 1
        self.k = torch.randn(total, PAGE, D, generator=g, device=dev).to(E4M3)
        self.k_scale = torch.rand(total, PAGE, generator=g, device=dev) * 1.5 + 0.5
        perm = torch.randperm(total, generator=g, device=dev).to(torch.int32)
        self.lookup = torch.zeros(self.batch, self.max_pages, dtype=torch.int32, device=dev)
        nxt = 0
        for b, n in enumerate(self.pages):
            self.lookup[b, :n] = perm[nxt:nxt + n]
            nxt += n
        # the absolute position of every row, and its sequence
        self.q_pos = torch.cat([torch.arange(cl, cl + ql, device=dev)
                                for ql, cl in c["seqs"]])
        self.decode = all(ql == 1 for ql in self.q_len)


def visible_pairs(d):
    """Exact visible (query, key) pairs, causal: the row at q_pos sees q_pos + 1
    keys (q_pos < seqlen_k = cache_len + q_len), so a sequence adds
    (cache_len + 1) + ... + (cache_len + q_len)."""
    return sum((2 * cl + ql + 1) * ql // 2 for ql, cl in zip(d.q_len, d.cache))


def bytes_read(d):
    return sum(d.seqlen_k) * (D + 4) + d.rows * H * (D + 4)


# ---- the peers: each builds (fn, computed_pairs, note); fn() is timed and
# returns the i32 [rows, top_k] output.

def decode_fn(d, dt, k_top):
    """All sequences in one batched call: keys padded to max_pages * PAGE."""
    B, L = d.batch, d.max_pages * PAGE
    k_u8 = d.k.view(torch.uint8)
    lookup = d.lookup.view(-1)
    pos = torch.arange(L, device=dev)
    sk = torch.tensor(d.seqlen_k, device=dev)
    kk = min(k_top, L)

    def run():
        kp = k_u8.index_select(0, lookup).view(E4M3).view(B, L, D)      # the gather
        ks = d.k_scale.index_select(0, lookup).view(B, L)
        qf = d.q.to(dt)                                                  # [B, H, D]
        dots = torch.einsum("bhd,bld->bhl", qf, kp.to(dt))               # [B, H, L]
        w = torch.einsum("bhl,bh->bl", dots.relu_().float(), d.qs)       # [B, L] f32
        s = w * ks
        hide = (pos[None, :] > d.q_pos[:, None]) | (pos[None, :] >= sk[:, None])
        s.masked_fill_(hide, float("-inf"))
        v, i = torch.topk(s, kk, dim=-1, largest=True, sorted=True)
        out = i.masked_fill_(v == float("-inf"), -1).to(torch.int32)
        if kk < k_top:
            out = torch.cat([out, out.new_full((B, k_top - kk), -1)], 1)
        return out
    return run, B * L, (f"one batched call over {B} sequences, keys padded to "
                        f"max_pages * {PAGE} = {L} and masked")


def prefill_fn(d, dt, k_top, chunk):
    """Per sequence: gather its pages once, then `chunk` rows at a time, each
    against the keys up to its last row's position."""
    k_u8 = d.k.view(torch.uint8)
    pos = torch.arange(max(d.seqlen_k), device=dev)
    plan, computed = [], 0
    for b in range(d.batch):
        for r0 in range(0, d.q_len[b], chunk):
            r1 = min(d.q_len[b], r0 + chunk)
            kend = min(d.seqlen_k[b], d.cache[b] + r1)  # causal prefix of the chunk
            plan.append((b, d.row_off[b] + r0, d.row_off[b] + r1, kend))
            computed += (r1 - r0) * kend

    def run():
        out = torch.full((d.rows, k_top), -1, dtype=torch.int32, device=dev)
        kf = ks = None
        cur = -1
        for b, a, e, kend in plan:
            if b != cur:  # the gather, once per sequence and call
                pg = d.lookup[b, :d.pages[b]]
                kf = k_u8.index_select(0, pg).view(E4M3).view(-1, D)[:d.seqlen_k[b]].to(dt)
                ks = d.k_scale.index_select(0, pg).view(-1)[:d.seqlen_k[b]]
                cur = b
            qf = d.q[a:e].to(dt)                                         # [r, H, D]
            dots = torch.einsum("rhd,ld->rhl", qf, kf[:kend])            # [r, H, kend]
            w = torch.einsum("rhl,rh->rl", dots.relu_().float(), d.qs[a:e])
            s = w * ks[:kend]
            s.masked_fill_(pos[None, :kend] > d.q_pos[a:e, None], float("-inf"))
            kk = min(k_top, kend)
            v, i = torch.topk(s, kk, dim=-1, largest=True, sorted=True)
            out[a:e, :kk] = i.masked_fill_(v == float("-inf"), -1)
        return out
    return run, computed, (f"{chunk} rows at a time, each chunk against its causal "
                           f"prefix of keys ({len(plan)} chunks; the dots of a "
                           "chunk's masked upper triangle are computed too)")


def torch_einsum(dt, what):
    def build(d, k_top, chunk):
        fn, computed, how = (decode_fn(d, dt, k_top) if d.decode
                             else prefill_fn(d, dt, k_top, chunk))
        tf32 = torch.backends.cuda.matmul.allow_tf32
        note = (f"timed: page gather (index_select of the e4m3 pages as uint8 bytes "
                f"and of the f32 scales), {what}, relu, f32 einsum over the heads with "
                f"qs, times k_scale, masked_fill -inf (causal and seqlen_k), "
                f"torch.topk({k_top}, sorted), -1 padding, i32 output; {how}; "
                f"torch.backends.cuda.matmul.allow_tf32={tf32}")
        return fn, computed, note
    return build


PEERS = [
    ("torch-einsum", torch_einsum(torch.bfloat16,
                                  "q and k .to(torch.bfloat16) (exact for e4m3), "
                                  "torch.einsum dots in bf16 (f32 accumulation, "
                                  "bf16 output)")),
    ("torch-einsum-f32", torch_einsum(torch.float32,
                                      "q and k .float(), torch.einsum dots in f32")),
]


# ---- the check: an f64 reference on sampled rows

def check_rows(d):
    """Global row indices: for the first, middle and last sequence, both ends,
    page and chunk edges, the top-k edge and a few random rows."""
    g = torch.Generator().manual_seed(2)
    rows = []
    for b in sorted({0, d.batch // 2, d.batch - 1}):
        ql = d.q_len[b]
        loc = {0, 1, 63, 64, 65, 1023, 1024, 2046, 2047, 2048, ql // 2, ql - 1}
        loc |= set(torch.randint(0, ql, (3,), generator=g).tolist())
        rows += [d.row_off[b] + i for i in sorted(loc) if i < ql]
    return rows


def reference(d, k_top):
    """{row: (visible keys n, exact top-min(k_top, n) positions as a set)}."""
    seq_of = [b for b in range(d.batch) for _ in range(d.q_len[b])]
    ref = {}
    for t in check_rows(d):
        b = seq_of[t]
        n = min(d.seqlen_k[b], int(d.q_pos[t]) + 1)
        pg = d.lookup[b, :d.pages[b]].long()
        k = d.k.view(torch.uint8)[pg].view(E4M3).reshape(-1, D)[:n].float().double()
        ks = d.k_scale[pg].reshape(-1)[:n].double()
        dots = d.q[t].float().double() @ k.t()                           # [H, n]
        score = ks * (dots.relu() * d.qs[t].double()[:, None]).sum(0)
        ref[t] = (n, set(torch.topk(score, min(k_top, n)).indices.tolist()))
    return ref


def check(out, ref, k_top):
    """(ok, worst recall, what is wrong)."""
    worst, bad = 1.0, []
    for t, (n, exact) in ref.items():
        row = out[t].tolist()
        want = min(k_top, n)
        sel = [p for p in row if p >= 0]
        if row[want:] != [-1] * (k_top - want) or len(sel) != want:
            bad.append(f"row {t}: {len(sel)} selected, {want} expected")
        if any(p >= n for p in sel):
            bad.append(f"row {t}: a masked key selected")
        if len(set(sel)) != len(sel):
            bad.append(f"row {t}: a key selected twice")
        worst = min(worst, len(exact & set(sel)) / want)
    if worst < RECALL_TOL:
        bad.append(f"recall {worst:.4f} < {RECALL_TOL}")
    return not bad, worst, "; ".join(bad[:5])


# ---- driver

def reps_for(d):
    return (20, 5) if d.decode else (5, 5)


def cpu_median_us(fn, reps, batches, warmup=1):
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(batches):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        ts.append((time.perf_counter() - t0) * 1e6 / reps)
    return sorted(ts)[len(ts) // 2]


def run_peer(case, c, d, ref, peer, build, timer):
    k_top, chunk = c.get("top_k", TOPK), c.get("chunk", CHUNK)
    reps, batches = reps_for(d)
    pairs = visible_pairs(d)
    rec = dict(case=case, peer=peer, us=None, rows=d.rows, seqs=d.batch,
               seqlen_k=sorted(set(d.seqlen_k)), heads=H, top_k=k_top, page_size=PAGE,
               visible_pairs=pairs, computed_pairs=None, flops=2 * H * D * pairs,
               tflops=None, bytes_read=bytes_read(d) if d.decode else None, gbs=None,
               recall=None, check=None, note=None, error=None, reps=reps, batches=batches)
    ok = False
    try:
        fn, rec["computed_pairs"], rec["note"] = build(d, k_top, chunk)
        ok, rec["recall"], why = check(fn(), ref, k_top)
        rec["check"] = "ok" if ok else "MISMATCH"
        rec["us"] = timer(fn, reps=reps, batches=batches)
        rec["tflops"] = rec["flops"] / rec["us"] / 1e6
        if d.decode:
            rec["gbs"] = rec["bytes_read"] / rec["us"] / 1e3
        if not ok:
            rec["error"] = f"output does not match the f64 reference: {why}"
    except Exception as e:  # a peer that cannot run is recorded, not fatal
        rec["error"] = repr(e)[:1000]
    if dev == "cuda":
        torch.cuda.empty_cache()
    rate = (f"{rec['gbs']:.0f} GB/s" if rec["gbs"]
            else f"{rec['tflops']:.1f} TFLOP/s" if rec["tflops"] else "-")
    print(f"{case} {peer}: {rec['us']} us, {rate}, check {rec['check']} "
          f"(recall {rec['recall']})" + (f", ERROR {rec['error']}" if rec["error"] else "")
          + (f"\n    {rec['note']}" if rec["note"] else ""), flush=True)
    return (rec["us"] if ok else None), rec


def fp8_matmul_tflops():
    """torch._scaled_mm, e4m3 x e4m3 -> bf16, 8192^3, per-tensor scales."""
    n = 8192
    a = torch.randn(n, n, device=dev).to(E4M3)
    b = torch.randn(n, n, device=dev).to(E4M3)
    one = torch.ones((), device=dev)

    def mm():
        r = torch._scaled_mm(a, b.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
        return r[0] if isinstance(r, tuple) else r
    us = median_us(mm, reps=20)
    return 2 * n ** 3 / (us * 1e-6) / 1e12


def main():
    out, names, only, res = peer_command_line(CASES)
    res["_torch"], res["_gpu"] = torch.__version__, torch.cuda.get_device_name()
    if not only:  # the limit the bench rates its FP8 logits against, in the same run
        try:
            res["_fp8_matmul_tflops"] = fp8_matmul_tflops()
            res["_fp8_matmul_note"] = ("torch._scaled_mm e4m3 x e4m3 -> bf16, 8192^3, "
                                       "per-tensor scales 1")
            print(f"fp8 matmul 8192^3: {res['_fp8_matmul_tflops']:.0f} TFLOP/s", flush=True)
        except Exception as e:
            res["_fp8_matmul_tflops"], res["_fp8_matmul_note"] = None, repr(e)[:500]
            print(f"fp8 matmul: ERROR {e!r}", flush=True)
    for name in names:
        c = CASES[name]
        peers = [(p, b) for p, b in PEERS if not only or any(w in p for w in only)]
        if not peers:
            continue
        d = Data(c)
        ref = reference(d, c.get("top_k", TOPK))
        res.setdefault(name, {})
        recs = res.setdefault(f"_records_{name}", {})
        res[f"_visible_pairs_{name}"] = visible_pairs(d)
        for peer, build in peers:
            res[name][peer], recs[peer] = run_peer(name, c, d, ref, peer, build, median_us)
        print(name, res[name], flush=True)
        del d, ref
        torch.cuda.empty_cache()
        json.dump(res, open(out, "w"), indent=1)  # after each case: partial results survive


def cpu_smoke():
    global dev
    dev = "cpu"
    failed = []
    for name, c in SMOKE_CASES.items():
        d = Data(c)
        ref = reference(d, c["top_k"])
        for peer, build in PEERS:
            us, rec = run_peer(name + " (cpu smoke)", c, d, ref, peer, build, cpu_median_us)
            if us is None or not math.isfinite(us):
                failed.append(f"{name} {peer}")
    print("cpu smoke:", "FAILED " + ", ".join(failed) if failed else "all checks ok")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    if "--cpu-smoke" in sys.argv[1:]:
        cpu_smoke()
    else:
        main()

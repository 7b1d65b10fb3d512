#!/usr/bin/env python3
"""GPU test of the Python binding: an MsaStep decode (MiniMax-M3 shapes) on
PyTorch tensors and streams, checked against a pure-PyTorch reference of
shared/spec/msa-indexer.md and msa-attention.md in the same process.

Run (from the repo root, with the wheel installed under /tmp/site):

    python3 -m pip install -q --no-index --no-deps --target /tmp/site sparse_attn-*.whl
    PYTHONPATH=/tmp/site python3 python/tests/test_msa_step.py

What it checks, on fresh random inputs (seed printed; SPARSE_ATTN_SEED=<n>
replays it), ragged decode batch of sequences crossing 128-token blocks,
shuffled page tables (a different one per pool), NaN in every unwritten
pool slot:

- the selections: per (KV head, row), min(topk, num_blocks) distinct
  blocks of the sequence then -1s, forced (local) blocks first, and every
  selected block's reference score >= every unselected one's minus the
  spec's rounding tolerance, in descending order within it (ties allowed);
- the output and lse against a float64 reference attention over the
  blocks the op selected (bf16 tolerances of the spec);
- the same results on the default stream, on a side stream the op was
  built on, on a stream the op was not built on (event fork/join), and
  replayed from a CUDA graph (captured on the op's stream, and on another);
- argument errors: ArgumentError naming the argument (dtype, length,
  non-contiguous, CPU tensor, page id, offsets, layer, configs), and
  NotPlannedError.

Prints "N passed, M failed" and exits non-zero on a failure. The last lines
time the step (M3, decode batch 64 at 32K; SPARSE_ATTN_PY_BENCH=0 skips).
"""

import math
import os
import random
import sys
import traceback

import torch

import sparse_attn as sa

BLOCK = 128
DEV = torch.device("cuda", torch.cuda.current_device())
RESULTS = []


def check(name, fn):
    try:
        fn()
    except Exception:  # noqa: BLE001 (report every failure, go on)
        RESULTS.append((name, False))
        print(f"FAIL {name}")
        traceback.print_exc()
    else:
        RESULTS.append((name, True))
        print(f"ok   {name}")


# ------------------------------------------------------------------ inputs


class Case:
    """A decode batch (one new token per sequence, already in the pools)."""

    def __init__(self, gen, cache_lens, n_layers, icfg, acfg, spare_pages=3):
        self.icfg, self.acfg = icfg, acfg
        self.cache_lens = list(cache_lens)
        self.batch = len(cache_lens)
        self.seqlen_k = [c + 1 for c in cache_lens]
        self.rows = self.batch
        self.offsets = list(range(self.batch + 1))
        pages = [math.ceil(s / BLOCK) for s in self.seqlen_k]
        self.max_pages = max(pages) + 2  # stale entries past each sequence's last page
        self.num_pages = sum(pages) + spare_pages
        self.n_layers = n_layers
        hk = acfg.n_kv_heads

        def table():
            perm = torch.randperm(self.num_pages, generator=gen).tolist()
            t = torch.empty(self.batch, self.max_pages, dtype=torch.int32)
            k = 0
            for b, n in enumerate(pages):
                t[b, :n] = torch.tensor(perm[k:k + n], dtype=torch.int32)
                # never read: stale ids of the pool
                t[b, n:] = torch.randint(0, self.num_pages, (self.max_pages - n,), generator=gen, dtype=torch.int32)
                k += n
            return t

        self.ilook_h, self.klook_h = table(), table()
        self.ilook, self.klook = self.ilook_h.to(DEV), self.klook_h.to(DEV)

        nan = float("nan")
        self.k_index = torch.full((self.num_pages, 1, n_layers, BLOCK, 1, 128), nan, dtype=torch.bfloat16, device=DEV)
        self.kv = torch.full((self.num_pages, 2, n_layers, BLOCK, hk, 128), nan, dtype=torch.bfloat16, device=DEV)
        for b, sk in enumerate(self.seqlen_k):
            pos = torch.arange(sk)
            ip, islot = self.ilook_h[b, pos // BLOCK].long().to(DEV), (pos % BLOCK).to(DEV)
            kp, kslot = self.klook_h[b, pos // BLOCK].long().to(DEV), (pos % BLOCK).to(DEV)
            for layer in range(n_layers):
                self.k_index[ip, 0, layer, islot, 0] = randn(gen, sk, 128)
                self.kv[kp, 0, layer, kslot] = randn(gen, sk, hk, 128)
                self.kv[kp, 1, layer, kslot] = randn(gen, sk, hk, 128)
        self.q_index = randn(gen, self.rows, icfg.num_index_heads, 128)
        self.q = randn(gen, self.rows, acfg.n_heads, 128)

    def outputs(self):
        out = torch.full((self.rows, self.acfg.n_heads, 128), float("nan"), dtype=torch.bfloat16, device=DEV)
        lse = torch.full((self.rows, self.acfg.n_heads), float("nan"), dtype=torch.float32, device=DEV)
        return out, lse

    def plan(self, step):
        # host metadata: lists and CPU tensors; the pools give the layouts
        step.plan(self.offsets, torch.tensor(self.cache_lens, dtype=torch.int32),
                  self.ilook_h, self.k_index, self.klook_h, self.kv)

    def run(self, step, layer, out, lse, **kw):
        step.run(self.q_index, self.k_index, self.ilook, self.q, self.kv, self.klook, layer, out, lse, **kw)


def randn(gen, *shape):
    return torch.randn(*shape, generator=gen).to(torch.bfloat16).to(DEV)


# ------------------------------------------------------------------ reference


def keys_of(case, pool, look_h, b, pos, layer, kv, head):
    """Rows of `pool` (float64) for positions `pos` of sequence b."""
    pages = look_h[b][pos // BLOCK].long().to(DEV)
    slots = (pos % BLOCK).to(DEV)
    return pool[pages, kv, layer, slots, head].double()


def check_selections(case, sel, layer):
    """sel: int32 [n_kv_heads, rows, topk] from the op."""
    icfg = case.icfg
    topk, scale = icfg.topk, icfg.scale
    sel = sel.cpu()
    for b in range(case.batch):
        t = case.offsets[b]  # one row per sequence
        sk = case.seqlen_k[b]
        q_pos = case.cache_lens[b]  # = sk - 1: decode
        nk = q_pos + 1
        nb = math.ceil(nk / BLOCK)
        pos = torch.arange(sk)
        kk = keys_of(case, case.k_index, case.ilook_h, b, pos, layer, 0, 0)  # [sk, 128]
        qq = case.q_index[t].double()  # [H, 128]
        dots = scale * (qq @ kk.T)  # [H, sk]
        tol = 2.0 ** -16 * abs(scale) * (qq.abs() @ kk.abs().T).amax(-1) + 1e-30  # [H]
        padded = torch.full((qq.shape[0], nb * BLOCK), -math.inf, dtype=torch.float64, device=DEV)
        padded[:, :nk] = dots[:, :nk]
        raw = padded.view(qq.shape[0], nb, BLOCK).amax(-1).cpu()  # [H, nb]
        for h in range(icfg.num_index_heads):
            eff = raw[h].clone()
            for j in range(nb):
                if j >= nb - icfg.local_blocks:
                    eff[j] = 1e29
                elif j < icfg.init_blocks:
                    eff[j] = 1e30
            row = sel[h, t].tolist()
            n = min(topk, nb)
            where = f"head {h} row {t} (seq {b}, {nb} blocks): {row}"
            assert all(x == -1 for x in row[n:]), f"padding: {where}"
            chosen = row[:n]
            assert all(0 <= x < nb for x in chosen), f"ids out of range: {where}"
            assert len(set(chosen)) == n, f"duplicates: {where}"
            tl = float(tol[h])
            for a, c in zip(chosen, chosen[1:]):
                assert eff[a] >= eff[c] - tl, f"not descending ({a}: {eff[a]}, {c}: {eff[c]}): {where}"
            rest = [j for j in range(nb) if j not in set(chosen)]
            if rest:
                worst = min(float(eff[j]) for j in chosen)
                best = max(float(eff[j]) for j in rest)
                assert worst >= best - tl, f"block {rest} scores {best} beat a selected {worst}: {where}"


def reference_attention(case, sel, layer):
    """float64 out [rows, n_heads, 128] and lse [rows, n_heads] over the
    blocks in sel (the op's selections)."""
    acfg = case.acfg
    g = acfg.n_heads // acfg.n_kv_heads
    out = torch.zeros(case.rows, acfg.n_heads, 128, dtype=torch.float64, device=DEV)
    lse = torch.full((case.rows, acfg.n_heads), -math.inf, dtype=torch.float64, device=DEV)
    sel = sel.cpu()
    for b in range(case.batch):
        sk = case.seqlen_k[b]
        nb = math.ceil(sk / BLOCK)
        for i in range(case.offsets[b + 1] - case.offsets[b]):
            t = case.offsets[b] + i
            q_pos = case.cache_lens[b] + i
            for kh in range(acfg.n_kv_heads):
                blocks = [x for x in sel[kh, t].tolist() if 0 <= x < nb]
                if not blocks:
                    continue
                pos = (torch.tensor(blocks)[:, None] * BLOCK + torch.arange(BLOCK)).flatten()
                pos = pos[(pos < sk) & (pos <= q_pos)]
                if pos.numel() == 0:
                    continue
                k = keys_of(case, case.kv, case.klook_h, b, pos, layer, 0, kh)
                v = keys_of(case, case.kv, case.klook_h, b, pos, layer, 1, kh)
                qh = case.q[t, kh * g:(kh + 1) * g].double()
                s = acfg.scale * (qh @ k.T)
                l = torch.logsumexp(s, -1)
                out[t, kh * g:(kh + 1) * g] = torch.exp(s - l[:, None]) @ v
                lse[t, kh * g:(kh + 1) * g] = l
    return out, lse


def check_attention(case, out, lse, sel, layer):
    ref_o, ref_l = reference_attention(case, sel, layer)
    o = out.double()
    assert torch.isfinite(o).all(), "non-finite output"
    err = (o - ref_o).abs()
    bound = 2e-2 * ref_o.abs().clamp(min=1.0)
    bad = (err > bound).nonzero()
    assert bad.numel() == 0, f"{bad.shape[0]} elements off, first {bad[0].tolist()}: {o[tuple(bad[0])]} vs {ref_o[tuple(bad[0])]}"
    rel = (o - ref_o).norm() / ref_o.norm().clamp(min=1e-30)
    assert rel <= 1e-2, f"relative L2 error {rel:.3e}"
    if lse is not None:
        l = lse.double()
        inf = torch.isinf(ref_l)
        assert torch.equal(torch.isinf(l), inf), "lse -inf pattern differs"
        lerr = (l[~inf] - ref_l[~inf]).abs()
        assert (lerr <= 1e-3 * ref_l[~inf].abs().clamp(min=1.0)).all(), f"lse off by {lerr.max():.3e}"


def indices_of(step):
    # zero-copy view of the op's selection buffer, copied out
    return torch.as_tensor(step.indices(), device=DEV).clone()


# ------------------------------------------------------------------ tests


def main():
    seed = int(os.environ.get("SPARSE_ATTN_SEED", random.randrange(1 << 31)))
    print(f"seed {seed} (SPARSE_ATTN_SEED={seed} replays it); torch {torch.__version__}, "
          f"{torch.cuda.get_device_name(DEV)}, sparse_attn from {sa.__file__}")
    gen = torch.Generator().manual_seed(seed)

    icfg, acfg = sa.MsaIndexerConfig.minimax_m3(), sa.MsaAttentionConfig.minimax_m3()
    # contexts crossing 128-token blocks: 1 block .. 258 blocks (> topk = 16)
    cache_lens = [0, 127, 128, 300, 2047, 5000, 9000, 33000]
    random.Random(seed).shuffle(cache_lens)
    case = Case(gen, cache_lens, n_layers=2, icfg=icfg, acfg=acfg)
    layer = 1
    print(f"decode batch {case.batch}, seqlen_k {case.seqlen_k}, {case.num_pages} pages, layer {layer} of 2")

    default = torch.cuda.current_stream(DEV)
    side = torch.cuda.Stream(DEV)
    other = torch.cuda.Stream(DEV)
    state = {}

    def on_default_stream():
        step = sa.MsaStep(icfg, acfg, max_rows=case.rows)
        assert step.stream == default.cuda_stream, (step.stream, default.cuda_stream)
        case.plan(step)
        print(f"     paths {step.paths()}")
        out, lse = case.outputs()
        case.run(step, layer, out, lse)
        torch.cuda.synchronize()
        sel = indices_of(step)
        check_selections(case, sel, layer)
        check_attention(case, out, lse, sel, layer)
        state["default"] = (step, out.clone(), lse.clone(), sel)

    def on_side_stream():
        side.wait_stream(default)  # the inputs were made on the default stream
        with torch.cuda.stream(side):
            step = sa.MsaStep(icfg, acfg, max_rows=case.rows)
            assert step.stream == side.cuda_stream
            case.plan(step)
            out, lse = case.outputs()
            case.run(step, layer, out, lse)
        side.synchronize()
        sel = indices_of(step)
        check_selections(case, sel, layer)
        check_attention(case, out, lse, sel, layer)
        d = state["default"]
        assert torch.equal(sel, d[3]), "selections differ from the default stream's"
        assert torch.equal(out, d[1]) and torch.equal(lse, d[2]), "outputs differ from the default stream's"
        state["side"] = step

    def on_another_stream():
        # built on `side`, run with `other` current: ordered by events
        step = state["side"]
        other.wait_stream(default)
        with torch.cuda.stream(other):
            out, lse = case.outputs()  # allocated and NaN-filled on `other`
            case.run(step, layer, out, lse)
            got = (out.clone(), lse.clone())  # on `other`: after the op's join
        torch.cuda.synchronize()
        d = state["default"]
        assert torch.equal(got[0], d[1]) and torch.equal(got[1], d[2]), "fork/join run differs"

    def graph(capture_stream_is_ops):
        step = state["side"]
        out, lse = case.outputs()
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        cap = side if capture_stream_is_ops else None
        with torch.cuda.graph(g, stream=cap):
            case.run(step, layer, out, lse)
        # new queries in place, then replay: the graph reads them
        q_index0, q0 = case.q_index.clone(), case.q.clone()
        case.q_index.copy_(randn(gen, *case.q_index.shape))
        case.q.copy_(randn(gen, *case.q.shape))
        g.replay()
        torch.cuda.synchronize()
        sel = indices_of(step)
        check_selections(case, sel, layer)
        check_attention(case, out, lse, sel, layer)
        # eager on the new queries gives the same bits
        e_out, e_lse = case.outputs()
        with torch.cuda.stream(side):
            side.wait_stream(default)
            case.run(step, layer, e_out, e_lse)
        torch.cuda.synchronize()
        assert torch.equal(e_out, out) and torch.equal(e_lse, lse), "graph replay differs from eager"
        case.q_index.copy_(q_index0)
        case.q.copy_(q0)
        torch.cuda.synchronize()

    check("MsaStep decode on the default stream vs reference", on_default_stream)
    check("MsaStep decode on a side stream (op built there) vs reference", on_side_stream)
    check("run with another current stream (event fork/join) = same bits", on_another_stream)
    check("CUDA graph captured on the op's stream, replayed with new q", lambda: graph(True))
    check("CUDA graph captured on torch's capture stream (fork/join), replayed", lambda: graph(False))

    # -------------------------------------------------------------- errors

    def raises(cls, arg, fn):
        def t():
            try:
                fn()
            except cls as e:
                assert isinstance(e, sa.Error)
                assert e.arg == arg, f"arg {e.arg!r}, expected {arg!r}: {e}"
                assert f"`{arg}`" in str(e), f"message does not name `{arg}`: {e}"
                print(f"     {type(e).__name__}: {e}")
            else:
                raise AssertionError(f"no {cls.__name__}")
        return t

    step = sa.MsaStep(icfg, acfg, max_rows=case.rows)
    case.plan(step)
    out, lse = case.outputs()
    c = case

    def run_with(**kw):
        a = dict(q_index=c.q_index, k_index=c.k_index, index_lookup=c.ilook, q=c.q, kv_cache=c.kv,
                 kv_lookup=c.klook, layer=layer, out=out, lse=lse)
        a.update(kw)
        step.run(**a)

    errs = [
        ("wrong dtype (q float16)", sa.ArgumentError, "q", lambda: run_with(q=c.q.half())),
        ("wrong dtype (index_lookup int64)", sa.ArgumentError, "index_lookup", lambda: run_with(index_lookup=c.ilook.long())),
        ("wrong dtype (lse bfloat16)", sa.ArgumentError, "lse", lambda: run_with(lse=lse.bfloat16())),
        ("wrong length (q_index one row more)", sa.ArgumentError, "q_index",
         lambda: run_with(q_index=torch.cat([c.q_index, c.q_index[:1]]))),
        ("wrong length (out)", sa.ArgumentError, "out", lambda: run_with(out=out[:-1])),
        ("non-contiguous (kv_cache transposed)", sa.ArgumentError, "kv_cache",
         lambda: run_with(kv_cache=c.kv.transpose(3, 4))),
        ("CPU tensor (out)", sa.ArgumentError, "out", lambda: run_with(out=out.cpu())),
        ("layer out of range", sa.ArgumentError, "layer", lambda: run_with(layer=2)),
        ("plan: page id out of the pool", sa.ArgumentError, "kv_lookup",
         lambda: step.plan(c.offsets, c.cache_lens, c.ilook_h, c.k_index,
                           torch.full_like(c.klook_h, c.num_pages), c.kv)),
        ("plan: offsets of the wrong length", sa.ArgumentError, "input_row_offsets",
         lambda: step.plan(c.offsets[:-1], c.cache_lens, c.ilook_h, c.k_index, c.klook_h, c.kv)),
        ("configs that disagree", sa.ArgumentError, "num_index_heads",
         lambda: sa.MsaStep(icfg, sa.MsaAttentionConfig(n_heads=64, n_kv_heads=8), max_rows=8)),
        ("run before plan", sa.NotPlannedError, None, None),
    ]
    for name, cls, arg, fn in errs:
        if cls is sa.NotPlannedError:
            def t():
                fresh = sa.MsaStep(icfg, acfg, max_rows=case.rows)
                try:
                    case.run(fresh, layer, out, lse)
                except sa.NotPlannedError as e:
                    assert isinstance(e, RuntimeError) and isinstance(e, sa.Error)
                    print(f"     {type(e).__name__}: {e}")
                else:
                    raise AssertionError("no NotPlannedError")
            check(f"error: {name}", t)
        else:
            check(f"error: {name}", raises(cls, arg, fn))
    # a failed plan leaves the op unplanned; a good one works again
    check("plan again after errors, run matches", lambda: (case.plan(step), run_with(), torch.cuda.synchronize(),
                                                           check_attention(case, out, lse, indices_of(step), layer)))

    # -------------------------------------------------------------- timing
    if os.environ.get("SPARSE_ATTN_PY_BENCH", "1") != "0":
        check("timing: M3 decode batch 64, 32K contexts", lambda: bench(gen))

    passed = sum(ok for _, ok in RESULTS)
    failed = len(RESULTS) - passed
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


def bench(gen):
    icfg, acfg = sa.MsaIndexerConfig.minimax_m3(), sa.MsaAttentionConfig.minimax_m3()
    batch, ctx = 64, 32768
    pages = math.ceil((ctx + 1) / BLOCK)
    num_pages = batch * pages
    look = torch.randperm(num_pages, generator=gen).to(torch.int32).view(batch, pages)
    s = torch.cuda.Stream(DEV)
    with torch.cuda.stream(s):
        k_index = torch.randn(num_pages, 1, 1, BLOCK, 1, 128, device=DEV).bfloat16()
        kv = torch.randn(num_pages, 2, 1, BLOCK, acfg.n_kv_heads, 128, device=DEV).bfloat16()
        q_index = torch.randn(batch, icfg.num_index_heads, 128, device=DEV).bfloat16()
        q = torch.randn(batch, acfg.n_heads, 128, device=DEV).bfloat16()
        out = torch.empty(batch, acfg.n_heads, 128, device=DEV, dtype=torch.bfloat16)
        dlook = look.to(DEV)
        step = sa.MsaStep(icfg, acfg, max_rows=batch)
        step.plan(list(range(batch + 1)), [ctx] * batch, look, k_index, look, kv)

        def once():
            step.run(q_index, k_index, dlook, q, kv, dlook, 0, out)

        for _ in range(5):
            once()
        t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        n = 100
        t0.record()
        for _ in range(n):
            once()
        t1.record()
        t1.synchronize()
        eager = t0.elapsed_time(t1) * 1e3 / n
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g, stream=s):
        once()
    with torch.cuda.stream(s):
        g.replay()
        t0.record()
        for _ in range(n):
            g.replay()
        t1.record()
    t1.synchronize()
    replay = t0.elapsed_time(t1) * 1e3 / n
    print(f"     MsaStep M3 decode b{batch} {ctx // 1024}K: {eager:.1f} us/step eager (back to back, "
          f"Python launch included), {replay:.1f} us/step graph replay")


if __name__ == "__main__":
    main()

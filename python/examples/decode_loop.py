#!/usr/bin/env python3
"""A vLLM/SGLang-style decode loop calling sparse_attn.MsaStep for the MSA
layers of a (random-weight) MiniMax-M3-shaped model.

    PYTHONPATH=/tmp/site python3 python/examples/decode_loop.py

Per engine step:

1. the scheduler's host metadata (offsets, cache lengths, page tables:
   numpy / CPU tensors it already has) -> ``step.plan(...)``, once per step,
   outside any CUDA graph; the plan serves every layer;
2. the device copies of the page tables are updated on the engine's stream;
3. per layer, after the layer wrote this step's K/V and index-K into the
   pools: ``step.run(...)`` on PyTorch's current stream (launches only: no
   synchronisation, no allocation).

CUDA graphs: ``run`` can be captured (``torch.cuda.graph``); the graph
replays correctly while the plan holds, i.e. until the next ``plan`` (any
change of batch, cache lengths or page tables) and while the tensors it
captured (their addresses) and the device page tables' contents stay as
they were. A decode step's lengths change every step, so in a serving
loop the MSA step runs eagerly between graph pieces (vLLM's piecewise
graphs); a full-step graph is re-captured, or used only for replays of the
same plan (e.g. re-running a step).
"""

import math

import torch

import sparse_attn as sa

BLOCK = 128


def main():
    torch.manual_seed(0)
    dev = torch.device("cuda", torch.cuda.current_device())
    icfg, acfg = sa.MsaIndexerConfig.minimax_m3(), sa.MsaAttentionConfig.minimax_m3()
    num_layers, num_pages, max_batch, max_pages = 4, 512, 8, 64

    engine_stream = torch.cuda.Stream(dev)
    with torch.cuda.stream(engine_stream):
        # The pools, in MAX's layout: [pages, kv_dim, layers, 128, heads, 128].
        kv_pool = torch.zeros(num_pages, 2, num_layers, BLOCK, acfg.n_kv_heads, 128, dtype=torch.bfloat16, device=dev)
        index_pool = torch.zeros(num_pages, 1, num_layers, BLOCK, 1, 128, dtype=torch.bfloat16, device=dev)
        # One MsaStep for all MSA layers, on the engine's stream.
        step = sa.MsaStep(icfg, acfg, max_rows=max_batch)

    # Scheduler state (host): three running requests with prompts already cached.
    free_pages = list(range(num_pages))[::-1]
    lengths = [300, 1000, 4097]  # tokens in the cache
    tables = []
    for n in lengths:
        tables.append([free_pages.pop() for _ in range(math.ceil(n / BLOCK))])
    with torch.cuda.stream(engine_stream):
        for b, n in enumerate(lengths):  # the prefill's K/V (random here)
            pos = torch.arange(n, device=dev)
            pages = torch.tensor(tables[b], device=dev)[pos // BLOCK]
            kv_pool[pages, :, :, pos % BLOCK] = torch.randn(n, 2, num_layers, acfg.n_kv_heads, 128, device=dev).bfloat16()
            index_pool[pages, 0, :, pos % BLOCK, 0] = torch.randn(n, num_layers, 128, device=dev).bfloat16()

    for it in range(16):
        batch = len(lengths)
        # -- scheduler (host): room for the new token, then the metadata
        for b in range(batch):
            if lengths[b] % BLOCK == 0:  # the new token opens a page
                tables[b].append(free_pages.pop())
        offsets = list(range(batch + 1))  # one new token per sequence
        cache_lengths = list(lengths)  # tokens cached before this step
        table = torch.zeros(batch, max_pages, dtype=torch.int32)
        for b, t in enumerate(tables):
            table[b, : len(t)] = torch.tensor(t, dtype=torch.int32)

        # -- plan once per step (host work + small uploads on the op's stream)
        step.plan(offsets, cache_lengths, table, index_pool, table, kv_pool)

        with torch.cuda.stream(engine_stream):
            d_table = table.to(dev, non_blocking=True)
            pos = torch.tensor(cache_lengths, device=dev)  # the new tokens' positions
            pages = d_table[torch.arange(batch, device=dev), pos // BLOCK]
            hidden = torch.randn(batch, 1024, device=dev).bfloat16()
            for layer in range(num_layers):
                # stand-ins for the layer's projections (q, q_index, new K/V, index-K)
                q = torch.randn(batch, acfg.n_heads, 128, device=dev).bfloat16()
                q_index = torch.randn(batch, icfg.num_index_heads, 128, device=dev).bfloat16()
                kv_pool[pages, :, layer, pos % BLOCK] = torch.randn(batch, 2, acfg.n_kv_heads, 128, device=dev).bfloat16()
                index_pool[pages, 0, layer, pos % BLOCK, 0] = torch.randn(batch, 128, device=dev).bfloat16()
                out = torch.empty(batch, acfg.n_heads, 128, dtype=torch.bfloat16, device=dev)
                # the MSA step on torch's current stream (the engine's)
                step.run(q_index, index_pool, d_table, q, kv_pool, d_table, layer, out)
                hidden = hidden + out.view(batch, -1)[:, :1024]  # stand-in for o_proj and the MLP
        for b in range(batch):
            lengths[b] += 1
        if it % 4 == 0:
            engine_stream.synchronize()
            print(f"step {it}: lengths {lengths}, paths {step.paths()}, |hidden| {hidden.float().norm():.1f}")
        if it == 7:  # a request joins (its prompt is assumed cached in fresh pages)
            n = 200
            tables.append([free_pages.pop() for _ in range(math.ceil(n / BLOCK))])
            lengths.append(n)
            with torch.cuda.stream(engine_stream):
                p = torch.arange(n, device=dev)
                pg = torch.tensor(tables[-1], device=dev)[p // BLOCK]
                kv_pool[pg, :, :, p % BLOCK] = torch.randn(n, 2, num_layers, acfg.n_kv_heads, 128, device=dev).bfloat16()
                index_pool[pg, 0, :, p % BLOCK, 0] = torch.randn(n, num_layers, 128, device=dev).bfloat16()
    engine_stream.synchronize()
    print("done")


if __name__ == "__main__":
    main()

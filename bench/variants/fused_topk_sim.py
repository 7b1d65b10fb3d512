#!/usr/bin/env python3
"""How much a top-k fused into the MLA logits kernel could filter (no GPU).

A fused prefill top-k (issue 11) would stream each row's scores tile by
tile (128 keys, in the order the logits kernel makes them) past a running
threshold: keys below it are dropped, the others appended to the row's
candidate list, and a list about to overflow `cap` is compacted to its `k`
largest, whose least becomes the threshold (the k-th largest key seen so
far: a lower bound of the row's k-th largest, so nothing the row selects is
ever dropped). This counts the candidates such a kernel appends (the
select work it cannot avoid) and the compactions, for the bench cases'
shapes:

- `mla-idx-prefill-16k`: causal, row i sees i + 1 keys (every 64th row);
- `mla-idx-prefill-8k-on-120k`: rows of 120K to 128K keys (every 1024th).

Scores: independent normal (the bench's random data; only their order
matters), and "recency", a trend rising by 2 standard deviations over 16K
positions (newer keys score higher, as attention often does), streamed
oldest first or newest first.

Usage: python3 bench/variants/fused_topk_sim.py   (numpy; about a second)
"""
import numpy as np

K, TILE = 2048, 128


def stream(scores, cap):
    """Candidates appended and compactions, streaming `scores` in tiles."""
    kept = np.empty(0)
    tau, appended, compactions = -np.inf, 0, 0
    for j in range(0, len(scores), TILE):
        tile = scores[j:j + TILE]
        new = tile[tile >= tau]
        if len(kept) + len(new) > cap:
            kept = np.sort(kept)[::-1][:K]
            tau = kept[-1]
            compactions += 1
            new = new[new >= tau]
        kept = np.concatenate([kept, new])
        appended += len(new)
    return appended, compactions


def case(name, lengths, trend, newest_first, cap, rng):
    visible = appended = compactions = 0
    for n in lengths:
        s = rng.standard_normal(n) + trend * np.arange(n) / 16384
        if newest_first:
            s = s[::-1]
        a, c = stream(s, cap)
        visible, appended, compactions = visible + n, appended + a, compactions + c
    order = "newest first" if newest_first else "oldest first"
    print(f"| {name} | {'recency' if trend else 'independent'}, {order} | {cap} "
          f"| {appended / visible:.2f} | {compactions / len(lengths):.1f} |")


def main():
    rng = np.random.default_rng(1)
    print("| case | scores, tile order | cap | candidates / visible keys | compactions a row |")
    print("|---|---|---|---|---|")
    prefill = range(1, 16385, 64)
    for trend in (0.0, 2.0):
        for newest_first in (False, True):
            for cap in (3072, 4096):
                case("prefill-16k", prefill, trend, newest_first, cap, rng)
    for cap in (3072, 4096):
        case("prefill-8k-on-120k", range(122881, 131073, 1024), 0.0, False, cap, rng)


if __name__ == "__main__":
    main()

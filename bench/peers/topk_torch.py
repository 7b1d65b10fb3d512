"""PyTorch peers of the standalone top-k: f32 scores [rows, n] on the GPU,
k = 2048, largest first (only the indices matter).

Cases (the Rust bench's names; one record per case per peer):

- `topk-64x128k`: 64 rows of 131072 scores.
- `topk-1x128k`: one row of 131072 scores.
- `topk-64x64k`: 64 rows of 65536 scores (the shape of the top-k of
  `mla-idx-decode-b64-64k`).

Data: torch.randn(rows, n) f32 on the GPU, torch seed 0 (reseeded per case).

Peers:

- `torch-topk`: torch.topk(scores, 2048, dim=1, largest=True, sorted=True).
- `torch-topk-stable-ties`: torch.sort(scores, dim=1, descending=True,
  stable=True), then the first 2048 indices: exactly "descending score, ties
  to the lower index", at the cost of a whole-row sort.

Same timing as the other peer scripts (`timing.median_us`). Rate: the scores
read once, bytes_read = rows * n * 4, gbs = bytes_read / us / 1e3.

Output, merged by `bench --peers` by case name: {case: {peer: us | null}},
plus keys the bench ignores: `_records_<case>` ({peer: record with case,
peer, us, rows, n, k, bytes_read, gbs, note, error}), `_torch`, `_gpu`.
A peer that fails is null in the map; its record says why.

usage: python3 topk_torch.py OUT.json [case ...]
env:   PEERS=stable  runs only the peers whose name contains one of the
       words, and then merges peer by peer into OUT.json if it exists.
"""
import json

import torch

from timing import median_us, peer_command_line

K = 2048
dev = "cuda"

CASES = {
    "topk-64x128k": dict(rows=64, n=131072),
    "topk-1x128k": dict(rows=1, n=131072),
    "topk-64x64k": dict(rows=64, n=65536),
}


def torch_topk(s):
    return (lambda: torch.topk(s, K, dim=1, largest=True, sorted=True).indices,
            "torch.topk(largest=True, sorted=True); returns values f32 + indices i64")


def torch_sort_stable(s):
    return (lambda: torch.sort(s, dim=1, descending=True, stable=True).indices[:, :K],
            "whole-row sort: torch.sort(descending=True, stable=True), first 2048 "
            "indices (ties to the lower index); sorts all n, not a top-k")


PEERS = [("torch-topk", torch_topk), ("torch-topk-stable-ties", torch_sort_stable)]


def run_peer(case, c, scores, peer, build):
    rows, n = c["rows"], c["n"]
    rec = dict(case=case, peer=peer, us=None, rows=rows, n=n, k=K,
               bytes_read=rows * n * 4, gbs=None, note=None, error=None)
    try:
        fn, rec["note"] = build(scores)
        rec["us"] = median_us(fn)
        rec["gbs"] = rec["bytes_read"] / rec["us"] / 1e3
    except Exception as e:  # a peer that cannot run is recorded, not fatal
        rec["error"] = repr(e)[:1000]
    gbs = f"{rec['gbs']:.0f} GB/s" if rec["gbs"] else "-"
    print(f"{case} {peer}: {rec['us']} us, {gbs}"
          + (f", ERROR {rec['error']}" if rec["error"] else ""), flush=True)
    return rec["us"], rec


if __name__ == "__main__":
    out, names, only, res = peer_command_line(CASES)
    res["_torch"], res["_gpu"] = torch.__version__, torch.cuda.get_device_name()
    for name in names:
        c = CASES[name]
        peers = [(p, b) for p, b in PEERS if not only or any(w in p for w in only)]
        if not peers:
            continue
        torch.manual_seed(0)
        scores = torch.randn(c["rows"], c["n"], device=dev, dtype=torch.float32)
        res.setdefault(name, {})
        recs = res.setdefault(f"_records_{name}", {})
        for peer, build in peers:
            res[name][peer], recs[peer] = run_peer(name, c, scores, peer, build)
        del scores
        torch.cuda.empty_cache()
        json.dump(res, open(out, "w"), indent=1)  # after each case: partial results survive

"""Timing shared by the PyTorch peer scripts: the same method as the Rust
bench (`time_ms` in tests/src/bin/bench.rs)."""
import json
import os
import sys

import torch


def median_us(fn, reps=20, batches=5, warmup=3):
    """Per-call time in microseconds: `reps` calls back to back between two
    CUDA events, median over `batches`, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(batches):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) * 1e3 / reps)
    ts.sort()
    return ts[len(ts) // 2]


def peer_command_line(cases):
    """The peer scripts' command line, `OUT.json [case ...]` with the env
    `PEERS=word,...`: returns (out, case names, PEERS words, results so far).
    Unknown case names stop the script. With PEERS set and OUT.json there,
    the results so far are its contents (the run merges into them)."""
    out = sys.argv[1]
    names = sys.argv[2:] or list(cases)
    bad = [n for n in names if n not in cases]
    if bad:
        sys.exit(f"unknown case(s) {bad}; known: {list(cases)}")
    only = [w for w in os.environ.get("PEERS", "").split(",") if w]
    res = {}
    if only and os.path.exists(out):
        res = json.load(open(out))
        print(f"PEERS={','.join(only)}: merging into {out}", flush=True)
    return out, names, only, res

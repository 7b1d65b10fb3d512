"""Timing shared by the PyTorch peer scripts: the same method as the Rust
bench (`time_ms` in tests/src/bin/bench.rs)."""
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

#!/usr/bin/env python3
"""What of the Python binding runs without a GPU (and without PyTorch): the
import, the configs and layouts (the Rust crate's numbers), the exception
classes, and the errors an op raises where it cannot run. CI runs it on the
installed wheel:

    PYTHONPATH=/tmp/site python3 python/tests/test_cpu.py

Prints "N passed, M failed"; exits non-zero on a failure.
"""

import math
import sys
import traceback

import sparse_attn as sa

RESULTS = []


def test(fn):
    try:
        fn()
    except Exception:  # noqa: BLE001
        RESULTS.append(False)
        print(f"FAIL {fn.__name__}")
        traceback.print_exc()
    else:
        RESULTS.append(True)
        print(f"ok   {fn.__name__}")
    return fn


@test
def configs_are_the_rust_ones():
    i = sa.MsaIndexerConfig.minimax_m3()
    assert (i.num_index_heads, i.head_dim, i.block_size, i.topk, i.init_blocks, i.local_blocks) == (4, 128, 128, 16, 0, 1)
    assert i.scale == sa.MsaIndexerConfig().scale
    assert abs(i.scale - 1 / math.sqrt(128)) < 1e-8
    assert i == sa.MsaIndexerConfig()
    a = sa.MsaAttentionConfig.minimax_m3()
    assert (a.n_heads, a.n_kv_heads, a.head_dim, a.topk) == (64, 4, 128, 16)
    assert a == sa.MsaAttentionConfig()
    a.topk = 8
    assert a.topk == 8 and a != sa.MsaAttentionConfig()
    assert "topk: 8" in repr(a)


@test
def layouts():
    kv = sa.PagedLayout.kv(10, 2, 4)
    assert kv.shape == (10, 2, 2, 128, 4, 128)
    assert kv.elements() == 10 * 2 * 2 * 128 * 4 * 128
    ik = sa.PagedLayout.index_k(7, 3)
    assert ik.shape == (7, 1, 3, 128, 1, 128)
    assert sa.PagedLayout(*ik.shape).shape == ik.shape


@test
def exception_classes():
    assert issubclass(sa.ArgumentError, sa.Error) and issubclass(sa.ArgumentError, ValueError)
    assert issubclass(sa.CudaError, sa.Error) and issubclass(sa.CudaError, RuntimeError)
    assert issubclass(sa.NotPlannedError, sa.Error) and issubclass(sa.NotPlannedError, RuntimeError)
    assert sa.Error.__module__ == "sparse_attn"
    assert sa.Error("x").arg is None


@test
def building_an_op_without_a_gpu_raises():
    if sa.driver_present():
        print("     (a driver is present: skipped)")
        return
    for make in (lambda: sa.MsaStep(max_rows=4, device=0, stream=0),
                 lambda: sa.MsaIndexer(device=0, stream=0),
                 lambda: sa.MsaAttention(max_rows=4, device=0, stream=0),
                 lambda: sa.TopK(device=0, stream=0)):
        try:
            make()
        except sa.CudaError as e:
            assert "no CUDA driver" in str(e), e
        else:
            raise AssertionError("no CudaError")


@test
def bad_device_and_stream_name_the_argument():
    for kw, arg in ((dict(device=0, stream="s"), "stream"), (dict(device=-1, stream=0), "device")):
        try:
            sa.MsaStep(max_rows=4, **kw)
        except sa.ArgumentError as e:
            assert e.arg == arg and f"`{arg}`" in str(e), e
        else:
            raise AssertionError("no error")


passed = sum(RESULTS)
print(f"{passed} passed, {len(RESULTS) - passed} failed")
sys.exit(0 if passed == len(RESULTS) else 1)

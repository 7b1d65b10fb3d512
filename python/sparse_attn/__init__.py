"""sparse_attn: MiniMax-M3's MSA indexer and block-sparse attention (and a
row top-k) for NVIDIA Hopper, on PyTorch CUDA tensors.

The same plan/run objects as the Rust crate ``sparse-attn``:

- ``MsaStep(index_config, attention_config, max_rows)``: the indexer then
  the attention, the op a serving engine runs per MSA layer;
- ``MsaIndexer(config)``, ``MsaAttention(config, max_rows)``, ``TopK()``.

Each op is built on a CUDA device and stream (default: PyTorch's current
device and its current stream at construction; ``device=``/``stream=``
choose others). ``plan`` takes the batch's host metadata (lists, numpy
arrays or CPU tensors; a CUDA tensor is copied to the host, which waits for
it) and uploads the plan; one plan serves every layer. ``run`` takes CUDA
tensors (contiguous; bf16 for activations and caches, int32 for page tables
and selections, float32 for lse) and only enqueues kernels: it never
synchronises and never allocates, so it can be captured in a CUDA graph
while the plan holds.

Streams: ``run`` launches on PyTorch's current stream when that is the op's
stream (the common case: build the op under the stream you run it on). On
another current stream it still works, ordered by events both ways (the
op's stream waits for the current stream's earlier work, and the current
stream's later work waits for the op): outputs are ready on the current
stream either way, with no host synchronisation.

Lifetimes: ``run`` reads and writes the tensors after it returns (when the
stream gets there): keep them alive until then, as for any CUDA kernel.
PyTorch's caching allocator does this for tensors allocated on the stream
they are used on.

Errors: every bad argument raises ``sparse_attn.ArgumentError`` (a
``ValueError``) whose message and ``.arg`` name the argument; CUDA failures
raise ``sparse_attn.CudaError``, ``run`` before ``plan`` raises
``sparse_attn.NotPlannedError`` (both ``RuntimeError``); all are
``sparse_attn.Error``.

Importing needs neither a GPU nor PyTorch; building an op needs the NVIDIA
driver (and PyTorch, unless ``device=`` and ``stream=`` are given).
"""

import sys as _sys

from . import _native
from ._native import (
    ArgumentError,
    CudaError,
    DeviceView,
    Error,
    MsaAttentionConfig,
    MsaIndexerConfig,
    NotPlannedError,
    PagedLayout,
    driver_present,
)

__all__ = [
    "ArgumentError",
    "CudaError",
    "DeviceView",
    "Error",
    "MsaAttention",
    "MsaAttentionConfig",
    "MsaIndexer",
    "MsaIndexerConfig",
    "MsaStep",
    "NotPlannedError",
    "PagedLayout",
    "TopK",
    "driver_present",
]


def _arg_error(arg, expected, got):
    """``ArgumentError`` worded as the Rust crate's (``.arg`` set)."""
    e = ArgumentError(f"invalid argument `{arg}`: expected {expected}, got {got}")
    e.arg = arg
    return e


def _torch():
    """PyTorch, imported on first use (it is not a dependency)."""
    torch = _sys.modules.get("torch")
    if torch is None:
        try:
            import torch
        except ImportError:
            return None
    return torch


def _device_index(device):
    if device is None:
        torch = _torch()
        if torch is None:
            raise _arg_error("device", "a device ordinal (PyTorch is not installed to supply one)", None)
        return torch.cuda.current_device()
    if isinstance(device, int):
        return device
    torch = _torch()
    if torch is not None:
        d = torch.device(device)
        if d.type != "cuda":
            raise _arg_error("device", "a CUDA device", d)
        return d.index if d.index is not None else torch.cuda.current_device()
    raise _arg_error("device", "a device ordinal", repr(device))


def _stream_handle(stream, device):
    """A CUstream as an int: ``stream`` (an int, or an object with
    ``cuda_stream`` such as ``torch.cuda.Stream``) or PyTorch's current
    stream of ``device``."""
    if stream is None:
        torch = _torch()
        if torch is None:
            raise _arg_error("stream", "a CUstream handle (PyTorch is not installed to supply one)", None)
        return torch.cuda.current_stream(device).cuda_stream
    if isinstance(stream, int):
        return stream
    handle = getattr(stream, "cuda_stream", None)
    if isinstance(handle, int):
        return handle
    raise _arg_error("stream", "a torch.cuda.Stream or a CUstream handle (int)", type(stream).__name__)


def _host(x):
    """Host copy of plan metadata: tensors become numpy arrays (or lists)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        x = x.detach().cpu().contiguous()
        try:
            return x.numpy()
        except (RuntimeError, TypeError, ImportError):
            return x.tolist()
    return x


class _Op:
    """What every op shares: its device and stream, and the current stream
    its runs go to."""

    def _bind(self, device, stream):
        self._device = _device_index(device)
        self._stream = _stream_handle(stream, self._device)
        return self._device, self._stream

    def _current(self, stream):
        if stream is not None:
            return _stream_handle(stream, self._device)
        torch = _sys.modules.get("torch")
        if torch is None:
            return self._stream
        return torch.cuda.current_stream(self._device).cuda_stream

    @property
    def device(self):
        """The CUDA device ordinal the op runs on."""
        return self._device

    @property
    def stream(self):
        """The op's own stream (CUstream handle as an int)."""
        return self._stream


class MsaStep(_Op):
    """The MSA step: the indexer picks each row's top-k KV blocks per KV head
    (from the index-K pool), then the block-sparse attention reads them
    (from the main K/V pool). Decode, prefill, chunked prefill and
    speculative rows are planned alike.

    ``index_config.num_index_heads`` must equal ``attention_config.n_kv_heads``
    and the two ``topk`` must agree. ``max_rows`` bounds the rows (new
    tokens) of a batch.
    """

    def __init__(self, index_config=None, attention_config=None, max_rows=256, *, device=None, stream=None):
        ic = index_config if index_config is not None else MsaIndexerConfig.minimax_m3()
        ac = attention_config if attention_config is not None else MsaAttentionConfig.minimax_m3()
        dev, s = self._bind(device, stream)
        self._op = _native.MsaStepNative(ic, ac, max_rows, dev, s)

    def plan(self, input_row_offsets, cache_lengths, index_lookup, index_layout, kv_lookup, kv_layout):
        """Plans a ragged batch (host metadata; one plan serves every layer).

        - ``input_row_offsets``: ``[batch + 1]``, rows of sequence b are
          ``offsets[b] .. offsets[b+1]``;
        - ``cache_lengths``: ``[batch]`` tokens cached *before* this step
          (the new tokens' K/V and index-K are already in the pools);
        - ``index_lookup`` / ``kv_lookup``: page tables ``[batch, max_pages]``
          (2-D, or flat with ``batch * max_pages`` entries), the host copies of
          what ``run`` gets on the device;
        - ``index_layout`` / ``kv_layout``: the pools' shapes: the pool
          tensors themselves (their 6-D shapes) or ``PagedLayout``s.

        The plan holds until the next ``plan``; the device page tables must
        keep holding what it was given.
        """
        self._op.plan(
            _host(input_row_offsets),
            _host(cache_lengths),
            _host(index_lookup),
            index_layout,
            _host(kv_lookup),
            kv_layout,
        )

    def run(self, q_index, k_index, index_lookup, q, kv_cache, kv_lookup, layer, out, lse=None, *, stream=None):
        """Indexer then attention on layer ``layer`` of both pools.

        ``q_index``: bf16 ``[num_rows, n_kv_heads, 128]``; ``k_index``: the
        index-K pool bf16 ``[num_pages, 1, num_layers, 128, 1, 128]``;
        ``q``: bf16 ``[num_rows, n_heads, 128]``; ``kv_cache``: bf16
        ``[num_pages, 2, num_layers, 128, n_kv_heads, 128]``; page tables
        int32 ``[batch, max_pages]``; writes ``out`` bf16 ``[num_rows,
        n_heads, 128]`` (and ``lse`` float32 ``[num_rows, n_heads]``).
        Enqueued on the current stream (or ``stream``); no synchronisation.
        """
        self._op.run(
            q_index, k_index, index_lookup, q, kv_cache, kv_lookup, layer, out, lse, self._current(stream)
        )

    def indices(self):
        """The last run's selections, int32 ``[n_kv_heads, num_rows, topk]``
        block ids (best first, -1 padded), as a ``DeviceView``
        (``torch.as_tensor(step.indices(), device="cuda")`` wraps it without
        a copy). Written on the op's stream; valid until the next ``plan``."""
        return self._op.indices()

    def paths(self):
        """The planned kernels' paths: (indexer, attention)."""
        return self._op.paths()


class MsaIndexer(_Op):
    """The MSA indexer: top-k KV blocks per (index head, row)."""

    def __init__(self, config=None, *, device=None, stream=None):
        cfg = config if config is not None else MsaIndexerConfig.minimax_m3()
        dev, s = self._bind(device, stream)
        self._op = _native.MsaIndexerNative(cfg, dev, s)

    def plan(self, input_row_offsets, cache_lengths, lookup, layout):
        """Plans a ragged batch against the index-K pool (``layout``: the pool
        tensor or a ``PagedLayout``); see ``MsaStep.plan``."""
        self._op.plan(_host(input_row_offsets), _host(cache_lengths), _host(lookup), layout)

    def run(self, q, k_cache, lookup, layer, out_idxs, *, stream=None):
        """``q`` bf16 ``[num_rows, H, 128]``, ``k_cache`` the index-K pool,
        ``lookup`` int32 ``[batch, max_pages]``; writes ``out_idxs`` int32
        ``[H, num_rows, topk]``."""
        self._op.run(q, k_cache, lookup, layer, out_idxs, self._current(stream))


class MsaAttention(_Op):
    """The MSA block-sparse attention over the selected blocks."""

    def __init__(self, config=None, max_rows=256, *, device=None, stream=None):
        cfg = config if config is not None else MsaAttentionConfig.minimax_m3()
        dev, s = self._bind(device, stream)
        self._op = _native.MsaAttentionNative(cfg, max_rows, dev, s)

    def plan(self, input_row_offsets, cache_lengths, lookup, layout):
        """Plans a ragged batch against the K/V pool; see ``MsaStep.plan``."""
        self._op.plan(_host(input_row_offsets), _host(cache_lengths), _host(lookup), layout)

    def run(self, q, kv_cache, lookup, d_indices, layer, out, lse=None, *, stream=None):
        """``d_indices`` int32 ``[n_kv_heads, num_rows, topk]``; see
        ``MsaStep.run`` for the rest."""
        self._op.run(q, kv_cache, lookup, d_indices, layer, out, lse, self._current(stream))


class TopK(_Op):
    """The ``k`` largest entries of each float32 row, descending, ties to
    the lower index, -1 padded."""

    def __init__(self, *, device=None, stream=None):
        dev, s = self._bind(device, stream)
        self._op = _native.TopKNative(dev, s)

    def plan(self, rows, n, k):
        """Plans ``rows`` rows of ``n`` entries, ``k`` kept per row."""
        self._op.plan(rows, n, k)

    def run(self, scores, out, row_lens=None, *, stream=None):
        """``scores`` float32 ``[rows, n]`` → ``out`` int32 ``[rows, k]``
        (``row_lens`` int32 ``[rows]`` limits each row)."""
        self._op.run(scores, out, row_lens, self._current(stream))

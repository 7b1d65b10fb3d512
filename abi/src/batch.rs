//! The ragged batch and the paged cache, described once for the host, the
//! reference and the tests: plain data and the arithmetic on it. Checking a
//! description against what an op accepts is the host's job
//! (`sparse_attn::batch`); the reference has its own, more permissive checks.
//!
//! Conventions (`shared/spec/README.md`): sequence `b` has `q_len[b] =
//! offsets[b+1] - offsets[b]` new tokens packed in rows `offsets[b] ..
//! offsets[b+1]`; `cache_lengths[b]` counts tokens cached *before* this step,
//! so it has `seqlen_k[b] = cache_len[b] + q_len[b]` keys (the new tokens'
//! keys are already in the cache) and its row `i` sits at position
//! `q_pos = cache_len[b] + i`.
//!
//! The paged cache is one tensor in MAX's layout
//! `blocks[num_pages, kv_dim, num_layers, page_size, n_heads, head_dim]`
//! (row-major, `head_dim` contiguous): logical token `t` of sequence `b` is
//! slot `t % page_size` of pool page `lookup[b * max_pages + t / page_size]`.

use core::ops::Range;

/// A ragged batch's metadata as the host sees it: borrowed
/// `input_row_offsets: u32 [batch + 1]` and `cache_lengths: u32 [batch]`.
///
/// The accessors index the slices directly: they assume a well-formed batch
/// (`batch + 1` offsets, non-decreasing) and panic otherwise; the host's
/// `validate` and the reference's `validate` say what is wrong first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RaggedBatch<'a> {
    /// `input_row_offsets: u32 [batch + 1]`, non-decreasing, starting at 0.
    pub input_row_offsets: &'a [u32],
    /// `cache_lengths: u32 [batch]`: tokens cached before this step.
    pub cache_lengths: &'a [u32],
}

impl<'a> RaggedBatch<'a> {
    /// The batch of these two arrays (not checked).
    pub const fn new(input_row_offsets: &'a [u32], cache_lengths: &'a [u32]) -> Self {
        RaggedBatch {
            input_row_offsets,
            cache_lengths,
        }
    }

    /// Number of sequences (`cache_lengths.len()`).
    pub fn batch(&self) -> usize {
        self.cache_lengths.len()
    }

    /// Total new tokens (`offsets[batch]`; 0 for empty offsets).
    pub fn num_rows(&self) -> usize {
        self.input_row_offsets.last().copied().unwrap_or(0) as usize
    }

    /// New tokens of sequence `b` (`offsets[b + 1] - offsets[b]`).
    pub fn q_len(&self, b: usize) -> usize {
        (self.input_row_offsets[b + 1] - self.input_row_offsets[b]) as usize
    }

    /// Keys of sequence `b` (cached plus new), as u64 so it cannot overflow.
    pub fn seqlen_k(&self, b: usize) -> u64 {
        self.cache_lengths[b] as u64 + self.q_len(b) as u64
    }

    /// Largest `q_len` of the batch (0 for an empty batch).
    pub fn max_q_len(&self) -> usize {
        (0..self.batch()).map(|b| self.q_len(b)).max().unwrap_or(0)
    }

    /// Largest `seqlen_k` of the batch (0 for an empty batch).
    pub fn max_seqlen_k(&self) -> u64 {
        (0..self.batch())
            .map(|b| self.seqlen_k(b))
            .max()
            .unwrap_or(0)
    }

    /// Pages of `page_size` tokens that sequence `b`'s keys occupy
    /// (`ceil(seqlen_k / page_size)`, the leading entries of its page-table
    /// row that are read). Panics if `page_size` is 0.
    pub fn pages(&self, b: usize, page_size: usize) -> usize {
        self.seqlen_k(b).div_ceil(page_size as u64) as usize
    }

    /// Every packed row in order, with its sequence and query position: the
    /// one place that turns a row into `(b, q_pos)`.
    pub fn rows(&self) -> Rows<'a> {
        Rows {
            batch: *self,
            seq: 0,
            i: 0,
        }
    }
}

/// Where a packed row of a [`RaggedBatch`] sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RowPos {
    /// Sequence `b` of the row (row of the page table).
    pub seq: usize,
    /// Absolute position of the row's token, `cache_len[b] + i` for the
    /// row's index `i` within its sequence.
    pub q_pos: usize,
}

/// Iterator over the rows of a [`RaggedBatch`] ([`RaggedBatch::rows`]):
/// row `t = offsets[b] + i` yields `RowPos { seq: b, q_pos: cache_len[b] + i }`.
#[derive(Clone, Debug)]
pub struct Rows<'a> {
    batch: RaggedBatch<'a>,
    seq: usize,
    i: usize,
}

impl Iterator for Rows<'_> {
    type Item = RowPos;

    fn next(&mut self) -> Option<RowPos> {
        while self.seq < self.batch.batch() {
            let b = self.seq;
            if self.i < self.batch.q_len(b) {
                let q_pos = self.batch.cache_lengths[b] as usize + self.i;
                self.i += 1;
                return Some(RowPos { seq: b, q_pos });
            }
            self.seq += 1;
            self.i = 0;
        }
        None
    }
}

/// Element type of a paged cache.
///
/// The MSA kernels implement [`KvDtype::Bf16`] only; the host rejects any
/// other with `Error::Unsupported` naming `dtype`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvDtype {
    /// bf16 values (2 bytes), used as they are.
    #[default]
    Bf16,
    /// FP8 E4M3 bytes with one f32 scale per token and head: the value of
    /// element `(page, kv, layer, slot, head, d)` is `e4m3 * scale`, where
    /// the scales are a second tensor
    /// `scales: f32 [num_pages, kv_dim, num_layers, page_size, n_heads]`
    /// (the pool's layout without `head_dim`, so a page of data and its
    /// scales are found with the same page id: the scale of a row is entry
    /// `offset(page, kv, layer, slot, head) / head_dim`). Keeping the scales
    /// apart keeps every data row 16-byte aligned for the tensor copies.
    Fp8E4m3,
    /// FP8 E4M3 bytes with their scales inside the pool, the page layout of
    /// DeepGEMM's and vLLM's index-K cache: each `(page, kv, layer)` block
    /// holds its `page_size * n_heads` rows of `head_dim` bytes followed by
    /// their `page_size * n_heads` f32 scales (`page_size * n_heads *
    /// (head_dim + 4)` bytes a block; [`PagedLayout::scale_offset`]). With
    /// one layer and one head this is vLLM's `[num_blocks, page_size * 132]`.
    Fp8E4m3Fused,
}

impl KvDtype {
    /// Bytes of one element of the pool.
    pub const fn elem_bytes(self) -> usize {
        match self {
            KvDtype::Bf16 => 2,
            KvDtype::Fp8E4m3 | KvDtype::Fp8E4m3Fused => 1,
        }
    }

    /// Whether the pool comes with a separate per-token scale tensor.
    pub const fn has_scales(self) -> bool {
        matches!(self, KvDtype::Fp8E4m3)
    }

    /// Whether the scales are inside the pool ([`KvDtype::Fp8E4m3Fused`]).
    pub const fn fused_scales(self) -> bool {
        matches!(self, KvDtype::Fp8E4m3Fused)
    }
}

/// Shape of a paged cache in MAX's layout
/// `blocks[num_pages, kv_dim, num_layers, page_size, n_heads, head_dim]`
/// (`kv_dim` 2 for the main K/V cache, index 0 = K, 1 = V, `n_heads =
/// n_kv_heads`; 1 for the index-K cache, with one head), and its element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PagedLayout {
    /// Pages in the pool.
    pub num_pages: usize,
    /// 2 for the main K/V cache (0 = K, 1 = V), 1 for the index-K cache.
    pub kv_dim: usize,
    /// Layers stored in the pool.
    pub num_layers: usize,
    /// Tokens per page (128 for the MSA ops: one page is one block).
    pub page_size: usize,
    /// Heads per token (the KV heads; 1 for the index-K cache).
    pub n_heads: usize,
    /// Elements per head row.
    pub head_dim: usize,
    /// Element type (and where the scales are, for FP8).
    pub dtype: KvDtype,
}

impl PagedLayout {
    /// The MLA lightning indexer's FP8 index-K cache: `[num_pages, 1,
    /// num_layers, page_size, 1, 128]` e4m3 bytes, its scales apart
    /// ([`KvDtype::Fp8E4m3`]: `k_scales: f32 [num_pages, 1, num_layers,
    /// page_size, 1]`) or inside each page ([`KvDtype::Fp8E4m3Fused`]).
    pub const fn index_k_fp8(
        num_pages: usize,
        num_layers: usize,
        page_size: usize,
        fused: bool,
    ) -> Self {
        PagedLayout {
            num_pages,
            kv_dim: 1,
            num_layers,
            page_size,
            n_heads: 1,
            head_dim: 128,
            dtype: if fused {
                KvDtype::Fp8E4m3Fused
            } else {
                KvDtype::Fp8E4m3
            },
        }
    }

    /// Index-K cache: `[num_pages, 1, num_layers, page_size, 1, head_dim]`, bf16.
    pub const fn index_k(
        num_pages: usize,
        num_layers: usize,
        page_size: usize,
        head_dim: usize,
    ) -> Self {
        PagedLayout {
            num_pages,
            kv_dim: 1,
            num_layers,
            page_size,
            n_heads: 1,
            head_dim,
            dtype: KvDtype::Bf16,
        }
    }

    /// Main K/V cache:
    /// `[num_pages, 2, num_layers, page_size, n_kv_heads, head_dim]`, bf16.
    pub const fn kv(
        num_pages: usize,
        num_layers: usize,
        page_size: usize,
        n_kv_heads: usize,
        head_dim: usize,
    ) -> Self {
        PagedLayout {
            num_pages,
            kv_dim: 2,
            num_layers,
            page_size,
            n_heads: n_kv_heads,
            head_dim,
            dtype: KvDtype::Bf16,
        }
    }

    /// Elements of the whole pool (bf16 values or e4m3 bytes).
    pub const fn elements(&self) -> usize {
        self.num_pages * self.page_stride()
    }

    /// Elements from one page to the next
    /// (`kv_dim * num_layers * block_stride()`).
    pub const fn page_stride(&self) -> usize {
        self.kv_dim * self.num_layers * self.block_stride()
    }

    /// Elements of one `(page, kv, layer)` block: `page_size * n_heads *
    /// head_dim`, plus `4 * page_size * n_heads` scale bytes for
    /// [`KvDtype::Fp8E4m3Fused`].
    pub const fn block_stride(&self) -> usize {
        let rows = self.page_size * self.n_heads;
        rows * self.head_dim
            + if self.dtype.fused_scales() {
                4 * rows
            } else {
                0
            }
    }

    /// Element offset of `(page 0, kv, layer, slot 0, head 0, 0)` within a page.
    pub const fn layer_offset(&self, kv: usize, layer: usize) -> usize {
        (kv * self.num_layers + layer) * self.block_stride()
    }

    /// [`KvDtype::Fp8E4m3Fused`]: byte offset of the f32 scale of row
    /// `(page, kv, layer, slot, head)` in the pool (4-byte aligned).
    /// Indices are not range-checked.
    pub const fn scale_offset(
        &self,
        page: usize,
        kv: usize,
        layer: usize,
        slot: usize,
        head: usize,
    ) -> usize {
        page * self.page_stride()
            + self.layer_offset(kv, layer)
            + self.page_size * self.n_heads * self.head_dim
            + 4 * (slot * self.n_heads + head)
    }

    /// Element offset of `(page, kv, layer, slot, head, 0)`: the start of
    /// that `head_dim`-long row. Indices are not range-checked.
    pub const fn offset(
        &self,
        page: usize,
        kv: usize,
        layer: usize,
        slot: usize,
        head: usize,
    ) -> usize {
        page * self.page_stride()
            + self.layer_offset(kv, layer)
            + (slot * self.n_heads + head) * self.head_dim
    }

    /// Entries of the scale tensor (`elements() / head_dim`), 0 when the
    /// dtype has no scales.
    pub const fn scale_elements(&self) -> usize {
        if self.dtype.has_scales() {
            self.num_pages * self.kv_dim * self.num_layers * self.page_size * self.n_heads
        } else {
            0
        }
    }

    /// The kernels' view of one layer of this pool ([`crate::PagedKv`]);
    /// `v_off` is 0 for a pool without V. Sizes are narrowed to the kernel's
    /// widths without checks (the host checks them first).
    pub const fn paged_kv(&self, layer: usize, max_pages: usize) -> crate::PagedKv {
        crate::PagedKv {
            num_pages: self.num_pages as u32,
            max_pages: max_pages as u32,
            page_stride: self.page_stride() as u64,
            k_off: self.layer_offset(0, layer) as u64,
            v_off: if self.kv_dim > 1 {
                self.layer_offset(1, layer) as u64
            } else {
                0
            },
        }
    }
}

/// A page table `lookup: u32 [batch, max_pages]` (row-major): logical page
/// `j` of sequence `b` is pool page `lookup[b * max_pages + j]`. Entries
/// past a sequence's last page are unspecified (engines leave stale ids
/// there) and are never read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageTable<'a> {
    /// The table, `batch * max_pages` entries.
    pub lookup: &'a [u32],
    /// Row stride of `lookup`: pages a sequence can address.
    pub max_pages: usize,
}

impl<'a> PageTable<'a> {
    /// The table of `lookup` with rows of `max_pages` (not checked).
    pub const fn new(lookup: &'a [u32], max_pages: usize) -> Self {
        PageTable { lookup, max_pages }
    }

    /// Rows the table holds (`lookup.len() / max_pages`, 0 when `max_pages` is 0).
    pub fn batch(&self) -> usize {
        self.lookup.len().checked_div(self.max_pages).unwrap_or(0)
    }

    /// The `max_pages` entries of sequence `b`'s row (its used pages are the
    /// leading [`RaggedBatch::pages`] ones). Panics if the row is missing.
    pub fn pages_of(&self, b: usize) -> &'a [u32] {
        &self.lookup[b * self.max_pages..][..self.max_pages]
    }

    /// Pool page of logical page `j` of sequence `b`, `None` when `j` is
    /// past the row or the row is missing.
    pub fn page(&self, b: usize, j: usize) -> Option<u32> {
        if j >= self.max_pages {
            return None;
        }
        self.lookup.get(b * self.max_pages + j).copied()
    }
}

/// Which keys a query sees, by position (besides `k_pos < seqlen_k`, which
/// always holds: the unwritten tail of the last page is never visible).
///
/// The MSA indexer and attention are causal by position: `Mask::Causal`
/// (a row at `q_pos` sees keys `0 ..= q_pos` of its sequence, and the
/// attention only among its selected blocks). `None` and `SlidingWindow`
/// are for the dense prefill.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Mask {
    /// Every key of the sequence.
    None,
    /// Keys at or before the query: `k_pos <= q_pos`.
    #[default]
    Causal,
    /// The last `window` keys up to the query, itself included:
    /// `q_pos - window < k_pos <= q_pos` (`window = 0` sees nothing; a window
    /// of `seqlen_k` or more is `Causal`). FlashInfer's `window_left` and
    /// FlashAttention's `window_size_left` are `window - 1`.
    SlidingWindow {
        /// Keys visible, the query's own included.
        window: usize,
    },
}

impl Mask {
    /// Whether a query at `q_pos` sees the key at `k_pos`.
    pub const fn visible(self, q_pos: usize, k_pos: usize) -> bool {
        match self {
            Mask::None => true,
            Mask::Causal => k_pos <= q_pos,
            Mask::SlidingWindow { window } => k_pos <= q_pos && q_pos - k_pos < window,
        }
    }

    /// The visible keys of a query at `q_pos` in a sequence of `seqlen_k`
    /// keys, as one range (every mask here is contiguous):
    /// `k in key_range(q, n)` iff `k < n && visible(q, k)`.
    pub const fn key_range(self, q_pos: usize, seqlen_k: usize) -> Range<usize> {
        let causal_end = if q_pos < seqlen_k {
            q_pos + 1
        } else {
            seqlen_k
        };
        match self {
            Mask::None => 0..seqlen_k,
            Mask::Causal => 0..causal_end,
            Mask::SlidingWindow { window } => {
                let start = (q_pos + 1).saturating_sub(window);
                let start = if start < causal_end {
                    start
                } else {
                    causal_end
                };
                start..causal_end
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ragged_batch_arithmetic() {
        let (off, cl) = ([0u32, 2, 2, 5], [3u32, 7, 0]);
        let b = RaggedBatch::new(&off, &cl);
        assert_eq!((b.batch(), b.num_rows(), b.max_q_len()), (3, 5, 3));
        assert_eq!([b.seqlen_k(0), b.seqlen_k(1), b.seqlen_k(2)], [5, 7, 3]);
        assert_eq!(b.max_seqlen_k(), 7);
        assert_eq!([b.pages(0, 4), b.pages(1, 4), b.pages(2, 4)], [2, 2, 1]);
        let rows: [(usize, usize); 5] = [(0, 3), (0, 4), (2, 0), (2, 1), (2, 2)];
        assert!(b.rows().map(|r| (r.seq, r.q_pos)).eq(rows));
        let empty = RaggedBatch::new(&[0], &[]);
        assert_eq!(
            (empty.batch(), empty.num_rows(), empty.max_q_len()),
            (0, 0, 0)
        );
        assert_eq!(empty.rows().count(), 0);
    }

    #[test]
    fn layout_offsets_are_row_major() {
        let l = PagedLayout {
            num_pages: 3,
            kv_dim: 2,
            num_layers: 2,
            page_size: 4,
            n_heads: 2,
            head_dim: 5,
            dtype: KvDtype::Bf16,
        };
        assert_eq!(l, PagedLayout::kv(3, 2, 4, 2, 5));
        assert_eq!(l.elements(), 3 * 2 * 2 * 4 * 2 * 5);
        assert_eq!(l.page_stride(), 160);
        assert_eq!(l.offset(0, 0, 0, 0, 1), 5);
        assert_eq!(l.offset(0, 0, 0, 1, 0), 10);
        assert_eq!(l.offset(0, 0, 1, 0, 0), 40);
        assert_eq!(l.offset(0, 1, 0, 0, 0), 80);
        assert_eq!(l.offset(1, 0, 0, 0, 0), 160);
        assert_eq!(l.offset(2, 1, 1, 3, 1) + 5, l.elements());
        assert_eq!(l.layer_offset(1, 1), l.offset(0, 1, 1, 0, 0));
        assert_eq!(l.scale_elements(), 0);
        let f = PagedLayout {
            dtype: KvDtype::Fp8E4m3,
            ..l
        };
        assert_eq!(f.scale_elements() * f.head_dim, f.elements());
        let p = l.paged_kv(1, 7);
        assert_eq!((p.num_pages, p.max_pages, p.page_stride), (3, 7, 160));
        assert_eq!((p.k_off, p.v_off), (40, 120));
        assert_eq!(PagedLayout::index_k(3, 2, 4, 5).paged_kv(1, 7).v_off, 0);
    }

    #[test]
    fn page_table_rows() {
        let lookup = [2u32, 0, 1, 9];
        let t = PageTable::new(&lookup, 2);
        assert_eq!(t.batch(), 2);
        assert_eq!(t.pages_of(1), &[1, 9]);
        assert_eq!(
            (t.page(0, 1), t.page(0, 2), t.page(2, 0)),
            (Some(0), None, None)
        );
        assert_eq!(PageTable::new(&[], 0).batch(), 0);
    }

    #[test]
    fn masks() {
        for q in 0..6 {
            for n in 0..8 {
                for m in [
                    Mask::None,
                    Mask::Causal,
                    Mask::SlidingWindow { window: 0 },
                    Mask::SlidingWindow { window: 2 },
                    Mask::SlidingWindow { window: 9 },
                ] {
                    let r = m.key_range(q, n);
                    for k in 0..10 {
                        assert_eq!(
                            r.contains(&k),
                            k < n && m.visible(q, k),
                            "{m:?} {q} {n} {k}"
                        );
                    }
                }
            }
        }
        assert!(!Mask::Causal.visible(3, 4));
        assert!(Mask::SlidingWindow { window: 2 }.visible(3, 2));
        assert!(!Mask::SlidingWindow { window: 2 }.visible(3, 1));
    }
}

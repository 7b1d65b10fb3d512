//! Typed descriptions of what the ops take: a ragged batch of new tokens and
//! a paged cache with its page table, with the validation every plan runs.
//!
//! Conventions (`shared/spec/README.md`): sequence `b` has `q_len[b] =
//! offsets[b+1] - offsets[b]` new tokens packed in rows `offsets[b] ..
//! offsets[b+1]`; `cache_lengths[b]` counts tokens cached *before* this step,
//! so it has `seqlen_k[b] = cache_len[b] + q_len[b]` keys and its row `i` sits
//! at position `cache_len[b] + i`.

use crate::error::{ensure, Result};

/// Host copy of a ragged batch's metadata (what a plan reads and checks).
#[derive(Clone, Copy, Debug)]
pub struct RaggedBatch<'a> {
    /// `input_row_offsets: u32 [batch + 1]`, non-decreasing, starting at 0.
    pub input_row_offsets: &'a [u32],
    /// `cache_lengths: u32 [batch]`.
    pub cache_lengths: &'a [u32],
}

impl<'a> RaggedBatch<'a> {
    pub fn new(input_row_offsets: &'a [u32], cache_lengths: &'a [u32]) -> Self {
        RaggedBatch {
            input_row_offsets,
            cache_lengths,
        }
    }

    /// Number of sequences.
    pub fn batch(&self) -> usize {
        self.cache_lengths.len()
    }

    /// Total new tokens (`offsets[batch]`).
    pub fn num_rows(&self) -> usize {
        self.input_row_offsets.last().copied().unwrap_or(0) as usize
    }

    pub fn q_len(&self, b: usize) -> usize {
        (self.input_row_offsets[b + 1] - self.input_row_offsets[b]) as usize
    }

    /// Keys of sequence `b` (cached plus new), as u64 so it cannot overflow.
    pub fn seqlen_k(&self, b: usize) -> u64 {
        self.cache_lengths[b] as u64 + self.q_len(b) as u64
    }

    /// Largest `q_len` in the batch.
    pub fn max_q_len(&self) -> usize {
        (0..self.batch()).map(|b| self.q_len(b)).max().unwrap_or(0)
    }

    /// Checks the spec's rules: `offsets` has `batch + 1` entries, starts at
    /// 0, never decreases; every `seqlen_k` fits in `u32`.
    pub fn validate(&self) -> Result<()> {
        let off = self.input_row_offsets;
        let batch = self.cache_lengths.len();
        ensure(
            off.len() == batch + 1,
            "input_row_offsets",
            || {
                format!(
                    "batch + 1 = {} entries (cache_lengths has {batch})",
                    batch + 1
                )
            },
            || format!("{} entries", off.len()),
        )?;
        ensure(
            off[0] == 0,
            "input_row_offsets",
            || "offsets[0] = 0".into(),
            || format!("offsets[0] = {}", off[0]),
        )?;
        for b in 0..batch {
            ensure(
                off[b + 1] >= off[b],
                "input_row_offsets",
                || "non-decreasing offsets".into(),
                || {
                    format!(
                        "offsets[{}] = {} < offsets[{b}] = {}",
                        b + 1,
                        off[b + 1],
                        off[b]
                    )
                },
            )?;
            let sk = self.seqlen_k(b);
            ensure(
                sk < (u32::MAX / 2) as u64,
                "cache_lengths",
                || "cache_len + q_len below 2^31 tokens".into(),
                || {
                    format!(
                        "sequence {b}: {} + {} = {sk}",
                        self.cache_lengths[b],
                        self.q_len(b)
                    )
                },
            )?;
        }
        Ok(())
    }
}

/// Shape of a paged cache in MAX's layout
/// `blocks[num_pages, kv_dim, num_layers, page_size, n_heads, head_dim]`
/// (`kv_dim` 2 for the main K/V cache, index 0 = K; 1 for the index-K cache).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PagedLayout {
    pub num_pages: usize,
    pub kv_dim: usize,
    pub num_layers: usize,
    pub page_size: usize,
    pub n_heads: usize,
    pub head_dim: usize,
}

impl PagedLayout {
    /// Index-K cache: `[num_pages, 1, num_layers, page_size, 1, head_dim]`.
    pub fn index_k(num_pages: usize, num_layers: usize, page_size: usize, head_dim: usize) -> Self {
        PagedLayout {
            num_pages,
            kv_dim: 1,
            num_layers,
            page_size,
            n_heads: 1,
            head_dim,
        }
    }

    /// Elements of the whole pool.
    pub fn elements(&self) -> usize {
        self.num_pages * self.page_stride()
    }

    /// Elements from one page to the next.
    pub fn page_stride(&self) -> usize {
        self.kv_dim * self.num_layers * self.page_size * self.n_heads * self.head_dim
    }

    /// Element offset of `(page 0, kv, layer, slot 0, head 0, 0)`.
    pub fn layer_offset(&self, kv: usize, layer: usize) -> usize {
        (kv * self.num_layers + layer) * self.page_size * self.n_heads * self.head_dim
    }
}

/// What an op expects of a paged cache; [`PagedLayout::check`] compares.
#[derive(Clone, Copy, Debug)]
pub struct CacheExpect {
    /// Argument name used in errors (`"k_cache"`, `"kv_cache"`).
    pub name: &'static str,
    /// Human description of the expected layout, for errors.
    pub shape: &'static str,
    pub kv_dim: usize,
    pub n_heads: usize,
    pub head_dim: usize,
    pub page_size: usize,
}

impl PagedLayout {
    /// Checks the pool against what an op expects and that `layer` exists.
    pub fn check(&self, want: &CacheExpect, layer: usize) -> Result<()> {
        ensure(
            self.kv_dim == want.kv_dim && self.n_heads == want.n_heads,
            want.name,
            || {
                format!(
                    "{} (kv_dim {}, {} heads)",
                    want.shape, want.kv_dim, want.n_heads
                )
            },
            || format!("kv_dim {} and {} heads", self.kv_dim, self.n_heads),
        )?;
        ensure(
            self.page_size == want.page_size,
            "page_size",
            || want.page_size.to_string(),
            || self.page_size.to_string(),
        )?;
        ensure(
            self.head_dim == want.head_dim,
            "head_dim",
            || format!("{} head_dim {}", want.name, want.head_dim),
            || self.head_dim.to_string(),
        )?;
        ensure(
            self.num_pages >= 1,
            "num_pages",
            || ">= 1".into(),
            || "0".into(),
        )?;
        ensure(
            layer < self.num_layers,
            "layer",
            || format!("below num_layers = {}", self.num_layers),
            || layer.to_string(),
        )
    }
}

/// Host copy of a page table `lookup: u32 [batch, max_pages]`: logical page
/// `j` of sequence `b` is pool page `lookup[b * max_pages + j]`.
#[derive(Clone, Copy, Debug)]
pub struct PageTable<'a> {
    pub lookup: &'a [u32],
    pub max_pages: usize,
}

impl<'a> PageTable<'a> {
    pub fn new(lookup: &'a [u32], max_pages: usize) -> Self {
        PageTable { lookup, max_pages }
    }

    /// Checks the table against the batch and the pool: `batch * max_pages`
    /// entries, every row long enough for its `seqlen_k`, every page a
    /// sequence uses inside the pool. Entries past a sequence's last page are
    /// not read and not checked.
    pub fn validate(&self, batch: &RaggedBatch, layout: &PagedLayout) -> Result<()> {
        let n = batch.batch();
        ensure(
            self.lookup.len() == n * self.max_pages,
            "lookup",
            || format!("batch * max_pages = {n} * {} entries", self.max_pages),
            || format!("{} entries", self.lookup.len()),
        )?;
        for b in 0..n {
            let pages = batch.seqlen_k(b).div_ceil(layout.page_size as u64) as usize;
            ensure(
                pages <= self.max_pages,
                "lookup",
                || {
                    format!(
                        "rows of at least {pages} pages for sequence {b} (seqlen_k {})",
                        batch.seqlen_k(b)
                    )
                },
                || format!("max_pages = {}", self.max_pages),
            )?;
            let row = &self.lookup[b * self.max_pages..][..pages];
            if let Some((j, &p)) = row
                .iter()
                .enumerate()
                .find(|(_, &p)| p as usize >= layout.num_pages)
            {
                return Err(crate::Error::invalid(
                    "lookup",
                    format!("page ids below num_pages = {}", layout.num_pages),
                    format!("lookup[{b}][{j}] = {p}"),
                ));
            }
        }
        Ok(())
    }
}

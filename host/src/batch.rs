//! What the ops take: a ragged batch of new tokens, a paged cache with its
//! page table, and the op configurations, with the checks every plan runs.
//!
//! The descriptions themselves are the abi crate's ([`crate::abi::batch`],
//! [`crate::abi::config`]), shared with the kernels, the reference and the
//! tests; this module re-exports them and adds the host's validation as
//! extension traits ([`RaggedBatchExt`], [`PagedLayoutExt`],
//! [`PageTableExt`], [`ConfigExt`]), so a check still reads
//! `batch.validate()?`.
//!
//! Conventions (`shared/spec/README.md`): sequence `b` has `q_len[b] =
//! offsets[b+1] - offsets[b]` new tokens packed in rows `offsets[b] ..
//! offsets[b+1]`; `cache_lengths[b]` counts tokens cached *before* this step,
//! so it has `seqlen_k[b] = cache_len[b] + q_len[b]` keys and its row `i` sits
//! at position `cache_len[b] + i`.

pub use crate::abi::batch::{KvDtype, Mask, PageTable, PagedLayout, RaggedBatch, RowPos, Rows};
use crate::abi::config::{MsaAttentionConfig, MsaIndexerConfig};

use crate::abi::msa::{ATT_MAX_GROUP, ATT_MAX_TOPK, IDX_PREFILL_M_ROWS, MSA_BLOCK};
use crate::error::{ensure, require_head_dim, require_positive_scale, Error, Result};

/// The host's check of a [`RaggedBatch`].
pub trait RaggedBatchExt {
    /// Checks the spec's rules: `offsets` has `batch + 1` entries, starts at
    /// 0, never decreases; every `seqlen_k` fits in `u32`.
    fn validate(&self) -> Result<()>;
}

impl RaggedBatchExt for RaggedBatch<'_> {
    fn validate(&self) -> Result<()> {
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

/// What an op expects of a paged cache; [`PagedLayoutExt::check`] compares.
#[derive(Clone, Copy, Debug)]
pub struct CacheExpect {
    /// Element types the op reads.
    pub dtypes: &'static [KvDtype],
    /// Argument name used in errors (`"k_cache"`, `"kv_cache"`).
    pub name: &'static str,
    /// Human description of the expected layout, for errors.
    pub shape: &'static str,
    /// 1 (index-K) or 2 (K and V).
    pub kv_dim: usize,
    /// Heads per token.
    pub n_heads: usize,
    /// Elements per head row.
    pub head_dim: usize,
    /// Tokens per page.
    pub page_size: usize,
}

/// The host's check of a [`PagedLayout`].
pub trait PagedLayoutExt {
    /// Checks the pool against what an op expects and that `layer` exists
    /// ([`PagedLayoutExt::check_shape`], then [`PagedLayoutExt::check_layer`]).
    fn check(&self, want: &CacheExpect, layer: usize) -> Result<()> {
        self.check_shape(want)?;
        self.check_layer(layer)
    }

    /// Checks the pool against what an op expects (dtype, heads, page
    /// size, head_dim, at least one page and one layer): what `plan` checks.
    fn check_shape(&self, want: &CacheExpect) -> Result<()>;

    /// Checks that `layer` is one of the pool's layers: what `run` checks
    /// (one plan serves every layer).
    fn check_layer(&self, layer: usize) -> Result<()>;
}

impl PagedLayoutExt for PagedLayout {
    fn check_shape(&self, want: &CacheExpect) -> Result<()> {
        if !want.dtypes.contains(&self.dtype) {
            return Err(Error::Unsupported {
                arg: "dtype",
                what: format!(
                    "{} of {:?} elements (implemented: {:?})",
                    want.name, self.dtype, want.dtypes
                ),
            });
        }
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
            self.num_layers >= 1,
            "num_layers",
            || ">= 1".into(),
            || "0".into(),
        )
    }

    fn check_layer(&self, layer: usize) -> Result<()> {
        ensure(
            layer < self.num_layers,
            "layer",
            || format!("below num_layers = {}", self.num_layers),
            || layer.to_string(),
        )
    }
}

/// The host's check of a [`PageTable`].
pub trait PageTableExt {
    /// Checks the table against the batch and the pool: `batch * max_pages`
    /// entries, every row long enough for its `seqlen_k`, every page a
    /// sequence uses inside the pool. Entries past a sequence's last page are
    /// not read and not checked.
    fn validate(&self, batch: &RaggedBatch, layout: &PagedLayout) -> Result<()>;
}

impl PageTableExt for PageTable<'_> {
    fn validate(&self, batch: &RaggedBatch, layout: &PagedLayout) -> Result<()> {
        let n = batch.batch();
        ensure(
            self.lookup.len() == n * self.max_pages,
            "lookup",
            || format!("batch * max_pages = {n} * {} entries", self.max_pages),
            || format!("{} entries", self.lookup.len()),
        )?;
        for b in 0..n {
            let pages = batch.pages(b, layout.page_size);
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
            let row = &self.pages_of(b)[..pages];
            if let Some((j, &p)) = row
                .iter()
                .enumerate()
                .find(|(_, &p)| p as usize >= layout.num_pages)
            {
                return Err(Error::invalid(
                    "lookup",
                    format!("page ids below num_pages = {}", layout.num_pages),
                    format!("lookup[{b}][{j}] = {p}"),
                ));
            }
        }
        Ok(())
    }
}

/// The host's check of an op configuration against what the kernels
/// implement.
pub trait ConfigExt {
    /// Checks every field; the error names the first bad one.
    fn validate(&self) -> Result<()>;
}

impl ConfigExt for MsaIndexerConfig {
    fn validate(&self) -> Result<()> {
        require_head_dim(self.head_dim)?;
        ensure(
            self.block_size == MSA_BLOCK as usize,
            "block_size",
            || format!("{MSA_BLOCK}"),
            || self.block_size.to_string(),
        )?;
        ensure(
            self.topk >= 1 && self.topk <= 1 << 20,
            "topk",
            || "1 ..= 2^20".into(),
            || self.topk.to_string(),
        )?;
        ensure(
            (1..=IDX_PREFILL_M_ROWS as usize).contains(&self.num_index_heads),
            "num_index_heads",
            || format!("1 ..= {IDX_PREFILL_M_ROWS}"),
            || self.num_index_heads.to_string(),
        )?;
        ensure(
            self.init_blocks < u32::MAX as usize / 2 && self.local_blocks < u32::MAX as usize / 2,
            "init_blocks/local_blocks",
            || "below 2^31".into(),
            || format!("{} / {}", self.init_blocks, self.local_blocks),
        )?;
        // A zero or non-finite scale makes every score equal (or NaN) and the
        // selection meaningless; a negative one only reverses the ranking.
        ensure(
            self.scale.is_finite() && self.scale != 0.0,
            "scale",
            || "a finite, nonzero scale".into(),
            || self.scale.to_string(),
        )
    }
}

impl ConfigExt for MsaAttentionConfig {
    fn validate(&self) -> Result<()> {
        require_head_dim(self.head_dim)?;
        ensure(
            self.n_kv_heads >= 1,
            "n_kv_heads",
            || ">= 1".into(),
            || self.n_kv_heads.to_string(),
        )?;
        ensure(
            self.n_heads.is_multiple_of(self.n_kv_heads),
            "n_heads",
            || format!("a multiple of n_kv_heads = {}", self.n_kv_heads),
            || self.n_heads.to_string(),
        )?;
        if self.group() == 0 || self.group() > ATT_MAX_GROUP as usize {
            return Err(Error::Unsupported {
                arg: "n_heads",
                what: format!(
                    "group n_heads / n_kv_heads = {} (1 ..= {ATT_MAX_GROUP} supported)",
                    self.group()
                ),
            });
        }
        ensure(
            (1..=ATT_MAX_TOPK as usize).contains(&self.topk),
            "topk",
            || format!("1 ..= {ATT_MAX_TOPK}"),
            || self.topk.to_string(),
        )?;
        require_positive_scale(self.scale)
    }
}

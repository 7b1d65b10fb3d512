//! Dense flash prefill (`spec/dense-prefill.md`, the features of upstream
//! `MhaPrefillV2`): softmax attention of every query row over every key its
//! mask shows, with optional attention sinks, K/V from the paged main cache
//! or from contiguous ragged tensors (cross-attention).
//!
//! Inputs:
//! - `q: bf16 [num_rows, n_heads, head_dim]`, rows packed by sequence as
//!   the ragged batch ([`RaggedBatch`]) says: `input_row_offsets: u32
//!   [batch + 1]` (`offsets[0] = 0`, non-decreasing, `offsets[batch] =
//!   num_rows`) and `cache_lengths: u32 [batch]`;
//! - K and V ([`DenseKv`]): one layer of the paged main cache, where
//!   sequence `b` has `num_keys[b] = cache_len[b] + q_len[b]` keys (the new
//!   tokens' keys are already in the cache), or contiguous ragged
//!   `k, v: bf16 [total_kv_rows, n_kv_heads, head_dim]` with their own
//!   offsets `kv_row_offsets: u32 [batch + 1]` (`num_keys[b]` their count,
//!   independent of q);
//! - with `cfg.sinks`, `sinks: f32 [n_heads]`, one sink logit per query head.
//!
//! Output ([`AttentionOutput`]): `out [num_rows, n_heads, head_dim]` and
//! `lse [num_rows, n_heads]` (natural log), in `f64`.
//!
//! For sequence `b`, local row `i` (packed row `t = offsets[b] + i`) and query
//! head `h` with KV head `kh = h / group`, `group = n_heads / n_kv_heads`:
//! `q_pos = cache_len[b] + i` (for both sources: with ragged K/V, pass
//! `cache_len = 0` for plain cross-attention, `num_keys[b] - q_len[b]` for
//! FlashAttention's bottom-right-aligned causal mask), the visible keys are
//! `S = cfg.mask.key_range(q_pos, num_keys[b])` ([`Mask::key_range`]),
//! `x_s = scale * q[t, h] . K[s]` and
//!
//! - `D = sum_{s in S} e^{x_s}` (`+ e^{sink[h]}` with sinks);
//! - `out[t, h] = sum_{s in S} e^{x_s} V[s] / D`, `lse[t, h] = ln D`;
//! - a row that sees no key gives `out = 0` and `lse = -inf` without sinks,
//!   `lse = sink[h]` with them (no NaN).
//!
//! Choices of the reference (the GPU API may be stricter):
//! - `SlidingWindow { window: 0 }` is accepted: every row sees no key (the
//!   abi's definition), so it gives the empty-row result above.
//! - With ragged K/V, `q_pos` may reach or pass `num_keys[b]`: `Causal`
//!   and `SlidingWindow` then see keys up to `num_keys[b] - 1` only
//!   (`key_range`'s clamp), and `num_keys[b] = 0` is legal (empty rows).
//! - `sinks` must be given exactly when `cfg.sinks` is set; a sink may be any
//!   value but NaN or `+inf` (`-inf` is a sink that adds nothing: the result
//!   equals the one without sinks).
//! - Any `head_dim` (0 included: every score is 0), `scale`, `page_size >= 1`
//!   and `n_heads` a positive multiple of `n_kv_heads >= 1` are accepted.
//! - Only the keys `0 .. num_keys[b]` of a sequence are read, so whatever the
//!   unwritten tail of its last page (or a stale page-table entry) holds
//!   never reaches the result.
//!
//! The reference computes in `f64` from exactly widened bf16 values (scores
//! and the sink max-subtracted); GPU results are checked with
//! [`check_dense_prefill`], the MSA attention's [`check_attention`] rules.

use crate::msa_attention::{check_attention, group_scores, AttentionOutput, MsaAttentionConfig};
use crate::paged::{KvDtype, PagedCache};
use half::bf16;
use rayon::prelude::*;
use sparse_attn_abi::batch::{Mask, RaggedBatch, RowPos};

/// The op's parameters: the host API's configuration (its doc is the
/// contract). The reference accepts any `head_dim`, `scale` and mask
/// (`SlidingWindow { window: 0 }` included); `n_heads` must be a positive
/// multiple of `n_kv_heads >= 1`.
pub use sparse_attn_abi::config::DensePrefillConfig;

/// Where the dense prefill reads K and V from.
#[derive(Clone, Copy, Debug)]
pub enum DenseKv<'a> {
    /// Paged main cache (`kv_dim` 2, `n_heads = n_kv_heads`) of one layer: sequence `b` has
    /// `num_keys = cache_len[b] + q_len[b]` keys, logical token `t` at `cache.row(b, kv, layer, kh, t)`.
    Paged {
        /// The pool (bf16, `kv_dim` 2: index 0 = K, 1 = V) and its page table.
        cache: PagedCache<'a>,
        /// The layer of the pool that is read.
        layer: usize,
    },
    /// Contiguous ragged K and V, each `bf16 [total_kv_rows, n_kv_heads, head_dim]`, sequence `b` owns
    /// rows `kv_row_offsets[b] .. kv_row_offsets[b+1]` (`num_keys[b]` = their count, independent of q:
    /// cross-attention). `q_pos` is still `cache_len[b] + i` (pass zeros for plain cross-attention,
    /// `num_keys - q_len` for FlashAttention's bottom-right-aligned causal mask).
    Ragged {
        /// `bf16 [total_kv_rows, n_kv_heads, head_dim]`.
        k: &'a [bf16],
        /// `bf16 [total_kv_rows, n_kv_heads, head_dim]`.
        v: &'a [bf16],
        /// `u32 [batch + 1]`, `kv_row_offsets[0] = 0`, non-decreasing,
        /// `kv_row_offsets[batch] = total_kv_rows`.
        kv_row_offsets: &'a [u32],
    },
}

impl DenseKv<'_> {
    /// Keys of sequence `b`: `cache_len[b] + q_len[b]` for the paged cache,
    /// `kv_row_offsets[b + 1] - kv_row_offsets[b]` for ragged K/V. Assumes
    /// well-formed inputs ([`validate`]); panics on missing entries.
    pub fn num_keys(&self, batch: &RaggedBatch, b: usize) -> usize {
        match self {
            DenseKv::Paged { .. } => batch.seqlen_k(b) as usize,
            DenseKv::Ragged { kv_row_offsets, .. } => {
                (kv_row_offsets[b + 1] - kv_row_offsets[b]) as usize
            }
        }
    }

    /// The `head_dim` values of key `s` of sequence `b`, KV head `kh`
    /// (`which`: 0 = K, 1 = V). Assumes validated inputs.
    fn row(
        &self,
        b: usize,
        which: usize,
        kh: usize,
        s: usize,
        cfg: &DensePrefillConfig,
    ) -> &[bf16] {
        match self {
            DenseKv::Paged { cache, layer } => cache.row(b, which, *layer, kh, s),
            DenseKv::Ragged {
                k,
                v,
                kv_row_offsets,
            } => {
                let d = cfg.head_dim;
                let r = kv_row_offsets[b] as usize + s;
                let off = (r * cfg.n_kv_heads + kh) * d;
                let src = if which == 0 { k } else { v };
                &src[off..off + d]
            }
        }
    }
}

fn check_offsets(name: &str, offsets: &[u32], batch: usize) -> Result<(), String> {
    if offsets.len() != batch + 1 {
        return Err(format!(
            "{name} has {} entries, expected batch {batch} + 1",
            offsets.len()
        ));
    }
    crate::check_offsets_order(name, offsets)
}

fn validate_paged(
    batch: &RaggedBatch,
    cache: &PagedCache,
    layer: usize,
    cfg: &DensePrefillConfig,
) -> Result<(), String> {
    let l = &cache.layout;
    if l.dtype != KvDtype::Bf16 {
        return Err(format!("the pool must hold bf16, layout {l:?}"));
    }
    crate::paged::check_main_kv(l, cfg.n_kv_heads)?;
    if l.head_dim != cfg.head_dim {
        return Err(format!(
            "cache head_dim {} != head_dim {}",
            l.head_dim, cfg.head_dim
        ));
    }
    crate::paged::check_pool(l, layer, cache.data.len())?;
    let n = batch.batch();
    let table = &cache.pages;
    crate::paged::check_lookup_len(table, n)?;
    for b in 0..n {
        let pages = batch.pages(b, l.page_size);
        if pages > table.max_pages {
            return Err(format!(
                "sequence {b} has {} keys ({pages} pages of {}), lookup rows hold {}",
                batch.seqlen_k(b),
                l.page_size,
                table.max_pages
            ));
        }
        if let Some(c) = (0..pages).find(|&c| table.pages_of(b)[c] as usize >= l.num_pages) {
            return Err(format!(
                "lookup[{b}, {c}] = {} out of the pool of {} pages",
                table.pages_of(b)[c],
                l.num_pages
            ));
        }
    }
    Ok(())
}

/// Checks the inputs of the op; returns `num_rows` or a description of the
/// first problem. Accepts what the module doc says the reference accepts.
pub fn validate(
    q: &[bf16],
    batch: &RaggedBatch,
    kv: &DenseKv,
    sinks: Option<&[f32]>,
    cfg: &DensePrefillConfig,
) -> Result<usize, String> {
    let (nh, nkv, d) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
    if nkv == 0 {
        return Err("n_kv_heads must be >= 1".into());
    }
    if nh == 0 || !nh.is_multiple_of(nkv) {
        return Err(format!(
            "n_heads {nh} is not a positive multiple of n_kv_heads {nkv}"
        ));
    }
    let n = crate::check_batch(batch)?;
    let rows = batch.num_rows();
    if q.len() != rows * nh * d {
        return Err(format!(
            "q has {} elements, expected num_rows {rows} * n_heads {nh} * head_dim {d}",
            q.len()
        ));
    }
    match (cfg.sinks, sinks) {
        (false, None) => {}
        (false, Some(_)) => return Err("sinks given but cfg.sinks is false".into()),
        (true, None) => return Err("cfg.sinks is true but no sinks given".into()),
        (true, Some(s)) => {
            if s.len() != nh {
                return Err(format!(
                    "sinks has {} entries, expected n_heads {nh}",
                    s.len()
                ));
            }
            if let Some(h) = s.iter().position(|x| x.is_nan() || *x == f32::INFINITY) {
                return Err(format!(
                    "sinks[{h}] = {} (NaN and +inf are not sinks)",
                    s[h]
                ));
            }
        }
    }
    match kv {
        DenseKv::Paged { cache, layer } => validate_paged(batch, cache, *layer, cfg)?,
        DenseKv::Ragged {
            k,
            v,
            kv_row_offsets,
        } => {
            check_offsets("kv_row_offsets", kv_row_offsets, n)?;
            let total = kv_row_offsets[n] as usize;
            for (name, t) in [("k", k), ("v", v)] {
                if t.len() != total * nkv * d {
                    return Err(format!(
                        "{name} has {} elements, expected total_kv_rows {total} * n_kv_heads {nkv} * head_dim {d}",
                        t.len()
                    ));
                }
            }
        }
    }
    Ok(rows)
}

/// The full op in `f64`. Parallel over rows.
///
/// Panics with a description if [`validate`] rejects the inputs.
pub fn dense_prefill(
    q: &[bf16],
    batch: &RaggedBatch,
    kv: &DenseKv,
    sinks: Option<&[f32]>,
    cfg: &DensePrefillConfig,
) -> AttentionOutput {
    let rows = match validate(q, batch, kv, sinks, cfg) {
        Ok(r) => r,
        Err(e) => panic!("dense_prefill: invalid input: {e}"),
    };
    let (nh, nkv, d) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
    let group = cfg.group();
    let scale = cfg.scale as f64;
    let pos: Vec<RowPos> = batch.rows().collect();
    let mut out = vec![0.0f64; rows * nh * d];
    let mut lse = vec![f64::NEG_INFINITY; rows * nh];
    let mask: Mask = cfg.mask;
    let one_row = |row: usize, o_row: &mut [f64], l_row: &mut [f64]| {
        let RowPos { seq: b, q_pos } = pos[row];
        let keys = mask.key_range(q_pos, kv.num_keys(batch, b));
        let qf = crate::row_f64(q, row, nh * d);
        let mut kf = vec![0.0f64; d];
        for kh in 0..nkv {
            // scores[g][j] = scale * q[h] . K[keys.start + j], h = kh * group + g
            let mut scores = group_scores(&qf, d, kh, group, scale, keys.clone(), |s| {
                kv.row(b, 0, kh, s, cfg)
            });
            // Weights e^{x - m} with m the max over the scores and the sink,
            // the denominator D / e^m, and lse = ln D.
            let mut sums = vec![0.0f64; group];
            for (g, sc) in scores.iter_mut().enumerate() {
                let h = kh * group + g;
                let sink = sinks.map(|s| s[h] as f64);
                let m = sc
                    .iter()
                    .copied()
                    .chain(sink)
                    .fold(f64::NEG_INFINITY, f64::max);
                if m == f64::NEG_INFINITY {
                    // No key and no (finite) sink: D = 0; out stays 0, lse -inf.
                    sc.iter_mut().for_each(|x| *x = 0.0);
                    continue;
                }
                let mut sum = sink.map_or(0.0, |s| (s - m).exp());
                for x in sc.iter_mut() {
                    *x = (*x - m).exp();
                    sum += *x;
                }
                sums[g] = sum;
                l_row[h] = m + sum.ln();
            }
            if d == 0 || keys.is_empty() {
                continue; // out stays 0
            }
            let o_kv = &mut o_row[kh * group * d..(kh + 1) * group * d];
            for (j, s) in keys.clone().enumerate() {
                for (dst, v) in kf.iter_mut().zip(kv.row(b, 1, kh, s, cfg)) {
                    *dst = v.to_f64();
                }
                for (g, o) in o_kv.chunks_exact_mut(d).enumerate() {
                    let w = scores[g][j];
                    for (acc, v) in o.iter_mut().zip(&kf) {
                        *acc += w * v;
                    }
                }
            }
            for (g, o) in o_kv.chunks_exact_mut(d).enumerate() {
                if sums[g] > 0.0 {
                    let inv = 1.0 / sums[g];
                    o.iter_mut().for_each(|x| *x *= inv);
                }
            }
        }
    };
    if d == 0 {
        lse.par_chunks_mut(nh)
            .enumerate()
            .for_each(|(row, l_row)| one_row(row, &mut [], l_row));
    } else {
        out.par_chunks_mut(nh * d)
            .zip(lse.par_chunks_mut(nh))
            .enumerate()
            .for_each(|(row, (o_row, l_row))| one_row(row, o_row, l_row));
    }
    AttentionOutput { out, lse }
}

/// Checks a GPU result of the dense prefill against the reference:
/// [`check_attention`]'s rules (per element, relative L2 and lse tolerances;
/// NaN never passes, `-inf` lse matches only `-inf`) for
/// `gpu_out: bf16 [num_rows, n_heads, head_dim]` and optional
/// `gpu_lse: f32 [num_rows, n_heads]`. With sinks nothing changes: an
/// empty row's lse is the finite `sink[h]` and is checked as any other.
pub fn check_dense_prefill(
    gpu_out: &[bf16],
    gpu_lse: Option<&[f32]>,
    reference: &AttentionOutput,
    cfg: &DensePrefillConfig,
) -> Result<(), String> {
    let p = MsaAttentionConfig {
        n_heads: cfg.n_heads,
        n_kv_heads: cfg.n_kv_heads,
        head_dim: cfg.head_dim,
        topk: 0,
        scale: cfg.scale,
    };
    check_attention(gpu_out, gpu_lse, reference, &p)
        .map_err(|e| format!("dense prefill {cfg:?}: {e}"))
}

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
//!
//! FP8: [`dense_prefill_fp8`] takes e4m3 K/V ([`DenseKvFp8`]: a paged e4m3
//! pool, [`PagedCacheFp8`], or ragged bytes) and e4m3 or bf16 Q
//! ([`DenseQ`]) with f32 descales ([`Descale`]: per tensor, or per KV head
//! for K and V), decodes every value exactly and runs the same code (a
//! `KvRows` source widening a row to `f64`); [`check_dense_prefill_fp8`]
//! checks a kernel that rounds P to e4m3 with the tolerance documented there.

use crate::msa_attention::{check_attention, dot, AttentionOutput, MsaAttentionConfig, LSE_TOL};
use crate::paged::{KvDtype, PagedCache, PagedCacheFp8};
use half::bf16;
use rayon::prelude::*;
use sparse_attn_abi::batch::{Mask, RaggedBatch, RowPos};
use sparse_attn_abi::batch::{PageTable, PagedLayout};
use sparse_attn_abi::fp8::{e4m3_to_f32, f32_to_e4m3};

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
            DenseKv::Ragged { kv_row_offsets, .. } => ragged_keys(kv_row_offsets, b),
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
            } => ragged_row([k, v][which], kv_row_offsets, b, kh, s, cfg),
        }
    }
}

/// Keys of sequence `b` of contiguous ragged K/V.
fn ragged_keys(kv_row_offsets: &[u32], b: usize) -> usize {
    (kv_row_offsets[b + 1] - kv_row_offsets[b]) as usize
}

/// The `head_dim` elements of key `s` of sequence `b`, KV head `kh`, in a
/// contiguous ragged K or V tensor `[total_kv_rows, n_kv_heads, head_dim]`.
fn ragged_row<'a, T>(
    t: &'a [T],
    kv_row_offsets: &[u32],
    b: usize,
    kh: usize,
    s: usize,
    cfg: &DensePrefillConfig,
) -> &'a [T] {
    let d = cfg.head_dim;
    let off = ((kv_row_offsets[b] as usize + s) * cfg.n_kv_heads + kh) * d;
    &t[off..off + d]
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
    l: &PagedLayout,
    table: &PageTable,
    len: usize,
    dtype: KvDtype,
    layer: usize,
    cfg: &DensePrefillConfig,
) -> Result<(), String> {
    if l.dtype != dtype {
        return Err(match dtype {
            KvDtype::Bf16 => format!("the pool must hold bf16, layout {l:?}"),
            _ => format!("the pool must hold {dtype:?}, layout {l:?}"),
        });
    }
    crate::paged::check_main_kv(l, cfg.n_kv_heads)?;
    if l.head_dim != cfg.head_dim {
        return Err(format!(
            "cache head_dim {} != head_dim {}",
            l.head_dim, cfg.head_dim
        ));
    }
    crate::paged::check_pool(l, layer, len)?;
    let n = batch.batch();
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
    let rows = validate_common(q.len(), batch, sinks, cfg)?;
    let n = batch.batch();
    match kv {
        DenseKv::Paged { cache, layer } => validate_paged(
            batch,
            &cache.layout,
            &cache.pages,
            cache.data.len(),
            KvDtype::Bf16,
            *layer,
            cfg,
        )?,
        DenseKv::Ragged {
            k,
            v,
            kv_row_offsets,
        } => validate_ragged(kv_row_offsets, k.len(), v.len(), n, cfg)?,
    }
    Ok(rows)
}

/// The heads, the batch, `q`'s length (`q_len` elements) and the sinks.
fn validate_common(
    q_len: usize,
    batch: &RaggedBatch,
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
    crate::check_batch(batch)?;
    let rows = batch.num_rows();
    if q_len != rows * nh * d {
        return Err(format!(
            "q has {q_len} elements, expected num_rows {rows} * n_heads {nh} * head_dim {d}"
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
    Ok(rows)
}

/// Ragged K/V: the offsets and `k`, `v`'s lengths (in elements).
fn validate_ragged(
    kv_row_offsets: &[u32],
    k_len: usize,
    v_len: usize,
    n: usize,
    cfg: &DensePrefillConfig,
) -> Result<(), String> {
    let (nkv, d) = (cfg.n_kv_heads, cfg.head_dim);
    check_offsets("kv_row_offsets", kv_row_offsets, n)?;
    let total = kv_row_offsets[n] as usize;
    for (name, len) in [("k", k_len), ("v", v_len)] {
        if len != total * nkv * d {
            return Err(format!(
                "{name} has {len} elements, expected total_kv_rows {total} * n_kv_heads {nkv} * head_dim {d}"
            ));
        }
    }
    Ok(())
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
    let d = cfg.head_dim;
    let width = cfg.n_heads * d;
    let q_row = |row: usize| crate::row_f64(q, row, width);
    prefill_core(rows, q_row, kv, batch, sinks, cfg, false).exact
}

/// A source of K/V rows: the keys of a sequence and the `head_dim` values
/// of one of them widened (exactly) to `f64`. What the bf16 and the FP8
/// references share; `widen` must be exact so that both compute from the
/// true input values.
trait KvRows: Sync {
    /// Keys of sequence `b`.
    fn num_keys(&self, batch: &RaggedBatch, b: usize) -> usize;
    /// Writes the `head_dim` values of key `s` of sequence `b`, KV head `kh`
    /// (`which`: 0 = K, 1 = V) to `out`.
    fn widen(
        &self,
        b: usize,
        which: usize,
        kh: usize,
        s: usize,
        cfg: &DensePrefillConfig,
        out: &mut [f64],
    );
}

impl KvRows for DenseKv<'_> {
    fn num_keys(&self, batch: &RaggedBatch, b: usize) -> usize {
        DenseKv::num_keys(self, batch, b)
    }

    fn widen(
        &self,
        b: usize,
        which: usize,
        kh: usize,
        s: usize,
        cfg: &DensePrefillConfig,
        out: &mut [f64],
    ) {
        for (dst, v) in out.iter_mut().zip(self.row(b, which, kh, s, cfg)) {
            *dst = v.to_f64();
        }
    }
}

/// The worst-case error of rounding a softmax weight `p` in `[0, 1]` to
/// e4m3 (round to nearest): half a unit in the last place, `<= 2^-4 p` for a
/// normal result (`p >= 2^-6`), `<= 2^-10` (half the subnormal step `2^-9`)
/// below, and never more than `p` itself (rounding to 0).
pub fn e4m3_weight_error(p: f64) -> f64 {
    p.min((p * P_REL).max(P_SUB_ABS))
}

/// Relative rounding bound of an e4m3 weight in the normal range (3
/// mantissa bits: unit roundoff `2^-4`).
pub const P_REL: f64 = 1.0 / 16.0;
/// Absolute rounding bound of an e4m3 weight below `2^-6` (half the
/// subnormal step `2^-9`).
pub const P_SUB_ABS: f64 = 1.0 / 1024.0;

/// The op, generic over the element type: `q_row(row)` gives the
/// `n_heads * head_dim` values of packed row `row` in `f64`; with `bounds`,
/// also the FP8 tolerance's terms ([`Fp8Reference`]'s fields), else those
/// fields are empty.
fn prefill_core(
    rows: usize,
    q_row: impl Fn(usize) -> Vec<f64> + Sync,
    kv: &impl KvRows,
    batch: &RaggedBatch,
    sinks: Option<&[f32]>,
    cfg: &DensePrefillConfig,
    bounds: bool,
) -> Fp8Reference {
    let (nh, nkv, d) = (cfg.n_heads, cfg.n_kv_heads, cfg.head_dim);
    let group = cfg.group();
    let scale = cfg.scale as f64;
    let pos: Vec<RowPos> = batch.rows().collect();
    let mut out = vec![0.0f64; rows * nh * d];
    let mut lse = vec![f64::NEG_INFINITY; rows * nh];
    let nb = if bounds { rows * nh * d } else { 0 };
    let (mut err, mut pv) = (vec![0.0f64; nb], vec![0.0f64; nb]);
    let mut mag = vec![0.0f64; if bounds { rows * nh } else { 0 }];
    let mask: Mask = cfg.mask;
    let one_row = |row: usize,
                   o_row: &mut [f64],
                   l_row: &mut [f64],
                   (e_row, a_row, m_row): (&mut [f64], &mut [f64], &mut [f64])| {
        let RowPos { seq: b, q_pos } = pos[row];
        let keys = mask.key_range(q_pos, kv.num_keys(batch, b));
        let qf = q_row(row);
        let mut kf = vec![0.0f64; d];
        for kh in 0..nkv {
            // scores[g][j] = scale * q[h] . K[keys.start + j], h = kh * group + g
            let mut scores = vec![vec![0.0f64; keys.len()]; group];
            for (j, s) in keys.clone().enumerate() {
                kv.widen(b, 0, kh, s, cfg, &mut kf);
                for (g, sc) in scores.iter_mut().enumerate() {
                    let h = kh * group + g;
                    let qh = &qf[h * d..(h + 1) * d];
                    sc[j] = scale * dot(qh, &kf);
                    if bounds {
                        let a: f64 = qh.iter().zip(&kf).map(|(x, y)| (x * y).abs()).sum();
                        m_row[h] = m_row[h].max(scale.abs() * a);
                    }
                }
            }
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
            let span = kh * group * d..(kh + 1) * group * d;
            let o_kv = &mut o_row[span.clone()];
            for (j, s) in keys.clone().enumerate() {
                kv.widen(b, 1, kh, s, cfg, &mut kf);
                for (g, o) in o_kv.chunks_exact_mut(d).enumerate() {
                    let w = scores[g][j];
                    for (acc, v) in o.iter_mut().zip(&kf) {
                        *acc += w * v;
                    }
                }
                if bounds {
                    let (e_kv, a_kv) = (&mut e_row[span.clone()], &mut a_row[span.clone()]);
                    for (g, (e, a)) in e_kv
                        .chunks_exact_mut(d)
                        .zip(a_kv.chunks_exact_mut(d))
                        .enumerate()
                    {
                        let w = scores[g][j];
                        let ew = e4m3_weight_error(w);
                        for ((ea, aa), v) in e.iter_mut().zip(a.iter_mut()).zip(&kf) {
                            *ea += ew * v.abs();
                            *aa += w * v.abs();
                        }
                    }
                }
            }
            for (g, o) in o_kv.chunks_exact_mut(d).enumerate() {
                if sums[g] > 0.0 {
                    let inv = 1.0 / sums[g];
                    o.iter_mut().for_each(|x| *x *= inv);
                    if bounds {
                        let at = (kh * group + g) * d..(kh * group + g + 1) * d;
                        e_row[at.clone()].iter_mut().for_each(|x| *x *= inv);
                        a_row[at].iter_mut().for_each(|x| *x *= inv);
                    }
                }
            }
        }
    };
    if d == 0 {
        lse.par_chunks_mut(nh)
            .enumerate()
            .for_each(|(row, l_row)| one_row(row, &mut [], l_row, (&mut [], &mut [], &mut [])));
    } else if bounds {
        out.par_chunks_mut(nh * d)
            .zip(lse.par_chunks_mut(nh))
            .zip(err.par_chunks_mut(nh * d).zip(pv.par_chunks_mut(nh * d)))
            .zip(mag.par_chunks_mut(nh))
            .enumerate()
            .for_each(|(row, (((o_row, l_row), (e_row, a_row)), m_row))| {
                one_row(row, o_row, l_row, (e_row, a_row, m_row))
            });
    } else {
        out.par_chunks_mut(nh * d)
            .zip(lse.par_chunks_mut(nh))
            .enumerate()
            .for_each(|(row, (o_row, l_row))| {
                one_row(row, o_row, l_row, (&mut [], &mut [], &mut []))
            });
    }
    Fp8Reference {
        exact: AttentionOutput { out, lse },
        p_round_bound: err,
        pv_abs: pv,
        score_abs: mag,
    }
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

// ---------------------------------------------------------------------------
// FP8 e4m3 inputs
// ---------------------------------------------------------------------------

/// An f32 descale of an e4m3 tensor: one for the whole tensor, or one per KV
/// head (`n_kv_heads` entries). The value of an element is
/// `e4m3_to_f32(byte) * descale`.
#[derive(Clone, Copy, Debug)]
pub enum Descale<'a> {
    /// One scale for the tensor.
    PerTensor(f32),
    /// `f32 [n_kv_heads]`: the scale of KV head `kh`'s rows.
    PerKvHead(&'a [f32]),
}

impl Descale<'_> {
    fn of(&self, kh: usize) -> f64 {
        match self {
            Descale::PerTensor(s) => *s as f64,
            Descale::PerKvHead(s) => s[kh] as f64,
        }
    }

    fn check(&self, name: &str, n_kv_heads: usize) -> Result<(), String> {
        let vals: &[f32] = match self {
            Descale::PerTensor(s) => core::slice::from_ref(s),
            Descale::PerKvHead(s) => {
                if s.len() != n_kv_heads {
                    return Err(format!(
                        "{name} has {} entries, expected n_kv_heads {n_kv_heads}",
                        s.len()
                    ));
                }
                s
            }
        };
        match vals.iter().position(|x| !x.is_finite()) {
            Some(i) => Err(format!("{name}[{i}] = {} is not finite", vals[i])),
            None => Ok(()),
        }
    }
}

/// The queries of the FP8 op: bf16 (the mixed case: bf16 Q, e4m3 K/V) or
/// e4m3 bytes with a per-tensor descale, `[num_rows, n_heads, head_dim]`.
#[derive(Clone, Copy, Debug)]
pub enum DenseQ<'a> {
    /// bf16 queries, used as they are.
    Bf16(&'a [bf16]),
    /// bf16 queries as the FP8 kernel takes them: each row of `head_dim`
    /// (one token, one head) quantised to e4m3 on its own
    /// ([`quantize_row_e4m3`]).
    Bf16RowQuantised(&'a [bf16]),
    /// e4m3 queries: `q[i] = e4m3_to_f32(bytes[i]) * descale`.
    Fp8 {
        /// e4m3 bytes `[num_rows, n_heads, head_dim]`.
        q: &'a [u8],
        /// The per-tensor descale.
        descale: f32,
    },
}

/// Where the FP8 dense prefill reads its e4m3 K and V from: [`DenseKv`]'s
/// two sources with bytes for bf16 values.
#[derive(Clone, Copy, Debug)]
pub enum DenseKvFp8<'a> {
    /// Paged main cache of e4m3 bytes (`kv_dim` 2, `n_heads = n_kv_heads`,
    /// dtype [`KvDtype::Fp8E4m3`]); its optional per-token scales multiply
    /// the descales.
    Paged {
        /// The pool and its page table.
        cache: PagedCacheFp8<'a>,
        /// The layer of the pool that is read.
        layer: usize,
    },
    /// Contiguous ragged e4m3 K and V, as [`DenseKv::Ragged`].
    Ragged {
        /// e4m3 `[total_kv_rows, n_kv_heads, head_dim]`.
        k: &'a [u8],
        /// e4m3 `[total_kv_rows, n_kv_heads, head_dim]`.
        v: &'a [u8],
        /// `u32 [batch + 1]`, as [`DenseKv::Ragged`]'s.
        kv_row_offsets: &'a [u32],
    },
}

/// The descales of e4m3 K and V.
#[derive(Clone, Copy, Debug)]
pub struct KvDescales<'a> {
    /// K's descale.
    pub k: Descale<'a>,
    /// V's descale.
    pub v: Descale<'a>,
}

/// The FP8 source with its descales and the e4m3 decode table.
struct Fp8Rows<'a> {
    kv: DenseKvFp8<'a>,
    descales: KvDescales<'a>,
    lut: [f64; 256],
}

fn e4m3_lut() -> [f64; 256] {
    core::array::from_fn(|b| e4m3_to_f32(b as u8) as f64)
}

impl KvRows for Fp8Rows<'_> {
    fn num_keys(&self, batch: &RaggedBatch, b: usize) -> usize {
        match &self.kv {
            DenseKvFp8::Paged { .. } => batch.seqlen_k(b) as usize,
            DenseKvFp8::Ragged { kv_row_offsets, .. } => ragged_keys(kv_row_offsets, b),
        }
    }

    fn widen(
        &self,
        b: usize,
        which: usize,
        kh: usize,
        s: usize,
        cfg: &DensePrefillConfig,
        out: &mut [f64],
    ) {
        let descale = if which == 0 {
            self.descales.k.of(kh)
        } else {
            self.descales.v.of(kh)
        };
        let (bytes, token_scale) = match &self.kv {
            DenseKvFp8::Paged { cache, layer } => cache.row(b, which, *layer, kh, s),
            DenseKvFp8::Ragged {
                k,
                v,
                kv_row_offsets,
            } => (
                ragged_row([k, v][which], kv_row_offsets, b, kh, s, cfg),
                1.0,
            ),
        };
        // Two f32 factors (48 significant bits) times an e4m3 value (4): exact in f64.
        let sc = token_scale as f64 * descale;
        for (dst, &x) in out.iter_mut().zip(bytes) {
            *dst = self.lut[x as usize] * sc;
        }
    }
}

/// The FP8 reference: the exact result and, per output element, the terms
/// of [`check_dense_prefill_fp8`]'s tolerance.
#[derive(Clone, Debug)]
pub struct Fp8Reference {
    /// The exact op on the decoded inputs (`f64`).
    pub exact: AttentionOutput,
    /// `[num_rows, n_heads, head_dim]`: `Σ_s e(P_s) |V_s[d]| / D`, the worst
    /// error of rounding every weight `P_s = e^{x_s - m}` to e4m3
    /// ([`e4m3_weight_error`]); 0 where no key is visible.
    pub p_round_bound: Vec<f64>,
    /// `[num_rows, n_heads, head_dim]`: `Σ_s P_s |V_s[d]| / D`, the scale of
    /// the f32 accumulation's error.
    pub pv_abs: Vec<f64>,
    /// `[num_rows, n_heads]`: `max_s |scale| Σ_d |q_d K_s[d]|` over the
    /// row's visible keys, the scale of the e4m3 `Q Kᵀ` accumulation's
    /// error ([`FP8_SCORE_REL`]).
    pub score_abs: Vec<f64>,
}

/// Checks the inputs of the FP8 op ([`validate`]'s rules, bytes for bf16
/// values, plus the descales: finite, `n_kv_heads` of them per head).
/// Returns `num_rows`.
pub fn validate_fp8(
    q: &DenseQ,
    batch: &RaggedBatch,
    kv: &DenseKvFp8,
    descales: &KvDescales,
    sinks: Option<&[f32]>,
    cfg: &DensePrefillConfig,
) -> Result<usize, String> {
    let q_len = match q {
        DenseQ::Bf16(q) | DenseQ::Bf16RowQuantised(q) => q.len(),
        DenseQ::Fp8 { q, .. } => q.len(),
    };
    let rows = validate_common(q_len, batch, sinks, cfg)?;
    if let DenseQ::Fp8 { descale, .. } = q {
        Descale::PerTensor(*descale).check("q_descale", cfg.n_kv_heads)?;
    }
    descales.k.check("k_descale", cfg.n_kv_heads)?;
    descales.v.check("v_descale", cfg.n_kv_heads)?;
    match kv {
        DenseKvFp8::Paged { cache, layer } => {
            validate_paged(
                batch,
                &cache.layout,
                &cache.pages,
                cache.data.len(),
                KvDtype::Fp8E4m3,
                *layer,
                cfg,
            )?;
            if let Some(s) = cache.scales {
                let n = cache.layout.elements() / cache.layout.head_dim.max(1);
                if cache.layout.head_dim > 0 && s.len() != n {
                    return Err(format!(
                        "scales has {} entries, the pool needs {n}",
                        s.len()
                    ));
                }
            }
        }
        DenseKvFp8::Ragged {
            k,
            v,
            kv_row_offsets,
        } => validate_ragged(kv_row_offsets, k.len(), v.len(), batch.batch(), cfg)?,
    }
    Ok(rows)
}

/// The dense prefill on e4m3 K/V (and e4m3 or bf16 Q) in `f64`: every value
/// decoded exactly (`e4m3_to_f32(byte) * descale`, times the pool's token
/// scale if it has them), then [`dense_prefill`]'s math (masks, sinks, empty
/// rows, lse) — the same code. Also returns the per-element terms of the
/// FP8 tolerance ([`Fp8Reference`]). An e4m3 NaN byte among the visible
/// keys makes the result NaN (unwritten slots are never read).
///
/// Panics with a description if [`validate_fp8`] rejects the inputs.
pub fn dense_prefill_fp8(
    q: &DenseQ,
    batch: &RaggedBatch,
    kv: &DenseKvFp8,
    descales: &KvDescales,
    sinks: Option<&[f32]>,
    cfg: &DensePrefillConfig,
) -> Fp8Reference {
    let rows = match validate_fp8(q, batch, kv, descales, sinks, cfg) {
        Ok(r) => r,
        Err(e) => panic!("dense_prefill_fp8: invalid input: {e}"),
    };
    let lut = e4m3_lut();
    let width = cfg.n_heads * cfg.head_dim;
    let q_row = |row: usize| -> Vec<f64> {
        match q {
            DenseQ::Bf16(q) => crate::row_f64(q, row, width),
            DenseQ::Bf16RowQuantised(q) => q[row * width..(row + 1) * width]
                .chunks(cfg.head_dim.max(1))
                .flat_map(|h| {
                    let (bytes, d) =
                        quantize_row_e4m3(&h.iter().map(|x| x.to_f32()).collect::<Vec<_>>());
                    bytes.into_iter().map(move |b| lut[b as usize] * d as f64)
                })
                .collect(),
            DenseQ::Fp8 { q, descale } => q[row * width..(row + 1) * width]
                .iter()
                .map(|&b| lut[b as usize] * *descale as f64)
                .collect(),
        }
    };
    let src = Fp8Rows {
        kv: *kv,
        descales: *descales,
        lut,
    };
    prefill_core(rows, q_row, &src, batch, sinks, cfg, true)
}

/// One query row quantised to e4m3 as the FP8 kernel does for bf16
/// queries, in the same f32 steps: `amax = max |x|`, the bytes
/// `e4m3(x · (448 / amax))` (round to nearest even, saturating), and the
/// factor `amax / 448` that undoes it (1 for an all-zero row).
pub fn quantize_row_e4m3(x: &[f32]) -> (Vec<u8>, f32) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let (inv, d) = if amax > 0.0 {
        (448.0 / amax, amax / 448.0)
    } else {
        (1.0, 1.0)
    };
    (x.iter().map(|v| f32_to_e4m3(v * inv)).collect(), d)
}

/// Slack of [`check_dense_prefill_fp8`] for everything but the rounding of
/// P, relative to `Σ_s P_s |V_s| / D`: f32 scores, `exp`, the f32 (or the
/// tensor cores' narrower) accumulation of `P·V` over the keys. 64 times
/// below e4m3's unit roundoff, so the P rounding term dominates.
pub const FP8_ACC_REL: f64 = 1.0 / 1024.0;
/// Relative error of a score `x_s = scale · q · K_s` computed by e4m3
/// `wgmma`, against its magnitude sum `|scale| Σ_d |q_d K_s[d]|`: Hopper's
/// FP8 tensor cores keep about 14 bits of each 32-deep partial sum
/// (DeepSeek-V3's report; the lightning indexer's `TOL_FACTOR` has the
/// derivation), `4 · 2^-14` over 128 dims; `2^-10` is the indexer's bound,
/// four times that. Measured: bf16 query rows quantised with their own
/// factor (values up to ±448) against e4m3 keys gave a window-1 row's lse
/// (one score) `2 · 10^-3` off the exact value (H100, 2026-12-07), more
/// than `LSE_TOL` alone allows.
pub const FP8_SCORE_REL: f64 = 1.0 / 1024.0;
/// Unit roundoff of bf16 (8 significant bits): the output's rounding.
pub const BF16_REL: f64 = 1.0 / 256.0;

/// Checks a GPU FP8 dense prefill (`gpu_out: bf16 [num_rows, n_heads,
/// head_dim]`, optional `gpu_lse: f32 [num_rows, n_heads]`) against
/// [`dense_prefill_fp8`]'s reference.
///
/// # The tolerance
///
/// Per output element (`r` the exact value, `E = p_round_bound`, `A =
/// pv_abs`, both from the reference):
///
/// ```text
/// |gpu - r| <= B + BF16_REL * (|r| + B) + 2^-126
/// B = E + (FP8_ACC_REL + e^{2δ} - 1) * A,   δ = FP8_SCORE_REL * score_abs
/// E = Σ_s e(P_s) |V_s| / D,   A = Σ_s P_s |V_s| / D,   P_s = e^{x_s - m}
/// e(p) = min(p, max(2^-4 p, 2^-10))                   (e4m3_weight_error)
/// ```
///
/// Why: the kernel computes `out = Σ_s round_e4m3(p_s) V_s / l` with `p_s`
/// its f32 weights, from scores each within `δ` of exact (the e4m3
/// products' accumulation, [`FP8_SCORE_REL`]): moving every score by at
/// most `δ` moves each normalised weight by a factor within `e^{±2δ}`,
/// hence `out` by at most `(e^{2δ} - 1) A`. `e(p)` is the worst round-to-nearest error of an e4m3
/// weight in `[0, 1]` (3 mantissa bits: half an ulp `<= 2^-4 p` for `p >=
/// 2^-6`; below, half the subnormal step `2^-9`; at most `p`, rounding to
/// 0), so the rounding moves `out` by at most `E`. `V_s` enters exactly (it
/// is the decoded e4m3 value); the descales are applied in f32 (a relative
/// `2^-24` each, in the slack). Everything else the kernel does in f32
/// (scores, `exp`, the sums, the accumulation of `P·V`, whose partial sums
/// are bounded by `A`) is covered by `FP8_ACC_REL * A`; the final bf16
/// rounding of a value within `B` of `r` by `BF16_REL * (|r| + B)`. The
/// `2^-126` absorbs flush-to-zero of tiny outputs. An empty row has `E = A
/// = 0`: its output must be (within `2^-126` of) 0.
///
/// What it assumes:
/// - the kernel's weights are max-subtracted, `p_s = e^{x_s - m'}` with `m'`
///   any running max `<= m` (the true max over the scores and the sink):
///   the rounding error of `p_s`, rescaled by `e^{m' - m} <= 1` afterwards,
///   is then still `<= e(P_s)`; a kernel that scales `p` by `2^k` before the
///   cast (FlashAttention-3's `max_offset`) only lowers it;
/// - the denominator `l` sums the unrounded f32 weights (as FlashAttention-3
///   does: the row sum is taken before the cast); rounding the weights in
///   the denominator too would add up to `|r| Σ_s e(P_s) / D`;
/// - `P·V` is accumulated in f32 (or an accumulator with at least ~14
///   significant bits across a tile, with f32 between tiles);
/// - bf16 output, round to nearest.
///
/// lse (from the f32 row sums, untouched by the rounding of P) is checked as
/// [`check_attention`] does, plus the scores' `δ` (a log-sum-exp moves by
/// at most the largest move of its terms): `|lse - ref| <= LSE_TOL *
/// max(1, |ref|) + δ`, `-inf` matches only `-inf`. NaN never passes. The error names the first
/// offending element with its value, the reference and the bound.
pub fn check_dense_prefill_fp8(
    gpu_out: &[bf16],
    gpu_lse: Option<&[f32]>,
    reference: &Fp8Reference,
    cfg: &DensePrefillConfig,
) -> Result<(), String> {
    let r = &reference.exact;
    let (nh, d) = (cfg.n_heads, cfg.head_dim);
    let n = r.out.len();
    if r.lse.len() * d != n
        || reference.p_round_bound.len() != n
        || reference.pv_abs.len() != n
        || reference.score_abs.len() != r.lse.len()
        || !r.lse.len().is_multiple_of(nh.max(1))
    {
        return Err(format!(
            "reference has {n} out / {} lse / {} bound values, inconsistent with {cfg:?}",
            r.lse.len(),
            reference.p_round_bound.len()
        ));
    }
    if gpu_out.len() != n {
        return Err(format!(
            "out has {} elements, expected {n} (num_rows {} * n_heads {nh} * head_dim {d}); {cfg:?}",
            gpu_out.len(),
            r.lse.len() / nh.max(1)
        ));
    }
    let delta = |row_head: usize| FP8_SCORE_REL * reference.score_abs[row_head];
    let bound = |i: usize| {
        let scores = (2.0 * delta(i / d.max(1))).exp_m1();
        let b = reference.p_round_bound[i] + (FP8_ACC_REL + scores) * reference.pv_abs[i];
        b + BF16_REL * (r.out[i].abs() + b) + f64::from(f32::MIN_POSITIVE)
    };
    let bad = gpu_out
        .par_iter()
        .zip(r.out.par_iter())
        .enumerate()
        .find_first(|(i, (g, &x))| {
            let ok = (g.to_f64() - x).abs() <= bound(*i); // false for NaN
            !ok
        });
    if let Some((i, (g, x))) = bad {
        let (row, rest) = (i / (nh * d), i % (nh * d));
        return Err(format!(
            "dense prefill fp8: out[row {row}, head {}, dim {}] = {} but reference {x:e} (|diff| {:.3e} > bound {:.3e}: P rounding {:.3e}, Σ P|V|/D {:.3e}); {cfg:?}",
            rest / d,
            rest % d,
            g.to_f64(),
            (g.to_f64() - x).abs(),
            bound(i),
            reference.p_round_bound[i],
            reference.pv_abs[i]
        ));
    }
    if let Some(gl) = gpu_lse {
        if gl.len() != r.lse.len() {
            return Err(format!(
                "lse has {} elements, expected {} (num_rows * n_heads {nh})",
                gl.len(),
                r.lse.len()
            ));
        }
        let bad = gl
            .par_iter()
            .zip(r.lse.par_iter())
            .enumerate()
            .find_first(|(i, (&g, &x))| {
                let g = g as f64;
                let ok = if x == f64::NEG_INFINITY || g == f64::NEG_INFINITY {
                    g == x
                } else {
                    (g - x).abs() <= LSE_TOL * x.abs().max(1.0) + delta(*i)
                };
                !ok
            });
        if let Some((i, (g, x))) = bad {
            return Err(format!(
                "dense prefill fp8: lse[row {}, head {}] = {g:e} but reference {x:e} (tolerance {LSE_TOL} * max(1, |ref|) + scores' {:.3e}); {cfg:?}",
                i / nh.max(1),
                i % nh.max(1),
                delta(i)
            ));
        }
    }
    Ok(())
}

//! MSA block-sparse attention, decode and prefill
//! (`spec/msa-attention.md`, upstream `mo.msa.attention.ragged.paged`).
//!
//! Inputs:
//! - `q: bf16 [num_rows, n_heads, head_dim]`, rows packed by sequence;
//! - the ragged batch ([`RaggedBatch`]): `offsets: u32 [batch + 1]`
//!   (`input_row_offsets`), `offsets[0] = 0`, non-decreasing,
//!   `offsets[batch] = num_rows`, and `cache_lengths: u32 [batch]`: tokens
//!   cached *before* this step (the new tokens' K/V are already in the cache);
//! - the main KV paged cache (`[num_pages, 2, num_layers, 128, n_kv_heads,
//!   head_dim]`, `kv = 0` is K, `kv = 1` is V) and `layer`;
//! - `d_indices: i32 [n_kv_heads, num_rows, topk]`: block ids (logical page
//!   numbers of the row's sequence) from the indexer.
//!
//! Output: `out [num_rows, n_heads, head_dim]` and
//! `lse [num_rows, n_heads]` (natural log).
//!
//! For sequence `b`, local row `i` (packed row `t = offsets[b] + i`) and query
//! head `h` with KV head `kh = h / group`, `group = n_heads / n_kv_heads`:
//! `q_pos = cache_len[b] + i`, `seqlen_k = cache_len[b] + q_len[b]` and the
//! attended keys are the multiset
//! `{ 128 blk + c : blk in d_indices[kh, t, :], 0 <= blk < ceil(seqlen_k / 128),
//! c in 0..128, pos = 128 blk + c < seqlen_k, pos <= q_pos }`;
//! `out[t, h] = sum_pos softmax(scale * q[t, h] . K[pos]) V[pos]` and
//! `lse[t, h] = ln sum_pos exp(scale * q[t, h] . K[pos])`.
//!
//! - Negative ids (`-1` padding) are skipped; ids `>= ceil(seqlen_k / 128)`
//!   are skipped too **(our choice, matching the upstream prefill plan)**.
//! - The unwritten tail of the last page is always masked (`pos < seqlen_k`).
//! - A block id that appears twice is attended twice (its keys count twice
//!   in the softmax), as upstream.
//! - With no surviving key, `out = 0` and `lse = -inf` (no NaN).
//!
//! The reference computes in `f64` from exactly widened bf16 values (the
//! softmax with max subtraction), so it is at least as accurate as any f32
//! kernel; [`check_attention`] applies the spec's tolerance rules to a GPU
//! result. Unlike the GPU API (head_dim 128, bounded `group`), the reference
//! accepts any `head_dim`, `group` and `topk` (including 0).

use crate::msa_indexer::{self, MsaIndexerConfig, BLOCK};
use crate::paged::PagedCache;
use half::bf16;
use rayon::prelude::*;
use sparse_attn_abi::batch::{Mask, RaggedBatch, RowPos};

/// The op's parameters: the host API's configuration. The reference accepts
/// any `head_dim`, `topk` (0 included) and `scale`; `n_heads` must be a
/// positive multiple of `n_kv_heads >= 1`.
pub use sparse_attn_abi::config::MsaAttentionConfig;

/// Result of [`msa_attention`].
#[derive(Clone, Debug, PartialEq)]
pub struct AttentionOutput {
    /// `[num_rows, n_heads, head_dim]`; 0 where no key survives.
    pub out: Vec<f64>,
    /// `[num_rows, n_heads]`, natural log of the softmax denominator
    /// (before max subtraction); `-inf` where no key survives.
    pub lse: Vec<f64>,
}

/// Per-element tolerance factor of [`check_attention`]:
/// `|out - ref| <= OUT_TOL * max(1, |ref|)`.
pub const OUT_TOL: f64 = 2e-2;
/// Bound on the relative L2 error `||out - ref|| / ||ref||` of [`check_attention`].
pub const L2_TOL: f64 = 1e-2;
/// LSE tolerance factor of [`check_attention`]:
/// `|lse - ref| <= LSE_TOL * max(1, |ref|)`.
pub const LSE_TOL: f64 = 1e-3;

/// Checks the inputs of the op; returns `num_rows` or a description of the
/// first problem (the host API's bad-input cases, except that any
/// `head_dim`, `group` and `topk` are accepted).
pub fn validate(
    q: &[bf16],
    batch: &RaggedBatch,
    cache: &PagedCache,
    layer: usize,
    d_indices: &[i32],
    p: &MsaAttentionConfig,
) -> Result<usize, String> {
    if p.n_kv_heads == 0 {
        return Err("n_kv_heads must be >= 1".into());
    }
    if p.n_heads == 0 || !p.n_heads.is_multiple_of(p.n_kv_heads) {
        return Err(format!(
            "n_heads {} is not a positive multiple of n_kv_heads {}",
            p.n_heads, p.n_kv_heads
        ));
    }
    let l = &cache.layout;
    crate::paged::check_main_kv(l, p.n_kv_heads)?;
    // The ragged batch, q, page size, head_dim, layer and page table are
    // checked as for the indexer (q has n_heads heads here).
    let ip = MsaIndexerConfig {
        num_index_heads: p.n_heads,
        head_dim: p.head_dim,
        block_size: BLOCK,
        topk: p.topk.max(1),
        init_blocks: 0,
        local_blocks: 0,
        scale: p.scale,
    };
    let rows = msa_indexer::validate(q, batch, cache, layer, &ip)?;
    let want = p.n_kv_heads * rows * p.topk;
    if d_indices.len() != want {
        return Err(format!(
            "d_indices has {} entries, expected n_kv_heads {} * num_rows {rows} * topk {}",
            d_indices.len(),
            p.n_kv_heads,
            p.topk
        ));
    }
    Ok(rows)
}

/// The attended key positions of one (KV head, row), with multiplicity, in
/// slot order: the spec's key multiset for the slots `ids` (the causal
/// [`Mask`] within the selected blocks).
pub fn attended_keys(ids: &[i32], q_pos: usize, seqlen_k: usize) -> Vec<usize> {
    let num_blocks = seqlen_k.div_ceil(BLOCK);
    let visible = Mask::Causal.key_range(q_pos, seqlen_k);
    let mut keys = Vec::new();
    for &blk in ids {
        if blk < 0 || blk as usize >= num_blocks {
            continue;
        }
        let start = blk as usize * BLOCK;
        let end = (start + BLOCK).min(visible.end);
        keys.extend(start..end);
    }
    keys
}

/// The scores of one KV head's query heads over `keys`: `scores[g][j] =
/// scale · q[h] · K[keys[j]]`, `h = kh · group + g`, with `qf` the row's
/// `[n_heads, d]` query in f64 and `k_row(s)` key `s`'s row (the dense
/// prefill's too).
pub(crate) fn group_scores<'a>(
    qf: &[f64],
    d: usize,
    kh: usize,
    group: usize,
    scale: f64,
    keys: impl ExactSizeIterator<Item = usize>,
    k_row: impl Fn(usize) -> &'a [bf16],
) -> Vec<Vec<f64>> {
    let mut kf = vec![0.0f64; d];
    let mut scores = vec![vec![0.0f64; keys.len()]; group];
    for (j, s) in keys.enumerate() {
        for (dst, k) in kf.iter_mut().zip(k_row(s)) {
            *dst = k.to_f64();
        }
        for (g, sc) in scores.iter_mut().enumerate() {
            let h = kh * group + g;
            sc[j] = scale * dot(&qf[h * d..(h + 1) * d], &kf);
        }
    }
    scores
}

/// `a · b` in four interleaved f64 chains.
pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut s = [0.0f64; 4];
    let ca = a.chunks_exact(4);
    let cb = b.chunks_exact(4);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..4 {
            s[k] += x[k] * y[k];
        }
    }
    for (x, y) in ra.iter().zip(rb) {
        s[0] += x * y;
    }
    (s[0] + s[1]) + (s[2] + s[3])
}

/// The full op in `f64`. Parallel over rows.
///
/// Panics with a description if [`validate`] rejects the inputs.
pub fn msa_attention(
    q: &[bf16],
    batch: &RaggedBatch,
    cache: &PagedCache,
    layer: usize,
    d_indices: &[i32],
    p: &MsaAttentionConfig,
) -> AttentionOutput {
    let rows = match validate(q, batch, cache, layer, d_indices, p) {
        Ok(r) => r,
        Err(e) => panic!("msa_attention: invalid input: {e}"),
    };
    let (nh, nkv, d, topk) = (p.n_heads, p.n_kv_heads, p.head_dim, p.topk);
    let group = p.group();
    let scale = p.scale as f64;
    let pos: Vec<RowPos> = batch.rows().collect();
    let mut out = vec![0.0f64; rows * nh * d];
    let mut lse = vec![f64::NEG_INFINITY; rows * nh];
    if nh * d > 0 {
        out.par_chunks_mut(nh * d)
            .zip(lse.par_chunks_mut(nh))
            .enumerate()
            .for_each(|(row, (o_row, l_row))| {
                let RowPos { seq: b, q_pos } = pos[row];
                let seqlen_k = batch.seqlen_k(b) as usize;
                let qf = crate::row_f64(q, row, nh * d);
                let mut kf = vec![0.0f64; d];
                for kh in 0..nkv {
                    let ids = &d_indices[(kh * rows + row) * topk..(kh * rows + row + 1) * topk];
                    let keys = attended_keys(ids, q_pos, seqlen_k);
                    if keys.is_empty() {
                        continue; // out stays 0, lse -inf
                    }
                    let mut scores =
                        group_scores(&qf, d, kh, group, scale, keys.iter().copied(), |s| {
                            cache.row(b, 0, layer, kh, s)
                        });
                    // Softmax weights (max subtracted) and log-sum-exp.
                    let mut sums = vec![0.0f64; group];
                    for (g, sc) in scores.iter_mut().enumerate() {
                        let m = sc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                        let mut sum = 0.0;
                        for x in sc.iter_mut() {
                            *x = (*x - m).exp();
                            sum += *x;
                        }
                        sums[g] = sum;
                        l_row[kh * group + g] = m + sum.ln();
                    }
                    let o_kv = &mut o_row[kh * group * d..(kh + 1) * group * d];
                    for (j, &s) in keys.iter().enumerate() {
                        for (dst, v) in kf.iter_mut().zip(cache.row(b, 1, layer, kh, s)) {
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
                        let inv = 1.0 / sums[g];
                        o.iter_mut().for_each(|x| *x *= inv);
                    }
                }
            });
    }
    AttentionOutput { out, lse }
}

/// Checks a GPU result against the reference with the spec's rules:
/// `gpu_out: bf16 [num_rows, n_heads, head_dim]`, optional
/// `gpu_lse: f32 [num_rows, n_heads]`.
///
/// - per element `|out - ref| <= 2e-2 * max(1, |ref|)` (bf16 output of an f32
///   accumulation over bf16 inputs), NaN never passes;
/// - relative L2 error `||out - ref|| / ||ref|| <= 1e-2` over the whole
///   tensor (skipped when `||ref|| = 0`);
/// - `|lse - ref| <= 1e-3 * max(1, |ref|)`; `-inf` matches only `-inf`;
///   NaN never passes.
///
/// The error names the first offending `(row, head, dim)` (row-major order)
/// with both values; an L2 failure names the element of largest error.
pub fn check_attention(
    gpu_out: &[bf16],
    gpu_lse: Option<&[f32]>,
    reference: &AttentionOutput,
    p: &MsaAttentionConfig,
) -> Result<(), String> {
    check_lengths(gpu_out, reference, p)?;
    let (nh, d) = (p.n_heads, p.head_dim);
    // (row, head, dim) of element `i` of `out`.
    let at = |i: usize| {
        let (row, rest) = (i / (nh * d).max(1), i % (nh * d).max(1));
        (row, rest / d.max(1), rest % d.max(1))
    };
    let bad = gpu_out
        .par_iter()
        .zip(reference.out.par_iter())
        .enumerate()
        .find_first(|(_, (g, &r))| {
            let g = g.to_f64();
            let ok = (g - r).abs() <= OUT_TOL * r.abs().max(1.0); // false for NaN
            !ok
        });
    if let Some((i, (g, r))) = bad {
        let (row, head, dim) = at(i);
        return Err(format!(
            "out[row {row}, head {head}, dim {dim}] = {} but reference {r:e} (|diff| {:.3e} > {OUT_TOL} * max(1, |ref|)); {p:?}",
            g.to_f64(),
            (g.to_f64() - r).abs()
        ));
    }
    if let Some(gl) = gpu_lse {
        check_lse(gl, &reference.lse, p)?;
    }
    let (err2, ref2) = gpu_out
        .par_iter()
        .zip(reference.out.par_iter())
        .map(|(g, &r)| {
            let e = g.to_f64() - r;
            (e * e, r * r)
        })
        .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    let l2_ok = err2.sqrt() <= L2_TOL * ref2.sqrt();
    if ref2 > 0.0 && !l2_ok {
        let (i, _) = gpu_out
            .iter()
            .zip(&reference.out)
            .map(|(g, &r)| (g.to_f64() - r).abs())
            .enumerate()
            .fold((0, -1.0f64), |a, (i, e)| if e > a.1 { (i, e) } else { a });
        let (row, head, dim) = at(i);
        return Err(format!(
            "relative L2 error {:.3e} > {L2_TOL} (||out - ref|| {:.3e}, ||ref|| {:.3e}); largest error at out[row {row}, head {head}, dim {dim}] = {} vs reference {:e}; {p:?}",
            (err2 / ref2).sqrt(),
            err2.sqrt(),
            ref2.sqrt(),
            gpu_out[i].to_f64(),
            reference.out[i]
        ));
    }
    Ok(())
}

/// [`check_attention`]'s lengths: the reference's `out` and `lse` agree
/// with `p`, and the GPU's `out` has as many elements.
fn check_lengths(
    gpu_out: &[bf16],
    reference: &AttentionOutput,
    p: &MsaAttentionConfig,
) -> Result<(), String> {
    let (nh, d) = (p.n_heads, p.head_dim);
    if reference.out.len() != reference.lse.len() * d
        || !reference.lse.len().is_multiple_of(nh.max(1))
    {
        return Err(format!(
            "reference has {} out / {} lse values, inconsistent with {p:?}",
            reference.out.len(),
            reference.lse.len()
        ));
    }
    if gpu_out.len() != reference.out.len() {
        return Err(format!(
            "out has {} elements, expected {} (num_rows {} * n_heads {nh} * head_dim {d})",
            gpu_out.len(),
            reference.out.len(),
            reference.lse.len() / nh.max(1)
        ));
    }
    Ok(())
}

/// [`check_attention`]'s rule for `lse`: its length, then each value
/// within [`LSE_TOL`] (`-inf` matches only `-inf`, NaN never passes).
fn check_lse(gpu_lse: &[f32], want: &[f64], p: &MsaAttentionConfig) -> Result<(), String> {
    let nh = p.n_heads.max(1);
    if gpu_lse.len() != want.len() {
        return Err(format!(
            "lse has {} elements, expected {} (num_rows * n_heads {})",
            gpu_lse.len(),
            want.len(),
            p.n_heads
        ));
    }
    let bad = gpu_lse
        .par_iter()
        .zip(want.par_iter())
        .enumerate()
        .find_first(|(_, (&g, &r))| {
            let g = g as f64;
            let ok = if r == f64::NEG_INFINITY || g == f64::NEG_INFINITY {
                g == r
            } else {
                (g - r).abs() <= LSE_TOL * r.abs().max(1.0)
            };
            !ok
        });
    if let Some((i, (g, r))) = bad {
        return Err(format!(
            "lse[row {}, head {}] = {g:e} but reference {r:e} (tolerance {LSE_TOL} * max(1, |ref|)); {p:?}",
            i / nh,
            i % nh
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paged::testing::{bf, Pool};
    use crate::paged::PagedLayout;

    fn params(nh: usize, nkv: usize, d: usize, topk: usize, scale: f32) -> MsaAttentionConfig {
        MsaAttentionConfig {
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: d,
            topk,
            scale,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1.0)
    }

    /// Each of `check_attention`'s rules rejects what it must: an element
    /// past its tolerance, an lse off, NaN or of the wrong length, and a
    /// bias every element passes but the L2 rule does not.
    #[test]
    fn check_attention_rejects_each_kind_of_error() {
        let p = params(2, 1, 4, 1, 1.0);
        let want = AttentionOutput {
            out: (0..16).map(|i| 1.0 + i as f64 / 8.0).collect(),
            lse: vec![0.5, f64::NEG_INFINITY, 2.0, 3.0],
        };
        let out = |f: &dyn Fn(usize, f64) -> f64| -> Vec<bf16> {
            want.out
                .iter()
                .enumerate()
                .map(|(i, &r)| bf16::from_f64(f(i, r)))
                .collect()
        };
        let lse: Vec<f32> = want.lse.iter().map(|&l| l as f32).collect();
        check_attention(&out(&|_, r| r), Some(&lse), &want, &p).unwrap();
        let e = check_attention(
            &out(&|i, r| if i == 9 { r + 0.5 } else { r }),
            None,
            &want,
            &p,
        );
        assert!(e.unwrap_err().contains("out[row 1, head 0, dim 1]"));
        for (bad, needle) in [
            (vec![0.5, f32::NEG_INFINITY, 2.0, 3.1], "lse[row 1, head 1]"),
            (vec![0.5, 0.0, 2.0, 3.0], "lse[row 0, head 1]"),
            (
                vec![0.5, f32::NEG_INFINITY, f32::NAN, 3.0],
                "lse[row 1, head 0]",
            ),
            (vec![0.5, f32::NEG_INFINITY, 2.0], "lse has 3 elements"),
        ] {
            let e = check_attention(&out(&|_, r| r), Some(&bad), &want, &p).unwrap_err();
            assert!(e.contains(needle), "{needle}: {e}");
        }
        // 1.5% high everywhere: inside 2e-2 per element, over 1e-2 in L2.
        let e = check_attention(&out(&|_, r| r * 1.015), Some(&lse), &want, &p).unwrap_err();
        assert!(e.contains("relative L2 error"), "{e}");
        let e = check_attention(&out(&|_, r| r)[1..], None, &want, &p).unwrap_err();
        assert!(e.contains("out has 15 elements"), "{e}");
    }

    fn assert_close(got: &[f64], want: &[f64]) {
        assert_eq!(got.len(), want.len());
        for (i, (a, b)) in got.iter().zip(want).enumerate() {
            assert!(close(*a, *b), "element {i}: {a} != {b}\n{got:?}\n{want:?}");
        }
    }

    /// Softmax over explicit `(score, value)` pairs: `(out, lse)`.
    fn manual(pairs: &[(f64, Vec<f64>)]) -> (Vec<f64>, f64) {
        let sum: f64 = pairs.iter().map(|(s, _)| s.exp()).sum();
        let d = pairs[0].1.len();
        let mut out = vec![0.0; d];
        for (s, v) in pairs {
            for (o, x) in out.iter_mut().zip(v) {
                *o += s.exp() / sum * x;
            }
        }
        (out, sum.ln())
    }

    #[test]
    fn tiny_hand_computed() {
        // One sequence: cache_len 2, q_len 2 -> rows at q_pos 2 and 3,
        // seqlen_k 4. K[s] = [s, 1], V[s] = [s, 10 - s]; 1 KV head, 2 q heads.
        let pool = Pool::new(&[4], 2, 1, 2, bf16::NAN, |_, kv, _, s| {
            let s = s as f32;
            if kv == 0 {
                vec![s, 1.0]
            } else {
                vec![s, 10.0 - s]
            }
        });
        // q [2 rows, 2 heads, 2]: head 0 = [1, 0] (scores s), head 1 = [0, 2]
        // (scores 2, uniform).
        let q = bf(&[1.0, 0.0, 0.0, 2.0, 1.0, 0.0, 0.0, 2.0]);
        let p = params(2, 1, 2, 2, 0.5);
        let d_idx = [0, -1, -1, 0];
        let r = msa_attention(
            &q,
            &RaggedBatch::new(&[0, 2], &[2]),
            &pool.cache(),
            1,
            &d_idx,
            &p,
        );
        let e = std::f64::consts::E;
        // Row 0 (q_pos 2): keys 0, 1, 2; head 0 scores 0, 0.5, 1.
        let w = [1.0, e.sqrt(), e];
        let z: f64 = w.iter().sum();
        let x0 = (w[1] + 2.0 * w[2]) / z;
        // Row 1 (q_pos 3): keys 0..4, head 0 scores 0, 0.5, 1, 1.5.
        let w1 = [1.0, e.sqrt(), e, e.powf(1.5)];
        let z1: f64 = w1.iter().sum();
        let x1 = (w1[1] + 2.0 * w1[2] + 3.0 * w1[3]) / z1;
        assert_close(&r.out, &[x0, 10.0 - x0, 1.0, 9.0, x1, 10.0 - x1, 1.5, 8.5]);
        assert_close(&r.lse, &[z.ln(), 1.0 + 3f64.ln(), z1.ln(), 1.0 + 4f64.ln()]);
        // The GPU-shaped result of the reference itself passes the check.
        let gpu: Vec<bf16> = r.out.iter().map(|&x| bf16::from_f64(x)).collect();
        let gl: Vec<f32> = r.lse.iter().map(|&x| x as f32).collect();
        check_attention(&gpu, Some(&gl), &r, &p).unwrap();
    }

    #[test]
    fn all_minus_one_gives_zeros_and_neg_inf() {
        let pool = Pool::new(&[300, 5], 2, 2, 4, bf16::NAN, |_, _, _, s| {
            vec![s as f32 * 0.01; 4]
        });
        let p = params(4, 2, 4, 3, 1.0);
        let offsets = [0, 2, 3];
        let lens = [298, 4];
        let q = bf(&[1.0; 3 * 4 * 4]);
        let c = pool.cache();
        let ones = vec![-1; 2 * 3 * 3];
        let r = msa_attention(&q, &RaggedBatch::new(&offsets, &lens), &c, 1, &ones, &p);
        assert!(r.out.iter().all(|&x| x == 0.0));
        assert!(r.lse.iter().all(|&x| x == f64::NEG_INFINITY));
        // Stale ids (>= ceil(seqlen_k / 128)) and other negatives are skipped too:
        // sequence 0 has 3 blocks, sequence 1 has 1.
        let stale = [
            3,
            -7,
            i32::MAX,
            3,
            4,
            5,
            1,
            2,
            -1,
            3,
            9,
            -2,
            3,
            3,
            i32::MIN,
            1,
            1,
            1,
        ];
        let r2 = msa_attention(&q, &RaggedBatch::new(&offsets, &lens), &c, 1, &stale, &p);
        assert_eq!(r2, r);
        // topk 0 and empty batches are valid.
        let p0 = MsaAttentionConfig { topk: 0, ..p };
        let r3 = msa_attention(&q, &RaggedBatch::new(&offsets, &lens), &c, 1, &[], &p0);
        assert_eq!(r3, r);
        let r4 = msa_attention(&[], &RaggedBatch::new(&[0, 0, 0], &lens), &c, 0, &[], &p);
        assert!(r4.out.is_empty() && r4.lse.is_empty());
        let gpu = vec![bf16::ZERO; r.out.len()];
        let gl = vec![f32::NEG_INFINITY; r.lse.len()];
        check_attention(&gpu, Some(&gl), &r, &p).unwrap();
        // -inf must match -inf; zeros must stay (close to) zero.
        let mut gl2 = gl.clone();
        gl2[3] = -1e30;
        assert!(check_attention(&gpu, Some(&gl2), &r, &p).is_err());
        let mut g2 = gpu.clone();
        g2[5] = bf16::from_f32(0.5);
        assert!(check_attention(&g2, Some(&gl), &r, &p).is_err());
    }

    #[test]
    fn partial_last_page_and_causal_mask() {
        // seqlen_k 131: page 1 holds keys 128..131, its tail is NaN garbage.
        // cache_len 128, q_len 3 -> rows at q_pos 128, 129, 130.
        let pool = Pool::new(&[131], 2, 1, 1, bf16::NAN, |_, kv, _, s| {
            vec![if kv == 0 { (s % 3) as f32 } else { s as f32 }]
        });
        let q = bf(&[1.0, 1.0, 1.0]);
        let p = params(1, 1, 1, 2, 0.25);
        let d_idx = [1, -1, 1, 0, -1, 1];
        let r = msa_attention(
            &q,
            &RaggedBatch::new(&[0, 3], &[128]),
            &pool.cache(),
            1,
            &d_idx,
            &p,
        );
        assert!(r.out.iter().chain(&r.lse).all(|x| x.is_finite()), "{r:?}");
        let key = |s: usize| (0.25 * (s % 3) as f64, vec![s as f64]);
        let want: Vec<(Vec<f64>, f64)> = vec![
            manual(&[key(128)]),
            manual(&(0..130).map(key).collect::<Vec<_>>()),
            manual(&(128..131).map(key).collect::<Vec<_>>()),
        ];
        for (t, (o, l)) in want.iter().enumerate() {
            assert!(close(r.out[t], o[0]), "row {t}: {} vs {}", r.out[t], o[0]);
            assert!(close(r.lse[t], *l), "row {t}: {} vs {l}", r.lse[t]);
        }
    }

    #[test]
    fn duplicate_block_is_attended_twice() {
        // seqlen_k 256 (decode at q_pos 255): blocks 0 and 1.
        let pool = Pool::new(&[256], 2, 1, 2, bf16::NAN, |_, kv, _, s| {
            let f = s as f32 / 64.0;
            if kv == 0 {
                vec![f.sin(), f.cos()]
            } else {
                vec![f, 1.0 - f]
            }
        });
        let q = bf(&[0.75, -1.5]);
        let p = params(1, 1, 2, 3, 0.5);
        let key = |s: usize| {
            let c = pool.cache();
            let k = c.row(0, 0, 1, 0, s);
            let v = c.row(0, 1, 1, 0, s);
            let sc = 0.5 * (0.75 * k[0].to_f64() - 1.5 * k[1].to_f64());
            (sc, v.iter().map(|x| x.to_f64()).collect::<Vec<_>>())
        };
        let run = |ids: [i32; 3]| {
            msa_attention(
                &q,
                &RaggedBatch::new(&[0, 1], &[255]),
                &pool.cache(),
                1,
                &ids,
                &p,
            )
        };
        let r = run([0, 1, 0]);
        let pairs: Vec<_> = (0..128).chain(0..256).map(key).collect();
        let (o, l) = manual(&pairs);
        assert_close(&r.out, &o);
        assert_close(&r.lse, &[l]);
        // ... which differs from attending each block once.
        let once = run([0, 1, -1]);
        assert!((once.out[0] - r.out[0]).abs() > 1e-3);
        assert!(close(run([1, -1, 0]).out[0], once.out[0]));
        // The same block three times: same out, lse + ln 3.
        let single = run([1, -1, -1]);
        let triple = run([1, 1, 1]);
        assert_close(&triple.out, &single.out);
        assert_close(&triple.lse, &[single.lse[0] + 3f64.ln()]);
    }

    #[test]
    fn heads_follow_their_kv_head() {
        // 2 KV heads, group 2: KV head 0 has V = [s], KV head 1 V = [-s];
        // KV head 0 selects block 0, KV head 1 block 1.
        let pool = Pool::new(&[200], 2, 2, 1, bf16::NAN, |_, kv, h, s| {
            vec![match (kv, h) {
                (0, _) => (h + 1) as f32,
                (_, 0) => s as f32,
                _ => -(s as f32),
            }]
        });
        let q = bf(&[0.0, 0.0, 0.0, 0.0]);
        let p = params(4, 2, 1, 1, 1.0);
        let r = msa_attention(
            &q,
            &RaggedBatch::new(&[0, 1], &[199]),
            &pool.cache(),
            1,
            &[0, 1],
            &p,
        );
        // Uniform weights: block 0 mean 63.5, block 1 (keys 128..200) -163.5.
        assert_close(&r.out, &[63.5, 63.5, -163.5, -163.5]);
        let l = [128f64.ln(), 128f64.ln(), 72f64.ln(), 72f64.ln()];
        assert_close(&r.lse, &l);
    }

    #[test]
    fn checker_rejects_perturbations() {
        let pool = Pool::new(&[400], 2, 2, 8, bf16::NAN, |_, kv, h, s| {
            (0..8)
                .map(|i| (((s * 7 + i * 3 + h * 5 + kv) % 11) as f32 - 5.0) / 4.0)
                .collect()
        });
        let p = params(4, 2, 8, 2, 0.3);
        let q: Vec<bf16> = (0..3 * 4 * 8)
            .map(|i| bf16::from_f32(((i * 5 % 7) as f32 - 3.0) / 2.0))
            .collect();
        let d_idx = [0, 2, 2, -1, 1, 0, 3, 1, -1, 2, 0, 1];
        let r = msa_attention(
            &q,
            &RaggedBatch::new(&[0, 3], &[397]),
            &pool.cache(),
            1,
            &d_idx,
            &p,
        );
        let gpu: Vec<bf16> = r.out.iter().map(|&x| bf16::from_f64(x)).collect();
        let gl: Vec<f32> = r.lse.iter().map(|&x| x as f32).collect();
        check_attention(&gpu, Some(&gl), &r, &p).unwrap();
        check_attention(&gpu, None, &r, &p).unwrap();
        // One element off by 0.1.
        let mut g = gpu.clone();
        g[37] = bf16::from_f64(r.out[37] + 0.1);
        let e = check_attention(&g, None, &r, &p).unwrap_err();
        assert!(e.contains("row 1, head 0, dim 5"), "{e}");
        // NaN.
        let mut g = gpu.clone();
        g[90] = bf16::NAN;
        let e = check_attention(&g, None, &r, &p).unwrap_err();
        assert!(e.contains("row 2, head 3, dim 2"), "{e}");
        // Every element 1.5% too large: passes per element, fails the L2 rule.
        let g: Vec<bf16> = r.out.iter().map(|&x| bf16::from_f64(x * 1.015)).collect();
        let e = check_attention(&g, None, &r, &p).unwrap_err();
        assert!(e.contains("relative L2"), "{e}");
        // Wrong lse, NaN lse, wrong lengths.
        let mut l2 = gl.clone();
        l2[5] += 0.01 * gl[5].abs().max(1.0);
        let e = check_attention(&gpu, Some(&l2), &r, &p).unwrap_err();
        assert!(e.contains("lse[row 1, head 1]"), "{e}");
        l2[5] = f32::NAN;
        assert!(check_attention(&gpu, Some(&l2), &r, &p).is_err());
        l2[5] = f32::NEG_INFINITY;
        assert!(check_attention(&gpu, Some(&l2), &r, &p).is_err());
        assert!(check_attention(&gpu[1..], None, &r, &p).is_err());
        assert!(check_attention(&gpu, Some(&gl[1..]), &r, &p).is_err());
    }

    #[test]
    fn validate_rejects_bad_input() {
        let pool = Pool::new(&[130], 2, 2, 2, bf16::NAN, |_, _, _, _| vec![1.0, 1.0]);
        let c = pool.cache();
        let q = bf(&[1.0; 2 * 4 * 2]);
        let p = params(4, 2, 2, 3, 1.0);
        let idx = vec![0i32; 2 * 2 * 3];
        assert_eq!(
            validate(&q, &RaggedBatch::new(&[0, 2], &[128]), &c, 1, &idx, &p),
            Ok(2)
        );
        assert!(validate(&q, &RaggedBatch::new(&[0, 2], &[128]), &c, 1, &idx[1..], &p).is_err());
        assert!(validate(&q, &RaggedBatch::new(&[0, 1], &[128]), &c, 1, &idx, &p).is_err());
        assert!(validate(&q, &RaggedBatch::new(&[0, 2], &[300]), &c, 1, &idx, &p).is_err());
        assert!(validate(&q, &RaggedBatch::new(&[0, 2], &[128]), &c, 2, &idx, &p).is_err());
        let batch = RaggedBatch::new(&[0, 2], &[128]);
        for bad in [
            params(3, 2, 2, 3, 1.0),
            params(4, 0, 2, 3, 1.0),
            params(2, 4, 4, 3, 1.0),
            params(4, 4, 2, 3, 1.0),
        ] {
            assert!(validate(&q, &batch, &c, 1, &idx, &bad).is_err(), "{bad:?}");
        }
        let l1 = PagedLayout {
            kv_dim: 1,
            ..pool.layout
        };
        let half = &pool.data[..l1.elements()];
        let c1 = PagedCache {
            layout: l1,
            data: half,
            ..c
        };
        assert!(validate(&q, &RaggedBatch::new(&[0, 2], &[128]), &c1, 1, &idx, &p).is_err());
        let r = std::panic::catch_unwind(|| {
            msa_attention(&q, &RaggedBatch::new(&[0, 2], &[128]), &c, 1, &idx[1..], &p)
        });
        assert!(r.is_err());
    }
}

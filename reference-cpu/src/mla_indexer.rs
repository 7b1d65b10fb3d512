//! MLA FP8 lightning indexer (DeepSeek-V3.2 style): the `top_k` best key
//! positions per query row (`spec/mla-fp8-indexer.md`, upstream
//! `mo.mla.indexer.ragged.float8.paged`).
//!
//! Inputs:
//! - `q: e4m3 [num_rows, num_heads, 128]` and `qs: f32 [num_rows,
//!   num_heads]` (the per-head weights, into which the caller has folded
//!   `num_heads^-0.5`, the q dequant scale and `head_dim^-0.5`);
//! - the ragged batch ([`RaggedBatch`]: `input_row_offsets`,
//!   `cache_lengths`);
//! - the FP8 index-K cache ([`Fp8IndexK`]): `e4m3 [num_pages, 1,
//!   num_layers, page_size, 1, 128]` with one f32 scale per token, either in
//!   a separate tensor `k_scales: f32 [num_pages, 1, num_layers, page_size,
//!   1]` ([`KvDtype::Fp8E4m3`]) or inside each page after its rows
//!   ([`KvDtype::Fp8E4m3Fused`], DeepGEMM's and vLLM's page), its page
//!   table and `layer`.
//!
//! Output: `out: i32 [num_rows, top_k]`, logical positions within the row's
//! sequence.
//!
//! Definition. For row `t` of sequence `b` at `q_pos = cache_len[b] + i`
//! and a visible key `s` (`s in Mask::key_range(q_pos, seqlen_k[b])`:
//! `s < seqlen_k[b]`, and `s <= q_pos` with [`Mask::Causal`], by absolute
//! position):
//!
//! ```text
//! dot[h]   = Σ_d e4m3(q[t,h,d]) · e4m3(k[b,s,d])
//! score[s] = k_scale[b,s] · Σ_h max(dot[h], 0) · qs[t,h]
//! ```
//!
//! and the `n = min(top_k, visible keys)` best positions, descending score,
//! ties to the lower position, then `-1` up to `top_k`.
//!
//! Choices:
//! - Everything in f64. Every e4m3 value and every product of two is exact
//!   in f64, and so is each 128-term dot (the products lie between `2^-18`
//!   and `2^18`, so a sum of 128 of them needs fewer than 45 bits): `dot[h]`
//!   is exact whatever the order, and the only roundings are those of the
//!   head sum and the scale (f64, far below any f32 kernel's).
//! - NaN propagates (**our choice**): a NaN in q, k, `qs` or the scale makes
//!   the score NaN (`max(NaN, 0)` is NaN here, not `f64::max`'s 0), and a
//!   NaN score ranks below every number (`-inf` included), NaNs among
//!   themselves by position ([`rank_cmp`]).
//! - The causal mask is by absolute position (the spec's choice; upstream's
//!   chunk-local mask hides valid prefix keys in chunked prefill).
//! - [`check_row`] accepts any selection that is right within the
//!   per-key tolerance [`RowLogits::tol`] ([`TOL_FACTOR`]); [`check_exact`]
//!   wants the reference's selection exactly, for integer-friendly inputs
//!   where the kernel's f32 arithmetic is exact.

use rayon::prelude::*;
use sparse_attn_abi::batch::{KvDtype, Mask, RaggedBatch, RowPos};
use sparse_attn_abi::fp8::e4m3_to_f32;

use crate::msa_indexer::rank_cmp;

/// The op's parameters: the host API's configuration. The reference
/// accepts any `num_heads` and any `top_k >= 1`; `mask` must be
/// [`Mask::None`] or [`Mask::Causal`].
pub use sparse_attn_abi::config::MlaIndexerConfig;

/// Elements of a key (and of a query head): the index head dimension.
pub const HEAD_DIM: usize = 128;

/// Relative tolerance of [`RowLogits::tol`]: `2^-10` of the score's
/// magnitude sum `|k_scale| · Σ_h |qs[t,h]| · Σ_d |q[t,h,d] · k[s,d]|`.
///
/// Why so loose (the MSA indexer's bf16 kernel gets `2^-16`): Hopper's FP8
/// tensor cores do not accumulate in full f32. DeepSeek-V3's technical
/// report measured the FP8 `wgmma` accumulation at about 14 bits of
/// precision: each 32-deep instruction's partial sum is aligned to the
/// accumulator and truncated, so the four steps of a 128-term dot lose up to
/// about `4 · 2^-14 = 2^-12` of its magnitude sum. The kernel then sums the
/// heads in f32 with fused multiply-adds (`2^-24` relative per step) and
/// multiplies by the scale. `2^-10` covers the worst case four times over.
/// It is a bound on the magnitude sum, not on the (much smaller) score: on
/// random inputs it is a few percent of the spread of a row's scores, so
/// near-ties within it may come in either order.
pub const TOL_FACTOR: f64 = 1.0 / 1024.0;

/// The FP8 index-K cache: one layer of it is read. A
/// [`PagedCacheFp8`](crate::paged::PagedCacheFp8) whose `layout` is
/// [`PagedLayout::index_k_fp8`](sparse_attn_abi::batch::PagedLayout::index_k_fp8)'s: `kv_dim 1`, `n_heads 1`, `head_dim 128`,
/// `dtype` [`KvDtype::Fp8E4m3`] (the scales in `scales`, which this op
/// requires) or [`KvDtype::Fp8E4m3Fused`] (the scales inside the pool;
/// `scales` is `None`). [`PagedCacheFp8::key`](crate::paged::PagedCacheFp8::key)
/// reads a token.
pub type Fp8IndexK<'a> = crate::paged::PagedCacheFp8<'a>;

/// Checks the inputs of the op (`q_len` and `qs_len` are the element
/// counts of `q` and `qs`); a description of the first problem otherwise.
pub fn validate(
    q_len: usize,
    qs_len: usize,
    batch: &RaggedBatch,
    cache: &Fp8IndexK,
    layer: usize,
    cfg: &MlaIndexerConfig,
) -> Result<(), String> {
    let n = crate::check_batch(batch)?;
    let rows = batch.num_rows();
    let h = cfg.num_heads;
    if q_len != rows * h * HEAD_DIM {
        return Err(format!(
            "q has {q_len} bytes, expected num_rows {rows} * num_heads {h} * {HEAD_DIM}"
        ));
    }
    if qs_len != rows * h {
        return Err(format!(
            "qs has {qs_len} entries, expected num_rows {rows} * num_heads {h}"
        ));
    }
    if cfg.top_k == 0 {
        return Err("top_k must be >= 1".into());
    }
    if !matches!(cfg.mask, Mask::None | Mask::Causal) {
        return Err(format!("mask {:?}: only None and Causal", cfg.mask));
    }
    let l = &cache.layout;
    match l.dtype {
        KvDtype::Fp8E4m3 | KvDtype::Fp8E4m3Fused => {}
        d => {
            return Err(format!(
                "index-K cache dtype {d:?}: Fp8E4m3 or Fp8E4m3Fused"
            ))
        }
    }
    if l.kv_dim != 1 || l.n_heads != 1 || l.head_dim != HEAD_DIM {
        return Err(format!(
            "index-K cache layout {l:?}: kv_dim 1, n_heads 1, head_dim {HEAD_DIM} expected"
        ));
    }
    crate::paged::check_pool(l, layer, cache.data.len())?;
    match (l.dtype.has_scales(), cache.scales) {
        (true, None) => return Err("Fp8E4m3 cache without its scale tensor".into()),
        (false, Some(_)) => {
            return Err("Fp8E4m3Fused cache holds its scales: no scale tensor expected".into())
        }
        (true, Some(s)) if s.len() != l.scale_elements() => {
            return Err(format!(
                "scales have {} entries, layout needs {}",
                s.len(),
                l.scale_elements()
            ))
        }
        _ => {}
    }
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
        for (c, &page) in table.pages_of(b)[..pages].iter().enumerate() {
            if page as usize >= l.num_pages {
                return Err(format!(
                    "lookup[{b}, {c}] = {page} out of the pool of {} pages",
                    l.num_pages
                ));
            }
        }
    }
    Ok(())
}

/// The scores of one query row over its visible keys.
#[derive(Clone, Debug, PartialEq)]
pub struct RowLogits {
    /// Packed query row `t`.
    pub row: usize,
    /// Visible keys: `Mask::key_range(q_pos, seqlen_k).end` (every mask
    /// here shows a prefix `0 .. num_keys`).
    pub num_keys: usize,
    /// `score[s]`, `num_keys` values (f64; NaN where any input is NaN).
    pub score: Vec<f64>,
    /// `tol[s] = TOL_FACTOR · |k_scale| · Σ_h |qs[t,h]| · Σ_d |q[t,h,d] ·
    /// k[s,d]|`: a bound on an FP8 kernel's rounding error of `score[s]`.
    pub tol: Vec<f64>,
}

/// The 256 e4m3 values, widened to f64.
fn e4m3_table() -> [f64; 256] {
    core::array::from_fn(|b| e4m3_to_f32(b as u8) as f64)
}

/// `(Σ a_d b_d, Σ |a_d| |b_d|)` (exact for e4m3 values: see the module docs).
fn dot_abs(a: &[f64], a_abs: &[f64], b: &[f64], b_abs: &[f64]) -> (f64, f64) {
    let mut s = [0.0f64; 8];
    let mut t = [0.0f64; 8];
    for i in (0..a.len()).step_by(8) {
        for k in 0..8 {
            s[k] += a[i + k] * b[i + k];
            t[k] += a_abs[i + k] * b_abs[i + k];
        }
    }
    (s.iter().sum(), t.iter().sum())
}

/// The scores and tolerances of every row (in row order). Rows and the keys
/// of each row are computed in parallel.
///
/// Panics with a description if [`validate`] rejects the inputs.
pub fn row_logits(
    q: &[u8],
    qs: &[f32],
    batch: &RaggedBatch,
    cache: &Fp8IndexK,
    layer: usize,
    cfg: &MlaIndexerConfig,
) -> Vec<RowLogits> {
    if let Err(e) = validate(q.len(), qs.len(), batch, cache, layer, cfg) {
        panic!("mla_indexer: invalid input: {e}");
    }
    let lut = e4m3_table();
    let h = cfg.num_heads;
    let rows: Vec<RowPos> = batch.rows().collect();
    rows.par_iter()
        .enumerate()
        .map(|(t, &RowPos { seq, q_pos })| {
            let num_keys = cfg.mask.key_range(q_pos, batch.seqlen_k(seq) as usize).end;
            let qv: Vec<f64> = q[t * h * HEAD_DIM..(t + 1) * h * HEAD_DIM]
                .iter()
                .map(|&x| lut[x as usize])
                .collect();
            let qa: Vec<f64> = qv.iter().map(|x| x.abs()).collect();
            let w: Vec<f64> = qs[t * h..(t + 1) * h].iter().map(|&x| x as f64).collect();
            let (score, tol): (Vec<f64>, Vec<f64>) = (0..num_keys)
                .into_par_iter()
                .with_min_len(64)
                .map(|s| {
                    let (bytes, ks) = cache.key(seq, layer, s);
                    let kv: [f64; HEAD_DIM] = core::array::from_fn(|d| lut[bytes[d] as usize]);
                    let ka: [f64; HEAD_DIM] = core::array::from_fn(|d| kv[d].abs());
                    let (mut sum, mut mag) = (0.0f64, 0.0f64);
                    for (hh, &wh) in w.iter().enumerate() {
                        let r = hh * HEAD_DIM..(hh + 1) * HEAD_DIM;
                        let (dot, abs) = dot_abs(&qv[r.clone()], &qa[r], &kv, &ka);
                        // A ReLU that keeps NaN (`f64::max(NaN, 0)` would be 0).
                        let relu = if dot.is_nan() || dot > 0.0 { dot } else { 0.0 };
                        sum += relu * wh;
                        mag += abs * wh.abs();
                    }
                    let ks = ks as f64;
                    (ks * sum, TOL_FACTOR * ks.abs() * mag)
                })
                .unzip();
            RowLogits {
                row: t,
                num_keys,
                score,
                tol,
            }
        })
        .collect()
}

/// The spec's selection of one row: the `min(top_k, num_keys)` best
/// positions in [`rank_cmp`] order (descending, ties to the lower
/// position, NaN after every number), then `-1` up to `top_k`. A partial
/// selection: only the kept positions are sorted.
pub fn select(rl: &RowLogits, top_k: usize) -> Vec<i32> {
    let nk = rl.num_keys.min(rl.score.len());
    let n = top_k.min(nk);
    let sc = &rl.score;
    let cmp = |a: &usize, b: &usize| rank_cmp(sc[*a], *a, sc[*b], *b);
    let mut ids: Vec<usize> = (0..nk).collect();
    if n == 0 {
        ids.clear();
    } else if n < nk {
        ids.select_nth_unstable_by(n - 1, cmp);
        ids.truncate(n);
    }
    ids.sort_unstable_by(cmp);
    let mut out: Vec<i32> = ids.into_iter().map(|s| s as i32).collect();
    out.resize(top_k, -1);
    out
}

/// The op: `out: i32 [num_rows, top_k]` ([`row_logits`], then [`select`]
/// per row). Panics with a description if [`validate`] rejects the inputs.
pub fn mla_indexer(
    q: &[u8],
    qs: &[f32],
    batch: &RaggedBatch,
    cache: &Fp8IndexK,
    layer: usize,
    cfg: &MlaIndexerConfig,
) -> Vec<i32> {
    row_logits(q, qs, batch, cache, layer, cfg)
        .par_iter()
        .flat_map_iter(|rl| select(rl, cfg.top_k))
        .collect()
}

/// Checks one row of a GPU output (`top_k` positions) against the
/// reference's logits of that row, with the tolerance rule:
///
/// - exactly `n = min(top_k, num_keys)` positions first, distinct and in
///   `0 .. num_keys` (so never a masked one), then `-1` padding;
/// - every selected key `a` and unselected visible key `u`:
///   `score[a] >= score[u] - tol[a] - tol[u]`; a NaN key may be selected
///   only when every unselected key is NaN too;
/// - consecutive selected keys `a` then `b`:
///   `score[a] >= score[b] - tol[a] - tol[b]`, and NaN keys come last
///   (their order among themselves is free).
///
/// The error names the row, the output slot, the keys and their scores.
pub fn check_row(gpu_row: &[i32], rl: &RowLogits, top_k: usize) -> Result<(), String> {
    let nk = rl.num_keys;
    let n = top_k.min(nk);
    let (sc, tol) = (&rl.score, &rl.tol);
    let ctx = |slot: usize, what: String| {
        format!(
            "row {} slot {slot}: {what} (num_keys {nk}, top_k {top_k})",
            rl.row
        )
    };
    let key = |s: usize| format!("key {s} (score {:e}, tol {:.2e})", sc[s], tol[s]);
    if gpu_row.len() != top_k {
        return Err(ctx(
            0,
            format!("row has {} entries, top_k is {top_k}", gpu_row.len()),
        ));
    }
    let mut chosen = vec![false; nk];
    for (slot, &id) in gpu_row.iter().enumerate() {
        if slot >= n {
            if id != -1 {
                return Err(ctx(slot, format!("expected padding -1, got {id}")));
            }
            continue;
        }
        if id < 0 || id as usize >= nk {
            return Err(ctx(
                slot,
                format!("position {id} not in [0, {nk}) ({n} positions expected)"),
            ));
        }
        if chosen[id as usize] {
            return Err(ctx(slot, format!("position {id} selected twice")));
        }
        chosen[id as usize] = true;
    }
    // The best unselected key (by score - tol; any NaN-free one at all).
    let mut best: Option<usize> = None;
    for u in (0..nk).filter(|&u| !chosen[u] && !sc[u].is_nan()) {
        if best.is_none_or(|b| sc[u] - tol[u] > sc[b] - tol[b]) {
            best = Some(u);
        }
    }
    for (slot, &a) in gpu_row[..n].iter().enumerate() {
        let a = a as usize;
        match best {
            Some(u) if sc[a].is_nan() => {
                return Err(ctx(
                    slot,
                    format!("NaN key {a} selected while {} is not", key(u)),
                ));
            }
            Some(u) if sc[a] + tol[a] < sc[u] - tol[u] => {
                return Err(ctx(
                    slot,
                    format!("selected {} loses to unselected {}", key(a), key(u)),
                ));
            }
            _ => {}
        }
    }
    for slot in 1..n {
        let (a, b) = (gpu_row[slot - 1] as usize, gpu_row[slot] as usize);
        let ok = match (sc[a].is_nan(), sc[b].is_nan()) {
            (_, true) => true,
            (true, false) => false,
            (false, false) => sc[a] >= sc[b] - tol[a] - tol[b],
        };
        if !ok {
            return Err(ctx(
                slot,
                format!("order: {} written before {}", key(a), key(b)),
            ));
        }
    }
    Ok(())
}

/// Exact comparison of a GPU output `[rows, top_k]` with the expected one
/// (e.g. [`mla_indexer`]'s), order included: the error names the first
/// differing row and slot.
pub fn check_exact(gpu: &[i32], want: &[i32], rows: usize, top_k: usize) -> Result<(), String> {
    for (what, v) in [("output", gpu), ("expected output", want)] {
        if v.len() != rows * top_k {
            return Err(format!(
                "{what} has {} entries, expected rows {rows} * top_k {top_k}",
                v.len()
            ));
        }
    }
    match gpu.iter().zip(want).position(|(g, w)| g != w) {
        None => Ok(()),
        Some(i) => {
            let (r, slot) = (i / top_k, i % top_k);
            let (lo, hi) = (r * top_k, (r + 1) * top_k);
            let show = |v: &[i32]| {
                let a = slot.saturating_sub(3);
                format!("{:?}", &v[lo + a..(lo + slot + 4).min(hi)])
            };
            Err(format!(
                "row {r} slot {slot}: gpu {} != expected {} (gpu slots {}.. {}, expected {})",
                gpu[i],
                want[i],
                slot.saturating_sub(3),
                show(gpu),
                show(want)
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sparse_attn_abi::batch::{PageTable, PagedLayout};
    use sparse_attn_abi::fp8::f32_to_e4m3;

    /// A hand-made FP8 cache: 2 layers (data in layer 1), pages handed to
    /// the sequences in reverse pool order plus one unused page; every
    /// other slot holds NaN codes and a NaN scale.
    struct Pool {
        layout: PagedLayout,
        data: Vec<u8>,
        scales: Vec<f32>,
        lookup: Vec<u32>,
        max_pages: usize,
    }

    impl Pool {
        /// `key(b, s)` gives the 128 values (rounded to e4m3) and the scale
        /// of token `s < seqlen_k[b]`.
        fn new(
            seqlen_k: &[usize],
            page_size: usize,
            fused: bool,
            key: impl Fn(usize, usize) -> (Vec<f32>, f32),
        ) -> Pool {
            let pages: Vec<usize> = seqlen_k.iter().map(|s| s.div_ceil(page_size)).collect();
            let total = pages.iter().sum::<usize>() + 1;
            let max_pages = pages.iter().copied().max().unwrap_or(0).max(1);
            let layout = PagedLayout::index_k_fp8(total, 2, page_size, fused);
            let mut data = vec![0x7fu8; layout.elements()];
            let mut scales = vec![f32::NAN; layout.scale_elements()];
            if fused {
                for p in 0..total {
                    for layer in 0..2 {
                        for slot in 0..page_size {
                            let so = layout.scale_offset(p, 0, layer, slot, 0);
                            data[so..so + 4].copy_from_slice(&f32::NAN.to_le_bytes());
                        }
                    }
                }
            }
            let mut lookup = vec![0u32; seqlen_k.len() * max_pages];
            let mut next = total;
            for (b, &n) in seqlen_k.iter().enumerate() {
                for c in 0..pages[b] {
                    next -= 1;
                    lookup[b * max_pages + c] = next as u32;
                }
                for s in 0..n {
                    let page = lookup[b * max_pages + s / page_size] as usize;
                    let off = layout.offset(page, 0, 1, s % page_size, 0);
                    let (v, scale) = key(b, s);
                    assert_eq!(v.len(), HEAD_DIM);
                    for (i, x) in v.into_iter().enumerate() {
                        data[off + i] = f32_to_e4m3(x);
                    }
                    if fused {
                        let so = layout.scale_offset(page, 0, 1, s % page_size, 0);
                        data[so..so + 4].copy_from_slice(&scale.to_le_bytes());
                    } else {
                        scales[off / HEAD_DIM] = scale;
                    }
                }
            }
            Pool {
                layout,
                data,
                scales,
                lookup,
                max_pages,
            }
        }

        fn cache(&self) -> Fp8IndexK<'_> {
            Fp8IndexK {
                layout: self.layout,
                data: &self.data,
                scales: (!self.layout.dtype.fused_scales()).then_some(&self.scales[..]),
                pages: PageTable::new(&self.lookup, self.max_pages),
            }
        }
    }

    /// A 128-vector with `v` in its first entries, zero after.
    fn vec128(v: &[f32]) -> Vec<f32> {
        let mut out = v.to_vec();
        out.resize(HEAD_DIM, 0.0);
        out
    }

    /// `q` bytes of `[rows, heads, 128]` from the leading values of each head.
    fn q_bytes(heads: &[&[f32]]) -> Vec<u8> {
        heads
            .iter()
            .flat_map(|h| vec128(h).into_iter().map(f32_to_e4m3))
            .collect()
    }

    fn cfg(num_heads: usize, top_k: usize, mask: Mask) -> MlaIndexerConfig {
        MlaIndexerConfig {
            num_heads,
            top_k,
            mask,
        }
    }

    #[test]
    fn relu_negative_weight_and_scale() {
        // One sequence, 4 keys (decode: cache_len 3); 2 heads.
        // k[s] = [s - 1.5, 1], scale 2 for s = 2, else 1.
        let pool = Pool::new(&[4], 64, false, |_, s| {
            (
                vec128(&[s as f32 - 1.5, 1.0]),
                if s == 2 { 2.0 } else { 1.0 },
            )
        });
        // head 0: q = [1, 0] -> dot = s - 1.5 (negative for s < 2: dropped);
        // head 1: q = [0, 1] -> dot = 1, weight -0.5.
        let q = q_bytes(&[&[1.0, 0.0], &[0.0, 1.0]]);
        let qs = [1.0f32, -0.5];
        let batch = RaggedBatch::new(&[0, 1], &[3]);
        let c = cfg(2, 3, Mask::Causal);
        let rl = row_logits(&q, &qs, &batch, &pool.cache(), 1, &c);
        assert_eq!(rl.len(), 1);
        assert_eq!(rl[0].num_keys, 4);
        // s=0: 0 - 0.5; s=1: 0 - 0.5; s=2: 2 * (0.5 - 0.5) = 0; s=3: 1.5 - 0.5.
        assert_eq!(rl[0].score, vec![-0.5, -0.5, 0.0, 1.0]);
        // tol: |ks| * (|1| * |s - 1.5| + 0.5 * 1) / 1024.
        let t = |x: f64| x / 1024.0;
        assert_eq!(rl[0].tol, vec![t(2.0), t(1.0), t(2.0), t(2.0)]);
        let out = mla_indexer(&q, &qs, &batch, &pool.cache(), 1, &c);
        // Ties (keys 0 and 1) go to the lower position.
        assert_eq!(out, vec![3, 2, 0]);
        check_row(&out, &rl[0], 3).unwrap();
        check_exact(&out, &[3, 2, 0], 1, 3).unwrap();
    }

    #[test]
    fn ties_go_to_the_lower_position() {
        let pool = Pool::new(&[6], 64, true, |_, s| {
            (vec128(&[[1.0, 2.0, 1.0, 2.0, 2.0, 0.5][s]]), 1.0)
        });
        let q = q_bytes(&[&[1.0]]);
        let batch = RaggedBatch::new(&[0, 1], &[5]);
        let out = mla_indexer(&q, &[1.0], &batch, &pool.cache(), 1, &cfg(1, 4, Mask::None));
        assert_eq!(out, vec![1, 3, 4, 0]);
    }

    #[test]
    fn causal_and_none_masks_with_padding() {
        // Chunked prefill: cache_len 2, q_len 3 -> rows at q_pos 2, 3, 4 of
        // 5 keys; k[s] = [s + 1].
        let pool = Pool::new(&[5], 64, false, |_, s| (vec128(&[s as f32 + 1.0]), 1.0));
        let q = q_bytes(&[&[1.0], &[1.0], &[1.0]]);
        let qs = [1.0f32; 3];
        let batch = RaggedBatch::new(&[0, 3], &[2]);
        let causal = mla_indexer(&q, &qs, &batch, &pool.cache(), 1, &cfg(1, 6, Mask::Causal));
        assert_eq!(
            causal,
            [
                [2, 1, 0, -1, -1, -1],
                [3, 2, 1, 0, -1, -1],
                [4, 3, 2, 1, 0, -1]
            ]
            .concat()
        );
        let none = mla_indexer(&q, &qs, &batch, &pool.cache(), 1, &cfg(1, 6, Mask::None));
        assert_eq!(none, [4, 3, 2, 1, 0, -1].repeat(3));
        let rl = row_logits(&q, &qs, &batch, &pool.cache(), 1, &cfg(1, 6, Mask::Causal));
        assert_eq!(
            rl.iter().map(|r| r.num_keys).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        for (r, out) in rl.iter().zip(causal.chunks(6)) {
            check_row(out, r, 6).unwrap();
        }
        // A sequence without rows, then one of 1 key; no rows at all.
        let pool2 = Pool::new(&[7, 1], 4, false, |b, _| (vec128(&[b as f32 + 1.0]), 1.0));
        let b2 = RaggedBatch::new(&[0, 0, 1], &[7, 0]);
        let out = mla_indexer(
            &q[..128],
            &[1.0],
            &b2,
            &pool2.cache(),
            1,
            &cfg(1, 2, Mask::Causal),
        );
        assert_eq!(out, vec![0, -1]);
        let b3 = RaggedBatch::new(&[0, 0], &[7]);
        assert!(mla_indexer(&[], &[], &b3, &pool2.cache(), 1, &cfg(1, 2, Mask::Causal)).is_empty());
    }

    #[test]
    fn fused_and_separate_layouts_agree() {
        let key = |b: usize, s: usize| {
            let v: Vec<f32> = (0..HEAD_DIM)
                .map(|d| ((b * 7 + s * 13 + d * 5) % 9) as f32 * 0.25 - 1.0)
                .collect();
            (v, [0.5, 1.0, 3.0][(s + b) % 3])
        };
        let seqlen = [130usize, 7, 64];
        let q: Vec<u8> = (0..3 * 2 * HEAD_DIM)
            .map(|i| f32_to_e4m3(((i * 11) % 7) as f32 * 0.5 - 1.5))
            .collect();
        let qs = [1.0f32, -0.25, 2.0, 0.5, -1.0, 1.5];
        // Decode rows of the three sequences.
        let batch = RaggedBatch::new(&[0, 1, 2, 3], &[129, 6, 63]);
        let c = cfg(2, 16, Mask::Causal);
        for ps in [16, 64, 128] {
            let sep = Pool::new(&seqlen, ps, false, key);
            let fus = Pool::new(&seqlen, ps, true, key);
            let a = row_logits(&q, &qs, &batch, &sep.cache(), 1, &c);
            let b = row_logits(&q, &qs, &batch, &fus.cache(), 1, &c);
            assert_eq!(a, b, "page size {ps}");
            assert!(a.iter().all(|r| r.score.iter().all(|x| !x.is_nan())));
            assert_eq!(a[0].num_keys, 130);
            for s in [0, 63, 64, 129] {
                assert_eq!(sep.cache().key(0, 1, s), fus.cache().key(0, 1, s));
            }
        }
    }

    #[test]
    fn nan_ranks_last() {
        // k[1] has a NaN element, k[3] a NaN scale, k[2] = -inf-free negative.
        let pool = Pool::new(&[5], 64, false, |_, s| match s {
            1 => (vec128(&[f32::NAN]), 1.0),
            3 => (vec128(&[1.0]), f32::NAN),
            _ => (vec128(&[[1.0, 0.0, -1.0, 0.0, 2.0][s]]), 1.0),
        });
        let q = q_bytes(&[&[1.0]]);
        let batch = RaggedBatch::new(&[0, 1], &[4]);
        let rl = row_logits(
            &q,
            &[-1.0],
            &batch,
            &pool.cache(),
            1,
            &cfg(1, 5, Mask::Causal),
        );
        let sc = &rl[0].score;
        // A negative weight: the ReLU'd dots become -1, -, 0, -, -2.
        assert_eq!((sc[0], sc[2], sc[4]), (-1.0, 0.0, -2.0));
        assert!(sc[1].is_nan() && sc[3].is_nan());
        assert_eq!(select(&rl[0], 5), vec![2, 0, 4, 1, 3]);
        assert_eq!(select(&rl[0], 3), vec![2, 0, 4]);
        check_row(&[2, 0, 4, 3, 1], &rl[0], 5).unwrap();
        assert!(check_row(&[2, 0, 1, 4, 3], &rl[0], 5).is_err());
        assert!(check_row(&[2, 0, 1], &rl[0], 3).is_err());
        // A NaN query weight makes every score NaN (0 * NaN included).
        let rl = row_logits(
            &q,
            &[f32::NAN],
            &batch,
            &pool.cache(),
            1,
            &cfg(1, 5, Mask::Causal),
        );
        assert!(rl[0].score.iter().all(|x| x.is_nan()));
        assert_eq!(select(&rl[0], 2), vec![0, 1]);
        check_row(&[4, 1], &rl[0], 2).unwrap();
    }

    fn sample() -> RowLogits {
        RowLogits {
            row: 7,
            num_keys: 6,
            score: vec![1.0, 5.0, 3.0, 5.0, 2.9999, -1.0],
            tol: vec![0.001; 6],
        }
    }

    #[test]
    fn checker_accepts_correct_and_rejects_wrong() {
        let rl = sample();
        let ok = select(&rl, 4);
        assert_eq!(ok, vec![1, 3, 2, 4]);
        check_row(&ok, &rl, 4).unwrap();
        // Within tolerance: 2 and 4 either way; 3 before 1 (a tie) too.
        check_row(&[1, 3, 4, 2], &rl, 4).unwrap();
        check_row(&[3, 1, 2, 4], &rl, 4).unwrap();
        check_row(&[1, 3, 4], &rl, 3).unwrap();
        let bad = |v: &[i32], k: usize| {
            let e = check_row(v, &rl, k);
            assert!(e.is_err(), "{v:?} accepted");
            e.unwrap_err()
        };
        let e = bad(&[1, 3, 2, 0], 4);
        assert!(
            e.contains("row 7 slot 3") && e.contains("loses to unselected key 4"),
            "{e}"
        );
        let e = bad(&[2, 3, 1, 4], 4);
        assert!(e.contains("order"), "{e}");
        bad(&[1, 3, 2, 2], 4); // duplicate
        bad(&[1, 3, 2, 6], 4); // masked / past the keys
        bad(&[1, 3, 2, -1], 4); // missing entry
        bad(&[1, 3, 2], 4); // wrong length
                            // top_k above the context: all 6, then -1 padding.
        let all = select(&rl, 8);
        assert_eq!(all, vec![1, 3, 2, 4, 0, 5, -1, -1]);
        check_row(&all, &rl, 8).unwrap();
        bad(&[1, 3, 2, 4, 0, 5, -1, 0], 8);
        bad(&[1, 3, 2, 4, 0, 5, 7, -1], 8);
        bad(&[1, 3, 2, 4, 0, -1, -1, -1], 8);
        // Exact comparison names the row and slot.
        check_exact(&ok, &ok, 1, 4).unwrap();
        let e =
            check_exact(&[1, 3, 2, 4, 1, 3, 4, 2], &[1, 3, 2, 4, 1, 3, 2, 4], 2, 4).unwrap_err();
        assert!(e.starts_with("row 1 slot 2"), "{e}");
        assert!(check_exact(&ok, &ok[..3], 1, 4).is_err());
    }

    #[test]
    fn validate_rejects_bad_input() {
        let pool = Pool::new(&[100], 64, false, |_, _| (vec128(&[1.0]), 1.0));
        let fused = Pool::new(&[100], 64, true, |_, _| (vec128(&[1.0]), 1.0));
        let c = cfg(2, 4, Mask::Causal);
        let batch = RaggedBatch::new(&[0, 2], &[98]);
        let (q, qs) = (2 * 2 * 128, 4);
        assert_eq!(validate(q, qs, &batch, &pool.cache(), 1, &c), Ok(()));
        assert_eq!(validate(q, qs, &batch, &fused.cache(), 1, &c), Ok(()));
        assert!(validate(q - 1, qs, &batch, &pool.cache(), 1, &c).is_err());
        assert!(validate(q, qs + 1, &batch, &pool.cache(), 1, &c).is_err());
        assert!(validate(q, qs, &batch, &pool.cache(), 2, &c).is_err());
        assert!(validate(
            q,
            qs,
            &RaggedBatch::new(&[1, 2], &[98]),
            &pool.cache(),
            1,
            &c
        )
        .is_err());
        assert!(validate(
            q,
            qs,
            &RaggedBatch::new(&[0, 2], &[200]),
            &pool.cache(),
            1,
            &c
        )
        .is_err());
        assert!(validate(q, qs, &batch, &pool.cache(), 1, &cfg(2, 0, Mask::Causal)).is_err());
        let sw = cfg(2, 4, Mask::SlidingWindow { window: 3 });
        assert!(validate(q, qs, &batch, &pool.cache(), 1, &sw).is_err());
        let no_scales = Fp8IndexK {
            scales: None,
            ..pool.cache()
        };
        assert!(validate(q, qs, &batch, &no_scales, 1, &c).is_err());
        let extra = Fp8IndexK {
            scales: Some(&pool.scales),
            ..fused.cache()
        };
        assert!(validate(q, qs, &batch, &extra, 1, &c).is_err());
        let short = Fp8IndexK {
            scales: Some(&pool.scales[1..]),
            ..pool.cache()
        };
        assert!(validate(q, qs, &batch, &short, 1, &c).is_err());
        let bf = Fp8IndexK {
            layout: PagedLayout {
                dtype: KvDtype::Bf16,
                ..pool.layout
            },
            ..pool.cache()
        };
        assert!(validate(q, qs, &batch, &bf, 1, &c).is_err());
        let bad_lookup = vec![99u32; pool.lookup.len()];
        let bad = Fp8IndexK {
            pages: PageTable::new(&bad_lookup, pool.max_pages),
            ..pool.cache()
        };
        assert!(validate(q, qs, &batch, &bad, 1, &c).is_err());
        let trunc = Fp8IndexK {
            data: &pool.data[1..],
            ..pool.cache()
        };
        assert!(validate(q, qs, &batch, &trunc, 1, &c).is_err());
    }
}

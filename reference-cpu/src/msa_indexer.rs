//! MSA indexer: top-k KV blocks per (index head, query token)
//! (`spec/msa-indexer.md`, upstream `mo.msa.indexer.ragged.paged`).
//!
//! Inputs:
//! - `q: bf16 [num_rows, num_index_heads, head_dim]`, rows packed by sequence;
//! - the ragged batch ([`RaggedBatch`]): `offsets: u32 [batch + 1]`
//!   (`input_row_offsets`), `offsets[0] = 0`, non-decreasing,
//!   `offsets[batch] = num_rows`, and `cache_lengths: u32 [batch]`: index-K
//!   tokens cached *before* this step;
//! - the index-K paged cache (`kv = 0`, `head = 0` of a
//!   `[num_pages, 1, num_layers, 128, 1, head_dim]` pool) and `layer`.
//!
//! Output: `out_idxs: i32 [num_index_heads, num_rows, topk]`.
//!
//! For sequence `b`, local row `i` (packed row `t = offsets[b] + i`) and head
//! `h`: `q_pos = cache_len[b] + i`, `num_keys = q_pos + 1`,
//! `num_blocks = ceil(num_keys / 128)` and
//! `raw[j] = max_{s in [128 j, min(128 j + 128, num_keys))} scale * dot(q[t, h, :], K[b, s, :])`.
//! Forced blocks get `1e30` (`j < init_blocks`), then `1e29`
//! (`j >= num_blocks - local_blocks`, local overrides init); the
//! `min(topk, num_blocks)` best blocks are written in descending score order,
//! ties by lower id, NaN below every number, and `-1` pads to `topk`.
//!
//! The reference computes every dot product in `f64` from the exactly widened
//! bf16 values (each product is exact in `f64`), so it is at least as accurate
//! as any f32 kernel; [`check_selection`] allows for the kernel's f32
//! rounding with a per-block tolerance, [`check_exact`] compares exactly (for
//! integer-valued inputs, where f32 is exact).
//!
//! **(our choice)** NaN inside a block: the block maximum ignores NaN dot
//! products (`f64::max` semantics, like CUDA's `fmaxf`); a block's raw score is
//! NaN only when every visible key of the block gives NaN. A NaN raw score
//! then ranks below every number, `-inf` included.

use crate::paged::PagedCache;
use half::bf16;
use rayon::prelude::*;
use sparse_attn_abi::batch::{RaggedBatch, RowPos};
use std::cmp::Ordering;

/// The op's parameters: the host API's configuration. The reference accepts
/// any `num_index_heads`, `head_dim` (128; 64 also works) and `scale`;
/// `topk` must be at least 1 and `block_size` must be [`BLOCK`]. Blocks
/// `j < init_blocks` are forced with score [`FORCED_INIT`], blocks
/// `j >= num_blocks - local_blocks` with [`FORCED_LOCAL`].
pub use sparse_attn_abi::config::MsaIndexerConfig;

/// Tokens per block (= page size of the index-K cache).
pub const BLOCK: usize = 128;
/// Score of an init (sink) block.
pub const FORCED_INIT: f64 = 1e30;
/// Score of a local block (overrides [`FORCED_INIT`]).
pub const FORCED_LOCAL: f64 = 1e29;
/// Relative tolerance factor of [`RowScores::tol`]: `2^-16`.
pub const TOL_FACTOR: f64 = 1.0 / 65536.0;

/// Block scores of one (head, row), without the forced overrides.
#[derive(Clone, Debug, PartialEq)]
pub struct RowScores {
    /// Index head `h`.
    pub head: usize,
    /// Packed query row `t`.
    pub row: usize,
    /// `ceil((q_pos + 1) / 128)`.
    pub num_blocks: usize,
    /// `raw[j]`, `num_blocks` values: `scale * dot` (f64, exact products),
    /// maximum over the block's causally visible keys (NaN dots ignored).
    pub raw: Vec<f64>,
    /// `tol[j] = 2^-16 * |scale| * max over the block's visible keys of
    /// sum_d |q_d k_d|`: a bound on the f32 rounding error of `raw[j]`.
    pub tol: Vec<f64>,
}

/// True when block `j` of `num_blocks` is forced (init or local).
pub fn is_forced(j: usize, num_blocks: usize, init_blocks: usize, local_blocks: usize) -> bool {
    forced_score(j, num_blocks, init_blocks, local_blocks).is_some()
}

/// Forced score of block `j`: [`FORCED_LOCAL`] for `j >= num_blocks - local_blocks`,
/// else [`FORCED_INIT`] for `j < init_blocks`, else `None`.
pub fn forced_score(
    j: usize,
    num_blocks: usize,
    init_blocks: usize,
    local_blocks: usize,
) -> Option<f64> {
    if j >= num_blocks.saturating_sub(local_blocks) {
        Some(FORCED_LOCAL)
    } else if j < init_blocks {
        Some(FORCED_INIT)
    } else {
        None
    }
}

/// Score used for selection: the forced score if any, else `raw[j]`.
pub fn effective_scores(raw: &[f64], init_blocks: usize, local_blocks: usize) -> Vec<f64> {
    let nb = raw.len();
    (0..nb)
        .map(|j| forced_score(j, nb, init_blocks, local_blocks).unwrap_or(raw[j]))
        .collect()
}

/// Selection order: `Less` when block `(sa, ja)` goes before `(sb, jb)`.
/// Descending score, NaN after every number, ties (and NaN pairs) by lower id.
pub fn rank_cmp(sa: f64, ja: usize, sb: f64, jb: usize) -> Ordering {
    match (sa.is_nan(), sb.is_nan()) {
        (true, true) => ja.cmp(&jb),
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => sb
            .partial_cmp(&sa)
            .unwrap_or(Ordering::Equal)
            .then(ja.cmp(&jb)),
    }
}

/// The spec's selection for one (head, row) given its raw block scores
/// (`raw.len() = num_blocks`): forced overrides applied here, then the
/// `n = min(topk, num_blocks)` best ids by [`rank_cmp`], then `-1` up to
/// `topk`. Returns `topk` values.
pub fn select_blocks(
    raw: &[f64],
    init_blocks: usize,
    local_blocks: usize,
    topk: usize,
) -> Vec<i32> {
    let eff = effective_scores(raw, init_blocks, local_blocks);
    let nb = eff.len();
    let n = topk.min(nb);
    let mut ids: Vec<usize> = (0..nb).collect();
    let cmp = |a: &usize, b: &usize| rank_cmp(eff[*a], *a, eff[*b], *b);
    if n == 0 {
        ids.clear();
    } else if n < nb {
        ids.select_nth_unstable_by(n - 1, cmp);
        ids.truncate(n);
    }
    ids.sort_unstable_by(cmp);
    let mut out: Vec<i32> = ids.into_iter().map(|j| j as i32).collect();
    out.resize(topk, -1);
    out
}

/// Checks the inputs of the op; returns `num_rows` or a description of the
/// first problem (the host API's bad-input cases).
pub fn validate(
    q: &[bf16],
    batch: &RaggedBatch,
    cache: &PagedCache,
    layer: usize,
    p: &MsaIndexerConfig,
) -> Result<usize, String> {
    let n = crate::check_batch(batch)?;
    let rows = batch.num_rows();
    let (h, d) = (p.num_index_heads, p.head_dim);
    if q.len() != rows * h * d {
        return Err(format!(
            "q has {} elements, expected num_rows {rows} * heads {h} * head_dim {d}",
            q.len()
        ));
    }
    if p.topk == 0 {
        return Err("topk must be >= 1".into());
    }
    if p.block_size != BLOCK {
        return Err(format!("block_size {} != {BLOCK}", p.block_size));
    }
    let l = &cache.layout;
    if l.page_size != BLOCK {
        return Err(format!("page_size {} != block size {BLOCK}", l.page_size));
    }
    if l.head_dim != d {
        return Err(format!("cache head_dim {} != q head_dim {d}", l.head_dim));
    }
    if l.kv_dim < 1 || l.n_heads < 1 {
        return Err(format!("index-K cache layout {l:?} has no K head"));
    }
    if layer >= l.num_layers {
        return Err(format!("layer {layer} out of {} layers", l.num_layers));
    }
    if cache.data.len() != l.elements() {
        return Err(format!(
            "cache data has {} elements, layout needs {}",
            cache.data.len(),
            l.elements()
        ));
    }
    let table = &cache.pages;
    crate::paged::check_lookup_len(table, n)?;
    for b in 0..n {
        let seqlen_k = batch.seqlen_k(b);
        let pages = batch.pages(b, BLOCK);
        if pages > table.max_pages {
            return Err(format!(
                "sequence {b} has {seqlen_k} keys ({pages} pages), lookup rows hold {}",
                table.max_pages
            ));
        }
        for c in 0..pages {
            let page = table.pages_of(b)[c];
            if page as usize >= l.num_pages {
                return Err(format!(
                    "lookup[{b}, {c}] = {page} out of the pool of {} pages",
                    l.num_pages
                ));
            }
        }
    }
    Ok(rows)
}

/// `(sum_d a_d b_d, sum_d |a_d b_d|)` in f64 (four partial sums).
fn dot_abs(a: &[f64], b: &[f64]) -> (f64, f64) {
    let mut s = [0.0f64; 4];
    let mut t = [0.0f64; 4];
    let ca = a.chunks_exact(4);
    let cb = b.chunks_exact(4);
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..4 {
            let pr = x[k] * y[k];
            s[k] += pr;
            t[k] += pr.abs();
        }
    }
    for (x, y) in ra.iter().zip(rb) {
        let pr = x * y;
        s[0] += pr;
        t[0] += pr.abs();
    }
    ((s[0] + s[1]) + (s[2] + s[3]), (t[0] + t[1]) + (t[2] + t[3]))
}

/// Raw block scores and tolerances of every (head, row), head-major: entry
/// `h * num_rows + row`. Parallel over rows.
///
/// Panics with a description if [`validate`] rejects the inputs (the
/// `topk = 0` rule aside: scores do not depend on `topk`).
pub fn block_scores(
    q: &[bf16],
    batch: &RaggedBatch,
    cache: &PagedCache,
    layer: usize,
    p: &MsaIndexerConfig,
) -> Vec<RowScores> {
    let pv = MsaIndexerConfig {
        topk: p.topk.max(1),
        ..*p
    };
    let rows = match validate(q, batch, cache, layer, &pv) {
        Ok(r) => r,
        Err(e) => panic!("msa_indexer: invalid input: {e}"),
    };
    let (nh, d) = (p.num_index_heads, p.head_dim);
    let scale = p.scale as f64;
    let pos: Vec<RowPos> = batch.rows().collect();
    let per_row: Vec<Vec<RowScores>> = (0..rows)
        .into_par_iter()
        .map(|row| {
            let RowPos { seq: b, q_pos } = pos[row];
            let num_keys = q_pos + 1;
            let nb = num_keys.div_ceil(BLOCK);
            let qf = crate::row_f64(q, row, nh * d);
            let mut raw = vec![vec![f64::NAN; nb]; nh];
            let mut abs = vec![vec![f64::NAN; nb]; nh];
            let mut kf = vec![0.0f64; d];
            for s in 0..num_keys {
                let j = s / BLOCK;
                for (dst, k) in kf.iter_mut().zip(cache.row(b, 0, layer, 0, s)) {
                    *dst = k.to_f64();
                }
                for h in 0..nh {
                    let (dot, a) = dot_abs(&qf[h * d..(h + 1) * d], &kf);
                    raw[h][j] = raw[h][j].max(scale * dot);
                    abs[h][j] = abs[h][j].max(a);
                }
            }
            raw.into_iter()
                .zip(abs)
                .enumerate()
                .map(|(head, (raw, abs))| RowScores {
                    head,
                    row,
                    num_blocks: nb,
                    raw,
                    tol: abs
                        .into_iter()
                        .map(|a| TOL_FACTOR * scale.abs() * a)
                        .collect(),
                })
                .collect()
        })
        .collect();
    let mut by_head: Vec<Vec<RowScores>> = (0..nh).map(|_| Vec::with_capacity(rows)).collect();
    for heads in per_row {
        for rs in heads {
            by_head[rs.head].push(rs);
        }
    }
    by_head.into_iter().flatten().collect()
}

/// Selection of every (head, row) from precomputed scores:
/// `i32 [num_index_heads, num_rows, topk]` (same order as `scores`).
pub fn select_all(scores: &[RowScores], p: &MsaIndexerConfig) -> Vec<i32> {
    scores
        .par_iter()
        .flat_map_iter(|rs| select_blocks(&rs.raw, p.init_blocks, p.local_blocks, p.topk))
        .collect()
}

/// The full op: `out_idxs: i32 [num_index_heads, num_rows, topk]`.
/// Parallel over rows (scores) and (head, row) (selection).
pub fn msa_indexer(
    q: &[bf16],
    batch: &RaggedBatch,
    cache: &PagedCache,
    layer: usize,
    p: &MsaIndexerConfig,
) -> Vec<i32> {
    select_all(&block_scores(q, batch, cache, layer, p), p)
}

fn fmt_blocks(rs: &RowScores, ids: &[i32], p: &MsaIndexerConfig) -> String {
    ids.iter()
        .filter(|&&j| j >= 0 && (j as usize) < rs.num_blocks)
        .map(|&j| {
            let j = j as usize;
            match forced_score(j, rs.num_blocks, p.init_blocks, p.local_blocks) {
                Some(f) => format!("{j}:forced({f:e})"),
                None => format!("{j}:{:e}(tol {:.2e})", rs.raw[j], rs.tol[j]),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Does block `a` legitimately rank before block `u` (given the f32 rounding
/// tolerance)? Scores are effective scores; `ta`/`tu` are 0 for forced blocks.
fn may_precede(ea: f64, ja: usize, ta: f64, eu: f64, ju: usize, tu: f64) -> bool {
    if eu.is_nan() {
        return true;
    }
    if ea.is_nan() {
        return false;
    }
    let t = ta.max(tu);
    if t > 0.0 {
        ea >= eu - t
    } else {
        rank_cmp(ea, ja, eu, ju) == Ordering::Less
    }
}

/// Checks one (head, row) of a GPU output (`topk` ids) against its scores.
pub fn check_row(gpu_row: &[i32], rs: &RowScores, p: &MsaIndexerConfig) -> Result<(), String> {
    let nb = rs.num_blocks;
    let n = p.topk.min(nb);
    let ctx = |slot: usize, what: String| {
        let expected = select_blocks(&rs.raw, p.init_blocks, p.local_blocks, p.topk);
        format!(
            "head {} row {} slot {slot}: {what}\n  num_blocks {nb}, {p:?}\n  gpu ids {gpu_row:?}\n  ref ids {expected:?}\n  gpu scores [{}]\n  ref scores [{}]",
            rs.head,
            rs.row,
            fmt_blocks(rs, gpu_row, p),
            fmt_blocks(rs, &expected, p)
        )
    };
    if gpu_row.len() != p.topk {
        return Err(ctx(
            0,
            format!("row has {} ids, topk is {}", gpu_row.len(), p.topk),
        ));
    }
    // Padding and id validity.
    let mut chosen = vec![false; nb];
    for (slot, &id) in gpu_row.iter().enumerate() {
        if slot >= n {
            if id != -1 {
                return Err(ctx(slot, format!("expected padding -1, got {id}")));
            }
            continue;
        }
        if id < 0 || id as usize >= nb {
            return Err(ctx(slot, format!("id {id} not in [0, {nb})")));
        }
        if chosen[id as usize] {
            return Err(ctx(slot, format!("id {id} selected twice")));
        }
        chosen[id as usize] = true;
    }
    let forced = |j: usize| forced_score(j, nb, p.init_blocks, p.local_blocks);
    // Forced blocks: exactly the ones the reference selects.
    let expected = select_blocks(&rs.raw, p.init_blocks, p.local_blocks, p.topk);
    let mut ref_forced = vec![false; nb];
    for &j in expected.iter().filter(|&&j| j >= 0) {
        if forced(j as usize).is_some() {
            ref_forced[j as usize] = true;
        }
    }
    for j in 0..nb {
        let gpu_forced = chosen[j] && forced(j).is_some();
        if gpu_forced != ref_forced[j] {
            let what = if gpu_forced {
                format!("forced block {j} selected, the reference does not select it")
            } else {
                format!("forced block {j} missing")
            };
            return Err(ctx(0, what));
        }
    }
    // Every selected non-forced block beats every unselected non-forced one.
    for (slot, &a) in gpu_row[..n].iter().enumerate() {
        let a = a as usize;
        if forced(a).is_some() {
            continue;
        }
        for u in (0..nb).filter(|&u| !chosen[u] && forced(u).is_none()) {
            if !may_precede(rs.raw[a], a, rs.tol[a], rs.raw[u], u, rs.tol[u]) {
                return Err(ctx(
                    slot,
                    format!(
                        "selected block {a} (score {:e}, tol {:.2e}) loses to unselected block {u} (score {:e}, tol {:.2e})",
                        rs.raw[a], rs.tol[a], rs.raw[u], rs.tol[u]
                    ),
                ));
            }
        }
    }
    // Descending order (within tolerance; exact among forced blocks).
    let eff_tol = |j: usize| match forced(j) {
        Some(f) => (f, 0.0),
        None => (rs.raw[j], rs.tol[j]),
    };
    for slot in 1..n {
        let (a, b) = (gpu_row[slot - 1] as usize, gpu_row[slot] as usize);
        let ((ea, ta), (eb, tb)) = (eff_tol(a), eff_tol(b));
        if !may_precede(ea, a, ta, eb, b, tb) {
            return Err(ctx(
                slot,
                format!("order: block {a} (score {ea:e}) written before block {b} (score {eb:e})"),
            ));
        }
    }
    Ok(())
}

fn check_shape(gpu: &[i32], scores: &[RowScores], p: &MsaIndexerConfig) -> Result<(), String> {
    if gpu.len() != scores.len() * p.topk {
        return Err(format!(
            "output has {} ids, expected {} (head, row) pairs * topk {}",
            gpu.len(),
            scores.len(),
            p.topk
        ));
    }
    Ok(())
}

/// Checks a GPU `out_idxs [H, num_rows, topk]` against the reference scores
/// (from [`block_scores`], same order) with the spec's tolerance rule; the
/// error describes the first mismatching (head, row) in output order.
///
/// Per (head, row): exactly `min(topk, num_blocks)` valid ids, distinct, in
/// `[0, num_blocks)`, followed by `-1` padding; the selected forced blocks
/// (init ∪ local) are exactly those the reference selects; every selected
/// non-forced block's raw score is `>=` every unselected non-forced block's
/// raw score minus the larger tolerance of the two (a NaN never beats a
/// number; with zero tolerance ties go to the lower id); and the ids are in
/// descending order of score under the same rule (forced blocks exactly).
pub fn check_selection(
    gpu: &[i32],
    reference_scores: &[RowScores],
    p: &MsaIndexerConfig,
) -> Result<(), String> {
    first_bad_row(gpu, reference_scores, p, |rs, g| check_row(g, rs, p).err())
}

/// The shape check, then `bad(row scores, gpu ids)` on every (head, row) in
/// parallel: the first error in output order, if any.
fn first_bad_row(
    gpu: &[i32],
    reference_scores: &[RowScores],
    p: &MsaIndexerConfig,
    bad: impl Fn(&RowScores, &[i32]) -> Option<String> + Sync,
) -> Result<(), String> {
    check_shape(gpu, reference_scores, p)?;
    if p.topk == 0 {
        return Ok(());
    }
    match reference_scores
        .par_iter()
        .zip(gpu.par_chunks(p.topk))
        .find_map_first(|(rs, g)| bad(rs, g))
    {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Exact comparison (for integer-valued inputs, where f32 is exact): the
/// GPU output must equal the reference selection, order included.
pub fn check_exact(
    gpu: &[i32],
    reference_scores: &[RowScores],
    p: &MsaIndexerConfig,
) -> Result<(), String> {
    first_bad_row(gpu, reference_scores, p, |rs, g| {
        let expected = select_blocks(&rs.raw, p.init_blocks, p.local_blocks, p.topk);
        let slot = expected.iter().zip(g).position(|(e, g)| e != g)?;
        Some(format!(
            "head {} row {} slot {slot}: gpu id {} != reference id {}\n  num_blocks {}, {p:?}\n  gpu ids {g:?}\n  ref ids {expected:?}\n  gpu scores [{}]\n  ref scores [{}]",
            rs.head,
            rs.row,
            g[slot],
            expected[slot],
            rs.num_blocks,
            fmt_blocks(rs, g, p),
            fmt_blocks(rs, &expected, p)
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paged::testing::{bf, Pool};

    fn params(h: usize, d: usize, topk: usize, init: usize, local: usize) -> MsaIndexerConfig {
        MsaIndexerConfig {
            num_index_heads: h,
            head_dim: d,
            block_size: BLOCK,
            topk,
            init_blocks: init,
            local_blocks: local,
            scale: 0.5,
        }
    }

    #[test]
    fn one_partial_block() {
        // cache_len 3, q_len 2: rows at q_pos 3 and 4; keys K[s] = [s, 1].
        let pool = Pool::new(&[5], 1, 1, 2, bf16::from_f32(-3.0e4), |_, _, _, s| {
            vec![s as f32, 1.0]
        });
        // q [2 rows, 2 heads, 2]
        let q = bf(&[1.0, 0.0, -1.0, 2.0, 1.0, 0.0, -1.0, 2.0]);
        let p = params(2, 2, 2, 0, 0);
        let sc = block_scores(&q, &RaggedBatch::new(&[0, 2], &[3]), &pool.cache(), 1, &p);
        assert_eq!(sc.len(), 4);
        let t = |x: f64| x * 0.5 / 65536.0;
        // head 0 row 0: max_{s<=3} s = 3 (key 4 is not visible), head 0 row 1: 4.
        assert_eq!((sc[0].head, sc[0].row, sc[0].num_blocks), (0, 0, 1));
        assert_eq!(sc[0].raw, vec![1.5]);
        assert_eq!(sc[0].tol, vec![t(3.0)]);
        assert_eq!(sc[1].raw, vec![2.0]);
        // head 1: dots 2 - s, best at s = 0; abs sums s + 2, max at the last key.
        assert_eq!((sc[2].head, sc[2].row), (1, 0));
        assert_eq!(sc[2].raw, vec![1.0]);
        assert_eq!(sc[2].tol, vec![t(5.0)]);
        assert_eq!(sc[3].tol, vec![t(6.0)]);
        let out = msa_indexer(&q, &RaggedBatch::new(&[0, 2], &[3]), &pool.cache(), 1, &p);
        assert_eq!(out, vec![0, -1, 0, -1, 0, -1, 0, -1]);
        check_selection(&out, &sc, &p).unwrap();
        check_exact(&out, &sc, &p).unwrap();
    }

    #[test]
    fn block_boundaries_and_empty_sequences() {
        // Sequences 0 and 2 have no new rows; sequence 1 has rows at q_pos 130, 131.
        let seqlen = [300, 132, 7];
        let pool = Pool::new(
            &seqlen,
            1,
            1,
            1,
            bf16::from_f32(-3.0e4),
            |b, _, _, s| match (b, s) {
                (1, 129) => vec![3.0],
                (1, 131) => vec![100.0],
                (1, 127) => vec![2.0],
                _ => vec![1.0],
            },
        );
        let q = bf(&[1.0, 1.0]);
        let mut p = params(1, 1, 3, 0, 0);
        p.scale = 1.0;
        let offsets = [0, 0, 2, 2];
        let lens = [300, 130, 7];
        let sc = block_scores(&q, &RaggedBatch::new(&offsets, &lens), &pool.cache(), 1, &p);
        assert_eq!(sc.len(), 2);
        assert_eq!(sc[0].raw, vec![2.0, 3.0]);
        assert_eq!(sc[1].raw, vec![2.0, 100.0]);
        let out = msa_indexer(&q, &RaggedBatch::new(&offsets, &lens), &pool.cache(), 1, &p);
        assert_eq!(out, vec![1, 0, -1, 1, 0, -1]);
        // No rows at all.
        let none = msa_indexer(&[], &RaggedBatch::new(&[0, 0], &[5]), &pool.cache(), 0, &p);
        assert!(none.is_empty());
    }

    #[test]
    fn selection_rules() {
        let raw = [1.0, 5.0, 3.0, 5.0, 2.0];
        // Descending, ties by lower id.
        assert_eq!(select_blocks(&raw, 0, 0, 3), vec![1, 3, 2]);
        assert_eq!(select_blocks(&raw, 0, 0, 1), vec![1]);
        // topk > num_blocks: padding.
        assert_eq!(
            select_blocks(&raw, 0, 0, 8),
            vec![1, 3, 2, 4, 0, -1, -1, -1]
        );
        // init + local > topk: init (1e30) first, then local (1e29).
        let r6 = [9.0, 8.0, 7.0, 6.0, 5.0, 40.0];
        assert_eq!(select_blocks(&r6, 2, 2, 3), vec![0, 1, 4]);
        assert_eq!(select_blocks(&r6, 2, 2, 5), vec![0, 1, 4, 5, 2]);
        assert_eq!(select_blocks(&r6, 0, 1, 3), vec![5, 0, 1]);
        assert_eq!(select_blocks(&r6, 1, 0, 3), vec![0, 5, 1]);
        // Local overrides init.
        assert_eq!(
            effective_scores(&[0.0; 3], 3, 1),
            vec![FORCED_INIT, FORCED_INIT, FORCED_LOCAL]
        );
        // Forced blocks beyond num_blocks.
        assert_eq!(select_blocks(&[3.0, 4.0], 5, 0, 4), vec![0, 1, -1, -1]);
        assert_eq!(select_blocks(&[3.0, 4.0], 0, 7, 1), vec![0]);
        assert_eq!(select_blocks(&[3.0, 4.0, 5.0], 9, 9, 2), vec![0, 1]);
        // NaN ranks below every number, -inf included; NaN ties by id.
        let rn = [f64::NAN, f64::NEG_INFINITY, f64::NAN, 1.0];
        assert_eq!(select_blocks(&rn, 0, 0, 4), vec![3, 1, 0, 2]);
        assert_eq!(select_blocks(&rn, 0, 0, 2), vec![3, 1]);
        assert_eq!(select_blocks(&rn, 0, 0, 3), vec![3, 1, 0]);
        // Degenerate sizes.
        assert!(select_blocks(&raw, 0, 0, 0).is_empty());
        assert_eq!(select_blocks(&[], 1, 1, 2), vec![-1, -1]);
    }

    #[test]
    fn nan_keys_are_ignored_by_the_block_max() {
        let pool = Pool::new(
            &[200],
            1,
            1,
            1,
            bf16::from_f32(-3.0e4),
            |_, _, _, s| match s {
                3 => vec![f32::NAN],
                s if s >= 128 => vec![f32::NAN],
                _ => vec![1.0],
            },
        );
        let q = bf(&[2.0]);
        let p = params(1, 1, 2, 0, 0);
        let sc = block_scores(&q, &RaggedBatch::new(&[0, 1], &[199]), &pool.cache(), 1, &p);
        assert_eq!(sc[0].raw[0], 1.0);
        assert!(sc[0].raw[1].is_nan());
        let out = msa_indexer(&q, &RaggedBatch::new(&[0, 1], &[199]), &pool.cache(), 1, &p);
        assert_eq!(out, vec![0, 1]);
    }

    fn sample() -> (RowScores, MsaIndexerConfig) {
        // 8 blocks; init 1, local 1 -> forced {0, 7}; topk 4.
        let raw = vec![0.0, 7.0, 3.0, 6.0, 6.00005, 1.0, 5.0, -2.0];
        let tol = vec![0.0001; 8];
        let rs = RowScores {
            head: 0,
            row: 0,
            num_blocks: 8,
            raw,
            tol,
        };
        (rs, params(1, 4, 5, 1, 1))
    }

    #[test]
    fn checker_accepts_correct_and_rejects_wrong() {
        let (rs, p) = sample();
        let ok = select_blocks(&rs.raw, 1, 1, 5);
        assert_eq!(ok, vec![0, 7, 1, 4, 3]);
        let scores = vec![rs.clone()];
        check_selection(&ok, &scores, &p).unwrap();
        check_exact(&ok, &scores, &p).unwrap();
        let bad = |v: Vec<i32>| {
            let e = check_selection(&v, &scores, &p);
            assert!(e.is_err(), "{v:?} accepted");
            e.unwrap_err()
        };
        // Swap in an unselected lower block.
        let e = bad(vec![0, 7, 1, 4, 6]);
        assert!(e.contains("loses to unselected block 3"), "{e}");
        bad(vec![0, 7, 1, 4, 2]);
        // Duplicate / out of range / padding.
        bad(vec![0, 7, 1, 4, 4]);
        bad(vec![0, 7, 1, 4, 8]);
        bad(vec![0, 7, 1, 4, -1]);
        // Missing forced block / wrong order.
        bad(vec![1, 7, 4, 3, 6]);
        bad(vec![0, 7, 1, 3, 4].into_iter().rev().collect());
        bad(vec![7, 0, 1, 4, 3]);
        bad(vec![0, 7, 4, 1, 3]);
        // Wrong length.
        bad(vec![0, 7, 1, 4]);
        // Blocks 3 and 4 are within tolerance: either order is accepted by
        // the tolerant check, the exact check wants the reference order.
        let within = vec![0, 7, 1, 3, 4];
        let p6 = MsaIndexerConfig { topk: 6, ..p };
        let mut ok6 = select_blocks(&rs.raw, 1, 1, 6);
        ok6.swap(3, 4);
        assert_eq!(ok6, vec![0, 7, 1, 3, 4, 6]);
        check_selection(&ok6, &scores, &p6).unwrap();
        assert!(check_exact(&ok6, &scores, &p6).is_err());
        let mut sc2 = scores.clone();
        sc2[0].raw[4] = 6.0; // now tie: with tol both orders pass
        check_selection(&within, &sc2, &p).unwrap();
        // ... and with zero tolerance the tie must go to the lower id.
        sc2[0].tol = vec![0.0; 8];
        assert!(check_selection(&[0, 7, 1, 4, 3], &sc2, &p).is_err());
        check_selection(&within, &sc2, &p).unwrap();
        // Block 3 selected instead of 4 (within tolerance) is accepted,
        // block 6 (lower by far more than the tolerance) is not.
        let p4 = MsaIndexerConfig { topk: 4, ..p };
        check_selection(&[0, 7, 1, 4], &scores, &p4).unwrap();
        check_selection(&[0, 7, 1, 3], &scores, &p4).unwrap();
        assert!(check_exact(&[0, 7, 1, 3], &scores, &p4).is_err());
        assert!(check_selection(&[0, 7, 1, 6], &scores, &p4).is_err());
    }

    #[test]
    fn checker_padding_nan_and_forced_cap() {
        // 3 blocks, topk 5: exactly 3 ids then padding.
        let rs = RowScores {
            head: 1,
            row: 2,
            num_blocks: 3,
            raw: vec![f64::NAN, 1.0, f64::NEG_INFINITY],
            tol: vec![0.0; 3],
        };
        let p = params(1, 4, 5, 0, 0);
        // An output with a single head is ordered (head, row) by its scores list.
        let s = vec![rs];
        check_selection(&[1, 2, 0, -1, -1], &s, &p).unwrap();
        assert!(check_selection(&[1, 2, -1, -1, -1], &s, &p).is_err());
        assert!(check_selection(&[1, 2, 0, 0, -1], &s, &p).is_err());
        assert!(check_selection(&[1, 2, 0, -1, 2], &s, &p).is_err());
        // NaN must not win over a number.
        let p2 = MsaIndexerConfig { topk: 2, ..p };
        check_selection(&[1, 2], &s, &p2).unwrap();
        assert!(check_selection(&[1, 0], &s, &p2).is_err());
        assert!(check_selection(&[2, 1], &s, &p2).is_err());
        // More forced blocks than topk: exactly the reference's forced ones.
        let rs = RowScores {
            head: 0,
            row: 0,
            num_blocks: 6,
            raw: vec![0.0; 6],
            tol: vec![1.0; 6],
        };
        let p3 = params(1, 4, 3, 2, 3);
        let s = vec![rs];
        assert_eq!(select_blocks(&s[0].raw, 2, 3, 3), vec![0, 1, 3]);
        check_selection(&[0, 1, 3], &s, &p3).unwrap();
        assert!(check_selection(&[0, 1, 4], &s, &p3).is_err());
        assert!(check_selection(&[0, 1, 2], &s, &p3).is_err());
        assert!(check_selection(&[1, 0, 3], &s, &p3).is_err());
    }

    #[test]
    fn validate_rejects_bad_input() {
        let pool = Pool::new(&[130], 1, 1, 2, bf16::from_f32(-3.0e4), |_, _, _, _| {
            vec![1.0, 1.0]
        });
        let q = bf(&[1.0; 4]);
        let p = params(1, 2, 2, 0, 0);
        let c = pool.cache();
        assert_eq!(
            validate(&q, &RaggedBatch::new(&[0, 2], &[128]), &c, 1, &p),
            Ok(2)
        );
        assert!(validate(&q, &RaggedBatch::new(&[0, 1], &[128]), &c, 1, &p).is_err());
        assert!(validate(&q, &RaggedBatch::new(&[1, 2], &[128]), &c, 1, &p).is_err());
        assert!(validate(&q, &RaggedBatch::new(&[0, 2], &[128, 0]), &c, 1, &p).is_err());
        assert!(validate(&q, &RaggedBatch::new(&[0, 2], &[300]), &c, 1, &p).is_err());
        assert!(validate(&q, &RaggedBatch::new(&[0, 2], &[128]), &c, 2, &p).is_err());
        let p0 = MsaIndexerConfig { topk: 0, ..p };
        assert!(validate(&q, &RaggedBatch::new(&[0, 2], &[128]), &c, 1, &p0).is_err());
        let p64 = MsaIndexerConfig {
            block_size: 64,
            ..p
        };
        assert!(validate(&q, &RaggedBatch::new(&[0, 2], &[128]), &c, 1, &p64).is_err());
        let bad_lookup = vec![99u32; pool.lookup.len()];
        let c2 = PagedCache {
            pages: crate::paged::PageTable::new(&bad_lookup, c.pages.max_pages),
            ..c
        };
        assert!(validate(&q, &RaggedBatch::new(&[0, 2], &[128]), &c2, 1, &p).is_err());
    }
}

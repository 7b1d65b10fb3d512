//! The standalone top-k (`host::topk`): per row, the indices of the `k`
//! largest of its first `len` entries in [`rank_cmp`] order (descending,
//! NaN after every number, ties to the lower index), `-1` past them.

use rayon::prelude::*;

use crate::msa_indexer::rank_cmp;

/// `out [rows, k]` of `scores [rows, n]`; row `r` has `row_lens[r]`
/// entries (clamped to `n`) when `row_lens` is given, else `n`.
pub fn topk_rows(
    scores: &[f32],
    rows: usize,
    n: usize,
    k: usize,
    row_lens: Option<&[u32]>,
) -> Vec<i32> {
    assert_eq!(scores.len(), rows * n, "scores: rows * n elements");
    if let Some(l) = row_lens {
        assert_eq!(l.len(), rows, "row_lens: rows elements");
    }
    let mut out = vec![-1i32; rows * k];
    if k == 0 {
        return out;
    }
    out.par_chunks_mut(k).enumerate().for_each(|(r, o)| {
        let len = row_lens.map_or(n, |l| (l[r] as usize).min(n));
        let row = &scores[r * n..r * n + len];
        let mut ids: Vec<usize> = (0..len).collect();
        let cmp = |&a: &usize, &b: &usize| rank_cmp(row[a] as f64, a, row[b] as f64, b);
        if len > k {
            ids.select_nth_unstable_by(k - 1, cmp);
            ids.truncate(k);
        }
        ids.sort_unstable_by(cmp);
        for (slot, &j) in o.iter_mut().zip(&ids) {
            *slot = j as i32;
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_ties_nan_and_padding() {
        let s = [1.0, f32::NAN, 3.0, 3.0, -0.0, 0.0, f32::NEG_INFINITY];
        assert_eq!(topk_rows(&s, 1, 7, 7, None), vec![2, 3, 0, 4, 5, 6, 1]);
        assert_eq!(topk_rows(&s, 1, 7, 3, None), vec![2, 3, 0]);
        assert_eq!(topk_rows(&s, 1, 7, 4, Some(&[2])), vec![0, 1, -1, -1]);
        assert_eq!(topk_rows(&s[..6], 2, 3, 2, None), vec![2, 0, 0, 1]);
    }
}

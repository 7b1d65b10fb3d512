//! The online softmax and the log-sum-exp merge, written once.
//!
//! Everything is in the log2 domain: scores are `s · scale · log2 e`, a
//! partial is `(m, l, o)` with `l = Σ 2^(s - m)` and `o = Σ 2^(s - m) v`
//! (unnormalised) or `o / l` (normalised, then `l` is 1 and `m` is its
//! log2-sum-exp). Merging partials `i` weighs each by `2^(m_i - M)`, `M` the
//! largest `m_i`, in a fixed order (partition 0 first, slot order, warp
//! order), so the result is the same bits on every run. A row that attended
//! nothing ends with `out = 0` and `lse = -inf`. An attention sink (`e^sink`
//! added to the denominator only) is one more partial: `(m = sink · log2 e,
//! l = 1, o = 0)`.

use crate::arch::{exp2, fmax, log2};

/// `log2 e`: scores are scaled by `scale · LOG2E` to use `ex2`.
pub const LOG2E: f32 = core::f32::consts::LOG2_E;
/// `ln 2`: a log2-sum-exp times `LN2` is the natural-log LSE the ops return.
pub const LN2: f32 = core::f32::consts::LN_2;

/// `m`, or 0 when it is `-inf` (nothing visible yet): subtracting it keeps
/// `exp2` finite, and every exponentiated score is 0 then anyway.
#[inline(always)]
pub fn finite_or_zero(m: f32) -> f32 {
    if m == f32::NEG_INFINITY {
        0.0
    } else {
        m
    }
}

/// Weight `2^(m - m_max)` of a partial with maximum `m` in a merge whose
/// maximum is `m_max`; 0 when every partial is empty (`m_max = -inf`).
#[inline(always)]
pub fn merge_weight(m: f32, m_max: f32) -> f32 {
    if m_max == f32::NEG_INFINITY {
        0.0
    } else {
        exp2(m - m_max)
    }
}

/// The running `(max, sum)` of one row's softmax.
#[derive(Clone, Copy)]
pub struct LseState {
    /// Largest score so far (`-inf`: none).
    pub m: f32,
    /// `Σ 2^(s - m)` so far.
    pub l: f32,
}

impl LseState {
    /// Nothing seen.
    pub const EMPTY: LseState = LseState {
        m: f32::NEG_INFINITY,
        l: 0.0,
    };

    /// Online step for a tile whose largest score is `tile_max`: the
    /// running max moves to `max(m, tile_max)`, `l` is rescaled. Returns
    /// `(corr, m_use)`: the factor for everything accumulated so far (the
    /// output rows) and the finite max the tile's scores are exponentiated
    /// against (`p = 2^(s - m_use)`, whose sum the caller adds to `l`).
    #[inline(always)]
    pub fn advance(&mut self, tile_max: f32) -> (f32, f32) {
        let m_new = fmax(self.m, tile_max);
        let m_use = finite_or_zero(m_new);
        let corr = exp2(self.m - m_use);
        self.m = m_new;
        self.l *= corr;
        (corr, m_use)
    }

    /// [`advance`](Self::advance), except that the running max stays
    /// where it is while the tile's max exceeds it by at most `slack` (log2
    /// units; FlashAttention-4's lazy rescale): then `corr` is exactly 1,
    /// and the tile's `p = 2^(s - m_use)` are at most `2^slack`. The final
    /// `o / l` and `m + log2 l` are the same for any reference `m`, so only
    /// the rounding moves (and values that big must fit the type P is
    /// rounded to: `2^8` in bf16 or e4m3).
    #[inline(always)]
    pub fn advance_lazy(&mut self, tile_max: f32, slack: f32) -> (f32, f32) {
        if self.m != f32::NEG_INFINITY && tile_max <= self.m + slack {
            (1.0, self.m)
        } else {
            self.advance(tile_max)
        }
    }

    /// `(1 / l, m + log2 l)`: the normaliser and the log2-sum-exp; `(0,
    /// -inf)` when nothing was attended.
    #[inline(always)]
    pub fn finish(self) -> (f32, f32) {
        if self.l > 0.0 {
            (1.0 / self.l, self.m + log2(self.l))
        } else {
            (0.0, f32::NEG_INFINITY)
        }
    }
}

/// Merges `parts` normalised partials of one output element in order 0, 1,
/// …: `lse2[i]` their log2-sum-exp (unused entries `-inf`), `o[i]` their
/// values. Returns the merged value and the merged log2-sum-exp (`0` and
/// `-inf` when nothing was attended). Unrolled to 32 (the largest `N`) so
/// the arrays stay in registers.
#[inline(always)]
pub fn merge_normalised<const N: usize>(lse2: &[f32; N], o: &[f32; N], parts: u32) -> (f32, f32) {
    const { assert!(N <= 32) };
    let mut mx = f32::NEG_INFINITY;
    crate::unroll!(32, P => {
        if P < N {
            mx = fmax(mx, lse2[P.min(N - 1)]);
        }
    });
    let mut st = LseState { m: mx, l: 0.0 };
    let mut acc = 0f32;
    if mx != f32::NEG_INFINITY {
        crate::unroll!(32, P => {
            if P < N && (P as u32) < parts {
                let w = exp2(lse2[P.min(N - 1)] - mx);
                st.l += w;
                acc += w * o[P.min(N - 1)];
            }
        });
    }
    let (inv, lse) = st.finish();
    (acc * inv, lse)
}

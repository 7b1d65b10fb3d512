//! Key masks by position, on `wgmma` / `mma` accumulator fragments.
//!
//! Every mask of the crate is one contiguous range of visible keys per
//! query row (`abi::batch::Mask::key_range`): causal cuts at the query's
//! position, a sliding window also from below, and the sequence's end
//! always. A kernel computes each of its rows' [`KeyRange`] once, asks
//! [`KeyRange`]s of its first and last rows which key tiles need masking
//! at all, and applies [`mask_fragment`] only to those.

use crate::arch::lane_id;

/// Keys `lo .. hi` are visible (`lo <= hi`).
#[derive(Clone, Copy)]
pub struct KeyRange {
    /// First visible key.
    pub lo: u32,
    /// One past the last visible key.
    pub hi: u32,
}

impl KeyRange {
    /// The keys a query at `q_pos` sees among `num_keys`: `causal` hides
    /// keys after it, `window` keeps the last `window` up to it (`u32::MAX`:
    /// no window; only with `causal`).
    #[inline(always)]
    pub fn of(q_pos: u32, num_keys: u32, causal: bool, window: u32) -> Self {
        let hi = if causal { num_keys.min(q_pos.saturating_add(1)) } else { num_keys };
        let lo = if window == u32::MAX { 0 } else { q_pos.saturating_add(1).saturating_sub(window) };
        KeyRange { lo: lo.min(hi), hi }
    }

    /// Whether keys `kb .. kb + n` are all visible.
    #[inline(always)]
    pub fn covers(&self, kb: u32, n: u32) -> bool {
        kb >= self.lo && kb + n <= self.hi
    }
}

/// Sets to `-inf` the scores of an `M64N(8 NT)` accumulator fragment (this
/// thread's rows `g` and `g + 8`: registers `s[j][0..2]` and `s[j][2..4]`,
/// columns `8 j + 2 (lane % 4)` and `+ 1`) whose key `kb + column` is
/// outside its row's range. Written over, not added: a garbage key (NaN in
/// an unwritten page slot) leaves no trace.
#[inline(always)]
pub fn mask_fragment<const NT: usize>(s: &mut [[f32; 4]; NT], kb: u32, rows: [KeyRange; 2]) {
    let c = 2 * (lane_id() & 3);
    crate::unroll_to!(NT, J => {
        crate::unroll!(4, E => {
            let k = kb + (J * 8) as u32 + c + (E & 1) as u32;
            let r = rows[E >> 1];
            if k < r.lo || k >= r.hi {
                s[J][E] = f32::NEG_INFINITY;
            }
        });
    });
}

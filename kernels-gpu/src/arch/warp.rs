//! Warp-wide operations: shuffles, reductions, warp barriers.
//!
//! Warp-synchronous instructions are emitted through the convergent LLVM
//! intrinsics (or as side-effecting asm), never as `pure` asm: the compiler
//! must not sink them into, or duplicate them across, divergent branches.
//! Callers execute them with the whole warp.

use super::math::fmax;

/// `shfl.sync.bfly.b32` with all lanes taking part: the value of lane `lane ^ mask`.
///
/// Emitted through the LLVM intrinsic, which is `convergent`: the compiler
/// may not sink it into, or duplicate it across, divergent branches. (An
/// inline-asm version marked `pure` was sunk under `if lane % 4 == 0` and hung
/// the warp.)
#[inline(always)]
pub fn shfl_xor_u32(v: u32, mask: u32) -> u32 {
    // SAFETY: all 32 lanes execute the call (the callers' contract).
    unsafe { llvm_shfl_sync_bfly_i32(-1, v as i32, mask as i32, 0x1f) as u32 }
}

extern "C" {
    #[link_name = "llvm.nvvm.shfl.sync.bfly.i32"]
    fn llvm_shfl_sync_bfly_i32(member_mask: i32, value: i32, lane_mask: i32, clamp: i32) -> i32;
}

/// `shfl.sync.idx.b32` from lane 0 with all lanes taking part: lane 0's
/// value in every lane. Convergent, as [`shfl_xor_u32`].
///
/// ptxas treats the result as warp-uniform and may keep it (and what is
/// computed from it) in uniform registers, which `wgmma` descriptors and
/// barrier ids need: see [`warp_id_uniform`](super::thread::warp_id_uniform).
#[inline(always)]
pub fn shfl_lane0_u32(v: u32) -> u32 {
    // SAFETY: all 32 lanes execute the call (the callers' contract).
    unsafe { llvm_shfl_sync_idx_i32(-1, v as i32, 0, 0x1f) as u32 }
}

extern "C" {
    #[link_name = "llvm.nvvm.shfl.sync.idx.i32"]
    fn llvm_shfl_sync_idx_i32(member_mask: i32, value: i32, lane: i32, clamp: i32) -> i32;
}

/// `shfl.sync.down.b32` with all lanes taking part: the value of lane
/// `lane + delta` (a lane past 31 gets its own value back). Convergent, as
/// [`shfl_xor_u32`].
#[inline(always)]
pub fn shfl_down_u32(v: u32, delta: u32) -> u32 {
    // SAFETY: all 32 lanes execute the call (the callers' contract).
    unsafe { llvm_shfl_sync_down_i32(-1, v as i32, delta as i32, 0x1f) as u32 }
}

extern "C" {
    #[link_name = "llvm.nvvm.shfl.sync.down.i32"]
    fn llvm_shfl_sync_down_i32(member_mask: i32, value: i32, delta: i32, clamp: i32) -> i32;
}

/// [`shfl_xor_u32`] for `f32`.
#[inline(always)]
pub fn shfl_xor_f32(v: f32, mask: u32) -> f32 {
    f32::from_bits(shfl_xor_u32(v.to_bits(), mask))
}

/// [`shfl_xor_u32`] for `u64` (two `shfl.sync.bfly.b32`).
#[inline(always)]
pub fn shfl_xor_u64(v: u64, mask: u32) -> u64 {
    let lo = shfl_xor_u32(v as u32, mask) as u64;
    let hi = shfl_xor_u32((v >> 32) as u32, mask) as u64;
    (hi << 32) | lo
}

/// Maximum of `v` over the 4 lanes of a quad (lanes `4k .. 4k+4`), NaN-ignoring.
#[inline(always)]
pub fn quad_max_f32(v: f32) -> f32 {
    let v = fmax(v, shfl_xor_f32(v, 1));
    fmax(v, shfl_xor_f32(v, 2))
}

/// `redux.sync.max.u32` over the whole warp (sm_80+), through the convergent
/// LLVM intrinsic: one instruction instead of five shuffle rounds.
#[inline(always)]
pub fn warp_max_u32(v: u32) -> u32 {
    // SAFETY: all 32 lanes execute the call (the callers' contract).
    unsafe { llvm_redux_sync_umax(v as i32, -1) as u32 }
}

/// `redux.sync.add.u32` over the whole warp (sm_80+): [`warp_max_u32`]'s
/// sum.
#[inline(always)]
pub fn warp_sum_u32(v: u32) -> u32 {
    // SAFETY: all 32 lanes execute the call (the callers' contract).
    unsafe { llvm_redux_sync_add(v as i32, -1) as u32 }
}

extern "C" {
    #[link_name = "llvm.nvvm.redux.sync.umax"]
    fn llvm_redux_sync_umax(value: i32, member_mask: i32) -> i32;
    #[link_name = "llvm.nvvm.redux.sync.add"]
    fn llvm_redux_sync_add(value: i32, member_mask: i32) -> i32;
}

/// Maximum of `v` over the whole warp; every lane gets the result. Two
/// `redux.sync.max.u32`: the high words, then the low words of the lanes
/// holding the highest high word.
#[inline(always)]
pub fn warp_max_u64(v: u64) -> u64 {
    let hi = (v >> 32) as u32;
    let max_hi = warp_max_u32(hi);
    let max_lo = warp_max_u32(if hi == max_hi { v as u32 } else { 0 });
    ((max_hi as u64) << 32) | max_lo as u64
}

/// `bar.warp.sync 0xffffffff`: the warp's lanes meet here, and shared-memory
/// writes before it are visible to every lane after it. Through the
/// convergent LLVM intrinsic (see [`shfl_xor_u32`]).
#[inline(always)]
pub fn sync_warp() {
    // SAFETY: all 32 lanes execute the call (the callers' contract).
    unsafe { llvm_bar_warp_sync(-1) }
}

extern "C" {
    #[link_name = "llvm.nvvm.bar.warp.sync"]
    fn llvm_bar_warp_sync(member_mask: i32);
}

/// `vote.sync.any.pred` with all lanes taking part: whether `p` holds in
/// some lane. The result is warp-uniform, so a branch on it does not
/// diverge. Convergent, as [`shfl_xor_u32`].
#[inline(always)]
pub fn vote_any(p: bool) -> bool {
    // SAFETY: all 32 lanes execute the call (the callers' contract).
    unsafe { llvm_vote_any_sync(-1, p) }
}

extern "C" {
    #[link_name = "llvm.nvvm.vote.any.sync"]
    fn llvm_vote_any_sync(member_mask: i32, pred: bool) -> bool;
}

/// `shfl.sync.up.b32` with all lanes taking part: the value of lane
/// `lane - delta` (a lane below `delta` gets its own value back).
/// Convergent, as [`shfl_xor_u32`].
#[inline(always)]
pub fn shfl_up_u32(v: u32, delta: u32) -> u32 {
    // SAFETY: all 32 lanes execute the call (the callers' contract).
    unsafe { llvm_shfl_sync_up_i32(-1, v as i32, delta as i32, 0) as u32 }
}

/// Inclusive prefix sum of `v` over the lanes `0 ..= lane` of the whole
/// warp (five [`shfl_up_u32`] rounds).
#[inline(always)]
pub fn warp_inclusive_sum_u32(v: u32) -> u32 {
    let (lane, mut s) = (super::thread::lane_id(), v);
    for d in [1, 2, 4, 8, 16] {
        let u = shfl_up_u32(s, d);
        if lane >= d {
            s += u;
        }
    }
    s
}

extern "C" {
    #[link_name = "llvm.nvvm.shfl.sync.up.i32"]
    fn llvm_shfl_sync_up_i32(member_mask: i32, value: i32, delta: i32, clamp: i32) -> i32;
}

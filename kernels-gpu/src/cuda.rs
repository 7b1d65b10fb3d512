//! Device support: the small, architecture-specific layer every kernel uses.
//!
//! In the spirit of `cuda_std`: kernels read as ordinary Rust and call these
//! wrappers; every raw `asm!` of the crate lives here, each wrapper naming the
//! PTX instruction it emits. Pointers into shared memory are 32-bit shared
//! window addresses (`u32`), as `ld.shared`, `cp.async` and `ldmatrix` take.
//!
//! Safety: the wrappers are `unsafe` where the caller must guarantee that an
//! address is valid and aligned; they never check. Warp-synchronous
//! instructions (`shfl.sync`, `ldmatrix`, `mma.sync`) are emitted as
//! side-effecting asm so the compiler never moves them into divergent code;
//! their callers must execute them with the whole warp.

use core::arch::asm;
use core::arch::nvptx;

// ---------------------------------------------------------------- indices

/// `%tid.x`
#[inline(always)]
pub fn thread_idx_x() -> u32 {
    unsafe { nvptx::_thread_idx_x() as u32 }
}

/// `%ctaid.x`
#[inline(always)]
pub fn block_idx_x() -> u32 {
    unsafe { nvptx::_block_idx_x() as u32 }
}

/// `%ntid.x`
#[inline(always)]
pub fn block_dim_x() -> u32 {
    unsafe { nvptx::_block_dim_x() as u32 }
}

/// Lane of the calling thread in its warp (`%tid.x % 32` for 1-D blocks).
#[inline(always)]
pub fn lane_id() -> u32 {
    thread_idx_x() & 31
}

/// Warp index of the calling thread in its block (1-D blocks).
#[inline(always)]
pub fn warp_id() -> u32 {
    thread_idx_x() >> 5
}

/// `barrier.sync 0`: block-wide barrier; also orders shared-memory accesses.
///
/// The non-`.aligned` form on purpose: LLVM may duplicate a barrier into the
/// arms of a branch (seen: `if tid < n { .. } sync_threads()` became one
/// barrier per arm), and `bar.sync` (= `barrier.sync.aligned`) requires every
/// thread to execute the *same* instruction, so that hung the CTA. The
/// unaligned barrier counts threads wherever they arrive.
#[inline(always)]
pub fn sync_threads() {
    unsafe { asm!("barrier.sync 0;", options(nostack)) }
}

/// `trap`: abort the kernel (used only for states that cannot happen).
#[inline(always)]
pub fn trap() -> ! {
    unsafe { nvptx::trap() }
}

// ---------------------------------------------------------------- warp ops

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

/// `max.f32` (IEEE maxNum: a NaN operand loses to a number).
#[inline(always)]
pub fn fmax(a: f32, b: f32) -> f32 {
    let r: f32;
    unsafe {
        asm!("max.f32 {r}, {a}, {b};", r = out(reg32) r, a = in(reg32) a, b = in(reg32) b,
             options(nomem, nostack, pure));
    }
    r
}

/// `fma.rn.f32`: `a * b + c` with one rounding.
#[inline(always)]
pub fn fma(a: f32, b: f32, c: f32) -> f32 {
    let r: f32;
    unsafe {
        asm!("fma.rn.f32 {r}, {a}, {b}, {c};", r = out(reg32) r, a = in(reg32) a, b = in(reg32) b,
             c = in(reg32) c, options(nomem, nostack, pure));
    }
    r
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

extern "C" {
    #[link_name = "llvm.nvvm.redux.sync.umax"]
    fn llvm_redux_sync_umax(value: i32, member_mask: i32) -> i32;
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

// ---------------------------------------------------------------- numbers

/// Exact widening of a bf16 (carried as its bit pattern) to f32.
#[inline(always)]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits((bits as u32) << 16)
}

/// Low and high bf16 of a packed pair, widened to f32.
#[inline(always)]
pub fn bf16x2_to_f32(pair: u32) -> (f32, f32) {
    (
        f32::from_bits(pair << 16),
        f32::from_bits(pair & 0xffff_0000),
    )
}

/// `ex2.approx.ftz.f32`: 2^x (`-inf` gives 0).
#[inline(always)]
pub fn exp2(x: f32) -> f32 {
    let r: f32;
    unsafe {
        asm!("ex2.approx.ftz.f32 {r}, {x};", r = out(reg32) r, x = in(reg32) x,
             options(nomem, nostack, pure));
    }
    r
}

/// `lg2.approx.ftz.f32`: log2(x).
#[inline(always)]
pub fn log2(x: f32) -> f32 {
    let r: f32;
    unsafe {
        asm!("lg2.approx.ftz.f32 {r}, {x};", r = out(reg32) r, x = in(reg32) x,
             options(nomem, nostack, pure));
    }
    r
}

/// `cvt.rn.bf16.f32`: round to the nearest bf16 (ties to even), as bits.
#[inline(always)]
pub fn f32_to_bf16(x: f32) -> u16 {
    let r: u16;
    unsafe {
        asm!("cvt.rn.bf16.f32 {r}, {x};", r = out(reg16) r, x = in(reg32) x,
             options(nomem, nostack, pure));
    }
    r
}

/// `cvt.rn.bf16x2.f32`: `lo` in the low half, `hi` in the high half (the
/// element order of an `mma` fragment register).
#[inline(always)]
pub fn pack_bf16x2(lo: f32, hi: f32) -> u32 {
    let r: u32;
    unsafe {
        asm!("cvt.rn.bf16x2.f32 {r}, {hi}, {lo};", r = out(reg32) r, hi = in(reg32) hi,
             lo = in(reg32) lo, options(nomem, nostack, pure));
    }
    r
}

// ---------------------------------------------------------------- global memory

/// `ld.global.nc.v4.u32`: one 16-byte read-only load (`p` 16-byte aligned).
#[inline(always)]
pub unsafe fn ld_global_nc_v4(p: *const u8) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    asm!("ld.global.nc.v4.u32 {{{a}, {b}, {c}, {d}}}, [{p}];",
         a = out(reg32) a, b = out(reg32) b, c = out(reg32) c, d = out(reg32) d,
         p = in(reg64) p, options(pure, readonly, nostack));
    [a, b, c, d]
}

/// `ld.global.nc.v2.u32`: one 8-byte read-only load (`p` 8-byte aligned).
#[inline(always)]
pub unsafe fn ld_global_nc_v2(p: *const u8) -> [u32; 2] {
    let (a, b): (u32, u32);
    asm!("ld.global.nc.v2.u32 {{{a}, {b}}}, [{p}];", a = out(reg32) a, b = out(reg32) b,
         p = in(reg64) p, options(pure, readonly, nostack));
    [a, b]
}

/// `ld.global.nc.u32`: a 4-byte read-only load (`p` 4-byte aligned).
#[inline(always)]
pub unsafe fn ld_global_nc_u32(p: *const u32) -> u32 {
    let r: u32;
    // `pure, readonly`: a load of read-only data, free to be scheduled early
    // (several in flight) or merged.
    asm!("ld.global.nc.u32 {r}, [{p}];", r = out(reg32) r, p = in(reg64) p,
         options(pure, readonly, nostack));
    r
}

/// `st.global.v4.u32`: one 16-byte store (`p` 16-byte aligned).
#[inline(always)]
pub unsafe fn st_global_v4(p: *mut u8, v: [u32; 4]) {
    asm!("st.global.v4.u32 [{p}], {{{a}, {b}, {c}, {d}}};", p = in(reg64) p,
         a = in(reg32) v[0], b = in(reg32) v[1], c = in(reg32) v[2], d = in(reg32) v[3],
         options(nostack));
}

/// `atom.global.add.u32`: adds `v` at `p`, returns the old value.
#[inline(always)]
pub unsafe fn atomic_add_global_u32(p: *mut u32, v: u32) -> u32 {
    let r: u32;
    asm!("atom.global.add.u32 {r}, [{p}], {v};", r = out(reg32) r, p = in(reg64) p,
         v = in(reg32) v, options(nostack));
    r
}

// ---------------------------------------------------------------- shared memory

core::arch::global_asm!(".extern .shared .align 1024 .b8 SMEM[];");

/// Shared-window address of the kernel's dynamic shared memory (`mov.u32 r, SMEM`).
/// The launch sets its size.
#[inline(always)]
pub fn dynamic_smem() -> u32 {
    let p: u32;
    unsafe { asm!("mov.u32 {p}, SMEM;", p = out(reg32) p, options(nomem, nostack, pure)) };
    p
}

/// `st.shared.f32`
#[inline(always)]
pub unsafe fn st_shared_f32(addr: u32, v: f32) {
    asm!("st.shared.f32 [{a}], {v};", a = in(reg32) addr, v = in(reg32) v, options(nostack));
}

/// `st.shared.u32`
#[inline(always)]
pub unsafe fn st_shared_u32(addr: u32, v: u32) {
    asm!("st.shared.u32 [{a}], {v};", a = in(reg32) addr, v = in(reg32) v, options(nostack));
}

/// `ld.shared.u32`
#[inline(always)]
pub unsafe fn ld_shared_u32(addr: u32) -> u32 {
    let r: u32;
    asm!("ld.shared.u32 {r}, [{a}];", r = out(reg32) r, a = in(reg32) addr,
         options(readonly, nostack));
    r
}

/// `atom.shared.add.u32`: adds `v` at `addr`, returns the old value.
#[inline(always)]
pub unsafe fn atomic_add_shared_u32(addr: u32, v: u32) -> u32 {
    let r: u32;
    asm!("atom.shared.add.u32 {r}, [{a}], {v};", r = out(reg32) r, a = in(reg32) addr,
         v = in(reg32) v, options(nostack));
    r
}

/// `ld.shared.v4.u32`: 16 bytes (16-byte aligned).
#[inline(always)]
pub unsafe fn ld_shared_v4(addr: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    asm!("ld.shared.v4.u32 {{{a}, {b}, {c}, {d}}}, [{p}];",
         a = out(reg32) a, b = out(reg32) b, c = out(reg32) c, d = out(reg32) d,
         p = in(reg32) addr, options(readonly, nostack));
    [a, b, c, d]
}

/// `st.shared.v4.u32` of zeros: clears 16 bytes (16-byte aligned).
#[inline(always)]
pub unsafe fn st_shared_zero16(addr: u32) {
    asm!("st.shared.v4.u32 [{a}], {{0, 0, 0, 0}};", a = in(reg32) addr, options(nostack));
}

/// `st.shared.u64`
#[inline(always)]
pub unsafe fn st_shared_u64(addr: u32, v: u64) {
    asm!("st.shared.u64 [{a}], {v};", a = in(reg32) addr, v = in(reg64) v, options(nostack));
}

/// `ld.shared.u64`
#[inline(always)]
pub unsafe fn ld_shared_u64(addr: u32) -> u64 {
    let r: u64;
    asm!("ld.shared.u64 {r}, [{a}];", r = out(reg64) r, a = in(reg32) addr,
         options(readonly, nostack));
    r
}

/// `ld.shared.f32`
#[inline(always)]
pub unsafe fn ld_shared_f32(addr: u32) -> f32 {
    let r: f32;
    asm!("ld.shared.f32 {r}, [{a}];", r = out(reg32) r, a = in(reg32) addr,
         options(readonly, nostack));
    r
}

// ---------------------------------------------------------------- grid dependencies

/// `griddepcontrol.wait`: blocks until the grids this one depends on (the
/// previous kernel on the stream, when this one was launched with
/// programmatic dependent launch) have completed and their memory writes are
/// visible; returns at once otherwise. Every kernel of the crate calls
/// [`grid_prologue`] before touching global memory (host `launch.rs`).
#[inline(always)]
pub fn grid_dependency_wait() {
    unsafe { asm!("griddepcontrol.wait;", options(nostack)) };
}

/// `griddepcontrol.launch_dependents`: lets the next grid on the stream be
/// scheduled once every CTA of this one has issued it (or exited). It does
/// not make this grid's writes visible early: the dependent still waits with
/// [`grid_dependency_wait`].
#[inline(always)]
pub fn launch_dependents() {
    unsafe { asm!("griddepcontrol.launch_dependents;", options(nostack)) };
}

/// The first statement of every kernel: wait for the previous grid, then let
/// the next one be scheduled (see the two instructions above). Waiting before
/// anything else, early returns included, keeps "this grid has completed"
/// meaning "its predecessors have completed" for the grid after it.
#[inline(always)]
pub fn grid_prologue() {
    grid_dependency_wait();
    launch_dependents();
}

// ---------------------------------------------------------------- thread-block clusters (sm_90)

/// `%cluster_ctarank`: this CTA's rank in its cluster.
#[inline(always)]
pub fn cluster_ctarank() -> u32 {
    let r: u32;
    unsafe {
        asm!("mov.u32 {r}, %cluster_ctarank;", r = out(reg32) r,
             options(nomem, nostack, pure));
    }
    r
}

/// `barrier.cluster.arrive.release.aligned` then
/// `barrier.cluster.wait.acquire.aligned`: every thread of every CTA of the
/// cluster arrives; shared-memory writes before it are visible to the
/// cluster's reads after it. All threads of the CTA must call it.
#[inline(always)]
pub fn cluster_sync() {
    unsafe {
        asm!("barrier.cluster.arrive.release.aligned;",
             "barrier.cluster.wait.acquire.aligned;", options(nostack));
    }
}

/// `mapa.shared::cluster.u32`: the address, in the cluster's shared window,
/// of this CTA's shared address `addr` in the CTA of rank `rank`.
#[inline(always)]
pub fn map_shared_rank(addr: u32, rank: u32) -> u32 {
    let r: u32;
    unsafe {
        asm!("mapa.shared::cluster.u32 {r}, {a}, {k};", r = out(reg32) r, a = in(reg32) addr,
             k = in(reg32) rank, options(nomem, nostack, pure));
    }
    r
}

/// `ld.shared::cluster.f32`: a load from another CTA's shared memory (an
/// address from [`map_shared_rank`]).
#[inline(always)]
pub unsafe fn ld_shared_cluster_f32(addr: u32) -> f32 {
    let r: f32;
    asm!("ld.shared::cluster.f32 {r}, [{a}];", r = out(reg32) r, a = in(reg32) addr,
         options(readonly, nostack));
    r
}

// ---------------------------------------------------------------- async copies

/// `cp.async.cg.shared.global [dst], [src], 16`: a 16-byte global→shared copy
/// that bypasses L1 and completes asynchronously (see [`cp_async_wait`]).
#[inline(always)]
pub unsafe fn cp_async_16(dst: u32, src: *const u8) {
    asm!("cp.async.cg.shared.global [{d}], [{s}], 16;", d = in(reg32) dst, s = in(reg64) src,
         options(nostack));
}

/// `cp.async.commit_group`: close the group of copies issued since the last commit.
#[inline(always)]
pub fn cp_async_commit() {
    unsafe { asm!("cp.async.commit_group;", options(nostack)) };
}

/// `cp.async.wait_group N`: wait until at most `N` committed groups are pending.
#[inline(always)]
pub fn cp_async_wait<const N: u32>() {
    unsafe { asm!("cp.async.wait_group {n};", n = const N, options(nostack)) };
}

// ---------------------------------------------------------------- tensor cores

/// `ldmatrix.sync.aligned.m8n8.x4.shared.b16`: four 8×8 b16 matrices; lane `l`
/// gives the row address for matrix `l / 8`, row `l % 8`; register `i` of
/// every lane receives its fragment of matrix `i`.
#[inline(always)]
pub unsafe fn ldmatrix_x4(addr: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    asm!("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {{{a}, {b}, {c}, {d}}}, [{p}];",
         a = out(reg32) a, b = out(reg32) b, c = out(reg32) c, d = out(reg32) d,
         p = in(reg32) addr, options(nostack)); // warp-synchronous: not movable
    [a, b, c, d]
}

/// `ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16`: as [`ldmatrix_x4`], each
/// matrix transposed (rows of the shared tile become fragment columns: the B
/// operand of `P·V` from a row-major `[key][dim]` V tile).
#[inline(always)]
pub unsafe fn ldmatrix_x4_trans(addr: u32) -> [u32; 4] {
    let (a, b, c, d): (u32, u32, u32, u32);
    asm!("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {{{a}, {b}, {c}, {d}}}, [{p}];",
         a = out(reg32) a, b = out(reg32) b, c = out(reg32) c, d = out(reg32) d,
         p = in(reg32) addr, options(nostack)); // warp-synchronous: not movable
    [a, b, c, d]
}

/// `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32`: `d = a·b + c` for a
/// 16×16 bf16 A fragment (row-major), a 16×8 bf16 B fragment (column-major)
/// and a 16×8 f32 accumulator. Fragment layouts (g = lane / 4, c = lane % 4):
/// `a = [(g, 2c..), (g+8, 2c..), (g, 2c+8..), (g+8, 2c+8..)]` as packed pairs,
/// `b = [(k 2c.., n g), (k 2c+8.., n g)]`, `acc = [(g, 2c), (g, 2c+1), (g+8, 2c), (g+8, 2c+1)]`.
#[inline(always)]
pub fn mma_bf16_16816(a: [u32; 4], b: [u32; 2], c: [f32; 4]) -> [f32; 4] {
    let (d0, d1, d2, d3): (f32, f32, f32, f32);
    unsafe {
        asm!("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {{{d0}, {d1}, {d2}, {d3}}}, {{{a0}, {a1}, {a2}, {a3}}}, {{{b0}, {b1}}}, {{{c0}, {c1}, {c2}, {c3}}};",
             d0 = out(reg32) d0, d1 = out(reg32) d1, d2 = out(reg32) d2, d3 = out(reg32) d3,
             a0 = in(reg32) a[0], a1 = in(reg32) a[1], a2 = in(reg32) a[2], a3 = in(reg32) a[3],
             b0 = in(reg32) b[0], b1 = in(reg32) b[1],
             c0 = in(reg32) c[0], c1 = in(reg32) c[1], c2 = in(reg32) c[2], c3 = in(reg32) c[3],
             options(nostack)); // warp-synchronous: not `pure`, see `shfl_xor_u32`
    }
    [d0, d1, d2, d3]
}

// ---------------------------------------------------------------- warpgroup MMA (sm_90a)

/// A `wgmma` shared-memory matrix descriptor for a bf16 tile laid out in
/// 128-byte swizzled rows (`Swizzle<3,4,3>`: 16-byte chunk `c` of row `r`
/// stored at chunk `c ^ (r % 8)`; the tile's 8-row groups 1024-byte aligned).
/// `lbo` / `sbo`: the leading / stride byte offsets of the PTX ISA's
/// canonical layouts (K-major: `sbo` = 1024 between 8-row groups, `lbo`
/// unused; MN-major: `lbo` between 64-element column blocks, `sbo` = 1024
/// between 8-row groups).
#[inline(always)]
pub fn wgmma_desc_sw128(addr: u32, lbo: u32, sbo: u32) -> u64 {
    let enc = |x: u32| ((x & 0x3ffff) >> 4) as u64;
    enc(addr) | enc(lbo) << 16 | enc(sbo) << 32 | 1u64 << 62
}

/// `asm!` with the 64 accumulator registers of `$d` (`[[f32; 4]; 16]`) bound
/// to the template operands `{d0}` .. `{d63}` (`$d[i / 4][i % 4]`), and with
/// `a = $a` the 32 A-fragment registers (`[[u32; 4]; 8]`) to `{a0}` ..
/// `{a31}`: the wgmma wrappers share one list.
macro_rules! asm_acc {
    ($d:ident, a = $a:ident, [$($t:expr),+], $($rest:tt)*) => {
        asm_acc!($d, [$($t),+],
            a0 = in(reg32) $a[0][0],
            a1 = in(reg32) $a[0][1],
            a2 = in(reg32) $a[0][2],
            a3 = in(reg32) $a[0][3],
            a4 = in(reg32) $a[1][0],
            a5 = in(reg32) $a[1][1],
            a6 = in(reg32) $a[1][2],
            a7 = in(reg32) $a[1][3],
            a8 = in(reg32) $a[2][0],
            a9 = in(reg32) $a[2][1],
            a10 = in(reg32) $a[2][2],
            a11 = in(reg32) $a[2][3],
            a12 = in(reg32) $a[3][0],
            a13 = in(reg32) $a[3][1],
            a14 = in(reg32) $a[3][2],
            a15 = in(reg32) $a[3][3],
            a16 = in(reg32) $a[4][0],
            a17 = in(reg32) $a[4][1],
            a18 = in(reg32) $a[4][2],
            a19 = in(reg32) $a[4][3],
            a20 = in(reg32) $a[5][0],
            a21 = in(reg32) $a[5][1],
            a22 = in(reg32) $a[5][2],
            a23 = in(reg32) $a[5][3],
            a24 = in(reg32) $a[6][0],
            a25 = in(reg32) $a[6][1],
            a26 = in(reg32) $a[6][2],
            a27 = in(reg32) $a[6][3],
            a28 = in(reg32) $a[7][0],
            a29 = in(reg32) $a[7][1],
            a30 = in(reg32) $a[7][2],
            a31 = in(reg32) $a[7][3],
            $($rest)*)
    };
    ($d:ident, [$($t:expr),+], $($rest:tt)*) => {
        asm!($($t),+,
            d0 = inout(reg32) $d[0][0],
            d1 = inout(reg32) $d[0][1],
            d2 = inout(reg32) $d[0][2],
            d3 = inout(reg32) $d[0][3],
            d4 = inout(reg32) $d[1][0],
            d5 = inout(reg32) $d[1][1],
            d6 = inout(reg32) $d[1][2],
            d7 = inout(reg32) $d[1][3],
            d8 = inout(reg32) $d[2][0],
            d9 = inout(reg32) $d[2][1],
            d10 = inout(reg32) $d[2][2],
            d11 = inout(reg32) $d[2][3],
            d12 = inout(reg32) $d[3][0],
            d13 = inout(reg32) $d[3][1],
            d14 = inout(reg32) $d[3][2],
            d15 = inout(reg32) $d[3][3],
            d16 = inout(reg32) $d[4][0],
            d17 = inout(reg32) $d[4][1],
            d18 = inout(reg32) $d[4][2],
            d19 = inout(reg32) $d[4][3],
            d20 = inout(reg32) $d[5][0],
            d21 = inout(reg32) $d[5][1],
            d22 = inout(reg32) $d[5][2],
            d23 = inout(reg32) $d[5][3],
            d24 = inout(reg32) $d[6][0],
            d25 = inout(reg32) $d[6][1],
            d26 = inout(reg32) $d[6][2],
            d27 = inout(reg32) $d[6][3],
            d28 = inout(reg32) $d[7][0],
            d29 = inout(reg32) $d[7][1],
            d30 = inout(reg32) $d[7][2],
            d31 = inout(reg32) $d[7][3],
            d32 = inout(reg32) $d[8][0],
            d33 = inout(reg32) $d[8][1],
            d34 = inout(reg32) $d[8][2],
            d35 = inout(reg32) $d[8][3],
            d36 = inout(reg32) $d[9][0],
            d37 = inout(reg32) $d[9][1],
            d38 = inout(reg32) $d[9][2],
            d39 = inout(reg32) $d[9][3],
            d40 = inout(reg32) $d[10][0],
            d41 = inout(reg32) $d[10][1],
            d42 = inout(reg32) $d[10][2],
            d43 = inout(reg32) $d[10][3],
            d44 = inout(reg32) $d[11][0],
            d45 = inout(reg32) $d[11][1],
            d46 = inout(reg32) $d[11][2],
            d47 = inout(reg32) $d[11][3],
            d48 = inout(reg32) $d[12][0],
            d49 = inout(reg32) $d[12][1],
            d50 = inout(reg32) $d[12][2],
            d51 = inout(reg32) $d[12][3],
            d52 = inout(reg32) $d[13][0],
            d53 = inout(reg32) $d[13][1],
            d54 = inout(reg32) $d[13][2],
            d55 = inout(reg32) $d[13][3],
            d56 = inout(reg32) $d[14][0],
            d57 = inout(reg32) $d[14][1],
            d58 = inout(reg32) $d[14][2],
            d59 = inout(reg32) $d[14][3],
            d60 = inout(reg32) $d[15][0],
            d61 = inout(reg32) $d[15][1],
            d62 = inout(reg32) $d[15][2],
            d63 = inout(reg32) $d[15][3],
            $($rest)*)
    };
}

/// `wgmma.fence.sync.aligned`: orders this warp's earlier register writes to
/// `d` and to the A fragments `a` before the `wgmma` ops that follow; both
/// are tied to the fence so the compiler keeps that order.
#[inline(always)]
pub fn wgmma_fence(d: &mut [[f32; 4]; 16], a: &[[u32; 4]; 8]) {
    unsafe {
        asm_acc!(d, a = a, ["wgmma.fence.sync.aligned; // {a0} {a1} {a2} {a3} {a4} {a5} {a6} {a7} {a8} {a9} {a10} {a11} {a12} {a13} {a14} {a15} {a16} {a17} {a18} {a19} {a20} {a21} {a22} {a23} {a24} {a25} {a26} {a27} {a28} {a29} {a30} {a31} {d0} {d1} {d2} {d3} {d4} {d5} {d6} {d7} {d8} {d9} {d10} {d11} {d12} {d13} {d14} {d15} {d16} {d17} {d18} {d19} {d20} {d21} {d22} {d23} {d24} {d25} {d26} {d27} {d28} {d29} {d30} {d31} {d32} {d33} {d34} {d35} {d36} {d37} {d38} {d39} {d40} {d41} {d42} {d43} {d44} {d45} {d46} {d47} {d48} {d49} {d50} {d51} {d52} {d53} {d54} {d55} {d56} {d57} {d58} {d59} {d60} {d61} {d62} {d63}"], options(nostack));
    }
}

/// `wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16`: `d = a·B (+ d
/// when acc)` for the warpgroup (4 warps, 64 rows; this warp's 16 rows of A
/// in the `mma.m16n8k16` A-fragment layout, its 16 rows of D in 16
/// m16n8-accumulator layouts). B (16 × 128) is read from shared memory
/// through `desc`; `TRANS_B = 1`: B is N-major. Asynchronous: `d` and `a`
/// must not be touched before [`wgmma_wait0`].
#[inline(always)]
pub fn wgmma_m64n128k16_bf16<const TRANS_B: u32>(d: &mut [[f32; 4]; 16], a: [u32; 4], desc: u64, acc: bool) {
    unsafe {
        asm_acc!(d, ["{{ .reg .pred p; setp.ne.b32 p, {acc}, 0;",
             "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {{{d0}, {d1}, {d2}, {d3}, {d4}, {d5}, {d6}, {d7}, {d8}, {d9}, {d10}, {d11}, {d12}, {d13}, {d14}, {d15}, {d16}, {d17}, {d18}, {d19}, {d20}, {d21}, {d22}, {d23}, {d24}, {d25}, {d26}, {d27}, {d28}, {d29}, {d30}, {d31}, {d32}, {d33}, {d34}, {d35}, {d36}, {d37}, {d38}, {d39}, {d40}, {d41}, {d42}, {d43}, {d44}, {d45}, {d46}, {d47}, {d48}, {d49}, {d50}, {d51}, {d52}, {d53}, {d54}, {d55}, {d56}, {d57}, {d58}, {d59}, {d60}, {d61}, {d62}, {d63}}}, {{{a0}, {a1}, {a2}, {a3}}}, {desc}, p, 1, 1, {tb}; }}"],
             a0 = in(reg32) a[0], a1 = in(reg32) a[1], a2 = in(reg32) a[2], a3 = in(reg32) a[3],
             desc = in(reg64) desc, acc = in(reg32) acc as u32, tb = const TRANS_B,
             options(nostack));
    }
}

/// `wgmma.commit_group.sync.aligned`: closes the group of `wgmma` ops issued
/// since the last commit.
#[inline(always)]
pub fn wgmma_commit() {
    unsafe { asm!("wgmma.commit_group.sync.aligned;", options(nostack)) };
}

/// `wgmma.wait_group.sync.aligned 0`: waits for every committed `wgmma`
/// group. `d` (the results) and `a` (the register A fragments they read) are
/// tied to the wait, so the compiler neither reads `d` nor reuses `a`'s
/// registers earlier.
#[inline(always)]
pub fn wgmma_wait0(d: &mut [[f32; 4]; 16], a: &[[u32; 4]; 8]) {
    unsafe {
        asm_acc!(d, a = a, ["wgmma.wait_group.sync.aligned 0; // {d0} {d1} {d2} {d3} {d4} {d5} {d6} {d7} {d8} {d9} {d10} {d11} {d12} {d13} {d14} {d15} {d16} {d17} {d18} {d19} {d20} {d21} {d22} {d23} {d24} {d25} {d26} {d27} {d28} {d29} {d30} {d31} {d32} {d33} {d34} {d35} {d36} {d37} {d38} {d39} {d40} {d41} {d42} {d43} {d44} {d45} {d46} {d47} {d48} {d49} {d50} {d51} {d52} {d53} {d54} {d55} {d56} {d57} {d58} {d59} {d60} {d61} {d62} {d63} {a0} {a1} {a2} {a3} {a4} {a5} {a6} {a7} {a8} {a9} {a10} {a11} {a12} {a13} {a14} {a15} {a16} {a17} {a18} {a19} {a20} {a21} {a22} {a23} {a24} {a25} {a26} {a27} {a28} {a29} {a30} {a31}"], options(nostack));
    }
}

/// `fence.proxy.async.shared::cta`: this thread's earlier shared-memory
/// writes (`st.shared`, `cp.async`) become visible to the async proxy, which
/// `wgmma` reads its shared-memory operands through (a barrier follows).
#[inline(always)]
pub fn fence_proxy_async_shared() {
    unsafe { asm!("fence.proxy.async.shared::cta;", options(nostack)) };
}

// ---------------------------------------------------------------- unrolling

/// `unroll!(N, I => { .. })` repeats the block `N` times (N in 2, 4, 8, 16,
/// 32) with `I` bound to the constants `0..N`.
///
/// A register array may only be indexed by constants; LLVM's heuristics
/// refuse to unroll large loop bodies fully, which moves the array to local
/// memory (a stack frame in ptxas' report). This makes the unroll explicit.
#[macro_export]
macro_rules! unroll {
    (2, $i:ident => $body:block) => { $crate::unroll!(@ $i $body; 0 1) };
    (4, $i:ident => $body:block) => { $crate::unroll!(@ $i $body; 0 1 2 3) };
    (8, $i:ident => $body:block) => { $crate::unroll!(@ $i $body; 0 1 2 3 4 5 6 7) };
    (16, $i:ident => $body:block) => {
        $crate::unroll!(@ $i $body; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15)
    };
    (32, $i:ident => $body:block) => {
        $crate::unroll!(@ $i $body; 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15
                        16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31)
    };
    (@ $i:ident $body:block; $($n:literal)*) => {
        $( { #[allow(non_upper_case_globals)] const $i: usize = $n; $body } )*
    };
}

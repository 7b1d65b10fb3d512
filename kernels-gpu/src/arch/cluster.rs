//! Thread-block clusters and distributed shared memory (sm_90).

use core::arch::asm;

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

/// `barrier.cluster.arrive.relaxed.aligned`: this thread arrives at the
/// cluster barrier without publishing its memory writes (no fence: the
/// release form compiles to `MEMBAR.ALL.GPU` first). For a barrier that
/// only has to say "I am done reading the other CTAs' shared memory", e.g.
/// before a CTA exits; [`cluster_wait`] completes it. All threads of the
/// CTA must call it.
#[inline(always)]
pub fn cluster_arrive_relaxed() {
    unsafe { asm!("barrier.cluster.arrive.relaxed.aligned;", options(nostack)) }
}

/// `barrier.cluster.wait.acquire.aligned`: waits until every thread of the
/// cluster has arrived (after [`cluster_arrive_relaxed`]).
#[inline(always)]
pub fn cluster_wait() {
    unsafe { asm!("barrier.cluster.wait.acquire.aligned;", options(nostack)) }
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

/// `%cluster_nctarank`: CTAs in this CTA's cluster (1 without clusters).
#[inline(always)]
pub fn cluster_nctarank() -> u32 {
    let r: u32;
    unsafe {
        asm!("mov.u32 {r}, %cluster_nctarank;", r = out(reg32) r,
             options(nomem, nostack, pure));
    }
    r
}

/// `ld.shared::cluster.u32`: [`ld_shared_cluster_f32`] for a `u32`.
#[inline(always)]
pub unsafe fn ld_shared_cluster_u32(addr: u32) -> u32 {
    let r: u32;
    asm!("ld.shared::cluster.u32 {r}, [{a}];", r = out(reg32) r, a = in(reg32) addr,
         options(readonly, nostack));
    r
}

/// `ld.shared::cluster.v2.u32`: two consecutive `u32` of another CTA's
/// shared memory (an 8-byte aligned address from [`map_shared_rank`]).
#[inline(always)]
pub unsafe fn ld_shared_cluster_v2_u32(addr: u32) -> [u32; 2] {
    let (a, b): (u32, u32);
    asm!("ld.shared::cluster.v2.u32 {{{a}, {b}}}, [{p}];", a = out(reg32) a, b = out(reg32) b,
         p = in(reg32) addr, options(readonly, nostack));
    [a, b]
}

/// `ld.shared::cluster.u64`: [`ld_shared_cluster_f32`] for a `u64` (8-byte
/// aligned).
#[inline(always)]
pub unsafe fn ld_shared_cluster_u64(addr: u32) -> u64 {
    let r: u64;
    asm!("ld.shared::cluster.u64 {r}, [{a}];", r = out(reg64) r, a = in(reg32) addr,
         options(readonly, nostack));
    r
}

/// `st.shared::cluster.u64`: a store into another CTA's shared memory (an
/// address from [`map_shared_rank`]); visible to that CTA after the next
/// [`cluster_sync`].
#[inline(always)]
pub unsafe fn st_shared_cluster_u64(addr: u32, v: u64) {
    asm!("st.shared::cluster.u64 [{a}], {v};", a = in(reg32) addr, v = in(reg64) v,
         options(nostack));
}

/// `atom.shared::cluster.add.u32`: adds `v` at another CTA's shared address
/// `addr` (from [`map_shared_rank`]), returns the old value.
#[inline(always)]
pub unsafe fn atomic_add_shared_cluster_u32(addr: u32, v: u32) -> u32 {
    let r: u32;
    asm!("atom.shared::cluster.add.u32 {r}, [{a}], {v};", r = out(reg32) r, a = in(reg32) addr,
         v = in(reg32) v, options(nostack));
    r
}

//! Shared memory: the kernel's dynamic shared window and typed loads and
//! stores on 32-bit shared addresses (what `ld.shared`, `cp.async` and
//! `ldmatrix` take).

use core::arch::asm;

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

/// Shared address of field `$f` (a path such as `stages` or `merge.os`) of
/// the `#[repr(C)]` shared-memory map `$T` laid over the dynamic shared
/// memory: a kernel's map is a struct, so the compiler computes the offsets
/// and their sizes are checked where the map is defined.
#[macro_export]
macro_rules! smem_addr {
    ($T:ty, $($f:tt)+) => {
        $crate::arch::dynamic_smem() + core::mem::offset_of!($T, $($f)+) as u32
    };
}

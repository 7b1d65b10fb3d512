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

/// Typed scalar loads and stores on shared addresses, one pair per type:
/// `st_shared_T(addr, v)` (`st.shared.T`) and `ld_shared_T(addr)`
/// (`ld.shared.T`, a read: free to move across other reads, never across a
/// barrier or a store).
macro_rules! shared_scalars {
    ($($t:ty: $st:ident, $ld:ident, $ty:literal, $reg:ident;)+) => {$(
        #[doc = concat!("`st.shared.", $ty, "`")]
        #[inline(always)]
        pub unsafe fn $st(addr: u32, v: $t) {
            asm!(concat!("st.shared.", $ty, " [{a}], {v};"), a = in(reg32) addr, v = in($reg) v,
                 options(nostack));
        }

        #[doc = concat!("`ld.shared.", $ty, "`")]
        #[inline(always)]
        pub unsafe fn $ld(addr: u32) -> $t {
            let r: $t;
            asm!(concat!("ld.shared.", $ty, " {r}, [{a}];"), r = out($reg) r, a = in(reg32) addr,
                 options(readonly, nostack));
            r
        }
    )+};
}
shared_scalars! {
    f32: st_shared_f32, ld_shared_f32, "f32", reg32;
    u32: st_shared_u32, ld_shared_u32, "u32", reg32;
    u64: st_shared_u64, ld_shared_u64, "u64", reg64;
}

/// `atom.shared.add.u32`: adds `v` at `addr`, returns the old value.
#[inline(always)]
pub unsafe fn atomic_add_shared_u32(addr: u32, v: u32) -> u32 {
    let r: u32;
    asm!("atom.shared.add.u32 {r}, [{a}], {v};", r = out(reg32) r, a = in(reg32) addr,
         v = in(reg32) v, options(nostack));
    r
}

/// `red.shared.add.u32`: adds `v` at `addr`, no result (a histogram
/// count: no register waits for the old value).
#[inline(always)]
pub unsafe fn red_add_shared_u32(addr: u32, v: u32) {
    asm!("red.shared.add.u32 [{a}], {v};", a = in(reg32) addr, v = in(reg32) v, options(nostack));
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

/// `st.shared.v4.u32`: 16 bytes (16-byte aligned).
#[inline(always)]
pub unsafe fn st_shared_v4(addr: u32, v: [u32; 4]) {
    asm!("st.shared.v4.u32 [{p}], {{{a}, {b}, {c}, {d}}};", p = in(reg32) addr,
         a = in(reg32) v[0], b = in(reg32) v[1], c = in(reg32) v[2], d = in(reg32) v[3],
         options(nostack));
}

/// `st.shared.v4.u32` of zeros: clears 16 bytes (16-byte aligned).
#[inline(always)]
pub unsafe fn st_shared_zero16(addr: u32) {
    asm!("st.shared.v4.u32 [{a}], {{0, 0, 0, 0}};", a = in(reg32) addr, options(nostack));
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

//! Global memory: read-only (`.nc`) loads, vector stores, atomics, and
//! whole-record loads of the abi's work records.

use core::arch::asm;

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

/// Loads a whole work record of the abi (8, 16 or 32 bytes, aligned to its
/// size up to 16) with `ld.global.nc.v2` / `.v4` loads: one round trip
/// instead of a load per field.
#[inline(always)]
pub unsafe fn ld_record<T: Copy>(p: *const T) -> T {
    const {
        let (n, a) = (core::mem::size_of::<T>(), core::mem::align_of::<T>());
        assert!((n == 8 && a >= 8) || ((n == 16 || n == 32) && a >= 16));
    };
    let b = p as *const u8;
    let mut w = [[0u32; 4]; 2];
    if core::mem::size_of::<T>() == 8 {
        let [x, y] = ld_global_nc_v2(b);
        w[0] = [x, y, 0, 0];
    } else {
        w[0] = ld_global_nc_v4(b);
        if core::mem::size_of::<T>() == 32 {
            w[1] = ld_global_nc_v4(b.add(16));
        }
    }
    core::mem::transmute_copy(&w)
}

/// A scalar that kernels move to and from global memory with explicit
/// `.global` instructions ([`st_global`], [`ld_global`], [`ld_global_nc`]).
///
/// Pitfall: a plain Rust store through a pointer read from a parameter
/// struct is a *generic* `st` in PTX (the backend cannot tell it points to
/// global memory, as it can for pointer parameters), which ptxas must treat
/// as possibly aliasing shared memory. The explicit forms say what the
/// positional pointer parameters used to say. (Measured on the decode
/// kernel, H200, 2026-12-02: no difference in time either way.)
pub trait GlobalScalar: Copy {
    /// `st.global` of one value.
    unsafe fn st(p: *mut Self, v: Self);
    /// `ld.global` of one value (coherent: data this grid also writes).
    unsafe fn ld(p: *const Self) -> Self;
    /// `ld.global.nc` of one value (read-only for this grid's lifetime).
    unsafe fn ld_nc(p: *const Self) -> Self;
    /// `@c ld.global.nc` of one value, `or` where `c` is false.
    unsafe fn ld_nc_if(p: *const Self, c: bool, or: Self) -> Self;
}

macro_rules! global_scalar {
    ($($t:ty: $ty:literal, $reg:ident;)+) => {$(
        impl GlobalScalar for $t {
            #[inline(always)]
            unsafe fn st(p: *mut Self, v: Self) {
                asm!(concat!("st.global.", $ty, " [{p}], {v};"), p = in(reg64) p, v = in($reg) v,
                     options(nostack));
            }
            #[inline(always)]
            unsafe fn ld(p: *const Self) -> Self {
                let r: $t;
                asm!(concat!("ld.global.", $ty, " {r}, [{p}];"), r = out($reg) r, p = in(reg64) p,
                     options(readonly, nostack));
                r
            }
            #[inline(always)]
            unsafe fn ld_nc(p: *const Self) -> Self {
                let r: $t;
                asm!(concat!("ld.global.nc.", $ty, " {r}, [{p}];"), r = out($reg) r, p = in(reg64) p,
                     options(pure, readonly, nostack));
                r
            }
            #[inline(always)]
            unsafe fn ld_nc_if(p: *const Self, c: bool, or: Self) -> Self {
                let mut r: $t = or;
                asm!(concat!("{{ .reg .pred p; setp.ne.b32 p, {c}, 0; @p ld.global.nc.", $ty, " {r}, [{p}]; }}"),
                     r = inout($reg) r, c = in(reg32) c as u32, p = in(reg64) p,
                     options(readonly, nostack));
                r
            }
        }
    )+};
}
global_scalar! {
    f32: "f32", reg32;
    u32: "u32", reg32;
    i32: "s32", reg32;
    u16: "u16", reg16;
}

/// `*p = v` with `st.global` (see [`GlobalScalar`]).
#[inline(always)]
pub unsafe fn st_global<T: GlobalScalar>(p: *mut T, v: T) {
    T::st(p, v)
}

/// `*p` with `ld.global` (see [`GlobalScalar`]).
#[inline(always)]
pub unsafe fn ld_global<T: GlobalScalar>(p: *const T) -> T {
    T::ld(p)
}

/// `*p` with `ld.global.nc`: data no thread writes during the grid.
#[inline(always)]
pub unsafe fn ld_global_nc<T: GlobalScalar>(p: *const T) -> T {
    T::ld_nc(p)
}

/// `c ? *p : or` with one predicated `ld.global.nc` (no branch), `p` read
/// only where `c` holds: a conditional load that stays in the straight-line
/// code around it, so ptxas can issue it together with the loads there (the
/// decode kernel's slot id, in flight with its row record and Q). Not
/// `pure`: LLVM keeps it where it is written rather than sinking it into
/// the block that uses the value (the PTX is the same with `pure` today).
#[inline(always)]
pub unsafe fn ld_global_nc_if<T: GlobalScalar>(p: *const T, c: bool, or: T) -> T {
    T::ld_nc_if(p, c, or)
}

/// Stores a whole work record of the abi (8 or 16 bytes, aligned to its
/// size) with one `st.global.v2` / `.v4`.
#[inline(always)]
pub unsafe fn st_record<T: Copy>(p: *mut T, v: T) {
    const {
        let (n, a) = (core::mem::size_of::<T>(), core::mem::align_of::<T>());
        assert!((n == 8 && a >= 8) || (n == 16 && a >= 16));
    };
    let b = p as *mut u8;
    if core::mem::size_of::<T>() == 8 {
        let [x, y]: [u32; 2] = core::mem::transmute_copy(&v);
        asm!("st.global.v2.u32 [{p}], {{{a}, {b}}};", p = in(reg64) b, a = in(reg32) x,
             b = in(reg32) y, options(nostack));
    } else {
        st_global_v4(b, core::mem::transmute_copy(&v));
    }
}

//! Scalar arithmetic the kernels need as exact PTX instructions: IEEE
//! maxNum, fused multiply-add, the approximate `ex2`/`lg2`, bf16 conversions.

use core::arch::asm;

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

/// Four f32 rounded to e4m3 (`cvt.rn.satfinite.e4m3x2.f32`, twice: to
/// nearest, ties to even, out-of-range values to ±448, NaN to NaN), `b0`
/// in the lowest byte. (The instruction puts its first source in the upper
/// byte.)
#[inline(always)]
pub fn pack_e4m3x4(b0: f32, b1: f32, b2: f32, b3: f32) -> u32 {
    let r: u32;
    unsafe {
        asm!("{{ .reg .b16 lo, hi;\n",
             "cvt.rn.satfinite.e4m3x2.f32 lo, {b1}, {b0};\n",
             "cvt.rn.satfinite.e4m3x2.f32 hi, {b3}, {b2};\n",
             "mov.b32 {r}, {{lo, hi}}; }}",
             r = out(reg32) r, b0 = in(reg32) b0, b1 = in(reg32) b1, b2 = in(reg32) b2,
             b3 = in(reg32) b3, options(nomem, nostack, pure));
    }
    r
}

/// `prmt.b32 d, a, b, sel`: byte `i` of the result is byte `sel`'s nibble
/// `i` (0–7) of the pair `b:a` (0–3 from `a`, 4–7 from `b`).
#[inline(always)]
pub fn prmt(a: u32, b: u32, sel: u32) -> u32 {
    let r: u32;
    unsafe {
        asm!("prmt.b32 {r}, {a}, {b}, {s};", r = out(reg32) r, a = in(reg32) a, b = in(reg32) b,
             s = in(reg32) sel, options(nomem, nostack, pure));
    }
    r
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

/// `|x|` (`abs.f32`, clears the sign bit): ptxas folds it into the operand
/// of the FMA or add that uses it (`|R|` modifier), so `fma(|x|, w, c)`
/// costs one full-rate FFMA. NaN stays NaN.
#[inline(always)]
pub fn fabs(x: f32) -> f32 {
    x.abs()
}

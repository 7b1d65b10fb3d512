//! Warp-level tensor cores: `ldmatrix` and `mma.sync` (bf16, m16n8k16).

use core::arch::asm;

/// The two `ldmatrix.x4` forms, from one template (`$trans`: `""` or
/// `".trans"`). Warp-synchronous: side-effecting asm, never moved.
macro_rules! ldmatrix_x4 {
    ($(#[$doc:meta])* $name:ident, $trans:literal) => {
        $(#[$doc])*
        #[inline(always)]
        pub unsafe fn $name(addr: u32) -> [u32; 4] {
            let (a, b, c, d): (u32, u32, u32, u32);
            asm!(concat!("ldmatrix.sync.aligned.m8n8.x4", $trans, ".shared.b16 {{{a}, {b}, {c}, {d}}}, [{p}];"),
                 a = out(reg32) a, b = out(reg32) b, c = out(reg32) c, d = out(reg32) d,
                 p = in(reg32) addr, options(nostack));
            [a, b, c, d]
        }
    };
}

ldmatrix_x4!(
    /// `ldmatrix.sync.aligned.m8n8.x4.shared.b16`: four 8×8 b16 matrices; lane
    /// `l` gives the row address for matrix `l / 8`, row `l % 8`; register `i`
    /// of every lane receives its fragment of matrix `i`.
    ldmatrix_x4, ""
);
ldmatrix_x4!(
    /// `ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16`: as [`ldmatrix_x4`],
    /// each matrix transposed (rows of the shared tile become fragment
    /// columns: the B operand of `P·V` from a row-major `[key][dim]` V tile).
    ldmatrix_x4_trans, ".trans"
);

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

/// The two `stmatrix.x4` forms, from one template (`$trans`: `""` or
/// `".trans"`). Warp-synchronous: side-effecting asm, never moved.
macro_rules! stmatrix_x4 {
    ($(#[$doc:meta])* $name:ident, $trans:literal) => {
        $(#[$doc])*
        #[inline(always)]
        pub unsafe fn $name(addr: u32, v: [u32; 4]) {
            asm!(concat!("stmatrix.sync.aligned.m8n8.x4", $trans, ".shared.b16 [{p}], {{{a}, {b}, {c}, {d}}};"),
                 p = in(reg32) addr, a = in(reg32) v[0], b = in(reg32) v[1], c = in(reg32) v[2],
                 d = in(reg32) v[3], options(nostack));
        }
    };
}

stmatrix_x4!(
    /// `stmatrix.sync.aligned.m8n8.x4.shared.b16` (sm_90): the inverse of
    /// [`ldmatrix_x4`]: register `i` of every lane holds its fragment of 8×8
    /// matrix `i`; lane `l` gives the row address for matrix `l / 8`, row
    /// `l % 8`. Stores an accumulator tile (packed bf16) to shared memory in
    /// four instructions instead of 16 scalar stores.
    stmatrix_x4, ""
);
stmatrix_x4!(
    /// `stmatrix.sync.aligned.m8n8.x4.trans.shared.b16` (sm_90): as
    /// [`stmatrix_x4`], each matrix transposed on its way out: the fragment
    /// element (row `l / 4`, column `2 (l % 4) + e`) of lane `l` lands in
    /// shared row `2 (l % 4) + e` (the address lane `8 i + 2 (l % 4) + e`
    /// gave), b16 column `l / 4`. With [`ldmatrix_x4`] and a byte permute
    /// between, a byte-wide (e4m3) tile transpose: 3 instructions for 512
    /// bytes a warp. Pitfall: the transpose is of b16 elements; bytes inside
    /// one stay in order.
    stmatrix_x4_trans, ".trans"
);

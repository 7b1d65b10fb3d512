//! Warpgroup MMA (`wgmma`, sm_90a): shared-memory matrix descriptors, the
//! fence / commit / wait protocol and the MMA shapes.

use core::arch::asm;

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

/// Calls `$m!($($x)*)` with the operand numbers of a 64-register
/// accumulator (`[[f32; 4]; 16]`, register `i` is `d[i / 4][i % 4]`): the
/// list every `M64N128` wrapper below binds its accumulator from.
macro_rules! with_regs {
    ($m:ident!($($x:tt)*)) => {
        $m!($($x)* [0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63])
    };
}

/// The operand list of a 32-register (`M64N64`) accumulator
/// (`[[f32; 4]; 8]`), for [`mma_async`].
macro_rules! with_regs_n64 {
    ($m:ident!($($x:tt)*)) => {
        $m!($($x)* [0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31])
    };
}

/// `wgmma.mma_async` of one shape: the accumulator vector `{d0, .., d63}`
/// is bound from the register list; `$pre` comes before it, `$post` (the A
/// and B operands and immediates, with their named operands `$ops`) after.
macro_rules! mma_async {
    ($shape:expr, $post:literal, $d:ident, ($($ops:tt)*), [$first:literal $($i:literal)*]) => {
        asm!(concat!("{{ .reg .pred p; setp.ne.b32 p, {acc}, 0;\n",
                     "wgmma.mma_async.sync.aligned.", $shape,
                     " {{{", stringify!($first), "}", $(", {", stringify!($i), "}",)* "}}, ",
                     $post, "; }}"),
             inout(reg32) $d[$first / 4][$first % 4], $(inout(reg32) $d[$i / 4][$i % 4],)*
             $($ops)*)
    };
}

/// The `wgmma.mma_async` shapes, one row each: `M64N128` accumulators (64
/// f32 registers per thread: this warp's 16 rows of D in 16 m16n8
/// accumulator layouts), `d = A·B (+ d when acc)` for the warpgroup (4 warps,
/// 64 rows). Asynchronous: `d` and register `a` must not be touched before
/// [`wgmma_wait`]. Other N add a register list to [`with_regs`] and rows here.
///
/// - `_rs`: A from registers (this warp's 16 rows in the `mma.m16n8k16` A
///   fragment layout; for e4m3 the k32 layout, 4 bytes a register), B from
///   shared memory through `desc`.
/// - `_ss`: A and B from shared memory through `a_desc` / `b_desc`.
/// - `TRANS_B = 1` (bf16 only): B is N-major (MN-major); 0: K-major.
///   `TRANS_A` likewise for shared-memory A. FP8 `wgmma` has no transpose:
///   both operands must be K-major.
macro_rules! wgmma_shapes {
    ($(
        $(#[$doc:meta])*
        fn $name:ident<$($c:ident),*>($($arg:ident: $ty:ty),*) = $shape:literal, $post:literal, ($($ops:tt)*);
    )+) => {$(
        $(#[$doc])*
        #[inline(always)]
        pub fn $name<$(const $c: u32),*>(d: &mut [[f32; 4]; 16], $($arg: $ty,)* acc: bool) {
            unsafe {
                with_regs!(mma_async!($shape, $post, d,
                    ($($ops)* acc = in(reg32) acc as u32, options(nostack)),))
            }
        }
    )+};
}

wgmma_shapes! {
    /// `m64n128k16.f32.bf16.bf16`, A from registers.
    fn wgmma_m64n128k16_bf16<TRANS_B>(a: [u32; 4], desc: u64)
        = "m64n128k16.f32.bf16.bf16", "{{{a0}, {a1}, {a2}, {a3}}}, {desc}, p, 1, 1, {tb}",
        (a0 = in(reg32) a[0], a1 = in(reg32) a[1], a2 = in(reg32) a[2], a3 = in(reg32) a[3],
         desc = in(reg64) desc, tb = const TRANS_B,);
    /// `m64n128k16.f32.bf16.bf16`, A and B from shared memory.
    fn wgmma_m64n128k16_bf16_ss<TRANS_A, TRANS_B>(a_desc: u64, b_desc: u64)
        = "m64n128k16.f32.bf16.bf16", "{ad}, {bd}, p, 1, 1, {ta}, {tb}",
        (ad = in(reg64) a_desc, bd = in(reg64) b_desc, ta = const TRANS_A, tb = const TRANS_B,);
    /// `m64n128k32.f32.e4m3.e4m3`, A from registers (both operands K-major).
    fn wgmma_m64n128k32_e4m3<>(a: [u32; 4], desc: u64)
        = "m64n128k32.f32.e4m3.e4m3", "{{{a0}, {a1}, {a2}, {a3}}}, {desc}, p, 1, 1",
        (a0 = in(reg32) a[0], a1 = in(reg32) a[1], a2 = in(reg32) a[2], a3 = in(reg32) a[3],
         desc = in(reg64) desc,);
    /// `m64n128k32.f32.e4m3.e4m3`, A and B from shared memory (K-major).
    fn wgmma_m64n128k32_e4m3_ss<>(a_desc: u64, b_desc: u64)
        = "m64n128k32.f32.e4m3.e4m3", "{ad}, {bd}, p, 1, 1",
        (ad = in(reg64) a_desc, bd = in(reg64) b_desc,);
}

/// `m64n64k32.f32.e4m3.e4m3`, A from registers (both operands K-major):
/// a 32-register accumulator (this warp's 16 rows in 8 m16n8 layouts).
#[inline(always)]
pub fn wgmma_m64n64k32_e4m3(d: &mut [[f32; 4]; 8], a: [u32; 4], desc: u64, acc: bool) {
    unsafe {
        with_regs_n64!(mma_async!("m64n64k32.f32.e4m3.e4m3", "{{{a0}, {a1}, {a2}, {a3}}}, {desc}, p, 1, 1", d,
            (a0 = in(reg32) a[0], a1 = in(reg32) a[1], a2 = in(reg32) a[2], a3 = in(reg32) a[3],
             desc = in(reg64) desc, acc = in(reg32) acc as u32, options(nostack)),))
    }
}

/// `wgmma.commit_group.sync.aligned`: closes the group of `wgmma` ops issued
/// since the last commit.
#[inline(always)]
pub fn wgmma_commit() {
    unsafe { asm!("wgmma.commit_group.sync.aligned;", options(nostack)) };
}

/// `fence.proxy.async.shared::cta`: this thread's earlier shared-memory
/// writes (`st.shared`, `cp.async`) become visible to the async proxy, which
/// `wgmma` reads its shared-memory operands through (a barrier follows).
#[inline(always)]
pub fn fence_proxy_async_shared() {
    unsafe { asm!("fence.proxy.async.shared::cta;", options(nostack)) };
}

/// `wgmma.fence.sync.aligned`: orders this warp's earlier register writes
/// to the accumulators `d` and the A fragments `a` (register A; [`NO_A`]
/// for shared-memory A) before the `wgmma` ops that follow. Both are tied
/// to the fence ([`Regs`]) so the compiler keeps that order.
#[inline(always)]
pub fn wgmma_fence<D: Regs, A: Regs>(d: &mut D, a: &A) {
    d.tie();
    a.hold();
    unsafe { asm!("wgmma.fence.sync.aligned;", options(nostack)) };
}

/// `wgmma.wait_group.sync.aligned PENDING`: waits until at most `PENDING`
/// of the newest committed groups are still in flight (groups complete in
/// commit order). `d` (the finished products' results) and `a` (the A
/// fragments they read) are tied to the wait, so the compiler neither reads
/// `d` nor reuses `a`'s registers earlier. With `PENDING` > 0 the younger
/// groups' registers must stay untouched until a later wait (ptxas
/// serializes the `wgmma`s, with a warning, where code touches them
/// earlier).
#[inline(always)]
pub fn wgmma_wait<const PENDING: u32, D: Regs, A: Regs>(d: &mut D, a: &A) {
    unsafe { asm!("wgmma.wait_group.sync.aligned {n};", n = const PENDING, options(nostack)) };
    d.tie();
    a.hold();
}

/// No A fragments: [`wgmma_fence`] / [`wgmma_wait`] of a shared-memory-A
/// product.
pub const NO_A: [u32; 0] = [];

/// Registers a `wgmma` reads or writes asynchronously (accumulators, A
/// fragments of any width), tied to the neighbouring [`wgmma_fence`] or
/// [`wgmma_wait`] by side-effecting `asm!`s (one per 4 registers) that the
/// compiler keeps in order with the fence or wait: a `tie` before a fence
/// keeps every earlier write above it, one after a wait every later read
/// below it; a `hold` after a wait keeps registers a product reads alive
/// (and unreused) until it.
pub trait Regs {
    /// Reads and writes every register.
    fn tie(&mut self);
    /// Reads every register.
    fn hold(&self);
}

/// [`Regs`] for `[[T; 4]; N]` (accumulators, 16-byte A fragments): one
/// `asm!` per 4 registers.
macro_rules! regs_x4 {
    ($($t:ty),+) => {$(
        impl<const N: usize> Regs for [[$t; 4]; N] {
            #[inline(always)]
            fn tie(&mut self) {
                crate::unroll_to!(N, J => {
                    let d = &mut self[J];
                    unsafe {
                        asm!("// tie {0} {1} {2} {3}", inout(reg32) d[0], inout(reg32) d[1],
                             inout(reg32) d[2], inout(reg32) d[3], options(nostack))
                    };
                });
            }
            #[inline(always)]
            fn hold(&self) {
                crate::unroll_to!(N, J => {
                    let d = &self[J];
                    unsafe {
                        asm!("// hold {0} {1} {2} {3}", in(reg32) d[0], in(reg32) d[1],
                             in(reg32) d[2], in(reg32) d[3], options(nostack))
                    };
                });
            }
        }
    )+};
}

regs_x4!(f32, u32);

impl<const N: usize> Regs for [[u32; 2]; N] {
    #[inline(always)]
    fn tie(&mut self) {
        crate::unroll_to!(N, J => {
            let d = &mut self[J];
            unsafe { asm!("// tie {0} {1}", inout(reg32) d[0], inout(reg32) d[1], options(nostack)) };
        });
    }
    #[inline(always)]
    fn hold(&self) {
        crate::unroll_to!(N, J => {
            let d = &self[J];
            unsafe { asm!("// hold {0} {1}", in(reg32) d[0], in(reg32) d[1], options(nostack)) };
        });
    }
}

impl<const N: usize> Regs for [u32; N] {
    #[inline(always)]
    fn tie(&mut self) {
        crate::unroll_to!(N, J => {
            unsafe { asm!("// tie {0}", inout(reg32) self[J], options(nostack)) };
        });
    }
    #[inline(always)]
    fn hold(&self) {
        crate::unroll_to!(N, J => {
            unsafe { asm!("// hold {0}", in(reg32) self[J], options(nostack)) };
        });
    }
}

/// The `wgmma` shapes of S = Q Kᵀ over a key tile of `8 N` keys
/// (`[[f32; 4]; N]`, n-tile `j` the keys `8 j .. 8 j + 8`): K = 128 and
/// wider than the `M64N128` rows above (FlashAttention-3's key tiles of
/// 176 bf16 and 224 e4m3 keys). Both operands K-major, from shared
/// memory. N = 128 is [`wgmma_m64n128k16_bf16_ss`] and
/// [`wgmma_m64n128k32_e4m3_ss`]; other N add a row to `score_acc!`.
pub trait ScoreAcc: Copy {
    /// `m64nNk16.f32.bf16.bf16`.
    fn bf16_ss(&mut self, a_desc: u64, b_desc: u64, acc: bool);
    /// `m64nNk32.f32.e4m3.e4m3`.
    fn e4m3_ss(&mut self, a_desc: u64, b_desc: u64, acc: bool);
}

impl ScoreAcc for [[f32; 4]; 16] {
    #[inline(always)]
    fn bf16_ss(&mut self, a_desc: u64, b_desc: u64, acc: bool) {
        wgmma_m64n128k16_bf16_ss::<0, 0>(self, a_desc, b_desc, acc);
    }
    #[inline(always)]
    fn e4m3_ss(&mut self, a_desc: u64, b_desc: u64, acc: bool) {
        wgmma_m64n128k32_e4m3_ss(self, a_desc, b_desc, acc);
    }
}

macro_rules! score_acc {
    ($($n:literal, $nt:literal, [$($i:literal)*];)+) => {$(
        impl ScoreAcc for [[f32; 4]; $nt] {
            #[inline(always)]
            fn bf16_ss(&mut self, a_desc: u64, b_desc: u64, acc: bool) {
                let d = self;
                unsafe {
                    mma_async!(concat!("m64n", $n, "k16.f32.bf16.bf16"), "{ad}, {bd}, p, 1, 1, 0, 0", d,
                        (ad = in(reg64) a_desc, bd = in(reg64) b_desc, acc = in(reg32) acc as u32, options(nostack)),
                        [$($i)*])
                }
            }
            #[inline(always)]
            fn e4m3_ss(&mut self, a_desc: u64, b_desc: u64, acc: bool) {
                let d = self;
                unsafe {
                    mma_async!(concat!("m64n", $n, "k32.f32.e4m3.e4m3"), "{ad}, {bd}, p, 1, 1", d,
                        (ad = in(reg64) a_desc, bd = in(reg64) b_desc, acc = in(reg32) acc as u32, options(nostack)),
                        [$($i)*])
                }
            }
        }
    )+};
}

score_acc! {
    176, 22, [0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63 64 65 66 67 68 69 70 71 72 73 74 75 76 77 78 79 80 81 82 83 84 85 86 87];
    192, 24, [0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56 57 58 59 60 61 62 63 64 65 66 67 68 69 70 71 72 73 74 75 76 77 78 79 80 81 82 83 84 85 86 87 88 89 90 91 92 93 94 95];
}

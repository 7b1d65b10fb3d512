//! `mma.m16n8k16` A fragments of bf16 rows of 128 dims, loaded straight from
//! global memory (query rows: each is read once, so staging them in shared
//! memory would only add a round trip).

use crate::arch::ld_global_nc_u32;

/// Loads this thread's part of one row of an A fragment set: row `g` (`half`
/// 0) or `g + 8` (`half` 1) of a 16-row m-tile, for all 8 k-steps: registers
/// `a[ks][half]` (dims `16 ks + 2c`, `+1`) and `a[ks][2 + half]` (`+8`).
/// `xor` flips bits of every pair (`0x8000_8000` negates both bf16).
/// `c = lane % 4`.
#[inline(always)]
pub unsafe fn load_row_frags(a: &mut [[u32; 4]; 8], half: usize, qrow: *const u16, c: u32, xor: u32) {
    crate::unroll!(8, KS => {
        let k0 = KS * 16 + 2 * c as usize;
        a[KS][half] = ld_global_nc_u32(qrow.add(k0) as *const u32) ^ xor;
        a[KS][2 + half] = ld_global_nc_u32(qrow.add(k0 + 8) as *const u32) ^ xor;
    });
}

//! The paged block loader: a block of `ROWS` consecutive tokens of one head
//! of a paged cache (MAX's layout, [`PagedKv`]) copied into a swizzled
//! shared-memory tile with `cp.async`, parameterised by the rows, the bytes
//! of a row (head_dim × element size: 256 for bf16 × 128, 128 for e4m3 ×
//! 128) and the tile layout.
//!
//! Safety rule of every user: page ids come from [`page_of`] (clamped to
//! the pool), so corrupt page tables cannot address outside it.

use sparse_attn_abi::PagedKv;

use super::swizzle::TileLayout;
use crate::arch::{cp_async_16, ld_global_nc_u32, st_shared_zero16};

/// Pool page of logical page `blk` of sequence `seq`:
/// `lookup[seq * max_pages + blk]`, clamped below `num_pages`
/// (`num_pages >= 1`: callers return early on an empty pool).
#[inline(always)]
pub unsafe fn page_of(lookup: *const u32, cache: &PagedKv, seq: u32, blk: u32) -> u32 {
    let at = seq as usize * cache.max_pages as usize + blk as usize;
    ld_global_nc_u32(lookup.add(at)).min(cache.num_pages - 1)
}

/// One block of one head: its first row's address and the heads of a
/// token (consecutive tokens are `n_heads * ROW_BYTES` bytes apart).
pub struct PagedBlock<const ROWS: u32, const ROW_BYTES: u32> {
    src: *const u8,
    n_heads: u32,
}

impl<const ROWS: u32, const ROW_BYTES: u32> PagedBlock<ROWS, ROW_BYTES> {
    /// 16-byte chunks per row.
    const CHUNKS: u32 = ROW_BYTES / 16;

    /// The block in page `page` of the pool `pool` (elements of `E`), at
    /// the plane `plane_off` (the layer's K or V, elements into the page)
    /// and head `head` of `n_heads` (tokens are `n_heads` rows apart;
    /// `n_heads < 2^32 / ROWS`, see [`PagedBlock::load`]).
    #[inline(always)]
    pub unsafe fn new<E>(pool: *const E, cache: &PagedKv, page: u32, plane_off: u64, head: u32, n_heads: u32) -> Self {
        let head_elems = (ROW_BYTES as usize) / core::mem::size_of::<E>();
        let first = page as usize * cache.page_stride as usize + plane_off as usize + head as usize * head_elems;
        PagedBlock { src: pool.add(first) as *const u8, n_heads }
    }

    /// Issues the block's `cp.async` copies into the tile at `dst` (layout
    /// `L`): thread `tid < THREADS` moves chunk `tid % CHUNKS` of rows
    /// `tid / CHUNKS`, then every `THREADS / CHUNKS` rows after it. The
    /// caller commits and waits.
    ///
    /// A constant trip count, so the copies unroll: written as
    /// `while ch < chunks`, LLVM kept the decode kernel's copy loops rolled
    /// (27 `LDGSTS` in its SASS, 48 unrolled), and the compute-bound
    /// query-major prefill case ran 11% slower than before the tile layer.
    /// Rows stepped explicitly (not `ch / CHUNKS` per copy): the decode
    /// kernel computed all 16 swizzled addresses of a block before its first
    /// barrier (SASS `BAR` at instruction 411, 214 before the tile layer),
    /// and `msa-decode-b1-128k` ran 2.3% slower; stepped, the `BAR` is at 295.
    ///
    /// Row `r` starts `r * n_heads` pool rows in, multiplied in 32 bits
    /// (`n_heads < 2^32 / ROWS`) and scaled by `ROW_BYTES` in 64: ptxas
    /// folds the scale and the add into one `IMAD.WIDE.U32` a copy and keeps
    /// the loop-invariant part as 16 32-bit row offsets. A 64-bit `r *
    /// token_stride` left 16 64-bit products (73 instructions before the
    /// decode kernel's first copy, 32 registers) and 2 instructions a copy;
    /// now 22 instructions, 221 registers instead of 242, and the decode
    /// main loop is 488 instructions a half-step instead of 504.
    #[inline(always)]
    pub unsafe fn load<L: TileLayout, const THREADS: u32>(&self, dst: u32, tid: u32) {
        const { assert!(THREADS % Self::CHUNKS == 0 && ROWS % (THREADS / Self::CHUNKS) == 0) };
        let step = THREADS / Self::CHUNKS;
        let (r0, cc) = (tid / Self::CHUNKS, tid % Self::CHUNKS);
        for i in 0..ROWS / step {
            let r = r0 + i * step;
            let row = (r * self.n_heads) as usize * ROW_BYTES as usize;
            cp_async_16(dst + L::at(r, cc), self.src.add(row + cc as usize * 16));
        }
    }

    /// Zeroes rows `from .. ROWS` of the tile at `dst`: the unwritten tail
    /// of a sequence's last page (its P is 0, but 0 · NaN is NaN in `P V`,
    /// so garbage there must not reach the product). The caller syncs.
    #[inline(always)]
    pub unsafe fn zero_tail<L: TileLayout, const THREADS: u32>(dst: u32, from: u32, tid: u32) {
        let mut ch = from * Self::CHUNKS + tid;
        while ch < ROWS * Self::CHUNKS {
            st_shared_zero16(dst + L::at(ch / Self::CHUNKS, ch % Self::CHUNKS));
            ch += THREADS;
        }
    }
}

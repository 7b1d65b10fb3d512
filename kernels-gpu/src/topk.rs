//! The standalone top-k ([`TopkParams`]): the `k` largest entries of each
//! row of an f32 matrix, as indices in descending order of score, ties to
//! the lower index, `-1` past the row's entries. NaN ranks below every
//! number (it is still an entry); `-0.0` ties with `+0.0`.
//!
//! One thread-block cluster per row, CTA `c` taking entries `c · chunk ..`
//! of it:
//! - **select** ([`cluster_radix_select`]): the cut above which exactly
//!   `min(k, entries)` selection keys lie, the same in every CTA; each pass
//!   reads the CTA's entries again (from L2 after the first) as 32-bit
//!   [`radix_key`]s;
//! - **collect**: each CTA stages its kept keys, then copies them to the
//!   first CTA's sort buffer through distributed shared memory, after the
//!   lower ranks' (in any order inside a CTA, which the sort removes);
//! - **sort and write** (first CTA): a bitonic sort of the kept keys,
//!   descending, then the indices.
//!
//! Deterministic: the kept set is defined by the keys alone, and the sort
//! orders it.

use core::mem::size_of;

use sparse_attn_abi::topk::*;

use crate::arch::*;
use crate::tile::topk::{
    cluster_radix_select, for_entries, radix_sel_index, radix_sel_key, RadixSmem, RADIX_BINS,
};

const _: () = assert!(TOPK_THREADS == RADIX_BINS && TOPK_INDEX_BITS == crate::tile::topk::RADIX_INDEX_BITS);

/// Shared memory of the kernel.
#[repr(C)]
struct Smem {
    sorted: [u64; TOPK_MAX_K as usize],
    hist: [[u32; TOPK_BINS as usize]; 2],
    sums: [u32; 8],
    pick: [u32; 4],
    /// Keys this CTA kept (staged in its `sorted`).
    kept: u32,
}
const _: () = assert!(size_of::<Smem>() as u32 <= TOPK_SMEM);

/// This CTA's part of a row: entries `j0 .. j0 + len`.
struct Part {
    src: *const f32,
    j0: u32,
    len: u32,
}

impl Part {
    /// Score of entry `e < len`.
    #[inline(always)]
    fn score(&self, e: u32) -> f32 {
        // SAFETY: `e < len`: inside the row.
        unsafe { ld_global_nc(self.src.add(e as usize)) }
    }
}

#[no_mangle]
pub unsafe extern "ptx-kernel" fn topk_rows(p: TopkParams) {
    // Before any read: with programmatic launch the scores' producer (the
    // lightning indexer's logits kernel) may still be running. Missing
    // here, the indexer's top-k read half-written logits.
    grid_prologue();
    let ncta = cluster_nctarank();
    let row = block_idx_x() / ncta;
    if row >= p.rows || p.k == 0 {
        return; // the whole cluster: its CTAs share the row
    }
    let rank = cluster_ctarank();
    let k = p.k.min(TOPK_MAX_K);
    let n = if p.row_lens.is_null() { p.n } else { ld_global_nc(p.row_lens.ptr().add(row as usize)).min(p.n) };
    let j0 = rank * p.chunk;
    let part = Part {
        src: p.scores.ptr().add(row as usize * p.row_stride as usize + j0 as usize),
        j0,
        len: n.saturating_sub(j0).min(p.chunk),
    };
    let sm = RadixSmem {
        hist: crate::smem_addr!(Smem, hist),
        sums: crate::smem_addr!(Smem, sums),
        pick: crate::smem_addr!(Smem, pick),
    };
    st_shared_u32(sm.hist + 4 * thread_idx_x(), 0);
    if thread_idx_x() == 0 {
        st_shared_u32(crate::smem_addr!(Smem, kept), 0);
    }
    sync_threads();
    let cut = cluster_radix_select(part.len, j0, k, sm, |e| part.score(e));
    let m = collect(&part, |r, j| cut.keeps(r, j));
    cluster_sync(); // every kept key is in the first CTA
    if rank == 0 {
        sort_and_write(&p, row, m.min(k));
    }
}

/// Gathers the kept keys in the first CTA's `sorted`: each CTA stages its
/// own in its `sorted` (slots from a shared-memory counter, any order),
/// then copies them to the first CTA after those of the lower ranks (the
/// first CTA's are in place). Returns how many the row kept (at most
/// `TOPK_MAX_K`: the select keeps at most `k`).
///
/// (Slots taken with one distributed-shared-memory atomic per key on the
/// first CTA's counter instead, and the row's loads one at a time:
/// `topk-1x128k` 47.1 µs, H200, 2026-12-02.)
#[inline(always)]
unsafe fn collect(part: &Part, keeps: impl Fn(u32, u32) -> bool) -> u32 {
    let (t, rank) = (thread_idx_x(), cluster_ctarank());
    let (sorted, kept) = (crate::smem_addr!(Smem, sorted), crate::smem_addr!(Smem, kept));
    for_entries(part.len, &|e| part.score(e), |e, r| {
        if keeps(r, part.j0 + e) {
            let slot = atomic_add_shared_u32(kept, 1);
            if slot < TOPK_MAX_K {
                st_shared_u64(sorted + 8 * slot, radix_sel_key(r, part.j0 + e));
            }
        }
    });
    cluster_sync(); // every CTA's count is final
    let (mut base, mut total) = (0, 0);
    for q in 0..cluster_nctarank() {
        let c = ld_shared_cluster_u32(map_shared_rank(kept, q));
        base += if q < rank { c } else { 0 };
        total += c;
    }
    let mine = ld_shared_u32(kept).min(TOPK_MAX_K);
    if rank > 0 {
        let dst = map_shared_rank(sorted, 0);
        let mut i = t;
        while i < mine && base + i < TOPK_MAX_K {
            st_shared_cluster_u64(dst + 8 * (base + i), ld_shared_u64(sorted + 8 * i));
            i += TOPK_THREADS;
        }
    }
    total.min(TOPK_MAX_K)
}

/// First CTA: sorts the `m` kept keys (descending; the power-of-two tail
/// padded with 0, below every key) and writes the row's `k` indices, `-1`
/// past them.
#[inline(always)]
unsafe fn sort_and_write(p: &TopkParams, row: u32, m: u32) {
    let t = thread_idx_x();
    let sorted = crate::smem_addr!(Smem, sorted);
    let width = m.max(2).next_power_of_two();
    let mut i = m + t;
    while i < width {
        st_shared_u64(sorted + 8 * i, 0);
        i += TOPK_THREADS;
    }
    sync_threads();
    bitonic_desc(sorted, width);
    let out = p.out.ptr().add(row as usize * p.k as usize);
    let mut s = t;
    while s < p.k {
        let v = if s < m { radix_sel_index(ld_shared_u64(sorted + 8 * s)) as i32 } else { -1 };
        st_global(out.add(s as usize), v);
        s += TOPK_THREADS;
    }
}

/// Bitonic sort, descending, of the `width` (a power of two, at most
/// [`TOPK_MAX_K`]) u64 keys at the shared address `a`, by the whole CTA.
/// (Strides tracked as shifts instead of the divisions by a run-time
/// stride below: `topk-1x128k` 46.4 µs against 38.5, H200, 2026-12-02.)
#[inline(always)]
unsafe fn bitonic_desc(a: u32, width: u32) {
    const PAIRS: usize = (TOPK_MAX_K / 2 / TOPK_THREADS) as usize;
    const _: () = assert!(PAIRS == 4);
    let t = thread_idx_x();
    let mut size = 2;
    while size <= width {
        let mut stride = size / 2;
        while stride > 0 {
            // A thread's pairs (at most 4) are independent: all their
            // loads first.
            let mut x = [0u64; PAIRS];
            let mut y = [0u64; PAIRS];
            crate::unroll!(4, P => {
                let i = t + P as u32 * TOPK_THREADS;
                let lo = 2 * stride * (i / stride) + i % stride;
                if i < width / 2 {
                    (x[P], y[P]) = (ld_shared_u64(a + 8 * lo), ld_shared_u64(a + 8 * (lo + stride)));
                }
            });
            crate::unroll!(4, P => {
                let i = t + P as u32 * TOPK_THREADS;
                let lo = 2 * stride * (i / stride) + i % stride;
                // Descending runs where `lo & size == 0`: the last merge is
                // all descending.
                if i < width / 2 && (x[P] < y[P]) == (lo & size == 0) {
                    st_shared_u64(a + 8 * lo, y[P]);
                    st_shared_u64(a + 8 * (lo + stride), x[P]);
                }
            });
            sync_threads();
            stride /= 2;
        }
        size *= 2;
    }
}

//! A CTA's chunk of an f32 row as selection keys ([`KeySet`]s for the radix
//! select): read with 16-byte loads, [`BATCH`] entries a thread in flight
//! at once, as [`radix_key`]s in registers.
//!
//! - [`RowChunk`]: the chunk read again from memory on every pass (L2 for a
//!   row that fits there);
//! - [`ResidentChunk`]: a chunk of at most [`RESIDENT`] entries, read once
//!   and held in registers (32 a thread);
//! - [`SmemKeys`]: keys gathered in shared memory.
//!
//! The row need not be 16-byte aligned: the chunk's vectors start at the
//! aligned address at or before its first entry (the `mis` entries before
//! it are read and dropped), and the one vector that would reach past the
//! row's readable memory is read element by element.

use crate::arch::{ld_global_nc, ld_global_nc_v4, ld_shared_u64, opaque_u32, thread_idx_x};
use crate::tile::radix::{radix_key, radix_sel_key, KeySet, THREADS};

/// Vectors (4 entries) a thread loads at once.
const VECS: u32 = 8;
/// Entries a thread holds from one batch of loads.
pub const BATCH: u32 = 4 * VECS;
/// Entries of a CTA's batch, and the most a [`ResidentChunk`] holds.
pub const RESIDENT: u32 = BATCH * THREADS;
/// A thread's radix keys of one batch (0: no entry).
pub type Batch = [u32; BATCH as usize];

/// Entries `j0 .. j0 + len` of a row, read from global memory.
#[derive(Clone, Copy)]
pub struct RowChunk {
    /// Entry `j0` of the row.
    first: *const f32,
    /// The 16-byte aligned address at or before `first`.
    vbase: *const u8,
    /// Entries between `vbase` and `first`.
    mis: u32,
    j0: u32,
    len: u32,
    /// Vectors from `vbase` that hold the entries.
    nvec: u32,
    /// Vectors from `vbase` wholly inside the row's readable memory.
    safe: u32,
}

impl RowChunk {
    /// Entries `j0 .. j0 + len` of the row at `row`, whose first `readable`
    /// entries may be read (`j0 + len <= readable`).
    ///
    /// # Safety
    /// `row[.. readable]` is readable global memory for the whole grid and
    /// nobody writes it; the memory from the 16-byte aligned address at or
    /// before `row` is readable too (the row lies in a 16-byte aligned
    /// buffer).
    #[inline(always)]
    pub unsafe fn new(row: *const f32, j0: u32, len: u32, readable: u32) -> Self {
        let first = row.wrapping_add(j0 as usize);
        let mis = (first as usize as u32 & 15) / 4;
        let vbase = (first as *const u8).wrapping_sub(4 * mis as usize);
        let nvec = if len == 0 { 0 } else { (len + mis).div_ceil(4) };
        let safe = (readable.saturating_sub(j0) + mis) / 4;
        RowChunk { first, vbase, mis, j0, len, nvec, safe }
    }

    /// Entries of the chunk.
    #[inline(always)]
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Vectors the chunk's entries lie in (`len + mis`, in fours).
    #[inline(always)]
    pub fn vectors(&self) -> u32 {
        self.nvec
    }

    /// This thread's radix keys of vectors `b0 + t + THREADS · i` (`i <
    /// 8`; key `4i + q` is entry `q` of vector `i`), 0 where there is no
    /// entry. The loads are all issued before any is used: vector indices
    /// past the safe ones are clamped (and their values dropped), and the
    /// one vector that reaches past the readable memory is then read
    /// element by element.
    #[inline(always)]
    pub fn batch(&self, b0: u32) -> Batch {
        let t = thread_idx_x();
        let mut w = [[0u32; 4]; VECS as usize];
        if self.safe > 0 {
            crate::unroll!(8, I => {
                let v = (b0 + t + THREADS * I as u32).min(self.safe - 1);
                // SAFETY: vector `v < safe` lies inside the readable memory.
                w[I] = unsafe { ld_global_nc_v4(self.vbase.add(16 * v as usize)) };
            });
        }
        crate::unroll!(8, I => {
            let v = b0 + t + THREADS * I as u32;
            if v >= self.safe && v < self.nvec {
                w[I] = self.tail(v);
            }
        });
        let mut keys = [0u32; BATCH as usize];
        crate::unroll!(8, I => {
            crate::unroll!(4, Q => {
                let e = self.entry(b0 + t + THREADS * I as u32, Q as u32);
                if e < self.len {
                    keys[4 * I + Q] = radix_key(f32::from_bits(w[I][Q]));
                }
            });
        });
        keys
    }

    /// Entry `q` of vector `v` of the chunk, relative to `j0` (wrapped:
    /// `>= len` where it is not one of the chunk's).
    #[inline(always)]
    fn entry(&self, v: u32, q: u32) -> u32 {
        (4 * v + q).wrapping_sub(self.mis)
    }

    /// Vector `v` element by element (entries outside the chunk are 0).
    #[inline(always)]
    fn tail(&self, v: u32) -> [u32; 4] {
        let mut w = [0u32; 4];
        crate::unroll!(4, Q => {
            let e = self.entry(v, Q as u32);
            if e < self.len {
                // SAFETY: entry `e < len` of the chunk is readable.
                w[Q] = unsafe { ld_global_nc(self.first.add(e as usize) as *const u32) };
            }
        });
        w
    }

    /// Calls `f(key)` for the selection key of each entry of a batch
    /// loaded at `b0`.
    ///
    /// The row index of entry `(i, q)` is `jb + 4 · THREADS · i + q`, `jb`
    /// computed where it stands ([`opaque_u32`]): a [`ResidentChunk`]'s
    /// indices are the same on every radix step, and LLVM otherwise keeps
    /// all 32 live across the steps (ptxas: 204 registers, or spills at
    /// 128).
    #[inline(always)]
    pub fn visit(&self, keys: &Batch, b0: u32, mut f: impl FnMut(u64)) {
        let jb = opaque_u32((self.j0 + 4 * (b0 + thread_idx_x())).wrapping_sub(self.mis));
        crate::unroll!(8, I => {
            crate::unroll!(4, Q => {
                let r = keys[4 * I + Q];
                if r != 0 {
                    f(radix_sel_key(r, jb.wrapping_add(4 * THREADS * I as u32 + Q as u32)));
                }
            });
        });
    }
}

impl KeySet for RowChunk {
    /// One batch after another (a pass over the chunk in memory).
    #[inline(always)]
    fn for_each(&self, mut f: impl FnMut(u64)) {
        let mut b0 = 0;
        while b0 < self.nvec {
            let keys = self.batch(b0);
            self.visit(&keys, b0, &mut f);
            b0 += VECS * THREADS;
        }
    }
}

/// A chunk of at most [`RESIDENT`] entries (`vectors() <= VECS · THREADS`)
/// held in registers: read from memory once.
pub struct ResidentChunk {
    chunk: RowChunk,
    keys: Batch,
}

impl ResidentChunk {
    /// Loads the chunk (its vectors must number at most `VECS · THREADS`).
    #[inline(always)]
    pub fn load(chunk: RowChunk) -> Self {
        ResidentChunk { chunk, keys: chunk.batch(0) }
    }
}

impl KeySet for ResidentChunk {
    #[inline(always)]
    fn for_each(&self, f: impl FnMut(u64)) {
        self.chunk.visit(&self.keys, 0, f);
    }
}

/// `count` keys at the shared address `addr`.
#[derive(Clone, Copy)]
pub struct SmemKeys {
    /// Shared address of the first key (8-byte aligned).
    pub addr: u32,
    /// Keys.
    pub count: u32,
}

impl KeySet for SmemKeys {
    #[inline(always)]
    fn for_each(&self, mut f: impl FnMut(u64)) {
        let mut i = thread_idx_x();
        while i < self.count {
            // SAFETY: the caller's list: `count` keys at `addr`.
            f(unsafe { ld_shared_u64(self.addr + 8 * i) });
            i += THREADS;
        }
    }
}

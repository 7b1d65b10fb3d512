//! A CTA's chunk of an f32 row as selection keys ([`KeySet`]s for the radix
//! select), read with 16-byte loads, [`VECS`] of them a thread in flight at
//! once:
//!
//! - [`RowChunk`]: the chunk read again from memory on every pass (L2 for a
//!   row that fits there);
//! - [`SmemChunk`]: a chunk of at most [`RESIDENT`] entries read once into
//!   shared memory (32 KiB; each thread reads back only the vectors it
//!   loaded, so no barrier), then visited by a loop: registers (32 a
//!   thread) would need every visit unrolled 32 times, and the kernel
//!   visits a chunk in up to 5 places;
//! - [`SmemKeys`]: keys gathered in shared memory.
//!
//! The row need not be 16-byte aligned: the chunk's vectors start at the
//! aligned address at or before its first entry (the `mis` entries before
//! it are read and dropped). The vector that would reach past the row's
//! readable memory is not read: its (at most 3) entries of the chunk are
//! the first threads' `tail`, loaded once, one each.

use crate::arch::{ld_global_nc, ld_global_nc_v4, ld_shared_u64, ld_shared_v4, st_shared_v4, thread_idx_x};
use crate::tile::radix::{radix_key, radix_sel_key, KeySet, THREADS};

/// Vectors (4 entries) a thread loads at once.
pub const VECS: u32 = 8;
/// Entries of a CTA's batch of loads, and the most a [`SmemChunk`] holds.
pub const RESIDENT: u32 = 4 * VECS * THREADS;
/// A thread's vectors of one batch (f32 bits).
type Batch = [[u32; 4]; VECS as usize];

/// Entries `j0 .. j0 + len` of a row, read from global memory.
#[derive(Clone, Copy)]
pub struct RowChunk {
    /// The 16-byte aligned address at or before entry `j0`.
    vbase: *const u8,
    /// Entries between `vbase` and entry `j0`.
    mis: u32,
    j0: u32,
    len: u32,
    /// Vectors from `vbase` read: those that hold entries of the chunk and
    /// lie wholly inside the row's readable memory.
    nvec: u32,
    /// This thread's entry past the last vector read (threads 0, 1, 2):
    /// its radix key (0: none) and its place in the chunk.
    tail: u32,
    tail_e: u32,
}

impl RowChunk {
    /// Entries `j0 .. j0 + len` of the row at `row`, whose first `readable`
    /// entries may be read (`j0 + len <= readable`). Loads this thread's
    /// tail entry.
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
        // Vectors wholly readable: they cover entries below `4 · safe -
        // mis`, which leaves at most 3 of the chunk's (the readable memory
        // ends less than 4 entries further).
        let safe = (readable.saturating_sub(j0) + mis) / 4;
        let nvec = if len == 0 { 0 } else { (len + mis).div_ceil(4).min(safe) };
        let t = thread_idx_x();
        let tail_e = (4 * safe + t).wrapping_sub(mis);
        let tail = if t < 3 && tail_e < len { radix_key(ld_global_nc(first.add(tail_e as usize))) } else { 0 };
        RowChunk { vbase, mis, j0, len, nvec, tail, tail_e }
    }

    /// This thread's vectors `b0 + t + THREADS · i` (`i < VECS`), all the
    /// loads issued before any is used: indices past the last vector read
    /// are clamped (their values are not visited).
    #[inline(always)]
    fn load(&self, b0: u32) -> Batch {
        let t = thread_idx_x();
        let mut w = [[0u32; 4]; VECS as usize];
        if self.nvec > 0 {
            crate::unroll!(8, I => {
                let v = (b0 + t + THREADS * I as u32).min(self.nvec - 1);
                // SAFETY: vector `v < nvec` lies inside the readable memory.
                w[I] = unsafe { ld_global_nc_v4(self.vbase.add(16 * v as usize)) };
            });
        }
        w
    }

    /// Calls `f(r, j)` with the radix key `r` and the row index `j` of each
    /// of the chunk's entries in vector `v` (scores `w`).
    #[inline(always)]
    fn visit(&self, v: u32, w: [u32; 4], f: &mut impl FnMut(u32, u32)) {
        if v < self.nvec {
            crate::unroll!(4, Q => {
                let e = (4 * v + Q as u32).wrapping_sub(self.mis); // wrapped: before j0
                if e < self.len {
                    f(radix_key(f32::from_bits(w[Q])), self.j0 + e);
                }
            });
        }
    }

    /// Calls `f(r, j)` for this thread's tail entry, if any.
    #[inline(always)]
    fn visit_tail(&self, f: &mut impl FnMut(u32, u32)) {
        if self.tail != 0 {
            f(self.tail, self.j0 + self.tail_e);
        }
    }

    /// Calls `f(r, j)` for each entry of the chunk: its radix key and row
    /// index (a pass that needs the score alone builds no 64-bit key), one
    /// batch after another.
    #[inline(always)]
    pub fn for_each_score(&self, mut f: impl FnMut(u32, u32)) {
        let t = thread_idx_x();
        let mut b0 = 0;
        let mut w = self.load(0);
        while b0 < self.nvec {
            // The next batch's loads go out before this one is visited
            // (past the end they are clamped to the last vector: one line).
            let next = self.load(b0 + VECS * THREADS);
            crate::unroll!(8, I => { self.visit(b0 + t + THREADS * I as u32, w[I], &mut f); });
            w = next;
            b0 += VECS * THREADS;
        }
        self.visit_tail(&mut f);
    }
}

/// Entries of a chunk a thread samples ([`RowChunk::sample`]).
pub const SAMPLES_PER_THREAD: u32 = 8;
/// Entries of a chunk the CTA samples.
pub const SAMPLES: u32 = SAMPLES_PER_THREAD * THREADS;

/// Selection keys held in a thread's registers (0: none).
#[derive(Clone, Copy)]
pub struct RegKeys(pub [u64; SAMPLES_PER_THREAD as usize]);

impl KeySet for RegKeys {
    #[inline(always)]
    fn for_each(&self, mut f: impl FnMut(u64)) {
        crate::unroll!(8, R => {
            if self.0[R] != 0 {
                f(self.0[R]);
            }
        });
    }
}

impl RowChunk {
    /// The chunk's entries `stride · i` (`i < SAMPLES`, those below its
    /// length) as selection keys, thread `t` holding `i = t + THREADS · r`;
    /// all the loads in flight at once.
    #[inline(always)]
    pub fn sample(&self, stride: u32) -> RegKeys {
        let t = thread_idx_x();
        let first = self.vbase.wrapping_add(4 * self.mis as usize) as *const f32;
        let mut s = [0f32; SAMPLES_PER_THREAD as usize];
        crate::unroll!(8, R => {
            let e = stride * (t + THREADS * R as u32);
            if e < self.len {
                // SAFETY: entries below `len` of the chunk are readable.
                s[R] = unsafe { ld_global_nc(first.add(e as usize)) };
            }
        });
        let mut keys = [0u64; SAMPLES_PER_THREAD as usize];
        crate::unroll!(8, R => {
            let e = stride * (t + THREADS * R as u32);
            if e < self.len {
                keys[R] = radix_sel_key(radix_key(s[R]), self.j0 + e);
            }
        });
        RegKeys(keys)
    }

    /// Calls `f(r, j)` for each entry of the chunk whose radix key `r` is
    /// at least `r_min`, one batch after another. `floor` is
    /// [`radix_key_floor`](crate::tile::radix::radix_key_floor)`(r_min)`: one float compare an entry passes over
    /// the others, which are most of them (the chunk's place and the key
    /// are looked at only for the entries it lets through).
    #[inline(always)]
    pub fn for_each_at_least(&self, r_min: u32, floor: f32, mut f: impl FnMut(u32, u32)) {
        let t = thread_idx_x();
        let mut b0 = 0;
        let mut w = self.load(0);
        while b0 < self.nvec {
            let next = self.load(b0 + VECS * THREADS);
            crate::unroll!(8, I => {
                crate::unroll!(4, Q => {
                    let s = f32::from_bits(w[I][Q]);
                    if s >= floor {
                        let v = b0 + t + THREADS * I as u32;
                        let e = (4 * v + Q as u32).wrapping_sub(self.mis);
                        let r = radix_key(s);
                        if v < self.nvec && e < self.len && r >= r_min {
                            f(r, self.j0 + e);
                        }
                    }
                });
            });
            w = next;
            b0 += VECS * THREADS;
        }
        if self.tail >= r_min {
            self.visit_tail(&mut f);
        }
    }
}

impl KeySet for RowChunk {
    /// A pass over the chunk in memory.
    #[inline(always)]
    fn for_each(&self, mut f: impl FnMut(u64)) {
        self.for_each_score(|r, j| f(radix_sel_key(r, j)));
    }
}

/// A chunk of at most [`RESIDENT`] entries (`len + mis <= RESIDENT`: at
/// most `VECS · THREADS` vectors) read once into shared memory.
pub struct SmemChunk {
    chunk: RowChunk,
    /// Shared address of vector 0 (16-byte aligned, `RESIDENT · 4` bytes).
    addr: u32,
}

impl SmemChunk {
    /// Reads the chunk into the shared memory at `addr`.
    #[inline(always)]
    pub unsafe fn load(chunk: RowChunk, addr: u32) -> Self {
        let (t, w) = (thread_idx_x(), chunk.load(0));
        crate::unroll!(8, I => { st_shared_v4(addr + 16 * (t + THREADS * I as u32), w[I]); });
        SmemChunk { chunk, addr }
    }
}

impl KeySet for SmemChunk {
    #[inline(always)]
    fn for_each(&self, mut f: impl FnMut(u64)) {
        let mut v = thread_idx_x();
        while v < self.chunk.nvec {
            // SAFETY: this thread stored vector `v` in `load`.
            let w = unsafe { ld_shared_v4(self.addr + 16 * v) };
            self.chunk.visit(v, w, &mut |r, j| f(radix_sel_key(r, j)));
            v += THREADS;
        }
        self.chunk.visit_tail(&mut |r, j| f(radix_sel_key(r, j)));
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

//! The ring of shared-memory stages every streaming kernel runs.
//!
//! One interface: `issue(i, stage)` starts tile `i`'s copies into a stage,
//! `body(i, stage)` consumes it once it has landed, with `STAGES - 1` tiles
//! in flight ahead of the one being consumed. [`CpAsyncRing`] implements it
//! with `cp.async` groups and a CTA barrier per tile (every thread both
//! copies and computes). [`MbarRing`] is the warp-specialized kernels'
//! ring: a producer warp acquires a stage and issues TMA copies into it,
//! consumers wait on its full mbarrier and release it through its empty
//! one, stage and phase advancing together (the dense prefill; the MSA
//! block-major run and the lightning indexer can take it next).
//! [`PingPong`] orders two consumer warpgroups' products.

use crate::arch::{
    cp_async_commit, cp_async_wait, mbarrier_arrive, mbarrier_arrive_expect_tx, mbarrier_init,
    mbarrier_wait, named_barrier_arrive, named_barrier_sync, sync_threads,
};

/// `STAGES` stages of `STAGE_BYTES` at `base`; `WAIT` must be `STAGES - 2`
/// (a separate parameter: const generics cannot compute it).
pub struct CpAsyncRing<const STAGES: u32, const WAIT: u32, const STAGE_BYTES: u32> {
    /// Shared address of stage 0.
    pub base: u32,
}

impl<const STAGES: u32, const WAIT: u32, const STAGE_BYTES: u32>
    CpAsyncRing<STAGES, WAIT, STAGE_BYTES>
{
    const CHECK: () = assert!(STAGES >= 2 && WAIT == STAGES - 2);

    /// Shared address of the stage tile `i` uses.
    #[inline(always)]
    pub fn stage(&self, i: u32) -> u32 {
        self.base + (i % STAGES) * STAGE_BYTES
    }

    /// Runs `body(i, stage)` for `i in 0..n` in order, each after tile `i`
    /// has landed and every thread of the CTA has arrived, while the tiles
    /// up to `i + STAGES - 1` are being copied (`issue` is called once per
    /// tile, by every thread, in order). All threads of the CTA call `run`.
    /// Returns when every copy has completed.
    #[inline(always)]
    pub fn run(&self, n: u32, mut issue: impl FnMut(u32, u32), mut body: impl FnMut(u32, u32)) {
        let () = Self::CHECK;
        for s in 0..STAGES - 1 {
            if s < n {
                issue(s, self.stage(s));
            }
            cp_async_commit();
        }
        for i in 0..n {
            cp_async_wait::<WAIT>();
            sync_threads();
            let ahead = i + STAGES - 1;
            if ahead < n {
                issue(ahead, self.stage(ahead));
            }
            cp_async_commit();
            body(i, self.stage(i));
        }
        cp_async_wait::<0>();
    }
}

/// The warp-specialized ring: `STAGES` stages, each with a *full* mbarrier
/// (the producer posts the stage's bytes, the TMA engine counts them in)
/// and an *empty* one (every consumer warp arrives once it has read the
/// stage). Use `i` counts tiles from 0; the stage is `i % STAGES` and the
/// phase parity flips each time the ring wraps.
///
/// The producer's first pass over the ring waits for parity 1 of fresh
/// empty barriers, which counts as complete (the phase "before" phase 0),
/// so it does not block.
pub struct MbarRing<const STAGES: u32> {
    /// Shared address of `full: [u64; STAGES]`.
    pub full: u32,
    /// Shared address of `empty: [u64; STAGES]`.
    pub empty: u32,
}

impl<const STAGES: u32> MbarRing<STAGES> {
    /// Initialises the barriers (one thread; a CTA barrier or
    /// `fence_mbarrier_init` follows): full with one arrival (the
    /// producer's), empty with `consumers` arrivals.
    #[inline(always)]
    pub unsafe fn init(&self, consumers: u32) {
        self.init_counts(1, consumers);
    }

    /// As [`MbarRing::init`] for a ring that threads fill with plain stores:
    /// `producers` arrivals ([`MbarRing::post`]) complete a full barrier.
    #[inline(always)]
    pub unsafe fn init_counts(&self, producers: u32, consumers: u32) {
        for s in 0..STAGES {
            mbarrier_init(self.full + 8 * s, producers);
            mbarrier_init(self.empty + 8 * s, consumers);
        }
    }

    /// Stage and phase parity of use `i`.
    #[inline(always)]
    pub fn slot(i: u32) -> (u32, u32) {
        (i % STAGES, (i / STAGES) & 1)
    }

    /// Producer: waits until use `i`'s stage is free, then posts `bytes`
    /// to its full barrier; the caller issues the TMA copies on
    /// [`MbarRing::full_bar`] next.
    #[inline(always)]
    pub unsafe fn acquire(&self, i: u32, bytes: u32) {
        self.wait_free(i);
        mbarrier_arrive_expect_tx(self.full_bar(i), bytes);
    }

    /// Producer: waits until use `i`'s stage is free (every consumer has
    /// released its previous use).
    #[inline(always)]
    pub unsafe fn wait_free(&self, i: u32) {
        let (s, ph) = Self::slot(i);
        mbarrier_wait(self.empty + 8 * s, ph ^ 1);
    }

    /// Producer of a ring filled with plain stores (after a
    /// `fence.proxy.async` where `wgmma` reads it): one arrival on use
    /// `i`'s full barrier, once per producer counted at
    /// [`MbarRing::init_counts`].
    #[inline(always)]
    pub unsafe fn post(&self, i: u32) {
        mbarrier_arrive(self.full_bar(i));
    }

    /// The full barrier of use `i` (the copies' completion target).
    #[inline(always)]
    pub fn full_bar(&self, i: u32) -> u32 {
        self.full + 8 * (i % STAGES)
    }

    /// Consumer: waits until use `i`'s bytes have landed.
    #[inline(always)]
    pub unsafe fn wait(&self, i: u32) {
        let (s, ph) = Self::slot(i);
        mbarrier_wait(self.full + 8 * s, ph);
    }

    /// Consumer: one arrival on use `i`'s empty barrier (once per consumer
    /// counted at [`MbarRing::init`]).
    #[inline(always)]
    pub unsafe fn release(&self, i: u32) {
        mbarrier_arrive(self.empty + 8 * (i % STAGES));
    }
}

/// Two consumer warpgroups take turns issuing their `wgmma`s (named
/// barriers 3 and 4, one per warpgroup, 256 threads each): warpgroup `c`
/// waits for its turn, issues, then passes the turn to the other, and
/// while the other's products run it does its epilogue (the dense
/// prefill's softmax, the lightning indexer's ReLU head sum), so the
/// tensor cores run one warpgroup's products at a time, back to back. Both
/// warpgroups take the same number of turns, at least one. Warpgroup 1 passes
/// first (so 0 starts) and does not pass after its last turn (every
/// arrival is matched).
pub struct PingPong {
    c: u32,
}

impl PingPong {
    #[inline(always)]
    pub fn start(c: u32) -> Self {
        if c == 1 {
            named_barrier_arrive(3, 256);
        }
        PingPong { c }
    }

    #[inline(always)]
    pub fn wait(&self) {
        named_barrier_sync(3 + self.c, 256);
    }

    #[inline(always)]
    pub fn pass(&self, last: bool) {
        if !(last && self.c == 1) {
            named_barrier_arrive(3 + (1 - self.c), 256);
        }
    }
}

//! The ring of shared-memory stages every streaming kernel runs.
//!
//! One interface: `issue(i, stage)` starts tile `i`'s copies into a stage,
//! `body(i, stage)` consumes it once it has landed, with `STAGES - 1` tiles
//! in flight ahead of the one being consumed. [`CpAsyncRing`] implements it
//! with `cp.async` groups and a CTA barrier per tile (every thread both
//! copies and computes); the warp-specialized kernels' ring (a producer
//! warp issuing TMA copies, consumers waiting on full mbarriers and
//! releasing stages through empty ones, stage and phase advancing together)
//! takes the same `issue` / `body` pair.

use crate::arch::{cp_async_commit, cp_async_wait, sync_threads};

/// `STAGES` stages of `STAGE_BYTES` at `base`; `WAIT` must be `STAGES - 2`
/// (a separate parameter: const generics cannot compute it).
pub struct CpAsyncRing<const STAGES: u32, const WAIT: u32, const STAGE_BYTES: u32> {
    /// Shared address of stage 0.
    pub base: u32,
}

impl<const STAGES: u32, const WAIT: u32, const STAGE_BYTES: u32> CpAsyncRing<STAGES, WAIT, STAGE_BYTES> {
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

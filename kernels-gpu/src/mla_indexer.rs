//! The MLA FP8 lightning indexer's logits (`shared/spec/mla-fp8-indexer.md`),
//! warp-specialized for Hopper: `score[t, s] = k_scale[s] · Σ_h max(q[t,h] ·
//! k[s], 0) · qs[t,h]`, written to an f32 `[rows, ld]` matrix for the
//! visible keys of each row (the top-k runs next, on the same stream).
//!
//! One CTA per [`MlaWork`] item (up to `QT · 128 / HEADS` query rows of one
//! sequence, a range of key tiles), items longest first; `QT` is the number
//! of Q tiles, 2 for prefill, 1 for batches of at most `128 / HEADS` rows
//! a sequence (decode: a second tile would be all padding):
//!
//! - **producer** (warpgroup 0; warp 0 issues, 24 registers): the Q tiles
//!   once, then every K tile — [`MI_BLOCK_N`] keys of 128 e4m3 bytes by TMA
//!   (one box per page, or per 128 keys of a larger page, one lane per box)
//!   and their f32 scales by a bulk copy — into a ring of [`MI_STAGES`]
//!   stages ([`MbarRing`]);
//! - **consumers** (warpgroups 1 and 2, 64 keys of each tile): the keys' A
//!   fragments with `ldmatrix` (the stage is released right after), then
//!   `wgmma` m64n128k32 e4m3 per Q tile, M = keys, N = (token, head)
//!   columns (m64n64k32 in the one-row form for 64 heads: a decode row's
//!   heads fill N = 64, where a 128-column tile would be half padding;
//!   `mla-idx-decode-b64-64k` logits 151.8 against 192.8 µs, H200); the epilogue of Q tile 0 runs while tile 1's product is in
//!   flight, and each warpgroup's epilogues while the other's products run.
//!
//! The epilogue is per thread: its two keys' 32 columns, `relu(x) · w` as
//! `fma(x + |x|, w/2, acc)` (`x + |x| = 2 max(x, 0)` exactly, and `w/2` is
//! a power-of-two scaling, so one rounding as in `fma(max(x, 0), w, acc)`;
//! `max` runs at half the FMA rate on sm_90), the head sum finished over
//! the quad by two shuffles, times the key's scale. The `|x|` is an operand
//! modifier of the FADD; the FFMA has none on sm_90, so the earlier
//! `fma(x, w/2, fma(|x|, w/2, acc))` cost a `LOP3` a value on top of its
//! two FMAs (consumer loop, two Q tiles: 551 instructions against 423;
//! `mla-idx-prefill-16k` logits 690–698 against 819–841 TFLOP/s, H100,
//! 2026-12-07).
//!
//! Keys past a sequence's end in its last tile come from real pages (ids
//! clamped) and hold garbage; each key is its own row of the product, so
//! they only produce logits that are never written. Corrupt work records
//! are clamped: rows to the item size and to `num_rows`, keys to `ld`.

use core::mem::size_of;

use sparse_attn_abi::mla::*;

use crate::arch::*;
use crate::tile::pipeline::MbarRing;

/// The ring of K stages.
type Ring = MbarRing<MI_STAGES>;
/// Q tiles, as an array length.
const NQ: usize = MI_Q_TILES as usize;
/// Consumer warps: each arrives once on a stage's empty barrier.
const CONSUMER_WARPS: u32 = MI_CONSUMERS * 4;

/// Shared memory of the kernel (the K tiles 1024-byte aligned: the Q tiles
/// before them are 16 KiB each).
#[repr(C)]
struct Smem {
    q: [[u8; MI_Q_TILE_BYTES as usize]; NQ],
    k: [[u8; MI_K_TILE_BYTES as usize]; MI_STAGES as usize],
    scale: [[f32; MI_BLOCK_N as usize]; MI_STAGES as usize],
    /// The halved head weights of each Q tile's columns.
    wt: [[f32; MI_Q_ROWS as usize]; NQ],
    q_full: u64,
    full: [u64; MI_STAGES as usize],
    empty: [u64; MI_STAGES as usize],
}
const _: () = assert!(size_of::<Smem>() as u32 <= MI_SMEM);

/// The K ring.
#[inline(always)]
fn ring() -> Ring {
    Ring { full: crate::smem_addr!(Smem, full), empty: crate::smem_addr!(Smem, empty) }
}

macro_rules! logits_kernel {
    ($($(#[$doc:meta])* $name:ident = $heads:literal, $qt:literal, $acc:ty;)+) => {$(
        $(#[$doc])*
        #[no_mangle]
        pub unsafe extern "ptx-kernel" fn $name(p: MlaLogitsParams) {
            logits::<$heads, $qt, $acc>(&p)
        }
    )+};
}

/// A consumer warpgroup's accumulator for one Q tile of `8 NT` columns
/// (`wgmma` N = 128 or 64), with its product and waits.
trait Acc: Copy {
    /// n-tiles of 8 columns.
    const NT: usize;
    const ZERO: Self;
    /// Issues `d = K Qᵀ` for the 64 keys (A) and the tile at `qt`.
    fn issue(&mut self, a: &[[u32; 4]; 4], qt: u32);
    /// Waits for every product (`d` and `a` tied to the wait).
    fn wait0(&mut self, a: &[[u32; 4]; 4]);
    /// Waits for all but the newest product.
    fn wait1(&mut self, a: &[[u32; 4]; 4]);
    /// Value `e` of n-tile `j`.
    fn at(&self, j: usize, e: usize) -> f32;
}

/// 64 keys × 128 columns.
type Acc128 = [[f32; 4]; 16];
/// 64 keys × 64 columns: one row of 64 heads (decode).
type Acc64 = [[f32; 4]; 8];

/// `impl Acc` for an accumulator type: its `NT`, its `wgmma` and the
/// groups `wait1` leaves in flight (a form built with one Q tile only waits
/// for every product there).
macro_rules! impl_acc {
    ($($t:ty: $nt:literal, $mma:ident, $wait1_pending:literal;)+) => {$(
        impl Acc for $t {
            const NT: usize = $nt;
            const ZERO: Self = [[0.0; 4]; $nt];
            #[inline(always)]
            fn issue(&mut self, a: &[[u32; 4]; 4], qt: u32) {
                wgmma_fence(self, a);
                crate::unroll!(4, KS => { $mma(self, a[KS], q_desc(qt, KS as u32), KS > 0); });
                wgmma_commit();
            }
            #[inline(always)]
            fn wait0(&mut self, a: &[[u32; 4]; 4]) {
                wgmma_wait::<0, _, _>(self, a)
            }
            #[inline(always)]
            fn wait1(&mut self, a: &[[u32; 4]; 4]) {
                wgmma_wait::<$wait1_pending, _, _>(self, a)
            }
            #[inline(always)]
            fn at(&self, j: usize, e: usize) -> f32 {
                self[j][e]
            }
        }
    )+};
}

impl_acc! {
    Acc128: 16, wgmma_m64n128k32_e4m3, 1;
    Acc64: 8, wgmma_m64n64k32_e4m3, 0;
}

/// Descriptor of k-step `ks` (32 dims) of the Q tile at `qt` (K-major,
/// 128-byte rows, 8-row groups 1024 bytes apart).
#[inline(always)]
fn q_desc(qt: u32, ks: u32) -> u64 {
    wgmma_desc_sw128(qt + 32 * ks, 16, 1024)
}

logits_kernel! {
    /// 64 index heads (DeepSeek-V3.2): items of 4 query rows.
    mla_logits_h64 = 64, 2, Acc128;
    /// 64 index heads, items of 2 query rows (2 speculative rows).
    mla_logits_h64_q1 = 64, 1, Acc128;
    /// 64 index heads, items of 1 row, `wgmma` N = 64 (decode).
    mla_logits_h64_n64 = 64, 1, Acc64;
    /// 128 index heads: items of 2 query rows.
    mla_logits_h128 = 128, 2, Acc128;
    /// 128 index heads, items of 1 query row (decode).
    mla_logits_h128_q1 = 128, 1, Acc128;
}

/// The kernel body for `HEADS` index heads (`p.heads` must match) and `QT`
/// Q tiles (1 or 2).
#[inline(always)]
unsafe fn logits<const HEADS: u32, const QT: u32, A: Acc>(p: &MlaLogitsParams) {
    grid_prologue();
    let Some(w) = schedule::<HEADS>(p, QT * 8 * A::NT as u32 / HEADS) else {
        return;
    };
    let kr = ring();
    if thread_idx_x() == 0 {
        mbarrier_init(crate::smem_addr!(Smem, q_full), 1);
        kr.init(CONSUMER_WARPS);
        fence_mbarrier_init();
    }
    sync_threads();
    let wg = warp_id() / 4;
    if wg == 0 {
        setmaxnreg_dec::<MI_PRODUCER_REGS>();
        if warp_id() == 0 {
            produce::<HEADS, QT>(p, &w);
        }
        return;
    }
    setmaxnreg_inc::<MI_CONSUMER_REGS>();
    consume::<HEADS, QT, A>(p, &w, wg - 1);
}

/// The CTA's item, clamped; `None` past the last or for a head count the
/// kernel was not built for.
#[inline(always)]
unsafe fn schedule<const HEADS: u32>(p: &MlaLogitsParams, max_rows: u32) -> Option<MlaWork> {
    if block_idx_x() >= p.num_work || p.heads != HEADS {
        return None;
    }
    let mut w = ld_record(p.work.ptr().add(block_idx_x() as usize));
    w.rows = w.rows.clamp(1, max_rows);
    w.num_keys = w.num_keys.min(p.ld);
    w.tile1 = w.tile1.min(w.num_keys.div_ceil(MI_BLOCK_N)).min(w.tile0.saturating_add(MI_TILES_PER_ITEM));
    w.tile0 = w.tile0.min(w.tile1);
    Some(w)
}

/// Visible keys of row `r` of the item (a prefix of the sequence's keys).
#[inline(always)]
fn row_len(p: &MlaLogitsParams, w: &MlaWork, r: u32) -> u32 {
    if p.causal != 0 {
        w.num_keys.min(w.q_pos0.saturating_add(r + 1))
    } else {
        w.num_keys
    }
}

// ------------------------------------------------------------------ producer

/// The producer warp: the Q tiles, then each K tile and its scales once the
/// consumers have released the stage. Lane `b` copies box `b` of the tile
/// (a page, or 128 keys of a larger page), its page looked up before the
/// wait.
#[inline(always)]
unsafe fn produce<const HEADS: u32, const QT: u32>(p: &MlaLogitsParams, w: &MlaWork) {
    let maps = p.tmaps.ptr();
    let (qmap, kmap) = (maps, maps.add(MI_TMAP_BYTES));
    let kr = ring();
    let lane = lane_id();
    if lane == 0 {
        let q_full = crate::smem_addr!(Smem, q_full);
        mbarrier_arrive_expect_tx(q_full, QT * MI_Q_TILE_BYTES);
        for b in 0..QT {
            let row = w.row0 * HEADS + b * MI_Q_ROWS;
            tma_load_2d(crate::smem_addr!(Smem, q) + b * MI_Q_TILE_BYTES, qmap, q_full, 0, row as i32);
        }
    }
    let ps = p.page_size.max(1);
    let box_rows = p.box_rows.clamp(16, MI_BLOCK_N);
    let mine = lane < MI_BLOCK_N / box_rows;
    let (ks, ss) = (crate::smem_addr!(Smem, k), crate::smem_addr!(Smem, scale));
    for j in w.tile0..w.tile1 {
        let i = j - w.tile0;
        let s = i % MI_STAGES;
        let tok = j * MI_BLOCK_N + lane * box_rows;
        let (slot, blk) = (tok % ps, page_id(p, w.seq, tok / ps) * p.num_layers + p.layer);
        if lane == 0 {
            kr.acquire(i, MI_STAGE_TX);
        }
        sync_warp();
        if mine {
            let bar = kr.full_bar(i);
            let dst = ks + s * MI_K_TILE_BYTES + lane * box_rows * MI_HEAD_DIM;
            tma_load_3d(dst, kmap, bar, [0, slot as i32, blk as i32]);
            let at = blk as usize * p.scale_block_bytes as usize + p.scale_off as usize + 4 * slot as usize;
            bulk_load(ss + s * MI_SCALE_BYTES + lane * box_rows * 4, p.scales.ptr().add(at), box_rows * 4, bar);
        }
    }
}

/// Pool page of logical page `blk` of sequence `seq`, both clamped (a
/// corrupt table or item addresses a valid page, never outside the pool).
#[inline(always)]
unsafe fn page_id(p: &MlaLogitsParams, seq: u32, blk: u32) -> u32 {
    let at = seq as usize * p.max_pages as usize + blk.min(p.max_pages.max(1) - 1) as usize;
    ld_global_nc_u32(p.lookup.ptr().add(at)).min(p.num_pages.max(1) - 1)
}

// ------------------------------------------------------------------ consumers

/// Consumer warpgroup `c`: keys `64 c .. 64 c + 64` of every K tile against
/// the item's Q tiles.
#[inline(always)]
unsafe fn consume<const HEADS: u32, const QT: u32, A: Acc>(p: &MlaLogitsParams, w: &MlaWork, c: u32) {
    let kr = ring();
    // This warp's 16 keys of a tile start at `r0`; the thread's are g, g + 8.
    let r0 = 64 * c + 16 * (warp_id() % 4);
    stage_weights::<HEADS>(p, w);
    let (ks, ss, qa) = (crate::smem_addr!(Smem, k), crate::smem_addr!(Smem, scale), crate::smem_addr!(Smem, q));
    mbarrier_wait(crate::smem_addr!(Smem, q_full), 0);
    let mut acc = [A::ZERO; NQ];
    for j in w.tile0..w.tile1 {
        let i = j - w.tile0;
        let s = i % MI_STAGES;
        kr.wait(i);
        let a = load_a(ks + s * MI_K_TILE_BYTES, r0);
        let g = r0 + lane_id() / 4;
        let sc = [ld_shared_f32(ss + s * MI_SCALE_BYTES + 4 * g), ld_shared_f32(ss + s * MI_SCALE_BYTES + 4 * (g + 8))];
        sync_warp(); // every lane has read the stage before lane 0 frees it
        if lane_id() == 0 {
            kr.release(i);
        }
        let key = j * MI_BLOCK_N + g;
        acc[0].issue(&a, qa);
        if QT == 2 {
            acc[1].issue(&a, qa + MI_Q_TILE_BYTES);
            acc[0].wait1(&a);
            epilogue::<HEADS, A>(p, w, &acc[0], 0, key, sc);
            acc[1].wait0(&a);
            epilogue::<HEADS, A>(p, w, &acc[1], 1, key, sc);
        } else {
            acc[0].wait0(&a);
            epilogue::<HEADS, A>(p, w, &acc[0], 0, key, sc);
        }
    }
}
const _: () = assert!(NQ == 2);

/// This warp's A fragments of its 16 keys (rows `r0 ..` of the stage at
/// `base`, 128-byte rows swizzled by TMA), one `ldmatrix.x4` per k32 step:
/// lanes 0–15 address rows `r0 + lane` at the step's first 16 bytes, lanes
/// 16–31 the same rows at its second 16, which is the e4m3 A layout (bytes
/// `4 (lane % 4) ..` of rows g and g + 8, then 16 bytes further).
#[inline(always)]
unsafe fn load_a(base: u32, r0: u32) -> [[u32; 4]; 4] {
    let lane = lane_id();
    let r = r0 + lane % 16;
    let mut a = [[0u32; 4]; 4];
    crate::unroll!(4, KS => {
        let chunk = 2 * KS as u32 + lane / 16;
        a[KS] = ldmatrix_x4(base + r * 128 + ((chunk ^ (r & 7)) << 4));
    });
    a
}

/// Stages the item's halved head weights in shared memory (the 256
/// consumer threads, one column each, then a barrier of both warpgroups):
/// `wt[b][n] = qs[t, h] / 2` for column `n` of Q tile `b` (token `t = row0 +
/// b · 128 / HEADS + n / HEADS`, head `h = n % HEADS`), 0 past the item's
/// rows. (In registers, 64 a thread, `mla_logits_h64` spilled.)
#[inline(always)]
unsafe fn stage_weights<const HEADS: u32>(p: &MlaLogitsParams, w: &MlaWork) {
    let i = thread_idx_x() - 128;
    let (b, n) = (i / MI_Q_ROWS, i % MI_Q_ROWS);
    let r = b * (MI_Q_ROWS / HEADS) + n / HEADS;
    let t = w.row0 + r;
    let v = if r < w.rows && t < p.num_rows {
        0.5 * ld_global_nc(p.qs.ptr().add((t * HEADS + n % HEADS) as usize))
    } else {
        0.0
    };
    st_shared_f32(crate::smem_addr!(Smem, wt) + 4 * i, v);
    named_barrier_sync(1, MI_CONSUMERS * 128);
}

/// Q tile `b`'s logits of the thread's keys `key` and `key + 8` (`sc`: their
/// scales): the ReLU-weighted head sums (weights from shared memory, 8
/// bytes a column pair, the quad's 4 lanes reading 32 consecutive bytes) of each token of the tile, summed
/// over the quad; lane `q` of the quad writes value `q, q + 4, ..` of the
/// tile's `2 · 128 / HEADS`.
#[inline(always)]
unsafe fn epilogue<const HEADS: u32, A: Acc>(
    p: &MlaLogitsParams,
    w: &MlaWork,
    d: &A,
    b: u32,
    key: u32,
    sc: [f32; 2],
) {
    let tq = 8 * A::NT / HEADS as usize; // tokens of a tile
    let nt = (HEADS / 8) as usize; // n-tiles of a token
    let mut sum = [[0f32; 2]; 16];
    let wt = crate::smem_addr!(Smem, wt) + b * MI_Q_ROWS * 4 + 8 * (lane_id() % 4);
    crate::unroll!(16, J => {
        if J < A::NT {
            let pair = ld_shared_u64(wt + 32 * J as u32);
            let h2 = [f32::from_bits(pair as u32), f32::from_bits((pair >> 32) as u32)];
            crate::unroll!(2, E => {
                crate::unroll!(2, R => {
                    let (x, h) = (d.at(J, 2 * R + E), h2[E]);
                    sum[J / nt][R] = fma(x + fabs(x), h, sum[J / nt][R]);
                });
            });
        }
    });
    let lane = lane_id() % 4;
    crate::unroll!(16, T => {
        crate::unroll!(2, R => {
            if T < tq {
                let v = sum[T][R] + shfl_xor_f32(sum[T][R], 1);
                let v = v + shfl_xor_f32(v, 2);
                let (r, k) = (b * tq as u32 + T as u32, key + 8 * R as u32);
                let t = w.row0 + r;
                if (2 * T + R) as u32 % 4 == lane && r < w.rows && t < p.num_rows && k < row_len(p, w, r) {
                    st_global(p.logits.ptr().add(t as usize * p.ld as usize + k as usize), v * sc[R]);
                }
            }
        });
    });
}

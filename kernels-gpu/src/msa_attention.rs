//! MSA block-sparse attention, query-major: decode (`q_len = 1` per
//! sequence) and, with the per-token causal rule, prefill / speculative rows.
//!
//! `msa_attention_partial` ([`MsaDecodeParams`]): one CTA per (sequence, KV
//! head, partition). The partition's selected 128-token blocks stream through
//! an `ATT_STAGES`-deep `cp.async` ring (`tile::pipeline`) of half-steps (the K tile of a block, then its V tile;
//! 16-byte copies, rows XOR-swizzled). All `group` query heads of the KV head share each loaded
//! block: they are the M rows (≤ 16) of bf16 `mma.m16n8k16` tiles. Each of the
//! 4 warps owns 32 keys of every block and keeps its own online softmax
//! (exp2 domain, f32): S = Q·Kᵀ (ldmatrix), P = exp2(S·scale·log2e − m), O +=
//! P·V (P re-packed from the S accumulators as A fragments, V through
//! `ldmatrix.trans`). At the end the 4 warps merge their (m, l, O) through
//! shared memory; with one partition the CTA writes the bf16 output and the
//! LSE, otherwise an f32 partial output and its log2-sum-exp.
//!
//! Tensor cores, measured against CUDA cores (H100, 2026-11-24): a variant of
//! this kernel computing S = Q·Kᵀ and P·V with scalar FMAs (same pipeline and
//! softmax; it passed the same tests) took 211.4–212.8 µs for
//! msa-decode-b64-32k (group 16), 141.4–141.5 µs for msa-decode-tp8 (group 8)
//! and 19.6–20.0 µs for msa-decode-b1-128k, against 99.2–99.5, 52.0–52.1 and
//! 11.5–12.3 µs here: at group ≥ 8 the FMAs, not the memory, set the pace.
//!
//! Merging the partitions, in a fixed order (partition 0 first) so the result
//! is bit-reproducible: when the host launches the partitions of a (row, KV
//! head) as one thread-block cluster (up to `ATT_MAX_CLUSTER`), each CTA
//! leaves its normalised partial in shared memory and the cluster merges them
//! through distributed shared memory (`cluster_merge`: no partials in global
//! memory, no second launch); otherwise the partials go to global memory and
//! `msa_attention_combine`, one CTA per (row, head), merges them.
//!
//! Masking: slots of `-1` and ids `>= ceil(seqlen_k / 128)` (or past the
//! query's own block) are skipped; keys `pos > q_pos` are masked, and V rows
//! `pos >= seqlen_k` (the unwritten tail of the last page) are zeroed. A
//! row-head whose softmax sum is NaN (a NaN score: a NaN in the query row)
//! attends nothing: `out = 0`, `lse = -inf`, as on the block-major path.
//! (Checked once per row-head in the epilogue, not per score in the main
//! loop: a NaN test per score cost about 4% on the compute-bound
//! query-major prefill case, 4015 against 3845 µs; H200, 2026-12-02.)

use core::mem::{offset_of, size_of};

use sparse_attn_abi::msa::*;

use crate::arch::*;
use crate::tile::frag::load_row_frags;
use crate::tile::graph::{header_epoch, set_fault};
use crate::tile::paged::{page_of, PagedBlock};
use crate::tile::pipeline::CpAsyncRing;
use crate::tile::softmax::{merge_normalised, merge_weight, LseState, LN2, LOG2E};
use crate::tile::swizzle::{Rows256, TileLayout};

/// Dim n-tiles of the output (8 dims each).
const D_TILES: usize = (MSA_HEAD_DIM / 8) as usize;
const WARPS: u32 = ATT_THREADS / 32;
/// Keys of a block each warp owns, and their n-tiles.
const WARP_KEYS: u32 = MSA_BLOCK / WARPS;
const WARP_NT: usize = (WARP_KEYS / 8) as usize;
/// Row stride (f32) of the warp-merge buffer: 8 floats of padding spread a
/// warp's stores of 8 rows over all banks (2-way instead of 8-way conflicts).
const OS_STRIDE: usize = MSA_HEAD_DIM as usize + 8;
// The epilogue gives each thread one dim.
const _: () = assert!(ATT_THREADS == MSA_HEAD_DIM);

/// A K or V tile of one KV head: 128 tokens of 256 bytes.
type KvBlock = PagedBlock<MSA_BLOCK, 256>;
/// Half-steps: the K tile of a block, then its V tile.
type Ring = CpAsyncRing<ATT_STAGES, { ATT_STAGES - 2 }, MSA_BLOCK_BYTES>;

/// A selected slot's pool page and block (`page == u32::MAX`: skipped).
#[repr(C)]
#[derive(Clone, Copy)]
struct SlotPage {
    page: u32,
    blk: u32,
}

/// Shared memory of the main loop.
#[repr(C)]
struct MainSmem {
    stages: [[u8; MSA_BLOCK_BYTES as usize]; ATT_STAGES as usize],
    /// The partition's slots, staged once.
    slots: [SlotPage; ATT_MAX_SLOTS as usize],
}
const _: () = assert!(size_of::<MainSmem>() as u32 == ATT_SMEM);

/// Shared memory of the epilogue, laid over the stages once the main loop
/// is done.
#[repr(C)]
struct MergeSmem {
    /// Each warp's (max, sum) per head.
    ml: [[[f32; 2]; 16]; WARPS as usize],
    /// Each warp's O, rescaled to the CTA's max.
    os: [[[f32; OS_STRIDE]; 16]; WARPS as usize],
    /// Per head: 1 / sum and the log2-sum-exp.
    hl: [[f32; 2]; 16],
    /// This CTA's normalised partial for the cluster merge: O and its
    /// log2-sum-exp per head.
    fin_o: [[f32; MSA_HEAD_DIM as usize]; 16],
    fin_lse: [f32; 16],
}
const _: () = assert!(size_of::<MergeSmem>() <= offset_of!(MainSmem, slots));

/// Shared address of `MergeSmem` field `$f`.
macro_rules! merge_at {
    ($f:ident) => {
        crate::smem_addr!(MergeSmem, $f)
    };
}

/// The CTA's work: query row `t`, KV head `kh`, slots `slot0 .. slot0 +
/// nslots` of partition `part`, and the row's record (`info`: loaded by
/// [`DecodeCta::new`], its fields waited for only where [`DecodeCta::sk`],
/// [`DecodeCta::qp`], [`DecodeCta::nblocks`] and the page lookup use them).
struct DecodeCta {
    t: u32,
    kh: u32,
    part: u32,
    group: u32,
    info: RowInfo,
    slot0: u32,
    nslots: u32,
}

impl DecodeCta {
    /// The scheduler: `(t, kh, part)` of CTA `(t * n_kv_heads + kh) *
    /// parts + part`; `None` past the grid or on empty shapes.
    #[inline(always)]
    fn schedule(p: &MsaDecodeParams) -> Option<(u32, u32, u32)> {
        let cta = block_idx_x();
        if p.n_kv_heads == 0 || p.parts == 0 || p.cache.num_pages == 0 || cta >= p.num_rows * p.n_kv_heads * p.parts {
            return None;
        }
        Some((cta / p.parts / p.n_kv_heads, (cta / p.parts) % p.n_kv_heads, cta % p.parts))
    }

    /// The work of a scheduled CTA. Issues the row record's load and
    /// nothing that waits for it: what derives from the record is computed
    /// where it is used. (Computed here, before the scheduler's `None`
    /// join, it made the kernel wait a round trip for the record before
    /// issuing Q and the slot id; see the kernel.)
    #[inline(always)]
    unsafe fn new(p: &MsaDecodeParams, (t, kh, part): (u32, u32, u32)) -> Self {
        let per = p.topk.div_ceil(p.parts);
        let slot0 = (part * per).min(p.topk);
        DecodeCta {
            t,
            kh,
            part,
            group: (p.n_heads / p.n_kv_heads).min(16),
            info: ld_record(p.row_info.ptr().add(t as usize)),
            slot0,
            nslots: ((slot0 + per).min(p.topk) - slot0).min(ATT_MAX_SLOTS),
        }
    }

    /// Keys of the row's sequence.
    #[inline(always)]
    fn sk(&self) -> u32 {
        self.info.seqlen_k
    }

    /// The row's position, clamped into the sequence.
    #[inline(always)]
    fn qp(&self) -> u32 {
        self.info.q_pos.min(self.sk().max(1) - 1)
    }

    /// Blocks the row may attend (past the query's own: none of its keys).
    #[inline(always)]
    fn nblocks(&self) -> u32 {
        self.sk().div_ceil(MSA_BLOCK).min(self.qp() / MSA_BLOCK + 1)
    }

    /// First `(row, head)` of the group: `t * n_heads + kh * group`.
    #[inline(always)]
    fn head0(&self, p: &MsaDecodeParams) -> u32 {
        self.t * p.n_heads + self.kh * self.group
    }

    /// Q fragments: M row `m` is query head `kh * group + m` (zero past group).
    #[inline(always)]
    unsafe fn load_q(&self, p: &MsaDecodeParams) -> [[u32; 4]; 8] {
        let (g, c) = (lane_id() >> 2, lane_id() & 3);
        let qb = p.q.ptr().add((self.head0(p) * MSA_HEAD_DIM) as usize);
        let mut a = [[0u32; 4]; 8];
        crate::unroll!(2, HALF => {
            let m = g + 8 * HALF as u32;
            if m < self.group {
                load_row_frags(&mut a, HALF, qb.add((m * MSA_HEAD_DIM) as usize), c, 0);
            }
        });
        a
    }

    /// This thread's slot of the partition: its block id, `-1` past the
    /// partition's slots. A predicated load (no branch), so that it is
    /// issued with the row record and Q, not after them.
    #[inline(always)]
    unsafe fn load_slot(&self, p: &MsaDecodeParams) -> i32 {
        let tid = thread_idx_x();
        let at = (self.kh * p.num_rows + self.t) * p.topk + self.slot0 + tid;
        ld_global_nc_if(p.d_indices.ptr().wrapping_add(at as usize), tid < self.nslots, -1)
    }

    /// Stages the partition's (page, block) pairs from this thread's slot
    /// `blk` ([`DecodeCta::load_slot`]); ids outside the row's blocks or
    /// the page table are skipped.
    #[inline(always)]
    unsafe fn stage_slots(&self, p: &MsaDecodeParams, blk: i32, slots: u32) {
        let tid = thread_idx_x();
        if tid < self.nslots {
            let ok = blk >= 0 && (blk as u32) < self.nblocks() && (blk as u32) < p.cache.max_pages;
            let sp = if ok {
                SlotPage { page: page_of(p.lookup.ptr(), &p.cache, self.info.seq, blk as u32), blk: blk as u32 }
            } else {
                SlotPage { page: u32::MAX, blk: 0 }
            };
            st_shared_u32(slots + tid * 8, sp.page);
            st_shared_u32(slots + tid * 8 + 4, sp.blk);
        }
        sync_threads();
    }
}

/// Partial decode attention: scheduler, main loop, epilogue.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn msa_attention_partial(p: MsaDecodeParams) {
    grid_prologue();
    let Some(at) = DecodeCta::schedule(&p) else {
        return;
    };
    let cta = DecodeCta::new(&p, at);
    // Graph mode: the header's epoch, loaded now and tested only by the
    // epilogue (nothing waits for it before then).
    let epoch = header_epoch(p.graph, p.graph_epoch);
    // The prologue's global loads (the row record, issued by `new`; the
    // slot id; Q) are all issued before anything waits for one of them: one
    // round trip before the first barrier when every slot is -1 (SASS: the
    // slot id's LDG at instruction 115, before Q's; the record's at 167,
    // after them, ptxas' order; BAR at 207), two with a page lookup.
    // When the scheduler computed nblocks from the record, the kernel waited
    // for the record first, then issued Q's 32 loads a warp and the slot id
    // after them (BAR at 294). 1cd35ed also waited for the record before
    // loading the slot id, but had issued Q with the record, so Q's loads
    // were behind it by then: the likely cause of the empty-selection
    // decode's +0.35 µs against 1cd35ed (not measured yet).
    let blk = cta.load_slot(&p);
    let a = cta.load_q(&p);
    let slots = crate::smem_addr!(MainSmem, slots);
    cta.stage_slots(&p, blk, slots);
    let (st, o) = mainloop(&p, &cta, &a, slots);
    sync_threads(); // the stages are free: the epilogue's map lies over them
    merge_warps(st, &o);
    let stale = epoch != p.graph_epoch;
    if stale && thread_idx_x() == 0 {
        set_fault(p.graph);
    }
    write_partial(&p, &cta, stale);
    if p.clustered != 0 {
        cluster_merge(&p, cta.head0(&p), cta.group);
    }
}

/// This warp's online softmax over its 32 keys of every selected block:
/// half-step `u` loads K (u even) or V (u odd) of slot `u / 2`. Returns the
/// rows' (max, sum) (this thread's part of the sum) and O.
#[inline(always)]
unsafe fn mainloop(p: &MsaDecodeParams, cta: &DecodeCta, a: &[[u32; 4]; 8], slots: u32) -> ([LseState; 2], [[f32; 4]; D_TILES]) {
    let tid = thread_idx_x();
    let ring = Ring { base: crate::smem_addr!(MainSmem, stages) };
    let issue = |u: u32, dst: u32| {
        let page = ld_shared_u32(slots + (u / 2) * 8);
        if page != u32::MAX {
            let plane = if u % 2 == 0 { p.cache.k_off } else { p.cache.v_off };
            KvBlock::new(p.kv.ptr(), &p.cache, page, plane, cta.kh, p.n_kv_heads).load::<Rows256, ATT_THREADS>(dst, tid);
        }
    };
    let sl2 = p.scale * LOG2E;
    let mut st = [LseState::EMPTY; 2]; // rows g and g + 8
    let mut o = [[0f32; 4]; D_TILES];
    // The P fragments carry from a K half-step to its V.
    let mut pa = [[0u32; 4]; WARP_NT / 2];
    ring.run(2 * cta.nslots, issue, |u, tile| {
        let i = u / 2;
        if ld_shared_u32(slots + i * 8) == u32::MAX {
            return;
        }
        let blk_base = ld_shared_u32(slots + i * 8 + 4) * MSA_BLOCK;
        if u % 2 == 1 {
            if blk_base + MSA_BLOCK > cta.sk() {
                KvBlock::zero_tail::<Rows256, ATT_THREADS>(tile, cta.sk() - blk_base, tid);
                sync_threads();
            }
            pv_step(&mut o, &pa, tile);
        } else {
            let s = qk_step(a, tile, blk_base + warp_id() * WARP_KEYS, cta.qp(), sl2);
            pa = softmax_step(&mut st, &mut o, &s);
        }
    });
    (st, o)
}

/// S = Q Kᵀ for this warp's 32 keys (from `kbase`), scaled into the log2
/// domain; keys past `qp` are `-inf`.
#[inline(always)]
unsafe fn qk_step(a: &[[u32; 4]; 8], ks: u32, kbase: u32, qp: u32, sl2: f32) -> [[f32; 4]; WARP_NT] {
    let (warp, lane) = (warp_id(), lane_id());
    let c = lane & 3;
    let mut sacc = [[0f32; 4]; WARP_NT];
    crate::unroll!(4, KK => {
        let mut bf = [[0u32; 4]; WARP_NT];
        for (j, bj) in bf.iter_mut().enumerate() {
            let r = warp * WARP_KEYS + j as u32 * 8 + (lane & 7);
            *bj = ldmatrix_x4(ks + Rows256::at(r, KK as u32 * 4 + (lane >> 3)));
        }
        for j in 0..WARP_NT {
            let x = mma_bf16_16816(a[2 * KK], [bf[j][0], bf[j][1]], sacc[j]);
            sacc[j] = mma_bf16_16816(a[2 * KK + 1], [bf[j][2], bf[j][3]], x);
        }
    });
    crate::unroll!(4, J => {
        crate::unroll!(4, E => {
            let pos = kbase + J as u32 * 8 + 2 * c + (E as u32 & 1);
            sacc[J][E] = if pos <= qp { sacc[J][E] * sl2 } else { f32::NEG_INFINITY };
        });
    });
    sacc
}

/// The online softmax step for one block: rescales the state and O to the
/// new row maxima and returns P = exp2(S - m) packed as A fragments (two
/// n-tiles = one k16 step).
#[inline(always)]
fn softmax_step(st: &mut [LseState; 2], o: &mut [[f32; 4]; D_TILES], s: &[[f32; 4]; WARP_NT]) -> [[u32; 4]; WARP_NT / 2] {
    let mut bmax = [f32::NEG_INFINITY; 2];
    crate::unroll!(4, J => {
        crate::unroll!(4, E => { bmax[E >> 1] = fmax(bmax[E >> 1], s[J][E]); });
    });
    let mut corr = [1f32; 2];
    let mut m_use = [0f32; 2];
    for h in 0..2 {
        (corr[h], m_use[h]) = st[h].advance(quad_max_f32(bmax[h]));
    }
    crate::unroll!(16, D => {
        crate::unroll!(4, E => { o[D][E] *= corr[E >> 1]; });
    });
    let mut pa = [[0u32; 4]; WARP_NT / 2];
    crate::unroll!(4, J => {
        let mut pr = [0f32; 4];
        crate::unroll!(4, E => { pr[E] = exp2(s[J][E] - m_use[E >> 1]); });
        st[0].l += pr[0] + pr[1];
        st[1].l += pr[2] + pr[3];
        pa[J / 2][2 * (J & 1)] = pack_bf16x2(pr[0], pr[1]);
        pa[J / 2][2 * (J & 1) + 1] = pack_bf16x2(pr[2], pr[3]);
    });
    pa
}

/// O += P V for this warp's 32 keys: V rows are keys, `ldmatrix.trans`
/// gives the B fragments.
#[inline(always)]
unsafe fn pv_step(o: &mut [[f32; 4]; D_TILES], pa: &[[u32; 4]; WARP_NT / 2], vs: u32) {
    let (warp, lane) = (warp_id(), lane_id());
    crate::unroll!(2, KS => {
        crate::unroll!(8, DP => {
            let r = warp * WARP_KEYS + KS as u32 * 16 + (lane & 7) + 8 * ((lane >> 3) & 1);
            let bv = ldmatrix_x4_trans(vs + Rows256::at(r, DP as u32 * 2 + (lane >> 4)));
            o[2 * DP] = mma_bf16_16816(pa[KS], [bv[0], bv[1]], o[2 * DP]);
            o[2 * DP + 1] = mma_bf16_16816(pa[KS], [bv[2], bv[3]], o[2 * DP + 1]);
        });
    });
}

/// Merges the 4 warps' (max, sum, O) through shared memory ([`MergeSmem`]):
/// each warp's O rescaled to the CTA's max in `os`, per head 1 / sum and the
/// log2-sum-exp in `hl`.
#[inline(always)]
unsafe fn merge_warps(mut st: [LseState; 2], o: &[[f32; 4]; D_TILES]) {
    let (warp, lane, tid) = (warp_id(), lane_id(), thread_idx_x());
    let (g, c) = (lane >> 2, lane & 3);
    let (ml, os, hl) = (merge_at!(ml), merge_at!(os), merge_at!(hl));
    let ml_at = |w: u32, m: u32| ml + ((w * 16 + m) * 2) * 4;
    for (h, s) in st.iter_mut().enumerate() {
        let l = s.l + shfl_xor_f32(s.l, 1);
        s.l = l + shfl_xor_f32(l, 2);
        if c == 0 {
            st_shared_f32(ml_at(warp, g + 8 * h as u32), s.m);
            st_shared_f32(ml_at(warp, g + 8 * h as u32) + 4, s.l);
        }
    }
    sync_threads();
    let cta_max = |m: u32| {
        let mut mx = f32::NEG_INFINITY;
        for w in 0..WARPS {
            mx = fmax(mx, ld_shared_f32(ml_at(w, m)));
        }
        mx
    };
    crate::unroll!(2, h => {
        let m = g + 8 * h as u32;
        let mine = merge_weight(st[h].m, cta_max(m));
        crate::unroll!(16, D => {
            let at = os + ((warp * 16 + m) * OS_STRIDE as u32 + D as u32 * 8 + 2 * c) * 4;
            st_shared_f32(at, o[D][2 * h] * mine);
            st_shared_f32(at + 4, o[D][2 * h + 1] * mine);
        });
    });
    if tid < 16 {
        let mut sum = LseState { m: cta_max(tid), l: 0.0 };
        if sum.m != f32::NEG_INFINITY {
            for w in 0..WARPS {
                sum.l += ld_shared_f32(ml_at(w, tid) + 4) * exp2(ld_shared_f32(ml_at(w, tid)) - sum.m);
            }
        }
        let (inv, lse2) = sum.finish();
        st_shared_f32(hl + tid * 8, inv);
        st_shared_f32(hl + tid * 8 + 4, lse2);
    }
    sync_threads();
}

/// Writes the CTA's normalised partial: thread `d` owns dim `d` of every
/// head (shared-memory reads without bank conflicts, coalesced writes); to
/// shared memory for the cluster merge, to `out` / `lse` with one
/// partition, else to `part_o` / `part_lse`. A `stale` graph launch
/// writes NaN with a log2-sum-exp of `+inf`, which every merge after it
/// turns into NaN (`inf - inf`), so no stale value reaches `out`.
#[inline(always)]
unsafe fn write_partial(p: &MsaDecodeParams, cta: &DecodeCta, stale: bool) {
    let (os, hl) = (merge_at!(os), merge_at!(hl));
    let (fin_o, fin_lse) = (merge_at!(fin_o), merge_at!(fin_lse));
    let d = thread_idx_x();
    for m in 0..cta.group {
        let mut v = 0f32;
        for w in 0..WARPS {
            v += ld_shared_f32(os + ((w * 16 + m) * OS_STRIDE as u32 + d) * 4);
        }
        // inv = 0: nothing attended, or a NaN sum (a NaN score), whose O is
        // NaN: 0 either way.
        let inv = ld_shared_f32(hl + m * 8);
        v = if inv == 0.0 { 0.0 } else { v * inv };
        let mut lse2 = ld_shared_f32(hl + m * 8 + 4);
        if stale {
            (v, lse2) = (f32::NAN, f32::INFINITY);
        }
        let row_head = (cta.head0(p) + m) as usize;
        let part_at = cta.part as usize * (p.num_rows * p.n_heads) as usize + row_head;
        if p.clustered != 0 {
            st_shared_f32(fin_o + (m * MSA_HEAD_DIM + d) * 4, v);
            if d == 0 {
                st_shared_f32(fin_lse + m * 4, lse2);
            }
        } else if p.parts == 1 {
            st_global(p.out.ptr().add(row_head * MSA_HEAD_DIM as usize + d as usize), f32_to_bf16(v));
            if d == 0 && !p.lse.is_null() {
                st_global(p.lse.ptr().add(row_head), lse2 * LN2);
            }
        } else {
            st_global(p.part_o.ptr().add(part_at * MSA_HEAD_DIM as usize + d as usize), v);
            if d == 0 {
                st_global(p.part_lse.ptr().add(part_at), lse2);
            }
        }
    }
}

/// The cluster's merge: after a cluster barrier, CTA rank `r` merges heads
/// `r, r + parts, …` of the group, thread `d` one dim, reading every
/// partition's O and log2-sum-exp from its CTA's shared memory in rank
/// order; a second barrier keeps every CTA's shared memory alive until all
/// have read it. `head0`: row × n_heads + the group's first head.
#[inline(always)]
unsafe fn cluster_merge(p: &MsaDecodeParams, head0: u32, group: u32) {
    let (fin_o, fin_lse) = (merge_at!(fin_o), merge_at!(fin_lse));
    cluster_sync();
    let d = thread_idx_x();
    let mut m = cluster_ctarank();
    while m < group {
        let mut pl = [f32::NEG_INFINITY; ATT_MAX_CLUSTER as usize];
        let mut po = [0f32; ATT_MAX_CLUSTER as usize];
        crate::unroll!(16, P => {
            if (P as u32) < p.parts {
                pl[P] = ld_shared_cluster_f32(map_shared_rank(fin_lse + m * 4, P as u32));
                po[P] = ld_shared_cluster_f32(map_shared_rank(fin_o + (m * MSA_HEAD_DIM + d) * 4, P as u32));
            }
        });
        write_merged(p.out, p.lse, (head0 + m) as usize, d as usize, &pl, &po, p.parts);
        m += p.parts;
    }
    cluster_sync();
}

/// Writes element `d` of row-head `rh` of `out` (and from dim 0 its
/// natural-log LSE unless `lse` is null) from `parts` normalised partials
/// (`tile::softmax::merge_normalised`).
#[inline(always)]
unsafe fn write_merged<const N: usize>(
    out: sparse_attn_abi::DPtrMut<u16>,
    lse: sparse_attn_abi::DPtrMut<f32>,
    rh: usize,
    d: usize,
    pl: &[f32; N],
    po: &[f32; N],
    parts: u32,
) {
    let (v, lse2) = merge_normalised(pl, po, parts);
    st_global(out.ptr().add(rh * MSA_HEAD_DIM as usize + d), f32_to_bf16(v));
    if d == 0 && !lse.is_null() {
        st_global(lse.ptr().add(rh), lse2 * LN2);
    }
}

/// Merges the partitions of [`msa_attention_partial`] ([`MsaCombineParams`]):
/// one CTA of 128 threads (one per dim) per (row, head). Every partition's
/// log2-sum-exp and output element are loaded at once (up to
/// `ATT_MAX_PARTS`, unrolled into registers: one memory round trip, not one
/// per partition), then merged in order 0, 1, … so the result is the same
/// bits on every run.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn msa_attention_combine(p: MsaCombineParams) {
    grid_prologue();
    let rh = block_idx_x();
    let total = p.num_rows * p.n_heads;
    if rh >= total {
        return;
    }
    let d = thread_idx_x() as usize;
    let mut pl = [f32::NEG_INFINITY; ATT_MAX_PARTS as usize];
    let mut po = [0f32; ATT_MAX_PARTS as usize];
    crate::unroll!(32, P => {
        if (P as u32) < p.parts {
            let at = (P as u32 * total + rh) as usize;
            pl[P] = ld_global_nc(p.part_lse.ptr().add(at));
            po[P] = ld_global_nc(p.part_o.ptr().add(at * MSA_HEAD_DIM as usize + d));
        }
    });
    write_merged(p.out, p.lse, rh as usize, d, &pl, &po, p.parts);
}

//! MSA block-sparse attention, query-major: decode (`q_len = 1` per
//! sequence) and, with the per-token causal rule, prefill / speculative rows.
//!
//! `msa_attention_partial`: one CTA per (sequence, KV head, partition). The
//! partition's selected 128-token blocks stream through an `ATT_STAGES`-deep
//! `cp.async` pipeline of half-steps (the K tile of a block, then its V tile;
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
//! `pos >= seqlen_k` (the unwritten tail of the last page) are zeroed.

use sparse_attn_abi::msa::*;
use crate::arch::*;

const ROW_BYTES: u32 = MSA_HEAD_DIM * 2;
const ROW_CHUNKS: u32 = ROW_BYTES / 16;
const K_STEPS: usize = (MSA_HEAD_DIM / 16) as usize;
/// Dim n-tiles of the output (8 dims each).
const D_TILES: usize = (MSA_HEAD_DIM / 8) as usize;
const WARPS: u32 = ATT_THREADS / 32;
/// Keys of a block each warp owns, and their n-tiles.
const WARP_KEYS: u32 = MSA_BLOCK / WARPS;
const WARP_NT: usize = (WARP_KEYS / 8) as usize;
/// Row stride (f32) of the warp-merge buffer: 8 floats of padding spread a
/// warp's stores of 8 rows over all banks (2-way instead of 8-way conflicts).
const OS_STRIDE: u32 = MSA_HEAD_DIM + 8;
// The epilogue gives each thread one dim.
const _: () = assert!(ATT_THREADS == MSA_HEAD_DIM);
const LOG2E: f32 = core::f32::consts::LOG2_E;
const LN2: f32 = core::f32::consts::LN_2;

/// Partial decode attention.
///
/// * `q`: bf16 `[rows, n_heads, 128]`
/// * `kv`: bf16 main cache `[num_pages, 2, layers, 128, n_kv_heads, 128]`;
///   K of token `s` of page `p` for head `kh` at
///   `p * page_stride + k_off + (s * n_kv_heads + kh) * 128`, V at `v_off`
/// * `lookup`: `[batch, max_pages]`; `d_indices`: i32 `[n_kv_heads, rows, topk]`
/// * `row_info`: `[rows, 4]`: the row's sequence (row of `lookup`), that
///   sequence's `seqlen_k`, the row's query position (keys `pos <= q_pos`
///   are visible; decode: `seqlen_k - 1`), and a word only `msa_prefill` reads
/// * `part_o`: f32 `[parts, rows, n_heads, 128]`, `part_lse`: f32
///   `[parts, rows, n_heads]` (log2 domain) — written when `parts > 1`
/// * `out`: bf16 `[rows, n_heads, 128]`, `lse`: f32 `[rows, n_heads]` or
///   null — written when `parts == 1` or `clustered`
/// * `clustered` (1 or 0): the `parts` CTAs of each (row, KV head) form a
///   thread-block cluster (`parts <= ATT_MAX_CLUSTER`, launched so) and merge their
///   partials through distributed shared memory instead of `part_o` /
///   `part_lse` and the combine kernel: CTA rank `r` merges heads
///   `r, r + parts, …` in partition order (deterministic).
#[no_mangle]
pub unsafe extern "ptx-kernel" fn msa_attention_partial(
    q: *const u16,
    kv: *const u16,
    lookup: *const u32,
    d_indices: *const i32,
    row_info: *const u32,
    part_o: *mut f32,
    part_lse: *mut f32,
    out: *mut u16,
    lse: *mut f32,
    rows: u32,
    n_heads: u32,
    n_kv_heads: u32,
    max_pages: u32,
    num_pages: u32,
    page_stride: u64,
    k_off: u64,
    v_off: u64,
    topk: u32,
    parts: u32,
    scale: f32,
    clustered: u32,
) {
    grid_prologue();
    let cta = block_idx_x();
    if n_kv_heads == 0 || parts == 0 || num_pages == 0 || cta >= rows * n_kv_heads * parts {
        return;
    }
    let part = cta % parts;
    let kh = (cta / parts) % n_kv_heads;
    let t = cta / parts / n_kv_heads; // query row
    let group = (n_heads / n_kv_heads).min(16);
    let (warp, lane, tid) = (warp_id(), lane_id(), thread_idx_x());
    let (g, c) = (lane >> 2, lane & 3);
    let info = row_info.add(ATT_ROW_WORDS * t as usize);
    let seq = ld_global_nc_u32(info);
    let sk = ld_global_nc_u32(info.add(1));
    let qp = ld_global_nc_u32(info.add(2)).min(sk.max(1) - 1);
    // Blocks past the query's own see none of its keys: skipped like ids
    // past the sequence.
    let nblocks = sk.div_ceil(MSA_BLOCK).min(qp / MSA_BLOCK + 1);
    let per = topk.div_ceil(parts);
    let slot0 = (part * per).min(topk);
    let nslots = (slot0 + per).min(topk) - slot0;

    // Q fragments: M row m = query head kh * group + m (zero past group).
    let qb = q.add(((t * n_heads + kh * group) * MSA_HEAD_DIM) as usize);
    let mut a = [[0u32; 4]; K_STEPS];
    crate::unroll!(2, HALF => {
        let m = g + 8 * HALF as u32;
        if m < group {
            let qrow = qb.add((m * MSA_HEAD_DIM) as usize);
            crate::unroll!(8, KS => {
                let k0 = KS * 16 + 2 * c as usize;
                a[KS][HALF] = ld_global_nc_u32(qrow.add(k0) as *const u32);
                a[KS][2 + HALF] = ld_global_nc_u32(qrow.add(k0 + 8) as *const u32);
            });
        }
    });

    // The partition's pages (u32::MAX: slot skipped), staged once.
    let smem = dynamic_smem();
    let pages = smem + ATT_STAGES * MSA_BLOCK_BYTES; // [ATT_MAX_SLOTS] (page, block)
    if tid < nslots.min(ATT_MAX_SLOTS) {
        let slot = slot0 + tid;
        let blk = *d_indices.add(((kh * rows + t) * topk + slot) as usize);
        let (page, blk) = if blk >= 0 && (blk as u32) < nblocks && (blk as u32) < max_pages {
            let lk = lookup.add((seq * max_pages + blk as u32) as usize);
            (ld_global_nc_u32(lk).min(num_pages - 1), blk as u32)
        } else {
            (u32::MAX, 0)
        };
        st_shared_u32(pages + tid * 8, page);
        st_shared_u32(pages + tid * 8 + 4, blk);
    }
    sync_threads();
    let nslots = nslots.min(ATT_MAX_SLOTS);

    let tok_stride = (n_kv_heads * MSA_HEAD_DIM) as usize;
    let head_off = (kh * MSA_HEAD_DIM) as usize;
    // Half-step u loads K (u even) or V (u odd) of slot u / 2 into stage
    // u % ATT_STAGES.
    let load = |u: u32| {
        let page = ld_shared_u32(pages + (u / 2) * 8);
        if page == u32::MAX {
            return;
        }
        let off = if u % 2 == 0 { k_off } else { v_off };
        let src =
            kv.add(page as usize * page_stride as usize + head_off + off as usize) as *const u8;
        let dst = smem + (u % ATT_STAGES) * MSA_BLOCK_BYTES;
        let mut ch = tid;
        while ch < MSA_BLOCK_BYTES / 16 {
            let (r, cc) = (ch / ROW_CHUNKS, ch % ROW_CHUNKS);
            let so = (r as usize * tok_stride) * 2 + cc as usize * 16;
            cp_async_16(dst + r * ROW_BYTES + ((cc ^ (r & 7)) << 4), src.add(so));
            ch += ATT_THREADS;
        }
    };

    let sl2 = scale * LOG2E;
    let mut m_run = [f32::NEG_INFINITY; 2]; // running max (log2 domain) of rows g, g+8
    let mut l_run = [0f32; 2]; // this thread's part of the running sum
    let mut o = [[0f32; 4]; D_TILES];

    // The P fragments and the row state carry from a K half-step to its V.
    let mut pa = [[0u32; 4]; WARP_NT / 2];
    let halves = 2 * nslots;
    for u in 0..ATT_STAGES - 1 {
        if u < halves {
            load(u);
        }
        cp_async_commit();
    }
    for u in 0..halves {
        cp_async_wait::<{ ATT_STAGES - 2 }>();
        sync_threads();
        if u + ATT_STAGES - 1 < halves {
            load(u + ATT_STAGES - 1);
        }
        cp_async_commit();
        let i = u / 2;
        if ld_shared_u32(pages + i * 8) == u32::MAX {
            continue;
        }
        let blk_base = ld_shared_u32(pages + i * 8 + 4) * MSA_BLOCK;
        let tile = smem + (u % ATT_STAGES) * MSA_BLOCK_BYTES;
        if u % 2 == 1 {
            let vs = tile;
            if blk_base + MSA_BLOCK > sk {
                // The last page's unwritten tail: its P is 0, but 0 · NaN is
                // NaN in P·V, so the V rows past seqlen_k are zeroed first.
                let mut ch = (sk - blk_base) * ROW_CHUNKS + tid;
                while ch < MSA_BLOCK_BYTES / 16 {
                    st_shared_zero16(vs + ch * 16);
                    ch += ATT_THREADS;
                }
                sync_threads();
            }
            // O += P V: V rows are keys; ldmatrix.trans gives the B fragments.
            crate::unroll!(2, KS => {
                crate::unroll!(8, DP => {
                    let r = warp * WARP_KEYS + KS as u32 * 16 + (lane & 7) + 8 * ((lane >> 3) & 1);
                    let cc = DP as u32 * 2 + (lane >> 4);
                    let bv = ldmatrix_x4_trans(vs + r * ROW_BYTES + ((cc ^ (r & 7)) << 4));
                    o[2 * DP] = mma_bf16_16816(pa[KS], [bv[0], bv[1]], o[2 * DP]);
                    o[2 * DP + 1] = mma_bf16_16816(pa[KS], [bv[2], bv[3]], o[2 * DP + 1]);
                });
            });
            continue;
        }
        let kbase = blk_base + warp * WARP_KEYS;
        let ks = tile;

        // S = Q Kᵀ for this warp's 32 keys.
        let mut sacc = [[0f32; 4]; WARP_NT];
        crate::unroll!(4, KK => {
            let mut bf = [[0u32; 4]; WARP_NT];
            for (j, bj) in bf.iter_mut().enumerate() {
                let r = warp * WARP_KEYS + j as u32 * 8 + (lane & 7);
                let cc = KK as u32 * 4 + (lane >> 3);
                *bj = ldmatrix_x4(ks + r * ROW_BYTES + ((cc ^ (r & 7)) << 4));
            }
            for j in 0..WARP_NT {
                let x = mma_bf16_16816(a[2 * KK], [bf[j][0], bf[j][1]], sacc[j]);
                sacc[j] = mma_bf16_16816(a[2 * KK + 1], [bf[j][2], bf[j][3]], x);
            }
        });
        // Mask the tail, scale into the log2 domain, block row max.
        let mut bmax = [f32::NEG_INFINITY; 2];
        crate::unroll!(4, J => {
            crate::unroll!(4, E => {
                let pos = kbase + J as u32 * 8 + 2 * c + (E as u32 & 1);
                sacc[J][E] = if pos <= qp { sacc[J][E] * sl2 } else { f32::NEG_INFINITY };
                bmax[E >> 1] = fmax(bmax[E >> 1], sacc[J][E]);
            });
        });
        let mut corr = [1f32; 2];
        let mut m_use = [0f32; 2];
        for h in 0..2 {
            let m_new = fmax(m_run[h], quad_max_f32(bmax[h]));
            // Nothing seen yet: keep exp2 finite (every p is 0 then).
            m_use[h] = if m_new == f32::NEG_INFINITY {
                0.0
            } else {
                m_new
            };
            corr[h] = exp2(m_run[h] - m_use[h]);
            m_run[h] = m_new;
            l_run[h] *= corr[h];
        }
        crate::unroll!(16, D => {
            crate::unroll!(4, E => { o[D][E] *= corr[E >> 1]; });
        });
        // P = exp2(S - m), packed as A fragments (two n-tiles = one k16 step).
        crate::unroll!(4, J => {
            let mut p = [0f32; 4];
            crate::unroll!(4, E => { p[E] = exp2(sacc[J][E] - m_use[E >> 1]); });
            l_run[0] += p[0] + p[1];
            l_run[1] += p[2] + p[3];
            pa[J / 2][2 * (J & 1)] = pack_bf16x2(p[0], p[1]);
            pa[J / 2][2 * (J & 1) + 1] = pack_bf16x2(p[2], p[3]);
        });
    }
    cp_async_wait::<0>();
    sync_threads(); // stages free: reused below

    // Merge the 4 warps through shared memory: ml [warps, 16, 2] f32 (each
    // warp's max and sum per head), os [warps, 16, OS_STRIDE] f32 (its O,
    // rescaled to the CTA's max), hl [16, 2] f32 (per head: 1 / sum and the
    // log2-sum-exp).
    let ml = smem;
    let os = smem + WARPS * 16 * 8;
    let hl = os + WARPS * 16 * OS_STRIDE * 4;
    for h in 0..2 {
        let l = l_run[h] + shfl_xor_f32(l_run[h], 1);
        l_run[h] = l + shfl_xor_f32(l, 2);
        if c == 0 {
            let at = ml + ((warp * 16 + g + 8 * h as u32) * 2) * 4;
            st_shared_f32(at, m_run[h]);
            st_shared_f32(at + 4, l_run[h]);
        }
    }
    sync_threads();
    crate::unroll!(2, h => {
        let m = g + 8 * h as u32;
        let mut mx = f32::NEG_INFINITY;
        for w in 0..WARPS {
            mx = fmax(mx, ld_shared_f32(ml + ((w * 16 + m) * 2) * 4));
        }
        let mine = if mx == f32::NEG_INFINITY { 0.0 } else { exp2(m_run[h] - mx) };
        crate::unroll!(16, D => {
            let col = D as u32 * 8 + 2 * c;
            let at = os + ((warp * 16 + m) * OS_STRIDE + col) * 4;
            st_shared_f32(at, o[D][2 * h] * mine);
            st_shared_f32(at + 4, o[D][2 * h + 1] * mine);
        });
    });
    if tid < 16 {
        let m = tid;
        let (mut mx, mut l) = (f32::NEG_INFINITY, 0f32);
        for w in 0..WARPS {
            mx = fmax(mx, ld_shared_f32(ml + ((w * 16 + m) * 2) * 4));
        }
        if mx != f32::NEG_INFINITY {
            for w in 0..WARPS {
                let at = ml + ((w * 16 + m) * 2) * 4;
                l += ld_shared_f32(at + 4) * exp2(ld_shared_f32(at) - mx);
            }
        }
        let inv = if l > 0.0 { 1.0 / l } else { 0.0 };
        let lse2 = if l > 0.0 {
            mx + log2(l)
        } else {
            f32::NEG_INFINITY
        };
        st_shared_f32(hl + m * 8, inv);
        st_shared_f32(hl + m * 8 + 4, lse2);
    }
    sync_threads();
    // This CTA's normalised partial, for the cluster merge: O [16, 128] f32
    // and log2-sum-exp [16], in the last stage (free by now).
    let fin_o = smem + 2 * MSA_BLOCK_BYTES;
    let fin_lse = fin_o + 16 * MSA_HEAD_DIM * 4;
    // Thread t owns dim t of every head: shared-memory reads without bank
    // conflicts and coalesced writes.
    let d = tid;
    for m in 0..group {
        let mut v = 0f32;
        for w in 0..WARPS {
            v += ld_shared_f32(os + ((w * 16 + m) * OS_STRIDE + d) * 4);
        }
        v *= ld_shared_f32(hl + m * 8);
        let lse2 = ld_shared_f32(hl + m * 8 + 4);
        let row_head = (t * n_heads + kh * group + m) as usize;
        let part_at = part as usize * (rows * n_heads) as usize + row_head;
        if clustered != 0 {
            st_shared_f32(fin_o + (m * MSA_HEAD_DIM + d) * 4, v);
            if d == 0 {
                st_shared_f32(fin_lse + m * 4, lse2);
            }
        } else if parts == 1 {
            *out.add(row_head * MSA_HEAD_DIM as usize + d as usize) = f32_to_bf16(v);
            if d == 0 && !lse.is_null() {
                *lse.add(row_head) = lse2 * LN2;
            }
        } else {
            *part_o.add(part_at * MSA_HEAD_DIM as usize + d as usize) = v;
            if d == 0 {
                *part_lse.add(part_at) = lse2;
            }
        }
    }
    if clustered != 0 {
        cluster_merge(fin_o, fin_lse, out, lse, t * n_heads + kh * group, group, parts);
    }
}

/// The cluster's merge of [`msa_attention_partial`]: after a cluster barrier,
/// CTA rank `r` merges heads `r, r + parts, …` of the group, thread `d` one
/// dim, reading every partition's O and log2-sum-exp from its CTA's shared
/// memory in rank order; a second barrier keeps every CTA's shared memory
/// alive until all have read it. `head0`: row × n_heads + the group's first head.
#[inline(always)]
unsafe fn cluster_merge(
    fin_o: u32,
    fin_lse: u32,
    out: *mut u16,
    lse: *mut f32,
    head0: u32,
    group: u32,
    parts: u32,
) {
    cluster_sync();
    let d = thread_idx_x();
    let mut m = cluster_ctarank();
    while m < group {
        let mut pl = [f32::NEG_INFINITY; ATT_MAX_CLUSTER as usize];
        let mut po = [0f32; ATT_MAX_CLUSTER as usize];
        crate::unroll!(16, P => {
            if (P as u32) < parts {
                pl[P] = ld_shared_cluster_f32(map_shared_rank(fin_lse + m * 4, P as u32));
                po[P] = ld_shared_cluster_f32(map_shared_rank(
                    fin_o + (m * MSA_HEAD_DIM + d) * 4,
                    P as u32,
                ));
            }
        });
        write_merged(out, lse, (head0 + m) as usize, d as usize, &pl, &po, parts);
        m += parts;
    }
    cluster_sync();
}

/// Merges `parts` normalised partials of one output element, in order 0, 1, …
/// (`pl`: their log2-sum-exp, unused entries `-inf`; `po`: their values),
/// and writes the element of `out` (row-head `rh`, dim `d`) and, from dim 0,
/// the natural-log sum of exponentials to `lse` unless it is null. Nothing
/// attended: 0 and `-inf`.
#[inline(always)]
unsafe fn write_merged<const N: usize>(
    out: *mut u16,
    lse: *mut f32,
    rh: usize,
    d: usize,
    pl: &[f32; N],
    po: &[f32; N],
    parts: u32,
) {
    // Unrolled to 32 (the largest N) so the arrays stay in registers; `P < N`
    // folds away the rest.
    const { assert!(N <= 32) };
    let mut mx = f32::NEG_INFINITY;
    crate::unroll!(32, P => {
        if P < N {
            mx = fmax(mx, pl[P.min(N - 1)]);
        }
    });
    let (mut acc, mut wsum) = (0f32, 0f32);
    if mx != f32::NEG_INFINITY {
        crate::unroll!(32, P => {
            if P < N && (P as u32) < parts {
                let w = exp2(pl[P.min(N - 1)] - mx);
                wsum += w;
                acc += w * po[P.min(N - 1)];
            }
        });
    }
    let v = if wsum > 0.0 { acc / wsum } else { 0.0 };
    *out.add(rh * MSA_HEAD_DIM as usize + d) = f32_to_bf16(v);
    if d == 0 && !lse.is_null() {
        *lse.add(rh) = if wsum > 0.0 {
            (mx + log2(wsum)) * LN2
        } else {
            f32::NEG_INFINITY
        };
    }
}

/// Merges the partitions of [`msa_attention_partial`]: one CTA of 128 threads
/// (one per dim) per (row, head). Every partition's log2-sum-exp and output
/// element are loaded at once (up to `ATT_MAX_PARTS`, unrolled into
/// registers: one memory round trip, not one per partition), then merged in
/// order 0, 1, … so the result is the same bits on every run. `out` bf16
/// `[rows, n_heads, 128]`, `lse` f32 `[rows, n_heads]` (natural log) or null.
#[no_mangle]
pub unsafe extern "ptx-kernel" fn msa_attention_combine(
    part_o: *const f32,
    part_lse: *const f32,
    out: *mut u16,
    lse: *mut f32,
    rows: u32,
    n_heads: u32,
    parts: u32,
) {
    grid_prologue();
    let rh = block_idx_x();
    let total = rows * n_heads;
    if rh >= total {
        return;
    }
    let d = thread_idx_x() as usize;
    let mut pl = [f32::NEG_INFINITY; ATT_MAX_PARTS as usize];
    let mut po = [0f32; ATT_MAX_PARTS as usize];
    crate::unroll!(32, P => {
        if (P as u32) < parts {
            let at = (P as u32 * total + rh) as usize;
            pl[P] = *part_lse.add(at);
            po[P] = *part_o.add(at * MSA_HEAD_DIM as usize + d);
        }
    });
    write_merged(out, lse, rh as usize, d, &pl, &po, parts);
}

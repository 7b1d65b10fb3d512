//! MSA block-sparse attention (`mo.msa.attention.ragged.paged`): decode, and
//! ragged prefill / chunked prefill / speculative rows with the per-token
//! causal rule.
//! Semantics: `shared/spec/msa-attention.md`; kernels:
//! `kernels-gpu/src/msa_attention.rs` (query-major) and
//! `kernels-gpu/src/msa_block_major.rs` (KV-block-major).
//!
//! ```text
//! q          bf16 [num_rows, n_heads, 128]                  (ragged: offsets [batch + 1])
//! kv_cache   bf16 [num_pages, 2, num_layers, 128, n_kv_heads, 128]
//! lookup     u32  [batch, max_pages]
//! d_indices  i32  [n_kv_heads, num_rows, topk]              (block ids, -1 = none)
//! out        bf16 [num_rows, n_heads, 128];  lse f32 [num_rows, n_heads] (optional, natural log)
//! ```
//!
//! Plan/run split: [`MsaAttention::plan`] validates the host metadata, uploads
//! each row's (sequence, seqlen_k, q_pos, plan key base), and picks the path;
//! [`MsaAttention::run`] only launches, so it can be captured in a CUDA
//! graph. The workspace is sized once for `max_rows`.
//!
//! Two paths ([`AttentionPath`]):
//! - **query-major** (decode, every `q_len = 1`): one CTA per (row, KV head,
//!   split-K partition) streams the row's selected blocks. Up to 16
//!   partitions form a thread-block cluster and merge through distributed
//!   shared memory in the same kernel; more are merged by a combine kernel.
//! - **KV-block-major** (any `q_len > 1`): the device inverts `d_indices`
//!   into a CSR (see `msa_block_major`), each selected block is loaded once for
//!   all the rows that chose it, and a combine merges each row's slots.
//!
//! Our choices: ids `>= ceil(seqlen_k / 128)` are skipped like `-1`; the tail
//! of the last page is always masked; a query that attends to nothing gets
//! `out = 0` and `lse = -inf`; a block id listed twice is attended twice.

use cudarc::driver::{CudaSlice, LaunchConfig};
use half::bf16;

pub use crate::abi::config::MsaAttentionConfig;
use crate::abi::msa::*;
use crate::abi::PagedKv;
use crate::batch::{
    CacheExpect, ConfigExt, KvDtype, PageTable, PageTableExt, PagedLayout, PagedLayoutExt,
    RaggedBatch, RaggedBatchExt,
};
use crate::error::{ensure, expect_len, CudaContextExt, Error, Result};
use crate::launch::{dptr, dptr_mut, dptr_opt, record_ptr, record_words, words_of, Kernel};
use crate::msa_block_major::{plan_keys, BlockMajorArgs, MsaBlockMajor};
use crate::Gpu;

/// Split-K partitions for a decode batch: upstream's rule
/// `min(clamp(SMs / (batch * n_kv_heads), 1, 32), topk)`, i.e. about one CTA
/// per SM (the kernel runs one CTA per SM).
///
/// Kept after measuring (H100, 2026-11-24, `bench --sweep-chunk`, µs by
/// partitions 1/2/3/4/8/16): msa-decode-b64-32k 100.9/112.7/115.4/119.7/
/// 145.6/221.1 and msa-decode-tp8 51.9/60.3/62.2/63.2/71.6/97.6 (the rule
/// gives 1); msa-decode-b1-128k 21.7/16.8/-/13.3/11.3/11.7 (the rule gives 16,
/// within noise of the best, 8). Again on an H200 (2026-11-30, µs by
/// partitions 1/2/3/4/8/16): msa-decode-b1-128k 27.0/19.3/17.4/14.6/11.5/11.2
/// and msa-decode-tp8 38.7/43.7/48.5/48.7 (1-4): the rule's 16 and 1 are the
/// best; with the cluster merge, b1-128k 27.0/21.4/17.6/14.4/11.0/9.9.
pub fn decode_partitions(sm_count: usize, batch: usize, n_kv_heads: usize, topk: usize) -> usize {
    let pairs = (batch * n_kv_heads).max(1);
    (sm_count / pairs)
        .clamp(1, ATT_MAX_PARTS as usize)
        .min(topk.max(1))
}

/// Checks a call's host metadata (the spec's "bad input" list):
/// configuration, ragged batch, cache layout, layer, page table.
pub fn validate_attention(
    cfg: &MsaAttentionConfig,
    batch: &RaggedBatch,
    pages: &PageTable,
    layout: &PagedLayout,
    layer: usize,
) -> Result<()> {
    cfg.validate()?;
    batch.validate()?;
    layout.check(
        &CacheExpect {
            dtypes: &[KvDtype::Bf16],
            name: "kv_cache",
            shape: "a K/V cache [num_pages, 2, num_layers, page_size, n_kv_heads, head_dim]",
            kv_dim: 2,
            n_heads: cfg.n_kv_heads,
            head_dim: cfg.head_dim,
            page_size: MSA_BLOCK as usize,
        },
        layer,
    )?;
    pages.validate(batch, layout)?;
    Ok(())
}

/// Which kernels a plan runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttentionPath {
    /// One CTA per (row, KV head, partition); the decode path.
    QueryMajor,
    /// Device CSR plan, one CTA per (block, up to 128 rows for group 16);
    /// the prefill path.
    BlockMajor,
}

/// The path for a batch: block-major as soon as one sequence has more than
/// one new token (its rows share blocks), query-major for pure decode.
pub fn attention_path(max_q_len: usize) -> AttentionPath {
    if max_q_len > 1 {
        AttentionPath::BlockMajor
    } else {
        AttentionPath::QueryMajor
    }
}

#[derive(Clone, Debug)]
struct Plan {
    batch: usize,
    rows: usize,
    max_pages: usize,
    layout: PagedLayout,
    layer: usize,
    parts: usize,
    path: AttentionPath,
}

/// MSA attention (decode and query-major prefill) with its workspace.
pub struct MsaAttention {
    gpu: Gpu,
    cfg: MsaAttentionConfig,
    k_partial: Kernel<MsaDecodeParams>,
    k_combine: Kernel<MsaCombineParams>,
    /// Most partitions merged in a thread-block cluster on this device
    /// (`ATT_MAX_CLUSTER`, or 8 where clusters of 16 do not fit).
    max_cluster: u32,
    max_rows: usize,
    /// Most (row, partition) pairs the partial buffers hold: split-K only
    /// pays for small batches, so this is a few per SM, not `max_rows * 32`.
    part_cap: usize,
    /// `[rows]` [`RowInfo`] as words.
    row_info: CudaSlice<u32>,
    /// `[parts, rows, n_heads, 128]` f32 for `parts * rows <= part_cap`.
    part_o: CudaSlice<f32>,
    /// `[parts, rows, n_heads]` f32 (log2 domain).
    part_lse: CudaSlice<f32>,
    block_major: MsaBlockMajor,
    plan: Option<Plan>,
    force_parts: Option<usize>,
    force_path: Option<AttentionPath>,
    window: Option<usize>,
}

impl MsaAttention {
    /// Loads the kernels and allocates the workspace for up to `max_rows`
    /// query rows (decode: sequences; every later call reuses it). The
    /// block-major path's partials take `max_rows * n_heads * topk * 264`
    /// bytes (M3, 32K rows: 8.9 GB; a decode batch of 128: 35 MB).
    pub fn new(gpu: &Gpu, cfg: MsaAttentionConfig, max_rows: usize) -> Result<Self> {
        cfg.validate()?;
        let max_rows = max_rows.max(1);
        let part_cap = 4 * (gpu.props().sm_count as usize).max(ATT_MAX_PARTS as usize);
        let k_partial = gpu.kernel("msa_attention_partial", ATT_SMEM)?;
        k_partial.allow_clusters_of_16()?;
        let fits = gpu
            .launch(
                &k_partial,
                "the MSA decode kernel",
                &MsaDecodeParams::default(),
            )
            .cluster(ATT_MAX_CLUSTER)
            .max_active_clusters(LaunchConfig {
                grid_dim: (ATT_MAX_CLUSTER, 1, 1),
                block_dim: (ATT_THREADS, 1, 1),
                shared_mem_bytes: ATT_SMEM,
            })?;
        let max_cluster = if fits > 0 { ATT_MAX_CLUSTER } else { 8 };
        Ok(MsaAttention {
            k_partial,
            max_cluster,
            k_combine: gpu.kernel("msa_attention_combine", 0)?,
            row_info: gpu.zeros(words_of::<RowInfo>(max_rows))?,
            block_major: MsaBlockMajor::new(gpu, cfg.n_heads, cfg.n_kv_heads, cfg.topk, max_rows)?,
            part_o: gpu.zeros(part_cap * cfg.n_heads * cfg.head_dim)?,
            part_lse: gpu.zeros(part_cap * cfg.n_heads)?,
            gpu: gpu.clone(),
            cfg,
            max_rows,
            part_cap,
            plan: None,
            force_parts: None,
            force_path: None,
            window: None,
        })
    }

    /// The configuration the op was created with.
    pub fn config(&self) -> &MsaAttentionConfig {
        &self.cfg
    }

    /// Partitions of the current plan.
    pub fn partitions(&self) -> Option<usize> {
        self.plan.as_ref().map(|p| p.parts)
    }

    /// Overrides the split-K rule (clamped to 1 ..= min(32, topk)); `None`
    /// restores it. For tests and benchmarks.
    pub fn force_partitions(&mut self, parts: Option<usize>) {
        self.force_parts = parts;
    }

    /// Overrides the path rule ([`attention_path`]); `None` restores it. For
    /// tests and benchmarks.
    pub fn force_path(&mut self, path: Option<AttentionPath>) {
        self.force_path = path;
    }

    /// Overrides the block-major plan's window of rows (`BM_WINDOW`); for
    /// benchmarks. Takes effect at the next `plan`.
    pub fn force_block_major_window(&mut self, rows: Option<usize>) {
        self.window = rows;
    }

    /// Path of the current plan.
    pub fn path(&self) -> Option<AttentionPath> {
        self.plan.as_ref().map(|p| p.path)
    }

    /// Validates a ragged batch against the cache and uploads its rows'
    /// positions. `layout` is the main KV pool's shape.
    pub fn plan(
        &mut self,
        batch: &RaggedBatch,
        pages: &PageTable,
        layout: &PagedLayout,
        layer: usize,
    ) -> Result<()> {
        self.plan = None;
        validate_attention(&self.cfg, batch, pages, layout, layer)?;
        let (n, rows, cfg) = (batch.batch(), batch.num_rows(), &self.cfg);
        ensure(
            rows <= self.max_rows,
            "input_row_offsets",
            || format!("at most max_rows = {} rows", self.max_rows),
            || rows.to_string(),
        )?;
        let path = self
            .force_path
            .unwrap_or_else(|| attention_path(batch.max_q_len()));
        let (key_base, keys, _) = match path {
            AttentionPath::BlockMajor => {
                plan_keys(batch, self.window.unwrap_or(BM_WINDOW as usize))
            }
            AttentionPath::QueryMajor => (vec![0; rows], Vec::new(), 0),
        };
        let mut info = Vec::with_capacity(rows);
        for b in 0..n {
            let (cache, sk) = (batch.cache_lengths[b], batch.seqlen_k(b) as u32);
            let r0 = batch.input_row_offsets[b] as usize;
            for i in 0..batch.q_len(b) {
                info.push(RowInfo {
                    seq: b as u32,
                    seqlen_k: sk,
                    q_pos: cache + i as u32,
                    key_base: key_base[r0 + i],
                });
            }
        }
        if rows > 0 {
            let words = record_words(&info);
            self.gpu
                .stream()
                .memcpy_htod(words, &mut self.row_info.slice_mut(..words.len()))
                .during(|| "uploading the row positions".into())?;
        }
        if path == AttentionPath::BlockMajor {
            self.block_major.plan(
                &self.gpu,
                &keys,
                rows,
                cfg.n_kv_heads,
                cfg.topk,
                cfg.group(),
            )?;
        }
        let rule = decode_partitions(
            self.gpu.props().sm_count as usize,
            rows,
            cfg.n_kv_heads,
            cfg.topk,
        );
        // A partition stages at most ATT_MAX_SLOTS slots.
        let min_parts = cfg.topk.div_ceil(ATT_MAX_SLOTS as usize).max(1);
        let parts = self
            .force_parts
            .map_or(rule, |p| p.clamp(1, (ATT_MAX_PARTS as usize).min(cfg.topk)))
            .min(self.part_cap / rows.max(1))
            .max(min_parts);
        ensure(
            parts <= (ATT_MAX_PARTS as usize).min(self.part_cap / rows.max(1)),
            "topk",
            || {
                format!(
                    "at most {} for {rows} rows ({} slots in each of at most {} partitions)",
                    ATT_MAX_SLOTS as usize
                        * (ATT_MAX_PARTS as usize).min(self.part_cap / rows.max(1)),
                    ATT_MAX_SLOTS,
                    (ATT_MAX_PARTS as usize).min(self.part_cap / rows.max(1)),
                )
            },
            || cfg.topk.to_string(),
        )?;
        self.plan = Some(Plan {
            batch: n,
            rows,
            max_pages: pages.max_pages,
            layout: *layout,
            layer,
            parts,
            path,
        });
        Ok(())
    }

    /// `lookup` and `d_indices` have the planned sizes.
    fn check_selections(
        &self,
        p: &Plan,
        lookup: &CudaSlice<u32>,
        d_indices: &CudaSlice<i32>,
    ) -> Result<()> {
        let c = &self.cfg;
        expect_len(
            "lookup",
            lookup.len(),
            p.batch * p.max_pages,
            "batch * max_pages",
        )?;
        expect_len(
            "d_indices",
            d_indices.len(),
            c.n_kv_heads * p.rows * c.topk,
            "n_kv_heads * num_rows * topk",
        )
    }

    fn block_major_args(&self, p: &Plan) -> BlockMajorArgs {
        let c = &self.cfg;
        BlockMajorArgs {
            num_rows: p.rows as u32,
            n_heads: c.n_heads as u32,
            n_kv_heads: c.n_kv_heads as u32,
            topk: c.topk as u32,
            cache: Self::paged_kv(p),
            scale: c.scale,
        }
    }

    /// The main cache's planned layer as the kernels see it.
    fn paged_kv(p: &Plan) -> PagedKv {
        PagedKv {
            num_pages: p.layout.num_pages as u32,
            max_pages: p.max_pages as u32,
            page_stride: p.layout.page_stride() as u64,
            k_off: p.layout.layer_offset(0, p.layer) as u64,
            v_off: p.layout.layer_offset(1, p.layer) as u64,
        }
    }

    /// Launches only the device-side CSR plan of a block-major plan (count,
    /// scan, scatter), for timing it apart; `run` launches it too.
    pub fn run_device_plan(
        &self,
        lookup: &CudaSlice<u32>,
        d_indices: &CudaSlice<i32>,
    ) -> Result<()> {
        let p = self.plan.as_ref().ok_or(Error::NotPlanned {
            op: "msa_attention",
        })?;
        self.check_selections(p, lookup, d_indices)?;
        if p.path != AttentionPath::BlockMajor {
            return Ok(());
        }
        self.block_major.device_plan(
            &self.gpu,
            &self.block_major_args(p),
            lookup,
            d_indices,
            &self.row_info,
        )
    }

    /// Launches the attention for the current plan. `lse`, when
    /// given, receives the natural-log sum of exponentials per (row, head).
    pub fn run(
        &self,
        q: &CudaSlice<bf16>,
        kv_cache: &CudaSlice<bf16>,
        lookup: &CudaSlice<u32>,
        d_indices: &CudaSlice<i32>,
        out: &mut CudaSlice<bf16>,
        lse: Option<&mut CudaSlice<f32>>,
    ) -> Result<()> {
        let p = self.plan.as_ref().ok_or(Error::NotPlanned {
            op: "msa_attention",
        })?;
        let c = &self.cfg;
        let (rows, heads) = (p.rows, c.n_heads);
        expect_len(
            "q",
            q.len(),
            rows * heads * c.head_dim,
            "num_rows * n_heads * head_dim",
        )?;
        expect_len(
            "kv_cache",
            kv_cache.len(),
            p.layout.elements(),
            "the planned layout",
        )?;
        self.check_selections(p, lookup, d_indices)?;
        expect_len(
            "out",
            out.len(),
            rows * heads * c.head_dim,
            "num_rows * n_heads * head_dim",
        )?;
        if let Some(l) = lse.as_deref() {
            expect_len("lse", l.len(), rows * heads, "num_rows * n_heads")?;
        }
        if rows == 0 {
            return Ok(());
        }
        if p.path == AttentionPath::BlockMajor {
            let args = self.block_major_args(p);
            return self.block_major.run(
                &self.gpu,
                &args,
                q,
                kv_cache,
                lookup,
                d_indices,
                &self.row_info,
                out,
                lse,
            );
        }
        self.launch_decode(p, q, kv_cache, lookup, d_indices, out, lse)
    }

    /// The query-major (decode) kernel, and the combine kernel when the
    /// partitions do not merge inside a cluster. Up to `max_cluster`
    /// partitions merge inside a thread-block cluster; more write partials
    /// that the combine kernel merges (and then it writes `out` and `lse`).
    #[allow(clippy::too_many_arguments)] // internal: `run`'s checked buffers, passed on
    fn launch_decode(
        &self,
        p: &Plan,
        q: &CudaSlice<bf16>,
        kv_cache: &CudaSlice<bf16>,
        lookup: &CudaSlice<u32>,
        d_indices: &CudaSlice<i32>,
        out: &mut CudaSlice<bf16>,
        lse: Option<&mut CudaSlice<f32>>,
    ) -> Result<()> {
        let (gpu, c) = (&self.gpu, &self.cfg);
        let parts = p.parts as u32;
        let clustered = parts > 1 && parts <= self.max_cluster;
        let lse = lse.map(|l| &*l);
        let params = MsaDecodeParams {
            q: dptr(gpu, q),
            kv: dptr(gpu, kv_cache),
            lookup: dptr(gpu, lookup),
            d_indices: dptr(gpu, d_indices),
            row_info: record_ptr(gpu, &self.row_info),
            part_o: dptr_mut(gpu, &self.part_o),
            part_lse: dptr_mut(gpu, &self.part_lse),
            out: dptr_mut(gpu, out),
            lse: if parts == 1 || clustered {
                dptr_opt(gpu, lse)
            } else {
                Default::default()
            },
            cache: Self::paged_kv(p),
            num_rows: p.rows as u32,
            n_heads: c.n_heads as u32,
            n_kv_heads: c.n_kv_heads as u32,
            topk: c.topk as u32,
            parts,
            scale: c.scale,
            clustered: clustered as u32,
        };
        let cfg = LaunchConfig {
            grid_dim: (params.num_rows * params.n_kv_heads * parts, 1, 1),
            block_dim: (ATT_THREADS, 1, 1),
            shared_mem_bytes: ATT_SMEM,
        };
        let mut l = gpu.launch(&self.k_partial, "the MSA decode kernel", &params);
        if clustered {
            l.cluster(parts);
        }
        // SAFETY: all lengths were checked against the plan; the kernel clamps
        // page ids and skips block ids outside the sequence.
        unsafe { l.run(cfg) }?;
        if parts > 1 && !clustered {
            let cp = MsaCombineParams {
                part_o: dptr(gpu, &self.part_o),
                part_lse: dptr(gpu, &self.part_lse),
                out: params.out,
                lse: dptr_opt(gpu, lse),
                num_rows: params.num_rows,
                n_heads: params.n_heads,
                parts,
            };
            let cfg = LaunchConfig {
                grid_dim: (cp.num_rows * cp.n_heads, 1, 1),
                block_dim: (MSA_HEAD_DIM, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: as above; the partial buffers hold `parts` partitions.
            unsafe {
                gpu.launch(&self.k_combine, "the MSA combine kernel", &cp)
                    .run(cfg)
            }?;
        }
        Ok(())
    }
}

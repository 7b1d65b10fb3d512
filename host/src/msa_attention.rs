//! MSA block-sparse attention (`mo.msa.attention.ragged.paged`), decode path.
//! Semantics: `shared/spec/msa-attention.md`; kernels:
//! `kernels-gpu/src/msa_attention.rs`.
//!
//! ```text
//! q          bf16 [batch, n_heads, 128]                     (one new token per sequence)
//! kv_cache   bf16 [num_pages, 2, num_layers, 128, n_kv_heads, 128]
//! lookup     u32  [batch, max_pages]
//! d_indices  i32  [n_kv_heads, batch, topk]                 (block ids, -1 = none)
//! out        bf16 [batch, n_heads, 128];  lse f32 [batch, n_heads] (optional, natural log)
//! ```
//!
//! Plan/run split: [`MsaDecode::plan`] validates the host metadata, uploads
//! the sequence lengths and picks the split-K partition count;
//! [`MsaDecode::run`] only launches (partial kernel, then the combine when
//! there are several partitions), so it can be captured in a CUDA graph. The
//! workspace (partial outputs) is sized once for `max_batch`.
//!
//! Our choices: ids `>= ceil(seqlen_k / 128)` are skipped like `-1`; the tail
//! of the last page is always masked; a query that attends to nothing gets
//! `out = 0` and `lse = -inf`; a block id listed twice is attended twice.

use cudarc::driver::{CudaFunction, CudaSlice, LaunchConfig, PushKernelArg};
use half::bf16;

use crate::abi::*;
use crate::batch::{CacheExpect, PageTable, PagedLayout, RaggedBatch};
use crate::error::{ensure, CudaContextExt, Error, Result};
use crate::Gpu;

/// What the attention computes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MsaAttentionConfig {
    /// Query heads (`n_kv_heads * group`, group 1..=16).
    pub n_heads: usize,
    pub n_kv_heads: usize,
    /// 128.
    pub head_dim: usize,
    /// Slots of `d_indices` per (KV head, row), 1..=256.
    pub topk: usize,
    /// Multiplies every q·k (the softmax temperature).
    pub scale: f32,
}

impl MsaAttentionConfig {
    /// MiniMax-M3: 64 query heads over 4 KV heads, top-16.
    pub fn minimax_m3() -> Self {
        MsaAttentionConfig {
            n_heads: 64,
            n_kv_heads: 4,
            head_dim: 128,
            topk: 16,
            scale: 1.0 / (128f32).sqrt(),
        }
    }

    pub fn group(&self) -> usize {
        self.n_heads / self.n_kv_heads.max(1)
    }

    fn validate(&self) -> Result<()> {
        if self.head_dim != MSA_HEAD_DIM as usize {
            return Err(Error::Unsupported {
                arg: "head_dim",
                what: format!(
                    "head_dim {} (only {MSA_HEAD_DIM} is implemented)",
                    self.head_dim
                ),
            });
        }
        ensure(
            self.n_kv_heads >= 1 && self.n_heads % self.n_kv_heads == 0,
            "n_heads",
            || format!("a multiple of n_kv_heads = {}", self.n_kv_heads),
            || self.n_heads.to_string(),
        )?;
        if self.group() == 0 || self.group() > ATT_MAX_GROUP as usize {
            return Err(Error::Unsupported {
                arg: "n_heads",
                what: format!(
                    "group n_heads / n_kv_heads = {} (1 ..= {ATT_MAX_GROUP} supported)",
                    self.group()
                ),
            });
        }
        ensure(
            (1..=ATT_MAX_SLOTS as usize).contains(&self.topk),
            "topk",
            || format!("1 ..= {ATT_MAX_SLOTS}"),
            || self.topk.to_string(),
        )
    }
}

/// Split-K partitions for a decode batch: upstream's rule
/// `min(clamp(SMs / (batch * n_kv_heads), 1, 32), topk)`, i.e. about one CTA
/// per SM (the kernel runs one CTA per SM).
///
/// Kept after measuring (H100, 2026-11-24, `bench --sweep-chunk`, µs by
/// partitions 1/2/3/4/8/16): msa-decode-b64-32k 100.9/112.7/115.4/119.7/
/// 145.6/221.1 and msa-decode-tp8 51.9/60.3/62.2/63.2/71.6/97.6 (the rule
/// gives 1); msa-decode-b1-128k 21.7/16.8/-/13.3/11.3/11.7 (the rule gives 16,
/// within noise of the best, 8).
pub fn decode_partitions(sm_count: usize, batch: usize, n_kv_heads: usize, topk: usize) -> usize {
    let pairs = (batch * n_kv_heads).max(1);
    (sm_count / pairs)
        .clamp(1, ATT_MAX_PARTS as usize)
        .min(topk.max(1))
}

/// Checks a decode call's host metadata (the spec's "bad input" list):
/// configuration, one new token per sequence, cache layout, layer, page table.
pub fn validate_decode(
    cfg: &MsaAttentionConfig,
    batch: &RaggedBatch,
    pages: &PageTable,
    layout: &PagedLayout,
    layer: usize,
) -> Result<()> {
    cfg.validate()?;
    batch.validate()?;
    let n = batch.batch();
    if let Some(b) = (0..n).find(|&b| batch.q_len(b) != 1) {
        return Err(Error::Unsupported {
            arg: "input_row_offsets",
            what: format!(
                "sequence {b} has {} new tokens: the decode path takes exactly 1 per sequence \
                 (prefill is not implemented yet)",
                batch.q_len(b)
            ),
        });
    }
    layout.check(
        &CacheExpect {
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

#[derive(Clone, Debug)]
struct Plan {
    batch: usize,
    max_pages: usize,
    layout: PagedLayout,
    layer: usize,
    parts: usize,
}

/// MSA decode attention with its workspace.
pub struct MsaDecode {
    gpu: Gpu,
    cfg: MsaAttentionConfig,
    k_partial: CudaFunction,
    k_combine: CudaFunction,
    max_batch: usize,
    /// `[batch]` keys per sequence.
    seqlen_k: CudaSlice<u32>,
    /// `[ATT_MAX_PARTS, max_batch, n_heads, 128]` f32.
    part_o: CudaSlice<f32>,
    /// `[ATT_MAX_PARTS, max_batch, n_heads]` f32 (log2 domain).
    part_lse: CudaSlice<f32>,
    plan: Option<Plan>,
    force_parts: Option<usize>,
}

impl MsaDecode {
    /// Loads the kernels and allocates the workspace for up to `max_batch`
    /// sequences (every later call reuses it).
    pub fn new(gpu: &Gpu, cfg: MsaAttentionConfig, max_batch: usize) -> Result<Self> {
        cfg.validate()?;
        let max_batch = max_batch.max(1);
        let per_part = max_batch * cfg.n_heads;
        Ok(MsaDecode {
            k_partial: gpu.kernel("msa_decode_partial", ATT_SMEM)?,
            k_combine: gpu.kernel("msa_decode_combine", 0)?,
            seqlen_k: gpu.zeros(max_batch)?,
            part_o: gpu.zeros(ATT_MAX_PARTS as usize * per_part * cfg.head_dim)?,
            part_lse: gpu.zeros(ATT_MAX_PARTS as usize * per_part)?,
            gpu: gpu.clone(),
            cfg,
            max_batch,
            plan: None,
            force_parts: None,
        })
    }

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

    /// Validates a decode batch (`q_len` 1 for every sequence) against the
    /// cache and uploads its lengths. `layout` is the main KV pool's shape.
    pub fn plan(
        &mut self,
        batch: &RaggedBatch,
        pages: &PageTable,
        layout: &PagedLayout,
        layer: usize,
    ) -> Result<()> {
        self.plan = None;
        validate_decode(&self.cfg, batch, pages, layout, layer)?;
        let (n, cfg) = (batch.batch(), &self.cfg);
        ensure(
            n <= self.max_batch,
            "batch",
            || format!("at most max_batch = {}", self.max_batch),
            || n.to_string(),
        )?;
        let lens: Vec<u32> = (0..n).map(|b| batch.seqlen_k(b) as u32).collect();
        if n > 0 {
            self.gpu
                .stream()
                .memcpy_htod(&lens, &mut self.seqlen_k.slice_mut(..n))
                .during(|| "uploading the sequence lengths".into())?;
        }
        let rule = decode_partitions(
            self.gpu.props().sm_count as usize,
            n,
            cfg.n_kv_heads,
            cfg.topk,
        );
        let parts = self
            .force_parts
            .map_or(rule, |p| p.clamp(1, (ATT_MAX_PARTS as usize).min(cfg.topk)));
        self.plan = Some(Plan {
            batch: n,
            max_pages: pages.max_pages,
            layout: *layout,
            layer,
            parts,
        });
        Ok(())
    }

    /// Launches the decode attention for the current plan. `lse`, when
    /// given, receives the natural-log sum of exponentials per (row, head).
    pub fn run(
        &self,
        q: &CudaSlice<bf16>,
        kv_cache: &CudaSlice<bf16>,
        lookup: &CudaSlice<u32>,
        d_indices: &CudaSlice<i32>,
        out: &mut CudaSlice<bf16>,
        mut lse: Option<&mut CudaSlice<f32>>,
    ) -> Result<()> {
        let p = self.plan.as_ref().ok_or(Error::NotPlanned {
            op: "msa_attention",
        })?;
        let c = &self.cfg;
        let (rows, heads) = (p.batch, c.n_heads);
        let expect = |arg, len: usize, want: usize, what: &str| {
            ensure(
                len == want,
                arg,
                || format!("{want} elements ({what})"),
                || format!("{len} elements"),
            )
        };
        expect(
            "q",
            q.len(),
            rows * heads * c.head_dim,
            "batch * n_heads * head_dim",
        )?;
        expect(
            "kv_cache",
            kv_cache.len(),
            p.layout.elements(),
            "the planned layout",
        )?;
        expect(
            "lookup",
            lookup.len(),
            rows * p.max_pages,
            "batch * max_pages",
        )?;
        expect(
            "d_indices",
            d_indices.len(),
            c.n_kv_heads * rows * c.topk,
            "n_kv_heads * batch * topk",
        )?;
        expect(
            "out",
            out.len(),
            rows * heads * c.head_dim,
            "batch * n_heads * head_dim",
        )?;
        if let Some(l) = lse.as_deref() {
            expect("lse", l.len(), rows * heads, "batch * n_heads")?;
        }
        if rows == 0 {
            return Ok(());
        }
        let stream = self.gpu.stream();
        let (rows32, heads32, kvh) = (rows as u32, heads as u32, c.n_kv_heads as u32);
        let (max_pages, num_pages) = (p.max_pages as u32, p.layout.num_pages as u32);
        let page_stride = p.layout.page_stride() as u64;
        let (k_off, v_off) = (
            p.layout.layer_offset(0, p.layer) as u64,
            p.layout.layer_offset(1, p.layer) as u64,
        );
        let (topk, parts) = (c.topk as u32, p.parts as u32);
        // A null `lse` pointer tells the kernels not to write it.
        let null = 0u64;
        let mut l = stream.launch_builder(&self.k_partial);
        l.arg(q)
            .arg(kv_cache)
            .arg(lookup)
            .arg(d_indices)
            .arg(&self.seqlen_k);
        l.arg(&self.part_o).arg(&self.part_lse).arg(&mut *out);
        if parts == 1 {
            match lse.as_deref_mut() {
                Some(x) => l.arg(x),
                None => l.arg(&null),
            };
        } else {
            l.arg(&null);
        }
        l.arg(&rows32)
            .arg(&heads32)
            .arg(&kvh)
            .arg(&max_pages)
            .arg(&num_pages);
        l.arg(&page_stride)
            .arg(&k_off)
            .arg(&v_off)
            .arg(&topk)
            .arg(&parts)
            .arg(&c.scale);
        let cfg = LaunchConfig {
            grid_dim: (rows32 * kvh * parts, 1, 1),
            block_dim: (ATT_THREADS, 1, 1),
            shared_mem_bytes: ATT_SMEM,
        };
        // SAFETY: the arguments match the kernel's signature; all lengths were
        // checked against the plan; the kernel clamps page ids and skips
        // block ids outside the sequence.
        unsafe { l.launch(cfg) }.during(|| "launching the MSA decode kernel".into())?;
        if parts > 1 {
            let mut l = stream.launch_builder(&self.k_combine);
            l.arg(&self.part_o).arg(&self.part_lse).arg(&mut *out);
            match lse {
                Some(x) => l.arg(x),
                None => l.arg(&null),
            };
            l.arg(&rows32).arg(&heads32).arg(&parts);
            let cfg = LaunchConfig {
                grid_dim: (rows32 * heads32, 1, 1),
                block_dim: (MSA_HEAD_DIM, 1, 1),
                shared_mem_bytes: 0,
            };
            // SAFETY: as above; the partial buffers hold `parts` partitions.
            unsafe { l.launch(cfg) }.during(|| "launching the MSA combine kernel".into())?;
        }
        Ok(())
    }
}

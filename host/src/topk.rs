//! The standalone top-k: for each row of an f32 matrix `scores [rows, n]`,
//! the indices of its `k` largest entries in descending order of score,
//! ties to the lower index, `-1` past the row's entries (`row_lens`, when
//! given, shortens rows). NaN ranks below every number but is still an
//! entry; `-0.0` ties with `+0.0` (the MSA indexer's order). Deterministic.
//!
//! `k` is at most [`TOPK_MAX_K`], `n` at most [`TOPK_MAX_N`] (2^24). One
//! thread-block cluster per row, its CTAs splitting the row (see
//! `kernels-gpu/src/topk.rs`): clusters of up to 16 CTAs of about
//! `TOPK_CHUNK_TARGET` entries (a chunk a CTA reads once), smaller
//! where the rows' clusters would not all be resident at once (then the
//! kernel reads each chunk twice).
//!
//! ```no_run
//! # fn main() -> sparse_attn::Result<()> {
//! use sparse_attn::{Gpu, TopK};
//! let gpu = Gpu::new(0)?;
//! let mut topk = TopK::new(&gpu)?;
//! topk.plan(64, 128 * 1024, 2048)?;
//! let scores = gpu.zeros::<f32>(64 * 128 * 1024)?;
//! let mut out = gpu.zeros::<i32>(64 * 2048)?;
//! topk.run(&scores, None, &mut out)?;
//! # Ok(()) }
//! ```

use cudarc::driver::{DevicePtr, DevicePtrMut, LaunchConfig};

use crate::abi::topk::*;
use crate::abi::{DPtr, DPtrMut};
use crate::context::Gpu;
use crate::error::{ensure, expect_len, Error, Result};
use crate::launch::{Bufs, Kernel};

/// The top-k op: `new`, `plan(rows, n, k)`, `run`.
pub struct TopK {
    gpu: Gpu,
    kernel: Kernel<TopkParams>,
    /// Largest cluster resident on this device (16, or 8 where 16 do not fit).
    max_cluster: u32,
    plan: Option<TopkPlan>,
    /// Measurement only: the cluster size `plan` uses instead of its own.
    force_cluster: Option<u32>,
}

/// A planned shape (the MLA indexer keeps one for each of its row chunks).
#[derive(Clone, Copy, Debug)]
pub(crate) struct TopkPlan {
    rows: u32,
    n: u32,
    k: u32,
    cluster: u32,
    chunk: u32,
}

impl TopK {
    /// Loads the kernel and asks the driver which cluster size fits.
    pub fn new(gpu: &Gpu) -> Result<Self> {
        let kernel = gpu.kernel("topk_rows", TOPK_SMEM)?;
        kernel.allow_clusters_of_16()?;
        let mut op = TopK {
            gpu: gpu.clone(),
            kernel,
            max_cluster: TOPK_MAX_CLUSTER,
            plan: None,
            force_cluster: None,
        };
        if op.resident_clusters(TOPK_MAX_CLUSTER)? == 0 {
            op.max_cluster = 8;
        }
        Ok(op)
    }

    /// Clusters of `cluster` CTAs resident at once on this device.
    fn resident_clusters(&self, cluster: u32) -> Result<u32> {
        self.gpu
            .launch(&self.kernel, "the top-k kernel", &TopkParams::default())
            .cluster(cluster)
            .max_active_clusters(LaunchConfig {
                grid_dim: (cluster, 1, 1),
                block_dim: (TOPK_THREADS, 1, 1),
                shared_mem_bytes: TOPK_SMEM,
            })
    }

    /// Measurement only: `plan` uses clusters of `cluster` CTAs a row (a
    /// power of two up to the device's largest) instead of its own choice;
    /// any size computes the same result.
    #[doc(hidden)]
    pub fn force_cluster(&mut self, cluster: Option<u32>) {
        self.force_cluster = cluster;
    }

    /// CTAs per row of the current plan (the cluster size), if planned.
    pub fn cluster(&self) -> Option<usize> {
        self.plan.map(|p| p.cluster as usize)
    }

    /// Bytes of workspace the op needs: none (it works in shared memory
    /// and its output). For uniformity with the other ops' `workspace_size`.
    pub fn workspace_size() -> usize {
        0
    }

    /// Longest row [`TopK::plan`] accepts.
    pub fn max_n(&self) -> usize {
        TOPK_MAX_N as usize
    }

    /// Plans `rows` rows of `n` entries, `k` kept per row (`1 ..=
    /// TOPK_MAX_K`; `k > n` pads with `-1`), choosing the cluster size
    /// (asks the driver how many clusters fit).
    pub fn plan(&mut self, rows: usize, n: usize, k: usize) -> Result<()> {
        self.plan = None; // a failed plan leaves none
        self.plan = Some(self.plan_for(rows, n, k)?);
        Ok(())
    }

    /// The plan of `rows` rows of `n` entries, `k` kept (see [`TopK::plan`]).
    pub(crate) fn plan_for(&self, rows: usize, n: usize, k: usize) -> Result<TopkPlan> {
        ensure(
            (1..=TOPK_MAX_K as usize).contains(&k),
            "k",
            || format!("1 ..= {TOPK_MAX_K}"),
            || k.to_string(),
        )?;
        let max_n = self.max_n();
        if n > max_n {
            return Err(Error::Unsupported {
                arg: "n",
                what: format!(
                    "rows of {n} entries (at most {max_n}: the index part of a selection key)"
                ),
            });
        }
        ensure(
            rows <= u32::MAX as usize,
            "rows",
            || "at most 2^32 - 1".into(),
            || rows.to_string(),
        )?;
        let n = n as u32;
        // Halved while the rows' clusters would not all be resident: a
        // second wave of clusters costs more than longer chunks.
        let mut cluster = n
            .div_ceil(TOPK_CHUNK_TARGET)
            .clamp(1, self.max_cluster)
            .next_power_of_two();
        while cluster > 1 && (self.resident_clusters(cluster)? as usize) < rows {
            cluster /= 2;
        }
        if let Some(c) = self.force_cluster {
            cluster = c.clamp(1, self.max_cluster).next_power_of_two();
        }
        // A multiple of 4: every CTA's chunk then starts at the row's own
        // 16-byte alignment (the kernel's vector loads).
        let chunk = n.div_ceil(cluster).max(1).next_multiple_of(4);
        Ok(TopkPlan {
            rows: rows as u32,
            n,
            k: k as u32,
            cluster,
            chunk,
        })
    }

    /// Writes `out: i32 [rows, k]` from `scores: f32 [rows, n]` (and
    /// `row_lens: u32 [rows]`, each clamped to `n`, when given). Launches
    /// only. Buffers may be slices, views or [`crate::RawBuffer`]s.
    pub fn run<S, O>(
        &self,
        scores: &S,
        row_lens: Option<&dyn DevicePtr<u32>>,
        out: &mut O,
    ) -> Result<()>
    where
        S: DevicePtr<f32> + ?Sized,
        O: DevicePtrMut<i32> + ?Sized,
    {
        let p = self.plan.ok_or(Error::NotPlanned { op: "topk" })?;
        let (rows, n, k) = (p.rows as usize, p.n as usize, p.k as usize);
        expect_len("scores", scores.len(), rows * n, "rows * n")?;
        expect_len("out", out.len(), rows * k, "rows * k")?;
        if let Some(l) = row_lens {
            expect_len("row_lens", l.len(), rows, "rows")?;
        }
        if rows == 0 {
            return Ok(());
        }
        let mut b = Bufs::new(&self.gpu);
        let (scores, lens, out) = (
            b.input("scores", scores)?,
            b.opt_input("row_lens", row_lens)?,
            b.output("out", out)?,
        );
        // SAFETY: `scores` holds rows * n elements, `out` rows * k, `row_lens`
        // rows (checked above).
        unsafe { self.launch(&p, scores, p.n, lens, out) }
    }

    /// Launches plan `p` on raw addresses: `scores` rows of `row_stride >=
    /// n` f32, optional `row_lens`, `out: [rows, k]`.
    ///
    /// # Safety
    /// The buffers must hold what the plan and `row_stride` address; the
    /// kernel reads entries below `n` of each row (and, from the 16-byte
    /// aligned address at or before a row, up to 3 entries before it),
    /// ranks only those below `min(row_lens, n)`.
    pub(crate) unsafe fn launch(
        &self,
        p: &TopkPlan,
        scores: DPtr<f32>,
        row_stride: u32,
        row_lens: DPtr<u32>,
        out: DPtrMut<i32>,
    ) -> Result<()> {
        // The kernel reads 16-byte vectors from the aligned address at or
        // before each chunk (device allocations are 256-byte aligned).
        ensure(
            scores.addr().is_multiple_of(16),
            "scores",
            || "a 16-byte aligned device address".into(),
            || format!("{:#x}", scores.addr()),
        )?;
        let params = TopkParams {
            scores,
            row_lens,
            out,
            rows: p.rows,
            n: p.n,
            row_stride,
            k: p.k,
            cluster: p.cluster,
            chunk: p.chunk,
        };
        let cfg = LaunchConfig {
            grid_dim: (p.rows * p.cluster, 1, 1),
            block_dim: (TOPK_THREADS, 1, 1),
            shared_mem_bytes: TOPK_SMEM,
        };
        let mut l = self.gpu.launch(&self.kernel, "the top-k kernel", &params);
        l.cluster(p.cluster);
        l.run(cfg)
    }
}

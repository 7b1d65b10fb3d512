//! What the GPU tests, the benchmark and the demo share besides the data:
//! opening the GPU (or saying why not) and the attention tests' common runs
//! (poisoned outputs, a step captured in a CUDA graph). The host API and the
//! reference take the same batch, layout and config types (the abi crate's),
//! so no conversion sits here.

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::CudaGraph;
use half::bf16;
use rand::Rng;
use sparse_attn::{
    AttentionPath, CudaSlice, Gpu, MsaAttention, MsaAttentionConfig, MsaIndexerConfig, MsaStep,
    StepInputs,
};
use sparse_attn_reference::msa_attention as reference;

use crate::data::{block_selection, paged_pool, tensor, Fill, PagedPool, RaggedSpec};

/// Device 0, or `None` (printing `SKIP`) where no NVIDIA driver exists. A
/// driver that is present but cannot open the device is a failure, not a skip.
/// `SPARSE_ATTN_TEST_PTX=<file>` runs the tests on that PTX build of the
/// kernels instead of the embedded one (a variant being measured).
pub fn gpu_or_skip() -> Option<Gpu> {
    if !Gpu::driver_present() {
        eprintln!("SKIP: no NVIDIA driver on this machine; GPU test not run");
        return None;
    }
    let gpu = match std::env::var("SPARSE_ATTN_TEST_PTX") {
        Ok(path) => {
            let ptx =
                std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
            eprintln!("kernels from {path}");
            Gpu::with_ptx(0, &ptx)
        }
        Err(_) => Gpu::new(0),
    };
    Some(gpu.expect("the driver is present but device 0 could not be opened"))
}

/// MiniMax-M3's attention config with other head counts and `topk`.
pub fn attention_config(n_heads: usize, n_kv_heads: usize, topk: usize) -> MsaAttentionConfig {
    MsaAttentionConfig {
        n_heads,
        n_kv_heads,
        topk,
        ..MsaAttentionConfig::minimax_m3()
    }
}

/// One attention case: a batch, its K/V pool (2 layers, garbage in unused
/// slots), queries and selections.
pub struct AttentionInputs {
    pub spec: RaggedSpec,
    pub pool: PagedPool,
    pub q: Vec<bf16>,
    pub d_indices: Vec<i32>,
}

impl AttentionInputs {
    /// Random inputs; `minus_one` is the share of `-1` slots (stale ids too).
    pub fn random(
        rng: &mut impl Rng,
        spec: RaggedSpec,
        c: &MsaAttentionConfig,
        minus_one: f64,
    ) -> Self {
        let pool = paged_pool(rng, &spec, 2, 2, c.n_kv_heads, 128, 128, 3, Fill::Normal);
        let q = tensor(rng, spec.num_rows() * c.n_heads * 128, Fill::Normal);
        let d_indices = block_selection(rng, &spec, c.n_kv_heads, c.topk, minus_one, true);
        AttentionInputs {
            spec,
            pool,
            q,
            d_indices,
        }
    }

    /// The f64 reference on layer 1.
    pub fn reference(&self, c: &MsaAttentionConfig) -> reference::AttentionOutput {
        reference::msa_attention(
            &self.q,
            &self.spec.as_batch(),
            &self.pool.cache(),
            1,
            &self.d_indices,
            c,
        )
    }
}

/// Runs the GPU op (layer 1 of 2) on NaN-poisoned outputs with an optional
/// forced split-K and path; checks every element was written; returns
/// (out, lse).
pub fn run_attention(
    gpu: &Gpu,
    c: &MsaAttentionConfig,
    inp: &AttentionInputs,
    parts: Option<usize>,
    path: Option<AttentionPath>,
) -> (Vec<bf16>, Vec<f32>) {
    let mut att = MsaAttention::new(gpu, *c, inp.spec.num_rows()).unwrap();
    att.force_partitions(parts);
    att.force_path(path);
    att.plan(&inp.spec.as_batch(), &inp.pool.table(), &inp.pool.layout)
        .unwrap();
    let (q, kv) = (
        gpu.upload(&inp.q).unwrap(),
        gpu.upload(&inp.pool.data).unwrap(),
    );
    let lookup = gpu.upload(&inp.pool.lookup).unwrap();
    let di = gpu.upload(&inp.d_indices).unwrap();
    poisoned_run(gpu, inp.spec.num_rows() * c.n_heads, |out, lse| {
        att.run(&q, &kv, &lookup, &di, 1, out, Some(lse)).unwrap()
    })
}

/// NaN bits every output element is poisoned with before a launch.
pub const POISON_OUT: u16 = 0x7fc1;
/// NaN bits every lse element is poisoned with before a launch.
pub const POISON_LSE: u32 = 0x7fc0_0001;

/// Runs `run(out, lse)` on `rows` rows of `n_heads` heads (bf16 `out` of
/// 128 a head, f32 `lse`) poisoned with NaN bits; checks that every
/// element was written; returns `(out, lse)`.
pub fn poisoned_run(
    gpu: &Gpu,
    rows_heads: usize,
    run: impl FnOnce(&mut CudaSlice<bf16>, &mut CudaSlice<f32>),
) -> (Vec<bf16>, Vec<f32>) {
    let mut out = gpu
        .upload(&vec![bf16::from_bits(POISON_OUT); rows_heads * 128])
        .unwrap();
    let mut lse = gpu
        .upload(&vec![f32::from_bits(POISON_LSE); rows_heads])
        .unwrap();
    run(&mut out, &mut lse);
    let (out, lse) = (gpu.download(&out).unwrap(), gpu.download(&lse).unwrap());
    assert!(
        !out.iter().any(|v| v.to_bits() == POISON_OUT),
        "an output element was never written"
    );
    assert!(
        !lse.iter().any(|v| v.to_bits() == POISON_LSE),
        "an lse element was never written"
    );
    (out, lse)
}

/// Two runs' `(out, lse)` must be the same bits.
pub fn assert_same_bits(a: &(Vec<bf16>, Vec<f32>), b: &(Vec<bf16>, Vec<f32>)) {
    let out =
        a.0.iter()
            .zip(&b.0)
            .all(|(x, y)| x.to_bits() == y.to_bits());
    assert!(out && a.0.len() == b.0.len(), "out changed between runs");
    let lse =
        a.1.iter()
            .zip(&b.1)
            .all(|(x, y)| x.to_bits() == y.to_bits());
    assert!(lse && a.1.len() == b.1.len(), "lse changed between runs");
}

/// The host data of one MSA step with MiniMax-M3's configs, drawn in this
/// order: the K/V pool (one layer), the index-K pool, the attention queries,
/// the index queries; each pool has `extra_pages` pages no sequence uses.
pub struct StepData {
    pub kv: PagedPool,
    pub ik: PagedPool,
    pub q: Vec<bf16>,
    pub qi: Vec<bf16>,
}

/// The device copies of a [`StepData`].
pub struct StepBuffers {
    q: CudaSlice<bf16>,
    qi: CudaSlice<bf16>,
    kv: CudaSlice<bf16>,
    ik: CudaSlice<bf16>,
    kv_lookup: CudaSlice<u32>,
    ik_lookup: CudaSlice<u32>,
}

impl StepData {
    pub fn random(rng: &mut impl Rng, spec: &RaggedSpec, extra_pages: usize) -> Self {
        let (att, idx) = (
            MsaAttentionConfig::minimax_m3(),
            MsaIndexerConfig::minimax_m3(),
        );
        let kv = paged_pool(
            rng,
            spec,
            2,
            1,
            att.n_kv_heads,
            128,
            128,
            extra_pages,
            Fill::Normal,
        );
        let ik = paged_pool(rng, spec, 1, 1, 1, 128, 128, extra_pages, Fill::Normal);
        let rows = spec.num_rows();
        let q = tensor(rng, rows * att.n_heads * 128, Fill::Normal);
        let qi = tensor(rng, rows * idx.num_index_heads * 128, Fill::Normal);
        StepData { kv, ik, q, qi }
    }

    /// The step for `spec` (its pools have one layer), planned, and the
    /// inputs uploaded.
    pub fn plan_and_upload(
        &self,
        gpu: &Gpu,
        spec: &RaggedSpec,
    ) -> sparse_attn::Result<(MsaStep, StepBuffers)> {
        let (att, idx) = (
            MsaAttentionConfig::minimax_m3(),
            MsaIndexerConfig::minimax_m3(),
        );
        let mut step = MsaStep::new(gpu, idx, att, spec.num_rows())?;
        step.plan(
            &spec.as_batch(),
            &self.ik.table(),
            &self.ik.layout,
            &self.kv.table(),
            &self.kv.layout,
        )?;
        let buffers = StepBuffers {
            q: gpu.upload(&self.q)?,
            qi: gpu.upload(&self.qi)?,
            kv: gpu.upload(&self.kv.data)?,
            ik: gpu.upload(&self.ik.data)?,
            kv_lookup: gpu.upload(&self.kv.lookup)?,
            ik_lookup: gpu.upload(&self.ik.lookup)?,
        };
        Ok((step, buffers))
    }
}

impl StepBuffers {
    /// Replaces the device page tables (K/V, index-K) after `plan`, as an
    /// engine does between steps.
    pub fn upload_tables(&mut self, gpu: &Gpu, kv: &[u32], ik: &[u32]) {
        let s = gpu.stream();
        s.memcpy_htod(kv, &mut self.kv_lookup).unwrap();
        s.memcpy_htod(ik, &mut self.ik_lookup).unwrap();
    }

    pub fn inputs(&self) -> StepInputs<'_> {
        StepInputs {
            q_index: &self.qi,
            k_index: &self.ik,
            index_lookup: &self.ik_lookup,
            q: &self.q,
            kv_cache: &self.kv,
            kv_lookup: &self.kv_lookup,
        }
    }
}

/// The whole MSA step (indexer, then attention) on `spec`, run eagerly, then
/// captured in a CUDA graph and replayed twice: the replay must give the
/// eager bits, and the eager output must match the reference on the step's
/// own selections. Returns the path the attention took.
pub fn check_step_graph_replay(gpu: &Gpu, rng: &mut impl Rng, spec: &RaggedSpec) -> AttentionPath {
    let att = MsaAttentionConfig::minimax_m3();
    let data = StepData::random(rng, spec, 2);
    let (kv, q) = (&data.kv, &data.q);
    let rows = spec.num_rows();
    let (mut step, buffers) = data.plan_and_upload(gpu, spec).unwrap();
    let inp = buffers.inputs();
    let mut out = gpu.zeros::<bf16>(rows * att.n_heads * 128).unwrap();
    step.run(&inp, 0, &mut out, None).unwrap();
    let eager = gpu.download(&out).unwrap();
    let sel = gpu.download(step.d_indices()).unwrap();

    // The attention on the step's own selections, against the reference.
    let want = reference::msa_attention(q, &spec.as_batch(), &kv.cache(), 0, &sel, &att);
    reference::check_attention(&eager, None, &want, &att).unwrap();

    let mut out2 = gpu
        .upload(&vec![bf16::from_bits(0x7fc1); rows * att.n_heads * 128])
        .unwrap();
    capture_and_replay(gpu, || step.run(&inp, 0, &mut out2, None).unwrap());
    let replay = gpu.download(&out2).unwrap();
    assert!(
        eager
            .iter()
            .zip(&replay)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "graph replay differs from the eager run"
    );
    step.attention.path().expect("planned")
}

/// Runs `launch` (work given corrupt device-side input: page ids past the
/// pool, say) and waits for the stream: a fault (an address outside every
/// allocation) fails here, naming `what`. What the work wrote is not looked at.
pub fn assert_no_fault(gpu: &Gpu, what: &str, launch: impl FnOnce()) {
    launch();
    if let Err(e) = gpu.synchronize() {
        panic!("{what}: the run with corrupt input failed: {e}");
    }
}

/// Captures what `run` enqueues on the GPU's stream into a CUDA graph and
/// launches the graph twice (the caller compares the results).
pub fn capture_and_replay(gpu: &Gpu, run: impl FnOnce()) {
    let graph = capture(gpu, run);
    graph.launch().unwrap();
    graph.launch().unwrap();
}

/// Captures what `run` enqueues on the GPU's stream into an instantiated
/// CUDA graph (`graph.launch()` replays it on that stream).
pub fn capture(gpu: &Gpu, run: impl FnOnce()) -> CudaGraph {
    let stream = gpu.stream();
    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .unwrap();
    run();
    stream
        .end_capture(CUgraphInstantiate_flags(0))
        .unwrap()
        .expect("the capture recorded no work")
}

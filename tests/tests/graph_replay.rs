//! CUDA-graph replay across decode steps (`MsaStep` in graph mode,
//! `sparse_attn::graph`): one capture of a whole decode step replayed for
//! 300 steps while every sequence grows by a token a step (the new token's
//! K/V and index-K rows written into the pools, page-table entries added
//! when a page fills), re-planned outside the graph before each replay and
//! compared bit for bit with an eager run of the same plan and with a step
//! in ordinary mode; and the incompatible changes (a sequence beyond the
//! bound, another batch size) refused by the API and, if replayed anyway,
//! NaN on the device with the fault reported; a replay with corrupt page
//! tables (no fault, and the real tables then give the eager bits).
//!
//! GPU tests print `SKIP` where there is no NVIDIA driver; the seed is
//! printed (`SPARSE_ATTN_SEED=<n>` replays it).

use cudarc::driver::CudaSlice;
use half::bf16;
use rand::Rng;
use sparse_attn::{
    Error, Gpu, MsaAttentionConfig, MsaIndexerConfig, MsaStep, PageTable, PagedLayout, StepInputs,
};
use sparse_attn_reference::msa_attention as reference;
use sparse_attn_reference::paged::PagedCache;
use sparse_attn_tests::data::{
    corrupt_lookup, garbage, paged_pool, seeded, tensor, Fill, PagedPool, RaggedSpec,
};
use sparse_attn_tests::harness::{assert_no_fault, capture, gpu_or_skip as gpu};

const ATT: MsaAttentionConfig = MsaAttentionConfig::minimax_m3();
const IDX: MsaIndexerConfig = MsaIndexerConfig::minimax_m3();

/// A pool whose tokens are appended step by step: `full` holds every token
/// a sequence will have (`paged_pool` of the final lengths), the device
/// copy only those written so far (garbage in the others), the page table
/// only the pages in use (stale valid ids past them).
struct GrowingPool {
    full: PagedPool,
    dev: CudaSlice<bf16>,
    lookup: Vec<u32>,
    d_lookup: CudaSlice<u32>,
}

impl GrowingPool {
    fn new(
        gpu: &Gpu,
        rng: &mut impl Rng,
        full: PagedPool,
        final_spec: &RaggedSpec,
        lens: &[usize],
    ) -> Self {
        let mut data = full.data.clone();
        let l = full.layout;
        for (b, &len) in lens.iter().enumerate() {
            for pos in len..final_spec.seqlen_k(b) {
                for range in token_ranges(&full, b, pos) {
                    data[range].iter_mut().for_each(|x| *x = garbage(rng));
                }
            }
        }
        let mut lookup = full.lookup.clone();
        for (b, &len) in lens.iter().enumerate() {
            for c in len.div_ceil(l.page_size)..full.max_pages {
                lookup[b * full.max_pages + c] = rng.gen_range(0..l.num_pages as u32);
            }
        }
        GrowingPool {
            dev: gpu.upload(&data).unwrap(),
            d_lookup: gpu.upload(&lookup).unwrap(),
            full,
            lookup,
        }
    }

    /// Writes token `pos` of sequence `b` (every plane of layer 0) and, at
    /// a page's first token, its page-table entry.
    fn append(&mut self, gpu: &Gpu, b: usize, pos: usize) {
        let stream = gpu.stream();
        for range in token_ranges(&self.full, b, pos) {
            let src = &self.full.data[range.clone()];
            stream
                .memcpy_htod(src, &mut self.dev.slice_mut(range))
                .unwrap();
        }
        let ps = self.full.layout.page_size;
        if pos.is_multiple_of(ps) {
            let at = b * self.full.max_pages + pos / ps;
            self.lookup[at] = self.full.lookup[at];
            stream
                .memcpy_htod(
                    &self.lookup[at..at + 1],
                    &mut self.d_lookup.slice_mut(at..at + 1),
                )
                .unwrap();
        }
    }

    fn table(&self) -> PageTable<'_> {
        PageTable::new(&self.lookup, self.full.max_pages)
    }

    fn layout(&self) -> PagedLayout {
        self.full.layout
    }
}

/// Element ranges of token `pos` of sequence `b` in layer 0 of every
/// plane (K and V, or index-K), in `full`'s pool.
fn token_ranges(full: &PagedPool, b: usize, pos: usize) -> Vec<std::ops::Range<usize>> {
    let l = full.layout;
    let page = full.lookup[b * full.max_pages + pos / l.page_size] as usize;
    let row = l.n_heads * l.head_dim;
    (0..l.kv_dim)
        .map(|kv| {
            let at = page * l.page_stride() + l.layer_offset(kv, 0) + (pos % l.page_size) * row;
            at..at + row
        })
        .collect()
}

/// The step's device inputs, outputs and pools.
struct Decode {
    spec: RaggedSpec,
    kv: GrowingPool,
    ik: GrowingPool,
    q: CudaSlice<bf16>,
    qi: CudaSlice<bf16>,
}

impl Decode {
    /// `lens`: keys of each sequence at the first step; every pool and page
    /// table is sized for `steps` more tokens.
    fn new(gpu: &Gpu, rng: &mut impl Rng, lens: &[usize], steps: usize) -> Self {
        let final_spec = RaggedSpec::decode(lens.iter().map(|&l| (l + steps - 1) as u32).collect());
        let kv = paged_pool(
            rng,
            &final_spec,
            2,
            1,
            ATT.n_kv_heads,
            128,
            128,
            3,
            Fill::Normal,
        );
        let ik = paged_pool(rng, &final_spec, 1, 1, 1, 128, 128, 3, Fill::Normal);
        let rows = lens.len();
        Decode {
            spec: RaggedSpec::decode(lens.iter().map(|&l| l as u32 - 1).collect()),
            kv: GrowingPool::new(gpu, rng, kv, &final_spec, lens),
            ik: GrowingPool::new(gpu, rng, ik, &final_spec, lens),
            q: gpu.zeros(rows * ATT.n_heads * 128).unwrap(),
            qi: gpu.zeros(rows * IDX.num_index_heads * 128).unwrap(),
        }
    }

    /// Fresh queries for the step.
    fn new_queries(&mut self, gpu: &Gpu, rng: &mut impl Rng) {
        let rows = self.spec.num_rows();
        let s = gpu.stream();
        s.memcpy_htod(
            &tensor(rng, rows * ATT.n_heads * 128, Fill::Normal),
            &mut self.q,
        )
        .unwrap();
        s.memcpy_htod(
            &tensor(rng, rows * IDX.num_index_heads * 128, Fill::Normal),
            &mut self.qi,
        )
        .unwrap();
    }

    /// Every sequence gets one more token: written into the pools, and the
    /// batch's cache lengths grow by one.
    fn grow(&mut self, gpu: &Gpu) {
        for b in 0..self.spec.batch() {
            let pos = self.spec.seqlen_k(b);
            self.kv.append(gpu, b, pos);
            self.ik.append(gpu, b, pos);
            self.spec.cache_lengths[b] += 1;
        }
    }

    fn plan(&self, step: &mut MsaStep) -> sparse_attn::Result<()> {
        step.plan(
            &self.spec.as_batch(),
            &self.ik.table(),
            &self.ik.layout(),
            &self.kv.table(),
            &self.kv.layout(),
        )
    }

    fn inputs(&self) -> StepInputs<'_> {
        StepInputs {
            q_index: &self.qi,
            k_index: &self.ik.dev,
            index_lookup: &self.ik.d_lookup,
            q: &self.q,
            kv_cache: &self.kv.dev,
            kv_lookup: &self.kv.d_lookup,
        }
    }
}

/// Outputs of one step: `out` and `lse`.
struct Outs {
    out: CudaSlice<bf16>,
    lse: CudaSlice<f32>,
}

impl Outs {
    fn new(gpu: &Gpu, rows: usize) -> Self {
        Outs {
            out: gpu.zeros(rows * ATT.n_heads * 128).unwrap(),
            lse: gpu.zeros(rows * ATT.n_heads).unwrap(),
        }
    }

    /// NaN in every element (so an element no launch wrote shows).
    fn poison(&mut self, gpu: &Gpu) {
        let s = gpu.stream();
        s.memcpy_htod(
            &vec![bf16::from_bits(0x7fc1); self.out.len()],
            &mut self.out,
        )
        .unwrap();
        s.memcpy_htod(
            &vec![f32::from_bits(0x7fc0_0001); self.lse.len()],
            &mut self.lse,
        )
        .unwrap();
    }

    fn run(&mut self, step: &mut MsaStep, d: &Decode) {
        step.run(&d.inputs(), 0, &mut self.out, Some(&mut self.lse))
            .unwrap();
    }

    fn bits(&self, gpu: &Gpu) -> (Vec<u16>, Vec<u32>) {
        let out = gpu.download(&self.out).unwrap();
        let lse = gpu.download(&self.lse).unwrap();
        (
            out.iter().map(|v| v.to_bits()).collect(),
            lse.iter().map(|v| v.to_bits()).collect(),
        )
    }
}

fn graph_step(gpu: &Gpu, rows: usize, max_context: usize) -> MsaStep {
    let mut step = MsaStep::new(gpu, IDX, ATT, rows).unwrap();
    step.set_graph_bounds(Some(max_context)).unwrap();
    step
}

/// One capture of an M3 decode step (8 sequences, several just below a
/// 128-token boundary), replayed for 300 steps while every context grows
/// by one token a step: each replay must give the bits of an eager run of
/// the same plan, and of a step in ordinary mode (fitted grids); the key
/// must hold throughout; a few steps are checked against the reference.
#[test]
fn gpu_decode_step_graph_replays_across_300_growing_steps() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    let steps = 300;
    // keys at the first step: just below / at / past block boundaries,
    // short and long (crossing 2 or 3 boundaries each over the run)
    let lens = [127usize, 128, 255, 1, 1000, 2047, 4095, 9000];
    let max_context = 9000 + steps + 200;
    let rows = lens.len();
    let mut d = Decode::new(&gpu, &mut rng, &lens, steps);
    let mut step = graph_step(&gpu, rows, max_context);
    let mut plain = MsaStep::new(&gpu, IDX, ATT, rows).unwrap();
    let (mut replayed, mut eager, mut ordinary) = (
        Outs::new(&gpu, rows),
        Outs::new(&gpu, rows),
        Outs::new(&gpu, rows),
    );

    d.new_queries(&gpu, &mut rng);
    d.plan(&mut step).unwrap();
    let key = step.graph_key().expect("planned");
    let graph = capture(&gpu, || replayed.run(&mut step, &d));
    let mut crossings = 0;
    for s in 0..steps {
        if s > 0 {
            let blocks: Vec<usize> = (0..rows)
                .map(|b| d.spec.seqlen_k(b).div_ceil(128))
                .collect();
            d.grow(&gpu);
            crossings += (0..rows)
                .filter(|&b| d.spec.seqlen_k(b).div_ceil(128) != blocks[b])
                .count();
            d.new_queries(&gpu, &mut rng);
            d.plan(&mut step).unwrap();
            assert!(
                step.capture_compatible(key),
                "step {s}: growing contexts changed the graph key"
            );
        }
        replayed.poison(&gpu);
        graph.launch().unwrap();
        let got = replayed.bits(&gpu);
        let sel = gpu.download(step.d_indices()).unwrap();

        eager.poison(&gpu);
        eager.run(&mut step, &d);
        assert!(
            got == eager.bits(&gpu),
            "step {s} (seed {seed}): graph replay differs from the eager run"
        );
        d.plan(&mut plain).unwrap();
        ordinary.poison(&gpu);
        ordinary.run(&mut plain, &d);
        assert!(
            got == ordinary.bits(&gpu),
            "step {s} (seed {seed}): graph mode differs from ordinary mode"
        );
        assert_eq!(
            sel,
            gpu.download(plain.d_indices()).unwrap(),
            "step {s}: selections"
        );
        if s % 100 == 0 || s == steps - 1 {
            let q = gpu.download(&d.q).unwrap();
            let cache = PagedCache {
                layout: d.kv.layout(),
                data: &d.kv.full.data,
                pages: d.kv.table(),
            };
            let want = reference::msa_attention(&q, &d.spec.as_batch(), &cache, 0, &sel, &ATT);
            let out = gpu.download(&replayed.out).unwrap();
            let lse = gpu.download(&replayed.lse).unwrap();
            if let Err(e) = reference::check_attention(&out, Some(&lse), &want, &ATT) {
                panic!("step {s} (seed {seed}): replay differs from the reference:\n{e}");
            }
        }
    }
    step.check_graph_replays().unwrap();
    assert!(crossings >= 16, "only {crossings} block boundaries crossed");
    eprintln!("ok: {steps} replays, {crossings} block boundaries crossed");
}

/// Incompatible plans: a sequence beyond the bound is an error naming
/// `cache_lengths`; a plan of another batch size changes the key. Either
/// way the old graph, replayed anyway, writes NaN and the step reports a
/// stale replay; a new capture then runs right.
#[test]
fn gpu_incompatible_plan_is_reported_never_silently_run() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    let lens = [127usize, 600, 3072, 128];
    let rows = lens.len();
    let max_context = 3100;
    let mut d = Decode::new(&gpu, &mut rng, &lens, 400);
    let mut step = graph_step(&gpu, rows, max_context);
    let mut outs = Outs::new(&gpu, rows);
    d.new_queries(&gpu, &mut rng);
    d.plan(&mut step).unwrap();
    step.check_graph_replays().unwrap();
    let key = step.graph_key().unwrap();
    let graph = capture(&gpu, || outs.run(&mut step, &d));
    graph.launch().unwrap();
    step.check_graph_replays().unwrap();

    let all_nan = |o: &Outs| gpu.download(&o.out).unwrap().iter().all(|v| v.is_nan());
    // 1. a sequence beyond the bound: refused, and the old graph is stale
    let mut long = d.spec.clone();
    long.cache_lengths[2] = max_context as u32; // max_context + 1 keys
    let err = step
        .plan(
            &long.as_batch(),
            &d.ik.table(),
            &d.ik.layout(),
            &d.kv.table(),
            &d.kv.layout(),
        )
        .unwrap_err();
    assert_eq!(err.arg(), Some("cache_lengths"), "{err}");
    assert!(step.graph_key().is_none() && !step.capture_compatible(key));
    outs.poison(&gpu);
    graph.launch().unwrap();
    assert!(all_nan(&outs), "a stale replay wrote values");
    assert!(matches!(
        step.check_graph_replays(),
        Err(Error::StaleGraph { .. })
    ));
    step.check_graph_replays().unwrap(); // the flag was cleared

    // 2. the batch again: planned, but the failed plan in between made the
    // key new; a new capture runs right
    d.plan(&mut step).unwrap();
    assert!(!step.capture_compatible(key));
    let key2 = step.graph_key().unwrap();
    let mut eager = Outs::new(&gpu, rows);
    eager.run(&mut step, &d);
    let graph2 = capture(&gpu, || outs.run(&mut step, &d));
    outs.poison(&gpu);
    graph2.launch().unwrap();
    assert!(
        outs.bits(&gpu) == eager.bits(&gpu),
        "the new capture differs"
    );
    step.check_graph_replays().unwrap();

    // 3. another batch size (the first three sequences): a new key; the
    // old graph, replayed anyway, is stale
    let small = RaggedSpec::decode(d.spec.cache_lengths[..3].to_vec());
    let (ik_lookup, kv_lookup) = (
        &d.ik.lookup[..3 * d.ik.full.max_pages],
        &d.kv.lookup[..3 * d.kv.full.max_pages],
    );
    step.plan(
        &small.as_batch(),
        &PageTable::new(ik_lookup, d.ik.full.max_pages),
        &d.ik.layout(),
        &PageTable::new(kv_lookup, d.kv.full.max_pages),
        &d.kv.layout(),
    )
    .unwrap();
    assert!(
        !step.capture_compatible(key2),
        "a batch size change kept the key"
    );
    outs.poison(&gpu);
    graph2.launch().unwrap();
    assert!(all_nan(&outs), "a stale replay wrote values");
    assert!(matches!(
        step.check_graph_replays(),
        Err(Error::StaleGraph { .. })
    ));

    // 4. without graph mode, crossing a block boundary changes the key
    // (the indexer's grid and score stride follow the contexts)
    let mut plain = MsaStep::new(&gpu, IDX, ATT, rows).unwrap();
    d.plan(&mut plain).unwrap();
    let k = plain.graph_key().unwrap();
    d.plan(&mut plain).unwrap();
    assert!(
        plain.capture_compatible(k),
        "the same batch changed the key"
    );
    d.grow(&gpu); // 3072 -> 3073 keys: a new block for the longest row
    d.plan(&mut plain).unwrap();
    assert!(!plain.capture_compatible(k), "a new block kept the key");
    eprintln!("ok: incompatible plans reported");
}

/// An engine rewrites the device page tables between replays, where no
/// `plan` checks them: a replay with both tables corrupt ([`corrupt_lookup`]:
/// ids past the pools, `u32::MAX`) must not fault (the kernels clamp every
/// id they read; what it writes is then unspecified), and with the real
/// tables back the same graph must give the bits of an eager run.
#[test]
fn gpu_replay_with_a_corrupt_page_table_does_not_fault() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    let lens = [127usize, 600, 3072, 128, 9000];
    let rows = lens.len();
    let mut d = Decode::new(&gpu, &mut rng, &lens, 10);
    let mut step = graph_step(&gpu, rows, 9100);
    let (mut replayed, mut eager) = (Outs::new(&gpu, rows), Outs::new(&gpu, rows));
    d.new_queries(&gpu, &mut rng);
    d.plan(&mut step).unwrap();
    let graph = capture(&gpu, || replayed.run(&mut step, &d));
    let s = gpu.stream();
    for pool in [&mut d.kv, &mut d.ik] {
        let bad = corrupt_lookup(&mut rng, &pool.lookup, pool.layout().num_pages);
        s.memcpy_htod(&bad, &mut pool.d_lookup).unwrap();
    }
    assert_no_fault(&gpu, &format!("seed {seed}, a replay"), || {
        graph.launch().unwrap()
    });
    for pool in [&mut d.kv, &mut d.ik] {
        s.memcpy_htod(&pool.lookup, &mut pool.d_lookup).unwrap();
    }
    replayed.poison(&gpu);
    graph.launch().unwrap();
    eager.poison(&gpu);
    eager.run(&mut step, &d);
    assert!(
        replayed.bits(&gpu) == eager.bits(&gpu),
        "seed {seed}: the replay with the real tables back differs from an eager run"
    );
    step.check_graph_replays().unwrap();
}

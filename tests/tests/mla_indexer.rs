//! The MLA FP8 lightning indexer on the GPU against the f64 reference:
//! exact (order included) on integer-friendly e4m3 inputs, where every
//! product and sum is exact in f32; within the reference's score tolerance
//! on random inputs, for the selection and for the logits themselves.
//! Ragged prefill, chunked prefill (`cache_len > 0`), decode batches and
//! speculative rows (2–8 new tokens a sequence); contexts around every tile
//! and page size and 128K+; `top_k` above the context; both masks; page
//! sizes 16 to 256; the separate and the fused scale layouts; 64 and 128
//! heads; shuffled page tables with garbage (NaN) in every unwritten slot;
//! a device-side page table corrupted after `plan` (no fault, still a
//! selection of visible positions); determinism, a CUDA-graph replay and
//! the named errors.
//!
//! GPU tests print `SKIP` where there is no NVIDIA driver; every random case
//! prints its seed (`SPARSE_ATTN_SEED=<n>` replays it). The output is
//! poisoned before every launch.

use rand::Rng;
use sparse_attn::mla_indexer::plan_work;
use sparse_attn::{
    CudaSlice, DevicePtr, Error, Gpu, Mask, MlaIndexer, MlaIndexerConfig, PageTable, PagedLayout,
    Workspace,
};
use sparse_attn_reference::mla_indexer as reference;
use sparse_attn_tests::data::{
    corrupt_lookup, fp8_index_k_pool, fp8_tensor, index_weights, seeded, Fp8Fill, Fp8Pool,
    RaggedSpec,
};
use sparse_attn_tests::harness::{assert_no_fault, capture_and_replay, gpu_or_skip as gpu};

const POISON: i32 = i32::MIN;

/// One case's inputs, on the host and on the device.
struct Case {
    spec: RaggedSpec,
    pool: Fp8Pool,
    q: Vec<u8>,
    qs: Vec<f32>,
    cfg: MlaIndexerConfig,
}

impl Case {
    fn new(
        rng: &mut impl Rng,
        spec: RaggedSpec,
        cfg: MlaIndexerConfig,
        page_size: usize,
        fused: bool,
        fill: Fp8Fill,
    ) -> Self {
        let rows = spec.num_rows();
        let pool = fp8_index_k_pool(rng, &spec, 2, page_size, fused, 3, fill);
        let q = fp8_tensor(rng, rows * cfg.num_heads * 128, fill);
        let qs = index_weights(rng, rows * cfg.num_heads, fill);
        Case {
            spec,
            pool,
            q,
            qs,
            cfg,
        }
    }

    /// DeepSeek-V3.2's configuration (64 heads, top-2048, causal).
    fn deepseek(
        rng: &mut impl Rng,
        spec: RaggedSpec,
        page_size: usize,
        fused: bool,
        fill: Fp8Fill,
    ) -> Self {
        Self::new(
            rng,
            spec,
            cfg(64, 2048, Mask::Causal),
            page_size,
            fused,
            fill,
        )
    }

    /// The reference's logits of every row (layer 1 of the pool).
    fn reference(&self) -> Vec<reference::RowLogits> {
        reference::row_logits(
            &self.q,
            &self.qs,
            &self.spec.as_batch(),
            &self.pool.cache(),
            1,
            &self.cfg,
        )
    }

    /// Plans and runs the op: the selection and the logits workspace.
    fn run(&self, gpu: &Gpu, op: &mut MlaIndexer) -> (Vec<i32>, Vec<f32>) {
        let sel = self.select(gpu, op);
        (sel, op.download_logits().unwrap())
    }

    /// Plans and runs the op: the selection.
    fn select(&self, gpu: &Gpu, op: &mut MlaIndexer) -> Vec<i32> {
        let p = &self.pool;
        op.plan(&self.spec.as_batch(), &p.layout, p.table())
            .unwrap();
        let mut out = gpu
            .upload(&vec![POISON; self.spec.num_rows() * self.cfg.top_k])
            .unwrap();
        self.upload(gpu).run(op, &mut out).unwrap();
        gpu.download(&out).unwrap()
    }

    /// The inputs on the device.
    fn upload(&self, gpu: &Gpu) -> Inputs {
        let p = &self.pool;
        Inputs {
            q: gpu.upload(&self.q).unwrap(),
            qs: gpu.upload(&self.qs).unwrap(),
            pool: gpu.upload(&p.data).unwrap(),
            lookup: gpu.upload(&p.lookup).unwrap(),
            scales: (!p.scales.is_empty()).then(|| gpu.upload(&p.scales).unwrap()),
        }
    }
}

/// A case's inputs on the device.
struct Inputs {
    q: CudaSlice<u8>,
    qs: CudaSlice<f32>,
    pool: CudaSlice<u8>,
    lookup: CudaSlice<u32>,
    scales: Option<CudaSlice<f32>>,
}

impl Inputs {
    /// Runs the planned op on layer 1.
    fn run(&self, op: &mut MlaIndexer, out: &mut CudaSlice<i32>) -> sparse_attn::Result<()> {
        let scales = self.scales.as_ref().map(|s| s as &dyn DevicePtr<f32>);
        op.run(&self.q, &self.qs, &self.pool, scales, &self.lookup, 1, out)
    }
}

/// Runs the planned op on fresh copies of the case's inputs (a run
/// uploads their tensor maps, which a capture cannot), then captures that
/// run in a CUDA graph and replays it, each into a poisoned output that
/// must equal `first`.
fn rerun_and_replay(gpu: &Gpu, c: &Case, op: &mut MlaIndexer, first: &[i32], what: &str) {
    let d = c.upload(gpu);
    let mut out = gpu.upload(&vec![POISON; first.len()]).unwrap();
    d.run(op, &mut out).unwrap();
    assert_eq!(
        gpu.download(&out).unwrap(),
        first,
        "{what}: a second run differs"
    );
    gpu.stream()
        .memcpy_htod(&vec![POISON; first.len()], &mut out)
        .unwrap();
    capture_and_replay(gpu, || d.run(op, &mut out).unwrap());
    assert_eq!(
        gpu.download(&out).unwrap(),
        first,
        "{what}: the graph replay differs"
    );
}

fn cfg(num_heads: usize, top_k: usize, mask: Mask) -> MlaIndexerConfig {
    MlaIndexerConfig {
        num_heads,
        top_k,
        mask,
    }
}

/// Checks every row's selection exactly or within tolerance, and the
/// logits of its visible keys within the reference's tolerance.
fn check(gpu: &Gpu, c: &Case, exact: bool, what: &str) {
    let mut op = MlaIndexer::new(gpu, c.cfg).unwrap();
    let (got, logits) = c.run(gpu, &mut op);
    let ld = op.logits_stride().unwrap();
    let want = c.reference();
    let k = c.cfg.top_k;
    for rl in &want {
        let t = rl.row;
        for s in 0..rl.num_keys {
            let (g, w) = (logits[t * ld + s] as f64, rl.score[s]);
            let ok = if w.is_nan() {
                g.is_nan()
            } else {
                (g - w).abs() <= rl.tol[s] + 1e-30
            };
            assert!(
                ok,
                "{what}: row {t} key {s}: logit {g}, reference {w} ± {}",
                rl.tol[s]
            );
        }
    }
    check_selection(&got, &want, k, exact, what);
}

/// Checks every row's selection, exactly (order included) or within the
/// reference's score tolerance.
fn check_selection(got: &[i32], want: &[reference::RowLogits], k: usize, exact: bool, what: &str) {
    for rl in want {
        let t = rl.row;
        let row = &got[t * k..(t + 1) * k];
        if exact {
            let sel = reference::select(rl, k);
            assert_eq!(
                row,
                &sel[..],
                "{what}: row {t} (of {} visible keys)",
                rl.num_keys
            );
        } else if let Err(e) = reference::check_row(row, rl, k) {
            panic!("{what}: {e}");
        }
    }
}

/// Ragged batches mixing a long prefill, a chunked prefill and decode rows.
fn mixed_spec(rng: &mut impl Rng) -> RaggedSpec {
    let q_lens = [
        rng.gen_range(1..300),
        rng.gen_range(100..600),
        1,
        rng.gen_range(2..9),
        1,
    ];
    let cache = [
        0,
        rng.gen_range(1..700),
        rng.gen_range(0..3000),
        rng.gen_range(0..500),
        0,
    ];
    RaggedSpec::prefill(&q_lens, &cache)
}

#[test]
fn exact_on_integer_inputs_every_layout_mask_and_head_count() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    println!("seed {seed}");
    for (heads, ps, fused, mask) in [
        (64, 64, false, Mask::Causal),
        (64, 64, true, Mask::Causal),
        (64, 128, false, Mask::None),
        (128, 128, true, Mask::Causal),
        (128, 64, false, Mask::None),
        (64, 16, true, Mask::Causal),
        (64, 256, false, Mask::Causal),
    ] {
        let spec = mixed_spec(&mut rng);
        let c = Case::new(
            &mut rng,
            spec,
            cfg(heads, 300, mask),
            ps,
            fused,
            Fp8Fill::Integer,
        );
        check(
            &gpu,
            &c,
            true,
            &format!("H {heads}, page {ps}, fused {fused}, {mask:?}"),
        );
    }
}

#[test]
fn random_inputs_within_tolerance() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    println!("seed {seed}");
    for (heads, ps, fused) in [(64, 64, false), (64, 64, true), (128, 128, false)] {
        let spec = mixed_spec(&mut rng);
        let c = Case::new(
            &mut rng,
            spec,
            cfg(heads, 2048, Mask::Causal),
            ps,
            fused,
            Fp8Fill::Random,
        );
        check(
            &gpu,
            &c,
            false,
            &format!("random, H {heads}, page {ps}, fused {fused}"),
        );
    }
}

#[test]
fn contexts_around_tiles_pages_and_top_k() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    println!("seed {seed}");
    // Decode rows whose contexts straddle 64 / 128 keys and top_k = 2048.
    let lens = [1u32, 63, 64, 65, 127, 128, 129, 2047, 2048, 2049, 4097];
    let spec = RaggedSpec::decode(lens.iter().map(|l| l - 1).collect());
    let c = Case::deepseek(&mut rng, spec, 64, false, Fp8Fill::Integer);
    check(&gpu, &c, true, "decode contexts");
    // Speculative rows: 1..8 new tokens on caches of these lengths.
    let q_lens: Vec<u32> = (0..lens.len()).map(|i| 1 + (i as u32 % 8)).collect();
    let spec = RaggedSpec::prefill(&q_lens, &lens);
    let c = Case::deepseek(&mut rng, spec, 64, true, Fp8Fill::Integer);
    check(&gpu, &c, true, "speculative rows");
    // Two new tokens at most (the kernel of 2-row items; decode above takes
    // the 1-row form, the batch before the 4-row one).
    let q_lens: Vec<u32> = (0..lens.len()).map(|i| 1 + (i as u32 % 2)).collect();
    let spec = RaggedSpec::prefill(&q_lens, &lens);
    let c = Case::deepseek(&mut rng, spec, 64, false, Fp8Fill::Integer);
    check(&gpu, &c, true, "speculative rows, 2 at most");
}

#[test]
fn long_context_128k() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    println!("seed {seed}");
    let spec = RaggedSpec::prefill(&[3, 1], &[131_072 + 17, 70_000]);
    let c = Case::deepseek(&mut rng, spec, 64, false, Fp8Fill::Integer);
    check(&gpu, &c, true, "128K+ context");
}

#[test]
fn deterministic_and_graph_replay() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    println!("seed {seed}");
    let spec = mixed_spec(&mut rng);
    let c = Case::deepseek(&mut rng, spec, 64, false, Fp8Fill::Random);
    let mut op = MlaIndexer::new(&gpu, c.cfg).unwrap();
    let (first, _) = c.run(&gpu, &mut op);
    rerun_and_replay(&gpu, &c, &mut op, &first, "one chunk");
}

/// A page table corrupted on the device after `plan` ([`corrupt_lookup`])
/// must not fault: the kernel clamps every page id it reads. The logits
/// then come from the wrong pages, but the output is still a selection:
/// each row holds `min(top_k, visible)` distinct visible positions, then
/// `-1`. The same plan with the real table then selects exactly.
#[test]
fn corrupt_page_table_still_selects_visible_positions() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    println!("seed {seed}");
    for (ps, fused) in [(64, false), (16, true), (256, false)] {
        let spec = mixed_spec(&mut rng);
        let c = Case::new(
            &mut rng,
            spec,
            cfg(64, 300, Mask::Causal),
            ps,
            fused,
            Fp8Fill::Integer,
        );
        let mut op = MlaIndexer::new(&gpu, c.cfg).unwrap();
        let want = c.select(&gpu, &mut op);
        let what = format!("page {ps}, fused {fused}");
        let mut d = c.upload(&gpu);
        let p = &c.pool;
        d.lookup = gpu
            .upload(&corrupt_lookup(&mut rng, &p.lookup, p.layout.num_pages))
            .unwrap();
        let mut out = gpu.upload(&vec![POISON; want.len()]).unwrap();
        assert_no_fault(&gpu, &what, || d.run(&mut op, &mut out).unwrap());
        let got = gpu.download(&out).unwrap();
        let (k, logits) = (c.cfg.top_k, c.reference());
        for rl in &logits {
            let row = &got[rl.row * k..(rl.row + 1) * k];
            let n = k.min(rl.num_keys);
            let mut pos: Vec<i32> = row[..n].to_vec();
            pos.sort_unstable();
            pos.dedup();
            assert!(
                pos.len() == n && pos.iter().all(|&s| 0 <= s && (s as usize) < rl.num_keys),
                "{what}: row {}: not {n} distinct positions below {}",
                rl.row,
                rl.num_keys
            );
            assert!(
                row[n..].iter().all(|&s| s == -1),
                "{what}: row {}: padding",
                rl.row
            );
        }
        d.lookup = gpu.upload(&p.lookup).unwrap();
        d.run(&mut op, &mut out).unwrap();
        assert_eq!(
            gpu.download(&out).unwrap(),
            want,
            "{what}: the real table after the corrupt one"
        );
        check_selection(&want, &logits, k, true, &what);
    }
}

/// Batches whose logits exceed the limit run in chunks of rows: one row a
/// chunk, 37 rows (chunk edges inside sequences), a shared workspace of 100
/// rows; each selection exact against the reference, the chunked runs
/// deterministic and replayable from a graph, the logits alone refused.
#[test]
fn row_chunks_select_exactly_and_replay() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    println!("seed {seed}");
    let spec = mixed_spec(&mut rng);
    let c = Case::new(
        &mut rng,
        spec,
        cfg(64, 300, Mask::Causal),
        64,
        true,
        Fp8Fill::Integer,
    );
    let want = c.reference();
    let rows = c.spec.num_rows();
    let mut whole = MlaIndexer::new(&gpu, c.cfg).unwrap();
    let first = c.select(&gpu, &mut whole);
    assert_eq!(whole.chunks(), Some(1));
    check_selection(&first, &want, c.cfg.top_k, true, "one chunk");
    let row_bytes = 4 * whole.logits_stride().unwrap();
    let shared = Workspace::new(&gpu, 100 * row_bytes).unwrap();
    for (limit, ws) in [
        (1, None),
        (37 * row_bytes + 5, None),
        (usize::MAX, Some(&shared)),
    ] {
        let mut op = match ws {
            Some(ws) => MlaIndexer::new_in(&gpu, c.cfg, ws).unwrap(),
            None => MlaIndexer::new(&gpu, c.cfg).unwrap(),
        };
        op.limit_logits(limit);
        let got = c.select(&gpu, &mut op);
        let per = if ws.is_some() {
            100
        } else {
            (limit / row_bytes).max(1)
        };
        let what = format!("chunks of {per} rows");
        assert_eq!(op.chunks(), Some(rows.div_ceil(per)), "{what}");
        check_selection(&got, &want, c.cfg.top_k, true, &what);
        assert_eq!(got, first, "{what}: differs from one chunk");
        assert_eq!(
            op.download_logits().err().and_then(|e| e.arg()),
            Some("workspace")
        );
    }
    // A chunked plan: the logits alone refused, a rerun and a graph replay.
    let mut op = MlaIndexer::new(&gpu, c.cfg).unwrap();
    op.limit_logits(37 * row_bytes);
    c.select(&gpu, &mut op);
    let d = c.upload(&gpu);
    let e = op
        .run_logits(&d.q, &d.qs, &d.pool, None, &d.lookup, 1)
        .unwrap_err();
    assert_eq!(e.arg(), Some("workspace"), "{e}");
    rerun_and_replay(&gpu, &c, &mut op, &first, "chunks of 37 rows");
}

/// `plan_work` over consecutive row ranges: every row's visible key tiles
/// in exactly one item each (a row may get masked tiles past its own
/// keys, up to its group's last row's), the same visible lengths as over
/// all rows, each item's rows inside its range (CPU only).
#[test]
fn row_ranges_cover_every_visible_tile_once() {
    let (mut rng, seed) = seeded(None);
    println!("seed {seed}");
    let bn = 128;
    for _ in 0..20 {
        let spec = mixed_spec(&mut rng);
        let batch = spec.as_batch();
        let rows = spec.num_rows();
        let group = [1, 2, 4][rng.gen_range(0..3)];
        let mask = [Mask::None, Mask::Causal][rng.gen_range(0..2)];
        let (_, lens) = plan_work(&batch, 0..rows, group, mask, 264);
        assert_eq!(lens.len(), rows);
        for per in [1, 3, 37, rows / 2 + 1, rows] {
            let mut tiles = vec![Vec::new(); rows];
            let mut l = Vec::new();
            for r0 in (0..rows).step_by(per) {
                let r = r0..rows.min(r0 + per);
                let (work, rl) = plan_work(&batch, r.clone(), group, mask, 264);
                for w in &work {
                    let end = (w.row0 + w.rows) as usize;
                    assert!(w.rows >= 1 && end <= r.len(), "{w:?} in {r:?}");
                    for t in w.row0 as usize..end {
                        tiles[r0 + t].extend(w.tile0..w.tile1);
                    }
                }
                l.extend(rl);
            }
            assert_eq!(l, lens, "{per} rows a range: lengths");
            for (t, mut got) in tiles.into_iter().enumerate() {
                got.sort_unstable();
                let n = got.len() as u32;
                assert!(
                    got.iter().copied().eq(0..n) && n * bn >= lens[t],
                    "{per} rows a range: row {t} ({} keys) has tiles {got:?}",
                    lens[t]
                );
            }
        }
    }
}

#[test]
fn bad_input_is_a_named_error() {
    let Some(gpu) = gpu() else { return };
    let arg = |e: Error| e.arg();
    let new = |c: MlaIndexerConfig| MlaIndexer::new(&gpu, c).err().map(arg);
    assert_eq!(new(cfg(32, 2048, Mask::Causal)), Some(Some("num_heads")));
    assert_eq!(new(cfg(64, 0, Mask::Causal)), Some(Some("top_k")));
    assert_eq!(new(cfg(64, 2049, Mask::Causal)), Some(Some("top_k")));
    assert_eq!(
        new(cfg(64, 8, Mask::SlidingWindow { window: 4 })),
        Some(Some("mask"))
    );
    let mut op = MlaIndexer::new(&gpu, cfg(64, 16, Mask::Causal)).unwrap();
    let spec = RaggedSpec::prefill(&[3, 2], &[100, 0]);
    let lookup = vec![0u32, 1, 2, 0];
    let plan = |op: &mut MlaIndexer, l: PagedLayout, lookup: &[u32], max_pages: usize| {
        op.plan(&spec.as_batch(), &l, PageTable::new(lookup, max_pages))
            .err()
            .map(arg)
    };
    let good = PagedLayout::index_k_fp8(3, 1, 64, false);
    assert_eq!(plan(&mut op, good, &lookup, 2), None);
    assert_eq!(
        plan(
            &mut op,
            PagedLayout::index_k_fp8(3, 1, 48, false),
            &lookup,
            2
        ),
        Some(Some("page_size"))
    );
    assert_eq!(
        plan(&mut op, PagedLayout::index_k(3, 1, 64, 128), &lookup, 2),
        Some(Some("dtype"))
    );
    assert_eq!(
        plan(&mut op, good, &lookup[..2], 1),
        Some(Some("lookup")),
        "rows too short"
    );
    assert_eq!(
        plan(&mut op, good, &[0, 7, 2, 0], 2),
        Some(Some("lookup")),
        "page id past the pool"
    );
    let bad_off = RaggedSpec {
        offsets: vec![0, 3, 2],
        cache_lengths: vec![100, 0],
    };
    assert_eq!(
        op.plan(&bad_off.as_batch(), &good, PageTable::new(&lookup, 2))
            .err()
            .map(arg),
        Some(Some("input_row_offsets"))
    );
    op.plan(&spec.as_batch(), &good, PageTable::new(&lookup, 2))
        .unwrap();
    let q = gpu.zeros::<u8>(5 * 64 * 128).unwrap();
    let qs = gpu.zeros::<f32>(5 * 64).unwrap();
    let pool = gpu.zeros::<u8>(good.elements()).unwrap();
    let scales = gpu.zeros::<f32>(good.scale_elements()).unwrap();
    let d_lookup = gpu.upload(&lookup).unwrap();
    let mut out = gpu.zeros::<i32>(5 * 16).unwrap();
    let short = gpu.zeros::<u8>(5).unwrap();
    let run = |op: &mut MlaIndexer, q: &CudaSlice<u8>, sc: Option<&_>, out: &mut CudaSlice<i32>| {
        let sc = sc.map(|s| s as &dyn DevicePtr<f32>);
        op.run(q, &qs, &pool, sc, &d_lookup, 0, out).err().map(arg)
    };
    assert_eq!(run(&mut op, &q, Some(&scales), &mut out), None);
    assert_eq!(
        op.run(&q, &qs, &pool, Some(&scales), &d_lookup, 1, &mut out)
            .err()
            .map(arg),
        Some(Some("layer")),
        "the layer is run's"
    );
    assert_eq!(
        run(&mut op, &short, Some(&scales), &mut out),
        Some(Some("q"))
    );
    assert_eq!(run(&mut op, &q, None, &mut out), Some(Some("k_scales")));
    let mut short_out = gpu.zeros::<i32>(3).unwrap();
    assert_eq!(
        run(&mut op, &q, Some(&scales), &mut short_out),
        Some(Some("out"))
    );
}

//! The dense flash prefill on the GPU against the f64 reference: every mask
//! × paged / contiguous K/V × self / cross attention; ragged batches with
//! lengths around the 128-row and 128-key tiles; page sizes 16..256 with
//! shuffled page tables and garbage (NaN, ±Inf) in unwritten page slots;
//! windows of 1, smaller than a tile and longer than the sequence; sinks
//! with large positive and negative values; rows that see no key; GQA
//! groups 1, 4, 8, 16; chunked prefill on a cache whose length is not a
//! multiple of the page; bit-determinism; a run captured in a CUDA graph;
//! a device-side page table corrupted after `plan` (no fault); the named
//! errors of bad input.
//!
//! GPU tests print `SKIP` where there is no NVIDIA driver; every random case
//! prints its seed (`SPARSE_ATTN_SEED=<n>` replays it). Outputs are poisoned
//! (NaN bits) before every launch and must all be written. Tolerances: the
//! spec's (`check_dense_prefill`): bf16 output of an f32 accumulation whose
//! P is rounded to bf16 for the P V product.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use sparse_attn::abi::dense::{DP_BLOCK_N, DP_WIDE_N};
use sparse_attn::{
    bf16, CudaSlice, DensePrefill, DensePrefillConfig, DevicePtr, Error, Gpu, KvBuffers, KvLayout,
    Mask,
};
use sparse_attn_reference::dense_prefill::{
    check_dense_prefill, dense_prefill as reference, DenseKv,
};
use sparse_attn_tests::data::{
    corrupt_lookup, paged_pool, ragged_kv, seeded, tensor, Fill, PagedPool, RaggedKv, RaggedSpec,
};
use sparse_attn_tests::harness::{
    assert_no_fault, capture_and_replay, gpu_or_skip as gpu, poisoned_run, POISON_OUT,
};

/// K/V of a case.
enum Kv {
    Paged(PagedPool),
    Ragged(RaggedKv),
}

/// One case's inputs.
struct Case {
    spec: RaggedSpec,
    kv: Kv,
    q: Vec<bf16>,
    sinks: Option<Vec<f32>>,
    cfg: DensePrefillConfig,
    /// `set_key_tile`'s argument (`None`: the plan's choice).
    key_tile: Option<u32>,
}

const LAYERS: usize = 2;
const LAYER: usize = 1;

fn config(n_heads: usize, n_kv_heads: usize, mask: Mask, sinks: bool) -> DensePrefillConfig {
    DensePrefillConfig {
        n_heads,
        n_kv_heads,
        mask,
        sinks,
        ..DensePrefillConfig::llama_gqa()
    }
}

impl Case {
    /// Random q (and sinks) for `spec`; K/V paged with `page_size` or, with
    /// `kv_lens`, contiguous with those lengths.
    fn random(
        rng: &mut ChaCha8Rng,
        spec: RaggedSpec,
        cfg: DensePrefillConfig,
        page_size: Option<usize>,
        kv_lens: Option<&[u32]>,
    ) -> Self {
        let q = tensor(rng, spec.num_rows() * cfg.n_heads * 128, Fill::Normal);
        let kv = match (page_size, kv_lens) {
            (Some(ps), None) => Kv::Paged(paged_pool(
                rng,
                &spec,
                2,
                LAYERS,
                cfg.n_kv_heads,
                128,
                ps,
                3,
                Fill::Normal,
            )),
            (None, Some(l)) => Kv::Ragged(ragged_kv(rng, l, cfg.n_kv_heads, 128, Fill::Normal)),
            _ => panic!("a case is paged or contiguous"),
        };
        let sinks = cfg.sinks.then(|| {
            (0..cfg.n_heads)
                .map(|_| rng.gen_range(-4.0f32..4.0))
                .collect()
        });
        Case {
            spec,
            kv,
            q,
            sinks,
            cfg,
            key_tile: None,
        }
    }

    /// The case with the key tile fixed.
    fn with_key_tile(mut self, keys: u32) -> Self {
        self.key_tile = Some(keys);
        self
    }

    fn layout(&self) -> KvLayout<'_> {
        match &self.kv {
            Kv::Paged(p) => KvLayout::Paged {
                layout: p.layout,
                pages: p.table(),
            },
            Kv::Ragged(r) => KvLayout::Ragged {
                kv_row_offsets: &r.kv_row_offsets,
            },
        }
    }

    fn reference(&self) -> sparse_attn_reference::msa_attention::AttentionOutput {
        let kv = match &self.kv {
            Kv::Paged(p) => DenseKv::Paged {
                cache: p.cache(),
                layer: LAYER,
            },
            Kv::Ragged(r) => r.as_dense_kv(),
        };
        reference(
            &self.q,
            &self.spec.as_batch(),
            &kv,
            self.sinks.as_deref(),
            &self.cfg,
        )
    }
}

/// The case's device buffers.
struct Dev {
    q: CudaSlice<bf16>,
    a: CudaSlice<bf16>,
    b: CudaSlice<bf16>,
    lookup: CudaSlice<u32>,
    sinks: Option<CudaSlice<f32>>,
}

impl Dev {
    fn new(gpu: &Gpu, c: &Case) -> Self {
        let (a, b, lookup) = match &c.kv {
            Kv::Paged(p) => (
                gpu.upload(&p.data).unwrap(),
                gpu.zeros(1).unwrap(),
                gpu.upload(&p.lookup).unwrap(),
            ),
            Kv::Ragged(r) => (
                gpu.upload(&r.k).unwrap(),
                gpu.upload(&r.v).unwrap(),
                gpu.zeros(1).unwrap(),
            ),
        };
        let sinks = c.sinks.as_ref().map(|s| gpu.upload(s).unwrap());
        Dev {
            q: gpu.upload(&c.q).unwrap(),
            a,
            b,
            lookup,
            sinks,
        }
    }

    /// The sinks, as `run` takes them.
    fn sinks(&self) -> Option<&dyn DevicePtr<f32>> {
        self.sinks.as_ref().map(|s| s as _)
    }

    fn kv(&self, c: &Case) -> KvBuffers<'_> {
        match c.kv {
            Kv::Paged(_) => KvBuffers::Paged {
                kv_cache: &self.a,
                lookup: &self.lookup,
                layer: LAYER,
            },
            Kv::Ragged(_) => KvBuffers::Ragged {
                k: &self.a,
                v: &self.b,
            },
        }
    }
}

/// Plans and runs the case with poisoned outputs; every element must be written.
fn run(gpu: &Gpu, c: &Case) -> (Vec<bf16>, Vec<f32>) {
    let mut op = DensePrefill::new(gpu, c.cfg).unwrap();
    op.set_key_tile(c.key_tile).unwrap();
    op.plan(&c.spec.as_batch(), &c.layout()).unwrap();
    let d = Dev::new(gpu, c);
    poisoned_run(gpu, c.spec.num_rows() * c.cfg.n_heads, |out, lse| {
        op.run(&d.q, d.kv(c), d.sinks(), out, Some(lse)).unwrap()
    })
}

fn check(gpu: &Gpu, name: &str, c: &Case) {
    let (out, lse) = run(gpu, c);
    let want = c.reference();
    if let Err(e) = check_dense_prefill(&out, Some(&lse), &want, &c.cfg) {
        panic!("{name}: GPU differs from the reference:\n{e}");
    }
    eprintln!(
        "ok: {name} (batch {}, rows {}, {:?}, group {})",
        c.spec.batch(),
        c.spec.num_rows(),
        c.cfg.mask,
        c.cfg.group()
    );
}

const MASKS: [Mask; 4] = [
    Mask::None,
    Mask::Causal,
    Mask::SlidingWindow { window: 1 },
    Mask::SlidingWindow { window: 100 },
];

#[test]
fn gpu_dense_prefill_matches_reference_for_every_mask_and_source() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    let q_lens = [1u32, 63, 64, 65, 127, 128, 129, 300];
    for mask in MASKS {
        for sinks in [false, true] {
            let cfg = config(8, 2, mask, sinks);
            // Self-attention on a paged cache: prefill from scratch, and chunked (cache not a page multiple).
            let cache: Vec<u32> = q_lens.iter().map(|_| rng.gen_range(0..200)).collect();
            for (what, cl) in [("prefill", vec![0; q_lens.len()]), ("chunked", cache)] {
                let spec = RaggedSpec::prefill(&q_lens, &cl);
                let c = Case::random(&mut rng, spec, cfg, Some(64), None);
                check(&gpu, &format!("paged {what} {mask:?} sinks {sinks}"), &c);
            }
            // Contiguous: self-attention, and cross-attention with independent KV lengths (one empty).
            let spec = RaggedSpec::prefill(&q_lens, &[0; 8]);
            let c = Case::random(&mut rng, spec.clone(), cfg, None, Some(&q_lens));
            check(&gpu, &format!("contiguous self {mask:?} sinks {sinks}"), &c);
            let kv_lens = [0u32, 129, 1, 500, 64, 255, 7, 128];
            let c = Case::random(&mut rng, spec, cfg, None, Some(&kv_lens));
            check(
                &gpu,
                &format!("contiguous cross {mask:?} sinks {sinks}"),
                &c,
            );
        }
    }
}

/// Both key tiles (128 and the wide kernel's `DP_WIDE_N` = 176) on
/// contiguous K/V under every mask: key counts around one and two wide
/// tiles, query lengths around them, chunked positions, cross-attention.
#[test]
fn gpu_dense_prefill_both_key_tiles_under_every_mask() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    let q_lens = [1u32, 175, 176, 177, 353, 129];
    let kv_lens = [0u32, 175, 176, 177, 352, 1000];
    for keys in [DP_BLOCK_N, DP_WIDE_N] {
        for (i, mask) in MASKS.into_iter().enumerate() {
            let cfg = config(8, 2, mask, i % 2 == 1);
            let spec = RaggedSpec::prefill(&q_lens, &[0; 6]);
            let c = Case::random(&mut rng, spec.clone(), cfg, None, Some(&q_lens));
            check(
                &gpu,
                &format!("tile {keys} self {mask:?}"),
                &c.with_key_tile(keys),
            );
            // Rows at the end of their keys (bottom-right aligned).
            let spec = RaggedSpec::bottom_right(&q_lens, &kv_lens);
            let c = Case::random(&mut rng, spec, cfg, None, Some(&kv_lens));
            check(
                &gpu,
                &format!("tile {keys} cross {mask:?}"),
                &c.with_key_tile(keys),
            );
        }
    }
}

#[test]
fn gpu_dense_prefill_page_sizes_groups_and_long_sequences() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    for ps in [16usize, 32, 64, 128, 256] {
        let spec = RaggedSpec::prefill(&[200, 1, 777], &[5, 300, 129]);
        let c = Case::random(
            &mut rng,
            spec,
            config(4, 4, Mask::Causal, false),
            Some(ps),
            None,
        );
        check(&gpu, &format!("page size {ps}"), &c);
    }
    for (nh, nkv) in [(4usize, 4usize), (16, 4), (16, 2), (32, 2)] {
        let spec = RaggedSpec::prefill(&[130, 64], &[0, 33]);
        let c = Case::random(
            &mut rng,
            spec,
            config(nh, nkv, Mask::Causal, true),
            Some(16),
            None,
        );
        check(&gpu, &format!("GQA {nh}/{nkv}"), &c);
    }
    // Thousands of rows; windows smaller than a tile, across tiles, longer than the sequence.
    for mask in [
        Mask::Causal,
        Mask::None,
        Mask::SlidingWindow { window: 37 },
        Mask::SlidingWindow { window: 1000 },
        Mask::SlidingWindow { window: 10_000 },
    ] {
        let spec = RaggedSpec::prefill(&[3000, 1100], &[0, 2000]);
        let c = Case::random(&mut rng, spec, config(4, 1, mask, false), Some(128), None);
        check(&gpu, &format!("long {mask:?}"), &c);
    }
}

#[test]
fn gpu_dense_prefill_sink_extremes_and_empty_rows() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    for sink in [60.0f32, -60.0, 0.0] {
        let spec = RaggedSpec::prefill(&[100, 5], &[0, 0]);
        let mut c = Case::random(
            &mut rng,
            spec,
            config(4, 2, Mask::Causal, true),
            None,
            Some(&[0, 300]),
        );
        c.sinks = Some(vec![sink; 4]);
        check(&gpu, &format!("sink {sink} (sequence 0 sees no key)"), &c);
    }
    // No sinks: a sequence without keys gives out 0 and lse -inf.
    let spec = RaggedSpec::prefill(&[70, 3], &[0, 0]);
    let c = Case::random(
        &mut rng,
        spec,
        config(4, 2, Mask::None, false),
        None,
        Some(&[0, 2]),
    );
    let (out, lse) = run(&gpu, &c);
    assert!(out[..70 * 4 * 128].iter().all(|v| v.to_f32() == 0.0));
    assert!(lse[..70 * 4].iter().all(|v| *v == f32::NEG_INFINITY));
    check(&gpu, "empty key set", &c);
}

#[test]
fn gpu_dense_prefill_is_deterministic_and_replays_in_a_graph() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    let spec = RaggedSpec::prefill(&[500, 129, 1000], &[17, 0, 250]);
    let c = Case::random(
        &mut rng,
        spec,
        config(8, 2, Mask::SlidingWindow { window: 300 }, true),
        Some(32),
        None,
    );
    let a = run(&gpu, &c);
    let b = run(&gpu, &c);
    assert!(
        a.0.iter()
            .zip(&b.0)
            .all(|(x, y)| x.to_bits() == y.to_bits()),
        "two runs differ"
    );
    let mut op = DensePrefill::new(&gpu, c.cfg).unwrap();
    op.plan(&c.spec.as_batch(), &c.layout()).unwrap();
    let d = Dev::new(&gpu, &c);
    let n = c.spec.num_rows() * c.cfg.n_heads;
    let mut out = gpu.zeros::<bf16>(n * 128).unwrap();
    op.run(&d.q, d.kv(&c), d.sinks(), &mut out, None).unwrap(); // binds the tensor maps
    let mut out2 = gpu
        .upload(&vec![bf16::from_bits(POISON_OUT); n * 128])
        .unwrap();
    capture_and_replay(&gpu, || {
        op.run(&d.q, d.kv(&c), d.sinks(), &mut out2, None).unwrap()
    });
    let replay = gpu.download(&out2).unwrap();
    assert!(
        a.0.iter()
            .zip(&replay)
            .all(|(x, y)| x.to_bits() == y.to_bits()),
        "graph replay differs from the eager run"
    );
}

/// A page table corrupted on the device after `plan` (ids past the pool,
/// `u32::MAX`: [`corrupt_lookup`]) must not fault: the kernel clamps every
/// id it reads. The run's output is then unspecified; the context must
/// still work, and the same plan run with the real table must match the
/// reference. Pages of 16 (8 a key tile), 128 and 256 keys.
#[test]
fn gpu_dense_prefill_survives_a_corrupt_page_table() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    for ps in [16, 128, 256] {
        let spec = RaggedSpec::prefill(&[129, 300], &[1000, 37]);
        let c = Case::random(
            &mut rng,
            spec,
            config(8, 2, Mask::Causal, false),
            Some(ps),
            None,
        );
        let Kv::Paged(pool) = &c.kv else {
            unreachable!()
        };
        let mut op = DensePrefill::new(&gpu, c.cfg).unwrap();
        op.plan(&c.spec.as_batch(), &c.layout()).unwrap();
        let mut d = Dev::new(&gpu, &c);
        let bad = corrupt_lookup(&mut rng, &pool.lookup, pool.layout.num_pages);
        let real = std::mem::replace(&mut d.lookup, gpu.upload(&bad).unwrap());
        let n = c.spec.num_rows() * c.cfg.n_heads;
        let mut out = gpu.zeros::<bf16>(n * 128).unwrap();
        assert_no_fault(&gpu, &format!("pages of {ps}"), || {
            op.run(&d.q, d.kv(&c), d.sinks(), &mut out, None).unwrap()
        });
        d.lookup = real;
        let (out, lse) = poisoned_run(&gpu, n, |out, lse| {
            op.run(&d.q, d.kv(&c), d.sinks(), out, Some(lse)).unwrap()
        });
        if let Err(e) = check_dense_prefill(&out, Some(&lse), &c.reference(), &c.cfg) {
            panic!("pages of {ps}, after the corrupt table: GPU differs from the reference:\n{e}");
        }
        eprintln!("ok: pages of {ps}, a corrupt table, then the real one");
    }
}

fn invalid_arg(r: sparse_attn::Result<()>) -> &'static str {
    match r {
        Err(Error::InvalidArgument { arg, .. }) => arg,
        other => panic!("expected an invalid argument, got {other:?}"),
    }
}

#[test]
fn gpu_dense_prefill_names_bad_input() {
    let Some(gpu) = gpu() else { return };
    for (bad, arg) in [
        (config(6, 4, Mask::Causal, false), "n_heads"),
        (config(4, 0, Mask::Causal, false), "n_kv_heads"),
        (
            config(4, 2, Mask::SlidingWindow { window: 0 }, false),
            "window",
        ),
        (
            DensePrefillConfig {
                scale: f32::NAN,
                ..config(4, 2, Mask::Causal, false)
            },
            "scale",
        ),
        (
            DensePrefillConfig {
                scale: f32::INFINITY,
                ..config(4, 2, Mask::Causal, false)
            },
            "scale",
        ),
    ] {
        assert_eq!(
            invalid_arg(DensePrefill::new(&gpu, bad).map(|_| ())),
            arg,
            "{bad:?}"
        );
    }
    let (mut rng, _) = seeded(Some(1));
    let spec = RaggedSpec::prefill(&[10, 300], &[0, 5]);
    let c = Case::random(
        &mut rng,
        spec,
        config(4, 2, Mask::Causal, false),
        Some(64),
        None,
    );
    let mut op = DensePrefill::new(&gpu, c.cfg).unwrap();
    let Kv::Paged(pool) = &c.kv else {
        unreachable!()
    };
    let batch = c.spec.as_batch();
    let bad_offsets = [0u32, 20, 10];
    let paged = |page_size, pages| KvLayout::Paged {
        layout: sparse_attn::PagedLayout {
            page_size,
            ..pool.layout
        },
        pages,
    };
    let (ps, table) = (pool.layout.page_size, pool.table());
    let short_table = sparse_attn::PageTable::new(&pool.lookup[..1], 1);
    let bad_batch = sparse_attn::RaggedBatch::new(&bad_offsets, &[0, 0]);
    let cases: Vec<(KvLayout, sparse_attn::RaggedBatch, &str)> = vec![
        (paged(48, table), batch, "page_size"),
        (paged(512, table), batch, "page_size"),
        (paged(ps, short_table), batch, "lookup"),
        (c.layout(), bad_batch, "input_row_offsets"),
        (
            KvLayout::Ragged {
                kv_row_offsets: &[0, 5],
            },
            batch,
            "kv_row_offsets",
        ),
    ];
    for (layout, b, arg) in cases {
        assert_eq!(invalid_arg(op.plan(&b, &layout)), arg);
    }
    // A key tile of neither width, and the wide one on a paged cache.
    assert_eq!(invalid_arg(op.set_key_tile(Some(100))), "key_tile");
    op.set_key_tile(Some(DP_WIDE_N)).unwrap();
    assert_eq!(invalid_arg(op.plan(&batch, &c.layout())), "key_tile");
    op.set_key_tile(None).unwrap();
    // Buffers of the wrong size, sinks that the config does not have.
    op.plan(&batch, &c.layout()).unwrap();
    let d = Dev::new(&gpu, &c);
    let n = c.spec.num_rows() * 4;
    let mut out = gpu.zeros::<bf16>(n * 128).unwrap();
    let mut short = gpu.zeros::<bf16>(n * 128 - 1).unwrap();
    assert_eq!(
        invalid_arg(op.run(&d.q, d.kv(&c), None, &mut short, None)),
        "out"
    );
    assert_eq!(
        invalid_arg(op.run(&short, d.kv(&c), None, &mut out, None)),
        "q"
    );
    let sinks = gpu.zeros::<f32>(4).unwrap();
    assert_eq!(
        invalid_arg(op.run(&d.q, d.kv(&c), Some(&sinks), &mut out, None)),
        "sinks"
    );
    let mut lse = gpu.zeros::<f32>(n + 1).unwrap();
    assert_eq!(
        invalid_arg(op.run(&d.q, d.kv(&c), None, &mut out, Some(&mut lse))),
        "lse"
    );
    let small_pool = gpu.zeros::<bf16>(10).unwrap();
    assert_eq!(
        invalid_arg(op.run(
            &d.q,
            KvBuffers::Paged {
                kv_cache: &small_pool,
                lookup: &d.lookup,
                layer: LAYER,
            },
            None,
            &mut out,
            None
        )),
        "kv_cache"
    );
    // The layer is `run`'s (one plan serves every layer).
    assert_eq!(
        invalid_arg(op.run(
            &d.q,
            KvBuffers::Paged {
                kv_cache: &d.a,
                lookup: &d.lookup,
                layer: LAYERS,
            },
            None,
            &mut out,
            None
        )),
        "layer"
    );
    assert_eq!(
        invalid_arg(op.run(
            &d.q,
            KvBuffers::Ragged { k: &d.a, v: &d.a },
            None,
            &mut out,
            None
        )),
        "kv"
    );
    op.run(&d.q, d.kv(&c), None, &mut out, None).unwrap();
}

/// The host's choice of key tile for bf16 on contiguous K/V (no GPU): the
/// mean key span of the bench's cases (8 × 2K causal: 1088 keys, 128-key
/// tiles; 16K causal 8256 and 16K 16384: 176), and its threshold.
#[test]
fn mean_key_span_of_the_bench_cases() {
    use sparse_attn::dense_prefill::{mean_key_span, plan_tiles, WIDE_MIN_SPAN};
    for (lens, mask, span, wide) in [
        (&[2048u32; 8][..], Mask::Causal, 1088, false),
        (&[16384][..], Mask::Causal, 8256, true),
        (&[16384][..], Mask::None, 16384, true),
    ] {
        let spec = RaggedSpec::prefill(lens, &vec![0; lens.len()]);
        let keys: Vec<u32> = (0..spec.batch()).map(|b| spec.seqlen_k(b) as u32).collect();
        let tiles = plan_tiles(
            &spec.as_batch(),
            &keys,
            &vec![0; spec.batch()],
            &config(32, 8, mask, false),
        );
        assert_eq!(mean_key_span(&tiles), span, "{lens:?} {mask:?}");
        assert_eq!(span >= WIDE_MIN_SPAN, wide, "{lens:?} {mask:?}");
    }
}

/// The host's tiles (no GPU): every row exactly once, at most
/// `DP_BLOCK_M` rows of one sequence each, positions and key counts from
/// the batch, longest first.
#[test]
fn plan_tiles_cover_every_row_longest_first() {
    use sparse_attn::abi::dense::DP_BLOCK_M;
    use sparse_attn::dense_prefill::plan_tiles;
    let spec = RaggedSpec::prefill(&[300, 0, 1, 129, 128], &[5, 0, 1000, 0, 7]);
    for mask in MASKS {
        let cfg = config(4, 2, mask, false);
        let keys: Vec<u32> = (0..spec.batch()).map(|b| spec.seqlen_k(b) as u32).collect();
        let tiles = plan_tiles(&spec.as_batch(), &keys, &vec![0; spec.batch()], &cfg);
        let mut seen = vec![0u32; spec.num_rows()];
        for t in &tiles {
            assert!(t.rows >= 1 && t.rows <= DP_BLOCK_M, "{t:?}");
            let b = t.seq as usize;
            let r0 = spec.offsets[b];
            assert!(
                t.row0 >= r0 && t.row0 + t.rows <= spec.offsets[b + 1],
                "{t:?}"
            );
            assert_eq!(t.q_pos0, spec.cache_lengths[b] + t.row0 - r0);
            assert_eq!(t.num_keys, keys[b]);
            (t.row0..t.row0 + t.rows).for_each(|r| seen[r as usize] += 1);
        }
        assert!(
            seen.iter().all(|&n| n == 1),
            "{mask:?}: rows covered {seen:?}"
        );
        assert!(
            tiles.windows(2).all(|w| w[0].key_tiles >= w[1].key_tiles),
            "{mask:?}: not longest first"
        );
    }
}

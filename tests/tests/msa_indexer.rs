//! MSA indexer: GPU against the CPU reference on fresh random inputs, plus
//! the host-side validation and planning (which need no GPU).
//!
//! GPU tests print `SKIP` and pass where no NVIDIA driver exists (CI); the
//! seed of every random case is printed (`SPARSE_ATTN_SEED=<n>` replays it).
//!
//! Comparison: with integer-valued inputs (exact in f32 whatever the
//! summation order) the output must equal the reference exactly, order
//! included; with real-valued inputs the spec's rule applies (forced sets and
//! padding exact, selected scores at least the unselected minus
//! `2^-16 * scale * sum |q_d k_d|`).

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use sparse_attn::abi::msa::IdxWorkItem;
use sparse_attn::msa_indexer::{graph_grid, plan_work, PlanOptions};
use sparse_attn::{
    Error, Gpu, IndexerPath, KvDtype, MsaIndexer, MsaIndexerConfig, PageTable, PagedLayout,
    PagedLayoutExt, RaggedBatch,
};
use sparse_attn_reference::msa_indexer as reference;
use sparse_attn_tests::data::{paged_pool, seeded, tensor, Fill, PagedPool, RaggedSpec};
use sparse_attn_tests::harness::gpu_or_skip as gpu;

/// Written to `out_idxs` before every launch; must not survive.
const POISON: i32 = 0x7ead_beef;

/// One random case: inputs, and what to check.
struct Case {
    name: &'static str,
    spec: RaggedSpec,
    cfg: MsaIndexerConfig,
    fill: Fill,
    num_layers: usize,
    layer: usize,
    extra_pages: usize,
    extra_cols: usize,
    path: Option<IndexerPath>,
    decode_chunk: Option<usize>,
    /// Overwrites q rows with NaN: (row, head) pairs.
    nan_q: Vec<(usize, usize)>,
}

impl Case {
    fn new(name: &'static str, spec: RaggedSpec, cfg: MsaIndexerConfig, fill: Fill) -> Self {
        Case {
            name,
            spec,
            cfg,
            fill,
            num_layers: 1,
            layer: 0,
            extra_pages: 3,
            extra_cols: 0,
            path: None,
            decode_chunk: None,
            nan_q: Vec::new(),
        }
    }
}

struct Inputs {
    pool: PagedPool,
    q: Vec<half::bf16>,
}

fn make_inputs(rng: &mut ChaCha8Rng, c: &Case) -> Inputs {
    let pool = paged_pool(
        rng,
        &c.spec,
        1,
        c.num_layers,
        1,
        128,
        128,
        c.extra_pages,
        c.fill,
    )
    .with_extra_columns(rng, c.extra_cols);
    let (h, d) = (c.cfg.num_index_heads, c.cfg.head_dim);
    let mut q = tensor(rng, c.spec.num_rows() * h * d, c.fill);
    for &(row, head) in &c.nan_q {
        q[(row * h + head) * d..][..d].fill(half::bf16::NAN);
    }
    Inputs { pool, q }
}

/// Runs the GPU op on poisoned output; checks every element was written.
fn run_gpu(gpu: &Gpu, c: &Case, inp: &Inputs) -> Vec<i32> {
    let mut idx = MsaIndexer::new(gpu, c.cfg).unwrap();
    idx.force_path(c.path);
    idx.set_decode_chunk(c.decode_chunk);
    idx.plan(&c.spec.as_batch(), &inp.pool.table(), &inp.pool.layout)
        .unwrap();
    let n = c.cfg.num_index_heads * c.spec.num_rows() * c.cfg.topk;
    let mut out = gpu.upload(&vec![POISON; n]).unwrap();
    let q = gpu.upload(&inp.q).unwrap();
    let k = gpu.upload(&inp.pool.data).unwrap();
    let lookup = gpu.upload(&inp.pool.lookup).unwrap();
    idx.run(&q, &k, &lookup, c.layer, &mut out).unwrap();
    let got = gpu.download(&out).unwrap();
    if let Some(i) = got.iter().position(|&v| v == POISON) {
        panic!("{}: out_idxs[{i}] was never written", c.name);
    }
    got
}

/// GPU vs reference for one case; exact for integer fills.
fn check_case(gpu: &Gpu, rng: &mut ChaCha8Rng, c: &Case) {
    let inp = make_inputs(rng, c);
    let got = run_gpu(gpu, c, &inp);
    let p = c.cfg;
    let scores =
        reference::block_scores(&inp.q, &c.spec.as_batch(), &inp.pool.cache(), c.layer, &p);
    let verdict = match c.fill {
        Fill::SmallInts => reference::check_exact(&got, &scores, &p),
        _ => reference::check_selection(&got, &scores, &p),
    };
    if let Err(e) = verdict {
        panic!("{}: GPU differs from the reference:\n{e}", c.name);
    }
    eprintln!(
        "ok: {} (batch {}, rows {}, max seqlen_k {}, {:?})",
        c.name,
        c.spec.batch(),
        c.spec.num_rows(),
        c.spec.max_seqlen_k(),
        c.fill
    );
}

fn cfg(h: usize, topk: usize, init: usize, local: usize) -> MsaIndexerConfig {
    MsaIndexerConfig {
        num_index_heads: h,
        topk,
        init_blocks: init,
        local_blocks: local,
        ..MsaIndexerConfig::minimax_m3()
    }
}

fn random_lengths(rng: &mut ChaCha8Rng, n: usize, max: u32) -> Vec<u32> {
    (0..n).map(|_| rng.gen_range(0..max)).collect()
}

#[test]
fn gpu_decode_matches_reference() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    let m3 = MsaIndexerConfig::minimax_m3();
    let mut cases = vec![
        Case::new(
            "decode b64 up to 40K",
            RaggedSpec::decode(random_lengths(&mut rng, 64, 40_000)),
            m3,
            Fill::Normal,
        ),
        Case::new(
            "decode b16 ints, init 1 local 2 topk 8",
            RaggedSpec::decode(random_lengths(&mut rng, 16, 9_000)),
            cfg(4, 8, 1, 2),
            Fill::SmallInts,
        ),
        Case::new(
            "decode b128 short contexts, topk 64 > blocks",
            RaggedSpec::decode(random_lengths(&mut rng, 128, 3_000)),
            cfg(4, 64, 0, 1),
            Fill::SmallInts,
        ),
        Case::new(
            "decode one partial block (cache 0..127)",
            RaggedSpec::decode(random_lengths(&mut rng, 8, 127)),
            cfg(4, 4, 0, 0),
            Fill::SmallInts,
        ),
        Case::new(
            "decode init+local > topk",
            RaggedSpec::decode(random_lengths(&mut rng, 8, 5_000)),
            cfg(4, 8, 6, 5),
            Fill::SmallInts,
        ),
        Case::new(
            "decode init, local > num_blocks",
            RaggedSpec::decode(random_lengths(&mut rng, 8, 600)),
            cfg(2, 16, 9, 7),
            Fill::SmallInts,
        ),
        Case::new(
            "decode init = local = 0, topk 1",
            RaggedSpec::decode(random_lengths(&mut rng, 32, 20_000)),
            cfg(4, 1, 0, 0),
            Fill::SmallInts,
        ),
        Case::new(
            "decode 16 heads",
            RaggedSpec::decode(random_lengths(&mut rng, 8, 9_000)),
            cfg(16, 16, 1, 1),
            Fill::Normal,
        ),
        Case::new(
            "decode 1 head",
            RaggedSpec::decode(random_lengths(&mut rng, 8, 9_000)),
            cfg(1, 16, 0, 1),
            Fill::SmallInts,
        ),
    ];
    let mut c = Case::new(
        "decode layer 2 of 3, wide table",
        RaggedSpec::decode(random_lengths(&mut rng, 8, 9_000)),
        m3,
        Fill::SmallInts,
    );
    (c.num_layers, c.layer, c.extra_cols) = (3, 2, 5);
    cases.push(c);
    let mut c = Case::new(
        "decode NaN query rows",
        RaggedSpec::decode(random_lengths(&mut rng, 4, 3_000)),
        cfg(4, 8, 1, 1),
        Fill::SmallInts,
    );
    c.nan_q = vec![(0, 1), (2, 0), (2, 3)];
    cases.push(c);
    let ctx = 131_072 + rng.gen_range(0..128);
    for chunk in [None, Some(1), Some(64)] {
        let mut c = Case::new(
            "decode b1 128K",
            RaggedSpec::decode(vec![ctx - 1]),
            m3,
            Fill::Normal,
        );
        c.decode_chunk = chunk;
        cases.push(c);
    }
    // long-row top-k (rows over 256 blocks in the batch) with rows shorter
    // than topk, and at its topk limit
    cases.push(Case::new(
        "decode mixed lengths, long top-k, topk 64",
        RaggedSpec::decode(vec![100, 50_000 + rng.gen_range(0..128), 300, 2_000]),
        cfg(4, 64, 2, 3),
        Fill::SmallInts,
    ));
    // topk above the long-row kernel's limit: warp top-k with keys re-read
    // past 1024 blocks.
    let c = Case::new(
        "decode b2 160K, topk 72",
        RaggedSpec::decode(vec![160_000, 140_000 + rng.gen_range(0..128)]),
        cfg(4, 72, 1, 3),
        Fill::SmallInts,
    );
    cases.push(c);
    for c in &cases {
        check_case(&gpu, &mut rng, c);
    }
}

#[test]
fn gpu_prefill_matches_reference() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    let m3 = MsaIndexerConfig::minimax_m3();
    let ragged = |rng: &mut ChaCha8Rng, n: usize, max_q: u32, max_cache: u32| {
        let q: Vec<u32> = (0..n)
            .map(|_| {
                if rng.gen_bool(0.2) {
                    0
                } else {
                    rng.gen_range(1..max_q)
                }
            })
            .collect();
        let c = random_lengths(rng, n, max_cache);
        RaggedSpec::prefill(&q, &c)
    };
    let mut cases = vec![
        Case::new(
            "prefill ragged, q_len 0 for some",
            ragged(&mut rng, 6, 700, 3_000),
            m3,
            Fill::Normal,
        ),
        Case::new(
            "prefill ragged ints",
            ragged(&mut rng, 6, 700, 3_000),
            cfg(4, 16, 1, 2),
            Fill::SmallInts,
        ),
        Case::new(
            "prefill no cache",
            RaggedSpec::prefill(&[1_000 + rng.gen_range(0..200)], &[0]),
            m3,
            Fill::Normal,
        ),
        Case::new(
            "prefill 5 heads (tile of 25 rows)",
            ragged(&mut rng, 3, 300, 2_000),
            cfg(5, 16, 0, 1),
            Fill::SmallInts,
        ),
        Case::new(
            "prefill 32 heads",
            ragged(&mut rng, 3, 100, 1_000),
            cfg(32, 8, 1, 1),
            Fill::SmallInts,
        ),
        Case::new(
            "prefill topk 64 > blocks, init+local > topk",
            ragged(&mut rng, 4, 300, 1_500),
            cfg(4, 64, 2, 3),
            Fill::SmallInts,
        ),
        Case::new(
            "prefill init/local > blocks",
            ragged(&mut rng, 4, 200, 300),
            cfg(4, 16, 9, 8),
            Fill::SmallInts,
        ),
        Case::new(
            "speculative 2..8 tokens",
            RaggedSpec::prefill(&[2, 8, 5, 3], &random_lengths(&mut rng, 4, 20_000)),
            m3,
            Fill::SmallInts,
        ),
        Case::new(
            "chunked prefill on a long cache",
            RaggedSpec::prefill(&[300], &[20_000 + rng.gen_range(0..128)]),
            m3,
            Fill::Normal,
        ),
    ];
    let mut c = Case::new(
        "prefill layer 1 of 2",
        ragged(&mut rng, 3, 300, 1_000),
        m3,
        Fill::SmallInts,
    );
    (c.num_layers, c.layer) = (2, 1);
    cases.push(c);
    for c in &cases {
        check_case(&gpu, &mut rng, c);
    }
}

/// Both score kernels compute the same scores on a decode batch, and two
/// runs give identical output.
#[test]
fn gpu_decode_and_prefill_paths_agree_and_repeat() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    let spec = RaggedSpec::decode(random_lengths(&mut rng, 24, 30_000));
    let mut c = Case::new("paths", spec, MsaIndexerConfig::minimax_m3(), Fill::Normal);
    let inp = make_inputs(&mut rng, &c);
    let decode = run_gpu(&gpu, &c, &inp);
    assert_eq!(
        decode,
        run_gpu(&gpu, &c, &inp),
        "decode output changed between runs"
    );
    c.path = Some(IndexerPath::Prefill);
    assert_eq!(
        decode,
        run_gpu(&gpu, &c, &inp),
        "prefill path differs from decode path"
    );
}

// ------------------------------------------------------------ host-only tests

fn tiny() -> (Vec<u32>, Vec<u32>, Vec<u32>, PagedLayout) {
    // two sequences: 1 new token on 200 cached (2 pages), 3 new on 0 cached
    (
        vec![0, 1, 4],
        vec![200, 0],
        vec![5, 2, 7, 0],
        PagedLayout::index_k(8, 2, 128, 128),
    )
}

fn expect_err(r: Result<impl std::fmt::Debug, Error>, arg: &str, needle: &str) {
    match r {
        Err(Error::InvalidArgument {
            arg: a,
            expected,
            actual,
        }) => {
            let msg = format!("{a}: expected {expected}, got {actual}");
            assert_eq!(a, arg, "wrong argument named: {msg}");
            assert!(msg.contains(needle), "message `{msg}` lacks `{needle}`");
        }
        Err(Error::Unsupported { arg: a, what }) => {
            assert_eq!(a, arg, "wrong argument named: {what}");
            assert!(what.contains(needle), "message `{what}` lacks `{needle}`");
        }
        other => panic!("expected an error naming `{arg}`, got {other:?}"),
    }
}

#[test]
fn bad_input_is_a_clear_error() {
    let (off, cl, lookup, layout) = tiny();
    let m3 = MsaIndexerConfig::minimax_m3();
    let o = PlanOptions {
        sm_count: 132,
        ..Default::default()
    };
    let t = PageTable::new(&lookup, 2);
    let b = RaggedBatch::new(&off, &cl);
    plan_work(&m3, &b, &t, &layout, &o).expect("valid input");

    expect_err(
        plan_work(&m3, &RaggedBatch::new(&[0, 3, 2], &cl), &t, &layout, &o),
        "input_row_offsets",
        "offsets[2] = 2 < offsets[1] = 3",
    );
    expect_err(
        plan_work(&m3, &RaggedBatch::new(&[1, 3, 4], &cl), &t, &layout, &o),
        "input_row_offsets",
        "offsets[0] = 1",
    );
    expect_err(
        plan_work(&m3, &RaggedBatch::new(&[0, 1], &cl), &t, &layout, &o),
        "input_row_offsets",
        "batch + 1 = 3",
    );
    let bad_page = [5, 8, 7, 0];
    expect_err(
        plan_work(&m3, &b, &PageTable::new(&bad_page, 2), &layout, &o),
        "lookup",
        "lookup[0][1] = 8",
    );
    expect_err(
        plan_work(&m3, &RaggedBatch::new(&off, &[300, 0]), &t, &layout, &o),
        "lookup",
        "max_pages = 2",
    );
    expect_err(
        plan_work(&m3, &b, &PageTable::new(&lookup[..3], 2), &layout, &o),
        "lookup",
        "3 entries",
    );
    expect_err(
        plan_work(&MsaIndexerConfig { topk: 0, ..m3 }, &b, &t, &layout, &o),
        "topk",
        "got 0",
    );
    expect_err(
        plan_work(
            &MsaIndexerConfig {
                block_size: 64,
                ..m3
            },
            &b,
            &t,
            &layout,
            &o,
        ),
        "block_size",
        "64",
    );
    let bad_layouts = [
        (
            PagedLayout {
                page_size: 64,
                ..layout
            },
            "page_size",
            "64",
        ),
        (
            PagedLayout {
                dtype: KvDtype::Fp8E4m3,
                ..layout
            },
            "dtype",
            "k_cache",
        ),
    ];
    for (bad, arg, needle) in bad_layouts {
        expect_err(plan_work(&m3, &b, &t, &bad, &o), arg, needle);
    }
    expect_err(
        plan_work(
            &MsaIndexerConfig { head_dim: 64, ..m3 },
            &b,
            &t,
            &layout,
            &o,
        ),
        "head_dim",
        "64",
    );
    expect_err(
        plan_work(
            &m3,
            &b,
            &t,
            &PagedLayout {
                head_dim: 64,
                ..layout
            },
            &o,
        ),
        "head_dim",
        "64",
    );
    expect_err(
        plan_work(
            &m3,
            &b,
            &t,
            &PagedLayout {
                kv_dim: 2,
                ..layout
            },
            &o,
        ),
        "k_cache",
        "kv_dim 2",
    );
    // The layer is `run`'s (one plan serves every layer), checked there.
    expect_err(layout.check_layer(2), "layer", "num_layers = 2");
    expect_err(
        plan_work(
            &MsaIndexerConfig {
                num_index_heads: 0,
                ..m3
            },
            &b,
            &t,
            &layout,
            &o,
        ),
        "num_index_heads",
        "got 0",
    );
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0, -0.0] {
        expect_err(
            plan_work(&MsaIndexerConfig { scale: bad, ..m3 }, &b, &t, &layout, &o),
            "scale",
            "finite, nonzero",
        );
    }
    let negative = MsaIndexerConfig { scale: -0.5, ..m3 };
    plan_work(&negative, &b, &t, &layout, &o).expect("a negative scale is legal");
    let forced = PlanOptions {
        force_path: Some(IndexerPath::Decode),
        ..o.clone()
    };
    expect_err(
        plan_work(&m3, &b, &t, &layout, &forced),
        "input_row_offsets",
        "3 new tokens",
    );
}

/// Every (row, block) a row can see is covered by exactly one work item that
/// holds the row, for random ragged batches on both paths.
#[test]
fn plan_covers_every_row_block_once() {
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    for trial in 0..40 {
        let n = rng.gen_range(1..6);
        let decode = trial % 2 == 0;
        let q: Vec<u32> = (0..n)
            .map(|_| {
                if decode {
                    rng.gen_range(0..2)
                } else {
                    rng.gen_range(0..400)
                }
            })
            .collect();
        let c = random_lengths(&mut rng, n, 5_000);
        let spec = RaggedSpec::prefill(&q, &c);
        let pages: usize = (0..n)
            .map(|b| spec.as_batch().pages(b, 128))
            .max()
            .unwrap_or(1)
            .max(1);
        let lookup = vec![0u32; n * pages];
        let h = rng.gen_range(1..9);
        let cfg = cfg(h, 8, 0, 1);
        let o = PlanOptions {
            sm_count: rng.gen_range(1..140),
            ..Default::default()
        };
        let w = plan_work(
            &cfg,
            &spec.as_batch(),
            &PageTable::new(&lookup, pages),
            &PagedLayout::index_k(1, 1, 128, 128),
            &o,
        )
        .unwrap();
        assert_eq!(
            w.path == IndexerPath::Decode,
            decode || spec.num_rows() == 0 || q.iter().all(|&x| x <= 1)
        );
        let mut seen = std::collections::HashMap::new();
        for it in &w.items {
            let IdxWorkItem {
                seq,
                row0,
                nrows,
                qpos0,
                blk0: b0,
                blk1: b1,
                ..
            } = *it;
            assert!(nrows >= 1 && b0 < b1, "empty item {it:?}");
            for r in row0..row0 + nrows {
                assert_eq!(
                    spec.offsets[seq as usize]
                        + (qpos0 - spec.cache_lengths[seq as usize])
                        + (r - row0),
                    r
                );
                for blk in b0..b1 {
                    *seen.entry((r, blk)).or_insert(0) += 1;
                }
            }
        }
        assert!(spec
            .as_batch()
            .rows()
            .map(|r| r.q_pos as u32)
            .eq(w.row_qpos.iter().copied()));
        for r in 0..spec.num_rows() {
            let nb = w.row_qpos[r] as usize / 128 + 1;
            assert!(nb <= w.score_stride);
            for blk in 0..nb as u32 {
                assert_eq!(
                    seen.remove(&(r as u32, blk)),
                    Some(1),
                    "row {r} block {blk} (seed {seed})"
                );
            }
        }
        // what is left: blocks past a row's own last block (items are per tile)
        for ((r, blk), _) in seen {
            assert!(
                blk as usize > w.row_qpos[r as usize] as usize / 128,
                "row {r} block {blk} covered twice"
            );
        }
    }
}

/// Graph mode's score grid bounds the work items of every batch with the
/// same rows whose contexts stay within the bound, on both paths, with the
/// tuned decode chunk (any SM count) and forced ones; at the bound itself
/// too (every row as long as allowed).
#[test]
fn graph_grid_bounds_every_batch_within_the_context() {
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    for trial in 0..400 {
        let n = rng.gen_range(1..40);
        let decode = trial % 3 != 0;
        let max_context: usize = rng.gen_range(1..300_000);
        let q: Vec<u32> = (0..n)
            .map(|_| if decode { 1 } else { rng.gen_range(0..300) })
            .collect();
        let c: Vec<u32> = (0..n)
            .map(|b| {
                let room = max_context.saturating_sub(q[b] as usize) as u32;
                match trial % 4 {
                    0 => room, // at the bound
                    _ => rng.gen_range(0..=room),
                }
            })
            .collect();
        let spec = RaggedSpec::prefill(&q, &c);
        if spec.num_rows() == 0 || spec.max_seqlen_k() > max_context {
            continue;
        }
        let pages = max_context.div_ceil(128);
        let lookup = vec![0u32; n * pages];
        let cfg = cfg(*[1, 4, 8, 16].get(rng.gen_range(0..4)).unwrap(), 16, 0, 1);
        let o = PlanOptions {
            sm_count: rng.gen_range(1..200),
            decode_chunk: (trial % 5 == 1).then(|| rng.gen_range(1..80)),
            ..Default::default()
        };
        let w = plan_work(
            &cfg,
            &spec.as_batch(),
            &PageTable::new(&lookup, pages),
            &PagedLayout::index_k(1, 1, 128, 128),
            &o,
        )
        .unwrap();
        let grid = graph_grid(&cfg, &spec.as_batch(), &o, w.path, max_context);
        assert!(
            w.items.len() <= grid,
            "trial {trial} (seed {seed}): {} items > graph grid {grid} ({:?}, {n} rows, max_context {max_context}, {o:?})",
            w.items.len(),
            w.path
        );
        assert!(w.score_stride <= max_context.div_ceil(128));
    }
}

/// Decode batches take the decode kernel up to 16 index heads and the
/// prefill kernel above (which accepts up to 128); forcing the decode
/// kernel with more heads is an error that says why.
#[test]
fn decode_batches_with_many_heads_take_the_prefill_kernel() {
    let (off, cl) = (vec![0u32, 1, 2], vec![200u32, 0]);
    let lookup = vec![5u32, 2, 7, 0];
    let layout = PagedLayout::index_k(8, 2, 128, 128);
    let (b, t) = (RaggedBatch::new(&off, &cl), PageTable::new(&lookup, 2));
    let o = PlanOptions {
        sm_count: 132,
        ..Default::default()
    };
    for (h, path) in [
        (16, IndexerPath::Decode),
        (32, IndexerPath::Prefill),
        (128, IndexerPath::Prefill),
    ] {
        let w = plan_work(&cfg(h, 8, 0, 1), &b, &t, &layout, &o).expect("valid input");
        assert_eq!(w.path, path, "{h} heads");
    }
    let forced = PlanOptions {
        force_path: Some(IndexerPath::Decode),
        ..o
    };
    expect_err(
        plan_work(&cfg(32, 8, 0, 1), &b, &t, &layout, &forced),
        "num_index_heads",
        "one 16-row tile",
    );
}

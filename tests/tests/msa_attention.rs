//! MSA decode attention: GPU against the f64 reference on fresh random
//! inputs, split-K agreement and bit-determinism, a CUDA-graph capture of the
//! whole decode step (indexer + attention), and host validation.
//!
//! GPU tests print `SKIP` where there is no NVIDIA driver; every random case
//! prints its seed (`SPARSE_ATTN_SEED=<n>` replays it). Tolerances: the
//! spec's, fitted to bf16 output of f32 accumulation
//! (`sparse_attn_reference::msa_attention::check_attention`).

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use half::bf16;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use sparse_attn::msa_attention::validate_attention;
use sparse_attn::{
    DecodeStepInputs, Error, Gpu, MsaAttention, MsaAttentionConfig, MsaIndexerConfig, MsaStep,
    PageTable, PagedLayout, RaggedBatch,
};
use sparse_attn_reference::msa_attention as reference;
use sparse_attn_tests::data::{
    block_selection, paged_pool, seeded, tensor, Fill, PagedPool, RaggedSpec,
};
use sparse_attn_tests::harness::{attention_params as params, gpu_or_skip as gpu, layout_of};

fn cfg(n_heads: usize, n_kv_heads: usize, topk: usize) -> MsaAttentionConfig {
    MsaAttentionConfig {
        n_heads,
        n_kv_heads,
        topk,
        ..MsaAttentionConfig::minimax_m3()
    }
}

struct Inputs {
    spec: RaggedSpec,
    pool: PagedPool,
    q: Vec<bf16>,
    d_indices: Vec<i32>,
}

fn inputs(
    rng: &mut ChaCha8Rng,
    spec: RaggedSpec,
    c: &MsaAttentionConfig,
    minus_one: f64,
) -> Inputs {
    let pool = paged_pool(rng, &spec, 2, 2, c.n_kv_heads, 128, 128, 3, Fill::Normal);
    let q = tensor(rng, spec.num_rows() * c.n_heads * 128, Fill::Normal);
    let d_indices = block_selection(rng, &spec, c.n_kv_heads, c.topk, minus_one, true);
    Inputs {
        spec,
        pool,
        q,
        d_indices,
    }
}

/// Runs the GPU op (layer 1 of 2) on poisoned outputs; checks every element
/// was written; returns (out, lse).
fn run_gpu(
    gpu: &Gpu,
    c: &MsaAttentionConfig,
    inp: &Inputs,
    parts: Option<usize>,
) -> (Vec<bf16>, Vec<f32>) {
    let mut att = MsaAttention::new(gpu, *c, inp.spec.num_rows()).unwrap();
    att.force_partitions(parts);
    let batch = RaggedBatch::new(&inp.spec.offsets, &inp.spec.cache_lengths);
    att.plan(
        &batch,
        &PageTable::new(&inp.pool.lookup, inp.pool.max_pages),
        &layout_of(&inp.pool),
        1,
    )
    .unwrap();
    let n = inp.spec.num_rows() * c.n_heads;
    let mut out = gpu.upload(&vec![bf16::from_bits(0x7fc1); n * 128]).unwrap(); // NaN poison
    let mut lse = gpu.upload(&vec![f32::from_bits(0x7fc0_0001); n]).unwrap();
    let (q, kv) = (
        gpu.upload(&inp.q).unwrap(),
        gpu.upload(&inp.pool.data).unwrap(),
    );
    let lookup = gpu.upload(&inp.pool.lookup).unwrap();
    let di = gpu.upload(&inp.d_indices).unwrap();
    att.run(&q, &kv, &lookup, &di, &mut out, Some(&mut lse))
        .unwrap();
    let (out, lse) = (gpu.download(&out).unwrap(), gpu.download(&lse).unwrap());
    assert!(
        !out.iter().any(|v| v.to_bits() == 0x7fc1),
        "an output element was never written"
    );
    assert!(
        !lse.iter().any(|v| v.to_bits() == 0x7fc0_0001),
        "an lse element was never written"
    );
    (out, lse)
}

/// Decode batch of `n` sequences with `lo..hi` cached tokens each.
fn check(
    gpu: &Gpu,
    rng: &mut ChaCha8Rng,
    name: &str,
    (n, lo, hi): (usize, u32, u32),
    c: MsaAttentionConfig,
    minus_one: f64,
) {
    let spec = RaggedSpec::decode(lengths(rng, n, lo, hi));
    check_spec(gpu, rng, name, spec, c, minus_one);
}

/// Any ragged batch (prefill rows use the per-token causal rule).
fn check_spec(
    gpu: &Gpu,
    rng: &mut ChaCha8Rng,
    name: &str,
    spec: RaggedSpec,
    c: MsaAttentionConfig,
    minus_one: f64,
) {
    let inp = inputs(rng, spec, &c, minus_one);
    let p = params(&c);
    let want = reference::msa_attention(
        &inp.q,
        &inp.spec.offsets,
        &inp.spec.cache_lengths,
        &inp.pool.cache(),
        1,
        &inp.d_indices,
        &p,
    );
    let max_parts = c.topk.min(32);
    for parts in [None, Some(1), Some(max_parts)] {
        let (out, lse) = run_gpu(gpu, &c, &inp, parts);
        if let Err(e) = reference::check_attention(&out, Some(&lse), &want, &p) {
            panic!("{name} (partitions {parts:?}): GPU differs from the reference:\n{e}");
        }
    }
    eprintln!(
        "ok: {name} (batch {}, group {}, topk {}, -1 share {minus_one})",
        inp.spec.batch(),
        c.group(),
        c.topk
    );
}

fn lengths(rng: &mut ChaCha8Rng, n: usize, lo: u32, hi: u32) -> Vec<u32> {
    (0..n).map(|_| rng.gen_range(lo..hi)).collect()
}

#[test]
fn gpu_decode_matches_reference() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    let m3 = MsaAttentionConfig::minimax_m3();
    let r = &mut rng;
    check(&gpu, r, "M3 ragged contexts", (8, 0, 20_000), m3, 0.1);
    for (h, kvh) in [(4, 4), (8, 4), (8, 2), (8, 1), (16, 1), (48, 3)] {
        check(
            &gpu,
            r,
            "group sweep",
            (5, 100, 6_000),
            cfg(h, kvh, 16),
            0.05,
        );
    }
    check(&gpu, r, "every slot -1", (4, 0, 3_000), m3, 1.0);
    check(
        &gpu,
        r,
        "topk 64 > blocks",
        (6, 0, 2_000),
        cfg(16, 2, 64),
        0.0,
    );
    check(&gpu, r, "topk 1", (6, 0, 9_000), cfg(16, 1, 1), 0.0);
    check(&gpu, r, "batch 128", (128, 0, 1_500), cfg(8, 1, 16), 0.2);
    let ctx = 131_071 + r.gen_range(0..128);
    check(&gpu, r, "batch 1, 128K", (1, ctx, ctx + 1), m3, 0.0);
}

/// Prefill rows (ragged, chunked on a cache, speculative 2..8 tokens): each
/// row attends to its own blocks with `pos <= q_pos`.
#[test]
fn gpu_prefill_rows_match_reference() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    let m3 = MsaAttentionConfig::minimax_m3();
    let r = &mut rng;
    let q: Vec<u32> = (0..5)
        .map(|_| {
            if r.gen_bool(0.2) {
                0
            } else {
                r.gen_range(1..400)
            }
        })
        .collect();
    let cache = lengths(r, 5, 0, 3_000);
    check_spec(
        &gpu,
        r,
        "ragged prefill",
        RaggedSpec::prefill(&q, &cache),
        m3,
        0.1,
    );
    let prompt = RaggedSpec::prefill(&[1_000 + r.gen_range(0..128)], &[0]);
    check_spec(&gpu, r, "prompt, no cache", prompt, cfg(16, 2, 16), 0.0);
    let cache = lengths(r, 1, 20_000, 20_128);
    check_spec(
        &gpu,
        r,
        "chunked prefill on a long cache",
        RaggedSpec::prefill(&[300], &cache),
        m3,
        0.0,
    );
    let cache = lengths(r, 4, 100, 20_000);
    check_spec(
        &gpu,
        r,
        "speculative 2..8 tokens",
        RaggedSpec::prefill(&[2, 8, 5, 3], &cache),
        cfg(8, 1, 16),
        0.1,
    );
}

/// Several partitions are merged in a fixed order: two runs give the same
/// bits, out and lse.
#[test]
fn gpu_combine_is_deterministic() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    let c = MsaAttentionConfig::minimax_m3();
    let spec = RaggedSpec::decode(lengths(&mut rng, 3, 5_000, 40_000));
    let inp = inputs(&mut rng, spec, &c, 0.1);
    let a = run_gpu(&gpu, &c, &inp, Some(16));
    let b = run_gpu(&gpu, &c, &inp, Some(16));
    assert!(
        a.0.iter()
            .zip(&b.0)
            .all(|(x, y)| x.to_bits() == y.to_bits()),
        "out changed between runs"
    );
    assert!(
        a.1.iter()
            .zip(&b.1)
            .all(|(x, y)| x.to_bits() == y.to_bits()),
        "lse changed between runs"
    );
}

/// The whole decode step (indexer, then attention) captured in a CUDA graph
/// and replayed gives the eager result, bit for bit; the step's selections
/// are the ones the attention reads.
#[test]
fn gpu_decode_step_graph_replay_matches_eager() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    let att = MsaAttentionConfig::minimax_m3();
    let idx = MsaIndexerConfig::minimax_m3();
    let spec = RaggedSpec::decode(lengths(&mut rng, 6, 1_000, 30_000));
    let kv = paged_pool(
        &mut rng,
        &spec,
        2,
        1,
        att.n_kv_heads,
        128,
        128,
        2,
        Fill::Normal,
    );
    let ik = paged_pool(&mut rng, &spec, 1, 1, 1, 128, 128, 2, Fill::Normal);
    let rows = spec.num_rows();
    let (q, qi) = (
        tensor(&mut rng, rows * att.n_heads * 128, Fill::Normal),
        tensor(&mut rng, rows * idx.num_index_heads * 128, Fill::Normal),
    );
    let mut step = MsaStep::new(&gpu, idx, att, rows).unwrap();
    let batch = RaggedBatch::new(&spec.offsets, &spec.cache_lengths);
    step.plan(
        &batch,
        &PageTable::new(&ik.lookup, ik.max_pages),
        &layout_of(&ik),
        &PageTable::new(&kv.lookup, kv.max_pages),
        &layout_of(&kv),
        0,
    )
    .unwrap();
    let up = |v: &Vec<bf16>| gpu.upload(v).unwrap();
    let (d_q, d_qi, d_kv, d_ik) = (up(&q), up(&qi), up(&kv.data), up(&ik.data));
    let (d_kl, d_il) = (
        gpu.upload(&kv.lookup).unwrap(),
        gpu.upload(&ik.lookup).unwrap(),
    );
    let inp = DecodeStepInputs {
        q_index: &d_qi,
        k_index: &d_ik,
        index_lookup: &d_il,
        q: &d_q,
        kv_cache: &d_kv,
        kv_lookup: &d_kl,
    };
    let mut out = gpu.zeros::<bf16>(rows * att.n_heads * 128).unwrap();
    step.run(&inp, &mut out, None).unwrap();
    let eager = gpu.download(&out).unwrap();
    let sel = gpu.download(step.d_indices()).unwrap();

    // The attention on the step's own selections, against the reference.
    let p = params(&att);
    let want = reference::msa_attention(
        &q,
        &spec.offsets,
        &spec.cache_lengths,
        &kv.cache(),
        0,
        &sel,
        &p,
    );
    reference::check_attention(&eager, None, &want, &p).unwrap();

    let mut out2 = gpu
        .upload(&vec![bf16::from_bits(0x7fc1); rows * att.n_heads * 128])
        .unwrap();
    let stream = gpu.stream();
    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .unwrap();
    step.run(&inp, &mut out2, None).unwrap();
    let graph = stream
        .end_capture(CUgraphInstantiate_flags(0))
        .unwrap()
        .expect("the capture recorded no work");
    graph.launch().unwrap();
    graph.launch().unwrap();
    let replay = gpu.download(&out2).unwrap();
    assert!(
        eager
            .iter()
            .zip(&replay)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "graph replay differs from the eager run"
    );
}

// ------------------------------------------------------------ host-only tests

#[test]
fn bad_input_is_a_clear_error() {
    let m3 = MsaAttentionConfig::minimax_m3();
    let (off, cl) = (vec![0u32, 1, 2], vec![200u32, 5]);
    let lookup = vec![3u32, 4, 1, 0];
    let layout = PagedLayout {
        num_pages: 8,
        kv_dim: 2,
        num_layers: 2,
        page_size: 128,
        n_heads: 4,
        head_dim: 128,
    };
    let b = RaggedBatch::new(&off, &cl);
    let t = PageTable::new(&lookup, 2);
    validate_attention(&m3, &b, &t, &layout, 1).expect("valid input");
    let err = |r: sparse_attn::Result<()>, arg: &str, needle: &str| match r {
        Err(Error::InvalidArgument {
            arg: a,
            expected,
            actual,
        }) => {
            assert_eq!(a, arg, "{expected} / {actual}");
            assert!(
                format!("{expected} {actual}").contains(needle),
                "`{expected}` / `{actual}` lacks `{needle}`"
            );
        }
        Err(Error::Unsupported { arg: a, what }) => {
            assert_eq!(a, arg, "{what}");
            assert!(what.contains(needle), "`{what}` lacks `{needle}`");
        }
        other => panic!("expected an error naming `{arg}`, got {other:?}"),
    };
    err(
        validate_attention(&cfg(60, 8, 16), &b, &t, &layout, 1),
        "n_heads",
        "multiple of n_kv_heads = 8",
    );
    err(
        validate_attention(&cfg(64, 2, 16), &b, &t, &layout, 1),
        "n_heads",
        "group n_heads / n_kv_heads = 32",
    );
    err(
        validate_attention(
            &MsaAttentionConfig { head_dim: 64, ..m3 },
            &b,
            &t,
            &layout,
            1,
        ),
        "head_dim",
        "64",
    );
    err(
        validate_attention(&cfg(64, 4, 0), &b, &t, &layout, 1),
        "topk",
        "0",
    );
    err(
        validate_attention(
            &m3,
            &RaggedBatch::new(&[0, 2, 3], &[255, 5]),
            &t,
            &layout,
            1,
        ),
        "lookup",
        "max_pages = 2",
    );
    err(
        validate_attention(&m3, &RaggedBatch::new(&[0, 3, 2], &cl), &t, &layout, 1),
        "input_row_offsets",
        "offsets[2] = 2 < offsets[1] = 3",
    );
    err(
        validate_attention(
            &m3,
            &b,
            &t,
            &PagedLayout {
                kv_dim: 1,
                ..layout
            },
            1,
        ),
        "kv_cache",
        "kv_dim 1",
    );
    err(
        validate_attention(
            &m3,
            &b,
            &t,
            &PagedLayout {
                n_heads: 8,
                ..layout
            },
            1,
        ),
        "kv_cache",
        "8 heads",
    );
    err(
        validate_attention(&m3, &b, &t, &layout, 2),
        "layer",
        "num_layers = 2",
    );
    err(
        validate_attention(&m3, &b, &PageTable::new(&[3, 9, 1, 0], 2), &layout, 1),
        "lookup",
        "lookup[0][1] = 9",
    );
    err(
        validate_attention(
            &m3,
            &b,
            &t,
            &PagedLayout {
                page_size: 64,
                ..layout
            },
            1,
        ),
        "page_size",
        "64",
    );
}

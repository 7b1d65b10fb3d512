//! MSA decode attention: GPU against the f64 reference on fresh random
//! inputs, split-K agreement and bit-determinism, the block-major path on
//! decode rows (`q_len = 1` through the prefill kernels), a CUDA-graph capture
//! of the whole decode step (indexer + attention), and host validation.
//! Prefill batches: `msa_block_major.rs`.
//!
//! GPU tests print `SKIP` where there is no NVIDIA driver; every random case
//! prints its seed (`SPARSE_ATTN_SEED=<n>` replays it). Tolerances: the
//! spec's, fitted to bf16 output of f32 accumulation
//! (`sparse_attn_reference::msa_attention::check_attention`).

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use sparse_attn::msa_attention::validate_attention;
use sparse_attn::{
    AttentionPath, Error, Gpu, KvDtype, MsaAttentionConfig, PageTable, PagedLayout, PagedLayoutExt,
    RaggedBatch,
};
use sparse_attn_reference::msa_attention as reference;
use sparse_attn_tests::data::{lengths, seeded, RaggedSpec};
use sparse_attn_tests::harness::{
    assert_same_bits, attention_config as cfg, check_step_graph_replay, gpu_or_skip as gpu,
    run_attention, AttentionInputs,
};

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

/// Any ragged batch: the planned path with split-K auto, 1 and the maximum,
/// and the block-major path forced (one pass over each block for all rows).
fn check_spec(
    gpu: &Gpu,
    rng: &mut ChaCha8Rng,
    name: &str,
    spec: RaggedSpec,
    c: MsaAttentionConfig,
    minus_one: f64,
) {
    let inp = AttentionInputs::random(rng, spec, &c, minus_one);
    let want = inp.reference(&c);
    let max_parts = c.topk.min(32);
    let runs = [
        (None, None),
        (Some(1), Some(AttentionPath::QueryMajor)),
        (Some(max_parts), Some(AttentionPath::QueryMajor)),
        (None, Some(AttentionPath::BlockMajor)),
    ];
    for (parts, path) in runs {
        let (out, lse) = run_attention(gpu, &c, &inp, parts, path);
        if let Err(e) = reference::check_attention(&out, Some(&lse), &want, &c) {
            panic!("{name} (partitions {parts:?}, path {path:?}): GPU differs from the reference:\n{e}");
        }
    }
    eprintln!(
        "ok: {name} (batch {}, group {}, topk {}, -1 share {minus_one})",
        inp.spec.batch(),
        c.group(),
        c.topk
    );
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
    // More slots than a partition stages (128): at least two partitions a
    // row even where the split-K rule gives one (40 rows x 4 KV heads).
    check(
        &gpu,
        r,
        "topk 200, rule gives one partition",
        (40, 26_000, 30_000),
        cfg(16, 4, 200),
        0.1,
    );
    check(&gpu, r, "batch 128", (128, 0, 1_500), cfg(8, 1, 16), 0.2);
    let ctx = 131_071 + r.gen_range(0..128);
    check(&gpu, r, "batch 1, 128K", (1, ctx, ctx + 1), m3, 0.0);
}

/// Several partitions are merged in a fixed order: two runs give the same
/// bits, out and lse; so does a run in plain stream order (programmatic
/// dependent launch off), for the decode (cluster merge and combine kernel)
/// and the block-major path.
#[test]
fn gpu_combine_is_deterministic() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    let spec = RaggedSpec::decode(lengths(&mut rng, 3, 5_000, 40_000));
    // Up to 16 partitions merge inside a thread-block cluster; 32 (top-32)
    // go through the combine kernel.
    let m3 = MsaAttentionConfig::minimax_m3();
    let top32 = cfg(64, 4, 32);
    let runs = [
        (m3, 8, AttentionPath::QueryMajor),
        (m3, 16, AttentionPath::QueryMajor),
        (top32, 32, AttentionPath::QueryMajor),
        (m3, 16, AttentionPath::BlockMajor),
    ];
    for (c, parts, path) in runs {
        let inp = AttentionInputs::random(&mut rng, spec.clone(), &c, 0.1);
        let a = run_attention(&gpu, &c, &inp, Some(parts), Some(path));
        let b = run_attention(&gpu, &c, &inp, Some(parts), Some(path));
        assert_same_bits(&a, &b);
        gpu.set_programmatic_launch(false);
        let plain = run_attention(&gpu, &c, &inp, Some(parts), Some(path));
        gpu.set_programmatic_launch(true);
        assert_same_bits(&a, &plain);
    }
}

/// The whole decode step (indexer, then attention) captured in a CUDA graph
/// and replayed gives the eager result, bit for bit; the step's selections
/// are the ones the attention reads.
#[test]
fn gpu_decode_step_graph_replay_matches_eager() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    let spec = RaggedSpec::decode(lengths(&mut rng, 6, 1_000, 30_000));
    let path = check_step_graph_replay(&gpu, &mut rng, &spec);
    assert_eq!(path, AttentionPath::QueryMajor);
}

// ------------------------------------------------------------ host-only tests

#[test]
fn bad_input_is_a_clear_error() {
    let m3 = MsaAttentionConfig::minimax_m3();
    let (off, cl) = (vec![0u32, 1, 2], vec![200u32, 5]);
    let lookup = vec![3u32, 4, 1, 0];
    let layout = PagedLayout::kv(8, 2, 128, 4, 128);
    let b = RaggedBatch::new(&off, &cl);
    let t = PageTable::new(&lookup, 2);
    validate_attention(&m3, &b, &t, &layout).expect("valid input");
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
        validate_attention(&cfg(60, 8, 16), &b, &t, &layout),
        "n_heads",
        "multiple of n_kv_heads = 8",
    );
    err(
        validate_attention(&cfg(64, 0, 16), &b, &t, &layout),
        "n_kv_heads",
        ">= 1",
    );
    err(
        validate_attention(&cfg(64, 2, 16), &b, &t, &layout),
        "n_heads",
        "group n_heads / n_kv_heads = 32",
    );
    err(
        validate_attention(&MsaAttentionConfig { head_dim: 64, ..m3 }, &b, &t, &layout),
        "head_dim",
        "64",
    );
    err(
        validate_attention(&cfg(64, 4, 0), &b, &t, &layout),
        "topk",
        "0",
    );
    err(
        validate_attention(&MsaAttentionConfig { scale: -0.5, ..m3 }, &b, &t, &layout),
        "scale",
        "-0.5",
    );
    err(
        validate_attention(&m3, &RaggedBatch::new(&[0, 2, 3], &[255, 5]), &t, &layout),
        "lookup",
        "max_pages = 2",
    );
    err(
        validate_attention(&m3, &RaggedBatch::new(&[0, 3, 2], &cl), &t, &layout),
        "input_row_offsets",
        "offsets[2] = 2 < offsets[1] = 3",
    );
    let bad_layouts = [
        (
            PagedLayout {
                kv_dim: 1,
                ..layout
            },
            "kv_cache",
            "kv_dim 1",
        ),
        (
            PagedLayout {
                n_heads: 8,
                ..layout
            },
            "kv_cache",
            "8 heads",
        ),
        (
            PagedLayout {
                dtype: KvDtype::Fp8E4m3,
                ..layout
            },
            "dtype",
            "Fp8E4m3",
        ),
    ];
    for (bad, arg, needle) in bad_layouts {
        err(validate_attention(&m3, &b, &t, &bad), arg, needle);
    }
    // The layer is `run`'s (one plan serves every layer), checked there.
    err(layout.check_layer(2), "layer", "num_layers = 2");
    err(
        validate_attention(&m3, &b, &PageTable::new(&[3, 9, 1, 0], 2), &layout),
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
        ),
        "page_size",
        "64",
    );
}

/// Inside `MsaStep`, an error names which input is wrong: the index ones
/// (`q_index`, `index_lookup`) or the main ones (`q`, `kv_lookup`).
#[test]
fn gpu_step_errors_name_index_and_main_inputs() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    let spec = RaggedSpec::decode(vec![500, 40]);
    let data = sparse_attn_tests::harness::StepData::random(&mut rng, &spec, 1);
    let (mut step, buffers) = data.plan_and_upload(&gpu, &spec).unwrap();
    let short_bf16 = gpu.zeros::<half::bf16>(1).unwrap();
    let short_u32 = gpu.zeros::<u32>(1).unwrap();
    let mut out = gpu.zeros::<half::bf16>(spec.num_rows() * 64 * 128).unwrap();
    for name in ["q_index", "index_lookup", "q", "kv_lookup"] {
        let mut inp = buffers.inputs();
        match name {
            "q_index" => inp.q_index = &short_bf16,
            "index_lookup" => inp.index_lookup = &short_u32,
            "q" => inp.q = &short_bf16,
            _ => inp.kv_lookup = &short_u32,
        }
        match step.run(&inp, 0, &mut out, None) {
            Err(Error::InvalidArgument { arg, .. }) => assert_eq!(arg, name),
            other => panic!("a short `{name}`: expected an error naming it, got {other:?}"),
        }
    }
}

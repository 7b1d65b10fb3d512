//! MSA prefill attention (the KV-block-major path: device CSR plan, run,
//! combine): GPU against the f64 reference over ragged prompts, chunked
//! prefill on a cache, speculative steps, skewed selections, `-1` slots and
//! GQA groups 1..16; agreement with the query-major path; bit-determinism; a
//! whole prefill step captured in a CUDA graph (the plan never waits for the
//! host); a step whose device page tables are corrupted after `plan` (no
//! fault); the host side of the plan.
//!
//! GPU tests print `SKIP` where there is no NVIDIA driver; every random case
//! prints its seed (`SPARSE_ATTN_SEED=<n>` replays it). Tolerances: the
//! spec's (`sparse_attn_reference::msa_attention::check_attention`): bf16
//! output of f32 accumulation, here with bf16 per-block partials in between.

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use sparse_attn::abi::msa::BM_WINDOW;
use sparse_attn::msa_block_major::plan_keys;
use sparse_attn::{bf16, AttentionPath, Gpu, MsaAttentionConfig, MsaStep, RaggedBatch};
use sparse_attn_reference::msa_attention as reference;
use sparse_attn_tests::data::{corrupt_lookup, lengths, seeded, RaggedSpec};
use sparse_attn_tests::harness::{
    assert_no_fault, assert_same_bits, attention_config as cfg, check_step_graph_replay,
    gpu_or_skip as gpu, poisoned_run, run_attention, AttentionInputs, StepBuffers, StepData,
};

/// Both paths against the reference; the planned one must be block-major.
fn check_inputs(gpu: &Gpu, name: &str, inp: &AttentionInputs, c: MsaAttentionConfig) {
    let want = inp.reference(&c);
    // The planned path (block-major), then query-major.
    for path in [None, Some(AttentionPath::QueryMajor)] {
        let (out, lse) = run_attention(gpu, &c, inp, None, path);
        if let Err(e) = reference::check_attention(&out, Some(&lse), &want, &c) {
            panic!("{name} (path {path:?}): GPU differs from the reference:\n{e}");
        }
    }
    eprintln!(
        "ok: {name} (batch {}, rows {}, group {}, topk {})",
        inp.spec.batch(),
        inp.spec.num_rows(),
        c.group(),
        c.topk
    );
}

fn check(
    gpu: &Gpu,
    rng: &mut ChaCha8Rng,
    name: &str,
    spec: RaggedSpec,
    c: MsaAttentionConfig,
    minus_one: f64,
) {
    let inp = AttentionInputs::random(rng, spec, &c, minus_one);
    check_inputs(gpu, name, &inp, c);
}

#[test]
fn gpu_prefill_matches_reference() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    let m3 = MsaAttentionConfig::minimax_m3();
    let r = &mut rng;
    // Ragged: empty sequences, lengths not multiples of 128, some cached.
    let q: Vec<u32> = (0..6)
        .map(|_| {
            if r.gen_bool(0.2) {
                0
            } else {
                r.gen_range(1..1_500)
            }
        })
        .collect();
    let cache = lengths(r, 6, 0, 3_000);
    check(
        &gpu,
        r,
        "ragged prefill",
        RaggedSpec::prefill(&q, &cache),
        m3,
        0.1,
    );
    for (h, kvh) in [(4, 4), (16, 4), (8, 1), (16, 1), (12, 4)] {
        let q = lengths(r, 3, 1, 700);
        let cache = lengths(r, 3, 0, 2_000);
        check(
            &gpu,
            r,
            "group sweep",
            RaggedSpec::prefill(&q, &cache),
            cfg(h, kvh, 16),
            0.05,
        );
    }
    let prompt = RaggedSpec::prefill(&[1_000 + r.gen_range(0..128)], &[0]);
    check(&gpu, r, "prompt, no cache", prompt, cfg(16, 2, 16), 0.0);
    let cache = lengths(r, 1, 20_000, 20_128);
    check(
        &gpu,
        r,
        "chunk of 300 on a 20K cache",
        RaggedSpec::prefill(&[300], &cache),
        m3,
        0.0,
    );
    let spec = RaggedSpec::prefill(&lengths(r, 64, 2, 9), &lengths(r, 64, 100, 20_000));
    check(
        &gpu,
        r,
        "speculative 2..8 tokens, batch 64",
        spec,
        cfg(8, 1, 16),
        0.1,
    );
    let spec = RaggedSpec::prefill(&lengths(r, 3, 100, 600), &lengths(r, 3, 0, 1_000));
    check(&gpu, r, "topk 64 > blocks", spec, cfg(16, 2, 64), 0.0);
    let spec = RaggedSpec::prefill(&lengths(r, 3, 1, 600), &lengths(r, 3, 0, 1_000));
    check(&gpu, r, "every slot -1", spec, m3, 1.0);
    let len = 32 * 1024 - r.gen_range(1..128);
    check(
        &gpu,
        r,
        "32K prompt",
        RaggedSpec::prefill(&[len], &[0]),
        cfg(4, 1, 16),
        0.02,
    );
}

/// Every row picks the same blocks (the first `topk` of the sequence: one key
/// of the plan gets thousands of rows, split into many work items), and
/// every row picks blocks no other row picks (as far as the causal range
/// allows).
#[test]
fn gpu_prefill_skewed_selections() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    let c = MsaAttentionConfig::minimax_m3();
    let spec = RaggedSpec::prefill(&[3_000, 2_100], &[5_000, 0]);
    let mut inp = AttentionInputs::random(&mut rng, spec, &c, 0.0);
    let rows = inp.spec.num_rows();
    for (i, v) in inp.d_indices.iter_mut().enumerate() {
        *v = (i % c.topk) as i32; // blocks 0..topk (past a row's own: skipped)
    }
    check_inputs(&gpu, "every row the same blocks", &inp, c);
    for (t, r) in inp.spec.as_batch().rows().enumerate() {
        let own = r.q_pos / 128;
        for kh in 0..c.n_kv_heads {
            let row = &mut inp.d_indices[(kh * rows + t) * c.topk..][..c.topk];
            for (s, v) in row.iter_mut().enumerate() {
                // Slot s of row t: a block chosen by rows t, t ± own+1, …
                *v = ((t * c.topk + s + kh) % (own + 1)) as i32;
            }
        }
    }
    check_inputs(&gpu, "rows spread over all blocks", &inp, c);
}

/// Decode rows through the block-major kernels give what the decode path
/// gives (both also within the reference's bounds), element by element.
#[test]
fn gpu_prefill_q_len_1_equals_decode() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    let c = MsaAttentionConfig::minimax_m3();
    let spec = RaggedSpec::decode(lengths(&mut rng, 16, 1, 40_000));
    let inp = AttentionInputs::random(&mut rng, spec, &c, 0.1);
    let want = inp.reference(&c);
    let (dec, dec_lse) = run_attention(&gpu, &c, &inp, None, Some(AttentionPath::QueryMajor));
    let (pf, pf_lse) = run_attention(&gpu, &c, &inp, None, Some(AttentionPath::BlockMajor));
    reference::check_attention(&dec, Some(&dec_lse), &want, &c).unwrap();
    reference::check_attention(&pf, Some(&pf_lse), &want, &c).unwrap();
    // Two bf16 roundings apart at most (the partials are bf16 too).
    for (i, (a, b)) in dec.iter().zip(&pf).enumerate() {
        let (a, b) = (a.to_f32(), b.to_f32());
        assert!(
            (a - b).abs() <= 1.6e-2 * a.abs().max(1.0),
            "element {i}: decode {a} vs block-major {b}"
        );
    }
    for (i, (a, b)) in dec_lse.iter().zip(&pf_lse).enumerate() {
        assert!(
            a == b || (a - b).abs() <= 1e-3 * a.abs().max(1.0),
            "lse {i}: decode {a} vs block-major {b}"
        );
    }
}

/// The CSR order inside a plan key comes from atomics and changes between
/// runs; the output may not: two runs give the same bits.
#[test]
fn gpu_prefill_is_deterministic() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    let c = MsaAttentionConfig::minimax_m3();
    let spec = RaggedSpec::prefill(&[4_000, 1_500], &[0, 9_000]);
    let inp = AttentionInputs::random(&mut rng, spec, &c, 0.05);
    let a = run_attention(&gpu, &c, &inp, None, None);
    let b = run_attention(&gpu, &c, &inp, None, None);
    assert_same_bits(&a, &b);
}

/// A whole prefill step (indexer, device CSR plan, run, combine) captured in
/// a CUDA graph: a capture fails on any host synchronisation or device-to-
/// host copy, and the replay must give the eager bits.
#[test]
fn gpu_prefill_step_graph_replay_matches_eager() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    let spec = RaggedSpec::prefill(&[700, 300, 5], &[0, 5_000, 20]);
    let path = check_step_graph_replay(&gpu, &mut rng, &spec);
    assert_eq!(path, AttentionPath::BlockMajor);
}

/// A prefill step whose device page tables are corrupted after `plan`
/// ([`corrupt_lookup`]) must not fault: the indexer and the block-major run
/// clamp every page id they read (the output is then unspecified). With
/// the real tables back, the same plan gives the bits of the run before.
#[test]
fn gpu_prefill_step_survives_a_corrupt_page_table() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    let spec = RaggedSpec::prefill(&[300, 129, 1], &[1000, 0, 5_000]);
    let data = StepData::random(&mut rng, &spec, 2);
    let (mut step, mut buf) = data.plan_and_upload(&gpu, &spec).unwrap();
    assert_eq!(step.attention.path(), Some(AttentionPath::BlockMajor));
    let rows_heads = spec.num_rows() * MsaAttentionConfig::minimax_m3().n_heads;
    let run = |step: &mut MsaStep, buf: &StepBuffers| {
        poisoned_run(&gpu, rows_heads, |out, lse| {
            step.run(&buf.inputs(), 0, out, Some(lse)).unwrap()
        })
    };
    let before = run(&mut step, &buf);
    let (kv, ik) = (&data.kv, &data.ik);
    let bad_kv = corrupt_lookup(&mut rng, &kv.lookup, kv.layout.num_pages);
    let bad_ik = corrupt_lookup(&mut rng, &ik.lookup, ik.layout.num_pages);
    buf.upload_tables(&gpu, &bad_kv, &bad_ik);
    let mut out = gpu.zeros::<bf16>(rows_heads * 128).unwrap();
    assert_no_fault(&gpu, &format!("seed {seed}, the step"), || {
        step.run(&buf.inputs(), 0, &mut out, None).unwrap()
    });
    buf.upload_tables(&gpu, &kv.lookup, &ik.lookup);
    assert_same_bits(&before, &run(&mut step, &buf));
}

// ------------------------------------------------------------ host-only tests

/// Keys per (window, sequence): the blocks its rows can see, up to the block
/// of its last row in the window.
#[test]
fn plan_keys_cover_each_windows_causal_blocks() {
    let w = BM_WINDOW;
    // Sequence 0: 1.5 windows of rows on a 100-token cache; sequence 1: 3
    // rows on a 1000-token cache, in the second window.
    let q0 = w + w / 2;
    let off = [0, q0, q0 + 3];
    let cache = [100, 1_000];
    let (base, info, n) = plan_keys(&RaggedBatch::new(&off, &cache), w as usize);
    assert_eq!(base.len(), (q0 + 3) as usize);
    let blocks = |last_pos: u32| last_pos / 128 + 1;
    let k0 = blocks(100 + w - 1); // window 0: rows 0..w of sequence 0
    let k1 = blocks(100 + q0 - 1); // window 1, sequence 0
    let k2 = blocks(1_000 + 2); // window 1, sequence 1
    assert_eq!(n as u32, k0 + k1 + k2);
    assert_eq!(base[0], 0);
    assert_eq!(base[w as usize - 1], 0);
    assert_eq!(base[w as usize], k0);
    assert_eq!(base[q0 as usize], k0 + k1);
    let key = |k: u32| {
        let r = info[k as usize];
        [r.seq, r.block, r.seqlen_k]
    };
    assert_eq!(key(k0 - 1), [0, k0 - 1, 100 + q0]);
    assert_eq!(key(k0), [0, 0, 100 + q0]);
    assert_eq!(key(k0 + k1 + 7), [1, 7, 1_003]);
}

/// Empty sequences get no keys; one window holding several sequences gives
/// each its own range, in row order.
#[test]
fn plan_keys_skip_empty_sequences_and_share_windows() {
    // Sequences: 3 rows on a 300-token cache, none, 2 rows on no cache.
    let off = [0, 3, 3, 5];
    let cache = [300, 7, 0];
    let (base, info, n) = plan_keys(&RaggedBatch::new(&off, &cache), BM_WINDOW as usize);
    // Sequence 0's last row sits at 302: blocks 0..=2; sequence 2: block 0.
    assert_eq!(n, 3 + 1);
    assert_eq!(base, vec![0, 0, 0, 3, 3]);
    let key = |k: usize| [info[k].seq, info[k].block, info[k].seqlen_k];
    assert_eq!(key(2), [0, 2, 303]);
    assert_eq!(key(3), [2, 0, 2]);
}

/// One rule for a NaN in a query row on both paths: the row-head attends
/// nothing (`out = 0`, `lse = -inf`); a NaN never reaches the other rows.
#[test]
fn gpu_nan_query_row_attends_nothing_on_both_paths() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    let c = cfg(16, 2, 8);
    let spec = RaggedSpec::prefill(&[200, 1, 70], &[300, 900, 0]);
    let mut inp = AttentionInputs::random(&mut rng, spec, &c, 0.1);
    let mut want = inp.reference(&c);
    // Row 5 of sequence 0 (head 3) and the decode row of sequence 1 (head 9).
    for (row, head) in [(5usize, 3usize), (200, 9)] {
        let rh = row * c.n_heads + head;
        inp.q[rh * 128 + 17] = half::bf16::NAN;
        want.out[rh * 128..][..128].fill(0.0);
        want.lse[rh] = f64::NEG_INFINITY;
    }
    for path in [None, Some(AttentionPath::QueryMajor)] {
        let (out, lse) = run_attention(&gpu, &c, &inp, None, path);
        if let Err(e) = reference::check_attention(&out, Some(&lse), &want, &c) {
            panic!("NaN query rows (path {path:?}, seed {seed}): {e}");
        }
    }
}

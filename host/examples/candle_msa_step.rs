//! An MSA decode step (indexer, then block-sparse attention) on candle
//! tensors, on candle's own CUDA device and stream, checked against
//! sparse-attn's CPU reference. Prints PASS (exit 0) or FAIL (exit 1);
//! without a driver it says so and exits 0.
//!
//! Build: `ci/candle-build.sh example` (the README's candle section says
//! why and what it needs); `SPARSE_ATTN_SEED=<n>` replays a run.

use candle_core::{DType, Device, Tensor};
use half::bf16;
use rand::Rng;
use sparse_attn::candle::{MsaStepOp, TensorStepInputs};
use sparse_attn::{Gpu, MsaAttentionConfig, MsaIndexerConfig};
use sparse_attn_reference::{msa_attention as ref_att, msa_indexer as ref_idx};
use sparse_attn_tests::data::{seeded, RaggedSpec};
use sparse_attn_tests::harness::StepData;

fn main() {
    if !Gpu::driver_present() {
        println!("no NVIDIA driver on this machine: nothing to run");
        return;
    }
    match run() {
        Ok(()) => println!("PASS"),
        Err(e) => {
            println!("FAIL: {e}");
            std::process::exit(1);
        }
    }
}

fn run() -> Result<(), String> {
    let (mut rng, _seed) = seeded(None);
    // Several decode sequences: contexts on both sides of the 128-token
    // block size, long ones spanning many blocks, one shorter than a block.
    let mut cache_lengths = vec![5u32, 127, 128, 300, 1000, 4095, 8191];
    cache_lengths.extend((0..9).map(|_| rng.gen_range(129..20_000u32)));
    let spec = RaggedSpec::decode(cache_lengths);
    let rows = spec.num_rows();
    // One layer per pool, shuffled page tables, garbage in every unused slot.
    let data = StepData::random(&mut rng, &spec, 3);
    let (idx, att) = (
        MsaIndexerConfig::minimax_m3(),
        MsaAttentionConfig::minimax_m3(),
    );

    let device = Device::new_cuda_with_stream(0).map_err(|e| format!("candle device: {e}"))?;
    let c = |e: candle_core::Error| e.to_string();
    let bf = |v: &[bf16], shape: &[usize]| Tensor::from_slice(v, shape, &device).map_err(c);
    let u32s = |v: &[u32], shape: &[usize]| Tensor::from_slice(v, shape, &device).map_err(c);

    // The queries as views into bigger tensors (start_offset > 0): row 0 is
    // padding, the step reads rows 1..=rows in place.
    let pad_q = |v: &[bf16], heads: usize| -> Result<Tensor, String> {
        let t = bf(v, &[rows, heads, 128])?;
        let big = Tensor::cat(&[&t.narrow(0, 0, 1).map_err(c)?, &t], 0).map_err(c)?;
        big.narrow(0, 1, rows).map_err(c)
    };
    let q = pad_q(&data.q, att.n_heads)?;
    let q_index = pad_q(&data.qi, idx.num_index_heads)?;
    assert!(q.layout().start_offset() > 0);
    let kv_cache = bf(&data.kv.data, &[data.kv.data.len()])?;
    let k_index = bf(&data.ik.data, &[data.ik.data.len()])?;
    let kv_lookup = u32s(&data.kv.lookup, &[spec.batch(), data.kv.max_pages])?;
    let index_lookup = u32s(&data.ik.lookup, &[spec.batch(), data.ik.max_pages])?;

    let mut op = MsaStepOp::new(&device, idx, att, rows).map_err(c)?;
    println!(
        "device: {} ({} SMs), candle stream {:?}",
        op.gpu().props().name,
        op.gpu().props().sm_count,
        op.gpu().stream().cu_stream()
    );
    let batch = spec.as_batch();
    op.plan(
        &batch,
        &data.ik.table(),
        &data.ik.layout,
        &data.kv.table(),
        &data.kv.layout,
    )
    .map_err(c)?;
    let inputs = TensorStepInputs {
        q_index: &q_index,
        k_index: &k_index,
        index_lookup: &index_lookup,
        q: &q,
        kv_cache: &kv_cache,
        kv_lookup: &kv_lookup,
    };
    let (out, lse) = op.run_with_lse(&inputs, 0).map_err(c)?;
    // candle's own kernels on the step's output, on the same stream.
    let sum_sq = out
        .to_dtype(DType::F32)
        .and_then(|t| t.sqr())
        .and_then(|t| t.sum_all())
        .and_then(|t| t.to_scalar::<f32>())
        .map_err(c)?;
    println!(
        "decode step: {} sequences (contexts {}..={}), out {:?}, lse {:?}",
        spec.batch(),
        spec.cache_lengths.iter().min().unwrap(),
        spec.cache_lengths.iter().max().unwrap(),
        out.dims(),
        lse.dims()
    );

    let got_out: Vec<bf16> = out.flatten_all().and_then(|t| t.to_vec1()).map_err(c)?;
    let got_lse: Vec<f32> = lse.flatten_all().and_then(|t| t.to_vec1()).map_err(c)?;
    let sel = op
        .gpu()
        .download(op.step().d_indices())
        .map_err(|e| e.to_string())?;

    // The indexer's selections, then the attention on them, against the
    // f64 reference (the tests' comparison rules).
    let scores = ref_idx::block_scores(&data.qi, &batch, &data.ik.cache(), 0, &idx);
    ref_idx::check_selection(&sel, &scores, &idx).map_err(|e| format!("indexer: {e}"))?;
    let want = ref_att::msa_attention(&data.q, &batch, &data.kv.cache(), 0, &sel, &att);
    ref_att::check_attention(&got_out, Some(&got_lse), &want, &att)
        .map_err(|e| format!("attention: {e}"))?;
    let host_sum: f64 = got_out.iter().map(|v| (v.to_f64()).powi(2)).sum();
    if (sum_sq as f64 - host_sum).abs() > 1e-3 * host_sum.max(1.0) {
        return Err(format!(
            "candle's sum of squares {sum_sq} != the host's {host_sum}"
        ));
    }
    println!(
        "indexer selections and attention output match the reference ({} rows x {} heads)",
        rows, att.n_heads
    );
    Ok(())
}

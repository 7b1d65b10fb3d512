//! `cargo xtask demo`: MSA indexer steps (MiniMax-M3 configuration) on
//! synthetic but realistically sized inputs, then a whole decode step.
//!
//! 1. Decode: 32 sequences, one new token each, contexts of 8K..32K tokens.
//! 2. Prefill: 2 sequences, 512 new tokens each on 2K cached tokens.
//! 3. Decode step: indexer, then the block-sparse attention over the blocks it
//!    picked (64 query heads over 4 KV heads), 8 sequences of 4K..16K tokens;
//!    the attention output is checked against the f64 reference.
//!
//! Both use a shared index-K pool with shuffled page tables, unused pages and
//! garbage in every slot that holds no token. On a machine with an NVIDIA
//! driver the demo plans and runs the op on device 0, times it with CUDA
//! events (median of 20 launches) and checks every selection against the CPU
//! reference. Without a driver it runs the CPU reference on the same inputs.
//!
//! The inputs are fixed (seed 42) unless `SPARSE_ATTN_SEED` is set.

use std::process::ExitCode;
use std::time::Instant;

use cudarc::driver::sys::CUevent_flags;
use half::bf16;
use rand::Rng;
use sparse_attn::{Gpu, MsaAttentionConfig, MsaIndexer, MsaIndexerConfig, PagedLayout};
use sparse_attn_reference::msa_attention as attention_reference;
use sparse_attn_reference::msa_indexer as reference;
use sparse_attn_tests::data::{
    paged_pool, seeded, tensor, ChaCha8Rng, Fill, PagedPool, RaggedSpec, SEED_ENV,
};
use sparse_attn_tests::harness::StepData;

/// Timed launches per step (the median is reported).
const REPS: usize = 20;
/// Default seed (used unless `SPARSE_ATTN_SEED` is set).
const DEFAULT_SEED: u64 = 42;

/// One step of the op: the batch and its inputs.
struct Step {
    name: &'static str,
    spec: RaggedSpec,
    pool: PagedPool,
    /// `bf16 [num_rows, num_index_heads, 128]`.
    q: Vec<bf16>,
}

impl Step {
    fn new(
        rng: &mut ChaCha8Rng,
        cfg: &MsaIndexerConfig,
        name: &'static str,
        spec: RaggedSpec,
    ) -> Step {
        let pages: usize = (0..spec.batch())
            .map(|b| spec.as_batch().pages(b, 128))
            .sum();
        // ~3% of the pool unused, as in a serving engine's shared pool.
        let pool = paged_pool(
            rng,
            &spec,
            1,
            1,
            1,
            cfg.head_dim,
            cfg.block_size,
            pages / 32 + 1,
            Fill::Normal,
        );
        let q = tensor(
            rng,
            spec.num_rows() * cfg.num_index_heads * cfg.head_dim,
            Fill::Normal,
        );
        Step {
            name,
            spec,
            pool,
            q,
        }
    }

    fn layout(&self) -> PagedLayout {
        self.pool.layout
    }

    /// Index-K bytes the op must read: every visible key once.
    fn k_bytes(&self) -> usize {
        (0..self.spec.batch())
            .map(|b| self.spec.seqlen_k(b))
            .sum::<usize>()
            * self.pool.layout.head_dim
            * 2
    }

    /// Multiply-adds of all (query, visible key, head) dot products, as flops.
    fn flops(&self, cfg: &MsaIndexerConfig) -> f64 {
        let pairs: f64 = (0..self.spec.batch())
            .map(|b| {
                let (c, q) = (self.spec.cache_lengths[b] as f64, self.spec.q_len(b) as f64);
                q * c + q * (q + 1.0) / 2.0
            })
            .sum();
        2.0 * pairs * (cfg.num_index_heads * cfg.head_dim) as f64
    }

    fn describe(&self) -> String {
        let s = &self.spec;
        let ctx: Vec<usize> = (0..s.batch()).map(|b| s.seqlen_k(b)).collect();
        let (lo, hi) = (
            ctx.iter().min().unwrap_or(&0),
            ctx.iter().max().unwrap_or(&0),
        );
        let range = if lo == hi {
            format!("{lo}")
        } else {
            format!("{lo}..{hi}")
        };
        format!(
            "{} sequences, {} new tokens, contexts of {range} tokens (index-K {:.1} MB in a shuffled pool of {} pages)",
            s.batch(),
            s.num_rows(),
            self.k_bytes() as f64 / 1e6,
            self.pool.layout.num_pages
        )
    }

    /// Sequence and position of packed row `t`.
    fn row_pos(&self, t: usize) -> (usize, usize) {
        let r = self.spec.as_batch().rows().nth(t).expect("row in range");
        (r.seq, r.q_pos)
    }
}

/// The selection of (head, packed row) from an `[H, num_rows, topk]` output.
fn ids(out: &[i32], step: &Step, topk: usize, head: usize, row: usize) -> Vec<i32> {
    let n = step.spec.num_rows();
    out[(head * n + row) * topk..][..topk].to_vec()
}

/// Prints the head-0 selections of a few rows.
fn print_selections(step: &Step, out: &[i32], topk: usize, rows: &[usize]) {
    for &t in rows {
        let (b, pos) = step.row_pos(t);
        let sel: Vec<String> = ids(out, step, topk, 0, t)
            .iter()
            .map(i32::to_string)
            .collect();
        println!(
            "    seq {b:>2} token {pos:>5} ({:>3} blocks), head 0: [{}]",
            pos / 128 + 1,
            sel.join(" ")
        );
    }
}

/// A few rows to print: the first rows of the first sequences, the last row.
fn show_rows(step: &Step) -> Vec<usize> {
    let s = &step.spec;
    let mut rows: Vec<usize> = (0..s.batch().min(3))
        .map(|b| s.offsets[b] as usize)
        .collect();
    if s.num_rows() > 0 {
        rows.push(s.num_rows() - 1);
    }
    rows.dedup();
    rows
}

fn run_gpu_step(gpu: &Gpu, cfg: &MsaIndexerConfig, step: &Step) -> Result<bool, String> {
    let e = |what: &str| {
        let what = what.to_string();
        move |err: sparse_attn::Error| format!("{what}: {err}")
    };
    let mut indexer = MsaIndexer::new(gpu, *cfg).map_err(e("creating the indexer"))?;
    let spec = &step.spec;
    let batch = spec.as_batch();
    let table = step.pool.table();
    let t0 = Instant::now();
    indexer
        .plan(&batch, &table, &step.layout())
        .map_err(e("plan"))?;
    gpu.synchronize().map_err(e("plan"))?;
    let plan_ms = t0.elapsed().as_secs_f64() * 1e3;

    let q = gpu.upload(&step.q).map_err(e("upload"))?;
    let k = gpu.upload(&step.pool.data).map_err(e("upload"))?;
    let lookup = gpu.upload(&step.pool.lookup).map_err(e("upload"))?;
    let mut out = gpu
        .zeros::<i32>(cfg.num_index_heads * spec.num_rows() * cfg.topk)
        .map_err(e("alloc"))?;

    // Warm-up, then REPS launches between events.
    for _ in 0..3 {
        indexer
            .run(&q, &k, &lookup, 0, &mut out)
            .map_err(e("run"))?;
    }
    gpu.synchronize().map_err(e("run"))?;
    let ctx = gpu.context();
    let event = || {
        ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(|err| format!("creating an event: {err}"))
    };
    let mut times = Vec::with_capacity(REPS);
    for _ in 0..REPS {
        let (a, b) = (event()?, event()?);
        a.record(gpu.stream())
            .map_err(|err| format!("recording an event: {err}"))?;
        indexer
            .run(&q, &k, &lookup, 0, &mut out)
            .map_err(e("run"))?;
        b.record(gpu.stream())
            .map_err(|err| format!("recording an event: {err}"))?;
        b.synchronize()
            .map_err(|err| format!("waiting for the run: {err}"))?;
        times.push(
            a.elapsed_ms(&b)
                .map_err(|err| format!("reading an event: {err}"))? as f64,
        );
    }
    times.sort_by(f64::total_cmp);
    let ms = times[REPS / 2];
    let got = gpu.download(&out).map_err(e("download"))?;

    let path = indexer
        .path()
        .map_or("-".into(), |p| format!("{p:?}").to_lowercase());
    let gbs = step.k_bytes() as f64 / (ms * 1e-3) / 1e9;
    let tflops = step.flops(cfg) / (ms * 1e-3) / 1e12;
    // Decode streams the index-K cache (bandwidth); prefill reuses each key
    // for many queries and its cache fits in L2 (tensor-core rate).
    let rate = if spec.num_rows() == spec.batch() {
        format!("{gbs:.0} GB/s of index-K")
    } else {
        format!("{tflops:.1} TFLOP/s of q.k")
    };
    println!(
        "  GPU ({path} path, {} CTAs): {:.1} us per step (median of {REPS}; {rate}); plan {plan_ms:.2} ms on the host",
        indexer.work_items(),
        ms * 1e3
    );

    // Every (head, row) against the CPU reference (the spec's tolerance rule).
    let p = *cfg;
    let t0 = Instant::now();
    let scores = reference::block_scores(&step.q, &batch, &step.pool.cache(), 0, &p);
    let ref_s = t0.elapsed().as_secs_f64();
    let verdict = reference::check_selection(&got, &scores, &p);
    match &verdict {
        Ok(()) => println!(
            "  reference check: OK, all {} (head, token) selections agree with the CPU reference ({ref_s:.1} s on the CPU)",
            scores.len()
        ),
        Err(msg) => println!("  reference check: MISMATCH\n{msg}"),
    }
    print_selections(step, &got, cfg.topk, &show_rows(step));
    Ok(verdict.is_ok())
}

fn run_cpu_step(cfg: &MsaIndexerConfig, step: &Step) {
    let p = *cfg;
    let t0 = Instant::now();
    let scores = reference::block_scores(&step.q, &step.spec.as_batch(), &step.pool.cache(), 0, &p);
    let t1 = Instant::now();
    let out = reference::select_all(&scores, &p);
    let t2 = Instant::now();
    println!(
        "  CPU reference ({} threads): scores {:.2} s, top-{} {:.1} ms",
        rayon::current_num_threads(),
        (t1 - t0).as_secs_f64(),
        cfg.topk,
        (t2 - t1).as_secs_f64() * 1e3
    );
    print_selections(step, &out, cfg.topk, &show_rows(step));
}

/// An MSA step (indexer then attention): on the GPU it is timed and its
/// attention output checked against the reference on the GPU's own
/// selections; on the CPU the references run end to end.
fn msa_step(
    gpu: Option<&Gpu>,
    rng: &mut ChaCha8Rng,
    name: &str,
    spec: RaggedSpec,
) -> Result<bool, String> {
    let (icfg, acfg) = (
        MsaIndexerConfig::minimax_m3(),
        MsaAttentionConfig::minimax_m3(),
    );
    let data = StepData::random(rng, &spec, 4);
    let (kv, ik, q, qi) = (&data.kv, &data.ik, &data.q[..], &data.qi[..]);
    let rows = spec.num_rows();
    println!(
        "\n{name} step (indexer + attention, {} q heads / {} kv heads, top-{}): {} sequences, {} new tokens, contexts {}..{} tokens",
        acfg.n_heads,
        acfg.n_kv_heads,
        acfg.topk,
        spec.batch(),
        rows,
        (0..spec.batch()).map(|b| spec.seqlen_k(b)).min().unwrap(),
        (0..spec.batch()).map(|b| spec.seqlen_k(b)).max().unwrap()
    );
    let p = acfg;
    let Some(gpu) = gpu else {
        let t0 = Instant::now();
        let sel = reference::msa_indexer(qi, &spec.as_batch(), &ik.cache(), 0, &icfg);
        let out = attention_reference::msa_attention(q, &spec.as_batch(), &kv.cache(), 0, &sel, &p);
        println!(
            "  CPU reference: {:.2} s; lse of sequence 0, heads 0..4: {:?}",
            t0.elapsed().as_secs_f64(),
            out.lse[..4]
                .iter()
                .map(|v| (v * 1000.0).round() / 1000.0)
                .collect::<Vec<_>>()
        );
        return Ok(true);
    };
    let e = |what: &'static str| move |err: sparse_attn::Error| format!("{what}: {err}");
    let (mut step, buffers) = data
        .plan_and_upload(gpu, &spec)
        .map_err(e("planning the step"))?;
    let inp = buffers.inputs();
    let mut out = gpu
        .zeros::<bf16>(rows * acfg.n_heads * 128)
        .map_err(e("alloc"))?;
    let mut lse = gpu.zeros::<f32>(rows * acfg.n_heads).map_err(e("alloc"))?;
    for _ in 0..3 {
        step.run(&inp, 0, &mut out, Some(&mut lse))
            .map_err(e("run"))?;
    }
    gpu.synchronize().map_err(e("run"))?;
    let t0 = Instant::now();
    for _ in 0..REPS {
        step.run(&inp, 0, &mut out, Some(&mut lse))
            .map_err(e("run"))?;
    }
    gpu.synchronize().map_err(e("run"))?;
    let us = t0.elapsed().as_secs_f64() * 1e6 / REPS as f64;
    let (got, got_lse) = (
        gpu.download(&out).map_err(e("download"))?,
        gpu.download(&lse).map_err(e("download"))?,
    );
    let sel = gpu.download(step.d_indices()).map_err(e("download"))?;
    let want = attention_reference::msa_attention(q, &spec.as_batch(), &kv.cache(), 0, &sel, &p);
    println!(
        "  GPU: {us:.1} us per step ({REPS} back-to-back steps, host clock; attention path {:?})",
        step.attention.path().expect("planned")
    );
    match attention_reference::check_attention(&got, Some(&got_lse), &want, &p) {
        Ok(()) => {
            println!("  reference check: OK, attention output and LSE of all {} (token, head) pairs agree with the f64 reference", rows * acfg.n_heads);
            Ok(true)
        }
        Err(msg) => {
            eprintln!("  reference check FAILED: {msg}");
            Ok(false)
        }
    }
}

fn main() -> ExitCode {
    let cfg = MsaIndexerConfig::minimax_m3();
    let seed_fixed = std::env::var_os(SEED_ENV).is_none().then_some(DEFAULT_SEED);
    let (mut rng, seed) = seeded(seed_fixed);
    let on_gpu = Gpu::driver_present();
    println!(
        "sparse-attn demo: MSA indexer, MiniMax-M3 config ({} index heads x {}, top-{}, init {}, local {}, block {}), seed {seed}",
        cfg.num_index_heads, cfg.head_dim, cfg.topk, cfg.init_blocks, cfg.local_blocks, cfg.block_size
    );

    let gpu = if on_gpu {
        match Gpu::new(0) {
            Ok(g) => {
                let pr = g.props();
                println!(
                    "device: {} (sm_{}{}, {} SMs, L2 {} MiB)",
                    pr.name,
                    pr.compute_capability.0,
                    pr.compute_capability.1,
                    pr.sm_count,
                    pr.l2_bytes >> 20
                );
                Some(g)
            }
            Err(err) => {
                eprintln!("error: the NVIDIA driver is present but device 0 cannot be used: {err}");
                return ExitCode::FAILURE;
            }
        }
    } else {
        println!("no NVIDIA driver found: running the CPU reference instead");
        None
    };

    // Decode: 32 sequences with ragged contexts of 8K..32K tokens. (The CPU
    // reference handles this size in well under a second on 2 cores.)
    let contexts: Vec<u32> = (0..32)
        .map(|_| rng.gen_range(8 * 1024..32 * 1024))
        .collect();
    let t0 = Instant::now();
    let steps = [
        Step::new(&mut rng, &cfg, "decode", RaggedSpec::decode(contexts)),
        Step::new(
            &mut rng,
            &cfg,
            "prefill",
            RaggedSpec::prefill(&[512, 512], &[2048, 2048]),
        ),
    ];
    println!("inputs generated in {:.1} s", t0.elapsed().as_secs_f64());

    let mut ok = true;
    for step in &steps {
        println!("\n{}: {}", step.name, step.describe());
        match &gpu {
            Some(gpu) => match run_gpu_step(gpu, &cfg, step) {
                Ok(agree) => ok &= agree,
                Err(msg) => {
                    eprintln!("error: {}: {msg}", step.name);
                    return ExitCode::FAILURE;
                }
            },
            None => run_cpu_step(&cfg, step),
        }
    }
    println!(
        "\n(selections: logical block ids of 128 tokens, best first; the last {} block(s) up to the token are always kept)",
        cfg.local_blocks
    );
    // Decode: 8 sequences of 4K..16K; prefill: a 256-token prompt and a
    // 128-token chunk on a 2K cache (small enough for the CPU reference).
    let contexts: Vec<u32> = (0..8).map(|_| rng.gen_range(4 * 1024..16 * 1024)).collect();
    let steps = [
        ("decode", RaggedSpec::decode(contexts)),
        ("prefill", RaggedSpec::prefill(&[256, 128], &[0, 2048])),
    ];
    for (name, spec) in steps {
        match msa_step(gpu.as_ref(), &mut rng, name, spec) {
            Ok(agree) => ok &= agree,
            Err(msg) => {
                eprintln!("error: {name} step: {msg}");
                return ExitCode::FAILURE;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "error: the GPU output differs from the reference (replay with {SEED_ENV}={seed})"
        );
        ExitCode::FAILURE
    }
}

//! Benchmarks of the kernels on the cases of `shared/spec/model-shapes.md`.
//!
//! `bench [--cases idx-decode-b64-32k,...] [--reps N] [--peers peers.json]
//!        [--out results.json] [--charts DIR] [--sweep-chunk]`
//!
//! Every case reports the time per call (`--reps` calls back to back between
//! device events, median of 5 batches; see `time_ms`), the achieved bandwidth (bytes that
//! must be read: q, the index-K context, the output) or tensor rate, and its
//! fraction of the limit measured in the same run: the device-to-device copy
//! bandwidth (bytes read + written) of a 1 GiB copy. Inputs larger than L2
//! are used as they are; smaller ones rotate over several copies so repeated
//! launches do not just read L2. Peer times (PyTorch, run by
//! `bench/peers/msa_indexer_torch.py` on the same shapes in the same device
//! call) are merged from `--peers`, and so are the limits the peer scripts
//! measure (`_bf16_matmul_tflops`, `_fp8_matmul_tflops`: a PyTorch 8192³
//! matmul), which go into every record. `--charts DIR` then draws the SVG
//! charts of the records (`sparse_attn_tests::charts`; the `charts` binary,
//! or `cargo xtask charts`, redraws them from a results file without a GPU).

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use cudarc::driver::sys::CUevent_flags;
use rand::Rng;
use serde_json::{json, Value};
use sparse_attn::mla_indexer::MLA_LOGITS_LIMIT;
use sparse_attn::{
    AttentionPath, CudaSlice, DensePrefill, DensePrefillConfig, DensePrefillFp8, Fp8Descales, Gpu,
    KvBuffers, KvLayout, Mask, MlaIndexer, MlaIndexerConfig, MsaAttention, MsaAttentionConfig,
    MsaIndexer, MsaIndexerConfig, MsaStep, PageTable, PagedLayout, RaggedBatch, StepInputs, TopK,
};
use sparse_attn_tests::data::{seeded, tensor, Fill, RaggedSpec};

/// Benchmarks of the sparse-attn kernels on the model-shape cases (method: tests/src/bin/bench.rs).
#[derive(clap::Parser)]
#[command(name = "bench")]
struct Args {
    /// Only these cases (comma-separated names, e.g. idx-decode-b64-32k,...); all by default.
    #[arg(long, value_delimiter = ',', value_name = "CASE,...")]
    cases: Option<Vec<String>>,
    /// Calls back to back per timed batch.
    #[arg(long, default_value_t = 20, value_name = "N")]
    reps: usize,
    /// Peer results to merge (comma-separated JSON files from bench/peers).
    #[arg(long, value_name = "A.json,B.json")]
    peers: Option<String>,
    /// Write the records as JSON to this file.
    #[arg(long, value_name = "FILE")]
    out: Option<String>,
    /// Then draw the SVG charts of the records into this folder
    /// (`<stem of --out>-<chart>.svg`; see the `charts` binary).
    #[arg(long, value_name = "DIR")]
    charts: Option<String>,
    /// Also sweep the split / chunk / window choices.
    #[arg(long)]
    sweep_chunk: bool,
    /// Load the kernels from this PTX file instead of the embedded build
    /// (a variant of the same sources, measured with the same binary).
    #[arg(long, value_name = "FILE")]
    ptx: Option<String>,
    /// Top-k (alone and in the MLA indexer): CTAs a row (the cluster size)
    /// instead of the planner's choice.
    #[arg(long, value_name = "N")]
    topk_cluster: Option<u32>,
    /// MLA indexer: also time the end-to-end run with the logits kept to
    /// each of these many bytes at once (chunks of rows; see
    /// `MlaIndexer::limit_logits`), e.g. 33554432,268435456.
    #[arg(long, value_delimiter = ',', value_name = "BYTES,...")]
    mla_logits_limit: Vec<usize>,
    /// Dense prefill on contiguous K/V: keys of a key tile (128, or the
    /// wide kernels' 176 bf16 / 192 FP8) instead of the plan's choice.
    #[arg(long, value_name = "KEYS")]
    key_tile: Option<u32>,
}

fn parse_args() -> Args {
    clap::Parser::parse()
}

/// Time per call in milliseconds: `f(i)` is enqueued `reps` times back to
/// back between two device events (so host launch cost overlaps the device
/// work, as in a serving loop), after 3 warm-up calls; the median of 5 such
/// batches is returned. The PyTorch peers are timed the same way.
fn time_ms(gpu: &Gpu, reps: usize, mut f: impl FnMut(usize)) -> f64 {
    let ctx = gpu.context();
    let ev = || {
        ctx.new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .unwrap()
    };
    for i in 0..3 {
        f(i);
    }
    gpu.synchronize().unwrap();
    let mut t: Vec<f64> = (0..5)
        .map(|batch| {
            let (a, b) = (ev(), ev());
            a.record(gpu.stream()).unwrap();
            for i in 0..reps {
                f(batch * reps + i);
            }
            b.record(gpu.stream()).unwrap();
            b.synchronize().unwrap();
            a.elapsed_ms(&b).unwrap() as f64 / reps as f64
        })
        .collect();
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    t[t.len() / 2]
}

/// Time per call in milliseconds with the host out of the picture: `reps`
/// calls of `f(i)` are captured once in a CUDA graph, and the graph's
/// replays are timed like [`time_ms`] (what a serving loop that replays a
/// captured decode step sees).
fn time_graph_ms(gpu: &Gpu, reps: usize, mut f: impl FnMut(usize)) -> f64 {
    use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
    let stream = gpu.stream();
    f(0); // load and warm outside the capture
    gpu.synchronize().unwrap();
    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
        .unwrap();
    for i in 0..reps {
        f(i);
    }
    let graph = stream
        .end_capture(CUgraphInstantiate_flags(0))
        .unwrap()
        .expect("captured work");
    time_ms(gpu, 1, |_| graph.launch().unwrap()) / reps as f64
}

/// Device-to-device copy bandwidth in GB/s (bytes read + written) of 1 GiB.
fn copy_bandwidth(gpu: &Gpu) -> f64 {
    let n = 1usize << 29; // u16 elements: 1 GiB
    let src = gpu.upload(&vec![0x3f80u16; n]).unwrap();
    let mut dst = gpu.zeros::<u16>(n).unwrap();
    let ms = time_ms(gpu, 20, |_| {
        gpu.stream().memcpy_dtod(&src, &mut dst).unwrap()
    });
    2.0 * (n * 2) as f64 / (ms * 1e-3) / 1e9
}

/// The floor under any decode call, timed like the cases: an empty kernel
/// (one CTA, `ret`) launched back to back, eager and replayed from a graph,
/// one and two per call (the decode attention launches two when it splits),
/// and a device-to-device copy of `bytes` (the bytes msa-decode-b1-128k
/// reads). Printed, in µs.
fn launch_floor(gpu: &Gpu, bytes: usize) {
    use cudarc::driver::LaunchConfig;
    const NOOP_PTX: &str = ".version 8.0\n.target sm_90a\n.address_size 64\n\
                            .visible .entry noop() { ret; }\n";
    let module = gpu
        .context()
        .load_module(cudarc::nvrtc::Ptx::from_src(NOOP_PTX))
        .unwrap();
    let f = module.load_function("noop").unwrap();
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (32, 1, 1),
        shared_mem_bytes: 0,
    };
    let launch = |n: usize| {
        for _ in 0..n {
            unsafe { gpu.stream().launch_builder(&f).launch(cfg) }.unwrap();
        }
    };
    let us = |ms: f64| ms * 1e3;
    let (e1, g1) = (
        us(time_ms(gpu, 20, |_| launch(1))),
        us(time_graph_ms(gpu, 20, |_| launch(1))),
    );
    let (e2, g2) = (
        us(time_ms(gpu, 20, |_| launch(2))),
        us(time_graph_ms(gpu, 20, |_| launch(2))),
    );
    let n = bytes / 2;
    let src = gpu.upload(&vec![0u16; n]).unwrap();
    let mut dst = gpu.zeros::<u16>(n).unwrap();
    let copy = us(time_ms(gpu, 20, |_| {
        gpu.stream().memcpy_dtod(&src, &mut dst).unwrap()
    }));
    eprintln!(
        "launch floor: empty kernel {e1:.1} us eager / {g1:.1} us graph; two empty kernels \
         {e2:.1} / {g2:.1} us; device copy of {:.1} MB {copy:.1} us",
        bytes as f64 / 1e6
    );
}

/// An indexer benchmark case.
struct IdxCase {
    name: &'static str,
    spec: RaggedSpec,
}

fn idx_cases() -> Vec<IdxCase> {
    vec![
        IdxCase {
            name: "idx-decode-b64-32k",
            spec: RaggedSpec::decode(vec![32 * 1024 - 1; 64]),
        },
        IdxCase {
            name: "idx-decode-b1-128k",
            spec: RaggedSpec::decode(vec![128 * 1024 - 1]),
        },
        IdxCase {
            name: "idx-prefill-8k",
            spec: RaggedSpec::prefill(&[8 * 1024], &[0]),
        },
        IdxCase {
            name: "idx-prefill-chunk",
            spec: RaggedSpec::prefill(&[4 * 1024], &[60 * 1024]),
        },
    ]
}

/// A decode attention case: `batch` sequences of `ctx` keys.
struct AttCase {
    name: &'static str,
    batch: usize,
    ctx: usize,
    cfg: MsaAttentionConfig,
    /// Time the whole step (indexer + attention) instead of the attention.
    step: bool,
    /// Every slot -1: the same launches with no K/V traffic (the latency
    /// floor of the design).
    empty: bool,
}

fn att_cases() -> Vec<AttCase> {
    let m3 = MsaAttentionConfig::minimax_m3();
    let tp8 = MsaAttentionConfig {
        n_heads: 8,
        n_kv_heads: 1,
        ..m3
    };
    let case = |name, batch, ctx, cfg, step, empty| AttCase {
        name,
        batch,
        ctx,
        cfg,
        step,
        empty,
    };
    vec![
        case("msa-decode-b64-32k", 64, 32 * 1024, m3, false, false),
        case("msa-decode-b1-128k", 1, 128 * 1024, m3, false, false),
        case("msa-decode-b1-128k-empty", 1, 128 * 1024, m3, false, true),
        case("msa-decode-tp8", 128, 32 * 1024, tp8, false, false),
        // Not a spec case: msa-decode-b64-32k's bytes and CTA count (256
        // (sequence, KV head) pairs of 16 blocks) with one KV head per page,
        // so each K or V tile is 32 KiB contiguous instead of 128 rows of
        // 256 B at a 1 KiB stride: how much the interleaved layout costs.
        case(
            "msa-decode-probe-kv1-b256",
            256,
            32 * 1024,
            MsaAttentionConfig {
                n_heads: 16,
                n_kv_heads: 1,
                ..m3
            },
            false,
            false,
        ),
        case("msa-step-b64-32k", 64, 32 * 1024, m3, true, false),
        case("msa-step-b1-128k", 1, 128 * 1024, m3, true, false),
    ]
}

/// A device pool of `len` bf16 filled with random values (a 64 MiB random
/// pattern repeated: only its values matter, the kernels read scattered pages).
fn random_pool(gpu: &Gpu, rng: &mut impl Rng, len: usize) -> CudaSlice<half::bf16> {
    repeated(gpu, &tensor(rng, len.min(32 << 20), Fill::Normal), len)
}

/// `len` elements of `pattern` repeated, on the device.
fn repeated<T: cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits>(
    gpu: &Gpu,
    pattern: &[T],
    len: usize,
) -> CudaSlice<T> {
    let mut pool = gpu.zeros::<T>(len).unwrap();
    let mut at = 0;
    while at < len {
        let n = pattern.len().min(len - at);
        gpu.stream()
            .memcpy_htod(&pattern[..n], &mut pool.slice_mut(at..at + n))
            .unwrap();
        at += n;
    }
    pool
}

/// Random selections `[n_kv, batch, topk]`: the last block plus distinct others.
fn selections(
    rng: &mut impl Rng,
    n_kv: usize,
    batch: usize,
    topk: usize,
    nblocks: usize,
) -> Vec<i32> {
    let mut d = Vec::with_capacity(n_kv * batch * topk);
    for _ in 0..n_kv * batch {
        let mut row = vec![(nblocks - 1) as i32];
        while row.len() < topk.min(nblocks) {
            let b = rng.gen_range(0..nblocks) as i32;
            if !row.contains(&b) {
                row.push(b);
            }
        }
        row.resize(topk, -1);
        d.extend(row);
    }
    d
}

fn bench_attention(gpu: &Gpu, c: &AttCase, args: &Args, copy_gbs: f64, l2: usize) -> Vec<Value> {
    let (mut rng, seed) = seeded(None);
    let cfg = c.cfg;
    let (n_kv, topk) = (cfg.n_kv_heads, cfg.topk);
    let nblocks = c.ctx.div_ceil(128);
    let layout = PagedLayout::kv(c.batch * nblocks, 1, 128, n_kv, 128);
    let mut perm: Vec<u32> = (0..layout.num_pages as u32).collect();
    for i in (1..perm.len()).rev() {
        perm.swap(i, rng.gen_range(0..=i));
    }
    let kv = random_pool(gpu, &mut rng, layout.elements());
    let lookup = gpu.upload(&perm).unwrap(); // [batch, nblocks]
    let offsets: Vec<u32> = (0..=c.batch as u32).collect();
    let lens = vec![(c.ctx - 1) as u32; c.batch];
    let batch = RaggedBatch::new(&offsets, &lens);
    let q = gpu
        .upload(&tensor(&mut rng, c.batch * cfg.n_heads * 128, Fill::Normal))
        .unwrap();
    let mut out = gpu
        .zeros::<half::bf16>(c.batch * cfg.n_heads * 128)
        .unwrap();
    let sel_bytes = (c.batch * n_kv * topk * 128 * 128 * 2 * 2) as f64;
    let io_bytes = (2 * c.batch * cfg.n_heads * 128 * 2) as f64;
    let mut recs = Vec::new();
    let record = |us: f64, bytes: f64, extra: Value| {
        let gbs = bytes / (us * 1e-6) / 1e9;
        let mut r = json!({
            "case": c.name, "op": if c.step { "msa_decode_step" } else { "msa_decode_attention" },
            "our_us": us, "achieved": gbs, "unit": "GB/s", "fraction_of_limit": gbs / copy_gbs,
            "bytes": bytes,
        });
        if let (Value::Object(r), Value::Object(e)) = (&mut r, extra) {
            r.extend(e);
        }
        r
    };
    if !c.step {
        // Rotate several selections so repeated calls do not re-read L2:
        // together they select at least 3x L2 (with repeats; b1-128k: 43
        // copies of 4.2 MB on the H200's 60 MB L2).
        let copies = (3 * l2).div_ceil(sel_bytes as usize).max(4);
        let sels: Vec<_> = (0..copies)
            .map(|_| {
                let mut sel = selections(&mut rng, n_kv, c.batch, topk, nblocks);
                if c.empty {
                    sel.fill(-1);
                }
                gpu.upload(&sel).unwrap()
            })
            .collect();
        let mut att = MsaAttention::new(gpu, cfg, c.batch).unwrap();
        let parts_list: Vec<Option<usize>> = if args.sweep_chunk {
            vec![None, Some(1), Some(2), Some(3), Some(4), Some(8), Some(16)]
        } else {
            vec![None]
        };
        for parts in parts_list {
            att.force_partitions(parts);
            att.plan(&batch, &PageTable::new(&perm, nblocks), &layout)
                .unwrap();
            let ms = time_ms(gpu, args.reps, |i| {
                att.run(&q, &kv, &lookup, &sels[i % copies], 0, &mut out, None)
                    .unwrap()
            });
            let p = att.partitions().unwrap();
            let graph_ms = time_graph_ms(gpu, args.reps, |i| {
                att.run(&q, &kv, &lookup, &sels[i % copies], 0, &mut out, None)
                    .unwrap()
            });
            eprintln!(
                "{:<22} partitions {:>4} ({:>4}): {:>9.1} us  {:>8.1} GB/s  (graph replay {:.1} us, seed {seed})",
                c.name,
                p,
                parts.map_or("auto".into(), |x| x.to_string()),
                ms * 1e3,
                (sel_bytes + io_bytes) / (ms * 1e-3) / 1e9,
                graph_ms * 1e3
            );
            if parts.is_none() {
                // The same launches in plain stream order.
                gpu.set_programmatic_launch(false);
                let plain_ms = time_ms(gpu, args.reps, |i| {
                    att.run(&q, &kv, &lookup, &sels[i % copies], 0, &mut out, None)
                        .unwrap()
                });
                let plain_graph_ms = time_graph_ms(gpu, args.reps, |i| {
                    att.run(&q, &kv, &lookup, &sels[i % copies], 0, &mut out, None)
                        .unwrap()
                });
                gpu.set_programmatic_launch(true);
                eprintln!(
                    "{:<22} without programmatic launch: {:.1} us (graph replay {:.1} us)",
                    c.name,
                    plain_ms * 1e3,
                    plain_graph_ms * 1e3
                );
                recs.push(record(
                    ms * 1e3,
                    sel_bytes + io_bytes,
                    json!({ "partitions": p, "our_us_graph_replay": graph_ms * 1e3,
                            "our_us_no_pdl": plain_ms * 1e3,
                            "our_us_graph_replay_no_pdl": plain_graph_ms * 1e3 }),
                ));
            }
        }
    } else {
        let icfg = MsaIndexerConfig {
            num_index_heads: n_kv,
            topk,
            ..MsaIndexerConfig::minimax_m3()
        };
        let ilayout = PagedLayout::index_k(c.batch * nblocks, 1, 128, 128);
        let ik = random_pool(gpu, &mut rng, ilayout.elements());
        let qi = gpu
            .upload(&tensor(&mut rng, c.batch * n_kv * 128, Fill::Normal))
            .unwrap();
        let mut step = MsaStep::new(gpu, icfg, cfg, c.batch).unwrap();
        let t = PageTable::new(&perm, nblocks);
        step.plan(&batch, &t, &ilayout, &t, &layout).unwrap();
        let inp = StepInputs {
            q_index: &qi,
            k_index: &ik,
            index_lookup: &lookup,
            q: &q,
            kv_cache: &kv,
            kv_lookup: &lookup,
        };
        let ms = time_ms(gpu, args.reps, |_| {
            step.run(&inp, 0, &mut out, None).unwrap()
        });
        let graph_ms = time_graph_ms(gpu, args.reps, |_| {
            step.run(&inp, 0, &mut out, None).unwrap()
        });
        gpu.set_programmatic_launch(false);
        let plain_ms = time_ms(gpu, args.reps, |_| {
            step.run(&inp, 0, &mut out, None).unwrap()
        });
        let plain_graph_ms = time_graph_ms(gpu, args.reps, |_| {
            step.run(&inp, 0, &mut out, None).unwrap()
        });
        gpu.set_programmatic_launch(true);
        let idx_bytes = (c.batch * c.ctx * 256) as f64;
        eprintln!(
            "{:<22} step: {:>9.1} us (graph replay {:.1} us; without programmatic launch {:.1} / {:.1} us; seed {seed})",
            c.name,
            ms * 1e3,
            graph_ms * 1e3,
            plain_ms * 1e3,
            plain_graph_ms * 1e3
        );
        recs.push(record(
            ms * 1e3,
            sel_bytes + io_bytes + idx_bytes,
            json!({ "our_us_graph_replay": graph_ms * 1e3,
                    "our_us_no_pdl": plain_ms * 1e3,
                    "our_us_graph_replay_no_pdl": plain_graph_ms * 1e3 }),
        ));
    }
    recs
}

/// MSA prefill of one `len`-token prompt (M3 heads, top-16): every row
/// selects its own block and random earlier ones. Rate counts
/// `4 * n_heads * 128 * (selected, causally visible (query, key) pairs)`.
/// Times the planned (block-major) path — with its device-side CSR plan, and
/// the plan alone — and the query-major path on the same data.
fn bench_prefill_attention(gpu: &Gpu, name: &'static str, len: usize, args: &Args) -> Vec<Value> {
    let (mut rng, seed) = seeded(None);
    let cfg = MsaAttentionConfig::minimax_m3();
    let (n_kv, topk, group) = (cfg.n_kv_heads, cfg.topk, cfg.group());
    let nblocks = len.div_ceil(128);
    let layout = PagedLayout::kv(nblocks, 1, 128, n_kv, 128);
    let mut perm: Vec<u32> = (0..nblocks as u32).collect();
    for i in (1..perm.len()).rev() {
        perm.swap(i, rng.gen_range(0..=i));
    }
    let kv = random_pool(gpu, &mut rng, layout.elements());
    let lookup = gpu.upload(&perm).unwrap();
    let (offsets, lens) = (vec![0, len as u32], vec![0u32]);
    let batch = RaggedBatch::new(&offsets, &lens);
    let mut sel = vec![-1i32; n_kv * len * topk];
    let mut pairs = 0f64;
    for kh in 0..n_kv {
        for t in 0..len {
            let own = t / 128;
            let row = &mut sel[(kh * len + t) * topk..][..topk];
            row[0] = own as i32;
            pairs += (t % 128 + 1) as f64;
            let mut n = 1;
            while n < topk.min(own + 1) {
                let b = rng.gen_range(0..own) as i32;
                if !row[..n].contains(&b) {
                    row[n] = b;
                    n += 1;
                    pairs += 128.0;
                }
            }
        }
    }
    let d_sel = gpu.upload(&sel).unwrap();
    let q = gpu
        .upload(&tensor(&mut rng, len * cfg.n_heads * 128, Fill::Normal))
        .unwrap();
    let mut out = gpu.zeros::<half::bf16>(len * cfg.n_heads * 128).unwrap();
    let mut att = MsaAttention::new(gpu, cfg, len).unwrap();
    let flops = 4.0 * (group * 128) as f64 * pairs;
    let mut recs = Vec::new();
    let windows: Vec<Option<usize>> = if args.sweep_chunk {
        vec![Some(256), Some(512), Some(2048), None]
    } else {
        vec![None]
    };
    // (path, window): the planned path, then the query-major kernel.
    let runs = windows
        .iter()
        .map(|&w| (AttentionPath::BlockMajor, w))
        .chain([(AttentionPath::QueryMajor, None)]);
    for (path, window) in runs {
        att.force_path(Some(path));
        att.force_block_major_window(window);
        att.plan(&batch, &PageTable::new(&perm, nblocks), &layout)
            .unwrap();
        let reps = args.reps.min(5);
        let ms = time_ms(gpu, reps, |_| {
            att.run(&q, &kv, &lookup, &d_sel, 0, &mut out, None)
                .unwrap()
        });
        let graph_ms = time_graph_ms(gpu, reps, |_| {
            att.run(&q, &kv, &lookup, &d_sel, 0, &mut out, None)
                .unwrap()
        });
        let plan_ms = time_ms(gpu, reps, |_| att.run_device_plan(&lookup, &d_sel).unwrap());
        let tf = flops / (ms * 1e-3) / 1e12;
        eprintln!(
            "{name:<22} {path:?} window {window:?}: {:>9.1} us  {tf:>6.1} TFLOP/s (graph replay {:.1} us; device plan alone {:.1} us; seed {seed})",
            ms * 1e3,
            graph_ms * 1e3,
            plan_ms * 1e3
        );
        let (case, op, note) = match path {
            AttentionPath::BlockMajor => (
                name.to_string(),
                "msa_prefill_attention",
                "KV-block-major: device CSR plan (count, scan, scatter) + wgmma run + combine; our_us includes the plan",
            ),
            AttentionPath::QueryMajor => (
                format!("{name}-query-major"),
                "msa_prefill_attention_query_major",
                "query-major kernel (one CTA per row and KV head), same data, for comparison",
            ),
        };
        let mut r = json!({
            "case": case, "op": op, "our_us": ms * 1e3, "our_us_graph_replay": graph_ms * 1e3,
            "achieved": tf, "unit": "TFLOP/s", "fraction_of_limit": Value::Null, "flops": flops,
            "note": note,
        });
        if path == AttentionPath::BlockMajor {
            r["device_plan_us"] = json!(plan_ms * 1e3);
        }
        if window.is_none() {
            recs.push(r);
        }
    }
    recs
}

/// A dense prefill case: 32 query heads over 8 KV heads of 128, one
/// sequence of 16K or 8 of 2K; K/V contiguous or from a shuffled paged cache.
struct DenseCase {
    name: &'static str,
    q_lens: &'static [u32],
    mask: Mask,
    page_size: Option<usize>,
    sinks: bool,
    /// FP8 cases: bf16 queries against the e4m3 K/V (`DensePrefillFp8::run` on bf16 queries).
    q_bf16: bool,
}

fn dense_cases() -> Vec<DenseCase> {
    const K16: &[u32] = &[16384];
    const K2X8: &[u32] = &[2048; 8];
    // Between them: where the wide key tile starts to pay (the host's
    // `WIDE_MIN_SPAN`).
    const K4X4: &[u32] = &[4096; 4];
    const K8X2: &[u32] = &[8192; 2];
    let c = |name, q_lens, mask, page_size, sinks| DenseCase {
        name,
        q_lens,
        mask,
        page_size,
        sinks,
        q_bf16: false,
    };
    vec![
        c("dense-prefill-16k", K16, Mask::None, None, false),
        c("dense-prefill-16k-causal", K16, Mask::Causal, None, false),
        c("dense-prefill-8x2k", K2X8, Mask::Causal, None, false),
        c("dense-prefill-4x4k", K4X4, Mask::Causal, None, false),
        c("dense-prefill-2x8k", K8X2, Mask::Causal, None, false),
        c(
            "dense-prefill-16k-paged128",
            K16,
            Mask::Causal,
            Some(128),
            false,
        ),
        c(
            "dense-prefill-16k-paged16",
            K16,
            Mask::Causal,
            Some(16),
            false,
        ),
        // Every page size between (16 and 128 are the cases).
        c(
            "dense-prefill-16k-paged32",
            K16,
            Mask::Causal,
            Some(32),
            false,
        ),
        c(
            "dense-prefill-16k-paged64",
            K16,
            Mask::Causal,
            Some(64),
            false,
        ),
        c(
            "dense-prefill-16k-sw4096",
            K16,
            Mask::SlidingWindow { window: 4096 },
            None,
            false,
        ),
        c("dense-prefill-16k-sinks", K16, Mask::Causal, None, true),
    ]
}

/// The FP8 dense prefill cases: the bf16 cases' shapes on e4m3 Q, K, V,
/// and bf16 Q against a paged e4m3 cache (`-fp8kv`).
fn dense_fp8_cases() -> Vec<DenseCase> {
    const K16: &[u32] = &[16384];
    // Short and middle loops, for the wide key tile's threshold.
    const K2X8: &[u32] = &[2048; 8];
    const K8X2: &[u32] = &[8192; 2];
    let c = |name, q_lens, mask, page_size, q_bf16| DenseCase {
        name,
        q_lens,
        mask,
        page_size,
        sinks: false,
        q_bf16,
    };
    vec![
        c("dense-prefill-16k-fp8", K16, Mask::None, None, false),
        c(
            "dense-prefill-16k-causal-fp8",
            K16,
            Mask::Causal,
            None,
            false,
        ),
        c("dense-prefill-8x2k-fp8", K2X8, Mask::Causal, None, false),
        c("dense-prefill-2x8k-fp8", K8X2, Mask::Causal, None, false),
        c(
            "dense-prefill-16k-paged128-fp8",
            K16,
            Mask::Causal,
            Some(128),
            false,
        ),
        c(
            "dense-prefill-16k-paged16-fp8",
            K16,
            Mask::Causal,
            Some(16),
            false,
        ),
        c(
            "dense-prefill-16k-paged128-fp8kv",
            K16,
            Mask::Causal,
            Some(128),
            true,
        ),
    ]
}

/// `len` e4m3 bytes of normal samples (a 32 MiB pattern repeated).
fn random_fp8(gpu: &Gpu, rng: &mut impl Rng, len: usize) -> CudaSlice<u8> {
    let pattern = sparse_attn_tests::data::fp8_tensor(
        rng,
        len.min(32 << 20),
        sparse_attn_tests::data::Fp8Fill::Random,
    );
    repeated(gpu, &pattern, len)
}

fn bench_dense_prefill_fp8(gpu: &Gpu, c: &DenseCase, args: &Args) -> Vec<Value> {
    let (mut rng, seed) = seeded(None);
    let cfg = DensePrefillConfig {
        mask: c.mask,
        ..DensePrefillConfig::llama_gqa()
    };
    let spec = RaggedSpec::prefill(c.q_lens, &vec![0; c.q_lens.len()]);
    let rows = spec.num_rows();
    let kv_row = cfg.n_kv_heads * 128;
    let q = random_fp8(gpu, &mut rng, rows * cfg.n_heads * 128);
    let q_bf16 = c.q_bf16.then(|| {
        let t = tensor(
            &mut rng,
            (rows * cfg.n_heads * 128).min(16 << 20),
            Fill::Normal,
        );
        repeated(gpu, &t, rows * cfg.n_heads * 128)
    });
    let mut out = gpu.zeros::<half::bf16>(rows * cfg.n_heads * 128).unwrap();
    let ds = [
        gpu.upload(&[0.5f32]).unwrap(),
        gpu.upload(&[0.25f32]).unwrap(),
        gpu.upload(&[2.0f32]).unwrap(),
    ];
    let descales = Fp8Descales {
        q: &ds[0],
        k: &ds[1],
        v: &ds[2],
    };
    let mut op = DensePrefillFp8::new(gpu, cfg).unwrap();
    if c.page_size.is_none() {
        op.set_key_tile(args.key_tile).unwrap();
    }
    let (a, b, lookup, perm);
    match c.page_size {
        Some(ps) => {
            let pages = spec.seqlen_k(0).div_ceil(ps);
            let layout = PagedLayout {
                dtype: sparse_attn::batch::KvDtype::Fp8E4m3,
                ..PagedLayout::kv(pages, 1, ps, cfg.n_kv_heads, 128)
            };
            let mut p: Vec<u32> = (0..pages as u32).collect();
            for i in (1..p.len()).rev() {
                p.swap(i, rng.gen_range(0..=i));
            }
            perm = p;
            a = random_fp8(gpu, &mut rng, layout.elements());
            b = gpu.zeros::<u8>(1).unwrap();
            lookup = gpu.upload(&perm).unwrap();
            let pages = KvLayout::Paged {
                layout,
                pages: PageTable::new(&perm, perm.len()),
            };
            op.plan(&spec.as_batch(), &pages).unwrap();
        }
        None => {
            a = random_fp8(gpu, &mut rng, rows * kv_row);
            b = random_fp8(gpu, &mut rng, rows * kv_row);
            lookup = gpu.zeros::<u32>(1).unwrap();
            let kv = KvLayout::Ragged {
                kv_row_offsets: &spec.offsets,
            };
            op.plan(&spec.as_batch(), &kv).unwrap();
        }
    }
    let kv = kv_buffers(c.page_size.is_some(), &a, &b, &lookup);
    let reps = args.reps.min(10);
    let ms = time_ms(gpu, reps, |_| {
        match &q_bf16 {
            Some(q) => op.run(q, kv, descales, None, &mut out, None),
            None => op.run(&q, kv, descales, None, &mut out, None),
        }
        .unwrap()
    });
    let flops = 4.0 * (cfg.n_heads * 128) as f64 * visible_pairs(&spec, c.mask);
    let tf = flops / (ms * 1e-3) / 1e12;
    eprintln!(
        "{:<28} {:>9.1} us  {tf:>6.1} TFLOP/s (key tile {}; seed {seed})",
        c.name,
        ms * 1e3,
        op.key_tile().unwrap_or(0)
    );
    vec![json!({
        "case": c.name, "op": "dense_prefill_fp8", "our_us": ms * 1e3, "key_tile": op.key_tile(),
        // Against the FP8 matmul rate of the call (the limit), not bf16's.
        "achieved": tf, "unit": "FP8 TFLOP/s", "fraction_of_limit": Value::Null, "flops": flops,
        "note": if c.q_bf16 {
            "32 / 8 heads of 128, bf16 Q (quantised per row in the kernel), e4m3 K/V, bf16 out; TFLOP/s = 4 * n_heads * 128 * visible pairs / time"
        } else {
            "32 / 8 heads of 128, e4m3 Q/K/V, bf16 out; TFLOP/s = 4 * n_heads * 128 * visible pairs / time"
        },
    })]
}

/// The K/V buffers of a dense case: the pool `a` (layer 0) and its page
/// table when paged, else `a` and `b` as K and V.
fn kv_buffers<'a, T>(
    paged: bool,
    a: &'a CudaSlice<T>,
    b: &'a CudaSlice<T>,
    lookup: &'a CudaSlice<u32>,
) -> KvBuffers<'a, T>
where
    CudaSlice<T>: sparse_attn::DevicePtr<T>,
{
    if paged {
        KvBuffers::Paged {
            kv_cache: a,
            lookup,
            layer: 0,
        }
    } else {
        KvBuffers::Ragged { k: a, v: b }
    }
}

/// Visible (query, key) pairs of a self-attention batch under `mask`.
fn visible_pairs(spec: &RaggedSpec, mask: Mask) -> f64 {
    (0..spec.batch())
        .map(|b| {
            let (c, n) = (spec.cache_lengths[b] as usize, spec.seqlen_k(b));
            (0..spec.q_len(b))
                .map(|i| mask.key_range(c + i, n).len() as f64)
                .sum::<f64>()
        })
        .sum()
}

fn bench_dense_prefill(gpu: &Gpu, c: &DenseCase, args: &Args) -> Vec<Value> {
    let (mut rng, seed) = seeded(None);
    let cfg = DensePrefillConfig {
        mask: c.mask,
        sinks: c.sinks,
        ..DensePrefillConfig::llama_gqa()
    };
    let spec = RaggedSpec::prefill(c.q_lens, &vec![0; c.q_lens.len()]);
    let rows = spec.num_rows();
    let kv_row = cfg.n_kv_heads * 128;
    let q = random_pool(gpu, &mut rng, rows * cfg.n_heads * 128);
    let mut out = gpu.zeros::<half::bf16>(rows * cfg.n_heads * 128).unwrap();
    let sinks = c.sinks.then(|| {
        gpu.upload(
            &(0..cfg.n_heads)
                .map(|_| rng.gen_range(-2.0f32..2.0))
                .collect::<Vec<_>>(),
        )
        .unwrap()
    });
    let mut op = DensePrefill::new(gpu, cfg).unwrap();
    if c.page_size.is_none() {
        op.set_key_tile(args.key_tile).unwrap();
    }
    let (a, b, lookup, perm, layout);
    match c.page_size {
        Some(ps) => {
            let pages = (0..spec.batch())
                .map(|s| spec.seqlen_k(s).div_ceil(ps))
                .sum::<usize>();
            layout = PagedLayout::kv(pages, 1, ps, cfg.n_kv_heads, 128);
            let mut p: Vec<u32> = (0..pages as u32).collect();
            for i in (1..p.len()).rev() {
                p.swap(i, rng.gen_range(0..=i));
            }
            perm = p;
            a = random_pool(gpu, &mut rng, layout.elements());
            b = gpu.zeros::<half::bf16>(1).unwrap();
            lookup = gpu.upload(&perm).unwrap();
            let max_pages = pages / spec.batch();
            op.plan(
                &spec.as_batch(),
                &KvLayout::Paged {
                    layout,
                    pages: PageTable::new(&perm, max_pages),
                },
            )
            .unwrap();
        }
        None => {
            a = random_pool(gpu, &mut rng, rows * kv_row);
            b = random_pool(gpu, &mut rng, rows * kv_row);
            lookup = gpu.zeros::<u32>(1).unwrap();
            op.plan(
                &spec.as_batch(),
                &KvLayout::Ragged {
                    kv_row_offsets: &spec.offsets,
                },
            )
            .unwrap();
        }
    }
    let kv = kv_buffers(c.page_size.is_some(), &a, &b, &lookup);
    let reps = args.reps.min(10);
    let ms = time_ms(gpu, reps, |_| {
        op.run(&q, kv, sinks.as_ref().map(|s| s as _), &mut out, None)
            .unwrap()
    });
    let graph_ms = time_graph_ms(gpu, reps, |_| {
        op.run(&q, kv, sinks.as_ref().map(|s| s as _), &mut out, None)
            .unwrap()
    });
    let flops = 4.0 * (cfg.n_heads * 128) as f64 * visible_pairs(&spec, c.mask);
    let tf = flops / (ms * 1e-3) / 1e12;
    eprintln!(
        "{:<28} {:>9.1} us  {tf:>6.1} TFLOP/s (graph replay {:.1} us; key tile {}; seed {seed})",
        c.name,
        ms * 1e3,
        graph_ms * 1e3,
        op.key_tile().unwrap_or(0)
    );
    vec![json!({
        "case": c.name, "op": "dense_prefill", "our_us": ms * 1e3, "key_tile": op.key_tile(), "our_us_graph_replay": graph_ms * 1e3,
        "achieved": tf, "unit": "TFLOP/s", "fraction_of_limit": Value::Null, "flops": flops,
        "note": "32 / 8 heads of 128, bf16; TFLOP/s = 4 * n_heads * 128 * visible pairs / time",
    })]
}

/// The standalone top-k: `rows` random f32 rows of `n`, k = 2048. GB/s
/// counts the scores read and the indices written, against the copy
/// bandwidth; repeated calls find the scores in L2 when they fit (32 MiB
/// for 64 × 128K), as the peer's do.
fn bench_topk(
    gpu: &Gpu,
    name: &'static str,
    rows: usize,
    n: usize,
    args: &Args,
    copy_gbs: f64,
) -> Vec<Value> {
    let (mut rng, seed) = seeded(None);
    let k = 2048;
    let scores: Vec<f32> = (0..rows * n).map(|_| rng.gen_range(-4.0f32..4.0)).collect();
    let d_scores = gpu.upload(&scores).unwrap();
    let mut out = gpu.zeros::<i32>(rows * k).unwrap();
    let mut op = TopK::new(gpu).unwrap();
    op.force_cluster(args.topk_cluster);
    op.plan(rows, n, k).unwrap();
    let ms = time_ms(gpu, args.reps, |_| {
        op.run(&d_scores, None, &mut out).unwrap()
    });
    let graph_ms = time_graph_ms(gpu, args.reps, |_| {
        op.run(&d_scores, None, &mut out).unwrap()
    });
    let bytes = (rows * n * 4 + rows * k * 4) as f64;
    let gbs = bytes / (ms * 1e-3) / 1e9;
    let cluster = op.cluster().unwrap();
    eprintln!(
        "{name:<28} {:>9.1} us  {gbs:>7.1} GB/s (graph replay {:.1} us; {cluster} CTAs a row; seed {seed})",
        ms * 1e3,
        graph_ms * 1e3
    );
    vec![json!({
        "case": name, "op": "topk", "our_us": ms * 1e3, "our_us_graph_replay": graph_ms * 1e3,
        "achieved": gbs, "unit": "GB/s", "fraction_of_limit": gbs / copy_gbs, "bytes": bytes,
        "cluster": cluster,
        "note": format!("{rows} rows of {n} f32, k = {k}, a cluster of {cluster} CTAs a row; GB/s = (scores read + indices written) / time"),
    })]
}

/// Causally visible (query, key) pairs of a batch.
fn causal_pairs(spec: &RaggedSpec) -> f64 {
    (0..spec.batch())
        .map(|b| {
            let c = spec.cache_lengths[b] as f64;
            let q = spec.q_len(b) as f64;
            q * c + q * (q + 1.0) / 2.0
        })
        .sum()
}

fn bench_indexer(gpu: &Gpu, c: &IdxCase, args: &Args, copy_gbs: f64, l2: usize) -> Vec<Value> {
    let cfg = MsaIndexerConfig::minimax_m3();
    let (h, d) = (cfg.num_index_heads, cfg.head_dim);
    let (mut rng, seed) = seeded(None);
    let spec = &c.spec;
    let pages_per_seq: Vec<usize> = (0..spec.batch())
        .map(|b| spec.as_batch().pages(b, 128))
        .collect();
    let pages: usize = pages_per_seq.iter().sum();
    let max_pages = *pages_per_seq.iter().max().unwrap();
    let bytes_k = pages * 128 * d * 2;
    // Several disjoint copies when one fits in L2 (each launch reads another).
    let copies = (3 * l2).div_ceil(bytes_k).clamp(1, 8);
    let layout = PagedLayout::index_k(pages * copies, 1, 128, d);
    let pool = tensor(&mut rng, layout.elements(), Fill::Normal);
    let mut perm: Vec<u32> = (0..(pages * copies) as u32).collect();
    for i in (1..perm.len()).rev() {
        perm.swap(i, rng.gen_range(0..=i));
    }
    let lookups: Vec<Vec<u32>> = (0..copies)
        .map(|cp| {
            let mut t = vec![0u32; spec.batch() * max_pages];
            let mut next = cp * pages;
            for (b, &n) in pages_per_seq.iter().enumerate() {
                t[b * max_pages..][..n].copy_from_slice(&perm[next..next + n]);
                next += n;
            }
            t
        })
        .collect();
    let q = gpu
        .upload(&tensor(&mut rng, spec.num_rows() * h * d, Fill::Normal))
        .unwrap();
    let kc = gpu.upload(&pool).unwrap();
    let d_lookups: Vec<_> = lookups.iter().map(|t| gpu.upload(t).unwrap()).collect();
    let mut out = gpu.zeros::<i32>(h * spec.num_rows() * cfg.topk).unwrap();
    let batch = spec.as_batch();
    let mut idx = MsaIndexer::new(gpu, cfg).unwrap();
    let decode = batch.max_q_len() <= 1;
    let chunks: Vec<Option<usize>> = if decode && args.sweep_chunk {
        [
            None,
            Some(2),
            Some(4),
            Some(8),
            Some(16),
            Some(32),
            Some(64),
        ]
        .into()
    } else {
        vec![None]
    };
    let bytes = (spec.num_rows() * h * d * 2 + bytes_k + h * spec.num_rows() * cfg.topk * 4) as f64;
    let flops = causal_pairs(spec) * h as f64 * d as f64 * 2.0;
    let mut recs = Vec::new();
    for chunk in chunks {
        idx.set_decode_chunk(chunk);
        idx.plan(&batch, &PageTable::new(&lookups[0], max_pages), &layout)
            .unwrap();
        let ms = time_ms(gpu, args.reps, |i| {
            idx.run(&q, &kc, &d_lookups[i % copies], 0, &mut out)
                .unwrap()
        });
        let us = ms * 1e3;
        let graph_us = time_graph_ms(gpu, args.reps, |i| {
            idx.run(&q, &kc, &d_lookups[i % copies], 0, &mut out)
                .unwrap()
        }) * 1e3;
        let (achieved, unit, limit_frac) = if decode {
            let gbs = bytes / (ms * 1e-3) / 1e9;
            (gbs, "GB/s", gbs / copy_gbs)
        } else {
            let tf = flops / (ms * 1e-3) / 1e12;
            (tf, "TFLOP/s", f64::NAN)
        };
        eprintln!(
            "{:<22} chunk {:>8} items {:>6}: {:>9.1} us  {:>8.1} {unit}  (graph replay {graph_us:.1} us, {} copies, seed {seed})",
            c.name,
            chunk.map_or("auto".into(), |c| c.to_string()),
            idx.work_items(),
            us,
            achieved,
            copies
        );
        if chunk.is_none() {
            recs.push(json!({
                "case": c.name, "op": "msa_indexer", "our_us": us, "achieved": achieved,
                "unit": unit, "fraction_of_limit": if limit_frac.is_nan() { Value::Null } else { json!(limit_frac) },
                "bytes": bytes, "flops": flops, "work_items": idx.work_items(),
                "our_us_graph_replay": graph_us,
            }));
        }
    }
    recs
}

/// An MLA indexer case: DeepSeek-V3.2's indexer (64 heads, top-2048,
/// causal) on an FP8 index-K cache of 64-token pages, scales apart.
struct MlaCase {
    name: &'static str,
    spec: RaggedSpec,
}

fn mla_cases() -> Vec<MlaCase> {
    vec![
        MlaCase {
            name: "mla-idx-prefill-16k",
            spec: RaggedSpec::prefill(&[16384], &[0]),
        },
        // An 8K-token prefill chunk on a 120K cache: 4 GiB of logits,
        // run in 4 chunks of rows under the default limit.
        MlaCase {
            name: "mla-idx-prefill-8k-on-120k",
            spec: RaggedSpec::prefill(&[8192], &[122880]),
        },
        MlaCase {
            name: "mla-idx-decode-b64-64k",
            spec: RaggedSpec::decode(vec![65535; 64]),
        },
        MlaCase {
            name: "mla-idx-decode-b1-128k",
            spec: RaggedSpec::decode(vec![131071]),
        },
    ]
}

/// Random e4m3 bytes, NaN codes (`0x7f`, `0xff`) replaced by their neighbours.
fn fp8_bytes(rng: &mut impl Rng, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v.iter_mut()
        .filter(|b| **b & 0x7f == 0x7f)
        .for_each(|b| *b ^= 1);
    v
}

/// The MLA FP8 lightning indexer: the logits kernel alone (FP8 TFLOP/s,
/// `2 · 64 · 128` per visible pair, against the FP8 matmul rate the peer
/// script measured in the same call) and end to end with the top-k (bytes
/// that must be read, `132` per cached token plus q, against the copy
/// bandwidth).
fn bench_mla_indexer(
    gpu: &Gpu,
    c: &MlaCase,
    args: &Args,
    copy_gbs: f64,
    fp8_tf: Option<f64>,
) -> Vec<Value> {
    let cfg = MlaIndexerConfig::deepseek_v32();
    let (h, ps) = (cfg.num_heads, 64);
    let (mut rng, seed) = seeded(None);
    let spec = &c.spec;
    let rows = spec.num_rows();
    let pages_of: Vec<usize> = (0..spec.batch())
        .map(|b| spec.seqlen_k(b).div_ceil(ps))
        .collect();
    let pages: usize = pages_of.iter().sum();
    let max_pages = *pages_of.iter().max().unwrap();
    let layout = PagedLayout::index_k_fp8(pages, 1, ps, false);
    let mut perm: Vec<u32> = (0..pages as u32).collect();
    for i in (1..perm.len()).rev() {
        perm.swap(i, rng.gen_range(0..=i));
    }
    let mut lookup = vec![0u32; spec.batch() * max_pages];
    let mut next = 0;
    for (b, &n) in pages_of.iter().enumerate() {
        lookup[b * max_pages..][..n].copy_from_slice(&perm[next..next + n]);
        next += n;
    }
    let pool = gpu.upload(&fp8_bytes(&mut rng, layout.elements())).unwrap();
    let scales: Vec<f32> = (0..layout.scale_elements())
        .map(|_| rng.gen_range(0.5f32..2.0))
        .collect();
    let scales = gpu.upload(&scales).unwrap();
    let q = gpu.upload(&fp8_bytes(&mut rng, rows * h * 128)).unwrap();
    let qs: Vec<f32> = (0..rows * h).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
    let qs = gpu.upload(&qs).unwrap();
    let d_lookup = gpu.upload(&lookup).unwrap();
    let mut out = gpu.zeros::<i32>(rows * cfg.top_k).unwrap();
    // The op planned for this batch, keeping at most `limit` bytes of
    // logits at once.
    let planned = |limit: usize| {
        let mut op = MlaIndexer::new(gpu, cfg).unwrap();
        op.limit_logits(limit);
        op.force_topk_cluster(args.topk_cluster);
        op.plan(
            &spec.as_batch(),
            &layout,
            PageTable::new(&lookup, max_pages),
        )
        .unwrap();
        op
    };
    let mut op = planned(MLA_LOGITS_LIMIT);
    let reps = args.reps.min(10);
    // The logits alone of a plan in chunks: on an op that keeps them all.
    let mut whole = (op.chunks() != Some(1)).then(|| planned(usize::MAX));
    let logits_ms = time_ms(gpu, reps, |_| {
        whole
            .as_mut()
            .unwrap_or(&mut op)
            .run_logits(&q, &qs, &pool, Some(&scales), &d_lookup, 0)
            .unwrap()
    });
    drop(whole);
    let chunks = op.chunks().unwrap();
    let ms = time_ms(gpu, reps, |_| {
        op.run(&q, &qs, &pool, Some(&scales), &d_lookup, 0, &mut out)
            .unwrap()
    });
    let graph_ms = time_graph_ms(gpu, reps, |_| {
        op.run(&q, &qs, &pool, Some(&scales), &d_lookup, 0, &mut out)
            .unwrap()
    });
    // The same run in chunks of rows, for each limit asked for.
    let chunked: Vec<Value> = args
        .mla_logits_limit
        .iter()
        .map(|&limit| {
            let mut op = planned(limit);
            let chunks = op.chunks().unwrap();
            let ms = time_ms(gpu, reps, |_| {
                op.run(&q, &qs, &pool, Some(&scales), &d_lookup, 0, &mut out)
                    .unwrap()
            });
            eprintln!(
                "{:<28} {:>9.1} us  end to end, logits at most {limit} bytes at once ({chunks} chunks of rows)",
                c.name,
                ms * 1e3
            );
            json!({"logits_limit_bytes": limit, "chunks": chunks, "our_us": ms * 1e3})
        })
        .collect();
    let pairs = visible_pairs(spec, cfg.mask);
    let flops = 2.0 * (h * 128) as f64 * pairs;
    let tf = flops / (logits_ms * 1e-3) / 1e12;
    let cached: usize = (0..spec.batch()).map(|b| spec.seqlen_k(b)).sum();
    let bytes = (cached * 132 + rows * h * (128 + 4)) as f64;
    let gbs = bytes / (ms * 1e-3) / 1e9;
    let decode = spec.as_batch().max_q_len() == 1;
    eprintln!(
        "{:<28} {:>9.1} us  logits {:.1} us {tf:>6.1} TFLOP/s, end to end {gbs:.0} GB/s in {chunks} chunk(s) (graph replay {:.1} us; seed {seed})",
        c.name, ms * 1e3, logits_ms * 1e3, graph_ms * 1e3
    );
    let (achieved, unit, frac) = if decode {
        (gbs, "GB/s", Some(gbs / copy_gbs))
    } else {
        (tf, "FP8 TFLOP/s", fp8_tf.map(|f| tf / f))
    };
    vec![json!({
        "case": c.name, "op": "mla_indexer", "our_us": ms * 1e3, "our_us_graph_replay": graph_ms * 1e3,
        "logits_us": logits_ms * 1e3, "logits_tflops": tf, "fp8_matmul_tflops": fp8_tf,
        "end_to_end_gbs": gbs, "bytes": bytes, "flops": flops,
        "achieved": achieved, "unit": unit, "fraction_of_limit": frac, "chunks": chunks, "chunked": chunked,
        "topk_cluster_forced": args.topk_cluster,
        "note": format!("64 heads, top-2048, causal, page 64, scales apart; our_us = logits + top-k \
            (in `chunks` chunks of rows; logits_us with all rows in one); \
            {} = {}", unit, if decode { "(132 B per cached token + q and qs) / end-to-end time, against the copy bandwidth" }
            else { "2 * 64 * 128 * visible pairs / logits time, against the FP8 matmul rate" }),
    })]
}

fn main() {
    let args = parse_args();
    if !Gpu::driver_present() {
        eprintln!("bench: no NVIDIA driver on this machine; nothing to measure");
        return;
    }
    let gpu = match &args.ptx {
        Some(path) => {
            let ptx =
                std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
            println!("kernels from {path}");
            Gpu::with_ptx(0, &ptx)
        }
        None => Gpu::new(0),
    }
    .expect("opening device 0");
    let props = gpu.props().clone();
    eprintln!(
        "device: {} ({} SMs, L2 {} MiB)",
        props.name,
        props.sm_count,
        props.l2_bytes >> 20
    );
    let copy_gbs = copy_bandwidth(&gpu);
    eprintln!("copy bandwidth (1 GiB D2D, read + write): {copy_gbs:.0} GB/s");
    launch_floor(&gpu, 16 * 4 * 128 * 128 * 2 * 2);
    // `--peers a.json,b.json`: the peer scripts' outputs, merged.
    let mut peers: BTreeMap<String, Value> = BTreeMap::new();
    for path in args.peers.iter().flat_map(|p| p.split(',')) {
        match std::fs::read_to_string(path)
            .map(|s| serde_json::from_str::<BTreeMap<String, Value>>(&s))
        {
            Ok(Ok(m)) => peers.extend(m),
            _ => eprintln!("bench: could not read peer results from {path}"),
        }
    }
    let tc_tflops = peers.get("_bf16_matmul_tflops").and_then(Value::as_f64);
    let fp8_tf = peers.get("_fp8_matmul_tflops").and_then(Value::as_f64);
    let date = {
        let days = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            / 86400;
        civil_date(days as i64)
    };
    let want = |n: &str| args.cases.as_ref().is_none_or(|c| c.iter().any(|x| x == n));
    let mut records = Vec::new();
    let mut all = Vec::new();
    for c in idx_cases().iter().filter(|c| want(c.name)) {
        all.extend(bench_indexer(
            &gpu,
            c,
            &args,
            copy_gbs,
            props.l2_bytes as usize,
        ));
    }
    for c in att_cases().iter().filter(|c| want(c.name)) {
        all.extend(bench_attention(
            &gpu,
            c,
            &args,
            copy_gbs,
            props.l2_bytes as usize,
        ));
    }
    for c in dense_cases().iter().filter(|c| want(c.name)) {
        all.extend(bench_dense_prefill(&gpu, c, &args));
    }
    for c in dense_fp8_cases().iter().filter(|c| want(c.name)) {
        all.extend(bench_dense_prefill_fp8(&gpu, c, &args));
    }
    for (name, rows, n) in [
        ("topk-64x128k", 64, 128 * 1024),
        ("topk-1x128k", 1, 128 * 1024),
        // The top-k of `mla-idx-decode-b64-64k` alone.
        ("topk-64x64k", 64, 64 * 1024),
    ] {
        if want(name) {
            all.extend(bench_topk(&gpu, name, rows, n, &args, copy_gbs));
        }
    }
    for c in mla_cases().iter().filter(|c| want(c.name)) {
        all.extend(bench_mla_indexer(&gpu, c, &args, copy_gbs, fp8_tf));
    }
    for (name, len) in [("msa-prefill-8k", 8 * 1024), ("msa-prefill-32k", 32 * 1024)] {
        if want(name) {
            all.extend(bench_prefill_attention(&gpu, name, len, &args));
        }
    }
    {
        for mut r in all {
            let c = r["case"].as_str().unwrap().to_string();
            let limit = match r["unit"].as_str() {
                Some("TFLOP/s") => tc_tflops,
                Some("FP8 TFLOP/s") => fp8_tf,
                _ => None,
            };
            if let Some(l) = limit {
                r["fraction_of_limit"] = json!(r["achieved"].as_f64().unwrap() / l);
            }
            if let Some(Value::Object(p)) = peers.get(&c) {
                let best = p
                    .iter()
                    .filter_map(|(k, v)| Some((k, v.as_f64()?)))
                    .min_by(|a, b| a.1.total_cmp(&b.1));
                if let Some((name, us)) = best {
                    r["peer_name"] = json!(name);
                    r["peer_us"] = json!(us);
                    r["speedup_vs_peer"] = json!(us / r["our_us"].as_f64().unwrap());
                }
                r["peers"] = Value::Object(p.clone());
            }
            r["gpu"] = json!(props.name);
            r["date"] = json!(date);
            r["copy_gbs"] = json!(copy_gbs);
            // The limits measured in this call, in every record (the charts
            // draw each case against its own record's).
            if let Some(tc) = tc_tflops {
                r["bf16_matmul_tflops"] = json!(tc);
            }
            if let Some(f) = fp8_tf {
                r["fp8_matmul_tflops"] = json!(f);
            }
            r["command"] =
                json!("cargo xtask gpu-bundle && bundle/run.sh bench (see BENCHMARKS.md)");
            records.push(r);
        }
    }
    println!("\n| case | ours (us) | ours, graph replay (us) | achieved | of limit | peer | peer (us) | speedup |");
    println!("|---|---|---|---|---|---|---|---|");
    for r in &records {
        println!(
            "| {} | {:.1} | {} | {:.1} {} | {} | {} | {} | {} |",
            r["case"].as_str().unwrap(),
            r["our_us"].as_f64().unwrap(),
            r["our_us_graph_replay"]
                .as_f64()
                .map_or("-".into(), |v| format!("{v:.1}")),
            r["achieved"].as_f64().unwrap(),
            r["unit"].as_str().unwrap(),
            r["fraction_of_limit"]
                .as_f64()
                .map_or("-".into(), |f| format!("{:.0}%", f * 100.0)),
            r["peer_name"].as_str().unwrap_or("-"),
            r["peer_us"]
                .as_f64()
                .map_or("-".into(), |v| format!("{v:.1}")),
            r["speedup_vs_peer"]
                .as_f64()
                .map_or("-".into(), |v| format!("{v:.2}x")),
        );
    }
    for (unit, rate, key) in [
        ("TFLOP/s", tc_tflops, "_bf16_matmul_tflops"),
        ("FP8 TFLOP/s", fp8_tf, "_fp8_matmul_tflops"),
    ] {
        if rate.is_none() && records.iter().any(|r| r["unit"] == unit) {
            eprintln!(
                "bench: no {key} in the --peers files: the {unit} cases have no limit \
                 (fraction_of_limit null); the peer scripts measure it in the same call"
            );
        }
    }
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_string_pretty(&records).unwrap()).unwrap();
        eprintln!("wrote {path}");
    }
    if let Some(dir) = &args.charts {
        draw_charts(&args, &records, dir);
    }
}

/// `--charts DIR`: the SVG charts of this run's records, named after
/// `--out`'s stem; cases without peers in the records are looked up in the
/// `--peers` files.
fn draw_charts(args: &Args, records: &[Value], dir: &str) {
    use sparse_attn_tests::charts::{Options, Results};
    let out = args.out.as_deref().map(std::path::Path::new);
    let name = out
        .and_then(|p| p.file_stem())
        .map_or("bench".into(), |s| s.to_string_lossy().into_owned());
    let source = out
        .and_then(|p| p.file_name())
        .map_or("this bench run".into(), |s| {
            s.to_string_lossy().into_owned()
        });
    let peer_files: Vec<std::path::PathBuf> = args
        .peers
        .iter()
        .flat_map(|p| p.split(','))
        .map(std::path::PathBuf::from)
        .filter(|p| p.is_file())
        .collect();
    match Results::from_records(&name, &source, records, &peer_files)
        .and_then(|r| r.write(std::path::Path::new(dir), &Options::default()))
    {
        Ok(files) => eprintln!("wrote {} charts into {dir}", files.len()),
        Err(e) => {
            eprintln!("bench: drawing the charts into {dir}: {e}");
            std::process::exit(1);
        }
    }
}

/// `YYYY-MM-DD` of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_date(z: i64) -> String {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

//! The engine-facing API: a handle on the caller's stream and context
//! (`Gpu::from_stream`, `Gpu::from_raw`), buffers as views and raw
//! pointers, shared workspaces (`workspace_size`, `new_in`), and one plan
//! serving every layer of a step (`run` takes the layer).
//!
//! The CPU tests check the workspace arithmetic and the argument errors;
//! the GPU tests (`SKIP` without a driver) compare each new path with the
//! CPU reference or bit for bit with the plain path (the kernels are
//! deterministic). The seed of every random case is printed
//! (`SPARSE_ATTN_SEED=<n>` replays it).

use cudarc::driver::{CudaContext, DevicePtr};
use half::bf16;
use rand::Rng;
use sparse_attn::workspace::WORKSPACE_ALIGN;
use sparse_attn::{
    DensePrefill, DeviceProps, Error, Gpu, MlaIndexer, MsaAttention, MsaAttentionConfig,
    MsaIndexer, MsaIndexerConfig, MsaStep, PagedLayout, PagedLayoutExt, RawBuffer, StepInputs,
    TopK, Workspace,
};
use sparse_attn_reference::msa_attention as att_reference;
use sparse_attn_reference::msa_indexer as idx_reference;
use sparse_attn_tests::data::{paged_pool, seeded, tensor, Fill, RaggedSpec};
use sparse_attn_tests::harness::{gpu_or_skip as gpu, AttentionInputs};

/// An H100's properties, for the workspace arithmetic without a GPU.
fn h100() -> DeviceProps {
    DeviceProps {
        name: "H100 (test)".into(),
        compute_capability: (9, 0),
        sm_count: 132,
        max_smem_per_block_optin: 227 * 1024,
        smem_per_sm: 228 * 1024,
        l2_bytes: 50 << 20,
    }
}

fn align(bytes: usize) -> usize {
    bytes.next_multiple_of(WORKSPACE_ALIGN)
}

#[test]
fn workspace_sizes_follow_the_bounds() {
    let (idx, att) = (
        MsaIndexerConfig::minimax_m3(),
        MsaAttentionConfig::minimax_m3(),
    );
    // The indexer's block scores: 4 bytes * heads * rows * blocks.
    let blocks = 32768 / 128;
    assert_eq!(
        MsaIndexer::workspace_size(&idx, 128, 32768),
        align(4 * idx.num_index_heads * 128 * blocks)
    );
    assert_eq!(
        MsaIndexer::workspace_size(&idx, 1, 1),
        align(4 * idx.num_index_heads)
    );
    // A context one key past a block needs one more block.
    assert!(
        MsaIndexer::workspace_size(&idx, 8, 32769) > MsaIndexer::workspace_size(&idx, 8, 32768)
    );

    // The attention: the larger of the split-K partials (device-bound) and
    // the block-major partials and CSR (rows-bound).
    let props = h100();
    let part_cap = 4 * 132;
    let decode = align(4 * part_cap * att.n_heads * 128) + align(4 * part_cap * att.n_heads);
    assert_eq!(MsaAttention::workspace_size(&props, &att, 1), decode);
    let rows = 32768;
    let parts = rows * att.n_heads * att.topk;
    let edges = att.n_kv_heads * rows * att.topk;
    let bm = align(parts * 128 * 2) + align(2 * parts * 4) + align(edges * 8) + align(edges * 4);
    assert!(bm > decode);
    assert_eq!(MsaAttention::workspace_size(&props, &att, rows), bm);
    for r in [1, 64, 4096] {
        assert!(
            MsaAttention::workspace_size(&props, &att, r)
                <= MsaAttention::workspace_size(&props, &att, 2 * r)
        );
    }

    // A step: one workspace for both ops, the larger of the two.
    for (r, ctx) in [(1, 1 << 17), (128, 32768), (32768, 32768)] {
        assert_eq!(
            MsaStep::workspace_size(&props, &idx, &att, r, ctx),
            MsaIndexer::workspace_size(&idx, r, ctx)
                .max(MsaAttention::workspace_size(&props, &att, r))
        );
    }

    // The MLA indexer's logits: rows * (context rounded up to 128) f32.
    assert_eq!(MlaIndexer::workspace_size(2048, 1 << 17), 1 << 30);
    assert_eq!(MlaIndexer::workspace_size(3, 129), align(4 * 3 * 256));
    // No workspace at all.
    assert_eq!(TopK::workspace_size(), 0);
    assert_eq!(DensePrefill::workspace_size(), 0);
}

#[test]
fn the_layer_is_checked_at_run_with_a_named_error() {
    let layout = PagedLayout::index_k(4, 3, 128, 128);
    assert!(layout.check_layer(2).is_ok());
    match layout.check_layer(3) {
        Err(Error::InvalidArgument {
            arg,
            expected,
            actual,
        }) => {
            assert_eq!(arg, "layer");
            assert!(expected.contains("num_layers = 3"), "{expected}");
            assert_eq!(actual, "3");
        }
        other => panic!("expected an error naming `layer`, got {other:?}"),
    }
}

#[test]
fn wrong_context_names_the_argument() {
    let e = Error::WrongContext {
        arg: "q",
        expected: "device 0 (context 0x1)".into(),
        actual: "device 1 (context 0x2)".into(),
    };
    assert_eq!(e.arg(), Some("q"));
    let text = e.to_string();
    assert!(
        text.contains("`q`") && text.contains("device 0") && text.contains("device 1"),
        "{text}"
    );
}

// ---------------------------------------------------------------- GPU tests

/// One decode indexer case on `gpu` (a 2-layer index-K pool), run on
/// `layer`; returns the selections and checks them against the reference.
fn indexer_on(gpu: &Gpu, rng: &mut impl Rng, layer: usize) -> Vec<i32> {
    let cfg = MsaIndexerConfig::minimax_m3();
    let spec = RaggedSpec::decode(vec![3000, 129, 17000]);
    let pool = paged_pool(rng, &spec, 1, 2, 1, 128, 128, 2, Fill::SmallInts);
    let q = tensor(
        rng,
        spec.num_rows() * cfg.num_index_heads * 128,
        Fill::SmallInts,
    );
    let mut idx = MsaIndexer::new(gpu, cfg).unwrap();
    idx.plan(&spec.as_batch(), &pool.table(), &pool.layout)
        .unwrap();
    let n = cfg.num_index_heads * spec.num_rows() * cfg.topk;
    let mut out = gpu.upload(&vec![0x7ead_beef_i32; n]).unwrap();
    let (dq, dk, dl) = (
        gpu.upload(&q).unwrap(),
        gpu.upload(&pool.data).unwrap(),
        gpu.upload(&pool.lookup).unwrap(),
    );
    idx.run(&dq, &dk, &dl, layer, &mut out).unwrap();
    let got = gpu.download(&out).unwrap();
    let scores = idx_reference::block_scores(&q, &spec.as_batch(), &pool.cache(), layer, &cfg);
    idx_reference::check_exact(&got, &scores, &cfg).unwrap();
    got
}

/// `Gpu::from_stream` on a stream of a context with cudarc's event
/// tracking on (as candle's): launches go to that stream, the tracking is
/// left as it was, the results match the reference; `Gpu::from_raw` on the
/// same raw handles gives the same bits.
#[test]
fn gpu_from_stream_and_from_raw_run_on_the_callers_stream() {
    let Some(_gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    let ctx = CudaContext::new(0).unwrap();
    assert!(ctx.is_event_tracking());
    let stream = ctx.new_stream().unwrap();
    let user = Gpu::from_stream(stream.clone()).unwrap();
    assert_eq!(user.stream().cu_stream(), stream.cu_stream());
    assert!(
        ctx.is_event_tracking(),
        "a borrowed context's tracking must be left on"
    );
    let a = indexer_on(&user, &mut rng, 1);

    // SAFETY: `ctx` and `stream` outlive `raw` and everything it enqueues
    // (synchronised below).
    let raw = unsafe { Gpu::from_raw(ctx.cu_ctx(), stream.cu_stream()) }.unwrap();
    assert_eq!(raw.stream().cu_stream(), stream.cu_stream());
    assert_eq!(raw.context().cu_ctx(), ctx.cu_ctx());
    let (mut rng2, _) = seeded(Some(seed));
    let b = indexer_on(&raw, &mut rng2, 1);
    stream.synchronize().unwrap();
    assert_eq!(a, b, "from_raw and from_stream differ");

    // A non-primary context (wrapped, never destroyed by the handle) and a
    // stream of it.
    let np = CudaContext::new_non_primary(0, 0).unwrap();
    let np_stream = np.new_stream().unwrap();
    {
        // SAFETY: `np` and `np_stream` outlive the handle (this block) and
        // its work (synchronised below).
        let raw = unsafe { Gpu::from_raw(np.cu_ctx(), np_stream.cu_stream()) }.unwrap();
        assert_eq!(raw.context().cu_ctx(), np.cu_ctx());
        let (mut rng3, _) = seeded(Some(seed));
        let c = indexer_on(&raw, &mut rng3, 1);
        np_stream.synchronize().unwrap();
        assert_eq!(a, c, "from_raw on a non-primary context differs");
    }
}

/// `q` and `out` as views at an offset inside bigger buffers (and the
/// other inputs as `RawBuffer`s) give the plain slices' bits, and the
/// bytes around `out` are untouched.
#[test]
fn gpu_views_with_offsets_match_plain_slices() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    let c = MsaAttentionConfig::minimax_m3();
    for spec in [
        RaggedSpec::decode(vec![700, 4000, 129]),
        RaggedSpec::prefill(&[150, 3], &[40, 300]),
    ] {
        let inp = AttentionInputs::random(&mut rng, spec, &c, 0.1);
        let rows = inp.spec.num_rows();
        let n = rows * c.n_heads * 128;
        let plain = sparse_attn_tests::harness::run_attention(&gpu, &c, &inp, None, None);

        let mut att = MsaAttention::new(&gpu, c, rows).unwrap();
        att.plan(&inp.spec.as_batch(), &inp.pool.table(), &inp.pool.layout)
            .unwrap();
        // q at row 3 of a buffer with 3 rows before and 2 after.
        let row = c.n_heads * 128;
        let mut big_q = tensor(&mut rng, 3 * row, Fill::Normal);
        big_q.extend_from_slice(&inp.q);
        big_q.extend(tensor(&mut rng, 2 * row, Fill::Normal));
        let big_q = gpu.upload(&big_q).unwrap();
        let q = big_q.slice(3 * row..3 * row + n);
        let guard = bf16::from_bits(0x7fc3);
        let mut big_out = gpu.upload(&vec![guard; n + 5 * row]).unwrap();
        let mut lse = gpu.zeros::<f32>(rows * c.n_heads).unwrap();
        let kv = gpu.upload(&inp.pool.data).unwrap();
        let lookup = gpu.upload(&inp.pool.lookup).unwrap();
        let di = gpu.upload(&inp.d_indices).unwrap();
        // SAFETY: the slices outlive the raw buffers and the work below
        // (downloads wait for the stream).
        let (kv_raw, lookup_raw) = unsafe {
            (
                RawBuffer::<bf16>::new(&gpu, kv.device_ptr(gpu.stream()).0, kv.len()),
                RawBuffer::<u32>::new(&gpu, lookup.device_ptr(gpu.stream()).0, lookup.len()),
            )
        };
        {
            let mut out = big_out.slice_mut(2 * row..2 * row + n);
            att.run(&q, &kv_raw, &lookup_raw, &di, 1, &mut out, Some(&mut lse))
                .unwrap();
        }
        let all = gpu.download(&big_out).unwrap();
        let (out, lse) = (
            all[2 * row..2 * row + n].to_vec(),
            gpu.download(&lse).unwrap(),
        );
        assert!(
            all[..2 * row]
                .iter()
                .chain(&all[2 * row + n..])
                .all(|v| v.to_bits() == guard.to_bits()),
            "a write outside the `out` view"
        );
        sparse_attn_tests::harness::assert_same_bits(&plain, &(out, lse));

        // A view that does not start on a 16-byte boundary is refused.
        let odd = big_q.slice(1..1 + n);
        let mut out = gpu.zeros::<bf16>(n).unwrap();
        match att.run(&odd, &kv, &lookup, &di, 1, &mut out, None) {
            Err(Error::InvalidArgument { arg: "q", .. }) => {}
            other => panic!("an unaligned `q`: expected an error naming it, got {other:?}"),
        }
    }
}

/// A buffer of another context is `Error::WrongContext` naming it.
#[test]
fn gpu_buffer_of_another_context_is_rejected() {
    let Some(gpu) = gpu() else { return };
    let c = MsaAttentionConfig::minimax_m3();
    let other = CudaContext::new_non_primary(0, 0).unwrap();
    let foreign = other
        .default_stream()
        .alloc_zeros::<bf16>(c.n_heads * 128)
        .unwrap();
    let spec = RaggedSpec::decode(vec![100]);
    let mut rng = seeded(Some(1)).0;
    let inp = AttentionInputs::random(&mut rng, spec, &c, 0.0);
    let mut att = MsaAttention::new(&gpu, c, 1).unwrap();
    att.plan(&inp.spec.as_batch(), &inp.pool.table(), &inp.pool.layout)
        .unwrap();
    let kv = gpu.upload(&inp.pool.data).unwrap();
    let lookup = gpu.upload(&inp.pool.lookup).unwrap();
    let di = gpu.upload(&inp.d_indices).unwrap();
    let mut out = gpu.zeros::<bf16>(c.n_heads * 128).unwrap();
    match att.run(&foreign, &kv, &lookup, &di, 0, &mut out, None) {
        Err(Error::WrongContext { arg: "q", .. }) => {}
        other => panic!("a foreign `q`: expected WrongContext naming it, got {other:?}"),
    }
    // A workspace of another context, and one too small, are refused too.
    let ws = Workspace::from_slice(other.default_stream().alloc_zeros::<u8>(1 << 20).unwrap());
    match MsaAttention::new_in(&gpu, c, 1, &ws) {
        Err(Error::WrongContext {
            arg: "workspace", ..
        }) => {}
        other => panic!("a foreign workspace: got {:?}", other.err()),
    }
    let small = Workspace::new(&gpu, 256).unwrap();
    assert_eq!(
        MsaAttention::new_in(&gpu, c, 1, &small)
            .err()
            .and_then(|e| e.arg()),
        Some("workspace")
    );
    // The foreign buffers are freed on their own context's stream.
    other.bind_to_thread().unwrap();
    drop((foreign, ws));
}

/// The random data of a step whose pools have `layers` layers.
struct LayeredStep {
    spec: RaggedSpec,
    kv: sparse_attn_tests::data::PagedPool,
    ik: sparse_attn_tests::data::PagedPool,
    q: Vec<bf16>,
    qi: Vec<bf16>,
}

impl LayeredStep {
    fn random(rng: &mut impl Rng, spec: RaggedSpec, layers: usize) -> Self {
        let (att, idx) = (
            MsaAttentionConfig::minimax_m3(),
            MsaIndexerConfig::minimax_m3(),
        );
        let kv = paged_pool(
            rng,
            &spec,
            2,
            layers,
            att.n_kv_heads,
            128,
            128,
            2,
            Fill::Normal,
        );
        let ik = paged_pool(rng, &spec, 1, layers, 1, 128, 128, 2, Fill::Normal);
        let rows = spec.num_rows();
        let q = tensor(rng, rows * att.n_heads * 128, Fill::Normal);
        let qi = tensor(rng, rows * idx.num_index_heads * 128, Fill::Normal);
        LayeredStep {
            spec,
            kv,
            ik,
            q,
            qi,
        }
    }
}

/// One `MsaStep` plan serves both layers of a step, over a caller's
/// workspace: each layer's run matches that layer's reference (the
/// indexer's selection, and the attention on those selections).
#[test]
fn gpu_one_plan_serves_every_layer_of_a_step() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    let (att, idx) = (
        MsaAttentionConfig::minimax_m3(),
        MsaIndexerConfig::minimax_m3(),
    );
    for spec in [
        RaggedSpec::decode(vec![5000, 128, 40000]),
        RaggedSpec::prefill(&[200, 1], &[100, 3000]),
    ] {
        let d = LayeredStep::random(&mut rng, spec, 2);
        let rows = d.spec.num_rows();
        let ctx = (0..d.spec.batch())
            .map(|b| d.spec.seqlen_k(b))
            .max()
            .unwrap();
        let bytes = MsaStep::workspace_size(gpu.props(), &idx, &att, rows, ctx);
        let ws = Workspace::new(&gpu, bytes).unwrap();
        let mut step = MsaStep::new_in(&gpu, idx, att, rows, &ws).unwrap();
        assert!(step.indexer.workspace().same_memory(&ws));
        assert!(step.attention.workspace().same_memory(&ws));
        step.plan(
            &d.spec.as_batch(),
            &d.ik.table(),
            &d.ik.layout,
            &d.kv.table(),
            &d.kv.layout,
        )
        .unwrap();
        let (q, qi, kv, ik) = (
            gpu.upload(&d.q).unwrap(),
            gpu.upload(&d.qi).unwrap(),
            gpu.upload(&d.kv.data).unwrap(),
            gpu.upload(&d.ik.data).unwrap(),
        );
        let (kv_lookup, ik_lookup) = (
            gpu.upload(&d.kv.lookup).unwrap(),
            gpu.upload(&d.ik.lookup).unwrap(),
        );
        let inp = StepInputs {
            q_index: &qi,
            k_index: &ik,
            index_lookup: &ik_lookup,
            q: &q,
            kv_cache: &kv,
            kv_lookup: &kv_lookup,
        };
        let mut outs = Vec::new();
        for layer in [1, 0] {
            let n = rows * att.n_heads;
            let mut out = gpu.upload(&vec![bf16::from_bits(0x7fc1); n * 128]).unwrap();
            let mut lse = gpu.upload(&vec![f32::NAN; n]).unwrap();
            step.run(&inp, layer, &mut out, Some(&mut lse)).unwrap();
            let sel = gpu.download(step.d_indices()).unwrap();
            let scores =
                idx_reference::block_scores(&d.qi, &d.spec.as_batch(), &d.ik.cache(), layer, &idx);
            idx_reference::check_selection(&sel, &scores, &idx)
                .unwrap_or_else(|e| panic!("layer {layer}: indexer: {e}"));
            let want = att_reference::msa_attention(
                &d.q,
                &d.spec.as_batch(),
                &d.kv.cache(),
                layer,
                &sel,
                &att,
            );
            let (out, lse) = (gpu.download(&out).unwrap(), gpu.download(&lse).unwrap());
            att_reference::check_attention(&out, Some(&lse), &want, &att)
                .unwrap_or_else(|e| panic!("layer {layer}: attention: {e}"));
            outs.push(out);
        }
        assert!(
            outs[0]
                .iter()
                .zip(&outs[1])
                .any(|(a, b)| a.to_bits() != b.to_bits()),
            "the two layers gave the same output: the layer was not used"
        );
        // A layer past the pools is refused at run.
        let mut out = gpu.zeros::<bf16>(rows * att.n_heads * 128).unwrap();
        assert_eq!(
            step.run(&inp, 2, &mut out, None)
                .err()
                .and_then(|e| e.arg()),
            Some("layer")
        );
    }
}

/// One workspace serves two different ops (an indexer and an attention on
/// unrelated data) whose runs interleave on the stream: each gives the
/// bits of the same op over a private workspace.
#[test]
fn gpu_shared_workspace_serves_two_ops() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    let (att, idx) = (
        MsaAttentionConfig::minimax_m3(),
        MsaIndexerConfig::minimax_m3(),
    );
    // Attention inputs (prefill: the block-major scratch) and indexer
    // inputs (decode, long contexts: a large score scratch).
    let a_spec = RaggedSpec::prefill(&[300, 20], &[0, 2000]);
    let a_in = AttentionInputs::random(&mut rng, a_spec, &att, 0.1);
    let i_spec = RaggedSpec::decode(vec![60000, 3000, 90000, 7]);
    let i_pool = paged_pool(&mut rng, &i_spec, 1, 1, 1, 128, 128, 2, Fill::Normal);
    let i_q = tensor(
        &mut rng,
        i_spec.num_rows() * idx.num_index_heads * 128,
        Fill::Normal,
    );

    let a_rows = a_in.spec.num_rows();
    let bytes = MsaIndexer::workspace_size(&idx, i_spec.num_rows(), 90001)
        .max(MsaAttention::workspace_size(gpu.props(), &att, a_rows));
    let ws = Workspace::new(&gpu, bytes).unwrap();
    let mut shared_idx = MsaIndexer::new_in(&gpu, idx, &ws).unwrap();
    let mut shared_att = MsaAttention::new_in(&gpu, att, a_rows, &ws).unwrap();
    let mut own_idx = MsaIndexer::new(&gpu, idx).unwrap();
    let mut own_att = MsaAttention::new(&gpu, att, a_rows).unwrap();
    assert!(!own_idx.workspace().same_memory(&ws));
    for op in [&mut shared_idx, &mut own_idx] {
        op.plan(&i_spec.as_batch(), &i_pool.table(), &i_pool.layout)
            .unwrap();
    }
    for op in [&mut shared_att, &mut own_att] {
        op.plan(&a_in.spec.as_batch(), &a_in.pool.table(), &a_in.pool.layout)
            .unwrap();
    }
    let (iq, ik, il) = (
        gpu.upload(&i_q).unwrap(),
        gpu.upload(&i_pool.data).unwrap(),
        gpu.upload(&i_pool.lookup).unwrap(),
    );
    let (aq, akv, al, adi) = (
        gpu.upload(&a_in.q).unwrap(),
        gpu.upload(&a_in.pool.data).unwrap(),
        gpu.upload(&a_in.pool.lookup).unwrap(),
        gpu.upload(&a_in.d_indices).unwrap(),
    );
    let n_sel = idx.num_index_heads * i_spec.num_rows() * idx.topk;
    let n_out = a_rows * att.n_heads * 128;
    let run_idx = |op: &MsaIndexer| {
        let mut out = gpu.upload(&vec![-7i32; n_sel]).unwrap();
        op.run(&iq, &ik, &il, 0, &mut out).unwrap();
        out
    };
    let run_att = |op: &MsaAttention| {
        let mut out = gpu.zeros::<bf16>(n_out).unwrap();
        let mut lse = gpu.zeros::<f32>(a_rows * att.n_heads).unwrap();
        op.run(&aq, &akv, &al, &adi, 1, &mut out, Some(&mut lse))
            .unwrap();
        (out, lse)
    };
    // Interleaved: indexer, attention, indexer, attention on the shared bytes.
    let s1 = run_idx(&shared_idx);
    let (o1, l1) = run_att(&shared_att);
    let s2 = run_idx(&shared_idx);
    let (o2, l2) = run_att(&shared_att);
    let want_sel = gpu.download(&run_idx(&own_idx)).unwrap();
    let (wo, wl) = run_att(&own_att);
    let want = (gpu.download(&wo).unwrap(), gpu.download(&wl).unwrap());
    for s in [s1, s2] {
        assert_eq!(
            gpu.download(&s).unwrap(),
            want_sel,
            "shared indexer differs"
        );
    }
    for (o, l) in [(o1, l1), (o2, l2)] {
        let got = (gpu.download(&o).unwrap(), gpu.download(&l).unwrap());
        sparse_attn_tests::harness::assert_same_bits(&want, &got);
    }
    let scores = idx_reference::block_scores(&i_q, &i_spec.as_batch(), &i_pool.cache(), 0, &idx);
    idx_reference::check_selection(&want_sel, &scores, &idx).unwrap();
    let reference = att_reference::msa_attention(
        &a_in.q,
        &a_in.spec.as_batch(),
        &a_in.pool.cache(),
        1,
        &a_in.d_indices,
        &att,
    );
    att_reference::check_attention(&want.0, Some(&want.1), &reference, &att).unwrap();

    // A batch beyond the workspace is refused at plan, naming it: rows of
    // 2^20 cached tokens (8193 blocks of f32 scores per head), enough of
    // them to need more than the workspace holds.
    let per_row = 4 * idx.num_index_heads * 8193;
    let n = ws.bytes() / per_row + 1;
    let long = RaggedSpec::decode(vec![1 << 20; n]);
    let lookup: Vec<u32> = vec![0; n * 8200];
    let layout = PagedLayout::index_k(1, 1, 128, 128);
    assert_eq!(
        shared_idx
            .plan(
                &long.as_batch(),
                &sparse_attn::PageTable::new(&lookup, 8200),
                &layout
            )
            .err()
            .and_then(|e| e.arg()),
        Some("workspace")
    );
}

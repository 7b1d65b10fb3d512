//! The FP8 (e4m3) dense flash prefill on the GPU against the f64 reference
//! of the exactly decoded e4m3 inputs (`dense_prefill_fp8`): every mask ×
//! paged / contiguous K/V × self / cross attention; ragged lengths around
//! the 128-row and 128-key tiles (1, 63, 64, 65, 127, 128, 129, 300);
//! shuffled page tables of 16- and 128-token pages with garbage (NaN,
//! ±Inf) in unwritten page slots; sinks; GQA groups 1, 4, 8; per-tensor and
//! per-KV-head descales; chunked prefill; a run captured in a CUDA graph;
//! a device-side page table corrupted after `plan` (no fault); the named
//! errors of bad descales; bf16 queries against the e4m3 cache
//! (quantised row by row in the kernel; the reference quantises them the
//! same way, `DenseQ::Bf16RowQuantised`), with rows of very different
//! magnitudes and an all-zero row.
//!
//! GPU tests print `SKIP` where there is no NVIDIA driver; every random case
//! prints its seed (`SPARSE_ATTN_SEED=<n>` replays it). Outputs are poisoned
//! (NaN bits) before every launch and must all be written. Tolerance:
//! `check_dense_prefill_fp8`, which adds to the bf16 bound the effect of
//! rounding every softmax weight P to e4m3 before P V (the kernel's choice,
//! as FlashAttention-3's).

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use sparse_attn::batch::KvDtype;
use sparse_attn::{
    bf16, CudaSlice, DensePrefillConfig, DensePrefillFp8, DevicePtr, Error, Fp8Descales, Gpu,
    KvBuffers, KvLayout, Mask,
};
use sparse_attn_abi::dense::{DP8_WIDE_N, DP_BLOCK_N};
use sparse_attn_abi::fp8::f32_to_e4m3;
use sparse_attn_reference::dense_prefill::{
    check_dense_prefill_fp8, dense_prefill_fp8, DenseKvFp8, DenseQ, Descale, KvDescales,
};
use sparse_attn_reference::paged::PagedCacheFp8;
use sparse_attn_tests::data::{
    corrupt_lookup, paged_pool, sample, seeded, Fill, PagedPool, RaggedSpec,
};
use sparse_attn_tests::harness::{
    assert_no_fault, capture_and_replay, gpu_or_skip as gpu, poisoned_run, POISON_OUT,
};

const LAYERS: usize = 2;
const LAYER: usize = 1;

/// One case: e4m3 Q, K/V paged (the e4m3 copy of a bf16 pool, garbage in
/// its unwritten slots) or contiguous, descales, sinks.
struct Case {
    spec: RaggedSpec,
    q: Vec<u8>,
    /// bf16 queries instead of `q` (the mixed case).
    q_bf16: Option<Vec<bf16>>,
    /// The pool's bf16 original (its layout and page table) and its bytes.
    pool: Option<(PagedPool, Vec<u8>)>,
    k: Vec<u8>,
    v: Vec<u8>,
    kv_row_offsets: Vec<u32>,
    sinks: Option<Vec<f32>>,
    q_descale: f32,
    k_descale: Vec<f32>,
    v_descale: Vec<f32>,
    cfg: DensePrefillConfig,
    /// `set_key_tile`'s argument (`None`: the plan's choice).
    key_tile: Option<u32>,
}

fn e4m3(rng: &mut ChaCha8Rng, n: usize) -> Vec<u8> {
    (0..n)
        .map(|_| f32_to_e4m3(sample(rng, Fill::Normal) * 2.0))
        .collect()
}

impl Case {
    /// Q lengths `q_lens`; paged (`page_size`) with `cache` keys before
    /// them, or contiguous with `kv_lens` keys (`cache` then gives the
    /// positions).
    fn random(
        rng: &mut ChaCha8Rng,
        spec: RaggedSpec,
        cfg: DensePrefillConfig,
        page_size: Option<usize>,
        kv_lens: Option<&[u32]>,
        per_head: bool,
    ) -> Self {
        let (pool, k, v, kv_row_offsets) = match (page_size, kv_lens) {
            (Some(ps), None) => {
                let pool = paged_pool(
                    rng,
                    &spec,
                    2,
                    LAYERS,
                    cfg.n_kv_heads,
                    128,
                    ps,
                    3,
                    Fill::Normal,
                );
                let bytes = pool
                    .data
                    .iter()
                    .map(|x| f32_to_e4m3(x.to_f32() * 2.0))
                    .collect();
                (Some((pool, bytes)), vec![], vec![], vec![])
            }
            (None, Some(l)) => {
                let mut offs = vec![0u32];
                for &n in l {
                    offs.push(offs.last().unwrap() + n);
                }
                let total = *offs.last().unwrap() as usize * cfg.n_kv_heads * 128;
                (None, e4m3(rng, total), e4m3(rng, total), offs)
            }
            _ => panic!("a case is paged or contiguous"),
        };
        let q = e4m3(rng, spec.num_rows() * cfg.n_heads * 128);
        let sinks = cfg.sinks.then(|| {
            (0..cfg.n_heads)
                .map(|_| rng.gen_range(-4.0f32..4.0))
                .collect()
        });
        let n = if per_head { cfg.n_kv_heads } else { 1 };
        let mut descale = || {
            (0..n)
                .map(|_| rng.gen_range(0.05f32..0.5))
                .collect::<Vec<_>>()
        };
        let (k_descale, v_descale) = (descale(), descale());
        Case {
            spec,
            q,
            q_bf16: None,
            pool,
            k,
            v,
            kv_row_offsets,
            sinks,
            q_descale: rng.gen_range(0.05f32..0.5),
            k_descale,
            v_descale,
            cfg,
            key_tile: None,
        }
    }

    /// The case with the key tile fixed.
    fn with_key_tile(mut self, keys: u32) -> Self {
        self.key_tile = Some(keys);
        self
    }

    /// The mixed case: bf16 queries, each (token, head) row normal times a
    /// magnitude of 1e-3, 1 or 30, and the first row of head 0 all zeros.
    fn with_bf16_q(mut self, rng: &mut ChaCha8Rng) -> Self {
        let mut q: Vec<bf16> = Vec::with_capacity(self.q.len());
        for _ in 0..self.q.len() / 128 {
            let m = [1e-3f32, 1.0, 30.0][rng.gen_range(0..3)];
            q.extend((0..128).map(|_| bf16::from_f32(sample(rng, Fill::Normal) * m)));
        }
        q[..128].fill(bf16::ZERO);
        self.q_bf16 = Some(q);
        self
    }

    fn layout(&self) -> KvLayout<'_> {
        match &self.pool {
            Some((p, _)) => KvLayout::Paged {
                layout: sparse_attn::batch::PagedLayout {
                    dtype: KvDtype::Fp8E4m3,
                    ..p.layout
                },
                pages: p.table(),
            },
            None => KvLayout::Ragged {
                kv_row_offsets: &self.kv_row_offsets,
            },
        }
    }

    fn descale(v: &[f32]) -> Descale<'_> {
        if v.len() == 1 {
            Descale::PerTensor(v[0])
        } else {
            Descale::PerKvHead(v)
        }
    }

    fn reference(&self) -> sparse_attn_reference::dense_prefill::Fp8Reference {
        let kv = match &self.pool {
            Some((p, bytes)) => DenseKvFp8::Paged {
                cache: PagedCacheFp8 {
                    layout: sparse_attn::batch::PagedLayout {
                        dtype: KvDtype::Fp8E4m3,
                        ..p.layout
                    },
                    data: bytes,
                    scales: None,
                    pages: p.table(),
                },
                layer: LAYER,
            },
            None => DenseKvFp8::Ragged {
                k: &self.k,
                v: &self.v,
                kv_row_offsets: &self.kv_row_offsets,
            },
        };
        let d = KvDescales {
            k: Self::descale(&self.k_descale),
            v: Self::descale(&self.v_descale),
        };
        let q = match &self.q_bf16 {
            Some(q) => DenseQ::Bf16RowQuantised(q),
            None => DenseQ::Fp8 {
                q: &self.q,
                descale: self.q_descale,
            },
        };
        dense_prefill_fp8(
            &q,
            &self.spec.as_batch(),
            &kv,
            &d,
            self.sinks.as_deref(),
            &self.cfg,
        )
    }
}

/// The case's device buffers.
struct Dev {
    q: CudaSlice<u8>,
    q_bf16: Option<CudaSlice<bf16>>,
    a: CudaSlice<u8>,
    b: CudaSlice<u8>,
    lookup: CudaSlice<u32>,
    sinks: Option<CudaSlice<f32>>,
    descales: [CudaSlice<f32>; 3],
}

impl Dev {
    fn new(gpu: &Gpu, c: &Case) -> Self {
        let (a, b, lookup) = match &c.pool {
            Some((p, bytes)) => (
                gpu.upload(bytes).unwrap(),
                gpu.zeros(1).unwrap(),
                gpu.upload(&p.lookup).unwrap(),
            ),
            None => (
                gpu.upload(&c.k).unwrap(),
                gpu.upload(&c.v).unwrap(),
                gpu.zeros(1).unwrap(),
            ),
        };
        Dev {
            q: gpu.upload(&c.q).unwrap(),
            q_bf16: c.q_bf16.as_ref().map(|q| gpu.upload(q).unwrap()),
            a,
            b,
            lookup,
            sinks: c.sinks.as_ref().map(|s| gpu.upload(s).unwrap()),
            descales: [
                gpu.upload(&[c.q_descale]).unwrap(),
                gpu.upload(&c.k_descale).unwrap(),
                gpu.upload(&c.v_descale).unwrap(),
            ],
        }
    }

    fn sinks(&self) -> Option<&dyn DevicePtr<f32>> {
        self.sinks.as_ref().map(|s| s as _)
    }

    fn descales(&self) -> Fp8Descales<'_> {
        Fp8Descales {
            q: &self.descales[0],
            k: &self.descales[1],
            v: &self.descales[2],
        }
    }

    fn kv(&self, c: &Case) -> KvBuffers<'_, u8> {
        match c.pool {
            Some(_) => KvBuffers::Paged {
                kv_cache: &self.a,
                lookup: &self.lookup,
                layer: LAYER,
            },
            None => KvBuffers::Ragged {
                k: &self.a,
                v: &self.b,
            },
        }
    }
}

/// Plans and runs the case with poisoned outputs; every element must be written.
fn run(gpu: &Gpu, c: &Case) -> (Vec<bf16>, Vec<f32>) {
    let mut op = DensePrefillFp8::new(gpu, c.cfg).unwrap();
    op.set_key_tile(c.key_tile).unwrap();
    op.plan(&c.spec.as_batch(), &c.layout()).unwrap();
    let d = Dev::new(gpu, c);
    poisoned_run(gpu, c.spec.num_rows() * c.cfg.n_heads, |out, lse| {
        match &d.q_bf16 {
            Some(q) => op.run(q, d.kv(c), d.descales(), d.sinks(), out, Some(lse)),
            None => op.run(&d.q, d.kv(c), d.descales(), d.sinks(), out, Some(lse)),
        }
        .unwrap()
    })
}

fn check(gpu: &Gpu, name: &str, c: &Case) {
    let (out, lse) = run(gpu, c);
    if let Err(e) = check_dense_prefill_fp8(&out, Some(&lse), &c.reference(), &c.cfg) {
        panic!("{name}: GPU differs from the FP8 reference:\n{e}");
    }
    eprintln!(
        "ok: {name} (batch {}, rows {}, {:?}, group {})",
        c.spec.batch(),
        c.spec.num_rows(),
        c.cfg.mask,
        c.cfg.group()
    );
}

fn config(n_heads: usize, n_kv_heads: usize, mask: Mask, sinks: bool) -> DensePrefillConfig {
    DensePrefillConfig {
        n_heads,
        n_kv_heads,
        mask,
        sinks,
        ..DensePrefillConfig::llama_gqa()
    }
}

#[test]
fn gpu_dense_prefill_fp8_matches_reference_for_every_mask_and_source() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    let q_lens = [1u32, 63, 64, 65, 127, 128, 129, 300];
    let masks = [
        Mask::None,
        Mask::Causal,
        Mask::SlidingWindow { window: 1 },
        Mask::SlidingWindow { window: 100 },
    ];
    for (i, mask) in masks.into_iter().enumerate() {
        let sinks = i % 2 == 1;
        let cfg = config(8, 2, mask, sinks);
        let cache: Vec<u32> = q_lens.iter().map(|_| rng.gen_range(0..200)).collect();
        for (what, cl, ps) in [
            ("prefill", vec![0; q_lens.len()], 16),
            ("chunked", cache, 128),
        ] {
            let spec = RaggedSpec::prefill(&q_lens, &cl);
            let c = Case::random(&mut rng, spec, cfg, Some(ps), None, i % 2 == 0);
            check(
                &gpu,
                &format!("paged{ps} {what} {mask:?} sinks {sinks}"),
                &c,
            );
        }
        let spec = RaggedSpec::prefill(&q_lens, &[0; 8]);
        let c = Case::random(&mut rng, spec.clone(), cfg, None, Some(&q_lens), false);
        check(&gpu, &format!("contiguous self {mask:?} sinks {sinks}"), &c);
        let kv_lens = [0u32, 129, 1, 500, 64, 255, 7, 128];
        let c = Case::random(&mut rng, spec, cfg, None, Some(&kv_lens), true);
        check(
            &gpu,
            &format!("contiguous cross {mask:?} sinks {sinks}"),
            &c,
        );
    }
}

/// Both key tiles (128 and the wide kernels' `DP8_WIDE_N` = 192) on
/// contiguous K/V under every mask, e4m3 and bf16 queries: key counts
/// around one and two wide tiles, chunked positions, cross-attention.
#[test]
fn gpu_dense_prefill_fp8_both_key_tiles_under_every_mask() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    let q_lens = [1u32, 191, 192, 193, 385, 129];
    let kv_lens = [0u32, 191, 192, 193, 384, 1000];
    let masks = [
        Mask::None,
        Mask::Causal,
        Mask::SlidingWindow { window: 1 },
        Mask::SlidingWindow { window: 200 },
    ];
    for keys in [DP_BLOCK_N, DP8_WIDE_N] {
        for (i, mask) in masks.into_iter().enumerate() {
            let cfg = config(8, 2, mask, i % 2 == 1);
            let spec = RaggedSpec::prefill(&q_lens, &[0; 6]);
            let c = Case::random(&mut rng, spec, cfg, None, Some(&q_lens), i % 2 == 0);
            check(
                &gpu,
                &format!("tile {keys} self {mask:?}"),
                &c.with_key_tile(keys),
            );
            // Rows at the end of their keys (bottom-right aligned).
            let spec = RaggedSpec::bottom_right(&q_lens, &kv_lens);
            let c = Case::random(&mut rng, spec, cfg, None, Some(&kv_lens), i % 2 == 1)
                .with_bf16_q(&mut rng);
            check(
                &gpu,
                &format!("tile {keys} bf16 q, cross {mask:?}"),
                &c.with_key_tile(keys),
            );
        }
    }
}

#[test]
fn gpu_dense_prefill_fp8_bf16_queries() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    let q_lens = [1u32, 64, 65, 129, 300];
    for (i, mask) in [
        Mask::None,
        Mask::Causal,
        Mask::SlidingWindow { window: 100 },
    ]
    .into_iter()
    .enumerate()
    {
        let cfg = config(8, 2, mask, i == 1);
        let cache: Vec<u32> = q_lens.iter().map(|_| rng.gen_range(0..200)).collect();
        let spec = RaggedSpec::prefill(&q_lens, &cache);
        let c = Case::random(&mut rng, spec, cfg, Some(16), None, i != 0).with_bf16_q(&mut rng);
        check(&gpu, &format!("bf16 q, paged16 chunked {mask:?}"), &c);
        let spec = RaggedSpec::prefill(&q_lens, &[0; 5]);
        let kv_lens = [0u32, 129, 500, 64, 255];
        let c =
            Case::random(&mut rng, spec, cfg, None, Some(&kv_lens), false).with_bf16_q(&mut rng);
        check(&gpu, &format!("bf16 q, contiguous cross {mask:?}"), &c);
    }
    let spec = RaggedSpec::prefill(&[700], &[0]);
    let c = Case::random(
        &mut rng,
        spec,
        config(16, 2, Mask::Causal, false),
        Some(128),
        None,
        true,
    )
    .with_bf16_q(&mut rng);
    check(&gpu, "bf16 q, gqa 16/2 causal", &c);
}

#[test]
fn gpu_dense_prefill_fp8_gqa_groups_and_long_rows() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    for (n_heads, n_kv) in [(4, 4), (16, 4), (16, 2)] {
        let spec = RaggedSpec::prefill(&[1000, 37], &[0, 70]);
        let c = Case::random(
            &mut rng,
            spec,
            config(n_heads, n_kv, Mask::Causal, false),
            Some(64),
            None,
            true,
        );
        check(&gpu, &format!("gqa {n_heads}/{n_kv} causal"), &c);
    }
}

#[test]
fn gpu_dense_prefill_fp8_replays_in_a_graph() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    let spec = RaggedSpec::prefill(&[200, 77], &[10, 0]);
    let c = Case::random(
        &mut rng,
        spec,
        config(8, 2, Mask::Causal, true),
        Some(16),
        None,
        false,
    );
    let (want, _) = run(&gpu, &c);
    let mut op = DensePrefillFp8::new(&gpu, c.cfg).unwrap();
    op.plan(&c.spec.as_batch(), &c.layout()).unwrap();
    let d = Dev::new(&gpu, &c);
    let n = c.spec.num_rows() * c.cfg.n_heads * 128;
    let mut out = gpu.upload(&vec![bf16::from_bits(POISON_OUT); n]).unwrap();
    capture_and_replay(&gpu, || {
        op.run(&d.q, d.kv(&c), d.descales(), d.sinks(), &mut out, None)
            .unwrap()
    });
    let got = gpu.download(&out).unwrap();
    assert!(
        got.iter()
            .zip(&want)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "a replayed run differs from an eager one"
    );
}

/// A page table corrupted on the device after `plan` ([`corrupt_lookup`])
/// must not fault (the kernel clamps every id it reads; the output is then
/// unspecified); the context must still work: the case then matches the
/// reference. Pages of 16 and 128 keys.
#[test]
fn gpu_dense_prefill_fp8_survives_a_corrupt_page_table() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, seed) = seeded(None);
    eprintln!("seed {seed}");
    for ps in [16, 128] {
        let spec = RaggedSpec::prefill(&[129, 300], &[1000, 37]);
        let c = Case::random(
            &mut rng,
            spec,
            config(8, 2, Mask::Causal, false),
            Some(ps),
            None,
            false,
        );
        let Some((pool, _)) = &c.pool else {
            unreachable!()
        };
        let mut op = DensePrefillFp8::new(&gpu, c.cfg).unwrap();
        op.plan(&c.spec.as_batch(), &c.layout()).unwrap();
        let mut d = Dev::new(&gpu, &c);
        d.lookup = gpu
            .upload(&corrupt_lookup(
                &mut rng,
                &pool.lookup,
                pool.layout.num_pages,
            ))
            .unwrap();
        let mut out = gpu
            .zeros::<bf16>(c.spec.num_rows() * c.cfg.n_heads * 128)
            .unwrap();
        assert_no_fault(&gpu, &format!("pages of {ps}"), || {
            op.run(&d.q, d.kv(&c), d.descales(), d.sinks(), &mut out, None)
                .unwrap()
        });
        check(&gpu, &format!("pages of {ps}, after a corrupt table"), &c);
    }
}

#[test]
fn gpu_dense_prefill_fp8_names_bad_descales() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, _) = seeded(Some(7));
    let spec = RaggedSpec::prefill(&[5], &[0]);
    let c = Case::random(
        &mut rng,
        spec,
        config(8, 2, Mask::Causal, false),
        None,
        Some(&[5]),
        false,
    );
    let mut op = DensePrefillFp8::new(&gpu, c.cfg).unwrap();
    op.plan(&c.spec.as_batch(), &c.layout()).unwrap();
    let d = Dev::new(&gpu, &c);
    let mut out = gpu.zeros::<bf16>(5 * 8 * 128).unwrap();
    let three = gpu.upload(&[1.0f32; 3]).unwrap();
    let two = gpu.upload(&[1.0f32; 2]).unwrap();
    for (k, v, arg) in [
        (&three, &three, "k_descale"),
        (&two, &d.descales[2], "v_descale"),
    ] {
        let ds = Fp8Descales {
            q: &d.descales[0],
            k,
            v,
        };
        match op.run(&d.q, d.kv(&c), ds, None, &mut out, None) {
            Err(Error::InvalidArgument { arg: a, .. }) => assert_eq!(a, arg),
            other => panic!("expected an error naming {arg}, got {other:?}"),
        }
    }
}

//! CPU-only tests of the dense prefill reference
//! (`sparse_attn_reference::dense_prefill`) against a naive, independently
//! written implementation, of its checker against a GPU-like f32
//! implementation, and of the ragged K/V generator
//! (`sparse_attn_tests::data::ragged_kv`).
//!
//! Seeds: every test that draws random data takes its seed with
//! `seeded(None)` and prints `SPARSE_ATTN_SEED=<seed>` (shown on failure;
//! set the variable to replay).

use half::bf16;
use rand::Rng;
use sparse_attn_abi::batch::Mask;
use sparse_attn_reference::dense_prefill::{
    check_dense_prefill, dense_prefill, validate, DenseKv, DensePrefillConfig,
};
use sparse_attn_reference::msa_attention::{check_attention, AttentionOutput, MsaAttentionConfig};
use sparse_attn_tests::data::{
    paged_pool, ragged_kv, sample, seeded, tensor, ChaCha8Rng, Fill, PagedPool, RaggedKv,
    RaggedSpec,
};

/// Where a case's K/V live (owned).
#[derive(Clone)]
enum Src {
    Paged { pool: PagedPool, layer: usize },
    Ragged(RaggedKv),
}

/// One problem.
#[derive(Clone)]
struct Case {
    spec: RaggedSpec,
    q: Vec<bf16>,
    src: Src,
    sinks: Option<Vec<f32>>,
    cfg: DensePrefillConfig,
}

impl Case {
    fn kv(&self) -> DenseKv<'_> {
        match &self.src {
            Src::Paged { pool, layer } => DenseKv::Paged {
                cache: pool.cache(),
                layer: *layer,
            },
            Src::Ragged(r) => r.as_dense_kv(),
        }
    }

    fn reference(&self) -> AttentionOutput {
        dense_prefill(
            &self.q,
            &self.spec.as_batch(),
            &self.kv(),
            self.sinks.as_deref(),
            &self.cfg,
        )
    }

    /// `(sequence, q_pos)` of every packed row, from the offsets directly.
    fn rows(&self) -> Vec<(usize, usize)> {
        let mut v = Vec::new();
        for b in 0..self.spec.cache_lengths.len() {
            let q_len = (self.spec.offsets[b + 1] - self.spec.offsets[b]) as usize;
            for i in 0..q_len {
                v.push((b, self.spec.cache_lengths[b] as usize + i));
            }
        }
        v
    }

    fn num_keys(&self, b: usize) -> usize {
        match &self.src {
            Src::Paged { .. } => {
                self.spec.cache_lengths[b] as usize
                    + (self.spec.offsets[b + 1] - self.spec.offsets[b]) as usize
            }
            Src::Ragged(r) => (r.kv_row_offsets[b + 1] - r.kv_row_offsets[b]) as usize,
        }
    }

    /// Row of key `s` of sequence `b` (`which`: 0 = K, 1 = V), KV head `kh`,
    /// read straight from the tensors (own indexing).
    fn kv_row(&self, b: usize, which: usize, kh: usize, s: usize) -> &[bf16] {
        let d = self.cfg.head_dim;
        match &self.src {
            Src::Paged { pool, layer } => {
                let l = &pool.layout;
                let page = pool.lookup[b * pool.max_pages + s / l.page_size] as usize;
                let slot = s % l.page_size;
                let per_slot = l.n_heads * d;
                let per_layer = l.page_size * per_slot;
                let per_kv = l.num_layers * per_layer;
                let off = page * 2 * per_kv
                    + which * per_kv
                    + layer * per_layer
                    + slot * per_slot
                    + kh * d;
                &pool.data[off..off + d]
            }
            Src::Ragged(r) => {
                let t = if which == 0 { &r.k } else { &r.v };
                let row = r.kv_row_offsets[b] as usize + s;
                let off = (row * self.cfg.n_kv_heads + kh) * d;
                &t[off..off + d]
            }
        }
    }

    /// Keys a query at `q_pos` of sequence `b` sees, from the mask's words.
    fn visible(&self, b: usize, q_pos: usize) -> Vec<usize> {
        (0..self.num_keys(b))
            .filter(|&s| match self.cfg.mask {
                Mask::None => true,
                Mask::Causal => s <= q_pos,
                Mask::SlidingWindow { window } => s <= q_pos && q_pos - s < window,
            })
            .collect()
    }

    fn kh(&self, h: usize) -> usize {
        h / (self.cfg.n_heads / self.cfg.n_kv_heads)
    }

    fn q_row(&self, t: usize, h: usize) -> &[bf16] {
        let (nh, d) = (self.cfg.n_heads, self.cfg.head_dim);
        &self.q[(t * nh + h) * d..(t * nh + h + 1) * d]
    }

    /// `scale * q[t, h] . K[s]` in f64, summed in order.
    fn score(&self, t: usize, h: usize, b: usize, s: usize) -> f64 {
        let k = self.kv_row(b, 0, self.kh(h), s);
        let mut dot = 0.0f64;
        for (x, y) in self.q_row(t, h).iter().zip(k) {
            dot += x.to_f64() * y.to_f64();
        }
        self.cfg.scale as f64 * dot
    }

    fn sink(&self, h: usize) -> Option<f64> {
        self.sinks.as_ref().map(|s| s[h] as f64)
    }

    /// Naive f64 attention: explicit key lists, max-subtracted softmax with
    /// the sink in the max and the denominator.
    fn naive(&self) -> AttentionOutput {
        let (nh, d) = (self.cfg.n_heads, self.cfg.head_dim);
        let rows = self.rows();
        let mut out = vec![0.0; rows.len() * nh * d];
        let mut lse = vec![f64::NEG_INFINITY; rows.len() * nh];
        for (t, &(b, q_pos)) in rows.iter().enumerate() {
            let keys = self.visible(b, q_pos);
            for h in 0..nh {
                let x: Vec<f64> = keys.iter().map(|&s| self.score(t, h, b, s)).collect();
                let mut m = f64::NEG_INFINITY;
                for &xi in &x {
                    if xi > m {
                        m = xi;
                    }
                }
                if let Some(sk) = self.sink(h) {
                    if sk > m {
                        m = sk;
                    }
                }
                if m == f64::NEG_INFINITY {
                    continue;
                }
                let w: Vec<f64> = x.iter().map(|xi| (xi - m).exp()).collect();
                let mut z: f64 = w.iter().sum();
                if let Some(sk) = self.sink(h) {
                    z += (sk - m).exp();
                }
                lse[t * nh + h] = m + z.ln();
                for (&s, wj) in keys.iter().zip(&w) {
                    let v = self.kv_row(b, 1, self.kh(h), s);
                    for (i, vi) in v.iter().enumerate() {
                        out[(t * nh + h) * d + i] += wj / z * vi.to_f64();
                    }
                }
            }
        }
        AttentionOutput { out, lse }
    }

    /// GPU-like result: f32 scores, online softmax over tiles of 64 keys
    /// with f32 accumulation, the sink folded in at the end, bf16 output,
    /// f32 lse.
    fn f32_emulation(&self) -> (Vec<bf16>, Vec<f32>) {
        let (nh, d) = (self.cfg.n_heads, self.cfg.head_dim);
        let rows = self.rows();
        let mut out = vec![bf16::ZERO; rows.len() * nh * d];
        let mut lse = vec![f32::NEG_INFINITY; rows.len() * nh];
        for (t, &(b, q_pos)) in rows.iter().enumerate() {
            let keys = self.visible(b, q_pos);
            for h in 0..nh {
                let kh = self.kh(h);
                let (mut m, mut l) = (f32::NEG_INFINITY, 0f32);
                let mut acc = vec![0f32; d];
                for tile in keys.chunks(64) {
                    let x: Vec<f32> = tile
                        .iter()
                        .map(|&s| {
                            let mut dot = 0f32;
                            for (a, k) in self.q_row(t, h).iter().zip(self.kv_row(b, 0, kh, s)) {
                                dot += a.to_f32() * k.to_f32();
                            }
                            self.cfg.scale * dot
                        })
                        .collect();
                    let m_new = x.iter().copied().fold(m, f32::max);
                    let alpha = (m - m_new).exp();
                    l *= alpha;
                    acc.iter_mut().for_each(|a| *a *= alpha);
                    for (&s, &xj) in tile.iter().zip(&x) {
                        let p = (xj - m_new).exp();
                        l += p;
                        for (a, v) in acc.iter_mut().zip(self.kv_row(b, 1, kh, s)) {
                            *a += p * v.to_f32();
                        }
                    }
                    m = m_new;
                }
                if let Some(sk) = self.sinks.as_ref().map(|s| s[h]) {
                    let m_new = m.max(sk);
                    let alpha = if m == f32::NEG_INFINITY {
                        0.0
                    } else {
                        (m - m_new).exp()
                    };
                    l = l * alpha + (sk - m_new).exp();
                    acc.iter_mut().for_each(|a| *a *= alpha);
                    m = m_new;
                }
                if l > 0.0 {
                    for (o, a) in out[(t * nh + h) * d..].iter_mut().zip(&acc) {
                        *o = bf16::from_f32(a / l);
                    }
                    lse[t * nh + h] = m + l.ln();
                }
            }
        }
        (out, lse)
    }
}

const MASKS: [Mask; 6] = [
    Mask::None,
    Mask::Causal,
    Mask::SlidingWindow { window: 0 },
    Mask::SlidingWindow { window: 1 },
    Mask::SlidingWindow { window: 3 },
    Mask::SlidingWindow { window: 17 },
];

fn cfg(
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scale: f32,
    mask: Mask,
) -> DensePrefillConfig {
    DensePrefillConfig {
        n_heads,
        n_kv_heads,
        head_dim,
        scale,
        mask,
        sinks: false,
    }
}

fn random_sinks(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| 2.0 * sample(rng, Fill::Normal)).collect()
}

/// A random small case: `paged` picks the source; group and mask as given.
fn make_case(rng: &mut ChaCha8Rng, mask: Mask, paged: bool, sinks: bool, group: usize) -> Case {
    let n_kv_heads = rng.gen_range(1..=2);
    let head_dim = [5, 8, 16, 128][rng.gen_range(0..4)];
    let scale = [0.088, 0.3, 1.0, -0.2][rng.gen_range(0..4)];
    let mut c = cfg(n_kv_heads * group, n_kv_heads, head_dim, scale, mask);
    c.sinks = sinks;
    let batch = rng.gen_range(1..=3);
    let (spec, src) = if paged {
        let spec = RaggedSpec::random(rng, batch, 9, 40);
        let num_layers = rng.gen_range(1..=2);
        let layer = rng.gen_range(0..num_layers);
        let page_size = [1, 5, 16, 32, 128][rng.gen_range(0..5)];
        let extra = rng.gen_range(0..3);
        let pool = paged_pool(
            rng,
            &spec,
            2,
            num_layers,
            n_kv_heads,
            head_dim,
            page_size,
            extra,
            Fill::Normal,
        );
        let extra_cols = rng.gen_range(0..2);
        let pool = pool.with_extra_columns(rng, extra_cols);
        (spec, Src::Paged { pool, layer })
    } else {
        let q_lens: Vec<u32> = (0..batch).map(|_| rng.gen_range(0..=9)).collect();
        let kv_lens: Vec<u32> = (0..batch)
            .map(|_| {
                if rng.gen_ratio(1, 5) {
                    0
                } else {
                    rng.gen_range(0..=30)
                }
            })
            .collect();
        // q_pos origin: plain cross-attention, bottom-right aligned, or any.
        let cache: Vec<u32> = (0..batch)
            .map(|b| match rng.gen_range(0..3) {
                0 => 0,
                1 => kv_lens[b].saturating_sub(q_lens[b]),
                _ => rng.gen_range(0..=40),
            })
            .collect();
        let spec = RaggedSpec::prefill(&q_lens, &cache);
        let kv = ragged_kv(rng, &kv_lens, n_kv_heads, head_dim, Fill::Normal);
        (spec, Src::Ragged(kv))
    };
    let q = tensor(rng, spec.num_rows() * c.n_heads * head_dim, Fill::Normal);
    let sinks = sinks.then(|| random_sinks(rng, c.n_heads));
    Case {
        spec,
        q,
        src,
        sinks,
        cfg: c,
    }
}

fn assert_matches(ctx: &str, c: &Case, r: &AttentionOutput, n: &AttentionOutput, tol: f64) {
    let (nh, d) = (c.cfg.n_heads, c.cfg.head_dim);
    assert_eq!(r.out.len(), n.out.len(), "{ctx}: out length");
    assert_eq!(r.lse.len(), n.lse.len(), "{ctx}: lse length");
    for (i, (a, b)) in r.out.iter().zip(&n.out).enumerate() {
        assert!(
            (a - b).abs() <= tol * b.abs().max(1.0),
            "{ctx}: out[{}, {}, {}] = {a} vs {b}",
            i / (nh * d),
            i / d % nh,
            i % d
        );
    }
    for (i, (a, b)) in r.lse.iter().zip(&n.lse).enumerate() {
        let ok = if *b == f64::NEG_INFINITY {
            *a == *b
        } else {
            (a - b).abs() <= tol * b.abs().max(1.0)
        };
        assert!(ok, "{ctx}: lse[{}, {}] = {a} vs {b}", i / nh, i % nh);
    }
}

/// The reference equals the naive implementation for every mask, source,
/// sinks on and off and groups 1 and 4; its lse normalises the weights (the
/// sink included); a GPU-like f32 implementation passes the checker.
#[test]
fn reference_matches_naive() {
    let (mut rng, seed) = seeded(None);
    let mut counts = [0usize; 3]; // cases, empty (row, head), attended (row, head)
    for mask in MASKS {
        for paged in [true, false] {
            for sinks in [false, true] {
                for group in [1, 4] {
                    for rep in 0..3 {
                        let c = make_case(&mut rng, mask, paged, sinks, group);
                        let ctx = format!(
                            "seed {seed} {mask:?} paged {paged} sinks {sinks} group {group} rep {rep}: {:?} {:?}",
                            c.cfg, c.spec
                        );
                        let r = c.reference();
                        let n = c.naive();
                        let (nh, d) = (c.cfg.n_heads, c.cfg.head_dim);
                        assert_eq!(r.out.len(), c.spec.num_rows() * nh * d, "{ctx}");
                        assert_matches(&ctx, &c, &r, &n, 1e-10);
                        for (t, &(b, q_pos)) in c.rows().iter().enumerate() {
                            let keys = c.visible(b, q_pos);
                            for h in 0..nh {
                                let l = r.lse[t * nh + h];
                                let o = &r.out[(t * nh + h) * d..(t * nh + h + 1) * d];
                                if keys.is_empty() {
                                    assert!(o.iter().all(|&x| x == 0.0), "{ctx}: row {t}");
                                    let want = c.sink(h).unwrap_or(f64::NEG_INFINITY);
                                    assert_eq!(l, want, "{ctx}: empty row {t} head {h}");
                                    counts[1] += 1;
                                } else {
                                    let z: f64 = keys
                                        .iter()
                                        .map(|&s| (c.score(t, h, b, s) - l).exp())
                                        .sum::<f64>()
                                        + c.sink(h).map_or(0.0, |sk| (sk - l).exp());
                                    assert!((z - 1.0).abs() < 1e-9, "{ctx}: lse[{t}, {h}]: {z}");
                                    counts[2] += 1;
                                }
                            }
                        }
                        let (g, gl) = c.f32_emulation();
                        if let Err(e) = check_dense_prefill(&g, Some(&gl), &r, &c.cfg) {
                            panic!("{ctx}: f32 emulation rejected: {e}");
                        }
                        counts[0] += 1;
                    }
                }
            }
        }
    }
    eprintln!("cases, empty and attended (row, head): {counts:?}");
    assert!(counts[1] > 0 && counts[2] > 100, "seed {seed}: {counts:?}");
}

/// Ragged K/V holding exactly the paged pool's valid tokens (same q, same
/// cache lengths) give bit-identical results.
#[test]
fn paged_and_ragged_sources_agree() {
    let (mut rng, seed) = seeded(None);
    for mask in MASKS
        .into_iter()
        .chain([Mask::SlidingWindow { window: 1000 }])
    {
        for sinks in [false, true] {
            let group = [1, 2, 4][rng.gen_range(0..3)];
            let c = make_case(&mut rng, mask, true, sinks, group);
            let (nkv, d) = (c.cfg.n_kv_heads, c.cfg.head_dim);
            let batch = c.spec.batch();
            let mut kv_row_offsets = vec![0u32];
            let (mut k, mut v) = (Vec::new(), Vec::new());
            for b in 0..batch {
                let n = c.num_keys(b);
                for s in 0..n {
                    for kh in 0..nkv {
                        k.extend_from_slice(c.kv_row(b, 0, kh, s));
                        v.extend_from_slice(c.kv_row(b, 1, kh, s));
                    }
                }
                kv_row_offsets.push(kv_row_offsets[b] + n as u32);
            }
            assert_eq!(k.len(), kv_row_offsets[batch] as usize * nkv * d);
            let ragged = Case {
                spec: c.spec.clone(),
                q: c.q.clone(),
                src: Src::Ragged(RaggedKv {
                    kv_row_offsets,
                    k,
                    v,
                }),
                sinks: c.sinks.clone(),
                cfg: c.cfg,
            };
            let (a, b) = (c.reference(), ragged.reference());
            assert!(
                a == b,
                "seed {seed} {mask:?} sinks {sinks}: paged and ragged differ ({:?} {:?})",
                c.cfg,
                c.spec
            );
        }
    }
}

/// A window that covers every key is `Causal`; a window of 1 attends the
/// query's own position only (out = V[q_pos], lse = x[q_pos]; with a sink,
/// the two-term softmax), and nothing when `q_pos >= num_keys`.
#[test]
fn window_edges() {
    let (mut rng, seed) = seeded(None);
    for paged in [true, false] {
        for sinks in [false, true] {
            let c = make_case(&mut rng, Mask::Causal, paged, sinks, 2);
            let causal = c.reference();
            let max_keys = (0..c.spec.batch())
                .map(|b| c.num_keys(b))
                .max()
                .unwrap_or(0);
            let max_pos = c.rows().iter().map(|r| r.1).max().unwrap_or(0);
            for window in [max_keys.max(max_pos + 1), max_pos + 7, usize::MAX] {
                let mut w = c.clone();
                w.cfg.mask = Mask::SlidingWindow { window };
                assert!(
                    w.reference() == causal,
                    "seed {seed} paged {paged} sinks {sinks} window {window}: {:?}",
                    w.spec
                );
            }
        }
    }
    for paged in [true, false] {
        for sinks in [false, true] {
            let c = make_case(&mut rng, Mask::SlidingWindow { window: 1 }, paged, sinks, 2);
            let r = c.reference();
            let (nh, d) = (c.cfg.n_heads, c.cfg.head_dim);
            let ctx = format!("seed {seed} paged {paged} sinks {sinks}: {:?}", c.spec);
            let mut own = 0;
            for (t, &(b, q_pos)) in c.rows().iter().enumerate() {
                for h in 0..nh {
                    let o = &r.out[(t * nh + h) * d..(t * nh + h + 1) * d];
                    let l = r.lse[t * nh + h];
                    if q_pos >= c.num_keys(b) {
                        assert!(!paged, "{ctx}");
                        assert!(o.iter().all(|&x| x == 0.0), "{ctx}: row {t}");
                        assert_eq!(l, c.sink(h).unwrap_or(f64::NEG_INFINITY), "{ctx}: row {t}");
                        continue;
                    }
                    own += 1;
                    let x = c.score(t, h, b, q_pos);
                    let v = c.kv_row(b, 1, c.kh(h), q_pos);
                    // weight of V[q_pos]: 1, or sigmoid(x - sink) with a sink
                    let (wgt, want_l) = match c.sink(h) {
                        None => (1.0, x),
                        Some(sk) => {
                            let m = x.max(sk);
                            let z = (x - m).exp() + (sk - m).exp();
                            ((x - m).exp() / z, m + z.ln())
                        }
                    };
                    for (a, vi) in o.iter().zip(v) {
                        let want = wgt * vi.to_f64();
                        assert!(
                            (a - want).abs() <= 1e-12 * want.abs().max(1.0),
                            "{ctx}: row {t} head {h}: {a} vs {want}"
                        );
                        if c.sinks.is_none() {
                            assert_eq!(*a, vi.to_f64(), "{ctx}: row {t} head {h}");
                        }
                    }
                    assert!(
                        (l - want_l).abs() <= 1e-12 * want_l.abs().max(1.0),
                        "{ctx}: lse row {t} head {h}: {l} vs {want_l}"
                    );
                }
            }
            if paged {
                assert!(own > 0 || c.spec.num_rows() == 0, "{ctx}");
            }
        }
    }
}

/// Rows that see no key give out = 0 and lse = -inf, or lse = sink[h] with
/// sinks: cross-attention sequences without keys (every mask), `q_pos` past
/// the keys with a window of 1, and `SlidingWindow { window: 0 }`, which the
/// reference accepts (it sees nothing, the abi's definition).
#[test]
fn rows_without_keys() {
    let (mut rng, seed) = seeded(None);
    let (nkv, group, d) = (2, 3, 8);
    let nh = nkv * group;
    let spec = RaggedSpec::prefill(&[3, 2, 4], &[0, 5, 2]);
    let kv_lens = [0u32, 4, 0];
    let kv = ragged_kv(&mut rng, &kv_lens, nkv, d, Fill::Normal);
    let q = tensor(&mut rng, spec.num_rows() * nh * d, Fill::Normal);
    let sinks = random_sinks(&mut rng, nh);
    let empty_rows = |mask: Mask| -> Vec<usize> {
        match mask {
            // sequences 0 and 2 have no keys; sequence 1 (rows 3, 4) sits at
            // q_pos 5, 6 past its 4 keys: a window of 1 sees nothing there.
            Mask::SlidingWindow { window: 0 } => (0..9).collect(),
            Mask::SlidingWindow { window: 1 } => (0..9).collect(),
            // window 3: q_pos 5 sees key 3, q_pos 6 would need keys 4..=6.
            Mask::SlidingWindow { window: 3 } => vec![0, 1, 2, 4, 5, 6, 7, 8],
            _ => vec![0, 1, 2, 5, 6, 7, 8],
        }
    };
    for mask in [
        Mask::None,
        Mask::Causal,
        Mask::SlidingWindow { window: 0 },
        Mask::SlidingWindow { window: 1 },
        Mask::SlidingWindow { window: 3 },
    ] {
        for with_sinks in [false, true] {
            let mut c = cfg(nh, nkv, d, 0.3, mask);
            c.sinks = with_sinks;
            let s = with_sinks.then_some(&sinks[..]);
            let r = dense_prefill(&q, &spec.as_batch(), &kv.as_dense_kv(), s, &c);
            let ctx = format!("seed {seed} {mask:?} sinks {with_sinks}");
            let empty = empty_rows(mask);
            for t in 0..spec.num_rows() {
                for (h, &sink) in sinks.iter().enumerate() {
                    let o = &r.out[(t * nh + h) * d..(t * nh + h + 1) * d];
                    let l = r.lse[t * nh + h];
                    if empty.contains(&t) {
                        assert!(
                            o.iter().all(|&x| x == 0.0),
                            "{ctx}: row {t} head {h}: {o:?}"
                        );
                        let want = if with_sinks {
                            sink as f64
                        } else {
                            f64::NEG_INFINITY
                        };
                        assert_eq!(l, want, "{ctx}: row {t} head {h}");
                    } else {
                        assert!(l.is_finite(), "{ctx}: row {t} head {h}: lse {l}");
                        assert!(o.iter().any(|&x| x != 0.0), "{ctx}: row {t} head {h}");
                    }
                }
            }
            // No NaN anywhere.
            assert!(r.out.iter().chain(&r.lse).all(|x| !x.is_nan()), "{ctx}");
        }
    }
    // Paged, window 0: the cache has keys, the window shows none.
    let mut c = make_case(&mut rng, Mask::SlidingWindow { window: 0 }, true, false, 2);
    let r = c.reference();
    assert!(r.out.iter().all(|&x| x == 0.0), "seed {seed}");
    assert!(r.lse.iter().all(|&x| x == f64::NEG_INFINITY), "seed {seed}");
    c.cfg.sinks = true;
    c.sinks = Some(random_sinks(&mut rng, c.cfg.n_heads));
    let r = c.reference();
    assert!(r.out.iter().all(|&x| x == 0.0), "seed {seed}");
    let nh = c.cfg.n_heads;
    for (i, &l) in r.lse.iter().enumerate() {
        assert_eq!(
            l,
            c.sinks.as_ref().unwrap()[i % nh] as f64,
            "seed {seed}: lse[{i}]"
        );
    }
}

/// A sink far above every score takes (almost) all the weight: out -> 0,
/// lse -> sink. A very negative sink (or -inf) adds nothing: the result is
/// the one without sinks (except, for -1e4, the lse of rows without keys).
#[test]
fn sink_limits() {
    let (mut rng, seed) = seeded(None);
    for paged in [true, false] {
        for mask in [Mask::None, Mask::Causal, Mask::SlidingWindow { window: 4 }] {
            let mut c = make_case(&mut rng, mask, paged, false, 4);
            c.cfg.scale = 0.05; // |x| stays small: |q.k| < ~60 for head_dim <= 128
            let plain = c.reference();
            let nh = c.cfg.n_heads;
            let ctx = format!(
                "seed {seed} paged {paged} {mask:?}: {:?} {:?}",
                c.cfg, c.spec
            );
            c.cfg.sinks = true;
            // sink +30: weights of the keys at most e^{|x| - 30} each.
            c.sinks = Some(vec![30.0; nh]);
            let big = c.reference();
            let max_v = c
                .rows()
                .iter()
                .map(|&(b, _)| c.num_keys(b))
                .max()
                .unwrap_or(0) as f64;
            for (t, &(b, q_pos)) in c.rows().iter().enumerate() {
                let keys = c.visible(b, q_pos);
                for h in 0..nh {
                    let xmax = keys
                        .iter()
                        .map(|&s| c.score(t, h, b, s))
                        .fold(f64::NEG_INFINITY, f64::max);
                    let l = big.lse[t * nh + h];
                    assert!(
                        (30.0..=30.0 + 1e-3).contains(&l),
                        "{ctx}: lse[{t}, {h}] = {l}"
                    );
                    let bound = max_v * (xmax - 30.0).exp() * 8.0; // |V| < 8 for normal bf16
                    let d = c.cfg.head_dim;
                    for &o in &big.out[(t * nh + h) * d..(t * nh + h + 1) * d] {
                        assert!(
                            o.abs() <= bound.max(0.0) && o.abs() < 1e-6,
                            "{ctx}: out {o} bound {bound}"
                        );
                    }
                }
            }
            // sink -1e4 (finite) and -inf: the no-sink result.
            for low in [-1.0e4f32, f32::NEG_INFINITY] {
                c.sinks = Some(vec![low; nh]);
                let r = c.reference();
                assert!(r.out == plain.out, "{ctx}: sink {low}: out differs");
                for (i, (&a, &p)) in r.lse.iter().zip(&plain.lse).enumerate() {
                    if p == f64::NEG_INFINITY {
                        assert_eq!(a, low as f64, "{ctx}: sink {low}: empty lse[{i}]");
                    } else {
                        assert_eq!(a, p, "{ctx}: sink {low}: lse[{i}]");
                    }
                }
            }
        }
    }
}

/// Whatever lies outside the keys of the read layer (garbage tails of last
/// pages, unused pages, other layers, the other keys of stale page-table
/// entries) never reaches the result: replacing all of it with NaN changes
/// nothing, and the result is finite.
#[test]
fn garbage_never_reaches_output() {
    let (mut rng, seed) = seeded(None);
    for mask in [Mask::None, Mask::Causal, Mask::SlidingWindow { window: 5 }] {
        for sinks in [false, true] {
            let c = make_case(&mut rng, mask, true, sinks, 2);
            let Src::Paged { pool, layer } = &c.src else {
                unreachable!()
            };
            let l = pool.layout;
            let mut keep = vec![false; pool.data.len()];
            for b in 0..c.spec.batch() {
                for s in 0..c.num_keys(b) {
                    let page = pool.lookup[b * pool.max_pages + s / l.page_size] as usize;
                    for kv in 0..2 {
                        for h in 0..l.n_heads {
                            let off = l.offset(page, kv, *layer, s % l.page_size, h);
                            keep[off..off + l.head_dim].fill(true);
                        }
                    }
                }
            }
            let ctx = format!(
                "seed {seed} {mask:?} sinks {sinks}: {:?} {:?}",
                c.cfg, c.spec
            );
            let garbage = pool
                .data
                .iter()
                .zip(&keep)
                .filter(|(x, &k)| !k && !x.is_finite())
                .count();
            let mut nan = c.clone();
            if let Src::Paged { pool, .. } = &mut nan.src {
                for (x, &k) in pool.data.iter_mut().zip(&keep) {
                    if !k {
                        *x = bf16::NAN;
                    }
                }
            }
            let (a, b) = (c.reference(), nan.reference());
            assert!(a == b, "{ctx}: result depends on unread slots");
            assert!(a.out.iter().all(|x| x.is_finite()), "{ctx}: non-finite out");
            assert!(
                a.lse.iter().all(|x| !x.is_nan() && *x != f64::INFINITY),
                "{ctx}: NaN lse"
            );
            assert_matches(&ctx, &c, &a, &c.naive(), 1e-10);
            eprintln!("{ctx}: {garbage} non-finite garbage values in the pool");
        }
    }
}

/// The checker accepts the rounded reference and rejects perturbed outputs
/// (one element, NaN, a uniform 1.5% drift, a wrong or NaN lse, a -inf lse
/// where a sink gives a finite one, wrong lengths).
#[test]
fn checker_rejects_perturbed_output() {
    let (mut rng, seed) = seeded(None);
    let mut c = make_case(&mut rng, Mask::Causal, true, true, 2);
    c.spec = RaggedSpec::prefill(&[3, 4], &[5, 0]);
    let nkv = c.cfg.n_kv_heads;
    let d = c.cfg.head_dim;
    c.src = Src::Paged {
        pool: paged_pool(&mut rng, &c.spec, 2, 1, nkv, d, 16, 1, Fill::Normal),
        layer: 0,
    };
    let nh = c.cfg.n_heads;
    c.q = tensor(&mut rng, c.spec.num_rows() * nh * d, Fill::Normal);
    let r = c.reference();
    let p = &c.cfg;
    let gpu: Vec<bf16> = r.out.iter().map(|&x| bf16::from_f64(x)).collect();
    let gl: Vec<f32> = r.lse.iter().map(|&x| x as f32).collect();
    check_dense_prefill(&gpu, Some(&gl), &r, p).unwrap();
    check_dense_prefill(&gpu, None, &r, p).unwrap();
    let mp = MsaAttentionConfig {
        n_heads: nh,
        n_kv_heads: nkv,
        head_dim: d,
        topk: 1,
        scale: p.scale,
    };
    check_attention(&gpu, Some(&gl), &r, &mp).unwrap();
    let ctx = format!("seed {seed}: {p:?}");
    // One element off by 0.1 (row 4, head 1, dim 2).
    let i = (4 * nh + 1) * d + 2;
    let mut g = gpu.clone();
    g[i] = bf16::from_f64(r.out[i] + 0.1);
    let e = check_dense_prefill(&g, None, &r, p).unwrap_err();
    assert!(e.contains("row 4, head 1, dim 2"), "{ctx}: {e}");
    let e = check_attention(&g, Some(&gl), &r, &mp).unwrap_err();
    assert!(e.contains("row 4, head 1, dim 2"), "{ctx}: {e}");
    // NaN.
    let mut g = gpu.clone();
    g[i] = bf16::NAN;
    assert!(check_dense_prefill(&g, None, &r, p).is_err(), "{ctx}");
    // Every element 1.5% too large: passes per element, fails the L2 rule.
    let g: Vec<bf16> = r.out.iter().map(|&x| bf16::from_f64(x * 1.015)).collect();
    let e = check_dense_prefill(&g, None, &r, p).unwrap_err();
    assert!(e.contains("relative L2"), "{ctx}: {e}");
    // Wrong lse, NaN lse, -inf lse (the sink makes every lse finite).
    let j = 2 * nh + 1;
    let mut l2 = gl.clone();
    l2[j] += 0.01 * gl[j].abs().max(1.0);
    let e = check_dense_prefill(&gpu, Some(&l2), &r, p).unwrap_err();
    assert!(e.contains("lse[row 2, head 1]"), "{ctx}: {e}");
    l2[j] = f32::NAN;
    assert!(
        check_dense_prefill(&gpu, Some(&l2), &r, p).is_err(),
        "{ctx}"
    );
    l2[j] = f32::NEG_INFINITY;
    assert!(
        check_dense_prefill(&gpu, Some(&l2), &r, p).is_err(),
        "{ctx}"
    );
    // The result without the sink is a different answer.
    let mut no_sink = c.clone();
    no_sink.cfg.sinks = false;
    no_sink.sinks = None;
    let r0 = no_sink.reference();
    let g0: Vec<bf16> = r0.out.iter().map(|&x| bf16::from_f64(x)).collect();
    let l0: Vec<f32> = r0.lse.iter().map(|&x| x as f32).collect();
    let sinks_matter = c.sinks.as_ref().unwrap().iter().any(|&s| s > -3.0);
    if sinks_matter {
        assert!(check_dense_prefill(&g0, Some(&l0), &r, p).is_err(), "{ctx}");
    }
    // Wrong lengths.
    assert!(
        check_dense_prefill(&gpu[1..], None, &r, p).is_err(),
        "{ctx}"
    );
    assert!(
        check_dense_prefill(&gpu, Some(&gl[1..]), &r, p).is_err(),
        "{ctx}"
    );
}

/// `validate` accepts the module's permissive inputs and rejects malformed
/// ones; `dense_prefill` panics on them.
#[test]
fn validate_rejects_bad_input() {
    let (mut rng, seed) = seeded(None);
    let spec = RaggedSpec::prefill(&[2, 3], &[4, 0]);
    let (nkv, d) = (2, 8);
    let pool = paged_pool(&mut rng, &spec, 2, 2, nkv, d, 3, 0, Fill::Normal);
    let kv = ragged_kv(&mut rng, &[5, 0], nkv, d, Fill::Normal);
    let q = tensor(&mut rng, 5 * 4 * d, Fill::Normal);
    let batch = spec.as_batch();
    let p = cfg(4, nkv, d, 0.3, Mask::Causal);
    let paged = DenseKv::Paged {
        cache: pool.cache(),
        layer: 1,
    };
    let ragged = kv.as_dense_kv();
    let sinks = [0.5f32; 4];
    let ps = DensePrefillConfig { sinks: true, ..p };
    assert_eq!(validate(&q, &batch, &paged, None, &p), Ok(5), "seed {seed}");
    assert_eq!(validate(&q, &batch, &ragged, None, &p), Ok(5));
    assert_eq!(validate(&q, &batch, &ragged, Some(&sinks), &ps), Ok(5));
    let w0 = DensePrefillConfig {
        mask: Mask::SlidingWindow { window: 0 },
        scale: -2.0,
        ..p
    };
    assert_eq!(validate(&q, &batch, &paged, None, &w0), Ok(5));
    let mut low = sinks;
    low[1] = f32::NEG_INFINITY;
    assert_eq!(validate(&q, &batch, &paged, Some(&low), &ps), Ok(5));
    let bad_cfgs = [
        cfg(3, nkv, d, 0.3, Mask::Causal),
        cfg(4, 0, d, 0.3, Mask::Causal),
        cfg(0, nkv, d, 0.3, Mask::Causal),
        cfg(4, 4, d, 0.3, Mask::Causal),
        cfg(4, nkv, 16, 0.3, Mask::Causal),
    ];
    for bad in bad_cfgs {
        assert!(validate(&q, &batch, &paged, None, &bad).is_err(), "{bad:?}");
    }
    let ragged = |k, v, kv_row_offsets| DenseKv::Ragged {
        k,
        v,
        kv_row_offsets,
    };
    let errs = [
        validate(&q[1..], &batch, &paged, None, &p),
        validate(
            &q,
            &spec.as_batch(),
            &DenseKv::Paged {
                cache: pool.cache(),
                layer: 2,
            },
            None,
            &p,
        ),
        validate(
            &q,
            &sparse_attn_abi::batch::RaggedBatch::new(&[0, 2, 5], &[4]),
            &paged,
            None,
            &p,
        ),
        validate(
            &q,
            &sparse_attn_abi::batch::RaggedBatch::new(&[1, 2, 5], &[4, 0]),
            &paged,
            None,
            &p,
        ),
        validate(
            &q,
            &sparse_attn_abi::batch::RaggedBatch::new(&[0, 3, 2], &[4, 0]),
            &paged,
            None,
            &p,
        ),
        // more keys than the page table holds
        validate(
            &q,
            &sparse_attn_abi::batch::RaggedBatch::new(&[0, 2, 5], &[40, 0]),
            &paged,
            None,
            &p,
        ),
        // sinks and cfg.sinks disagree, wrong length, NaN, +inf
        validate(&q, &batch, &paged, Some(&sinks), &p),
        validate(&q, &batch, &paged, None, &ps),
        validate(&q, &batch, &paged, Some(&sinks[1..]), &ps),
        validate(&q, &batch, &paged, Some(&[0.5, f32::NAN, 0.5, 0.5]), &ps),
        validate(
            &q,
            &batch,
            &paged,
            Some(&[0.5, f32::INFINITY, 0.5, 0.5]),
            &ps,
        ),
        // ragged: offsets of the wrong batch, not from 0, decreasing; short k or v
        validate(&q, &batch, &ragged(&kv.k, &kv.v, &[0, 5]), None, &p),
        validate(&q, &batch, &ragged(&kv.k, &kv.v, &[1, 5, 5]), None, &p),
        validate(&q, &batch, &ragged(&kv.k, &kv.v, &[0, 6, 5]), None, &p),
        validate(
            &q,
            &batch,
            &ragged(&kv.k[1..], &kv.v, &kv.kv_row_offsets),
            None,
            &p,
        ),
        validate(
            &q,
            &batch,
            &ragged(&kv.k, &kv.v[d..], &kv.kv_row_offsets),
            None,
            &p,
        ),
    ];
    for (n, e) in errs.iter().enumerate() {
        assert!(e.is_err(), "case {n}: {e:?}");
    }
    // A bad page id, a kv_dim-1 pool, a short pool.
    let mut bad_lookup = pool.lookup.clone();
    bad_lookup[0] = pool.layout.num_pages as u32;
    let mut cache = pool.cache();
    cache.pages.lookup = &bad_lookup;
    assert!(validate(&q, &batch, &DenseKv::Paged { cache, layer: 0 }, None, &p).is_err());
    let mut cache = pool.cache();
    cache.layout.kv_dim = 1;
    cache.data = &pool.data[..cache.layout.elements()];
    assert!(validate(&q, &batch, &DenseKv::Paged { cache, layer: 0 }, None, &p).is_err());
    let mut cache = pool.cache();
    cache.data = &pool.data[1..];
    assert!(validate(&q, &batch, &DenseKv::Paged { cache, layer: 0 }, None, &p).is_err());
    let r = std::panic::catch_unwind(|| dense_prefill(&q[1..], &batch, &paged, None, &p));
    assert!(r.is_err());
}

/// head_dim 0: every score is 0, so lse = ln(visible keys) (with the sink:
/// ln(keys + e^sink)) and out is empty.
#[test]
fn zero_head_dim() {
    let spec = RaggedSpec::prefill(&[3], &[2]);
    let kv = RaggedKv {
        kv_row_offsets: vec![0, 5],
        k: vec![],
        v: vec![],
    };
    let p = cfg(2, 1, 0, 1.0, Mask::SlidingWindow { window: 3 });
    let r = dense_prefill(&[], &spec.as_batch(), &kv.as_dense_kv(), None, &p);
    assert!(r.out.is_empty());
    // q_pos 2, 3, 4: windows of 3 keys each.
    assert!(
        r.lse.iter().all(|&l| (l - 3f64.ln()).abs() < 1e-15),
        "{:?}",
        r.lse
    );
    let ps = DensePrefillConfig { sinks: true, ..p };
    let r = dense_prefill(
        &[],
        &spec.as_batch(),
        &kv.as_dense_kv(),
        Some(&[0.0, 1.0]),
        &ps,
    );
    for (i, &l) in r.lse.iter().enumerate() {
        let want = (3.0 + ((i % 2) as f64).exp()).ln();
        assert!((l - want).abs() < 1e-15, "lse[{i}] = {l} vs {want}");
    }
}

/// `ragged_kv`: offsets are the prefix sums of the lengths, K and V have
/// the right size, differ, and depend only on the seed.
#[test]
fn ragged_kv_generator() {
    let (mut rng, seed) = seeded(None);
    let lens = [3u32, 0, 7, 1];
    let state: u64 = rng.gen();
    let gen = |fill| {
        let mut r = <ChaCha8Rng as rand::SeedableRng>::seed_from_u64(state);
        ragged_kv(&mut r, &lens, 2, 4, fill)
    };
    let kv = gen(Fill::Normal);
    assert_eq!(kv.kv_row_offsets, vec![0, 3, 3, 10, 11], "seed {seed}");
    assert_eq!(kv.total_rows(), 11);
    assert_eq!((kv.k.len(), kv.v.len()), (11 * 2 * 4, 11 * 2 * 4));
    assert!(kv.k != kv.v);
    assert!(kv.k.iter().chain(&kv.v).all(|x| x.is_finite()));
    assert_eq!(gen(Fill::Normal), kv);
    let ints = gen(Fill::SmallInts);
    assert!(ints
        .k
        .iter()
        .all(|x| x.to_f32().fract() == 0.0 && x.to_f32().abs() <= 4.0));
    let empty = ragged_kv(&mut rng, &[], 2, 4, Fill::Normal);
    assert_eq!((empty.kv_row_offsets, empty.k.len()), (vec![0], 0));
    match kv.as_dense_kv() {
        DenseKv::Ragged {
            k,
            v,
            kv_row_offsets,
        } => {
            assert_eq!(
                (k.len(), v.len(), kv_row_offsets),
                (kv.k.len(), kv.v.len(), &kv.kv_row_offsets[..])
            );
        }
        DenseKv::Paged { .. } => panic!("ragged_kv gave a paged source"),
    }
}

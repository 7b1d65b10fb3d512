//! CPU-only tests of the MLA FP8 indexer reference
//! (`sparse_attn_reference::mla_indexer`) against a naive, separately
//! written brute force (its own e4m3 decoding and pool indexing, a full
//! sort of every visible key), of its checker (it accepts the reference's
//! answer and rejects corrupted ones), and of the FP8 generators
//! (`sparse_attn_tests::data::{fp8_index_k_pool, fp8_tensor,
//! index_weights}`).
//!
//! Seeds: every test draws its seed with `seeded(None)` and prints
//! `SPARSE_ATTN_SEED=<seed>` (shown on failure; set the variable to replay).

use rand::{Rng, SeedableRng};
use sparse_attn_abi::batch::Mask;
use sparse_attn_reference::mla_indexer::{
    check_exact, check_row, mla_indexer, row_logits, select, MlaIndexerConfig, RowLogits,
    TOL_FACTOR,
};
use sparse_attn_tests::data::{
    fp8_index_k_pool, fp8_tensor, index_weights, seeded, ChaCha8Rng, Fp8Fill, Fp8Pool, RaggedSpec,
};

/// The layer the cases read (of 2).
const LAYER: usize = 1;
const D: usize = 128;

/// One case's inputs.
struct Case {
    spec: RaggedSpec,
    pool: Fp8Pool,
    q: Vec<u8>,
    qs: Vec<f32>,
    cfg: MlaIndexerConfig,
}

impl Case {
    #[allow(clippy::too_many_arguments)]
    fn new(
        rng: &mut ChaCha8Rng,
        spec: RaggedSpec,
        num_heads: usize,
        top_k: usize,
        mask: Mask,
        page_size: usize,
        fused: bool,
        fill: Fp8Fill,
    ) -> Case {
        let rows = spec.num_rows();
        let pool = fp8_index_k_pool(rng, &spec, 2, page_size, fused, 3, fill);
        let q = fp8_tensor(rng, rows * num_heads * D, fill);
        let qs = index_weights(rng, rows * num_heads, fill);
        let cfg = MlaIndexerConfig {
            num_heads,
            top_k,
            mask,
        };
        Case {
            spec,
            pool,
            q,
            qs,
            cfg,
        }
    }

    fn what(&self) -> String {
        format!(
            "{:?}, page {}, {:?}, offsets {:?}, cache {:?}",
            self.cfg,
            self.pool.layout.page_size,
            self.pool.layout.dtype,
            self.spec.offsets,
            self.spec.cache_lengths
        )
    }

    fn logits(&self) -> Vec<RowLogits> {
        row_logits(
            &self.q,
            &self.qs,
            &self.spec.as_batch(),
            &self.pool.cache(),
            LAYER,
            &self.cfg,
        )
    }

    fn reference(&self) -> Vec<i32> {
        mla_indexer(
            &self.q,
            &self.qs,
            &self.spec.as_batch(),
            &self.pool.cache(),
            LAYER,
            &self.cfg,
        )
    }

    /// `(sequence, local index)` of every packed row.
    fn rows(&self) -> Vec<(usize, usize)> {
        let mut v = Vec::new();
        for b in 0..self.spec.batch() {
            for i in 0..self.spec.q_len(b) {
                v.push((b, i));
            }
        }
        v
    }

    /// The e4m3 bytes and scale of token `s` of sequence `b`, with the
    /// pool's indexing written out here (not `PagedLayout::offset`).
    fn key(&self, b: usize, s: usize) -> (&[u8], f32) {
        let p = &self.pool;
        let (ps, nl) = (p.layout.page_size, p.layout.num_layers);
        let page = p.lookup[b * p.max_pages + s / ps] as usize;
        let slot = s % ps;
        if p.scales.is_empty() {
            // fused: each (page, layer) block is ps rows of 128 bytes, then ps f32
            let block = (page * nl + LAYER) * ps * (D + 4);
            let row = block + slot * D;
            let at = block + ps * D + 4 * slot;
            let sc = f32::from_le_bytes(p.data[at..at + 4].try_into().unwrap());
            (&p.data[row..row + D], sc)
        } else {
            let idx = (page * nl + LAYER) * ps + slot;
            (&p.data[idx * D..(idx + 1) * D], p.scales[idx])
        }
    }

    /// The score and tolerance of key `s` for packed row `t` of sequence `b`.
    fn naive_score(&self, t: usize, b: usize, s: usize) -> (f64, f64) {
        let h = self.cfg.num_heads;
        let (k, ks) = self.key(b, s);
        let (mut sum, mut mag) = (0.0f64, 0.0f64);
        for hh in 0..h {
            let qrow = &self.q[(t * h + hh) * D..(t * h + hh + 1) * D];
            let (mut dot, mut abs) = (0.0f64, 0.0f64);
            for d in 0..D {
                let p = e4m3(qrow[d]) * e4m3(k[d]);
                dot += p;
                abs += p.abs();
            }
            let w = self.qs[t * h + hh] as f64;
            let relu = if dot.is_nan() || dot > 0.0 { dot } else { 0.0 };
            sum += relu * w;
            mag += abs * w.abs();
        }
        (ks as f64 * sum, TOL_FACTOR * (ks as f64).abs() * mag)
    }

    /// Per row: the visible keys' scores and tolerances, and the selection
    /// by a full sort.
    fn naive(&self) -> Vec<(Vec<f64>, Vec<f64>, Vec<i32>)> {
        self.rows()
            .into_iter()
            .enumerate()
            .map(|(t, (b, i))| {
                let seqlen = self.spec.seqlen_k(b);
                let q_pos = self.spec.cache_lengths[b] as usize + i;
                let visible: Vec<usize> = (0..seqlen)
                    .filter(|&s| self.cfg.mask == Mask::None || s <= q_pos)
                    .collect();
                let (score, tol): (Vec<f64>, Vec<f64>) =
                    visible.iter().map(|&s| self.naive_score(t, b, s)).unzip();
                let mut order = visible.clone();
                order.sort_by(|&x, &y| {
                    let (a, c) = (score[x], score[y]);
                    match (a.is_nan(), c.is_nan()) {
                        (true, true) => x.cmp(&y),
                        (true, false) => std::cmp::Ordering::Greater,
                        (false, true) => std::cmp::Ordering::Less,
                        (false, false) => c.partial_cmp(&a).unwrap().then(x.cmp(&y)),
                    }
                });
                let mut sel: Vec<i32> = order
                    .into_iter()
                    .take(self.cfg.top_k)
                    .map(|s| s as i32)
                    .collect();
                sel.resize(self.cfg.top_k, -1);
                (score, tol, sel)
            })
            .collect()
    }

    /// The reference against the brute force: logits bit for bit (both
    /// compute exact dots and the same f64 head sum), tolerances to 1e-12,
    /// the selection exactly; `check_row` accepts the reference's rows.
    fn check(&self) {
        let what = self.what();
        let rl = self.logits();
        let naive = self.naive();
        assert_eq!(rl.len(), naive.len(), "{what}");
        for (t, (r, (score, tol, _))) in rl.iter().zip(&naive).enumerate() {
            assert_eq!(r.row, t, "{what}");
            assert_eq!(r.num_keys, score.len(), "{what}: row {t} visible keys");
            for s in 0..score.len() {
                let (a, b) = (r.score[s], score[s]);
                assert!(
                    a == b || (a.is_nan() && b.is_nan()),
                    "{what}: row {t} key {s}: reference {a:e}, naive {b:e}"
                );
                assert!(
                    !a.is_nan(),
                    "{what}: row {t} key {s} is NaN (garbage read?)"
                );
                let (x, y) = (r.tol[s], tol[s]);
                assert!(
                    (x - y).abs() <= 1e-12 * y.abs(),
                    "{what}: row {t} key {s}: tol {x:e} vs {y:e}"
                );
            }
        }
        let out = self.reference();
        let want: Vec<i32> = naive.iter().flat_map(|n| n.2.iter().copied()).collect();
        let k = self.cfg.top_k;
        if let Err(e) = check_exact(&out, &want, rl.len(), k) {
            panic!("{what}: {e}");
        }
        for (r, row) in rl.iter().zip(out.chunks(k)) {
            assert_eq!(row, &select(r, k)[..], "{what}");
            if let Err(e) = check_row(row, r, k) {
                panic!("{what}: checker rejects the reference: {e}");
            }
        }
    }
}

/// The value of an e4m3 byte from its bit fields (separately from abi's codec).
fn e4m3(b: u8) -> f64 {
    let sign = if b & 0x80 != 0 { -1.0 } else { 1.0 };
    let e = ((b >> 3) & 0xf) as i32;
    let m = (b & 7) as f64;
    if e == 15 && m == 7.0 {
        f64::NAN
    } else if e == 0 {
        sign * m / 8.0 * 2f64.powi(-6)
    } else {
        sign * (1.0 + m / 8.0) * 2f64.powi(e - 7)
    }
}

#[test]
fn naive_e4m3_decoding_matches_the_codec() {
    for b in 0..=255u8 {
        let (a, c) = (e4m3(b), sparse_attn_abi::fp8::e4m3_to_f32(b) as f64);
        assert!(a == c || (a.is_nan() && c.is_nan()), "{b:#x}: {a} vs {c}");
    }
}

#[test]
fn reference_matches_naive_on_random_batches() {
    let (mut rng, seed) = seeded(None);
    println!("seed {seed}");
    for fused in [false, true] {
        for ps in [64, 128] {
            for mask in [Mask::Causal, Mask::None] {
                for fill in [Fp8Fill::Integer, Fp8Fill::Random] {
                    // Ragged prefill with cache_len > 0 (chunked) and empty sequences.
                    let spec = RaggedSpec::random(&mut rng, 3, 6, 140);
                    let top_k = rng.gen_range(1..40);
                    let c = Case::new(&mut rng, spec, 64, top_k, mask, ps, fused, fill);
                    c.check();
                }
            }
        }
    }
}

#[test]
fn contexts_around_the_page_size_and_top_k_above_the_context() {
    let (mut rng, seed) = seeded(None);
    println!("seed {seed}");
    // Decode rows whose contexts are 1, 63, 64, 65, 127, 128, 129 keys.
    let lens = [1u32, 63, 64, 65, 127, 128, 129];
    for (heads, ps, fused, top_k) in [
        (64, 64, false, 64),
        (64, 64, true, 200),
        (128, 128, false, 65),
        (128, 128, true, 1),
        (64, 128, true, 63),
    ] {
        let spec = RaggedSpec::decode(lens.iter().map(|l| l - 1).collect());
        let c = Case::new(
            &mut rng,
            spec,
            heads,
            top_k,
            Mask::Causal,
            ps,
            fused,
            Fp8Fill::Random,
        );
        c.check();
        // -1 padding exactly past the context.
        let out = c.reference();
        for (row, &len) in out.chunks(top_k).zip(&lens) {
            let n = top_k.min(len as usize);
            assert!(row[..n].iter().all(|&x| x >= 0), "{row:?}");
            assert!(row[n..].iter().all(|&x| x == -1), "{row:?}");
        }
    }
}

#[test]
fn chunked_prefill_speculative_and_decode_rows() {
    let (mut rng, seed) = seeded(None);
    println!("seed {seed}");
    for (mask, fused) in [
        (Mask::Causal, false),
        (Mask::Causal, true),
        (Mask::None, true),
    ] {
        // A chunk on a cached prefix, speculative rows (2..8), decode rows,
        // a sequence without new rows and a fresh prefill.
        let q_lens = [
            rng.gen_range(5..20),
            rng.gen_range(2..9),
            1,
            0,
            1,
            rng.gen_range(1..12),
        ];
        let cache = [
            rng.gen_range(60..200),
            rng.gen_range(1..130),
            rng.gen_range(0..300),
            50,
            0,
            0,
        ];
        let spec = RaggedSpec::prefill(&q_lens, &cache);
        let c = Case::new(&mut rng, spec, 64, 48, mask, 64, fused, Fp8Fill::Integer);
        c.check();
    }
}

#[test]
fn fused_and_separate_pools_hold_the_same_tokens() {
    let (_, seed) = seeded(None);
    println!("seed {seed}");
    let spec = RaggedSpec::prefill(&[3, 1, 0], &[100, 64, 7]);
    for fill in [Fp8Fill::Integer, Fp8Fill::Random] {
        // The same seed draws the same pages, tokens and scales for both layouts.
        let mut r1 = ChaCha8Rng::seed_from_u64(seed);
        let mut r2 = ChaCha8Rng::seed_from_u64(seed);
        let a = Case::new(&mut r1, spec.clone(), 64, 16, Mask::Causal, 64, false, fill);
        let b = Case::new(&mut r2, spec.clone(), 64, 16, Mask::Causal, 64, true, fill);
        assert_eq!(a.pool.lookup, b.pool.lookup);
        assert!(b.pool.scales.is_empty());
        assert_eq!(a.pool.scales.len(), a.pool.layout.scale_elements());
        assert_eq!(b.pool.data.len(), b.pool.layout.elements());
        assert_eq!(a.logits(), b.logits());
        assert_eq!(a.reference(), b.reference());
    }
}

#[test]
fn generator_fills_tokens_and_garbage() {
    let (mut rng, seed) = seeded(None);
    println!("seed {seed}");
    let spec = RaggedSpec::prefill(&[2, 1, 3], &[70, 0, 190]);
    for fused in [false, true] {
        for fill in [Fp8Fill::Integer, Fp8Fill::Random] {
            let c = Case::new(&mut rng, spec.clone(), 8, 4, Mask::Causal, 64, fused, fill);
            let p = &c.pool;
            let l = p.layout;
            // Tokens: no NaN code, a finite positive scale; Integer: small
            // integers and powers of two.
            let mut owned = vec![vec![false; l.page_size]; l.num_pages];
            for b in 0..spec.batch() {
                for s in 0..spec.seqlen_k(b) {
                    let page = p.lookup[b * p.max_pages + s / l.page_size] as usize;
                    owned[page][s % l.page_size] = true;
                    let (k, sc) = c.key(b, s);
                    assert!(k.iter().all(|&x| x & 0x7f != 0x7f), "NaN in token {b}/{s}");
                    assert!(sc.is_finite() && sc > 0.0, "scale {sc} of token {b}/{s}");
                    if fill == Fp8Fill::Integer {
                        assert!(k.iter().all(|&x| {
                            let v = e4m3(x);
                            v.fract() == 0.0 && v.abs() <= 2.0
                        }));
                        assert!([0.25, 0.5, 1.0, 2.0, 4.0].contains(&sc), "scale {sc}");
                    } else {
                        assert!((0.25..4.0).contains(&sc), "scale {sc}");
                    }
                }
            }
            // Every other slot of every layer: garbage (a NaN / ±Inf / huge
            // scale); every layer of an owned slot holds a token.
            let mut garbage = 0;
            for (page, slots) in owned.iter().enumerate() {
                for (slot, &o) in slots.iter().enumerate() {
                    for layer in 0..l.num_layers {
                        let sc = if fused {
                            let at = l.scale_offset(page, 0, layer, slot, 0);
                            f32::from_le_bytes(p.data[at..at + 4].try_into().unwrap())
                        } else {
                            p.scales[l.offset(page, 0, layer, slot, 0) / D]
                        };
                        let junk = !sc.is_finite() || sc.abs() >= 1e30;
                        assert_eq!(
                            junk, !o,
                            "page {page} layer {layer} slot {slot}: scale {sc}"
                        );
                        garbage += usize::from(junk);
                    }
                }
            }
            assert!(garbage > 3 * l.page_size, "unused pages hold garbage");
            // q and the weights.
            assert!(c.q.iter().all(|&x| x & 0x7f != 0x7f));
            assert!(c.qs.iter().all(|w| w.is_finite()));
            if fill == Fp8Fill::Integer {
                assert!(c.qs.iter().all(|w| w.fract() == 0.0 && w.abs() <= 2.0));
                assert!(c.qs.iter().any(|&w| w < 0.0), "negative weights");
            }
        }
    }
}

/// A Random case whose every row has more visible keys than `top_k`.
fn checker_case(rng: &mut ChaCha8Rng) -> Case {
    let spec = RaggedSpec::prefill(&[4, 1], &[150, 90]);
    Case::new(rng, spec, 64, 24, Mask::Causal, 64, true, Fp8Fill::Random)
}

#[test]
fn checker_rejects_corrupted_selections() {
    let (mut rng, seed) = seeded(None);
    println!("seed {seed}");
    let c = checker_case(&mut rng);
    let k = c.cfg.top_k;
    let rl = c.logits();
    let out = c.reference();
    let mut tested_swap = false;
    for (r, row) in rl.iter().zip(out.chunks(k)) {
        check_row(row, r, k).unwrap();
        assert!(r.num_keys > k);
        let clearly_above = |a: i32, b: i32| {
            let (a, b) = (a as usize, b as usize);
            r.score[a] - r.score[b] > 2.0 * (r.tol[a] + r.tol[b])
        };
        let bad = |v: &[i32], what: &str| {
            let e = check_row(v, r, k);
            assert!(e.is_err(), "row {}: {what} accepted: {v:?}", r.row);
            let e = e.unwrap_err();
            assert!(e.contains(&format!("row {}", r.row)), "{e}");
            e
        };
        // A swapped pair of clearly different scores: the last selected key
        // moved up to slot i, before a key clearly above it.
        if let Some(i) = (0..k - 2).find(|&i| clearly_above(row[i + 1], row[k - 1])) {
            let mut v = row.to_vec();
            v.swap(i, k - 1);
            let e = bad(&v, "swap");
            assert!(e.contains("order"), "{e}");
            tested_swap = true;
        }
        // A duplicate.
        let mut v = row.to_vec();
        v[k - 1] = v[0];
        assert!(bad(&v, "duplicate").contains("twice"));
        // A masked position (the first key past the row's own).
        let mut v = row.to_vec();
        v[k - 1] = r.num_keys as i32;
        bad(&v, "masked position");
        // The worst visible key instead of the last selected one.
        let worst = (0..r.num_keys)
            .min_by(|&a, &b| r.score[a].partial_cmp(&r.score[b]).unwrap())
            .unwrap() as i32;
        if clearly_above(row[k - 1], worst) {
            let mut v = row.to_vec();
            v[k - 1] = worst;
            assert!(bad(&v, "worst key").contains("loses to unselected"));
        }
        // -1 in place of a position.
        let mut v = row.to_vec();
        v[k - 1] = -1;
        bad(&v, "missing entry");
        // Wrong length.
        bad(&row[..k - 1], "short row");
    }
    assert!(tested_swap, "no clearly ordered pair in any row");
    // Missing -1 padding: top_k above a row's context.
    let spec = RaggedSpec::decode(vec![9, 40]);
    let c = Case::new(
        &mut rng,
        spec,
        64,
        16,
        Mask::Causal,
        64,
        false,
        Fp8Fill::Random,
    );
    let (rl, out) = (c.logits(), c.reference());
    let row = &out[..16];
    assert_eq!(rl[0].num_keys, 10);
    check_row(row, &rl[0], 16).unwrap();
    for (slot, val) in [(10, 0), (15, 3), (12, 11)] {
        let mut v = row.to_vec();
        v[slot] = val;
        let e = check_row(&v, &rl[0], 16);
        assert!(e.is_err(), "padding slot {slot} = {val} accepted");
    }
    // ... and exact comparison names the row and slot.
    let mut v = out.clone();
    v.swap(16 + 2, 16 + 3);
    let e = check_exact(&v, &out, 2, 16).unwrap_err();
    assert!(e.starts_with("row 1 slot 2"), "{e}");
}

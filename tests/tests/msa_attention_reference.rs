//! CPU-only tests of the MSA attention reference
//! (`sparse_attn_reference::msa_attention`) against a naive, independently
//! written implementation, of its checker against a GPU-like f32
//! implementation, and of the block-selection generator
//! (`sparse_attn_tests::data::block_selection`).
//!
//! Seeds: every test draws its seed with `seeded(None)` and prints
//! `SPARSE_ATTN_SEED=<seed>` (shown on failure; set the variable to replay).

use half::bf16;
use rand::Rng;
use sparse_attn_reference::msa_attention::{
    check_attention, msa_attention, AttentionOutput, MsaAttentionConfig,
};
use sparse_attn_tests::data::{
    block_selection, paged_pool, seeded, tensor, ChaCha8Rng, Fill, PagedPool, RaggedSpec,
};

const BLOCK: usize = 128;

/// Row of token `s` of sequence `b` (`which`: 0 = K, 1 = V), read straight
/// from the pool tensor (own indexing, not `PagedCache::row`).
fn naive_row(
    pool: &PagedPool,
    b: usize,
    which: usize,
    layer: usize,
    head: usize,
    s: usize,
) -> &[bf16] {
    let l = &pool.layout;
    let page = pool.lookup[b * pool.max_pages + s / l.page_size] as usize;
    let slot = s % l.page_size;
    let per_slot = l.n_heads * l.head_dim;
    let per_layer = l.page_size * per_slot;
    let per_kv = l.num_layers * per_layer;
    let off = page * l.kv_dim * per_kv
        + which * per_kv
        + layer * per_layer
        + slot * per_slot
        + head * l.head_dim;
    &pool.data[off..off + l.head_dim]
}

/// `(sequence, local index)` of every packed row.
fn rows_of(spec: &RaggedSpec) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    for b in 0..spec.batch() {
        for i in 0..spec.q_len(b) {
            v.push((b, i));
        }
    }
    v
}

/// One random problem.
struct Case {
    spec: RaggedSpec,
    /// `rows_of(&spec)`.
    rows: Vec<(usize, usize)>,
    pool: PagedPool,
    q: Vec<bf16>,
    layer: usize,
    d_indices: Vec<i32>,
    p: MsaAttentionConfig,
}

impl Case {
    /// Keys of query row `t`, query head `h`, gathered from the spec's words:
    /// every slot of the row's KV head, every position of the block, kept if
    /// the block exists and the position is written and causally visible.
    fn keys(&self, t: usize, h: usize) -> Vec<usize> {
        let (b, i) = self.rows[t];
        let q_pos = self.spec.cache_lengths[b] as usize + i;
        let seqlen_k = self.spec.seqlen_k(b);
        let kh = h / (self.p.n_heads / self.p.n_kv_heads);
        let rows = self.spec.num_rows();
        let mut keys = Vec::new();
        for slot in 0..self.p.topk {
            let blk = self.d_indices[(kh * rows + t) * self.p.topk + slot];
            if blk < 0 || blk as usize * BLOCK >= seqlen_k {
                continue;
            }
            for c in 0..BLOCK {
                let pos = blk as usize * BLOCK + c;
                if pos < seqlen_k && pos <= q_pos {
                    keys.push(pos);
                }
            }
        }
        keys
    }

    fn q_row(&self, t: usize, h: usize) -> &[bf16] {
        let (nh, d) = (self.p.n_heads, self.p.head_dim);
        &self.q[(t * nh + h) * d..(t * nh + h + 1) * d]
    }

    /// `scale * q[t, h] . K[pos]` in f64.
    fn score(&self, t: usize, h: usize, pos: usize) -> f64 {
        let (b, _) = self.rows[t];
        let kh = h / (self.p.n_heads / self.p.n_kv_heads);
        let k = naive_row(&self.pool, b, 0, self.layer, kh, pos);
        let dot: f64 = self
            .q_row(t, h)
            .iter()
            .zip(k)
            .map(|(x, y)| x.to_f64() * y.to_f64())
            .sum();
        self.p.scale as f64 * dot
    }

    /// Naive f64 attention: explicit key lists, plain softmax.
    fn naive(&self) -> AttentionOutput {
        let (nh, d) = (self.p.n_heads, self.p.head_dim);
        let rows = self.spec.num_rows();
        let mut out = vec![0.0; rows * nh * d];
        let mut lse = vec![f64::NEG_INFINITY; rows * nh];
        for (t, &(b, _)) in self.rows.iter().enumerate() {
            for h in 0..nh {
                let keys = self.keys(t, h);
                if keys.is_empty() {
                    continue;
                }
                let kh = h / (nh / self.p.n_kv_heads);
                let s: Vec<f64> = keys.iter().map(|&pos| self.score(t, h, pos)).collect();
                let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let w: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = w.iter().sum();
                let o = &mut out[(t * nh + h) * d..(t * nh + h + 1) * d];
                for (&pos, wj) in keys.iter().zip(&w) {
                    let v = naive_row(&self.pool, b, 1, self.layer, kh, pos);
                    for (acc, x) in o.iter_mut().zip(v) {
                        *acc += wj / z * x.to_f64();
                    }
                }
                lse[t * nh + h] = m + z.ln();
            }
        }
        AttentionOutput { out, lse }
    }

    /// GPU-like result: per selected block, f32 scores, online softmax with
    /// f32 accumulation, bf16 output, f32 lse.
    fn f32_emulation(&self) -> (Vec<bf16>, Vec<f32>) {
        let (nh, d) = (self.p.n_heads, self.p.head_dim);
        let rows = self.spec.num_rows();
        let mut out = vec![bf16::ZERO; rows * nh * d];
        let mut lse = vec![f32::NEG_INFINITY; rows * nh];
        for (t, &(b, _)) in self.rows.iter().enumerate() {
            for h in 0..nh {
                let kh = h / (nh / self.p.n_kv_heads);
                let keys = self.keys(t, h);
                let qv = self.q_row(t, h);
                let (mut m, mut l) = (f32::NEG_INFINITY, 0f32);
                let mut acc = vec![0f32; d];
                for chunk in keys.chunks(BLOCK) {
                    let s: Vec<f32> = chunk
                        .iter()
                        .map(|&pos| {
                            let k = naive_row(&self.pool, b, 0, self.layer, kh, pos);
                            let mut dot = 0f32;
                            for (x, y) in qv.iter().zip(k) {
                                dot += x.to_f32() * y.to_f32();
                            }
                            self.p.scale * dot
                        })
                        .collect();
                    let m_new = s.iter().copied().fold(m, f32::max);
                    let alpha = (m - m_new).exp();
                    l *= alpha;
                    acc.iter_mut().for_each(|a| *a *= alpha);
                    for (&pos, &sj) in chunk.iter().zip(&s) {
                        let p = (sj - m_new).exp();
                        l += p;
                        let v = naive_row(&self.pool, b, 1, self.layer, kh, pos);
                        for (a, x) in acc.iter_mut().zip(v) {
                            *a += p * x.to_f32();
                        }
                    }
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

    fn reference(&self) -> AttentionOutput {
        msa_attention(
            &self.q,
            &self.spec.as_batch(),
            &self.pool.cache(),
            self.layer,
            &self.d_indices,
            &self.p,
        )
    }
}

/// A random case: shuffled pool with garbage (NaN, Inf, ±1e4) in every slot
/// that holds no token, stale lookup columns, random layer.
fn make_case(
    rng: &mut ChaCha8Rng,
    spec: RaggedSpec,
    p: MsaAttentionConfig,
    minus_one: f64,
    stale: bool,
    wild: bool,
) -> Case {
    let num_layers = rng.gen_range(1..=2);
    let layer = rng.gen_range(0..num_layers);
    let extra = rng.gen_range(0..3);
    let pool = paged_pool(
        rng,
        &spec,
        2,
        num_layers,
        p.n_kv_heads,
        p.head_dim,
        BLOCK,
        extra,
        Fill::Normal,
    );
    let extra_cols = rng.gen_range(0..2);
    let pool = pool.with_extra_columns(rng, extra_cols);
    let q = tensor(rng, spec.num_rows() * p.n_heads * p.head_dim, Fill::Normal);
    let mut d_indices = block_selection(rng, &spec, p.n_kv_heads, p.topk, minus_one, stale);
    let rows = rows_of(&spec);
    if wild {
        // Ids an indexer would not emit: duplicates and blocks past the
        // row's causal range (inside or outside the sequence), anywhere.
        for (n, x) in d_indices.iter_mut().enumerate() {
            if rng.gen_ratio(1, 3) {
                let (b, _) = rows[(n / p.topk) % rows.len()];
                let nb = spec.seqlen_k(b).div_ceil(BLOCK) as i32;
                *x = rng.gen_range(-2..nb + 2);
            }
        }
    }
    Case {
        spec,
        rows,
        pool,
        q,
        layer,
        d_indices,
        p,
    }
}

fn random_params(rng: &mut ChaCha8Rng) -> MsaAttentionConfig {
    let n_kv_heads = rng.gen_range(1..=4);
    let group = if rng.gen_ratio(1, 2) {
        [1, 2, 4, 8, 16][rng.gen_range(0..5)]
    } else {
        rng.gen_range(1..=16)
    };
    // head_dim 128 is the op's; smaller ones keep the naive loops short.
    let head_dim = if n_kv_heads * group <= 16 || rng.gen_ratio(1, 4) {
        128
    } else {
        [8, 16, 32][rng.gen_range(0..3)]
    };
    MsaAttentionConfig {
        n_heads: n_kv_heads * group,
        n_kv_heads,
        head_dim,
        topk: rng.gen_range(1..=8),
        scale: [0.088, 0.3, 1.0, -0.2][rng.gen_range(0..4)],
    }
}

fn random_spec(rng: &mut ChaCha8Rng) -> RaggedSpec {
    if rng.gen_ratio(1, 2) {
        // decode
        let batch = rng.gen_range(1..=5);
        RaggedSpec::decode((0..batch).map(|_| rng.gen_range(0..=900)).collect())
    } else {
        // ragged (chunked) prefill / speculative decoding
        let batch = rng.gen_range(1..=3);
        RaggedSpec::random(rng, batch, 8, 700)
    }
}

/// The reference equals the naive implementation, its lse normalises the
/// softmax, and a GPU-like f32 implementation passes the checker.
#[test]
fn reference_matches_naive() {
    let (mut rng, seed) = seeded(None);
    let mut counts = [0usize; 4]; // cases, rows, empty (row, head), nonempty
    for case in 0..150 {
        let p = random_params(&mut rng);
        let spec = random_spec(&mut rng);
        let minus_one = [0.0, 0.0, 0.3, 0.8, 1.0][rng.gen_range(0..5)];
        let stale = rng.gen_ratio(1, 2);
        let wild = rng.gen_ratio(1, 4);
        let c = make_case(&mut rng, spec, p, minus_one, stale, wild);
        let ctx = format!(
            "seed {seed} case {case}: {p:?} {:?} minus_one {minus_one} stale {stale} wild {wild}",
            c.spec
        );
        let r = c.reference();
        let n = c.naive();
        let (nh, d) = (p.n_heads, p.head_dim);
        assert_eq!(r.out.len(), c.spec.num_rows() * nh * d, "{ctx}");
        assert_eq!(r.lse.len(), c.spec.num_rows() * nh, "{ctx}");
        for (i, (a, b)) in r.out.iter().zip(&n.out).enumerate() {
            assert!(
                (a - b).abs() <= 1e-10 * b.abs().max(1.0),
                "{ctx}: out[{}, {}, {}] = {a} vs naive {b}",
                i / (nh * d),
                i / d % nh,
                i % d
            );
        }
        for (i, (a, b)) in r.lse.iter().zip(&n.lse).enumerate() {
            let (t, h) = (i / nh, i % nh);
            let ok = if *b == f64::NEG_INFINITY {
                *a == *b
            } else {
                (a - b).abs() <= 1e-10 * b.abs().max(1.0)
            };
            assert!(ok, "{ctx}: lse[{t}, {h}] = {a} vs naive {b}");
            // sum over keys of exp(scale * s - lse) = 1
            let keys = c.keys(t, h);
            if keys.is_empty() {
                assert!(r.out[i * d..(i + 1) * d].iter().all(|&x| x == 0.0));
                counts[2] += 1;
            } else {
                let z: f64 = keys.iter().map(|&pos| (c.score(t, h, pos) - a).exp()).sum();
                assert!((z - 1.0).abs() < 1e-9, "{ctx}: lse[{t}, {h}]: sum {z}");
                counts[3] += 1;
            }
        }
        let (g, gl) = c.f32_emulation();
        if let Err(e) = check_attention(&g, Some(&gl), &r, &p) {
            panic!("{ctx}: f32 emulation rejected: {e}");
        }
        counts[0] += 1;
        counts[1] += c.spec.num_rows();
    }
    eprintln!("cases, rows, empty and attended (row, head): {counts:?}");
    assert!(counts[2] > 0 && counts[3] > 100, "seed {seed}: {counts:?}");
}

/// Long contexts (many blocks, large topk) match the naive implementation,
/// and a GPU-like result with one (KV head, row) missing is rejected.
#[test]
fn long_context_and_large_topk() {
    let (mut rng, seed) = seeded(None);
    let spec = RaggedSpec::prefill(&[1, 3, 0, 1], &[9_000, 4_000, 17, 0]);
    let p = MsaAttentionConfig {
        n_heads: 8,
        n_kv_heads: 2,
        head_dim: 128,
        topk: 48,
        scale: 0.088,
    };
    let c = make_case(&mut rng, spec, p, 0.1, true, false);
    let r = c.reference();
    let n = c.naive();
    for (i, (a, b)) in r.out.iter().zip(&n.out).enumerate() {
        assert!(
            (a - b).abs() <= 1e-10 * b.abs().max(1.0),
            "seed {seed}: {i}: {a} {b}"
        );
    }
    for (a, b) in r.lse.iter().zip(&n.lse) {
        assert!(a == b || (a - b).abs() <= 1e-10 * b.abs(), "seed {seed}");
    }
    let (g, gl) = c.f32_emulation();
    if let Err(e) = check_attention(&g, Some(&gl), &r, &p) {
        panic!("seed {seed}: {e}");
    }
    // A wrong result is rejected: drop every slot of the attended
    // (KV head, row) with the fewest keys.
    let group = p.n_heads / p.n_kv_heads;
    let rows = c.spec.num_rows();
    let (kh, t) = (0..p.n_kv_heads)
        .flat_map(|kh| (0..rows).map(move |t| (kh, t)))
        .filter(|&(kh, t)| !c.keys(t, kh * group).is_empty())
        .min_by_key(|&(kh, t)| c.keys(t, kh * group).len())
        .expect("an attended row");
    let mut c2 = c;
    let base = (kh * rows + t) * p.topk;
    c2.d_indices[base..base + p.topk].fill(-1);
    let (g2, gl2) = c2.f32_emulation();
    let e = check_attention(&g2, Some(&gl2), &r, &p).unwrap_err();
    assert!(e.contains(&format!("row {t}")), "seed {seed}: {e}");
    let e = check_attention(&g2, None, &r, &p).unwrap_err();
    assert!(e.contains(&format!("row {t}")), "seed {seed}: {e}");
}

/// Properties of `block_selection` the GPU tests rely on.
#[test]
fn block_selection_properties() {
    let (mut rng, seed) = seeded(None);
    let mut minus = [0usize; 2]; // (-1 slots, all slots) with minus_one 0.5
    for _ in 0..40 {
        let spec = RaggedSpec::random(&mut rng, 4, 12, 1200);
        let nkv = rng.gen_range(1..=4);
        let topk = rng.gen_range(1..=16);
        let rows = rows_of(&spec);
        let blocks = |t: usize| {
            let (b, i) = rows[t];
            let q_pos = spec.cache_lengths[b] as usize + i;
            (
                (q_pos + 1).div_ceil(BLOCK),
                spec.seqlen_k(b).div_ceil(BLOCK),
            )
        };
        // Plain: distinct causal ids, then -1 padding.
        let sel = block_selection(&mut rng, &spec, nkv, topk, 0.0, false);
        assert_eq!(sel.len(), nkv * rows.len() * topk, "seed {seed}");
        for (n, row) in sel.chunks(topk.max(1)).enumerate() {
            let (causal, _) = blocks(n % rows.len());
            let k = topk.min(causal);
            let mut ids: Vec<i32> = row[..k].to_vec();
            assert!(
                ids.iter().all(|&j| j >= 0 && (j as usize) < causal),
                "seed {seed}: {row:?}"
            );
            ids.sort_unstable();
            ids.dedup();
            assert_eq!(ids.len(), k, "seed {seed}: duplicates in {row:?}");
            assert!(row[k..].iter().all(|&j| j == -1), "seed {seed}: {row:?}");
        }
        // All -1.
        let sel = block_selection(&mut rng, &spec, nkv, topk, 1.0, false);
        assert!(sel.iter().all(|&j| j == -1), "seed {seed}");
        // Some -1, some stale.
        let sel = block_selection(&mut rng, &spec, nkv, topk, 0.5, true);
        let mut stale = 0;
        for (n, row) in sel.chunks(topk.max(1)).enumerate() {
            let (causal, seq_blocks) = blocks(n % rows.len());
            for &j in row {
                assert!(
                    j == -1 || (j as usize) < causal || j as usize >= seq_blocks,
                    "seed {seed}: {j} in {row:?} (causal {causal}, sequence {seq_blocks})"
                );
                stale += usize::from(j >= 0 && j as usize >= seq_blocks);
            }
            if causal >= topk {
                minus[0] += row.iter().filter(|&&j| j == -1).count();
                minus[1] += topk;
            }
        }
        assert!(sel.is_empty() || stale > 0, "seed {seed}: no stale id");
    }
    // Among non-padding slots about half are -1 (minus the 1/8 made stale).
    let f = minus[0] as f64 / minus[1] as f64;
    assert!(
        minus[1] > 200 && (0.35..0.55).contains(&f),
        "seed {seed}: {minus:?}"
    );
    // Reproducible from the seed.
    let spec = RaggedSpec::prefill(&[5, 1, 0], &[300, 1000, 3]);
    let a = block_selection(&mut seeded(Some(7)).0, &spec, 2, 6, 0.2, true);
    let b = block_selection(&mut seeded(Some(7)).0, &spec, 2, 6, 0.2, true);
    assert_eq!(a, b);
}

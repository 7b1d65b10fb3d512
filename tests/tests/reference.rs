//! CPU-only tests of the MSA indexer reference (`sparse_attn_reference`)
//! against naive, independently written implementations, and of the shared
//! input generators (`sparse_attn_tests::data`).
//!
//! Seeds: tests that draw their own seed print `SPARSE_ATTN_SEED=<seed>`
//! (shown on failure; set the variable to replay); proptest cases carry the
//! seed of their data in the case itself, so a failing case shows it.

use half::bf16;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use sparse_attn_reference::msa_indexer::{
    block_scores, check_exact, check_selection, msa_indexer, select_blocks, MsaIndexerConfig,
    RowScores,
};
use sparse_attn_tests::data::{
    index_k_pool, paged_pool, seeded, tensor, ChaCha8Rng, Fill, PagedPool, RaggedSpec,
};
use std::cmp::Ordering;

/// Index-K row `s` of sequence `b`, read straight from the pool tensor
/// (own indexing, not `PagedCache::row`).
fn naive_key(pool: &PagedPool, b: usize, layer: usize, s: usize) -> &[bf16] {
    let l = &pool.layout;
    let page = pool.lookup[b * pool.max_pages + s / l.page_size] as usize;
    let slot = s % l.page_size;
    let per_slot = l.n_heads * l.head_dim;
    let per_layer = l.page_size * per_slot;
    let off = page * l.kv_dim * l.num_layers * per_layer + layer * per_layer + slot * per_slot;
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

/// Naive block scores, `[H * num_rows][num_blocks]`, head-major.
/// `f32 = true` emulates a GPU kernel: sequential f32 dot, f32 scale multiply.
fn naive_scores(
    q: &[bf16],
    spec: &RaggedSpec,
    pool: &PagedPool,
    layer: usize,
    p: &MsaIndexerConfig,
    f32_math: bool,
) -> Vec<Vec<f64>> {
    let rows = rows_of(spec);
    let (h_n, d) = (p.num_index_heads, p.head_dim);
    let mut out = Vec::new();
    for h in 0..h_n {
        for (t, &(b, i)) in rows.iter().enumerate() {
            let qv = &q[(t * h_n + h) * d..(t * h_n + h + 1) * d];
            let num_keys = spec.cache_lengths[b] as usize + i + 1;
            let dots: Vec<f64> = (0..num_keys)
                .map(|s| {
                    let k = naive_key(pool, b, layer, s);
                    if f32_math {
                        let mut acc = 0f32;
                        for (x, y) in qv.iter().zip(k) {
                            acc += x.to_f32() * y.to_f32();
                        }
                        (p.scale * acc) as f64
                    } else {
                        let dot: f64 = qv.iter().zip(k).map(|(x, y)| x.to_f64() * y.to_f64()).sum();
                        p.scale as f64 * dot
                    }
                })
                .collect();
            let scores = dots
                .chunks(128)
                .map(|c| c.iter().copied().fold(f64::NEG_INFINITY, f64::max))
                .collect();
            out.push(scores);
        }
    }
    out
}

/// Sort-based selection written from the spec's words.
fn naive_select(scores: &[f64], p: &MsaIndexerConfig) -> Vec<i32> {
    let nb = scores.len();
    let mut v: Vec<(f64, usize)> = (0..nb)
        .map(|j| {
            let mut s = scores[j];
            if j < p.init_blocks {
                s = 1e30;
            }
            if p.local_blocks > 0 && j + p.local_blocks >= nb {
                s = 1e29;
            }
            (s, j)
        })
        .collect();
    v.sort_by(|a, b| {
        a.0.is_nan()
            .cmp(&b.0.is_nan())
            .then(b.0.partial_cmp(&a.0).unwrap_or(Ordering::Equal))
            .then(a.1.cmp(&b.1))
    });
    let mut out: Vec<i32> = v.iter().take(p.topk).map(|&(_, j)| j as i32).collect();
    out.resize(p.topk, -1);
    out
}

fn naive_op(scores: &[Vec<f64>], p: &MsaIndexerConfig) -> Vec<i32> {
    scores.iter().flat_map(|s| naive_select(s, p)).collect()
}

/// One random problem.
struct Case {
    spec: RaggedSpec,
    pool: PagedPool,
    q: Vec<bf16>,
    layer: usize,
    p: MsaIndexerConfig,
}

impl Case {
    fn scores(&self) -> Vec<RowScores> {
        block_scores(
            &self.q,
            &self.spec.as_batch(),
            &self.pool.cache(),
            self.layer,
            &self.p,
        )
    }

    fn op(&self) -> Vec<i32> {
        msa_indexer(
            &self.q,
            &self.spec.as_batch(),
            &self.pool.cache(),
            self.layer,
            &self.p,
        )
    }
}

fn make_case(rng: &mut ChaCha8Rng, spec: RaggedSpec, p: MsaIndexerConfig, fill: Fill) -> Case {
    let num_layers = rng.gen_range(1..=2);
    let layer = rng.gen_range(0..num_layers);
    let extra = rng.gen_range(0..3);
    let pool = index_k_pool(rng, &spec, num_layers, p.head_dim, extra, fill);
    let extra_cols = rng.gen_range(0..2);
    let pool = pool.with_extra_columns(rng, extra_cols);
    let q = tensor(rng, spec.num_rows() * p.num_index_heads * p.head_dim, fill);
    Case {
        spec,
        pool,
        q,
        layer,
        p,
    }
}

const SCALES: [f32; 4] = [1.0, 0.5, 0.125, -0.25];

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(160))]

    /// Integer inputs: every score is exact, so the reference, the naive f64
    /// and the naive f32 implementations agree exactly, order included.
    #[test]
    fn reference_matches_naive_on_integers(
        seed in any::<u64>(),
        batch in 1usize..=4,
        max_q in 0u32..=6,
        max_cache in 0u32..=700,
        heads in 1usize..=3,
        head_dim in 1usize..=12,
        topk in 1usize..=10,
        init in 0usize..=4,
        local in 0usize..=4,
        scale_i in 0usize..4,
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let spec = RaggedSpec::random(&mut rng, batch, max_q, max_cache);
        let p = MsaIndexerConfig {
            num_index_heads: heads, head_dim, block_size: 128, topk, init_blocks: init,
            local_blocks: local, scale: SCALES[scale_i],
        };
        let c = make_case(&mut rng, spec, p, Fill::SmallInts);
        let sc = c.scores();
        let n64 = naive_scores(&c.q, &c.spec, &c.pool, c.layer, &p, false);
        let n32 = naive_scores(&c.q, &c.spec, &c.pool, c.layer, &p, true);
        prop_assert_eq!(sc.len(), n64.len());
        for (rs, n) in sc.iter().zip(&n64) {
            prop_assert_eq!(&rs.raw, n);
            prop_assert_eq!(rs.tol.len(), rs.num_blocks);
            prop_assert!(rs.tol.iter().all(|&t| t >= 0.0));
        }
        prop_assert_eq!(&n32, &n64);
        let out = c.op();
        prop_assert_eq!(&out, &naive_op(&n64, &p));
        prop_assert_eq!(out.len(), heads * c.spec.num_rows() * topk);
        let n32_out = naive_op(&n32, &p);
        prop_assert_eq!(check_exact(&n32_out, &sc, &p), Ok(()));
        prop_assert_eq!(check_selection(&out, &sc, &p), Ok(()));
    }

    /// Normal inputs: a GPU-like f32 implementation passes the tolerant
    /// check, and so does the naive f64 one.
    #[test]
    fn f32_emulation_passes_tolerant_check(
        seed in any::<u64>(),
        batch in 1usize..=3,
        max_q in 0u32..=4,
        max_cache in 0u32..=1500,
        heads in 1usize..=2,
        head_dim in prop::sample::select(vec![16usize, 64, 128]),
        topk in 1usize..=12,
        init in 0usize..=2,
        local in 0usize..=2,
        scale_i in 0usize..4,
    ) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let spec = RaggedSpec::random(&mut rng, batch, max_q, max_cache);
        let p = MsaIndexerConfig {
            num_index_heads: heads, head_dim, block_size: 128, topk, init_blocks: init,
            local_blocks: local, scale: SCALES[scale_i] * 0.088,
        };
        let c = make_case(&mut rng, spec, p, Fill::Normal);
        let sc = c.scores();
        let n64 = naive_scores(&c.q, &c.spec, &c.pool, c.layer, &p, false);
        for (rs, n) in sc.iter().zip(&n64) {
            for (a, b) in rs.raw.iter().zip(n) {
                prop_assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()), "{} vs {}", a, b);
            }
        }
        let n32 = naive_scores(&c.q, &c.spec, &c.pool, c.layer, &p, true);
        prop_assert_eq!(check_selection(&naive_op(&n32, &p), &sc, &p), Ok(()));
        prop_assert_eq!(check_selection(&naive_op(&n64, &p), &sc, &p), Ok(()));
        prop_assert_eq!(check_selection(&c.op(), &sc, &p), Ok(()));
    }

    /// `select_blocks` equals the sort-based selection on arbitrary scores,
    /// NaN and infinities included.
    #[test]
    fn select_blocks_matches_sort(
        scores in prop::collection::vec(
            prop_oneof![
                4 => (-3i32..=3).prop_map(f64::from),
                1 => Just(f64::NAN),
                1 => Just(f64::INFINITY),
                1 => Just(f64::NEG_INFINITY),
                1 => -1e3f64..1e3,
            ],
            0..40,
        ),
        topk in 0usize..=45,
        init in 0usize..=6,
        local in 0usize..=6,
    ) {
        let p = MsaIndexerConfig {
            num_index_heads: 1, head_dim: 1, block_size: 128, topk, init_blocks: init,
            local_blocks: local, scale: 1.0,
        };
        prop_assert_eq!(select_blocks(&scores, init, local, topk), naive_select(&scores, &p));
    }
}

/// A checker that cannot fail is a defect: mutate correct outputs of random
/// problems and require every mutation to be rejected.
#[test]
fn mutations_are_rejected() {
    let (mut rng, seed) = seeded(None);
    // Long enough that every row has unselected non-forced blocks.
    let cache: Vec<u32> = (0..5).map(|_| rng.gen_range(900..3000)).collect();
    let spec = RaggedSpec::prefill(&[1, 0, 7, 3, 2], &cache);
    let p = MsaIndexerConfig {
        num_index_heads: 2,
        head_dim: 32,
        block_size: 128,
        topk: 4,
        init_blocks: 1,
        local_blocks: 1,
        scale: 0.17,
    };
    let c = make_case(&mut rng, spec, p, Fill::Normal);
    let sc = c.scores();
    let out = c.op();
    check_selection(&out, &sc, &p).unwrap();
    let k = p.topk;
    let mut rejected = [0usize; 4];
    for (r, rs) in sc.iter().enumerate() {
        let row = &out[r * k..(r + 1) * k];
        let n = k.min(rs.num_blocks);
        let forced = |j: usize| j < p.init_blocks || j + p.local_blocks >= rs.num_blocks;
        // 1. replace a selected non-forced block by a clearly worse unselected one
        if let Some(u) = (0..rs.num_blocks)
            .filter(|&u| !forced(u) && !row.contains(&(u as i32)))
            .min_by(|&a, &b| rs.raw[a].total_cmp(&rs.raw[b]))
        {
            for slot in 0..n {
                let a = row[slot] as usize;
                if !forced(a) && rs.raw[a] - rs.raw[u] > 2.0 * rs.tol[a].max(rs.tol[u]) {
                    let mut bad = out.clone();
                    bad[r * k + slot] = u as i32;
                    assert!(
                        check_selection(&bad, &sc, &p).is_err(),
                        "seed {seed}: swap accepted"
                    );
                    rejected[0] += 1;
                    break;
                }
            }
        }
        // 2. duplicate an id
        if n >= 2 {
            let mut bad = out.clone();
            bad[r * k + 1] = bad[r * k];
            assert!(check_selection(&bad, &sc, &p).is_err(), "seed {seed}");
            rejected[1] += 1;
        }
        // 3. break the padding (or drop a valid id)
        let mut bad = out.clone();
        bad[r * k + k - 1] = if n < k { 0 } else { -1 };
        assert!(check_selection(&bad, &sc, &p).is_err(), "seed {seed}");
        rejected[2] += 1;
        // 4. drop a forced block
        if let Some(slot) = (0..n).find(|&s| forced(row[s] as usize)) {
            if let Some(u) = (0..rs.num_blocks).find(|&u| !row.contains(&(u as i32))) {
                let mut bad = out.clone();
                bad[r * k + slot] = u as i32;
                assert!(check_selection(&bad, &sc, &p).is_err(), "seed {seed}");
                rejected[3] += 1;
            }
        }
    }
    assert!(
        rejected.iter().all(|&n| n > 0),
        "seed {seed}: too few mutations exercised: {rejected:?}"
    );
}

/// Long contexts (`num_blocks` much larger than `topk`) and a chunked
/// prefill, with a shuffled shared pool.
#[test]
fn long_context_and_chunked_prefill() {
    let (mut rng, seed) = seeded(None);
    let spec = RaggedSpec::prefill(&[1, 1, 40, 0], &[131_071, 5_000, 1_000, 9]);
    let p = MsaIndexerConfig {
        num_index_heads: 2,
        head_dim: 128,
        block_size: 128,
        topk: 16,
        init_blocks: 1,
        local_blocks: 2,
        scale: 0.088,
    };
    let c = make_case(&mut rng, spec.clone(), p, Fill::Normal);
    let sc = c.scores();
    assert_eq!(sc[0].num_blocks, 1024);
    let n32 = naive_scores(&c.q, &c.spec, &c.pool, c.layer, &p, true);
    if let Err(e) = check_selection(&naive_op(&n32, &p), &sc, &p) {
        panic!("seed {seed}: {e}");
    }
    // Integer version: exact, order included.
    let pi = MsaIndexerConfig { scale: 0.5, ..p };
    let c = make_case(&mut rng, spec, pi, Fill::SmallInts);
    let sc = c.scores();
    let n32 = naive_scores(&c.q, &c.spec, &c.pool, c.layer, &pi, true);
    if let Err(e) = check_exact(&naive_op(&n32, &pi), &sc, &pi) {
        panic!("seed {seed}: {e}");
    }
    assert_eq!(c.op(), naive_op(&n32, &pi), "seed {seed}");
}

/// Properties of the generated pools the GPU tests rely on.
#[test]
fn paged_pool_properties() {
    let (mut rng, seed) = seeded(None);
    for _ in 0..20 {
        let spec = RaggedSpec::random(&mut rng, 5, 20, 300);
        let page_size = [16, 64, 128][rng.gen_range(0..3)];
        let extra = rng.gen_range(0..4);
        let pool = paged_pool(
            &mut rng,
            &spec,
            2,
            2,
            3,
            8,
            page_size,
            extra,
            Fill::SmallInts,
        );
        let l = pool.layout;
        assert_eq!(pool.data.len(), l.elements());
        let needed: usize = (0..spec.batch())
            .map(|b| spec.seqlen_k(b).div_ceil(page_size))
            .sum();
        assert_eq!(l.num_pages, (needed + extra).max(1), "seed {seed}");
        assert_eq!(pool.lookup.len(), spec.batch() * pool.max_pages);
        assert!(pool.lookup.iter().all(|&x| (x as usize) < l.num_pages));
        let mut used = vec![false; l.num_pages];
        for b in 0..spec.batch() {
            for &pg in pool.pages_of(&spec, b) {
                assert!(!used[pg as usize], "seed {seed}: page {pg} used twice");
                used[pg as usize] = true;
            }
        }
        assert_eq!(used.iter().filter(|&&u| u).count(), needed);
        // Token slots hold fill values, every other slot garbage.
        let is_garbage = |x: bf16| !x.is_finite() || x.to_f32().abs() >= 1e4;
        let cache = pool.cache();
        let mut token = vec![false; l.elements()];
        for b in 0..spec.batch() {
            for t in 0..spec.seqlen_k(b) {
                for kv in 0..2 {
                    for layer in 0..2 {
                        for h in 0..3 {
                            let row = cache.row(b, kv, layer, h, t);
                            assert!(row.iter().all(|x| x.to_f32().abs() <= 4.0));
                            let page = pool.lookup[b * pool.max_pages + t / page_size] as usize;
                            let off = l.offset(page, kv, layer, t % page_size, h);
                            token[off..off + 8].iter_mut().for_each(|x| *x = true);
                        }
                    }
                }
            }
        }
        for (i, &x) in pool.data.iter().enumerate() {
            assert_eq!(is_garbage(x), !token[i], "seed {seed}: element {i}");
        }
        let wide = pool.clone().with_extra_columns(&mut rng, 2);
        assert_eq!(wide.max_pages, pool.max_pages + 2);
        for b in 0..spec.batch() {
            assert_eq!(wide.pages_of(&spec, b), pool.pages_of(&spec, b));
        }
    }
}

#[test]
fn generators_are_reproducible() {
    let gen = |seed| {
        let (mut rng, s) = seeded(Some(seed));
        assert_eq!(s, seed);
        let spec = RaggedSpec::random(&mut rng, 4, 300, 5000);
        let pool = index_k_pool(&mut rng, &spec, 1, 64, 3, Fill::Normal);
        let q = tensor(&mut rng, 100_000, Fill::Normal);
        let bits = |v: &[bf16]| v.iter().map(|x| x.to_bits()).collect::<Vec<u16>>();
        (spec, bits(&pool.data), pool.lookup, bits(&q))
    };
    let a = gen(42);
    assert!(a == gen(42));
    assert!(a.3 != gen(43).3);
    // Normal fill looks like N(0, 1).
    let q: Vec<f64> = a.3.iter().map(|&x| bf16::from_bits(x).to_f64()).collect();
    let mean = q.iter().sum::<f64>() / q.len() as f64;
    let var = q.iter().map(|x| x * x).sum::<f64>() / q.len() as f64;
    assert!(
        mean.abs() < 0.02 && (var - 1.0).abs() < 0.03,
        "{mean} {var}"
    );
    let ints = tensor(&mut seeded(Some(1)).0, 10_000, Fill::SmallInts);
    assert!(ints
        .iter()
        .all(|x| x.to_f32().fract() == 0.0 && x.to_f32().abs() <= 4.0));
    for v in [-4.0f32, 4.0, 0.0] {
        assert!(ints.iter().any(|x| x.to_f32() == v));
    }
}

#[test]
fn ragged_spec_helpers() {
    let d = RaggedSpec::decode(vec![5, 0, 7]);
    assert_eq!(d.offsets, vec![0, 1, 2, 3]);
    assert_eq!((d.batch(), d.num_rows(), d.seqlen_k(2)), (3, 3, 8));
    let p = RaggedSpec::prefill(&[3, 0, 2], &[10, 4, 0]);
    assert_eq!(p.offsets, vec![0, 3, 3, 5]);
    assert_eq!((p.q_len(1), p.seqlen_k(0), p.max_seqlen_k()), (0, 13, 13));
    let e = RaggedSpec::prefill(&[], &[]);
    assert_eq!((e.batch(), e.num_rows(), e.max_seqlen_k()), (0, 0, 0));
}

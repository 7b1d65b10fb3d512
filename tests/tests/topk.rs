//! The standalone top-k on the GPU against the reference (exact: the order
//! is fully defined): rows of 1 entry to 1M (clusters of 1 to 16 CTAs,
//! chunks not a multiple of anything), `k` of 1, 100 and 2048, `k` above
//! the row's entries (`-1` padding), per-row lengths, heavy exact ties
//! (ReLU-like rows: most entries 0, others from 4 values), NaN, ±Inf and
//! -0.0, all-equal rows; a CUDA-graph replay; the named errors.
//!
//! The kernel's paths (`kernels-gpu/src/topk.rs`): chunks of at most 8192
//! entries read once and kept in shared memory, longer ones read again
//! with the threshold bin's keys gathered in shared memory, and the
//! fallback where a CTA holds more than 4096 keys of that bin (every digit
//! re-reads the chunk); the
//! threshold bin all ties (resolved on the index bits), cuts on the
//! 12-bit bins' first and last floats, row lengths around `k` and the
//! chunk sizes.
//!
//! GPU tests print `SKIP` where there is no NVIDIA driver; every random case
//! prints its seed (`SPARSE_ATTN_SEED=<n>` replays it). The output is
//! poisoned before every launch and must be written in full.

use rand::Rng;
use sparse_attn::{Error, Gpu, TopK};
use sparse_attn_reference::topk::topk_rows as reference;
use sparse_attn_tests::data::seeded;
use sparse_attn_tests::harness::{capture_and_replay, gpu_or_skip as gpu};

const POISON: i32 = i32::MIN;

/// How a row's scores are drawn.
#[derive(Clone, Copy, Debug)]
enum Scores {
    /// Standard normal-ish: almost no ties.
    Spread,
    /// 70% exactly 0, the rest one of 4 values: ties everywhere.
    Relu,
    /// Spread with NaN, ±Inf, -0.0 and +0.0 mixed in.
    Specials,
    /// Every entry 1.0: the lowest indices win.
    Equal,
}

fn draw(rng: &mut impl Rng, len: usize, kind: Scores) -> Vec<f32> {
    (0..len)
        .map(|_| match kind {
            Scores::Spread => rng.gen_range(-4.0f32..4.0),
            Scores::Relu => {
                if rng.gen_bool(0.7) {
                    0.0
                } else {
                    [0.5f32, 1.0, 1.5, 3.0][rng.gen_range(0..4)]
                }
            }
            Scores::Specials => match rng.gen_range(0..10) {
                0 => f32::NAN,
                1 => f32::INFINITY,
                2 => f32::NEG_INFINITY,
                3 => -0.0,
                4 => 0.0,
                _ => rng.gen_range(-2.0f32..2.0),
            },
            Scores::Equal => 1.0,
        })
        .collect()
}

/// `(rows, n, k)`.
type Shape = (usize, usize, usize);

/// Runs one shape on fresh data and compares with the reference.
fn check(
    gpu: &Gpu,
    op: &mut TopK,
    rng: &mut impl Rng,
    (rows, n, k): Shape,
    kind: Scores,
    lens: bool,
) {
    let scores = draw(rng, rows * n, kind);
    let row_lens: Option<Vec<u32>> =
        lens.then(|| (0..rows).map(|_| rng.gen_range(0..=n as u32 + 5)).collect());
    let name = format!("{kind:?} lens {lens}");
    compare(gpu, op, &name, &scores, (rows, n, k), row_lens.as_deref());
}

/// Plans `(rows, n, k)`, runs it on `scores` (and `row_lens`) and compares
/// every slot with the reference.
fn compare(
    gpu: &Gpu,
    op: &mut TopK,
    name: &str,
    scores: &[f32],
    (rows, n, k): Shape,
    row_lens: Option<&[u32]>,
) {
    let want = reference(scores, rows, n, k, row_lens);
    op.plan(rows, n, k).unwrap();
    let d_scores = gpu.upload(scores).unwrap();
    let d_lens = row_lens.map(|l| gpu.upload(l).unwrap());
    let mut out = gpu.upload(&vec![POISON; rows * k]).unwrap();
    op.run(&d_scores, d_lens.as_ref().map(|l| l as _), &mut out)
        .unwrap();
    let got = gpu.download(&out).unwrap();
    if let Some(r) = (0..rows).find(|&r| got[r * k..(r + 1) * k] != want[r * k..(r + 1) * k]) {
        let s = (0..k).find(|&s| got[r * k + s] != want[r * k + s]).unwrap();
        panic!(
            "{name}: rows {rows} n {n} k {k} ({:?} CTAs a row): row {r} slot {s}: got {}, want {} (len {:?})",
            op.cluster(),
            got[r * k + s],
            want[r * k + s],
            row_lens.map(|l| l[r])
        );
    }
}

#[test]
fn matches_reference() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, _) = seeded(None);
    let mut op = TopK::new(&gpu).unwrap();
    let shapes: &[Shape] = &[
        (1, 1, 1),
        (3, 63, 2048),
        (2, 2047, 2048),
        (2, 2048, 2048),
        (2, 2049, 2048),
        (4, 8191, 100),
        (3, 8193, 2048),
        (2, 40_000, 1),
        (2, 131_072 + 5, 2048),
        (1, 300_001, 2048),
        (1, 1 << 20, 2048),
    ];
    for &(rows, n, k) in shapes {
        for kind in [
            Scores::Spread,
            Scores::Relu,
            Scores::Specials,
            Scores::Equal,
        ] {
            check(&gpu, &mut op, &mut rng, (rows, n, k), kind, false);
        }
        check(&gpu, &mut op, &mut rng, (rows, n, k), Scores::Relu, true);
    }
}

#[test]
fn empty_rows_and_many_rows() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, _) = seeded(None);
    let mut op = TopK::new(&gpu).unwrap();
    check(&gpu, &mut op, &mut rng, (5, 0, 16), Scores::Spread, false);
    check(&gpu, &mut op, &mut rng, (300, 3000, 64), Scores::Relu, true);
    check(
        &gpu,
        &mut op,
        &mut rng,
        (64, 20_000, 2048),
        Scores::Specials,
        true,
    );
}

#[test]
fn graph_replay_matches_eager() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, _) = seeded(None);
    let (rows, n, k) = (8, 50_000, 2048);
    let scores = draw(&mut rng, rows * n, Scores::Relu);
    let want = reference(&scores, rows, n, k, None);
    let mut op = TopK::new(&gpu).unwrap();
    op.plan(rows, n, k).unwrap();
    let d_scores = gpu.upload(&scores).unwrap();
    let mut out = gpu.upload(&vec![POISON; rows * k]).unwrap();
    capture_and_replay(&gpu, || op.run(&d_scores, None, &mut out).unwrap());
    assert_eq!(gpu.download(&out).unwrap(), want);
}

#[test]
fn bad_input_is_a_named_error() {
    let Some(gpu) = gpu() else { return };
    let mut op = TopK::new(&gpu).unwrap();
    let arg = |e: Error| match e {
        Error::InvalidArgument { arg, .. } | Error::Unsupported { arg, .. } => arg,
        e => panic!("unexpected error {e}"),
    };
    let scores = gpu.zeros::<f32>(4 * 100).unwrap();
    let mut out = gpu.zeros::<i32>(4 * 10).unwrap();
    assert!(matches!(
        op.run(&scores, None, &mut out),
        Err(Error::NotPlanned { .. })
    ));
    assert_eq!(arg(op.plan(4, 100, 0).unwrap_err()), "k");
    assert_eq!(arg(op.plan(4, 100, 2049).unwrap_err()), "k");
    assert_eq!(arg(op.plan(1, op.max_n() + 1, 8).unwrap_err()), "n");
    op.plan(4, 100, 10).unwrap();
    let short = gpu.zeros::<f32>(399).unwrap();
    assert_eq!(arg(op.run(&short, None, &mut out).unwrap_err()), "scores");
    let mut small = gpu.zeros::<i32>(39).unwrap();
    assert_eq!(arg(op.run(&scores, None, &mut small).unwrap_err()), "out");
    let lens = gpu.zeros::<u32>(3).unwrap();
    assert_eq!(
        arg(op.run(&scores, Some(&lens), &mut out).unwrap_err()),
        "row_lens"
    );
}

/// The threshold bin all ties: 100K equal scores from a random start, 1 in
/// 997 entries larger (kept first), the rest smaller; `k = 2048` keeps the
/// larger ones and the lowest-indexed ties. One 128K row is 16 CTAs of
/// 8192 entries kept in shared memory (the ties resolved on the index
/// digits); the longer rows' CTAs hold more than 4096 of the tied keys: the
/// fallback.
#[test]
fn ties_in_the_threshold_bin() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, _) = seeded(None);
    let mut op = TopK::new(&gpu).unwrap();
    for &(rows, n) in &[(1, 131_072), (3, 131_072 + 5), (64, 131_072), (1, 300_001)] {
        let mut scores = Vec::with_capacity(rows * n);
        for _ in 0..rows {
            let start = rng.gen_range(0..=n - 100_000);
            scores.extend((0..n).map(|j| {
                if j % 997 == 5 {
                    1.0 + (j % 7) as f32
                } else if (start..start + 100_000).contains(&j) {
                    0.5
                } else {
                    rng.gen_range(-1.0f32..0.4)
                }
            }));
        }
        compare(&gpu, &mut op, "ties", &scores, (rows, n, 2048), None);
    }
}

/// Cuts on the edges of the first digit's bins (12 bits: sign, exponent, 3
/// mantissa bits): scores from the floats next to 2.0, 2.25, 1.0, 0 and
/// -2.0 (each bin's first and last float, ±0 and the smallest subnormals);
/// rows whose `k` largest fill exactly the bins from 2.0 up (the cut on the
/// first digit alone), or all but one of them, with ties just below 2.0.
#[test]
fn bin_edges() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, _) = seeded(None);
    let mut op = TopK::new(&gpu).unwrap();
    let down = |x: f32| f32::from_bits(x.to_bits() - 1); // x > 0
    let edges: Vec<f32> = [2.0f32, 2.25, 1.0]
        .iter()
        .flat_map(|&e| [down(e), e, f32::from_bits(e.to_bits() + 1)])
        .chain([-2.0, f32::from_bits(0xc000_0001), -down(2.0)])
        .chain([0.0, -0.0, f32::from_bits(1), -f32::from_bits(1)])
        .collect();
    for &(rows, n) in &[(3, 20_000), (2, 131_072), (2, 300_001)] {
        for k in [1, 2048] {
            let pick: Vec<f32> = (0..rows * n)
                .map(|_| edges[rng.gen_range(0..edges.len())])
                .collect();
            compare(&gpu, &mut op, "edge floats", &pick, (rows, n, k), None);
            for above in [k, k - 1] {
                // `above` entries in [2.0, 2.25) at random places, the rest
                // below 2.0 (ties at its float below where `above < k`).
                let mut scores = Vec::with_capacity(rows * n);
                for _ in 0..rows {
                    let mut row: Vec<f32> = (0..n)
                        .map(|j| {
                            if j < above {
                                rng.gen_range(2.0f32..2.25)
                            } else if above < k && j % 3 == 0 {
                                down(2.0)
                            } else {
                                rng.gen_range(-4.0f32..1.99)
                            }
                        })
                        .collect();
                    for j in (1..n).rev() {
                        row.swap(j, rng.gen_range(0..=j));
                    }
                    scores.extend(row);
                }
                let name = format!("{above} in the bins from 2.0");
                compare(&gpu, &mut op, &name, &scores, (rows, n, k), None);
            }
        }
    }
}

/// Rows of 1, 2047, 2048, 2049 (around `k`), 8192, 8193 (a CTA's resident
/// chunk) and 65537 entries, `k` of 1 and 2048; then the same lengths per
/// row in rows of 70000.
#[test]
fn row_lengths() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, _) = seeded(None);
    let mut op = TopK::new(&gpu).unwrap();
    for n in [1, 2047, 2048, 2049, 8192, 8193, 65_537] {
        for k in [1, 2048] {
            for kind in [Scores::Spread, Scores::Relu] {
                check(&gpu, &mut op, &mut rng, (3, n, k), kind, false);
            }
        }
    }
    let lens: Vec<u32> = vec![
        0, 1, 2047, 2048, 2049, 8192, 8193, 65_536, 65_537, 70_000, 70_005,
    ];
    let (rows, n) = (lens.len(), 70_000);
    for kind in [Scores::Spread, Scores::Relu, Scores::Specials] {
        let scores = draw(&mut rng, rows * n, kind);
        for k in [1, 2048] {
            let name = format!("{kind:?} per-row lengths");
            compare(&gpu, &mut op, &name, &scores, (rows, n, k), Some(&lens));
        }
    }
}

/// The sampled threshold of long chunks (`kernels-gpu/src/topk.rs`,
/// `sampled_candidates`: every CTA samples entries `stride · i` of its
/// chunk, `stride = chunk / 2048`) misled on purpose: samples far above
/// the rest (the cut keeps too few: the fallback), far below (the CTAs
/// overflow their candidate space: the fallback), and samples like the
/// rest (the candidates alone). Clusters of 1 CTA of 20000 entries, and of
/// 2 and 4 CTAs of 64K / 32K.
#[test]
fn misleading_samples() {
    let Some(gpu) = gpu() else { return };
    let (mut rng, _) = seeded(None);
    let mut op = TopK::new(&gpu).unwrap();
    let rows = 3;
    for (cluster, n) in [(1, 20_000), (2, 131_072), (4, 131_072)] {
        op.force_cluster(Some(cluster));
        let chunk = (n / cluster as usize).next_multiple_of(4);
        let stride = chunk / 2048;
        for k in [1, 100, 2048] {
            for (what, sample) in [("high", 8.0f32), ("low", -8.0), ("like the rest", 0.0)] {
                let mut scores = draw(&mut rng, rows * n, Scores::Spread);
                for (j, s) in scores.iter_mut().enumerate() {
                    if sample != 0.0 && ((j % n) % chunk).is_multiple_of(stride) {
                        *s = sample + rng.gen_range(-1.0f32..1.0);
                    }
                }
                let name = format!("samples {what}, {cluster} CTAs a row");
                compare(&gpu, &mut op, &name, &scores, (rows, n, k), None);
            }
        }
    }
    op.force_cluster(None);
}

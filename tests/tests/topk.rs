//! The standalone top-k on the GPU against the reference (exact: the order
//! is fully defined): rows of 1 entry to 300K (clusters of 1 to 16 CTAs,
//! chunks not a multiple of anything), `k` of 1, 100 and 2048, `k` above
//! the row's entries (`-1` padding), per-row lengths, heavy exact ties
//! (ReLU-like rows: most entries 0, others from 4 values), NaN, ±Inf and
//! -0.0, all-equal rows; a CUDA-graph replay; the named errors.
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
    let want = reference(&scores, rows, n, k, row_lens.as_deref());
    op.plan(rows, n, k).unwrap();
    let d_scores = gpu.upload(&scores).unwrap();
    let d_lens = row_lens.as_ref().map(|l| gpu.upload(l).unwrap());
    let mut out = gpu.upload(&vec![POISON; rows * k]).unwrap();
    op.run(&d_scores, d_lens.as_ref(), &mut out).unwrap();
    let got = gpu.download(&out).unwrap();
    if let Some(r) = (0..rows).find(|&r| got[r * k..(r + 1) * k] != want[r * k..(r + 1) * k]) {
        let s = (0..k).find(|&s| got[r * k + s] != want[r * k + s]).unwrap();
        panic!(
            "rows {rows} n {n} k {k} {kind:?} lens {lens}: row {r} slot {s}: got {}, want {} (len {:?})",
            got[r * k + s],
            want[r * k + s],
            row_lens.as_ref().map(|l| l[r])
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

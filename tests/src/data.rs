//! Seeded random inputs shared by the GPU tests, the benchmarks and the demo.
//!
//! Everything is generated from a [`ChaCha8Rng`] obtained with [`seeded`],
//! which reads `SPARSE_ATTN_SEED` so that any failing run can be replayed.
//! Large tensors are generated in parallel from per-chunk ChaCha streams, so
//! the values depend only on the seed (never on the thread count).
//!
//! Paged pools use MAX's layout
//! `[num_pages, kv_dim, num_layers, page_size, n_heads, head_dim]` (abi's
//! [`PagedLayout`], the type the host and the reference take); pages are handed to sequences in a
//! shuffled order, the pool has unused pages, stale lookup entries hold valid
//! but unrelated page ids, and every slot that holds no token of a sequence
//! contains garbage (±1e4..3e4, NaN, ±Inf), never zeros, so a kernel that
//! reads past a sequence's keys gives a visibly wrong answer.

use half::bf16;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
pub use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use sparse_attn_abi::batch::{KvDtype, PageTable, PagedLayout, RaggedBatch, RowPos};
use sparse_attn_reference::paged::PagedCache;

/// Environment variable that fixes the seed of [`seeded`] (decimal or `0x` hex).
pub const SEED_ENV: &str = "SPARSE_ATTN_SEED";

/// Elements per independently seeded chunk of a generated tensor.
const CHUNK: usize = 1 << 16;

/// A seeded generator. `Some(seed)` is used as given; with `None` the seed
/// comes from `SPARSE_ATTN_SEED` if set, else from the clock. The seed is
/// printed to stderr (`SPARSE_ATTN_SEED=<seed>`) and returned so that
/// callers can report it.
///
/// Panics if `SPARSE_ATTN_SEED` is set but is not a `u64`.
pub fn seeded(seed: Option<u64>) -> (ChaCha8Rng, u64) {
    let seed = seed.or_else(env_seed).unwrap_or_else(clock_seed);
    eprintln!("{SEED_ENV}={seed}");
    (ChaCha8Rng::seed_from_u64(seed), seed)
}

fn env_seed() -> Option<u64> {
    let s = std::env::var(SEED_ENV).ok()?;
    let t = s.trim();
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => t.parse::<u64>(),
    };
    match parsed {
        Ok(v) => Some(v),
        Err(e) => panic!("{SEED_ENV}={s:?} is not a u64: {e}"),
    }
}

fn clock_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    // splitmix64 finaliser of the nanoseconds and the process id
    let mut z = (nanos as u64) ^ ((nanos >> 64) as u64) ^ (u64::from(std::process::id()) << 32);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// An owned ragged batch: `offsets: u32 [batch + 1]` (`input_row_offsets`,
/// rows of sequence `b` are `offsets[b] .. offsets[b + 1]`) and
/// `cache_lengths: u32 [batch]` (tokens cached before this step), with the
/// generators of the tests. Its arithmetic is abi's [`RaggedBatch`]'s
/// ([`RaggedSpec::as_batch`]); the accessors here only forward to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaggedSpec {
    /// `u32 [batch + 1]`, `offsets[0] = 0`, non-decreasing.
    pub offsets: Vec<u32>,
    /// `u32 [batch]`.
    pub cache_lengths: Vec<u32>,
}

impl RaggedSpec {
    /// The borrowed batch the host API and the reference take.
    pub fn as_batch(&self) -> RaggedBatch<'_> {
        RaggedBatch::new(&self.offsets, &self.cache_lengths)
    }

    /// Number of sequences.
    pub fn batch(&self) -> usize {
        self.as_batch().batch()
    }

    /// Total new tokens (`offsets[batch]`).
    pub fn num_rows(&self) -> usize {
        self.as_batch().num_rows()
    }

    /// New tokens of sequence `b`.
    pub fn q_len(&self, b: usize) -> usize {
        self.as_batch().q_len(b)
    }

    /// Keys of sequence `b` after this step: `cache_len[b] + q_len[b]`.
    pub fn seqlen_k(&self, b: usize) -> usize {
        self.as_batch().seqlen_k(b) as usize
    }

    /// Largest `seqlen_k` of the batch (0 for an empty batch).
    pub fn max_seqlen_k(&self) -> usize {
        self.as_batch().max_seqlen_k() as usize
    }

    /// Decode step: one new token per sequence.
    pub fn decode(cache_lengths: Vec<u32>) -> Self {
        let offsets = (0..=cache_lengths.len() as u32).collect();
        RaggedSpec {
            offsets,
            cache_lengths,
        }
    }

    /// Cross-attention rows aligned bottom-right (FlashAttention's causal
    /// convention): sequence `b`'s `q_lens[b]` rows end at key
    /// `kv_lens[b]`, i.e. start at position `kv_lens[b] - q_lens[b]` (0 when
    /// there are more rows than keys).
    pub fn bottom_right(q_lens: &[u32], kv_lens: &[u32]) -> Self {
        let cache: Vec<u32> = q_lens
            .iter()
            .zip(kv_lens)
            .map(|(&q, &k)| k.saturating_sub(q))
            .collect();
        Self::prefill(q_lens, &cache)
    }

    /// Prefill / chunked prefill: `q_lens[b]` new tokens on `cache_lengths[b]`
    /// cached ones. Panics if the two slices differ in length.
    pub fn prefill(q_lens: &[u32], cache_lengths: &[u32]) -> Self {
        assert_eq!(
            q_lens.len(),
            cache_lengths.len(),
            "prefill: q_lens and cache_lengths differ in length"
        );
        let mut offsets = Vec::with_capacity(q_lens.len() + 1);
        offsets.push(0u32);
        for &q in q_lens {
            offsets.push(offsets[offsets.len() - 1] + q);
        }
        RaggedSpec {
            offsets,
            cache_lengths: cache_lengths.to_vec(),
        }
    }

    /// A random batch of `batch` sequences with `q_len` in `0..=max_q_len` and
    /// `cache_len` in `0..=max_cache_len`; roughly one sequence in five is
    /// forced to `q_len = 0` and one in five to `cache_len = 0`.
    pub fn random(rng: &mut impl Rng, batch: usize, max_q_len: u32, max_cache_len: u32) -> Self {
        let mut q = Vec::with_capacity(batch);
        let mut c = Vec::with_capacity(batch);
        for _ in 0..batch {
            q.push(if rng.gen_ratio(1, 5) {
                0
            } else {
                rng.gen_range(0..=max_q_len)
            });
            c.push(if rng.gen_ratio(1, 5) {
                0
            } else {
                rng.gen_range(0..=max_cache_len)
            });
        }
        Self::prefill(&q, &c)
    }
}

/// Value distribution of generated data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fill {
    /// Standard normal samples rounded to bf16.
    Normal,
    /// Integers in `[-4, 4]` (exact in bf16; dot products exact in f32).
    SmallInts,
}

/// `n` lengths drawn uniformly from `lo..hi`.
pub fn lengths(rng: &mut impl Rng, n: usize, lo: u32, hi: u32) -> Vec<u32> {
    (0..n).map(|_| rng.gen_range(lo..hi)).collect()
}

/// One sample of `fill`.
pub fn sample(rng: &mut impl Rng, fill: Fill) -> f32 {
    match fill {
        Fill::Normal => {
            // Box-Muller; u1 in (0, 1].
            let u1: f64 = 1.0 - rng.gen::<f64>();
            let u2: f64 = rng.gen();
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        }
        Fill::SmallInts => rng.gen_range(-4i32..=4) as f32,
    }
}

/// A copy of the page table `lookup` for a pool of `num_pages` pages, corrupt
/// in the ways a device-side table can be after `plan` checked the host's
/// copy (an engine rewrites it between graph replays): `u32::MAX`, the
/// first id past the pool, random ids past it, and every fourth entry a
/// valid id. The kernels clamp every id they read to the pool; a run with
/// this table must complete without a fault (what it returns is then
/// unspecified).
pub fn corrupt_lookup(rng: &mut impl Rng, lookup: &[u32], num_pages: usize) -> Vec<u32> {
    let past = u32::try_from(num_pages).expect("a pool of fewer than 2^32 pages");
    (0..lookup.len())
        .map(|i| match i % 4 {
            0 => u32::MAX,
            1 => past,
            2 => rng.gen_range(past..=u32::MAX),
            _ => rng.gen_range(0..past),
        })
        .collect()
}

/// A garbage value for slots that hold no token: mostly ±1e4..3e4, with
/// NaN, +Inf and -Inf one time in sixteen each. Never zero.
pub fn garbage(rng: &mut impl Rng) -> bf16 {
    match rng.gen_range(0u32..16) {
        0 => bf16::NAN,
        1 => bf16::INFINITY,
        2 => bf16::NEG_INFINITY,
        _ => {
            // drawn from [1.1e4, 3e4) so that bf16 rounding stays >= 1e4
            let m: f32 = rng.gen_range(1.1e4..3.0e4);
            bf16::from_f32(if rng.gen() { m } else { -m })
        }
    }
}

/// A generator of stream `stream` derived from `base` (independent per chunk).
fn stream_rng(base: u64, stream: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(base);
    r.set_stream(stream);
    r
}

/// `len` values of `fill` as bf16 (e.g. `q [num_rows, heads, head_dim]`).
/// Draws one `u64` from `rng`; the values are generated in parallel.
pub fn tensor(rng: &mut impl Rng, len: usize, fill: Fill) -> Vec<bf16> {
    let base: u64 = rng.gen();
    let mut out = vec![bf16::ZERO; len];
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(i, c)| {
        let mut r = stream_rng(base, i as u64);
        for x in c {
            *x = bf16::from_f32(sample(&mut r, fill));
        }
    });
    out
}

/// A random paged pool and page table for a ragged batch.
#[derive(Clone, Debug)]
pub struct PagedPool {
    /// `[num_pages, kv_dim, num_layers, page_size, n_heads, head_dim]`, bf16.
    pub layout: PagedLayout,
    /// The pool, `layout.elements()` values.
    pub data: Vec<bf16>,
    /// Page table `u32 [batch, max_pages]`.
    pub lookup: Vec<u32>,
    /// Row stride of `lookup`.
    pub max_pages: usize,
}

impl PagedPool {
    /// The page table, as the host API and the reference take it.
    pub fn table(&self) -> PageTable<'_> {
        PageTable::new(&self.lookup, self.max_pages)
    }

    /// Borrowed view for the reference.
    pub fn cache(&self) -> PagedCache<'_> {
        PagedCache {
            layout: self.layout,
            data: &self.data,
            pages: self.table(),
        }
    }

    /// Widens the page table by `extra` columns of stale (valid but
    /// unrelated) page ids; the pool itself is unchanged.
    pub fn with_extra_columns(mut self, rng: &mut impl Rng, extra: usize) -> Self {
        if extra == 0 {
            return self;
        }
        let batch = self.lookup.len() / self.max_pages.max(1);
        let stride = self.max_pages + extra;
        let n = self.layout.num_pages as u32;
        let mut lookup = Vec::with_capacity(batch * stride);
        for row in self.lookup.chunks(self.max_pages.max(1)).take(batch) {
            lookup.extend_from_slice(row);
            lookup.extend((0..extra).map(|_| rng.gen_range(0..n)));
        }
        self.lookup = lookup;
        self.max_pages = stride;
        self
    }

    /// Pages used by sequence `b` (`ceil(seqlen_k / page_size)` leading
    /// entries of its lookup row).
    pub fn pages_of(&self, spec: &RaggedSpec, b: usize) -> &[u32] {
        let n = spec.as_batch().pages(b, self.layout.page_size);
        &self.table().pages_of(b)[..n]
    }
}

/// A random paged pool for `spec`:
/// `[num_pages, kv_dim, num_layers, page_size, n_heads, head_dim]` with
/// `num_pages = sum_b ceil(seqlen_k[b] / page_size) + extra_pages` (at least 1).
///
/// Pages are a random permutation of the pool handed out sequence by
/// sequence, so `extra_pages` pages stay unused. `lookup: u32 [batch,
/// max_pages]` with `max_pages = max(1, max_b ceil(seqlen_k[b] / page_size))`
/// (see [`PagedPool::with_extra_columns`] for wider tables); entries past a
/// sequence's last page hold random valid page ids (stale, as engines leave
/// them). Tokens `0..seqlen_k[b]` of every sequence, in every `kv`, layer and
/// head, hold `fill` values; every other slot holds [`garbage`].
///
/// Panics if `page_size`, `kv_dim`, `num_layers`, `n_heads` or `head_dim` is 0.
#[allow(clippy::too_many_arguments)]
pub fn paged_pool(
    rng: &mut impl Rng,
    spec: &RaggedSpec,
    kv_dim: usize,
    num_layers: usize,
    n_heads: usize,
    head_dim: usize,
    page_size: usize,
    extra_pages: usize,
    fill: Fill,
) -> PagedPool {
    assert!(
        page_size > 0 && kv_dim > 0 && num_layers > 0 && n_heads > 0 && head_dim > 0,
        "paged_pool: every dimension must be positive"
    );
    let (num_pages, max_pages, lookup, valid) = assign_pages(rng, spec, page_size, extra_pages);
    let layout = PagedLayout {
        num_pages,
        kv_dim,
        num_layers,
        page_size,
        n_heads,
        head_dim,
        dtype: KvDtype::Bf16,
    };
    let base: u64 = rng.gen();
    let row = n_heads * head_dim; // elements of one slot
    let mut data = vec![bf16::ZERO; layout.elements()];
    data.par_chunks_mut(layout.page_stride())
        .enumerate()
        .for_each(|(page, chunk)| {
            let mut r = stream_rng(base, page as u64);
            let valid = valid[page];
            // chunk is [kv_dim * num_layers, page_size, n_heads * head_dim]
            for (i, x) in chunk.iter_mut().enumerate() {
                let slot = (i / row) % page_size;
                *x = if slot < valid {
                    bf16::from_f32(sample(&mut r, fill))
                } else {
                    garbage(&mut r)
                };
            }
        });
    PagedPool {
        layout,
        data,
        lookup,
        max_pages,
    }
}

/// An index-K pool for the MSA indexer: `kv_dim = 1`, one head,
/// `page_size = 128`.
pub fn index_k_pool(
    rng: &mut impl Rng,
    spec: &RaggedSpec,
    num_layers: usize,
    head_dim: usize,
    extra_pages: usize,
    fill: Fill,
) -> PagedPool {
    paged_pool(
        rng,
        spec,
        1,
        num_layers,
        1,
        head_dim,
        128,
        extra_pages,
        fill,
    )
}

/// Random block selections `d_indices: i32 [n_kv_heads, num_rows, topk]` for
/// a ragged batch, as an indexer would emit them: for each (KV head, row),
/// `min(topk, ceil((q_pos + 1) / 128))` distinct ids in random order, drawn
/// from the row's causal blocks `[0, ceil((q_pos + 1) / 128))`, then `-1`
/// padding up to `topk`.
///
/// Then every slot is replaced by `-1` with probability `minus_one`
/// (`0.0..=1.0`), and, with `stale`, by a stale id (`>= ceil(seqlen_k / 128)`
/// of the row's sequence, sometimes `i32::MAX`; the op must skip it) with
/// probability 1/8; at least one slot is made stale when there is any slot.
///
/// Panics if `minus_one` is not in `0.0..=1.0`.
pub fn block_selection(
    rng: &mut impl Rng,
    spec: &RaggedSpec,
    n_kv_heads: usize,
    topk: usize,
    minus_one: f64,
    stale: bool,
) -> Vec<i32> {
    assert!(
        (0.0..=1.0).contains(&minus_one),
        "block_selection: minus_one {minus_one} not in 0.0..=1.0"
    );
    const BLOCK: usize = 128;
    // (causal blocks, sequence blocks) of every packed row
    let batch = spec.as_batch();
    let rows: Vec<(usize, usize)> = batch
        .rows()
        .map(|RowPos { seq, q_pos }| ((q_pos + 1).div_ceil(BLOCK), batch.pages(seq, BLOCK)))
        .collect();
    fn stale_id(rng: &mut impl Rng, seq_blocks: usize) -> i32 {
        if rng.gen_ratio(1, 8) {
            i32::MAX
        } else {
            (seq_blocks + rng.gen_range(0..4)).min(i32::MAX as usize) as i32
        }
    }
    let mut out = Vec::with_capacity(n_kv_heads * rows.len() * topk);
    let mut any_stale = false;
    for _ in 0..n_kv_heads {
        for &(causal, seq_blocks) in &rows {
            let n = topk.min(causal);
            let start = out.len();
            out.extend(
                rand::seq::index::sample(rng, causal, n)
                    .into_iter()
                    .map(|j| j as i32),
            );
            out[start..].shuffle(rng);
            out.resize(start + topk, -1);
            for x in &mut out[start..] {
                if minus_one > 0.0 && rng.gen_bool(minus_one) {
                    *x = -1;
                }
                if stale && rng.gen_ratio(1, 8) {
                    *x = stale_id(rng, seq_blocks);
                    any_stale = true;
                }
            }
        }
    }
    if stale && !any_stale && !out.is_empty() {
        let slot = rng.gen_range(0..out.len());
        let seq_blocks = rows[(slot / topk) % rows.len()].1;
        out[slot] = stale_id(rng, seq_blocks);
    }
    out
}

/// Contiguous ragged K and V for cross-attention: `kv_lens[b]` rows each, bf16 [sum kv_lens, n_kv_heads, head_dim].
#[derive(Clone, Debug, PartialEq)]
pub struct RaggedKv {
    /// `u32 [batch + 1]`: sequence `b` owns rows
    /// `kv_row_offsets[b] .. kv_row_offsets[b + 1]` of `k` and `v`.
    pub kv_row_offsets: Vec<u32>,
    /// `bf16 [total_kv_rows, n_kv_heads, head_dim]`.
    pub k: Vec<bf16>,
    /// `bf16 [total_kv_rows, n_kv_heads, head_dim]`.
    pub v: Vec<bf16>,
}

impl RaggedKv {
    /// The borrowed K/V source the dense prefill's reference takes.
    pub fn as_dense_kv(&self) -> sparse_attn_reference::dense_prefill::DenseKv<'_> {
        sparse_attn_reference::dense_prefill::DenseKv::Ragged {
            k: &self.k,
            v: &self.v,
            kv_row_offsets: &self.kv_row_offsets,
        }
    }

    /// Total rows (`kv_row_offsets[batch]`).
    pub fn total_rows(&self) -> usize {
        self.kv_row_offsets.last().copied().unwrap_or(0) as usize
    }
}

/// Random contiguous ragged K and V (each [`tensor`] of `fill`, K drawn
/// first) with `kv_row_offsets` the prefix sums of `kv_lens` (zero lengths
/// allowed). Every element is a token's value: there is no padding.
///
/// Panics if the total row count overflows `u32`.
pub fn ragged_kv(
    rng: &mut impl Rng,
    kv_lens: &[u32],
    n_kv_heads: usize,
    head_dim: usize,
    fill: Fill,
) -> RaggedKv {
    let mut kv_row_offsets = Vec::with_capacity(kv_lens.len() + 1);
    kv_row_offsets.push(0u32);
    for &n in kv_lens {
        let last = kv_row_offsets[kv_row_offsets.len() - 1];
        let next = last
            .checked_add(n)
            .expect("ragged_kv: total rows overflow u32");
        kv_row_offsets.push(next);
    }
    let total = kv_row_offsets[kv_lens.len()] as usize;
    let len = total * n_kv_heads * head_dim;
    let k = tensor(rng, len, fill);
    let v = tensor(rng, len, fill);
    RaggedKv {
        kv_row_offsets,
        k,
        v,
    }
}

// ---------------------------------------------------------------------------
// FP8 inputs of the MLA lightning indexer (`shared/spec/mla-fp8-indexer.md`).

use sparse_attn_abi::fp8::f32_to_e4m3;
use sparse_attn_reference::mla_indexer::Fp8IndexK;

/// Value distribution of generated FP8 data (e4m3 bytes and their f32
/// weights and scales).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fp8Fill {
    /// Integers in `-2..=2` (e4m3 and weights), powers of two `2^-2..=2^2`
    /// (key scales): every product and sum of the op is exact in f32, so a
    /// kernel must match the reference exactly.
    Integer,
    /// Normal samples times 4 rounded to e4m3, normal weights, key scales
    /// uniform in `0.25..4`.
    Random,
}

/// One e4m3 byte of `fill` (never NaN).
fn fp8_sample(rng: &mut impl Rng, fill: Fp8Fill) -> u8 {
    match fill {
        Fp8Fill::Integer => f32_to_e4m3(rng.gen_range(-2i32..=2) as f32),
        Fp8Fill::Random => f32_to_e4m3(4.0 * sample(rng, Fill::Normal)),
    }
}

/// One key scale of `fill` (positive, finite).
fn fp8_scale(rng: &mut impl Rng, fill: Fp8Fill) -> f32 {
    match fill {
        Fp8Fill::Integer => 2f32.powi(rng.gen_range(-2i32..=2)),
        Fp8Fill::Random => rng.gen_range(0.25f32..4.0),
    }
}

/// A garbage e4m3 row for a slot that holds no token: half the rows are
/// large finite values (`|x| >= 64`, either sign), the other half random
/// bytes with one NaN code (`0x7f` / `0xff`) in eight.
fn fp8_garbage_row(rng: &mut impl Rng, row: &mut [u8]) {
    let big = rng.gen::<bool>();
    for x in row {
        *x = if big {
            // 0x60 = 64 .. 0x7e = 448, with a random sign bit
            rng.gen_range(0x60u8..=0x7e) | if rng.gen() { 0x80 } else { 0 }
        } else if rng.gen_ratio(1, 8) {
            if rng.gen() {
                0x7f
            } else {
                0xff
            }
        } else {
            rng.gen()
        };
    }
}

/// A garbage scale: NaN, +Inf, -Inf or a huge value (±1e30..1e35).
fn fp8_garbage_scale(rng: &mut impl Rng) -> f32 {
    match rng.gen_range(0u32..4) {
        0 => f32::NAN,
        1 => f32::INFINITY,
        2 => f32::NEG_INFINITY,
        _ => {
            let m = 10f32.powf(rng.gen_range(30.0f32..35.0));
            if rng.gen() {
                m
            } else {
                -m
            }
        }
    }
}

/// `len` e4m3 bytes of `fill` (e.g. `q [num_rows, num_heads, 128]`); never
/// NaN. Draws one `u64` from `rng`; the bytes are generated in parallel.
pub fn fp8_tensor(rng: &mut impl Rng, len: usize, fill: Fp8Fill) -> Vec<u8> {
    let base: u64 = rng.gen();
    let mut out = vec![0u8; len];
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(i, c)| {
        let mut r = stream_rng(base, i as u64);
        for x in c {
            *x = fp8_sample(&mut r, fill);
        }
    });
    out
}

/// `len` head weights of `fill` (e.g. `qs [num_rows, num_heads]`):
/// integers in `-2..=2` (negative and zero weights included) or normal
/// samples. Draws one `u64` from `rng`.
pub fn index_weights(rng: &mut impl Rng, len: usize, fill: Fp8Fill) -> Vec<f32> {
    let base: u64 = rng.gen();
    let mut out = vec![0f32; len];
    out.par_chunks_mut(CHUNK).enumerate().for_each(|(i, c)| {
        let mut r = stream_rng(base, i as u64);
        for x in c {
            *x = match fill {
                Fp8Fill::Integer => r.gen_range(-2i32..=2) as f32,
                Fp8Fill::Random => sample(&mut r, Fill::Normal),
            };
        }
    });
    out
}

/// A random FP8 index-K pool and page table for a ragged batch.
#[derive(Clone, Debug)]
pub struct Fp8Pool {
    /// [`PagedLayout::index_k_fp8`]: `[num_pages, 1, num_layers, page_size,
    /// 1, 128]` e4m3, scales apart ([`KvDtype::Fp8E4m3`]) or fused
    /// ([`KvDtype::Fp8E4m3Fused`]).
    pub layout: PagedLayout,
    /// The pool, `layout.elements()` bytes (fused: the scales included).
    pub data: Vec<u8>,
    /// `k_scales: f32 [num_pages, 1, num_layers, page_size, 1]`; empty for
    /// the fused layout.
    pub scales: Vec<f32>,
    /// Page table `u32 [batch, max_pages]`.
    pub lookup: Vec<u32>,
    /// Row stride of `lookup`.
    pub max_pages: usize,
}

impl Fp8Pool {
    /// The page table, as the host API and the reference take it.
    pub fn table(&self) -> PageTable<'_> {
        PageTable::new(&self.lookup, self.max_pages)
    }

    /// Borrowed view for the reference (`scales` is `None` when fused).
    pub fn cache(&self) -> Fp8IndexK<'_> {
        Fp8IndexK {
            layout: self.layout,
            data: &self.data,
            scales: (!self.layout.dtype.fused_scales()).then_some(&self.scales[..]),
            pages: self.table(),
        }
    }
}

/// How [`paged_pool`] and [`fp8_index_k_pool`] hand out pages: a shuffled
/// order, sequence by sequence, stale (valid, unrelated) ids past each
/// sequence's pages: `(num_pages, max_pages, lookup, owner)` where
/// `owner[page]` is the number of tokens the page holds (0 for an unused
/// page).
fn assign_pages(
    rng: &mut impl Rng,
    spec: &RaggedSpec,
    page_size: usize,
    extra_pages: usize,
) -> (usize, usize, Vec<u32>, Vec<usize>) {
    let batch = spec.batch();
    let pages: Vec<usize> = (0..batch)
        .map(|b| spec.as_batch().pages(b, page_size))
        .collect();
    let num_pages = (pages.iter().sum::<usize>() + extra_pages).max(1);
    let max_pages = pages.iter().copied().max().unwrap_or(0).max(1);
    let mut perm: Vec<u32> = (0..num_pages as u32).collect();
    perm.shuffle(rng);
    let mut owner = vec![0usize; num_pages];
    let mut lookup = vec![0u32; batch * max_pages];
    let mut next = 0;
    for b in 0..batch {
        for c in 0..max_pages {
            lookup[b * max_pages + c] = if c < pages[b] {
                let page = perm[next];
                next += 1;
                owner[page as usize] = (spec.seqlen_k(b) - c * page_size).min(page_size);
                page
            } else {
                rng.gen_range(0..num_pages as u32)
            };
        }
    }
    (num_pages, max_pages, lookup, owner)
}

/// A random FP8 index-K pool for `spec` ([`PagedLayout::index_k_fp8`] of
/// `num_pages = sum_b ceil(seqlen_k[b] / page_size) + extra_pages`, at
/// least 1), its pages handed out as [`paged_pool`] does: a shuffled order,
/// `extra_pages` unused pages, stale (valid, unrelated) ids past each
/// sequence's pages, `max_pages = max(1, max_b pages)`.
///
/// Tokens `0..seqlen_k[b]` of every sequence, in every layer, hold 128
/// bytes of [`fp8_tensor`]'s `fill` and a scale (`Integer`: a power of two
/// in `2^-2..=2^2`, `Random`: uniform in `0.25..4`); every other slot (page
/// tails, unused pages) holds garbage: large e4m3 values or random bytes
/// with NaN codes, and a NaN, ±Inf or huge (±1e30..1e35) scale. With
/// `fused` the scales are little-endian f32 in the pool at
/// [`PagedLayout::scale_offset`] and [`Fp8Pool::scales`] is empty, else
/// they are `k_scales: f32 [num_pages, 1, num_layers, page_size, 1]`.
/// Pages are generated in parallel, one ChaCha stream each.
///
/// Panics if `num_layers` or `page_size` is 0.
pub fn fp8_index_k_pool(
    rng: &mut impl Rng,
    spec: &RaggedSpec,
    num_layers: usize,
    page_size: usize,
    fused: bool,
    extra_pages: usize,
    fill: Fp8Fill,
) -> Fp8Pool {
    assert!(
        page_size > 0 && num_layers > 0,
        "fp8_index_k_pool: num_layers and page_size must be positive"
    );
    let (num_pages, max_pages, lookup, owner) = assign_pages(rng, spec, page_size, extra_pages);
    let layout = PagedLayout::index_k_fp8(num_pages, num_layers, page_size, fused);
    let d = layout.head_dim;
    let base: u64 = rng.gen();
    let mut data = vec![0u8; layout.elements()];
    // Per page: its scales in (layer, slot) order.
    let page_scales: Vec<Vec<f32>> = data
        .par_chunks_mut(layout.page_stride())
        .enumerate()
        .map(|(page, chunk)| {
            let mut r = stream_rng(base, page as u64);
            let valid = owner[page];
            let mut scales = Vec::with_capacity(num_layers * page_size);
            for layer in 0..num_layers {
                let block = &mut chunk[layout.layer_offset(0, layer)..][..layout.block_stride()];
                let (rows, fused_scales) = block.split_at_mut(page_size * d);
                for (slot, row) in rows.chunks_exact_mut(d).enumerate() {
                    let scale = if slot < valid {
                        for x in row.iter_mut() {
                            *x = fp8_sample(&mut r, fill);
                        }
                        fp8_scale(&mut r, fill)
                    } else {
                        fp8_garbage_row(&mut r, row);
                        fp8_garbage_scale(&mut r)
                    };
                    if fused {
                        fused_scales[4 * slot..4 * slot + 4].copy_from_slice(&scale.to_le_bytes());
                    } else {
                        scales.push(scale);
                    }
                }
            }
            scales
        })
        .collect();
    let scales: Vec<f32> = page_scales.concat();
    debug_assert_eq!(scales.len(), layout.scale_elements());
    Fp8Pool {
        layout,
        data,
        scales,
        lookup,
        max_pages,
    }
}

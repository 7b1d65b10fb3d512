//! The dense flash prefill (`shared/spec/dense-prefill.md`; kernel:
//! `kernels-gpu/src/dense_prefill.rs`): ragged queries, GQA, K/V from the
//! paged main cache or from contiguous ragged tensors (cross-attention),
//! no mask / causal / sliding window by absolute position, attention sinks,
//! optional lse; bf16 in, f32 accumulation, bf16 out.
//!
//! Choices where the spec is silent (what FlashAttention / FlashInfer users
//! expect):
//! - contiguous K/V: row `i` of sequence `b` is still at `q_pos =
//!   cache_lengths[b] + i`; pass zeros for plain cross-attention, or
//!   `num_keys - q_len` for FlashAttention's bottom-right causal alignment;
//! - `lse` is the natural log of the denominator the output was divided
//!   by, the sink included (`-inf` for a row that sees nothing and has no
//!   sink); with sinks such a row has `lse = sink[h]`;
//! - `scale` must be finite and > 0, as for the MSA attention.
//!
//! `plan` cuts the batch into tiles of `DP_BLOCK_M` rows, orders them
//! longest first and uploads them; the plan does not depend on the layer
//! of a paged cache (`run` takes it in [`KvBuffers::Paged`]), so one plan
//! serves every layer of a step. `run` encodes the three TMA tensor maps
//! (Q, K, V) for the buffers it is given and uploads them only when they
//! differ from the last call's (384 bytes): a run on the buffers of the
//! previous run only launches, so it can be captured in a CUDA graph and
//! replayed (a graph per layer: each layer's run has its own parameters).
//!
//! Key tiles: 128 keys for paged K/V (a TMA box a page, or 128 keys of a
//! larger page) and for short loops (`WIDE_MIN_SPAN`); the wide tile
//! (176 keys bf16, 192 FP8) on contiguous K/V, any mask, where each query
//! tile visits at least 4096 keys on average. Measured on an H100 (the
//! same binary, `--key-tile`): bf16 176 against 128 keys 649 / 644
//! against 636 TFLOP/s on `dense-prefill-16k`, 635.5 against 626.5 / 623
//! causal (2026-12-07); FP8 192 against 128 881.5 / 870.9 / 858.4 against
//! 840.5 / 853.4 / 840.9 / 832.8 / 828.0 on `-16k-fp8`, 878.4 / 833.9 /
//! 855.5 against 841.5 / 856.5 / 856.4 / 855.9 / 828.2 causal (2026-12-07,
//! fourth session: before the V transposer lost two thirds of its
//! instructions, 192 was 7% slower). [`DensePrefill::set_key_tile`]
//! overrides the choice.
//!
//! The op needs no workspace ([`DensePrefill::workspace_size`] is 0): it
//! works in shared memory and writes `out` and `lse` directly.

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, LaunchConfig};
use half::bf16;

use crate::abi::dense::*;
use crate::abi::{DPtr, DPtrMut};
use crate::batch::{
    CacheExpect, ConfigExt, KvDtype, Mask, PageTable, PageTableExt, PagedLayout, PagedLayoutExt,
    RaggedBatch, RaggedBatchExt,
};
use crate::error::{
    ensure, expect_len, require_head_dim, require_positive_scale, CudaContextExt, Error, Result,
};
use crate::launch::{record_words, Bufs, Kernel};
use crate::tma::{encode_tiled, TensorMaps, TmaElem};
use crate::workspace::grow;
use crate::Gpu;

pub use crate::abi::config::DensePrefillConfig;

/// Where `plan` finds the keys of each sequence.
#[derive(Clone, Copy, Debug)]
pub enum KvLayout<'a> {
    /// The paged main cache (`[num_pages, 2, num_layers, page_size,
    /// n_kv_heads, 128]`, bf16, page size a power of two from 16 to 256):
    /// sequence `b` has `cache_len + q_len` keys. The layer read is
    /// `run`'s ([`KvBuffers::Paged`]).
    Paged {
        /// Shape of the pool.
        layout: PagedLayout,
        /// The page table.
        pages: PageTable<'a>,
    },
    /// Contiguous ragged K and V, each `[kv_rows, n_kv_heads, 128]`:
    /// sequence `b` owns rows `kv_row_offsets[b] .. kv_row_offsets[b + 1]`.
    Ragged {
        /// `u32 [batch + 1]`, from 0, non-decreasing.
        kv_row_offsets: &'a [u32],
    },
}

/// The device buffers `run` reads K/V from, matching the planned
/// [`KvLayout`]: slices, views or [`crate::RawBuffer`]s (a `&CudaSlice`
/// coerces).
/// `T`: bf16, or `u8` (e4m3 bytes) for [`DensePrefillFp8`](crate::DensePrefillFp8).
pub enum KvBuffers<'a, T = bf16> {
    /// The pool (`layout.elements()` values), the page table, and the
    /// layer read.
    Paged {
        /// `[num_pages, 2, num_layers, page_size, n_kv_heads, 128]`.
        kv_cache: &'a dyn DevicePtr<T>,
        /// `u32 [batch, max_pages]`.
        lookup: &'a dyn DevicePtr<u32>,
        /// The layer of the pool this run reads (below `num_layers`).
        layer: usize,
    },
    /// `[kv_rows, n_kv_heads, 128]` each.
    Ragged {
        /// Keys.
        k: &'a dyn DevicePtr<T>,
        /// Values.
        v: &'a dyn DevicePtr<T>,
    },
}

impl<T> Clone for KvBuffers<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for KvBuffers<'_, T> {}

/// The element type of Q, K and V of an op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Elem {
    Bf16,
    E4m3,
}

impl Elem {
    fn bytes(self) -> u64 {
        match self {
            Elem::Bf16 => 2,
            Elem::E4m3 => 1,
        }
    }

    /// Keys of the wide kernel's key tile.
    fn wide_n(self) -> u32 {
        match self {
            Elem::Bf16 => DP_WIDE_N,
            Elem::E4m3 => DP8_WIDE_N,
        }
    }
}

/// What a plan fixed.
#[derive(Clone, Debug)]
struct Plan {
    rows: usize,
    batch: usize,
    num_tiles: usize,
    /// The paged pool, or `None` for contiguous K/V.
    paged: Option<PagedPlan>,
    /// Contiguous K/V: rows of `k` and `v`.
    kv_rows: usize,
    /// Keys of a key tile: `DP_BLOCK_N`, or the wide kernel's.
    key_tile: u32,
}

/// The planned paged pool.
#[derive(Clone, Copy, Debug)]
struct PagedPlan {
    layout: PagedLayout,
    max_pages: usize,
}

/// What `check_kv` finds: per sequence its keys and first contiguous K/V
/// row, and the pool or the K/V rows.
struct KvPlan {
    keys: Vec<u32>,
    kv_row0: Vec<u32>,
    paged: Option<PagedPlan>,
    kv_rows: usize,
}

/// The dense flash prefill. `new` checks the configuration; `plan` takes
/// a batch's shape; `run` launches.
pub struct DensePrefill {
    pub(crate) gpu: Gpu,
    cfg: DensePrefillConfig,
    pub(crate) elem: Elem,
    kernel: Kernel<DensePrefillParams>,
    /// The same with key tiles of `DP_WIDE_N` keys (contiguous K/V).
    kernel_wide: Kernel<DensePrefillParams>,
    /// `set_key_tile`'s choice (`None`: the plan's own).
    key_tile: Option<u32>,
    /// [`DenseTile`]s as words, longest first.
    pub(crate) tiles: CudaSlice<u32>,
    /// `DP_TMAPS` tensor maps.
    pub(crate) tmaps: TensorMaps,
    plan: Option<Plan>,
}

impl ConfigExt for DensePrefillConfig {
    fn validate(&self) -> Result<()> {
        require_head_dim(self.head_dim)?;
        ensure(
            self.n_kv_heads > 0,
            "n_kv_heads",
            || "> 0".into(),
            || "0".into(),
        )?;
        ensure(
            self.n_heads > 0 && self.n_heads.is_multiple_of(self.n_kv_heads),
            "n_heads",
            || format!("a positive multiple of n_kv_heads = {}", self.n_kv_heads),
            || self.n_heads.to_string(),
        )?;
        ensure(
            self.n_heads < 1 << 16,
            "n_heads",
            || "fewer than 65536".into(),
            || self.n_heads.to_string(),
        )?;
        require_positive_scale(self.scale)?;
        if let Mask::SlidingWindow { window } = self.mask {
            ensure(
                window >= 1 && window < u32::MAX as usize,
                "window",
                || "1 ..= 2^32 - 2 keys".into(),
                || window.to_string(),
            )?;
        }
        Ok(())
    }
}

impl DensePrefill {
    /// The op for `cfg` (checked: head_dim 128, `n_heads % n_kv_heads ==
    /// 0`, a finite scale > 0, a window of at least 1).
    pub fn new(gpu: &Gpu, cfg: DensePrefillConfig) -> Result<Self> {
        cfg.validate()?;
        Ok(DensePrefill {
            gpu: gpu.clone(),
            cfg,
            elem: Elem::Bf16,
            kernel: gpu.kernel("dense_prefill", DP_SMEM)?,
            kernel_wide: gpu.kernel("dense_prefill_wide", DP_SMEM)?,
            key_tile: None,
            tiles: gpu.zeros(1)?,
            tmaps: TensorMaps::new(gpu, DP_TMAPS)?,
            plan: None,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DensePrefillConfig {
        &self.cfg
    }

    /// Bytes of workspace the op needs: none (see the module docs). For
    /// uniformity with the other ops' `workspace_size`.
    pub fn workspace_size() -> usize {
        0
    }

    /// Fixes the keys of a key tile for the next `plan`s: `Some(128)`, or
    /// `Some` of the wide tile (176 bf16, 192 FP8; contiguous K/V only,
    /// which `plan` checks), instead of the choice in the module's docs
    /// (`None`). For measuring one against the other.
    pub fn set_key_tile(&mut self, keys: Option<u32>) -> Result<()> {
        if let Some(n) = keys {
            let wide = self.elem.wide_n();
            ensure(
                n == DP_BLOCK_N || n == wide,
                "key_tile",
                || format!("{DP_BLOCK_N} or {wide} keys"),
                || n.to_string(),
            )?;
        }
        self.key_tile = keys;
        Ok(())
    }

    /// Validates the batch and the K/V layout, cuts the batch into tiles
    /// (longest first) and uploads them.
    pub fn plan(&mut self, batch: &RaggedBatch, kv: &KvLayout) -> Result<()> {
        self.plan = None;
        batch.validate()?;
        let rows = batch.num_rows();
        ensure(
            rows < 1 << 31,
            "input_row_offsets",
            || "fewer than 2^31 rows".into(),
            || rows.to_string(),
        )?;
        let kvp = self.check_kv(batch, kv)?;
        let tiles = plan_tiles(batch, &kvp.keys, &kvp.kv_row0, &self.cfg);
        let wide = self.elem.wide_n();
        let auto = if kvp.paged.is_none() && mean_key_span(&tiles) >= WIDE_MIN_SPAN {
            wide
        } else {
            DP_BLOCK_N
        };
        let key_tile = self.key_tile.unwrap_or(auto);
        ensure(
            key_tile == DP_BLOCK_N || kvp.paged.is_none(),
            "key_tile",
            || format!("{DP_BLOCK_N} keys for paged K/V"),
            || key_tile.to_string(),
        )?;
        let words = record_words(&tiles);
        grow(&self.gpu, &mut self.tiles, words.len())?;
        if !words.is_empty() {
            self.gpu
                .stream()
                .memcpy_htod(words, &mut self.tiles.slice_mut(..words.len()))
                .during(|| "uploading the dense prefill tiles".into())?;
        }
        self.plan = Some(Plan {
            rows,
            batch: batch.batch(),
            num_tiles: tiles.len(),
            paged: kvp.paged,
            kv_rows: kvp.kv_rows,
            key_tile,
        });
        Ok(())
    }

    /// Checks the K/V layout against the batch.
    fn check_kv(&self, batch: &RaggedBatch, kv: &KvLayout) -> Result<KvPlan> {
        let n = batch.batch();
        match *kv {
            KvLayout::Paged { layout, pages } => {
                let ps = layout.page_size;
                ensure(
                    ps.is_power_of_two() && (16..=256).contains(&ps),
                    "page_size",
                    || "a power of two from 16 to 256".into(),
                    || ps.to_string(),
                )?;
                let want = CacheExpect {
                    dtypes: match self.elem {
                        Elem::Bf16 => &[KvDtype::Bf16],
                        Elem::E4m3 => &[KvDtype::Fp8E4m3],
                    },
                    name: "kv_cache",
                    shape: "[num_pages, 2, num_layers, page_size, n_kv_heads, 128]",
                    kv_dim: 2,
                    n_heads: self.cfg.n_kv_heads,
                    head_dim: DP_HEAD_DIM as usize,
                    page_size: ps,
                };
                layout.check_shape(&want)?;
                pages.validate(batch, &layout)?;
                let token_rows = layout.num_pages * 2 * layout.num_layers * ps;
                ensure(
                    token_rows < 1 << 31 && pages.max_pages < 1 << 31,
                    "kv_cache",
                    || "fewer than 2^31 token rows (num_pages * 2 * num_layers * page_size)".into(),
                    || token_rows.to_string(),
                )?;
                let keys = (0..n).map(|b| batch.seqlen_k(b) as u32).collect();
                let paged = PagedPlan {
                    layout,
                    max_pages: pages.max_pages,
                };
                Ok(KvPlan {
                    keys,
                    kv_row0: vec![0; n],
                    paged: Some(paged),
                    kv_rows: 0,
                })
            }
            KvLayout::Ragged {
                kv_row_offsets: off,
            } => {
                let kvb = RaggedBatch::new(off, batch.cache_lengths);
                kvb.validate()
                    .map_err(|e| e.rename_args(&[("input_row_offsets", "kv_row_offsets")]))?;
                let kv_rows = kvb.num_rows();
                ensure(
                    kv_rows < 1 << 31,
                    "kv_row_offsets",
                    || "fewer than 2^31 rows".into(),
                    || kv_rows.to_string(),
                )?;
                let keys = (0..n).map(|b| off[b + 1] - off[b]).collect();
                Ok(KvPlan {
                    keys,
                    kv_row0: off[..n].to_vec(),
                    paged: None,
                    kv_rows,
                })
            }
        }
    }

    /// Computes the planned batch: `q` and `out` `[num_rows, n_heads,
    /// 128]`, `sinks: f32 [n_heads]` exactly when the configuration has
    /// sinks, `lse: f32 [num_rows, n_heads]` optional. Launch only (see the
    /// module docs for the tensor maps). Buffers may be slices, views or
    /// [`crate::RawBuffer`]s.
    pub fn run<Q, O>(
        &mut self,
        q: &Q,
        kv: KvBuffers,
        sinks: Option<&dyn DevicePtr<f32>>,
        out: &mut O,
        lse: Option<&mut dyn DevicePtrMut<f32>>,
    ) -> Result<()>
    where
        Q: DevicePtr<bf16> + ?Sized,
        O: DevicePtrMut<bf16> + ?Sized,
    {
        let gpu = self.gpu.clone();
        let mut b = Bufs::new(&gpu);
        let Some((mut params, cfg)) = self.prepare(&mut b, (q, Elem::Bf16), kv, sinks, out, lse)?
        else {
            return Ok(());
        };
        (params.tmaps, params.tiles) = (b.r(self.tmaps.device()), b.rec(&self.tiles));
        let kernel = if self.wide() {
            &self.kernel_wide
        } else {
            &self.kernel
        };
        // SAFETY: every buffer's length was checked against the plan; the
        // kernel clamps page ids and tile rows, and TMA zero-fills reads
        // past a tensor; the wide kernel is planned for contiguous K/V only.
        unsafe {
            self.gpu
                .launch(kernel, "the dense prefill kernel", &params)
                .run(cfg)
        }
    }

    /// Keys of a key tile of the current plan (`None` before `plan`).
    pub fn key_tile(&self) -> Option<u32> {
        self.plan.as_ref().map(|p| p.key_tile)
    }

    /// Whether the plan takes the wide key tiles.
    pub(crate) fn wide(&self) -> bool {
        self.key_tile().is_some_and(|n| n != DP_BLOCK_N)
    }

    /// What a run of either element type checks and binds: the buffers'
    /// lengths, the tensor maps; the kernel's parameters (but the op's
    /// `tmaps` and `tiles`, which the caller binds) and launch shape, or
    /// `None` when there is nothing to compute.
    pub(crate) fn prepare<'a, 'b: 'a, T, QT, Q, O>(
        &mut self,
        b: &mut Bufs<'a>,
        q: (&'a Q, Elem),
        kv: KvBuffers<'a, T>,
        sinks: Option<&'a dyn DevicePtr<f32>>,
        out: &'a mut O,
        lse: Option<&'a mut (dyn DevicePtrMut<f32> + 'b)>,
    ) -> Result<Option<(DensePrefillParams, LaunchConfig)>>
    where
        T: crate::launch::DeviceElem,
        QT: crate::launch::DeviceElem,
        Q: DevicePtr<QT> + ?Sized,
        O: DevicePtrMut<bf16> + ?Sized,
    {
        let (q, q_elem) = q;
        let p = self.plan.clone().ok_or(Error::NotPlanned {
            op: match self.elem {
                Elem::Bf16 => "dense_prefill",
                Elem::E4m3 => "dense_prefill_fp8",
            },
        })?;
        let c = self.cfg;
        let d = DP_HEAD_DIM as usize;
        expect_len(
            "q",
            q.len(),
            p.rows * c.n_heads * d,
            "num_rows * n_heads * 128",
        )?;
        expect_len(
            "out",
            out.len(),
            p.rows * c.n_heads * d,
            "num_rows * n_heads * 128",
        )?;
        if let Some(l) = lse.as_deref() {
            expect_len("lse", l.len(), p.rows * c.n_heads, "num_rows * n_heads")?;
        }
        ensure(
            sinks.is_some() == c.sinks,
            "sinks",
            || {
                format!(
                    "{} (config.sinks = {})",
                    if c.sinks { "a buffer" } else { "none" },
                    c.sinks
                )
            },
            || {
                if sinks.is_some() {
                    "a buffer".into()
                } else {
                    "none".to_string()
                }
            },
        )?;
        if let Some(s) = sinks {
            expect_len("sinks", s.len(), c.n_heads, "n_heads")?;
        }
        self.check_buffers(&p, &kv)?;
        if p.rows == 0 || p.num_tiles == 0 {
            return Ok(None);
        }
        let (q, kv_addrs) = (b.input("q", q)?, kv_addresses(b, &kv)?);
        let user = UserPtrs {
            lookup: match kv {
                KvBuffers::Paged { lookup, .. } => b.input("lookup", lookup)?,
                KvBuffers::Ragged { .. } => DPtr::NULL,
            },
            sinks: b.opt_input("sinks", sinks)?,
            out: b.output("out", out)?,
            lse: b.opt_output("lse", lse)?,
        };
        let maps = encode_maps(&self.cfg, (q_elem, self.elem), &p, q.addr(), kv_addrs)?;
        self.tmaps.bind(b.gpu(), maps, "dense prefill")?;
        let params = params(&self.cfg, &p, &kv, &user);
        let cfg = LaunchConfig {
            // One CTA per (tile, head). A persistent grid (one CTA per SM
            // walking the items, the next item's loads under this one's
            // epilogue) measured 4% slower on dense-prefill-16k and 2%
            // faster on -8x2k (H200, 2026-12-02; it needs 8 registers
            // fewer per consumer thread).
            grid_dim: ((p.num_tiles * c.n_heads) as u32, 1, 1),
            block_dim: (DP_THREADS, 1, 1),
            shared_mem_bytes: match self.elem {
                Elem::Bf16 => DP_SMEM,
                Elem::E4m3 => DP8_SMEM,
            },
        };
        Ok(Some((params, cfg)))
    }

    /// Checks the K/V buffers against the plan (lengths, and the layer).
    fn check_buffers<T>(&self, p: &Plan, kv: &KvBuffers<T>) -> Result<()> {
        let per_row = self.cfg.n_kv_heads * DP_HEAD_DIM as usize;
        match (*kv, p.paged) {
            (
                KvBuffers::Paged {
                    kv_cache,
                    lookup,
                    layer,
                },
                Some(PagedPlan {
                    layout, max_pages, ..
                }),
            ) => {
                layout.check_layer(layer)?;
                expect_len(
                    "kv_cache",
                    kv_cache.len(),
                    layout.elements(),
                    "the planned layout",
                )?;
                expect_len(
                    "lookup",
                    lookup.len(),
                    p.batch * max_pages,
                    "batch * max_pages",
                )
            }
            (KvBuffers::Ragged { k, v }, None) => {
                expect_len(
                    "k",
                    k.len(),
                    p.kv_rows * per_row,
                    "kv_rows * n_kv_heads * 128",
                )?;
                expect_len(
                    "v",
                    v.len(),
                    p.kv_rows * per_row,
                    "kv_rows * n_kv_heads * 128",
                )
            }
            (KvBuffers::Paged { .. }, None) => Err(Error::invalid(
                "kv",
                "contiguous k and v (the plan's layout)",
                "a paged cache",
            )),
            (KvBuffers::Ragged { .. }, Some(_)) => Err(Error::invalid(
                "kv",
                "a paged cache (the plan's layout)",
                "contiguous k and v",
            )),
        }
    }
}

/// The caller's buffers of one run besides Q and K/V.
struct UserPtrs {
    lookup: DPtr<u32>,
    sinks: DPtr<f32>,
    out: DPtrMut<u16>,
    lse: DPtrMut<f32>,
}

/// The K and V addresses of a run's buffers (the pool's twice when paged).
fn kv_addresses<'a, T: crate::launch::DeviceElem>(
    b: &mut Bufs<'a>,
    kv: &KvBuffers<'a, T>,
) -> Result<(u64, u64)> {
    Ok(match *kv {
        KvBuffers::Paged { kv_cache, .. } => {
            let a = b.input::<T, _>("kv_cache", kv_cache)?.addr();
            (a, a)
        }
        KvBuffers::Ragged { k, v } => (
            b.input::<T, _>("k", k)?.addr(),
            b.input::<T, _>("v", v)?.addr(),
        ),
    })
}

/// The three tensor maps (Q of `q_elem`, K and V of `elem`) of a run at these addresses.
fn encode_maps(
    cfg: &DensePrefillConfig,
    (q_elem, elem): (Elem, Elem),
    p: &Plan,
    q: u64,
    kv: (u64, u64),
) -> Result<Vec<u8>> {
    let mut maps = Vec::with_capacity(DP_TMAPS * DP_TMAP_BYTES);
    maps.extend(encode_tmap(q_elem, q, cfg.n_heads, p.rows, DP_BLOCK_M)?);
    // K and V: the whole pool as rows (a box a page, at most a key tile),
    // or the contiguous rows (a box a key tile).
    let (rows, box_rows) = match p.paged {
        Some(PagedPlan { layout: l, .. }) => (
            l.num_pages * 2 * l.num_layers * l.page_size,
            l.page_size.min(DP_BLOCK_N as usize) as u32,
        ),
        None => (p.kv_rows, p.key_tile),
    };
    for addr in [kv.0, kv.1] {
        maps.extend(encode_tmap(elem, addr, cfg.n_kv_heads, rows, box_rows)?);
    }
    Ok(maps)
}

/// The kernel's parameters for the planned batch but the op's own buffers
/// (tensor maps, tiles).
fn params<T>(
    cfg: &DensePrefillConfig,
    p: &Plan,
    kv: &KvBuffers<T>,
    u: &UserPtrs,
) -> DensePrefillParams {
    let (causal, window) = match cfg.mask {
        Mask::None => (0, DP_NO_WINDOW),
        Mask::Causal => (1, DP_NO_WINDOW),
        Mask::SlidingWindow { window } => (1, window as u32),
    };
    let mut params = DensePrefillParams {
        lookup: u.lookup,
        sinks: u.sinks,
        out: u.out,
        lse: u.lse,
        num_tiles: p.num_tiles as u32,
        num_rows: p.rows as u32,
        n_heads: cfg.n_heads as u32,
        n_kv_heads: cfg.n_kv_heads as u32,
        scale_log2: cfg.scale * std::f32::consts::LOG2_E,
        causal,
        window,
        box_rows: p.key_tile,
        ..Default::default()
    };
    if let (
        Some(PagedPlan {
            layout: l,
            max_pages,
        }),
        KvBuffers::Paged { layer, .. },
    ) = (p.paged, *kv)
    {
        let ps = l.page_size as u32;
        params.box_rows = ps.min(DP_BLOCK_N);
        params.page_size = ps;
        params.num_pages = l.num_pages as u32;
        params.max_pages = max_pages as u32;
        params.page_rows = 2 * l.num_layers as u32 * ps;
        params.k_row_off = layer as u32 * ps;
        params.v_row_off = (l.num_layers + layer) as u32 * ps;
    }
    params
}

/// Keys a query row's tile visits, on average over the batch's rows
/// (`DP_BLOCK_N`-key tiles, the masked parts of the first and last
/// included): how long each CTA's loop runs.
pub fn mean_key_span(tiles: &[DenseTile]) -> u32 {
    let rows: u64 = tiles.iter().map(|t| t.rows as u64).sum();
    let tile_rows: u64 = tiles
        .iter()
        .map(|t| t.rows as u64 * t.key_tiles as u64)
        .sum();
    (DP_BLOCK_N as u64 * tile_rows / rows.max(1)) as u32
}

/// Shortest mean key span ([`mean_key_span`]) for which the wide key
/// tiles are taken. Both ways on an H100, 2026-12-07 (`bench --key-tile`,
/// TFLOP/s of two runs, 128 against the wide tile), by span: bf16 (176
/// keys) 1088 (`dense-prefill-8x2k`, causal) 501.3 / 501.5 against 477.9 /
/// 478.6 (the prologue, epilogue and diagonal tile weigh more in a short
/// loop of wider tiles); 2112 (`-4x4k`) 572.6 / 587.4 against 577.9 /
/// 572.4; 4160 (`-2x8k`) 594.1 / 588.2 against 581.0 / 591.1; about 4200
/// (`-16k-sw4096`) 623.4 / 591.7 against 638.0 / 637.2; 8256
/// (`-16k-causal`) 607.2 against 646.5; 16384 (`-16k`) 634.9 against
/// 643.4. FP8 (192 keys, fourth session): 1088 (`-8x2k-fp8`) 582.3 / 577.6
/// against 561.5 / 560.1; 4160 (`-2x8k-fp8`) 803.4 / 787.0 against 816.1 /
/// 825.5; 16384 (`-16k-fp8`) 832.8 / 828.0 against 870.9 / 858.4.
pub const WIDE_MIN_SPAN: u32 = 4096;

/// The work tiles of a batch, longest first (a stable sort: equal tiles
/// keep batch order): `DP_BLOCK_M` rows each, the last of a sequence
/// shorter; `keys[b]` and `kv_row0[b]` per sequence.
pub fn plan_tiles(
    batch: &RaggedBatch,
    keys: &[u32],
    kv_row0: &[u32],
    cfg: &DensePrefillConfig,
) -> Vec<DenseTile> {
    let m = DP_BLOCK_M as usize;
    let mut tiles = Vec::new();
    for b in 0..batch.batch() {
        let (r0, q_len) = (batch.input_row_offsets[b] as usize, batch.q_len(b));
        let cache = batch.cache_lengths[b] as usize;
        for i in (0..q_len).step_by(m) {
            let rows = m.min(q_len - i);
            let n = keys[b] as usize;
            let (first, last) = (
                cfg.mask.key_range(cache + i, n),
                cfg.mask.key_range(cache + i + rows - 1, n),
            );
            let bn = DP_BLOCK_N as usize;
            let key_tiles = last.end.div_ceil(bn).saturating_sub(first.start / bn);
            tiles.push(DenseTile {
                seq: b as u32,
                row0: (r0 + i) as u32,
                rows: rows as u32,
                q_pos0: (cache + i) as u32,
                num_keys: keys[b],
                kv_row0: kv_row0[b],
                key_tiles: key_tiles as u32,
                _pad: 0,
            });
        }
    }
    tiles.sort_by_key(|t| std::cmp::Reverse(t.key_tiles));
    tiles
}

/// A TMA map of a tensor `[rows, heads, 128]` at `addr`: boxes of 128
/// bytes (64 bf16 or 128 e4m3 dims) × 1 head × `box_rows` rows, 128-byte
/// swizzled (the kernels' `Slabs128` tiles), rows past the tensor
/// zero-filled.
fn encode_tmap(
    elem: Elem,
    addr: u64,
    heads: usize,
    rows: usize,
    box_rows: u32,
) -> Result<[u8; DP_TMAP_BYTES]> {
    let row_bytes = elem.bytes() * DP_HEAD_DIM as u64;
    let dims = [DP_HEAD_DIM as u64, heads as u64, rows as u64];
    let (t, box_dims) = match elem {
        Elem::Bf16 => (TmaElem::Bf16, 64),
        Elem::E4m3 => (TmaElem::U8, 128),
    };
    encode_tiled(
        t,
        addr,
        &dims,
        &[row_bytes, heads as u64 * row_bytes],
        &[box_dims, 1, box_rows],
    )
}

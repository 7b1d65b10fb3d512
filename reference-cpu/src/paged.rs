//! A borrowed bf16 (or FP8 e4m3, [`PagedCacheFp8`]) paged KV cache in MAX's
//! layout, as the reference reads it.
//!
//! The shape ([`PagedLayout`]) and the page table ([`PageTable`]) are the
//! abi crate's (`sparse_attn_abi::batch`, re-exported here), the same types
//! the host API takes. The pool is one bf16 tensor
//! `blocks[num_pages, kv_dim, num_layers, page_size, n_heads, head_dim]`
//! (row-major, `head_dim` contiguous):
//! - main KV cache: `kv_dim = 2` (index 0 = K, 1 = V), `n_heads = n_kv_heads`;
//! - index-K cache: `kv_dim = 1`, `n_heads = 1`.
//!
//! A page holds `page_size` consecutive tokens of one sequence. Logical token
//! `t` of sequence `b` lives in page `lookup[b * max_pages + t / page_size]`,
//! slot `t % page_size`, where `lookup: u32 [batch, max_pages]` is the page
//! table. Entries of `lookup` past a sequence's last page are unspecified
//! (engines leave stale ids there) and must never be read.

use half::bf16;

pub use sparse_attn_abi::batch::{KvDtype, PageTable, PagedLayout};

/// Borrowed view of a paged pool plus its page table.
#[derive(Clone, Copy, Debug)]
pub struct PagedCache<'a> {
    /// Shape of `data` (its dtype must be [`KvDtype::Bf16`]).
    pub layout: PagedLayout,
    /// The pool, `layout.elements()` bf16 values in the layout above.
    pub data: &'a [bf16],
    /// Page table `u32 [batch, max_pages]`, row-major.
    pub pages: PageTable<'a>,
}

impl PagedCache<'_> {
    /// Number of sequences the page table describes (`lookup.len() / max_pages`).
    pub fn batch(&self) -> usize {
        self.pages.batch()
    }

    /// The `head_dim`-long row of logical token `t` of sequence `b`
    /// (page `lookup[b * max_pages + t / page_size]`, slot `t % page_size`).
    ///
    /// Panics with a description when the token is not addressable (lookup
    /// row too short, page id out of the pool, index out of range); use
    /// [`PagedCache::try_row`] for a non-panicking variant.
    pub fn row(&self, b: usize, kv: usize, layer: usize, head: usize, t: usize) -> &[bf16] {
        match self.try_row(b, kv, layer, head, t) {
            Ok(r) => r,
            Err(e) => panic!("PagedCache::row: {e}"),
        }
    }

    /// Checked variant of [`PagedCache::row`].
    pub fn try_row(
        &self,
        b: usize,
        kv: usize,
        layer: usize,
        head: usize,
        t: usize,
    ) -> Result<&[bf16], String> {
        if self.layout.dtype != KvDtype::Bf16 {
            return Err(format!(
                "the pool holds bf16 values, layout says {:?}",
                self.layout.dtype
            ));
        }
        let (_, off) = locate(
            &self.layout,
            self.data.len(),
            &self.pages,
            b,
            kv,
            layer,
            head,
            t,
        )?;
        Ok(&self.data[off..off + self.layout.head_dim])
    }
}

/// Borrowed view of an FP8 e4m3 paged pool (one byte an element, the same
/// layout as the bf16 pool) plus its page table and its per-token scales:
///
/// - [`KvDtype::Fp8E4m3`]: the scales apart, `scales: f32 [num_pages,
///   kv_dim, num_layers, page_size, n_heads]` (the row at element `offset`
///   has entry `offset / head_dim`), or `None`: every scale 1 (a pool
///   quantised with per-tensor scales only, which an op then takes as its
///   descales);
/// - [`KvDtype::Fp8E4m3Fused`]: each block's rows followed by their f32
///   scales inside `data` ([`PagedLayout::scale_offset`]); `scales` is
///   `None`.
///
/// The value of an element is `e4m3_to_f32(byte) * token_scale`. The MLA
/// indexer's index-K cache (`kv_dim` 1, `n_heads` 1) is one of these.
#[derive(Clone, Copy, Debug)]
pub struct PagedCacheFp8<'a> {
    /// Shape of `data` (its dtype [`KvDtype::Fp8E4m3`] or
    /// [`KvDtype::Fp8E4m3Fused`]).
    pub layout: PagedLayout,
    /// The pool, `layout.elements()` bytes in the layout above.
    pub data: &'a [u8],
    /// The separate scales (`layout.elements() / head_dim` values) of a
    /// [`KvDtype::Fp8E4m3`] pool, or `None`.
    pub scales: Option<&'a [f32]>,
    /// Page table `u32 [batch, max_pages]`, row-major.
    pub pages: PageTable<'a>,
}

impl PagedCacheFp8<'_> {
    /// The `head_dim` e4m3 bytes of logical token `t` of sequence `b` and
    /// their token scale. Panics with a description when the token is not
    /// addressable; see [`PagedCacheFp8::try_row`].
    pub fn row(&self, b: usize, kv: usize, layer: usize, head: usize, t: usize) -> (&[u8], f32) {
        match self.try_row(b, kv, layer, head, t) {
            Ok(r) => r,
            Err(e) => panic!("PagedCacheFp8::row: {e}"),
        }
    }

    /// Checked variant of [`PagedCacheFp8::row`].
    pub fn try_row(
        &self,
        b: usize,
        kv: usize,
        layer: usize,
        head: usize,
        t: usize,
    ) -> Result<(&[u8], f32), String> {
        let l = &self.layout;
        if !matches!(l.dtype, KvDtype::Fp8E4m3 | KvDtype::Fp8E4m3Fused) {
            return Err(format!(
                "the pool holds e4m3 bytes (KvDtype::Fp8E4m3 or Fp8E4m3Fused), layout says {:?}",
                l.dtype
            ));
        }
        let (page, off) = locate(l, self.data.len(), &self.pages, b, kv, layer, head, t)?;
        if let (Some(s), true) = (self.scales, l.head_dim > 0 && !l.dtype.fused_scales()) {
            let n = l.elements() / l.head_dim;
            if s.len() != n {
                return Err(format!(
                    "scales has {} entries, layout {l:?} needs {n}",
                    s.len()
                ));
            }
        }
        let slot = t % l.page_size;
        Ok((
            &self.data[off..off + l.head_dim],
            self.scale(page, kv, layer, slot, head, off),
        ))
    }

    /// Index-K caches (`kv_dim` 1, `n_heads` 1): the bytes and scale of
    /// token `s` of sequence `b` in `layer`, without [`PagedCacheFp8::try_row`]'s
    /// checks (the caller validated the cache; out of range panics).
    pub fn key(&self, b: usize, layer: usize, s: usize) -> (&[u8], f32) {
        let l = &self.layout;
        let page = self.pages.lookup[b * self.pages.max_pages + s / l.page_size] as usize;
        let slot = s % l.page_size;
        let off = l.offset(page, 0, layer, slot, 0);
        (
            &self.data[off..off + l.head_dim],
            self.scale(page, 0, layer, slot, 0, off),
        )
    }

    /// The token scale of the row at element `off` (`page`, `kv`, `layer`,
    /// `slot`, `head`): from the pool ([`KvDtype::Fp8E4m3Fused`]), from
    /// `scales`, or 1.
    fn scale(
        &self,
        page: usize,
        kv: usize,
        layer: usize,
        slot: usize,
        head: usize,
        off: usize,
    ) -> f32 {
        let l = &self.layout;
        if l.dtype.fused_scales() {
            let at = l.scale_offset(page, kv, layer, slot, head);
            let b4: [u8; 4] = self.data[at..at + 4].try_into().expect("4 bytes");
            f32::from_le_bytes(b4)
        } else {
            match self.scales {
                Some(s) if l.head_dim > 0 => s[off / l.head_dim],
                _ => 1.0,
            }
        }
    }
}

/// Page and offset of the `head_dim`-long row of token `t` of sequence `b`
/// in a pool of `len` elements, or why it is not addressable.
#[allow(clippy::too_many_arguments)]
fn locate(
    l: &PagedLayout,
    len: usize,
    pages: &PageTable,
    b: usize,
    kv: usize,
    layer: usize,
    head: usize,
    t: usize,
) -> Result<(usize, usize), String> {
    if l.page_size == 0 {
        return Err("page_size is 0".into());
    }
    if kv >= l.kv_dim || layer >= l.num_layers || head >= l.n_heads {
        return Err(format!(
            "kv {kv} / layer {layer} / head {head} out of range for {l:?}"
        ));
    }
    if len != l.elements() {
        return Err(format!(
            "data has {len} elements, layout {l:?} needs {}",
            l.elements()
        ));
    }
    let col = t / l.page_size;
    if col >= pages.max_pages {
        return Err(format!(
            "token {t} of sequence {b} needs page column {col}, lookup has max_pages {}",
            pages.max_pages
        ));
    }
    let page = pages
        .page(b, col)
        .ok_or_else(|| format!("sequence {b} out of range of the page table"))?
        as usize;
    if page >= l.num_pages {
        return Err(format!(
            "lookup[{b}, {col}] = {page} is out of the pool of {} pages",
            l.num_pages
        ));
    }
    Ok((page, l.offset(page, kv, layer, t % l.page_size, head)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_follows_the_page_table() {
        let l = PagedLayout {
            num_pages: 3,
            kv_dim: 1,
            num_layers: 1,
            page_size: 2,
            n_heads: 1,
            head_dim: 1,
            dtype: KvDtype::Bf16,
        };
        let data: Vec<bf16> = (0..6).map(|x| bf16::from_f32(x as f32)).collect();
        // sequence 0 -> pages [2, 0], sequence 1 -> pages [1, stale]
        let lookup = [2u32, 0, 1, 2];
        let c = PagedCache {
            layout: l,
            data: &data,
            pages: PageTable::new(&lookup, 2),
        };
        let v = |b, t| c.row(b, 0, 0, 0, t)[0].to_f32();
        assert_eq!([v(0, 0), v(0, 1), v(0, 2), v(0, 3)], [4.0, 5.0, 0.0, 1.0]);
        assert_eq!([v(1, 0), v(1, 1)], [2.0, 3.0]);
        assert!(c.try_row(0, 0, 0, 0, 4).is_err());
        assert!(c.try_row(0, 1, 0, 0, 0).is_err());
        let bad = [7u32, 0, 1, 2];
        let c2 = PagedCache {
            pages: PageTable::new(&bad, 2),
            ..c
        };
        assert!(c2.try_row(0, 0, 0, 0, 0).is_err());
        assert_eq!(c.batch(), 2);
        let c3 = PagedCache {
            layout: PagedLayout {
                dtype: KvDtype::Fp8E4m3,
                ..l
            },
            ..c
        };
        assert!(c3.try_row(0, 0, 0, 0, 0).is_err());
    }
}

/// Hand-made pools for the reference's own unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::{PageTable, PagedCache, PagedLayout};
    use half::bf16;

    /// A 2-layer pool (data in layer 1) whose pages are handed to the
    /// sequences in reverse pool order.
    pub(crate) struct Pool {
        pub layout: PagedLayout,
        pub data: Vec<bf16>,
        pub lookup: Vec<u32>,
        pub max_pages: usize,
    }

    impl Pool {
        /// `value(b, kv, head, s)` gives the `head_dim` values of token `s`
        /// (`s < seqlen_k[b]`) in layer 1; every other slot holds `fill`, so
        /// reading one shows.
        pub fn new(
            seqlen_k: &[usize],
            kv_dim: usize,
            n_heads: usize,
            head_dim: usize,
            fill: bf16,
            value: impl Fn(usize, usize, usize, usize) -> Vec<f32>,
        ) -> Pool {
            const BLOCK: usize = 128;
            let pages: Vec<usize> = seqlen_k.iter().map(|s| s.div_ceil(BLOCK)).collect();
            let total: usize = pages.iter().sum::<usize>() + 1;
            let max_pages = pages.iter().copied().max().unwrap_or(0).max(1);
            let layout = PagedLayout {
                num_pages: total,
                kv_dim,
                num_layers: 2,
                page_size: BLOCK,
                n_heads,
                head_dim,
                dtype: super::KvDtype::Bf16,
            };
            let mut data = vec![fill; layout.elements()];
            let mut lookup = vec![0u32; seqlen_k.len() * max_pages];
            let mut next = total;
            for (b, &n) in seqlen_k.iter().enumerate() {
                for c in 0..pages[b] {
                    next -= 1;
                    lookup[b * max_pages + c] = next as u32;
                }
                for s in 0..n {
                    let page = lookup[b * max_pages + s / BLOCK] as usize;
                    for kv in 0..kv_dim {
                        for h in 0..n_heads {
                            let off = layout.offset(page, kv, 1, s % BLOCK, h);
                            for (i, v) in value(b, kv, h, s).into_iter().enumerate() {
                                data[off + i] = bf16::from_f32(v);
                            }
                        }
                    }
                }
            }
            Pool {
                layout,
                data,
                lookup,
                max_pages,
            }
        }

        pub fn cache(&self) -> PagedCache<'_> {
            PagedCache {
                layout: self.layout,
                data: &self.data,
                pages: PageTable::new(&self.lookup, self.max_pages),
            }
        }
    }

    /// bf16 copies of `v`.
    pub(crate) fn bf(v: &[f32]) -> Vec<bf16> {
        v.iter().map(|&x| bf16::from_f32(x)).collect()
    }
}

/// The main K/V cache's shape against the op's head count: `kv_dim` 2 (K,
/// V) and `n_kv_heads` heads.
pub(crate) fn check_main_kv(l: &PagedLayout, n_kv_heads: usize) -> Result<(), String> {
    if l.kv_dim != 2 {
        return Err(format!(
            "main KV cache must have kv_dim 2 (K, V), layout {l:?}"
        ));
    }
    if l.n_heads != n_kv_heads {
        return Err(format!(
            "cache has {} heads, n_kv_heads is {n_kv_heads}",
            l.n_heads
        ));
    }
    Ok(())
}

/// A pool's page size, the layer read and the pool's length (`len`
/// elements) against its layout.
pub(crate) fn check_pool(l: &PagedLayout, layer: usize, len: usize) -> Result<(), String> {
    if l.page_size == 0 {
        return Err("page_size must be >= 1".into());
    }
    if layer >= l.num_layers {
        return Err(format!("layer {layer} out of {} layers", l.num_layers));
    }
    if len != l.elements() {
        return Err(format!(
            "the pool has {len} elements, layout {l:?} needs {}",
            l.elements()
        ));
    }
    Ok(())
}

/// The page table holds `batch * max_pages` entries at least.
pub(crate) fn check_lookup_len(table: &PageTable, n: usize) -> Result<(), String> {
    if table.lookup.len() < n * table.max_pages {
        return Err(format!(
            "lookup has {} entries, batch {n} * max_pages {} needed",
            table.lookup.len(),
            table.max_pages
        ));
    }
    Ok(())
}

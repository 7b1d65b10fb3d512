//! 128-byte swizzled tiles (`Swizzle<3,4,3>`): 16-byte chunk `c` of row `r`
//! is stored at chunk `c ^ (r % 8)` of its 128-byte span, so the 8 rows an
//! `ldmatrix` (or a `wgmma` core matrix) reads of one chunk column fall in
//! 8 different bank groups. Tiles are 1024-byte aligned (8 rows × 128 bytes).

use crate::arch::wgmma_desc_sw128;

/// Where 16-byte chunk `cc` of row `r` of a tile lives (byte offset).
pub trait TileLayout {
    /// Byte offset of chunk `cc` (0..16 for 256-byte rows) of row `r`.
    fn at(r: u32, cc: u32) -> u32;
}

/// Rows of 256 bytes (128 bf16) one after another, each 128-byte half
/// swizzled: the layout `ldmatrix` reads (K/V tiles of the `mma.sync`
/// kernels, query and output staging tiles).
pub struct Rows256;

impl TileLayout for Rows256 {
    #[inline(always)]
    fn at(r: u32, cc: u32) -> u32 {
        r * 256 + ((cc ^ (r & 7)) << 4)
    }
}

/// A `ROWS` × 128 bf16 tile as `wgmma`'s canonical 128-byte-swizzle layout
/// wants it: two slabs (dims 0..64 and 64..128) of `ROWS` rows of 128 bytes.
pub struct Slabs128<const ROWS: u32>;

impl<const ROWS: u32> TileLayout for Slabs128<ROWS> {
    #[inline(always)]
    fn at(r: u32, cc: u32) -> u32 {
        (cc / 8) * Self::SLAB_BYTES + r * 128 + (((cc % 8) ^ (r & 7)) << 4)
    }
}

impl<const ROWS: u32> Slabs128<ROWS> {
    /// Bytes of one 64-dim slab.
    pub const SLAB_BYTES: u32 = ROWS * 128;

    /// Descriptor of k-step `ks` (dims `16 ks .. 16 ks + 16`) of the tile at
    /// `base` as a K-major operand (rows are N or M, dims are K: K of
    /// `S = Q Kᵀ`): 32 bytes a k-step inside a slab, `sbo` 1024 between
    /// 8-row groups.
    #[inline(always)]
    pub fn k_major_desc(base: u32, ks: u32) -> u64 {
        wgmma_desc_sw128(base + Self::k_step_bytes(ks), 16, 1024)
    }

    /// [`Self::k_major_desc`] from the descriptor of k-step 0 (`desc0`):
    /// one 64-bit add of a constant ([`desc_offset`]).
    #[inline(always)]
    pub fn k_major_step(desc0: u64, ks: u32) -> u64 {
        desc_offset(desc0, Self::k_step_bytes(ks))
    }

    /// Bytes from a tile's start to its K-major k-step `ks`.
    #[inline(always)]
    const fn k_step_bytes(ks: u32) -> u32 {
        (ks / 4) * Self::SLAB_BYTES + (ks % 4) * 32
    }

    /// Descriptor of k-step `ks` (rows `16 ks .. 16 ks + 16`) of the tile at
    /// `base` as an N-major operand (rows are K, dims are N: V of `O = P V`):
    /// 16 rows of 128 bytes a k-step, `lbo` one slab between the two 64-dim
    /// column blocks, `sbo` 1024 between 8-row groups.
    #[inline(always)]
    pub fn mn_major_desc(base: u32, ks: u32) -> u64 {
        wgmma_desc_sw128(base + ks * 2048, Self::SLAB_BYTES, 1024)
    }

    /// [`Self::mn_major_desc`] from the descriptor of k-step 0.
    #[inline(always)]
    pub fn mn_major_step(desc0: u64, ks: u32) -> u64 {
        desc_offset(desc0, ks * 2048)
    }
}

/// The descriptor of the operand `bytes` (a multiple of 16) past the one
/// `desc` describes: its start-address field (address / 16, 14 bits) plus
/// `bytes / 16`. A shared-memory address stays under 256 KiB, so the field
/// does not carry into the next one. The per-k-step descriptors of a tile
/// are then one base descriptor plus constants: a 64-bit add each, where
/// building each from its address took 6 uniform-datapath instructions
/// (`dense_prefill`'s key-tile loop: 526 SASS instructions, 461 with the
/// `_step` forms; FlashAttention-3's causal loop 469). In
/// `msa_block_major_run`, whose descriptor bases live in vector registers,
/// the `_step` forms made the loops 30 instructions longer (more `R2UR`):
/// it keeps the address forms.
#[inline(always)]
pub fn desc_offset(desc: u64, bytes: u32) -> u64 {
    desc + (bytes >> 4) as u64
}

//! What the MSA ops compute: their configurations, plain data shared by the
//! host API (`sparse_attn::{MsaIndexerConfig, MsaAttentionConfig}`, which
//! adds the checks against what the kernels implement) and the f64 reference
//! (which accepts any head size, group and `topk`).

/// `1 / sqrt(128)` in f32, the bits of `1.0 / 128f32.sqrt()` (no `sqrt` in
/// `core`); MiniMax-M3's softmax temperature for heads of 128.
const INV_SQRT_128: f32 = f32::from_bits(0x3db5_04f3);

/// What the MSA indexer computes (the upstream op's compile-time parameters).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MsaIndexerConfig {
    /// Index heads; each selects its own blocks (GPU: 1..=128; M3: 4).
    pub num_index_heads: usize,
    /// Index head dimension (GPU: 128).
    pub head_dim: usize,
    /// Tokens per block; must equal the cache's page size (128).
    pub block_size: usize,
    /// Blocks selected per (head, token), >= 1 (M3: 16).
    pub topk: usize,
    /// Leading blocks always kept (score forced to 1e30).
    pub init_blocks: usize,
    /// Trailing blocks up to the query's own always kept (score forced to
    /// 1e29; overrides init).
    pub local_blocks: usize,
    /// Multiplies every q·k; finite and nonzero (a negative scale is legal).
    pub scale: f32,
}

impl MsaIndexerConfig {
    /// MiniMax-M3's probable defaults on one index head group (4 heads of 128,
    /// top-16, no init block, one local block).
    pub const fn minimax_m3() -> Self {
        MsaIndexerConfig {
            num_index_heads: 4,
            head_dim: 128,
            block_size: 128,
            topk: 16,
            init_blocks: 0,
            local_blocks: 1,
            scale: INV_SQRT_128,
        }
    }
}

/// What the MSA attention computes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MsaAttentionConfig {
    /// Query heads, a positive multiple of `n_kv_heads` (`n_kv_heads *
    /// group`; GPU: group 1..=16).
    pub n_heads: usize,
    /// KV heads (= heads of the cache = index heads of `d_indices`).
    pub n_kv_heads: usize,
    /// Head dimension of q, K and V (GPU: 128).
    pub head_dim: usize,
    /// Slots of `d_indices` per (KV head, row) (GPU: 1..=256).
    pub topk: usize,
    /// Multiplies every q·k (the softmax temperature); GPU: finite and > 0.
    pub scale: f32,
}

impl MsaAttentionConfig {
    /// MiniMax-M3: 64 query heads over 4 KV heads, top-16.
    pub const fn minimax_m3() -> Self {
        MsaAttentionConfig {
            n_heads: 64,
            n_kv_heads: 4,
            head_dim: 128,
            topk: 16,
            scale: INV_SQRT_128,
        }
    }

    /// Query heads per KV head (`n_heads / n_kv_heads`, 0 if `n_kv_heads` is 0).
    pub const fn group(&self) -> usize {
        match self.n_heads.checked_div(self.n_kv_heads) {
            Some(g) => g,
            None => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn m3_scale_is_one_over_sqrt_128() {
        assert_eq!(INV_SQRT_128, 1.0 / std::primitive::f32::sqrt(128.0));
        assert_eq!(MsaAttentionConfig::minimax_m3().group(), 16);
        let none = MsaAttentionConfig {
            n_kv_heads: 0,
            ..MsaAttentionConfig::minimax_m3()
        };
        assert_eq!(none.group(), 0);
    }
}

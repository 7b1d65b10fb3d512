//! What the ops compute: their configurations, plain data shared by the
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

/// What the dense prefill computes (`shared/spec/dense-prefill.md`): for
/// query row `i` of sequence `b` at `q_pos = cache_len[b] + i` and key `s`
/// of its `num_keys[b]` keys, `x_s = scale · q·k_s` over the keys `mask`
/// shows (`Mask::key_range(q_pos, num_keys[b])`), `out = Σ e^{x_s} V_s / D`
/// with `D = Σ e^{x_s}` (+ `e^{sink[h]}` with sinks); `lse = ln D` (the
/// sink included; `-inf` when `D = 0`); a row that sees no key gives 0.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DensePrefillConfig {
    /// Query heads, a positive multiple of `n_kv_heads`.
    pub n_heads: usize,
    /// KV heads.
    pub n_kv_heads: usize,
    /// Head dimension of q, K and V (GPU: 128).
    pub head_dim: usize,
    /// Multiplies every q·k (the softmax temperature); GPU: finite and > 0,
    /// as for the MSA attention (the kernel takes each row's maximum of the
    /// raw scores and scales it).
    pub scale: f32,
    /// Which keys a query sees, by position.
    pub mask: crate::batch::Mask,
    /// Whether a sink logit per query head (`sink: f32 [n_heads]`) adds
    /// `e^{sink[h]}` to every row's denominator.
    pub sinks: bool,
}

impl DensePrefillConfig {
    /// Llama-style GQA prefill: 32 query heads over 8 KV heads of 128,
    /// `scale = 1/sqrt(128)`, causal, no sinks.
    pub const fn llama_gqa() -> Self {
        DensePrefillConfig {
            n_heads: 32,
            n_kv_heads: 8,
            head_dim: 128,
            scale: INV_SQRT_128,
            mask: crate::batch::Mask::Causal,
            sinks: false,
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

/// What the MLA FP8 lightning indexer computes
/// (`shared/spec/mla-fp8-indexer.md`): for query row `t` at `q_pos` of
/// sequence `b` and key `s`, `score = k_scale[s] · Σ_h max(q[t,h]·k[s], 0) ·
/// qs[t,h]` over the keys `mask` shows (`Mask::key_range(q_pos,
/// seqlen_k[b])`), and the `top_k` best positions, descending, ties to the
/// lower position, `-1` past the visible keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MlaIndexerConfig {
    /// Index heads per query row (DeepSeek-V3.2: 64; GPU: 8, 16, 32, 64 or 128).
    pub num_heads: usize,
    /// Positions kept per row (DeepSeek-V3.2: 2048; GPU: 1 ..= 2048).
    pub top_k: usize,
    /// `Mask::Causal` (by absolute position) or `Mask::None`.
    pub mask: crate::batch::Mask,
}

impl MlaIndexerConfig {
    /// DeepSeek-V3.2: 64 index heads, top-2048, causal.
    pub const fn deepseek_v32() -> Self {
        MlaIndexerConfig {
            num_heads: 64,
            top_k: 2048,
            mask: crate::batch::Mask::Causal,
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

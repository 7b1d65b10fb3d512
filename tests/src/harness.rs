//! Glue between the host API and the reference shared by the GPU tests, the
//! benchmark and the demo: opening the GPU (or saying why not), and the
//! reference's parameter types built from the host configs.

use sparse_attn::{Gpu, MsaAttentionConfig, MsaIndexerConfig, PagedLayout};
use sparse_attn_reference::msa_attention::AttentionParams;
use sparse_attn_reference::msa_indexer::IndexerParams;

use crate::data::PagedPool;

/// Device 0, or `None` (printing `SKIP`) where no NVIDIA driver exists. A
/// driver that is present but cannot open the device is a failure, not a skip.
pub fn gpu_or_skip() -> Option<Gpu> {
    if !Gpu::driver_present() {
        eprintln!("SKIP: no NVIDIA driver on this machine; GPU test not run");
        return None;
    }
    Some(Gpu::new(0).expect("the driver is present but device 0 could not be opened"))
}

/// The host API's description of a generated pool.
pub fn layout_of(pool: &PagedPool) -> PagedLayout {
    let l = pool.layout;
    PagedLayout {
        num_pages: l.num_pages,
        kv_dim: l.kv_dim,
        num_layers: l.num_layers,
        page_size: l.page_size,
        n_heads: l.n_heads,
        head_dim: l.head_dim,
    }
}

/// Reference parameters of an indexer config.
pub fn indexer_params(cfg: &MsaIndexerConfig) -> IndexerParams {
    IndexerParams {
        num_index_heads: cfg.num_index_heads,
        head_dim: cfg.head_dim,
        topk: cfg.topk,
        init_blocks: cfg.init_blocks,
        local_blocks: cfg.local_blocks,
        scale: cfg.scale,
    }
}

/// Reference parameters of an attention config.
pub fn attention_params(c: &MsaAttentionConfig) -> AttentionParams {
    AttentionParams {
        n_heads: c.n_heads,
        n_kv_heads: c.n_kv_heads,
        head_dim: c.head_dim,
        topk: c.topk,
        scale: c.scale,
    }
}

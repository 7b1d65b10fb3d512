//! The example of the README ("Using it"), compiled by `cargo test` and
//! `cargo build --examples`; xtask/tests/readme_example.rs checks that the
//! README shows exactly this file (after this header).
//!
//! `cargo run --release -p sparse-attn --example quickstart` (needs an
//! H100/H200; without an NVIDIA driver it says so and exits with status 0).

use sparse_attn::{Gpu, MsaIndexer, MsaIndexerConfig, PageTable, PagedLayout, RaggedBatch};

fn main() -> sparse_attn::Result<()> {
    if !Gpu::driver_present() {
        println!("no NVIDIA driver on this machine: nothing to run");
        return Ok(());
    }
    let gpu = Gpu::new(0)?;
    let cfg = MsaIndexerConfig::minimax_m3(); // 4 index heads x 128, top-16, 1 local block
    let mut indexer = MsaIndexer::new(&gpu, cfg)?;

    // Two sequences: 1 new token on 1000 cached, 1 new token on 5 cached.
    let (offsets, cache_lengths) = ([0u32, 1, 2], [1000u32, 5]);
    let layout = PagedLayout::index_k(16, 1, 128, 128); // pages, layers, page size, head dim
    let lookup: Vec<u32> = vec![3, 7, 9, 1, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]; // [batch, 8]
    let batch = RaggedBatch::new(&offsets, &cache_lengths);

    // plan: validates the host metadata and uploads the work list (once per
    // batch shape; the plan serves every layer)
    indexer.plan(&batch, &PageTable::new(&lookup, 8), &layout)?;

    let q = gpu.zeros::<sparse_attn::bf16>(2 * cfg.num_index_heads * 128)?; // [rows, heads, 128]
    let k_cache = gpu.zeros::<sparse_attn::bf16>(layout.elements())?;
    let d_lookup = gpu.upload(&lookup)?;
    let mut out = gpu.zeros::<i32>(cfg.num_index_heads * 2 * cfg.topk)?;

    // run: two launches on the stream, no sync, no allocation (CUDA-graph friendly)
    let layer = 0;
    indexer.run(&q, &k_cache, &d_lookup, layer, &mut out)?;
    let idxs = gpu.download(&out)?; // [heads, rows, topk] block ids, best first, -1 padded
    println!("{:?}", &idxs[..cfg.topk]);
    Ok(())
}

//! Redraws the bench's SVG charts from a results file; needs no GPU.
//!
//! `charts [--results bench/results/h200.json] [--out bench/charts]
//!         [--peers a.json,b.json] [--bf16-matmul-tflops X] [--fp8-matmul-tflops Y]`
//!
//! (`cargo xtask charts` runs it from the repository root.) What each chart
//! shows: `sparse_attn_tests::charts` and BENCHMARKS.md.

use std::path::PathBuf;

use sparse_attn_tests::charts::{redraw, Options};

/// SVG charts of a bench results file: per op family ours vs the peers, a roofline, the fraction of each limit.
#[derive(clap::Parser)]
#[command(name = "charts")]
struct Args {
    /// The bench records (a JSON list, as `bench --out` writes it).
    #[arg(long, default_value = "bench/results/h200.json", value_name = "FILE")]
    results: PathBuf,
    /// Folder for the SVG files (`<results stem>-<chart>.svg`).
    #[arg(long, default_value = "bench/charts", value_name = "DIR")]
    out: PathBuf,
    /// Peer files for the cases whose record has no peers (comma-separated);
    /// by default the `<results stem>-*peers.json` next to the results.
    #[arg(long, value_delimiter = ',', value_name = "A.json,B.json")]
    peers: Option<Vec<PathBuf>>,
    /// bf16 matmul rate (TFLOP/s) for the records that carry none.
    #[arg(long, value_name = "TFLOPS")]
    bf16_matmul_tflops: Option<f64>,
    /// FP8 matmul rate (TFLOP/s) for the records that carry none.
    #[arg(long, value_name = "TFLOPS")]
    fp8_matmul_tflops: Option<f64>,
}

fn main() {
    let args: Args = clap::Parser::parse();
    let opts = Options {
        bf16_matmul_tflops: args.bf16_matmul_tflops,
        fp8_matmul_tflops: args.fp8_matmul_tflops,
        peer_files: args.peers,
    };
    match redraw(&args.results, &args.out, &opts) {
        Ok(files) => {
            for f in files {
                println!("wrote {}", f.display());
            }
        }
        Err(e) => {
            eprintln!("charts: {e}");
            std::process::exit(1);
        }
    }
}

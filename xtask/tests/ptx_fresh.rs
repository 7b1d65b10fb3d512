//! The checked-in PTX (`host/ptx/sparse_attn.ptx`) is current: its recorded
//! source hash matches the kernel sources, it declares every kernel the
//! sources export, and it is what the `sparse-attn` crate embeds.
//!
//! These checks need no device toolchain and no GPU; CI additionally rebuilds
//! the PTX (`cargo xtask build-ptx --check`) and compares it byte for byte.

use std::fs;

use xtask::{kernel_source_hash, repo_root, KERNEL_CRATE_DIR, PTX_HASH_PATH, PTX_PATH};

const FIX: &str = "run `cargo xtask build-ptx` and commit host/ptx";

use xtask::read_repo_file as read;

#[test]
fn ptx_source_hash_matches_kernel_sources() {
    let recorded = read(PTX_HASH_PATH).trim().to_string();
    let current = kernel_source_hash(&repo_root()).expect("hashing the kernel sources");
    assert_eq!(
        recorded, current,
        "{PTX_HASH_PATH} says the PTX was built from kernel sources hashing to {recorded}, \
         but {KERNEL_CRATE_DIR}/ now hashes to {current}: the checked-in PTX is stale; {FIX}"
    );
}

/// Names of the `#[no_mangle] pub unsafe extern "ptx-kernel" fn NAME` in a
/// source file (the attribute may sit a few lines above, among other
/// attributes and doc comments).
fn exported_kernels(src: &str) -> Vec<String> {
    const SIG: &str = "pub unsafe extern \"ptx-kernel\" fn ";
    let lines: Vec<&str> = src.lines().map(str::trim).collect();
    let mut names = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.strip_prefix(SIG) else {
            continue;
        };
        let name: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        // Walk up over the item's attributes and doc comments.
        let no_mangle = lines[..i]
            .iter()
            .rev()
            .take_while(|l| l.starts_with("#[") || l.starts_with("///") || l.starts_with("//"))
            .any(|l| l.contains("no_mangle"));
        if no_mangle && !name.is_empty() {
            names.push(name);
        }
    }
    names
}

#[test]
fn ptx_declares_every_exported_kernel() {
    let src_dir = repo_root().join(KERNEL_CRATE_DIR).join("src");
    let mut kernels = Vec::new();
    let files = xtask::kernel_source_files(&repo_root()).expect("listing the kernel sources");
    for (rel, path) in files {
        if rel.starts_with(KERNEL_CRATE_DIR) && rel.ends_with(".rs") {
            let src = fs::read_to_string(&path).expect("reading a kernel source");
            kernels.extend(exported_kernels(&src));
        }
    }
    assert!(
        !kernels.is_empty(),
        "found no `#[no_mangle] pub unsafe extern \"ptx-kernel\" fn` in {}",
        src_dir.display()
    );
    let entries = xtask::ptx_entries(&read(PTX_PATH));
    let missing: Vec<&String> = kernels.iter().filter(|k| !entries.contains(k)).collect();
    assert!(
        missing.is_empty(),
        "{PTX_PATH} has no `.entry` for kernel(s) {missing:?} of {KERNEL_CRATE_DIR}/src \
         (it declares {entries:?}); {FIX}"
    );
}

#[test]
fn embedded_ptx_is_the_checked_in_file() {
    let file = read(PTX_PATH);
    assert!(
        sparse_attn::ptx::PTX == file,
        "sparse_attn::ptx::PTX ({} bytes) differs from {PTX_PATH} ({} bytes): \
         rebuild the sparse-attn crate (cargo build) after {FIX}",
        sparse_attn::ptx::PTX.len(),
        file.len()
    );
    assert_eq!(
        sparse_attn::ptx::PTX_SOURCE_HASH.trim(),
        read(PTX_HASH_PATH).trim(),
        "sparse_attn::ptx::PTX_SOURCE_HASH differs from {PTX_HASH_PATH}"
    );
}

#[test]
fn kernel_scan_finds_attributed_kernels_only() {
    let src = "#[no_mangle]\npub unsafe extern \"ptx-kernel\" fn a(x: u32) {}\n\
               /// doc\n#[no_mangle]\n/// more doc\npub unsafe extern \"ptx-kernel\" fn b_2() {}\n\
               pub unsafe extern \"ptx-kernel\" fn mangled() {}\n\
               #[no_mangle]\nfn other() {}\npub unsafe extern \"ptx-kernel\" fn c() {}\n";
    assert_eq!(exported_kernels(src), vec!["a", "b_2"]);
}

//! Library side of `xtask`: paths, the kernel source hash, device toolchain
//! detection, `ptxas` lookup and the parser for `ptxas -v` reports.
//!
//! The binary (`cargo xtask ...`, see `main.rs`) drives these; tests elsewhere
//! in the workspace use [`kernel_source_hash`], [`repo_root`], [`PTX_PATH`]
//! and [`PTX_HASH_PATH`] to check that the checked-in PTX is current.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

/// The checked-in PTX, relative to the repository root.
pub const PTX_PATH: &str = "host/ptx/sparse_attn.ptx";
/// SHA-256 of the kernel sources the checked-in PTX was built from (see
/// [`kernel_source_hash`]), relative to the repository root.
pub const PTX_HASH_PATH: &str = "host/ptx/sparse_attn.ptx.sha256";
/// `rustc --version` of the compiler that built the checked-in PTX.
pub const PTX_TOOLCHAIN_PATH: &str = "host/ptx/sparse_attn.ptx.toolchain";
/// The device crate, relative to the repository root.
pub const KERNEL_CRATE_DIR: &str = "kernels-gpu";
/// The rustc target the kernels are built for.
pub const DEVICE_TARGET: &str = "nvptx64-nvidia-cuda";
/// Default GPU architecture (H100).
pub const DEFAULT_ARCH: &str = "sm_90a";

/// The repository root: the parent of the `xtask` crate, fixed at compile time.
pub fn repo_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| manifest_dir.to_path_buf())
}

/// The crates whose sources make up the PTX: the device crate and the abi
/// crate it shares with the host.
pub const KERNEL_SOURCE_CRATES: [&str; 2] = [ABI_CRATE_DIR, KERNEL_CRATE_DIR];

/// Directory of the abi crate (relative to the repository root).
pub const ABI_CRATE_DIR: &str = "abi";

/// Writes `.maxntid T, 1, 1` (and `.minnctapersm N` where `N > 0`) after
/// the parameter list of every `.entry` named in `bounds` (rustc writes no
/// launch bounds; see `sparse_attn_abi::KERNEL_BOUNDS`). Every entry
/// of the PTX must be in the table, and every table row must name an entry.
pub fn add_launch_bounds(ptx: &str, bounds: &[(&str, u32, u32)]) -> Result<String, String> {
    let mut out = String::with_capacity(ptx.len() + 64 * bounds.len());
    let mut rest = ptx;
    let mut seen = Vec::new();
    while let Some(at) = rest.find(".entry ") {
        let name_start = at + ".entry ".len();
        let name_len = rest[name_start..]
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(0);
        let name = &rest[name_start..name_start + name_len];
        let (threads, ctas) = bounds
            .iter()
            .find(|(k, _, _)| *k == name)
            .map(|&(_, t, c)| (t, c))
            .ok_or_else(|| format!("kernel `{name}` has no row in KERNEL_BOUNDS"))?;
        // The parameter list ends at the first ")" followed by the body's "{".
        let close = rest[name_start..]
            .find(")\n{")
            .ok_or_else(|| format!("kernel `{name}`: no end of its parameter list"))?
            + name_start
            + 1;
        out.push_str(&rest[..close]);
        out.push_str(&format!("\n.maxntid {threads}, 1, 1"));
        if ctas > 0 {
            out.push_str(&format!("\n.minnctapersm {ctas}"));
        }
        rest = &rest[close..];
        seen.push(name.to_string());
    }
    out.push_str(rest);
    if let Some((k, _, _)) = bounds.iter().find(|(k, _, _)| !seen.iter().any(|s| s == k)) {
        return Err(format!(
            "KERNEL_BOUNDS names `{k}`, which the PTX does not define"
        ));
    }
    Ok(out)
}

/// A file of the repository (`rel` from its root) as text; panics with the
/// path (for tests).
pub fn read_repo_file(rel: &str) -> String {
    let path = repo_root().join(rel);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The files that make up the kernel sources: for each of
/// [`KERNEL_SOURCE_CRATES`] its `Cargo.toml` and every file under its `src`,
/// as (relative path with '/' separators, absolute path), sorted by the
/// relative path. Relative paths are relative to the repository root, e.g.
/// `kernels-gpu/src/lib.rs`.
pub fn kernel_source_files(repo_root: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let mut files = Vec::new();
    for krate in KERNEL_SOURCE_CRATES {
        let crate_dir = repo_root.join(krate);
        if krate != KERNEL_CRATE_DIR && !crate_dir.is_dir() {
            continue; // a tree without the abi crate (the unit test's)
        }
        files.push((format!("{krate}/Cargo.toml"), crate_dir.join("Cargo.toml")));
        let mut stack = vec![(format!("{krate}/src"), crate_dir.join("src"))];
        while let Some((rel, dir)) = stack.pop() {
            for entry in fs::read_dir(&dir)? {
                let entry = entry?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                let path = entry.path();
                let child_rel = format!("{rel}/{name}");
                // fs::metadata follows symlinks.
                let meta = fs::metadata(&path)?;
                if meta.is_dir() {
                    stack.push((child_rel, path));
                } else if meta.is_file() {
                    files.push((child_rel, path));
                }
            }
        }
    }
    files.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(files)
}

/// SHA-256 (lowercase hex) over the files of [`kernel_source_files`] (the
/// abi and kernel crates' manifests and sources), in sorted order of their relative paths (relative to the
/// repository root, '/' separators, e.g. `kernels-gpu/src/lib.rs`); for each
/// file the hash takes: the relative path bytes, a 0 byte, the content length
/// as u64 little-endian, the content.
pub fn kernel_source_hash(repo_root: &Path) -> io::Result<String> {
    let mut hasher = Sha256::new();
    for (rel, path) in kernel_source_files(repo_root)? {
        let content = fs::read(&path)?;
        hasher.update(rel.as_bytes());
        hasher.update([0u8]);
        hasher.update((content.len() as u64).to_le_bytes());
        hasher.update(&content);
    }
    Ok(to_hex(&hasher.finalize()))
}

/// SHA-256 of some bytes, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    to_hex(&Sha256::digest(bytes))
}

fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The hash recorded next to the checked-in PTX (trimmed), if the file exists.
pub fn checked_in_source_hash(repo_root: &Path) -> io::Result<String> {
    Ok(fs::read_to_string(repo_root.join(PTX_HASH_PATH))?
        .trim()
        .to_string())
}

/// The library crate name of a crate's `Cargo.toml`: `[lib] name`, else
/// `[package] name` with '-' replaced by '_'. A minimal TOML scan, enough for
/// the kernel crate's manifest.
pub fn lib_crate_name(cargo_toml: &str) -> Option<String> {
    let mut section = String::new();
    let mut package_name = None;
    let mut lib_name = None;
    for line in cargo_toml.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.starts_with('[') {
            section = line
                .trim_matches(|c| c == '[' || c == ']')
                .trim()
                .to_string();
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if key.trim() != "name" {
            continue;
        }
        let value = value
            .trim()
            .trim_matches('"')
            .trim_matches('\'')
            .to_string();
        match section.as_str() {
            "package" => package_name = Some(value),
            "lib" => lib_name = Some(value),
            _ => {}
        }
    }
    lib_name.or(package_name).map(|n| n.replace('-', "_"))
}

/// Names of the kernels (`.entry`) in a PTX module, in order.
pub fn ptx_entries(ptx: &str) -> Vec<String> {
    ptx.lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let rest = l
                .strip_prefix(".visible .entry ")
                .or_else(|| l.strip_prefix(".weak .entry "))
                .or_else(|| l.strip_prefix(".entry "))?;
            let name: String = rest
                .trim_start()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '$' || *c == '.')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Environment
// ---------------------------------------------------------------------------

/// Whether an environment variable must be removed before running a nested
/// cargo for the device build: everything cargo/rustup set for the outer
/// `cargo run` (RUSTUP_TOOLCHAIN, CARGO, CARGO_PKG_*, ...) and everything that
/// changes how cargo builds (CARGO_TARGET_DIR, CARGO_BUILD_*, RUSTFLAGS,
/// CARGO_ENCODED_RUSTFLAGS, RUSTC_WRAPPER, ...). Kept: CARGO_HOME,
/// network/registry/terminal settings, RUSTUP_HOME.
pub fn is_cargo_build_var(name: &str) -> bool {
    const KEEP_PREFIXES: &[&str] = &[
        "CARGO_HOME",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTRIES_",
        "CARGO_REGISTRY_",
        "CARGO_TERM_",
        "CARGO_LOG",
    ];
    if name == "CARGO" || name == "RUSTUP_TOOLCHAIN" {
        return true;
    }
    if name.starts_with("CARGO_") {
        return !KEEP_PREFIXES.iter().any(|p| name.starts_with(p));
    }
    name.starts_with("RUSTFLAGS")
        || name.starts_with("RUSTDOCFLAGS")
        || name.starts_with("RUSTC")
        || name.starts_with("RUSTDOC")
        || name == "__CARGO_FIX_PLZ"
        || name.starts_with("__CARGO")
}

/// Remove the cargo-related variables ([`is_cargo_build_var`]) from a command.
pub fn clean_cargo_env(cmd: &mut Command) -> &mut Command {
    for (key, _) in std::env::vars_os() {
        if is_cargo_build_var(&key.to_string_lossy()) {
            cmd.env_remove(&key);
        }
    }
    cmd
}

/// CI mode: `CI` is set to something other than "", "0" or "false".
pub fn ci_mode() -> bool {
    match std::env::var("CI") {
        Ok(v) => {
            let v = v.trim().to_ascii_lowercase();
            !(v.is_empty() || v == "0" || v == "false" || v == "no")
        }
        Err(_) => false,
    }
}

// ---------------------------------------------------------------------------
// Device toolchain
// ---------------------------------------------------------------------------

/// Which rustc builds the kernels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceToolchainKind {
    /// Debian's `rustc-web` + `cargo-web` + `rust-web-src`.
    Debian,
    /// A rustup nightly with the `rust-src` component.
    RustupNightly,
}

/// A toolchain able to build `core` for nvptx64 (`-Zbuild-std=core`).
#[derive(Debug, Clone)]
pub struct DeviceToolchain {
    pub kind: DeviceToolchainKind,
    /// Program and leading arguments that run cargo (e.g. `/usr/bin/cargo`,
    /// or `rustup run nightly cargo`, the same as `cargo +nightly`).
    pub cargo: Vec<OsString>,
    /// The rustc passed as `RUSTC`.
    pub rustc: PathBuf,
    /// The rustc's sysroot.
    pub sysroot: PathBuf,
    /// `rustc --version`.
    pub version: String,
}

impl DeviceToolchain {
    /// A one-line description: which toolchain, its rustc path and version.
    pub fn describe(&self) -> String {
        let what = match self.kind {
            DeviceToolchainKind::Debian => "Debian rustc-web (/usr/bin/cargo)",
            DeviceToolchainKind::RustupNightly => "rustup nightly with rust-src (cargo +nightly)",
        };
        format!("{what}: {} ({})", self.rustc.display(), self.version)
    }

    /// A `Command` running this toolchain's cargo with a clean cargo
    /// environment, `RUSTC` pointing at this toolchain's rustc and
    /// `RUSTC_BOOTSTRAP=1`.
    pub fn cargo_command(&self) -> Command {
        let mut cmd = Command::new(&self.cargo[0]);
        cmd.args(&self.cargo[1..]);
        clean_cargo_env(&mut cmd);
        cmd.env("RUSTC", &self.rustc).env("RUSTC_BOOTSTRAP", "1");
        cmd
    }
}

/// Debian's rustc location and library source.
pub const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
pub const DEBIAN_CARGO: &str = "/usr/bin/cargo";
pub const DEBIAN_RUST_SRC: &str = "/usr/lib/rustlib/src/rust/library";

fn rustc_version(rustc: &Path) -> Option<String> {
    let mut cmd = Command::new(rustc);
    clean_cargo_env(&mut cmd);
    let out = cmd.arg("--version").output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Find a toolchain that can build the kernels: (a) Debian's `/usr/bin/rustc`
/// and `/usr/bin/cargo` with `/usr/lib/rustlib/src/rust/library`, else (b) a
/// rustup `nightly` whose sysroot has `lib/rustlib/src/rust/library`. The
/// error says what was found and what to install.
///
/// `XTASK_DEVICE_TOOLCHAIN=debian` or `=nightly` restricts the choice to one.
pub fn detect_device_toolchain() -> Result<DeviceToolchain, String> {
    let mut notes = Vec::new();
    let only = std::env::var("XTASK_DEVICE_TOOLCHAIN").unwrap_or_default();
    let (try_debian, try_nightly) = match only.as_str() {
        "debian" => (true, false),
        "nightly" => (false, true),
        "" | "auto" => (true, true),
        other => {
            return Err(format!(
                "XTASK_DEVICE_TOOLCHAIN={other}: expected `debian`, `nightly` or `auto`"
            ))
        }
    };

    // (a) Debian.
    let rustc = Path::new(DEBIAN_RUSTC);
    let cargo = Path::new(DEBIAN_CARGO);
    let src = Path::new(DEBIAN_RUST_SRC);
    match (rustc.exists(), cargo.exists(), src.is_dir()) {
        _ if !try_debian => notes.push("Debian rustc: not tried (XTASK_DEVICE_TOOLCHAIN)".into()),
        (true, true, true) => {
            if let Some(version) = rustc_version(rustc) {
                return Ok(DeviceToolchain {
                    kind: DeviceToolchainKind::Debian,
                    cargo: vec![cargo.into()],
                    rustc: rustc.to_path_buf(),
                    sysroot: PathBuf::from("/usr"),
                    version,
                });
            }
            notes.push(format!(
                "{DEBIAN_RUSTC} exists but `rustc --version` failed"
            ));
        }
        (false, _, _) => notes.push(format!("{DEBIAN_RUSTC}: not found (package rustc-web)")),
        (true, false, _) => notes.push(format!(
            "{DEBIAN_RUSTC} found but {DEBIAN_CARGO} is missing (package cargo-web)"
        )),
        (true, true, false) => notes.push(format!(
            "{DEBIAN_RUSTC} found but {DEBIAN_RUST_SRC} is missing (package rust-web-src)"
        )),
    }

    // (b) rustup nightly with rust-src.
    let mut cmd = Command::new("rustup");
    clean_cargo_env(&mut cmd);
    let sysroot_out = if try_nightly {
        cmd.args(["run", "nightly", "rustc", "--print", "sysroot"])
            .output()
    } else {
        Err(io::Error::other("not tried (XTASK_DEVICE_TOOLCHAIN)"))
    };
    match sysroot_out {
        Err(e) => notes.push(format!("rustup nightly: {e}")),
        Ok(out) if !out.status.success() => notes.push(format!(
            "rustup nightly: not installed ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(out) => {
            let sysroot = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            let src = sysroot.join("lib/rustlib/src/rust/library");
            let rustc = sysroot.join("bin/rustc");
            if !src.is_dir() {
                notes.push(format!(
                    "rustup nightly at {}: no rust-src ({} missing)",
                    sysroot.display(),
                    src.display()
                ));
            } else if let Some(version) = rustc_version(&rustc) {
                return Ok(DeviceToolchain {
                    kind: DeviceToolchainKind::RustupNightly,
                    cargo: vec![
                        "rustup".into(),
                        "run".into(),
                        "nightly".into(),
                        "cargo".into(),
                    ],
                    rustc,
                    sysroot,
                    version,
                });
            } else {
                notes.push(format!(
                    "rustup nightly: {} --version failed",
                    rustc.display()
                ));
            }
        }
    }

    Err(format!(
        "no toolchain can build the kernels for {DEVICE_TARGET}: it needs a rustc together with \
         the standard library source (for -Zbuild-std=core).\n\
         Install one of:\n  \
           apt-get install -y rustc-web cargo-web rust-web-src   \
         (Debian 12 / Ubuntu: gives {DEBIAN_RUSTC} and {DEBIAN_RUST_SRC})\n  \
           rustup component add rust-src --toolchain nightly\n\
         Found:\n  - {}",
        notes.join("\n  - ")
    ))
}

// ---------------------------------------------------------------------------
// ptxas
// ---------------------------------------------------------------------------

/// Where `ptxas` was found.
#[derive(Debug, Clone)]
pub struct Ptxas {
    pub path: PathBuf,
    /// How it was found: "PTXAS", "PATH", "python site-packages", "CUDA".
    pub source: &'static str,
}

/// How to get ptxas without a CUDA toolkit.
pub const PTXAS_INSTALL_HINT: &str = "python3 -m pip install \"nvidia-cuda-nvcc==13.0.*\"   \
     (ptxas 13.0, the same as the GPU machine's CUDA 13.0; it lands in site-packages/nvidia/cu13/bin/)";

const PY_FIND_PTXAS: &str = r#"
import os, site, sys
dirs = []
try:
    import nvidia
    dirs += list(nvidia.__path__)
except Exception:
    pass
try:
    dirs += [os.path.join(d, "nvidia") for d in site.getsitepackages()]
except Exception:
    pass
try:
    dirs.append(os.path.join(site.getusersitepackages(), "nvidia"))
except Exception:
    pass
for d in dirs:
    for sub in ("cu13", "cuda_nvcc"):
        p = os.path.join(d, sub, "bin", "ptxas")
        if os.path.isfile(p) and os.access(p, os.X_OK):
            print(p)
            sys.exit(0)
sys.exit(1)
"#;

fn is_executable_file(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Find `ptxas`: `$PTXAS`, then `PATH`, then the pip wheel
/// `nvidia-cuda-nvcc` in python3's site-packages (`nvidia/cu13/bin/ptxas`,
/// or `nvidia/cuda_nvcc/bin/ptxas` for CUDA 12 wheels), then
/// `/usr/local/cuda/bin/ptxas`.
pub fn find_ptxas() -> Option<Ptxas> {
    if let Some(p) = std::env::var_os("PTXAS") {
        let p = PathBuf::from(p);
        if is_executable_file(&p) {
            return Some(Ptxas {
                path: p,
                source: "PTXAS",
            });
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("ptxas");
            if is_executable_file(&p) {
                return Some(Ptxas {
                    path: p,
                    source: "PATH",
                });
            }
        }
    }
    for python in ["python3", "python"] {
        if let Ok(out) = Command::new(python).args(["-c", PY_FIND_PTXAS]).output() {
            if out.status.success() {
                let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                if is_executable_file(&p) {
                    return Some(Ptxas {
                        path: p,
                        source: "python site-packages",
                    });
                }
            }
            break;
        }
    }
    let p = PathBuf::from("/usr/local/cuda/bin/ptxas");
    is_executable_file(&p).then_some(Ptxas {
        path: p,
        source: "CUDA",
    })
}

/// Resources of one function from a `ptxas -v` report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FunctionReport {
    pub name: String,
    /// A kernel (`.entry`), not a device function.
    pub entry: bool,
    pub registers: Option<u32>,
    pub barriers: Option<u32>,
    /// Static shared memory, bytes.
    pub smem: u64,
    /// Constant bank 0 (kernel parameters etc.), bytes.
    pub cmem0: u64,
    pub stack_frame: u64,
    pub spill_stores: u64,
    pub spill_loads: u64,
}

impl FunctionReport {
    /// Uses local memory: a stack frame or spills.
    pub fn uses_local_memory(&self) -> bool {
        self.stack_frame > 0 || self.spill_stores > 0 || self.spill_loads > 0
    }
}

fn leading_number(s: &str) -> Option<u64> {
    let digits: String = s
        .trim()
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

fn quoted(s: &str) -> Option<&str> {
    let start = s.find('\'')? + 1;
    let end = start + s[start..].find('\'')?;
    Some(&s[start..end])
}

/// Parse the report `ptxas -v` writes (to stderr), e.g.
///
/// ```text
/// ptxas info    : Compiling entry function 'probe' for 'sm_90'
/// ptxas info    : Function properties for probe
///     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
/// ptxas info    : Used 8 registers, used 0 barriers, 4096 bytes smem, 360 bytes cmem[0]
/// ```
///
/// Returns the functions in order of first appearance; device functions that
/// were not inlined appear with `entry == false` (only "Function properties").
pub fn parse_ptxas_report(text: &str) -> Vec<FunctionReport> {
    let mut funcs: Vec<FunctionReport> = Vec::new();
    fn index_of(funcs: &mut Vec<FunctionReport>, name: &str) -> usize {
        if let Some(i) = funcs.iter().position(|f| f.name == name) {
            return i;
        }
        funcs.push(FunctionReport {
            name: name.to_string(),
            ..Default::default()
        });
        funcs.len() - 1
    }
    let mut current_entry: Option<usize> = None;
    let mut current_props: Option<usize> = None;
    for line in text.lines() {
        let body = match line.split_once(": ") {
            Some((head, rest)) if head.trim_start().starts_with("ptxas") => rest.trim(),
            _ => line.trim(),
        };
        if let Some(rest) = body.strip_prefix("Compiling entry function") {
            if let Some(name) = quoted(rest) {
                let i = index_of(&mut funcs, name);
                funcs[i].entry = true;
                current_entry = Some(i);
                current_props = None;
            }
        } else if let Some(rest) = body.strip_prefix("Function properties for") {
            let name = rest.trim().trim_matches('\'');
            if !name.is_empty() {
                current_props = Some(index_of(&mut funcs, name));
            }
        } else if body.contains("bytes stack frame") {
            if let Some(i) = current_props {
                for part in body.split(',') {
                    let part = part.trim();
                    let n = leading_number(part).unwrap_or(0);
                    if part.ends_with("stack frame") {
                        funcs[i].stack_frame = n;
                    } else if part.ends_with("spill stores") {
                        funcs[i].spill_stores = n;
                    } else if part.ends_with("spill loads") {
                        funcs[i].spill_loads = n;
                    }
                }
            }
        } else if body.starts_with("Used ") && body.contains("registers") {
            let target = current_entry.or(current_props);
            if let Some(i) = target {
                for part in body.split(',') {
                    let part = part.trim();
                    let lower = part.to_ascii_lowercase();
                    let rest = lower.strip_prefix("used ").unwrap_or(&lower);
                    let n = leading_number(rest);
                    if rest.ends_with("registers") {
                        funcs[i].registers = n.map(|n| n as u32);
                    } else if rest.ends_with("barriers") {
                        funcs[i].barriers = n.map(|n| n as u32);
                    } else if rest.ends_with("bytes smem") {
                        funcs[i].smem = n.unwrap_or(0);
                    } else if rest.ends_with("bytes cmem[0]") {
                        funcs[i].cmem0 = n.unwrap_or(0);
                    }
                }
            }
        }
    }
    funcs
}

/// A fixed-width table of the kernels (entries) in a report.
pub fn format_kernel_table(funcs: &[FunctionReport]) -> String {
    let kernels: Vec<&FunctionReport> = funcs.iter().filter(|f| f.entry).collect();
    let width = kernels
        .iter()
        .map(|f| f.name.len())
        .max()
        .unwrap_or(0)
        .max("kernel".len());
    let mut s = format!(
        "{:<width$}  {:>9}  {:>10}  {:>11}  {:>12}  {:>11}\n",
        "kernel", "registers", "smem bytes", "stack frame", "spill stores", "spill loads"
    );
    for f in kernels {
        let mark = if f.uses_local_memory() {
            "  <-- local memory"
        } else {
            ""
        };
        s.push_str(&format!(
            "{:<width$}  {:>9}  {:>10}  {:>11}  {:>12}  {:>11}{mark}\n",
            f.name,
            f.registers
                .map(|r| r.to_string())
                .unwrap_or_else(|| "?".into()),
            f.smem,
            f.stack_frame,
            f.spill_stores,
            f.spill_loads,
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function 'probe' for 'sm_90'
ptxas info    : Function properties for probe
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 8 registers, used 0 barriers
ptxas info    : Compile time = 5.564 ms
ptxas info    : Compiling entry function 'attn_fwd' for 'sm_90'
ptxas info    : Function properties for attn_fwd
    64 bytes stack frame, 12 bytes spill stores, 16 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 4096 bytes smem, 360 bytes cmem[0]
ptxas info    : Compile time = 9.1 ms
ptxas info    : Function properties for helper
    8 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
";

    #[test]
    fn parses_ptxas_report() {
        let f = parse_ptxas_report(REPORT);
        assert_eq!(f.len(), 3);
        assert_eq!(f[0].name, "probe");
        assert!(f[0].entry);
        assert_eq!(f[0].registers, Some(8));
        assert_eq!(f[0].barriers, Some(0));
        assert_eq!(f[0].smem, 0);
        assert!(!f[0].uses_local_memory());
        assert_eq!(
            f[1],
            FunctionReport {
                name: "attn_fwd".into(),
                entry: true,
                registers: Some(255),
                barriers: Some(1),
                smem: 4096,
                cmem0: 360,
                stack_frame: 64,
                spill_stores: 12,
                spill_loads: 16,
            }
        );
        assert_eq!(f[2].name, "helper");
        assert!(!f[2].entry);
        assert_eq!(f[2].stack_frame, 8);
        let table = format_kernel_table(&f);
        assert!(table.contains("attn_fwd"));
        assert!(!table.contains("helper"));
    }

    #[test]
    fn crate_name_from_manifest() {
        let toml =
            "[package]\nname = \"sparse-attn-kernels\"\n\n[lib]\ncrate-type = [\"cdylib\"]\n";
        assert_eq!(lib_crate_name(toml).as_deref(), Some("sparse_attn_kernels"));
        let toml = "[package]\nname = \"a-b\"\n[lib]\nname = \"kern\"\n";
        assert_eq!(lib_crate_name(toml).as_deref(), Some("kern"));
    }

    #[test]
    fn entries_from_ptx() {
        let ptx = "// x\n.visible .entry probe(\n\t.param .u64 p\n)\n.visible .entry k2()\n.func helper()\n";
        assert_eq!(ptx_entries(ptx), vec!["probe", "k2"]);
    }

    #[test]
    fn env_filter() {
        for v in [
            "CARGO",
            "CARGO_TARGET_DIR",
            "CARGO_BUILD_TARGET",
            "CARGO_ENCODED_RUSTFLAGS",
            "CARGO_PKG_NAME",
            "CARGO_MANIFEST_DIR",
            "RUSTFLAGS",
            "RUSTC_WRAPPER",
            "RUSTC",
            "RUSTUP_TOOLCHAIN",
        ] {
            assert!(is_cargo_build_var(v), "{v}");
        }
        for v in [
            "CARGO_HOME",
            "CARGO_NET_OFFLINE",
            "RUSTUP_HOME",
            "PATH",
            "HOME",
            "RUST_BACKTRACE",
        ] {
            assert!(!is_cargo_build_var(v), "{v}");
        }
    }

    #[test]
    fn launch_bounds_follow_each_parameter_list() {
        let ptx = ".visible .entry a(\n\t.param .u32 a_param_0\n)\n{\n\tret;\n}\n\
                   .visible .entry b_2(\n\n)\n{\n}\n";
        let out = add_launch_bounds(ptx, &[("a", 128, 2), ("b_2", 1024, 0)]).unwrap();
        assert!(
            out.contains("a_param_0\n)\n.maxntid 128, 1, 1\n.minnctapersm 2\n{"),
            "{out}"
        );
        assert!(out.contains("b_2(\n\n)\n.maxntid 1024, 1, 1\n{"), "{out}");
        assert!(add_launch_bounds(ptx, &[("a", 128, 0)])
            .unwrap_err()
            .contains("b_2"));
        assert!(
            add_launch_bounds(ptx, &[("a", 1, 0), ("b_2", 1, 0), ("c", 1, 0)])
                .unwrap_err()
                .contains("`c`")
        );
    }

    #[test]
    fn source_hash_layout() {
        let dir = std::env::temp_dir().join(format!("xtask-hash-test-{}", std::process::id()));
        let k = dir.join(KERNEL_CRATE_DIR);
        fs::create_dir_all(k.join("src/sub")).unwrap();
        fs::write(k.join("Cargo.toml"), b"[package]\n").unwrap();
        fs::write(k.join("src/lib.rs"), b"fn a() {}\n").unwrap();
        fs::write(k.join("src/sub/m.rs"), b"x").unwrap();
        fs::write(k.join("Cargo.lock"), b"ignored").unwrap();
        let files: Vec<String> = kernel_source_files(&dir)
            .unwrap()
            .into_iter()
            .map(|f| f.0)
            .collect();
        assert_eq!(
            files,
            vec![
                "kernels-gpu/Cargo.toml",
                "kernels-gpu/src/lib.rs",
                "kernels-gpu/src/sub/m.rs"
            ]
        );
        let mut h = Sha256::new();
        for (p, c) in [
            ("kernels-gpu/Cargo.toml", &b"[package]\n"[..]),
            ("kernels-gpu/src/lib.rs", &b"fn a() {}\n"[..]),
            ("kernels-gpu/src/sub/m.rs", &b"x"[..]),
        ] {
            h.update(p.as_bytes());
            h.update([0u8]);
            h.update((c.len() as u64).to_le_bytes());
            h.update(c);
        }
        assert_eq!(kernel_source_hash(&dir).unwrap(), to_hex(&h.finalize()));
        fs::remove_dir_all(&dir).unwrap();
    }
}

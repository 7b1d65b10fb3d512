//! `cargo xtask <command>`: build tasks for sparse-attn.
//!
//! - `build-ptx`: build `kernels-gpu` for nvptx64 into `host/ptx/sparse_attn.ptx`
//!   (+ source hash), then assemble it with `ptxas -v` and report per-kernel
//!   registers, shared memory, stack and spills.
//! - `gpu-bundle`: test/bench/demo binaries + `run.sh` for a GPU machine without Rust.
//! - `bench`, `demo`, `test`: shortcuts for the host cargo commands.
//! - `charts`: redraw the SVG charts of a bench results file (no GPU).

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use xtask::*;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build tasks for sparse-attn", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build kernels-gpu to PTX (host/ptx/sparse_attn.ptx + .sha256), then check it with ptxas.
    BuildPtx {
        /// GPU architecture (rustc target-cpu and ptxas -arch).
        #[arg(long, default_value = DEFAULT_ARCH)]
        arch: String,
        /// Skip the ptxas assembly and resource report.
        #[arg(long)]
        no_ptxas: bool,
        /// Write nothing; fail if the checked-in PTX or its source hash is not
        /// what the current kernel sources build to.
        #[arg(long)]
        check: bool,
        /// Fail if any kernel has a stack frame, register spills or a ptxas
        /// performance-loss note (`setmaxnreg` dropped, `wgmma` serialized).
        #[arg(long)]
        deny_spills: bool,
    },
    /// Collect test binaries, bench and demo, python peers and run.sh into a
    /// folder for a GPU machine that has the NVIDIA driver but no Rust.
    GpuBundle {
        /// Output folder (default: <repo>/bundle).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// cargo run --release -p sparse-attn-tests --bin bench -- ARGS
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Redraw the SVG charts of a bench results file, no GPU needed
    /// (cargo run --release -p sparse-attn-tests --bin charts).
    Charts {
        /// Bench records (default: bench/results/h200.json).
        #[arg(long, value_name = "FILE")]
        results: Option<PathBuf>,
        /// Output folder (default: bench/charts).
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Peer files for cases whose record has no peers (comma-separated;
        /// default: the `<results stem>-*peers.json` next to the results).
        #[arg(long, value_name = "A.json,B.json")]
        peers: Option<String>,
        /// bf16 matmul rate (TFLOP/s) for records that carry none.
        #[arg(long, value_name = "TFLOPS")]
        bf16_matmul_tflops: Option<f64>,
        /// FP8 matmul rate (TFLOP/s) for records that carry none.
        #[arg(long, value_name = "TFLOPS")]
        fp8_matmul_tflops: Option<f64>,
    },
    /// cargo run --release -p sparse-attn-tests --bin demo -- ARGS
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// cargo test --release --workspace ARGS (e.g. `cargo xtask test -- -p sparse-attn -- --nocapture`)
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Assemble a PTX file with `ptxas -v` and print the per-kernel report.
    Ptxas {
        /// The PTX file (default: host/ptx/sparse_attn.ptx).
        ptx: Option<PathBuf>,
        #[arg(long, default_value = DEFAULT_ARCH)]
        arch: String,
        /// Fail if any kernel has a stack frame, register spills or a ptxas
        /// performance-loss note (`setmaxnreg` dropped, `wgmma` serialized).
        #[arg(long)]
        deny_spills: bool,
    },
    /// Combine the record files of `bench --out` from one or more device
    /// calls into one results file (`bench/results/<gpu>-<date>.json`):
    /// `{note, records: [.. with build, call, command], peers: {"call<N>:<file>": ..}}`.
    Records {
        /// The results file to write.
        #[arg(long)]
        out: PathBuf,
        /// What the file holds (GPU, date, scripts).
        #[arg(long)]
        note: String,
        /// A record file and what produced it: FILE,BUILD,CALL,COMMAND
        /// (COMMAND may hold commas).
        #[arg(long = "run", value_name = "FILE,BUILD,CALL,COMMAND")]
        runs: Vec<String>,
        /// A peer file of a call: CALL:FILE.
        #[arg(long = "peers", value_name = "CALL:FILE")]
        peers: Vec<String>,
    },
    /// Print the path of ptxas (exit status 1 if none is found).
    #[command(hide = true)]
    FindPtxas,
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::BuildPtx {
            arch,
            no_ptxas,
            check,
            deny_spills,
        } => build_ptx(&arch, no_ptxas, check, deny_spills),
        Cmd::GpuBundle { out } => gpu_bundle(out),
        Cmd::Records {
            out,
            note,
            runs,
            peers,
        } => records(&out, &note, &runs, &peers),
        Cmd::Bench { args } => run_tests_bin("bench", &args),
        Cmd::Charts {
            results,
            out,
            peers,
            bf16_matmul_tflops,
            fp8_matmul_tflops,
        } => charts(
            results,
            out,
            peers,
            [
                ("--bf16-matmul-tflops", bf16_matmul_tflops),
                ("--fp8-matmul-tflops", fp8_matmul_tflops),
            ],
        ),
        Cmd::Demo { args } => run_tests_bin("demo", &args),
        Cmd::Test { args } => run_host_cargo(&["test", "--release", "--workspace"], &args),
        Cmd::Ptxas {
            ptx,
            arch,
            deny_spills,
        } => {
            let ptx = ptx.unwrap_or_else(|| repo_root().join(PTX_PATH));
            run_ptxas(&ptx, &arch, deny_spills)
        }
        Cmd::FindPtxas => match find_ptxas() {
            Some(p) => {
                println!("{}", p.path.display());
                Ok(())
            }
            None => std::process::exit(1),
        },
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// Runs binary `bin` of sparse-attn-tests (release) with `args`.
fn run_tests_bin(bin: &str, args: &[String]) -> Result<()> {
    run_host_cargo(
        &[
            "run",
            "--release",
            "-p",
            "sparse-attn-tests",
            "--bin",
            bin,
            "--",
        ],
        args,
    )
}

/// `cargo xtask charts`: the charts binary on the results (default
/// `bench/results/h200.json`) into `out` (default `bench/charts`), paths
/// given relative to the current folder; `peers` a comma-separated list
/// of files; `rates` the matmul rates given.
fn charts(
    results: Option<PathBuf>,
    out: Option<PathBuf>,
    peers: Option<String>,
    rates: [(&str, Option<f64>); 2],
) -> Result<()> {
    let root = repo_root();
    let cwd = std::env::current_dir().unwrap_or_else(|_| root.clone());
    let path = |p: Option<PathBuf>, default: &str| match p {
        Some(p) => cwd.join(p),
        None => root.join(default),
    };
    let mut args = vec![
        "--results".to_string(),
        path(results, "bench/results/h200.json")
            .display()
            .to_string(),
        "--out".to_string(),
        path(out, "bench/charts").display().to_string(),
    ];
    if let Some(p) = peers {
        let abs: Vec<String> = p
            .split(',')
            .map(|f| cwd.join(f).display().to_string())
            .collect();
        args.extend(["--peers".to_string(), abs.join(",")]);
    }
    for (flag, v) in rates {
        if let Some(v) = v {
            args.extend([flag.to_string(), v.to_string()]);
        }
    }
    run_tests_bin("charts", &args)
}

/// A command line for display.
fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        if a.contains(' ') || a.is_empty() {
            s.push_str(&format!(" '{a}'"));
        } else {
            s.push(' ');
            s.push_str(&a);
        }
    }
    s
}

/// Write a file only when its content changes (keeps mtimes, so crates that
/// `include_str!` it are not rebuilt for nothing). Returns whether it wrote.
/// `[package] name` of a manifest (as written, with dashes).
fn package_name_of(cargo_toml: &str) -> String {
    let mut in_package = false;
    for line in cargo_toml.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package {
            if let Some((k, v)) = line.split_once('=') {
                if k.trim() == "name" {
                    return v.trim().trim_matches('"').to_string();
                }
            }
        }
    }
    String::new()
}

fn write_if_changed(path: &Path, content: &[u8]) -> Result<bool> {
    if fs::read(path).map(|old| old == content).unwrap_or(false) {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(path, content).with_context(|| format!("writing {}", path.display()))?;
    Ok(true)
}

// ---------------------------------------------------------------------------
// build-ptx
// ---------------------------------------------------------------------------

fn build_ptx(arch: &str, no_ptxas: bool, check: bool, deny_spills: bool) -> Result<()> {
    let root = repo_root();
    let tc = detect_device_toolchain().map_err(anyhow::Error::msg)?;
    println!("device toolchain: {}", tc.describe());

    let hash_before = kernel_source_hash(&root).context("hashing the kernel sources")?;
    let asm = compile_kernels(&root, &tc, arch)?;
    let (ptx_built, ptx) = bound_ptx(&asm, arch)?;
    let hash_after = kernel_source_hash(&root).context("hashing the kernel sources")?;
    if hash_before != hash_after {
        bail!("the kernel sources changed during the build; run it again");
    }
    let entries = ptx_entries(&String::from_utf8_lossy(&ptx));
    println!(
        "built PTX: {} ({} bytes, sha256 {})",
        ptx_built.display(),
        ptx.len(),
        sha256_hex(&ptx)
    );
    println!("kernels ({}): {}", entries.len(), entries.join(", "));
    if entries.is_empty() {
        println!("WARNING: the PTX has no kernels (.entry)");
    }
    println!("kernel source hash: {hash_after}");

    if check {
        check_checked_in(&root, &ptx, &hash_after, &tc)?;
    } else {
        install_ptx(&root, &ptx, &hash_after, &tc)?;
    }
    if no_ptxas {
        println!("ptxas: skipped (--no-ptxas)");
        return Ok(());
    }
    run_ptxas(&ptx_built, arch, deny_spills)
}

/// Compiles the kernel crate for `arch` with the device toolchain; the
/// path of the assembly rustc wrote (the PTX, without launch bounds).
fn compile_kernels(root: &Path, tc: &DeviceToolchain, arch: &str) -> Result<PathBuf> {
    let kdir = root.join(KERNEL_CRATE_DIR);
    let manifest_path = kdir.join("Cargo.toml");
    let manifest = fs::read_to_string(&manifest_path)
        .with_context(|| format!("reading {}", manifest_path.display()))?;
    let crate_name = lib_crate_name(&manifest)
        .with_context(|| format!("no package name in {}", manifest_path.display()))?;
    let target_dir = kdir.join("target");
    let asm = target_dir
        .join(DEVICE_TARGET)
        .join("release/deps")
        .join(format!("{crate_name}.s"));

    let mut cmd = tc.cargo_command();
    cmd.current_dir(&kdir)
        .args([
            "rustc",
            "--release",
            "--target",
            DEVICE_TARGET,
            "-Zbuild-std=core",
        ])
        .arg("--manifest-path")
        .arg(&manifest_path)
        .arg("--target-dir")
        .arg(&target_dir)
        .args(["--", "--emit=asm", "-C"])
        .arg(format!("target-cpu={arch}"))
        .args(["-C", "linker=true"]);
    println!(
        "$ cd {} && RUSTC_BOOTSTRAP=1 RUSTC={} {}",
        kdir.display(),
        tc.rustc.display(),
        show(&cmd)
    );
    // Remove the previous output so that what is read below comes from this
    // build. (cargo reruns rustc every time here, as the cdylib it expects is
    // never linked; should it ever consider the crate fresh, its fingerprint
    // is removed and the build runs once more.)
    let _ = fs::remove_file(&asm);
    for attempt in 0..2 {
        let status = cmd
            .status()
            .with_context(|| format!("running {}", show(&cmd)))?;
        if !status.success() {
            bail!("the kernel build failed ({status}); see the compiler output above");
        }
        if asm.is_file() {
            return Ok(asm);
        }
        if attempt == 0 {
            println!("cargo wrote no PTX (build considered fresh): removing the kernel crate's fingerprint and building again");
            remove_fingerprints(
                &target_dir.join(DEVICE_TARGET).join("release/.fingerprint"),
                &package_name_of(&manifest),
            );
        }
    }
    bail!(
        "the kernel build succeeded but wrote no {}; remove {} and run again",
        asm.display(),
        target_dir.join(DEVICE_TARGET).display()
    )
}

/// Removes cargo's fingerprints of `package` under `fingerprints` (so that
/// the next build runs its compiler again).
fn remove_fingerprints(fingerprints: &Path, package: &str) {
    if let Ok(rd) = fs::read_dir(fingerprints) {
        for e in rd.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with(&format!("{package}-"))
            {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

/// rustc's PTX at `asm` with each kernel's launch bounds added (rustc
/// writes none: the abi's table), written beside it as `.bounded.ptx`
/// (what ptxas assembles); checks its `.target` is `arch`. Returns that
/// path and the PTX.
fn bound_ptx(asm: &Path, arch: &str) -> Result<(PathBuf, Vec<u8>)> {
    let raw = fs::read_to_string(asm).with_context(|| format!("reading {}", asm.display()))?;
    let ptx = xtask::add_launch_bounds(&raw, sparse_attn_abi::KERNEL_BOUNDS)
        .map_err(|e| anyhow::anyhow!("adding launch bounds: {e}"))?;
    let path = asm.with_extension("bounded.ptx");
    fs::write(&path, &ptx).with_context(|| format!("writing {}", path.display()))?;
    let target_line = ptx
        .lines()
        .find(|l| l.trim_start().starts_with(".target"))
        .map(|l| l.trim().to_string())
        .unwrap_or_default();
    if target_line
        .split_whitespace()
        .nth(1)
        .map(|t| t.trim_end_matches(','))
        != Some(arch)
    {
        bail!(
            "{} says `{target_line}`, not {arch}: a stale build output? remove the kernel crate's \
             target/{DEVICE_TARGET} and run again",
            path.display()
        );
    }
    Ok((path, ptx.into_bytes()))
}

/// Writes the PTX, its source hash and the device compiler's version into
/// the tree (each file only where it changed).
fn install_ptx(root: &Path, ptx: &[u8], hash: &str, tc: &DeviceToolchain) -> Result<()> {
    let wrote_ptx = write_if_changed(&root.join(PTX_PATH), ptx)?;
    let wrote_hash = write_if_changed(&root.join(PTX_HASH_PATH), format!("{hash}\n").as_bytes())?;
    write_if_changed(
        &root.join(PTX_TOOLCHAIN_PATH),
        format!("{}\n", tc.version).as_bytes(),
    )?;
    let said = |wrote| if wrote { "written" } else { "unchanged" };
    println!("{PTX_PATH}: {}", said(wrote_ptx));
    println!("{PTX_HASH_PATH}: {}", said(wrote_hash));
    Ok(())
}

/// The device compiler recorded next to the checked-in PTX.
fn recorded_toolchain(root: &Path) -> Option<String> {
    fs::read_to_string(root.join(PTX_TOOLCHAIN_PATH))
        .ok()
        .map(|s| s.trim().to_string())
}

fn check_checked_in(root: &Path, built: &[u8], hash: &str, tc: &DeviceToolchain) -> Result<()> {
    let mut problems = Vec::new();
    match fs::read(root.join(PTX_PATH)) {
        Err(e) => problems.push(format!("{PTX_PATH} cannot be read ({e})")),
        Ok(old)
            if old != built && recorded_toolchain(root).as_deref() != Some(tc.version.trim()) =>
        {
            // Another compiler than the one that built the checked-in PTX:
            // its output may differ byte for byte; the source hash below is
            // what proves the PTX current.
            println!(
                "WARNING: {PTX_PATH} differs from this build, but it was built by {:?} and this is {:?}; \
                 not an error (the source hash is checked)",
                recorded_toolchain(root).unwrap_or_default(),
                tc.version.trim()
            );
        }
        Ok(old) if old != built => {
            let mut msg = format!(
                "{PTX_PATH} is not what the current kernel sources build to:\n    \
                 checked in: {} bytes, sha256 {}\n    built:      {} bytes, sha256 {}",
                old.len(),
                sha256_hex(&old),
                built.len(),
                sha256_hex(built)
            );
            let old = String::from_utf8_lossy(&old);
            let new = String::from_utf8_lossy(built);
            let mut ol = old.lines();
            let mut nl = new.lines();
            for line_no in 1.. {
                match (ol.next(), nl.next()) {
                    (None, None) => break,
                    (a, b) if a == b => continue,
                    (a, b) => {
                        msg.push_str(&format!(
                            "\n    first difference at line {line_no}:\n      checked in: {}\n      built:      {}",
                            a.unwrap_or("<end of file>"),
                            b.unwrap_or("<end of file>")
                        ));
                        break;
                    }
                }
            }
            if tc.kind != DeviceToolchainKind::Debian {
                msg.push_str(&format!(
                    "\n    note: built with {}; the checked-in PTX comes from Debian's rustc-web (as in CI), \
                     and another rustc can produce different PTX",
                    tc.version
                ));
            }
            problems.push(msg);
        }
        Ok(_) => println!("check: {PTX_PATH} matches the build"),
    }
    match checked_in_source_hash(root) {
        Err(e) => problems.push(format!("{PTX_HASH_PATH} cannot be read ({e})")),
        Ok(old) if old != hash => problems.push(format!(
            "{PTX_HASH_PATH} is stale: it says {old}, the kernel sources hash to {hash}"
        )),
        Ok(_) => println!("check: {PTX_HASH_PATH} matches the kernel sources"),
    }
    if problems.is_empty() {
        return Ok(());
    }
    for p in &problems {
        eprintln!("ERROR: {p}");
    }
    bail!(
        "the checked-in PTX is out of date: run `cargo xtask build-ptx` and commit {}",
        Path::new(PTX_PATH).parent().unwrap().display()
    )
}

fn run_ptxas(ptx: &Path, arch: &str, deny_spills: bool) -> Result<()> {
    let Some(ptxas) = find_ptxas() else {
        let msg = format!(
            "ptxas not found (looked at $PTXAS, PATH, python3's site-packages nvidia/cu13/bin, \
             /usr/local/cuda/bin). Get it with:\n    {PTXAS_INSTALL_HINT}"
        );
        if ci_mode() {
            bail!("{msg}\n(CI is set: the ptxas check is required)");
        }
        println!("WARNING: {msg}\nskipping the ptxas check");
        return Ok(());
    };
    println!(
        "ptxas: {} ({}; {})",
        ptxas.path.display(),
        ptxas.source,
        ptxas_version(&ptxas.path)
    );
    let (report, cubin_len) = assemble(&ptxas.path, ptx, arch)?;
    let funcs = parse_ptxas_report(&report);
    let kernels = funcs.iter().filter(|f| f.entry).count();
    println!();
    print!("{}", format_kernel_table(&funcs));
    if let Some(n) = cubin_len {
        println!("({kernels} kernels, cubin {n} bytes for {arch})");
    }
    if kernels == 0 {
        println!("WARNING: ptxas reported no kernels");
    }
    let (spilled, losses) = (warn_local_memory(&funcs), warn_performance_losses(&report));
    if losses > 0 && deny_spills {
        bail!("{losses} ptxas performance loss note(s) (--deny-spills)");
    }
    if spilled > 0 && deny_spills {
        bail!("{spilled} function(s) with a stack frame or spills (--deny-spills)");
    }
    Ok(())
}

/// The release line of `ptxas --version`.
fn ptxas_version(ptxas: &Path) -> String {
    Command::new(ptxas)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            lines
                .iter()
                .find(|l| l.contains("release"))
                .or(lines.last())
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "version unknown".into())
}

/// Assembles `ptx` for `arch` with `ptxas -v` into a temporary cubin
/// (removed); its report (stderr, then stdout) and the cubin's size. Prints
/// ptxas' warning and error lines; fails where ptxas does.
fn assemble(ptxas: &Path, ptx: &Path, arch: &str) -> Result<(String, Option<u64>)> {
    let cubin =
        std::env::temp_dir().join(format!("sparse_attn-{arch}-{}.cubin", std::process::id()));
    let mut cmd = Command::new(ptxas);
    cmd.arg(format!("-arch={arch}"))
        .arg("-v")
        .arg(ptx)
        .arg("-o")
        .arg(&cubin);
    println!("$ {}", show(&cmd));
    let out = cmd
        .output()
        .with_context(|| format!("running {}", show(&cmd)))?;
    let cubin_len = fs::metadata(&cubin).map(|m| m.len()).ok();
    let _ = fs::remove_file(&cubin);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        eprint!("{stdout}{stderr}");
        bail!(
            "ptxas rejected the PTX ({}); its output is above",
            out.status
        );
    }
    for line in stdout.lines().chain(stderr.lines()) {
        let l = line.to_ascii_lowercase();
        if l.contains("warning") || l.contains("error") {
            println!("ptxas: {}", line.trim());
        }
    }
    Ok((format!("{stderr}\n{stdout}"), cubin_len))
}

/// Warns of every function with a stack frame or spills; how many.
fn warn_local_memory(funcs: &[FunctionReport]) -> usize {
    let bad: Vec<&FunctionReport> = funcs.iter().filter(|f| f.uses_local_memory()).collect();
    for f in &bad {
        println!(
            "WARNING: {} `{}` uses local memory: {} bytes stack frame, {} bytes spill stores, {} bytes spill loads",
            if f.entry { "kernel" } else { "device function" },
            f.name,
            f.stack_frame,
            f.spill_stores,
            f.spill_loads
        );
    }
    bad.len()
}

/// Warns of ptxas' performance notes: `setmaxnreg` dropped (C7508),
/// `wgmma`s serialized (C7513, e.g. registers of an in-flight `wgmma`
/// rewritten): correct code, but the warp-specialized pipeline is gone.
/// How many.
fn warn_performance_losses(report: &str) -> usize {
    let losses: Vec<&str> = report
        .lines()
        .filter(|l| l.contains("Potential Performance Loss"))
        .collect();
    for l in &losses {
        println!(
            "WARNING: {}",
            l.trim().trim_start_matches("ptxas info    : ")
        );
    }
    losses.len()
}

// ---------------------------------------------------------------------------
// host cargo
// ---------------------------------------------------------------------------

fn host_cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    Command::new(cargo)
}

/// Run a host cargo command on the workspace (in the current directory, with
/// --manifest-path pointing at the workspace) and exit with its status.
fn run_host_cargo(leading: &[&str], args: &[String]) -> Result<()> {
    let root = repo_root();
    let mut cmd = host_cargo();
    // The subcommand first, then --manifest-path, then the rest.
    cmd.arg(leading[0])
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .args(&leading[1..])
        .args(args);
    eprintln!("$ {}", show(&cmd));
    let status = cmd
        .status()
        .with_context(|| format!("running {}", show(&cmd)))?;
    std::process::exit(status.code().unwrap_or(1));
}

struct Artifact {
    package: String,
    target: String,
    kinds: Vec<String>,
    test: bool,
    executable: PathBuf,
}

fn package_name(package_id: &str) -> String {
    // "path+file:///x/host#sparse-attn-host@0.1.0", "path+file:///x/xtask#0.1.0",
    // or the old "name 0.1.0 (path+file:///...)".
    if let Some((url, frag)) = package_id.rsplit_once('#') {
        if let Some((name, _)) = frag.split_once('@') {
            return name.to_string();
        }
        return url.rsplit('/').next().unwrap_or(url).to_string();
    }
    package_id
        .split_whitespace()
        .next()
        .unwrap_or(package_id)
        .to_string()
}

/// Run a host cargo command with --message-format=json and collect the
/// executables it reports.
fn cargo_executables(root: &Path, args: &[&str]) -> Result<Vec<Artifact>> {
    let mut cmd = host_cargo();
    cmd.current_dir(root)
        .arg(args[0])
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .args(&args[1..])
        .arg("--message-format=json")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    println!("$ {}", show(&cmd));
    let out = cmd
        .output()
        .with_context(|| format!("running {}", show(&cmd)))?;
    let mut found = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        // With --message-format=json the compiler's diagnostics come as JSON
        // on stdout: show them as cargo would.
        if msg["reason"] == "compiler-message" {
            if let Some(rendered) = msg["message"]["rendered"].as_str() {
                eprint!("{rendered}");
            }
            continue;
        }
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        let kinds = msg["target"]["kind"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|k| k.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        found.push(Artifact {
            package: package_name(msg["package_id"].as_str().unwrap_or("")),
            target: msg["target"]["name"].as_str().unwrap_or("").to_string(),
            kinds,
            test: msg["profile"]["test"].as_bool().unwrap_or(false),
            executable: PathBuf::from(exe),
        });
    }
    if !out.status.success() {
        bail!("`{}` failed ({})", show(&cmd), out.status);
    }
    Ok(found)
}

fn copy_dir(src: &Path, dst: &Path) -> Result<u64> {
    let mut n = 0;
    fs::create_dir_all(dst)?;
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let name = entry.file_name();
        if name == OsStr::new("__pycache__") || name.to_string_lossy().ends_with(".pyc") {
            continue;
        }
        let path = entry.path();
        if fs::metadata(&path)?.is_dir() {
            n += copy_dir(&path, &dst.join(&name))?;
        } else {
            fs::copy(&path, dst.join(&name))
                .with_context(|| format!("copying {}", path.display()))?;
            n += 1;
        }
    }
    Ok(n)
}

fn dir_size(p: &Path) -> (u64, u64) {
    let mut bytes = 0;
    let mut files = 0;
    if let Ok(rd) = fs::read_dir(p) {
        for e in rd.flatten() {
            let Ok(m) = e.metadata() else { continue };
            if m.is_dir() {
                let (b, f) = dir_size(&e.path());
                bytes += b;
                files += f;
            } else {
                bytes += m.len();
                files += 1;
            }
        }
    }
    (bytes, files)
}

fn gpu_bundle(out: Option<PathBuf>) -> Result<()> {
    let root = repo_root();
    let out = match out {
        Some(p) if p.is_absolute() => p,
        Some(p) => std::env::current_dir()?.join(p),
        None => root.join("bundle"),
    };
    warn_if_ptx_stale(&root);

    let mut tests = cargo_executables(&root, &["test", "--release", "--workspace", "--no-run"])?;
    tests.sort_by(|a, b| (&a.package, &a.kinds, &a.target).cmp(&(&b.package, &b.kinds, &b.target)));
    let bins = cargo_executables(
        &root,
        &["build", "--release", "-p", "sparse-attn-tests", "--bins"],
    )?;

    // Start from a clean bundle (only the parts this command writes).
    fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    for sub in ["bin", "peers", "ptx"] {
        let p = out.join(sub);
        if p.exists() {
            fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    let _ = fs::remove_file(out.join("run.sh"));
    let bin_dir = out.join("bin");
    fs::create_dir_all(&bin_dir)?;

    let mut used: Vec<String> = vec!["run.sh".into()];
    bundle_tools(&bins, &bin_dir, &mut used)?;
    let test_names = bundle_tests(&tests, &bin_dir, &mut used)?;
    bundle_extras(&root, &out, &test_names)?;

    let (bytes, files) = dir_size(&out);
    println!(
        "bundle: {} ({:.1} MiB, {files} files; {} test binaries). On the GPU machine: {}/run.sh tests|bench|demo|all",
        out.display(),
        bytes as f64 / (1024.0 * 1024.0),
        test_names.len(),
        out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    );
    Ok(())
}

/// Says so where the checked-in PTX is not the kernel sources' (the bundle
/// would run old kernels).
fn warn_if_ptx_stale(root: &Path) {
    match (kernel_source_hash(root), checked_in_source_hash(root)) {
        (Ok(now), Ok(recorded)) if now == recorded => {
            println!("{PTX_PATH}: current (source hash {now})")
        }
        (Ok(now), Ok(recorded)) => println!(
            "WARNING: {PTX_PATH} is stale (recorded source hash {recorded}, sources hash to {now}); \
             the bundle would run old kernels: run `cargo xtask build-ptx` first"
        ),
        (Err(e), _) | (_, Err(e)) => println!("WARNING: cannot check {PTX_HASH_PATH}: {e}"),
    }
}

/// Copies the tool binaries of sparse-attn-tests (`bench`, `demo`, ...)
/// into `bin_dir`, their names added to `used`.
fn bundle_tools(bins: &[Artifact], bin_dir: &Path, used: &mut Vec<String>) -> Result<()> {
    let mut tool_names = Vec::new();
    for a in bins
        .iter()
        .filter(|a| !a.test && a.kinds.iter().any(|k| k == "bin"))
    {
        fs::copy(&a.executable, bin_dir.join(&a.target))
            .with_context(|| format!("copying {}", a.executable.display()))?;
        println!("bin/{:<28} <- {} (bin)", a.target, a.executable.display());
        used.push(a.target.clone());
        tool_names.push(a.target.clone());
    }
    for want in ["bench", "demo"] {
        if !tool_names.iter().any(|n| n == want) {
            println!("WARNING: sparse-attn-tests has no `{want}` binary; bin/{want} is missing");
        }
    }
    Ok(())
}

/// Copies every test binary of the workspace but xtask's (they check the
/// build tooling, not the GPU: they stay in CI) into `bin_dir`, each under
/// a name not yet in `used`; returns the names.
fn bundle_tests(tests: &[Artifact], bin_dir: &Path, used: &mut Vec<String>) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for a in tests.iter().filter(|a| a.test && a.package != "xtask") {
        let kind = a.kinds.first().map(String::as_str).unwrap_or("");
        let name = test_bundle_name(a, kind, used);
        fs::copy(&a.executable, bin_dir.join(&name))
            .with_context(|| format!("copying {}", a.executable.display()))?;
        println!(
            "bin/{name:<28} <- {} ({}: {})",
            a.executable.display(),
            a.package,
            match kind {
                "test" => format!("integration test `{}`", a.target),
                "bin" => format!("unit tests of bin `{}`", a.target),
                "example" | "bench" => format!("{kind} `{}`", a.target),
                _ => "lib unit tests".to_string(),
            }
        );
        used.push(name.clone());
        names.push(name);
    }
    if names.is_empty() {
        println!("WARNING: no test binaries");
    }
    Ok(names)
}

/// The bundle name of test binary `a` (of target kind `kind`): its
/// target's, made unique against `used` with its package's name, then a
/// number.
fn test_bundle_name(a: &Artifact, kind: &str, used: &[String]) -> String {
    let base = match kind {
        "test" => a.target.clone(),
        "bin" => format!("{}-bin-tests", a.target),
        "example" | "bench" => format!("{}-{kind}", a.target),
        _ => a.target.clone(), // lib unit tests: the crate name
    };
    let mut name = base.clone();
    if used.contains(&name) {
        name = format!("{}-{base}", a.package);
    }
    let mut i = 2;
    while used.contains(&name) {
        name = format!("{}-{base}-{i}", a.package);
        i += 1;
    }
    name
}

/// The peer scripts, the checked-in PTX and `run.sh` (which runs
/// `test_names`) into the bundle at `out`.
fn bundle_extras(root: &Path, out: &Path, test_names: &[String]) -> Result<()> {
    let peers = root.join("bench/peers");
    if peers.is_dir() {
        let n = copy_dir(&peers, &out.join("peers"))?;
        println!("peers/: {n} files from bench/peers");
    }
    let ptx = root.join(PTX_PATH);
    if ptx.is_file() {
        fs::create_dir_all(out.join("ptx"))?;
        fs::copy(&ptx, out.join("ptx").join(ptx.file_name().unwrap()))?;
        println!("ptx/{}", ptx.file_name().unwrap().to_string_lossy());
    }
    let run_sh = out.join("run.sh");
    fs::write(&run_sh, run_script(test_names))?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&run_sh, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn run_script(tests: &[String]) -> String {
    let list: Vec<String> = tests.iter().map(|t| format!("  '{t}'")).collect();
    RUN_SH.replace("@TESTS@", &list.join("\n"))
}

const RUN_SH: &str = r#"#!/usr/bin/env bash
# Generated by `cargo xtask gpu-bundle`. Runs the sparse-attn test, bench and
# demo binaries on a machine with the NVIDIA driver; needs no Rust or cargo.
#
#   ./run.sh tests [ARGS...]   every test binary (ARGS go to each, e.g. --nocapture),
#                              then a summary "N passed, M failed" of binaries
#   ./run.sh bench [ARGS...]   bin/bench
#   ./run.sh demo [ARGS...]    bin/demo
#   ./run.sh all [ARGS...]     tests, then bench (ARGS go to bench)
#   ./run.sh list              the binaries in this bundle
set -uo pipefail
SELF="$(readlink -f "${BASH_SOURCE[0]}")"
cd "$(dirname "$SELF")" || exit 1

TESTS=(
@TESTS@
)

usage() {
  sed -n '2,10p' "$SELF" | sed 's/^# \{0,1\}//'
}

run_tests() {
  local passed=0 failed=0 t rc
  local failed_names=()
  for t in "${TESTS[@]}"; do
    echo "=== [$(date +%H:%M:%S)] bin/$t"
    "./bin/$t" "$@"
    rc=$?
    if [ "$rc" -eq 0 ]; then
      passed=$((passed + 1))
      echo "=== bin/$t: ok"
    else
      failed=$((failed + 1))
      failed_names+=("$t")
      echo "=== bin/$t: FAILED (exit status $rc)"
    fi
  done
  echo
  if [ "$failed" -gt 0 ]; then
    echo "failed: ${failed_names[*]}"
  fi
  echo "$passed passed, $failed failed"
  [ "$failed" -eq 0 ]
}

run_bin() {
  local name="$1"
  shift
  if [ ! -x "./bin/$name" ]; then
    echo "bin/$name is not in this bundle" >&2
    return 127
  fi
  "./bin/$name" "$@"
}

cmd="${1:-}"
if [ $# -gt 0 ]; then shift; fi
case "$cmd" in
  tests) run_tests "$@" ;;
  bench) run_bin bench "$@" ;;
  demo) run_bin demo "$@" ;;
  all)
    run_tests
    t=$?
    echo "=== [$(date +%H:%M:%S)] bin/bench $*"
    run_bin bench "$@"
    b=$?
    echo
    echo "tests: $([ "$t" -eq 0 ] && echo ok || echo FAILED), bench: exit status $b"
    [ "$t" -eq 0 ] && [ "$b" -eq 0 ]
    ;;
  list) ls -l bin ;;
  -h | --help | help) usage ;;
  *)
    usage >&2
    exit 2
    ;;
esac
"#;

/// `cargo xtask records`: every record of each `--run` file tagged with its
/// build, call and command, and each call's peer files, in one JSON file.
fn records(out: &Path, note: &str, runs: &[String], peers: &[String]) -> Result<()> {
    let read = |path: &str| -> Result<serde_json::Value> {
        let text = fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {path}"))
    };
    let mut all = Vec::new();
    for run in runs {
        let [file, build, call, command] = run.splitn(4, ',').collect::<Vec<_>>()[..] else {
            bail!("--run {run:?}: expected FILE,BUILD,CALL,COMMAND");
        };
        let call: u32 = call
            .parse()
            .with_context(|| format!("--run {run:?}: CALL {call:?} is not a number"))?;
        let serde_json::Value::Array(recs) = read(file)? else {
            bail!("{file}: expected an array of records");
        };
        for mut r in recs {
            let obj = r
                .as_object_mut()
                .with_context(|| format!("{file}: a record is not an object"))?;
            obj.insert("build".into(), build.into());
            obj.insert("call".into(), call.into());
            obj.insert("command".into(), command.into());
            all.push(r);
        }
    }
    let mut peer_map = serde_json::Map::new();
    for p in peers {
        let (call, file) = p
            .split_once(':')
            .with_context(|| format!("--peers {p:?}: expected CALL:FILE"))?;
        let name = Path::new(file)
            .file_name()
            .map_or(file.into(), |n| n.to_string_lossy());
        peer_map.insert(format!("call{call}:{name}"), read(file)?);
    }
    let (n, np) = (all.len(), peer_map.len());
    let doc = serde_json::json!({ "note": note, "records": all, "peers": peer_map });
    fs::write(out, serde_json::to_string_pretty(&doc)? + "\n")
        .with_context(|| format!("writing {}", out.display()))?;
    println!("{}: {n} records, {np} peer files", out.display());
    Ok(())
}

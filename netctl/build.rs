//! Builds the eBPF programs (`../netctl-ebpf`) with aya-build so the `netctl`
//! crate can embed the object:
//!
//! ```ignore
//! aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/netctl-ebpf"))
//! ```
//!
//! aya-build runs `rustup run $NETCTL_EBPF_TOOLCHAIN cargo build --release
//! --target bpfel-unknown-none -Z build-std=core` (toolchain `nightly` unless
//! the variable says otherwise), which links with `bpf-linker` from `PATH`.
//! `netctl-ebpf` is excluded from the workspace, so cargo is run from its own
//! directory, where it is a workspace of its own.
//!
//! `AYA_BUILD_SKIP=1` skips the eBPF build (for quick checks on machines
//! without the toolchain); netctl then embeds an empty object and
//! `CounterProgram::load` fails with a message saying so.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};

const EBPF_PACKAGE: &str = "netctl-ebpf";
const TOOLCHAIN_VAR: &str = "NETCTL_EBPF_TOOLCHAIN";
const SKIP_VAR: &str = "AYA_BUILD_SKIP";
const SETUP_HINT: &str = "run `cargo xtask setup`";

fn main() -> anyhow::Result<()> {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir
        .parent()
        .ok_or_else(|| anyhow!("{} has no parent", manifest_dir.display()))?;
    let ebpf_dir = root.join(EBPF_PACKAGE);
    let common_dir = root.join("netctl-common");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR")?);
    let object = out_dir.join(EBPF_PACKAGE);

    // What the object is built from. aya-build adds `rerun-if-changed` for the
    // directory it is given; giving it `src` rather than the crate root keeps
    // `netctl-ebpf/target` (from running cargo there by hand) out of the set.
    for input in [
        ebpf_dir.join("Cargo.toml"),
        ebpf_dir.join("Cargo.lock"),
        ebpf_dir.join("build.rs"),
        common_dir.join("Cargo.toml"),
        common_dir.join("src"),
    ] {
        println!("cargo:rerun-if-changed={}", input.display());
    }
    println!("cargo:rerun-if-env-changed={TOOLCHAIN_VAR}");
    let toolchain = env::var(TOOLCHAIN_VAR).unwrap_or_else(|_| "nightly".to_owned());

    println!("cargo:rerun-if-env-changed={SKIP_VAR}");
    if skipped() {
        println!("cargo:warning={SKIP_VAR} is set: netctl is built without its eBPF programs");
    } else {
        let linker = preflight(&toolchain)?;
        println!("cargo:rerun-if-changed={}", linker.display());

        let src = ebpf_dir.join("src");
        let src = src
            .to_str()
            .ok_or_else(|| anyhow!("non-UTF-8 path {}", src.display()))?;
        // aya-build runs `cargo build --package netctl-ebpf` in our working
        // directory; from netctl/ that is the root workspace, which excludes
        // the package.
        env::set_current_dir(&ebpf_dir).with_context(|| format!("cd {}", ebpf_dir.display()))?;
        // aya-build turns every stderr line of the inner cargo into a
        // `cargo:warning`, which cargo replays on each later build; quiet
        // drops the "Compiling ..." lines. Diagnostics still arrive as JSON on
        // stdout, and cargo's own errors are still printed.
        // SAFETY: a build script is single-threaded until aya-build spawns
        // its reader thread, so nothing reads the environment concurrently.
        unsafe { env::set_var("CARGO_TERM_QUIET", "true") };
        aya_build::build_ebpf(
            [aya_build::Package {
                name: EBPF_PACKAGE,
                root_dir: src,
                ..Default::default()
            }],
            aya_build::Toolchain::Custom(&toolchain),
        )
        .with_context(|| {
            format!(
                "building the eBPF programs ({EBPF_PACKAGE}) with toolchain {toolchain:?} failed; \
                 the compiler's messages are above. If the toolchain or \
                 bpf-linker is incomplete, {SETUP_HINT}"
            )
        })?;
    }

    // With AYA_BUILD_SKIP the object is not built; an empty placeholder keeps
    // `include_bytes_aligned!` compiling.
    if !object.exists() {
        fs::write(&object, []).with_context(|| format!("writing {}", object.display()))?;
    }
    Ok(())
}

/// Mirrors aya-build's own test of `AYA_BUILD_SKIP`.
fn skipped() -> bool {
    env::var(SKIP_VAR).is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

/// Checks what aya-build needs but reports obscurely when missing: rustup, the
/// toolchain with `rust-src` (for `-Z build-std=core`), and `bpf-linker`.
/// Returns the linker's path.
fn preflight(toolchain: &str) -> anyhow::Result<PathBuf> {
    let linker = find_in_path("bpf-linker").ok_or_else(|| {
        let cargo_bin = env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
            .map(|home| home.join("bin"));
        match cargo_bin.filter(|bin| bin.join("bpf-linker").is_file()) {
            Some(bin) => anyhow!(
                "bpf-linker is in {} but that directory is not on PATH; add it to PATH",
                bin.display()
            ),
            None => anyhow!("bpf-linker not found on PATH; {SETUP_HINT}"),
        }
    })?;

    let output = Command::new("rustup")
        .args(["run", toolchain, "rustc", "--print", "sysroot"])
        .env_remove("RUSTC")
        .output();
    let output = match output {
        Ok(o) => o,
        Err(e) => bail!("cannot run rustup ({e}); the eBPF build needs it; {SETUP_HINT}"),
    };
    if !output.status.success() {
        bail!(
            "toolchain {toolchain:?} is not usable ({}); {SETUP_HINT}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let sysroot = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    let core_src = sysroot.join("lib/rustlib/src/rust/library/core");
    if !core_src.is_dir() {
        bail!(
            "toolchain {toolchain:?} lacks the rust-src component needed for \
             `-Z build-std=core`; {SETUP_HINT}"
        );
    }
    Ok(linker)
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

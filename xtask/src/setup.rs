//! Idempotent bootstrap: checks each requirement and installs only what is
//! missing, saying what it does.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Result, bail};

use crate::sh::{output, step};

/// Debian packages: LLVM 22 for bpf-linker, and the tools the tests and
/// benchmarks use as independent witnesses and peers.
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "libxml2-dev",
    "iproute2",
    "iputils-ping",
    "iperf3",
    "ethtool",
    "iptables",
    "nftables",
    "tcpdump",
    "bpftool",
    "xdp-tools",
    "containernetworking-plugins",
    "python3",
    "conntrack",
];

const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPF_LINKER_VERSION: &str = "0.13";

pub fn run() -> Result<()> {
    if !nix_is_root() {
        bail!(
            "netctl manages network namespaces, links and eBPF programs and must run as root \
             (there is no sudo here: run cargo xtask as root)"
        );
    }
    debian_packages()?;
    nightly_rust_src()?;
    bpf_linker()?;
    Ok(())
}

fn nix_is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|s| s.trim() == "0")
}

fn installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.contains("install ok installed"))
}

fn debian_packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        eprintln!("==> Debian packages: all {} present", PACKAGES.len());
        return Ok(());
    }
    eprintln!("==> Debian packages missing: {}", missing.join(" "));
    let mut update = Command::new("apt-get");
    update
        .args(["update", "-q"])
        .env("DEBIAN_FRONTEND", "noninteractive");
    step("apt-get update", update)?;
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive");
    step("apt-get install", install)
}

fn nightly_rust_src() -> Result<()> {
    let Some(list) = output(Command::new("rustup").args(["toolchain", "list"])) else {
        bail!("rustup is not available; the eBPF build needs rustup's nightly toolchain");
    };
    if !list.lines().any(|l| l.starts_with("nightly")) {
        bail!(
            "no nightly toolchain is installed; the eBPF crate builds with nightly \
             (-Z build-std). Install one with `rustup toolchain install nightly`"
        );
    }
    let comps = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if comps.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("==> nightly rust-src: present");
        return Ok(());
    }
    let mut c = Command::new("rustup");
    c.args(["component", "add", "rust-src", "--toolchain", "nightly"]);
    step("rustup component add rust-src --toolchain nightly", c)
}

fn cargo_bin() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or("/root".into())).join(".cargo")
        });
    home.join("bin")
}

fn bpf_linker() -> Result<()> {
    let bin = cargo_bin().join("bpf-linker");
    if let Some(v) = output(Command::new(&bin).arg("--version"))
        && v.contains(&format!("bpf-linker {BPF_LINKER_VERSION}"))
    {
        eprintln!("==> {}: present", v.trim());
        return Ok(());
    }
    // bpf-linker links LLVM dynamically and must match rustc's LLVM major
    // (22). Its build script looks for LLVM through LLVM_PREFIX (llvm-sys
    // reads LLVM_SYS_221_PREFIX); without them it finds /usr and fails to
    // link -lLLVM.
    eprintln!(
        "==> installing bpf-linker {BPF_LINKER_VERSION} against {LLVM_PREFIX} (about five minutes)"
    );
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.args([
        "install",
        "bpf-linker",
        "--locked",
        "--version",
        &format!("^{BPF_LINKER_VERSION}"),
        "--no-default-features",
        "--features",
        "llvm-22",
    ])
    .env("LLVM_PREFIX", LLVM_PREFIX)
    .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX);
    step("cargo install bpf-linker", c)
}

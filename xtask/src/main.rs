//! `cargo xtask` — bootstrap, build, demo, tests and benchmarks.

mod bench;
mod demo;
mod fidelity;
mod setup;
mod sh;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: nightly rust-src, bpf-linker, Debian tools.
    Setup,
    /// Build the eBPF object (through netctl's build script) and netctl.
    BuildEbpf,
    /// Build everything, apply the demo topology, show it working, tear it down.
    Run,
    /// Set up, then run the unit and integration tests.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmarks.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// The differential fidelity harness: random rulesets and packets
    /// through the kernel's iptables and netctl, compared.
    Fidelity(fidelity::FidelityArgs),
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Setup => setup::run(),
        Cmd::BuildEbpf => setup::run().and_then(|_| build(true)),
        Cmd::Run => setup::run()
            .and_then(|_| build(true))
            .and_then(|_| demo::run()),
        // The integration tests drive the netctl binary as users do.
        Cmd::Test { args } => setup::run()
            .and_then(|_| build(true))
            .and_then(|_| test(&args)),
        Cmd::Bench(b) => setup::run()
            .and_then(|_| build(true))
            .and_then(|_| bench::run(b)),
        Cmd::Fidelity(f) => setup::run()
            .and_then(|_| build(true))
            .and_then(|_| fidelity::run(&f)),
    };
    if let Err(e) = r {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn build(release: bool) -> Result<()> {
    let mut args = vec!["build", "-p", "netctl", "--bins"];
    if release {
        args.push("--release");
    }
    sh::step("building netctl and its eBPF object", sh::cargo(&args))
}

fn test(extra: &[String]) -> Result<()> {
    // Integration tests create namespaces and veths in parallel; two test
    // threads match the machines' two cores.
    let mut args: Vec<String> = ["test", "--workspace", "--release", "--no-fail-fast"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(extra.iter().cloned());
    let mut cmd = sh::cargo_owned(&args);
    cmd.env(
        "RUST_TEST_THREADS",
        std::env::var("RUST_TEST_THREADS").unwrap_or("2".into()),
    );
    sh::step("running unit and integration tests", cmd)
}

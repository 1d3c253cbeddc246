//! `cargo xtask fidelity`: the differential fidelity harness with more
//! cases than CI runs. It builds netctl (release, with its eBPF object) as
//! `xtask test` does, then runs the harness's test binary with the seed and
//! case count in `FIDELITY_*` variables; each mismatch is printed as a
//! minimal ruleset (iptables-save text) and the frames that show it.
//! `--nat` runs the NAT cases (the nat table's translations, replies made
//! from what arrived) instead of the plain ones.

use anyhow::Result;
use clap::Args;

use crate::sh;

#[derive(Args, Debug)]
pub struct FidelityArgs {
    /// How many random cases (a ruleset and a few flows each).
    #[arg(long, default_value_t = 500)]
    pub cases: u32,
    /// The run's seed; a case is reproduced by the same seed and case count.
    #[arg(long, default_value_t = 20_260_526)]
    pub seed: u64,
    /// The first case's number: `--first K --cases 1` reruns case K.
    #[arg(long, default_value_t = 0)]
    pub first: u32,
    /// What is compared: `full` (every hook, the host's own packets and
    /// REJECT's answers included) or `inbound` (PREROUTING, INPUT, FORWARD
    /// and what arrives where).
    #[arg(long, default_value = "full", value_parser = ["inbound", "full"])]
    pub scope: String,
    /// Most flows per case.
    #[arg(long, default_value_t = 4)]
    pub flows: usize,
    /// Shrink and print at most this many mismatches (the rest are counted).
    #[arg(long, default_value_t = 10)]
    pub shrink: usize,
    /// Compare the kernel with the reference interpreter only (no netctl).
    #[arg(long)]
    pub kernel_only: bool,
    /// Skip the kernel-versus-reference-interpreter check.
    #[arg(long)]
    pub no_reference: bool,
    /// Print every case's verdict.
    #[arg(long, short)]
    pub verbose: bool,
    /// NAT cases: SNAT, MASQUERADE, DNAT and REDIRECT in the nat table,
    /// translating to where the translated packets are seen; replies made
    /// from what arrived. Compared: every counter, nat chains included,
    /// and arrivals (source NAT's port choices renamed); the reference
    /// check is left out for cases with NAT targets.
    #[arg(long)]
    pub nat: bool,
    /// With `--nat`: address ranges, and port ranges for DNAT and REDIRECT.
    /// Off by default: a range's addresses that nothing answers ARP for
    /// show a difference of their own (docs/nat.md, "What the
    /// differential harness still finds").
    #[arg(long, requires = "nat")]
    pub nat_ranges: bool,
}

pub fn run(a: &FidelityArgs) -> Result<()> {
    let mut cmd = sh::cargo(&[
        "test",
        "--release",
        "-p",
        "netctl-tests",
        "--test",
        "fidelity",
        "--",
        "--nocapture",
        "--test-threads",
        "1",
        "--exact",
        if a.nat {
            "kernel_and_netctl_agree_on_nat"
        } else {
            "kernel_and_netctl_agree_on_random_rulesets"
        },
    ]);
    let b = |v: bool| if v { "1" } else { "0" };
    cmd.env("FIDELITY_CASES", a.cases.to_string())
        .env("FIDELITY_SEED", a.seed.to_string())
        .env("FIDELITY_FIRST", a.first.to_string())
        .env("FIDELITY_SCOPE", &a.scope)
        .env("FIDELITY_FLOWS", a.flows.to_string())
        .env("FIDELITY_SHRINK", a.shrink.to_string())
        .env("FIDELITY_NETCTL", b(!a.kernel_only))
        .env("FIDELITY_REFERENCE", b(!a.no_reference))
        .env("FIDELITY_VERBOSE", b(a.verbose))
        .env("FIDELITY_NAT", b(a.nat))
        .env("FIDELITY_NAT_RANGES", b(a.nat_ranges))
        .env("RUST_BACKTRACE", "0");
    sh::step(
        &format!(
            "fidelity: {} cases from {}, seed {}, {} scope{}{}",
            a.cases,
            a.first,
            a.seed,
            a.scope,
            match (a.nat, a.nat_ranges) {
                (true, true) => ", NAT cases with ranges",
                (true, false) => ", NAT cases",
                _ => "",
            },
            if a.kernel_only {
                " (kernel and reference only)"
            } else {
                ""
            }
        ),
        cmd,
    )
}

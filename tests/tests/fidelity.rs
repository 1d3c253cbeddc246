//! The differential fidelity harness in CI: a fixed seed, a bounded number
//! of cases (the same ruleset and frames through the kernel's iptables and
//! through netctl's datapath; see `netctl_tests::fidelity`). Any mismatch
//! fails, printed as a minimal ruleset and its frames.
//!
//! `cargo xtask fidelity --cases N --seed S [--nat]` runs more; `FIDELITY_*`
//! variables (see `Config::from_env`) adjust these tests too.

use netctl_tests::fidelity::{self, Config, Report, Scope};
use netctl_tests::*;

/// The CI seed and case count: well under a minute on two cores. The
/// scope is `Full`: every hook, the host's own packets and REJECT's
/// answers included (`FIDELITY_SCOPE=inbound` leaves OUTPUT and
/// POSTROUTING out).
const SEED: u64 = 20_260_526;
const CASES: u32 = 250;

/// The NAT cases' seed and count: NAT targets in the nat table,
/// translating to where the translated packets are seen, replies made from
/// what arrived (`fidelity::nat`).
const NAT_SEED: u64 = 20_260_601;
const NAT_CASES: u32 = 60;

fn check(cfg: &Config) {
    let links = footprint("-").links;
    let report: Report = fidelity::run(cfg).unwrap_or_else(|e| panic!("fidelity harness: {e:#}"));
    println!("{report}");
    // Nothing left behind: namespaces, records, pins, root links.
    let after = footprint(&report.prefix);
    assert!(after.namespaces.is_empty(), "{after:?}");
    assert!(after.records.is_empty(), "{after:?}");
    assert!(
        !after.bpffs.iter().any(|b| b.starts_with("netctl/")),
        "{after:?}"
    );
    assert_eq!(after.links, links, "root namespace links changed");
    assert!(
        report.mismatches.is_empty() && report.more == 0,
        "{} mismatching cases (seed {}): see above",
        report.mismatches.len() as u32 + report.more,
        cfg.seed
    );
}

#[test]
fn kernel_and_netctl_agree_on_random_rulesets() {
    check(&Config::from_env(SEED, CASES, Scope::Full));
}

#[test]
fn kernel_and_netctl_agree_on_nat() {
    check(&Config::from_env_nat(
        NAT_SEED,
        NAT_CASES,
        Scope::Full,
        true,
    ));
}

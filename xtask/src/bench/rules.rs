//! `cargo xtask bench rules`: what a long FORWARD chain costs, in the
//! kernel's iptables and in netctl's eBPF datapath, and how long it takes to
//! replace a whole ruleset.
//!
//! Two setups, built once at the start in namespaces of their own (names
//! `br<pid>-…`), the same two-bridge layout in each: host namespace `<t>-h`
//! with bridges br-a 10.81.0.1/24 and br-b 10.82.0.1/24, the client
//! container `<t>-a` (10.81.0.2) on br-a and the server `<t>-b` (10.82.0.2)
//! on br-b, so the traffic is routed between the bridges and passes FORWARD
//! with `-i br-a -o br-b` (and back):
//!
//! * kernel — topology `<p>k`, `datapath = "kernel"`; its rules are loaded
//!   with `iptables-restore` (nft backend by default, `--iptables legacy`
//!   for x_tables) in `<p>k-h`, where the kernel routes between the bridges.
//!   br_netfilter is not involved (routed traffic needs no bridge hooks);
//! * netctl — topology `<p>e`, `datapath = "ebpf"`; its rules are loaded with
//!   `netctl rules restore`, and the programs on the ports evaluate them.
//!
//! Both get the same iptables-save text: FORWARD policy DROP, N distinct
//! rules that never match the benchmark's traffic (per-address blocks,
//! ports, protocols, interfaces, multiport, ICMP, near misses on the
//! benchmark's own addresses), then `-A FORWARD -j ACCEPT`, which is what
//! lets the traffic through. After each rule count's measurements the
//! counters are read back (`iptables-save -c`, `netctl rules save -c`): the
//! final accept must have counted at least the packets and bytes the
//! measurements moved, and the N rules and the policy nothing — proof that
//! every packet walked the whole list.
//!
//! Traffic: iperf3 TCP (1 stream) and 64-byte UDP packets/s received, as
//! `bench datapath` measures them. Each repetition loads every rule count
//! (the counts' order rotating from one repetition to the next) and measures
//! both metrics on both setups (alternating which goes first); tables show
//! medians, and the per-repetition (paired) ratios in the noise table.
//!
//! Replacement: for each size N, two different N-rule rulesets A and B
//! replace each other; netctl's time is the `netctl rules restore` command's
//! wall time and the "live" time it reports itself (from the first map write
//! to the switch), the kernel's the wall time of
//! `ip netns exec NS iptables-restore FILE` and of `iptables-restore` fed on
//! stdin by a child that entered the namespace with `setns`.
//!
//! The run uses a copy of target/release/netctl taken at its start, so a
//! rebuild in the tree during the run cannot mix two builds.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde::Serialize;
use serde_json::{Value, json};

use super::iperf::{self, UDP_LEN};
use super::ipt::{Ipt, SIDES, Side};
use super::ns::{open_ns, ping};
use super::{
    Cleanup, check_interrupted, failed, finite, kernel_release, median, netctl_bin, netctl_stats,
    print_table, results_path, root_links, run_netctl, show_ratio, two_cpus, yes_no,
};

#[derive(clap::Args)]
pub struct RulesArgs {
    /// Numbers of non-matching FORWARD rules before the final accept.
    #[arg(long, value_delimiter = ',', default_value = "0,10,100,1000,10000")]
    pub rules: Vec<usize>,
    /// Ruleset sizes whose replacement is timed.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,50000")]
    pub replace: Vec<usize>,
    /// Repetitions of the traffic measurements (every rule count, metric and
    /// setup once each).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Seconds per traffic measurement (whole seconds, as iperf3 -t).
    #[arg(long, default_value_t = 3)]
    pub seconds: u64,
    /// Timed replacements per size and tool.
    #[arg(long, default_value_t = 5)]
    pub replace_runs: usize,
    /// The kernel side's iptables backend.
    #[arg(long, default_value = "nft", value_parser = ["nft", "legacy"])]
    pub iptables: String,
    /// Let the scheduler place iperf3's client and server (default: pin
    /// them to two different CPUs).
    #[arg(long)]
    pub no_pin: bool,
    /// Leave out the near misses (rules naming the benchmark's own client
    /// and server with ports it does not use): every rule then has a source
    /// the traffic never has.
    #[arg(long)]
    pub no_near_miss: bool,
    /// Where to write every sample (default: bench-results/rules.json).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The netctl binary this run uses: a copy taken at the start, so that a
/// rebuild of target/release/netctl during the run (other work in the
/// tree) cannot mix two builds' map layouts into one measurement.
static NETCTL: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

fn netctl() -> PathBuf {
    NETCTL.get().cloned().unwrap_or_else(netctl_bin)
}

/// iperf3 ports: a fresh one per measurement. The rules' ports stay below.
const FIRST_PORT: u16 = 20000;
const LAST_PORT: u16 = 30000;
/// The rules' destination ports are in 1..=RULE_PORTS: never the iperf3
/// server's port (FIRST_PORT..) nor the client's (ephemeral, 32768..).
const RULE_PORTS: u32 = 19_999;
/// Most rules the generator makes distinct (sources from 198.18.0.0/15).
const MAX_RULES: usize = 131_072;

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 81, 0, 2);
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 82, 0, 2);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Metric {
    Tcp,
    Udp,
}

const METRICS: [Metric; 2] = [Metric::Tcp, Metric::Udp];

impl Metric {
    fn key(self) -> &'static str {
        match self {
            Metric::Tcp => "tcp_1_stream_bps",
            Metric::Udp => "udp_64b_rx_pps",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Metric::Tcp => "TCP 1 stream (Gbit/s)",
            Metric::Udp => "UDP 64 B rx (kpps)",
        }
    }
    fn short(self) -> &'static str {
        match self {
            Metric::Tcp => "TCP",
            Metric::Udp => "UDP pps",
        }
    }
    fn show(self, v: f64) -> String {
        if !v.is_finite() {
            return "-".into();
        }
        match self {
            Metric::Tcp => format!("{:.2}", v / 1e9),
            Metric::Udp => format!("{:.1}", v / 1e3),
        }
    }
    fn idx(self) -> usize {
        METRICS.iter().position(|m| *m == self).unwrap()
    }
}

/// One setup, built.
struct Env {
    side: Side,
    topology: String,
    host_ns: String,
    client_ns: String,
    host: File,
    client: File,
    server: File,
    pin: Option<(usize, usize)>,
}

impl Env {
    fn iperf(&self) -> iperf::Ends<'_> {
        iperf::Ends {
            client: &self.client,
            server: &self.server,
            server_addr: SERVER,
            pin: self.pin,
            dial: None,
        }
    }
}

#[derive(Serialize)]
struct SetupInfo {
    side: &'static str,
    topology: String,
    datapath: &'static str,
    host_netns: String,
    client_netns: String,
    server_netns: String,
    client_addr: String,
    server_addr: String,
    rules_loaded_with: String,
}

#[derive(Serialize)]
struct Sample {
    run: usize,
    rules: usize,
    /// 0: this setup was measured first for this run, rule count and metric.
    position: usize,
    side: &'static str,
    metric: &'static str,
    value: f64,
    error: Option<String>,
    /// What the final accept must at least have counted for it.
    min_packets: f64,
    min_bytes: f64,
    machine_busy: Option<f64>,
    machine_steal: Option<f64>,
    detail: Value,
}

/// FORWARD's counters, as `iptables-save -c` prints them.
#[derive(Serialize, Clone, Default)]
struct Forward {
    rules: usize,
    policy: String,
    policy_packets: u64,
    last_rule: String,
    last_packets: u64,
    last_bytes: u64,
    /// Summed over every rule but the last.
    others_packets: u64,
    others_bytes: u64,
}

/// The counters after one rule count's measurements on one setup.
#[derive(Serialize)]
struct Check {
    run: usize,
    rules: usize,
    side: &'static str,
    /// What the counters said right after loading (all zero expected).
    before: Forward,
    after: Forward,
    /// Lower bounds from the measurements: UDP packets received, and TCP
    /// plus UDP payload bytes received.
    min_packets: f64,
    min_bytes: f64,
    /// netctl only: `netctl stats` decisions, after minus before.
    datapath: Option<BTreeMap<String, i64>>,
    ok: bool,
    problems: Vec<String>,
}

#[derive(Serialize)]
struct ReplaceSample {
    n: usize,
    run: usize,
    /// `netctl`, `iptables_restore_file` (ip netns exec … FILE) or
    /// `iptables_restore_stdin` (setns, ruleset on stdin).
    tool: &'static str,
    /// Which ruleset was loaded (`a` or `b`); it replaced the other one.
    ruleset: &'static str,
    wall_ms: f64,
    /// netctl's own report: map elements, live and cleanup times.
    elements: Option<u64>,
    live_ms: Option<f64>,
    cleanup_ms: Option<f64>,
}

#[derive(Serialize)]
struct ReplaceMedians {
    n: usize,
    elements: Option<u64>,
    netctl_live_ms: f64,
    netctl_cleanup_ms: f64,
    netctl_command_ms: f64,
    iptables_restore_file_ms: f64,
    iptables_restore_stdin_ms: f64,
    /// iptables-restore (ip netns exec, FILE) over netctl's command, and
    /// over netctl's live time.
    iptables_over_netctl_command: f64,
    iptables_over_netctl_live: f64,
    /// Rules in FORWARD afterwards, read back from each (N + 1 expected).
    netctl_rules_after: usize,
    kernel_rules_after: usize,
    /// Why netctl could not load a ruleset of this size, if it could not.
    netctl_error: Option<String>,
}

#[derive(Serialize)]
struct Report {
    bench: &'static str,
    kernel: String,
    cpus: usize,
    iperf3: String,
    /// The netctl binary copied at the start and used throughout.
    netctl_binary: String,
    iptables: Value,
    runs: usize,
    seconds: u64,
    replace_runs: usize,
    rule_counts: Vec<usize>,
    replace_sizes: Vec<usize>,
    pinned_cpus: Option<(usize, usize)>,
    /// Whether the rulesets hold near misses (see `--no-near-miss`).
    near_miss_rules: bool,
    notes: Vec<String>,
    setups: Vec<SetupInfo>,
    /// The first lines of the 100-rule ruleset, to show what the rules are.
    ruleset_example: Vec<String>,
    samples: Vec<Sample>,
    checks: Vec<Check>,
    /// metric → rule count → side → median.
    medians: BTreeMap<&'static str, BTreeMap<usize, BTreeMap<&'static str, f64>>>,
    /// metric → rule count → {netctl_over_kernel, kernel_of_0, netctl_of_0}
    /// (ratios of medians) and the same with `_paired` (medians of the
    /// per-repetition ratios).
    ratios: BTreeMap<&'static str, BTreeMap<usize, BTreeMap<&'static str, f64>>>,
    replace_samples: Vec<ReplaceSample>,
    replace: Vec<ReplaceMedians>,
    targets: Value,
    elapsed_s: f64,
}

pub fn run(a: RulesArgs) -> Result<()> {
    let t_start = Instant::now();
    ensure!(a.runs >= 1, "--runs must be at least 1");
    ensure!(a.replace_runs >= 1, "--replace-runs must be at least 1");
    ensure!(a.seconds >= 1, "--seconds must be at least 1");
    ensure!(!a.rules.is_empty(), "--rules needs at least one count");
    let mut counts = a.rules.clone();
    counts.sort_unstable();
    counts.dedup();
    let mut sizes = a.replace.clone();
    sizes.sort_unstable();
    sizes.dedup();
    for &n in counts.iter().chain(&sizes) {
        ensure!(
            n <= MAX_RULES,
            "at most {MAX_RULES} rules (distinct sources)"
        );
    }
    ensure!(
        netctl_bin().is_file(),
        "{} is missing",
        netctl_bin().display()
    );
    let iperf3 = iperf::version()?;
    let ipt = Ipt::new(&a.iptables)?;
    let mix = !a.no_near_miss;

    let super::Run {
        prefix,
        links_before,
        mut guard,
        scratch,
    } = super::start_run("br", "rules")?;

    let pinned = scratch.join("netctl");
    fs::copy(netctl_bin(), &pinned)
        .with_context(|| format!("copy {} to {}", netctl_bin().display(), pinned.display()))?;
    let netctl_build = {
        let m = fs::metadata(netctl_bin())?;
        format!(
            "{} ({} bytes, modified {} s after the epoch)",
            netctl_bin().display(),
            m.len(),
            m.mtime()
        )
    };
    let _ = NETCTL.set(pinned);
    eprintln!("==> building the two setups ({prefix}…)");
    let mut envs = vec![
        setup(Side::Kernel, &format!("{prefix}k"), &scratch, &mut guard)?,
        setup(Side::Netctl, &format!("{prefix}e"), &scratch, &mut guard)?,
    ];
    let topologies: Vec<String> = envs.iter().map(|e| e.topology.clone()).collect();
    let pin = if a.no_pin { None } else { two_cpus() };
    for e in &mut envs {
        e.pin = pin;
    }
    match pin {
        Some((c, s)) => {
            eprintln!("    iperf3 client on CPU {c}, server on CPU {s} (--no-pin: unpinned)")
        }
        None => eprintln!("    client and server not pinned"),
    }
    let mut infos = Vec::new();
    for e in &envs {
        check_interrupted()?;
        infos.push(check_env(e, &ipt)?);
    }
    ensure!(
        root_links() == links_before,
        "the root namespace's links changed while building the setups"
    );

    // The traffic rulesets, written once.
    let mut files = BTreeMap::new();
    for &n in &counts {
        let f = scratch.join(format!("forward-{n}.rules"));
        fs::write(&f, ruleset(n, 0, mix)).with_context(|| format!("write {}", f.display()))?;
        files.insert(n, f);
    }
    let example: Vec<String> = ruleset(100, 0, mix)
        .lines()
        .take(16)
        .map(String::from)
        .collect();

    let total = a.runs * counts.len() * METRICS.len() * SIDES.len();
    eprintln!(
        "==> {total} measurements of {} s (~{} min), then {} replacement(s) per size and tool",
        a.seconds,
        (total as u64 * (a.seconds + 1)).div_ceil(60),
        a.replace_runs
    );
    let dur = Duration::from_secs(a.seconds);
    let mut port = FIRST_PORT;
    let mut samples: Vec<Sample> = Vec::new();
    let mut checks: Vec<Check> = Vec::new();
    for rep in 0..a.runs {
        for k in 0..counts.len() {
            let n = counts[(k + rep) % counts.len()];
            check_interrupted()?;
            let mut before = Vec::new();
            for e in &envs {
                load(e, &ipt, &files[&n])?;
                let f = forward(e, &ipt)?;
                ensure!(
                    f.rules == n + 1,
                    "{}: {} rules in FORWARD after loading {n} + the final accept",
                    e.side.key(),
                    f.rules
                );
                before.push((
                    f,
                    (e.side == Side::Netctl)
                        .then(|| stats(&e.topology))
                        .flatten(),
                ));
            }
            let first_sample = samples.len();
            for m in METRICS {
                for pos in 0..SIDES.len() {
                    check_interrupted()?;
                    let side = SIDES[(pos + rep + k + m.idx()) % SIDES.len()];
                    let env = &envs[side.idx()];
                    port = if port >= LAST_PORT {
                        FIRST_PORT
                    } else {
                        port + 1
                    };
                    let cpu0 = super::cpu_times();
                    let r = match m {
                        Metric::Tcp => iperf_tcp(env, dur, port),
                        Metric::Udp => iperf_udp(env, dur, port),
                    };
                    let cpu1 = super::cpu_times();
                    let load = cpu0.zip(cpu1).map(|(x, y)| y.share_since(&x));
                    let (value, detail, error, min_packets, min_bytes) = match r {
                        Ok(x) => (x.value, x.detail, None, x.min_packets, x.min_bytes),
                        Err(e) => {
                            eprintln!("  WARNING: {} {} rules {}: {e:#}", side.key(), n, m.label());
                            (f64::NAN, Value::Null, Some(format!("{e:#}")), 0.0, 0.0)
                        }
                    };
                    eprintln!(
                        "  run {}/{} {:>6} rules {:<22} {:<7} {:>10}",
                        rep + 1,
                        a.runs,
                        n,
                        m.label(),
                        side.key(),
                        m.show(value)
                    );
                    samples.push(Sample {
                        run: rep,
                        rules: n,
                        position: pos,
                        side: side.key(),
                        metric: m.key(),
                        value,
                        error,
                        min_packets,
                        min_bytes,
                        machine_busy: load.map(|l| l.0),
                        machine_steal: load.map(|l| l.1),
                        detail,
                    });
                }
            }
            for (e, (b, st0)) in envs.iter().zip(before) {
                let after = forward(e, &ipt)?;
                let st1 = (e.side == Side::Netctl)
                    .then(|| stats(&e.topology))
                    .flatten();
                let mine = samples[first_sample..]
                    .iter()
                    .filter(|s| s.side == e.side.key());
                let (mp, mb) =
                    mine.fold((0.0, 0.0), |(p, b), s| (p + s.min_packets, b + s.min_bytes));
                let c = check(rep, n, e.side, b, after, mp, mb, st0.zip(st1));
                if !c.ok {
                    eprintln!(
                        "  WARNING: counters of {} with {n} rules: {}",
                        e.side.key(),
                        c.problems.join("; ")
                    );
                }
                checks.push(c);
            }
        }
    }

    // Replacement times.
    let mut replace_samples = Vec::new();
    let mut replace = Vec::new();
    for &n in &sizes {
        check_interrupted()?;
        eprintln!(
            "==> replacing {n} rules ({} times per tool)",
            a.replace_runs
        );
        let fa = scratch.join(format!("replace-{n}-a.rules"));
        let fb = scratch.join(format!("replace-{n}-b.rules"));
        let (ta, tb) = (ruleset(n, 0, mix), ruleset(n, 1, mix));
        fs::write(&fa, &ta).with_context(|| format!("write {}", fa.display()))?;
        fs::write(&fb, &tb).with_context(|| format!("write {}", fb.display()))?;
        let (k, e) = (&envs[Side::Kernel.idx()], &envs[Side::Netctl.idx()]);
        // Start from A on both. A netctl failure is a result: recorded,
        // and the kernel side measured all the same.
        let mut netctl_error = netctl_restore(&e.topology, &fa)
            .err()
            .map(|x| format!("{x:#}"));
        ipt_stdin(k, &ipt, &ta)?;
        let mine = replace_samples.len();
        for r in 0..a.replace_runs {
            check_interrupted()?;
            let (nf, nname) = if r % 2 == 0 { (&fb, "b") } else { (&fa, "a") };
            let mut run_samples = Vec::new();
            let mut netctl_step = |out: &mut Vec<ReplaceSample>| {
                if netctl_error.is_some() {
                    return;
                }
                match netctl_restore(&e.topology, nf) {
                    Ok(x) => out.push(ReplaceSample {
                        n,
                        run: r,
                        tool: "netctl",
                        ruleset: nname,
                        wall_ms: x.wall_s * 1e3,
                        elements: Some(x.elements),
                        live_ms: Some(x.live_ms),
                        cleanup_ms: Some(x.cleanup_ms),
                    }),
                    Err(x) => netctl_error = Some(format!("{x:#}")),
                }
            };
            if r % 2 == 0 {
                netctl_step(&mut run_samples);
            }
            // The kernel: B replaces A through ip netns exec and a file,
            // then A replaces B on stdin.
            let w = ipt_file(k, &ipt, &fb)?;
            run_samples.push(ReplaceSample {
                n,
                run: r,
                tool: "iptables_restore_file",
                ruleset: "b",
                wall_ms: w * 1e3,
                elements: None,
                live_ms: None,
                cleanup_ms: None,
            });
            let w = ipt_stdin(k, &ipt, &ta)?;
            run_samples.push(ReplaceSample {
                n,
                run: r,
                tool: "iptables_restore_stdin",
                ruleset: "a",
                wall_ms: w * 1e3,
                elements: None,
                live_ms: None,
                cleanup_ms: None,
            });
            if r % 2 == 1 {
                netctl_step(&mut run_samples);
            }
            eprintln!(
                "  {n:>6} rules, run {}/{}: {}",
                r + 1,
                a.replace_runs,
                run_samples
                    .iter()
                    .map(|s| match s.live_ms {
                        Some(l) => format!("{} {:.1} ms (live {l:.1} ms)", s.tool, s.wall_ms),
                        None => format!("{} {:.1} ms", s.tool, s.wall_ms),
                    })
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            replace_samples.extend(run_samples);
        }
        if let Some(x) = &netctl_error {
            eprintln!("  WARNING: netctl could not replace {n} rules: {x}");
        }
        let netctl_after = forward(e, &ipt)?.rules;
        let kernel_after = forward(k, &ipt)?.rules;
        if (netctl_after != n + 1 && netctl_error.is_none()) || kernel_after != n + 1 {
            eprintln!(
                "  WARNING: after the replacements FORWARD has {netctl_after} rules in netctl, \
                 {kernel_after} in the kernel; expected {}",
                n + 1
            );
        }
        let s = &replace_samples[mine..];
        let med = |tool: &str, f: &dyn Fn(&ReplaceSample) -> Option<f64>| {
            median(
                &s.iter()
                    .filter(|x| x.tool == tool)
                    .filter_map(f)
                    .collect::<Vec<_>>(),
            )
        };
        let live = med("netctl", &|x| x.live_ms);
        let cmd = med("netctl", &|x| Some(x.wall_ms));
        let file = med("iptables_restore_file", &|x| Some(x.wall_ms));
        replace.push(ReplaceMedians {
            n,
            elements: s.iter().find_map(|x| x.elements),
            netctl_live_ms: live,
            netctl_cleanup_ms: med("netctl", &|x| x.cleanup_ms),
            netctl_command_ms: cmd,
            iptables_restore_file_ms: file,
            iptables_restore_stdin_ms: med("iptables_restore_stdin", &|x| Some(x.wall_ms)),
            iptables_over_netctl_command: file / cmd,
            iptables_over_netctl_live: file / live,
            netctl_rules_after: netctl_after,
            kernel_rules_after: kernel_after,
            netctl_error,
        });
    }

    drop(envs);
    guard.clean()?;
    drop(guard);
    super::ensure_no_leftovers(&topologies)?;

    // Medians and ratios.
    let value = |m: Metric, n: usize, s: Side, run: Option<usize>| -> Vec<f64> {
        samples
            .iter()
            .filter(|x| {
                x.metric == m.key()
                    && x.rules == n
                    && x.side == s.key()
                    && run.is_none_or(|r| x.run == r)
                    && x.value.is_finite()
            })
            .map(|x| x.value)
            .collect()
    };
    let med = |m: Metric, n: usize, s: Side| median(&value(m, n, s, None));
    let base = counts.contains(&0).then_some(0usize);
    // Median over repetitions of f(run).
    let paired = |f: &dyn Fn(usize) -> f64| {
        median(
            &(0..a.runs)
                .map(f)
                .filter(|v| v.is_finite())
                .collect::<Vec<_>>(),
        )
    };
    let one = |m: Metric, n: usize, s: Side, r: usize| {
        value(m, n, s, Some(r)).first().copied().unwrap_or(f64::NAN)
    };
    let mut medians = BTreeMap::new();
    let mut ratios = BTreeMap::new();
    for m in METRICS {
        let mut mm = BTreeMap::new();
        let mut rr = BTreeMap::new();
        for &n in &counts {
            let (k, e) = (med(m, n, Side::Kernel), med(m, n, Side::Netctl));
            mm.insert(n, BTreeMap::from([("kernel", k), ("netctl", e)]));
            let of0 = |s: Side| base.map_or(f64::NAN, |b| med(m, n, s) / med(m, b, s));
            let of0_paired =
                |s: Side| base.map_or(f64::NAN, |b| paired(&|r| one(m, n, s, r) / one(m, b, s, r)));
            rr.insert(
                n,
                BTreeMap::from([
                    ("netctl_over_kernel", e / k),
                    ("kernel_of_0", of0(Side::Kernel)),
                    ("netctl_of_0", of0(Side::Netctl)),
                    (
                        "netctl_over_kernel_paired",
                        paired(&|r| one(m, n, Side::Netctl, r) / one(m, n, Side::Kernel, r)),
                    ),
                    ("kernel_of_0_paired", of0_paired(Side::Kernel)),
                    ("netctl_of_0_paired", of0_paired(Side::Netctl)),
                ]),
            );
        }
        medians.insert(m.key(), mm);
        ratios.insert(m.key(), rr);
    }

    println!();
    println!(
        "FORWARD with N non-matching rules + a final accept, routed br-a -> br-b; medians of \
         {} run(s) x {} s; kernel = iptables ({}), netctl = eBPF datapath{}",
        a.runs,
        a.seconds,
        ipt.version,
        if mix { "" } else { "; no near misses" }
    );
    for m in METRICS {
        println!();
        println!("{}", m.label());
        let rows: Vec<Vec<String>> = counts
            .iter()
            .map(|&n| {
                let r = &ratios[m.key()][&n];
                vec![
                    n.to_string(),
                    m.show(medians[m.key()][&n]["kernel"]),
                    m.show(medians[m.key()][&n]["netctl"]),
                    show_ratio(r["netctl_over_kernel"]),
                    show_pct(r["kernel_of_0"]),
                    show_pct(r["netctl_of_0"]),
                ]
            })
            .collect();
        print_table(
            &[
                "rules",
                "kernel",
                "netctl",
                "netctl/kernel",
                "kernel vs 0 rules",
                "netctl vs 0 rules",
            ],
            &rows,
        );
    }
    println!();
    println!(
        "noise: spread over runs (max/min of the samples), and the medians of the per-run \
         (paired) ratios"
    );
    let mut rows = Vec::new();
    for m in METRICS {
        for &n in &counts {
            let spread = |s: Side| {
                let xs = value(m, n, s, None);
                let hi = xs.iter().copied().fold(f64::NAN, f64::max);
                let lo = xs.iter().copied().fold(f64::NAN, f64::min);
                show_ratio(hi / lo)
            };
            let r = &ratios[m.key()][&n];
            rows.push(vec![
                m.short().to_string(),
                n.to_string(),
                spread(Side::Kernel),
                spread(Side::Netctl),
                show_ratio(r["netctl_over_kernel_paired"]),
                show_pct(r["kernel_of_0_paired"]),
                show_pct(r["netctl_of_0_paired"]),
            ]);
        }
    }
    print_table(
        &[
            "metric",
            "rules",
            "kernel spread",
            "netctl spread",
            "netctl/kernel paired",
            "kernel vs 0 paired",
            "netctl vs 0 paired",
        ],
        &rows,
    );

    println!();
    println!(
        "Replacing N rules (FORWARD, ruleset A <-> B), medians of {} run(s); ms",
        a.replace_runs
    );
    let rows: Vec<Vec<String>> = replace
        .iter()
        .map(|r| {
            let nc = |x: f64| {
                if !x.is_finite() && r.netctl_error.is_some() {
                    "failed".to_string()
                } else {
                    show_ms(x)
                }
            };
            vec![
                r.n.to_string(),
                r.elements.map_or("-".into(), |e| e.to_string()),
                nc(r.netctl_live_ms),
                nc(r.netctl_cleanup_ms),
                nc(r.netctl_command_ms),
                show_ms(r.iptables_restore_file_ms),
                show_ms(r.iptables_restore_stdin_ms),
                show_ratio(r.iptables_over_netctl_command),
                show_ratio(r.iptables_over_netctl_live),
            ]
        })
        .collect();
    print_table(
        &[
            "rules",
            "map elements",
            "netctl live",
            "netctl cleanup",
            "netctl command",
            "iptables-restore FILE",
            "iptables-restore stdin",
            "ipt/netctl command",
            "ipt/netctl live",
        ],
        &rows,
    );
    println!(
        "(netctl live: first map write to the switch, as netctl reports it; cleanup: clearing \
         the old generation after the switch; command: the whole `netctl rules restore`; \
         iptables-restore FILE: `ip netns exec NS {} FILE`; stdin: the same without ip netns \
         exec, ruleset on stdin)",
        ipt.restore
    );
    for r in &replace {
        if let Some(x) = &r.netctl_error {
            println!("netctl failed with {} rules: {x}", r.n);
        }
    }

    // Targets.
    println!();
    let keep = |m: Metric| -> (Option<f64>, Option<f64>, Option<f64>) {
        let Some(r) = ratios[m.key()].get(&10_000) else {
            return (None, None, None);
        };
        (
            finite(r["netctl_of_0"]),
            finite(r["netctl_of_0_paired"]),
            finite(r["kernel_of_0"]),
        )
    };
    // A netctl phase whose counters do not show the rules at work (the
    // final accept did not count the traffic) measured something else.
    let unproven: Vec<String> = checks
        .iter()
        .filter(|c| c.side == "netctl" && (c.rules == 0 || c.rules == 10_000) && !c.ok)
        .map(|c| format!("{} rules run {}", c.rules, c.run + 1))
        .collect();
    let mut keeps = BTreeMap::new();
    for m in METRICS {
        let (f, p, k) = keep(m);
        let ok = f.is_some_and(|f| f >= 0.9) && unproven.is_empty();
        match (f, base) {
            (Some(f), Some(_)) if !unproven.is_empty() => println!(
                "netctl with 10,000 rules keeps >= 90% of its 0-rule {}: no — not established: \
                 the counter check failed for netctl ({}), so the traffic was not judged by \
                 the rules ({} of 0 rules measured; kernel iptables keeps {})",
                m.short(),
                unproven.join(", "),
                show_pct(f),
                k.map_or("-".into(), show_pct),
            ),
            (Some(f), Some(_)) => println!(
                "netctl with 10,000 rules keeps >= 90% of its 0-rule {}: {} ({} of 0 rules; \
                 paired {}; kernel iptables keeps {})",
                m.short(),
                yes_no(ok),
                show_pct(f),
                p.map_or("-".into(), show_pct),
                k.map_or("-".into(), show_pct),
            ),
            _ => println!(
                "netctl with 10,000 rules keeps >= 90% of its 0-rule {}: not measured \
                 (--rules needs 0 and 10000)",
                m.short()
            ),
        }
        keeps.insert(
            m.key(),
            json!({ "met": f.map(|_| ok), "netctl_of_0": f, "netctl_of_0_paired": p,
                    "kernel_of_0": k, "counter_checks_failed": unproven }),
        );
    }
    let r10k = replace.iter().find(|r| r.n == 10_000);
    match r10k {
        Some(r) if r.netctl_error.is_some() && !r.netctl_live_ms.is_finite() => println!(
            "replacing 10,000 rules takes < 100 ms in netctl: no (netctl failed: {})",
            r.netctl_error.as_deref().unwrap_or("")
        ),
        Some(r) => {
            println!(
                "replacing 10,000 rules takes < 100 ms in netctl (live, as netctl reports): {} \
                 ({:.1} ms)",
                yes_no(r.netctl_live_ms < 100.0),
                r.netctl_live_ms
            );
            println!(
                "replacing 10,000 rules takes < 100 ms in netctl (whole command): {} ({:.1} ms; \
                 iptables-restore {:.1} ms)",
                yes_no(r.netctl_command_ms < 100.0),
                r.netctl_command_ms,
                r.iptables_restore_file_ms
            );
        }
        None => println!(
            "replacing 10,000 rules takes < 100 ms in netctl: not measured (--replace needs 10000)"
        ),
    }
    let bad: Vec<&Check> = checks.iter().filter(|c| !c.ok).collect();
    let checks_ok = bad.is_empty();
    println!(
        "counter check (final accept counted the traffic, the N rules and the policy \
         nothing): {}",
        if bad.is_empty() {
            format!("ok in all {} phase(s)", checks.len())
        } else {
            format!(
                "FAILED in {} of {} phase(s): {}",
                bad.len(),
                checks.len(),
                bad.iter()
                    .map(|c| format!(
                        "{} {} rules run {}: {}",
                        c.side,
                        c.rules,
                        c.run + 1,
                        c.problems.join("; ")
                    ))
                    .collect::<Vec<_>>()
                    .join(" | ")
            )
        }
    );
    let failures = samples.iter().filter(|s| s.error.is_some()).count();
    if failures > 0 {
        println!("WARNING: {failures} measurement(s) failed (see the errors above / in the JSON)");
    }

    let elapsed = t_start.elapsed().as_secs_f64();
    println!("elapsed: {:.0} s", elapsed);
    let notes = vec![
        "each repetition loads every rule count in turn (the order rotating by one per \
         repetition) into both setups and measures both metrics on both; which setup goes \
         first alternates"
            .to_string(),
        "the ruleset: *filter, FORWARD policy DROP, N distinct rules that match none of the \
         benchmark's packets (sources from 198.18.0.0/15, or the benchmark's own addresses \
         with ports 1-19999 that it never uses: 1 rule in 10, left out with --no-near-miss), \
         then -A FORWARD -j ACCEPT; the same text for both setups"
            .into(),
        "TCP: iperf3 -t DUR, end.sum_received.bits_per_second".into(),
        format!(
            "UDP: iperf3 -u -l {UDP_LEN} -b 0; received packets/s = (sum_received.packets - \
             sum_received.lost_packets) / sum_received.seconds"
        ),
        "checks: FORWARD's counters read after loading and after the measurements \
         (iptables-save -c / netctl rules save -c); the final accept must have counted at \
         least the UDP packets received and the TCP + UDP payload bytes received, the other \
         rules and the policy nothing"
            .into(),
        "replacement: A and B are different N-rule rulesets; each timed load replaces the \
         other one. netctl: `netctl rules --topology T restore FILE`, its wall time and the \
         live/cleanup times it prints; kernel: `ip netns exec NS iptables-restore FILE` and \
         iptables-restore with the ruleset on stdin in a child that setns'd into NS"
            .into(),
        match pin {
            Some((c, s)) => format!("iperf3 client pinned to CPU {c}, server to CPU {s}"),
            None => "client and server not pinned (--no-pin)".into(),
        },
    ];
    let report = Report {
        bench: "rules",
        kernel: kernel_release(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        iperf3,
        netctl_binary: netctl_build,
        iptables: json!({
            "backend": ipt.backend,
            "version": ipt.version,
            "restore": ipt.restore,
            "save": ipt.save,
        }),
        runs: a.runs,
        seconds: a.seconds,
        replace_runs: a.replace_runs,
        rule_counts: counts,
        replace_sizes: sizes,
        pinned_cpus: pin,
        near_miss_rules: mix,
        notes,
        setups: infos,
        ruleset_example: example,
        samples,
        checks,
        medians,
        ratios,
        replace_samples,
        targets: json!({
            "netctl_10000_rules_keeps_90pct": keeps,
            "netctl_replace_10000_under_100ms_live": r10k.map(|r| r.netctl_live_ms < 100.0),
            "netctl_replace_10000_under_100ms_command": r10k.map(|r| r.netctl_command_ms < 100.0),
            "netctl_replace_10000_live_ms": r10k.and_then(|r| finite(r.netctl_live_ms)),
            "netctl_replace_10000_command_ms": r10k.and_then(|r| finite(r.netctl_command_ms)),
            "counter_checks_ok": checks_ok,
        }),
        replace,
        elapsed_s: elapsed,
    };
    super::finish_run(&results_path(a.json, "rules.json"), &report, &links_before)
}

fn show_pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.1}%", x * 100.0)
    } else {
        "-".into()
    }
}

fn show_ms(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.1}")
    } else {
        "-".into()
    }
}

// ---------------------------------------------------------------------------
// The rules

/// iptables-save text: FORWARD policy DROP, `n` distinct rules that match
/// none of the benchmark's packets, then the final accept. `salt` makes a
/// different ruleset of the same size (for the replacement test);
/// `near_miss` false replaces the near misses by rules of another kind.
fn ruleset(n: usize, salt: usize, near_miss: bool) -> String {
    assert!(n <= MAX_RULES);
    let mut out = String::with_capacity(96 * (n + 8));
    out += "# generated by cargo xtask bench rules\n*filter\n:INPUT ACCEPT [0:0]\n\
            :FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n";
    let mut seen = HashSet::with_capacity(n);
    for i in 0..n {
        let r = rule(i, salt, near_miss);
        out += &r;
        assert!(seen.insert(r), "the generated rules are not distinct");
        out.push('\n');
    }
    out += "-A FORWARD -j ACCEPT\nCOMMIT\n";
    out
}

/// Rule `i`: every kind but the near miss has a source of its own in
/// 198.18.0.0/15 (which the benchmark never uses); the near misses name the
/// benchmark's own client and server but ports below 20000, which it never
/// uses either (iperf3's server ports are 20000.., clients' ephemeral).
fn rule(i: usize, salt: usize, near_miss: bool) -> String {
    let u = ((i + salt * 40_503) % MAX_RULES) as u32;
    let src = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 0, 0)) + u);
    // A would-be container on one of the two bridges.
    let dst = Ipv4Addr::new(10, 81 + (i % 2) as u8, 0, 3 + ((i / 2) % 252) as u8);
    let port = |k: usize| 1 + ((i as u32 * 7 + k as u32 * 131 + salt as u32 * 4_999) % RULE_PORTS);
    match i % 10 {
        0 | 1 => format!(
            "-A FORWARD -s {src}/32 -d {dst}/32 -p tcp -m tcp --dport {} -j DROP",
            port(0)
        ),
        2 => format!(
            "-A FORWARD -s {src}/32 -d {dst}/32 -p udp -m udp --dport {} -j DROP",
            port(0)
        ),
        3 => format!(
            "-A FORWARD -s {src}/32 -i br-a -o br-b -p tcp -m tcp --dport {} -j REJECT \
             --reject-with icmp-port-unreachable",
            port(0)
        ),
        4 => format!(
            "-A FORWARD -s {src}/32 -i br-b -o br-a -p udp -m udp --dport {} -j DROP",
            port(0)
        ),
        5 => format!(
            "-A FORWARD -s {src}/32 -d 10.82.0.0/24 -p tcp -m multiport --dports {},{},{} -j DROP",
            port(0),
            port(1),
            port(2)
        ),
        6 => format!("-A FORWARD -s {src}/32 -p icmp -m icmp --icmp-type 8 -j DROP"),
        7 if !near_miss => format!(
            "-A FORWARD -s {src}/32 -d {dst}/32 -p udp -m udp --sport {} -j DROP",
            port(0)
        ),
        7 => {
            // Near miss: the benchmark's own addresses, one direction or the
            // other, a port it never uses; tcp and udp. Distinct by (j,
            // salt) for up to 2 * RULE_PORTS of them.
            let j = (i / 10) as u32;
            let p = 1 + (j / 2 + salt as u32 * 7_001) % RULE_PORTS;
            let (s, d) = if j % 4 < 2 {
                (CLIENT, SERVER)
            } else {
                (SERVER, CLIENT)
            };
            let proto = if j.is_multiple_of(2) { "tcp" } else { "udp" };
            format!("-A FORWARD -s {s}/32 -d {d}/32 -p {proto} -m {proto} --dport {p} -j DROP")
        }
        8 => format!(
            "-A FORWARD -s {src}/32 -d {dst}/32 -p tcp -m tcp --sport {} -j ACCEPT",
            port(0)
        ),
        _ => format!("-A FORWARD -s {src}/32 -o br-b -j DROP"),
    }
}

// ---------------------------------------------------------------------------
// Loading and reading rules

/// Loads `file` into the setup's FORWARD (untimed: the traffic phases).
fn load(e: &Env, ipt: &Ipt, file: &Path) -> Result<()> {
    match e.side {
        Side::Kernel => {
            let text = fs::read_to_string(file)?;
            ipt_stdin(e, ipt, &text).map(|_| ())
        }
        Side::Netctl => netctl_restore(&e.topology, file).map(|_| ()),
    }
}

struct Restored {
    wall_s: f64,
    elements: u64,
    live_ms: f64,
    cleanup_ms: f64,
}

/// `netctl rules --topology T restore FILE`, timed, with what it reports:
/// `rules of T: N map elements live in X ms (old generation cleared in Y ms)`.
fn netctl_restore(topology: &str, file: &Path) -> Result<Restored> {
    let t = Instant::now();
    let o = Command::new(netctl())
        .args(["rules", "--topology", topology, "restore"])
        .arg(file)
        .stdin(Stdio::null())
        .output()
        .context("cannot start netctl")?;
    let wall_s = t.elapsed().as_secs_f64();
    if !o.status.success() {
        return Err(failed(
            &format!(
                "netctl rules --topology {topology} restore {}",
                file.display()
            ),
            &o,
        ));
    }
    let err = String::from_utf8_lossy(&o.stderr);
    let parse = || -> Option<(u64, f64, f64)> {
        let l = err.lines().find(|l| l.contains("map elements live in"))?;
        let elements = l
            .split(": ")
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        let num_before_ms = |after: &str| -> Option<f64> {
            l.split(after)
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        };
        Some((
            elements,
            num_before_ms("live in ")?,
            num_before_ms("cleared in ")?,
        ))
    };
    let (elements, live_ms, cleanup_ms) = parse().ok_or_else(|| {
        anyhow!(
            "netctl rules restore printed no timing line: {}",
            err.trim()
        )
    })?;
    Ok(Restored {
        wall_s,
        elements,
        live_ms,
        cleanup_ms,
    })
}

/// `ip netns exec NS iptables-restore FILE`, timed.
fn ipt_file(e: &Env, ipt: &Ipt, file: &Path) -> Result<f64> {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &e.host_ns, ipt.restore])
        .args(ipt.wait_args())
        .arg(file)
        .stdin(Stdio::null());
    let (secs, o) = super::time_cmd(&mut c)?;
    if !o.status.success() {
        return Err(failed(
            &format!("ip netns exec {} {}", e.host_ns, ipt.restore),
            &o,
        ));
    }
    Ok(secs)
}

/// iptables-restore in the host namespace (setns), the ruleset on stdin;
/// timed from the spawn to its exit.
fn ipt_stdin(e: &Env, ipt: &Ipt, text: &str) -> Result<f64> {
    ipt.restore_stdin(&e.host, &e.host_ns, text)
}

/// FORWARD's counters from `iptables-save -c -t filter` (either tool).
fn forward(e: &Env, ipt: &Ipt) -> Result<Forward> {
    let text = match e.side {
        Side::Kernel => ipt.save_in(&e.host, &e.host_ns, &["-c", "-t", "filter"])?,
        Side::Netctl => run_netctl(
            &netctl(),
            &[
                "rules",
                "--topology",
                &e.topology,
                "save",
                "-c",
                "-t",
                "filter",
            ],
        )?,
    };
    parse_forward(&text)
}

fn parse_forward(text: &str) -> Result<Forward> {
    let mut f = Forward::default();
    let counts = |s: &str| -> Option<(u64, u64)> {
        let s = s.trim().strip_prefix('[')?.strip_suffix(']')?;
        let (p, b) = s.split_once(':')?;
        Some((p.parse().ok()?, b.parse().ok()?))
    };
    let mut rules: Vec<(u64, u64, String)> = Vec::new();
    let mut policy = false;
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix(":FORWARD ") {
            let mut it = rest.splitn(2, ' ');
            f.policy = it.next().unwrap_or("").to_string();
            f.policy_packets = it.next().and_then(counts).map_or(0, |c| c.0);
            policy = true;
        } else if l.starts_with('[') && l.contains("] -A FORWARD ") {
            let (c, r) = l.split_once("] ").unwrap();
            let (p, b) = counts(&format!("{c}]"))
                .ok_or_else(|| anyhow!("cannot read the counters of {l:?}"))?;
            rules.push((p, b, r.to_string()));
        } else if l.starts_with("-A FORWARD ") {
            bail!("a FORWARD rule without counters: {l:?}");
        }
    }
    ensure!(policy, "no FORWARD chain in the saved rules");
    f.rules = rules.len();
    if let Some((p, b, r)) = rules.pop() {
        f.last_rule = r;
        f.last_packets = p;
        f.last_bytes = b;
    }
    f.others_packets = rules.iter().map(|r| r.0).sum();
    f.others_bytes = rules.iter().map(|r| r.1).sum();
    Ok(f)
}

#[allow(clippy::too_many_arguments)]
fn check(
    run: usize,
    rules: usize,
    side: Side,
    before: Forward,
    after: Forward,
    min_packets: f64,
    min_bytes: f64,
    stats: Option<(BTreeMap<String, i64>, BTreeMap<String, i64>)>,
) -> Check {
    let mut problems = Vec::new();
    if after.rules != rules + 1 {
        problems.push(format!(
            "{} rules in FORWARD, expected {}",
            after.rules,
            rules + 1
        ));
    }
    if after.last_rule != "-A FORWARD -j ACCEPT" {
        problems.push(format!("the last rule is {:?}", after.last_rule));
    }
    if after.policy != "DROP" {
        problems.push(format!("policy {}", after.policy));
    }
    if before.last_packets != 0 || before.others_packets != 0 || before.policy_packets != 0 {
        problems.push(format!(
            "counters not zero after loading (final accept {}, others {}, policy {})",
            before.last_packets, before.others_packets, before.policy_packets
        ));
    }
    let dp = after.last_packets.saturating_sub(before.last_packets) as f64;
    let db = after.last_bytes.saturating_sub(before.last_bytes) as f64;
    if dp == 0.0 || dp < min_packets {
        problems.push(format!(
            "final accept counted {dp} packets, the measurements received at least {min_packets}"
        ));
    }
    if db < min_bytes {
        problems.push(format!(
            "final accept counted {db} bytes, the measurements received at least {min_bytes}"
        ));
    }
    if after.others_packets != before.others_packets {
        problems.push(format!(
            "the {rules} non-matching rules counted {} packets",
            after.others_packets - before.others_packets
        ));
    }
    if after.policy_packets != before.policy_packets {
        problems.push(format!(
            "the DROP policy counted {} packets",
            after.policy_packets - before.policy_packets
        ));
    }
    let datapath = stats.map(|(b, a)| {
        a.iter()
            .map(|(k, v)| (k.clone(), v - b.get(k).copied().unwrap_or(0)))
            .collect::<BTreeMap<String, i64>>()
    });
    if side == Side::Netctl {
        match &datapath {
            None => problems.push("netctl stats unavailable".into()),
            Some(d) => {
                let get = |k: &str| d.get(k).copied().unwrap_or(0);
                if get("redirect_l3") <= 0 {
                    problems.push("redirect_l3 did not grow: not the fast path".into());
                }
                for k in ["drop_rule", "reject_rule"] {
                    if get(k) != 0 {
                        problems.push(format!("{k} +{}", get(k)));
                    }
                }
            }
        }
    }
    Check {
        run,
        rules,
        side: side.key(),
        before,
        after,
        min_packets,
        min_bytes,
        datapath,
        ok: problems.is_empty(),
        problems,
    }
}

/// `netctl stats -t TOPOLOGY --json` decisions, or None.
fn stats(topology: &str) -> Option<BTreeMap<String, i64>> {
    netctl_stats(&netctl(), topology).map(|(_, decisions)| decisions)
}

// ---------------------------------------------------------------------------
// Building the setups

/// Two bridges, a client container on br-a and a server on br-b.
fn setup(side: Side, name: &str, scratch: &Path, guard: &mut Cleanup) -> Result<Env> {
    let datapath = match side {
        Side::Kernel => "kernel",
        Side::Netctl => "ebpf",
    };
    let toml = format!(
        "# generated by cargo xtask bench rules\n\
         name = \"{name}\"\nhost_netns = \"{name}-h\"\nip_forward = true\n\
         datapath = \"{datapath}\"\n\n\
         [[bridge]]\nname = \"br-a\"\naddresses = [\"10.81.0.1/24\"]\n\n\
         [[bridge]]\nname = \"br-b\"\naddresses = [\"10.82.0.1/24\"]\n\n\
         [[container]]\nname = \"a\"\nbridge = \"br-a\"\naddresses = [\"{CLIENT}/24\"]\n\n\
         [[container]]\nname = \"b\"\nbridge = \"br-b\"\naddresses = [\"{SERVER}/24\"]\n"
    );
    let file = scratch.join(format!("{name}.toml"));
    fs::write(&file, toml).with_context(|| format!("write {}", file.display()))?;
    guard.topology(name);
    run_netctl(&netctl(), &["apply", &file.to_string_lossy()])?;
    let (h, ca, sb) = (
        format!("{name}-h"),
        format!("{name}-a"),
        format!("{name}-b"),
    );
    Ok(Env {
        side,
        topology: name.to_string(),
        host: open_ns(&h)?,
        client: open_ns(&ca)?,
        server: open_ns(&sb)?,
        host_ns: h,
        client_ns: ca,
        pin: None,
    })
}

/// Connectivity, and the datapath each setup promises.
fn check_env(e: &Env, ipt: &Ipt) -> Result<SetupInfo> {
    let addr = SERVER.to_string();
    ensure!(
        ping(&e.client, SERVER),
        "{}: {} cannot ping {addr}",
        e.side.key(),
        e.client_ns
    );
    let has_stats = stats(&e.topology).is_some();
    match e.side {
        Side::Kernel => ensure!(
            !has_stats,
            "the kernel-datapath topology {} has datapath counters",
            e.topology
        ),
        Side::Netctl => ensure!(
            has_stats,
            "{}: netctl stats unavailable — is the eBPF datapath attached?",
            e.topology
        ),
    }
    Ok(SetupInfo {
        side: e.side.key(),
        topology: e.topology.clone(),
        datapath: match e.side {
            Side::Kernel => "kernel",
            Side::Netctl => "ebpf",
        },
        host_netns: e.host_ns.clone(),
        client_netns: e.client_ns.clone(),
        server_netns: format!("{}-b", e.topology),
        client_addr: CLIENT.to_string(),
        server_addr: addr,
        rules_loaded_with: match e.side {
            Side::Kernel => format!("{} in {}", ipt.restore, e.host_ns),
            Side::Netctl => format!("netctl rules --topology {} restore", e.topology),
        },
    })
}

// ---------------------------------------------------------------------------
// Traffic (iperf3, as bench datapath runs it)

struct Measured {
    value: f64,
    detail: Value,
    /// What FORWARD's final accept must at least have counted for it.
    min_packets: f64,
    min_bytes: f64,
}

fn iperf_tcp(e: &Env, dur: Duration, port: u16) -> Result<Measured> {
    let v = iperf::client(&e.iperf(), port, dur, &["-P", "1"])?;
    let (bps, detail) = iperf::tcp_result(&v)?;
    let bytes = detail["received_bytes"].as_f64().unwrap_or(0.0);
    Ok(Measured {
        value: bps,
        detail,
        min_packets: 1.0,
        min_bytes: bytes,
    })
}

fn iperf_udp(e: &Env, dur: Duration, port: u16) -> Result<Measured> {
    let len = UDP_LEN.to_string();
    let v = iperf::client(&e.iperf(), port, dur, &["-u", "-l", &len, "-b", "0"])?;
    let end = &v["end"];
    let r = &end["sum_received"];
    let field = |f: &str| {
        r[f].as_f64()
            .ok_or_else(|| anyhow!("iperf3 JSON has no end.sum_received.{f}"))
    };
    let (packets, lost, secs) = (field("packets")?, field("lost_packets")?, field("seconds")?);
    ensure!(secs > 0.0, "iperf3 reports 0 seconds");
    let received = packets - lost;
    Ok(Measured {
        value: received / secs,
        detail: json!({
            "received_packets": received,
            "packets": packets,
            "lost_packets": lost,
            "lost_percent": r["lost_percent"],
            "seconds": secs,
            "sent_packets": end["sum_sent"]["packets"],
            "cpu": end["cpu_utilization_percent"],
        }),
        min_packets: received,
        min_bytes: received * UDP_LEN as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rulesets_are_distinct_and_differ_by_salt() {
        let a = ruleset(50_000, 0, true);
        let b = ruleset(50_000, 1, true);
        assert_eq!(
            a.lines().filter(|l| l.starts_with("-A FORWARD")).count(),
            50_001
        );
        let sa: HashSet<&str> = a
            .lines()
            .filter(|l| l.starts_with("-A FORWARD -s"))
            .collect();
        let sb: HashSet<&str> = b
            .lines()
            .filter(|l| l.starts_with("-A FORWARD -s"))
            .collect();
        assert!(sa.intersection(&sb).count() < 100);
        let c = ruleset(50_000, 0, false);
        assert!(!c.contains("-s 10.81.0.2/32") && !c.contains("-s 10.82.0.2/32"));
    }

    #[test]
    fn reads_forward_counters() {
        let t = "*filter\n:INPUT ACCEPT [1:2]\n:FORWARD DROP [3:4]\n:OUTPUT ACCEPT [0:0]\n\
                 [5:6] -A FORWARD -s 198.18.0.1/32 -j DROP\n[7:8] -A FORWARD -j ACCEPT\nCOMMIT\n";
        let f = parse_forward(t).unwrap();
        assert_eq!(
            (f.rules, f.policy.as_str(), f.policy_packets),
            (2, "DROP", 3)
        );
        assert_eq!((f.last_packets, f.last_bytes, f.others_packets), (7, 8, 5));
        assert_eq!(f.last_rule, "-A FORWARD -j ACCEPT");
    }
}

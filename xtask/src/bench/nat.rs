//! `cargo xtask bench nat`: Docker-style NAT — outbound masquerade and a
//! published port — in the kernel (iptables' nat table over the kernel's
//! conntrack) and in netctl's eBPF datapath (over its own conntrack).
//!
//! Two setups, built once at the start in namespaces of their own (names
//! `bn<pid>-…`), the same topology in each: host namespace `<t>-h` with
//! bridge docker0 172.17.0.1/16, one container `<t>-c1` (172.17.0.2) and an
//! uplink `uplink0` 192.0.2.2/24 to an outside namespace `<t>-outside`
//! (192.0.2.1), which stands for the rest of the world:
//!
//! * netctl — topology `<p>e`, `datapath = "ebpf"`, `docker_rules = true`,
//!   the container publishing `8080:80/tcp` and `8081:5201/tcp`: Docker's
//!   filter and nat rules, run by the TC programs over netctl's conntrack;
//! * kernel — topology `<p>k`, `datapath = "kernel"` (a plain Linux
//!   bridge; `docker_rules` needs the eBPF datapath, see docs/nat.md), with
//!   the very text `netctl rules --topology <p>e save` prints loaded by
//!   `iptables-restore` (legacy by default, `--iptables nft`) into `<p>k-h`,
//!   where the kernel's conntrack does the NAT.
//!
//! Metrics, each for both setups:
//!
//! * new TCP connections per second through masquerade (client threads in
//!   the container, server in the outside namespace) and through the
//!   published port (clients in the outside namespace connecting to
//!   192.0.2.2:8080, DNAT'd to the container's port 80). Each connection:
//!   connect, a 64-byte request, a 256-byte answer, close. The server
//!   closes first, so TIME_WAIT sockets stay with the server and the
//!   clients' ephemeral ports are free again at once; `--clients` threads
//!   connect concurrently (the server has as many). Both are threads of this
//!   process that `setns` into their namespaces;
//! * TCP throughput, iperf3 with one stream, through masquerade (container
//!   to outside) and through the published port (outside to
//!   192.0.2.2:8081, DNAT'd to the container's 5201).
//!
//! Each repetition measures every metric on both setups, which goes first
//! alternating. After each measurement the tables are read and checked —
//! the server saw the uplink's address as the client (masquerade) or the
//! client's own (published port); the nat rule's counter grew by the
//! connections made (a shortfall is reported, beyond 1 % it fails); the
//! conntrack that does the NAT holds the flows with the translation (the
//! kernel's in the kernel setup; netctl's, with the kernel's in the host
//! namespace empty and `netctl stats` showing the programs redirected the
//! packets, in the netctl setup) — and then both conntrack tables are
//! flushed, so every measurement starts from empty tables. A table near
//! its limit, and packets netctl dropped for want of a NAT port
//! (`drop_nat`), are reported. A failed check makes the command fail after
//! the JSON is written.
//!
//! No sysctl is changed anywhere: the server closing first keeps the
//! clients' ports free, and the kernel's conntrack reopens a TIME_WAIT
//! entry whose tuple a new SYN reuses, so its table stays at about one
//! entry per client port.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde::Serialize;
use serde_json::{Value, json};

use super::iperf;
use super::ipt::{Ipt, SIDES, Side};
use super::ns::{enter, in_ns, ns_command, open_ns, ping};
use super::{
    Cleanup, check_interrupted, failed, finite, kernel_release, median, nan_low, netctl_bin,
    netctl_stats, print_table, results_path, root_links, run_netctl, show_ratio, two_cpus, yes_no,
};

#[derive(clap::Args)]
pub struct NatArgs {
    /// Repetitions (every metric on both setups once each).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Seconds per measurement (whole seconds, as iperf3 -t).
    #[arg(long, default_value_t = 5)]
    pub duration: u64,
    /// Concurrent client threads of the connection-rate test (and as many
    /// server threads).
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// The kernel side's iptables backend.
    #[arg(long, default_value = "legacy", value_parser = ["legacy", "nft"])]
    pub iptables: String,
    /// Let the scheduler place iperf3's client and server (default: pin
    /// them to two different CPUs).
    #[arg(long)]
    pub no_pin: bool,
    /// Run this iptables-save text in both setups instead of the rules
    /// `docker_rules` generates (an experiment: what the rules cost). It
    /// must keep Docker's masquerade rule and the DNATs of ports 8080 and
    /// 8081.
    #[arg(long)]
    pub ruleset: Option<PathBuf>,
    /// Where to write every sample (default: bench-results/nat.json).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

const UPLINK_DEV: &str = "uplink0";
const UPLINK: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
const OUTSIDE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const CONTAINER: Ipv4Addr = Ipv4Addr::new(172, 17, 0, 2);
/// The connection test's server port in the container, and where it is
/// published on the host namespace's addresses.
const CONN_PORT: u16 = 80;
const CONN_PUBLISHED: u16 = 8080;
/// iperf3's server port in the container, and where it is published.
const IPERF_PORT: u16 = 5201;
const IPERF_PUBLISHED: u16 = 8081;
/// Outside servers (masquerade): a fresh port per measurement, so that no
/// TIME_WAIT socket of an earlier one is met.
const FIRST_PORT: u16 = 20000;
const LAST_PORT: u16 = 30000;
/// The rule the masquerade goes through (Docker's "NAT" rule).
const MASQ_RULE: &str = "-s 172.17.0.0/16 ! -o docker0 -j MASQUERADE";

/// Request and answer sizes of one connection.
const REQ_LEN: usize = 64;
const RESP_LEN: usize = 256;
/// Connections before the timed window (ARP, caches, first entries).
const WARMUP: Duration = Duration::from_millis(300);
/// How long a connect or a read may take before the connection counts as
/// failed.
const IO_TIMEOUT: Duration = Duration::from_secs(3);
/// A connection slower than this most likely lost a packet (a SYN is
/// retransmitted after 1 s).
const SLOW: Duration = Duration::from_millis(200);
/// A conntrack table this full is reported as (nearly) full.
const FULL_SHARE: f64 = 0.95;
/// The share of the datapath ports' received packets the programs must
/// have redirected for the measurement to count as the datapath's.
const MIN_REDIRECTED: f64 = 0.9;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Metric {
    ConnMasq,
    ConnPublished,
    TcpMasq,
    TcpPublished,
}

const METRICS: [Metric; 4] = [
    Metric::ConnMasq,
    Metric::ConnPublished,
    Metric::TcpMasq,
    Metric::TcpPublished,
];

impl Metric {
    fn key(self) -> &'static str {
        match self {
            Metric::ConnMasq => "conn_per_s_masquerade",
            Metric::ConnPublished => "conn_per_s_published",
            Metric::TcpMasq => "tcp_1_stream_bps_masquerade",
            Metric::TcpPublished => "tcp_1_stream_bps_published",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Metric::ConnMasq => "new conn/s, masquerade",
            Metric::ConnPublished => "new conn/s, published port",
            Metric::TcpMasq => "TCP Gbit/s, masquerade",
            Metric::TcpPublished => "TCP Gbit/s, published port",
        }
    }
    fn show(self, v: f64) -> String {
        if !v.is_finite() {
            return "-".into();
        }
        match self {
            Metric::ConnMasq | Metric::ConnPublished => format!("{v:.0}"),
            Metric::TcpMasq | Metric::TcpPublished => format!("{:.2}", v / 1e9),
        }
    }
    fn idx(self) -> usize {
        METRICS.iter().position(|m| *m == self).unwrap()
    }
    fn masquerade(self) -> bool {
        matches!(self, Metric::ConnMasq | Metric::TcpMasq)
    }
    fn conn(self) -> bool {
        matches!(self, Metric::ConnMasq | Metric::ConnPublished)
    }
}

/// One setup, built.
struct Env {
    side: Side,
    topology: String,
    host_ns: String,
    host: File,
    container: File,
    outside: File,
    pin: Option<(usize, usize)>,
}

#[derive(Serialize)]
struct SetupInfo {
    side: &'static str,
    topology: String,
    datapath: &'static str,
    host_netns: String,
    container_netns: String,
    outside_netns: String,
    nat_by: String,
    /// Kernel: nf_conntrack_max (global, read-only in a namespace);
    /// netctl: MAP_CT_MAX (the LRU map's size).
    conntrack_max: u64,
    /// net.bridge.bridge-nf-call-iptables in the host namespace (1: bridged
    /// frames cross iptables too, as on a Docker host), if present.
    bridge_nf_call_iptables: Option<u64>,
}

/// What one measurement's flows look like in a conntrack table, as both
/// tables print them: the original tuple, and the reply tuple with the
/// translation in it.
#[derive(Clone, Copy)]
struct FlowSpec {
    orig_src: Ipv4Addr,
    orig_dst: Ipv4Addr,
    orig_dport: u16,
    /// The translation expected in the reply tuple.
    reply_src: Ipv4Addr,
    reply_sport: u16,
    reply_dst: Ipv4Addr,
}

/// One conntrack entry (kernel or netctl), reduced to what the checks use.
struct CtView {
    proto: String,
    state: Option<String>,
    orig: (Ipv4Addr, Ipv4Addr, u16, u16),
    reply: (Ipv4Addr, Ipv4Addr, u16, u16),
}

#[derive(Serialize, Default, Clone)]
struct FlowCount {
    /// Entries whose original tuple is one of the measurement's flows.
    flows: usize,
    /// Of them, with the expected translation in the reply tuple.
    translated: usize,
    /// Of them, whose translated source port differs from the original
    /// (masquerade only: a port was reallocated).
    port_changed: usize,
    /// Entries by TCP state.
    states: BTreeMap<String, usize>,
}

/// Counters and tables around one measurement, and what was wrong.
#[derive(Serialize, Default)]
struct Check {
    /// The nat rule's packet counter, after minus before: one per new
    /// connection in both implementations.
    nat_rule_packets: Option<u64>,
    /// Connections the measurement made (the client's count, warm-up
    /// included), and how many fewer the nat rule counted.
    connections: u64,
    nat_rule_shortfall: u64,
    /// The conntrack doing the NAT (the kernel's in the kernel setup,
    /// netctl's in the netctl setup): this measurement's flows.
    nat_conntrack: FlowCount,
    /// Entries in that table after the measurement (kernel:
    /// nf_conntrack_count; netctl: live + timed-out elements of the LRU
    /// map), its NAT reply tuples (netctl), and its size.
    table_entries: u64,
    table_nat_tuples: Option<u64>,
    table_max: u64,
    table_full: bool,
    /// The kernel's conntrack in the host namespace: all its entries, and
    /// this measurement's flows among them (must be 0 for netctl).
    kernel_host_entries: u64,
    kernel_host_flows: usize,
    /// Kernel: /proc/net/stat/nf_conntrack in the host namespace, after
    /// minus before (drop, early_drop, insert_failed, invalid, …).
    kernel_ct_stats: BTreeMap<String, i64>,
    /// netctl: `netctl stats` decisions and port counters, after minus
    /// before.
    datapath: Option<BTreeMap<String, i64>>,
    redirected_share: Option<f64>,
    /// The address the server saw the client come from (connections that
    /// saw another are counted in the sample's detail).
    server_saw: Option<String>,
    ok: bool,
    problems: Vec<String>,
}

#[derive(Serialize)]
struct Sample {
    run: usize,
    /// 0: this setup was measured first for this run and metric.
    position: usize,
    side: &'static str,
    metric: &'static str,
    value: f64,
    error: Option<String>,
    machine_busy: Option<f64>,
    machine_steal: Option<f64>,
    detail: Value,
    check: Check,
}

#[derive(Serialize)]
struct Report {
    bench: &'static str,
    kernel: String,
    cpus: usize,
    iperf3: String,
    iptables: Value,
    conntrack_tool: String,
    runs: usize,
    duration_s: u64,
    clients: usize,
    pinned_cpus: Option<(usize, usize)>,
    notes: Vec<String>,
    setups: Vec<SetupInfo>,
    /// The ruleset both setups run (netctl's `rules save` of the netctl
    /// setup, restored into the kernel's iptables), and where it came from
    /// (`docker_rules`, or the `--ruleset` file).
    ruleset: String,
    ruleset_from: String,
    samples: Vec<Sample>,
    /// metric → side → median.
    medians: BTreeMap<&'static str, BTreeMap<&'static str, f64>>,
    /// metric → {netctl_over_kernel, netctl_over_kernel_paired}.
    ratios: BTreeMap<&'static str, BTreeMap<&'static str, f64>>,
    checks_failed: usize,
    targets: Value,
    elapsed_s: f64,
}

pub fn run(a: NatArgs) -> Result<()> {
    let t_start = Instant::now();
    ensure!(a.runs >= 1, "--runs must be at least 1");
    ensure!(a.duration >= 1, "--duration must be at least 1 second");
    ensure!((1..=64).contains(&a.clients), "--clients must be 1 to 64");
    ensure!(
        netctl_bin().is_file(),
        "{} is missing",
        netctl_bin().display()
    );
    let iperf3 = iperf::version()?;
    let ipt = Ipt::new(&a.iptables)?;
    let conntrack_tool = crate::sh::output(Command::new("conntrack").arg("--version"))
        .ok_or_else(|| anyhow!("conntrack is missing (apt-get install conntrack)"))?
        .trim()
        .to_string();

    let super::Run {
        prefix,
        links_before,
        mut guard,
        scratch,
    } = super::start_run("bn", "nat")?;

    eprintln!("==> building the two setups ({prefix}…)");
    let netctl_env = setup(Side::Netctl, &format!("{prefix}e"), &scratch, &mut guard)?;
    if let Some(f) = &a.ruleset {
        run_netctl(
            &netctl_bin(),
            &[
                "rules",
                "--topology",
                &netctl_env.topology,
                "restore",
                &f.to_string_lossy(),
            ],
        )?;
    }
    let ruleset = run_netctl(
        &netctl_bin(),
        &["rules", "--topology", &netctl_env.topology, "save"],
    )?;
    ensure!(
        ruleset.contains(MASQ_RULE)
            && ruleset.contains(&format!("--dport {CONN_PUBLISHED} -j DNAT"))
            && ruleset.contains(&format!("--dport {IPERF_PUBLISHED} -j DNAT")),
        "netctl rules save of {} has no Docker masquerade or DNAT rule:\n{ruleset}",
        netctl_env.topology
    );
    let kernel_env = setup(Side::Kernel, &format!("{prefix}k"), &scratch, &mut guard)?;
    ipt.restore_stdin(&kernel_env.host, &kernel_env.host_ns, &ruleset)?;
    let mut envs = vec![kernel_env, netctl_env];
    let pin = if a.no_pin { None } else { two_cpus() };
    for e in &mut envs {
        e.pin = pin;
    }
    match pin {
        Some((c, s)) => eprintln!(
            "    iperf3 client on CPU {c}, server on CPU {s} (--no-pin: unpinned); \
             connection test: {} client and {} server threads, unpinned",
            a.clients, a.clients
        ),
        None => eprintln!(
            "    nothing pinned; connection test: {} client and {} server threads",
            a.clients, a.clients
        ),
    }
    let mut infos = Vec::new();
    for e in &envs {
        check_interrupted()?;
        infos.push(check_env(e, &ipt)?);
        flush(e)?;
    }
    ensure!(
        root_links() == links_before,
        "the root namespace's links changed while building the setups"
    );

    let total = a.runs * METRICS.len() * SIDES.len();
    eprintln!(
        "==> {total} measurements of {} s (~{} min)",
        a.duration,
        (total as u64 * (a.duration + 3)).div_ceil(60)
    );
    let dur = Duration::from_secs(a.duration);
    let mut port = FIRST_PORT;
    let mut samples: Vec<Sample> = Vec::new();
    for rep in 0..a.runs {
        for m in METRICS {
            for pos in 0..SIDES.len() {
                check_interrupted()?;
                let side = SIDES[(pos + rep + m.idx()) % SIDES.len()];
                let env = &envs[side.idx()];
                port = if port >= LAST_PORT {
                    FIRST_PORT
                } else {
                    port + 1
                };
                let s = measure(env, &ipt, m, dur, port, a.clients, rep, pos)?;
                eprintln!(
                    "  run {}/{} {:<27} {:<7} {:>9}   {}",
                    rep + 1,
                    a.runs,
                    m.label(),
                    side.key(),
                    m.show(s.value),
                    summary(&s)
                );
                for p in &s.check.problems {
                    eprintln!("  CHECK FAILED: {} {}: {p}", side.key(), m.label());
                }
                if let Some(e) = &s.error {
                    eprintln!("  WARNING: {} {}: {e}", side.key(), m.label());
                }
                samples.push(s);
            }
        }
    }
    drop(envs);
    guard.clean()?;
    drop(guard);
    super::ensure_no_leftovers(&[format!("{prefix}e"), format!("{prefix}k")])?;

    // Medians and ratios.
    let values = |m: Metric, s: Side, run: Option<usize>| -> Vec<f64> {
        samples
            .iter()
            .filter(|x| {
                x.metric == m.key()
                    && x.side == s.key()
                    && run.is_none_or(|r| x.run == r)
                    && x.value.is_finite()
            })
            .map(|x| x.value)
            .collect()
    };
    let mut medians = BTreeMap::new();
    let mut ratios = BTreeMap::new();
    for m in METRICS {
        let (k, e) = (
            median(&values(m, Side::Kernel, None)),
            median(&values(m, Side::Netctl, None)),
        );
        let paired: Vec<f64> = (0..a.runs)
            .map(|r| {
                let one = |s| values(m, s, Some(r)).first().copied().unwrap_or(f64::NAN);
                one(Side::Netctl) / one(Side::Kernel)
            })
            .filter(|v| v.is_finite())
            .collect();
        medians.insert(m.key(), BTreeMap::from([("kernel", k), ("netctl", e)]));
        ratios.insert(
            m.key(),
            BTreeMap::from([
                ("netctl_over_kernel", e / k),
                ("netctl_over_kernel_paired", median(&paired)),
            ]),
        );
    }

    println!();
    println!(
        "Docker-style NAT through an uplink, medians of {} run(s) x {} s; kernel = bridge + \
         {} nat/filter + conntrack, netctl = eBPF datapath; rules: {}",
        a.runs,
        a.duration,
        ipt.version,
        a.ruleset
            .as_ref()
            .map_or("docker_rules".to_string(), |f| f.display().to_string())
    );
    let spread = |m: Metric, s: Side| {
        let xs = values(m, s, None);
        let hi = xs.iter().copied().fold(f64::NAN, f64::max);
        let lo = xs.iter().copied().fold(f64::NAN, f64::min);
        show_ratio(hi / lo)
    };
    let rows: Vec<Vec<String>> = METRICS
        .iter()
        .map(|&m| {
            let r = &ratios[m.key()];
            vec![
                m.label().to_string(),
                m.show(medians[m.key()]["kernel"]),
                m.show(medians[m.key()]["netctl"]),
                show_ratio(r["netctl_over_kernel"]),
                show_ratio(r["netctl_over_kernel_paired"]),
                spread(m, Side::Kernel),
                spread(m, Side::Netctl),
            ]
        })
        .collect();
    print_table(
        &[
            "metric",
            "kernel",
            "netctl",
            "netctl/kernel",
            "paired",
            "kernel max/min",
            "netctl max/min",
        ],
        &rows,
    );
    println!(
        "(connections: {} concurrent clients, connect + {REQ_LEN} B request + {RESP_LEN} B \
         answer + close, server closes first; paired = median of the per-run ratios)",
        a.clients
    );

    // What the tables said.
    println!();
    for s in SIDES {
        let mine: Vec<&Sample> = samples.iter().filter(|x| x.side == s.key()).collect();
        let bad = mine.iter().filter(|x| !x.check.ok).count();
        let full = mine.iter().filter(|x| x.check.table_full).count();
        let most = mine
            .iter()
            .map(|x| x.check.table_entries)
            .max()
            .unwrap_or(0);
        let changed: usize = mine
            .iter()
            .filter(|x| x.metric == Metric::ConnMasq.key())
            .map(|x| x.check.nat_conntrack.port_changed)
            .sum();
        let errors: u64 = mine
            .iter()
            .map(|x| x.detail["errors_total"].as_u64().unwrap_or(0))
            .sum();
        let slow: u64 = mine
            .iter()
            .map(|x| x.detail["slower_than_200ms"].as_u64().unwrap_or(0))
            .sum();
        let nat_drops: i64 = mine
            .iter()
            .filter_map(|x| x.check.datapath.as_ref()?.get("drop_nat").copied())
            .sum();
        println!(
            "checks, {}: {}/{} measurements ok; largest table {most} of {} entries{}; \
             masquerade port reallocations {changed}; failed connections {errors}; \
             connections slower than 200 ms {slow}{}",
            s.key(),
            mine.len() - bad,
            mine.len(),
            infos[s.idx()].conntrack_max,
            if full > 0 {
                format!(" — FULL in {full} measurement(s)")
            } else {
                String::new()
            },
            if s == Side::Netctl {
                format!("; packets dropped for want of a NAT port (drop_nat) {nat_drops}")
            } else {
                String::new()
            }
        );
    }
    let checks_failed = samples.iter().filter(|x| !x.check.ok).count();
    let worst = METRICS
        .iter()
        .map(|&m| (m, ratios[m.key()]["netctl_over_kernel"]))
        .min_by(|p, q| nan_low(p.1).total_cmp(&nan_low(q.1)))
        .unwrap();
    let ahead = worst.1.is_finite() && worst.1 > 1.0;
    println!();
    println!(
        "netctl ahead of the kernel on every metric: {} (worst ratio {} on {})",
        yes_no(ahead),
        show_ratio(worst.1),
        worst.0.label()
    );

    let notes = vec![
        "each repetition measures every metric on both setups; which setup goes first \
         alternates (by repetition and metric)"
            .to_string(),
        format!(
            "connections: {} client threads in the client namespace and {} server threads \
             in the server namespace (threads of the bench that setns), not pinned; each \
             connection: connect, {REQ_LEN}-byte request (carrying the client's port), \
             {RESP_LEN}-byte answer, the server closes, the client reads EOF and closes; \
             counted in a {} s window after a {} ms warm-up; a connection failing (timeout \
             {} s) is counted in errors, not in the rate",
            a.clients,
            a.clients,
            a.duration,
            WARMUP.as_millis(),
            IO_TIMEOUT.as_secs()
        ),
        "TIME_WAIT: the server closes first, so TIME_WAIT sockets stay in the server's \
         namespace and the clients' ephemeral ports (default ip_local_port_range) are \
         free again at once; a reused port meets the conntrack entry of its previous \
         connection in TIME_WAIT, which both conntracks reopen on the SYN. No sysctl is \
         changed anywhere"
            .into(),
        "TCP: iperf3 -P 1 -t DUR --get-server-output, end.sum_received.bits_per_second; \
         masquerade container -> outside, published port outside -> 192.0.2.2:8081 -> \
         container:5201"
            .into(),
        "after each measurement: nat rule counters (iptables-save -c / netctl rules save \
         -c), the kernel's conntrack in the host namespace (/proc/net/nf_conntrack, \
         /proc/net/stat/nf_conntrack), netctl's (netctl conntrack list --json, netctl \
         stats); then `conntrack -F` in the kernel setup's host namespace and `netctl \
         conntrack flush` for the netctl setup: every measurement starts from empty tables"
            .into(),
        "machine_busy: share of all CPUs busy during the sample, ours included (2 CPUs, \
         shared with other work: see the spread columns and the paired ratios)"
            .into(),
    ];
    let report = Report {
        bench: "nat",
        kernel: kernel_release(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        iperf3,
        iptables: json!({
            "backend": ipt.backend,
            "version": ipt.version,
            "restore": ipt.restore,
            "save": ipt.save,
        }),
        conntrack_tool,
        runs: a.runs,
        duration_s: a.duration,
        clients: a.clients,
        pinned_cpus: pin,
        notes,
        setups: infos,
        ruleset,
        ruleset_from: a
            .ruleset
            .as_ref()
            .map_or("docker_rules".to_string(), |f| f.display().to_string()),
        samples,
        medians,
        ratios,
        checks_failed,
        targets: json!({
            "netctl_ahead_every_metric": ahead,
            "worst_netctl_over_kernel": finite(worst.1),
            "worst_metric": worst.0.key(),
        }),
        elapsed_s: t_start.elapsed().as_secs_f64(),
    };
    let path = results_path(a.json, "nat.json");
    super::finish_run(&path, &report, &links_before)?;
    if checks_failed > 0 {
        bail!(
            "{checks_failed} measurement(s) failed their checks (CHECK FAILED above; \
             samples[].check.problems in {})",
            path.display()
        );
    }
    Ok(())
}

/// One line of what the tables said, for the progress output.
fn summary(s: &Sample) -> String {
    let c = &s.check;
    let mut v = vec![format!(
        "nat rule +{}",
        c.nat_rule_packets.map_or("-".into(), |x| x.to_string())
    )];
    v.push(format!(
        "ct flows {} ({} translated, {} new port)",
        c.nat_conntrack.flows, c.nat_conntrack.translated, c.nat_conntrack.port_changed
    ));
    v.push(format!("table {}/{}", c.table_entries, c.table_max));
    if let Some(d) = &c.datapath {
        let get = |k: &str| d.get(k).copied().unwrap_or(0);
        v.push(format!(
            "redirect l2/l3/neigh +{}/+{}/+{}",
            get("redirect_l2"),
            get("redirect_l3"),
            get("redirect_neigh")
        ));
        v.push(format!(
            "rule flow cache hit/miss +{}/+{}",
            get("flow_hit"),
            get("flow_miss")
        ));
        if get("drop_nat") != 0 {
            v.push(format!("drop_nat +{}", get("drop_nat")));
        }
    }
    if let Some(n) = s.detail["slower_than_200ms"].as_u64().filter(|n| *n > 0) {
        v.push(format!("{n} connections took > 200 ms"));
    }
    if let Some(e) = s.detail["errors_total"].as_u64().filter(|e| *e > 0) {
        v.push(format!("{e} failed connections"));
    }
    v.join(", ")
}

// ---------------------------------------------------------------------------
// Building the setups

fn topology_toml(name: &str, side: Side) -> String {
    let (datapath, docker, publish) = match side {
        Side::Netctl => (
            "ebpf",
            "docker_rules = true\n",
            format!(
                "publish = [\"{CONN_PUBLISHED}:{CONN_PORT}/tcp\", \
                 \"{IPERF_PUBLISHED}:{IPERF_PORT}/tcp\"]\n"
            ),
        ),
        Side::Kernel => ("kernel", "", String::new()),
    };
    format!(
        "# generated by cargo xtask bench nat\n\
         name = \"{name}\"\nhost_netns = \"{name}-h\"\nip_forward = true\n\
         datapath = \"{datapath}\"\n{docker}\n\
         [uplink]\nname = \"{UPLINK_DEV}\"\naddress = \"{UPLINK}/24\"\n\
         outside_address = \"{OUTSIDE}/24\"\n\n\
         [[bridge]]\nname = \"docker0\"\naddresses = [\"172.17.0.1/16\"]\n\n\
         [[container]]\nname = \"c1\"\nbridge = \"docker0\"\naddresses = [\"{CONTAINER}/16\"]\n\
         {publish}"
    )
}

fn setup(side: Side, name: &str, scratch: &Path, guard: &mut Cleanup) -> Result<Env> {
    let file = scratch.join(format!("{name}.toml"));
    fs::write(&file, topology_toml(name, side))
        .with_context(|| format!("write {}", file.display()))?;
    guard.topology(name);
    run_netctl(&netctl_bin(), &["apply", &file.to_string_lossy()])?;
    let h = format!("{name}-h");
    Ok(Env {
        side,
        topology: name.to_string(),
        host: open_ns(&h)?,
        container: open_ns(&format!("{name}-c1"))?,
        outside: open_ns(&format!("{name}-outside"))?,
        host_ns: h,
        pin: None,
    })
}

/// Connectivity both ways, and the NAT each setup promises to do.
fn check_env(e: &Env, ipt: &Ipt) -> Result<SetupInfo> {
    ensure!(
        ping(&e.container, OUTSIDE),
        "{}: the container cannot ping {OUTSIDE} (outside)",
        e.side.key()
    );
    ensure!(
        ping(&e.outside, UPLINK),
        "{}: the outside namespace cannot ping {UPLINK} (uplink)",
        e.side.key()
    );
    let has_stats = netctl_stats(&netctl_bin(), &e.topology).is_some();
    let conntrack_max = match e.side {
        Side::Kernel => {
            ensure!(
                !has_stats,
                "the kernel-datapath topology {} has datapath counters",
                e.topology
            );
            let nat = ipt.save_in(&e.host, &e.host_ns, &["-t", "nat"])?;
            ensure!(
                nat.contains(MASQ_RULE) && nat.contains("-j DNAT"),
                "{} in {} shows no Docker nat rules:\n{nat}",
                ipt.save,
                e.host_ns
            );
            in_ns(&e.host, || sysctl_u64("net/netfilter/nf_conntrack_max"))?
        }
        Side::Netctl => {
            ensure!(
                has_stats,
                "{}: netctl stats unavailable — is the eBPF datapath attached?",
                e.topology
            );
            u64::from(netctl_common::MAP_CT_MAX)
        }
    };
    Ok(SetupInfo {
        side: e.side.key(),
        topology: e.topology.clone(),
        datapath: match e.side {
            Side::Kernel => "kernel",
            Side::Netctl => "ebpf",
        },
        host_netns: e.host_ns.clone(),
        container_netns: format!("{}-c1", e.topology),
        outside_netns: format!("{}-outside", e.topology),
        nat_by: match e.side {
            Side::Kernel => format!(
                "{} in {} (netctl rules save of the netctl setup), kernel conntrack",
                ipt.restore, e.host_ns
            ),
            Side::Netctl => "docker_rules = true, netctl's eBPF datapath and conntrack".into(),
        },
        conntrack_max,
        bridge_nf_call_iptables: in_ns(&e.host, || {
            Ok(sysctl_u64("net/bridge/bridge-nf-call-iptables").ok())
        })?,
    })
}

// ---------------------------------------------------------------------------
// One measurement, with its checks

#[allow(clippy::too_many_arguments)]
fn measure(
    e: &Env,
    ipt: &Ipt,
    m: Metric,
    dur: Duration,
    port: u16,
    clients: usize,
    run: usize,
    position: usize,
) -> Result<Sample> {
    // Where the flows go, and what the server must see as their source:
    // the uplink's address (masquerade), or the client's own (published
    // port: Docker keeps it).
    let (client, server, listen, dial, saw) = match m {
        Metric::ConnMasq | Metric::TcpMasq => (
            &e.container,
            &e.outside,
            SocketAddrV4::new(OUTSIDE, port),
            SocketAddrV4::new(OUTSIDE, port),
            UPLINK,
        ),
        Metric::ConnPublished => (
            &e.outside,
            &e.container,
            SocketAddrV4::new(CONTAINER, CONN_PORT),
            SocketAddrV4::new(UPLINK, CONN_PUBLISHED),
            OUTSIDE,
        ),
        Metric::TcpPublished => (
            &e.outside,
            &e.container,
            SocketAddrV4::new(CONTAINER, IPERF_PORT),
            SocketAddrV4::new(UPLINK, IPERF_PUBLISHED),
            OUTSIDE,
        ),
    };
    let spec = if m.masquerade() {
        FlowSpec {
            orig_src: CONTAINER,
            orig_dst: OUTSIDE,
            orig_dport: port,
            reply_src: OUTSIDE,
            reply_sport: port,
            reply_dst: UPLINK,
        }
    } else {
        FlowSpec {
            orig_src: OUTSIDE,
            orig_dst: UPLINK,
            orig_dport: dial.port(),
            reply_src: CONTAINER,
            reply_sport: listen.port(),
            reply_dst: OUTSIDE,
        }
    };
    let rule = if m.masquerade() {
        MASQ_RULE.to_string()
    } else {
        format!("--dport {} -j DNAT", dial.port())
    };

    let rule0 = nat_rule_packets(e, ipt, &rule)?;
    let kstat0 = in_ns(&e.host, kernel_ct_stats)?;
    let dp0 = (e.side == Side::Netctl)
        .then(|| datapath(&e.topology))
        .flatten();
    let cpu0 = super::cpu_times();
    let r = if m.conn() {
        conn_rate(client, server, listen, dial, clients, dur)
    } else {
        iperf_tcp(e, client, server, listen, dial, dur)
    };
    let cpu1 = super::cpu_times();
    let load = cpu0.zip(cpu1).map(|(x, y)| y.share_since(&x));

    let mut c = Check::default();
    let (value, detail, error, made) = match r {
        Ok(x) => (x.value, x.detail, None, x.connections),
        Err(err) => (f64::NAN, Value::Null, Some(format!("{err:#}")), 0),
    };
    if error.is_none() {
        // The server's view of its clients.
        let seen: Vec<Ipv4Addr> = detail["server_saw"]
            .as_array()
            .map(|v| v.iter().filter_map(|x| x.as_str()?.parse().ok()).collect())
            .unwrap_or_default();
        c.server_saw = Some(
            seen.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(" "),
        );
        if seen.is_empty() {
            c.problems.push("the server saw no client".into());
        } else if seen.iter().any(|x| *x != saw) {
            c.problems.push(format!(
                "the server saw clients from {}, expected only {saw}",
                c.server_saw.as_deref().unwrap_or("")
            ));
        }
        if made == 0 {
            c.problems.push("no connection was made".into());
        }
    }
    c.nat_rule_packets = match (rule0, nat_rule_packets(e, ipt, &rule)?) {
        (Some(b), Some(a)) => Some(a.saturating_sub(b)),
        _ => None,
    };

    // The kernel's conntrack in the host namespace.
    let (kentries, kflows) = in_ns(&e.host, || {
        Ok((
            sysctl_u64("net/netfilter/nf_conntrack_count")?,
            kernel_conntrack()?,
        ))
    })?;
    let kstat1 = in_ns(&e.host, kernel_ct_stats)?;
    c.kernel_host_entries = kentries;
    let kcount = count_flows(&kflows, &spec, m.masquerade());
    c.kernel_host_flows = kcount.flows;
    c.kernel_ct_stats = kstat1
        .iter()
        .map(|(k, v)| (k.clone(), *v - kstat0.get(k).copied().unwrap_or(0)))
        .filter(|(k, _)| k != "entries")
        .collect();
    match e.side {
        Side::Kernel => {
            c.nat_conntrack = kcount;
            c.table_entries = kentries;
            c.table_max = in_ns(&e.host, || sysctl_u64("net/netfilter/nf_conntrack_max"))?;
            for k in ["drop", "early_drop", "insert_failed"] {
                let n = c.kernel_ct_stats.get(k).copied().unwrap_or(0);
                if n > 0 {
                    c.problems
                        .push(format!("kernel conntrack {k} +{n}: the table filled"));
                    c.table_full = true;
                }
            }
            // The next measurement starts from an empty table.
            flush(e)?;
        }
        Side::Netctl => {
            if c.kernel_host_entries != 0 || c.kernel_host_flows != 0 {
                c.problems.push(format!(
                    "the kernel's conntrack in {} holds {} entries ({} of these flows): the \
                     kernel, not the datapath, tracked them",
                    e.host_ns, c.kernel_host_entries, c.kernel_host_flows
                ));
            }
            c.nat_conntrack = count_flows(&netctl_conntrack(&e.topology)?, &spec, m.masquerade());
            let dp1 = datapath(&e.topology);
            c.datapath = dp0.zip(dp1).map(|(b, a)| {
                a.iter()
                    .map(|(k, v)| (k.clone(), v - b.get(k).copied().unwrap_or(0)))
                    .collect()
            });
            match &c.datapath {
                None => c.problems.push("netctl stats unavailable".into()),
                Some(d) => {
                    let get = |k: &str| d.get(k).copied().unwrap_or(0);
                    let redirected = get("port_redirected");
                    let rx = get("port_rx_packets");
                    let share = (rx > 0).then(|| redirected as f64 / rx as f64);
                    c.redirected_share = share;
                    if !share.is_some_and(|x| x >= MIN_REDIRECTED) {
                        c.problems.push(format!(
                            "the programs redirected {redirected} of the {rx} packets their ports \
                             received (< {:.0} %): not the datapath's work",
                            MIN_REDIRECTED * 100.0
                        ));
                    }
                    for k in ["drop_rule", "reject_rule"] {
                        if get(k) > 0 {
                            c.problems.push(format!("datapath {k} +{}", get(k)));
                        }
                    }
                }
            }
            // The next measurement starts from an empty table; the flush's
            // report is the table's size before it.
            let (conns, expired, nat) = flush(e)?.unwrap_or_default();
            c.table_entries = conns + expired;
            c.table_nat_tuples = Some(nat);
            c.table_max = u64::from(netctl_common::MAP_CT_MAX);
            if c.table_entries.max(nat) as f64 >= FULL_SHARE * c.table_max as f64 {
                c.table_full = true;
            }
        }
    }
    // One count per new connection (a SYN the datapath dropped and the
    // client sent again counts twice). Fewer means that some connections'
    // first packets were not taken for new ones and did not walk the nat
    // table: reported; a failure beyond 1 %, where it would no longer be
    // clear that the rule did the translation.
    let nat_drops = c.datapath.as_ref().map_or(0, |d| {
        u64::try_from(d.get("drop_nat").copied().unwrap_or(0)).unwrap_or(0)
    });
    c.connections = made;
    match c.nat_rule_packets {
        None => c.problems.push(format!("no nat rule with {rule:?}")),
        Some(n) if (n as f64) < 0.99 * made as f64 => c.problems.push(format!(
            "the nat rule ({rule}) counted {n} packets, but {made} connections were made"
        )),
        Some(n) if n < made => {
            c.nat_rule_shortfall = made - n;
            let open: usize = c
                .nat_conntrack
                .states
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "TIME_WAIT" | "CLOSE"))
                .map(|(_, v)| v)
                .sum();
            eprintln!(
                "  NOTE: {} nat rule counted {n} new connections of {made} made; the table \
                 holds {open} of these flows in a state other than TIME_WAIT/CLOSE",
                e.side.key()
            );
        }
        _ => {}
    }
    if nat_drops > 0 {
        eprintln!(
            "  NOTE: netctl dropped {nat_drops} packet(s) for want of a free NAT source port \
             (drop_nat)"
        );
    }
    if error.is_none() {
        let f = &c.nat_conntrack;
        if f.flows == 0 {
            c.problems.push(format!(
                "the {} conntrack holds none of the measurement's flows",
                e.side.key()
            ));
        } else if f.translated != f.flows {
            c.problems.push(format!(
                "{} of {} flows in the {} conntrack lack the translation",
                f.flows - f.translated,
                f.flows,
                e.side.key()
            ));
        }
    }
    if e.side == Side::Kernel && c.table_entries as f64 >= FULL_SHARE * c.table_max as f64 {
        c.table_full = true;
    }
    if c.table_full {
        eprintln!(
            "  NOTE: {} conntrack table (nearly) full: {} entries{} of {}",
            e.side.key(),
            c.table_entries,
            c.table_nat_tuples
                .map(|n| format!(", {n} NAT reply tuples"))
                .unwrap_or_default(),
            c.table_max
        );
    }
    c.ok = c.problems.is_empty();
    Ok(Sample {
        run,
        position,
        side: e.side.key(),
        metric: m.key(),
        value,
        error,
        machine_busy: load.map(|l| l.0),
        machine_steal: load.map(|l| l.1),
        detail,
        check: c,
    })
}

/// What a measurement returns: its value, the detail for the JSON (with
/// `server_saw`: the distinct client addresses the server saw), and how
/// many connections it made (through the nat table).
struct Measured {
    value: f64,
    detail: Value,
    connections: u64,
}

fn iperf_tcp(
    e: &Env,
    client: &File,
    server: &File,
    listen: SocketAddrV4,
    dial: SocketAddrV4,
    dur: Duration,
) -> Result<Measured> {
    let ends = iperf::Ends {
        client,
        server,
        server_addr: *listen.ip(),
        pin: e.pin,
        dial: Some(dial),
    };
    let v = iperf::client(
        &ends,
        listen.port(),
        dur,
        &["-P", "1", "--get-server-output"],
    )?;
    let (bps, mut detail) = iperf::tcp_result(&v)?;
    // The server's own report (text: the server runs without -J):
    // "Accepted connection from ADDR, port P" (control) and "local … port
    // P connected to ADDR port P" (data).
    let text = v["server_output_text"].as_str().unwrap_or("");
    detail["server_saw"] = json!(server_peers(text));
    detail["server_output_text"] = json!(text);
    Ok(Measured {
        value: bps,
        detail,
        // The control connection and one data connection.
        connections: 2,
    })
}

/// The distinct client addresses in iperf3's server report.
fn server_peers(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text
        .lines()
        .filter_map(|l| {
            let rest = l
                .split("Accepted connection from ")
                .nth(1)
                .or_else(|| l.split(" connected to ").nth(1))?;
            let a = rest.split([',', ' ']).next()?;
            a.parse::<Ipv4Addr>().ok().map(|a| a.to_string())
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

// ---------------------------------------------------------------------------
// New connections per second

/// What the server threads saw.
#[derive(Default)]
struct Served {
    connections: u64,
    errors: BTreeMap<String, u64>,
    /// Distinct client addresses.
    peers: BTreeMap<Ipv4Addr, u64>,
    /// Connections whose source port arrived as the client sent it, or
    /// changed (a NAT reallocated it).
    port_kept: u64,
    port_changed: u64,
}

/// What one client thread did.
#[derive(Default)]
struct Client {
    /// Connections completed inside the timed window, and their durations.
    counted: u64,
    lat_us: Vec<u32>,
    /// All completed (warm-up and late ones included).
    completed: u64,
    errors: BTreeMap<String, u64>,
}

fn bump(m: &mut BTreeMap<String, u64>, k: String) {
    *m.entry(k).or_insert(0) += 1;
}

/// Sets SO_RCVTIMEO, which accept(2) honours too: the server threads wake
/// up to see whether they should stop.
fn set_accept_timeout(l: &TcpListener, t: Duration) -> Result<()> {
    let tv = libc::timeval {
        tv_sec: t.as_secs() as libc::time_t,
        tv_usec: t.subsec_micros() as libc::suseconds_t,
    };
    // SAFETY: setsockopt on an open socket with a timeval of the right size.
    let rc = unsafe {
        libc::setsockopt(
            l.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("setsockopt SO_RCVTIMEO");
    }
    Ok(())
}

/// The server's side of one connection: read the request (the client's own
/// port in its first two bytes), answer, close first.
fn serve(mut s: TcpStream, peer: SocketAddr, served: &mut Served) {
    let r = (|| -> std::io::Result<u16> {
        s.set_read_timeout(Some(IO_TIMEOUT))?;
        let mut req = [0u8; REQ_LEN];
        s.read_exact(&mut req)?;
        s.write_all(&[0x5a; RESP_LEN])?;
        Ok(u16::from_be_bytes([req[0], req[1]]))
    })();
    drop(s);
    match r {
        Ok(sport) => {
            served.connections += 1;
            if let SocketAddr::V4(p) = peer {
                *served.peers.entry(*p.ip()).or_insert(0) += 1;
            }
            if peer.port() == sport {
                served.port_kept += 1;
            } else {
                served.port_changed += 1;
            }
        }
        Err(e) => bump(&mut served.errors, format!("serve: {:?}", e.kind())),
    }
}

/// The client's side of one connection.
fn connect_once(dial: SocketAddr) -> std::result::Result<(), String> {
    let mut s = TcpStream::connect_timeout(&dial, IO_TIMEOUT)
        .map_err(|e| format!("connect: {:?}", e.kind()))?;
    let io = |e: std::io::Error| format!("exchange: {:?}", e.kind());
    let sport = s.local_addr().map_err(io)?.port();
    s.set_nodelay(true).map_err(io)?;
    s.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
    let mut req = [0u8; REQ_LEN];
    req[..2].copy_from_slice(&sport.to_be_bytes());
    s.write_all(&req).map_err(io)?;
    // The answer, then EOF: the server closes first.
    let mut buf = [0u8; RESP_LEN + 1];
    let mut got = 0;
    loop {
        let n = s.read(&mut buf[got.min(RESP_LEN)..]).map_err(io)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    if got != RESP_LEN {
        return Err(format!("exchange: {got} bytes answered, not {RESP_LEN}"));
    }
    Ok(())
}

/// New connections per second from `clients` threads in `client_ns` to
/// `dial`, served by as many threads listening on `listen` in `server_ns`.
fn conn_rate(
    client_ns: &File,
    server_ns: &File,
    listen: SocketAddrV4,
    dial: SocketAddrV4,
    clients: usize,
    dur: Duration,
) -> Result<Measured> {
    let listener = in_ns(server_ns, || {
        let l = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
        set_accept_timeout(&l, Duration::from_millis(50))?;
        Ok(l)
    })?;
    let stop = AtomicBool::new(false);
    let served = Mutex::new(Served::default());
    let start = Barrier::new(clients);
    let t0 = Mutex::new(None::<Instant>);
    let running = AtomicU64::new(0);
    let dial = SocketAddr::V4(dial);
    let results: Vec<Result<Client>> = std::thread::scope(|sc| {
        let mut servers = Vec::new();
        for _ in 0..clients {
            servers.push(sc.spawn(|| {
                let mut mine = Served::default();
                loop {
                    match listener.accept() {
                        Ok((s, peer)) => serve(s, peer, &mut mine),
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) =>
                        {
                            if stop.load(Ordering::SeqCst) {
                                break;
                            }
                        }
                        Err(e) => bump(&mut mine.errors, format!("accept: {:?}", e.kind())),
                    }
                }
                let mut all = served.lock().unwrap();
                all.connections += mine.connections;
                all.port_kept += mine.port_kept;
                all.port_changed += mine.port_changed;
                for (k, v) in mine.errors {
                    *all.errors.entry(k).or_insert(0) += v;
                }
                for (k, v) in mine.peers {
                    *all.peers.entry(k).or_insert(0) += v;
                }
            }));
        }
        let mut cs = Vec::new();
        for _ in 0..clients {
            cs.push(sc.spawn(|| -> Result<Client> {
                enter(client_ns)?;
                running.fetch_add(1, Ordering::SeqCst);
                start.wait();
                let begin = {
                    let mut t = t0.lock().unwrap();
                    *t.get_or_insert_with(|| Instant::now() + WARMUP)
                };
                let end = begin + dur;
                let mut me = Client::default();
                loop {
                    let t = Instant::now();
                    if t >= end {
                        break;
                    }
                    match connect_once(dial) {
                        Ok(()) => {
                            me.completed += 1;
                            let done = Instant::now();
                            if t >= begin && done < end {
                                me.counted += 1;
                                me.lat_us
                                    .push(done.duration_since(t).as_micros().min(u32::MAX as u128)
                                        as u32);
                            }
                        }
                        Err(k) => {
                            bump(&mut me.errors, k);
                            // Do not spin on an error that repeats at once.
                            std::thread::sleep(Duration::from_millis(1));
                        }
                    }
                }
                Ok(me)
            }));
        }
        let r: Vec<Result<Client>> = cs
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("a client thread panicked")))
            })
            .collect();
        stop.store(true, Ordering::SeqCst);
        for h in servers {
            let _ = h.join();
        }
        r
    });
    let mut all = Client::default();
    for r in results {
        let c = r?;
        all.counted += c.counted;
        all.completed += c.completed;
        all.lat_us.extend(c.lat_us);
        for (k, v) in c.errors {
            *all.errors.entry(k).or_insert(0) += v;
        }
    }
    let served = served.into_inner().unwrap();
    ensure!(
        all.counted > 0,
        "no connection completed in the timed window: {:?}",
        all.errors
    );
    let mut lat = all.lat_us.clone();
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
    let slow = lat
        .iter()
        .filter(|&&x| u128::from(x) >= SLOW.as_micros())
        .count();
    let errors_total: u64 = all.errors.values().sum();
    Ok(Measured {
        value: all.counted as f64 / dur.as_secs_f64(),
        detail: json!({
            "clients": clients,
            "counted": all.counted,
            "completed_incl_warmup": all.completed,
            "errors_total": errors_total,
            "errors": all.errors,
            "latency_us": { "p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "max": pct(1.0) },
            "slower_than_200ms": slow,
            "served": served.connections,
            "server_errors": served.errors,
            "server_saw": served.peers.keys().map(|x| x.to_string()).collect::<Vec<_>>(),
            "server_saw_counts": served.peers.iter().map(|(k, v)| (k.to_string(), *v)).collect::<BTreeMap<_, _>>(),
            "source_port_kept": served.port_kept,
            "source_port_changed": served.port_changed,
        }),
        connections: all.completed,
    })
}

// ---------------------------------------------------------------------------
// Tables and counters

/// The packet counter of the first nat rule containing `needle`, from
/// `iptables-save -c -t nat` (kernel) or `netctl rules save -c -t nat`.
fn nat_rule_packets(e: &Env, ipt: &Ipt, needle: &str) -> Result<Option<u64>> {
    let text = match e.side {
        Side::Kernel => ipt.save_in(&e.host, &e.host_ns, &["-c", "-t", "nat"])?,
        Side::Netctl => run_netctl(
            &netctl_bin(),
            &[
                "rules",
                "--topology",
                &e.topology,
                "save",
                "-c",
                "-t",
                "nat",
            ],
        )?,
    };
    Ok(rule_packets(&text, needle))
}

fn rule_packets(text: &str, needle: &str) -> Option<u64> {
    let l = text
        .lines()
        .find(|l| l.starts_with('[') && l.contains(needle))?;
    let (c, _) = l.strip_prefix('[')?.split_once(']')?;
    c.split_once(':')?.0.parse().ok()
}

/// `/proc/sys/net/NAME` of the calling thread's namespace.
fn sysctl_u64(name: &str) -> Result<u64> {
    let p = format!("/proc/sys/{name}");
    let s = fs::read_to_string(&p).with_context(|| format!("read {p}"))?;
    s.trim().parse().with_context(|| format!("{p}: {s:?}"))
}

/// /proc/net/stat/nf_conntrack of the calling thread's namespace, summed
/// over the CPUs (`entries` is the same on every line).
fn kernel_ct_stats() -> Result<BTreeMap<String, i64>> {
    let p = "/proc/thread-self/net/stat/nf_conntrack";
    let s = fs::read_to_string(p).with_context(|| format!("read {p}"))?;
    Ok(parse_ct_stats(&s))
}

fn parse_ct_stats(s: &str) -> BTreeMap<String, i64> {
    let mut lines = s.lines();
    let names: Vec<&str> = lines
        .next()
        .map(|h| h.split_whitespace().collect())
        .unwrap_or_default();
    let mut sum: BTreeMap<String, i64> = BTreeMap::new();
    for l in lines {
        for (n, v) in names.iter().zip(l.split_whitespace()) {
            let v = i64::from_str_radix(v, 16).unwrap_or(0);
            let e = sum.entry(n.to_string()).or_insert(0);
            if *n == "entries" {
                *e = v;
            } else {
                *e += v;
            }
        }
    }
    sum
}

/// The kernel's conntrack table of the calling thread's namespace.
fn kernel_conntrack() -> Result<Vec<CtView>> {
    let p = "/proc/thread-self/net/nf_conntrack";
    let s = fs::read_to_string(p).with_context(|| format!("read {p}"))?;
    Ok(s.lines().filter_map(parse_kernel_ct).collect())
}

/// `ipv4 2 tcp 6 117 TIME_WAIT src=… dst=… sport=… dport=… src=… …`.
fn parse_kernel_ct(l: &str) -> Option<CtView> {
    let w: Vec<&str> = l.split_whitespace().collect();
    let proto = w.get(2)?.to_string();
    let state = w.get(5).filter(|s| !s.contains('=')).map(|s| s.to_string());
    let mut addrs: Vec<Ipv4Addr> = Vec::new();
    let mut ports: Vec<u16> = Vec::new();
    for x in &w {
        if let Some(v) = x.strip_prefix("src=").or_else(|| x.strip_prefix("dst=")) {
            addrs.push(v.parse().ok()?);
        } else if let Some(v) = x
            .strip_prefix("sport=")
            .or_else(|| x.strip_prefix("dport="))
        {
            ports.push(v.parse().ok()?);
        }
    }
    if addrs.len() < 4 || ports.len() < 4 {
        return None;
    }
    Some(CtView {
        proto,
        state,
        orig: (addrs[0], addrs[1], ports[0], ports[1]),
        reply: (addrs[2], addrs[3], ports[2], ports[3]),
    })
}

/// netctl's conntrack table (`netctl conntrack list --json`).
fn netctl_conntrack(topology: &str) -> Result<Vec<CtView>> {
    let out = run_netctl(
        &netctl_bin(),
        &["conntrack", "list", "--topology", topology, "--json"],
    )?;
    let v: Value = serde_json::from_str(&out).context("netctl conntrack list --json")?;
    let tuple = |t: &Value| -> Option<(Ipv4Addr, Ipv4Addr, u16, u16)> {
        Some((
            t["src"].as_str()?.parse().ok()?,
            t["dst"].as_str()?.parse().ok()?,
            u16::try_from(t["sport"].as_u64()?).ok()?,
            u16::try_from(t["dport"].as_u64()?).ok()?,
        ))
    };
    Ok(v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|c| {
                    Some(CtView {
                        proto: c["proto"].as_str()?.to_string(),
                        state: c["state"].as_str().map(String::from),
                        orig: tuple(&c["original"])?,
                        reply: tuple(&c["reply"])?,
                    })
                })
                .collect()
        })
        .unwrap_or_default())
}

fn count_flows(table: &[CtView], spec: &FlowSpec, masquerade: bool) -> FlowCount {
    let mut f = FlowCount::default();
    for c in table {
        let (os, od, osp, odp) = c.orig;
        if c.proto != "tcp" || os != spec.orig_src || od != spec.orig_dst || odp != spec.orig_dport
        {
            continue;
        }
        f.flows += 1;
        let (rs, rd, rsp, rdp) = c.reply;
        if rs == spec.reply_src && rsp == spec.reply_sport && rd == spec.reply_dst {
            f.translated += 1;
        }
        if masquerade && rdp != osp {
            f.port_changed += 1;
        }
        *f.states
            .entry(c.state.clone().unwrap_or_else(|| "-".into()))
            .or_insert(0) += 1;
    }
    f
}

/// Empties the conntrack table that does the setup's NAT: `conntrack -F`
/// in the kernel setup's host namespace, `netctl conntrack flush` for the
/// netctl setup, whose report — (connections, timed-out entries, NAT
/// reply tuples) deleted — is returned.
fn flush(e: &Env) -> Result<Option<(u64, u64, u64)>> {
    match e.side {
        Side::Kernel => {
            let o = ns_command(&e.host, "conntrack")
                .arg("-F")
                .output()
                .context("cannot start conntrack")?;
            ensure!(o.status.success(), "{}", failed("conntrack -F", &o));
            Ok(None)
        }
        Side::Netctl => {
            let out = run_netctl(
                &netctl_bin(),
                &["conntrack", "flush", "--topology", &e.topology],
            )?;
            parse_flush(&out)
                .map(Some)
                .ok_or_else(|| anyhow!("cannot read netctl conntrack flush's report: {out}"))
        }
    }
}

/// `topology T: deleted N connection(s) (M more timed out, K NAT reply
/// tuple(s))` → (N, M, K).
fn parse_flush(s: &str) -> Option<(u64, u64, u64)> {
    let num_before = |after: &str| -> Option<u64> {
        s.split(after)
            .nth(1)?
            .split_whitespace()
            .next()?
            .trim_start_matches('(')
            .parse()
            .ok()
    };
    Some((
        num_before("deleted ")?,
        num_before("connection(s) ")?,
        num_before("timed out, ")?,
    ))
}

/// `netctl stats` decisions, with the ports' received and redirected
/// packets summed (as `port_rx_packets`, `port_redirected`).
fn datapath(topology: &str) -> Option<BTreeMap<String, i64>> {
    let (v, mut d) = netctl_stats(&netctl_bin(), topology)?;
    for (k, f) in [
        ("port_rx_packets", "rx_packets"),
        ("port_redirected", "redirected"),
    ] {
        let sum = v["ports"]
            .as_array()
            .map(|ps| ps.iter().map(|p| p[f].as_i64().unwrap_or(0)).sum())
            .unwrap_or(0);
        d.insert(k.to_string(), sum);
    }
    for k in ["hit", "miss"] {
        let n = v["flow_cache"][k].as_i64().unwrap_or(0);
        d.insert(format!("flow_{k}"), n);
    }
    Some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_kernel_conntrack_lines() {
        let l = "ipv4     2 tcp      6 117 TIME_WAIT src=172.17.0.2 dst=192.0.2.1 sport=40000 \
                 dport=20001 src=192.0.2.1 dst=192.0.2.2 sport=20001 dport=40002 [ASSURED] \
                 mark=0 zone=0 use=2";
        let c = parse_kernel_ct(l).unwrap();
        assert_eq!(c.proto, "tcp");
        assert_eq!(c.state.as_deref(), Some("TIME_WAIT"));
        let spec = FlowSpec {
            orig_src: CONTAINER,
            orig_dst: OUTSIDE,
            orig_dport: 20001,
            reply_src: OUTSIDE,
            reply_sport: 20001,
            reply_dst: UPLINK,
        };
        let f = count_flows(&[c], &spec, true);
        assert_eq!((f.flows, f.translated, f.port_changed), (1, 1, 1));
        assert_eq!(f.states["TIME_WAIT"], 1);
    }

    #[test]
    fn reads_counters_and_reports() {
        let t = "*nat\n:PREROUTING ACCEPT [0:0]\n\
                 [12:720] -A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE\n\
                 [3:180] -A DOCKER -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80\n";
        assert_eq!(rule_packets(t, MASQ_RULE), Some(12));
        assert_eq!(rule_packets(t, "--dport 8080 -j DNAT"), Some(3));
        assert_eq!(rule_packets(t, "--dport 8081 -j DNAT"), None);
        assert_eq!(
            parse_flush(
                "topology bn1-e: deleted 10 connection(s) (2 more timed out, 7 NAT reply tuple(s))"
            ),
            Some((10, 2, 7))
        );
        let t = "Accepted connection from 192.0.2.2, port 36290\n[  5] local 192.0.2.1 port \
                 20001 connected to 192.0.2.2 port 36302\n[ ID] Interval\n";
        assert_eq!(server_peers(t), vec!["192.0.2.2".to_string()]);
        let s = "entries clashres found\n0000000a 00000001 00000002\n0000000a 00000003 00000000\n";
        let m = parse_ct_stats(s);
        assert_eq!((m["entries"], m["clashres"], m["found"]), (10, 4, 2));
    }
}

//! `cargo xtask bench datapath`: what the eBPF fast path buys between two
//! containers, against the limit (a plain veth pair) and the kernel bridge.
//!
//! Four setups, all built once at the start in namespaces of their own
//! (names `bd<pid>-…`), client in one namespace, server in the other:
//!
//! * (a) direct veth — `<p>d-a` 10.77.0.1/24 ⟷ `<p>d-b` 10.77.0.2/24;
//! * (b) kernel bridge — topology `<p>k`, `datapath = "kernel"`, bridge br0
//!   10.78.0.1/24 in `<p>k-h`, containers a 10.78.0.2 and b 10.78.0.3;
//! * (c) netctl fast path — the same topology as `<p>e` with
//!   `datapath = "ebpf"`: TC programs `bpf_redirect_peer` between the ports;
//! * (d) fast path + XDP — `<p>x`, as (c) plus `netctl datapath xdp on`
//!   (a pass-through XDP program on the host-side veth ends).
//!
//! Metrics: TCP throughput with iperf3 (1 and 4 streams), UDP 64-byte
//! packets per second received (iperf3 `-u -l 64 -b 0`), and 1-byte TCP
//! request/response transactions per second on one connection (client and
//! server threads here, each entering its namespace with `setns`). Each
//! repetition measures every metric on every setup, in the order a, c, b, d
//! and the next one in reverse (see `run_order`); the tables show medians,
//! and the medians of the ratios within a repetition (paired), by which the
//! targets are judged.
//! For (b), (c) and (d) the datapath's counters (`netctl stats`) are read
//! around every measurement to prove which path carried the traffic.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use serde::Serialize;
use serde_json::{Value, json};

use super::iperf::{self, READY_TIMEOUT, UDP_LEN};
use super::ns::{enter, open_ns, pin_thread};
use super::{
    Cleanup, check_interrupted, finite, kernel_release, median, median_ci95, nan_low, netctl_bin,
    netctl_stats, print_table, results_path, root_links, run_netctl, show_ratio, show_ratio_ci,
    two_cpus, yes_no,
};

/// Round trips before the timed part of the request/response test.
const RR_WARMUP: Duration = Duration::from_millis(200);
/// iperf3 ports: a fresh one per measurement.
const FIRST_PORT: u16 = 20000;
/// The fast path counts as used when at least this share of the packets its
/// ports received was redirected by the programs.
const MIN_REDIRECTED: f64 = 0.9;

#[derive(Clone, Copy, PartialEq, Eq)]
enum SetupId {
    Direct,
    Kernel,
    Ebpf,
    EbpfXdp,
}

const SETUPS: [SetupId; 4] = [
    SetupId::Direct,
    SetupId::Kernel,
    SetupId::Ebpf,
    SetupId::EbpfXdp,
];

/// The setups' order in repetition `rep`: a, c, b, d, then reversed. (c)
/// runs right next to (a) and to (b) every time, so their paired ratios
/// compare measurements seconds apart, and over two repetitions each of a
/// pair runs first once, which cancels a steady drift.
fn run_order(rep: usize) -> [SetupId; 4] {
    let order = [
        SetupId::Direct,
        SetupId::Ebpf,
        SetupId::Kernel,
        SetupId::EbpfXdp,
    ];
    if rep.is_multiple_of(2) {
        order
    } else {
        let mut r = order;
        r.reverse();
        r
    }
}

impl SetupId {
    fn key(self) -> &'static str {
        match self {
            SetupId::Direct => "direct_veth",
            SetupId::Kernel => "kernel_bridge",
            SetupId::Ebpf => "netctl",
            SetupId::EbpfXdp => "netctl_xdp",
        }
    }
    fn label(self) -> &'static str {
        match self {
            SetupId::Direct => "direct veth (a)",
            SetupId::Kernel => "kernel bridge (b)",
            SetupId::Ebpf => "netctl (c)",
            SetupId::EbpfXdp => "netctl+XDP (d)",
        }
    }
    fn idx(self) -> usize {
        SETUPS.iter().position(|s| *s == self).unwrap()
    }
}

/// What `--metrics` names (`tcp1`, `tcp4`, `udp64`, `rr`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Metric {
    Tcp1,
    Tcp4,
    Udp64,
    Rr,
}

const METRICS: [Metric; 4] = [Metric::Tcp1, Metric::Tcp4, Metric::Udp64, Metric::Rr];

impl Metric {
    fn key(self) -> &'static str {
        match self {
            Metric::Tcp1 => "tcp_1_stream_bps",
            Metric::Tcp4 => "tcp_4_streams_bps",
            Metric::Udp64 => "udp_64b_rx_pps",
            Metric::Rr => "tcp_rr_1b_tps",
        }
    }
    fn label(self) -> &'static str {
        match self {
            Metric::Tcp1 => "TCP 1 stream (Gbit/s)",
            Metric::Tcp4 => "TCP 4 streams (Gbit/s)",
            Metric::Udp64 => "UDP 64 B rx (kpps)",
            Metric::Rr => "TCP RR 1 B (trans/s)",
        }
    }
    fn show(self, v: f64) -> String {
        if !v.is_finite() {
            return "-".into();
        }
        match self {
            Metric::Tcp1 | Metric::Tcp4 => format!("{:.2}", v / 1e9),
            Metric::Udp64 => format!("{:.1}", v / 1e3),
            Metric::Rr => format!("{v:.0}"),
        }
    }
    fn idx(self) -> usize {
        METRICS.iter().position(|m| *m == self).unwrap()
    }
    /// `want` in the benchmark's own order, each once.
    fn in_order(want: &[Metric]) -> Vec<Metric> {
        METRICS.into_iter().filter(|m| want.contains(m)).collect()
    }
}

/// One setup, built: where the client and server run, and what to ask
/// `netctl stats` about.
struct Env {
    id: SetupId,
    client_ns: String,
    server_ns: String,
    client: File,
    server: File,
    server_addr: Ipv4Addr,
    topology: Option<String>,
    host_ns: Option<String>,
    /// CPUs for the client and the server, or None to let the scheduler
    /// place them.
    pin: Option<(usize, usize)>,
}

impl Env {
    fn iperf(&self) -> iperf::Ends<'_> {
        iperf::Ends {
            client: &self.client,
            server: &self.server,
            server_addr: self.server_addr,
            pin: self.pin,
            dial: None,
        }
    }
}

#[derive(Serialize)]
struct SetupInfo {
    key: &'static str,
    label: &'static str,
    client_netns: String,
    server_netns: String,
    server_addr: String,
    topology: Option<String>,
    host_netns: Option<String>,
    xdp_ports: usize,
    stats_available: bool,
}

#[derive(Serialize, Clone, Default)]
struct Counters {
    decisions: BTreeMap<String, i64>,
    port_rx_packets: i64,
    port_redirected: i64,
    port_passed: i64,
}

#[derive(Serialize)]
struct Sample {
    run: usize,
    /// Position of the setup in this repetition's order (0 = first).
    position: usize,
    setup: &'static str,
    metric: &'static str,
    value: f64,
    error: Option<String>,
    /// Share of the machine's CPU time that was busy during the measurement
    /// (ours included: client and server use up to two CPUs), and stolen.
    machine_busy: Option<f64>,
    machine_steal: Option<f64>,
    detail: Value,
    /// Datapath counters, after minus before the measurement (None: the
    /// setup has no datapath, or `netctl stats` failed).
    datapath: Option<Counters>,
}

#[derive(Serialize)]
struct FastPath {
    setup: &'static str,
    stats_available: bool,
    measurements: usize,
    with_redirect: usize,
    redirect_l2_total: i64,
    redirect_l2_min: Option<i64>,
    redirected_share: Option<f64>,
    pass_totals: BTreeMap<String, i64>,
    ok: bool,
}

/// A confidence interval, (low, high).
type Interval = (f64, f64);

#[derive(Serialize)]
struct Report {
    bench: &'static str,
    kernel: String,
    cpus: usize,
    iperf3: String,
    runs: usize,
    duration_s: u64,
    /// The metrics measured (`--metrics`); the targets are judged on these.
    metrics: Vec<&'static str>,
    /// CPUs the client and the server were pinned to (null: not pinned).
    pinned_cpus: Option<(usize, usize)>,
    notes: Vec<String>,
    setups: Vec<SetupInfo>,
    samples: Vec<Sample>,
    /// metric → setup → median.
    medians: BTreeMap<&'static str, BTreeMap<&'static str, f64>>,
    /// metric → {c_over_a, c_over_b, d_over_c}: ratios of the medians, and
    /// the same with `_paired`: medians of the per-repetition ratios.
    ratios: BTreeMap<&'static str, BTreeMap<&'static str, f64>>,
    /// metric → paired ratio → 95% confidence interval of its median (null
    /// below 6 repetitions).
    ratio_cis: BTreeMap<&'static str, BTreeMap<&'static str, Option<Interval>>>,
    fast_path: Vec<FastPath>,
    targets: Value,
}

pub fn run(
    runs: usize,
    duration: u64,
    metrics: &[Metric],
    no_pin: bool,
    json: Option<PathBuf>,
) -> Result<()> {
    ensure!(runs >= 1, "--runs must be at least 1");
    let metrics = Metric::in_order(metrics);
    ensure!(!metrics.is_empty(), "--metrics: name at least one");
    ensure!(duration >= 1, "--duration must be at least 1 second");
    ensure!(
        netctl_bin().is_file(),
        "{} is missing",
        netctl_bin().display()
    );
    let iperf3 = iperf::version()?;

    let super::Run {
        prefix,
        links_before,
        mut guard,
        scratch,
    } = super::start_run("bd", "datapath")?;

    eprintln!("==> building the four setups ({prefix}…)");
    let mut envs = vec![
        setup_direct(&prefix)?,
        setup_topology(SetupId::Kernel, &format!("{prefix}k"), &scratch, &mut guard)?,
        setup_topology(SetupId::Ebpf, &format!("{prefix}e"), &scratch, &mut guard)?,
        setup_topology(
            SetupId::EbpfXdp,
            &format!("{prefix}x"),
            &scratch,
            &mut guard,
        )?,
    ];
    let pin = if no_pin { None } else { two_cpus() };
    for e in &mut envs {
        e.pin = pin;
    }
    match pin {
        Some((c, s)) => eprintln!(
            "    iperf3 client on CPU {c}, server on CPU {s}; RR both on CPU {c} (--no-pin: unpinned)"
        ),
        None => eprintln!("    client and server not pinned"),
    }
    let mut infos = Vec::new();
    for e in &envs {
        check_interrupted()?;
        infos.push(check_env(e)?);
    }
    ensure!(
        root_links() == links_before,
        "the root namespace's links changed while building the setups"
    );

    let total = runs * metrics.len() * SETUPS.len();
    eprintln!(
        "==> {total} measurements of {duration} s (~{} min)",
        (total as u64 * (duration + 1)).div_ceil(60)
    );
    let dur = Duration::from_secs(duration);
    let mut port = FIRST_PORT;
    let mut samples = Vec::new();
    for rep in 0..runs {
        let order = run_order(rep);
        for &m in &metrics {
            for (position, &id) in order.iter().enumerate() {
                check_interrupted()?;
                let env = &envs[id.idx()];
                port = if port >= 60000 { FIRST_PORT } else { port + 1 };
                let before = env.topology.as_deref().and_then(stats);
                let cpu0 = super::cpu_times();
                let r = measure(env, m, dur, port);
                let cpu1 = super::cpu_times();
                let after = env.topology.as_deref().and_then(stats);
                let load = cpu0.zip(cpu1).map(|(x, y)| y.share_since(&x));
                let datapath = before.zip(after).map(|(b, a)| a.minus(&b));
                let (value, detail, error) = match r {
                    Ok((v, d)) => (v, d, None),
                    Err(e) => {
                        eprintln!("  WARNING: {} {}: {e:#}", id.label(), m.label());
                        (f64::NAN, Value::Null, Some(format!("{e:#}")))
                    }
                };
                eprintln!(
                    "  run {}/{runs} {:<22} {:<18} {:>10}{}",
                    rep + 1,
                    m.label(),
                    id.label(),
                    m.show(value),
                    datapath
                        .as_ref()
                        .map(|c| format!(
                            "   redirect_l2 +{} pass +{}",
                            c.get("redirect_l2"),
                            c.pass_total()
                        ))
                        .unwrap_or_default()
                );
                samples.push(Sample {
                    run: rep,
                    position,
                    setup: id.key(),
                    metric: m.key(),
                    value,
                    error,
                    machine_busy: load.map(|l| l.0),
                    machine_steal: load.map(|l| l.1),
                    detail,
                    datapath,
                });
            }
        }
    }
    drop(envs);
    guard.clean()?;
    drop(guard);

    // Medians and ratios.
    let mut med = [[f64::NAN; 4]; 4]; // [metric][setup]
    for &m in &metrics {
        for s in SETUPS {
            let xs: Vec<f64> = samples
                .iter()
                .filter(|x| x.metric == m.key() && x.setup == s.key() && x.value.is_finite())
                .map(|x| x.value)
                .collect();
            med[m.idx()][s.idx()] = median(&xs);
        }
    }
    let (a, b, c, d) = (0, 1, 2, 3);
    let ratio = |m: usize, x: usize, y: usize| med[m][x] / med[m][y];
    // Medians of the ratios within each repetition: the setups of one
    // repetition ran close together, so these cancel slow drifts in the
    // machine's load.
    let mut paired = [[f64::NAN; 3]; 4]; // [metric][c/a, c/b, d/c]
    let mut paired_ci = [[None; 3]; 4];
    for &m in &metrics {
        let value = |run: usize, s: usize| {
            samples
                .iter()
                .find(|x| x.run == run && x.metric == m.key() && x.setup == SETUPS[s].key())
                .map_or(f64::NAN, |x| x.value)
        };
        for (k, (x, y)) in [(c, a), (c, b), (d, c)].into_iter().enumerate() {
            let rs: Vec<f64> = (0..runs)
                .map(|r| value(r, x) / value(r, y))
                .filter(|v| v.is_finite())
                .collect();
            paired[m.idx()][k] = median(&rs);
            paired_ci[m.idx()][k] = median_ci95(&rs);
        }
    }

    println!();
    println!(
        "Datapath between two namespaces, medians of {runs} run(s) x {duration} s \
         (server in b, client in a)"
    );
    let mut head = vec!["metric"];
    head.extend(SETUPS.iter().map(|s| s.label()));
    head.extend(["c/a", "c/b", "d/c"]);
    let rows: Vec<Vec<String>> = metrics
        .iter()
        .map(|&m| {
            let i = m.idx();
            let mut r = vec![m.label().to_string()];
            r.extend(SETUPS.iter().map(|s| m.show(med[i][s.idx()])));
            r.extend(
                [ratio(i, c, a), ratio(i, c, b), ratio(i, d, c)]
                    .iter()
                    .map(|x| show_ratio(*x)),
            );
            r
        })
        .collect();
    print_table(&head, &rows);
    println!();
    println!(
        "noise: spread over runs (max/min of the samples), and the median of the per-run \
         (paired) ratios"
    );
    let mut head2 = vec!["metric"];
    head2.extend(SETUPS.iter().map(|s| s.label()));
    head2.extend(["c/a paired", "c/b paired", "d/c paired"]);
    let rows2: Vec<Vec<String>> = metrics
        .iter()
        .map(|&m| {
            let mut r = vec![m.label().to_string()];
            r.extend(SETUPS.iter().map(|s| {
                let xs: Vec<f64> = samples
                    .iter()
                    .filter(|x| x.metric == m.key() && x.setup == s.key() && x.value.is_finite())
                    .map(|x| x.value)
                    .collect();
                let hi = xs.iter().copied().fold(f64::NAN, f64::max);
                let lo = xs.iter().copied().fold(f64::NAN, f64::min);
                show_ratio(hi / lo)
            }));
            let (p, ci) = (paired[m.idx()], paired_ci[m.idx()]);
            r.extend((0..3).map(|k| show_ratio_ci(p[k], ci[k])));
            r
        })
        .collect();
    print_table(&head2, &rows2);

    // Judged by the paired ratios: each compares measurements taken next to
    // each other, which the machine's slow swings in speed affect alike.
    let worst = |k: usize| {
        metrics
            .iter()
            .map(|&m| (m, paired[m.idx()][k], paired_ci[m.idx()][k]))
            .min_by(|p, q| nan_low(p.1).total_cmp(&nan_low(q.1)))
            .unwrap()
    };
    // Whether the lower end of every metric's interval meets the target;
    // None when there are too few repetitions for an interval.
    let clears = |k: usize, meets: fn(f64) -> bool| {
        metrics
            .iter()
            .map(|m| paired_ci[m.idx()][k].map(|(lo, _)| meets(lo)))
            .collect::<Option<Vec<bool>>>()
            .map(|v| v.iter().all(|&ok| ok))
    };
    let (wa_m, wa, wa_ci) = worst(0);
    let (wb_m, wb, wb_ci) = worst(1);
    let vs_direct = wa.is_finite() && wa >= 0.95;
    let vs_bridge = wb.is_finite() && wb > 1.0;
    let vs_direct_ci = clears(0, |lo| lo >= 0.95);
    let vs_bridge_ci = clears(1, |lo| lo > 1.0);
    // A subset of the metrics (--metrics) is judged as such.
    let every = if metrics.len() == METRICS.len() {
        "every metric"
    } else {
        "every measured metric"
    };
    println!();
    println!(
        "netctl >= 0.95x direct veth on {every} (paired medians): {} (worst {} on {}); \
         with 95% confidence: {}",
        yes_no(vs_direct),
        show_ratio_ci(wa, wa_ci),
        wa_m.label(),
        vs_direct_ci.map_or("- (6 or more runs give one)", yes_no)
    );
    println!(
        "netctl ahead of kernel bridge on {every} (paired medians): {} (worst {} on {}); \
         with 95% confidence: {}",
        yes_no(vs_bridge),
        show_ratio_ci(wb, wb_ci),
        wb_m.label(),
        vs_bridge_ci.map_or("- (6 or more runs give one)", yes_no)
    );

    // Which path carried the traffic.
    println!();
    let mut fast_path = Vec::new();
    for s in [SetupId::Kernel, SetupId::Ebpf, SetupId::EbpfXdp] {
        let fp = fast_path_summary(s, &samples, &infos[s.idx()]);
        println!("datapath check, {}: {}", s.label(), describe(&fp));
        fast_path.push(fp);
    }
    let failures = samples.iter().filter(|s| s.error.is_some()).count();
    if failures > 0 {
        println!("WARNING: {failures} measurement(s) failed (see the errors above / in the JSON)");
    }

    let notes = vec![
        "each repetition runs every metric on every setup, in the order a, c, b, d in even \
         repetitions and d, b, c, a in odd ones: (c) always runs right next to (a) and to (b), \
         and with an even number of repetitions each comes first as often as second"
            .to_string(),
        "paired ratios: the median over repetitions of the ratio within one repetition; \
         the targets are judged by them. The interval after one is a distribution-free 95% \
         confidence interval of that median (order statistics; none below 6 repetitions)"
            .into(),
        "TCP: iperf3 -t DUR -P N, end.sum_received.bits_per_second".into(),
        format!(
            "UDP: iperf3 -u -l {UDP_LEN} -b 0; received packets/s = (sum_received.packets - \
             sum_received.lost_packets) / sum_received.seconds (iperf3's `packets` is the \
             number sent, as seen by the receiver's sequence numbers)"
        ),
        "RR: one TCP connection, TCP_NODELAY, 1-byte write then 1-byte read, counted for DUR \
         after a 200 ms warm-up; client and server are threads of the bench that setns into \
         their namespaces"
            .into(),
        "datapath counters: `netctl stats -t TOPOLOGY --json` before and after each \
         measurement; (b) has no datapath so no counters"
            .into(),
        match pin {
            Some((c, s)) => format!(
                "iperf3 client pinned to CPU {c}, server to CPU {s} (-A {c},{s}); the RR \
                 client and server threads both on CPU {c} (sched_setaffinity): a \
                 ping-pong on one CPU measures the path, not cross-CPU wakeups; pinning \
                 keeps the scheduler's placement from making results bimodal"
            ),
            None => "client and server not pinned (--no-pin)".into(),
        },
        "machine_busy: share of all CPUs busy during the sample, ours included; other \
         load on the machine shows as samples far from the median"
            .into(),
    ];
    let mut medians = BTreeMap::new();
    let mut ratios = BTreeMap::new();
    let mut ratio_cis = BTreeMap::new();
    for &m in &metrics {
        let i = m.idx();
        medians.insert(
            m.key(),
            SETUPS.iter().map(|s| (s.key(), med[i][s.idx()])).collect(),
        );
        ratios.insert(
            m.key(),
            BTreeMap::from([
                ("c_over_a", ratio(i, c, a)),
                ("c_over_b", ratio(i, c, b)),
                ("d_over_c", ratio(i, d, c)),
                ("c_over_a_paired", paired[i][0]),
                ("c_over_b_paired", paired[i][1]),
                ("d_over_c_paired", paired[i][2]),
            ]),
        );
        ratio_cis.insert(
            m.key(),
            BTreeMap::from([
                ("c_over_a_paired", paired_ci[i][0]),
                ("c_over_b_paired", paired_ci[i][1]),
                ("d_over_c_paired", paired_ci[i][2]),
            ]),
        );
    }
    let report = Report {
        bench: "datapath",
        kernel: kernel_release(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        iperf3,
        runs,
        duration_s: duration,
        metrics: metrics.iter().map(|m| m.key()).collect(),
        pinned_cpus: pin,
        notes,
        setups: infos,
        samples,
        medians,
        ratios,
        ratio_cis,
        fast_path,
        targets: json!({
            "judged_by": "paired ratios",
            "netctl_ge_095_direct_every_metric": vs_direct,
            "netctl_ge_095_direct_every_metric_95pct_confident": vs_direct_ci,
            "worst_c_over_a_paired": finite(wa),
            "worst_c_over_a_paired_ci": wa_ci,
            "worst_c_over_a_metric": wa_m.key(),
            "netctl_ahead_of_bridge_every_metric": vs_bridge,
            "netctl_ahead_of_bridge_every_metric_95pct_confident": vs_bridge_ci,
            "worst_c_over_b_paired": finite(wb),
            "worst_c_over_b_paired_ci": wb_ci,
            "worst_c_over_b_metric": wb_m.key(),
        }),
    };
    super::finish_run(&results_path(json, "datapath.json"), &report, &links_before)
}

// ---------------------------------------------------------------------------
// Building the setups

fn netctl(args: &[&str]) -> Result<String> {
    run_netctl(&netctl_bin(), args)
}

/// (a): two namespaces and one veth pair, made with netctl's own commands.
fn setup_direct(prefix: &str) -> Result<Env> {
    let (ca, sb) = (format!("{prefix}d-a"), format!("{prefix}d-b"));
    netctl(&["netns", "add", &ca])?;
    netctl(&["netns", "add", &sb])?;
    netctl(&[
        "veth",
        "add",
        "veth0",
        "--peer",
        "eth0",
        "--peer-netns",
        &sb,
        "-n",
        &ca,
    ])?;
    netctl(&["addr", "add", "10.77.0.1/24", "--dev", "veth0", "-n", &ca])?;
    netctl(&["addr", "add", "10.77.0.2/24", "--dev", "eth0", "-n", &sb])?;
    Ok(Env {
        id: SetupId::Direct,
        client: open_ns(&ca)?,
        server: open_ns(&sb)?,
        client_ns: ca,
        server_ns: sb,
        server_addr: Ipv4Addr::new(10, 77, 0, 2),
        topology: None,
        host_ns: None,
        pin: None,
    })
}

/// (b), (c), (d): one bridge, two containers; `netctl apply`.
fn setup_topology(id: SetupId, name: &str, scratch: &Path, guard: &mut Cleanup) -> Result<Env> {
    let datapath = if id == SetupId::Kernel {
        "kernel"
    } else {
        "ebpf"
    };
    let toml = format!(
        "# generated by cargo xtask bench datapath\n\
         name = \"{name}\"\nhost_netns = \"{name}-h\"\nip_forward = true\n\
         datapath = \"{datapath}\"\n\n\
         [[bridge]]\nname = \"br0\"\naddresses = [\"10.78.0.1/24\"]\n\n\
         [[container]]\nname = \"a\"\nbridge = \"br0\"\naddresses = [\"10.78.0.2/24\"]\n\n\
         [[container]]\nname = \"b\"\nbridge = \"br0\"\naddresses = [\"10.78.0.3/24\"]\n"
    );
    let file = scratch.join(format!("{name}.toml"));
    fs::write(&file, toml).with_context(|| format!("write {}", file.display()))?;
    guard.topology(name);
    netctl(&["apply", &file.to_string_lossy()])?;
    if id == SetupId::EbpfXdp {
        netctl(&["datapath", "xdp", name, "on"])?;
    }
    let (ca, sb) = (format!("{name}-a"), format!("{name}-b"));
    Ok(Env {
        id,
        client: open_ns(&ca)?,
        server: open_ns(&sb)?,
        client_ns: ca,
        server_ns: sb,
        server_addr: Ipv4Addr::new(10, 78, 0, 3),
        topology: Some(name.to_string()),
        host_ns: Some(format!("{name}-h")),
        pin: None,
    })
}

/// Connectivity, XDP and datapath presence as the setup promises.
fn check_env(e: &Env) -> Result<SetupInfo> {
    let addr = e.server_addr.to_string();
    let ping = (0..3).any(|_| {
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &e.client_ns,
                "ping",
                "-q",
                "-c1",
                "-W1",
                &addr,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    ensure!(ping, "{}: {} cannot ping {addr}", e.id.label(), e.client_ns);
    let xdp_ports = match &e.host_ns {
        Some(h) => crate::sh::output(Command::new("ip").args(["-n", h, "-d", "link", "show"]))
            .ok_or_else(|| anyhow!("ip -n {h} link show failed"))?
            .matches("prog/xdp")
            .count(),
        None => 0,
    };
    let want_xdp = if e.id == SetupId::EbpfXdp { 2 } else { 0 };
    ensure!(
        xdp_ports == want_xdp,
        "{}: {xdp_ports} port(s) with an XDP program, expected {want_xdp}",
        e.id.label()
    );
    let stats_available = e.topology.as_deref().and_then(stats).is_some();
    let want_stats = matches!(e.id, SetupId::Ebpf | SetupId::EbpfXdp);
    ensure!(
        stats_available == want_stats || e.id == SetupId::Kernel,
        "{}: netctl stats unavailable — is the eBPF datapath attached?",
        e.id.label()
    );
    if e.id == SetupId::Kernel && stats_available {
        eprintln!("  note: the kernel-datapath topology has datapath counters");
    }
    Ok(SetupInfo {
        key: e.id.key(),
        label: e.id.label(),
        client_netns: e.client_ns.clone(),
        server_netns: e.server_ns.clone(),
        server_addr: addr,
        topology: e.topology.clone(),
        host_netns: e.host_ns.clone(),
        xdp_ports,
        stats_available,
    })
}

// ---------------------------------------------------------------------------
// Datapath counters

impl Counters {
    fn get(&self, k: &str) -> i64 {
        self.decisions.get(k).copied().unwrap_or(0)
    }
    fn pass_total(&self) -> i64 {
        self.decisions
            .iter()
            .filter(|(k, _)| k.starts_with("pass_"))
            .map(|(_, v)| v)
            .sum()
    }
    fn minus(&self, before: &Counters) -> Counters {
        Counters {
            decisions: self
                .decisions
                .iter()
                .map(|(k, v)| (k.clone(), v - before.get(k)))
                .collect(),
            port_rx_packets: self.port_rx_packets - before.port_rx_packets,
            port_redirected: self.port_redirected - before.port_redirected,
            port_passed: self.port_passed - before.port_passed,
        }
    }
}

/// `netctl stats -t TOPOLOGY --json`, or None when it has no datapath.
fn stats(topology: &str) -> Option<Counters> {
    let (v, decisions) = netctl_stats(&netctl_bin(), topology)?;
    let sum = |f: &str| -> i64 {
        v["ports"]
            .as_array()
            .map(|ps| ps.iter().map(|p| p[f].as_i64().unwrap_or(0)).sum())
            .unwrap_or(0)
    };
    Some(Counters {
        decisions,
        port_rx_packets: sum("rx_packets"),
        port_redirected: sum("redirected"),
        port_passed: sum("passed"),
    })
}

fn fast_path_summary(s: SetupId, samples: &[Sample], info: &SetupInfo) -> FastPath {
    let mine: Vec<&Sample> = samples.iter().filter(|x| x.setup == s.key()).collect();
    let counted: Vec<&Counters> = mine.iter().filter_map(|x| x.datapath.as_ref()).collect();
    let r: Vec<i64> = counted.iter().map(|c| c.get("redirect_l2")).collect();
    let mut pass_totals = BTreeMap::new();
    for c in &counted {
        for (k, v) in &c.decisions {
            if k.starts_with("pass_") {
                *pass_totals.entry(k.clone()).or_insert(0) += v;
            }
        }
    }
    let rx: i64 = counted.iter().map(|c| c.port_rx_packets).sum();
    let red: i64 = counted.iter().map(|c| c.port_redirected).sum();
    let redirected_share = (rx > 0).then(|| red as f64 / rx as f64);
    let with_redirect = r.iter().filter(|x| **x > 0).count();
    let ok = if s == SetupId::Kernel {
        r.iter().sum::<i64>() == 0
    } else {
        !counted.is_empty()
            && counted.len() == mine.len()
            && with_redirect == counted.len()
            && redirected_share.is_some_and(|x| x >= MIN_REDIRECTED)
    };
    FastPath {
        setup: s.key(),
        stats_available: info.stats_available,
        measurements: mine.len(),
        with_redirect,
        redirect_l2_total: r.iter().sum(),
        redirect_l2_min: r.iter().copied().min(),
        redirected_share,
        pass_totals,
        ok,
    }
}

fn describe(f: &FastPath) -> String {
    if f.setup == SetupId::Kernel.key() {
        return if f.stats_available {
            format!(
                "{} (counters present; redirect_l2 +{} over the run)",
                if f.ok { "ok" } else { "UNEXPECTED" },
                f.redirect_l2_total
            )
        } else {
            "ok: no eBPF datapath (netctl stats: no counters), the kernel bridge forwards".into()
        };
    }
    let passes: Vec<String> = f
        .pass_totals
        .iter()
        .filter(|(_, v)| **v != 0)
        .map(|(k, v)| format!("{k} +{v}"))
        .collect();
    format!(
        "{}: redirect_l2 grew in {}/{} measurements (total +{}, min +{}), {} of the ports' \
         rx packets redirected; pass: {}",
        if f.ok { "ok" } else { "NOT THE FAST PATH" },
        f.with_redirect,
        f.measurements,
        f.redirect_l2_total,
        f.redirect_l2_min.unwrap_or(0),
        f.redirected_share
            .map(|x| format!("{:.4}%", x * 100.0))
            .unwrap_or_else(|| "-".into()),
        if passes.is_empty() {
            "none".into()
        } else {
            passes.join(", ")
        }
    )
}

// ---------------------------------------------------------------------------
// Measurements

fn measure(e: &Env, m: Metric, dur: Duration, port: u16) -> Result<(f64, Value)> {
    match m {
        Metric::Tcp1 => iperf_tcp(e, 1, dur, port),
        Metric::Tcp4 => iperf_tcp(e, 4, dur, port),
        Metric::Udp64 => iperf_udp(e, dur, port),
        Metric::Rr => request_response(e, dur, port),
    }
}

fn iperf_tcp(e: &Env, streams: usize, dur: Duration, port: u16) -> Result<(f64, Value)> {
    let v = iperf::client(&e.iperf(), port, dur, &["-P", &streams.to_string()])?;
    let (bps, mut detail) = iperf::tcp_result(&v)?;
    detail["streams"] = json!(streams);
    Ok((bps, detail))
}

fn iperf_udp(e: &Env, dur: Duration, port: u16) -> Result<(f64, Value)> {
    let len = UDP_LEN.to_string();
    let v = iperf::client(&e.iperf(), port, dur, &["-u", "-l", &len, "-b", "0"])?;
    let end = &v["end"];
    let r = &end["sum_received"];
    let field = |x: &Value, f: &str| {
        x[f].as_f64()
            .ok_or_else(|| anyhow!("iperf3 JSON has no end.sum_received.{f}"))
    };
    // Receiver side: `packets` is how many the sender's sequence numbers say
    // were sent, `lost_packets` how many of those never arrived.
    let (packets, lost, secs) = (
        field(r, "packets")?,
        field(r, "lost_packets")?,
        field(r, "seconds")?,
    );
    ensure!(secs > 0.0, "iperf3 reports 0 seconds");
    let received = packets - lost;
    let by_bytes = field(r, "bytes")? / UDP_LEN as f64;
    if (received - by_bytes).abs() > 0.01 * received.max(1.0) {
        eprintln!(
            "  note: UDP received packets {received} (packets - lost) vs {by_bytes} (bytes / \
             {UDP_LEN})"
        );
    }
    let sent_pps = end["sum_sent"]["packets"].as_f64().unwrap_or(f64::NAN)
        / end["sum_sent"]["seconds"].as_f64().unwrap_or(f64::NAN);
    Ok((
        received / secs,
        json!({
            "received_packets": received,
            "received_by_bytes": by_bytes,
            "packets": packets,
            "lost_packets": lost,
            "lost_percent": r["lost_percent"],
            "seconds": secs,
            "sent_pps": finite(sent_pps),
            "cpu": end["cpu_utilization_percent"],
        }),
    ))
}

/// 1-byte ping-pong on one TCP connection for `dur`: transactions/s.
fn request_response(e: &Env, dur: Duration, port: u16) -> Result<(f64, Value)> {
    let server_ns = e.server.try_clone()?;
    let client_ns = e.client.try_clone()?;
    let addr = SocketAddr::from((e.server_addr, port));
    let pin = e.pin;
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = std::thread::spawn(move || -> Result<u64> {
        enter(&server_ns)?;
        // Same CPU as the client: a synchronous ping-pong then costs the
        // path, not a cross-CPU wakeup (an IPI, expensive in a VM), and
        // the scheduler's choice cannot make the results bimodal.
        if let Some((cpu, _)) = pin {
            pin_thread(cpu)?;
        }
        let l = TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
        l.set_nonblocking(true)?;
        let _ = ready_tx.send(());
        let end = Instant::now() + READY_TIMEOUT;
        let mut s = loop {
            match l.accept() {
                Ok((s, _)) => break s,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    ensure!(
                        Instant::now() < end,
                        "no connection within {READY_TIMEOUT:?}"
                    );
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(e).context("accept"),
            }
        };
        s.set_nonblocking(false)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(READY_TIMEOUT))?;
        let mut b = [0u8; 1];
        let mut n = 0u64;
        loop {
            match s.read(&mut b) {
                Ok(0) => return Ok(n),
                Ok(_) => {
                    s.write_all(&b)?;
                    n += 1;
                }
                Err(e) => return Err(e).context("server read"),
            }
        }
    });
    if ready_rx.recv_timeout(READY_TIMEOUT).is_err() {
        return match server.join() {
            Ok(Err(e)) => Err(e),
            _ => Err(anyhow!("RR server did not start")),
        };
    }
    let client = std::thread::spawn(move || -> Result<(u64, f64)> {
        enter(&client_ns)?;
        if let Some((cpu, _)) = pin {
            pin_thread(cpu)?;
        }
        let mut s = TcpStream::connect_timeout(&addr, READY_TIMEOUT)
            .with_context(|| format!("connect {addr}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(READY_TIMEOUT))?;
        let mut b = [1u8; 1];
        let mut once = |s: &mut TcpStream| -> Result<()> {
            s.write_all(&b)?;
            s.read_exact(&mut b).context("client read")
        };
        let w = Instant::now();
        while w.elapsed() < RR_WARMUP {
            once(&mut s)?;
        }
        let t = Instant::now();
        let mut n = 0u64;
        while t.elapsed() < dur {
            once(&mut s)?;
            n += 1;
        }
        let secs = t.elapsed().as_secs_f64();
        drop(s);
        Ok((n, secs))
    });
    let c = client.join().map_err(|_| anyhow!("RR client panicked"))?;
    let srv = server.join().map_err(|_| anyhow!("RR server panicked"))?;
    let (n, secs) = c?;
    let served = srv?;
    Ok((
        n as f64 / secs,
        json!({ "transactions": n, "seconds": secs, "served_incl_warmup": served }),
    ))
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{METRICS, Metric};
    use crate::bench::BenchCmd;

    #[derive(Parser)]
    struct Args {
        #[command(subcommand)]
        bench: BenchCmd,
    }

    fn metrics(list: &str) -> Result<Vec<Metric>, String> {
        match Args::try_parse_from(["bench", "datapath", "--metrics", list]) {
            Ok(Args {
                bench: BenchCmd::Datapath { metrics, .. },
            }) => Ok(Metric::in_order(&metrics)),
            Ok(_) => unreachable!(),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn metrics_are_parsed_in_the_benchmarks_order_each_once() {
        assert_eq!(metrics("rr,udp64,rr").unwrap(), [Metric::Udp64, Metric::Rr]);
        assert_eq!(metrics("tcp1,tcp4,udp64,rr").unwrap(), METRICS);
        let e = metrics("udp").unwrap_err();
        assert!(e.contains("'udp'") && e.contains("udp64"), "{e}");
        assert!(Metric::in_order(&[]).is_empty());
    }
}

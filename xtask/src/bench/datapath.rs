//! `cargo xtask bench datapath`: what the eBPF fast path buys between two
//! containers, against the limit (a plain veth pair) and the kernel bridge.
//!
//! Five setups, all built once at the start in namespaces of their own
//! (names `bd<pid>-…`), client in one namespace, server in the other:
//!
//! * (a) direct veth — `<p>d-a` 10.77.0.1/24 ⟷ `<p>d-b` 10.77.0.2/24;
//! * (b) kernel bridge — topology `<p>k`, `datapath = "kernel"`, bridge br0
//!   10.78.0.1/24 in `<p>k-h`, containers a 10.78.0.2 and b 10.78.0.3;
//! * (c) netctl fast path — the same topology as `<p>e` with
//!   `datapath = "ebpf"`, attached with tcx as the datapath's design has it:
//!   TC programs `bpf_redirect_peer` between the ports;
//! * (e) the same with netctl's default attachment, cls_bpf (`<p>c`), which
//!   attaches in a fraction of tcx's time (docs/datapath.md, "Attaching");
//! * (d) fast path + XDP — `<p>x`, as (c) plus `netctl datapath xdp on`
//!   (a pass-through XDP program on the host-side veth ends).
//!
//! Metrics: TCP throughput with iperf3 (1 and 4 streams), UDP 64-byte
//! packets per second received (see `udp_phases`: all setups in turns of
//! 10 ms within one run, from threads of the bench), and 1-byte TCP
//! request/response transactions per second on one connection (client and
//! server threads here, each entering its namespace with `setns`). Each
//! repetition measures every metric on every setup, in the order e, a, c,
//! b, d and the next one in reverse (see `run_order`); the tables show
//! medians, and the medians of the ratios within a repetition (paired), by
//! which the targets are judged, on (c).
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

use super::iperf::{self, READY_TIMEOUT};
use super::ns::{enter, open_ns, pin_thread};
use super::udp_phases;
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
    EbpfCls,
}

const SETUPS: [SetupId; 5] = [
    SetupId::Direct,
    SetupId::Kernel,
    SetupId::Ebpf,
    SetupId::EbpfXdp,
    SetupId::EbpfCls,
];
const NS: usize = SETUPS.len();

/// The paired ratios reported, as (numerator, denominator) setups.
const PAIRS: [(SetupId, SetupId); 5] = [
    (SetupId::Ebpf, SetupId::Direct),
    (SetupId::Ebpf, SetupId::Kernel),
    (SetupId::EbpfXdp, SetupId::Ebpf),
    (SetupId::EbpfCls, SetupId::Direct),
    (SetupId::EbpfCls, SetupId::Kernel),
];
const NP: usize = PAIRS.len();

/// The setups' order in repetition `rep`: e, a, c, b, d, then reversed.
/// (c) runs right next to (a) and to (b) every time, and (e) next to (a),
/// so their paired ratios compare measurements seconds apart, and over two
/// repetitions each of a pair runs first once, which cancels a steady
/// drift.
fn run_order(rep: usize) -> [SetupId; NS] {
    let order = [
        SetupId::EbpfCls,
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
            SetupId::EbpfCls => "netctl_cls_bpf",
        }
    }
    fn label(self) -> &'static str {
        match self {
            SetupId::Direct => "direct veth (a)",
            SetupId::Kernel => "kernel bridge (b)",
            SetupId::Ebpf => "netctl tcx (c)",
            SetupId::EbpfXdp => "netctl+XDP (d)",
            SetupId::EbpfCls => "netctl cls_bpf (e)",
        }
    }
    /// The ratio's name in the tables and the JSON: `c/a`, `c_over_a`.
    fn letter(self) -> char {
        match self {
            SetupId::Direct => 'a',
            SetupId::Kernel => 'b',
            SetupId::Ebpf => 'c',
            SetupId::EbpfXdp => 'd',
            SetupId::EbpfCls => 'e',
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
    /// metric → {c_over_a, c_over_b, d_over_c, e_over_a, e_over_b}: ratios of the medians, and
    /// the same with `_paired`: medians of the per-repetition ratios.
    ratios: BTreeMap<&'static str, BTreeMap<String, f64>>,
    /// metric → paired ratio → 95% confidence interval of its median (null
    /// below 6 repetitions).
    ratio_cis: BTreeMap<&'static str, BTreeMap<String, Option<Interval>>>,
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

    eprintln!("==> building the five setups ({prefix}…)");
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
        setup_topology(
            SetupId::EbpfCls,
            &format!("{prefix}c"),
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
            "    senders/clients on CPU {c}, receivers/servers on CPU {s}; RR both on CPU {c} \
             (--no-pin: unpinned)"
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

    let total = runs * metrics.len() * NS;
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
            port = if port >= 60000 { FIRST_PORT } else { port + 1 };
            let measured: Vec<(usize, SetupId, Measured)> = if m == Metric::Udp64 {
                // All setups in one run, taking turns (see `udp_phases`).
                check_interrupted()?;
                let envs: Vec<&Env> = order.iter().map(|id| &envs[id.idx()]).collect();
                let before: Vec<_> = envs.iter().map(|e| topology_stats(e)).collect();
                let cpu0 = super::cpu_times();
                let r = udp_interleaved(&envs, dur, port, pin);
                let cpu1 = super::cpu_times();
                let load = cpu0.zip(cpu1).map(|(x, y)| y.share_since(&x));
                envs.iter()
                    .zip(before)
                    .enumerate()
                    .map(|(position, (e, b))| {
                        let after = topology_stats(e);
                        let result = match &r {
                            Ok(v) => Ok(v[position].clone()),
                            Err(err) => Err(anyhow!("{err:#}")),
                        };
                        (
                            position,
                            e.id,
                            Measured {
                                result,
                                load,
                                datapath: b.zip(after).map(|(b, a)| a.minus(&b)),
                            },
                        )
                    })
                    .collect()
            } else {
                let mut v = Vec::new();
                for (position, &id) in order.iter().enumerate() {
                    check_interrupted()?;
                    let env = &envs[id.idx()];
                    port = if port >= 60000 { FIRST_PORT } else { port + 1 };
                    let before = topology_stats(env);
                    let cpu0 = super::cpu_times();
                    let result = measure(env, m, dur, port);
                    let cpu1 = super::cpu_times();
                    let after = topology_stats(env);
                    let load = cpu0.zip(cpu1).map(|(x, y)| y.share_since(&x));
                    let datapath = before.zip(after).map(|(b, a)| a.minus(&b));
                    v.push((
                        position,
                        id,
                        Measured {
                            result,
                            load,
                            datapath,
                        },
                    ));
                }
                v
            };
            for (position, id, x) in measured {
                let (value, detail, error) = match x.result {
                    Ok((v, d)) => (v, d, None),
                    Err(e) => {
                        eprintln!("  WARNING: {} {}: {e:#}", id.label(), m.label());
                        (f64::NAN, Value::Null, Some(format!("{e:#}")))
                    }
                };
                eprintln!(
                    "  run {}/{runs} {:<22} {:<20} {:>10}{}",
                    rep + 1,
                    m.label(),
                    id.label(),
                    m.show(value),
                    x.datapath
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
                    machine_busy: x.load.map(|l| l.0),
                    machine_steal: x.load.map(|l| l.1),
                    detail,
                    datapath: x.datapath,
                });
            }
        }
    }
    drop(envs);
    guard.clean()?;
    drop(guard);

    // Medians and ratios.
    let mut med = [[f64::NAN; NS]; 4]; // [metric][setup]
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
    let ratio = |m: usize, (x, y): (SetupId, SetupId)| med[m][x.idx()] / med[m][y.idx()];
    // Medians of the ratios within each repetition: the setups of one
    // repetition ran close together, so these cancel slow drifts in the
    // machine's load.
    let mut paired = [[f64::NAN; NP]; 4]; // [metric][pair]
    let mut paired_ci = [[None; NP]; 4];
    for &m in &metrics {
        let value = |run: usize, s: SetupId| {
            samples
                .iter()
                .find(|x| x.run == run && x.metric == m.key() && x.setup == s.key())
                .map_or(f64::NAN, |x| x.value)
        };
        for (k, (x, y)) in PAIRS.into_iter().enumerate() {
            let rs: Vec<f64> = (0..runs)
                .map(|r| value(r, x) / value(r, y))
                .filter(|v| v.is_finite())
                .collect();
            paired[m.idx()][k] = median(&rs);
            paired_ci[m.idx()][k] = median_ci95(&rs);
        }
    }
    let pair_names: Vec<String> = PAIRS
        .iter()
        .map(|(x, y)| format!("{}/{}", x.letter(), y.letter()))
        .collect();

    println!();
    println!(
        "Datapath between two namespaces, medians of {runs} run(s) x {duration} s \
         (server in b, client in a)"
    );
    let mut head = vec!["metric"];
    head.extend(SETUPS.iter().map(|s| s.label()));
    head.extend(pair_names.iter().map(String::as_str));
    let rows: Vec<Vec<String>> = metrics
        .iter()
        .map(|&m| {
            let i = m.idx();
            let mut r = vec![m.label().to_string()];
            r.extend(SETUPS.iter().map(|s| m.show(med[i][s.idx()])));
            r.extend(PAIRS.iter().map(|p| show_ratio(ratio(i, *p))));
            r
        })
        .collect();
    print_table(&head, &rows);
    println!();
    println!(
        "noise: spread over runs (max/min of the samples), and the median of the per-run \
         (paired) ratios"
    );
    let paired_names: Vec<String> = pair_names.iter().map(|n| format!("{n} paired")).collect();
    let mut head2 = vec!["metric"];
    head2.extend(SETUPS.iter().map(|s| s.label()));
    head2.extend(paired_names.iter().map(String::as_str));
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
            r.extend((0..NP).map(|k| show_ratio_ci(p[k], ci[k])));
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
    // A subset of the metrics (--metrics) is judged as such.
    let every = if metrics.len() == METRICS.len() {
        "every metric"
    } else {
        "every measured metric"
    };
    // (c) against the targets; (e), netctl's default attachment, as well.
    let judge = |fast: SetupId| {
        let k_a = PAIRS
            .iter()
            .position(|p| *p == (fast, SetupId::Direct))
            .unwrap();
        let k_b = PAIRS
            .iter()
            .position(|p| *p == (fast, SetupId::Kernel))
            .unwrap();
        let (wa_m, wa, wa_ci) = worst(k_a);
        let (wb_m, wb, wb_ci) = worst(k_b);
        let vs_direct = wa.is_finite() && wa >= 0.95;
        let vs_bridge = wb.is_finite() && wb > 1.0;
        let vs_direct_ci = clears(k_a, |lo| lo >= 0.95);
        let vs_bridge_ci = clears(k_b, |lo| lo > 1.0);
        println!(
            "{} >= 0.95x direct veth on {every} (paired medians): {} (worst {} on {}); \
             with 95% confidence: {}",
            fast.label(),
            yes_no(vs_direct),
            show_ratio_ci(wa, wa_ci),
            wa_m.label(),
            vs_direct_ci.map_or("- (6 or more runs give one)", yes_no)
        );
        println!(
            "{} ahead of kernel bridge on {every} (paired medians): {} (worst {} on {}); \
             with 95% confidence: {}",
            fast.label(),
            yes_no(vs_bridge),
            show_ratio_ci(wb, wb_ci),
            wb_m.label(),
            vs_bridge_ci.map_or("- (6 or more runs give one)", yes_no)
        );
        let l = fast.letter();
        json!({
            "judged_by": "paired ratios",
            "setup": fast.key(),
            "ge_095_direct_every_metric": vs_direct,
            "ge_095_direct_every_metric_95pct_confident": vs_direct_ci,
            format!("worst_{l}_over_a_paired"): finite(wa),
            format!("worst_{l}_over_a_paired_ci"): wa_ci,
            format!("worst_{l}_over_a_metric"): wa_m.key(),
            "ahead_of_bridge_every_metric": vs_bridge,
            "ahead_of_bridge_every_metric_95pct_confident": vs_bridge_ci,
            format!("worst_{l}_over_b_paired"): finite(wb),
            format!("worst_{l}_over_b_paired_ci"): wb_ci,
            format!("worst_{l}_over_b_metric"): wb_m.key(),
        })
    };
    println!();
    let targets_c = judge(SetupId::Ebpf);
    let targets_e = judge(SetupId::EbpfCls);

    // Which path carried the traffic.
    println!();
    let mut fast_path = Vec::new();
    for s in [
        SetupId::Kernel,
        SetupId::Ebpf,
        SetupId::EbpfCls,
        SetupId::EbpfXdp,
    ] {
        let fp = fast_path_summary(s, &samples, &infos[s.idx()]);
        println!("datapath check, {}: {}", s.label(), describe(&fp));
        fast_path.push(fp);
    }
    let failures = samples.iter().filter(|s| s.error.is_some()).count();
    if failures > 0 {
        println!("WARNING: {failures} measurement(s) failed (see the errors above / in the JSON)");
    }

    let notes = vec![
        "each repetition runs every metric on every setup, in the order e, a, c, b, d in even \
         repetitions and d, b, c, a, e in odd ones: (c) always runs right next to (a) and to \
         (b), (e) next to (a), and with an even number of repetitions each comes first as \
         often as second"
            .to_string(),
        "paired ratios: the median over repetitions of the ratio within one repetition; \
         the targets are judged by them, on (c). The interval after one is a distribution-free \
         95% confidence interval of that median (order statistics; none below 6 repetitions)"
            .into(),
        "(c) and (d) attach with tcx, (e) with cls_bpf, netctl's default".into(),
        "TCP: iperf3 -t DUR -P N, end.sum_received.bits_per_second".into(),
        format!(
            "UDP: one run per repetition in which all setups take turns in phases of {} ms \
             (every setup once per cycle, a new shuffled order each cycle), DUR seconds \
             each in all, from one \
             sender thread (send() of 64-byte datagrams, as fast as it goes) to a receiver \
             thread per setup; value = datagrams received / seconds of the setup's phases",
            udp_phases::PHASE.as_millis()
        ),
        "RR: one TCP connection, TCP_NODELAY, 1-byte write then 1-byte read, counted for DUR \
         after a 200 ms warm-up; client and server are threads of the bench that setns into \
         their namespaces"
            .into(),
        "datapath counters: `netctl stats -t TOPOLOGY --json` before and after each \
         measurement (for UDP, around the run all setups share); (b) has no datapath so no \
         counters"
            .into(),
        match pin {
            Some((c, s)) => format!(
                "iperf3 client and the UDP sender pinned to CPU {c}, iperf3 server and the \
                 UDP receivers to CPU {s}; the RR client and server threads both on CPU {c} \
                 (sched_setaffinity): a ping-pong on one CPU measures the path, not cross-CPU \
                 wakeups; pinning keeps the scheduler's placement from making results bimodal"
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
        let mut r = BTreeMap::new();
        let mut ci = BTreeMap::new();
        for (k, (x, y)) in PAIRS.into_iter().enumerate() {
            let name = format!("{}_over_{}", x.letter(), y.letter());
            r.insert(name.clone(), ratio(i, (x, y)));
            r.insert(format!("{name}_paired"), paired[i][k]);
            ci.insert(format!("{name}_paired"), paired_ci[i][k]);
        }
        ratios.insert(m.key(), r);
        ratio_cis.insert(m.key(), ci);
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
        targets: json!({ "netctl": targets_c, "netctl_cls_bpf": targets_e }),
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

/// (b), (c), (d), (e): one bridge, two containers; `netctl apply`.
fn setup_topology(id: SetupId, name: &str, scratch: &Path, guard: &mut Cleanup) -> Result<Env> {
    let datapath = match id {
        SetupId::Kernel => "datapath = \"kernel\"",
        SetupId::EbpfCls => "datapath = \"ebpf\"\nattach = \"cls_bpf\"",
        _ => "datapath = \"ebpf\"\nattach = \"tcx\"",
    };
    let toml = format!(
        "# generated by cargo xtask bench datapath\n\
         name = \"{name}\"\nhost_netns = \"{name}-h\"\nip_forward = true\n\
         {datapath}\n\n\
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
    let want_stats = matches!(e.id, SetupId::Ebpf | SetupId::EbpfXdp | SetupId::EbpfCls);
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

/// What one measurement of one setup gave.
struct Measured {
    result: Result<(f64, Value)>,
    /// (busy, stolen) shares of the machine's CPU time meanwhile.
    load: Option<(f64, f64)>,
    datapath: Option<Counters>,
}

/// The setup's datapath counters, if it has a topology with a datapath.
fn topology_stats(e: &Env) -> Option<Counters> {
    e.topology.as_deref().and_then(stats)
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
        Metric::Udp64 => unreachable!("64-byte UDP measures all setups at once (udp_interleaved)"),
        Metric::Rr => request_response(e, dur, port),
    }
}

fn iperf_tcp(e: &Env, streams: usize, dur: Duration, port: u16) -> Result<(f64, Value)> {
    let v = iperf::client(&e.iperf(), port, dur, &["-P", &streams.to_string()])?;
    let (bps, mut detail) = iperf::tcp_result(&v)?;
    detail["streams"] = json!(streams);
    Ok((bps, detail))
}

/// One interleaved UDP run over `envs` (see `udp_phases`): per setup,
/// (received datagrams/s, detail).
fn udp_interleaved(
    envs: &[&Env],
    each: Duration,
    port: u16,
    pin: Option<(usize, usize)>,
) -> Result<Vec<(f64, Value)>> {
    let targets: Vec<udp_phases::Target> = envs
        .iter()
        .map(|e| udp_phases::Target {
            client: &e.client,
            server: &e.server,
            addr: e.server_addr,
        })
        .collect();
    let o = udp_phases::run(&targets, each, port, pin)?;
    Ok((0..envs.len())
        .map(|i| {
            (
                o.rx_pps[i],
                json!({
                    "sent_pps": finite(o.tx_pps[i]),
                    "lost_packets": o.lost[i],
                    "seconds": o.seconds[i],
                    "phases_all_setups": o.phases,
                }),
            )
        })
        .collect())
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

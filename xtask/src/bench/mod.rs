//! `cargo xtask bench …` — benchmarks, one file each, and what they share:
//! statistics, tables, result files, and the guard that removes every
//! namespace a benchmark made. Benchmarks follow DESIGN.md: everything they
//! build lives in namespaces of their own, named with a per-process prefix.

mod datapath;
mod iperf;
mod ipt;
mod nat;
mod ns;
mod rules;
mod setup;
mod udp_phases;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Subcommand;

use crate::sh;

#[derive(Subcommand)]
pub enum BenchCmd {
    /// Setup time: `netctl apply`/`destroy` of N containers against N
    /// invocations of the CNI reference bridge plugin (ADD/DEL), side by side.
    Setup {
        /// Numbers of containers, comma separated.
        #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
        sizes: Vec<usize>,
        /// Repetitions per size (capped at 3 for N >= 1000).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Where to write every sample (default: bench-results/setup.json).
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Datapath speed between two namespaces: a direct veth pair, the kernel
    /// bridge, netctl's eBPF fast path, and the fast path with XDP attached
    /// (iperf3 TCP 1/4 streams, UDP 64 B packets/s, 1-byte TCP RR).
    Datapath {
        /// Repetitions (every setup and metric once each, (c) next to (a)
        /// and (b)); 6 or more give the paired ratios a 95% interval, and
        /// an even number puts each of a pair first equally often.
        #[arg(long, default_value_t = 8)]
        runs: usize,
        /// Seconds per measurement (whole seconds, as iperf3 -t).
        #[arg(long, default_value_t = 5)]
        duration: u64,
        /// Metrics to measure, comma separated: tcp1, tcp4, udp64, rr. The
        /// targets are then judged on these only.
        #[arg(long, value_delimiter = ',', default_value = "tcp1,tcp4,udp64,rr")]
        metrics: Vec<datapath::Metric>,
        /// Let the scheduler place client and server (default: pin them to
        /// two different CPUs).
        #[arg(long)]
        no_pin: bool,
        /// Where to write every sample (default: bench-results/datapath.json).
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Rules: TCP and 64-byte UDP across two bridges with N non-matching
    /// FORWARD rules and a final accept, kernel iptables against netctl; and
    /// the time to replace N rules, `netctl rules restore` against
    /// `iptables-restore`.
    Rules(rules::RulesArgs),
    /// NAT: new TCP connections per second and TCP throughput through
    /// masquerade and through a published port (Docker's rules), the
    /// kernel's iptables nat table and conntrack against netctl's datapath.
    Nat(nat::NatArgs),
}

pub fn run(b: BenchCmd) -> Result<()> {
    match b {
        BenchCmd::Setup { sizes, runs, json } => setup::run(&sizes, runs, json),
        BenchCmd::Datapath {
            runs,
            duration,
            metrics,
            no_pin,
            json,
        } => datapath::run(runs, duration, &metrics, no_pin, json),
        BenchCmd::Rules(a) => rules::run(a),
        BenchCmd::Nat(a) => nat::run(a),
    }
}

/// The release binary xtask built before calling us.
pub fn netctl_bin() -> PathBuf {
    sh::root().join("target/release/netctl")
}

/// `given`, or `bench-results/NAME` under the workspace root (gitignored).
pub fn results_path(given: Option<PathBuf>, name: &str) -> PathBuf {
    given.unwrap_or_else(|| sh::root().join("bench-results").join(name))
}

/// Writes `v` as pretty JSON, atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, v: &T) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let tmp = path.with_extension("json.tmp");
    fs::write(&tmp, serde_json::to_vec_pretty(v)?)
        .with_context(|| format!("write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))
}

pub fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        return f64::NAN;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

/// A distribution-free 95% confidence interval for the median of `xs`:
/// the k-th smallest and the k-th largest sample, with k the largest for
/// which the median lies outside with probability at most 5%
/// (P(Binomial(n, 1/2) < k) <= 2.5% on each side). None below 6 samples,
/// where even the smallest and the largest cover less than 95%.
pub fn median_ci95(xs: &[f64]) -> Option<(f64, f64)> {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    // P(Binomial(n, 1/2) <= j) for j = 0, 1, ..., summed as we go.
    let mut below = 0.0;
    let mut term = 0.5f64.powi(n as i32); // C(n, 0) / 2^n
    let mut k = 0;
    for j in 0..n / 2 {
        below += term;
        if below > 0.025 {
            break;
        }
        k = j + 1;
        term *= (n - j) as f64 / (j + 1) as f64;
    }
    (k > 0).then(|| (v[k - 1], v[n - k]))
}

/// Orders NaN below every number (for picking the worst ratio).
pub fn nan_low(x: f64) -> f64 {
    if x.is_finite() { x } else { f64::NEG_INFINITY }
}

pub fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

/// A ratio and the confidence interval of it, `0.98x [0.93, 1.02]`.
pub fn show_ratio_ci(x: f64, ci: Option<(f64, f64)>) -> String {
    match ci {
        Some((lo, hi)) if x.is_finite() => format!("{x:.2}x [{lo:.2}, {hi:.2}]"),
        _ => show_ratio(x),
    }
}

/// A ratio as `1.23x`, or `-` when it is not a number.
pub fn show_ratio(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}x")
    } else {
        "-".into()
    }
}

/// JSON has no NaN: serde_json writes null for it anyway, but say so.
pub fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

/// Prints `rows` under `head`, columns right-aligned to their widest cell.
pub fn print_table(head: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let s: Vec<String> = cells
            .iter()
            .zip(&w)
            .map(|(c, w)| format!("{c:>w$}"))
            .collect();
        println!("{}", s.join(" | "));
    };
    line(head.to_vec());
    println!(
        "{}",
        w.iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-|-")
    );
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// Runs `cmd` and returns its wall-clock time, or its stderr if it failed.
pub fn time_cmd(cmd: &mut Command) -> Result<(f64, std::process::Output)> {
    let t = Instant::now();
    let o = cmd
        .output()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    Ok((t.elapsed().as_secs_f64(), o))
}

/// The error for a command `what` that ran and failed: its exit status,
/// stderr and stdout.
pub fn failed(what: &str, o: &std::process::Output) -> anyhow::Error {
    anyhow::anyhow!(
        "{what} failed ({}): {}{}",
        o.status,
        String::from_utf8_lossy(&o.stderr).trim(),
        String::from_utf8_lossy(&o.stdout).trim()
    )
}

/// Runs the netctl binary `bin` with `args`; its stdout, or an error that
/// carries its output.
pub fn run_netctl(bin: &Path, args: &[&str]) -> Result<String> {
    let o = Command::new(bin)
        .args(args)
        .output()
        .context("cannot start netctl")?;
    if !o.status.success() {
        return Err(failed(&format!("netctl {}", args.join(" ")), &o));
    }
    Ok(String::from_utf8_lossy(&o.stdout).to_string())
}

/// `BIN stats -t TOPOLOGY --json`: the report and its decision counters by
/// name, or None when the topology has no datapath (or the command failed).
pub fn netctl_stats(
    bin: &Path,
    topology: &str,
) -> Option<(serde_json::Value, BTreeMap<String, i64>)> {
    let o = Command::new(bin)
        .args(["stats", "-t", topology, "--json"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !o.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
    let decisions = v["decisions"]
        .as_object()?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_i64().unwrap_or(0)))
        .collect();
    Some((v, decisions))
}

/// `uname -r`, or empty.
pub fn kernel_release() -> String {
    sh::output(Command::new("uname").arg("-r"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The first two CPUs we may run on, for the client and the server.
pub fn two_cpus() -> Option<(usize, usize)> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity
    // fills at most size_of::<cpu_set_t>() bytes of it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
    if rc != 0 {
        return None;
    }
    // SAFETY: CPU_ISSET reads the set within its bounds (i < CPU_SETSIZE).
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        .filter(|&i| unsafe { libc::CPU_ISSET(i, &set) })
        .take(2)
        .collect();
    (cpus.len() == 2).then(|| (cpus[0], cpus[1]))
}

/// Names under /run/netns that start with `prefix`.
pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir("/run/netns")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Deletes named namespaces with one `ip -batch` (as `ip netns del` would).
pub fn del_netns(names: &[String]) -> Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let batch: String = names.iter().map(|n| format!("netns del {n}\n")).collect();
    ip_batch(&batch)
}

/// Creates named namespaces with one `ip -batch`.
pub fn add_netns(names: &[String]) -> Result<()> {
    let batch: String = names.iter().map(|n| format!("netns add {n}\n")).collect();
    ip_batch(&batch)
}

fn ip_batch(batch: &str) -> Result<()> {
    use std::io::Write;
    let mut c = Command::new("ip")
        .args(["-force", "-batch", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("cannot start ip")?;
    c.stdin.take().unwrap().write_all(batch.as_bytes())?;
    let o = c.wait_with_output()?;
    anyhow::ensure!(
        o.status.success(),
        "ip -batch failed: {}",
        String::from_utf8_lossy(&o.stderr).trim()
    );
    Ok(())
}

/// Names of the root namespace's links (`ip -o link`), to prove a benchmark
/// left it as it found it.
pub fn root_links() -> Vec<String> {
    let out = sh::output(Command::new("ip").args(["-o", "link", "show"])).unwrap_or_default();
    let mut v: Vec<String> = out
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .collect();
    v.sort();
    v
}

/// Waits (at most `max`) for the machine to go quiet after a teardown: the
/// kernel frees deleted namespaces asynchronously (cleanup_net, under RTNL),
/// which would otherwise be charged to whatever is timed next.
pub fn settle(max: Duration) {
    let end = Instant::now() + max;
    std::thread::sleep(Duration::from_millis(100));
    while Instant::now() < end {
        let Some(t0) = cpu_times() else { return };
        std::thread::sleep(Duration::from_millis(100));
        let Some(t1) = cpu_times() else { return };
        let (busy, steal) = t1.share_since(&t0);
        if busy + steal <= 0.2 {
            return; // under 20 % busy
        }
    }
}

/// The `cpu` line of /proc/stat: (busy, steal, total) in ticks.
pub struct CpuTimes(u64, u64, u64);

pub fn cpu_times() -> Option<CpuTimes> {
    let s = fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = s
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already
    // counted in user and nice).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).unwrap_or(&0);
    let steal = *v.get(7).unwrap_or(&0);
    Some(CpuTimes(total - idle - steal, steal, total))
}

impl CpuTimes {
    /// (busy share, steal share) between `before` and now.
    pub fn share_since(&self, before: &CpuTimes) -> (f64, f64) {
        let t = self.2.saturating_sub(before.2).max(1) as f64;
        (
            self.0.saturating_sub(before.0) as f64 / t,
            self.1.saturating_sub(before.1) as f64 / t,
        )
    }
}

/// Removes, on drop (also on error or panic), every namespace whose name
/// starts with `prefix` and every netctl topology registered with it.
pub struct Cleanup {
    pub prefix: String,
    topologies: Vec<String>,
    dirs: Vec<PathBuf>,
}

impl Cleanup {
    pub fn new(prefix: String) -> Self {
        Cleanup {
            prefix,
            topologies: Vec::new(),
            dirs: Vec::new(),
        }
    }

    /// A netctl topology to destroy if its record still exists.
    pub fn topology(&mut self, name: &str) {
        self.topologies.push(name.to_string());
    }

    /// A scratch directory to remove.
    pub fn dir(&mut self, d: PathBuf) {
        self.dirs.push(d);
    }

    /// Cleans now; what is left afterwards is an error.
    pub fn clean(&mut self) -> Result<()> {
        let run_dir = std::env::var_os("NETCTL_RUN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/run/netctl"));
        for t in self.topologies.drain(..) {
            if run_dir
                .join("topologies")
                .join(format!("{t}.json"))
                .exists()
            {
                let _ = Command::new(netctl_bin())
                    .args(["destroy", &t])
                    .stdout(std::process::Stdio::null())
                    .status();
            }
        }
        let _ = del_netns(&netns_with_prefix(&self.prefix));
        for d in self.dirs.drain(..) {
            let _ = fs::remove_dir_all(&d);
        }
        let left = netns_with_prefix(&self.prefix);
        anyhow::ensure!(
            left.is_empty(),
            "namespaces left behind: {}",
            left.join(" ")
        );
        Ok(())
    }
}

/// Errors if netctl left anything of `topologies` behind: pinned programs
/// and maps, the topology record, its rules.
pub fn ensure_no_leftovers(topologies: &[String]) -> Result<()> {
    let run_dir = std::env::var_os("NETCTL_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/netctl"));
    for t in topologies {
        for p in [
            Path::new("/sys/fs/bpf/netctl").join(t),
            run_dir.join("topologies").join(format!("{t}.json")),
            run_dir.join("rules").join(format!("{t}.json")),
        ] {
            anyhow::ensure!(!p.exists(), "{} left behind", p.display());
        }
    }
    Ok(())
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Err(e) = self.clean() {
            eprintln!("bench cleanup: {e:#}");
        }
    }
}

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Turns SIGINT/SIGTERM into a flag that `check_interrupted` reports as an
/// error, so that Ctrl-C unwinds through the `Cleanup` guards instead of
/// leaving namespaces behind.
pub fn catch_interrupts() {
    // SAFETY: the handler only stores to an atomic, which is
    // async-signal-safe; `signal` with a valid handler has no other effect.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

pub fn check_interrupted() -> Result<()> {
    anyhow::ensure!(
        !INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst),
        "interrupted"
    );
    Ok(())
}

/// The common start of a bench run: Ctrl-C handling, a prefix unique to
/// this process (`<tag><pid>-`) with no namespace already using it, the
/// root namespace's links to compare at the end, a cleanup guard and a
/// scratch directory it removes.
pub struct Run {
    pub prefix: String,
    pub links_before: Vec<String>,
    pub guard: Cleanup,
    pub scratch: std::path::PathBuf,
}

pub fn start_run(tag: &str, what: &str) -> anyhow::Result<Run> {
    use anyhow::Context as _;
    catch_interrupts();
    let pid = std::process::id();
    let prefix = format!("{tag}{pid}-");
    let stale = netns_with_prefix(&prefix);
    anyhow::ensure!(
        stale.is_empty(),
        "namespaces {} already exist",
        stale.join(" ")
    );
    let links_before = root_links();
    let mut guard = Cleanup::new(prefix.clone());
    let scratch = std::env::temp_dir().join(format!("netctl-bench-{what}-{pid}"));
    std::fs::create_dir_all(&scratch).with_context(|| format!("create {}", scratch.display()))?;
    guard.dir(scratch.clone());
    Ok(Run {
        prefix,
        links_before,
        guard,
        scratch,
    })
}

/// The common end of a bench run: the JSON report written, and proof that
/// the root namespace's links are as they were.
pub fn finish_run<T: serde::Serialize>(
    path: &std::path::Path,
    report: &T,
    links_before: &[String],
) -> anyhow::Result<()> {
    write_json(path, report)?;
    println!("samples: {}", path.display());
    let links_after = root_links();
    anyhow::ensure!(
        links_after == links_before,
        "the root namespace's links changed during the bench: before {links_before:?}, after {links_after:?}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::median_ci95;

    #[test]
    fn median_ci95_takes_the_order_statistics_of_the_binomial() {
        let xs = |n: usize| (1..=n).map(|i| i as f64).collect::<Vec<_>>();
        // n = 5: 2 * (1/32) = 6.25% outside even for [min, max].
        assert_eq!(median_ci95(&xs(5)), None);
        // n = 6: 2/64 = 3.1% outside [min, max]; the next pair, 22%.
        assert_eq!(median_ci95(&xs(6)), Some((1.0, 6.0)));
        assert_eq!(median_ci95(&xs(7)), Some((1.0, 7.0)));
        // n = 15: P(X <= 3) = 1.76%, P(X <= 4) = 5.9%: the 4th from each end.
        assert_eq!(median_ci95(&xs(15)), Some((4.0, 12.0)));
        // n = 20: P(X <= 5) = 2.07%, P(X <= 6) = 5.8%.
        assert_eq!(median_ci95(&xs(20)), Some((6.0, 15.0)));
        // Unsorted input is sorted first.
        assert_eq!(
            median_ci95(&[3.0, 1.0, 2.0, 6.0, 5.0, 4.0]),
            Some((1.0, 6.0))
        );
    }
}

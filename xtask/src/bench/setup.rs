//! `cargo xtask bench setup`: how long it takes to bring N containers up on
//! a bridge, and down again — `netctl apply`/`destroy` of one topology file
//! against N sequential ADD/DEL invocations of the CNI reference `bridge`
//! plugin with host-local IPAM, the way a container runtime drives it.
//!
//! Both sides build the same network in namespaces of their own: a "host"
//! namespace `<name>-h` holding the bridge (10.88.0.1/16) and the host veth
//! ends, and one namespace per container with `eth0` and an address from
//! 10.88.0.0/16. The CNI plugin runs *inside* `<name>-h` (the child enters it
//! with `setns` before `exec`), so it never sees the root namespace.
//!
//! What is timed differs in one respect, on purpose: `netctl apply` creates
//! its N+1 namespaces itself (that is its job), while the CNI runtime creates
//! namespaces before calling the plugin, so `ip netns add` is not timed on
//! the CNI side (its time is recorded separately as `cni_netns_add_s`).
//! Likewise `netctl destroy` deletes the namespaces; CNI DEL does not.

use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde::Serialize;

use super::{
    Cleanup, add_netns, check_interrupted, del_netns, failed, kernel_release, median, netctl_bin,
    netns_with_prefix, print_table, results_path, root_links, settle, time_cmd, yes_no,
};

const CNI_DIR: &str = "/usr/lib/cni";
const GATEWAY: &str = "10.88.0.1";
/// Runs for sizes of at least `BIG` containers are capped at `BIG_RUNS`: CNI
/// ADD takes 7–16 ms per container, and CNI DEL and `netctl destroy` ~20 ms
/// each (the kernel's per-veth unregister), so one run of N=1000 is 1-2 min.
const BIG: usize = 1000;
const BIG_RUNS: usize = 3;
/// How long to wait, at most, for the kernel to finish freeing namespaces
/// after a teardown before timing the next thing.
const SETTLE_MAX: Duration = Duration::from_secs(3);

#[derive(Serialize)]
struct Report {
    bench: &'static str,
    kernel: String,
    cpus: usize,
    cni_plugin: String,
    notes: Vec<String>,
    sizes: Vec<SizeResult>,
    targets: Targets,
}

#[derive(Serialize)]
struct SizeResult {
    n: usize,
    runs: usize,
    netctl_apply_s: Vec<f64>,
    netctl_destroy_s: Vec<f64>,
    cni_add_s: Vec<f64>,
    cni_del_s: Vec<f64>,
    /// Untimed in the comparison: `ip netns add` of the N+1 namespaces.
    cni_netns_add_s: Vec<f64>,
    netctl_ping_ok: Vec<bool>,
    cni_ping_ok: Vec<bool>,
    median: Medians,
}

#[derive(Serialize)]
struct Medians {
    netctl_apply_s: f64,
    cni_add_s: f64,
    apply_ratio_cni_over_netctl: f64,
    netctl_per_container_ms: f64,
    cni_per_container_ms: f64,
    netctl_destroy_s: f64,
    cni_del_s: f64,
    destroy_ratio_cni_over_netctl: f64,
    cni_netns_add_s: f64,
}

#[derive(Serialize)]
struct Targets {
    n100_apply_s: Option<f64>,
    n100_under_1s: Option<bool>,
    n100_ratio_cni_over_netctl: Option<f64>,
    n100_at_least_5x: Option<bool>,
}

struct NetctlSample {
    apply_s: f64,
    destroy_s: f64,
    ping_ok: bool,
}

struct CniSample {
    netns_add_s: f64,
    add_s: f64,
    del_s: f64,
    ping_ok: bool,
}

pub fn run(sizes: &[usize], runs: usize, json: Option<PathBuf>) -> Result<()> {
    ensure!(runs >= 1, "--runs must be at least 1");
    ensure!(!sizes.is_empty(), "--sizes is empty");
    for &n in sizes {
        ensure!(
            (1..=max_containers()).contains(&n),
            "size {n}: must be 1..={} (one /16)",
            max_containers()
        );
    }
    let netctl = netctl_bin();
    let bridge = Path::new(CNI_DIR).join("bridge");
    for p in [&netctl, &bridge, &Path::new(CNI_DIR).join("host-local")] {
        ensure!(p.is_file(), "{} is missing", p.display());
    }

    let super::Run {
        prefix,
        links_before,
        mut guard,
        scratch,
    } = super::start_run("bn", "setup")?;

    let mut notes = vec![
        "netctl apply includes creating its N+1 namespaces; CNI ADD excludes them \
         (cni_netns_add_s), as a runtime creates them before calling the plugin"
            .to_string(),
        "netctl destroy includes deleting the namespaces; CNI DEL does not".to_string(),
    ];
    for &n in sizes {
        let r = runs_for(n, runs);
        if r < runs {
            let s = format!(
                "N={n}: {r} runs instead of {runs} (a run takes 1-2 minutes: CNI DEL and \
                 netctl destroy cost ~20 ms per container)"
            );
            eprintln!("note: {s}");
            notes.push(s);
        }
    }
    notes.push(
        "order alternates per repetition (netctl first on even runs, CNI first on odd); \
         after each teardown the bench waits for the CPU to go idle (max 3 s)"
            .into(),
    );

    let mut results = Vec::new();
    for &n in sizes {
        let r = runs_for(n, runs);
        let mut s = SizeResult {
            n,
            runs: r,
            netctl_apply_s: vec![],
            netctl_destroy_s: vec![],
            cni_add_s: vec![],
            cni_del_s: vec![],
            cni_netns_add_s: vec![],
            netctl_ping_ok: vec![],
            cni_ping_ok: vec![],
            median: Medians::default(),
        };
        for i in 0..r {
            for netctl_turn in if i % 2 == 0 {
                [true, false]
            } else {
                [false, true]
            } {
                check_interrupted()?;
                if netctl_turn {
                    let x = netctl_once(&format!("{prefix}n{n}r{i}"), n, &scratch, &mut guard)?;
                    s.netctl_apply_s.push(x.apply_s);
                    s.netctl_destroy_s.push(x.destroy_s);
                    s.netctl_ping_ok.push(x.ping_ok);
                } else {
                    let x = cni_once(&format!("{prefix}c{n}r{i}"), n, &scratch, &links_before)?;
                    s.cni_netns_add_s.push(x.netns_add_s);
                    s.cni_add_s.push(x.add_s);
                    s.cni_del_s.push(x.del_s);
                    s.cni_ping_ok.push(x.ping_ok);
                }
                settle(SETTLE_MAX);
            }
            eprintln!(
                "N={n} run {}/{r}: netctl apply {:.3} s destroy {:.3} s | CNI ADD {:.3} s DEL {:.3} s",
                i + 1,
                s.netctl_apply_s[i],
                s.netctl_destroy_s[i],
                s.cni_add_s[i],
                s.cni_del_s[i]
            );
        }
        s.median = Medians::of(&s);
        results.push(s);
    }
    guard.clean()?;
    drop(guard);

    println!();
    println!("Setup time, netctl apply/destroy vs CNI bridge plugin ADD/DEL (medians)");
    let head = [
        "N",
        "netctl apply (s)",
        "CNI ADD (s)",
        "CNI/netctl",
        "netctl/ctr (ms)",
        "CNI/ctr (ms)",
        "netctl destroy (s)",
        "CNI DEL (s)",
        "CNI/netctl",
    ];
    let rows: Vec<Vec<String>> = results
        .iter()
        .map(|s| {
            let m = &s.median;
            vec![
                format!("{}", s.n),
                format!("{:.3}", m.netctl_apply_s),
                format!("{:.3}", m.cni_add_s),
                format!("{:.1}x", m.apply_ratio_cni_over_netctl),
                format!("{:.2}", m.netctl_per_container_ms),
                format!("{:.2}", m.cni_per_container_ms),
                format!("{:.3}", m.netctl_destroy_s),
                format!("{:.3}", m.cni_del_s),
                format!("{:.1}x", m.destroy_ratio_cni_over_netctl),
            ]
        })
        .collect();
    print_table(&head, &rows);
    for n in &notes {
        println!("note: {n}");
    }
    for s in &results {
        let bad_n = s.netctl_ping_ok.iter().filter(|ok| !**ok).count();
        let bad_c = s.cni_ping_ok.iter().filter(|ok| !**ok).count();
        if bad_n + bad_c > 0 {
            println!(
                "WARNING: N={}: container c0 could not ping the gateway in {bad_n} netctl and \
                 {bad_c} CNI run(s)",
                s.n
            );
        }
    }

    let n100 = results.iter().find(|s| s.n == 100);
    let targets = Targets {
        n100_apply_s: n100.map(|s| s.median.netctl_apply_s),
        n100_under_1s: n100.map(|s| s.median.netctl_apply_s < 1.0),
        n100_ratio_cni_over_netctl: n100.map(|s| s.median.apply_ratio_cni_over_netctl),
        n100_at_least_5x: n100.map(|s| s.median.apply_ratio_cni_over_netctl >= 5.0),
    };
    println!();
    match n100 {
        Some(s) => {
            let m = &s.median;
            println!(
                "100 containers up in < 1 s: {} ({:.3} s)",
                yes_no(m.netctl_apply_s < 1.0),
                m.netctl_apply_s
            );
            println!(
                ">= 5x faster than CNI at N=100: {} ({:.1}x)",
                yes_no(m.apply_ratio_cni_over_netctl >= 5.0),
                m.apply_ratio_cni_over_netctl
            );
        }
        None => println!("targets (N=100) not measured: add 100 to --sizes"),
    }

    let report = Report {
        bench: "setup",
        kernel: kernel_release(),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cni_plugin: bridge.display().to_string(),
        notes,
        sizes: results,
        targets,
    };
    super::finish_run(&results_path(json, "setup.json"), &report, &links_before)
}

fn runs_for(n: usize, runs: usize) -> usize {
    if n >= BIG { runs.min(BIG_RUNS) } else { runs }
}

impl Default for Medians {
    fn default() -> Self {
        Medians {
            netctl_apply_s: f64::NAN,
            cni_add_s: f64::NAN,
            apply_ratio_cni_over_netctl: f64::NAN,
            netctl_per_container_ms: f64::NAN,
            cni_per_container_ms: f64::NAN,
            netctl_destroy_s: f64::NAN,
            cni_del_s: f64::NAN,
            destroy_ratio_cni_over_netctl: f64::NAN,
            cni_netns_add_s: f64::NAN,
        }
    }
}

impl Medians {
    fn of(s: &SizeResult) -> Medians {
        let (na, ca) = (median(&s.netctl_apply_s), median(&s.cni_add_s));
        let (nd, cd) = (median(&s.netctl_destroy_s), median(&s.cni_del_s));
        Medians {
            netctl_apply_s: na,
            cni_add_s: ca,
            apply_ratio_cni_over_netctl: ca / na,
            netctl_per_container_ms: na / s.n as f64 * 1e3,
            cni_per_container_ms: ca / s.n as f64 * 1e3,
            netctl_destroy_s: nd,
            cni_del_s: cd,
            destroy_ratio_cni_over_netctl: cd / nd,
            cni_netns_add_s: median(&s.cni_netns_add_s),
        }
    }
}

/// Host addresses of 10.88.0.0/16 in order, leaving out the gateway (.0.1)
/// and every x.y.z.0 and x.y.z.255 (so never the network or broadcast).
fn container_addr(j: usize) -> String {
    let per = 254; // .1 ..= .254 of each /24
    let k = j + 1; // skip 10.88.0.1, the gateway
    format!("10.88.{}.{}", k / per, k % per + 1)
}

fn max_containers() -> usize {
    256 * 254 - 1
}

fn topology_toml(name: &str, n: usize) -> String {
    let mut s = format!(
        "# generated by cargo xtask bench setup\n\
         name = \"{name}\"\nhost_netns = \"{name}-h\"\nip_forward = true\n\n\
         [[bridge]]\nname = \"br0\"\naddresses = [\"{GATEWAY}/16\"]\n"
    );
    for j in 0..n {
        s.push_str(&format!(
            "\n[[container]]\nname = \"c{j}\"\nbridge = \"br0\"\naddresses = [\"{}/16\"]\n",
            container_addr(j)
        ));
    }
    s
}

/// `ip netns exec NS ping` the gateway, outside any timed region.
fn ping_gateway(ns: &str) -> bool {
    (0..3).any(|_| {
        Command::new("ip")
            .args(["netns", "exec", ns, "ping", "-q", "-c1", "-W1", GATEWAY])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// `ip netns list` (the independent witness) entries starting with `prefix`.
fn ip_netns_list(prefix: &str) -> Result<Vec<String>> {
    let out = crate::sh::output(Command::new("ip").args(["netns", "list"]))
        .context("ip netns list failed")?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect())
}

fn netctl_once(name: &str, n: usize, scratch: &Path, guard: &mut Cleanup) -> Result<NetctlSample> {
    let file = scratch.join(format!("{name}.toml"));
    fs::write(&file, topology_toml(name, n))
        .with_context(|| format!("write {}", file.display()))?;
    let ns_prefix = format!("{name}-");
    guard.topology(name);

    let (apply_s, o) = time_cmd(Command::new(netctl_bin()).arg("apply").arg(&file))?;
    if !o.status.success() {
        return Err(failed(&format!("netctl apply {}", file.display()), &o));
    }
    let made = netns_with_prefix(&ns_prefix).len();
    ensure!(
        made == n + 1,
        "netctl apply {name}: {made} namespaces instead of {}",
        n + 1
    );
    let ping_ok = ping_gateway(&format!("{name}-c0"));

    let (destroy_s, o) = time_cmd(Command::new(netctl_bin()).arg("destroy").arg(&file))?;
    if !o.status.success() {
        return Err(failed(&format!("netctl destroy {}", file.display()), &o));
    }
    let left = ip_netns_list(&ns_prefix)?;
    ensure!(
        left.is_empty(),
        "netctl destroy {name} left namespaces: {}",
        left.join(" ")
    );
    let _ = fs::remove_file(&file);
    Ok(NetctlSample {
        apply_s,
        destroy_s,
        ping_ok,
    })
}

fn cni_once(
    name: &str,
    n: usize,
    scratch: &Path,
    root_links_before: &[String],
) -> Result<CniSample> {
    let host = format!("{name}-h");
    let ctrs: Vec<String> = (0..n).map(|j| format!("{name}-c{j}")).collect();

    // Namespaces first, untimed: the runtime's job, not the plugin's.
    let mut all = vec![host.clone()];
    all.extend(ctrs.iter().cloned());
    let t = Instant::now();
    add_netns(&all)?;
    let netns_add_s = t.elapsed().as_secs_f64();
    let made = netns_with_prefix(&format!("{name}-")).len();
    ensure!(
        made == n + 1,
        "ip netns add made {made} namespaces instead of {}",
        n + 1
    );

    let host_ns = fs::File::open(format!("/run/netns/{host}"))
        .with_context(|| format!("open /run/netns/{host}"))?;
    // The plugin must never run in the root namespace: make sure the file we
    // will setns to is another namespace than ours.
    let (h, me) = (host_ns.metadata()?, fs::metadata("/proc/self/ns/net")?);
    ensure!(
        (h.dev(), h.ino()) != (me.dev(), me.ino()),
        "/run/netns/{host} is the root network namespace"
    );
    let host_fd = host_ns.as_raw_fd();

    let data_dir = scratch.join(format!("{name}-ipam"));
    fs::create_dir_all(&data_dir)?;
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": name,
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "ipMasq": false,
        "ipam": {
            "type": "host-local",
            "subnet": "10.88.0.0/16",
            "dataDir": data_dir,
        },
    })
    .to_string();

    let invoke = |command: &str, ctr: &str| -> Result<std::process::Output> {
        let mut c = Command::new(Path::new(CNI_DIR).join("bridge"));
        c.env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", ctr)
            .env("CNI_NETNS", format!("/run/netns/{ctr}"))
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_DIR)
            .env_remove("CNI_ARGS")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the forked child before exec and only
        // makes the setns(2) system call, which is async-signal-safe; it
        // reads no memory but the captured integer. `host_fd` stays open in
        // the parent (in `host_ns`) for every spawn, and the child inherits
        // it (O_CLOEXEC only closes it at exec, after setns). If setns fails
        // the spawn fails and the plugin is never executed.
        unsafe {
            c.pre_exec(move || {
                if libc::setns(host_fd, libc::CLONE_NEWNET) == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        let mut child = c.spawn().context("cannot start the CNI bridge plugin")?;
        child.stdin.take().unwrap().write_all(conf.as_bytes())?;
        let o = child.wait_with_output()?;
        if !o.status.success() {
            return Err(failed(&format!("CNI {command} {ctr}"), &o));
        }
        Ok(o)
    };

    let t = Instant::now();
    let mut outs = Vec::with_capacity(n);
    for c in &ctrs {
        outs.push(invoke("ADD", c)?);
    }
    let add_s = t.elapsed().as_secs_f64();
    host_ns_guard_check(&host, root_links_before)?;
    for (c, o) in ctrs.iter().zip(&outs) {
        let v: serde_json::Value = serde_json::from_slice(&o.stdout)
            .with_context(|| format!("CNI ADD {c}: result is not JSON"))?;
        let ip = v["ips"][0]["address"].as_str().unwrap_or("");
        ensure!(
            ip.starts_with("10.88."),
            "CNI ADD {c}: no address in the result: {v}"
        );
    }
    let ping_ok = ping_gateway(&ctrs[0]);

    check_interrupted()?;
    let t = Instant::now();
    for c in &ctrs {
        invoke("DEL", c)?;
    }
    let del_s = t.elapsed().as_secs_f64();
    drop(host_ns);

    del_netns(&all)?;
    let _ = fs::remove_dir_all(&data_dir);
    let left = ip_netns_list(&format!("{name}-"))?;
    ensure!(
        left.is_empty(),
        "CNI teardown left namespaces: {}",
        left.join(" ")
    );
    Ok(CniSample {
        netns_add_s,
        add_s,
        del_s,
        ping_ok,
    })
}

/// After ADD: the plugin's bridge is in the bench host namespace, and the
/// root namespace has not gained a link.
fn host_ns_guard_check(host: &str, root_links_before: &[String]) -> Result<()> {
    let o = Command::new("ip")
        .args(["-n", host, "-o", "link", "show", "cni0"])
        .output()?;
    ensure!(o.status.success(), "CNI ADD made no cni0 in {host}");
    let now = root_links();
    ensure!(
        now == root_links_before,
        "the root namespace's links changed during CNI ADD: {now:?}"
    );
    Ok(())
}

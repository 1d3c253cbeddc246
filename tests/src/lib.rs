//! Shared helpers for the integration tests: unique names, cleanup guards
//! that run even when a test panics, and the independent witnesses
//! (`ip`, `ping`, `ethtool`) the assertions are made against.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use netctl::topology::{self, Topology};

pub mod fidelity;

/// A name unique to this test process and call, short enough to prefix
/// namespace names: `t<pid base36><n>`.
pub fn unique(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("t{}{}{n}", std::process::id() % 100_000, tag)
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The netctl binary of the same profile as this test.
pub fn netctl_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("netctl");
    assert!(
        bin.exists(),
        "{} is missing: build it first (`cargo xtask test` does)",
        bin.display()
    );
    bin
}

/// Runs the netctl binary.
pub fn netctl(args: &[&str]) -> Output {
    Command::new(netctl_bin()).args(args).output().unwrap()
}

pub fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"))
}

/// Runs a witness command inside a namespace (`ip netns exec`).
pub fn in_ns(ns: &str, args: &[&str]) -> Output {
    let mut a = vec!["netns", "exec", ns];
    a.extend_from_slice(args);
    run("ip", &a)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// `ip -j ...` parsed.
pub fn ip_json(args: &[&str]) -> serde_json::Value {
    let mut a = vec!["-j"];
    a.extend_from_slice(args);
    let o = run("ip", &a);
    assert!(o.status.success(), "ip {args:?}: {}", stderr(&o));
    let s = stdout(&o);
    if s.trim().is_empty() {
        return serde_json::Value::Array(vec![]);
    }
    serde_json::from_str(&s).unwrap()
}

/// True when `ping` from `ns` to `dst` gets answers (a few tries, since
/// the first packet may wait for ARP/ND).
pub fn ping(ns: &str, dst: &str) -> bool {
    let fam = if dst.contains(':') { "-6" } else { "-4" };
    in_ns(
        ns,
        &["ping", fam, "-c", "3", "-i", "0.2", "-w", "3", "-q", dst],
    )
    .status
    .success()
}

/// Starts a Python `script` inside `ns` and waits for it to print its
/// "ready" line (rather than sleeping); returns the child and the rest of
/// its output.
pub fn spawn_ready(ns: &str, script: &str) -> (std::process::Child, std::process::ChildStdout) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut buf = [0u8; 6];
    std::io::Read::read_exact(&mut out, &mut buf).unwrap();
    (child, out)
}

/// A TCP round trip from `client_ns` to a one-shot echo server in
/// `server_ns` on `addr:port`. Returns what came back.
pub fn tcp_echo(server_ns: &str, client_ns: &str, addr: &str, port: u16) -> String {
    let fam = if addr.contains(':') {
        "AF_INET6"
    } else {
        "AF_INET"
    };
    let server = format!(
        "import socket,sys\ns=socket.socket(socket.{fam});s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('{addr}',{port}));s.listen(1);print('ready',flush=True)\n\
         c,_=s.accept();d=c.recv(100);c.sendall(b'echo:'+d);c.close()"
    );
    let (mut child, _out) = spawn_ready(server_ns, &server);
    let client = format!(
        "import socket\nc=socket.create_connection(('{addr}',{port}),timeout=5)\n\
         c.sendall(b'hello');print(c.recv(100).decode())"
    );
    let o = in_ns(client_ns, &["python3", "-c", &client]);
    let _ = child.wait();
    stdout(&o).trim().to_string()
}

/// Loads an example topology under a unique name (and host namespace) so
/// tests can run side by side.
pub fn example(file: &str, name: &str) -> Topology {
    let text = std::fs::read_to_string(workspace().join("examples").join(file)).unwrap();
    let mut v: toml::Table = toml::from_str(&text).unwrap();
    v.insert("name".into(), toml::Value::String(name.into()));
    v.insert(
        "host_netns".into(),
        toml::Value::String(format!("{name}-host")),
    );
    // Namespaces named explicitly in routes follow the rename.
    let old = text
        .lines()
        .find_map(|l| l.strip_prefix("name = \""))
        .and_then(|l| l.strip_suffix('"'))
        .unwrap()
        .to_string();
    if let Some(toml::Value::Array(routes)) = v.get_mut("route") {
        for r in routes {
            if let Some(toml::Value::String(ns)) = r.get_mut("netns") {
                *ns = ns.replacen(&old, name, 1);
            }
        }
    }
    let text = toml::to_string(&v).unwrap();
    topology::parse(&text, file).unwrap()
}

/// Parses topology text (for tests that write their own).
pub fn topo(text: &str) -> Topology {
    topology::parse(text, "test.toml").unwrap_or_else(|e| panic!("{e}"))
}

/// Names of namespaces under /run/netns that start with `prefix`.
pub fn namespaces_with(prefix: &str) -> Vec<String> {
    netctl::netns::list()
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Writes `text` as `file` in the test's scratch directory (named after
/// its unique prefix, removed by `Cleanup`) and returns the path.
pub fn write_file(prefix: &str, file: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(prefix);
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join(file);
    std::fs::write(&f, text).unwrap();
    f
}

/// Cleans up a test's topology, every namespace with its prefix and its
/// scratch directory when dropped, also on panic.
pub struct Cleanup {
    pub prefix: String,
}

impl Cleanup {
    pub fn new(prefix: &str) -> Cleanup {
        Cleanup {
            prefix: prefix.to_string(),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let r = rt();
        for name in topology::store::list().unwrap_or_default() {
            if name.starts_with(&self.prefix) {
                let _ = r.block_on(topology::destroy(&name));
                let _ = topology::store::remove(&name);
            }
        }
        for ns in namespaces_with(&self.prefix) {
            let _ = netctl::netns::delete(&ns);
        }
        // A ruleset record whose topology record is already gone.
        if let Ok(rd) = std::fs::read_dir(topology::store::run_dir().join("rules")) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(&self.prefix) {
                    let stem = e
                        .file_name()
                        .to_string_lossy()
                        .trim_end_matches(".json")
                        .to_string();
                    let _ = netctl::rules::store::remove(&stem);
                }
            }
        }
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(&self.prefix));
    }
}

/// Snapshot of what a test could have leaked into the current namespace.
#[derive(Debug, PartialEq, Eq)]
pub struct Footprint {
    pub namespaces: Vec<String>,
    pub links: Vec<String>,
    pub records: Vec<String>,
    /// Top-level bpffs entries, and the test's own datapath pin dirs.
    pub bpffs: Vec<String>,
}

fn dir_names(p: impl AsRef<std::path::Path>) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

pub fn footprint(prefix: &str) -> Footprint {
    let links = ip_json(&["link", "show"])
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ifname"].as_str().unwrap().to_string())
        .collect();
    Footprint {
        namespaces: namespaces_with(prefix),
        links,
        records: topology::store::list()
            .unwrap()
            .into_iter()
            .chain(
                dir_names(topology::store::run_dir().join("rules"))
                    .into_iter()
                    .map(|n| format!("rules/{n}")),
            )
            .filter(|n| n.trim_start_matches("rules/").starts_with(prefix))
            .collect(),
        bpffs: dir_names("/sys/fs/bpf")
            .into_iter()
            // `netctl/` itself comes and goes with other tests' topologies.
            .filter(|n| !n.starts_with("netctl-scratch-") && n != "netctl")
            .chain(
                dir_names("/sys/fs/bpf/netctl")
                    .into_iter()
                    .filter(|n| n.starts_with(prefix))
                    .map(|n| format!("netctl/{n}")),
            )
            .collect(),
    }
}

/// The datapath's counters for a topology, from `netctl stats --json`.
pub fn stats(topology: &str) -> serde_json::Value {
    let o = netctl(&["stats", "-t", topology, "--json"]);
    assert!(o.status.success(), "stats: {}", stderr(&o));
    serde_json::from_str(&stdout(&o)).unwrap()
}

pub fn decision(topology: &str, name: &str) -> u64 {
    stats(topology)["decisions"][name].as_u64().unwrap()
}

/// Packets a device has sent, as the kernel counts them (`ip -s`).
pub fn tx_packets(ns: &str, dev: &str) -> u64 {
    let j = ip_json(&["-n", ns, "-s", "link", "show", dev]);
    j[0]["stats64"]["tx"]["packets"].as_u64().unwrap()
}

/// Sends `count` UDP datagrams from `client_ns` to `addr:port` where a
/// receiver in `server_ns` counts them; returns how many arrived.
pub fn udp_flow(server_ns: &str, client_ns: &str, addr: &str, port: u16, count: u32) -> u32 {
    let server = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         s.bind(('{addr}',{port}));s.settimeout(2);print('ready',flush=True)\nn=0\n\
         try:\n  while n<{count}:\n    s.recv(100);n+=1\nexcept Exception: pass\nprint(n)"
    );
    let (mut child, mut out) = spawn_ready(server_ns, &server);
    let client = format!(
        "import socket,time\nc=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         for i in range({count}):\n  c.sendto(b'x'*32,('{addr}',{port}))\n  time.sleep(0.0005)"
    );
    assert!(
        in_ns(client_ns, &["python3", "-c", &client])
            .status
            .success()
    );
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let _ = child.wait();
    rest.trim().parse().unwrap()
}

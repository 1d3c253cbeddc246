//! `cargo xtask run`: the demo. Docker's default network in namespaces of
//! its own, with the eBPF datapath, shown working and torn down again;
//! then Docker's NAT (an uplink to an "outside" namespace, a published
//! port, Docker's rules) done by the datapath.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::sh::{output, root};

const TOPO: &str = "docker-default";
const NAT_TOPO: &str = "docker-nat";
const NAT_HOST: &str = "docker-nat-host";
const NAT_OUT: &str = "docker-nat-outside";
const NAT_C1: &str = "docker-nat-c1";
const NAT_C3: &str = "docker-nat-c3";
const HOST: &str = "docker-default-host";
const C1: &str = "docker-default-c1";
const C2: &str = "docker-default-c2";
const C3: &str = "docker-default-c3";

/// A stateful firewall in iptables' own words: containers talk to each
/// other, except that c3 may not ping c1, which is told so.
const RULES: &str = "*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A FORWARD -s 172.17.0.4/32 -d 172.17.0.2/32 -p icmp -j REJECT --reject-with icmp-admin-prohibited
-A FORWARD -i docker0 -o docker0 -j ACCEPT
COMMIT
";

fn netctl_path() -> PathBuf {
    root().join("target/release/netctl")
}

/// Runs netctl with `args`, printing the command and its output.
fn show(args: &[&str]) -> Result<String> {
    println!("\n$ netctl {}", args.join(" "));
    let o = Command::new(netctl_path())
        .args(args)
        .output()
        .context("run netctl")?;
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    print!("{out}");
    eprint!("{}", String::from_utf8_lossy(&o.stderr));
    if !o.status.success() {
        bail!("netctl {} failed", args.join(" "));
    }
    Ok(out)
}

fn in_ns(ns: &str, args: &[&str]) -> Result<String> {
    let mut a = vec!["netns", "exec", ns, "--"];
    a.extend_from_slice(args);
    show(&a)
}

fn footprint() -> (String, String, String) {
    let ns = output(Command::new("ip").args(["netns", "list"])).unwrap_or_default();
    let links = output(Command::new("ip").args(["-o", "link"])).unwrap_or_default();
    let bpf = output(Command::new("ls").args(["-R", "/sys/fs/bpf"])).unwrap_or_default();
    (ns, links, bpf)
}

fn tcp_round_trip() -> Result<String> {
    println!("\n$ TCP: echo server in {C2} on 172.17.0.3:8080, client in {C1}");
    ask_tcp(C2, "172.17.0.3", 8080, C1, "172.17.0.3", 8080)
}

/// A one-shot TCP server in `server_ns` on `bind:port` that answers with
/// the address it saw the client come from; the client in `client_ns`
/// connects to `addr:port` and prints the answer, which is returned.
fn ask_tcp(
    server_ns: &str,
    bind: &str,
    port: u16,
    client_ns: &str,
    addr: &str,
    to: u16,
) -> Result<String> {
    let server = format!(
        "import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('{bind}',{port}));s.listen(1);print('ready',flush=True)\n\
         c,a=s.accept();c.recv(64);c.sendall(('hello from %s, you are %s:%d' % ('{server_ns}',a[0],a[1])).encode());c.close()"
    );
    let mut child = Command::new(netctl_path())
        .args(["netns", "exec", server_ns, "--", "python3", "-c", &server])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut ready = [0u8; 6];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut ready)?;
    let client = format!(
        "import socket\nc=socket.create_connection(('{addr}',{to}),timeout=5)\n\
         c.sendall(b'TCP');print(c.recv(128).decode())"
    );
    let out = in_ns(client_ns, &["python3", "-c", &client]);
    let _ = child.kill();
    child.wait()?;
    out
}

pub fn run() -> Result<()> {
    let file = root().join("examples/docker-default.toml");
    let file = file.to_str().unwrap();
    let nat_file = root().join("examples/docker-nat.toml");
    let nat_file = nat_file.to_str().unwrap();
    for t in [TOPO, NAT_TOPO] {
        if std::path::Path::new(&format!("/run/netctl/topologies/{t}.json")).exists() {
            println!("==> an earlier demo left {t} applied; destroying it first");
            show(&["destroy", t])?;
        }
    }
    let before = footprint();
    let mut result = demo(file);
    println!("\n==> tearing down");
    let mut destroyed = show(&["destroy", file]).map(|_| ());
    if result.is_ok() && destroyed.is_ok() {
        result = nat_demo(nat_file);
        println!("\n==> tearing down");
        destroyed = show(&["destroy", nat_file]).map(|_| ());
    }
    let after = footprint();
    result?;
    destroyed?;
    if after != before {
        bail!("the demo left something behind:\nbefore: {before:?}\nafter: {after:?}");
    }
    println!("\n==> done: namespaces, links and /sys/fs/bpf are as they were");
    Ok(())
}

fn demo(file: &str) -> Result<()> {
    println!(
        "==> Docker's default network (docker0 172.17.0.1/16, three containers), host side in netns {HOST}"
    );
    show(&["apply", file])?;
    show(&["show", "-n", HOST, "-n", C1])?;

    println!("\n==> traffic: ICMP and TCP between containers and to the gateway");
    in_ns(C1, &["ping", "-c", "3", "-i", "0.2", "172.17.0.3"])?;
    in_ns(C1, &["ping", "-c", "2", "-i", "0.2", "172.17.0.1"])?;
    let tcp = tcp_round_trip()?;
    if !tcp.contains("you are 172.17.0.2:") {
        bail!("TCP round trip failed: {tcp}");
    }

    println!("\n==> the eBPF fast path: programs on the host-side veth ends, maps pinned");
    show(&["datapath", "status"])?;
    show(&["maps", "list", "-t", TOPO])?;
    show(&["fdb", "show", "-t", TOPO])?;
    let stats = show(&["stats", "-t", TOPO])?;
    let redirected = stats
        .lines()
        .find_map(|l| l.trim().strip_prefix("redirect_l2"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    if redirected == 0 {
        bail!("the datapath redirected nothing");
    }

    println!("\n==> netfilter rules in the datapath, in iptables' syntax");
    let file_rules = std::env::temp_dir().join(format!("netctl-demo-{}.rules", std::process::id()));
    std::fs::write(&file_rules, RULES)?;
    let restored = show(&[
        "rules",
        "--topology",
        TOPO,
        "restore",
        file_rules.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_file(&file_rules);
    restored?;
    in_ns(C1, &["ping", "-c", "2", "-i", "0.2", "172.17.0.3"])?;
    println!("\n$ netctl netns exec {C3} -- ping -c 1 172.17.0.2   (refused by a REJECT rule)");
    let o = Command::new(netctl_path())
        .args([
            "netns",
            "exec",
            C3,
            "--",
            "ping",
            "-c",
            "1",
            "-W",
            "2",
            "172.17.0.2",
        ])
        .output()?;
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    print!("{out}");
    if o.status.success() || !out.contains("172.17.0.1") {
        bail!("the REJECT rule did not answer");
    }
    show(&["rules", "--topology", TOPO, "list", "-v", "-n", "FORWARD"])?;
    show(&["rules", "--topology", TOPO, "save", "-c"])?;

    println!("\n==> applying again changes nothing");
    let again = show(&["apply", file])?;
    if !again.contains("no changes") {
        bail!("re-apply changed something");
    }
    show(&["route", "get", "172.17.0.3", "-n", C1])?;
    show(&["route", "get", "10.1.2.3", "-n", HOST]).ok();

    println!("\n==> detaching the programs: the kernel bridge carries on");
    show(&["datapath", "detach", TOPO])?;
    in_ns(C1, &["ping", "-c", "2", "-i", "0.2", "172.17.0.3"])?;
    Ok(())
}

fn nat_demo(file: &str) -> Result<()> {
    println!(
        "\n==> Docker's NAT: docker0 with an uplink (uplink0 192.0.2.2) to {NAT_OUT} (192.0.2.1), \
         c1 publishing 8080:80, Docker's rules, all done by the datapath"
    );
    show(&["apply", file])?;
    show(&["rules", "--topology", NAT_TOPO, "save", "-t", "nat"])?;

    println!("\n==> out through MASQUERADE: the outside world sees the uplink's address");
    in_ns(NAT_C3, &["ping", "-c", "2", "-i", "0.2", "192.0.2.1"])?;
    let out = ask_tcp(NAT_OUT, "0.0.0.0", 7000, NAT_C3, "192.0.2.1", 7000)?;
    if !out.contains("you are 192.0.2.2:") {
        bail!("masquerade: {out}");
    }

    println!("\n==> in through the published port 192.0.2.2:8080 -> c1:80");
    let out = ask_tcp(NAT_C1, "0.0.0.0", 80, NAT_OUT, "192.0.2.2", 8080)?;
    if !out.contains("you are 192.0.2.1:") {
        bail!("published port from outside: {out}");
    }
    println!("\n==> the host reaches its own published port (nat OUTPUT, on lo)");
    let out = ask_tcp(NAT_C1, "0.0.0.0", 80, NAT_HOST, "192.0.2.2", 8080)?;
    if !out.contains("you are 172.17.0.1:") {
        bail!("published port from the host: {out}");
    }
    println!("\n==> hairpin: c3 through the uplink's address");
    let out = ask_tcp(NAT_C1, "0.0.0.0", 80, NAT_C3, "192.0.2.2", 8080)?;
    if !out.contains("you are 172.17.0.4:") {
        bail!("hairpin: {out}");
    }

    println!("\n==> the datapath's conntrack, with the translations");
    show(&["conntrack", "list", "--topology", NAT_TOPO])?;
    show(&[
        "rules",
        "--topology",
        NAT_TOPO,
        "list",
        "-v",
        "-n",
        "-t",
        "nat",
    ])?;
    Ok(())
}

//! `cargo xtask run`: the demo. Docker's default network in namespaces of
//! its own, with the eBPF datapath, shown working and torn down again.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::sh::{output, root};

const TOPO: &str = "docker-default";
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
    let server = "import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
                  s.bind(('172.17.0.3',8080));s.listen(1);print('ready',flush=True)\n\
                  c,_=s.accept();c.sendall(b'hello from c2 over '+c.recv(64));c.close()";
    let mut child = Command::new(netctl_path())
        .args(["netns", "exec", C2, "--", "python3", "-c", server])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut ready = [0u8; 6];
    std::io::Read::read_exact(child.stdout.as_mut().unwrap(), &mut ready)?;
    let client = "import socket\nc=socket.create_connection(('172.17.0.3',8080),timeout=5)\n\
                  c.sendall(b'TCP');print(c.recv(64).decode())";
    let out = in_ns(C1, &["python3", "-c", client])?;
    child.wait()?;
    Ok(out)
}

pub fn run() -> Result<()> {
    let file = root().join("examples/docker-default.toml");
    let file = file.to_str().unwrap();
    if std::path::Path::new("/run/netctl/topologies/docker-default.json").exists() {
        println!("==> an earlier demo was left applied; destroying it first");
        show(&["destroy", TOPO])?;
    }
    let before = footprint();
    let result = demo(file);
    println!("\n==> tearing down");
    let destroyed = show(&["destroy", file]);
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
    if !tcp.contains("hello from c2 over TCP") {
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

//! `netctl conntrack list|flush` against the real kernel: connections made
//! between containers through a stateful ruleset show up with their
//! tuples, state, counters and time left, as `conntrack -L` would show the
//! kernel's; NAT shows in the reply tuple; a flush empties the table.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;

use netctl_tests::*;

const STATEFUL: &str = "*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A FORWARD -m conntrack --ctstate NEW -j ACCEPT
COMMIT
";

const MASQ: &str = "*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -s 10.81.0.0/24 -o br-b -j MASQUERADE
COMMIT
";

fn two_bridges(name: &str, extra: &str) -> String {
    format!(
        r#"
name = "{name}"
host_netns = "{name}-h"
{extra}
[[bridge]]
name = "br-a"
addresses = ["10.81.0.1/24"]

[[bridge]]
name = "br-b"
addresses = ["10.82.0.1/24"]

[[container]]
name = "a"
bridge = "br-a"
addresses = ["10.81.0.2/24"]
gateway = "10.81.0.1"

[[container]]
name = "b"
bridge = "br-b"
addresses = ["10.82.0.2/24"]
gateway = "10.82.0.1"
"#
    )
}

fn apply(name: &str, rules: &str) -> PathBuf {
    let extra = format!("rules = \"\"\"\n{rules}\"\"\"\n");
    let f = write_file(name, "t.toml", &two_bridges(name, &extra));
    let o = netctl(&["apply", f.to_str().unwrap()]);
    assert!(o.status.success(), "apply: {}", stderr(&o));
    f
}

/// `netctl conntrack list --json` of the topology.
fn list(name: &str) -> Vec<Value> {
    let o = netctl(&["conntrack", "list", "--topology", name, "--json"]);
    assert!(o.status.success(), "conntrack list: {}", stderr(&o));
    serde_json::from_str::<Value>(&stdout(&o))
        .unwrap_or_else(|e| panic!("{e}: {}", stdout(&o)))
        .as_array()
        .unwrap()
        .clone()
}

/// The connections container a (10.81.0.2) opened: the host's own
/// packets (IGMP reports from the bridges' addresses, say) are tracked too,
/// whenever the kernel sends them.
fn ours(v: &[Value]) -> Vec<Value> {
    v.iter()
        .filter(|c| c["original"]["src"] == "10.81.0.2")
        .cloned()
        .collect()
}

/// The connection of `proto` whose original direction is `src` -> `dst`
/// (and `dport` for TCP and UDP), if listed.
fn find<'a>(
    v: &'a [Value],
    proto: &str,
    src: &str,
    dst: &str,
    dport: Option<u16>,
) -> Option<&'a Value> {
    v.iter().find(|c| {
        c["proto"] == proto
            && c["original"]["src"] == src
            && c["original"]["dst"] == dst
            && dport.is_none_or(|p| c["original"]["dport"] == p)
    })
}

fn get<'a>(v: &'a [Value], proto: &str, src: &str, dst: &str, dport: Option<u16>) -> &'a Value {
    find(v, proto, src, dst, dport)
        .unwrap_or_else(|| panic!("no {proto} {src} -> {dst} {dport:?} in {v:#?}"))
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Both directions carried packets, and bytes for at least an IP header each.
fn both_ways(c: &Value) {
    for dir in ["original", "reply"] {
        let p = num(&c[dir]["packets"]);
        assert!(p > 0, "{dir} packets: {c:#}");
        assert!(num(&c[dir]["bytes"]) >= 20 * p, "{dir} bytes: {c:#}");
    }
    assert_eq!(c["unreplied"], false, "{c:#}");
}

fn timeout_within(c: &Value, lo: u64, hi: u64) {
    let t = num(&c["timeout"]);
    assert!(lo <= t && t <= hi, "timeout {t} not in {lo}..={hi}: {c:#}");
}

/// A TCP server in `ns` on `port` for `n` connections, one after the
/// other: each is answered; the first is closed last, the others as soon
/// as their client has closed them.
fn tcp_server(ns: &str, port: u16, n: usize) -> std::process::Child {
    spawn_ready(
        ns,
        &format!(
            "import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
             s.bind(('0.0.0.0',{port}));s.listen(2);s.settimeout(20);print('ready',flush=True)\n\
             cs=[]\n\
             for i in range({n}):\n  c,_=s.accept();c.settimeout(20);c.sendall(b'echo:'+c.recv(100));cs.append(c)\n  \
             if i>0:\n    c.recv(100);c.close()\n\
             cs[0].recv(100);cs[0].close()"
        ),
    )
    .0
}

/// A TCP client in `ns` from `sport` that says hello and waits for the
/// answer; `hold` keeps the connection open until the client is killed.
fn tcp_client(
    ns: &str,
    addr: &str,
    port: u16,
    sport: u16,
    hold: bool,
) -> Option<std::process::Child> {
    let script = format!(
        "import socket,time\nc=socket.socket();c.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         c.bind(('0.0.0.0',{sport}));c.settimeout(5)\n\
         try:\n  c.connect(('{addr}',{port}));c.sendall(b'hi');assert c.recv(100)==b'echo:hi'\n\
         except Exception as e:\n  print('error',repr(e),flush=True);raise SystemExit(1)\n\
         print('ready',flush=True)\n"
    );
    let script = if hold {
        script + "time.sleep(60)"
    } else {
        script + "c.close()"
    };
    let mut child = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", &script])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(
        line.trim(),
        "ready",
        "TCP {sport} -> {addr}:{port} from {ns}"
    );
    if hold {
        Some(child)
    } else {
        assert!(child.wait().unwrap().success());
        None
    }
}

/// A UDP echo of one datagram in `ns` on `port`.
fn udp_server(ns: &str, port: u16) -> std::process::Child {
    spawn_ready(
        ns,
        &format!(
            "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
             s.bind(('0.0.0.0',{port}));s.settimeout(10);print('ready',flush=True)\n\
             d,a=s.recvfrom(100);s.sendto(d,a)"
        ),
    )
    .0
}

/// Sends a datagram from `ns`, `sport` to `addr:port`; returns whether an
/// answer came back.
fn udp_send(ns: &str, addr: &str, port: u16, sport: u16) -> bool {
    let script = format!(
        "import socket\nc=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         c.bind(('0.0.0.0',{sport}));c.settimeout(2)\nc.sendto(b'hi',('{addr}',{port}))\n\
         try:\n  c.recvfrom(100);print('answered')\nexcept OSError:\n  print('no answer')"
    );
    stdout(&in_ns(ns, &["python3", "-c", &script])).trim() == "answered"
}

fn finish(mut child: std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Lists until `pred` holds (connection teardown takes a few packets).
fn list_until(name: &str, what: &str, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let t0 = Instant::now();
    loop {
        let v = list(name);
        if pred(&v) {
            return v;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "{what}: {v:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the TCP connection from `sport` has seen its last packet
/// (TIME_WAIT, or CLOSE after a reset): a flush before that would leave
/// the last ACK to start a new entry.
fn closed_down(name: &str, sport: u16) {
    list_until(name, "the connection closes", |v| {
        v.iter().any(|c| {
            c["original"]["sport"] == sport && (c["state"] == "TIME_WAIT" || c["state"] == "CLOSE")
        })
    });
}

/// The number after `deleted ` in flush's report.
fn deleted(out: &str) -> u64 {
    out.split("deleted ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {out:?}"))
}

#[test]
fn list_shows_tcp_udp_and_icmp_connections_and_flush_empties_it() {
    let name = unique("ctl");
    let _g = Cleanup::new(&name);
    let before = footprint(&name);
    let f = apply(&name, STATEFUL);
    let (a, b) = (format!("{name}-a"), format!("{name}-b"));
    assert!(
        ours(&list(&name)).is_empty(),
        "a fresh datapath tracks nothing"
    );

    // TCP: one connection held open, one opened and closed.
    let server = tcp_server(&b, 8080, 2);
    let held = tcp_client(&a, "10.82.0.2", 8080, 40001, true).unwrap();
    tcp_client(&a, "10.82.0.2", 8080, 40002, false);
    // UDP: one exchange, one datagram to a closed port (refused by ICMP,
    // which is RELATED, not a reply).
    let us = udp_server(&b, 5353);
    assert!(udp_send(&a, "10.82.0.2", 5353, 41000), "UDP echo");
    finish(us);
    assert!(!udp_send(&a, "10.82.0.2", 9, 41001));
    // ICMP echo.
    assert!(ping(&a, "10.82.0.2"));

    let v = list_until(&name, "the closed connection reaches TIME_WAIT", |v| {
        find(v, "tcp", "10.81.0.2", "10.82.0.2", Some(8080)).is_some()
            && v.iter()
                .any(|c| c["original"]["sport"] == 40002 && c["state"] == "TIME_WAIT")
    });
    assert_eq!(ours(&v).len(), 5, "{v:#?}");

    let open = v
        .iter()
        .find(|c| c["proto"] == "tcp" && c["original"]["sport"] == 40001)
        .unwrap_or_else(|| panic!("{v:#?}"));
    assert_eq!(open["protonum"], 6);
    assert_eq!(open["state"], "ESTABLISHED");
    assert_eq!(open["original"]["dst"], "10.82.0.2");
    assert_eq!(open["original"]["dport"], 8080);
    let r = &open["reply"];
    assert_eq!(
        (&r["src"], &r["dst"], &r["sport"], &r["dport"]),
        (
            &Value::from("10.82.0.2"),
            &Value::from("10.81.0.2"),
            &Value::from(8080),
            &Value::from(40001)
        ),
        "{open:#}"
    );
    both_ways(open);
    // SYN, ACK, data, ACK at least one way; SYN-ACK, data the other.
    assert!(num(&open["original"]["packets"]) >= 3, "{open:#}");
    assert!(num(&open["reply"]["packets"]) >= 2, "{open:#}");
    timeout_within(open, 432000 - 10, 432000);
    assert_eq!(open["nat"], Value::Null);

    let closed = v
        .iter()
        .find(|c| c["proto"] == "tcp" && c["original"]["sport"] == 40002)
        .unwrap();
    both_ways(closed);
    timeout_within(closed, 100, 120);

    let udp = get(&v, "udp", "10.81.0.2", "10.82.0.2", Some(5353));
    assert_eq!(udp["protonum"], 17);
    assert_eq!(udp["original"]["sport"], 41000);
    assert_eq!(udp["reply"]["src"], "10.82.0.2");
    assert_eq!(udp["reply"]["dport"], 41000);
    assert_eq!(udp["state"], Value::Null);
    both_ways(udp);
    timeout_within(udp, 100, 120);

    let refused = get(&v, "udp", "10.81.0.2", "10.82.0.2", Some(9));
    assert_eq!(refused["unreplied"], true, "{refused:#}");
    assert_eq!(refused["reply"]["packets"], 0);
    assert_eq!(refused["original"]["packets"], 1);
    timeout_within(refused, 20, 30);

    let icmp = get(&v, "icmp", "10.81.0.2", "10.82.0.2", None);
    assert_eq!(icmp["protonum"], 1);
    assert!(icmp["original"].get("sport").is_none(), "{icmp:#}");
    assert_eq!(icmp["original"]["id"], icmp["reply"]["id"]);
    assert_eq!(icmp["reply"]["src"], "10.82.0.2");
    both_ways(icmp);
    assert!(num(&icmp["original"]["packets"]) >= 3, "{icmp:#}");
    timeout_within(icmp, 20, 30);

    // The text form: one line per connection, as conntrack -L.
    let o = netctl(&["conntrack", "list", "--topology", &name]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" src=10.81.0.2 dst=10.82.0.2 "))
        .collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert_eq!(text.lines().count(), v.len(), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("tcp      6 4319")
            && l.contains(
                " ESTABLISHED src=10.81.0.2 dst=10.82.0.2 sport=40001 dport=8080 packets="
            )
            && l.contains(" src=10.82.0.2 dst=10.81.0.2 sport=8080 dport=40001 packets=")),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with("udp      17 ")
            && l.contains("sport=41001 dport=9 packets=1 ")
            && l.contains(
                " [UNREPLIED] src=10.82.0.2 dst=10.81.0.2 sport=9 dport=41001 packets=0 bytes=0"
            )),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("icmp     1 ") && l.contains(" id=")),
        "{text}"
    );
    assert!(!text.contains("nat="), "{text}");
    assert!(
        stderr(&o).contains(&format!("{} flow entries", v.len())),
        "{}",
        stderr(&o)
    );

    // Close the held connection and let the server finish: nothing moves
    // any more, then flush.
    finish(held);
    let mut server = server;
    let _ = server.wait();
    closed_down(&name, 40001);
    let listed = list(&name).len() as u64;
    let flushed = Instant::now();
    let o = netctl(&["conntrack", "flush", "--topology", &name]);
    assert!(o.status.success(), "flush: {}", stderr(&o));
    let n = deleted(&stdout(&o));
    assert!(5 <= n && n <= listed, "{listed} listed: {}", stdout(&o));
    // Only what the host may have sent since is left.
    let v = list(&name);
    assert!(ours(&v).is_empty(), "{v:#?}");
    let since = flushed.elapsed().as_secs() + 1;
    assert!(v.iter().all(|c| num(&c["age"]) <= since), "{v:#?}");

    // Tracking goes on after a flush.
    assert!(ping(&a, "10.82.0.2"));
    let v = ours(&list(&name));
    assert_eq!(v.len(), 1, "{v:#?}");
    get(&v, "icmp", "10.81.0.2", "10.82.0.2", None);

    let o = netctl(&["destroy", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(footprint(&name), before, "destroy left something");
}

#[test]
fn masqueraded_connections_show_the_translation_in_their_reply_tuple() {
    let name = unique("ctn");
    let _g = Cleanup::new(&name);
    apply(&name, &format!("{STATEFUL}{MASQ}"));
    let (a, b) = (format!("{name}-a"), format!("{name}-b"));

    let us = udp_server(&b, 5353);
    assert!(
        udp_send(&a, "10.82.0.2", 5353, 41010),
        "UDP echo through MASQUERADE"
    );
    finish(us);
    let server = tcp_server(&b, 8080, 1);
    let held = tcp_client(&a, "10.82.0.2", 8080, 40010, true).unwrap();

    let v = ours(&list(&name));
    assert_eq!(v.len(), 2, "{v:#?}");
    let tcp = get(&v, "tcp", "10.81.0.2", "10.82.0.2", Some(8080));
    assert_eq!(tcp["state"], "ESTABLISHED");
    assert_eq!(tcp["original"]["sport"], 40010);
    // b answers the bridge's address, at the port MASQUERADE kept.
    let r = &tcp["reply"];
    assert_eq!(
        (&r["src"], &r["dst"], &r["sport"], &r["dport"]),
        (
            &Value::from("10.82.0.2"),
            &Value::from("10.82.0.1"),
            &Value::from(8080),
            &Value::from(40010)
        ),
        "{tcp:#}"
    );
    both_ways(tcp);
    let nat = &tcp["nat"];
    assert_eq!(nat["kind"], "snat", "{tcp:#}");
    assert_eq!(nat["snat"]["addr"], "10.82.0.1");
    assert_eq!(nat["snat"]["port"], 40010);
    assert_eq!(nat["dnat"], Value::Null);

    let udp = get(&v, "udp", "10.81.0.2", "10.82.0.2", Some(5353));
    assert_eq!(udp["reply"]["dst"], "10.82.0.1");
    assert_eq!(udp["nat"]["kind"], "snat");
    both_ways(udp);

    let o = netctl(&["conntrack", "list", "--topology", &name]);
    let text = stdout(&o);
    assert!(
        text.lines().any(|l| l.contains("sport=40010 dport=8080")
            && l.contains(" src=10.82.0.2 dst=10.82.0.1 sport=8080 dport=40010 ")
            && l.ends_with(" nat=snat")),
        "{text}"
    );

    // A flush drops the NAT bindings' reply tuples too.
    finish(held);
    let mut server = server;
    let _ = server.wait();
    closed_down(&name, 40010);
    let dump = stdout(&netctl(&["maps", "dump", "ct_nat", "-t", &name]));
    let o = netctl(&["conntrack", "flush", "--topology", &name]);
    assert!(o.status.success(), "flush: {}", stderr(&o));
    let out = stdout(&o);
    assert!(deleted(&out) >= 2, "{out}");
    assert!(out.contains(" 2 NAT reply tuple"), "{out}\n{dump}");
    assert!(ours(&list(&name)).is_empty());
}

#[test]
fn conntrack_needs_an_applied_topology_with_the_ebpf_datapath() {
    let name = unique("ctk");
    let _g = Cleanup::new(&name);
    let before = footprint(&name);

    let o = netctl(&["conntrack", "list", "--topology", &name]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("is not applied"), "{}", stderr(&o));

    // The kernel datapath (which takes no rules) has no eBPF conntrack.
    let f = write_file(
        &name,
        "t.toml",
        &two_bridges(&name, "datapath = \"kernel\"\n"),
    );
    let o = netctl(&["apply", f.to_str().unwrap()]);
    assert!(o.status.success(), "apply: {}", stderr(&o));
    for cmd in ["list", "flush"] {
        let o = netctl(&["conntrack", cmd, "--topology", &name]);
        assert!(!o.status.success(), "{cmd} succeeded: {}", stdout(&o));
        let err = stderr(&o);
        assert!(
            err.contains("datapath = \"kernel\"") && err.contains("tracks none"),
            "{cmd}: {err}"
        );
    }

    let o = netctl(&["destroy", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(footprint(&name), before, "destroy left something");
}

#[test]
fn the_topologys_timeouts_expire_connections_and_the_next_packet_is_new() {
    let name = unique("ctt");
    let _g = Cleanup::new(&name);
    let before = footprint(&name);
    let rules = "*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A FORWARD -p udp -m conntrack --ctstate NEW -j ACCEPT
COMMIT
";
    let extra = format!(
        "rules = \"\"\"\n{rules}\"\"\"\n[conntrack]\nudp_timeout = 5\nudp_timeout_stream = 3\n"
    );
    let f = write_file(&name, "t.toml", &two_bridges(&name, &extra));
    let o = netctl(&["apply", f.to_str().unwrap()]);
    assert!(o.status.success(), "apply: {}", stderr(&o));
    let (a, b) = (format!("{name}-a"), format!("{name}-b"));

    // A flow without an answer (udp_timeout; the client waits 2 s for
    // one) and one with (udp_timeout_stream): the list shows the
    // topology's timeouts, not the kernel's defaults (30 s and 120 s).
    assert!(!udp_send(&a, "10.82.0.2", 7101, 40101), "nobody listens");
    let s = udp_server(&b, 7100);
    assert!(udp_send(&a, "10.82.0.2", 7100, 40100), "UDP answered");
    finish(s);
    let v = list(&name);
    let replied = get(&v, "udp", "10.81.0.2", "10.82.0.2", Some(7100));
    let lone = get(&v, "udp", "10.81.0.2", "10.82.0.2", Some(7101));
    assert_eq!(replied["unreplied"], false, "{replied:#}");
    assert_eq!(lone["unreplied"], true, "{lone:#}");
    timeout_within(replied, 0, 3);
    timeout_within(lone, 0, 3);
    let new_rule = |name: &str| -> u64 {
        let o = netctl(&["rules", "--topology", name, "save", "-c", "-t", "filter"]);
        let saved = stdout(&o);
        let line = saved
            .lines()
            .find(|l| l.contains("--ctstate NEW"))
            .unwrap_or_else(|| panic!("{saved}"));
        line[1..line.find(':').unwrap()].parse().unwrap()
    };
    assert_eq!(new_rule(&name), 2, "each flow's first packet was NEW");

    // They expire once idle for longer than their timeout (no packet is
    // sent meanwhile: the ICMP port-unreachable was the lone flow's last).
    let t0 = Instant::now();
    loop {
        let v = list(&name);
        let ours = |p: u16| find(&v, "udp", "10.81.0.2", "10.82.0.2", Some(p)).is_some();
        if !ours(7100) && !ours(7101) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "not expired: {v:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // The flow's next packet starts a connection again.
    assert!(!udp_send(&a, "10.82.0.2", 7101, 40101), "nobody listens");
    assert_eq!(new_rule(&name), 3, "NEW again after the timeout");
    drop(_g);
    assert_eq!(footprint(&name), before);
}

//! Netfilter rules in the eBPF datapath against the real kernel: verdicts,
//! conntrack states, REJECT answers, LOG, counters, edits and atomic
//! replacement, seen the way an operator would (connections that work or
//! fail, `rules save -c`, `netctl trace`).

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use netctl_tests::*;

fn two_bridges(name: &str, rules: Option<&str>) -> String {
    let rules = rules
        .map(|r| format!("rules = \"\"\"\n{r}\"\"\"\n"))
        .unwrap_or_default();
    format!(
        r#"
name = "{name}"
host_netns = "{name}-h"
{rules}
[[bridge]]
name = "br-a"
addresses = ["10.71.0.1/24"]

[[bridge]]
name = "br-b"
addresses = ["10.72.0.1/24"]

[[container]]
name = "a"
bridge = "br-a"
addresses = ["10.71.0.2/24"]
gateway = "10.71.0.1"

[[container]]
name = "a2"
bridge = "br-a"
addresses = ["10.71.0.3/24"]
gateway = "10.71.0.1"

[[container]]
name = "b"
bridge = "br-b"
addresses = ["10.72.0.2/24"]
gateway = "10.72.0.1"
"#
    )
}

fn apply(name: &str, rules: Option<&str>) -> PathBuf {
    let f = write_file(name, "t.toml", &two_bridges(name, rules));
    let o = netctl(&["apply", f.to_str().unwrap()]);
    assert!(o.status.success(), "apply: {}", stderr(&o));
    f
}

fn rules(name: &str, args: &[&str]) -> std::process::Output {
    let mut v = vec!["rules", "--topology", name];
    v.extend_from_slice(args);
    netctl(&v)
}

fn restore(name: &str, text: &str) {
    let f = write_file(name, "r.rules", text);
    let o = rules(name, &["restore", f.to_str().unwrap()]);
    assert!(o.status.success(), "restore: {}", stderr(&o));
}

/// `rules save -c` as (counters, rule) lines, the comments dropped.
fn saved(name: &str) -> String {
    let o = rules(name, &["save", "-c"]);
    assert!(o.status.success(), "save: {}", stderr(&o));
    stdout(&o)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The packet count of the saved line that ends with `rule`.
fn count_of(name: &str, rule: &str) -> u64 {
    let s = saved(name);
    let line = s
        .lines()
        .find(|l| l.ends_with(rule))
        .unwrap_or_else(|| panic!("no line ending with {rule:?} in\n{s}"));
    let c = line.split(']').next().unwrap();
    let c = c.rsplit('[').next().unwrap();
    c.split(':').next().unwrap().parse().unwrap()
}

/// Connects from `ns` to `addr:port` with a 2 s timeout: "connected",
/// "refused" or "timeout". A listener answers in `server_ns` when given.
fn connect(ns: &str, server_ns: Option<&str>, addr: &str, port: u16) -> String {
    connect_with(ns, None, server_ns, addr, port)
}

/// `connect`, from source port `sport` when given.
fn connect_with(
    ns: &str,
    sport: Option<u16>,
    server_ns: Option<&str>,
    addr: &str,
    port: u16,
) -> String {
    let server = server_ns.map(|s| {
        spawn_ready(
            s,
            &format!(
                "import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
                 s.bind(('0.0.0.0',{port}));s.listen(1);s.settimeout(4);print('ready',flush=True)\n\
                 try:\n  c,_=s.accept();c.close()\nexcept OSError:\n  pass"
            ),
        )
    });
    let bind = sport
        .map(|p| format!("s.bind(('0.0.0.0',{p}))\n"))
        .unwrap_or_default();
    let client = format!(
        "import socket\ns=socket.socket()\n{bind}s.settimeout(2)\ntry:\n  s.connect(('{addr}',{port}));print('connected')\n\
         except ConnectionRefusedError:\n  print('refused')\nexcept socket.timeout:\n  print('timeout')\n\
         except OSError as e:\n  print('unreachable' if e.errno == 113 else 'errno %d' % e.errno)"
    );
    let o = in_ns(ns, &["python3", "-c", &client]);
    if let Some((mut child, _)) = server {
        let _ = child.kill();
        let _ = child.wait();
    }
    stdout(&o).trim().to_string()
}

/// Sends one UDP datagram from `ns` to `addr:port` and reports whether an
/// ICMP port-unreachable came back ("refused") or nothing ("timeout").
fn udp_probe(ns: &str, addr: &str, port: u16) -> String {
    let client = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.connect(('{addr}',{port}));s.send(b'x')\n\
         s.settimeout(2)\ntry:\n  s.recv(10);print('data')\nexcept ConnectionRefusedError:\n  print('refused')\n\
         except OSError:\n  print('timeout')"
    );
    stdout(&in_ns(ns, &["python3", "-c", &client]))
        .trim()
        .to_string()
}

const STATEFUL: &str = "*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A FORWARD -i br-a -o br-b -p tcp -m tcp --dport 8080 -m conntrack --ctstate NEW -j ACCEPT
-A FORWARD -i br-a -o br-b -p icmp -m icmp --icmp-type 8 -j ACCEPT
-A FORWARD -i br-a -o br-a -j ACCEPT
COMMIT
";

#[test]
fn a_stateful_firewall_lets_replies_back_and_nothing_else() {
    let name = unique("rst");
    let _g = Cleanup::new(&name);
    let before = footprint(&name);
    let f = apply(&name, Some(STATEFUL));
    let (a, a2, b) = (
        format!("{name}-a"),
        format!("{name}-a2"),
        format!("{name}-b"),
    );

    assert!(ping(&a, "10.72.0.2"), "a -> b echo is allowed");
    assert!(!ping(&b, "10.71.0.2"), "b -> a echo is not");
    assert!(ping(&a, "10.71.0.3"), "same bridge is allowed");
    assert_eq!(connect(&a, Some(&b), "10.72.0.2", 8080), "connected");
    assert_eq!(connect(&b, Some(&a), "10.71.0.2", 8080), "timeout");
    assert_eq!(connect(&a, Some(&b), "10.72.0.2", 8081), "timeout");
    assert_eq!(udp_probe(&a2, "10.72.0.2", 9), "timeout");

    // One connection was NEW on port 8080; its SYN-ACK and the rest were
    // ESTABLISHED; everything refused fell to the DROP policy.
    assert_eq!(
        count_of(
            &name,
            "-A FORWARD -i br-a -o br-b -p tcp -m tcp --dport 8080 -m conntrack --ctstate NEW -j ACCEPT"
        ),
        1
    );
    assert!(
        count_of(
            &name,
            "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        ) >= 5
    );
    let s = saved(&name);
    let policy = s.lines().find(|l| l.starts_with(":FORWARD DROP")).unwrap();
    assert_ne!(policy, ":FORWARD DROP [0:0]", "{s}");
    assert!(decision(&name, "drop_rule") >= 3);

    let o = netctl(&["destroy", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(footprint(&name), before, "destroy left something");
    assert!(
        !rules(&name, &["save"]).status.success(),
        "rules outlived their topology"
    );
}

#[test]
fn reject_answers_like_the_kernel() {
    let name = unique("rrj");
    let _g = Cleanup::new(&name);
    apply(&name, None);
    let (a, b) = (format!("{name}-a"), format!("{name}-b"));
    restore(
        &name,
        "*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -p icmp -m icmp --icmp-type 8 -j REJECT --reject-with icmp-host-unreachable
-A FORWARD -p tcp -m tcp --dport 81 -j REJECT --reject-with tcp-reset
-A FORWARD -p udp -m udp --dport 82 -j REJECT
-A FORWARD -p tcp -m tcp --dport 83 -j REJECT --reject-with icmp-admin-prohibited
COMMIT
",
    );
    // A listener on b would accept: only the rule's reset can refuse.
    assert_eq!(connect(&a, Some(&b), "10.72.0.2", 81), "refused");
    assert_eq!(udp_probe(&a, "10.72.0.2", 82), "refused");
    assert_eq!(connect(&a, Some(&b), "10.72.0.2", 84), "connected");
    // icmp-admin-prohibited: the connect fails with EHOSTUNREACH, which
    // only the ICMP answer gives (no answer is a timeout).
    assert_eq!(connect(&a, Some(&b), "10.72.0.2", 83), "unreachable");
    // INPUT: echo to the host is answered host-unreachable, from the
    // address it was sent to; echo to b still works.
    let o = in_ns(&a, &["ping", "-c", "1", "-W", "2", "10.71.0.1"]);
    let out = stdout(&o);
    assert!(
        out.contains("From 10.71.0.1") && out.contains("Destination Host Unreachable"),
        "{out}"
    );
    assert!(ping(&a, "10.72.0.2"));
    assert!(decision(&name, "reject_rule") >= 4);
}

#[test]
fn edits_act_at_once_and_keep_counters_of_kept_rules() {
    let name = unique("red");
    let _g = Cleanup::new(&name);
    apply(&name, None);
    let a = format!("{name}-a");
    let ok = |args: &[&str]| {
        let o = rules(&name, args);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    };
    ok(&["-A", "FORWARD", "-p", "icmp", "-j", "ACCEPT"]);
    assert!(ping(&a, "10.72.0.2"));
    let kept = "-A FORWARD -p icmp -j ACCEPT";
    let n = count_of(&name, kept);
    assert!(n >= 3, "{n}");

    // Insert a DROP in front: echo stops, the kept rule keeps its count.
    ok(&[
        "-I",
        "FORWARD",
        "-p",
        "icmp",
        "-d",
        "10.72.0.2",
        "-j",
        "DROP",
    ]);
    assert!(!ping(&a, "10.72.0.2"));
    assert_eq!(count_of(&name, kept), n);
    assert!(count_of(&name, "-A FORWARD -d 10.72.0.2/32 -p icmp -j DROP") >= 1);

    // Replace it with a rule for another address: echo works again.
    ok(&[
        "-R",
        "FORWARD",
        "1",
        "-p",
        "icmp",
        "-d",
        "10.72.0.9",
        "-j",
        "DROP",
    ]);
    assert!(ping(&a, "10.72.0.2"));
    // A user chain, jumped to, with a RETURN for a and a DROP after it.
    ok(&["-N", "CHECK"]);
    ok(&["-A", "CHECK", "-s", "10.71.0.2", "-j", "RETURN"]);
    ok(&["-A", "CHECK", "-s", "10.72.0.0/24", "-j", "RETURN"]);
    ok(&["-A", "CHECK", "-j", "DROP"]);
    ok(&["-I", "FORWARD", "-j", "CHECK"]);
    assert!(ping(&a, "10.72.0.2"));
    assert!(!ping(&format!("{name}-a2"), "10.72.0.2"));
    // Policy, flush, delete chain.
    ok(&["-F", "CHECK"]);
    ok(&["-D", "FORWARD", "-j", "CHECK"]);
    ok(&["-X", "CHECK"]);
    ok(&["-P", "FORWARD", "DROP"]);
    ok(&["-D", "FORWARD", "2"]);
    assert!(!ping(&a, "10.72.0.2"));
    let s = stdout(&rules(&name, &["-S", "FORWARD"]));
    assert_eq!(
        s, "-P FORWARD DROP\n-A FORWARD -d 10.72.0.9/32 -p icmp -j DROP\n",
        "{s}"
    );
    // -Z zeroes, iptables' errors are iptables' words and change nothing.
    ok(&["-Z"]);
    assert!(saved(&name).contains(":FORWARD DROP [0:0]"));
    let bad = rules(&name, &["-X", "FORWARD"]);
    assert!(!bad.status.success());
    let bad = rules(&name, &["-A", "NOPE", "-j", "ACCEPT"]);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("No chain/target/match by that name."),
        "{}",
        stderr(&bad)
    );
    assert_eq!(stdout(&rules(&name, &["-S", "FORWARD"])), s);
}

#[test]
fn restore_refuses_what_it_does_not_support_and_keeps_the_live_rules() {
    let name = unique("rrs");
    let _g = Cleanup::new(&name);
    apply(&name, Some(STATEFUL));
    let before = saved(&name);
    let f = write_file(
        &name,
        "bad.rules",
        "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -j ACCEPT\n-A FORWARD -m comment --comment x -j ACCEPT\nCOMMIT\n",
    );
    let o = rules(&name, &["restore", f.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("line 4") && err.contains("not supported"),
        "{err}"
    );
    assert_eq!(saved(&name), before);
    assert!(!ping(&format!("{name}-b"), "10.71.0.2"));

    // save | restore gives the same rules back (restore without counters
    // starts them from zero, as iptables-restore does).
    let zeroed = |s: &str| {
        s.lines()
            .map(|l| match l.split_once(" [") {
                Some((chain, _)) if l.starts_with(':') => format!("{chain} [0:0]"),
                _ => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let text = stdout(&rules(&name, &["save"]));
    restore(&name, &text);
    assert_eq!(stdout(&rules(&name, &["save"])), zeroed(&text) + "\n");
}

#[test]
fn log_rules_show_in_the_trace_with_their_prefix() {
    let name = unique("rlg");
    let _g = Cleanup::new(&name);
    apply(&name, None);
    let a = format!("{name}-a");
    restore(
        &name,
        "*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -p icmp -j LOG --log-prefix \"icmp-seen: \"\nCOMMIT\n",
    );
    let mut child = std::process::Command::new(netctl_bin())
        .args(["trace", "--topology", &name])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // The trace attaches asynchronously: ping until a LOG line shows up.
    let mut found = None;
    for _ in 0..20 {
        let _ = in_ns(&a, &["ping", "-c", "1", "-W", "1", "10.72.0.2"]);
        while let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
            // The echo request; its reply is logged too.
            if l.contains("icmp-seen:") && l.contains("SRC=10.71.0.2") {
                found = Some(l);
            }
        }
        if found.is_some() {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let line = found.expect("no LOG line in the trace");
    assert!(
        line.contains("SRC=10.71.0.2") && line.contains("DST=10.72.0.2"),
        "{line}"
    );
    assert!(line.contains("PROTO=1"), "{line}");
}

#[test]
fn rules_need_the_ebpf_datapath() {
    let name = unique("rkd");
    let _g = Cleanup::new(&name);
    let text = two_bridges(&name, Some(STATEFUL)).replace(
        &format!("host_netns = \"{name}-h\""),
        &format!("host_netns = \"{name}-h\"\ndatapath = \"kernel\""),
    );
    let f = write_file(&name, "t.toml", &text);
    let o = netctl(&["apply", f.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("rules need datapath"), "{}", stderr(&o));
    assert!(namespaces_with(&name).is_empty());
}

#[test]
fn output_judges_what_the_host_sends() {
    let name = unique("rout");
    let _g = Cleanup::new(&name);
    apply(&name, None);
    let (h, a) = (format!("{name}-h"), format!("{name}-a"));
    restore(
        &name,
        "*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A OUTPUT -d 10.72.0.2/32 -p icmp -j DROP
-A OUTPUT -o br-a -p tcp -m tcp --dport 81 -j REJECT --reject-with tcp-reset
COMMIT
",
    );
    // The host's own echo requests: to b dropped, to a not.
    assert!(!ping(&h, "10.72.0.2"));
    assert!(ping(&h, "10.71.0.2"));
    // A listener in a would accept; the host's socket is refused at once.
    assert_eq!(connect(&h, Some(&a), "10.71.0.2", 81), "refused");
    assert_eq!(connect(&h, Some(&a), "10.71.0.2", 82), "connected");
    assert!(count_of(&name, "-A OUTPUT -d 10.72.0.2/32 -p icmp -j DROP") >= 3);
    assert_eq!(
        count_of(
            &name,
            "-A OUTPUT -o br-a -p tcp -m tcp --dport 81 -j REJECT --reject-with tcp-reset"
        ),
        1
    );
    // Containers talking to each other never pass OUTPUT.
    assert!(ping(&a, "10.72.0.2"));
}

/// New connections are judged from the flow cache by only the fields the
/// rules looked at: a rule on the source port keeps judging every source
/// port, the cache serves what does not depend on it (the replies), and
/// the counters are those of a walk per packet.
#[test]
fn the_flow_cache_keys_walks_by_the_fields_the_rules_consulted() {
    let name = unique("rfc");
    let _g = Cleanup::new(&name);
    apply(&name, None);
    let (a, b) = (format!("{name}-a"), format!("{name}-b"));
    let new_rule = "-A FORWARD -i br-a -o br-b -p tcp -m tcp --dport 8080 -m conntrack --ctstate NEW -j ACCEPT";
    let sport_rule = "-A FORWARD -i br-a -o br-b -p tcp -m tcp --sport 40000:40999 -j DROP";
    restore(
        &name,
        &format!(
            "*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
{sport_rule}
{new_rule}
-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
"
        ),
    );
    let hits = || stats(&name)["flow_cache"]["hit"].as_u64().unwrap();
    let before = hits();
    for sport in [41001, 41002, 41003] {
        assert_eq!(
            connect_with(&a, Some(sport), Some(&b), "10.72.0.2", 8080),
            "connected",
            "from port {sport}"
        );
    }
    assert!(
        hits() > before,
        "later connections' replies were not served from the flow cache"
    );
    // The source-port rule was refuted by the port for the connections
    // above; a port in its range must not be served their outcome.
    assert_eq!(
        connect_with(&a, Some(40500), Some(&b), "10.72.0.2", 8080),
        "timeout"
    );
    assert_eq!(
        connect_with(&a, Some(41004), Some(&b), "10.72.0.2", 8080),
        "connected"
    );
    assert_eq!(count_of(&name, new_rule), 4);
    assert!(count_of(&name, sport_rule) >= 1);
    // Every connection's SYN-ACK and ACK at least, cached or not.
    assert!(
        count_of(
            &name,
            "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
        ) >= 8
    );
}

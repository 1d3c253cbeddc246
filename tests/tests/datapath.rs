//! The eBPF fast path against the real kernel: flows forwarded by the
//! programs (their counters move, the kernel bridge's do not), everything
//! else still handled by the kernel, pins that outlive netctl, detach.

use std::path::PathBuf;

use netctl_tests::*;

/// Writes a topology file and applies it with the CLI, whose process exits
/// before any traffic: the programs must keep working without it.
fn apply_file(name: &str, text: &str) -> PathBuf {
    let f = write_file(name, "t.toml", text);
    let o = netctl(&["apply", f.to_str().unwrap()]);
    assert!(o.status.success(), "apply: {}", stderr(&o));
    f
}

fn one_bridge(name: &str, ageing: u32) -> String {
    format!(
        r#"
name = "{name}"
host_netns = "{name}-h"

[[bridge]]
name = "br0"
addresses = ["10.50.0.1/24"]
ageing_time = {ageing}

[[container]]
name = "a"
bridge = "br0"
addresses = ["10.50.0.2/24"]

[[container]]
name = "b"
bridge = "br0"
addresses = ["10.50.0.3/24"]

[[container]]
name = "c"
bridge = "br0"
addresses = ["10.50.0.4/24"]
"#
    )
}

/// The programs (name, id) the kernel runs from tcx on `dev` (in netns
/// `ns`) at `at`, asked of the kernel (`BPF_PROG_QUERY`), not of netctl.
fn tcx_query(ns: &str, dev: &str, at: aya::programs::TcAttachType) -> Vec<(String, u32)> {
    let dev = dev.to_string();
    netctl::netns::run_in(&netctl::netns::Netns::named(ns), move || {
        let (_, progs) =
            aya::programs::SchedClassifier::query_tcx(&dev, at).map_err(std::io::Error::other)?;
        Ok(progs
            .iter()
            .map(|p| (p.name_as_str().unwrap_or("?").to_string(), p.id()))
            .collect())
    })
    .unwrap()
}

/// The names of what `tcx_query` finds.
fn tcx_programs(ns: &str, dev: &str, at: aya::programs::TcAttachType) -> Vec<String> {
    tcx_query(ns, dev, at).into_iter().map(|(n, _)| n).collect()
}

/// `fdb show`'s entry for `mac`, if any.
fn fdb_entry(name: &str, mac: &str) -> Option<serde_json::Value> {
    let o = netctl(&["fdb", "show", "-t", name, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|e| e["mac"] == mac)
        .cloned()
}

/// Polls until `mac`'s entry shows as expired: ageing is time itself.
fn wait_expired(name: &str, mac: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !fdb_entry(name, mac).is_some_and(|e| e["expired"] == true) {
        assert!(std::time::Instant::now() < deadline, "entry never aged out");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// Sends one UDP datagram from `ns` to `dst` port 9 (discard).
fn send_one_udp(ns: &str, dst: &str) {
    let fr = format!(
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.sendto(b'x',('{dst}',9))"
    );
    assert!(in_ns(ns, &["python3", "-c", &fr]).status.success());
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The names of the cls_bpf filters on `dev`'s clsact `dir` (`tc` as witness).
fn tc_filters(ns: &str, dev: &str, dir: &str) -> String {
    stdout(&in_ns(ns, &["tc", "filter", "show", "dev", dev, dir]))
}

fn port_of(name: &str, c: &str) -> String {
    netctl::topology::parse::default_host_ifname(name, c)
}

#[test]
fn same_bridge_flows_bypass_the_kernel_bridge() {
    let name = unique("l2");
    let _g = Cleanup::new(&name);
    let before = footprint(&name);
    let f = apply_file(&name, &one_bridge(&name, 300));
    let (a, b, h) = (
        format!("{name}-a"),
        format!("{name}-b"),
        format!("{name}-h"),
    );
    // First contact resolves ARP through the kernel.
    assert!(ping(&a, "10.50.0.3"));
    let red0 = decision(&name, "redirect_l2");
    let tx0 = tx_packets(&h, &port_of(&name, "b"));

    let got = udp_flow(&b, &a, "10.50.0.3", 7000, 300);
    assert_eq!(got, 300, "UDP datagrams lost");
    assert_eq!(tcp_echo(&b, &a, "10.50.0.3", 7001), "echo:hello");
    assert!(
        in_ns(&a, &["ping", "-c", "20", "-i", "0.01", "-q", "10.50.0.3"])
            .status
            .success()
    );

    let red = decision(&name, "redirect_l2") - red0;
    let tx = tx_packets(&h, &port_of(&name, "b")) - tx0;
    // 300 datagrams + 20 echo requests towards b, the replies back, TCP.
    assert!(red >= 300 + 40, "redirected only {red}");
    // The bridge sent b's port only floods (ARP, IPv6 ND/MLD of the young
    // namespaces): nowhere near the flow, which went straight into b's eth0.
    // Without the datapath this would be at least 320.
    assert!(
        tx * 10 < red,
        "kernel bridge sent {tx} frames to b, programs {red}"
    );
    let ports = stats(&name)["ports"].clone();
    let pa = ports
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == port_of(&name, "a").as_str())
        .unwrap();
    assert!(pa["redirected"].as_u64().unwrap() >= 320);

    let o = netctl(&["destroy", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(footprint(&name), before, "destroy left something");
}

#[test]
fn routed_flows_are_forwarded_with_ttl_and_macs_rewritten() {
    let name = unique("l3");
    let _g = Cleanup::new(&name);
    let t = example("two-bridges.toml", &name);
    rt().block_on(netctl::topology::apply(&t, false)).unwrap();
    let (web, db, h) = (
        format!("{name}-web"),
        format!("{name}-db"),
        format!("{name}-host"),
    );
    assert!(ping(&web, "10.10.2.2"));
    let red0 = decision(&name, "redirect_l3");
    let tx0 = tx_packets(&h, &t.containers[2].host_ifname);

    assert_eq!(udp_flow(&db, &web, "10.10.2.2", 7100, 300), 300);
    assert_eq!(tcp_echo(&db, &web, "10.10.2.2", 7101), "echo:hello");
    let p = in_ns(&web, &["ping", "-c", "5", "-i", "0.05", "10.10.2.2"]);
    // One hop: the reply left db with TTL 64 and was decremented once.
    assert!(stdout(&p).contains("ttl=63"), "{}", stdout(&p));

    let red = decision(&name, "redirect_l3") - red0;
    assert!(red >= 300 + 10, "routed only {red}");
    let tx = tx_packets(&h, &t.containers[2].host_ifname) - tx0;
    assert!(
        tx * 10 < red,
        "kernel sent {tx} frames to db, programs {red}"
    );
}

#[test]
fn ttl_expiry_is_answered_by_the_kernel() {
    let name = unique("ttl");
    let _g = Cleanup::new(&name);
    let t = example("two-bridges.toml", &name);
    rt().block_on(netctl::topology::apply(&t, false)).unwrap();
    let web = format!("{name}-web");
    assert!(ping(&web, "10.10.2.2"));
    let p = in_ns(
        &web,
        &["ping", "-c", "1", "-t", "1", "-W", "2", "10.10.2.2"],
    );
    assert!(
        stdout(&p).contains("Time to live exceeded"),
        "{}",
        stdout(&p)
    );
    assert!(decision(&name, "pass_ttl") >= 1);
}

#[test]
fn arp_and_broadcast_still_work() {
    let name = unique("bc");
    let _g = Cleanup::new(&name);
    apply_file(&name, &one_bridge(&name, 300));
    let (a, b, c) = (
        format!("{name}-a"),
        format!("{name}-b"),
        format!("{name}-c"),
    );
    let m0 = decision(&name, "pass_multicast");
    // A first ping needs ARP, which only the kernel bridge floods.
    assert!(ping(&a, "10.50.0.4"));
    assert!(
        decision(&name, "pass_multicast") > m0,
        "ARP went to the kernel"
    );
    let neigh = stdout(&in_ns(&a, &["ip", "neigh", "show", "10.50.0.4"]));
    assert!(neigh.contains("02:42:0a:32:00:04"), "{neigh}");

    // A UDP broadcast reaches both neighbours.
    let recv = |ns: &str| {
        let s = "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
                 s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',7200));\
                 s.settimeout(5);print('ready',flush=True)\nprint(s.recv(64).decode())";
        spawn_ready(ns, s)
    };
    let (mut cb, mut ob) = recv(&b);
    let (mut cc, mut oc) = recv(&c);
    let send = "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
                s.setsockopt(socket.SOL_SOCKET,socket.SO_BROADCAST,1)\ns.sendto(b'hello-all',('10.50.0.255',7200))";
    assert!(in_ns(&a, &["python3", "-c", send]).status.success());
    for (ch, out) in [(&mut cb, &mut ob), (&mut cc, &mut oc)] {
        let mut s = String::new();
        std::io::Read::read_to_string(out, &mut s).unwrap();
        let _ = ch.wait();
        assert_eq!(s.trim(), "hello-all");
    }
}

#[test]
fn fdb_entries_age_out_and_follow_a_moved_mac() {
    let name = unique("fdb");
    let _g = Cleanup::new(&name);
    apply_file(&name, &one_bridge(&name, 2));
    let (a, b, c) = (
        format!("{name}-a"),
        format!("{name}-b"),
        format!("{name}-c"),
    );
    assert!(ping(&a, "10.50.0.3"));
    let fdb = |mac: &str| fdb_entry(&name, mac);
    let e = fdb("02:42:0a:32:00:02").expect("a's MAC learned");
    assert_eq!(e["port"], port_of(&name, "a").as_str());
    assert_eq!(e["expired"], false);
    wait_expired(&name, "02:42:0a:32:00:02");
    // An expired entry is not used: the frame goes to the kernel (flood).
    let u0 = decision(&name, "pass_unknown_dst");
    send_one_udp(&b, "10.50.0.2");
    assert!(decision(&name, "pass_unknown_dst") > u0);

    // a's MAC moves to c's port: c takes it over and sends.
    assert!(
        in_ns(&a, &["ip", "link", "set", "eth0", "down"])
            .status
            .success()
    );
    assert!(
        in_ns(
            &c,
            &["ip", "link", "set", "eth0", "address", "02:42:0a:32:00:02"]
        )
        .status
        .success()
    );
    send_one_udp(&c, "10.50.0.3");
    let e = fdb("02:42:0a:32:00:02").unwrap();
    assert_eq!(
        e["port"],
        port_of(&name, "c").as_str(),
        "entry follows the MAC"
    );
    assert_eq!(e["expired"], false);
}

/// Pings `dst` from `ns` once from every CPU, so that each CPU's
/// remembered forwarding answer for the frames' port is warm.
fn ping_from_every_cpu(ns: &str, dst: &str) {
    for cpu in 0..cpus() {
        let o = in_ns(
            ns,
            &[
                "taskset",
                "-c",
                &cpu.to_string(),
                "ping",
                "-c",
                "2",
                "-i",
                "0.1",
                "-W",
                "1",
                dst,
            ],
        );
        assert!(o.status.success(), "ping {dst} on CPU {cpu}");
    }
}

fn fdb_generation(name: &str) -> (u64, u64) {
    let o = netctl(&["maps", "dump", "fdb_gen", "-t", name, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    (
        v["map_writes"].as_u64().unwrap(),
        v["mac_moves"].as_u64().unwrap(),
    )
}

#[test]
fn remembered_forwarding_follows_a_moved_mac_at_once() {
    let name = unique("fwm");
    let _g = Cleanup::new(&name);
    apply_file(&name, &one_bridge(&name, 300));
    let (a, b, c) = (
        format!("{name}-a"),
        format!("{name}-b"),
        format!("{name}-c"),
    );
    ping_from_every_cpu(&b, "10.50.0.2");
    let (_, moves) = fdb_generation(&name);

    // a's MAC and address move to c, which announces itself with a frame.
    for (ns, args) in [
        (&a, &["ip", "link", "set", "eth0", "down"][..]),
        (
            &c,
            &["ip", "link", "set", "eth0", "address", "02:42:0a:32:00:02"],
        ),
        (&c, &["ip", "addr", "add", "10.50.0.2/24", "dev", "eth0"]),
    ] {
        assert!(in_ns(ns, args).status.success(), "{args:?}");
    }
    send_one_udp(&c, "10.50.0.3");
    assert!(fdb_generation(&name).1 > moves, "the move was seen");

    // b still sends to that MAC (its neighbour entry is unchanged): every
    // frame must reach c now, as on the kernel bridge, on every CPU.
    let r0 = decision(&name, "redirect_l2");
    let cpus = cpus();
    for cpu in 0..cpus {
        let got = udp_flow(&c, &b, "10.50.0.2", 7100 + cpu as u16, 50);
        assert_eq!(got, 50, "datagrams lost on CPU {cpu}'s run");
    }
    assert!(decision(&name, "redirect_l2") - r0 >= 50 * cpus as u64);
}

#[test]
fn remembered_forwarding_obeys_a_shorter_ageing_time() {
    let name = unique("fwa");
    let _g = Cleanup::new(&name);
    apply_file(&name, &one_bridge(&name, 300));
    let b = format!("{name}-b");
    ping_from_every_cpu(&b, "10.50.0.2");
    let (writes, _) = fdb_generation(&name);

    // 2 s now: a's entry, quiet since, expires although a CPU remembers it
    // under the old ageing time.
    apply_file(&name, &one_bridge(&name, 2));
    assert!(fdb_generation(&name).0 > writes, "the apply invalidated");
    wait_expired(&name, "02:42:0a:32:00:02");
    // One frame: a's answer to it (an ICMP error) refreshes a's entry.
    let u0 = decision(&name, "pass_unknown_dst");
    send_one_udp(&b, "10.50.0.2");
    assert_eq!(
        decision(&name, "pass_unknown_dst") - u0,
        1,
        "an expired entry is not used, remembered or not"
    );
}

/// Frames judged on the steady path (`PortStats::steady_l2`), all ports.
fn steady(name: &str) -> u64 {
    stats(name)["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["steady_l2"].as_u64().unwrap())
        .sum()
}

#[test]
fn steady_flows_meet_rules_added_while_they_run() {
    use std::io::BufRead;
    let name = unique("sty");
    let _g = Cleanup::new(&name);
    apply_file(&name, &one_bridge(&name, 300));
    let (a, b) = (format!("{name}-a"), format!("{name}-b"));
    assert!(ping(&a, "10.50.0.3"));

    // A flow that runs while the rule arrives: every datagram carries the
    // time it was sent; b reports the latest send time it received.
    let (mut rx, out) = spawn_ready(
        &b,
        "import socket,struct\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         s.bind(('10.50.0.3',7201));s.settimeout(1);print('ready',flush=True)\n\
         n=0;last=0.0\ntry:\n  while True:\n    t=struct.unpack('d',s.recv(64))[0];n+=1\n\
         \x20   last=max(last,t)\n    if n==300: print('flowing',flush=True)\n\
         except Exception: pass\nprint(last,flush=True)",
    );
    let mut tx = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &a,
            "taskset",
            "-c",
            "0",
            "python3",
            "-c",
            "import socket,struct,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
             end=time.monotonic()+4\nwhile time.monotonic()<end:\n\
             \x20 s.sendto(struct.pack('d',time.monotonic()),('10.50.0.3',7201))\n\
             \x20 time.sleep(0.0002)",
        ])
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(out).lines();
    assert_eq!(lines.next().unwrap().unwrap().trim(), "flowing");
    let s0 = steady(&name);
    assert!(s0 > 0, "the flow never took the steady path");

    // The rule goes in while CPU 0 remembers the flow from a time without
    // rules: the first datagram sent after it must meet it.
    let o = netctl(&[
        "rules",
        "--topology",
        &name,
        "-A",
        "FORWARD",
        "-p",
        "udp",
        "-j",
        "DROP",
    ]);
    // CLOCK_MONOTONIC, the clock `time.monotonic()` reads, one for all
    // namespaces.
    let ruled = netctl::datapath::inspect::monotonic_ns() as f64 * 1e-9;
    assert!(o.status.success(), "rules: {}", stderr(&o));
    assert!(tx.wait().unwrap().success());
    let last: f64 = lines.next().unwrap().unwrap().trim().parse().unwrap();
    let _ = rx.wait();
    assert!(
        last < ruled,
        "b got a datagram sent {:.3} s after the DROP rule was in",
        last - ruled
    );
    assert!(decision(&name, "drop_rule") > 0);
}

#[test]
fn a_trace_ended_by_a_signal_turns_tracing_off() {
    let name = unique("trs");
    let _g = Cleanup::new(&name);
    apply_file(&name, &one_bridge(&name, 300));
    let trace_on = || {
        let o = netctl(&["maps", "dump", "config", "-t", &name, "--json"]);
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        v["trace"].as_u64().unwrap() != 0
    };
    for sig in [libc::SIGTERM, libc::SIGHUP, libc::SIGINT] {
        let mut child = std::process::Command::new(netctl_bin())
            .args(["trace", "--topology", &name])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !trace_on() {
            assert!(
                std::time::Instant::now() < deadline,
                "tracing never went on"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // SAFETY: signalling our own child, which has not been waited for.
        assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
        assert!(child.wait().unwrap().success(), "signal {sig}");
        assert!(!trace_on(), "signal {sig} left tracing on");
    }
}

#[test]
fn decision_totals_keep_what_removed_ports_counted() {
    let name = unique("ret");
    let _g = Cleanup::new(&name);
    let three = one_bridge(&name, 300);
    apply_file(&name, &three);
    let (a, c) = (format!("{name}-a"), format!("{name}-c"));
    ping_from_every_cpu(&c, "10.50.0.2");
    assert_eq!(udp_flow(&a, &c, "10.50.0.2", 7300, 200), 200);
    let port_c = port_of(&name, "c");
    let of_c = stats(&name)["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == port_c.as_str())
        .map(|p| p["steady_l2"].as_u64().unwrap())
        .unwrap();
    assert!(of_c >= 100, "c's flow took the steady path {of_c} times");
    let before = decision(&name, "redirect_l2");

    // c leaves: its port and its counters go, the decisions stay counted.
    let cut = three.rfind("[[container]]").unwrap();
    apply_file(&name, &three[..cut]);
    let ports = stats(&name)["ports"].clone();
    assert!(
        !ports
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["port"] == port_c.as_str()),
        "c's port is still listed"
    );
    let after = decision(&name, "redirect_l2");
    assert!(after >= before, "redirect_l2 went from {before} to {after}");
}

#[test]
fn the_port_index_answers_first_and_the_hash_behind_it() {
    let name = unique("pix");
    let _g = Cleanup::new(&name);
    let f = apply_file(&name, &one_bridge(&name, 300));
    let a = format!("{name}-a");
    let dump = |map: &str| -> Vec<(String, u64)> {
        let o = netctl(&["maps", "dump", map, "-t", &name, "--json"]);
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        let mut rows: Vec<(String, u64)> = v
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["port"].as_str().unwrap().to_string(),
                    p["ifindex"].as_u64().unwrap(),
                )
            })
            .collect();
        rows.sort();
        rows
    };
    let ports = dump("ports");
    assert_eq!(ports.len(), 3);
    assert_eq!(dump("port_index"), ports);

    // Empty a's slot, as a colliding port would leave it: a's frames are
    // still the datapath's, found in the hash.
    let pa = port_of(&name, "a");
    let ia = ports.iter().find(|(p, _)| *p == pa).unwrap().1 as u32;
    let key: Vec<String> = (ia % netctl_common::PORT_INDEX_SLOTS)
        .to_le_bytes()
        .iter()
        .map(|b| b.to_string())
        .collect();
    let pin = format!("/sys/fs/bpf/netctl/{name}/NETCTL_PORT_INDEX");
    let mut args = vec!["map", "update", "pinned", pin.as_str(), "key"];
    args.extend(key.iter().map(String::as_str));
    args.push("value");
    args.extend(std::iter::repeat_n("0", 32));
    let o = run("bpftool", &args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(dump("port_index").len(), 2);
    let rx = |port: &str| -> u64 {
        stats(&name)["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["port"] == port)
            .map_or(0, |p| p["redirected"].as_u64().unwrap())
    };
    let (r0, ra0) = (decision(&name, "redirect_l2"), rx(&pa));
    assert!(ping(&a, "10.50.0.3"));
    assert!(decision(&name, "redirect_l2") > r0);
    assert!(rx(&pa) > ra0, "a's frames redirected as a's port");

    // The next sync writes the slot again.
    let o = netctl(&["apply", f.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(dump("port_index"), ports);
}

#[test]
fn pins_survive_reapply_and_detach_keeps_connectivity() {
    let name = unique("pin");
    let _g = Cleanup::new(&name);
    let f = apply_file(&name, &one_bridge(&name, 300));
    let (a, h) = (format!("{name}-a"), format!("{name}-h"));
    assert!(ping(&a, "10.50.0.3"));
    let red = decision(&name, "redirect_l2");
    assert!(red > 0);
    let dir = std::path::Path::new("/sys/fs/bpf/netctl").join(&name);
    assert!(dir.join("NETCTL_FDB").exists());
    // One marker per port (its cls_bpf filters stay attached by
    // themselves), and lo's (the host's traffic with itself).
    let mut links: Vec<String> = std::fs::read_dir(dir.join("links"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    links.sort();
    assert_eq!(links.len(), 4, "{links:?}");
    assert!(links.contains(&"local-lo".to_string()), "{links:?}");
    let pb = port_of(&name, "b");
    assert!(tc_filters(&h, &pb, "ingress").contains("netctl_ingress"));
    assert!(tc_filters(&h, &pb, "egress").contains("netctl_egress"));

    // Re-apply: nothing changes, counters and FDB carry on.
    let o = netctl(&["apply", f.to_str().unwrap()]);
    assert!(stdout(&o).contains("no changes"), "{}", stdout(&o));
    assert!(decision(&name, "redirect_l2") >= red);
    let fdb = stdout(&netctl(&["fdb", "show", "-t", &name]));
    assert!(fdb.contains("02:42:0a:32:00:02"), "{fdb}");
    let maps = stdout(&netctl(&["maps", "list", "-t", &name]));
    assert!(maps.contains("NETCTL_ROUTES"), "{maps}");
    let routes = stdout(&netctl(&["maps", "dump", "routes", "-t", &name]));
    assert!(
        routes.contains("10.50.0.0/24 connected dev br0"),
        "{routes}"
    );
    assert!(routes.contains("10.50.0.1/32 local"), "{routes}");

    // Detach: filters and pins go, the kernel bridge forwards.
    let o = netctl(&["datapath", "detach", &name]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!dir.exists());
    assert!(!tc_filters(&h, &pb, "ingress").contains("netctl"));
    assert!(!tc_filters(&h, &pb, "egress").contains("netctl"));
    let tx0 = tx_packets(&h, &pb);
    assert!(ping(&a, "10.50.0.3"));
    assert!(
        tx_packets(&h, &pb) - tx0 >= 3,
        "the kernel bridge forwards again"
    );
}

#[test]
fn attach_modes_switch_and_upgrades_swap_programs_in_place() {
    use aya::programs::TcAttachType::{Egress, Ingress};
    let name = unique("att");
    let _g = Cleanup::new(&name);
    let text = one_bridge(&name, 300);
    let (a, h) = (format!("{name}-a"), format!("{name}-h"));
    let pb = port_of(&name, "b");
    let status = || {
        let j: serde_json::Value =
            serde_json::from_str(&stdout(&netctl(&["datapath", "status", "--json"]))).unwrap();
        j.as_array()
            .unwrap()
            .iter()
            .find(|t| t["topology"] == name.as_str())
            .map(|t| t["attach"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    };

    let tcx = text.replace("host_netns", "attach = \"tcx\"\nhost_netns");
    let tcx_attached = || {
        assert!(!tc_filters(&h, &pb, "ingress").contains("netctl"));
        assert!(!tc_filters(&h, &pb, "egress").contains("netctl"));
        assert_eq!(tcx_programs(&h, &pb, Ingress), ["netctl_ingress"]);
        assert_eq!(tcx_programs(&h, &pb, Egress), ["netctl_egress"]);
        assert_eq!(status(), "tcx");
    };

    // tcx: one link each way, no filter; the fast path forwards after
    // the CLI that attached it has exited.
    apply_file(&name, &tcx);
    tcx_attached();
    assert!(ping(&a, "10.50.0.3"));
    let red = decision(&name, "redirect_l2");
    assert!(red > 0);

    // cls_bpf (the default): the links go, a filter each way.
    apply_file(&name, &text);
    assert!(tc_filters(&h, &pb, "ingress").contains("netctl_ingress"));
    assert!(tc_filters(&h, &pb, "egress").contains("netctl_egress"));
    assert!(tcx_programs(&h, &pb, Ingress).is_empty());
    assert!(tcx_programs(&h, &pb, Egress).is_empty());
    assert_eq!(status(), "cls_bpf");
    assert!(ping(&a, "10.50.0.3"));
    let red1 = decision(&name, "redirect_l2");
    assert!(red1 > red);

    // And back: the filters go again, not doubling up with the links.
    apply_file(&name, &tcx);
    tcx_attached();
    assert!(ping(&a, "10.50.0.3"));
    let red2 = decision(&name, "redirect_l2");
    assert!(red2 > red1);

    // A netctl with another build of the programs: the same links, with
    // the new program swapped in under each.
    let progs = std::path::Path::new("/sys/fs/bpf/netctl")
        .join(&name)
        .join("progs");
    let query = |at| -> Vec<u32> {
        tcx_query(&h, &pb, at)
            .into_iter()
            .map(|(_, id)| id)
            .collect()
    };
    let before = query(Ingress);
    let links_before = std::fs::read_dir(progs.parent().unwrap().join("links"))
        .unwrap()
        .count();
    pretend_another_build(&name);
    let f = write_file(&name, "t.toml", &tcx);
    let o = netctl(&["apply", f.to_str().unwrap()]);
    assert!(o.status.success(), "apply: {}", stderr(&o));
    assert!(
        stdout(&o).contains(&format!("~ ebpf datapath link tcx-ingress:{pb}")),
        "the upgrade is reported: {}",
        stdout(&o)
    );
    let after = query(Ingress);
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(after, before, "the new program runs");
    let current: Vec<String> = std::fs::read_dir(&progs)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert!(
        current.iter().all(|n| !n.ends_with("-0000000000000000")),
        "{current:?}"
    );
    assert_eq!(
        std::fs::read_dir(progs.parent().unwrap().join("links"))
            .unwrap()
            .count(),
        links_before
    );
    assert_eq!(query(Egress).len(), 1);
    assert!(ping(&a, "10.50.0.3"));
    assert!(decision(&name, "redirect_l2") > red2);

    // Detach takes the links off before it returns (the kernel would
    // release merely unpinned links later), and the kernel bridge forwards.
    let o = netctl(&["datapath", "detach", &name]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(tcx_programs(&h, &pb, Ingress).is_empty());
    assert!(tcx_programs(&h, &pb, Egress).is_empty());
    let tx0 = tx_packets(&h, &pb);
    assert!(ping(&a, "10.50.0.3"));
    assert!(tx_packets(&h, &pb) - tx0 >= 3, "the kernel bridge forwards");
}

/// Renames the topology's program pins as another build's would be named,
/// so that the next apply loads (and upgrades) as a new netctl would.
fn pretend_another_build(name: &str) {
    let progs = std::path::Path::new("/sys/fs/bpf/netctl")
        .join(name)
        .join("progs");
    for e in std::fs::read_dir(&progs).unwrap() {
        let e = e.unwrap();
        let old = e.file_name().to_string_lossy().to_string();
        let kind = old.split('-').next().unwrap().to_string();
        std::fs::rename(e.path(), progs.join(format!("{kind}-0000000000000000"))).unwrap();
    }
}

#[test]
fn maps_whose_meaning_changed_are_recreated_on_upgrade() {
    use aya::maps::{Array, Map, MapData};
    let name = unique("lay");
    let _g = Cleanup::new(&name);
    let text = one_bridge(&name, 300);
    apply_file(&name, &text);
    assert!(ping(&format!("{name}-a"), "10.50.0.3"));
    let dir = std::path::Path::new("/sys/fs/bpf/netctl").join(&name);
    let id = |map: &str| {
        MapData::from_pin(dir.join(map))
            .unwrap()
            .info()
            .unwrap()
            .id()
    };
    let layout = || {
        let o = netctl(&["maps", "dump", "config", "-t", &name, "--json"]);
        let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
        v["layout"].as_u64().unwrap()
    };
    let revision = layout();
    assert!(revision > 0);
    let (stats0, ports0) = (id("NETCTL_PORT_STATS"), id("NETCTL_PORTS"));

    // Another build comes with the same maps at the same revision: all kept.
    pretend_another_build(&name);
    apply_file(&name, &text);
    assert_eq!(id("NETCTL_PORT_STATS"), stats0);

    // Maps an older netctl wrote (before revisions): the per-port values
    // meant something else then, so they start afresh; the others stay.
    let mut cfg: Array<MapData, u32> = Array::try_from(Map::Array(
        MapData::from_pin(dir.join("NETCTL_CONFIG")).unwrap(),
    ))
    .unwrap();
    cfg.set(6, 0, 0).unwrap();
    pretend_another_build(&name);
    apply_file(&name, &text);
    assert_ne!(id("NETCTL_PORT_STATS"), stats0, "port values kept");
    assert_eq!(id("NETCTL_PORTS"), ports0);
    assert_eq!(layout(), revision);
    assert!(ping(&format!("{name}-a"), "10.50.0.3"));
}

#[test]
fn kernel_datapath_attaches_nothing() {
    let name = unique("kdp");
    let _g = Cleanup::new(&name);
    let text = one_bridge(&name, 300).replace("host_netns", "datapath = \"kernel\"\nhost_netns");
    apply_file(&name, &text);
    assert!(ping(&format!("{name}-a"), "10.50.0.3"));
    assert!(
        !std::path::Path::new("/sys/fs/bpf/netctl")
            .join(&name)
            .exists()
    );
    let f = stdout(&in_ns(
        &format!("{name}-h"),
        &[
            "tc",
            "filter",
            "show",
            "dev",
            &port_of(&name, "a"),
            "ingress",
        ],
    ));
    assert!(f.trim().is_empty(), "{f}");
}

#[test]
fn a_program_the_verifier_rejects_is_an_error_with_its_log() {
    let e = netctl::datapath::verify::verify(netctl_common_reject())
        .unwrap_err()
        .to_string();
    assert!(e.contains("verifier rejected"), "{e}");
    assert!(e.contains("invalid bpf_context access"), "{e}");
    for p in netctl::datapath::verify::PROGRAMS {
        netctl::datapath::verify::verify(p).unwrap();
    }
}

fn netctl_common_reject() -> &'static str {
    "netctl_selftest_reject"
}

#[test]
fn route_and_forwarding_changes_reach_the_datapath() {
    let name = unique("sync");
    let _g = Cleanup::new(&name);
    let t = example("two-bridges.toml", &name);
    rt().block_on(netctl::topology::apply(&t, false)).unwrap();
    let (web, host) = (format!("{name}-web"), format!("{name}-host"));
    assert!(ping(&web, "10.10.2.2"));

    // A route added with netctl in the host namespace is mirrored at once.
    let o = netctl(&[
        "route",
        "add",
        "10.99.0.0/16",
        "--via",
        "10.10.2.2",
        "-n",
        &host,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let routes = stdout(&netctl(&["maps", "dump", "routes", "-t", &name]));
    assert!(
        routes.contains("10.99.0.0/16 gateway via 10.10.2.2 dev br-back"),
        "{routes}"
    );
    let o = netctl(&["route", "del", "10.99.0.0/16", "-n", &host]);
    assert!(o.status.success(), "{}", stderr(&o));
    let routes = stdout(&netctl(&["maps", "dump", "routes", "-t", &name]));
    assert!(!routes.contains("10.99.0.0/16"), "{routes}");

    // Forwarding off: the datapath does not route either, as the kernel.
    assert!(netctl(&["forward", "off", "-n", &host]).status.success());
    let f0 = decision(&name, "pass_forward_off");
    assert!(
        !in_ns(
            &web,
            &["ping", "-c", "2", "-i", "0.2", "-W", "1", "10.10.2.2"]
        )
        .status
        .success()
    );
    assert!(decision(&name, "pass_forward_off") > f0);
    assert!(netctl(&["forward", "on", "-n", &host]).status.success());
    assert!(ping(&web, "10.10.2.2"));
}

#[test]
fn profile_reports_what_each_program_costs_per_run() {
    let name = unique("prf");
    let _g = Cleanup::new(&name);
    let _f = apply_file(&name, &one_bridge(&name, 300));
    let a = format!("{name}-a");
    assert!(ping(&a, "10.50.0.3"));
    // Traffic for the whole window: 40 pings 50 ms apart outlast it.
    let mut pinger = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &a,
            "ping",
            "-q",
            "-c",
            "40",
            "-i",
            "0.05",
            "10.50.0.3",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let o = netctl(&["datapath", "profile", &name, "--seconds", "1", "--json"]);
    let _ = pinger.wait();
    assert!(o.status.success(), "profile: {}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    let ingress = v
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["program"].as_str().unwrap().starts_with("ingress-"))
        .unwrap_or_else(|| panic!("{v:#}"));
    // Echo requests and replies both enter by a port: two runs a ping.
    assert!(ingress["runs"].as_u64().unwrap() >= 20, "{ingress:#}");
    assert!(ingress["ns_per_run"].as_f64().unwrap() > 0.0, "{ingress:#}");
    let o = netctl(&["datapath", "profile", "no-such-topology", "--seconds", "0"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("no datapath"), "{}", stderr(&o));
}

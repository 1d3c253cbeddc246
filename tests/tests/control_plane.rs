//! The imperative control plane against the real kernel, checked with
//! iproute2 and ethtool as independent witnesses.

use netctl::netns::Netns;
use netctl::{show, topology};
use netctl_tests::*;

fn ok(o: std::process::Output) -> String {
    assert!(o.status.success(), "failed: {}", stderr(&o));
    stdout(&o)
}

#[test]
fn namespaces_interoperate_with_ip_netns() {
    let p = unique("ns");
    let _g = Cleanup::new(&p);
    let ours = format!("{p}-ours");
    let theirs = format!("{p}-theirs");
    ok(netctl(&["netns", "add", &ours]));
    assert!(stdout(&run("ip", &["netns", "list"])).contains(&ours));
    // lo is up in namespaces netctl creates.
    let lo = ip_json(&["-n", &ours, "link", "show", "lo"]);
    assert!(lo[0]["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    assert!(
        in_ns(&ours, &["ping", "-c1", "-W1", "127.0.0.1"])
            .status
            .success()
    );

    ok(run("ip", &["netns", "add", &theirs]));
    assert!(ok(netctl(&["netns", "list"])).lines().any(|l| l == theirs));
    // exec runs the command inside: it sees only that namespace's links.
    let links = ok(netctl(&["netns", "exec", &ours, "--", "ip", "-o", "link"]));
    assert_eq!(links.lines().count(), 1, "{links}");

    let e = netctl(&["netns", "add", &ours]);
    assert!(!e.status.success());
    assert!(stderr(&e).contains("already exists"), "{}", stderr(&e));
    ok(netctl(&["netns", "del", &ours]));
    ok(netctl(&["netns", "del", &theirs]));
    assert!(namespaces_with(&p).is_empty());
    let e = netctl(&["netns", "del", &ours]);
    assert!(stderr(&e).contains("does not exist"), "{}", stderr(&e));
}

#[test]
fn bridges_veths_addresses_and_routes_from_the_cli() {
    let p = unique("ops");
    let _g = Cleanup::new(&p);
    let h = format!("{p}-h");
    let c = format!("{p}-c");
    ok(netctl(&["netns", "add", &h]));
    ok(netctl(&["netns", "add", &c]));
    ok(netctl(&[
        "bridge", "add", "br0", "--ageing", "120", "-n", &h,
    ]));
    ok(netctl(&["link", "set", "br0", "--state", "up", "-n", &h]));
    ok(netctl(&[
        "addr",
        "add",
        "10.30.0.1/24",
        "--dev",
        "br0",
        "-n",
        &h,
    ]));
    ok(netctl(&[
        "veth",
        "add",
        "vc0",
        "--peer",
        "eth0",
        "--peer-netns",
        &c,
        "--bridge",
        "br0",
        "--mac",
        "02:00:0a:1e:00:02",
        "--mtu",
        "1400",
        "-n",
        &h,
    ]));
    ok(netctl(&[
        "addr",
        "add",
        "10.30.0.2/24",
        "--dev",
        "eth0",
        "-n",
        &c,
    ]));
    ok(netctl(&[
        "route",
        "add",
        "default",
        "--via",
        "10.30.0.1",
        "-n",
        &c,
    ]));
    ok(netctl(&[
        "route",
        "add",
        "10.40.0.0/16",
        "--dev",
        "br0",
        "--table",
        "100",
        "-n",
        &h,
    ]));
    ok(netctl(&["bridge", "hairpin", "vc0", "on", "-n", &h]));
    ok(netctl(&["forward", "on", "-n", &h]));

    let e = ip_json(&["-n", &c, "-d", "link", "show", "eth0"]);
    assert_eq!(e[0]["address"], "02:00:0a:1e:00:02");
    assert_eq!(e[0]["mtu"], 1400);
    let v = ip_json(&["-n", &h, "-d", "link", "show", "vc0"]);
    assert_eq!(v[0]["master"], "br0");
    assert_eq!(v[0]["linkinfo"]["info_slave_data"]["hairpin"], true);
    let b = ip_json(&["-n", &h, "-d", "link", "show", "br0"]);
    assert_eq!(b[0]["linkinfo"]["info_data"]["ageing_time"], 12000);
    let r100 = ip_json(&["-n", &h, "route", "show", "table", "100"]);
    assert_eq!(r100[0]["dst"], "10.40.0.0/16");
    assert_eq!(
        stdout(&in_ns(&h, &["cat", "/proc/sys/net/ipv4/ip_forward"])).trim(),
        "1"
    );
    assert!(ping(&c, "10.30.0.1"));

    // Detach: the port leaves the bridge and traffic stops.
    ok(netctl(&["bridge", "detach", "vc0", "-n", &h]));
    assert!(ip_json(&["-n", &h, "link", "show", "vc0"])[0]["master"].is_null());
    assert!(
        !in_ns(&c, &["ping", "-c1", "-W1", "10.30.0.1"])
            .status
            .success()
    );
    ok(netctl(&["bridge", "attach", "br0", "vc0", "-n", &h]));
    assert!(ping(&c, "10.30.0.1"));

    ok(netctl(&[
        "route",
        "del",
        "10.40.0.0/16",
        "--table",
        "100",
        "-n",
        &h,
    ]));
    assert!(
        ip_json(&["-n", &h, "route", "show", "table", "100"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    ok(netctl(&[
        "addr",
        "del",
        "10.30.0.2/24",
        "--dev",
        "eth0",
        "-n",
        &c,
    ]));
    let v4 = ip_json(&["-n", &c, "-4", "addr", "show", "eth0"]);
    assert!(
        v4.as_array()
            .unwrap()
            .iter()
            .all(|l| l["addr_info"].as_array().unwrap().is_empty())
    );

    // Errors name the problem.
    let e = netctl(&["veth", "add", "averyveryverylongname", "-n", &h]);
    assert!(stderr(&e).contains("at most 15"), "{}", stderr(&e));
    let e = netctl(&["bridge", "attach", "vc0", "br0", "-n", &h]);
    assert!(stderr(&e).contains("vc0 is not a bridge"), "{}", stderr(&e));
    let e = netctl(&["addr", "add", "10.1.1.1/24", "--dev", "nope0", "-n", &h]);
    assert!(stderr(&e).contains("no device \"nope0\""), "{}", stderr(&e));
}

#[test]
fn veth_peers_agree_with_ip_and_ethtool() {
    let name = unique("peer");
    let _g = Cleanup::new(&name);
    let t = example("docker-default.toml", &name);
    let r = rt();
    r.block_on(topology::apply(&t, false)).unwrap();
    let host = format!("{name}-host");
    let rep = r
        .block_on(show::gather(&[
            Netns::named(&host),
            Netns::named(format!("{name}-c2")),
        ]))
        .unwrap();
    let hv = &rep.namespaces[0];
    let mut seen = 0;
    for c in &t.containers {
        let l = hv
            .links
            .iter()
            .find(|l| l.link.name == c.host_ifname)
            .unwrap();
        let peer = l.peer.as_ref().expect("veth has a peer");
        assert_eq!(peer.netns.as_deref(), Some(c.netns.as_str()));
        assert_eq!(peer.name.as_deref(), Some("eth0"));
        // ethtool's peer_ifindex and ip's link index agree with ours.
        let st = stdout(&in_ns(&host, &["ethtool", "-S", &c.host_ifname]));
        let pi: u32 = st
            .lines()
            .find_map(|l| l.trim().strip_prefix("peer_ifindex: "))
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(pi, peer.ifindex);
        let ipd = ip_json(&["-n", &host, "-d", "link", "show", &c.host_ifname]);
        assert_eq!(ipd[0]["link_index"], peer.ifindex);
        let e = ip_json(&["-n", &c.netns, "link", "show", "eth0"]);
        assert_eq!(e[0]["ifindex"], peer.ifindex);
        seen += 1;
    }
    assert_eq!(seen, 3);
    // From the container side, the peer is the host end in the host netns.
    let cv = &rep.namespaces[1];
    let eth0 = cv.links.iter().find(|l| l.link.name == "eth0").unwrap();
    let p = eth0.peer.as_ref().unwrap();
    assert_eq!(p.netns.as_deref(), Some(host.as_str()));
    assert_eq!(
        p.name.as_deref(),
        Some(t.containers[1].host_ifname.as_str())
    );

    // The bridge lists its ports and learned FDB entries, as `bridge fdb`.
    assert!(ping(&format!("{name}-c1"), "172.17.0.3"));
    let rep = r.block_on(show::gather(&[Netns::named(&host)])).unwrap();
    let br = &rep.namespaces[0].bridges[0];
    assert_eq!(br.ports.len(), 3);
    let learned = br
        .fdb
        .iter()
        .find(|f| f.mac.to_string() == "02:42:ac:11:00:02")
        .expect("c1's MAC learned");
    assert_eq!(learned.port, t.containers[0].host_ifname);
    assert!(!learned.permanent);
    let witness = stdout(&run(
        "bridge",
        &["-n", &host, "fdb", "show", "br", "docker0"],
    ));
    assert!(witness.contains(&format!(
        "02:42:ac:11:00:02 dev {}",
        t.containers[0].host_ifname
    )));

    // JSON output carries the same.
    let j: serde_json::Value =
        serde_json::from_str(&ok(netctl(&["show", "--json", "-n", &host]))).unwrap();
    let links = j["namespaces"][0]["links"].as_array().unwrap();
    assert!(links.iter().any(|l| l["peer"]["name"] == "eth0"));
}

#[test]
fn netns_local_devices_cannot_move_and_netctl_says_why() {
    let p = unique("nl");
    let _g = Cleanup::new(&p);
    let a = format!("{p}-a");
    let b = format!("{p}-b");
    ok(netctl(&["netns", "add", &a]));
    ok(netctl(&["netns", "add", &b]));
    ok(netctl(&["bridge", "add", "br0", "-n", &a]));
    // The kernel refuses too (EINVAL; 6.12+ adds an extack message). Since
    // 6.12 netns-local is no longer an ethtool feature, so `ethtool -k`
    // does not show it; IFLA_NETNS_IMMUTABLE does.
    let k = run("ip", &["-n", &a, "link", "set", "br0", "netns", &b]);
    let kerr = stderr(&k);
    assert!(
        kerr.contains("Invalid argument") || kerr.contains("immutable"),
        "{kerr}"
    );
    let j: serde_json::Value =
        serde_json::from_str(&ok(netctl(&["link", "show", "--json", "-n", &a]))).unwrap();
    let br = j
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "br0")
        .unwrap();
    assert_eq!(br["netns_immutable"], true);
    for dev in ["br0", "lo"] {
        let e = netctl(&["link", "move", dev, "--to", &b, "-n", &a]);
        assert!(!e.status.success());
        let err = stderr(&e);
        assert!(err.contains("netns-local"), "{dev}: {err}");
        assert!(!err.contains("Invalid argument"), "{dev}: {err}");
    }
    // Still where it was.
    assert_eq!(
        ip_json(&["-n", &a, "link", "show", "br0"])[0]["ifname"],
        "br0"
    );
    // vxlan is not netns-local on this kernel (it says so, and moves it):
    // netctl leaves the decision to the kernel's IFLA_NETNS_IMMUTABLE.
    let vx = run(
        "ip",
        &[
            "-n", &a, "link", "add", "vx0", "type", "vxlan", "id", "42", "dstport", "4789",
        ],
    );
    assert!(vx.status.success(), "{}", stderr(&vx));
    ok(netctl(&["link", "move", "vx0", "--to", &b, "-n", &a]));
    assert_eq!(
        ip_json(&["-n", &b, "link", "show", "vx0"])[0]["ifname"],
        "vx0"
    );
    // A veth end moves fine.
    ok(netctl(&["veth", "add", "va", "--peer", "vb", "-n", &a]));
    ok(netctl(&["link", "move", "vb", "--to", &b, "-n", &a]));
    assert_eq!(
        ip_json(&["-n", &b, "link", "show", "vb"])[0]["ifname"],
        "vb"
    );
}

#[test]
fn route_show_and_get_agree_with_the_kernel() {
    let name = unique("rt");
    let _g = Cleanup::new(&name);
    let t = example("two-bridges.toml", &name);
    rt().block_on(topology::apply(&t, false)).unwrap();
    let db = format!("{name}-db");
    let host = format!("{name}-host");
    ok(netctl(&[
        "route",
        "add",
        "10.99.0.0/16",
        "--via",
        "10.10.2.1",
        "-n",
        &db,
    ]));
    ok(netctl(&[
        "route",
        "add",
        "10.99.5.5/32",
        "--via",
        "10.10.2.1",
        "-n",
        &db,
    ]));

    // route show lines read like `ip route`.
    let ours = ok(netctl(&["route", "show", "-n", &db]));
    assert!(
        ours.contains("default via 10.10.2.1 dev eth0 proto static"),
        "{ours}"
    );
    assert!(
        ours.contains("10.10.2.0/24 dev eth0 proto kernel scope link src 10.10.2.2"),
        "{ours}"
    );
    let local = ok(netctl(&["route", "show", "--table", "local", "-n", &db]));
    assert!(local.contains("local 10.10.2.2 dev eth0"), "{local}");
    let j: serde_json::Value =
        serde_json::from_str(&ok(netctl(&["route", "show", "--json", "-n", &db]))).unwrap();
    assert!(j.as_array().unwrap().iter().all(|r| r["table"] == 254));

    let cases = [
        ("10.10.2.2", "local address"),
        ("127.0.0.9", "local address"),
        ("10.99.5.5", "host route"),
        ("10.99.7.7", "longest prefix"),
        ("10.10.2.77", "longest prefix"),
        ("203.0.113.9", "default route"),
    ];
    for (addr, expect) in cases {
        let out = ok(netctl(&["route", "get", addr, "-n", &db]));
        assert!(out.contains(expect), "{addr}: {out}");
        let j: serde_json::Value =
            serde_json::from_str(&ok(netctl(&["route", "get", addr, "--json", "-n", &db])))
                .unwrap();
        let k = ip_json(&["-n", &db, "route", "get", addr]);
        if expect == "local address" {
            // The kernel delivers through lo and says so.
            assert_eq!(k[0]["type"], "local", "{addr}");
            continue;
        }
        // The kernel agrees on the outgoing device and gateway.
        let oif = j["matched"]["oif"].as_u64().unwrap();
        let kdev = k[0]["dev"].as_str().unwrap();
        let kidx = ip_json(&["-n", &db, "link", "show", kdev])[0]["ifindex"]
            .as_u64()
            .unwrap();
        assert_eq!(oif, kidx, "{addr}");
        assert_eq!(
            j["matched"]["gateway"].as_str(),
            k[0]["gateway"].as_str(),
            "{addr}: gateway"
        );
    }
    // Nothing matches in the host namespace (no default route there).
    let o = netctl(&["route", "get", "203.0.113.9", "-n", &host]);
    assert!(!o.status.success());
    assert!(stdout(&o).contains("unreachable"), "{}", stdout(&o));
    assert!(
        !run("ip", &["-n", &host, "route", "get", "203.0.113.9"])
            .status
            .success()
    );
}

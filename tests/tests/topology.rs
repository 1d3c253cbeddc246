//! Declarative topologies against the real kernel: apply, traffic,
//! re-apply, edit, destroy, and refusal of bad input.

use netctl::topology::{self, Step};
use netctl_tests::*;

#[test]
fn docker_default_containers_reach_each_other_and_the_gateway() {
    let name = unique("dd");
    let _g = Cleanup::new(&name);
    let before = footprint(&name);
    let t = example("docker-default.toml", &name);
    let r = rt();
    let rep = r.block_on(topology::apply(&t, false)).unwrap();
    assert!(rep.changed());

    let c1 = format!("{name}-c1");
    let c2 = format!("{name}-c2");
    let c3 = format!("{name}-c3");
    assert!(ping(&c1, "172.17.0.3"), "c1 -> c2");
    assert!(ping(&c1, "172.17.0.4"), "c1 -> c3");
    assert!(ping(&c3, "172.17.0.2"), "c3 -> c1");
    assert!(ping(&c2, "172.17.0.1"), "c2 -> gateway");
    assert_eq!(tcp_echo(&c2, &c1, "172.17.0.3", 8080), "echo:hello");
    assert_eq!(
        tcp_echo(&format!("{name}-host"), &c3, "172.17.0.1", 8081),
        "echo:hello"
    );

    // The container ends are named and addressed as asked, the host ends
    // are on docker0, lo is up.
    let eth0 = ip_json(&["-n", &c1, "addr", "show", "eth0"]);
    assert_eq!(eth0[0]["address"], "02:42:ac:11:00:02");
    assert_eq!(eth0[0]["addr_info"][0]["local"], "172.17.0.2");
    let lo = ip_json(&["-n", &c1, "link", "show", "lo"]);
    assert!(lo[0]["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    let ports = ip_json(&[
        "-n",
        &format!("{name}-host"),
        "link",
        "show",
        "master",
        "docker0",
    ]);
    assert_eq!(ports.as_array().unwrap().len(), 3);
    let default = ip_json(&["-n", &c1, "route", "show", "default"]);
    assert_eq!(default[0]["gateway"], "172.17.0.1");

    // Applying again changes nothing.
    let again = r.block_on(topology::apply(&t, false)).unwrap();
    assert!(!again.changed(), "{:?}", again.steps);

    r.block_on(topology::destroy(&name)).unwrap();
    assert_eq!(footprint(&name), before, "destroy left something behind");
}

#[test]
fn two_bridges_route_between_subnets() {
    let name = unique("tb");
    let _g = Cleanup::new(&name);
    let t = example("two-bridges.toml", &name);
    let r = rt();
    r.block_on(topology::apply(&t, false)).unwrap();
    let web = format!("{name}-web");
    let db = format!("{name}-db");
    assert!(ping(&web, "10.10.2.2"), "web -> db across bridges");
    assert!(ping(&db, "10.10.1.3"), "db -> api across bridges");
    assert!(ping(&web, "fd00:10:2::2"), "IPv6 web -> db");
    assert_eq!(tcp_echo(&db, &web, "10.10.2.2", 5432), "echo:hello");
    // The extra routes: one in a container, one in a numbered table.
    let rt100 = ip_json(&[
        "-n",
        &format!("{name}-host"),
        "route",
        "show",
        "table",
        "100",
    ]);
    assert_eq!(rt100[0]["dst"], "10.10.0.0/16");
    assert_eq!(rt100[0]["dev"], "br-front");
    let doc = ip_json(&["-n", &db, "route", "show", "198.51.100.0/24"]);
    assert_eq!(doc[0]["gateway"], "10.10.2.1");
    r.block_on(topology::destroy(&name)).unwrap();
    assert!(namespaces_with(&name).is_empty());
}

fn small(name: &str, extra: &str) -> String {
    format!(
        r#"
name = "{name}"
host_netns = "{name}-h"

[[bridge]]
name = "br0"
addresses = ["10.20.0.1/24"]
ageing_time = 300

[[container]]
name = "a"
bridge = "br0"
addresses = ["10.20.0.2/24"]
{extra}
"#
    )
}

#[test]
fn editing_the_file_changes_only_the_difference() {
    let name = unique("ed");
    let _g = Cleanup::new(&name);
    let r = rt();
    let v1 = topo(&small(
        &name,
        "[[container]]\nname = \"b\"\nbridge = \"br0\"\naddresses = [\"10.20.0.3/24\"]\n",
    ));
    r.block_on(topology::apply(&v1, false)).unwrap();
    let a = format!("{name}-a");
    let b = format!("{name}-b");
    let a_index_before = ip_json(&["-n", &a, "link", "show", "eth0"])[0]["ifindex"].clone();

    // Edit: b goes away, c arrives, a gets a second address, ageing changes.
    let v2_text = small(
        &name,
        "[[container]]\nname = \"c\"\nbridge = \"br0\"\naddresses = [\"10.20.0.4/24\"]\n",
    )
    .replace(
        "addresses = [\"10.20.0.2/24\"]",
        "addresses = [\"10.20.0.2/24\", \"10.20.0.12/24\"]",
    )
    .replace("ageing_time = 300", "ageing_time = 42");
    let v2 = topo(&v2_text);
    let rep = r.block_on(topology::apply(&v2, false)).unwrap();
    let kinds: Vec<String> = rep.steps.iter().map(|s| s.to_string()).collect();
    assert!(
        !kinds.iter().any(|s| s.contains("netns a")),
        "a must not be recreated: {kinds:?}"
    );
    assert!(
        rep.steps
            .iter()
            .any(|s| matches!(s, Step::DeleteNetns { name: n } if *n == b))
    );
    assert!(!namespaces_with(&b).contains(&b));
    let c = format!("{name}-c");
    assert!(ping(&c, "10.20.0.12"), "c reaches a's new address");
    assert_eq!(
        ip_json(&["-n", &a, "link", "show", "eth0"])[0]["ifindex"],
        a_index_before,
        "a's link was kept"
    );
    let br = ip_json(&["-n", &format!("{name}-h"), "-d", "link", "show", "br0"]);
    assert_eq!(br[0]["linkinfo"]["info_data"]["ageing_time"], 4200);
    let again = r.block_on(topology::apply(&v2, false)).unwrap();
    assert!(!again.changed(), "{:?}", again.steps);

    // And back: converges to v1 exactly.
    r.block_on(topology::apply(&v1, false)).unwrap();
    assert!(ping(&b, "10.20.0.2"));
    assert!(namespaces_with(&c).is_empty());
    let addrs = ip_json(&["-n", &a, "-4", "addr", "show", "eth0"]);
    assert_eq!(addrs[0]["addr_info"].as_array().unwrap().len(), 1);
}

#[test]
fn the_cli_reports_no_changes_on_reapply_and_destroys_by_file() {
    let name = unique("cli");
    let _g = Cleanup::new(&name);
    let f = write_file(&name, "t.toml", &small(&name, ""));
    let fs = f.to_str().unwrap();
    let o = netctl(&["apply", fs]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("made"), "{}", stdout(&o));
    let o = netctl(&["apply", fs]);
    assert!(o.status.success());
    assert!(stdout(&o).contains("no changes"), "{}", stdout(&o));
    let o = netctl(&["destroy", fs]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(namespaces_with(&name).is_empty());
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let name = unique("bad");
    let _g = Cleanup::new(&name);
    let before = footprint(&name);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "long name",
            small(
                &name,
                "[[container]]\nname = \"x\"\nbridge = \"br0\"\nhost_ifname = \"abcdefghijklmnop\"\n",
            ),
            "at most 15",
        ),
        (
            "slash",
            small(
                &name,
                "[[container]]\nname = \"x\"\nbridge = \"br0\"\nifname = \"e/0\"\n",
            ),
            "'/'",
        ),
        (
            "duplicate",
            small(&name, "[[container]]\nname = \"a\"\nbridge = \"br0\"\n"),
            "defined twice",
        ),
        (
            "outside subnet",
            small(
                &name,
                "[[container]]\nname = \"x\"\nbridge = \"br0\"\naddresses = [\"10.99.0.2/24\"]\n",
            ),
            "outside bridge br0's subnet",
        ),
        (
            "overlap",
            small(
                &name,
                "[[bridge]]\nname = \"br1\"\naddresses = [\"10.20.0.129/25\"]\n",
            ),
            "overlaps",
        ),
        (
            "unknown bridge",
            small(&name, "[[container]]\nname = \"x\"\nbridge = \"nope\"\n"),
            "not defined",
        ),
        (
            "unknown netns",
            small(
                &name,
                "[[route]]\nnetns = \"elsewhere\"\nto = \"10.1.0.0/16\"\nvia = \"10.20.0.1\"\n",
            ),
            "does not define",
        ),
    ];
    for (what, text, expect) in cases {
        let f = write_file(&name, "bad.toml", &text);
        let o = netctl(&["apply", f.to_str().unwrap()]);
        assert!(!o.status.success(), "{what}: apply succeeded");
        let err = stderr(&o);
        assert!(err.contains(expect), "{what}: {err}");
        // The error names the place: file:line:col.
        assert!(err.contains("bad.toml:"), "{what}: {err}");
        assert_eq!(footprint(&name), before, "{what} changed the system");
    }
}

#[test]
fn a_failure_half_way_rolls_back_what_the_apply_made() {
    let name = unique("rb");
    let _g = Cleanup::new(&name);
    let before = footprint(&name);
    // The last step fails in the kernel: the gateway is not on any link.
    let t = topo(&small(
        &name,
        &format!("[[route]]\nnetns = \"{name}-a\"\nto = \"10.77.0.0/16\"\nvia = \"192.0.2.1\"\n"),
    ));
    let e = rt()
        .block_on(topology::apply(&t, false))
        .unwrap_err()
        .to_string();
    assert!(e.contains("rolled back"), "{e}");
    assert!(e.contains("10.77.0.0/16"), "{e}");
    assert_eq!(footprint(&name), before, "rollback left something");
}

#[test]
fn objects_the_topology_does_not_own_are_not_taken_over() {
    let name = unique("own");
    let _g = Cleanup::new(&name);
    // Somebody else's namespace with the name the container would get.
    assert!(
        run("ip", &["netns", "add", &format!("{name}-a")])
            .status
            .success()
    );
    let o = run(
        "ip",
        &[
            "-n",
            &format!("{name}-a"),
            "link",
            "add",
            "keepme",
            "type",
            "veth",
            "peer",
            "name",
            "keepme2",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let t = topo(&small(&name, ""));
    let e = rt()
        .block_on(topology::apply(&t, false))
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not belong"), "{e}");
    assert!(
        namespaces_with(&format!("{name}-h")).is_empty(),
        "nothing created"
    );
    let l = ip_json(&["-n", &format!("{name}-a"), "link", "show", "keepme"]);
    assert_eq!(l[0]["ifname"], "keepme");
}

// ---- the uplink, published ports, Docker's rules ----

/// A host namespace with a bridge, one container, and an uplink to an
/// outside namespace that routes the bridge's subnet back through it
/// (no NAT: the kernel datapath carries everything).
fn with_uplink(name: &str, extra: &str) -> String {
    format!(
        r#"
name = "{name}"
host_netns = "{name}-h"
datapath = "kernel"

[uplink]
name = "uplink0"
address = "192.0.2.2/24"
outside_address = "192.0.2.1/24"

[[bridge]]
name = "br0"
addresses = ["10.30.0.1/24"]

[[container]]
name = "a"
bridge = "br0"
addresses = ["10.30.0.2/24"]

[[route]]
netns = "{name}-outside"
to = "10.30.0.0/24"
via = "192.0.2.2"
{extra}
"#
    )
}

#[test]
fn an_uplink_joins_the_host_namespace_to_an_outside_one() {
    let name = unique("up");
    let _g = Cleanup::new(&name);
    let before = footprint(&name);
    let t = topo(&with_uplink(&name, ""));
    let r = rt();
    let rep = r.block_on(topology::apply(&t, false)).unwrap();
    assert!(rep.changed());

    let (host, outside, a) = (
        format!("{name}-h"),
        format!("{name}-outside"),
        format!("{name}-a"),
    );
    // The outside namespace exists, with the peer end as eth0, addressed
    // and up, and lo up.
    assert!(namespaces_with(&name).contains(&outside));
    let eth0 = ip_json(&["-n", &outside, "addr", "show", "eth0"]);
    assert_eq!(eth0[0]["addr_info"][0]["local"], "192.0.2.1");
    assert_eq!(eth0[0]["addr_info"][0]["prefixlen"], 24);
    assert_eq!(eth0[0]["operstate"], "UP");
    let lo = ip_json(&["-n", &outside, "link", "show", "lo"]);
    assert!(lo[0]["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    // The host end: addressed, not a bridge port.
    let up = ip_json(&["-n", &host, "addr", "show", "uplink0"]);
    assert_eq!(up[0]["addr_info"][0]["local"], "192.0.2.2");
    assert!(up[0].get("master").is_none(), "{up}");
    // The host namespace's default route goes through the uplink.
    let default = ip_json(&["-n", &host, "route", "show", "default"]);
    assert_eq!(default.as_array().unwrap().len(), 1, "{default}");
    assert_eq!(default[0]["gateway"], "192.0.2.1");
    assert_eq!(default[0]["dev"], "uplink0");
    // Traffic: the outside reaches the host's uplink address, and a
    // container reaches the outside through the host (routed back by the
    // outside's route through the uplink).
    assert!(ping(&outside, "192.0.2.2"), "outside -> uplink address");
    assert!(ping(&a, "192.0.2.1"), "container -> outside");
    assert_eq!(tcp_echo(&outside, &a, "192.0.2.1", 8090), "echo:hello");

    // Applying again changes nothing.
    let again = r.block_on(topology::apply(&t, false)).unwrap();
    assert!(!again.changed(), "{:?}", again.steps);

    // Edit: another gateway on the uplink's subnet, the outside moved.
    let t2 = topo(
        &with_uplink(&name, "")
            .replace(
                "outside_address = \"192.0.2.1/24\"",
                &format!("outside_address = \"192.0.2.9/24\"\noutside_netns = \"{name}-world\""),
            )
            .replace(
                &format!("netns = \"{name}-outside\""),
                &format!("netns = \"{name}-world\""),
            ),
    );
    r.block_on(topology::apply(&t2, false)).unwrap();
    let world = format!("{name}-world");
    assert!(
        !namespaces_with(&name).contains(&outside),
        "old outside gone"
    );
    let default = ip_json(&["-n", &host, "route", "show", "default"]);
    assert_eq!(default[0]["gateway"], "192.0.2.9");
    assert!(ping(&a, "192.0.2.9"), "container -> the new outside");
    let again = r.block_on(topology::apply(&t2, false)).unwrap();
    assert!(!again.changed(), "{:?}", again.steps);

    // Destroy leaves nothing: namespaces (the outside one too), links,
    // records.
    r.block_on(topology::destroy(&name)).unwrap();
    assert!(
        namespaces_with(&name).is_empty(),
        "{:?}",
        namespaces_with(&name)
    );
    assert!(!namespaces_with(&world).contains(&world));
    assert_eq!(footprint(&name), before, "destroy left something behind");
}

#[test]
fn a_failed_apply_with_an_uplink_removes_it_and_its_outside_namespace() {
    let name = unique("upf");
    let _g = Cleanup::new(&name);
    let before = footprint(&name);
    // The last step fails in the kernel: the gateway is on no link of the
    // container; the uplink and the outside namespace were made before it.
    let t = topo(&with_uplink(
        &name,
        &format!(
            "[[route]]\nnetns = \"{name}-a\"\nto = \"10.77.0.0/16\"\nvia = \"198.51.100.1\"\n"
        ),
    ));
    let e = rt()
        .block_on(topology::apply(&t, false))
        .unwrap_err()
        .to_string();
    assert!(e.contains("rolled back"), "{e}");
    assert!(
        namespaces_with(&name).is_empty(),
        "{:?}",
        namespaces_with(&name)
    );
    assert_eq!(footprint(&name), before, "rollback left something");
}

#[test]
fn bad_uplinks_and_publishes_are_refused_and_change_nothing() {
    let name = unique("bp");
    let _g = Cleanup::new(&name);
    let before = footprint(&name);
    let docker = |container_extra: &str| {
        format!(
            r#"
name = "{name}"
host_netns = "{name}-h"
docker_rules = true

[uplink]
name = "uplink0"
address = "192.0.2.2/24"
outside_address = "192.0.2.1/24"

[[bridge]]
name = "docker0"
addresses = ["172.17.0.1/16"]

[[container]]
name = "a"
bridge = "docker0"
addresses = ["172.17.0.2/16"]
{container_extra}
"#
        )
    };
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "protocol",
            docker("publish = [\"8080:80/sctp\"]"),
            "protocol \"sctp\" is not \"tcp\" or \"udp\"",
        ),
        (
            "port 0",
            docker("publish = [\"0:80\"]"),
            "host port \"0\" is not a port number 1–65535",
        ),
        (
            "no host port",
            docker("publish = [\"80\"]"),
            "needs HOSTPORT:CONTAINERPORT",
        ),
        (
            "twice",
            docker(
                "publish = [\"8080:80\"]\n[[container]]\nname = \"b\"\nbridge = \"docker0\"\naddresses = [\"172.17.0.3/16\"]\npublish = [\"8080:8080/tcp\"]",
            ),
            "host port 8080/tcp is already published by container a",
        ),
        (
            "foreign host address",
            docker("publish = [\"203.0.113.5:8080:80\"]"),
            "host address 203.0.113.5 is not an address of the host namespace",
        ),
        (
            "without docker_rules",
            docker("publish = [\"8080:80\"]").replace("docker_rules = true", ""),
            "needs docker_rules = true",
        ),
        (
            "uplink without host_netns",
            docker("").replace(&format!("host_netns = \"{name}-h\""), ""),
            "an uplink needs host_netns",
        ),
        (
            "outside address off the subnet",
            docker("").replace("192.0.2.1/24", "198.51.100.1/24"),
            "is not on the uplink's subnet 192.0.2.0/24",
        ),
    ];
    for (what, text, expect) in cases {
        let f = write_file(&name, "bad.toml", &text);
        let o = netctl(&["apply", f.to_str().unwrap()]);
        assert!(!o.status.success(), "{what}: apply succeeded");
        let err = stderr(&o);
        assert!(err.contains(expect), "{what}: {err}");
        assert!(err.contains("bad.toml:"), "{what}: {err}");
        assert_eq!(footprint(&name), before, "{what} changed the system");
        assert!(namespaces_with(&name).is_empty(), "{what}");
    }
}

#[test]
fn an_outside_namespace_the_topology_does_not_own_is_not_taken_over() {
    let name = unique("upo");
    let _g = Cleanup::new(&name);
    let outside = format!("{name}-outside");
    assert!(run("ip", &["netns", "add", &outside]).status.success());
    let e = rt()
        .block_on(topology::apply(&topo(&with_uplink(&name, "")), false))
        .unwrap_err()
        .to_string();
    assert!(e.contains("does not belong"), "{e}");
    assert_eq!(namespaces_with(&name), vec![outside], "nothing created");
}

/// Docker's rules installed in the eBPF datapath: `netctl rules save`
/// shows what `docker::rules` generates. Needs the NAT targets in the
/// rules parser (MASQUERADE, DNAT).
#[test]
fn the_docker_nat_example_installs_dockers_rules_needs_nat() {
    let name = unique("dn");
    let _g = Cleanup::new(&name);
    let before = footprint(&name);
    let t = example("docker-nat.toml", &name);
    let r = rt();
    r.block_on(topology::apply(&t, false)).unwrap();
    let host = format!("{name}-host");
    let outside = format!("{name}-outside");
    assert!(namespaces_with(&name).contains(&outside));
    assert!(ping(&outside, "192.0.2.2"), "outside -> uplink address");
    // Hairpin mode on the bridge ports, as Docker without the proxy.
    let ports = ip_json(&["-n", &host, "-d", "link", "show", "master", "docker0"]);
    for p in ports.as_array().unwrap() {
        assert_eq!(p["linkinfo"]["info_slave_data"]["hairpin"], true, "{p}");
    }
    let o = netctl(&["rules", "--topology", &name, "save"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Without the comment lines, and with the policy counters (the host's
    // own packets count already) zeroed.
    let saved: String = stdout(&o)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match (l.starts_with(':'), l.rfind(" [")) {
            (true, Some(i)) => format!("{} [0:0]\n", &l[..i]),
            _ => format!("{l}\n"),
        })
        .collect();
    assert_eq!(saved, topology::docker::rules(&t));
    assert!(
        saved.contains(
            "-A DOCKER -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80"
        )
    );
    // Applying again changes nothing.
    let again = r.block_on(topology::apply(&t, false)).unwrap();
    assert!(!again.changed(), "{:?}", again.steps);
    r.block_on(topology::destroy(&name)).unwrap();
    assert!(namespaces_with(&name).is_empty());
    assert_eq!(footprint(&name), before, "destroy left something behind");
}

//! Unit tests for parsing, validation and planning (no kernel).

use super::model::*;
use super::parse::parse;
use super::plan::{Observed, Step, plan, plan_destroy};
use crate::mac::Mac;
use crate::netns::Netns;
use crate::observe::NsView;
use crate::state::{Addr, Link, RT_TABLE_MAIN, Route, RouteKind};

const DOCKER: &str = include_str!("../../../examples/docker-default.toml");
const TWO: &str = include_str!("../../../examples/two-bridges.toml");

fn errors(text: &str) -> Vec<String> {
    match parse(text, "t.toml") {
        Ok(_) => vec![],
        Err(e) => e
            .problems
            .iter()
            .map(|p| format!("{}:{}: {}", p.line, p.col, p.message))
            .collect(),
    }
}

fn one_error(text: &str) -> String {
    let e = errors(text);
    assert_eq!(e.len(), 1, "expected one error, got {e:?}");
    e[0].clone()
}

#[test]
fn examples_parse() {
    let t = parse(DOCKER, "d").unwrap();
    assert_eq!(t.name, "docker-default");
    assert_eq!(t.containers.len(), 3);
    assert_eq!(t.containers[0].netns, "docker-default-c1");
    assert_eq!(t.containers[0].ifname, "eth0");
    assert_eq!(
        t.containers[0].gateways,
        vec!["172.17.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
    assert_eq!(t.bridges[0].ageing_time_s, 300);
    let t = parse(TWO, "t").unwrap();
    assert_eq!(t.routes.len(), 2);
    assert_eq!(t.routes[1].table, 100);
    // Dual-stack container: one gateway per family.
    assert_eq!(t.containers[0].gateways.len(), 2);
}

#[test]
fn host_ifnames_are_stable_and_short() {
    let a = super::parse::default_host_ifname("topo", "c1");
    assert_eq!(a, super::parse::default_host_ifname("topo", "c1"));
    assert_ne!(a, super::parse::default_host_ifname("topo", "c2"));
    assert!(crate::names::check_ifname(&a).is_ok());
}

const BASE: &str = r#"
name = "t"
host_netns = "t-host"

[[bridge]]
name = "br0"
addresses = ["10.0.0.1/24"]
"#;

#[test]
fn bad_interface_names() {
    let e = one_error(&format!(
        "{BASE}\n[[container]]\nname = \"a\"\nbridge = \"br0\"\nhost_ifname = \"this-name-is-too-long\"\n"
    ));
    assert!(e.contains("at most 15"), "{e}");
    assert!(e.starts_with("12:"), "{e}");
    let e = one_error(&format!(
        "{BASE}\n[[container]]\nname = \"a\"\nbridge = \"br0\"\nifname = \"eth/0\"\n"
    ));
    assert!(e.contains("'/'"), "{e}");
    let e = one_error("name = \"t\"\n[[bridge]]\nname = \"br 0\"\n");
    assert!(e.contains("whitespace"), "{e}");
}

#[test]
fn duplicates() {
    let e = one_error(&format!(
        "{BASE}\n[[container]]\nname = \"a\"\nbridge = \"br0\"\nhost_ifname = \"br0\"\n"
    ));
    assert!(e.contains("already used by bridge br0"), "{e}");
    let e = errors(&format!(
        "{BASE}\n[[container]]\nname = \"a\"\nbridge = \"br0\"\n[[container]]\nname = \"a\"\nbridge = \"br0\"\n"
    ));
    assert!(e.iter().any(|x| x.contains("defined twice")), "{e:?}");
    let e = one_error(&format!(
        "{BASE}\n[[container]]\nname = \"a\"\nbridge = \"br0\"\naddresses = [\"10.0.0.1/24\"]\n"
    ));
    assert!(e.contains("already used by bridge br0"), "{e}");
    let e = one_error(&format!(
        "{BASE}\n[[container]]\nname = \"a\"\nbridge = \"br0\"\nnetns = \"t-host\"\n"
    ));
    assert!(e.contains("already used by host_netns"), "{e}");
}

#[test]
fn addresses_outside_subnet_and_overlaps() {
    let e = one_error(&format!(
        "{BASE}\n[[container]]\nname = \"a\"\nbridge = \"br0\"\naddresses = [\"10.0.1.5/24\"]\n"
    ));
    assert!(e.contains("outside bridge br0's subnet 10.0.0.0/24"), "{e}");
    assert!(e.starts_with("12:14"), "{e}");
    let e = one_error(&format!(
        "{BASE}\n[[bridge]]\nname = \"br1\"\naddresses = [\"10.0.0.128/25\"]\n"
    ));
    assert!(e.contains("overlaps"), "{e}");
    let e = one_error(&format!(
        "{BASE}\n[[container]]\nname = \"a\"\nbridge = \"br0\"\naddresses = [\"10.0.0.255/24\"]\n"
    ));
    assert!(e.contains("broadcast"), "{e}");
    let e = one_error(&format!(
        "{BASE}\n[[container]]\nname = \"a\"\nbridge = \"br0\"\naddresses = [\"10.0.0.5\"]\n"
    ));
    assert!(e.contains("prefix length"), "{e}");
    // Secondary addresses of one bridge in its own subnet are no overlap;
    // the same address twice still is a duplicate.
    let two = BASE.replace(r#"["10.0.0.1/24"]"#, r#"["10.0.0.1/24", "10.0.0.2/24"]"#);
    assert!(errors(&two).is_empty(), "{:?}", errors(&two));
    let twice = BASE.replace(r#"["10.0.0.1/24"]"#, r#"["10.0.0.1/24", "10.0.0.1/24"]"#);
    assert!(one_error(&twice).contains("already used by bridge br0"));
}

#[test]
fn unknown_references() {
    let e = one_error(&format!(
        "{BASE}\n[[container]]\nname = \"a\"\nbridge = \"br9\"\n"
    ));
    assert!(e.contains("bridge \"br9\", which is not defined"), "{e}");
    let e = one_error(&format!(
        "{BASE}\n[[route]]\nnetns = \"nowhere\"\nto = \"10.9.0.0/16\"\nvia = \"10.0.0.9\"\n"
    ));
    assert!(e.contains("namespace \"nowhere\""), "{e}");
    let e = one_error(&format!(
        "{BASE}\n[[route]]\nto = \"10.9.0.0/16\"\ndev = \"br7\"\n"
    ));
    assert!(e.contains("device \"br7\""), "{e}");
    let e = one_error(&format!("{BASE}\nbogus = 1\n"));
    assert!(e.contains("unknown field"), "{e}");
}

#[test]
fn gateway_must_be_on_link() {
    let e = one_error(&format!(
        "{BASE}\n[[container]]\nname = \"a\"\nbridge = \"br0\"\naddresses = [\"10.0.0.2/24\"]\ngateway = \"10.0.9.1\"\n"
    ));
    assert!(e.contains("not in any of its subnets"), "{e}");
}

#[test]
fn several_problems_reported_at_once() {
    let e = errors(&format!(
        "{BASE}\n[[container]]\nname = \"a\"\nbridge = \"nope\"\nmac = \"01:00:5e:00:00:01\"\nmtu = 10\n"
    ));
    assert_eq!(e.len(), 3, "{e:?}");
}

// ---- planning ----

fn link(index: u32, name: &str, kind: Option<&str>) -> Link {
    Link::fixture(index, name, kind)
}

fn small() -> Topology {
    parse(
        &format!("{BASE}\n[[container]]\nname = \"a\"\nbridge = \"br0\"\naddresses = [\"10.0.0.2/24\"]\nmac = \"02:00:00:00:00:02\"\n"),
        "t",
    )
    .unwrap()
}

/// The kernel state a successful apply of `small()` leaves.
fn applied(t: &Topology) -> Observed {
    let c = &t.containers[0];
    let mut br = link(2, "br0", Some("bridge"));
    br.ageing_time_cs = Some(30000);
    let mut h = link(3, &c.host_ifname, Some("veth"));
    h.master = Some(2);
    h.hairpin = Some(false);
    let mut host = NsView {
        links: vec![link(1, "lo", None), br, h],
        addrs: vec![Addr {
            index: 2,
            net: "10.0.0.1/24".parse().unwrap(),
        }],
        routes: vec![],
        ip_forward: true,
    };
    host.routes.clear();
    let mut p = link(2, "eth0", Some("veth"));
    p.link = Some(3);
    p.mac = Some("02:00:00:00:00:02".parse::<Mac>().unwrap());
    let ctr = NsView {
        links: vec![link(1, "lo", None), p],
        addrs: vec![Addr {
            index: 2,
            net: "10.0.0.2/24".parse().unwrap(),
        }],
        routes: vec![Route::fixture(
            RT_TABLE_MAIN,
            RouteKind::Unicast,
            "0.0.0.0/0",
            Some("10.0.0.1"),
            2,
        )],
        ip_forward: false,
    };
    let mut o = Observed::default();
    o.namespaces.insert("t-host".into());
    o.namespaces.insert(c.netns.clone());
    o.views.insert(Netns::named("t-host"), host);
    o.views.insert(Netns::named(&c.netns), ctr);
    o
}

#[test]
fn fresh_apply_creates_in_order() {
    let t = small();
    let steps = plan(&t, None, &Observed::default()).unwrap();
    let names: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
    // Namespaces first (created in parallel), then the rest in order.
    assert_eq!(names[0], "+ netns t-host");
    assert_eq!(names[1], "+ netns t-a");
    assert!(names[2].starts_with("~ ip_forward=1"));
    assert!(names[3].starts_with("+ bridge br0"));
    assert!(names[4].starts_with("+ address 10.0.0.1/24 dev br0"));
    assert!(names[5].starts_with("+ veth"));
    assert!(names[6].starts_with("+ address 10.0.0.2/24 dev eth0"));
    assert!(names[7].starts_with("+ route default via 10.0.0.1"));
    assert_eq!(names.len(), 8);
}

#[test]
fn reapply_is_a_no_op() {
    let t = small();
    let steps = plan(&t, Some(&t), &applied(&t)).unwrap();
    assert!(steps.is_empty(), "{steps:?}");
}

#[test]
fn edit_changes_only_the_difference() {
    let t = small();
    let mut t2 = t.clone();
    t2.containers[0]
        .addresses
        .push("10.0.0.3/24".parse().unwrap());
    t2.bridges[0].ageing_time_s = 60;
    let steps = plan(&t2, Some(&t), &applied(&t)).unwrap();
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert!(matches!(
        &steps[0],
        Step::SetAgeing {
            ageing_time_s: 60,
            ..
        }
    ));
    assert!(matches!(&steps[1], Step::AddAddr { dev, .. } if dev == "eth0"));
}

#[test]
fn removing_a_container_deletes_its_link_and_namespace() {
    let t = small();
    let mut t2 = t.clone();
    t2.containers.clear();
    let steps = plan(&t2, Some(&t), &applied(&t)).unwrap();
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert!(
        matches!(&steps[0], Step::DeleteLink { name, .. } if name == &t.containers[0].host_ifname)
    );
    assert!(matches!(&steps[1], Step::DeleteNetns { name } if name == "t-a"));
}

#[test]
fn changed_mac_recreates_the_pair() {
    let t = small();
    let mut t2 = t.clone();
    t2.containers[0].mac = "02:00:00:00:00:09".parse().unwrap();
    let steps = plan(&t2, Some(&t), &applied(&t)).unwrap();
    let s: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
    assert!(s[0].starts_with("- link veth"), "{s:?}");
    assert!(s[1].starts_with("+ veth"), "{s:?}");
    assert!(
        s.iter().any(|x| x.starts_with("+ address 10.0.0.2/24")),
        "{s:?}"
    );
    assert!(s.iter().any(|x| x.starts_with("+ route default")), "{s:?}");
}

#[test]
fn foreign_objects_are_refused() {
    let t = small();
    let o = applied(&t);
    // Same kernel state, but no record that this topology made it.
    let e = plan(&t, None, &o).unwrap_err().to_string();
    assert!(e.contains("already exists and does not belong"), "{e}");
}

#[test]
fn destroy_removes_host_ends_before_namespaces() {
    let t = small();
    let steps = plan_destroy(&t, &applied(&t));
    let s: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
    assert!(s[0].starts_with("- link veth"), "{s:?}");
    assert!(s[1].starts_with("- link br0"), "{s:?}");
    assert_eq!(s[2], "- netns t-a");
    assert_eq!(s[3], "- netns t-host");
}

#[test]
fn destroy_deletes_a_group_in_one_step_when_it_is_all_ours() {
    let t = small();
    let mut o = applied(&t);
    let host = o.views.get_mut(&Netns::named("t-host")).unwrap();
    host.links[2].group = t.link_group();
    let s: Vec<String> = plan_destroy(&t, &o).iter().map(|s| s.to_string()).collect();
    assert!(s[0].starts_with("- 1 link(s) of group"), "{s:?}");
    assert!(s[1].starts_with("- link br0"), "{s:?}");
    // A foreign device in the same group: fall back to one by one.
    let host = o.views.get_mut(&Netns::named("t-host")).unwrap();
    let mut foreign = host.links[2].clone();
    foreign.name = "someone".into();
    foreign.index = 9;
    host.links.push(foreign);
    let s: Vec<String> = plan_destroy(&t, &o).iter().map(|s| s.to_string()).collect();
    assert!(s[0].starts_with("- link veth"), "{s:?}");
}

#[test]
fn conntrack_timeouts() {
    let ok = format!("{BASE}\n[conntrack]\nudp_timeout = 5\ntcp_timeout_established = 3600\n");
    let t = parse(&ok, "t.toml").unwrap();
    assert_eq!(t.conntrack.get("udp_timeout"), Some(&5));
    assert_eq!(t.conntrack.get("tcp_timeout_established"), Some(&3600));
    let e = one_error(&format!("{BASE}\n[conntrack]\nudp_timout = 5\n"));
    assert!(
        e.contains("unknown conntrack timeout \"udp_timout\""),
        "{e}"
    );
    assert!(e.contains("udp_timeout_stream"), "{e}");
    let e = one_error(&format!("{BASE}\n[conntrack]\nudp_timeout = 0\n"));
    assert!(e.contains("must be a number of seconds"), "{e}");
    let kernel = BASE.replace("host_netns", "datapath = \"kernel\"\nhost_netns");
    let e = one_error(&format!("{kernel}\n[conntrack]\nudp_timeout = 5\n"));
    assert!(e.contains("needs datapath = \"ebpf\""), "{e}");
}

#[test]
fn attach_mode() {
    assert_eq!(parse(BASE, "t.toml").unwrap().attach, Attach::ClsBpf);
    let tcx = BASE.replace("host_netns", "attach = \"tcx\"\nhost_netns");
    assert_eq!(parse(&tcx, "t.toml").unwrap().attach, Attach::Tcx);
    let e = one_error(&BASE.replace("host_netns", "attach = \"xdp\"\nhost_netns"));
    assert!(
        e.contains("attach \"xdp\" is not one of \"cls_bpf\", \"tcx\""),
        "{e}"
    );
    let kernel = BASE.replace(
        "host_netns",
        "datapath = \"kernel\"\nattach = \"tcx\"\nhost_netns",
    );
    let e = one_error(&kernel);
    assert!(e.contains("it needs datapath = \"ebpf\""), "{e}");
    // A record stored before the field existed reads as cls_bpf, as
    // those topologies were attached.
    let mut v = serde_json::to_value(parse(&tcx, "t.toml").unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("attach");
    let t: Topology = serde_json::from_value(v).unwrap();
    assert_eq!(t.attach, Attach::ClsBpf);
}

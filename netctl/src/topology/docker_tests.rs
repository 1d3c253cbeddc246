//! Unit tests for the uplink, published ports and Docker's rules (no
//! kernel).
//!
//! Tests whose name ends in `_needs_nat_parser` feed the generated rules
//! (MASQUERADE, DNAT) to netctl's iptables-save parser, and so pass only
//! once that parser knows the NAT targets.

use std::net::Ipv4Addr;

use super::docker::{self, Located, Origin, merge};
use super::model::*;
use super::parse::{parse, parse_publish, parse_unchecked};
use super::plan::{Observed, Step, plan, plan_destroy};
use crate::netns::Netns;
use crate::observe::NsView;
use crate::state::{Addr, Link, RT_TABLE_MAIN, Route, RouteKind};

const NAT: &str = include_str!("../../../examples/docker-nat.toml");

fn errors(text: &str) -> Vec<String> {
    match parse_unchecked(text, "t.toml") {
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

/// What `docker::rules` writes for examples/docker-nat.toml: Docker's
/// iptables-save output for that host, with `-m addrtype` spelt out as the
/// host's addresses.
const NAT_RULES: &str = "\
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A FORWARD -i docker0 -o docker0 -j ACCEPT
-A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p tcp -m tcp --dport 80 -j ACCEPT
-A DOCKER -d 172.17.0.3/32 ! -i docker0 -o docker0 -p udp -m udp --dport 53 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -d 192.0.2.2/32 -j DOCKER
-A PREROUTING -d 172.17.0.1/32 -j DOCKER
-A OUTPUT -d 192.0.2.2/32 -j DOCKER
-A OUTPUT -d 172.17.0.1/32 -j DOCKER
-A POSTROUTING -s 192.0.2.2/32 -o docker0 -j MASQUERADE
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A POSTROUTING -s 172.17.0.2/32 -d 172.17.0.2/32 -p tcp -m tcp --dport 80 -j MASQUERADE
-A POSTROUTING -s 172.17.0.3/32 -d 172.17.0.3/32 -p udp -m udp --dport 53 -j MASQUERADE
-A DOCKER -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80
-A DOCKER -d 192.0.2.2/32 -p udp -m udp --dport 5353 -j DNAT --to-destination 172.17.0.3:53
COMMIT
";

#[test]
fn the_example_parses_with_its_uplink_and_ports() {
    let t = parse_unchecked(NAT, "docker-nat.toml").unwrap();
    let u = t.uplink.as_ref().unwrap();
    assert_eq!(u.name, "uplink0");
    assert_eq!(u.address, "192.0.2.2/24".parse().unwrap());
    assert_eq!(u.outside_netns, "docker-nat-outside");
    assert_eq!(u.outside_ifname, "eth0");
    assert_eq!(u.outside_address, "192.0.2.1/24".parse().unwrap());
    assert_eq!(u.gateway, Ipv4Addr::new(192, 0, 2, 1));
    assert!(t.docker_rules);
    assert_eq!(
        t.containers[0].publish,
        vec![Publish {
            host_ip: None,
            host_port: 8080,
            container_port: 80,
            proto: Proto::Tcp
        }]
    );
    assert_eq!(
        t.containers[1].publish[0].to_string(),
        "192.0.2.2:5353:53/udp"
    );
    // Docker without the userland proxy: hairpin on every port.
    assert!(t.containers.iter().all(|c| c.hairpin));
    assert!(
        t.owned_namespaces()
            .contains(&"docker-nat-outside".to_string())
    );
}

#[test]
fn dockers_rules_for_the_example() {
    let t = parse_unchecked(NAT, "docker-nat.toml").unwrap();
    assert_eq!(docker::rules(&t), NAT_RULES);
    // Without rules of its own, the topology installs exactly these.
    assert_eq!(docker::effective_rules(&t).unwrap(), NAT_RULES);
}

const TWO: &str = r#"
name = "t"
host_netns = "t-host"
docker_rules = true

[[bridge]]
name = "docker0"
addresses = ["172.17.0.1/16"]

[[bridge]]
name = "br-app"
addresses = ["172.18.0.1/16", "fd00:18::1/64"]

[[container]]
name = "web"
bridge = "br-app"
addresses = ["172.18.0.2/16"]
publish = ["80:8080", "172.17.0.1:443:8443/tcp"]

[[container]]
name = "dns"
bridge = "docker0"
addresses = ["172.17.0.2/16"]
publish = ["53:53/udp"]
"#;

/// Two networks: Docker inserts each network's rules at the top, so the
/// one made last (the file's last bridge) comes first; ports are appended
/// in container order. No uplink: the bridges' addresses are the host's.
const TWO_RULES: &str = "\
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o br-app -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o br-app -j DOCKER
-A FORWARD -i br-app ! -o br-app -j ACCEPT
-A FORWARD -i br-app -o br-app -j ACCEPT
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A FORWARD -i docker0 -o docker0 -j ACCEPT
-A DOCKER -d 172.18.0.2/32 ! -i br-app -o br-app -p tcp -m tcp --dport 8080 -j ACCEPT
-A DOCKER -d 172.18.0.2/32 ! -i br-app -o br-app -p tcp -m tcp --dport 8443 -j ACCEPT
-A DOCKER -d 172.17.0.2/32 ! -i docker0 -o docker0 -p udp -m udp --dport 53 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i br-app ! -o br-app -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o br-app -j DROP
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -d 172.17.0.1/32 -j DOCKER
-A PREROUTING -d 172.18.0.1/32 -j DOCKER
-A OUTPUT -d 172.17.0.1/32 -j DOCKER
-A OUTPUT -d 172.18.0.1/32 -j DOCKER
-A POSTROUTING -s 172.17.0.1/32 -o br-app -j MASQUERADE
-A POSTROUTING -s 172.18.0.0/16 ! -o br-app -j MASQUERADE
-A POSTROUTING -s 172.18.0.1/32 -o docker0 -j MASQUERADE
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A POSTROUTING -s 172.18.0.2/32 -d 172.18.0.2/32 -p tcp -m tcp --dport 8080 -j MASQUERADE
-A POSTROUTING -s 172.18.0.2/32 -d 172.18.0.2/32 -p tcp -m tcp --dport 8443 -j MASQUERADE
-A POSTROUTING -s 172.17.0.2/32 -d 172.17.0.2/32 -p udp -m udp --dport 53 -j MASQUERADE
-A DOCKER -p tcp -m tcp --dport 80 -j DNAT --to-destination 172.18.0.2:8080
-A DOCKER -d 172.17.0.1/32 -p tcp -m tcp --dport 443 -j DNAT --to-destination 172.18.0.2:8443
-A DOCKER -p udp -m udp --dport 53 -j DNAT --to-destination 172.17.0.2:53
COMMIT
";

#[test]
fn dockers_rules_for_two_bridges_newest_first() {
    let t = parse_unchecked(TWO, "t.toml").unwrap();
    assert_eq!(docker::rules(&t), TWO_RULES);
}

#[test]
fn the_generated_rules_are_what_rules_save_prints_needs_nat_parser() {
    // netctl's own iptables-save writer gives back the same text (apart
    // from its comment lines), so `netctl rules save` shows exactly this.
    for text in [NAT_RULES, TWO_RULES] {
        let rs = crate::rules::parse::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let saved: String = crate::rules::save::save(&rs)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(saved, text);
    }
}

#[test]
fn the_example_parses_with_its_rules_checked_needs_nat_parser() {
    let t = parse(NAT, "docker-nat.toml").unwrap_or_else(|e| panic!("{e}"));
    assert!(t.docker_rules);
}

#[test]
fn a_mistake_in_the_files_rules_is_placed_on_its_line_needs_nat_parser() {
    let text = NAT.replace(
        "docker_rules = true ",
        "rules = \"\"\"\n*filter\n-A DOCKER-USER -s 10.0.0.0/8 -j DROP\n-A DOCKER-USER -j NOWHERE\nCOMMIT\n\"\"\"\ndocker_rules = true ",
    );
    let e = match parse(&text, "t.toml") {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    };
    // Line 3 of the rules text; DOCKER-USER itself is Docker's, known.
    assert!(e.contains("rules: line 3:"), "{e}");
    assert!(!e.contains("DOCKER-USER"), "{e}");
}

// ---- merging the file's rules after Docker's ----

#[test]
fn merge_appends_to_chains_and_adds_the_users_own() {
    let user = "\
*filter
:FORWARD ACCEPT [0:0]
:DOCKER - [0:0]
:MINE - [0:0]
-A DOCKER-USER -s 10.9.0.0/16 -j DROP
-A FORWARD -j MINE
-A MINE -j ACCEPT
COMMIT
*raw
:PREROUTING ACCEPT [0:0]
-A PREROUTING -d 10.0.0.1/32 -j DROP
COMMIT
";
    let t = parse_unchecked(NAT, "t").unwrap();
    let m = merge(&docker::rules(&t), user);
    let filter: Vec<&str> = m.text.split("COMMIT\n").next().unwrap().lines().collect();
    // The user's policy replaces Docker's DROP; DOCKER is declared once,
    // MINE is added after Docker's chains.
    assert!(filter.contains(&":FORWARD ACCEPT [0:0]"), "{filter:?}");
    assert!(!filter.contains(&":FORWARD DROP [0:0]"));
    assert_eq!(
        filter.iter().filter(|l| **l == ":DOCKER - [0:0]").count(),
        1
    );
    let pos = |l: &str| filter.iter().position(|x| *x == l).unwrap();
    assert!(pos(":MINE - [0:0]") > pos(":DOCKER-USER - [0:0]"));
    // FORWARD: Docker's rules, then the user's.
    assert!(pos("-A FORWARD -j MINE") > pos("-A FORWARD -i docker0 -o docker0 -j ACCEPT"));
    // DOCKER-USER: the user's rules before Docker's RETURN.
    assert!(pos("-A DOCKER-USER -s 10.9.0.0/16 -j DROP") < pos("-A DOCKER-USER -j RETURN"));
    // A table Docker does not touch follows, as the user wrote it.
    assert!(
        m.text.ends_with(
            "*raw\n:PREROUTING ACCEPT [0:0]\n-A PREROUTING -d 10.0.0.1/32 -j DROP\nCOMMIT\n"
        ),
        "{}",
        m.text
    );
    // The nat table is Docker's, untouched.
    assert!(m.text.contains(NAT_RULES.split("COMMIT\n").nth(1).unwrap()));
    // Every line knows where it came from.
    assert_eq!(m.origin.len(), m.text.lines().count());
    let line_of = |l: &str| m.text.lines().position(|x| x == l).unwrap();
    assert_eq!(m.origin[line_of("-A MINE -j ACCEPT")], Origin::User(7));
    assert_eq!(m.origin[line_of(":FORWARD ACCEPT [0:0]")], Origin::User(2));
    assert_eq!(
        m.origin[line_of("-A DOCKER-USER -j RETURN")],
        Origin::Generated
    );
}

#[test]
fn merge_of_nothing_is_the_generated_text() {
    let t = parse_unchecked(NAT, "t").unwrap();
    let m = merge(&docker::rules(&t), "");
    assert_eq!(m.text, NAT_RULES);
    assert!(m.origin.iter().all(|o| *o == Origin::Generated));
    // Comments and blank lines in the user's text are dropped.
    let m = merge(&docker::rules(&t), "# mine\n\n*nat\n# nothing\nCOMMIT\n");
    assert_eq!(m.text, NAT_RULES);
}

#[test]
fn a_later_section_replaces_an_earlier_one_as_with_iptables_restore() {
    let t = parse_unchecked(NAT, "t").unwrap();
    let user = "*filter\n-A FORWARD -j DROP\nCOMMIT\n*filter\n-A FORWARD -j REJECT\nCOMMIT\n";
    let m = merge(&docker::rules(&t), user);
    assert!(!m.text.contains("-A FORWARD -j DROP\n"), "{}", m.text);
    assert!(m.text.contains("-A FORWARD -j REJECT\n"), "{}", m.text);
}

#[test]
fn text_that_is_not_sections_is_left_for_the_parser_to_place() {
    let t = parse_unchecked(NAT, "t").unwrap();
    let generated = docker::rules(&t);
    let m = merge(&generated, "-A FORWARD -j DROP\n");
    assert!(m.text.starts_with(&generated));
    let n = generated.lines().count();
    assert_eq!(m.origin[n], Origin::User(1));
    let e = crate::rules::parse::RuleError::Line {
        line: n + 1,
        error: Box::new(crate::rules::parse::RuleError::Iptables("outside".into())),
    };
    assert_eq!(m.locate(&e), Located::User(1, "outside".into()));
    let e = crate::rules::parse::RuleError::Line {
        line: 2,
        error: Box::new(crate::rules::parse::RuleError::Iptables("bad".into())),
    };
    assert_eq!(
        m.locate(&e),
        Located::Generated(":INPUT ACCEPT [0:0]".into(), "bad".into())
    );
}

// ---- published ports ----

#[test]
fn publish_specs() {
    let p = parse_publish("8080:80").unwrap();
    assert_eq!(
        (p.host_ip, p.host_port, p.container_port, p.proto),
        (None, 8080, 80, Proto::Tcp)
    );
    let p = parse_publish("5353:53/udp").unwrap();
    assert_eq!(p.proto, Proto::Udp);
    let p = parse_publish("192.0.2.2:8443:443/tcp").unwrap();
    assert_eq!(p.host_ip, Some(Ipv4Addr::new(192, 0, 2, 2)));
    assert_eq!(p.to_string(), "192.0.2.2:8443:443/tcp");
    assert_eq!(parse_publish("0.0.0.0:1:65535").unwrap().host_ip, None);
    for (bad, why) in [
        ("80", "needs HOSTPORT:CONTAINERPORT"),
        ("8080:80/sctp", "protocol \"sctp\" is not"),
        ("0:80", "host port \"0\" is not a port number 1–65535"),
        (
            "8080:65536",
            "container port \"65536\" is not a port number",
        ),
        ("http:80", "host port \"http\" is not a port number"),
        ("8080-8081:80-81", "port ranges are not supported"),
        (
            "1.2.3:8080:80",
            "host address \"1.2.3\" is not an IPv4 address",
        ),
        ("::1:8080:80", "is not [HOSTIP:]HOSTPORT:CONTAINERPORT"),
        ("", "needs HOSTPORT:CONTAINERPORT"),
    ] {
        let e = parse_publish(bad).unwrap_err();
        assert!(e.contains(why), "{bad}: {e}");
    }
}

const BASE: &str = r#"
name = "t"
host_netns = "t-host"
docker_rules = true

[uplink]
name = "up0"
address = "192.0.2.2/24"
outside_address = "192.0.2.1/24"

[[bridge]]
name = "br0"
addresses = ["10.0.0.1/24"]

[[container]]
name = "a"
bridge = "br0"
addresses = ["10.0.0.2/24"]
"#;

#[test]
fn bad_publishes_are_refused_with_their_place() {
    let e = one_error(&format!("{BASE}publish = [\"8080:80/sctp\"]\n"));
    assert!(e.starts_with("19:12: publish \"8080:80/sctp\""), "{e}");
    // The same host port twice, in one container or two; an address of
    // its own does not help against "every address".
    let e = one_error(&format!("{BASE}publish = [\"8080:80\", \"8080:81\"]\n"));
    assert!(
        e.contains("host port 8080/tcp is already published by this container"),
        "{e}"
    );
    let two = format!(
        "{BASE}publish = [\"8080:80\"]\n[[container]]\nname = \"b\"\nbridge = \"br0\"\naddresses = [\"10.0.0.3/24\"]\npublish = [\"192.0.2.2:8080:80\"]\n"
    );
    let e = one_error(&two);
    assert!(
        e.contains("host port 8080/tcp is already published by container a"),
        "{e}"
    );
    // Different protocols, or different addresses, may share a number.
    let ok = two.replace(
        "publish = [\"8080:80\"]",
        "publish = [\"10.0.0.1:8080:80\", \"8080:80/udp\"]",
    );
    assert_eq!(errors(&ok), Vec::<String>::new());
    let e = one_error(&format!("{BASE}publish = [\"198.51.100.1:80:80\"]\n"));
    assert!(
        e.contains("host address 198.51.100.1 is not an address of the host namespace (it has 192.0.2.2, 10.0.0.1)"),
        "{e}"
    );
    // Without docker_rules nothing would publish them.
    let e = one_error(
        &format!("{BASE}publish = [\"80:80\"]\n")
            .replace("docker_rules = true", "docker_rules = false"),
    );
    assert!(e.contains("needs docker_rules = true"), "{e}");
    // Also when the first entry is itself wrong: both are said.
    let e = errors(
        &format!("{BASE}publish = [\"80\", \"81:81\"]\n")
            .replace("docker_rules = true", "docker_rules = false"),
    );
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e.iter().any(|x| x.contains("needs docker_rules = true")),
        "{e:?}"
    );
    // Nowhere to forward to.
    let e = one_error(
        &format!("{BASE}publish = [\"80:80\"]\n")
            .replace(
                "addresses = [\"10.0.0.1/24\"]",
                "addresses = [\"10.0.0.1/24\", \"fd00::1/64\"]",
            )
            .replace(
                "addresses = [\"10.0.0.2/24\"]",
                "addresses = [\"fd00::2/64\"]",
            ),
    );
    assert!(e.contains("has no IPv4 address"), "{e}");
}

#[test]
fn docker_rules_need_the_ebpf_datapath() {
    let e = one_error(&BASE.replace(
        "docker_rules = true",
        "docker_rules = true\ndatapath = \"kernel\"",
    ));
    assert!(e.contains("docker_rules need datapath = \"ebpf\""), "{e}");
}

#[test]
fn hairpin_defaults_on_with_docker_rules_and_can_be_turned_off() {
    let t = parse_unchecked(BASE, "t").unwrap();
    assert!(t.containers[0].hairpin);
    let t = parse_unchecked(&format!("{BASE}hairpin = false\n"), "t").unwrap();
    assert!(!t.containers[0].hairpin);
    let t = parse_unchecked(&BASE.replace("docker_rules = true", ""), "t").unwrap();
    assert!(!t.containers[0].hairpin);
}

// ---- the uplink ----

fn uplink(fields: &str) -> String {
    format!(
        "name = \"t\"\nhost_netns = \"t-host\"\n\n[uplink]\n{fields}\n[[bridge]]\nname = \"br0\"\naddresses = [\"10.0.0.1/24\"]\n"
    )
}

const UP: &str = "name = \"up0\"\naddress = \"192.0.2.2/24\"\noutside_address = \"192.0.2.1/24\"\n";

#[test]
fn uplink_defaults_and_choices() {
    let t = parse_unchecked(&uplink(UP), "t").unwrap();
    let u = t.uplink.unwrap();
    assert_eq!(u.outside_netns, "t-outside");
    assert_eq!(u.outside_ifname, "eth0");
    assert_eq!(u.gateway, Ipv4Addr::new(192, 0, 2, 1));
    let t = parse_unchecked(
        &uplink(&format!(
            "{UP}outside_netns = \"world\"\noutside_ifname = \"wan\"\ngateway = \"192.0.2.254\"\n"
        )),
        "t",
    )
    .unwrap();
    let u = t.uplink.unwrap();
    assert_eq!(
        (
            u.outside_netns.as_str(),
            u.outside_ifname.as_str(),
            u.gateway
        ),
        ("world", "wan", Ipv4Addr::new(192, 0, 2, 254))
    );
}

#[test]
fn bad_uplinks_are_refused_with_their_place() {
    let cases: Vec<(String, &str)> = vec![
        (
            uplink(UP).replace("host_netns = \"t-host\"\n", ""),
            "4:8: an uplink needs host_netns",
        ),
        (
            uplink(&UP.replace("192.0.2.2/24", "192.0.2.2")),
            "6:11: uplink address \"192.0.2.2\" is not an address with prefix length (add a prefix length",
        ),
        (
            uplink(&UP.replace("192.0.2.2/24", "2001:db8::2/64")),
            "uplink address 2001:db8::2/64 is not IPv4",
        ),
        (
            uplink(&UP.replace("192.0.2.2/24", "192.0.2.0/24")),
            "uplink address 192.0.2.0/24 is the network or broadcast address",
        ),
        (
            uplink(&UP.replace("192.0.2.1/24", "198.51.100.1/24")),
            "7:19: outside_address 198.51.100.1/24 is not on the uplink's subnet 192.0.2.0/24",
        ),
        (
            uplink(&UP.replace("192.0.2.1/24", "192.0.2.2/24")),
            "outside_address 192.0.2.2 is the uplink's own address",
        ),
        (
            uplink(&format!("{UP}gateway = \"192.0.3.1\"\n")),
            "uplink gateway 192.0.3.1 is not a host on the uplink's subnet 192.0.2.0/24",
        ),
        (
            uplink(&format!("{UP}gateway = \"192.0.2.2\"\n")),
            "uplink gateway 192.0.2.2 is the uplink's own address",
        ),
        (
            uplink(
                &UP.replace("192.0.2.2/24", "10.0.0.200/16")
                    .replace("192.0.2.1/24", "10.0.0.201/16"),
            ),
            "subnet 10.0.0.0/16 of the uplink overlaps subnet 10.0.0.0/24 of bridge br0",
        ),
        (
            uplink(&UP.replace("up0", "br0")),
            "interface name \"br0\" is already used by bridge br0",
        ),
        (
            uplink(&format!("{UP}outside_netns = \"t-host\"\n")),
            "namespace \"t-host\" is already used by host_netns",
        ),
        (uplink(&format!("{UP}outside_ifname = \"a/b\"\n")), "'/'"),
        (uplink(&format!("{UP}mtu = 1500\n")), "unknown field `mtu`"),
        (
            uplink(UP).replace("[uplink]\nname = \"up0\"\n", "[uplink]\n"),
            "missing field `name`",
        ),
        (
            format!(
                "{}[[route]]\nto = \"default\"\nvia = \"192.0.2.1\"\n",
                uplink(UP)
            ),
            "the host namespace's default route is the uplink's",
        ),
        (
            format!(
                "{}[[container]]\nname = \"outside\"\nbridge = \"br0\"\n",
                uplink(UP)
            ),
            "namespace \"t-outside\" is already used by the uplink's outside_netns",
        ),
    ];
    for (text, want) in cases {
        let e = one_error(&text);
        assert!(e.contains(want), "want {want:?}, got {e}\n{text}");
    }
}

#[test]
fn routes_may_use_the_uplink_and_the_outside_namespace() {
    let text = format!(
        "{}[[route]]\nnetns = \"t-outside\"\nto = \"10.0.0.0/24\"\nvia = \"192.0.2.2\"\ndev = \"eth0\"\n[[route]]\nto = \"198.51.100.0/24\"\nvia = \"192.0.2.1\"\ndev = \"up0\"\n",
        uplink(UP)
    );
    let t = parse_unchecked(&text, "t").unwrap();
    assert_eq!(t.routes.len(), 2);
    let e = one_error(&text.replace("dev = \"eth0\"", "dev = \"up0\""));
    assert!(e.contains("device \"up0\""), "{e}");
}

// ---- planning the uplink ----

fn up_topo() -> Topology {
    parse_unchecked(&uplink(UP), "t").unwrap()
}

fn link(index: u32, name: &str, kind: Option<&str>) -> Link {
    let mut l = Link::fixture(index, name, kind);
    l.up = true;
    l
}

/// The kernel state a successful apply of `up_topo()` leaves.
fn applied() -> Observed {
    let mut br = link(2, "br0", Some("bridge"));
    br.ageing_time_cs = Some(30000);
    let up = link(3, "up0", Some("veth"));
    let host = NsView {
        links: vec![link(1, "lo", None), br, up],
        addrs: vec![
            Addr {
                index: 2,
                net: "10.0.0.1/24".parse().unwrap(),
            },
            Addr {
                index: 3,
                net: "192.0.2.2/24".parse().unwrap(),
            },
        ],
        routes: vec![Route::fixture(
            RT_TABLE_MAIN,
            RouteKind::Unicast,
            "0.0.0.0/0",
            Some("192.0.2.1"),
            3,
        )],
        ip_forward: true,
    };
    let mut peer = link(2, "eth0", Some("veth"));
    peer.link = Some(3);
    let out = NsView {
        links: vec![link(1, "lo", None), peer],
        addrs: vec![Addr {
            index: 2,
            net: "192.0.2.1/24".parse().unwrap(),
        }],
        routes: vec![],
        ip_forward: false,
    };
    let mut o = Observed::default();
    o.namespaces.insert("t-host".into());
    o.namespaces.insert("t-outside".into());
    o.views.insert(Netns::named("t-host"), host);
    o.views.insert(Netns::named("t-outside"), out);
    o
}

fn names(steps: &[Step]) -> Vec<String> {
    steps.iter().map(|s| s.to_string()).collect()
}

#[test]
fn fresh_uplink_plan() {
    let t = up_topo();
    let s = names(&plan(&t, None, &Observed::default()).unwrap());
    assert_eq!(
        s,
        vec![
            "+ netns t-host",
            "+ netns t-outside",
            "~ ip_forward=1 (netns t-host)",
            "+ bridge br0 ageing_time 300s (netns t-host)",
            "+ address 10.0.0.1/24 dev br0 (netns t-host)",
            "+ veth up0 (netns t-host) <-> eth0 (netns t-outside)",
            "+ address 192.0.2.2/24 dev up0 (netns t-host)",
            "+ address 192.0.2.1/24 dev eth0 (netns t-outside)",
            "+ route default via 192.0.2.1 dev up0 (netns t-host)",
        ]
    );
}

#[test]
fn uplink_reapply_is_a_no_op_and_edits_change_only_the_difference() {
    let t = up_topo();
    let steps = plan(&t, Some(&t), &applied()).unwrap();
    assert!(steps.is_empty(), "{steps:?}");

    let mut t2 = t.clone();
    let u = t2.uplink.as_mut().unwrap();
    u.outside_address = "192.0.2.3/24".parse().unwrap();
    u.gateway = Ipv4Addr::new(192, 0, 2, 3);
    let s = names(&plan(&t2, Some(&t), &applied()).unwrap());
    assert_eq!(
        s,
        vec![
            "- address 192.0.2.1/24 dev eth0 (netns t-outside)",
            "- route default via 192.0.2.1 (netns t-host)",
            "+ address 192.0.2.3/24 dev eth0 (netns t-outside)",
            "+ route default via 192.0.2.3 dev up0 (netns t-host)",
        ]
    );
}

#[test]
fn a_broken_uplink_pair_is_made_again() {
    let t = up_topo();
    let mut o = applied();
    // The peer went down (or away): the pair is recreated, with its
    // addresses and the route.
    o.views.get_mut(&Netns::named("t-outside")).unwrap().links[1].up = false;
    let s = names(&plan(&t, Some(&t), &o).unwrap());
    assert_eq!(
        s,
        vec![
            "- link up0 (netns t-host)",
            "+ veth up0 (netns t-host) <-> eth0 (netns t-outside)",
            "+ address 192.0.2.2/24 dev up0 (netns t-host)",
            "+ address 192.0.2.1/24 dev eth0 (netns t-outside)",
            "+ route default via 192.0.2.1 dev up0 (netns t-host)",
        ]
    );
}

#[test]
fn moving_the_outside_namespace_deletes_the_pair_before_its_namespace() {
    let t = up_topo();
    let mut t2 = t.clone();
    t2.uplink.as_mut().unwrap().outside_netns = "t-world".into();
    let s = names(&plan(&t2, Some(&t), &applied()).unwrap());
    assert_eq!(
        s,
        vec![
            "- link up0 (netns t-host)",
            "- netns t-outside",
            "+ netns t-world",
            "+ veth up0 (netns t-host) <-> eth0 (netns t-world)",
            "+ address 192.0.2.2/24 dev up0 (netns t-host)",
            "+ address 192.0.2.1/24 dev eth0 (netns t-world)",
            "+ route default via 192.0.2.1 dev up0 (netns t-host)",
        ]
    );
    // A host namespace that moves takes the pair along: deleted before
    // the old namespace, made again in the new one.
    let mut t4 = t.clone();
    t4.host_netns = Some("t-host2".into());
    let s = names(&plan(&t4, Some(&t), &applied()).unwrap());
    assert_eq!(
        &s[..2],
        ["- link up0 (netns t-host)", "- netns t-host"],
        "{s:?}"
    );
    assert!(
        s.contains(&"+ veth up0 (netns t-host2) <-> eth0 (netns t-outside)".to_string()),
        "{s:?}"
    );
    // Dropping the uplink removes the pair and the outside namespace.
    let mut t3 = t.clone();
    t3.uplink = None;
    let s = names(&plan(&t3, Some(&t), &applied()).unwrap());
    assert_eq!(s, vec!["- link up0 (netns t-host)", "- netns t-outside"]);
}

#[test]
fn a_foreign_device_or_namespace_is_not_taken_over() {
    let t = up_topo();
    let e = plan(&t, None, &applied()).unwrap_err().to_string();
    assert!(e.contains("does not belong"), "{e}");
    let mut o = applied();
    o.namespaces.remove("t-host");
    o.views.remove(&Netns::named("t-host"));
    let e = plan(&t, None, &o).unwrap_err().to_string();
    assert!(e.contains("\"t-outside\" already exists"), "{e}");
}

#[test]
fn destroy_removes_the_uplink_before_the_namespaces() {
    let t = up_topo();
    let s = names(&plan_destroy(&t, &applied()));
    assert_eq!(
        s,
        vec![
            "- link up0 (netns t-host)",
            "- link br0 (netns t-host)",
            "- netns t-outside",
            "- netns t-host",
        ]
    );
}

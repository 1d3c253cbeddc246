//! NAT in the eBPF datapath against the real kernel: connections through
//! MASQUERADE, SNAT and DNAT work both ways, the far end sees the
//! translated addresses, colliding source ports are reallocated, and
//! checksums stay right (the receiving kernels drop anything else).

use std::path::PathBuf;

use netctl_tests::*;

fn topology(name: &str, rules: &str) -> String {
    format!(
        r#"
name = "{name}"
host_netns = "{name}-h"
ip_forward = true
rules = """
{rules}"""

[[bridge]]
name = "br-a"
addresses = ["10.73.0.1/24"]

[[bridge]]
name = "br-b"
addresses = ["10.74.0.1/24"]

[[container]]
name = "a"
bridge = "br-a"
addresses = ["10.73.0.2/24"]
gateway = "10.73.0.1"

[[container]]
name = "a2"
bridge = "br-a"
addresses = ["10.73.0.3/24"]
gateway = "10.73.0.1"

[[container]]
name = "b"
bridge = "br-b"
addresses = ["10.74.0.2/24"]
gateway = "10.74.0.1"
"#
    )
}

fn apply(name: &str, rules: &str) -> PathBuf {
    apply_text(name, &topology(name, rules))
}

/// Applies topology `text` (a variant of `topology`'s).
fn apply_text(name: &str, text: &str) -> PathBuf {
    let f = write_file(name, "t.toml", text);
    let o = netctl(&["apply", f.to_str().unwrap()]);
    assert!(o.status.success(), "apply: {}", stderr(&o));
    f
}

/// The namespaces of `topology`'s containers a, a2 and b.
fn containers(name: &str) -> (String, String, String) {
    (
        format!("{name}-a"),
        format!("{name}-a2"),
        format!("{name}-b"),
    )
}

/// A server in `ns` on `port` (tcp or udp) that answers each of `n`
/// clients with the address and port it saw them come from.
fn peer_server(ns: &str, proto: &str, port: u16, n: usize) -> std::process::Child {
    let script = if proto == "tcp" {
        format!(
            "import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
             s.bind(('0.0.0.0',{port}));s.listen(8);s.settimeout(10);print('ready',flush=True)\n\
             for _ in range({n}):\n  c,a=s.accept();c.recv(100);c.sendall(f'{{a[0]}}:{{a[1]}}'.encode());c.close()"
        )
    } else {
        format!(
            "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
             s.bind(('0.0.0.0',{port}));s.settimeout(10);print('ready',flush=True)\n\
             for _ in range({n}):\n  d,a=s.recvfrom(100);s.sendto(f'{{a[0]}}:{{a[1]}}'.encode(),a)"
        )
    };
    spawn_ready(ns, &script).0
}

/// What the server at `addr:port` says the client in `ns` came from;
/// `sport` binds the client's source port, `nocheck` sends UDP without a
/// checksum (a zero checksum field).
fn ask(ns: &str, proto: &str, addr: &str, port: u16, sport: u16, nocheck: bool) -> String {
    let script = if proto == "tcp" {
        format!(
            "import socket\nc=socket.socket();c.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
             c.bind(('0.0.0.0',{sport}));c.settimeout(5)\n\
             try:\n  c.connect(('{addr}',{port}));c.sendall(b'hi');print(c.recv(100).decode())\n\
             except OSError as e:\n  print('error',e)"
        )
    } else {
        let nocheck = if nocheck {
            "c.setsockopt(socket.SOL_SOCKET,11,1)\n"
        } else {
            ""
        };
        format!(
            "import socket\nc=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n{nocheck}\
             c.bind(('0.0.0.0',{sport}));c.settimeout(5)\n\
             try:\n  c.sendto(b'hi',('{addr}',{port}));d,a=c.recvfrom(100);print(d.decode(),a[0],a[1])\n\
             except OSError as e:\n  print('error',e)"
        )
    };
    stdout(&in_ns(ns, &["python3", "-c", &script]))
        .trim()
        .to_string()
}

/// `netctl conntrack list` of topology `name`.
fn conntrack_list(name: &str) -> String {
    stdout(&netctl(&["conntrack", "list", "--topology", name]))
}

/// Asserts that one line of `netctl conntrack list` holds all of `parts`.
fn assert_listed(name: &str, parts: &[&str]) {
    let list = conntrack_list(name);
    assert!(
        list.lines().any(|l| parts.iter().all(|p| l.contains(p))),
        "no connection with {parts:?}:\n{list}"
    );
}

fn finish(mut child: std::process::Child) {
    let _ = child.kill();
    let _ = child.wait();
}

const MASQ: &str = "*nat\n\
:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
-A POSTROUTING -s 10.73.0.0/24 -o br-b -j MASQUERADE\n\
COMMIT\n";

#[test]
fn masquerade_between_bridges_translates_both_ways() {
    let name = unique("nmq");
    let _g = Cleanup::new(&name);
    let before = footprint(&name);
    apply(&name, MASQ);
    let (a, b) = (format!("{name}-a"), format!("{name}-b"));

    // TCP: the server sees the bridge's address, the client its answer.
    let s = peer_server(&b, "tcp", 8080, 1);
    let seen = ask(&a, "tcp", "10.74.0.2", 8080, 41000, false);
    finish(s);
    assert_eq!(seen, "10.74.0.1:41000", "TCP through MASQUERADE");

    // UDP, with and without a checksum: the answer comes from the server's
    // own address and port, back to the client's.
    let s = peer_server(&b, "udp", 5353, 2);
    let seen = ask(&a, "udp", "10.74.0.2", 5353, 41001, false);
    assert_eq!(seen, "10.74.0.1:41001 10.74.0.2 5353", "UDP");
    let seen = ask(&a, "udp", "10.74.0.2", 5353, 41002, true);
    finish(s);
    assert_eq!(
        seen, "10.74.0.1:41002 10.74.0.2 5353",
        "UDP without checksum"
    );

    // ICMP echo through MASQUERADE.
    assert!(ping(&a, "10.74.0.2"), "ping through MASQUERADE");

    // An ICMP error about a translated flow reaches the client's socket:
    // the port-unreachable quotes the masqueraded datagram and must be
    // turned back into one about the client's own.
    let refused = "import socket\nc=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);c.settimeout(3)\n\
         c.connect(('10.74.0.2',5999));c.send(b'x')\n\
         try:\n  c.recv(10);print('answer')\nexcept ConnectionRefusedError:\n  print('refused')\n\
         except OSError as e:\n  print('error',e)";
    let o = in_ns(&a, &["python3", "-c", refused]);
    assert_eq!(
        stdout(&o).trim(),
        "refused",
        "ICMP error through MASQUERADE"
    );

    // The traffic was the datapath's: redirected, counted by the rule.
    let o = netctl(&["rules", "--topology", &name, "save", "-c", "-t", "nat"]);
    let saved = stdout(&o);
    let line = saved
        .lines()
        .find(|l| l.ends_with("-j MASQUERADE"))
        .unwrap_or_else(|| panic!("{saved}"));
    assert!(
        line.starts_with("[5:"),
        "one first packet per connection and ping: {line}"
    );
    drop(_g);
    assert_eq!(footprint(&name), before);
}

#[test]
fn snat_to_a_range_picks_the_kernels_address_per_client() {
    let name = unique("nrg");
    let _g = Cleanup::new(&name);
    let before = footprint(&name);
    // Four addresses of the host on br-b, so that answers to any of them
    // come back; the kernel spreads clients over them by a hash of the
    // client and destination addresses (`nat_range_pick`, checked against
    // the kernel in netctl-common's tests).
    let text = topology(
        &name,
        "*nat\n-A POSTROUTING -o br-b -j SNAT --to-source 10.74.0.1-10.74.0.4\nCOMMIT\n",
    )
    .replace(
        r#"addresses = ["10.74.0.1/24"]"#,
        r#"addresses = ["10.74.0.1/24", "10.74.0.2/24", "10.74.0.3/24", "10.74.0.4/24"]"#,
    )
    .replace("10.74.0.2/24\"]\ngateway", "10.74.0.9/24\"]\ngateway");
    apply_text(&name, &text);
    let (a, a2, b) = containers(&name);
    let s = peer_server(&b, "tcp", 8080, 2);
    let one = ask(&a, "tcp", "10.74.0.9", 8080, 47000, false);
    let two = ask(&a2, "tcp", "10.74.0.9", 8080, 47001, false);
    finish(s);
    let pick = |src: [u8; 4]| {
        let [w, x, y, z] =
            netctl_common::nat_range_pick(src, [10, 74, 0, 9], [10, 74, 0, 1], [10, 74, 0, 4]);
        format!("{w}.{x}.{y}.{z}")
    };
    assert_eq!(one, format!("{}:47000", pick([10, 73, 0, 2])), "from a");
    assert_eq!(two, format!("{}:47001", pick([10, 73, 0, 3])), "from a2");
    drop(_g);
    assert_eq!(footprint(&name), before);
}

#[test]
fn two_containers_with_the_same_source_port_get_two_translations() {
    let name = unique("npt");
    let _g = Cleanup::new(&name);
    apply(&name, MASQ);
    let (a, a2, b) = containers(&name);
    let s = peer_server(&b, "tcp", 8080, 3);
    let one = ask(&a, "tcp", "10.74.0.2", 8080, 42000, false);
    let two = ask(&a2, "tcp", "10.74.0.2", 8080, 42000, false);
    // a's connection is in TIME_WAIT (the server closed first); a new one
    // from the same port reopens it and, as in the kernel, keeps the port:
    // the old binding's reply tuple is its own, not another's.
    let again = ask(&a, "tcp", "10.74.0.2", 8080, 42000, false);
    finish(s);
    assert_eq!(
        again, "10.74.0.1:42000",
        "a reopened connection keeps its port"
    );
    assert_eq!(one, "10.74.0.1:42000", "the first keeps its port");
    let (addr, port) = two.split_once(':').unwrap_or_else(|| panic!("{two}"));
    assert_eq!(addr, "10.74.0.1");
    let port: u16 = port.parse().unwrap();
    assert_ne!(port, 42000, "the second gets another port");
    assert!(port >= 1024, "from the same class of ports: {port}");
}

#[test]
fn a_source_keeps_its_translation_across_destinations() {
    let name = unique("nsm");
    let _g = Cleanup::new(&name);
    let before = footprint(&name);
    apply(&name, MASQ);
    let (a, a2, b) = containers(&name);
    let one = peer_server(&b, "udp", 7001, 2);
    let two = peer_server(&b, "udp", 7002, 2);
    // What b saw each datagram come from.
    let seen = |ns: &str, port: u16| {
        let got = ask(ns, "udp", "10.74.0.2", port, 5000, false);
        got.split(' ').next().unwrap_or_default().to_string()
    };
    let a_first = seen(&a, 7001);
    let a2_first = seen(&a2, 7001);
    // a2's port 5000 already stands for 10.74.0.1:R; to another
    // destination the kernel maps it the same way (`find_appropriate_src`),
    // though 10.74.0.1:5000 would be free there: what a peer-to-peer
    // protocol (STUN, SIP, WireGuard) relies on.
    let a2_second = seen(&a2, 7002);
    let a_second = seen(&a, 7002);
    finish(one);
    finish(two);
    assert_eq!(a_first, "10.74.0.1:5000", "a keeps its port");
    assert!(a2_first.starts_with("10.74.0.1:"), "{a2_first}");
    assert_ne!(a2_first, "10.74.0.1:5000", "a2's port is remapped");
    assert_eq!(a2_second, a2_first, "a2 keeps its mapping to b:7002");
    assert_eq!(a_second, "10.74.0.1:5000", "and so does a");

    // The operator's view: a2's source and its two connections, newest
    // first.
    let dump = stdout(&netctl(&["maps", "dump", "nat_src", "-t", &name]));
    let line = dump
        .lines()
        .find(|l| l.contains("10.73.0.3:5000"))
        .unwrap_or_else(|| panic!("{dump}"));
    let at = |p: &str| line.find(&format!("10.74.0.2:{p}")).unwrap_or(usize::MAX);
    assert!(at("7002") < at("7001") && at("7001") < usize::MAX, "{dump}");
    drop(_g);
    assert_eq!(footprint(&name), before);
}

#[test]
fn dnat_to_a_port_range_takes_the_first_free_port() {
    let name = unique("ndr");
    let _g = Cleanup::new(&name);
    let before = footprint(&name);
    // Two service addresses, both DNAT'd to b's ports 7001-7002.
    apply(
        &name,
        "*nat\n\
         -A PREROUTING -d 10.74.0.100 -p udp -j DNAT --to-destination 10.74.0.2:7001-7002\n\
         -A PREROUTING -d 10.74.0.101 -p udp -j DNAT --to-destination 10.74.0.2:7001-7002\n\
         COMMIT\n",
    );
    let (a, _, b) = containers(&name);
    let server = "import socket,select\nss=[]\n\
         for p in (7001,7002):\n  s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(('0.0.0.0',p));ss.append(s)\n\
         print('ready',flush=True)\n\
         for _ in range(2):\n  r,_,_=select.select(ss,[],[],10)\n  s=r[0];d,x=s.recvfrom(100)\n\
         \x20 s.sendto(f'{s.getsockname()[1]} {x[0]}:{x[1]}'.encode(),x)";
    let (child, _) = spawn_ready(&b, server);
    // The same client port to both: the second's tuple to 7001 is the
    // first's, so the kernel searches the range from its first port on
    // and takes 7002, keeping the client's port.
    let first = ask(&a, "udp", "10.74.0.100", 80, 5000, false);
    let second = ask(&a, "udp", "10.74.0.101", 80, 5000, false);
    finish(child);
    assert_eq!(first, "7001 10.73.0.2:5000 10.74.0.100 80");
    assert_eq!(second, "7002 10.73.0.2:5000 10.74.0.101 80");
    drop(_g);
    assert_eq!(footprint(&name), before);
}

#[test]
fn a_tuple_is_taken_only_in_its_own_direction() {
    let name = unique("ndi");
    let _g = Cleanup::new(&name);
    let before = footprint(&name);
    apply(
        &name,
        "*nat\n\
         -A PREROUTING -s 10.73.0.0/24 -p udp -j REDIRECT\n\
         -A POSTROUTING -o br-a -p udp -j MASQUERADE\n\
         COMMIT\n",
    );
    let (a, _, b) = containers(&name);
    // a's datagram to 192.0.2.1:53 is redirected to the host: its reply
    // tuple is 10.73.0.1:53 -> 10.73.0.2:25763. Then b writes to a from
    // port 53, masqueraded out of br-a to 10.73.0.1:53: the same tuple in
    // the same direction. The kernel's tuples are directional: the new
    // connection's reply tuple (that turned around) is nobody's, so its
    // port stays 53.
    let client = "import socket\nc=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         c.bind(('0.0.0.0',25763));c.settimeout(5)\n\
         c.sendto(b'q',('192.0.2.1',53));print('ready',flush=True)\n\
         try:\n  d,x=c.recvfrom(100);print(x[0],x[1],flush=True)\n\
         except OSError as e:\n  print('error',e,flush=True)";
    let (mut child, mut out) = spawn_ready(&a, client);
    let send = "import socket\nc=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         c.bind(('0.0.0.0',53));c.sendto(b'hi',('10.73.0.2',25763))";
    let o = in_ns(&b, &["python3", "-c", send]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut seen = String::new();
    std::io::Read::read_to_string(&mut out, &mut seen).unwrap();
    let _ = child.wait();
    assert_eq!(seen.trim(), "10.73.0.1 53");
    drop(_g);
    assert_eq!(footprint(&name), before);
}

#[test]
fn dnat_publishes_a_container_on_the_host_address_with_hairpin() {
    let name = unique("ndn");
    let _g = Cleanup::new(&name);
    let before = footprint(&name);
    let rules = "*nat\n\
:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
-A PREROUTING -d 10.74.0.1/32 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.73.0.3:80\n\
-A PREROUTING -d 10.73.0.1/32 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 10.73.0.3:80\n\
-A POSTROUTING -s 10.73.0.0/24 -d 10.73.0.3/32 -p tcp -m tcp --dport 80 -j MASQUERADE\n\
COMMIT\n";
    // a2's port in hairpin mode (Docker's): the kernel bridges a frame back
    // out of the port it came in by only then, DNAT'd or not.
    let text = topology(&name, rules).replace(
        "addresses = [\"10.73.0.3/24\"]",
        "addresses = [\"10.73.0.3/24\"]\nhairpin = true",
    );
    apply_text(&name, &text);
    let (a, a2, b) = containers(&name);
    // From another bridge: the published port leads to a2, which sees
    // the client's own address.
    let s = peer_server(&a2, "tcp", 80, 3);
    let from_b = ask(&b, "tcp", "10.74.0.1", 8080, 43000, false);
    // Hairpin: a neighbour on a2's bridge, through the bridge's address,
    // and a2 through it to itself; both masqueraded, as Docker does.
    let from_a = ask(&a, "tcp", "10.73.0.1", 8080, 43001, false);
    let from_self = ask(&a2, "tcp", "10.73.0.1", 8080, 43002, false);
    finish(s);
    assert_eq!(from_b, "10.74.0.2:43000", "published port from br-b");
    assert_eq!(from_a, "10.73.0.1:43001", "hairpin from a neighbour");
    assert_eq!(from_self, "10.73.0.1:43002", "hairpin to itself");
    drop(_g);
    assert_eq!(footprint(&name), before);
}

fn docker(name: &str) -> String {
    format!(
        r#"
name = "{name}"
host_netns = "{name}-h"
ip_forward = true
docker_rules = true

[uplink]
name = "up0"
address = "192.0.2.2/24"
outside_netns = "{name}-out"
outside_address = "192.0.2.1/24"

[[bridge]]
name = "docker0"
addresses = ["172.17.0.1/16"]

[[container]]
name = "c1"
bridge = "docker0"
addresses = ["172.17.0.2/16"]
publish = ["8080:80/tcp", "5353:53/udp"]

[[container]]
name = "c2"
bridge = "docker0"
addresses = ["172.17.0.3/16"]
"#
    )
}

#[test]
fn docker_defaults_masquerade_outbound_and_publish_ports_through_the_uplink() {
    let name = unique("ndk");
    let _g = Cleanup::new(&name);
    let before = footprint(&name);
    apply_text(&name, &docker(&name));
    let (c1, c2, out) = (
        format!("{name}-c1"),
        format!("{name}-c2"),
        format!("{name}-out"),
    );

    // Outbound: the outside world has no route to 172.17/16, so answers
    // come back only because the uplink's address stood in.
    assert!(ping(&c1, "192.0.2.1"), "ping out through MASQUERADE");
    let s = peer_server(&out, "tcp", 7000, 1);
    let seen = ask(&c2, "tcp", "192.0.2.1", 7000, 44000, false);
    finish(s);
    assert_eq!(seen, "192.0.2.2:44000", "TCP out");
    let s = peer_server(&out, "udp", 7001, 1);
    let seen = ask(&c2, "udp", "192.0.2.1", 7001, 44001, false);
    finish(s);
    assert_eq!(seen, "192.0.2.2:44001 192.0.2.1 7001", "UDP out");

    // Published ports, from outside: the container sees the client.
    let s = peer_server(&c1, "tcp", 80, 3);
    let from_out = ask(&out, "tcp", "192.0.2.2", 8080, 45000, false);
    // Hairpin: a neighbour through the uplink's address keeps its own
    // source (bridged replies are translated back); the container itself
    // is masqueraded (Docker's per-port hairpin rule).
    let from_c2 = ask(&c2, "tcp", "192.0.2.2", 8080, 45001, false);
    let from_c1 = ask(&c1, "tcp", "192.0.2.2", 8080, 45002, false);
    finish(s);
    assert_eq!(
        from_out, "192.0.2.1:45000",
        "published TCP port from outside"
    );
    assert_eq!(from_c2, "172.17.0.3:45001", "hairpin from a neighbour");
    assert_eq!(from_c1, "172.17.0.1:45002", "hairpin to itself");
    let s = peer_server(&c1, "udp", 53, 1);
    let seen = ask(&out, "udp", "192.0.2.2", 5353, 45003, false);
    finish(s);
    assert_eq!(seen, "192.0.2.1:45003 192.0.2.2 5353", "published UDP port");

    // The translations are in conntrack, as the operator sees them.
    assert_listed(&name, &["sport=44000", "dst=192.0.2.2", "nat=snat"]);
    assert_listed(&name, &["dport=8080", "src=172.17.0.2", "nat=dnat"]);
    drop(_g);
    assert_eq!(footprint(&name), before);
}

#[test]
fn the_host_reaches_its_own_published_ports() {
    let name = unique("nho");
    let _g = Cleanup::new(&name);
    let before = footprint(&name);
    apply_text(&name, &docker(&name));
    let (host, c1) = (format!("{name}-h"), format!("{name}-c1"));

    // nat OUTPUT (`-d HOSTADDR -j DOCKER`) sends the host's connections to
    // its own addresses into the container; Docker's "MASQ LOCAL HOST"
    // rule gives them the bridge's address there. The kernel would drop
    // the un-translated replies as martians without netctl's lo program
    // and the bridge's accept_local: the answers prove both.
    let s = peer_server(&c1, "tcp", 80, 2);
    let via_uplink = ask(&host, "tcp", "192.0.2.2", 8080, 46000, false);
    let via_bridge = ask(&host, "tcp", "172.17.0.1", 8080, 46001, false);
    finish(s);
    assert_eq!(
        via_uplink, "172.17.0.1:46000",
        "TCP to the uplink's address"
    );
    assert_eq!(
        via_bridge, "172.17.0.1:46001",
        "TCP to the bridge's address"
    );
    let s = peer_server(&c1, "udp", 53, 1);
    let seen = ask(&host, "udp", "192.0.2.2", 5353, 46002, false);
    finish(s);
    assert_eq!(
        seen, "172.17.0.1:46002 192.0.2.2 5353",
        "UDP to the uplink's address"
    );
    assert_listed(&name, &["sport=46000", "dport=8080", "src=172.17.0.2"]);

    // The host's other traffic with itself is left as it is.
    let s = peer_server(&host, "tcp", 9000, 1);
    let seen = ask(&host, "tcp", "192.0.2.2", 9000, 46003, false);
    finish(s);
    assert_eq!(seen, "192.0.2.2:46003", "unpublished port on the host");

    // Detaching takes the lo program off and accept_local back.
    let o = netctl(&["datapath", "detach", &name]);
    assert!(o.status.success(), "detach: {}", stderr(&o));
    let filters = stdout(&in_ns(
        &host,
        &["tc", "filter", "show", "dev", "lo", "ingress"],
    ));
    assert!(filters.trim().is_empty(), "lo filters left: {filters}");
    let o = in_ns(
        &host,
        &["cat", "/proc/sys/net/ipv4/conf/docker0/accept_local"],
    );
    assert_eq!(stdout(&o).trim(), "0");
    drop(_g);
    assert_eq!(footprint(&name), before);
}

#[test]
fn a_translated_connections_reversed_tuple_is_a_connection_of_its_own() {
    let name = unique("nrv");
    let _g = Cleanup::new(&name);
    let before = footprint(&name);
    apply(&name, MASQ);
    let (a, _, b) = containers(&name);
    // b learns where a's masqueraded datagram came from, then writes to
    // a's own address from the port a wrote to: the first connection's
    // original tuple turned around, which is not its reply tuple (that
    // goes to the bridge's address). The kernel makes it a connection of
    // its own and, its reply tuple being the first one's original, remaps
    // its source port; a's answer to that port reaches b's socket.
    let server = "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         s.bind(('0.0.0.0',6000));s.settimeout(5);print('ready',flush=True)\n\
         try:\n  d,x=s.recvfrom(100);print(x[0],x[1],flush=True)\n\
         \x20 s.sendto(b'rev',('10.73.0.2',43000));d,y=s.recvfrom(100);print(y[0],y[1],flush=True)\n\
         except OSError as e:\n  print('error',e,flush=True)";
    let (mut child, mut out) = spawn_ready(&b, server);
    let client = "import socket\nc=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         c.bind(('0.0.0.0',43000));c.settimeout(5)\n\
         try:\n  c.sendto(b'hi',('10.74.0.2',6000));d,x=c.recvfrom(100);print(x[0],x[1]);c.sendto(b'back',x)\n\
         except OSError as e:\n  print('error',e)";
    let seen_by_a = stdout(&in_ns(&a, &["python3", "-c", client]));
    let mut seen_by_b = String::new();
    std::io::Read::read_to_string(&mut out, &mut seen_by_b).unwrap();
    let _ = child.wait();
    let b_lines: Vec<&str> = seen_by_b.lines().collect();
    assert_eq!(
        b_lines,
        ["10.74.0.1 43000", "10.73.0.2 43000"],
        "b's view (a's datagram masqueraded; a's answer to b's second connection)"
    );
    let (addr, port) = seen_by_a
        .trim()
        .split_once(' ')
        .unwrap_or_else(|| panic!("{seen_by_a}"));
    assert_eq!(addr, "10.74.0.2");
    let port: u16 = port.parse().unwrap();
    assert_ne!(port, 6000, "the reversed tuple's source port is remapped");
    assert!(port >= 1024, "from the same class of ports: {port}");

    // Two connections, the second with its source translated.
    let second = format!("dport={port}");
    assert_listed(&name, &["src=10.74.0.2", "sport=6000", &second, "nat=snat"]);
    drop(_g);
    assert_eq!(footprint(&name), before);
}

#[test]
fn a_packet_the_kernel_drops_after_prerouting_confirms_no_connection() {
    let name = unique("nun");
    let _g = Cleanup::new(&name);
    let before = footprint(&name);
    let rules = "*nat\n\
:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
-A PREROUTING -d 10.73.0.1/32 -p udp -m udp --dport 7000 -j DNAT --to-destination 10.74.0.2:7000\n\
COMMIT\n";
    apply(&name, rules);
    let (a, _, _) = containers(&name);
    // TTL 1: DNAT'd towards b, the datagram expires at the host. Its
    // connection is never confirmed, so the next datagram walks nat
    // again; the time-exceeded error is still tied to it (the kernel
    // attaches the dropped packet's connection to it), turned back into
    // one about a's own datagram, and reaches a's connected socket.
    // (11 is IP_RECVERR, which Python does not name.)
    let client = "import socket\nc=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         c.setsockopt(socket.IPPROTO_IP,11,1);c.setsockopt(socket.IPPROTO_IP,socket.IP_TTL,1)\n\
         c.bind(('0.0.0.0',44000));c.connect(('10.73.0.1',7000));c.settimeout(3)\n\
         for _ in range(2):\n  c.send(b'x')\n  try:\n    c.recv(10);print('answer')\n  except OSError as e:\n    print('error',e.errno)";
    let seen = stdout(&in_ns(&a, &["python3", "-c", client]));
    assert_eq!(
        seen.lines().collect::<Vec<_>>(),
        ["error 113", "error 113"],
        "time exceeded (EHOSTUNREACH) for both datagrams"
    );
    let dnat_count = || {
        let o = netctl(&["rules", "--topology", &name, "save", "-c", "-t", "nat"]);
        let saved = stdout(&o);
        saved
            .lines()
            .find(|l| l.contains("-j DNAT"))
            .and_then(|l| l.strip_prefix('['))
            .and_then(|l| l.split(':').next())
            .map(|n| n.parse::<u64>().unwrap())
            .unwrap_or_else(|| panic!("{saved}"))
    };
    assert_eq!(dnat_count(), 2, "each unconfirmed datagram walked nat");
    let list = conntrack_list(&name);
    assert!(!list.contains("dport=7000"), "{list}");

    // With a TTL to spare, the datagram reaches b and its connection is
    // confirmed, translated.
    let client = "import socket\nc=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         c.bind(('0.0.0.0',44000));c.sendto(b'x',('10.73.0.1',7000))";
    in_ns(&a, &["python3", "-c", client]);
    assert_eq!(dnat_count(), 3);
    assert_listed(&name, &["sport=44000", "dport=7000", "nat=dnat"]);
    drop(_g);
    assert_eq!(footprint(&name), before);
}

#[test]
fn snat_in_input_shows_local_sockets_the_translated_source() {
    let name = unique("nsi");
    let _g = Cleanup::new(&name);
    let before = footprint(&name);
    let rules = "*nat\n\
:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
-A INPUT -s 10.73.0.2/32 -p tcp -m tcp --dport 9000 -j SNAT --to-source 10.74.0.2\n\
-A INPUT -s 10.73.0.3/32 -p tcp -m tcp --dport 9000 -j SNAT --to-source 10.74.0.1\n\
COMMIT\n";
    apply(&name, rules);
    let (a, a2, _) = containers(&name);
    let host = format!("{name}-h");
    // The host's server sees the translated sources. Its answers go to
    // them — b's address, out of b's port; one of the host's own, over
    // lo — and reach the clients only if nat OUTPUT turns them back and
    // they are routed again.
    let s = peer_server(&host, "tcp", 9000, 2);
    let from_a = ask(&a, "tcp", "10.73.0.1", 9000, 43100, false);
    let from_a2 = ask(&a2, "tcp", "10.73.0.1", 9000, 43101, false);
    finish(s);
    assert_eq!(from_a, "10.74.0.2:43100", "SNAT to a container's address");
    assert_eq!(from_a2, "10.74.0.1:43101", "SNAT to a host address");
    assert_listed(
        &name,
        &["src=10.73.0.2", "sport=43100", "dst=10.74.0.2", "nat=snat"],
    );
    drop(_g);
    assert_eq!(footprint(&name), before);
}

#[test]
fn the_hosts_connections_are_translated_in_nat_output() {
    let name = unique("nou");
    let _g = Cleanup::new(&name);
    let before = footprint(&name);
    apply_text(&name, &docker(&name));
    let (host, c1) = (format!("{name}-h"), format!("{name}-c1"));
    // A service address beyond the uplink (the host's default route),
    // translated by nat OUTPUT to c1, and one redirected to the host
    // itself. Without the translation nothing would answer: the outside
    // namespace has no such address.
    for rule in [
        "-d 198.51.100.10/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 172.17.0.2:80",
        "-d 198.51.100.11/32 -p tcp -m tcp --dport 80 -j REDIRECT --to-ports 9001",
    ] {
        let mut args = vec!["rules", "--topology", &name, "-t", "nat", "-A", "OUTPUT"];
        args.extend(rule.split(' '));
        let o = netctl(&args);
        assert!(o.status.success(), "{rule}: {}", stderr(&o));
    }
    let s = peer_server(&c1, "tcp", 80, 1);
    let local = peer_server(&host, "tcp", 9001, 1);
    // Rerouted into docker0, where Docker's rule for the host's own
    // sources masquerades it, as the kernel's would.
    let to_c1 = ask(&host, "tcp", "198.51.100.10", 80, 47000, false);
    let to_self = ask(&host, "tcp", "198.51.100.11", 80, 47001, false);
    finish(s);
    finish(local);
    assert_eq!(to_c1, "172.17.0.1:47000", "DNAT in nat OUTPUT");
    assert_eq!(to_self, "192.0.2.2:47001", "REDIRECT in nat OUTPUT");
    assert_listed(
        &name,
        &["dst=198.51.100.10", "sport=47000", "nat=snat+dnat"],
    );
    drop(_g);
    assert_eq!(footprint(&name), before);
}

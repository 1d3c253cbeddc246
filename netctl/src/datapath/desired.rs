//! Kernel views + topology → what the datapath maps must hold. Pure: the
//! loader only writes what this computes.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use netctl_common::{NeighEntry, PORT_F_HAIRPIN, PORT_F_UPLINK, PortInfo, RouteValue, route_kind};

use crate::observe::NsView;
use crate::state::{RT_TABLE_LOCAL, RT_TABLE_MAIN, RouteKind};
use crate::topology::Topology;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub ifname: String,
    pub ifindex: u32,
    pub info: PortInfo,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Desired {
    pub ports: Vec<Port>,
    /// Prefix → route; local addresses appear as `LOCAL` entries.
    pub routes: BTreeMap<Ipv4Net, RouteValue>,
    pub neigh: BTreeMap<Ipv4Addr, NeighEntry>,
    pub forward: bool,
    /// Every interface's first IPv4 address (MASQUERADE, REDIRECT).
    pub ifaddrs: BTreeMap<u32, [u8; 4]>,
    /// The topology's bridges present in the host namespace, by name.
    pub bridges: Vec<String>,
    /// Conntrack timeouts, seconds per `ct_timeout` class.
    pub ct_timeouts: super::conntrack::Timeouts,
    /// How the programs attach to the ports.
    pub attach: crate::topology::Attach,
}

/// A bridge's ageing time (centiseconds in the kernel) in nanoseconds.
fn ageing_ns(bridge: &crate::state::Link) -> u64 {
    u64::from(bridge.ageing_time_cs.unwrap_or(30000)) * 10_000_000
}

/// The first IPv4 address on interface `index`, network order (0: none).
fn first_ipv4(host: &NsView, index: u32) -> [u8; 4] {
    host.addrs
        .iter()
        .find_map(|a| match a.net {
            IpNet::V4(n) if a.index == index => Some(n.addr().octets()),
            _ => None,
        })
        .unwrap_or_default()
}

/// `host` is the view of the topology's host namespace, read after apply.
/// Container MACs come from the topology (every container has one), so the
/// container namespaces need not be read.
pub fn compute(t: &Topology, host: &NsView) -> Desired {
    let mut d = Desired {
        forward: host.ip_forward,
        ct_timeouts: super::conntrack::Timeouts::with(&t.conntrack),
        attach: t.attach,
        ..Default::default()
    };
    for l in &host.links {
        let a = first_ipv4(host, l.index);
        if a != [0; 4] {
            d.ifaddrs.insert(l.index, a);
        }
    }
    let bridges: BTreeMap<u32, &crate::state::Link> = t
        .bridges
        .iter()
        .filter_map(|b| host.link(&b.name))
        .map(|l| (l.index, l))
        .collect();
    d.bridges = bridges.values().map(|l| l.name.clone()).collect();
    for c in &t.containers {
        let (Some(port), Some(br)) = (host.link(&c.host_ifname), host.link(&c.bridge)) else {
            continue;
        };
        d.ports.push(Port {
            ifname: port.name.clone(),
            ifindex: port.index,
            info: PortInfo {
                bridge: br.index,
                flags: if port.hairpin == Some(true) {
                    PORT_F_HAIRPIN
                } else {
                    0
                },
                bridge_mac: br.mac.map(|m| m.0).unwrap_or_default(),
                // Assigned when the maps are written (it depends on them).
                slot: 0,
                ageing_ns: ageing_ns(br),
                bridge_ip: first_ipv4(host, br.index),
                ifindex: port.index,
            },
        });
        let mac = c.mac;
        for a in &c.addresses {
            if let IpAddr::V4(ip) = a.addr() {
                d.neigh.insert(
                    ip,
                    NeighEntry {
                        mac: mac.0,
                        _pad: [0; 2],
                        bridge: br.index,
                    },
                );
            }
        }
    }
    // The uplink is a port of its own kind: its own "bridge", MAC and
    // address; nothing is learned or bridged there (see PORT_F_UPLINK).
    if let Some(l) = t.uplink.as_ref().and_then(|u| host.link(&u.name)) {
        d.ports.push(Port {
            ifname: l.name.clone(),
            ifindex: l.index,
            info: PortInfo {
                bridge: l.index,
                flags: PORT_F_UPLINK,
                bridge_mac: l.mac.map(|m| m.0).unwrap_or_default(),
                slot: 0,
                ageing_ns: 0,
                bridge_ip: first_ipv4(host, l.index),
                ifindex: l.index,
            },
        });
    }
    for r in &host.routes {
        let IpNet::V4(dst) = r.dst else { continue };
        let value = match (r.table, r.kind) {
            (RT_TABLE_LOCAL, RouteKind::Local | RouteKind::Broadcast) => RouteValue {
                kind: route_kind::LOCAL,
                ..Default::default()
            },
            (RT_TABLE_MAIN, RouteKind::Unicast) => match r.oif.and_then(|o| bridges.get(&o)) {
                Some(br) => {
                    let (kind, gateway) = match r.gateway {
                        Some(IpAddr::V4(gw)) => (route_kind::GATEWAY, gw.octets()),
                        Some(IpAddr::V6(_)) => continue,
                        None => (route_kind::CONNECTED, [0; 4]),
                    };
                    RouteValue {
                        kind,
                        bridge: br.index,
                        gateway,
                        bridge_mac: br.mac.map(|m| m.0).unwrap_or_default(),
                        ageing_ns: ageing_ns(br),
                        ..Default::default()
                    }
                }
                None => RouteValue {
                    kind: route_kind::KERNEL,
                    bridge: r.oif.unwrap_or(0),
                    // What NAT'd packets the datapath sends itself go to.
                    gateway: match r.gateway {
                        Some(IpAddr::V4(gw)) => gw.octets(),
                        _ => [0; 4],
                    },
                    ..Default::default()
                },
            },
            (RT_TABLE_MAIN, _) => RouteValue {
                kind: route_kind::KERNEL,
                ..Default::default()
            },
            _ => continue,
        };
        // A local address wins over a main-table route to the same prefix,
        // as the local table is looked up first.
        match d.routes.get(&dst) {
            Some(v) if v.kind == route_kind::LOCAL => {}
            _ => {
                d.routes.insert(dst, value);
            }
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Link, Route};

    fn link(index: u32, name: &str, kind: &str) -> Link {
        let mut l = Link::fixture(index, name, Some(kind));
        l.mac = Some(crate::mac::Mac([2, 0, 0, 0, 0, index as u8]));
        l.ageing_time_cs = Some(30000);
        l.hairpin = Some(false);
        l
    }

    fn route(table: u32, kind: RouteKind, dst: &str, gw: Option<&str>, oif: u32) -> Route {
        Route::fixture(table, kind, dst, gw, oif)
    }

    #[test]
    fn mirrors_ports_routes_and_neighbours() {
        let t = crate::topology::parse(
            r#"
name = "d"
host_netns = "d-h"
[[bridge]]
name = "br0"
addresses = ["10.1.0.1/24"]
[[bridge]]
name = "br1"
addresses = ["10.2.0.1/24"]
[[container]]
name = "a"
bridge = "br0"
addresses = ["10.1.0.2/24"]
hairpin = true
[[container]]
name = "b"
bridge = "br1"
addresses = ["10.2.0.2/24", "fd00::2/64"]
"#,
            "d",
        )
        .unwrap();
        let mut pa = link(4, &t.containers[0].host_ifname, "veth");
        pa.hairpin = Some(true);
        let pb = link(5, &t.containers[1].host_ifname, "veth");
        let host = NsView {
            links: vec![
                link(2, "br0", "bridge"),
                link(3, "br1", "bridge"),
                pa,
                pb,
                link(6, "eth9", "veth"),
            ],
            addrs: vec![],
            routes: vec![
                route(RT_TABLE_MAIN, RouteKind::Unicast, "10.1.0.0/24", None, 2),
                route(RT_TABLE_MAIN, RouteKind::Unicast, "10.2.0.0/24", None, 3),
                route(
                    RT_TABLE_MAIN,
                    RouteKind::Unicast,
                    "10.9.0.0/16",
                    Some("10.2.0.2"),
                    3,
                ),
                route(
                    RT_TABLE_MAIN,
                    RouteKind::Unicast,
                    "0.0.0.0/0",
                    Some("192.0.2.1"),
                    6,
                ),
                route(RT_TABLE_MAIN, RouteKind::Blackhole, "10.66.0.0/16", None, 0),
                route(RT_TABLE_LOCAL, RouteKind::Local, "10.1.0.1/32", None, 2),
                route(
                    RT_TABLE_LOCAL,
                    RouteKind::Broadcast,
                    "10.1.0.255/32",
                    None,
                    2,
                ),
                route(RT_TABLE_MAIN, RouteKind::Unicast, "fd00::/64", None, 3),
            ],
            ip_forward: true,
        };
        let d = compute(&t, &host);
        assert!(d.forward);
        assert_eq!(d.ports.len(), 2);
        assert_eq!(d.ports[0].ifindex, 4);
        assert_eq!(d.ports[0].info.bridge, 2);
        assert_eq!(d.ports[0].info.flags, PORT_F_HAIRPIN);
        assert_eq!(d.ports[0].info.bridge_mac, [2, 0, 0, 0, 0, 2]);
        assert_eq!(d.ports[0].info.ageing_ns, 300_000_000_000);
        let r = |p: &str| d.routes[&p.parse::<Ipv4Net>().unwrap()];
        assert_eq!(r("10.1.0.0/24").kind, route_kind::CONNECTED);
        assert_eq!(r("10.2.0.0/24").bridge, 3);
        assert_eq!(r("10.9.0.0/16").kind, route_kind::GATEWAY);
        assert_eq!(r("10.9.0.0/16").gateway, [10, 2, 0, 2]);
        // Not through a bridge of ours, or not unicast: the kernel decides.
        assert_eq!(r("0.0.0.0/0").kind, route_kind::KERNEL);
        assert_eq!(r("10.66.0.0/16").kind, route_kind::KERNEL);
        assert_eq!(r("10.1.0.1/32").kind, route_kind::LOCAL);
        assert_eq!(r("10.1.0.255/32").kind, route_kind::LOCAL);
        assert_eq!(d.routes.len(), 7, "IPv6 is left to the kernel");
        // Neighbours: every container IPv4 address with the MAC it gets.
        let n = d.neigh[&"10.2.0.2".parse::<Ipv4Addr>().unwrap()];
        assert_eq!(n.mac, [0x02, 0x42, 10, 2, 0, 2]);
        assert_eq!(n.bridge, 3);
        assert_eq!(d.neigh.len(), 2);
    }
}

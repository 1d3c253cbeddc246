//! Kernel views + topology → what the datapath maps must hold. Pure: the
//! loader only writes what this computes.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use netctl_common::{NeighEntry, PORT_F_HAIRPIN, PortInfo, RouteValue, route_kind};

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
}

/// `host` is the view of the topology's host namespace, `containers` maps
/// a container's namespace name to its view, both read after apply.
pub fn compute(t: &Topology, host: &NsView, containers: &BTreeMap<String, NsView>) -> Desired {
    let mut d = Desired {
        forward: host.ip_forward,
        ..Default::default()
    };
    let bridges: BTreeMap<u32, &crate::state::Link> = t
        .bridges
        .iter()
        .filter_map(|b| host.link(&b.name))
        .map(|l| (l.index, l))
        .collect();
    for c in &t.containers {
        let (Some(port), Some(br)) = (host.link(&c.host_ifname), host.link(&c.bridge)) else {
            continue;
        };
        d.ports.push(Port {
            ifname: port.name.clone(),
            ifindex: port.index,
            info: PortInfo {
                bridge: br.index,
                flags: if port.hairpin == Some(true) { PORT_F_HAIRPIN } else { 0 },
                bridge_mac: br.mac.map(|m| m.0).unwrap_or_default(),
                _pad: [0; 2],
                ageing_ns: u64::from(br.ageing_time_cs.unwrap_or(30000)) * 10_000_000,
            },
        });
        // The kernel's word wins; the topology's MAC (always set, see
        // `parse::default_mac`) stands in when the namespace was not read.
        let Some(mac) = containers
            .get(&c.netns)
            .and_then(|cv| cv.link(&c.ifname))
            .and_then(|l| l.mac)
            .or(c.mac)
        else {
            continue;
        };
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
    for r in &host.routes {
        let IpNet::V4(dst) = r.dst else { continue };
        let value = match (r.table, r.kind) {
            (RT_TABLE_LOCAL, RouteKind::Local | RouteKind::Broadcast) => RouteValue {
                kind: route_kind::LOCAL,
                ..Default::default()
            },
            (RT_TABLE_MAIN, RouteKind::Unicast) => match r.oif.filter(|o| bridges.contains_key(o)) {
                Some(br) => match r.gateway {
                    Some(IpAddr::V4(gw)) => RouteValue {
                        kind: route_kind::GATEWAY,
                        bridge: br,
                        gateway: gw.octets(),
                        _pad: 0,
                    },
                    Some(IpAddr::V6(_)) => continue,
                    None => RouteValue {
                        kind: route_kind::CONNECTED,
                        bridge: br,
                        ..Default::default()
                    },
                },
                None => RouteValue {
                    kind: route_kind::KERNEL,
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

//! The typed, validated topology: what the user asked for, with every
//! default resolved. Produced only by `parse::parse`, consumed by the
//! planner; also stored (as JSON) as the record of what an apply owns.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};

use crate::mac::Mac;
use crate::netns::Netns;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Datapath {
    /// The eBPF fast path on the host-side veth ends.
    #[default]
    Ebpf,
    /// The plain kernel bridge.
    Kernel,
}

/// How the eBPF datapath's programs are attached to the ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Attach {
    /// Direct-action cls_bpf filters on a clsact qdisc: well under a
    /// millisecond to attach or detach.
    #[default]
    ClsBpf,
    /// tcx links: about 1% less CPU per small packet, but every attach and
    /// every detach (also by deleting the device) waits for an RCU grace
    /// period under RTNL, about 13 ms per program here, serialised across
    /// the host: 100 containers take seconds to come up and go.
    Tcx,
}

impl Attach {
    pub fn name(self) -> &'static str {
        match self {
            Attach::Tcx => "tcx",
            Attach::ClsBpf => "cls_bpf",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    pub name: String,
    /// Namespace holding the bridges and host ends; `None` = netctl's own.
    pub host_netns: Option<String>,
    pub ip_forward: bool,
    pub datapath: Datapath,
    /// How the eBPF datapath attaches (`attach = "cls_bpf" | "tcx"`).
    #[serde(default)]
    pub attach: Attach,
    pub namespaces: Vec<NamespaceSpec>,
    pub bridges: Vec<BridgeSpec>,
    pub containers: Vec<ContainerSpec>,
    pub routes: Vec<RouteEntry>,
    /// Netfilter rules for the datapath, in iptables-save format (checked
    /// when the file is read); `None` leaves the live rules alone.
    #[serde(default)]
    pub rules: Option<String>,
    /// A veth from the host namespace to an "outside" namespace the
    /// topology owns, and the host namespace's default route through it.
    #[serde(default)]
    pub uplink: Option<UplinkSpec>,
    /// Docker's bridge-driver rules (`docker::rules`), installed with the
    /// file's own `rules` merged after them.
    #[serde(default)]
    pub docker_rules: bool,
    /// Conntrack timeouts in seconds by the kernel's names
    /// (`tcp_timeout_established`, `udp_timeout`, …): `[conntrack]`.
    #[serde(default)]
    pub conntrack: std::collections::BTreeMap<String, u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UplinkSpec {
    /// The host-side end, in the topology's host namespace.
    pub name: String,
    pub address: Ipv4Net,
    /// The namespace holding the peer end: "the outside world".
    pub outside_netns: String,
    pub outside_ifname: String,
    pub outside_address: Ipv4Net,
    /// The host namespace's default gateway (on the uplink's subnet).
    pub gateway: Ipv4Addr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// A published port, as `docker run -p [HOSTIP:]HOSTPORT:CONTAINERPORT[/PROTO]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publish {
    /// `None`: every address of the host namespace (Docker's 0.0.0.0).
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
}

impl fmt::Display for Publish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ip) = self.host_ip {
            write!(f, "{ip}:")?;
        }
        write!(
            f,
            "{}:{}/{}",
            self.host_port,
            self.container_port,
            self.proto.name()
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceSpec {
    pub name: String,
    pub ip_forward: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeSpec {
    pub name: String,
    pub addresses: Vec<IpNet>,
    pub ageing_time_s: u32,
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub name: String,
    pub netns: String,
    pub bridge: String,
    pub ifname: String,
    pub host_ifname: String,
    pub addresses: Vec<IpNet>,
    /// Default gateways, at most one per address family.
    pub gateways: Vec<IpAddr>,
    /// Always set: the file's, or `parse::default_mac`.
    pub mac: Mac,
    pub mtu: Option<u32>,
    pub hairpin: bool,
    /// Ports published on the host namespace's addresses (`docker_rules`).
    #[serde(default)]
    pub publish: Vec<Publish>,
}

impl ContainerSpec {
    /// The address published ports lead to: the first IPv4 one.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        self.addresses.iter().find_map(|a| match a {
            IpNet::V4(v4) => Some(v4.addr()),
            IpNet::V6(_) => None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteEntry {
    /// `None` = the topology's host namespace.
    pub netns: Option<String>,
    pub to: IpNet,
    pub via: Option<IpAddr>,
    pub dev: Option<String>,
    pub table: u32,
    pub metric: Option<u32>,
}

impl Topology {
    pub fn host(&self) -> Netns {
        Netns::from_opt(self.host_netns.as_deref())
    }

    /// Every namespace this topology creates and therefore owns.
    pub fn owned_namespaces(&self) -> Vec<String> {
        let mut v: Vec<String> = self.host_netns.iter().cloned().collect();
        v.extend(self.namespaces.iter().map(|n| n.name.clone()));
        v.extend(self.uplink.iter().map(|u| u.outside_netns.clone()));
        v.extend(self.containers.iter().map(|c| c.netns.clone()));
        v
    }

    /// The link group of the topology's host-side devices: a stable hash
    /// of its name, never 0 (the default group).
    pub fn link_group(&self) -> u32 {
        let mut h: u32 = 0x811c9dc5;
        for b in self.name.bytes() {
            h ^= b as u32;
            h = h.wrapping_mul(0x01000193);
        }
        h | 0x8000_0000
    }

    pub fn route_netns(&self, r: &RouteEntry) -> Netns {
        match &r.netns {
            Some(n) => Netns::named(n),
            None => self.host(),
        }
    }
}

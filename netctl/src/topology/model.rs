//! The typed, validated topology: what the user asked for, with every
//! default resolved. Produced only by `parse::parse`, consumed by the
//! planner; also stored (as JSON) as the record of what an apply owns.

use std::net::IpAddr;

use ipnet::IpNet;
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    pub name: String,
    /// Namespace holding the bridges and host ends; `None` = netctl's own.
    pub host_netns: Option<String>,
    pub ip_forward: bool,
    pub datapath: Datapath,
    pub namespaces: Vec<NamespaceSpec>,
    pub bridges: Vec<BridgeSpec>,
    pub containers: Vec<ContainerSpec>,
    pub routes: Vec<RouteEntry>,
    /// Netfilter rules for the datapath, in iptables-save format (checked
    /// when the file is read); `None` leaves the live rules alone.
    #[serde(default)]
    pub rules: Option<String>,
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

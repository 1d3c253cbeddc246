//! The planner: desired topology + what the last apply owned + what the
//! kernel has → an ordered list of steps. Pure: no netlink here, so every
//! decision is unit-tested.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::Serialize;

use super::model::*;
use crate::mac::Mac;
use crate::netns::Netns;
use crate::observe::NsView;
use crate::state::RT_TABLE_MAIN;

/// One change to the kernel. Names, not ifindexes: the executor resolves
/// them when the step runs, since earlier steps create the devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Step {
    CreateNetns {
        name: String,
    },
    DeleteNetns {
        name: String,
    },
    SetForward {
        ns: Netns,
        on: bool,
    },
    CreateBridge {
        ns: Netns,
        name: String,
        ageing_time_s: u32,
        mtu: Option<u32>,
        alias: String,
    },
    SetAgeing {
        ns: Netns,
        name: String,
        ageing_time_s: u32,
    },
    SetMtu {
        ns: Netns,
        name: String,
        mtu: u32,
    },
    CreateVeth {
        ns: Netns,
        name: String,
        /// `None`: not a bridge port (the uplink).
        bridge: Option<String>,
        peer_netns: String,
        peer_name: String,
        mac: Option<Mac>,
        mtu: Option<u32>,
        alias: String,
        group: u32,
    },
    /// Every device of a link group at once (destroy).
    DeleteGroup {
        ns: Netns,
        group: u32,
        count: usize,
    },
    SetHairpin {
        ns: Netns,
        name: String,
        on: bool,
    },
    DeleteLink {
        ns: Netns,
        name: String,
    },
    AddAddr {
        ns: Netns,
        dev: String,
        net: IpNet,
    },
    DelAddr {
        ns: Netns,
        dev: String,
        net: IpNet,
    },
    AddRoute {
        ns: Netns,
        route: PlannedRoute,
    },
    DelRoute {
        ns: Netns,
        route: PlannedRoute,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedRoute {
    pub to: IpNet,
    pub via: Option<IpAddr>,
    pub dev: Option<String>,
    pub table: u32,
    pub metric: Option<u32>,
}

fn in_ns(ns: &Netns) -> String {
    match ns {
        Netns::Current => String::new(),
        Netns::Named(n) => format!(" (netns {n})"),
    }
}

impl fmt::Display for PlannedRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.to.prefix_len() == 0 {
            write!(f, "default")?;
        } else {
            write!(f, "{}", self.to)?;
        }
        if let Some(v) = self.via {
            write!(f, " via {v}")?;
        }
        if let Some(d) = &self.dev {
            write!(f, " dev {d}")?;
        }
        if self.table != RT_TABLE_MAIN {
            write!(f, " table {}", self.table)?;
        }
        if let Some(m) = self.metric {
            write!(f, " metric {m}")?;
        }
        Ok(())
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::CreateNetns { name } => write!(f, "+ netns {name}"),
            Step::DeleteNetns { name } => write!(f, "- netns {name}"),
            Step::SetForward { ns, on } => {
                write!(f, "~ ip_forward={}{}", u8::from(*on), in_ns(ns))
            }
            Step::CreateBridge {
                ns,
                name,
                ageing_time_s,
                ..
            } => write!(
                f,
                "+ bridge {name} ageing_time {ageing_time_s}s{}",
                in_ns(ns)
            ),
            Step::SetAgeing {
                ns,
                name,
                ageing_time_s,
            } => write!(
                f,
                "~ bridge {name} ageing_time {ageing_time_s}s{}",
                in_ns(ns)
            ),
            Step::SetMtu { ns, name, mtu } => write!(f, "~ link {name} mtu {mtu}{}", in_ns(ns)),
            Step::CreateVeth {
                ns,
                name,
                bridge,
                peer_netns,
                peer_name,
                ..
            } => {
                write!(f, "+ veth {name}")?;
                if let Some(b) = bridge {
                    write!(f, " master {b}")?;
                }
                write!(f, "{} <-> {peer_name} (netns {peer_netns})", in_ns(ns))
            }
            Step::SetHairpin { ns, name, on } => write!(
                f,
                "~ bridge port {name} hairpin {}{}",
                if *on { "on" } else { "off" },
                in_ns(ns)
            ),
            Step::DeleteLink { ns, name } => write!(f, "- link {name}{}", in_ns(ns)),
            Step::DeleteGroup { ns, group, count } => {
                write!(f, "- {count} link(s) of group {group:#x}{}", in_ns(ns))
            }
            Step::AddAddr { ns, dev, net } => write!(f, "+ address {net} dev {dev}{}", in_ns(ns)),
            Step::DelAddr { ns, dev, net } => write!(f, "- address {net} dev {dev}{}", in_ns(ns)),
            Step::AddRoute { ns, route } => write!(f, "+ route {route}{}", in_ns(ns)),
            Step::DelRoute { ns, route } => write!(f, "- route {route}{}", in_ns(ns)),
        }
    }
}

/// What the planner knows of the kernel: which named namespaces exist, and
/// a view of each one it needs to look into.
#[derive(Debug, Default)]
pub struct Observed {
    pub namespaces: BTreeSet<String>,
    pub views: BTreeMap<Netns, NsView>,
}

impl Observed {
    fn exists(&self, ns: &Netns) -> bool {
        match ns {
            Netns::Current => true,
            Netns::Named(n) => self.namespaces.contains(n),
        }
    }
    fn view(&self, ns: &Netns) -> Option<&NsView> {
        self.views.get(ns)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(
        "namespace {0:?} already exists and does not belong to topology {1:?}; \
         remove it or choose another name"
    )]
    ForeignNamespace(String, String),
    #[error(
        "a device named {name:?} already exists in {ns} and does not belong to \
         topology {topology:?}"
    )]
    ForeignLink {
        name: String,
        ns: String,
        topology: String,
    },
    #[error("namespace {0:?} needed by the topology is not available to inspect")]
    Unobserved(String),
}

pub fn alias_for(topology: &str) -> String {
    format!("netctl:{topology}")
}

/// The steps that turn `observed` into `desired`, given that `prev` (the
/// last applied version, if any) is what this topology owns.
pub fn plan(
    desired: &Topology,
    prev: Option<&Topology>,
    observed: &Observed,
) -> Result<Vec<Step>, PlanError> {
    let mut p = Planner {
        d: desired,
        prev,
        o: observed,
        removals: Vec::new(),
        creates: Vec::new(),
        recreated: BTreeSet::new(),
    };
    p.check_ownership()?;
    p.removals();
    p.namespaces();
    p.bridges();
    p.containers();
    p.uplink();
    p.routes();
    let mut steps = p.removals;
    // Namespaces first, all together: creating one is the most expensive
    // step (the kernel initialises every per-namespace subsystem) and the
    // executor creates a run of them in parallel.
    let (ns, rest): (Vec<Step>, Vec<Step>) = p
        .creates
        .into_iter()
        .partition(|s| matches!(s, Step::CreateNetns { .. }));
    steps.extend(ns);
    steps.extend(rest);
    Ok(steps)
}

/// Steps that remove everything `owned` made, leaving nothing behind.
pub fn plan_destroy(owned: &Topology, observed: &Observed) -> Vec<Step> {
    let mut steps = Vec::new();
    let host = owned.host();
    if observed.exists(&host) {
        let view = observed.view(&host);
        let has = |n: &str| view.is_none_or(|v| v.link(n).is_some());
        // Host ends first: a veth whose namespace dies is freed by the
        // kernel asynchronously, and destroy must leave nothing when it
        // returns. When the group holds exactly our host ends, one request
        // removes them all in one batch.
        let group = owned.link_group();
        let ours: BTreeSet<&str> = owned
            .containers
            .iter()
            .map(|c| c.host_ifname.as_str())
            .collect();
        let in_group: Vec<&str> = view
            .map(|v| {
                v.links
                    .iter()
                    .filter(|l| l.group == group)
                    .map(|l| l.name.as_str())
                    .collect()
            })
            .unwrap_or_default();
        let by_group = !in_group.is_empty() && in_group.iter().all(|n| ours.contains(n));
        if by_group {
            steps.push(Step::DeleteGroup {
                ns: host.clone(),
                group,
                count: in_group.len(),
            });
        }
        let grouped: BTreeSet<&str> = in_group.iter().copied().collect();
        for c in &owned.containers {
            if has(&c.host_ifname) && !(by_group && grouped.contains(c.host_ifname.as_str())) {
                steps.push(Step::DeleteLink {
                    ns: host.clone(),
                    name: c.host_ifname.clone(),
                });
            }
        }
        // Before its outside namespace goes: that would free the pair
        // asynchronously.
        if let Some(u) = &owned.uplink
            && has(&u.name)
        {
            steps.push(Step::DeleteLink {
                ns: host.clone(),
                name: u.name.clone(),
            });
        }
        if owned.host_netns.is_none() {
            for r in &owned.routes {
                if r.netns.is_none() {
                    steps.push(Step::DelRoute {
                        ns: host.clone(),
                        route: planned(r),
                    });
                }
            }
        }
        for b in &owned.bridges {
            if has(&b.name) {
                steps.push(Step::DeleteLink {
                    ns: host.clone(),
                    name: b.name.clone(),
                });
            }
        }
    }
    for n in owned.owned_namespaces().into_iter().rev() {
        if observed.namespaces.contains(&n) {
            steps.push(Step::DeleteNetns { name: n });
        }
    }
    steps
}

fn planned(r: &RouteEntry) -> PlannedRoute {
    PlannedRoute {
        to: r.to,
        via: r.via,
        dev: r.dev.clone(),
        table: r.table,
        metric: r.metric,
    }
}

struct Planner<'a> {
    d: &'a Topology,
    prev: Option<&'a Topology>,
    o: &'a Observed,
    removals: Vec<Step>,
    creates: Vec<Step>,
    /// Namespaces (by name) whose container link is being recreated, so
    /// whatever the kernel had on it must be made again.
    recreated: BTreeSet<String>,
}

impl Planner<'_> {
    fn prev_owns_ns(&self, n: &str) -> bool {
        self.prev
            .is_some_and(|p| p.owned_namespaces().iter().any(|x| x == n))
    }

    fn prev_owns_host_link(&self, name: &str) -> bool {
        let Some(p) = self.prev else { return false };
        if p.host() != self.d.host() {
            return false;
        }
        p.bridges.iter().any(|b| b.name == name)
            || p.containers.iter().any(|c| c.host_ifname == name)
            || p.uplink.as_ref().is_some_and(|u| u.name == name)
    }

    fn check_ownership(&self) -> Result<(), PlanError> {
        for n in self.d.owned_namespaces() {
            if self.o.namespaces.contains(&n) && !self.prev_owns_ns(&n) {
                return Err(PlanError::ForeignNamespace(n, self.d.name.clone()));
            }
        }
        let host = self.d.host();
        if let Some(v) = self.o.view(&host) {
            let names = self
                .d
                .bridges
                .iter()
                .map(|b| &b.name)
                .chain(self.d.containers.iter().map(|c| &c.host_ifname))
                .chain(self.d.uplink.iter().map(|u| &u.name));
            for n in names {
                if v.link(n).is_some() && !self.prev_owns_host_link(n) {
                    return Err(PlanError::ForeignLink {
                        name: n.clone(),
                        ns: host.to_string(),
                        topology: self.d.name.clone(),
                    });
                }
            }
        } else if self.o.exists(&host) {
            return Err(PlanError::Unobserved(host.to_string()));
        }
        Ok(())
    }

    /// Things the last apply made that the new topology no longer has.
    fn removals(&mut self) {
        let Some(prev) = self.prev else { return };
        let d = self.d;
        let desired_ns: BTreeSet<String> = d.owned_namespaces().into_iter().collect();
        let prev_host = prev.host();
        let host_moved = prev_host != d.host();
        let prev_host_alive = self.o.exists(&prev_host)
            && (prev_host == Netns::Current
                || desired_ns.contains(prev_host.name().unwrap_or(""))
                || !host_moved);
        if prev_host_alive {
            let view = self.o.view(&prev_host);
            let has = |n: &str| view.is_some_and(|v| v.link(n).is_some());
            for r in &prev.routes {
                let ns = prev.route_netns(r);
                // Changed routes (same key) are replaced by `routes()`.
                let still = d.routes.iter().any(|x| {
                    d.route_netns(x) == ns
                        && x.to == r.to
                        && x.table == r.table
                        && x.metric == r.metric
                });
                let ns_alive = match &ns {
                    Netns::Current => true,
                    Netns::Named(n) => desired_ns.contains(n) && self.o.exists(&ns),
                };
                if !still && ns_alive && (!host_moved || ns != prev_host) {
                    self.removals.push(Step::DelRoute {
                        ns,
                        route: planned(r),
                    });
                }
            }
            for c in &prev.containers {
                let keep =
                    !host_moved && d.containers.iter().any(|x| x.host_ifname == c.host_ifname);
                if !keep && has(&c.host_ifname) {
                    self.removals.push(Step::DeleteLink {
                        ns: prev_host.clone(),
                        name: c.host_ifname.clone(),
                    });
                }
            }
            for b in &prev.bridges {
                let keep = !host_moved && d.bridges.iter().any(|x| x.name == b.name);
                if !keep && has(&b.name) {
                    self.removals.push(Step::DeleteLink {
                        ns: prev_host.clone(),
                        name: b.name.clone(),
                    });
                }
            }
        }
        // The uplink pair goes explicitly, before any namespace: deleting
        // the namespace of either end (a new outside namespace, a host
        // namespace that moved) would free the pair asynchronously, under
        // the feet of the steps that make it again.
        if let Some(u) = &prev.uplink
            && !self.keeps_uplink(u)
            && self
                .o
                .view(&prev_host)
                .is_some_and(|v| v.link(&u.name).is_some())
        {
            self.removals.push(Step::DeleteLink {
                ns: prev_host.clone(),
                name: u.name.clone(),
            });
        }
        for n in prev.owned_namespaces().into_iter().rev() {
            if !desired_ns.contains(&n) && self.o.namespaces.contains(&n) {
                self.removals.push(Step::DeleteNetns { name: n });
            }
        }
    }

    /// Whether the desired topology keeps the pair `prev_uplink` made:
    /// same host namespace, same name, same outside namespace.
    fn keeps_uplink(&self, prev_uplink: &UplinkSpec) -> bool {
        let d = self.d;
        self.prev.is_some_and(|p| p.host() == d.host())
            && d.uplink.as_ref().is_some_and(|u| {
                u.name == prev_uplink.name && u.outside_netns == prev_uplink.outside_netns
            })
    }

    fn ensure_ns(&mut self, name: &str, forward: Option<bool>) -> bool {
        let ns = Netns::named(name);
        let exists = self.o.exists(&ns);
        if !exists {
            self.creates.push(Step::CreateNetns {
                name: name.to_string(),
            });
        }
        if let Some(on) = forward {
            let current = if exists {
                self.o.view(&ns).map(|v| v.ip_forward)
            } else {
                Some(false)
            };
            if current != Some(on) {
                self.creates.push(Step::SetForward { ns, on });
            }
        }
        exists
    }

    fn namespaces(&mut self) {
        let d = self.d;
        match &d.host_netns {
            Some(h) => {
                self.ensure_ns(h, Some(d.ip_forward));
            }
            None => {
                // Never switch forwarding off in a namespace we do not own.
                let cur = self.o.view(&Netns::Current).map(|v| v.ip_forward);
                if d.ip_forward && cur != Some(true) {
                    self.creates.push(Step::SetForward {
                        ns: Netns::Current,
                        on: true,
                    });
                }
            }
        }
        for n in &d.namespaces {
            self.ensure_ns(&n.name, Some(n.ip_forward));
        }
    }

    fn host_view(&self) -> Option<&NsView> {
        self.o.view(&self.d.host())
    }

    fn bridges(&mut self) {
        let d = self.d;
        let host = d.host();
        for b in &d.bridges {
            let existing = self.host_view().and_then(|v| v.link(&b.name).cloned());
            let have_addrs = match &existing {
                Some(_) => self
                    .host_view()
                    .map(|v| v.addrs_of(&b.name))
                    .unwrap_or_default(),
                None => Vec::new(),
            };
            match &existing {
                None => self.creates.push(Step::CreateBridge {
                    ns: host.clone(),
                    name: b.name.clone(),
                    ageing_time_s: b.ageing_time_s,
                    mtu: b.mtu,
                    alias: alias_for(&d.name),
                }),
                Some(l) => {
                    if l.ageing_time_cs != Some(b.ageing_time_s * 100) {
                        self.creates.push(Step::SetAgeing {
                            ns: host.clone(),
                            name: b.name.clone(),
                            ageing_time_s: b.ageing_time_s,
                        });
                    }
                    if let Some(m) = b.mtu
                        && l.mtu != m
                    {
                        self.creates.push(Step::SetMtu {
                            ns: host.clone(),
                            name: b.name.clone(),
                            mtu: m,
                        });
                    }
                }
            }
            for a in &have_addrs {
                if !b.addresses.contains(a) {
                    self.removals.push(Step::DelAddr {
                        ns: host.clone(),
                        dev: b.name.clone(),
                        net: *a,
                    });
                }
            }
            for a in &b.addresses {
                if !have_addrs.contains(a) {
                    self.creates.push(Step::AddAddr {
                        ns: host.clone(),
                        dev: b.name.clone(),
                        net: *a,
                    });
                }
            }
        }
    }

    fn containers(&mut self) {
        let d = self.d;
        let host = d.host();
        for c in &d.containers {
            let ns = Netns::named(&c.netns);
            let ns_exists = self.ensure_ns(&c.netns, None);
            let host_link = self
                .host_view()
                .and_then(|v| v.link(&c.host_ifname).cloned());
            let bridge_idx = self
                .host_view()
                .and_then(|v| v.link(&c.bridge))
                .map(|l| l.index);
            let cview = if ns_exists { self.o.view(&ns) } else { None };
            // The pair is intact when the peer is where it should be,
            // named as it should be, and everything settable matches.
            let intact = match (&host_link, cview) {
                (Some(h), Some(v)) => {
                    let peer = v.link(&c.ifname);
                    h.kind.as_deref() == Some("veth")
                        && bridge_idx.is_some()
                        && h.master == bridge_idx
                        && c.mtu.is_none_or(|m| h.mtu == m)
                        && peer.is_some_and(|p| {
                            p.kind.as_deref() == Some("veth")
                                && p.link == Some(h.index)
                                && p.mac == Some(c.mac)
                                && c.mtu.is_none_or(|m| p.mtu == m)
                                && p.up
                        })
                }
                _ => false,
            };
            if !intact {
                if host_link.is_some() {
                    self.creates.push(Step::DeleteLink {
                        ns: host.clone(),
                        name: c.host_ifname.clone(),
                    });
                }
                self.recreated.insert(c.netns.clone());
                self.creates.push(Step::CreateVeth {
                    ns: host.clone(),
                    name: c.host_ifname.clone(),
                    bridge: Some(c.bridge.clone()),
                    peer_netns: c.netns.clone(),
                    peer_name: c.ifname.clone(),
                    mac: Some(c.mac),
                    mtu: c.mtu,
                    alias: alias_for(&d.name),
                    group: d.link_group(),
                });
                if c.hairpin {
                    self.creates.push(Step::SetHairpin {
                        ns: host.clone(),
                        name: c.host_ifname.clone(),
                        on: true,
                    });
                }
            } else if host_link.as_ref().and_then(|h| h.hairpin) != Some(c.hairpin) {
                self.creates.push(Step::SetHairpin {
                    ns: host.clone(),
                    name: c.host_ifname.clone(),
                    on: c.hairpin,
                });
            }
            let fresh = !intact;
            let have_addrs = match (fresh, cview) {
                (false, Some(v)) => v.addrs_of(&c.ifname),
                _ => Vec::new(),
            };
            for a in &have_addrs {
                if !c.addresses.contains(a) {
                    self.removals.push(Step::DelAddr {
                        ns: ns.clone(),
                        dev: c.ifname.clone(),
                        net: *a,
                    });
                }
            }
            for a in &c.addresses {
                if !have_addrs.contains(a) {
                    self.creates.push(Step::AddAddr {
                        ns: ns.clone(),
                        dev: c.ifname.clone(),
                        net: *a,
                    });
                }
            }
            // Default routes via the gateways.
            let have_gw: Vec<IpAddr> = match (fresh, cview) {
                (false, Some(v)) => v
                    .routes_in(RT_TABLE_MAIN)
                    .filter(|r| r.dst.prefix_len() == 0)
                    .filter_map(|r| r.gateway)
                    .collect(),
                _ => Vec::new(),
            };
            let default_of = |g: &IpAddr| PlannedRoute {
                to: if g.is_ipv4() {
                    "0.0.0.0/0".parse().unwrap()
                } else {
                    "::/0".parse().unwrap()
                },
                via: Some(*g),
                dev: None,
                table: RT_TABLE_MAIN,
                metric: None,
            };
            for g in &have_gw {
                if !c.gateways.contains(g) {
                    self.removals.push(Step::DelRoute {
                        ns: ns.clone(),
                        route: default_of(g),
                    });
                }
            }
            for g in &c.gateways {
                if !have_gw.contains(g) {
                    self.creates.push(Step::AddRoute {
                        ns: ns.clone(),
                        route: default_of(g),
                    });
                }
            }
        }
    }

    /// The uplink: a veth from the host namespace to the outside one, an
    /// address on each end, the host namespace's default route through it.
    fn uplink(&mut self) {
        let d = self.d;
        let Some(u) = &d.uplink else { return };
        let host = d.host();
        let out = Netns::named(&u.outside_netns);
        let out_exists = self.ensure_ns(&u.outside_netns, None);
        // A pair the removals delete is not there for this planner.
        let removed = self
            .prev
            .and_then(|p| p.uplink.as_ref())
            .is_some_and(|pu| pu.name == u.name && !self.keeps_uplink(pu));
        let host_link = if removed {
            None
        } else {
            self.o.view(&host).and_then(|v| v.link(&u.name).cloned())
        };
        let oview = if out_exists { self.o.view(&out) } else { None };
        let intact = match (&host_link, oview) {
            (Some(h), Some(v)) => {
                h.kind.as_deref() == Some("veth")
                    && h.master.is_none()
                    && h.up
                    && v.link(&u.outside_ifname).is_some_and(|p| {
                        p.kind.as_deref() == Some("veth") && p.link == Some(h.index) && p.up
                    })
            }
            _ => false,
        };
        if !intact {
            if host_link.is_some() {
                self.creates.push(Step::DeleteLink {
                    ns: host.clone(),
                    name: u.name.clone(),
                });
            }
            self.creates.push(Step::CreateVeth {
                ns: host.clone(),
                name: u.name.clone(),
                bridge: None,
                peer_netns: u.outside_netns.clone(),
                peer_name: u.outside_ifname.clone(),
                mac: None,
                mtu: None,
                alias: alias_for(&d.name),
                group: 0,
            });
        }
        let ends = [
            (
                host.clone(),
                &u.name,
                IpNet::V4(u.address),
                self.o.view(&host),
            ),
            (
                out.clone(),
                &u.outside_ifname,
                IpNet::V4(u.outside_address),
                oview,
            ),
        ];
        for (ns, dev, want, view) in ends {
            let have = match (intact, view) {
                (true, Some(v)) => v.addrs_of(dev),
                _ => Vec::new(),
            };
            for a in &have {
                if *a != want {
                    self.removals.push(Step::DelAddr {
                        ns: ns.clone(),
                        dev: dev.clone(),
                        net: *a,
                    });
                }
            }
            if !have.contains(&want) {
                self.creates.push(Step::AddAddr {
                    ns,
                    dev: dev.clone(),
                    net: want,
                });
            }
        }
        let default: IpNet = "0.0.0.0/0".parse().unwrap();
        let have_gw: Vec<IpAddr> = match (intact, self.o.view(&host)) {
            (true, Some(v)) => v
                .routes_in(RT_TABLE_MAIN)
                .filter(|r| r.dst == default && r.metric.is_none_or(|m| m == 0))
                .filter_map(|r| r.gateway)
                .collect(),
            _ => Vec::new(),
        };
        let gw = IpAddr::V4(u.gateway);
        for g in &have_gw {
            if *g != gw {
                self.removals.push(Step::DelRoute {
                    ns: host.clone(),
                    route: PlannedRoute {
                        to: default,
                        via: Some(*g),
                        dev: None,
                        table: RT_TABLE_MAIN,
                        metric: None,
                    },
                });
            }
        }
        if !have_gw.contains(&gw) {
            self.creates.push(Step::AddRoute {
                ns: host,
                route: PlannedRoute {
                    to: default,
                    via: Some(gw),
                    dev: Some(u.name.clone()),
                    table: RT_TABLE_MAIN,
                    metric: None,
                },
            });
        }
    }

    fn routes(&mut self) {
        let d = self.d;
        for r in &d.routes {
            let ns = d.route_netns(r);
            let want = planned(r);
            let fresh = match &ns {
                Netns::Named(n) => !self.o.exists(&ns) || self.recreated.contains(n),
                Netns::Current => false,
            };
            let view = if fresh { None } else { self.o.view(&ns) };
            let matching = view.and_then(|v| {
                v.routes_in(r.table)
                    .find(|k| k.dst == r.to && r.metric.is_none_or(|m| k.metric == Some(m)))
            });
            match matching {
                Some(k) => {
                    let dev_ok = match (&r.dev, k.oif) {
                        (None, _) => true,
                        (Some(dn), Some(oif)) => view
                            .and_then(|v| v.link_by_index(oif))
                            .is_some_and(|l| &l.name == dn),
                        (Some(_), None) => false,
                    };
                    if k.gateway != r.via || !dev_ok {
                        self.creates.push(Step::DelRoute {
                            ns: ns.clone(),
                            route: PlannedRoute {
                                to: k.dst,
                                via: k.gateway,
                                dev: None,
                                table: r.table,
                                metric: k.metric,
                            },
                        });
                        self.creates.push(Step::AddRoute { ns, route: want });
                    }
                }
                None => self.creates.push(Step::AddRoute { ns, route: want }),
            }
        }
    }
}

//! TOML → validated `Topology`. Every problem is reported with the place in
//! the file it comes from, all at once, before anything touches the kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::ops::Range;

use ipnet::{IpNet, Ipv4Net};
use serde::Deserialize;
use toml::Spanned;

use super::model::*;
use crate::mac::Mac;
use crate::names::{check_ifname, check_netns_name};
use crate::state::{RT_TABLE_LOCAL, RT_TABLE_MAIN};

pub const DEFAULT_AGEING_S: u32 = 300;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct TopologyError {
    pub file: String,
    pub problems: Vec<Problem>,
}

impl fmt::Display for TopologyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{}:{}: {}", self.file, p.line, p.col, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for TopologyError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopology {
    name: Spanned<String>,
    host_netns: Option<Spanned<String>>,
    ip_forward: Option<bool>,
    datapath: Option<Spanned<String>>,
    attach: Option<Spanned<String>>,
    #[serde(default, rename = "namespace")]
    namespaces: Vec<Spanned<RawNamespace>>,
    #[serde(default, rename = "bridge")]
    bridges: Vec<Spanned<RawBridge>>,
    #[serde(default, rename = "container")]
    containers: Vec<Spanned<RawContainer>>,
    #[serde(default, rename = "route")]
    routes: Vec<Spanned<RawRoute>>,
    rules: Option<Spanned<String>>,
    docker_rules: Option<Spanned<bool>>,
    uplink: Option<Spanned<RawUplink>>,
    conntrack: Option<Spanned<BTreeMap<String, Spanned<i64>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUplink {
    name: Spanned<String>,
    address: Spanned<String>,
    outside_netns: Option<Spanned<String>>,
    outside_ifname: Option<Spanned<String>>,
    outside_address: Spanned<String>,
    gateway: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNamespace {
    name: Spanned<String>,
    ip_forward: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBridge {
    name: Spanned<String>,
    #[serde(default)]
    addresses: Vec<Spanned<String>>,
    ageing_time: Option<Spanned<u32>>,
    mtu: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawContainer {
    name: Spanned<String>,
    netns: Option<Spanned<String>>,
    bridge: Spanned<String>,
    ifname: Option<Spanned<String>>,
    host_ifname: Option<Spanned<String>>,
    #[serde(default)]
    addresses: Vec<Spanned<String>>,
    gateway: Option<Spanned<OneOrMany>>,
    mac: Option<Spanned<String>>,
    mtu: Option<Spanned<u32>>,
    hairpin: Option<bool>,
    #[serde(default)]
    publish: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum TableRef {
    Id(u32),
    Name(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    netns: Option<Spanned<String>>,
    to: Spanned<String>,
    via: Option<Spanned<String>>,
    dev: Option<Spanned<String>>,
    table: Option<Spanned<TableRef>>,
    metric: Option<u32>,
}

struct Ctx<'a> {
    text: &'a str,
    problems: Vec<Problem>,
}

impl Ctx<'_> {
    fn at(&mut self, span: Range<usize>, message: impl Into<String>) {
        let (line, col) = line_col(self.text, span.start);
        self.problems.push(Problem {
            line,
            col,
            message: message.into(),
        });
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |i| before.len() - i - 1)
        + 1;
    (line, col)
}

/// Docker names host ends `veth` + random hex; ours are stable so that a
/// re-apply finds them: `veth` + 8 hex digits of a hash of topology and
/// container name.
pub fn default_host_ifname(topology: &str, container: &str) -> String {
    // FNV-1a: stable across releases, unlike std's hasher.
    let mut h: u32 = 0x811c9dc5;
    for b in topology.bytes().chain([0u8]).chain(container.bytes()) {
        h ^= b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    format!("veth{h:08x}")
}

pub fn default_mac(topology: &str, container: &str, addrs: &[IpNet]) -> Mac {
    let tail = match addrs.iter().find_map(|a| match a.addr() {
        IpAddr::V4(v4) => Some(v4.octets()),
        IpAddr::V6(_) => None,
    }) {
        Some(o) => o,
        None => {
            let h = default_host_ifname(topology, container);
            let n = u32::from_str_radix(&h[4..], 16).unwrap_or(0);
            n.to_be_bytes()
        }
    };
    Mac([0x02, 0x42, tail[0], tail[1], tail[2], tail[3]])
}

fn check_topology_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err(format!("topology name {name:?} must be 1–64 characters"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        || name.starts_with('.')
    {
        return Err(format!(
            "topology name {name:?} may only contain letters, digits, '-', '_' and '.'"
        ));
    }
    Ok(())
}

fn parse_net(ctx: &mut Ctx, s: &Spanned<String>, what: &str) -> Option<IpNet> {
    match s.get_ref().parse::<IpNet>() {
        Ok(n) => Some(n),
        Err(_) => {
            let hint = if s.get_ref().parse::<IpAddr>().is_ok() {
                " (add a prefix length, e.g. /24)"
            } else {
                ""
            };
            ctx.at(
                s.span(),
                format!(
                    "{what} {:?} is not an address with prefix length{hint}",
                    s.get_ref()
                ),
            );
            None
        }
    }
}

fn parse_ip(ctx: &mut Ctx, s: &str, span: Range<usize>, what: &str) -> Option<IpAddr> {
    match s.parse::<IpAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            ctx.at(span, format!("{what} {s:?} is not an IP address"));
            None
        }
    }
}

fn check_mtu(ctx: &mut Ctx, m: &Option<Spanned<u32>>) -> Option<u32> {
    let m = m.as_ref()?;
    let v = *m.get_ref();
    if !(68..=65535).contains(&v) {
        ctx.at(m.span(), format!("mtu {v} is outside 68–65535"));
        return None;
    }
    Some(v)
}

fn is_v4(n: &IpNet) -> bool {
    matches!(n, IpNet::V4(_))
}

/// An IPv4 address with prefix length that is a host's: neither the
/// network nor the broadcast address of its subnet.
fn parse_host_v4(ctx: &mut Ctx, s: &Spanned<String>, what: &str) -> Option<Ipv4Net> {
    match parse_net(ctx, s, what)? {
        IpNet::V4(v4) => {
            if v4.prefix_len() < 31 && (v4.addr() == v4.network() || v4.addr() == v4.broadcast()) {
                ctx.at(
                    s.span(),
                    format!("{what} {v4} is the network or broadcast address of its subnet"),
                );
                return None;
            }
            Some(v4)
        }
        IpNet::V6(n) => {
            ctx.at(
                s.span(),
                format!("{what} {n} is not IPv4 (the uplink is IPv4 only)"),
            );
            None
        }
    }
}

/// Host ports taken: (protocol, port) → (host address, `None` for all of
/// them; the container that publishes it).
type PortClaims = BTreeMap<(Proto, u16), Vec<(Option<Ipv4Addr>, String)>>;

/// `[HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|/udp]`, as `docker run -p` takes
/// it (tcp when no protocol is given; HOSTIP 0.0.0.0 = every address).
pub fn parse_publish(s: &str) -> Result<Publish, String> {
    let (spec, proto) = match s.rsplit_once('/') {
        Some((spec, "tcp")) => (spec, Proto::Tcp),
        Some((spec, "udp")) => (spec, Proto::Udp),
        Some((_, p)) => {
            return Err(format!(
                "publish {s:?}: protocol {p:?} is not \"tcp\" or \"udp\""
            ));
        }
        None => (s, Proto::Tcp),
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let (ip, host, container) = match parts.as_slice() {
        [h, c] => (None, *h, *c),
        [ip, h, c] => (Some(*ip), *h, *c),
        [_] => {
            return Err(format!(
                "publish {s:?} needs HOSTPORT:CONTAINERPORT (netctl does not choose host ports)"
            ));
        }
        _ => {
            return Err(format!(
                "publish {s:?} is not [HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|/udp] \
                 (host addresses are IPv4)"
            ));
        }
    };
    let port = |p: &str, what: &str| -> Result<u16, String> {
        if p.contains('-') {
            return Err(format!(
                "publish {s:?}: {what} {p:?} is a range; port ranges are not supported"
            ));
        }
        match p.parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
            _ => Err(format!(
                "publish {s:?}: {what} {p:?} is not a port number 1–65535"
            )),
        }
    };
    let host_ip = match ip {
        None => None,
        Some(ip) => match ip.parse::<Ipv4Addr>() {
            Ok(a) if a.is_unspecified() => None,
            Ok(a) => Some(a),
            Err(_) => {
                return Err(format!(
                    "publish {s:?}: host address {ip:?} is not an IPv4 address"
                ));
            }
        },
    };
    Ok(Publish {
        host_ip,
        host_port: port(host, "host port")?,
        container_port: port(container, "container port")?,
        proto,
    })
}

/// Parses and validates a topology file's text. `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<Topology, TopologyError> {
    parse_with(text, file, true)
}

/// `parse` without checking the rules `docker_rules` generates (tests of
/// the generator that must not depend on the rules parser).
#[cfg(test)]
pub(crate) fn parse_unchecked(text: &str, file: &str) -> Result<Topology, TopologyError> {
    parse_with(text, file, false)
}

fn parse_with(text: &str, file: &str, check_generated: bool) -> Result<Topology, TopologyError> {
    let raw: RawTopology = toml::from_str(text).map_err(|e| {
        let (line, col) = e.span().map_or((1, 1), |s| line_col(text, s.start));
        TopologyError {
            file: file.to_string(),
            problems: vec![Problem {
                line,
                col,
                message: e.message().to_string(),
            }],
        }
    })?;
    let mut ctx = Ctx {
        text,
        problems: Vec::new(),
    };
    let topo = build(&mut ctx, raw, check_generated);
    if ctx.problems.is_empty() {
        Ok(topo)
    } else {
        ctx.problems.sort_by_key(|p| (p.line, p.col));
        Err(TopologyError {
            file: file.to_string(),
            problems: ctx.problems,
        })
    }
}

fn build(ctx: &mut Ctx, raw: RawTopology, check_generated: bool) -> Topology {
    let name = raw.name.get_ref().clone();
    if let Err(e) = check_topology_name(&name) {
        ctx.at(raw.name.span(), e);
    }
    let datapath = match raw
        .datapath
        .as_ref()
        .map(|d| (d.get_ref().as_str(), d.span()))
    {
        None | Some(("ebpf", _)) => Datapath::Ebpf,
        Some(("kernel", _)) => Datapath::Kernel,
        Some((other, span)) => {
            ctx.at(
                span,
                format!("datapath {other:?} is not one of \"ebpf\", \"kernel\""),
            );
            Datapath::Ebpf
        }
    };
    let attach = match raw
        .attach
        .as_ref()
        .map(|a| (a.get_ref().as_str(), a.span()))
    {
        None => Attach::ClsBpf,
        Some((_, span)) if datapath == Datapath::Kernel => {
            ctx.at(
                span,
                "attach chooses how the eBPF datapath attaches: it needs datapath = \"ebpf\"",
            );
            Attach::ClsBpf
        }
        Some(("tcx", _)) => Attach::Tcx,
        Some(("cls_bpf", _)) => Attach::ClsBpf,
        Some((other, span)) => {
            ctx.at(
                span,
                format!("attach {other:?} is not one of \"cls_bpf\", \"tcx\""),
            );
            Attach::ClsBpf
        }
    };

    // Namespaces: every name once, whatever declares it.
    let mut ns_seen: BTreeMap<String, &'static str> = BTreeMap::new();
    let mut claim_ns = |ctx: &mut Ctx, n: &str, span: Range<usize>, by: &'static str| {
        if let Err(e) = check_netns_name(n) {
            ctx.at(span.clone(), e);
        }
        if let Some(prev) = ns_seen.insert(n.to_string(), by) {
            ctx.at(span, format!("namespace {n:?} is already used by {prev}"));
        }
    };
    if let Some(h) = &raw.host_netns {
        claim_ns(ctx, h.get_ref(), h.span(), "host_netns");
    }
    let mut namespaces = Vec::new();
    for n in &raw.namespaces {
        let n = n.get_ref();
        claim_ns(ctx, n.name.get_ref(), n.name.span(), "a [[namespace]]");
        namespaces.push(NamespaceSpec {
            name: n.name.get_ref().clone(),
            ip_forward: n.ip_forward.unwrap_or(false),
        });
    }

    // Host-side interface names share one namespace.
    let mut host_ifnames: BTreeMap<String, String> = BTreeMap::new();
    let mut claim_host_if = |ctx: &mut Ctx, n: &str, span: Range<usize>, by: String| {
        if let Err(e) = check_ifname(n) {
            ctx.at(span.clone(), e);
        }
        if let Some(prev) = host_ifnames.insert(n.to_string(), by) {
            ctx.at(
                span,
                format!("interface name {n:?} is already used by {prev} in the host namespace"),
            );
        }
    };

    let mut bridges = Vec::new();
    let mut subnets: Vec<(IpNet, String, Range<usize>)> = Vec::new();
    // Addresses in use per L2 segment (bridge), to find duplicates.
    let mut used_ips: BTreeMap<IpAddr, String> = BTreeMap::new();
    for b in &raw.bridges {
        let b = b.get_ref();
        let bname = b.name.get_ref().clone();
        claim_host_if(ctx, &bname, b.name.span(), format!("bridge {bname}"));
        let mut addrs = Vec::new();
        for a in &b.addresses {
            if let Some(n) = parse_net(ctx, a, "bridge address") {
                let own = format!("bridge {bname}");
                for (other, oname, _) in &subnets {
                    // A bridge's further addresses in its own subnet are
                    // secondary addresses, as `ip addr add` makes them.
                    if *oname == own {
                        continue;
                    }
                    if other.trunc().contains(&n.trunc().network())
                        || n.trunc().contains(&other.trunc().network())
                    {
                        ctx.at(
                            a.span(),
                            format!(
                                "subnet {} of bridge {bname} overlaps subnet {} of {oname}",
                                n.trunc(),
                                other.trunc()
                            ),
                        );
                    }
                }
                subnets.push((n, format!("bridge {bname}"), a.span()));
                if let Some(prev) = used_ips.insert(n.addr(), format!("bridge {bname}")) {
                    ctx.at(
                        a.span(),
                        format!("address {} is already used by {prev}", n.addr()),
                    );
                }
                addrs.push(n);
            }
        }
        let ageing = match &b.ageing_time {
            Some(a) if *a.get_ref() > 1_000_000 => {
                ctx.at(a.span(), "ageing_time is in seconds and at most 1000000");
                DEFAULT_AGEING_S
            }
            Some(a) => *a.get_ref(),
            None => DEFAULT_AGEING_S,
        };
        let mtu = check_mtu(ctx, &b.mtu);
        bridges.push(BridgeSpec {
            name: bname,
            addresses: addrs,
            ageing_time_s: ageing,
            mtu,
        });
    }

    let uplink = raw.uplink.as_ref().and_then(|u| {
        build_uplink(
            ctx,
            &raw,
            u,
            &name,
            &mut claim_ns,
            &mut claim_host_if,
            &mut subnets,
            &mut used_ips,
        )
    });

    let docker_rules = raw.docker_rules.as_ref().is_some_and(|d| *d.get_ref());
    if let Some(d) = &raw.docker_rules
        && *d.get_ref()
        && datapath == Datapath::Kernel
    {
        ctx.at(d.span(), "docker_rules need datapath = \"ebpf\"");
    }
    // What `HOSTIP` of a published port may be: an address the host
    // namespace has.
    let mut host_ips: Vec<Ipv4Addr> = uplink
        .iter()
        .map(|u: &UplinkSpec| u.address.addr())
        .collect();
    for b in &bridges {
        for a in &b.addresses {
            if let IpNet::V4(a) = a {
                host_ips.push(a.addr());
            }
        }
    }
    let mut claimed = PortClaims::new();

    let mut containers = Vec::new();
    let mut cnames = BTreeSet::new();
    for c in &raw.containers {
        let c = c.get_ref();
        let cname = c.name.get_ref().clone();
        if cname.is_empty() {
            ctx.at(c.name.span(), "container name is empty");
        }
        if !cnames.insert(cname.clone()) {
            ctx.at(
                c.name.span(),
                format!("container {cname:?} is defined twice"),
            );
        }
        let netns = match &c.netns {
            Some(n) => n.get_ref().clone(),
            None => format!("{name}-{cname}"),
        };
        let ns_span = c.netns.as_ref().map_or(c.name.span(), |n| n.span());
        claim_ns(ctx, &netns, ns_span, "a container");
        let ifname = c
            .ifname
            .as_ref()
            .map_or("eth0".to_string(), |s| s.get_ref().clone());
        if let Err(e) = check_ifname(&ifname) {
            ctx.at(c.ifname.as_ref().unwrap().span(), e);
        }
        let host_ifname = match &c.host_ifname {
            Some(h) => h.get_ref().clone(),
            None => default_host_ifname(&name, &cname),
        };
        let hspan = c.host_ifname.as_ref().map_or(c.name.span(), |h| h.span());
        claim_host_if(ctx, &host_ifname, hspan, format!("container {cname}"));

        let bridge = bridges.iter().find(|b| b.name == *c.bridge.get_ref());
        if bridge.is_none() {
            ctx.at(
                c.bridge.span(),
                format!(
                    "container {cname} refers to bridge {:?}, which is not defined",
                    c.bridge.get_ref()
                ),
            );
        }
        let mut addrs: Vec<IpNet> = Vec::new();
        for a in &c.addresses {
            let Some(n) = parse_net(ctx, a, "address") else {
                continue;
            };
            if let Some(b) = bridge {
                let same_family: Vec<&IpNet> = b
                    .addresses
                    .iter()
                    .filter(|x| is_v4(x) == is_v4(&n))
                    .collect();
                if !same_family.is_empty() && !same_family.iter().any(|bn| bn.contains(&n.addr())) {
                    let subs: Vec<String> =
                        same_family.iter().map(|s| s.trunc().to_string()).collect();
                    ctx.at(
                        a.span(),
                        format!(
                            "address {n} of container {cname} is outside bridge {}'s subnet {}",
                            b.name,
                            subs.join(", ")
                        ),
                    );
                    continue;
                }
            }
            if let IpNet::V4(v4) = n
                && v4.prefix_len() < 31
                && (v4.addr() == v4.network() || v4.addr() == v4.broadcast())
            {
                ctx.at(
                    a.span(),
                    format!("address {n} is the network or broadcast address of its subnet"),
                );
                continue;
            }
            if let Some(prev) = used_ips.insert(n.addr(), format!("container {cname}")) {
                ctx.at(
                    a.span(),
                    format!("address {} is already used by {prev}", n.addr()),
                );
            }
            addrs.push(n);
        }
        // Default gateway per family: the bridge's address, as Docker does.
        let mut gateways = Vec::new();
        match &c.gateway {
            Some(g) => {
                let list = match g.get_ref() {
                    OneOrMany::One(s) => vec![s.clone()],
                    OneOrMany::Many(v) => v.clone(),
                };
                for s in list {
                    if s == "none" {
                        continue;
                    }
                    if let Some(ip) = parse_ip(ctx, &s, g.span(), "gateway") {
                        if !addrs.iter().any(|n| n.contains(&ip)) {
                            ctx.at(
                                g.span(),
                                format!(
                                    "gateway {ip} of container {cname} is not in any of its subnets"
                                ),
                            );
                        } else if gateways
                            .iter()
                            .any(|x: &IpAddr| x.is_ipv4() == ip.is_ipv4())
                        {
                            ctx.at(g.span(), "at most one gateway per address family");
                        } else {
                            gateways.push(ip);
                        }
                    }
                }
            }
            None => {
                if let Some(b) = bridge {
                    for ba in &b.addresses {
                        if addrs.iter().any(|n| n.contains(&ba.addr()))
                            && !gateways
                                .iter()
                                .any(|x: &IpAddr| x.is_ipv4() == ba.addr().is_ipv4())
                        {
                            gateways.push(ba.addr());
                        }
                    }
                }
            }
        }
        let mac = c
            .mac
            .as_ref()
            .and_then(|m| match m.get_ref().parse::<Mac>() {
                Ok(mac) if mac.is_multicast() || mac.is_zero() => {
                    ctx.at(m.span(), format!("mac {mac} is not a unicast address"));
                    None
                }
                Ok(mac) => Some(mac),
                Err(e) => {
                    ctx.at(m.span(), e);
                    None
                }
            });
        // Docker's scheme: 02:42 and the IPv4 address, so the datapath knows
        // every container's MAC without asking its namespace.
        let mac = mac.unwrap_or_else(|| default_mac(&name, &cname, &addrs));
        let mtu = check_mtu(ctx, &c.mtu);
        let mut publish = Vec::new();
        if let Some(first) = c.publish.first() {
            if !docker_rules {
                ctx.at(
                    first.span(),
                    format!(
                        "container {cname} publishes ports, which needs docker_rules = true \
                         (published ports are Docker's DNAT rules)"
                    ),
                );
            }
            // (When an address did not parse, that is the problem to report.)
            if !addrs.iter().any(is_v4) && c.addresses.len() == addrs.len() {
                ctx.at(
                    first.span(),
                    format!(
                        "container {cname} publishes ports but has no IPv4 address to forward them to"
                    ),
                );
            }
        }
        for p in &c.publish {
            let span = p.span();
            let pm = match parse_publish(p.get_ref()) {
                Ok(pm) => pm,
                Err(e) => {
                    ctx.at(span, e);
                    continue;
                }
            };
            if let Some(ip) = pm.host_ip
                && !host_ips.contains(&ip)
            {
                let have: Vec<String> = host_ips.iter().map(|a| a.to_string()).collect();
                ctx.at(
                    span.clone(),
                    format!(
                        "publish {:?}: host address {ip} is not an address of the host namespace \
                         (it has {})",
                        p.get_ref(),
                        if have.is_empty() {
                            "none".to_string()
                        } else {
                            have.join(", ")
                        }
                    ),
                );
                continue;
            }
            let taken = claimed.entry((pm.proto, pm.host_port)).or_default();
            if let Some((_, by)) = taken
                .iter()
                .find(|(ip, _)| ip.is_none() || pm.host_ip.is_none() || *ip == pm.host_ip)
            {
                let by = if *by == cname {
                    "this container".to_string()
                } else {
                    format!("container {by}")
                };
                ctx.at(
                    span,
                    format!(
                        "host port {}/{} is already published by {by}",
                        pm.host_port,
                        pm.proto.name()
                    ),
                );
                continue;
            }
            taken.push((pm.host_ip, cname.clone()));
            publish.push(pm);
        }
        containers.push(ContainerSpec {
            name: cname,
            netns,
            bridge: c.bridge.get_ref().clone(),
            ifname,
            host_ifname,
            addresses: addrs,
            gateways,
            mac,
            mtu,
            // Docker without the userland proxy sets hairpin mode on every
            // port, so a container reaches its own published ports.
            hairpin: c.hairpin.unwrap_or(docker_rules),
            publish,
        });
    }

    let mut routes = Vec::new();
    for r in &raw.routes {
        let r = r.get_ref();
        let netns = r.netns.as_ref().map(|n| n.get_ref().clone());
        // Which interfaces exist in the route's namespace, from the file.
        let devs: Option<Vec<String>> = match &netns {
            None => Some(host_ifnames.keys().cloned().collect()),
            Some(n) if raw.host_netns.as_ref().map(|h| h.get_ref()) == Some(n) => {
                Some(host_ifnames.keys().cloned().collect())
            }
            Some(n) => {
                if let Some(c) = containers.iter().find(|c| c.netns == *n) {
                    Some(vec![c.ifname.clone(), "lo".into()])
                } else if let Some(u) = uplink.as_ref().filter(|u| u.outside_netns == *n) {
                    Some(vec![u.outside_ifname.clone(), "lo".into()])
                } else if namespaces.iter().any(|x| x.name == *n) {
                    // Devices there come from outside the topology.
                    None
                } else {
                    ctx.at(
                        r.netns.as_ref().unwrap().span(),
                        format!(
                            "route refers to namespace {n:?}, which the topology does not define"
                        ),
                    );
                    None
                }
            }
        };
        let to = if r.to.get_ref() == "default" {
            let v6 = r.via.as_ref().is_some_and(|v| v.get_ref().contains(':'));
            Some(if v6 {
                "::/0".parse().unwrap()
            } else {
                "0.0.0.0/0".parse().unwrap()
            })
        } else {
            parse_net(ctx, &r.to, "route destination").map(|n| n.trunc())
        };
        let via = r
            .via
            .as_ref()
            .and_then(|v| parse_ip(ctx, v.get_ref(), v.span(), "gateway"));
        if let (Some(to), Some(via)) = (to, via)
            && to.addr().is_ipv4() != via.is_ipv4()
        {
            ctx.at(
                r.via.as_ref().unwrap().span(),
                format!("gateway {via} is not of the same family as {to}"),
            );
        }
        if let Some(d) = &r.dev {
            if let Err(e) = check_ifname(d.get_ref()) {
                ctx.at(d.span(), e);
            } else if let Some(devs) = &devs
                && !devs.contains(d.get_ref())
            {
                ctx.at(
                    d.span(),
                    format!(
                        "route refers to device {:?}, which the topology does not define in that namespace",
                        d.get_ref()
                    ),
                );
            }
        }
        if r.via.is_none() && r.dev.is_none() {
            ctx.at(r.to.span(), "a route needs `via`, `dev` or both");
        }
        let table = match &r.table {
            None => RT_TABLE_MAIN,
            Some(t) => match t.get_ref() {
                TableRef::Id(0) => {
                    ctx.at(t.span(), "table 0 is not a routing table");
                    RT_TABLE_MAIN
                }
                TableRef::Id(RT_TABLE_LOCAL) => {
                    ctx.at(
                        t.span(),
                        "the local table is the kernel's; routes cannot be added to it",
                    );
                    RT_TABLE_MAIN
                }
                TableRef::Id(n) => *n,
                TableRef::Name(s) if s == "main" => RT_TABLE_MAIN,
                TableRef::Name(s) => {
                    ctx.at(t.span(), format!("table {s:?} is not \"main\" or a number"));
                    RT_TABLE_MAIN
                }
            },
        };
        if let Some(to) = to {
            routes.push(RouteEntry {
                netns,
                to,
                via,
                dev: r.dev.as_ref().map(|d| d.get_ref().clone()),
                table,
                metric: r.metric,
            });
        }
    }
    let mut seen_routes = BTreeSet::new();
    for (i, r) in routes.iter().enumerate() {
        let span = raw.routes[i].get_ref().to.span();
        if !seen_routes.insert((r.netns.clone(), r.to, r.table, r.metric)) {
            ctx.at(span.clone(), format!("route to {} is defined twice", r.to));
        }
        let in_host =
            r.netns.is_none() || r.netns == raw.host_netns.as_ref().map(|h| h.get_ref().clone());
        if uplink.is_some()
            && in_host
            && r.to == "0.0.0.0/0".parse::<IpNet>().unwrap()
            && r.table == RT_TABLE_MAIN
            && r.metric.is_none()
        {
            ctx.at(
                span,
                "the host namespace's default route is the uplink's (set its `gateway` instead)",
            );
        }
    }

    if let Some(r) = &raw.rules {
        if datapath == Datapath::Kernel {
            ctx.at(r.span(), "rules need datapath = \"ebpf\"".to_string());
        } else if !docker_rules && let Err(e) = crate::rules::parse::parse(r.get_ref()) {
            ctx.at(r.span(), format!("rules: {e}"));
        }
    }

    let conntrack = conntrack_timeouts(ctx, raw.conntrack.as_ref(), datapath);

    let topo = Topology {
        name,
        host_netns: raw.host_netns.as_ref().map(|h| h.get_ref().clone()),
        ip_forward: raw.ip_forward.unwrap_or(true),
        datapath,
        attach,
        namespaces,
        bridges,
        containers,
        routes,
        rules: raw.rules.as_ref().map(|r| r.get_ref().clone()),
        uplink,
        docker_rules,
        conntrack,
    };
    if let Some(d) = raw.docker_rules.as_ref().filter(|_| docker_rules)
        && datapath == Datapath::Ebpf
        && check_generated
    {
        check_docker_rules(ctx, &topo, d.span(), raw.rules.as_ref().map(|r| r.span()));
    }
    topo
}

/// Docker's rules with the file's merged in must make a valid ruleset. A
/// problem in the file's `rules` is reported at its line there; one in a
/// generated line only when nothing else is wrong (otherwise it is likely a
/// consequence, e.g. of a bad interface name).
fn check_docker_rules(
    ctx: &mut Ctx,
    t: &Topology,
    docker_span: Range<usize>,
    rules_span: Option<Range<usize>>,
) {
    let clean = ctx.problems.is_empty();
    let merged = super::docker::merge(&super::docker::rules(t), t.rules.as_deref().unwrap_or(""));
    let Err(e) = crate::rules::parse::parse(&merged.text) else {
        return;
    };
    match merged.locate(&e) {
        super::docker::Located::User(line, msg) => ctx.at(
            rules_span.unwrap_or(docker_span),
            format!("rules: line {line}: {msg}"),
        ),
        super::docker::Located::Generated(line, msg) if clean => ctx.at(
            docker_span,
            format!("docker_rules: the generated rule `{line}` is refused: {msg}"),
        ),
        super::docker::Located::Nowhere(msg) if clean => ctx.at(
            rules_span.unwrap_or(docker_span),
            format!("rules (merged after docker_rules): {msg}"),
        ),
        _ => {}
    }
}

/// The `[uplink]` table: a veth from the host namespace to an outside
/// namespace the topology owns.
#[allow(clippy::too_many_arguments)]
fn build_uplink(
    ctx: &mut Ctx,
    raw: &RawTopology,
    u: &Spanned<RawUplink>,
    topology: &str,
    claim_ns: &mut impl FnMut(&mut Ctx, &str, Range<usize>, &'static str),
    claim_host_if: &mut impl FnMut(&mut Ctx, &str, Range<usize>, String),
    subnets: &mut Vec<(IpNet, String, Range<usize>)>,
    used_ips: &mut BTreeMap<IpAddr, String>,
) -> Option<UplinkSpec> {
    let u = u.get_ref();
    if raw.host_netns.is_none() {
        ctx.at(
            u.name.span(),
            "an uplink needs host_netns: the host namespace gets a default route through it, \
             which must not replace the default route of the namespace netctl runs in",
        );
    }
    let name = u.name.get_ref().clone();
    claim_host_if(ctx, &name, u.name.span(), "the uplink".to_string());
    let address = parse_host_v4(ctx, &u.address, "uplink address");
    if let Some(a) = address {
        let n = IpNet::V4(a);
        for (other, oname, _) in subnets.iter() {
            if other.trunc().contains(&n.trunc().network())
                || n.trunc().contains(&other.trunc().network())
            {
                ctx.at(
                    u.address.span(),
                    format!(
                        "subnet {} of the uplink overlaps subnet {} of {oname}",
                        n.trunc(),
                        other.trunc()
                    ),
                );
            }
        }
        subnets.push((n, "the uplink".into(), u.address.span()));
        if let Some(prev) = used_ips.insert(n.addr(), "the uplink".into()) {
            ctx.at(
                u.address.span(),
                format!("address {} is already used by {prev}", n.addr()),
            );
        }
    }
    let mut outside = parse_host_v4(ctx, &u.outside_address, "outside_address");
    if let (Some(a), Some(o)) = (address, outside) {
        if o.trunc() != a.trunc() {
            ctx.at(
                u.outside_address.span(),
                format!(
                    "outside_address {o} is not on the uplink's subnet {} (same prefix length too)",
                    a.trunc()
                ),
            );
            outside = None;
        } else if o.addr() == a.addr() {
            ctx.at(
                u.outside_address.span(),
                format!("outside_address {} is the uplink's own address", o.addr()),
            );
            outside = None;
        }
    }
    let gateway = match &u.gateway {
        None => outside.map(|o| o.addr()),
        Some(g) => match parse_ip(ctx, g.get_ref(), g.span(), "uplink gateway") {
            Some(IpAddr::V4(gw)) => match address {
                Some(a) if !a.trunc().contains(&gw) || gw == a.network() || gw == a.broadcast() => {
                    ctx.at(
                        g.span(),
                        format!(
                            "uplink gateway {gw} is not a host on the uplink's subnet {}",
                            a.trunc()
                        ),
                    );
                    None
                }
                Some(a) if gw == a.addr() => {
                    ctx.at(
                        g.span(),
                        format!("uplink gateway {gw} is the uplink's own address"),
                    );
                    None
                }
                _ => Some(gw),
            },
            Some(IpAddr::V6(gw)) => {
                ctx.at(
                    g.span(),
                    format!("uplink gateway {gw} is not IPv4 (the uplink is IPv4 only)"),
                );
                None
            }
            None => None,
        },
    };
    let (outside_netns, ns_span) = match &u.outside_netns {
        Some(n) => (n.get_ref().clone(), n.span()),
        None => (format!("{topology}-outside"), u.name.span()),
    };
    claim_ns(ctx, &outside_netns, ns_span, "the uplink's outside_netns");
    let outside_ifname = match &u.outside_ifname {
        Some(i) => {
            if let Err(e) = check_ifname(i.get_ref()) {
                ctx.at(i.span(), e);
            }
            i.get_ref().clone()
        }
        None => "eth0".to_string(),
    };
    Some(UplinkSpec {
        name,
        address: address?,
        outside_netns,
        outside_ifname,
        outside_address: outside?,
        gateway: gateway?,
    })
}

/// `[conntrack]`: timeouts in seconds, by the kernel's sysctl names
/// (`net.netfilter.nf_conntrack_<name>`), for the eBPF datapath's
/// conntrack.
fn conntrack_timeouts(
    ctx: &mut Ctx,
    raw: Option<&Spanned<BTreeMap<String, Spanned<i64>>>>,
    datapath: Datapath,
) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    let Some(table) = raw else {
        return out;
    };
    if datapath == Datapath::Kernel {
        ctx.at(
            table.span(),
            "[conntrack] sets the eBPF datapath's timeouts: it needs datapath = \"ebpf\"",
        );
    }
    let known: Vec<&str> = netctl_common::ct_timeout::NAMES
        .iter()
        .copied()
        .filter(|n| !n.is_empty())
        .collect();
    for (name, v) in table.get_ref() {
        if !known.contains(&name.as_str()) {
            ctx.at(
                table.span(),
                format!(
                    "unknown conntrack timeout {name:?} (known: {})",
                    known.join(", ")
                ),
            );
            continue;
        }
        match u32::try_from(*v.get_ref()) {
            Ok(secs) if secs > 0 => {
                out.insert(name.clone(), secs);
            }
            _ => ctx.at(
                v.span(),
                format!(
                    "conntrack {name} must be a number of seconds from 1 to {}",
                    u32::MAX
                ),
            ),
        }
    }
    out
}

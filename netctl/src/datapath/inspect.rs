//! Reading a pinned datapath back: maps listed and decoded (MACs, interface
//! names, ages, prefixes — not hex), FDB, per-decision and per-port stats,
//! conntrack and the compiled ruleset's classifier maps.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuHashMap};
use netctl_common::{
    CtEntry, CtKey, FdbEntry, FdbKey, IfCounters, MAP_CONFIG, MAP_CT, MAP_FDB, MAP_FDB_GEN,
    MAP_FLOW_STATS, MAP_NEIGH, MAP_PORT_INDEX, MAP_PORT_STATS, MAP_PORTS, MAP_ROUTES, MAP_RS_CLASS,
    MAP_RS_COUNTERS, MAP_RS_COUNTERS_LOW, MAP_RS_ENTRIES, MAP_RS_HOOKS, MAP_RS_LOG, MAP_RS_SUMMARY,
    MAP_RS_WORDS, MAP_STATS, MAP_XDP_STATS, NeighEntry, PORT_F_HAIRPIN, PortInfo, PortStats,
    RS_CLASS_WILD, RS_ENTRIES_MAX, RS_LOG_LEN, RS_LOG_MAX, RS_NO_SLOT, RS_SLOTS_LOW, RouteValue,
    RsHook, RsSummary, RsWordKey, RuleEntry, STATS_STEADY_RETIRED, config, ct_flag, ctbit, entry,
    field, flow_stat, hook, reason, reject, route_kind, tcp_state,
};
use netctl_common::{
    MAP_CT_NAT, MAP_CT_TIMEOUTS, MAP_IFADDR, MAP_NAT_SRC, MAP_RS_NAT, NatSrc, NatSrcKey,
    RS_NAT_MAX, RsNat, ct_timeout, nat_bit, nat_kind, nat_range,
};
use serde::Serialize;

use super::bpf_error;
use super::conntrack::{PROTO_ICMP, PROTO_TCP, PROTO_UDP, Timeouts, proto_name};
use super::pins::{self, topology_dir};
use crate::error::{Error, Result};
use crate::mac::Mac;

fn open_data(topology: &str, name: &str) -> Result<MapData> {
    let p = topology_dir(topology).join(name);
    if !p.exists() {
        return Err(Error::Invalid(format!(
            "topology {topology} has no map {name} (is its eBPF datapath attached?)"
        )));
    }
    MapData::from_pin(&p).map_err(|e| bpf_error(&format!("open {}", p.display()), &e))
}

fn open(topology: &str, name: &str) -> Result<Map> {
    Map::from_map_data(open_data(topology, name)?).map_err(|e| bpf_error(name, &e))
}

fn me(what: &str) -> impl Fn(aya::maps::MapError) -> Error + '_ {
    move |e| bpf_error(what, &e)
}

#[derive(Debug, Serialize)]
pub struct MapSummary {
    pub topology: String,
    pub name: String,
    pub kind: String,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub entries: usize,
}

/// Every pinned map of every topology (or of one).
pub fn list(only: Option<&str>) -> Result<Vec<MapSummary>> {
    let mut out = Vec::new();
    for t in pins::topologies()? {
        if only.is_some_and(|o| o != t) {
            continue;
        }
        // The live ruleset's entries, read once for the maps that need them.
        let mut live = None;
        for name in pins::map_pins(&t)? {
            let md = open_data(&t, &name)?;
            let info = md.info().map_err(me(&name))?;
            let kind = info
                .map_type()
                .map(|k| format!("{k:?}"))
                .unwrap_or_else(|_| "unknown".into());
            // Every map is one of ours, so decoding it counts it.
            let entries = dump_in(&t, &name, &Names::new(), &mut live)?.len();
            out.push(MapSummary {
                topology: t.clone(),
                name,
                kind,
                key_size: info.key_size(),
                value_size: info.value_size(),
                max_entries: info.max_entries(),
                entries,
            });
        }
    }
    Ok(out)
}

/// Ifindex → name in the topology's host namespace.
pub type Names = BTreeMap<u32, String>;

fn name_of(names: &Names, i: u32) -> String {
    names.get(&i).cloned().unwrap_or_else(|| format!("if{i}"))
}

pub fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("monotonic clock");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

#[derive(Debug, Serialize)]
pub struct PortRow {
    pub ifindex: u32,
    pub port: String,
    pub bridge: String,
    pub bridge_mac: Mac,
    pub ageing_s: u64,
    pub hairpin: bool,
}

#[derive(Debug, Serialize)]
pub struct FdbRow {
    pub bridge: String,
    pub mac: Mac,
    pub port: String,
    pub age_s: f64,
    pub expired: bool,
}

#[derive(Debug, Serialize)]
pub struct RouteRow {
    pub prefix: String,
    pub kind: &'static str,
    pub bridge: Option<String>,
    pub gateway: Option<Ipv4Addr>,
}

#[derive(Debug, Serialize)]
pub struct NeighRow {
    pub address: Ipv4Addr,
    pub mac: Mac,
    pub bridge: String,
}

#[derive(Debug, Serialize)]
pub struct PortStatsRow {
    pub port: String,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub redirected: u64,
    /// Of `redirected`, the frames of steady bridged flows, which the
    /// datapath judged from what it remembered of the flow's last frame.
    pub steady_l2: u64,
    pub passed: u64,
}

#[derive(Debug, Serialize)]
pub struct Stats {
    pub decisions: BTreeMap<&'static str, u64>,
    /// The rule classifier's flow cache: walks replayed, missed, stored.
    pub flow_cache: BTreeMap<&'static str, u64>,
    pub ports: Vec<PortStatsRow>,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Dump {
    Ports(Vec<PortRow>),
    Fdb(Vec<FdbRow>),
    Routes(Vec<RouteRow>),
    Neigh(Vec<NeighRow>),
    Decisions(BTreeMap<&'static str, u64>),
    PortStats(Vec<PortStatsRow>),
    Config(BTreeMap<&'static str, u32>),
    IfCounters(Vec<(String, u64, u64)>),
    Conntrack(Vec<CtRow>),
    RsHooks(Vec<HookRow>),
    RsEntries(Vec<EntryRow>),
    RsClass(Vec<ClassRow>),
    RsSummary(Vec<SummaryRow>),
    RsWords(Vec<WordRow>),
    RsLog(Vec<LogRow>),
    RsCounters(Vec<CounterRow>),
    CtNat(Vec<CtNatRow>),
    NatSrc(Vec<NatSrcRow>),
    RsNat(Vec<NatRow>),
    IfAddr(Vec<IfAddrRow>),
}

impl Dump {
    /// Entries (rows) of the decoded map.
    pub fn len(&self) -> usize {
        match self {
            Dump::Ports(v) => v.len(),
            Dump::Fdb(v) => v.len(),
            Dump::Routes(v) => v.len(),
            Dump::Neigh(v) => v.len(),
            Dump::Decisions(m) => m.len(),
            Dump::PortStats(v) => v.len(),
            Dump::Config(m) => m.len(),
            Dump::IfCounters(v) => v.len(),
            Dump::Conntrack(v) => v.len(),
            Dump::RsHooks(v) => v.len(),
            Dump::RsEntries(v) => v.len(),
            Dump::RsClass(v) => v.len(),
            Dump::RsSummary(v) => v.len(),
            Dump::RsWords(v) => v.len(),
            Dump::RsLog(v) => v.len(),
            Dump::RsCounters(v) => v.len(),
            Dump::CtNat(v) => v.len(),
            Dump::NatSrc(v) => v.len(),
            Dump::RsNat(v) => v.len(),
            Dump::IfAddr(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn port_row(names: &Names, ifindex: u32, p: &PortInfo) -> PortRow {
    PortRow {
        ifindex,
        port: name_of(names, ifindex),
        bridge: name_of(names, p.bridge),
        bridge_mac: Mac(p.bridge_mac),
        ageing_s: p.ageing_ns / 1_000_000_000,
        hairpin: p.flags & PORT_F_HAIRPIN != 0,
    }
}

pub fn ports(topology: &str, names: &Names) -> Result<Vec<PortRow>> {
    let m: HashMap<MapData, u32, PortInfo> =
        HashMap::try_from(open(topology, MAP_PORTS)?).map_err(me(MAP_PORTS))?;
    let mut v: Vec<PortRow> = m
        .iter()
        .filter_map(|r| r.ok())
        .map(|(i, p)| port_row(names, i, &p))
        .collect();
    v.sort_by(|a, b| a.port.cmp(&b.port));
    Ok(v)
}

/// The direct-mapped copy of the ports (`NETCTL_PORT_INDEX`): the ports
/// the datapath finds without a hash lookup.
pub fn port_index(topology: &str, names: &Names) -> Result<Vec<PortRow>> {
    let m: Array<MapData, PortInfo> =
        Array::try_from(open(topology, MAP_PORT_INDEX)?).map_err(me(MAP_PORT_INDEX))?;
    let mut v: Vec<PortRow> = m
        .iter()
        .filter_map(|r| r.ok())
        .filter(|p| p.ifindex != 0)
        .map(|p| port_row(names, p.ifindex, &p))
        .collect();
    v.sort_by(|a, b| a.port.cmp(&b.port));
    Ok(v)
}

pub fn fdb(topology: &str, names: &Names) -> Result<Vec<FdbRow>> {
    let ageing: BTreeMap<u32, u64> = {
        let m: HashMap<MapData, u32, PortInfo> =
            HashMap::try_from(open(topology, MAP_PORTS)?).map_err(me(MAP_PORTS))?;
        m.iter()
            .filter_map(|r| r.ok())
            .map(|(_, p)| (p.bridge, p.ageing_ns))
            .collect()
    };
    let m: HashMap<MapData, FdbKey, FdbEntry> =
        HashMap::try_from(open(topology, MAP_FDB)?).map_err(me(MAP_FDB))?;
    let now = monotonic_ns();
    let mut v: Vec<FdbRow> = m
        .iter()
        .filter_map(|r| r.ok())
        .map(|(k, e)| {
            let age = now.saturating_sub(e.last_seen_ns);
            FdbRow {
                bridge: name_of(names, k.bridge),
                mac: Mac(k.mac),
                port: name_of(names, e.port),
                age_s: (age / 10_000_000) as f64 / 100.0,
                expired: ageing.get(&k.bridge).is_some_and(|a| age > *a),
            }
        })
        .collect();
    v.sort_by(|a, b| (&a.bridge, a.mac).cmp(&(&b.bridge, b.mac)));
    Ok(v)
}

pub fn routes(topology: &str, names: &Names) -> Result<Vec<RouteRow>> {
    let m: LpmTrie<MapData, [u8; 4], RouteValue> =
        LpmTrie::try_from(open(topology, MAP_ROUTES)?).map_err(me(MAP_ROUTES))?;
    let mut v: Vec<(u32, [u8; 4], RouteRow)> = m
        .iter()
        .filter_map(|r| r.ok())
        .map(|(k, r)| {
            let kind = match r.kind {
                route_kind::CONNECTED => "connected",
                route_kind::GATEWAY => "gateway",
                route_kind::LOCAL => "local",
                _ => "kernel",
            };
            let owned = matches!(r.kind, route_kind::CONNECTED | route_kind::GATEWAY);
            (
                k.prefix_len(),
                k.data(),
                RouteRow {
                    prefix: format!("{}/{}", Ipv4Addr::from(k.data()), k.prefix_len()),
                    kind,
                    bridge: owned.then(|| name_of(names, r.bridge)),
                    gateway: (r.kind == route_kind::GATEWAY).then(|| Ipv4Addr::from(r.gateway)),
                },
            )
        })
        .collect();
    v.sort_by_key(|a| (a.1, a.0));
    Ok(v.into_iter().map(|x| x.2).collect())
}

pub fn neigh(topology: &str, names: &Names) -> Result<Vec<NeighRow>> {
    let m: HashMap<MapData, [u8; 4], NeighEntry> =
        HashMap::try_from(open(topology, MAP_NEIGH)?).map_err(me(MAP_NEIGH))?;
    let mut v: Vec<NeighRow> = m
        .iter()
        .filter_map(|r| r.ok())
        .map(|(k, n)| NeighRow {
            address: Ipv4Addr::from(k),
            mac: Mac(n.mac),
            bridge: name_of(names, n.bridge),
        })
        .collect();
    v.sort_by_key(|r| r.address);
    Ok(v)
}

pub fn decisions(topology: &str) -> Result<BTreeMap<&'static str, u64>> {
    let mut out = named_counts(topology, MAP_STATS, &reason::NAMES)?;
    let steady = steady_l2(topology)?;
    *out.entry(reason::NAMES[reason::REDIRECT_L2 as usize])
        .or_default() += steady;
    Ok(out)
}

/// The `REDIRECT_L2` decisions counted outside `MAP_STATS`: in the values
/// of the ports (`PortStats::steady_l2`), and for ports that are gone in
/// `STATS_STEADY_RETIRED`.
fn steady_l2(topology: &str) -> Result<u64> {
    let ports: HashMap<MapData, u32, PortInfo> =
        HashMap::try_from(open(topology, MAP_PORTS)?).map_err(me(MAP_PORTS))?;
    let m: PerCpuArray<MapData, PortStats> =
        PerCpuArray::try_from(open(topology, MAP_PORT_STATS)?).map_err(me(MAP_PORT_STATS))?;
    let mut total = 0u64;
    for (_, p) in ports.iter().filter_map(|r| r.ok()) {
        let per_cpu = m.get(&u32::from(p.slot), 0).map_err(me(MAP_PORT_STATS))?;
        total += per_cpu.iter().map(|s| s.steady_l2).sum::<u64>();
    }
    let stats: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(open(topology, MAP_STATS)?).map_err(me(MAP_STATS))?;
    let retired = stats.get(&STATS_STEADY_RETIRED, 0).map_err(me(MAP_STATS))?;
    Ok(total + retired.iter().sum::<u64>())
}

/// The rule classifier's flow cache counters (hit, miss, stored).
pub fn flow_stats(topology: &str) -> Result<BTreeMap<&'static str, u64>> {
    named_counts(topology, MAP_FLOW_STATS, &flow_stat::NAMES)
}

/// A per-CPU array of counters whose indexes are named by `names`,
/// summed over CPUs.
fn named_counts(
    topology: &str,
    map: &str,
    names: &[&'static str],
) -> Result<BTreeMap<&'static str, u64>> {
    let m: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(open(topology, map)?).map_err(me(map))?;
    let mut out = BTreeMap::new();
    for (i, name) in (0u32..).zip(names) {
        let per_cpu = m.get(&i, 0).map_err(me(map))?;
        out.insert(*name, per_cpu.iter().sum());
    }
    Ok(out)
}

pub fn port_stats(topology: &str, names: &Names) -> Result<Vec<PortStatsRow>> {
    let ports: HashMap<MapData, u32, PortInfo> =
        HashMap::try_from(open(topology, MAP_PORTS)?).map_err(me(MAP_PORTS))?;
    let m: PerCpuArray<MapData, PortStats> =
        PerCpuArray::try_from(open(topology, MAP_PORT_STATS)?).map_err(me(MAP_PORT_STATS))?;
    let mut v = Vec::new();
    for (i, p) in ports.iter().filter_map(|r| r.ok()) {
        let per_cpu = m.get(&u32::from(p.slot), 0).map_err(me(MAP_PORT_STATS))?;
        let mut row = PortStatsRow {
            port: name_of(names, i),
            rx_packets: 0,
            rx_bytes: 0,
            redirected: 0,
            steady_l2: 0,
            passed: 0,
        };
        for s in per_cpu.iter() {
            // Frames of steady flows count in `steady_l2` only.
            row.rx_packets += s.rx_packets + s.steady_l2;
            row.rx_bytes += s.rx_bytes;
            row.redirected += s.redirected + s.steady_l2;
            row.steady_l2 += s.steady_l2;
        }
        // Each CPU counts a frame and its outcome in one run, but this
        // read may fall between the two.
        row.passed = row.rx_packets.saturating_sub(row.redirected);
        v.push(row);
    }
    v.sort_by(|a, b| a.port.cmp(&b.port));
    Ok(v)
}

pub fn stats(topology: &str, names: &Names) -> Result<Stats> {
    Ok(Stats {
        decisions: decisions(topology)?,
        flow_cache: flow_stats(topology)?,
        ports: port_stats(topology, names)?,
    })
}

pub fn config_values(topology: &str) -> Result<BTreeMap<&'static str, u32>> {
    let m: Array<MapData, u32> =
        Array::try_from(open(topology, MAP_CONFIG)?).map_err(me(MAP_CONFIG))?;
    Ok(BTreeMap::from([
        ("trace", m.get(&config::TRACE, 0).map_err(me(MAP_CONFIG))?),
        (
            "forward",
            m.get(&config::FORWARD, 0).map_err(me(MAP_CONFIG))?,
        ),
        (
            "rules_serial",
            m.get(&config::RULES_SERIAL, 0).map_err(me(MAP_CONFIG))?,
        ),
        (
            "rules_on",
            m.get(&config::RULES_ON, 0).map_err(me(MAP_CONFIG))?,
        ),
        ("layout", m.get(&config::LAYOUT, 0).map_err(me(MAP_CONFIG))?),
    ]))
}

/// The FDB generation, as its two counts: netctl's map writes (high half)
/// and the datapath's MAC moves (low half, modulo 2^32).
pub fn fdb_generation(topology: &str) -> Result<BTreeMap<&'static str, u32>> {
    let m: Array<MapData, u64> =
        Array::try_from(open(topology, MAP_FDB_GEN)?).map_err(me(MAP_FDB_GEN))?;
    let g = m.get(&0, 0).map_err(me(MAP_FDB_GEN))?;
    Ok(BTreeMap::from([
        ("map_writes", (g >> 32) as u32),
        ("mac_moves", g as u32),
    ]))
}

/// The conntrack timeouts the datapath uses, seconds by the kernel's
/// names (the two states without one by their own).
pub fn ct_timeouts(topology: &str) -> BTreeMap<&'static str, u32> {
    let t = Timeouts::read(&super::pins::topology_dir(topology));
    ct_timeout::NAMES
        .iter()
        .zip(t.0)
        .enumerate()
        .map(|(i, (n, secs))| {
            let name = match (i, *n) {
                (0, _) => "tcp_timeout_none",
                (_, "") => "tcp_timeout_syn_sent2",
                (_, n) => n,
            };
            (name, secs)
        })
        .collect()
}

pub fn set_config(topology: &str, index: u32, value: u32) -> Result<()> {
    let mut m: Array<MapData, u32> =
        Array::try_from(open(topology, MAP_CONFIG)?).map_err(me(MAP_CONFIG))?;
    m.set(index, value, 0).map_err(me(MAP_CONFIG))?;
    // Tracing (and the rules) must see every frame again: see
    // `invalidate_remembered`.
    if value != 0 {
        super::install::wait_for_program_runs()?;
    }
    super::install::invalidate_remembered(&topology_dir(topology))
}

fn xdp_counters(topology: &str, names: &Names) -> Result<Vec<(String, u64, u64)>> {
    let m: PerCpuHashMap<MapData, u32, IfCounters> =
        PerCpuHashMap::try_from(open(topology, MAP_XDP_STATS)?).map_err(me(MAP_XDP_STATS))?;
    Ok(m.iter()
        .filter_map(|r| r.ok())
        .map(|(i, per_cpu)| {
            let s = per_cpu.iter().fold(IfCounters::default(), |a, c| a.add(*c));
            (name_of(names, i), s.packets, s.bytes)
        })
        .collect())
}

// ---------------------------------------------------------------------------
// Connection tracking.
// ---------------------------------------------------------------------------

/// One direction of a connection. `sport`/`dport` are set for TCP and UDP,
/// `id` (the echo identifier) for ICMP.
#[derive(Debug, Serialize)]
pub struct CtTuple {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u16>,
}

impl std::fmt::Display for CtTuple {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.sport, self.dport, self.id) {
            (Some(s), Some(d), _) => write!(f, "{}:{s} -> {}:{d}", self.src, self.dst),
            (_, _, Some(i)) => write!(f, "{} -> {} id {i}", self.src, self.dst),
            _ => write!(f, "{} -> {}", self.src, self.dst),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct CtRow {
    pub protocol: String,
    pub original: CtTuple,
    pub reply: CtTuple,
    /// The TCP state; `[unreplied]` or `seen reply` for other protocols.
    pub state: String,
    pub seen_reply: bool,
    pub age_s: f64,
    /// Seconds before the entry times out (0 once it has).
    pub timeout_s: f64,
    /// Timed out: the datapath treats the connection as gone (the LRU
    /// keeps the element until it is reused).
    pub expired: bool,
    pub orig_packets: u64,
    pub orig_bytes: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
    /// The translation applied: `snat`, `dnat` or `snat+dnat`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nat: Option<String>,
}

fn ct_row(k: &CtKey, e: &CtEntry, now: u64, t: &Timeouts) -> CtRow {
    let (a, b) = (
        (Ipv4Addr::from(k.a_addr), k.a_port),
        (Ipv4Addr::from(k.b_addr), k.b_port),
    );
    // The key is in canonical order; the entry says who opened it.
    let orig_is_a = e.orig_addr == k.a_addr && e.orig_port == k.a_port;
    let (o, r) = if orig_is_a { (a, b) } else { (b, a) };
    // An ICMP query's identifier is its "port" on both ends; translated,
    // the originator's end carries the new one.
    let tuple = |s: (Ipv4Addr, u16), d: (Ipv4Addr, u16), id: u16| {
        let ports = matches!(k.proto, PROTO_TCP | PROTO_UDP);
        CtTuple {
            src: s.0,
            dst: d.0,
            sport: ports.then_some(s.1),
            dport: ports.then_some(d.1),
            id: (k.proto == PROTO_ICMP).then_some(id),
        }
    };
    let seen_reply = e.flags & ct_flag::SEEN_REPLY != 0;
    let state = if e.flags & ct_flag::UNCONFIRMED != 0 {
        "unconfirmed".into()
    } else if k.proto == PROTO_TCP {
        tcp_state::NAMES
            .get(usize::from(e.tcp_state))
            .map_or_else(|| format!("state{}", e.tcp_state), |n| (*n).to_string())
    } else if seen_reply {
        "seen reply".into()
    } else {
        "[unreplied]".into()
    };
    let idle = now.saturating_sub(e.last_seen_ns);
    let timeout = t.ns(k.proto, e);
    let centis = |ns: u64| (ns / 10_000_000) as f64 / 100.0;
    // The reply tuple is the original one turned around, translated.
    let n = &e.nat;
    let o2 = if n.flags & nat_bit::SRC != 0 {
        (Ipv4Addr::from(n.snat_addr), n.snat_port)
    } else {
        o
    };
    let r2 = if n.flags & nat_bit::DST != 0 {
        (Ipv4Addr::from(n.dnat_addr), n.dnat_port)
    } else {
        r
    };
    let nat = match (n.flags & nat_bit::SRC != 0, n.flags & nat_bit::DST != 0) {
        (false, false) => None,
        (true, false) => Some("snat".to_string()),
        (false, true) => Some("dnat".to_string()),
        (true, true) => Some("snat+dnat".to_string()),
    };
    CtRow {
        protocol: proto_name(k.proto),
        original: tuple(o, r, o.1),
        reply: tuple(r2, o2, o2.1),
        nat,
        state,
        seen_reply,
        age_s: centis(now.saturating_sub(e.created_ns)),
        timeout_s: centis(timeout.saturating_sub(idle)),
        expired: idle > timeout,
        orig_packets: e.packets[0],
        orig_bytes: e.bytes[0],
        reply_packets: e.packets[1],
        reply_bytes: e.bytes[1],
    }
}

pub fn conntrack(topology: &str) -> Result<Vec<CtRow>> {
    let m: HashMap<MapData, CtKey, CtEntry> =
        HashMap::try_from(open(topology, MAP_CT)?).map_err(me(MAP_CT))?;
    let t = Timeouts::read(&super::pins::topology_dir(topology));
    let now = monotonic_ns();
    let mut v: Vec<(CtKey, CtRow)> = m
        .iter()
        .filter_map(|r| r.ok())
        .map(|(k, e)| (k, ct_row(&k, &e, now, &t)))
        .collect();
    v.sort_by_key(|(k, _)| (k.proto, k.a_addr, k.a_port, k.b_addr, k.b_port));
    Ok(v.into_iter().map(|x| x.1).collect())
}

// ---------------------------------------------------------------------------
// The compiled ruleset (see `netctl_common`'s "Netfilter rules, compiled").
// ---------------------------------------------------------------------------

const HOOK_NAMES: [&str; hook::COUNT as usize] =
    ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];
const FIELD_NAMES: [&str; field::COUNT as usize] = [
    "src", "dst", "proto", "sport", "dport", "icmp", "in", "out", "ctstate",
];
fn entry_name(k: u8) -> String {
    match k {
        entry::CONTINUE => "CONTINUE".into(),
        entry::LOG => "LOG".into(),
        entry::SKIP => "SKIP".into(),
        entry::DROP => "DROP".into(),
        entry::REJECT => "REJECT".into(),
        entry::NAT => "NAT".into(),
        n => format!("?{n}"),
    }
}

fn reject_name(r: u8) -> String {
    match r {
        reject::ICMP_PORT_UNREACHABLE => "icmp-port-unreachable".into(),
        reject::ICMP_NET_UNREACHABLE => "icmp-net-unreachable".into(),
        reject::ICMP_HOST_UNREACHABLE => "icmp-host-unreachable".into(),
        reject::ICMP_ADMIN_PROHIBITED => "icmp-admin-prohibited".into(),
        reject::TCP_RESET => "tcp-reset".into(),
        n => format!("?{n}"),
    }
}

const CTBIT_NAMES: [(u8, &str); 5] = [
    (ctbit::INVALID, "INVALID"),
    (ctbit::NEW, "NEW"),
    (ctbit::ESTABLISHED, "ESTABLISHED"),
    (ctbit::RELATED, "RELATED"),
    (ctbit::UNTRACKED, "UNTRACKED"),
];

fn name_in(table: &[&'static str], i: u8) -> String {
    table
        .get(usize::from(i))
        .map_or_else(|| format!("?{i}"), |n| (*n).to_string())
}

fn hook_name(h: u8) -> String {
    name_in(&HOOK_NAMES, h)
}

fn field_name(f: u8) -> String {
    name_in(&FIELD_NAMES, f)
}

/// The live ruleset generation: the low bit of `config::RULES_SERIAL`
/// (the datapath reads both from that one word).
pub fn live_generation(topology: &str) -> Result<u8> {
    let m: Array<MapData, u32> =
        Array::try_from(open(topology, MAP_CONFIG)?).map_err(me(MAP_CONFIG))?;
    let serial = m.get(&config::RULES_SERIAL, 0).map_err(me(MAP_CONFIG))?;
    Ok((serial & 1) as u8)
}

/// The ten hook headers, by index `gen * 5 + hook`.
fn hook_headers(topology: &str) -> Result<Vec<RsHook>> {
    let m: Array<MapData, RsHook> =
        Array::try_from(open(topology, MAP_RS_HOOKS)?).map_err(me(MAP_RS_HOOKS))?;
    (0..m.len().min(2 * u32::from(hook::COUNT)))
        .map(|i| m.get(&i, 0).map_err(me(MAP_RS_HOOKS)))
        .collect()
}

#[derive(Debug, Serialize)]
pub struct HookRow {
    pub generation: u8,
    pub live: bool,
    pub hook: String,
    pub entries: u32,
    /// The nat table's block `[nat_start, nat_end)` (empty when equal).
    pub nat_start: u32,
    pub nat_end: u32,
}

/// The hook headers that are not empty.
pub fn rs_hooks(topology: &str) -> Result<Vec<HookRow>> {
    let live = live_generation(topology)?;
    Ok(hook_headers(topology)?
        .into_iter()
        .enumerate()
        .filter(|(_, h)| *h != RsHook::default())
        .map(|(i, h)| {
            let generation = (i / usize::from(hook::COUNT)) as u8;
            HookRow {
                generation,
                live: generation == live,
                hook: hook_name((i % usize::from(hook::COUNT)) as u8),
                entries: h.entries,
                nat_start: h.nat_start,
                nat_end: h.nat_end,
            }
        })
        .collect())
}

/// The live generation and its entries, `(hook, index, entry)`.
struct Live {
    generation: u8,
    entries: Vec<(u8, u32, RuleEntry)>,
}

/// `cache`, read first if empty.
fn live<'a>(topology: &str, cache: &'a mut Option<Live>) -> Result<&'a Live> {
    if cache.is_none() {
        *cache = Some(live_entries(topology)?);
    }
    Ok(cache.as_ref().expect("filled above"))
}

/// The live generation's entries: only the `entries` of each of its hook
/// headers are read, never the whole array.
fn live_entries(topology: &str) -> Result<Live> {
    let g = live_generation(topology)?;
    let headers = hook_headers(topology)?;
    let m: Array<MapData, RuleEntry> =
        Array::try_from(open(topology, MAP_RS_ENTRIES)?).map_err(me(MAP_RS_ENTRIES))?;
    let mut out = Vec::new();
    for h in 0..hook::COUNT {
        let index = u32::from(g) * u32::from(hook::COUNT) + u32::from(h);
        let Some(hdr) = headers.get(index as usize) else {
            continue;
        };
        for i in 0..hdr.entries.min(RS_ENTRIES_MAX) {
            let e = m
                .get(&(index * RS_ENTRIES_MAX + i), 0)
                .map_err(me(MAP_RS_ENTRIES))?;
            out.push((h, i, e));
        }
    }
    Ok(Live {
        generation: g,
        entries: out,
    })
}

#[derive(Debug, Serialize)]
pub struct EntryRow {
    /// Always the live generation.
    pub generation: u8,
    pub hook: String,
    pub index: u32,
    pub kind: String,
    /// Where a SKIP goes on (the hook's entry count: accepted).
    pub target: Option<u32>,
    /// Counter slot (`None`: the entry counts nothing).
    pub slot: Option<u32>,
    /// `--reject-with` of a REJECT.
    pub reject: Option<String>,
    /// LOG prefix index (in the live generation) and the prefix.
    pub log: Option<u32>,
    pub log_prefix: Option<String>,
}

fn log_text(b: &[u8; RS_LOG_LEN]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(RS_LOG_LEN);
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// The live generation's entries, hook by hook.
pub fn rs_entries(topology: &str) -> Result<Vec<EntryRow>> {
    rs_entries_in(topology, live(topology, &mut None)?)
}

fn rs_entries_in(topology: &str, live: &Live) -> Result<Vec<EntryRow>> {
    let g = live.generation;
    let logs: Array<MapData, [u8; RS_LOG_LEN]> =
        Array::try_from(open(topology, MAP_RS_LOG)?).map_err(me(MAP_RS_LOG))?;
    let mut prefixes: BTreeMap<u32, String> = BTreeMap::new();
    let mut v = Vec::with_capacity(live.entries.len());
    for &(h, i, e) in &live.entries {
        let is_log = e.kind == entry::LOG;
        let log_prefix = if is_log && e.log < RS_LOG_MAX {
            let at = u32::from(g) * RS_LOG_MAX + e.log;
            if let std::collections::btree_map::Entry::Vacant(slot) = prefixes.entry(at) {
                slot.insert(log_text(&logs.get(&at, 0).map_err(me(MAP_RS_LOG))?));
            }
            prefixes.get(&at).cloned()
        } else {
            None
        };
        v.push(EntryRow {
            generation: g,
            hook: hook_name(h),
            index: i,
            kind: entry_name(e.kind),
            target: (e.kind == entry::SKIP).then_some(e.target),
            slot: (e.slot != RS_NO_SLOT).then_some(e.slot),
            reject: (e.kind == entry::REJECT).then(|| reject_name(e.reject)),
            log: is_log.then_some(e.log),
            log_prefix,
        });
    }
    Ok(v)
}

#[derive(Debug, Serialize)]
pub struct ClassRow {
    pub generation: u8,
    pub hook: String,
    pub field: String,
    /// The value, rendered per field: address/len, port or port range,
    /// protocol, ICMP type/code, interface name, conntrack states; `*` for
    /// the field's default (prefix length 0).
    pub value: String,
    /// Prefix length in the field's own bits.
    pub prefix_len: u32,
    pub class: u32,
}

/// `value` (the field's key left-aligned in 32 bits) under a prefix of
/// `len` of the field's bits, as the rule would spell it.
fn class_value(fld: u8, value: u32, len: u32, names: &Names) -> String {
    let width = field::WIDTH
        .get(usize::from(fld))
        .map_or(32, |w| u32::from(*w));
    let len = len.min(width);
    if matches!(fld, field::SRC | field::DST) {
        return format!("{}/{len}", Ipv4Addr::from(value));
    }
    if len == 0 {
        return "*".into();
    }
    let lo = value.checked_shr(32 - width).unwrap_or(0);
    let span = 1u64 << (width - len);
    let lo = lo & !((span - 1) as u32);
    let hi = (u64::from(lo) + span - 1) as u32;
    let range = |show: &dyn Fn(u32) -> String| {
        if lo == hi {
            show(lo)
        } else {
            format!("{}-{}", show(lo), show(hi))
        }
    };
    match fld {
        field::PROTO => range(&|p| match p as u8 {
            PROTO_ICMP | PROTO_TCP | PROTO_UDP => format!("{p} ({})", proto_name(p as u8)),
            _ => p.to_string(),
        }),
        field::SPORT | field::DPORT => range(&|p| p.to_string()),
        field::ICMP if len == 8 => format!("{}/*", lo >> 8),
        field::ICMP => range(&|t| format!("{}/{}", t >> 8, t & 0xff)),
        field::IN | field::OUT => range(&|i| {
            if i == 0 {
                "(none)".into()
            } else {
                name_of(names, i)
            }
        }),
        field::CTSTATE => {
            let states: Vec<&str> = CTBIT_NAMES
                .iter()
                .filter(|(b, _)| (lo..=hi).contains(&u32::from(*b)))
                .map(|(_, n)| *n)
                .collect();
            if states.is_empty() {
                range(&|b| b.to_string())
            } else {
                states.join(",")
            }
        }
        _ => range(&|x| x.to_string()),
    }
}

/// Sort order of classifier rows: generation, hook, field, then the
/// value (or class) and prefix length (or block).
type Order = (u8, u8, u8, u32, u32);

pub fn rs_class(topology: &str, names: &Names) -> Result<Vec<ClassRow>> {
    let m: LpmTrie<MapData, [u8; 8], u32> =
        LpmTrie::try_from(open(topology, MAP_RS_CLASS)?).map_err(me(MAP_RS_CLASS))?;
    let mut v: Vec<(Order, ClassRow)> = m
        .iter()
        .filter_map(|r| r.ok())
        .map(|(k, class)| {
            let d = k.data();
            let (g, h, f) = (d[0], d[1], d[2]);
            let value = u32::from_be_bytes([d[4], d[5], d[6], d[7]]);
            let len = k.prefix_len().saturating_sub(32);
            (
                (g, h, f, value, len),
                ClassRow {
                    generation: g,
                    hook: hook_name(h),
                    field: field_name(f),
                    value: class_value(f, value, len, names),
                    prefix_len: len,
                    class,
                },
            )
        })
        .collect();
    v.sort_by_key(|x| x.0);
    Ok(v.into_iter().map(|x| x.1).collect())
}

/// A class id, or `*` for the entries that do not constrain the field.
#[derive(Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(untagged)]
pub enum ClassId {
    Id(u32),
    Wild(&'static str),
}

impl ClassId {
    fn of(c: u32) -> Self {
        if c == RS_CLASS_WILD {
            ClassId::Wild("*")
        } else {
            ClassId::Id(c)
        }
    }
}

impl std::fmt::Display for ClassId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClassId::Id(c) => write!(f, "{c}"),
            ClassId::Wild(w) => f.write_str(w),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct SummaryRow {
    pub generation: u8,
    pub hook: String,
    pub field: String,
    pub class: ClassId,
    /// The 64-entry blocks that hold an entry of the class.
    pub blocks: Vec<u32>,
}

fn word_key_order(k: &RsWordKey) -> Order {
    (k.generation, k.hook, k.field, k.class, k.block)
}

pub fn rs_summary(topology: &str) -> Result<Vec<SummaryRow>> {
    let m: HashMap<MapData, RsWordKey, RsSummary> =
        HashMap::try_from(open(topology, MAP_RS_SUMMARY)?).map_err(me(MAP_RS_SUMMARY))?;
    let mut v: Vec<(RsWordKey, RsSummary)> = m.iter().filter_map(|r| r.ok()).collect();
    v.sort_by_key(|(k, _)| word_key_order(k));
    Ok(v.into_iter()
        .map(|(k, s)| SummaryRow {
            generation: k.generation,
            hook: hook_name(k.hook),
            field: field_name(k.field),
            class: ClassId::of(k.class),
            blocks: bits(&s.words, 0),
        })
        .collect())
}

/// The indexes of the set bits of `words`, counting from `base`.
fn bits(words: &[u64], base: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for (w, &word) in words.iter().enumerate() {
        let mut x = word;
        while x != 0 {
            let b = x.trailing_zeros();
            out.push(base + w as u32 * 64 + b);
            x &= x - 1;
        }
    }
    out
}

#[derive(Debug, Serialize)]
pub struct WordRow {
    pub generation: u8,
    pub hook: String,
    pub field: String,
    pub class: ClassId,
    pub block: u32,
    /// The entry indexes the word holds (`block * 64 + bit`).
    pub entries: Vec<u32>,
}

pub fn rs_words(topology: &str) -> Result<Vec<WordRow>> {
    let m: HashMap<MapData, RsWordKey, u64> =
        HashMap::try_from(open(topology, MAP_RS_WORDS)?).map_err(me(MAP_RS_WORDS))?;
    let mut v: Vec<(RsWordKey, u64)> = m.iter().filter_map(|r| r.ok()).collect();
    v.sort_by_key(|(k, _)| word_key_order(k));
    Ok(v.into_iter()
        .map(|(k, w)| WordRow {
            generation: k.generation,
            hook: hook_name(k.hook),
            field: field_name(k.field),
            class: ClassId::of(k.class),
            block: k.block,
            entries: bits(&[w], k.block.saturating_mul(64)),
        })
        .collect())
}

#[derive(Debug, Serialize)]
pub struct LogRow {
    pub generation: u8,
    /// Of the live generation.
    pub live: bool,
    /// A LOG entry of the live ruleset uses it.
    pub used: bool,
    pub index: u32,
    pub prefix: String,
}

/// Non-empty LOG prefixes of both generations. The array is never cleared,
/// so a prefix no live entry uses (`used` false) may be a leftover of an
/// earlier ruleset.
pub fn rs_log(topology: &str) -> Result<Vec<LogRow>> {
    rs_log_in(topology, live(topology, &mut None)?)
}

fn rs_log_in(topology: &str, live: &Live) -> Result<Vec<LogRow>> {
    let used: std::collections::BTreeSet<u32> = live
        .entries
        .iter()
        .filter(|(_, _, e)| e.kind == entry::LOG)
        .map(|(_, _, e)| u32::from(live.generation) * RS_LOG_MAX + e.log)
        .collect();
    let m: Array<MapData, [u8; RS_LOG_LEN]> =
        Array::try_from(open(topology, MAP_RS_LOG)?).map_err(me(MAP_RS_LOG))?;
    let mut v = Vec::new();
    for i in 0..m.len().min(2 * RS_LOG_MAX) {
        let b = m.get(&i, 0).map_err(me(MAP_RS_LOG))?;
        if b[0] == 0 {
            continue;
        }
        let generation = (i / RS_LOG_MAX) as u8;
        v.push(LogRow {
            generation,
            live: generation == live.generation,
            used: used.contains(&i),
            index: i % RS_LOG_MAX,
            prefix: log_text(&b),
        });
    }
    Ok(v)
}

#[derive(Debug, Serialize)]
pub struct CounterRow {
    pub slot: u32,
    pub packets: u64,
    pub bytes: u64,
    /// The live entries counting into the slot, as `HOOK#index`.
    pub entries: Vec<String>,
}

/// Non-zero rule counters, summed over CPUs, of both counter maps.
pub fn rs_counters(topology: &str) -> Result<Vec<CounterRow>> {
    rs_counters_in(topology, live(topology, &mut None)?, 0..u32::MAX)
}

/// The non-zero counters of the slots in `slots` (one map's share).
fn rs_counters_in(
    topology: &str,
    live: &Live,
    slots: std::ops::Range<u32>,
) -> Result<Vec<CounterRow>> {
    let mut users: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for (h, i, e) in &live.entries {
        if e.slot != RS_NO_SLOT {
            users
                .entry(e.slot)
                .or_default()
                .push(format!("{}#{i}", hook_name(*h)));
        }
    }
    let mut all = super::rule_counters::RuleCounters::open(&topology_dir(topology))?.nonzero()?;
    all.retain(|(slot, _)| slots.contains(slot));
    let mut v = Vec::new();
    for (slot, s) in all {
        if s == IfCounters::default() {
            continue;
        }
        v.push(CounterRow {
            slot,
            packets: s.packets,
            bytes: s.bytes,
            entries: users.remove(&slot).unwrap_or_default(),
        });
    }
    Ok(v)
}

/// Decodes the map called `name` (its pinned name, case-insensitive, with
/// or without the NETCTL_ prefix).
pub fn dump(topology: &str, name: &str, names: &Names) -> Result<Dump> {
    dump_in(topology, name, names, &mut None)
}

/// `dump`, with the live ruleset's entries read once into `cache`.
fn dump_in(topology: &str, name: &str, names: &Names, cache: &mut Option<Live>) -> Result<Dump> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("NETCTL_") {
        upper
    } else {
        format!("NETCTL_{upper}")
    };
    Ok(match full.as_str() {
        MAP_PORTS => Dump::Ports(ports(topology, names)?),
        MAP_PORT_INDEX => Dump::Ports(port_index(topology, names)?),
        MAP_FDB_GEN => Dump::Config(fdb_generation(topology)?),
        MAP_FDB => Dump::Fdb(fdb(topology, names)?),
        MAP_ROUTES => Dump::Routes(routes(topology, names)?),
        MAP_NEIGH => Dump::Neigh(neigh(topology, names)?),
        MAP_STATS => Dump::Decisions(decisions(topology)?),
        MAP_FLOW_STATS => Dump::Decisions(flow_stats(topology)?),
        MAP_PORT_STATS => Dump::PortStats(port_stats(topology, names)?),
        MAP_CONFIG => Dump::Config(config_values(topology)?),
        MAP_XDP_STATS => Dump::IfCounters(xdp_counters(topology, names)?),
        MAP_CT => Dump::Conntrack(conntrack(topology)?),
        MAP_RS_HOOKS => Dump::RsHooks(rs_hooks(topology)?),
        MAP_RS_ENTRIES => Dump::RsEntries(rs_entries_in(topology, live(topology, cache)?)?),
        MAP_RS_CLASS => Dump::RsClass(rs_class(topology, names)?),
        MAP_RS_SUMMARY => Dump::RsSummary(rs_summary(topology)?),
        MAP_RS_WORDS => Dump::RsWords(rs_words(topology)?),
        MAP_RS_LOG => Dump::RsLog(rs_log_in(topology, live(topology, cache)?)?),
        MAP_RS_COUNTERS => Dump::RsCounters(rs_counters_in(
            topology,
            live(topology, cache)?,
            RS_SLOTS_LOW..u32::MAX,
        )?),
        MAP_RS_COUNTERS_LOW => Dump::RsCounters(rs_counters_in(
            topology,
            live(topology, cache)?,
            0..RS_SLOTS_LOW,
        )?),
        MAP_CT_NAT => Dump::CtNat(ct_nat(topology)?),
        MAP_NAT_SRC => Dump::NatSrc(nat_src(topology)?),
        MAP_RS_NAT => Dump::RsNat(rs_nat(topology)?),
        MAP_IFADDR => Dump::IfAddr(ifaddrs(topology, names)?),
        MAP_CT_TIMEOUTS => Dump::Config(ct_timeouts(topology)),
        _ => {
            return Err(Error::Invalid(format!(
                "no map {name:?}; `netctl maps list` shows the maps"
            )));
        }
    })
}

// ---------------------------------------------------------------------------
// NAT: translated connections' reply tuples, the rules' NAT actions and the
// interface addresses MASQUERADE and REDIRECT use.
// ---------------------------------------------------------------------------

#[derive(Debug, Serialize)]
pub struct CtNatRow {
    pub protocol: String,
    /// The reply tuple's two ends (canonical order).
    pub reply_a: String,
    pub reply_b: String,
    /// The connection's key in NETCTL_CT.
    pub conn_a: String,
    pub conn_b: String,
}

fn end(addr: [u8; 4], port: u16, proto: u8) -> String {
    if matches!(proto, PROTO_TCP | PROTO_UDP | PROTO_ICMP) {
        format!("{}:{port}", Ipv4Addr::from(addr))
    } else {
        Ipv4Addr::from(addr).to_string()
    }
}

pub fn ct_nat(topology: &str) -> Result<Vec<CtNatRow>> {
    let m: HashMap<MapData, CtKey, CtKey> =
        HashMap::try_from(open(topology, MAP_CT_NAT)?).map_err(me(MAP_CT_NAT))?;
    let mut v: Vec<(CtKey, CtNatRow)> = m
        .iter()
        .filter_map(|r| r.ok())
        .map(|(k, o)| {
            let row = CtNatRow {
                protocol: proto_name(k.proto),
                reply_a: end(k.a_addr, k.a_port, k.proto),
                reply_b: end(k.b_addr, k.b_port, k.proto),
                conn_a: end(o.a_addr, o.a_port, o.proto),
                conn_b: end(o.b_addr, o.b_port, o.proto),
            };
            (k, row)
        })
        .collect();
    v.sort_by_key(|(k, _)| (k.proto, k.a_addr, k.a_port, k.b_addr, k.b_port));
    Ok(v.into_iter().map(|x| x.1).collect())
}

#[derive(Debug, Serialize)]
pub struct NatSrcRow {
    pub protocol: String,
    /// The original source.
    pub source: String,
    /// Keys of its latest translated connections (newest first) in
    /// NETCTL_CT, each as its two ends; some may have ended since.
    pub connections: Vec<[String; 2]>,
}

pub fn nat_src(topology: &str) -> Result<Vec<NatSrcRow>> {
    let m: HashMap<MapData, NatSrcKey, NatSrc> =
        HashMap::try_from(open(topology, MAP_NAT_SRC)?).map_err(me(MAP_NAT_SRC))?;
    let mut v: Vec<(NatSrcKey, NatSrcRow)> = m
        .iter()
        .filter_map(|r| r.ok())
        .map(|(k, n)| {
            let row = NatSrcRow {
                protocol: proto_name(k.proto),
                source: end(k.addr, k.port, k.proto),
                connections: n
                    .conns
                    .iter()
                    .filter(|c| c.proto != 0)
                    .map(|c| {
                        [
                            end(c.a_addr, c.a_port, c.proto),
                            end(c.b_addr, c.b_port, c.proto),
                        ]
                    })
                    .collect(),
            };
            (k, row)
        })
        .collect();
    v.sort_by_key(|(k, _)| (k.proto, k.addr, k.port));
    Ok(v.into_iter().map(|x| x.1).collect())
}

#[derive(Debug, Serialize)]
pub struct NatRow {
    pub generation: u8,
    pub index: u32,
    pub live: bool,
    pub kind: String,
    /// `ADDR[-ADDR]`, empty for MASQUERADE and REDIRECT.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addresses: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ports: Option<String>,
}

fn nat_kind_name(k: u8) -> String {
    match k {
        nat_kind::SNAT => "SNAT".into(),
        nat_kind::MASQUERADE => "MASQUERADE".into(),
        nat_kind::DNAT => "DNAT".into(),
        nat_kind::REDIRECT => "REDIRECT".into(),
        n => format!("?{n}"),
    }
}

/// The NAT actions in use (a zeroed element is an unused one).
pub fn rs_nat(topology: &str) -> Result<Vec<NatRow>> {
    let m: Array<MapData, RsNat> =
        Array::try_from(open(topology, MAP_RS_NAT)?).map_err(me(MAP_RS_NAT))?;
    let live_gen = live_generation(topology)?;
    let mut v = Vec::new();
    for g in 0..2u32 {
        for i in 0..RS_NAT_MAX {
            let a = m.get(&(g * RS_NAT_MAX + i), 0).map_err(me(MAP_RS_NAT))?;
            if a.kind == 0 {
                continue;
            }
            let addresses = (a.addr_min != [0; 4]).then(|| {
                if a.addr_min == a.addr_max {
                    Ipv4Addr::from(a.addr_min).to_string()
                } else {
                    format!(
                        "{}-{}",
                        Ipv4Addr::from(a.addr_min),
                        Ipv4Addr::from(a.addr_max)
                    )
                }
            });
            let ports = (a.flags & nat_range::PORTS != 0).then(|| {
                if a.port_min == a.port_max {
                    a.port_min.to_string()
                } else {
                    format!("{}-{}", a.port_min, a.port_max)
                }
            });
            v.push(NatRow {
                generation: g as u8,
                index: i,
                live: u32::from(live_gen) == g,
                kind: nat_kind_name(a.kind),
                addresses,
                ports,
            });
        }
    }
    Ok(v)
}

#[derive(Debug, Serialize)]
pub struct IfAddrRow {
    pub interface: String,
    pub address: Ipv4Addr,
}

pub fn ifaddrs(topology: &str, names: &Names) -> Result<Vec<IfAddrRow>> {
    let m: HashMap<MapData, u32, [u8; 4]> =
        HashMap::try_from(open(topology, MAP_IFADDR)?).map_err(me(MAP_IFADDR))?;
    let mut v: Vec<(u32, IfAddrRow)> = m
        .iter()
        .filter_map(|r| r.ok())
        .map(|(i, a)| {
            (
                i,
                IfAddrRow {
                    interface: name_of(names, i),
                    address: Ipv4Addr::from(a),
                },
            )
        })
        .collect();
    v.sort_by_key(|(i, _)| *i);
    Ok(v.into_iter().map(|x| x.1).collect())
}

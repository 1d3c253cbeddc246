//! Reading a pinned datapath back: maps listed and decoded (MACs, interface
//! names, ages, prefixes — not hex), FDB, per-decision and per-port stats.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use aya::maps::lpm_trie::LpmTrie;
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuHashMap};
use netctl_common::{
    FdbEntry, FdbKey, IfCounters, MAP_CONFIG, MAP_FDB, MAP_NEIGH, MAP_PORT_STATS, MAP_PORTS,
    MAP_ROUTES, MAP_STATS, MAP_XDP_STATS, NeighEntry, PORT_F_HAIRPIN, PortInfo, PortStats,
    RouteValue, config, reason, route_kind,
};
use serde::Serialize;

use super::bpf_error;
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
        for name in pins::map_pins(&t)? {
            let md = open_data(&t, &name)?;
            let info = md.info().map_err(me(&name))?;
            let kind = info
                .map_type()
                .map(|k| format!("{k:?}"))
                .unwrap_or_else(|_| "unknown".into());
            // Every map is one of ours, so decoding it counts it.
            let entries = dump(&t, &name, &Names::new())?.len();
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
    pub passed: u64,
}

#[derive(Debug, Serialize)]
pub struct Stats {
    pub decisions: BTreeMap<&'static str, u64>,
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
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub fn ports(topology: &str, names: &Names) -> Result<Vec<PortRow>> {
    let m: HashMap<MapData, u32, PortInfo> =
        HashMap::try_from(open(topology, MAP_PORTS)?).map_err(me(MAP_PORTS))?;
    let mut v: Vec<PortRow> = m
        .iter()
        .filter_map(|r| r.ok())
        .map(|(i, p)| PortRow {
            ifindex: i,
            port: name_of(names, i),
            bridge: name_of(names, p.bridge),
            bridge_mac: Mac(p.bridge_mac),
            ageing_s: p.ageing_ns / 1_000_000_000,
            hairpin: p.flags & PORT_F_HAIRPIN != 0,
        })
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
    let m: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(open(topology, MAP_STATS)?).map_err(me(MAP_STATS))?;
    let mut out = BTreeMap::new();
    for i in 0..reason::COUNT {
        let per_cpu = m.get(&i, 0).map_err(me(MAP_STATS))?;
        out.insert(reason::NAMES[i as usize], per_cpu.iter().sum());
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
            passed: 0,
        };
        for s in per_cpu.iter() {
            row.rx_packets += s.rx_packets;
            row.rx_bytes += s.rx_bytes;
            row.redirected += s.redirected;
            row.passed += s.passed;
        }
        v.push(row);
    }
    v.sort_by(|a, b| a.port.cmp(&b.port));
    Ok(v)
}

pub fn stats(topology: &str, names: &Names) -> Result<Stats> {
    Ok(Stats {
        decisions: decisions(topology)?,
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
    ]))
}

pub fn set_config(topology: &str, index: u32, value: u32) -> Result<()> {
    let mut m: Array<MapData, u32> =
        Array::try_from(open(topology, MAP_CONFIG)?).map_err(me(MAP_CONFIG))?;
    m.set(index, value, 0).map_err(me(MAP_CONFIG))
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

/// Decodes the map called `name` (its pinned name, case-insensitive, with
/// or without the NETCTL_ prefix).
pub fn dump(topology: &str, name: &str, names: &Names) -> Result<Dump> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("NETCTL_") {
        upper
    } else {
        format!("NETCTL_{upper}")
    };
    Ok(match full.as_str() {
        MAP_PORTS => Dump::Ports(ports(topology, names)?),
        MAP_FDB => Dump::Fdb(fdb(topology, names)?),
        MAP_ROUTES => Dump::Routes(routes(topology, names)?),
        MAP_NEIGH => Dump::Neigh(neigh(topology, names)?),
        MAP_STATS => Dump::Decisions(decisions(topology)?),
        MAP_PORT_STATS => Dump::PortStats(port_stats(topology, names)?),
        MAP_CONFIG => Dump::Config(config_values(topology)?),
        MAP_XDP_STATS => Dump::IfCounters(xdp_counters(topology, names)?),
        _ => {
            return Err(Error::Invalid(format!(
                "no map {name:?}; `netctl maps list` shows the maps"
            )));
        }
    })
}

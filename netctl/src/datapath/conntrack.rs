//! The connection tracking table of a topology's datapath, as an operator
//! sees it (`netctl conntrack list`, `flush`): the pinned LRU map
//! `NETCTL_CT` read into [`Connection`]s — original and reply tuples,
//! per-direction counters, TCP state, time left, NAT — and emptied.
//!
//! An entry whose time ran out is gone for the datapath (it treats it as
//! absent and creates a new one over it); the LRU map only keeps it until
//! the memory is reused. Such entries are not listed.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use aya::maps::{HashMap, IterableMap, Map, MapData};
use netctl_common::{
    CtEntry, CtKey, MAP_CT, MAP_CT_NAT, MAP_CT_TIMEOUTS, ct_flag, ct_timeout, nat_bit, tcp_state,
};
use serde::Serialize;

use super::bpf_error;
use super::inspect::monotonic_ns;
use super::{batch, pins};
use crate::error::{Error, Result};
use crate::topology::{Datapath, store};

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// One direction of a connection, as `conntrack -L` prints it: addresses,
/// ports (TCP, UDP) or the echo identifier (ICMP), and what went that way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tuple {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
    /// ICMP query identifier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u16>,
    pub packets: u64,
    /// IP bytes (header included), as the kernel's accounting counts them.
    pub bytes: u64,
}

/// An address (and port, for TCP and UDP) a translation rewrote to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NatTo {
    pub addr: Ipv4Addr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// The translation a connection is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Nat {
    /// `snat`, `dnat` or `snat+dnat`.
    pub kind: &'static str,
    /// The original direction's new source (SNAT, MASQUERADE).
    pub snat: Option<NatTo>,
    /// The original direction's new destination (DNAT, REDIRECT).
    pub dnat: Option<NatTo>,
}

/// One tracked connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Connection {
    /// `tcp`, `udp`, `icmp`, or the protocol number.
    pub proto: String,
    pub protonum: u8,
    /// Seconds before the entry times out if nothing more is seen.
    pub timeout: u64,
    /// Seconds since the connection's first packet.
    pub age: u64,
    /// The TCP state (`ESTABLISHED`, `TIME_WAIT`, …); `None` otherwise.
    pub state: Option<&'static str>,
    /// Nothing has been seen in the reply direction yet.
    pub unreplied: bool,
    /// As the originator sent it.
    pub original: Tuple,
    /// What the answers look like: the original turned around, with the
    /// translated addresses (the DNAT target answers, to the SNAT source).
    pub reply: Tuple,
    pub nat: Option<Nat>,
}

pub fn proto_name(p: u8) -> String {
    match p {
        PROTO_ICMP => "icmp".into(),
        PROTO_TCP => "tcp".into(),
        PROTO_UDP => "udp".into(),
        n => n.to_string(),
    }
}

/// The conntrack timeouts a datapath uses, in seconds per class
/// (`ct_timeout`): the topology's, else the kernel's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts(pub [u32; ct_timeout::CLASSES as usize]);

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts(ct_timeout::DEFAULTS)
    }
}

impl Timeouts {
    /// The defaults with a topology's `[conntrack]` settings (by
    /// `ct_timeout::NAMES`; validated when the file was read).
    pub fn with(settings: &std::collections::BTreeMap<String, u32>) -> Timeouts {
        let mut t = Timeouts::default();
        for (name, secs) in settings {
            if let Some(i) = ct_timeout::NAMES
                .iter()
                .position(|n| !n.is_empty() && n == name)
            {
                t.0[i] = *secs;
            }
        }
        t
    }

    /// What the datapath in `dir` uses (a map pinned by an older netctl
    /// may be missing, or hold zeros: defaults).
    pub fn read(dir: &std::path::Path) -> Timeouts {
        let mut t = Timeouts::default();
        let Ok(md) = open(dir, MAP_CT_TIMEOUTS) else {
            return t;
        };
        let Ok(m) = aya::maps::Array::<MapData, u32>::try_from(Map::Array(md)) else {
            return t;
        };
        for (i, d) in t.0.iter_mut().enumerate() {
            if let Ok(v) = m.get(&(i as u32), 0)
                && v != 0
            {
                *d = v;
            }
        }
        t
    }

    /// The entry's timeout in nanoseconds, as the datapath computes it.
    pub fn ns(&self, proto: u8, e: &CtEntry) -> u64 {
        let class = ct_timeout::class(proto, e.tcp_state, e.flags & ct_flag::SEEN_REPLY != 0);
        u64::from(self.0[(class as usize).min(self.0.len() - 1)]) * 1_000_000_000
    }
}

/// The entry as a connection at monotonic time `now` (ns), or `None` if it
/// has timed out (the datapath's test: idle longer than the timeout).
pub fn connection(k: &CtKey, e: &CtEntry, now: u64, t: &Timeouts) -> Option<Connection> {
    // What stands for a packet the kernel dropped unconfirmed is no
    // connection (`conntrack -L` does not list those either).
    if e.flags & ct_flag::UNCONFIRMED != 0 {
        return None;
    }
    let idle = now.saturating_sub(e.last_seen_ns);
    let timeout = t.ns(k.proto, e);
    if idle > timeout {
        return None;
    }
    // The key is in canonical order; the entry says who opened it.
    let a = (Ipv4Addr::from(k.a_addr), k.a_port);
    let b = (Ipv4Addr::from(k.b_addr), k.b_port);
    let (orig_src, orig_dst) = if e.orig_addr == k.a_addr && e.orig_port == k.a_port {
        (a, b)
    } else {
        (b, a)
    };
    let n = &e.nat;
    let (snat, dnat) = (n.flags & nat_bit::SRC != 0, n.flags & nat_bit::DST != 0);
    // Replies come from where the packets were sent to (after DNAT) and
    // go to where they seemed to come from (after SNAT).
    let reply_src = if dnat {
        (Ipv4Addr::from(n.dnat_addr), n.dnat_port)
    } else {
        orig_dst
    };
    let reply_dst = if snat {
        (Ipv4Addr::from(n.snat_addr), n.snat_port)
    } else {
        orig_src
    };
    let ports = matches!(k.proto, PROTO_TCP | PROTO_UDP);
    let icmp = k.proto == PROTO_ICMP;
    // ICMP keys carry the query identifier as both "ports"; the one the
    // packets of a direction carry is the querier's (translated by SNAT).
    let tuple = |s: (Ipv4Addr, u16), d: (Ipv4Addr, u16), id: u16, dir: usize| Tuple {
        src: s.0,
        dst: d.0,
        sport: ports.then_some(s.1),
        dport: ports.then_some(d.1),
        id: icmp.then_some(id),
        packets: e.packets[dir],
        bytes: e.bytes[dir],
    };
    let to = |addr: [u8; 4], port: u16| NatTo {
        addr: Ipv4Addr::from(addr),
        port: ports.then_some(port),
    };
    let nat = (snat || dnat).then(|| Nat {
        kind: match (snat, dnat) {
            (true, true) => "snat+dnat",
            (true, false) => "snat",
            _ => "dnat",
        },
        snat: snat.then(|| to(n.snat_addr, n.snat_port)),
        dnat: dnat.then(|| to(n.dnat_addr, n.dnat_port)),
    });
    Some(Connection {
        proto: proto_name(k.proto),
        protonum: k.proto,
        timeout: (timeout - idle) / 1_000_000_000,
        age: now.saturating_sub(e.created_ns) / 1_000_000_000,
        state: (k.proto == PROTO_TCP).then(|| {
            tcp_state::NAMES
                .get(usize::from(e.tcp_state))
                .copied()
                .unwrap_or("UNKNOWN")
        }),
        unreplied: e.flags & ct_flag::SEEN_REPLY == 0,
        original: tuple(orig_src, orig_dst, orig_src.1, 0),
        reply: tuple(reply_src, reply_dst, reply_dst.1, 1),
        nat,
    })
}

/// A stable order: protocol, then the original tuple.
type SortKey = (
    u8,
    Ipv4Addr,
    Ipv4Addr,
    Option<u16>,
    Option<u16>,
    Option<u16>,
);

fn sort_key(c: &Connection) -> SortKey {
    let o = &c.original;
    (c.protonum, o.src, o.dst, o.sport, o.dport, o.id)
}

/// The pin directory of a topology whose eBPF datapath is attached, or an
/// error that says why there is none.
fn datapath_dir(topology: &str) -> Result<PathBuf> {
    let dir = pins::topology_dir(topology);
    if dir.join(MAP_CT).exists() {
        return Ok(dir);
    }
    Err(Error::Invalid(match store::load(topology)? {
        None if !dir.exists() => format!("topology {topology:?} is not applied"),
        Some(t) if t.datapath == Datapath::Kernel => format!(
            "topology {topology:?} has datapath = \"kernel\": there is no eBPF datapath, it \
             tracks none of its connections (for the kernel's own conntrack, if it tracks any, \
             run conntrack -L in namespace {})",
            t.host()
        ),
        _ if !dir.exists() => {
            format!("topology {topology:?} has no eBPF datapath attached (netctl datapath status)")
        }
        _ => format!(
            "topology {topology:?}: the datapath has no {MAP_CT} map (pinned by an older netctl? \
             apply the topology again)"
        ),
    }))
}

fn open(dir: &std::path::Path, name: &str) -> Result<MapData> {
    let p = dir.join(name);
    MapData::from_pin(&p).map_err(|e| bpf_error(&format!("open {}", p.display()), &e))
}

fn ct_map(dir: &std::path::Path) -> Result<HashMap<MapData, CtKey, CtEntry>> {
    let map = Map::from_map_data(open(dir, MAP_CT)?).map_err(|e| bpf_error(MAP_CT, &e))?;
    HashMap::try_from(map).map_err(|e| bpf_error(MAP_CT, &e))
}

/// Every element of the conntrack map, each once. Elements evicted or
/// deleted while the map is walked are passed over; the kernel then starts
/// the walk over from the first key, hence the check for repeats.
fn entries(m: &HashMap<MapData, CtKey, CtEntry>) -> Vec<(CtKey, CtEntry)> {
    let mut seen = HashSet::new();
    m.iter()
        .filter_map(|r| r.ok())
        .filter(|(k, _)| seen.insert(*k))
        .collect()
}

/// The live connections of a topology's datapath, in a stable order.
pub fn list(topology: &str) -> Result<Vec<Connection>> {
    let dir = datapath_dir(topology)?;
    let m = ct_map(&dir)?;
    let t = Timeouts::read(&dir);
    let now = monotonic_ns();
    let mut v: Vec<Connection> = entries(&m)
        .iter()
        .filter_map(|(k, e)| connection(k, e, now, &t))
        .collect();
    v.sort_by_cached_key(sort_key);
    Ok(v)
}

/// What `flush` removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Flushed {
    /// Connections that were live (what `list` would have shown).
    pub connections: usize,
    /// Entries that had already timed out (not shown, still in the map).
    pub expired: usize,
    /// Reply-tuple elements of translated connections (`NETCTL_CT_NAT`).
    pub nat: usize,
}

/// Deletes every connection of a topology's datapath, and every NAT
/// reply-tuple element: the next packet of each is judged as a new one,
/// as after `conntrack -F`. Elements the datapath adds meanwhile stay.
pub fn flush(topology: &str) -> Result<Flushed> {
    let dir = datapath_dir(topology)?;
    let ct = ct_map(&dir)?;
    let t = Timeouts::read(&dir);
    let now = monotonic_ns();
    let mut keys = Vec::new();
    let mut live = Vec::new();
    for (k, e) in entries(&ct) {
        keys.push(k);
        live.push(connection(&k, &e, now, &t).is_some());
    }
    // The NAT map came with NAT: a datapath pinned before has none.
    let nat_map = if dir.join(MAP_CT_NAT).exists() {
        let md = open(&dir, MAP_CT_NAT)?;
        let nat_keys = batch::hash_keys::<CtKey, CtKey>(&md, MAP_CT_NAT, false)?;
        Some((md, nat_keys))
    } else {
        None
    };
    // Connections first: a reply whose NAT element is still there then
    // finds no entry, as it will once that element is gone too.
    let missing = batch::delete(ct.map(), MAP_CT, &keys)?;
    let mut out = Flushed::default();
    if missing == 0 {
        out.connections = live.iter().filter(|l| **l).count();
        out.expired = keys.len() - out.connections;
    } else {
        // Some went by themselves meanwhile (LRU eviction): count what
        // is certain.
        let removed = keys.len() - missing;
        out.connections = live.iter().filter(|l| **l).count().min(removed);
        out.expired = removed - out.connections;
    }
    if let Some((md, nat_keys)) = nat_map {
        let missing = batch::delete(&md, MAP_CT_NAT, &nat_keys)?;
        out.nat = nat_keys.len() - missing;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use netctl_common::{CtNat, tcp_state as ts};

    const S: u64 = 1_000_000_000;

    fn key(proto: u8, a: [u8; 4], ap: u16, b: [u8; 4], bp: u16) -> CtKey {
        CtKey {
            proto,
            clash: 0,
            _pad: [0; 2],
            a_addr: a,
            b_addr: b,
            a_port: ap,
            b_port: bp,
        }
    }

    fn entry(orig: ([u8; 4], u16), state: u8, flags: u8, last: u64) -> CtEntry {
        CtEntry {
            orig_addr: orig.0,
            orig_port: orig.1,
            tcp_state: state,
            flags,
            created_ns: 10 * S,
            last_seen_ns: last,
            packets: [3, 2],
            bytes: [180, 120],
            ..Default::default()
        }
    }

    #[test]
    fn the_originator_comes_first_whatever_the_key_order() {
        // 10.0.0.9:80 < 10.0.0.20:40000 in the key; 10.0.0.20 opened it.
        let k = key(PROTO_TCP, [10, 0, 0, 9], 80, [10, 0, 0, 20], 40000);
        let e = entry(
            ([10, 0, 0, 20], 40000),
            ts::ESTABLISHED,
            ct_flag::SEEN_REPLY,
            100 * S,
        );
        let c = connection(&k, &e, 105 * S + S / 2, &Timeouts::default()).unwrap();
        assert_eq!(c.proto, "tcp");
        assert_eq!(c.state, Some("ESTABLISHED"));
        assert!(!c.unreplied);
        assert_eq!(c.timeout, 432000 - 6);
        assert_eq!(c.age, 95);
        let o = &c.original;
        assert_eq!(
            (o.src, o.sport, o.dst, o.dport),
            (
                Ipv4Addr::new(10, 0, 0, 20),
                Some(40000),
                Ipv4Addr::new(10, 0, 0, 9),
                Some(80)
            )
        );
        assert_eq!((o.packets, o.bytes), (3, 180));
        let r = &c.reply;
        assert_eq!(
            (r.src, r.sport, r.dst, r.dport),
            (
                Ipv4Addr::new(10, 0, 0, 9),
                Some(80),
                Ipv4Addr::new(10, 0, 0, 20),
                Some(40000)
            )
        );
        assert_eq!((r.packets, r.bytes), (2, 120));
        assert_eq!(c.nat, None);
    }

    #[test]
    fn timed_out_entries_are_gone_and_udp_lives_longer_once_answered() {
        let k = key(PROTO_UDP, [10, 0, 0, 1], 5000, [10, 0, 0, 2], 53);
        let e = entry(([10, 0, 0, 1], 5000), 0, 0, 100 * S);
        assert_eq!(
            connection(&k, &e, 130 * S, &Timeouts::default())
                .unwrap()
                .timeout,
            0
        );
        assert!(connection(&k, &e, 130 * S + 1, &Timeouts::default()).is_none());
        let c = connection(&k, &e, 101 * S, &Timeouts::default()).unwrap();
        assert!(c.unreplied);
        assert_eq!((c.timeout, c.state), (29, None));
        let e = entry(([10, 0, 0, 1], 5000), 0, ct_flag::SEEN_REPLY, 100 * S);
        assert_eq!(
            connection(&k, &e, 101 * S, &Timeouts::default())
                .unwrap()
                .timeout,
            119
        );
        // A clock read before the datapath's last update is no age.
        assert_eq!(
            connection(&k, &e, 99 * S, &Timeouts::default())
                .unwrap()
                .timeout,
            120
        );
        // A topology's own timeouts replace the defaults they name.
        let set = [("udp_timeout_stream".to_string(), 5)]
            .into_iter()
            .collect();
        let t = Timeouts::with(&set);
        assert_eq!(connection(&k, &e, 101 * S, &t).unwrap().timeout, 4);
        assert!(connection(&k, &e, 106 * S, &t).is_none());
        assert_eq!(t.0[ct_timeout::UDP as usize], 30);
    }

    #[test]
    fn icmp_has_an_identifier_and_no_ports() {
        let k = key(PROTO_ICMP, [10, 0, 0, 1], 77, [10, 0, 0, 2], 77);
        let e = entry(([10, 0, 0, 1], 77), 0, ct_flag::SEEN_REPLY, 100 * S);
        let c = connection(&k, &e, 100 * S, &Timeouts::default()).unwrap();
        assert_eq!((c.proto.as_str(), c.timeout), ("icmp", 30));
        assert_eq!((c.original.sport, c.original.id), (None, Some(77)));
        assert_eq!(c.reply.src, Ipv4Addr::new(10, 0, 0, 2));
        assert_eq!(c.reply.id, Some(77));
        let k = key(47, [10, 0, 0, 1], 0, [10, 0, 0, 2], 0);
        let c = connection(
            &k,
            &entry(([10, 0, 0, 1], 0), 0, 0, 0),
            0,
            &Timeouts::default(),
        )
        .unwrap();
        assert_eq!((c.proto.as_str(), c.timeout), ("47", 600));
        assert_eq!((c.original.sport, c.original.id), (None, None));
    }

    #[test]
    fn the_reply_tuple_is_translated() {
        // 10.1.0.2:41000 -> 10.2.0.1:8080, DNAT to 10.1.0.3:80 and SNAT
        // (hairpin masquerade) to 10.1.0.1:41000.
        let k = key(PROTO_TCP, [10, 1, 0, 2], 41000, [10, 2, 0, 1], 8080);
        let mut e = entry(([10, 1, 0, 2], 41000), ts::SYN_SENT, 0, 0);
        e.nat = CtNat {
            flags: nat_bit::SRC | nat_bit::DST,
            snat_addr: [10, 1, 0, 1],
            snat_port: 41000,
            dnat_addr: [10, 1, 0, 3],
            dnat_port: 80,
            ..Default::default()
        };
        let c = connection(&k, &e, 0, &Timeouts::default()).unwrap();
        assert!(c.unreplied);
        assert_eq!(c.state, Some("SYN_SENT"));
        let r = &c.reply;
        assert_eq!(
            (r.src, r.sport, r.dst, r.dport),
            (
                Ipv4Addr::new(10, 1, 0, 3),
                Some(80),
                Ipv4Addr::new(10, 1, 0, 1),
                Some(41000)
            )
        );
        let n = c.nat.unwrap();
        assert_eq!(n.kind, "snat+dnat");
        assert_eq!(
            n.dnat,
            Some(NatTo {
                addr: Ipv4Addr::new(10, 1, 0, 3),
                port: Some(80)
            })
        );
        // SNAT only: the answer comes from the original destination.
        e.nat.flags = nat_bit::SRC;
        let c = connection(&k, &e, 0, &Timeouts::default()).unwrap();
        assert_eq!(
            (c.reply.src, c.reply.dst),
            (Ipv4Addr::new(10, 2, 0, 1), Ipv4Addr::new(10, 1, 0, 1))
        );
        let n = c.nat.unwrap();
        assert_eq!((n.kind, n.dnat), ("snat", None));
    }

    #[test]
    fn json_has_the_fields_operators_expect() {
        let k = key(PROTO_UDP, [10, 0, 0, 1], 5000, [10, 0, 0, 2], 53);
        let e = entry(([10, 0, 0, 1], 5000), 0, 0, 0);
        let j = serde_json::to_value(connection(&k, &e, 0, &Timeouts::default()).unwrap()).unwrap();
        assert_eq!(j["proto"], "udp");
        assert_eq!(j["protonum"], 17);
        assert_eq!(j["timeout"], 30);
        assert_eq!(j["state"], serde_json::Value::Null);
        assert_eq!(j["unreplied"], true);
        assert_eq!(j["original"]["src"], "10.0.0.1");
        assert_eq!(j["original"]["dport"], 53);
        assert_eq!(j["reply"]["sport"], 53);
        assert_eq!(j["reply"]["packets"], 2);
        assert!(j["original"].get("id").is_none());
        assert_eq!(j["nat"], serde_json::Value::Null);
    }
}

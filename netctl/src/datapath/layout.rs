//! The shape every pinned map must have for this build's programs. A
//! topology applied by an older netctl keeps its maps pinned; a map whose
//! key, value or size changed since cannot be reused (the verifier refuses
//! programs that read past its values, and a smaller map silently drops
//! writes), so it is unpinned before the object loads and recreated, empty.

use std::mem::size_of;
use std::path::Path;

use aya::maps::{Array, Map, MapData};
use netctl_common::*;

/// `(name, key size, value size, max entries)` of every pinned map, as
/// `netctl-ebpf/src/maps.rs` declares it. LPM trie keys carry a 4-byte
/// prefix length.
fn expected() -> Vec<(&'static str, usize, usize, u32)> {
    let hooks = u32::from(hook::COUNT);
    vec![
        (MAP_PORTS, 4, size_of::<PortInfo>(), MAP_PORTS_MAX),
        (MAP_PORT_INDEX, 4, size_of::<PortInfo>(), PORT_INDEX_SLOTS),
        (MAP_FDB_GEN, 4, 8, 1),
        (
            MAP_FDB,
            size_of::<FdbKey>(),
            size_of::<FdbEntry>(),
            MAP_FDB_MAX,
        ),
        (MAP_ROUTES, 8, size_of::<RouteValue>(), MAP_ROUTES_MAX),
        (MAP_NEIGH, 4, size_of::<NeighEntry>(), MAP_NEIGH_MAX),
        (MAP_STATS, 4, 8, MAP_STATS_ENTRIES),
        (MAP_FLOW_STATS, 4, 8, flow_stat::COUNT),
        (MAP_PORT_STATS, 4, size_of::<PortStats>(), MAP_PORTS_MAX),
        (MAP_CONFIG, 4, 4, MAP_CONFIG_MAX),
        (MAP_XDP_STATS, 4, size_of::<IfCounters>(), MAP_PORTS_MAX),
        (MAP_RS_HOOKS, 4, size_of::<RsHook>(), 2 * hooks),
        (MAP_RS_CLASS, 12, 4, MAP_RS_CLASS_MAX),
        (
            MAP_RS_SUMMARY,
            size_of::<RsWordKey>(),
            size_of::<RsSummary>(),
            MAP_RS_SUMMARY_MAX,
        ),
        (MAP_RS_WORDS, size_of::<RsWordKey>(), 8, MAP_RS_WORDS_MAX),
        (
            MAP_RS_ENTRIES,
            4,
            size_of::<RuleEntry>(),
            2 * hooks * RS_ENTRIES_MAX,
        ),
        (MAP_RS_LOG, 4, RS_LOG_LEN, 2 * RS_LOG_MAX),
        (MAP_RS_COUNTERS, 4, size_of::<IfCounters>(), RS_SLOTS_MAX),
        (
            MAP_RS_COUNTERS_LOW,
            4,
            size_of::<IfCounters>(),
            RS_SLOTS_LOW,
        ),
        (MAP_CT, size_of::<CtKey>(), size_of::<CtEntry>(), MAP_CT_MAX),
        (MAP_CT_TIMEOUTS, 4, 4, ct_timeout::CLASSES),
        (
            MAP_CT_NAT,
            size_of::<CtKey>(),
            size_of::<CtKey>(),
            MAP_CT_MAX,
        ),
        (
            MAP_NAT_SRC,
            size_of::<NatSrcKey>(),
            size_of::<NatSrc>(),
            MAP_CT_MAX,
        ),
        (MAP_RS_NAT, 4, size_of::<RsNat>(), 2 * RS_NAT_MAX),
        (MAP_IFADDR, 4, 4, MAP_IFADDR_MAX),
    ]
}

/// `BPF_F_MMAPABLE`, which `netctl-ebpf/src/maps.rs` sets on the arrays
/// every frame reads for the alignment of their values.
const ALIGNED: u32 = 1 << 10;

/// Map flags that change where the values lie, of the maps that have them.
fn expected_flags(name: &str) -> Option<u32> {
    [MAP_PORT_INDEX, MAP_FDB_GEN]
        .contains(&name)
        .then_some(ALIGNED)
}

/// What `config::LAYOUT` holds once this build has written the maps.
pub const REVISION: u32 = 1;

/// Maps whose values changed meaning without changing size, with the
/// revision that changed them: one pinned at an older revision is
/// recreated like one of another shape.
const MEANING_CHANGED: [(u32, &str); 1] = [
    // `PortStats::passed` became `steady_l2`.
    (1, MAP_PORT_STATS),
];

/// The revision the maps in `dir` were written at (0: before revisions).
fn pinned_revision(dir: &Path) -> u32 {
    MapData::from_pin(dir.join(MAP_CONFIG))
        .ok()
        .and_then(|md| Map::from_map_data(md).ok())
        .and_then(|m| Array::<MapData, u32>::try_from(m).ok())
        .and_then(|a| a.get(&config::LAYOUT, 0).ok())
        .unwrap_or(0)
}

/// Unpins the maps in `dir` whose shape (or meaning) this build does not
/// expect (they are recreated by the next load); returns their names.
pub fn drop_incompatible(dir: &Path) -> Vec<String> {
    let mut dropped = Vec::new();
    let revision = pinned_revision(dir);
    for (name, key, value, max) in expected() {
        let p = dir.join(name);
        let Ok(md) = MapData::from_pin(&p) else {
            continue;
        };
        let ok = md.info().is_ok_and(|i| {
            i.key_size() as usize == key
                && i.value_size() as usize == value
                && i.max_entries() == max
                && expected_flags(name).is_none_or(|f| i.map_flags() == f)
        }) && !MEANING_CHANGED
            .iter()
            .any(|(r, n)| *n == name && *r > revision);
        drop(md);
        if !ok && std::fs::remove_file(&p).is_ok() {
            dropped.push(name.to_string());
        }
    }
    dropped
}

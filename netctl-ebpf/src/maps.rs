//! The maps of the fast path and the counters every program run updates.
//!
//! The statics' names are the map names userspace finds them by (see
//! `netctl_common::MAP_*`). All are pinned by name, so one topology's maps
//! live under the loader's pin directory and outlive the programs.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, PerCpuHashMap},
};
use netctl_common::{
    FdbEntry, FdbKey, IfCounters, MAP_CONFIG_MAX, MAP_FDB_MAX, MAP_NEIGH_MAX, MAP_PORTS_MAX,
    MAP_ROUTES_MAX, NeighEntry, PortInfo, PortStats, RouteValue, reason,
};

#[map]
pub static NETCTL_PORTS: HashMap<u32, PortInfo> = HashMap::pinned(MAP_PORTS_MAX, 0);

#[map]
pub static NETCTL_FDB: LruHashMap<FdbKey, FdbEntry> = LruHashMap::pinned(MAP_FDB_MAX, 0);

#[map]
pub static NETCTL_ROUTES: LpmTrie<[u8; 4], RouteValue> = LpmTrie::pinned(MAP_ROUTES_MAX, 0);

#[map]
pub static NETCTL_NEIGH: HashMap<[u8; 4], NeighEntry> = HashMap::pinned(MAP_NEIGH_MAX, 0);

#[map]
pub static NETCTL_STATS: PerCpuArray<u64> = PerCpuArray::pinned(reason::COUNT, 0);

#[map]
pub static NETCTL_PORT_STATS: PerCpuArray<PortStats> = PerCpuArray::pinned(MAP_PORTS_MAX, 0);

#[map]
pub static NETCTL_CONFIG: Array<u32> = Array::pinned(MAP_CONFIG_MAX, 0);

/// `ifindex -> IfCounters` for `netctl_xdp` (`netctl_common::MAP_XDP_STATS`).
#[map]
pub static NETCTL_XDP_STATS: PerCpuHashMap<u32, IfCounters> =
    PerCpuHashMap::pinned(MAP_PORTS_MAX, 0);

/// `NETCTL_CONFIG[index]`; a missing slot reads as 0 (off).
#[inline(always)]
pub fn config(index: u32) -> u32 {
    NETCTL_CONFIG.get(index).copied().unwrap_or(0)
}

/// Copies a port's description out of `NETCTL_PORTS`.
#[inline(always)]
pub fn port(ifindex: u32) -> Option<PortInfo> {
    // SAFETY: the pointer is to a live element of a hash map, valid until
    // the program returns (RCU). Userspace may rewrite the element
    // concurrently; the copy can then mix old and new fields, which at
    // worst sends one packet the way the old description said.
    NETCTL_PORTS.get_ptr(ifindex).map(|p| unsafe { *p })
}

/// Copies an FDB entry out of `NETCTL_FDB`.
#[inline(always)]
pub fn fdb(bridge: u32, mac: [u8; 6]) -> Option<FdbEntry> {
    let key = FdbKey {
        bridge,
        mac,
        _pad: [0; 2],
    };
    // SAFETY: as in `port`; a torn read of an entry another CPU is
    // refreshing yields a port and a time that were each valid recently.
    NETCTL_FDB.get_ptr(key).map(|p| unsafe { *p })
}

/// Counts one packet of `len` bytes that ended with `why` (a `reason::*`) on
/// port `ifindex`, in this CPU's slots.
#[inline(always)]
pub fn account(slot: Option<u16>, len: u32, why: u32) {
    let redirected = u64::from(why == reason::REDIRECT_L2 || why == reason::REDIRECT_L3);

    if let Some(n) = NETCTL_STATS.get_ptr_mut(why) {
        // SAFETY: this CPU's slot of an array element, which always exists.
        // Only this CPU writes it; a run preempted by another on the same CPU
        // can lose a count, which statistics can afford.
        unsafe { *n = (*n).wrapping_add(1) };
    }
    let Some(slot) = slot else { return };
    if let Some(s) = NETCTL_PORT_STATS.get_ptr_mut(u32::from(slot)) {
        // SAFETY: as above: this CPU's copy of an array element.
        unsafe {
            (*s).rx_packets = (*s).rx_packets.wrapping_add(1);
            (*s).rx_bytes = (*s).rx_bytes.wrapping_add(u64::from(len));
            (*s).redirected = (*s).redirected.wrapping_add(redirected);
            (*s).passed = (*s).passed.wrapping_add(1 - redirected);
        }
    }
}

#[inline(always)]
pub fn account_xdp(ifindex: u32, len: u64) {
    if let Some(c) = NETCTL_XDP_STATS.get_ptr_mut(ifindex) {
        // SAFETY: as in `account`.
        unsafe {
            (*c).packets = (*c).packets.wrapping_add(1);
            (*c).bytes = (*c).bytes.wrapping_add(len);
        }
    } else {
        let first = IfCounters {
            packets: 1,
            bytes: len,
        };
        let _ = NETCTL_XDP_STATS.insert(ifindex, first, 0);
    }
}

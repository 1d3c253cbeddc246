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
    CtEntry, CtKey, FdbEntry, FdbKey, IfCounters, MAP_CONFIG_MAX, MAP_CT_MAX, MAP_FDB_MAX,
    MAP_NEIGH_MAX, MAP_PORTS_MAX, MAP_ROUTES_MAX, MAP_RS_CLASS_MAX, MAP_RS_SUMMARY_MAX,
    MAP_RS_WORDS_MAX, MAP_STATS_ENTRIES, NeighEntry, PORT_INDEX_SLOTS, PortInfo, PortStats,
    RS_ENTRIES_MAX, RS_LOG_LEN, RS_LOG_MAX, RS_SLOTS_MAX, RouteValue, RsHook, RsSummary, RsWordKey,
    RuleEntry, ct_timeout, flow_stat, hook, reason,
};
use netctl_common::{MAP_IFADDR_MAX, NatSrc, NatSrcKey, RS_NAT_MAX, RS_SLOTS_LOW, RsNat};

/// `BPF_F_MMAPABLE`, for what it does to the layout rather than for
/// mmap: the values of such an array start on a page boundary, where a
/// plain array's start 312 bytes into the kernel's `struct bpf_array`
/// (x86-64, 6.x), 56 bytes into a cache line, and every `PortInfo` of the
/// index straddles two lines; page-aligned, each is one line, which the
/// full path, short of cache between frames, notices. (Not on
/// `NETCTL_CONFIG`: a new flag recreates a pinned map on upgrade, and the
/// config holds the live ruleset's generation.)
const ALIGNED: u32 = 1 << 10;

#[map]
pub static NETCTL_PORTS: HashMap<u32, PortInfo> = HashMap::pinned(MAP_PORTS_MAX, 0);

/// The ports again, by `ifindex % PORT_INDEX_SLOTS` (`MAP_PORT_INDEX`).
#[map]
pub static NETCTL_PORT_INDEX: Array<PortInfo> = Array::pinned(PORT_INDEX_SLOTS, ALIGNED);

/// `MAP_FDB_GEN`.
#[map]
pub static NETCTL_FDB_GEN: Array<u64> = Array::pinned(1, ALIGNED);

#[map]
pub static NETCTL_FDB: LruHashMap<FdbKey, FdbEntry> = LruHashMap::pinned(MAP_FDB_MAX, 0);

#[map]
pub static NETCTL_ROUTES: LpmTrie<[u8; 4], RouteValue> = LpmTrie::pinned(MAP_ROUTES_MAX, 0);

#[map]
pub static NETCTL_NEIGH: HashMap<[u8; 4], NeighEntry> = HashMap::pinned(MAP_NEIGH_MAX, 0);

#[map]
pub static NETCTL_STATS: PerCpuArray<u64> = PerCpuArray::pinned(MAP_STATS_ENTRIES, 0);

/// The flow cache's counters (`netctl_common::MAP_FLOW_STATS`).
#[map]
pub static NETCTL_FLOW_STATS: PerCpuArray<u64> = PerCpuArray::pinned(flow_stat::COUNT, 0);

#[map]
pub static NETCTL_PORT_STATS: PerCpuArray<PortStats> = PerCpuArray::pinned(MAP_PORTS_MAX, 0);

#[map]
pub static NETCTL_CONFIG: Array<u32> = Array::pinned(MAP_CONFIG_MAX, 0);

/// `ifindex -> IfCounters` for `netctl_xdp` (`netctl_common::MAP_XDP_STATS`).
#[map]
pub static NETCTL_XDP_STATS: PerCpuHashMap<u32, IfCounters> =
    PerCpuHashMap::pinned(MAP_PORTS_MAX, 0);

// The compiled ruleset (see `netctl_common`, "Netfilter rules, compiled").

#[map]
pub static NETCTL_RS_HOOKS: Array<RsHook> = Array::pinned(2 * hook::COUNT as u32, 0);

/// LPM trie over `RsClassKey` without its prefix length: `[generation,
/// hook, field, 0, value…]`.
#[map]
pub static NETCTL_RS_CLASS: LpmTrie<[u8; 8], u32> = LpmTrie::pinned(MAP_RS_CLASS_MAX, 0);

/// `BPF_F_NO_PREALLOC`: the classifier's hash maps are sized for the
/// largest rulesets, and preallocated they would cost every topology ~80 MB
/// and their creation time at every first apply; unpreallocated, memory
/// follows the ruleset. Lookups (first packets of a connection only) do
/// not notice.
const NO_PREALLOC: u32 = 1;

#[map]
pub static NETCTL_RS_SUMMARY: HashMap<RsWordKey, RsSummary> =
    HashMap::pinned(MAP_RS_SUMMARY_MAX, NO_PREALLOC);

#[map]
pub static NETCTL_RS_WORDS: HashMap<RsWordKey, u64> =
    HashMap::pinned(MAP_RS_WORDS_MAX, NO_PREALLOC);

#[map]
pub static NETCTL_RS_ENTRIES: Array<RuleEntry> =
    Array::pinned(2 * hook::COUNT as u32 * RS_ENTRIES_MAX, 0);

#[map]
pub static NETCTL_RS_LOG: Array<[u8; RS_LOG_LEN]> = Array::pinned(2 * RS_LOG_MAX, 0);

/// Per-CPU, unpreallocated: a per-CPU array of every possible slot costs
/// ~0.1 s to create (one per-CPU allocation per slot) at every first
/// apply. A slot's element appears with its first count; a missing one
/// reads as zero.
#[map]
pub static NETCTL_RS_COUNTERS: PerCpuHashMap<u32, IfCounters> =
    PerCpuHashMap::pinned(RS_SLOTS_MAX, NO_PREALLOC);

/// The counters of slots below `RS_SLOTS_LOW` (`MAP_RS_COUNTERS_LOW`).
#[map]
pub static NETCTL_RS_COUNTERS_LOW: PerCpuArray<IfCounters> = PerCpuArray::pinned(RS_SLOTS_LOW, 0);

#[map]
pub static NETCTL_CT: LruHashMap<CtKey, CtEntry> = LruHashMap::pinned(MAP_CT_MAX, 0);

/// The topology's conntrack timeouts (`netctl_common::MAP_CT_TIMEOUTS`).
#[map]
pub static NETCTL_CT_TIMEOUTS: Array<u32> = Array::pinned(ct_timeout::CLASSES, 0);

/// A translated connection's reply tuple -> its key in `NETCTL_CT`.
#[map]
pub static NETCTL_CT_NAT: LruHashMap<CtKey, CtKey> = LruHashMap::pinned(MAP_CT_MAX, 0);

/// An original source -> its latest translated connections
/// (`netctl_common::MAP_NAT_SRC`).
#[map]
pub static NETCTL_NAT_SRC: LruHashMap<NatSrcKey, NatSrc> = LruHashMap::pinned(MAP_CT_MAX, 0);

/// The NAT actions of both generations' rules.
#[map]
pub static NETCTL_RS_NAT: Array<RsNat> = Array::pinned(2 * RS_NAT_MAX, 0);

/// Each host interface's first IPv4 address (MASQUERADE, REDIRECT).
#[map]
pub static NETCTL_IFADDR: HashMap<u32, [u8; 4]> = HashMap::pinned(MAP_IFADDR_MAX, 0);

/// Copies a `T` word by word. Between two map values LLVM cannot rule out
/// an overlap and calls `memmove`, which eBPF runs as a subprogram byte by
/// byte; volatile word accesses stay what they are.
///
/// # Safety
/// Both pointers must be valid and 4-aligned for a `T` whose size is a
/// multiple of 4, and `T` must be plain data.
#[inline(always)]
pub unsafe fn copy_words<T>(dst: *mut T, src: *const T) {
    let n = core::mem::size_of::<T>() / 4;
    let (d, s) = (dst as *mut u32, src as *const u32);
    let mut i = 0;
    while i < n {
        // SAFETY: within both objects (see the contract above).
        unsafe { core::ptr::write_volatile(d.add(i), core::ptr::read_volatile(s.add(i))) };
        i += 1;
    }
}

/// `NETCTL_CONFIG[index]`; a missing slot reads as 0 (off).
#[inline(always)]
pub fn config(index: u32) -> u32 {
    NETCTL_CONFIG.get(index).copied().unwrap_or(0)
}

/// The live port element for `ifindex`, not copied: from the direct-mapped
/// index when the slot is this port's, else from `NETCTL_PORTS`.
#[inline(always)]
pub fn port_ptr(ifindex: u32) -> Option<*const PortInfo> {
    if let Some(p) = NETCTL_PORT_INDEX.get_ptr(ifindex % PORT_INDEX_SLOTS) {
        // SAFETY: an array element, always valid. netctl writes a slot that
        // changes hands with `ifindex` 0 first, so a matching ifindex is
        // never read beside another port's fields.
        if unsafe { (*p).ifindex } == ifindex {
            return Some(p);
        }
    }
    NETCTL_PORTS.get_ptr(ifindex)
}

/// The FDB generation: remembered forwarding answers of another are stale.
#[inline(always)]
pub fn fdb_generation() -> u64 {
    NETCTL_FDB_GEN.get(0).copied().unwrap_or(0)
}

/// Makes every CPU's remembered forwarding answers stale.
#[inline(always)]
pub fn bump_fdb_generation() {
    if let Some(g) = NETCTL_FDB_GEN.get_ptr_mut(0) {
        // Atomic: two CPUs bumping at once must not collapse into one bump.
        // (The bpf target has no atomic read-modify-write types in `core`;
        // this is BPF_ATOMIC | BPF_ADD, what C's __sync_fetch_and_add emits.)
        // SAFETY: an array element, always valid and 8-aligned.
        unsafe {
            core::arch::asm!(
                "lock *(u64 *)({g} + 0) += {one}",
                g = in(reg) g,
                one = in(reg) 1u64,
                options(nostack),
            );
        }
    }
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
    let redirected = u64::from(
        why == reason::REDIRECT_L2 || why == reason::REDIRECT_L3 || why == reason::REDIRECT_NEIGH,
    );

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

/// Counts one `flow_stat::*` event.
#[inline(always)]
pub fn count_flow(what: u32) {
    if let Some(n) = NETCTL_FLOW_STATS.get_ptr_mut(what) {
        // SAFETY: this CPU's slot of an array element (see `account`).
        unsafe { *n = (*n).wrapping_add(1) };
    }
}

/// Adds one packet of `len` bytes to rule counter `slot`.
#[inline(always)]
pub fn count_rule(slot: u32, len: u32) {
    if slot < RS_SLOTS_LOW {
        if let Some(c) = NETCTL_RS_COUNTERS_LOW.get_ptr_mut(slot) {
            // SAFETY: this CPU's copy of an array element (see `account`).
            unsafe {
                (*c).packets = (*c).packets.wrapping_add(1);
                (*c).bytes = (*c).bytes.wrapping_add(u64::from(len));
            }
        }
        return;
    }
    if let Some(c) = NETCTL_RS_COUNTERS.get_ptr_mut(slot) {
        // SAFETY: as in `account`: this CPU's copy of a live element.
        unsafe {
            (*c).packets = (*c).packets.wrapping_add(1);
            (*c).bytes = (*c).bytes.wrapping_add(u64::from(len));
        }
    } else {
        // The slot's first count: the kernel zeroes the other CPUs' copies.
        // Should another CPU create it meanwhile, this only writes this
        // CPU's copy, which is still right.
        let first = IfCounters {
            packets: 1,
            bytes: u64::from(len),
        };
        let _ = NETCTL_RS_COUNTERS.insert(slot, first, 0);
    }
}

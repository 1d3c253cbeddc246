//! Types shared by the eBPF programs (`netctl-ebpf`, built for
//! `bpfel-unknown-none`) and userspace (`netctl`).
//!
//! Everything that crosses the kernel boundary is `#[repr(C)]` with explicit
//! padding, so both sides agree on the layout byte for byte. The `user`
//! feature adds `aya::Pod` impls for userspace; the eBPF side builds without it.

#![no_std]

/// Name of the TC program that counts packets and bytes per ingress device.
pub const PROG_TC_COUNT: &str = "netctl_tc_count";

/// Name of the per-CPU hash map `ifindex (u32) -> IfCounters` that
/// [`PROG_TC_COUNT`] fills.
pub const MAP_IF_COUNTERS: &str = "NETCTL_IFSTATS";

/// Capacity of [`MAP_IF_COUNTERS`]: one entry per device the program is
/// attached to; 1024 leaves ample headroom.
pub const MAP_IF_COUNTERS_MAX_ENTRIES: u32 = 1024;

/// TC verdict: hand the packet to the next program (tcx) or to the kernel's
/// default processing (legacy `cls_bpf`, where -1 is `TC_ACT_UNSPEC`).
/// `TC_ACT_PIPE` would end a tcx chain, so programs that observe without
/// deciding return this.
pub const TCX_NEXT: i32 = -1;

/// Packet and byte counters for one device, one instance per CPU.
///
/// `bytes` counts `skb->len` as seen at TC ingress: the frame including the
/// Ethernet header, without FCS.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IfCounters {
    pub packets: u64,
    pub bytes: u64,
}

impl IfCounters {
    /// Sums two per-CPU values; wraps like the kernel's own counters.
    #[must_use]
    pub const fn add(self, other: Self) -> Self {
        Self {
            packets: self.packets.wrapping_add(other.packets),
            bytes: self.bytes.wrapping_add(other.bytes),
        }
    }
}

// The layout is part of the kernel ABI of our maps: no implicit padding.
const _: () = assert!(core::mem::size_of::<IfCounters>() == 16);

// ---------------------------------------------------------------------------
// The fast path (`netctl_ingress`): maps, their keys and values.
//
// All maps are pinned by name under /sys/fs/bpf/netctl/<topology>/, so they
// outlive netctl and a re-apply reuses them (FDB and counters survive).
// ---------------------------------------------------------------------------

/// The TC ingress program on every host-side veth end of an eBPF topology.
pub const PROG_INGRESS: &str = "netctl_ingress";
/// OUTPUT and POSTROUTING for packets the host sends to a container: the
/// TC egress program on every host-side veth end.
pub const PROG_EGRESS: &str = "netctl_egress";
/// nat OUTPUT for the host's packets to its own addresses, on TC ingress
/// of `lo`.
pub const PROG_LOCAL: &str = "netctl_local";
/// The XDP program for the earliest drop point (attached only when needed).
pub const PROG_XDP: &str = "netctl_xdp";

/// `ifindex (u32) -> PortInfo`: the host-side veth ends the datapath owns.
pub const MAP_PORTS: &str = "NETCTL_PORTS";
pub const MAP_PORTS_MAX: u32 = 4096;
/// Array of `PortInfo` indexed by `ifindex % PORT_INDEX_SLOTS`, holding
/// the same ports as `MAP_PORTS` (a slot whose `PortInfo::ifindex` is not
/// the packet's is someone else's, or empty: the hash map answers). An
/// array lookup is a few instructions the verifier inlines; a hash lookup
/// is a call that hashes the key.
pub const MAP_PORT_INDEX: &str = "NETCTL_PORT_INDEX";
pub const PORT_INDEX_SLOTS: u32 = 1024;
/// Array of one `u64`: the FDB generation, bumped whenever a forwarding
/// answer a CPU remembered may have gone wrong: by the datapath when a MAC
/// moves to another port (adding 1, atomically), by netctl at every write
/// of the maps (ports, ageing times, FDB deletions; adding 2^32). An
/// answer (`PortStats::forwarded`) of another generation is not used.
pub const MAP_FDB_GEN: &str = "NETCTL_FDB_GEN";
/// `FdbKey -> FdbEntry`: learned source MACs per bridge (LRU).
pub const MAP_FDB: &str = "NETCTL_FDB";
pub const MAP_FDB_MAX: u32 = 65536;
/// LPM trie `Key<[u8; 4]> -> RouteValue`: the host namespace's IPv4 main
/// table plus its local addresses, mirrored by netctl.
pub const MAP_ROUTES: &str = "NETCTL_ROUTES";
pub const MAP_ROUTES_MAX: u32 = 16384;
/// `[u8; 4] (IPv4, network order) -> NeighEntry`: container addresses.
pub const MAP_NEIGH: &str = "NETCTL_NEIGH";
pub const MAP_NEIGH_MAX: u32 = 65536;
/// Per-CPU array of `u64` indexed by `reason::*`.
pub const MAP_STATS: &str = "NETCTL_STATS";
/// Per-CPU array of `u64` indexed by `flow_stat::*`: how the rule
/// classifier's flow cache fares.
pub const MAP_FLOW_STATS: &str = "NETCTL_FLOW_STATS";

/// Indexes of `MAP_FLOW_STATS`.
pub mod flow_stat {
    /// A hook's walk replayed from the flow cache.
    pub const HIT: u32 = 0;
    /// A cacheable walk (a program of one block) not in the cache.
    pub const MISS: u32 = 1;
    /// A walk's outcome stored (a miss that did not log).
    pub const STORED: u32 = 2;
    pub const COUNT: u32 = 3;
    pub const NAMES: [&str; COUNT as usize] = ["hit", "miss", "stored"];
}

/// Per-CPU array of `PortStats` indexed by `PortInfo::slot` (an array
/// lookup is much cheaper per packet than a hash lookup).
pub const MAP_PORT_STATS: &str = "NETCTL_PORT_STATS";
/// Array of `u32` indexed by `config::*`: runtime switches.
pub const MAP_CONFIG: &str = "NETCTL_CONFIG";
pub const MAP_CONFIG_MAX: u32 = 8;

/// Indexes of `MAP_CONFIG`.
pub mod config {
    /// Non-zero: emit aya-log events (off by default; costs one array
    /// lookup per packet when off).
    pub const TRACE: u32 = 0;
    /// Non-zero: the host namespace forwards IPv4 (`ip_forward=1`), so the
    /// routed fast path may forward too.
    pub const FORWARD: u32 = 1;
    /// Bumped by every ruleset swap; its low bit is the live generation of
    /// the classifier's maps, so one write switches generation and serial
    /// together. Cached classifications (in conntrack entries) of an older
    /// serial are stale.
    pub const RULES_SERIAL: u32 = 3;
    /// Non-zero while the live ruleset has any entry at any hook: with no
    /// rules the fast path skips conntrack and classification entirely.
    pub const RULES_ON: u32 = 4;
    /// Set while a swap clears the old generation: if that is cut short,
    /// the next swap must first clear leftovers of the one it writes.
    pub const RULES_DIRTY: u32 = 5;
    /// The revision of the maps' meaning that netctl last wrote them for
    /// (see `netctl`'s `datapath::layout`): a map whose values mean
    /// something else since, at the same size, is recreated.
    pub const LAYOUT: u32 = 6;
}

/// `MAP_STATS` index past the reasons: the `PortStats::steady_l2` counts
/// of ports that are gone, which netctl adds up there when it removes a
/// port, so that the `REDIRECT_L2` total never goes backwards. Only
/// netctl writes it.
pub const STATS_STEADY_RETIRED: u32 = reason::COUNT;
/// Entries of `MAP_STATS`.
pub const MAP_STATS_ENTRIES: u32 = reason::COUNT + 1;

/// What the datapath did with a packet: indexes of `MAP_STATS`.
pub mod reason {
    /// Same bridge: delivered into the destination container's eth0.
    pub const REDIRECT_L2: u32 = 0;
    /// Routed between bridges: MACs rewritten, TTL decremented, delivered.
    pub const REDIRECT_L3: u32 = 1;
    /// Handed to the kernel: ingress device is not a port of ours.
    pub const PASS_NOT_PORT: u32 = 2;
    /// Handed to the kernel: broadcast or multicast destination (ARP, ND…).
    pub const PASS_MULTICAST: u32 = 3;
    /// Handed to the kernel: destination MAC unknown or aged out (flood).
    pub const PASS_UNKNOWN: u32 = 4;
    /// Handed to the kernel: destination is on the ingress port itself.
    pub const PASS_SAME_PORT: u32 = 5;
    /// Handed to the kernel: addressed to the host (a local address).
    pub const PASS_LOCAL: u32 = 6;
    /// Handed to the kernel: not IPv4 (IPv6 for now, other ethertypes).
    pub const PASS_NOT_IPV4: u32 = 7;
    /// Handed to the kernel: no route, or a route the datapath does not own.
    pub const PASS_NO_ROUTE: u32 = 8;
    /// Handed to the kernel: next hop's MAC or port unknown.
    pub const PASS_NO_NEIGH: u32 = 9;
    /// Handed to the kernel: TTL would expire (the kernel answers ICMP).
    pub const PASS_TTL: u32 = 10;
    /// Handed to the kernel: forwarding is off in the host namespace.
    pub const PASS_FORWARD_OFF: u32 = 11;
    /// Handed to the kernel: IPv4 with options or fragments, or truncated.
    pub const PASS_IP_SPECIAL: u32 = 12;
    /// The redirect helper failed; the packet was handed to the kernel.
    pub const PASS_REDIRECT_FAILED: u32 = 13;
    /// Dropped by a rule or policy (DROP).
    pub const DROP_RULE: u32 = 14;
    /// Rejected by a rule (REJECT): the answer was sent back.
    pub const REJECT_RULE: u32 = 15;
    /// Rejected by a rule, but the answer could not be built (the packet
    /// was dropped, as the kernel drops it when it cannot answer).
    pub const REJECT_FAILED: u32 = 16;
    /// Translated by NAT and sent out through the kernel's neighbour table
    /// (`bpf_redirect_neigh`): the kernel's own input path would drop a
    /// packet whose source became one of its addresses.
    pub const REDIRECT_NEIGH: u32 = 17;
    /// Dropped by NAT: no address to masquerade to, no free port, or a
    /// rewrite that failed (the kernel drops these too).
    pub const DROP_NAT: u32 = 18;
    pub const COUNT: u32 = 19;

    pub const NAMES: [&str; COUNT as usize] = [
        "redirect_l2",
        "redirect_l3",
        "pass_not_port",
        "pass_multicast",
        "pass_unknown_dst",
        "pass_same_port",
        "pass_local",
        "pass_not_ipv4",
        "pass_no_route",
        "pass_no_neigh",
        "pass_ttl",
        "pass_forward_off",
        "pass_ip_special",
        "pass_redirect_failed",
        "drop_rule",
        "reject_rule",
        "reject_failed",
        "redirect_neigh",
        "drop_nat",
    ];
}

/// One host-side veth end.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortInfo {
    /// ifindex of the bridge the port is enslaved to.
    pub bridge: u32,
    /// `PORT_F_*` flags.
    pub flags: u32,
    /// The bridge's own MAC: frames to it are for the host or to be routed.
    pub bridge_mac: [u8; 6],
    /// The port's index in `MAP_PORT_STATS` (assigned by netctl, stable for
    /// the port's life so counters survive re-applies).
    pub slot: u16,
    /// FDB entries older than this are ignored (the bridge's ageing time).
    pub ageing_ns: u64,
    /// The bridge's first IPv4 address (network order; 0 if none): the
    /// source of the ICMP errors REJECT sends for forwarded packets, as the
    /// kernel picks the address of the interface the error leaves by.
    pub bridge_ip: [u8; 4],
    /// The port's own ifindex (`MAP_PORT_INDEX` checks it).
    pub ifindex: u32,
}

/// The port hairpins: frames may go back out the port they came in on.
pub const PORT_F_HAIRPIN: u32 = 1;
/// Not a container's port but the topology's uplink: `bridge` is the
/// uplink itself, `bridge_mac` and `bridge_ip` its own; nothing is learned
/// or bridged there, frames to its MAC are routed.
pub const PORT_F_UPLINK: u32 = 2;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FdbKey {
    pub bridge: u32,
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FdbEntry {
    /// The port (host-side veth ifindex) the MAC was last seen on.
    pub port: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` of the last frame from this MAC (CLOCK_MONOTONIC).
    pub last_seen_ns: u64,
}

/// Route kinds in `MAP_ROUTES`.
pub mod route_kind {
    /// On-link through a bridge of the topology: next hop is the destination.
    pub const CONNECTED: u32 = 0;
    /// Through a gateway: next hop is `RouteValue::gateway`.
    pub const GATEWAY: u32 = 1;
    /// A local address of the host namespace: deliver to the kernel.
    pub const LOCAL: u32 = 2;
    /// Anything the datapath does not handle (other devices, unreachable…).
    pub const KERNEL: u32 = 3;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteValue {
    pub kind: u32,
    /// Egress bridge ifindex for CONNECTED/GATEWAY; for KERNEL, the route's
    /// output device (0: none), which `-o` rules match against.
    pub bridge: u32,
    /// Gateway, IPv4 in network byte order (GATEWAY only).
    pub gateway: [u8; 4],
    pub _pad: u32,
    /// The egress bridge's MAC and ageing time (CONNECTED/GATEWAY): the new
    /// source MAC of a routed frame and the freshness its next hop's FDB
    /// entry needs, written here once so the router looks up no port.
    pub bridge_mac: [u8; 6],
    pub _pad2: [u8; 2],
    pub ageing_ns: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NeighEntry {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
    /// The bridge the neighbour sits behind.
    pub bridge: u32,
}

/// What each CPU keeps per port (`MAP_PORT_STATS`, by `PortInfo::slot`):
/// the port's counters, and this CPU's learning and forwarding shortcuts
/// beside them, so that a frame reads and writes one per-CPU value of its
/// port rather than several (the first load from each tends to stall on
/// busy hosts).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames of steady bridged flows (see `netctl-ebpf`'s `steady`),
    /// which are `reason::REDIRECT_L2` decisions counted here only, not in
    /// `MAP_STATS` nor in `rx_packets` and `redirected`, so that such a
    /// frame touches nothing but the first 56 bytes of this value: the
    /// decision's total is `MAP_STATS`'s count plus these of every port
    /// plus `STATS_STEADY_RETIRED`.
    pub steady_l2: u64,
    /// Bytes of all frames seen at ingress of the port.
    pub rx_bytes: u64,
    /// Not a counter: what lets the next frame of the flow take the
    /// steady path.
    pub steady: Steady,
    /// Frames seen at ingress of the port, but for `steady_l2`.
    pub rx_packets: u64,
    /// Of those, the frames the datapath delivered itself (L2 or L3); the
    /// others were handed to the kernel or dropped.
    pub redirected: u64,
    /// Not a counter: the source this CPU last learned on the port.
    pub learned: Learned,
    /// Not a counter: where this CPU last bridged a frame from the port.
    pub forwarded: Forwarded,
}

/// A steady bridged flow as this CPU last saw it on a port: frames from
/// `src` to `dst` go to port `egress`, needing neither learning nor an FDB
/// lookup nor rules, while the FDB generation is `generation` and the
/// jiffies counter is below `until_jiffies`. Written by the full path when
/// it bridged such a frame with the source's entry refreshed and the
/// destination's fresh, no rules and tracing off (as read after the
/// generation; netctl changes the generation after turning either on).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Steady {
    pub generation: u64,
    /// MACs as `Forwarded::mac`.
    pub src: u64,
    pub dst: u64,
    /// The earlier of: when the source's entry is due for a refresh, and
    /// when the destination's ages out; counted in jiffies as if one lasted
    /// 10 ms (HZ = 100, the longest), so that it expires early, never late,
    /// whatever the kernel's HZ.
    pub until_jiffies: u64,
    pub egress: u32,
    /// The port (ifindex) the flow enters by; 0: nothing remembered. The
    /// steady path finds the value by the ifindex alone (slot `ifindex %
    /// MAP_PORTS_MAX`, which netctl gives a port whenever it can) and
    /// checks it here.
    pub ingress: u32,
}

/// The answer of the FDB this CPU last used to bridge a frame from a port:
/// while the generation (`MAP_FDB_GEN`) is the same and the entry is
/// not older than the bridge's ageing time, a frame to the same MAC goes
/// to the same port without an FDB lookup, as it would with one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Forwarded {
    /// The entry's `last_seen_ns` plus the bridge's ageing time.
    pub until_ns: u64,
    /// `MAP_FDB_GEN` as read before the lookup.
    pub generation: u64,
    /// The port the MAC is on.
    pub egress: u32,
    pub _pad: u32,
    /// The MAC, its bytes in the low 48 bits from the least significant
    /// up (as a little-endian load of the header gives it).
    pub mac: u64,
}

/// The FDB entry a CPU last found fresh or wrote for a port's source MAC,
/// and when that entry was refreshed. While that is recent, the next frame
/// from the same MAC needs no FDB lookup to know there is nothing to
/// refresh.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Learned {
    pub refreshed_ns: u64,
    pub bridge: u32,
    pub _pad: u32,
    /// As `Forwarded::mac`.
    pub mac: u64,
}

const _: () = assert!(core::mem::size_of::<PortInfo>() == 32);
const _: () = assert!(core::mem::size_of::<FdbKey>() == 12);
const _: () = assert!(core::mem::size_of::<FdbEntry>() == 16);
const _: () = assert!(core::mem::size_of::<RouteValue>() == 32);
const _: () = assert!(core::mem::size_of::<NeighEntry>() == 12);
const _: () = assert!(core::mem::size_of::<Learned>() == 24);
const _: () = assert!(core::mem::size_of::<Forwarded>() == 32);
const _: () = assert!(core::mem::size_of::<Steady>() == 40);
const _: () = assert!(core::mem::size_of::<PortStats>() == 128);

#[cfg(feature = "user")]
mod user {
    // SAFETY: `IfCounters` is `#[repr(C)]`, `Copy`, made only of integers and
    // has no padding (asserted above), so every bit pattern is a valid value
    // and aya may read and write it as plain bytes.
    unsafe impl aya::Pod for super::IfCounters {}
    // SAFETY (all below): `#[repr(C)]`, `Copy`, integers and byte arrays
    // only, with explicit padding fields and sizes asserted above, so every
    // bit pattern is valid.
    unsafe impl aya::Pod for super::PortInfo {}
    unsafe impl aya::Pod for super::FdbKey {}
    unsafe impl aya::Pod for super::FdbEntry {}
    unsafe impl aya::Pod for super::RouteValue {}
    unsafe impl aya::Pod for super::RsNat {}
    unsafe impl aya::Pod for super::NeighEntry {}
    unsafe impl aya::Pod for super::PortStats {}
    unsafe impl aya::Pod for super::RuleEntry {}
    unsafe impl aya::Pod for super::RsHook {}
    unsafe impl aya::Pod for super::RsClassKey {}
    unsafe impl aya::Pod for super::RsWordKey {}
    unsafe impl aya::Pod for super::RsSummary {}
    unsafe impl aya::Pod for super::CtKey {}
    unsafe impl aya::Pod for super::CtEntry {}
    unsafe impl aya::Pod for super::NatSrcKey {}
    unsafe impl aya::Pod for super::NatSrc {}
}

// ---------------------------------------------------------------------------
// Netfilter rules, compiled (see `netctl::rules::compile`).
//
// Each hook has a flattened program: a list of entries (rules with user
// chains inlined, table blocks in raw → mangle → nat → filter order, the
// policies as entries of their own). A packet's fields are classified one
// field at a time (an LPM lookup per field gives a class); each (field,
// class) has a bitvector over the entries that hold for it; the entries that
// match are the AND over fields, and the first one at or after the cursor
// decides. Bitvectors are stored sparse: a summary over blocks of 64
// entries, and one 64-bit word per non-empty block; the entries that do not
// constrain a field are kept once, as class `RS_CLASS_WILD`.
//
// Every key carries the generation (0/1); `config::RULES_SERIAL` picks the live
// one.
// ---------------------------------------------------------------------------

/// The classified fields, indexes into per-field tables.
pub mod field {
    /// Source address (32-bit key).
    pub const SRC: u8 = 0;
    /// Destination address (32-bit key).
    pub const DST: u8 = 1;
    /// IP protocol (8-bit key).
    pub const PROTO: u8 = 2;
    /// tcp/udp source port (16-bit key; 0 for other protocols).
    pub const SPORT: u8 = 3;
    /// tcp/udp destination port (16-bit key; 0 for other protocols).
    pub const DPORT: u8 = 4;
    /// ICMP `type << 8 | code` (16-bit key; 0 for other protocols).
    pub const ICMP: u8 = 5;
    /// Input interface ifindex (32-bit key; 0: none, as in OUTPUT).
    pub const IN: u8 = 6;
    /// Output interface ifindex (32-bit key; 0: none, as in PREROUTING).
    pub const OUT: u8 = 7;
    /// Conntrack state, one `ctbit::*` (8-bit key).
    pub const CTSTATE: u8 = 8;
    pub const COUNT: u8 = 9;
    /// Key width in bits per field.
    pub const WIDTH: [u8; COUNT as usize] = [32, 32, 8, 16, 16, 16, 32, 32, 8];
}

/// Conntrack state bits, as `-m conntrack --ctstate` names them.
pub mod ctbit {
    pub const INVALID: u8 = 1 << 0;
    pub const NEW: u8 = 1 << 1;
    pub const ESTABLISHED: u8 = 1 << 2;
    pub const RELATED: u8 = 1 << 3;
    pub const UNTRACKED: u8 = 1 << 4;
}

/// The five hooks, indexes of per-hook tables.
pub mod hook {
    pub const PREROUTING: u8 = 0;
    pub const INPUT: u8 = 1;
    pub const FORWARD: u8 = 2;
    pub const OUTPUT: u8 = 3;
    pub const POSTROUTING: u8 = 4;
    pub const COUNT: u8 = 5;
}

/// Most entries one hook's flattened program may have.
pub const RS_ENTRIES_MAX: u32 = 65536;
/// Blocks of 64 entries, and the summary words over them.
pub const RS_BLOCKS_MAX: u32 = RS_ENTRIES_MAX / 64;
pub const RS_SUMMARY_WORDS: usize = (RS_BLOCKS_MAX / 64) as usize;
/// Most matching non-final entries a packet may walk at one hook: the
/// compiler refuses rulesets that could need more, and the classifier's
/// loop is bounded by it (plus one step per block).
pub const RS_WALK_MAX: u32 = 256;
/// The class of the entries that do not constrain a field.
pub const RS_CLASS_WILD: u32 = u32::MAX;
/// `RuleEntry::slot` of an entry that counts nothing.
pub const RS_NO_SLOT: u32 = u32::MAX;
/// Counter slots (rules and policies; both generations' during a swap).
pub const RS_SLOTS_MAX: u32 = 131072;
/// LOG prefixes per generation, and their length (iptables allows 29).
pub const RS_LOG_MAX: u32 = 1024;
pub const RS_LOG_LEN: usize = 32;

/// `RuleEntry::kind`.
pub mod entry {
    /// Count and go on with the next entry (a jump's own rule, a rule
    /// without target).
    pub const CONTINUE: u8 = 0;
    /// Count, log (`RuleEntry::arg` is the LOG prefix index), go on.
    pub const LOG: u8 = 1;
    /// Count and go on at `RuleEntry::target`: ACCEPT (the end of its
    /// table's block), RETURN and the end of a goto'd chain (the end of
    /// the calling chain's block), an ACCEPT policy.
    pub const SKIP: u8 = 2;
    /// Count and drop (DROP, a DROP policy).
    pub const DROP: u8 = 3;
    /// Count and reject; `RuleEntry::arg` is a `reject::*`.
    pub const REJECT: u8 = 4;
    /// Count, record NAT action `RuleEntry::log` (an index into
    /// `MAP_RS_NAT`) for the connection, and go on at `target` (the end of
    /// the nat table's block: a NAT target ends the nat table's walk).
    pub const NAT: u8 = 5;
}

/// `--reject-with`, as `RuleEntry::arg` of a REJECT entry.
pub mod reject {
    pub const ICMP_PORT_UNREACHABLE: u8 = 0;
    pub const ICMP_NET_UNREACHABLE: u8 = 1;
    pub const ICMP_HOST_UNREACHABLE: u8 = 2;
    pub const ICMP_ADMIN_PROHIBITED: u8 = 3;
    pub const TCP_RESET: u8 = 4;
}

/// One entry of a hook's flattened program.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleEntry {
    /// An `entry::*`.
    pub kind: u8,
    /// `reject::*` for REJECT, else 0.
    pub reject: u8,
    pub _pad: u16,
    /// Where SKIP goes on (an entry index; `entries` means "accepted").
    pub target: u32,
    /// Counter slot in `MAP_RS_COUNTERS`, or `RS_NO_SLOT`.
    pub slot: u32,
    /// LOG prefix index in `MAP_RS_LOG` (LOG only).
    pub log: u32,
}

/// One hook's program in one generation: `MAP_RS_HOOKS[gen * 5 + hook]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RsHook {
    /// Entries in the program; 0: the hook accepts everything uncounted.
    pub entries: u32,
    /// The nat table's block `[nat_start, nat_end)`: walked only for the
    /// first packet of a connection, as in the kernel.
    pub nat_start: u32,
    pub nat_end: u32,
    /// The end of the raw table's block (which starts at 0): the kernel
    /// runs raw before conntrack, so the classifier walks `[0, raw_end)`
    /// first, with the state INVALID, and tracks only what raw let through.
    pub raw_end: u32,
}

/// Key of `MAP_RS_CLASS` (an LPM trie): `prefixlen` is 32 (the four header
/// bytes) plus the field's prefix length; `value` is the field's key,
/// big-endian, left-aligned in 32 bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RsClassKey {
    pub prefixlen: u32,
    pub generation: u8,
    pub hook: u8,
    pub field: u8,
    pub _pad: u8,
    pub value: [u8; 4],
}

/// Key of `MAP_RS_SUMMARY` and, with a block, of `MAP_RS_WORDS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RsWordKey {
    pub generation: u8,
    pub hook: u8,
    pub field: u8,
    pub _pad: u8,
    pub class: u32,
    /// The block (entries `64 * block ..`); `u32::MAX` in summary keys.
    pub block: u32,
}

/// Which blocks hold an entry of a (field, class): bit `b % 64` of word
/// `b / 64`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RsSummary {
    pub words: [u64; RS_SUMMARY_WORDS],
}

impl Default for RsSummary {
    fn default() -> Self {
        Self {
            words: [0; RS_SUMMARY_WORDS],
        }
    }
}

pub const MAP_RS_HOOKS: &str = "NETCTL_RS_HOOKS";
pub const MAP_RS_CLASS: &str = "NETCTL_RS_CLASS";
pub const MAP_RS_CLASS_MAX: u32 = 524288;
pub const MAP_RS_SUMMARY: &str = "NETCTL_RS_SUMMARY";
pub const MAP_RS_SUMMARY_MAX: u32 = 524288;
pub const MAP_RS_WORDS: &str = "NETCTL_RS_WORDS";
pub const MAP_RS_WORDS_MAX: u32 = 1048576;
/// Array of `RuleEntry`, index `(gen * 5 + hook) * RS_ENTRIES_MAX + entry`.
pub const MAP_RS_ENTRIES: &str = "NETCTL_RS_ENTRIES";
/// Array of `[u8; RS_LOG_LEN]`, index `gen * RS_LOG_MAX + log`.
pub const MAP_RS_LOG: &str = "NETCTL_RS_LOG";
/// Per-CPU hash of `IfCounters` (packets, bytes) by counter slot, for
/// slots from `RS_SLOTS_LOW` on.
pub const MAP_RS_COUNTERS: &str = "NETCTL_RS_COUNTERS";
/// Per-CPU array of `IfCounters` for the slots below `RS_SLOTS_LOW`: where
/// nearly every rule's counter lives (slots are the smallest free numbers),
/// bumped per packet at the cost of an array access instead of a hash
/// lookup. Small, because a per-CPU array holds every slot on every CPU.
pub const MAP_RS_COUNTERS_LOW: &str = "NETCTL_RS_COUNTERS_LOW";
pub const RS_SLOTS_LOW: u32 = 4096;

const _: () = assert!(core::mem::size_of::<RuleEntry>() == 16);
const _: () = assert!(core::mem::size_of::<RsHook>() == 16);
const _: () = assert!(core::mem::size_of::<RsClassKey>() == 12);
const _: () = assert!(core::mem::size_of::<RsWordKey>() == 12);

// ---------------------------------------------------------------------------
// Connection tracking.
// ---------------------------------------------------------------------------

/// `CtKey -> CtEntry` (LRU): one entry per connection, keyed by its tuple in
/// a canonical order (the lower address/port pair first), so both
/// directions find it with one lookup.
pub const MAP_CT: &str = "NETCTL_CT";
/// The kernel's `nf_conntrack_max` on a host of this size. An LRU map is
/// always preallocated (~240 bytes an entry), so this is memory every
/// topology with a datapath holds.
pub const MAP_CT_MAX: u32 = 65536;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CtKey {
    pub proto: u8,
    /// 1: the second connection of this pair of endpoints. A translated
    /// connection's original tuple turned around is not its reply tuple,
    /// so a packet with it starts a connection of its own (the kernel's
    /// tuples are directional) and, its own reply tuple being the first
    /// one's original, gets its source port remapped. Both share the
    /// canonical key; the second is filed under this one.
    pub clash: u8,
    pub _pad: [u8; 2],
    /// The lower of the two (address, port) pairs.
    pub a_addr: [u8; 4],
    pub b_addr: [u8; 4],
    /// Ports in host order; for ICMP both are the echo identifier; 0 for
    /// protocols without ports.
    pub a_port: u16,
    pub b_port: u16,
}

/// TCP states of a connection, as the kernel names them.
pub mod tcp_state {
    pub const NONE: u8 = 0;
    pub const SYN_SENT: u8 = 1;
    pub const SYN_RECV: u8 = 2;
    pub const ESTABLISHED: u8 = 3;
    pub const FIN_WAIT: u8 = 4;
    pub const CLOSE_WAIT: u8 = 5;
    pub const LAST_ACK: u8 = 6;
    pub const TIME_WAIT: u8 = 7;
    pub const CLOSE: u8 = 8;
    pub const SYN_SENT2: u8 = 9;
    pub const COUNT: u8 = 10;
    pub const NAMES: [&str; COUNT as usize] = [
        "NONE",
        "SYN_SENT",
        "SYN_RECV",
        "ESTABLISHED",
        "FIN_WAIT",
        "CLOSE_WAIT",
        "LAST_ACK",
        "TIME_WAIT",
        "CLOSE",
        "SYN_SENT2",
    ];
}

/// `CtEntry::flags`.
pub mod ct_flag {
    /// A packet went in the reply direction (`IPS_SEEN_REPLY`).
    pub const SEEN_REPLY: u8 = 1;
    /// Stands for the kernel's unconfirmed conntrack of a packet it drops
    /// after PREROUTING (TTL expiry, no route): it is in no table, so the
    /// connection's next packet is NEW again, but the ICMP error the host
    /// sends about the packet is attached to it (`nf_ct_attach`), RELATED
    /// and translated by its binding. Only such errors find the entry.
    pub const UNCONFIRMED: u8 = 2;
}

/// A cached classification of one direction of a connection: the verdict
/// and the counters it bumps, valid while the ruleset generation, the
/// packet's conntrack state and its route stay the same.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtCache {
    /// Ruleset serial + 1 the cache was filled under (0: empty).
    pub serial: u32,
    /// The interfaces and hooks the packets took (`-i`, `-o`, path).
    pub in_if: u32,
    pub out_if: u32,
    /// The `ctbit::*` the packets had.
    pub ctstate: u8,
    /// `verdict::*`.
    pub verdict: u8,
    /// `reject::*` when the verdict is REJECT.
    pub reject: u8,
    /// Slots in use.
    pub nslots: u8,
    pub path: u8,
    pub _pad: [u8; 3],
    pub slots: [u32; CT_CACHE_SLOTS],
}

/// Rule counters a connection's cached outcome replays: a path through
/// Docker's rules bumps seven (the jumps into and RETURNs out of
/// DOCKER-USER and the isolation chains); more make a path uncacheable.
pub const CT_CACHE_SLOTS: usize = 12;

/// Outcomes of the rules for a packet.
pub mod verdict {
    pub const ACCEPT: u8 = 0;
    pub const DROP: u8 = 1;
    pub const REJECT: u8 = 2;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtEntry {
    /// The originator's address and port: tells the two directions apart.
    pub orig_addr: [u8; 4],
    pub orig_port: u16,
    /// `tcp_state::*` (TCP only).
    pub tcp_state: u8,
    /// `ct_flag::*`.
    pub flags: u8,
    /// `bpf_ktime_get_ns()` when the connection was created / last seen.
    pub created_ns: u64,
    pub last_seen_ns: u64,
    /// Packets and bytes, original then reply direction.
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
    pub cache: [CtCache; 2],
    /// The translation the nat table chose for the connection's first
    /// packet (all zero: none).
    pub nat: CtNat,
}

/// A connection's NAT binding, as the kernel's conntrack keeps it: the
/// original direction's source becomes `snat_*` (SNAT, MASQUERADE) and its
/// destination `dnat_*` (DNAT, REDIRECT); the reply direction is translated
/// back. The reply tuple is therefore (dnat or original destination) ->
/// (snat or original source); `MAP_CT_NAT` finds the entry by it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtNat {
    /// `nat_bit::*`.
    pub flags: u8,
    pub _pad: [u8; 3],
    /// Network order addresses; ports in host order.
    pub snat_addr: [u8; 4],
    pub dnat_addr: [u8; 4],
    pub snat_port: u16,
    pub dnat_port: u16,
}

/// `CtNat::flags`.
pub mod nat_bit {
    /// The source was translated (SNAT, MASQUERADE).
    pub const SRC: u8 = 1 << 0;
    /// The destination was translated (DNAT, REDIRECT).
    pub const DST: u8 = 1 << 1;
}

/// `CtKey (reply tuple, canonical order) -> CtKey (the connection's key in
/// MAP_CT)` (LRU, as big as `MAP_CT`): how packets of a translated
/// connection's reply direction, whose tuple is not the original one, find
/// their entry. Only translated connections have an element here.
pub const MAP_CT_NAT: &str = "NETCTL_CT_NAT";

/// `NatSrcKey -> NatSrc` (LRU, as big as `MAP_CT`): the connections whose
/// source was last translated, per original source, newest first. The
/// kernel's `find_appropriate_src` walks its `nf_nat_bysource` list the
/// same way: a new connection from that source, outside the range of its
/// SNAT or MASQUERADE rule, takes the newest live one's mapping that lies
/// in the range, if its tuple is free — one source keeps one translation
/// whatever the destination. The mapping is read from each connection's
/// live entry.
pub const MAP_NAT_SRC: &str = "NETCTL_NAT_SRC";
/// Connections `NatSrc` remembers per source.
pub const NAT_SRC_SLOTS: usize = 4;

/// An original source: protocol, address and port (ICMP: the query
/// identifier; 0 for protocols without ports).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct NatSrcKey {
    pub proto: u8,
    pub _pad: u8,
    /// Host order.
    pub port: u16,
    pub addr: [u8; 4],
}

/// Keys in `MAP_CT` of the source's translated connections, newest
/// first; an empty slot has protocol 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatSrc {
    pub conns: [CtKey; NAT_SRC_SLOTS],
}

/// `ifindex (u32) -> [u8; 4]`: the first IPv4 address of every interface
/// of the host namespace (network order), as MASQUERADE (the outgoing
/// interface's) and REDIRECT (the incoming one's) need it. Kept by netctl.
pub const MAP_IFADDR: &str = "NETCTL_IFADDR";
pub const MAP_IFADDR_MAX: u32 = 4096;

// ---------------------------------------------------------------------------
// NAT targets, compiled: an `entry::NAT` entry's `arg` indexes
// `MAP_RS_NAT[generation * RS_NAT_MAX + arg]`.
// ---------------------------------------------------------------------------

/// `Array<RsNat>`, both generations.
pub const MAP_RS_NAT: &str = "NETCTL_RS_NAT";
/// NAT actions per generation.
pub const RS_NAT_MAX: u32 = 4096;

/// What a nat-table rule's target does.
pub mod nat_kind {
    /// `SNAT --to-source ADDR[-ADDR][:PORT[-PORT]]`.
    pub const SNAT: u8 = 1;
    /// `MASQUERADE [--to-ports PORT[-PORT]]`: the source becomes the
    /// outgoing interface's (primary) address.
    pub const MASQUERADE: u8 = 2;
    /// `DNAT --to-destination ADDR[-ADDR][:PORT[-PORT]]`.
    pub const DNAT: u8 = 3;
    /// `REDIRECT [--to-ports PORT[-PORT]]`: the destination becomes the
    /// incoming interface's primary address (127.0.0.1 for the host's own
    /// packets).
    pub const REDIRECT: u8 = 4;
}

/// One NAT action (`MAP_RS_NAT`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RsNat {
    /// `nat_kind::*`.
    pub kind: u8,
    /// `nat_range::*`.
    pub flags: u8,
    pub _pad: u16,
    /// The address range (network order, inclusive); zero for MASQUERADE
    /// and REDIRECT.
    pub addr_min: [u8; 4],
    pub addr_max: [u8; 4],
    /// The port range (host order, inclusive), when `nat_range::PORTS`.
    pub port_min: u16,
    pub port_max: u16,
}

/// `RsNat::flags`.
pub mod nat_range {
    /// A port range was given (`:PORT[-PORT]`, `--to-ports`).
    pub const PORTS: u8 = 1 << 0;
}

/// The address of `[min, max]` (network order, inclusive) the kernel's
/// `find_best_ips_proto` picks for a connection from `saddr` to `daddr`
/// (its tuple after any earlier translation), without `--persistent`:
/// jhash2 over the source address (as the 16-byte `nf_inet_addr`, IPv4 in
/// its first word) seeded with the destination, scaled onto the range.
/// Deterministic, so one client keeps one address per destination.
#[inline(always)]
pub fn nat_range_pick(saddr: [u8; 4], daddr: [u8; 4], min: [u8; 4], max: [u8; 4]) -> [u8; 4] {
    let (lo, hi) = (u32::from_be_bytes(min), u32::from_be_bytes(max));
    if hi <= lo {
        return min;
    }
    let j = jhash2_ipv4(u32::from_ne_bytes(saddr), u32::from_ne_bytes(daddr));
    // reciprocal_scale(j, dist); a full 2^32 range cannot be written.
    let dist = u64::from(hi - lo) + 1;
    let off = ((u64::from(j) * dist) >> 32) as u32;
    (lo.wrapping_add(off)).to_be_bytes()
}

/// The kernel's `jhash2(k, 4, initval)` for `k = [word, 0, 0, 0]` (words
/// as the kernel reads them from memory, native order).
#[inline(always)]
fn jhash2_ipv4(word: u32, initval: u32) -> u32 {
    let init = 0xdead_beef_u32.wrapping_add(16).wrapping_add(initval);
    let (mut a, mut b, mut c) = (init.wrapping_add(word), init, init);
    // __jhash_mix
    a = a.wrapping_sub(c);
    a ^= c.rotate_left(4);
    c = c.wrapping_add(b);
    b = b.wrapping_sub(a);
    b ^= a.rotate_left(6);
    a = a.wrapping_add(c);
    c = c.wrapping_sub(b);
    c ^= b.rotate_left(8);
    b = b.wrapping_add(a);
    a = a.wrapping_sub(c);
    a ^= c.rotate_left(16);
    c = c.wrapping_add(b);
    b = b.wrapping_sub(a);
    b ^= a.rotate_left(19);
    a = a.wrapping_add(c);
    c = c.wrapping_sub(b);
    c ^= b.rotate_left(4);
    b = b.wrapping_add(a);
    // The last word (0) is added to a; then __jhash_final.
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(24));
    c
}

const _: () = assert!(core::mem::size_of::<CtNat>() == 16);
const _: () = assert!(core::mem::size_of::<RsNat>() == 16);

/// `u32 class -> seconds`: the conntrack timeouts a topology sets
/// (`[conntrack]`); 0 (or a map an older netctl pinned without it) means
/// the kernel's default.
pub const MAP_CT_TIMEOUTS: &str = "NETCTL_CT_TIMEOUTS";

/// Conntrack timeouts, by class: one per TCP state (`tcp_state::*`), then
/// UDP, UDP once replied, ICMP, anything else. Defaults and names are the
/// kernel's (`net.netfilter.nf_conntrack_<name>`).
pub mod ct_timeout {
    use super::tcp_state;

    pub const UDP: u32 = tcp_state::COUNT as u32;
    pub const UDP_STREAM: u32 = UDP + 1;
    pub const ICMP: u32 = UDP + 2;
    pub const GENERIC: u32 = UDP + 3;
    pub const CLASSES: u32 = UDP + 4;

    /// Seconds.
    pub const DEFAULTS: [u32; CLASSES as usize] = [
        0,      // NONE
        120,    // SYN_SENT
        60,     // SYN_RECV
        432000, // ESTABLISHED
        120,    // FIN_WAIT
        60,     // CLOSE_WAIT
        30,     // LAST_ACK
        120,    // TIME_WAIT
        10,     // CLOSE
        120,    // SYN_SENT2 (the kernel has no knob of its own for it)
        30,     // UDP
        120,    // UDP_STREAM
        30,     // ICMP
        600,    // GENERIC
    ];

    /// The names a topology's `[conntrack]` table (and the kernel's
    /// sysctls) give the classes; "" has none.
    pub const NAMES: [&str; CLASSES as usize] = [
        "",
        "tcp_timeout_syn_sent",
        "tcp_timeout_syn_recv",
        "tcp_timeout_established",
        "tcp_timeout_fin_wait",
        "tcp_timeout_close_wait",
        "tcp_timeout_last_ack",
        "tcp_timeout_time_wait",
        "tcp_timeout_close",
        "",
        "udp_timeout",
        "udp_timeout_stream",
        "icmp_timeout",
        "generic_timeout",
    ];

    /// The class of a connection of protocol `proto` in TCP state
    /// `tcp_state`, `replied` once a reply was seen.
    #[inline(always)]
    pub fn class(proto: u8, tcp: u8, replied: bool) -> u32 {
        match proto {
            6 => u32::from(tcp.min(tcp_state::COUNT - 1)),
            17 if replied => UDP_STREAM,
            17 => UDP,
            1 => ICMP,
            _ => GENERIC,
        }
    }
}

const _: () = assert!(core::mem::size_of::<CtKey>() == 16);
const _: () = assert!(core::mem::size_of::<NatSrcKey>() == 8);
const _: () = assert!(core::mem::size_of::<NatSrc>() == 16 * NAT_SRC_SLOTS);
const _: () = assert!(core::mem::size_of::<CtCache>() == 68);
const _: () = assert!(core::mem::size_of::<CtEntry>() == 208);

/// Per-CPU hash `ifindex (u32) -> IfCounters` filled by `PROG_XDP`.
pub const MAP_XDP_STATS: &str = "NETCTL_XDP_STATS";

/// A program the verifier must reject (see `netctl-ebpf`); tests only.
pub const PROG_SELFTEST_REJECT: &str = "netctl_selftest_reject";

#[cfg(test)]
mod nat_range_tests {
    use super::nat_range_pick;

    /// What the kernel (6.x, iptables-legacy `-j SNAT --to-source
    /// 10.81.0.100-10.81.0.163`) chose for UDP from 10.80.0.N to
    /// 10.81.0.2, observed at the server (see docs/nat.md).
    #[test]
    fn picks_the_kernels_address_from_a_range() {
        let seen = [
            (2, 146),
            (3, 114),
            (4, 152),
            (5, 115),
            (6, 101),
            (7, 100),
            (8, 140),
            (9, 110),
            (10, 147),
            (11, 157),
            (12, 102),
            (13, 113),
            (14, 123),
            (15, 152),
            (16, 153),
            (17, 134),
            (18, 159),
            (19, 123),
            (20, 149),
            (21, 129),
        ];
        for (src, want) in seen {
            let got = nat_range_pick(
                [10, 80, 0, src],
                [10, 81, 0, 2],
                [10, 81, 0, 100],
                [10, 81, 0, 163],
            );
            assert_eq!(got, [10, 81, 0, want], "from 10.80.0.{src}");
        }
    }

    #[test]
    fn a_single_address_or_an_empty_range_is_its_minimum() {
        let a = [192, 0, 2, 7];
        assert_eq!(nat_range_pick([1, 2, 3, 4], [5, 6, 7, 8], a, a), a);
        assert_eq!(
            nat_range_pick([1, 2, 3, 4], [5, 6, 7, 8], a, [192, 0, 2, 1]),
            a
        );
    }
}

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
/// The XDP program for the earliest drop point (attached only when needed).
pub const PROG_XDP: &str = "netctl_xdp";

/// `ifindex (u32) -> PortInfo`: the host-side veth ends the datapath owns.
pub const MAP_PORTS: &str = "NETCTL_PORTS";
pub const MAP_PORTS_MAX: u32 = 4096;
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
/// Per-CPU array of `PortStats` indexed by `PortInfo::slot` (an array
/// lookup is much cheaper per packet than a hash lookup).
pub const MAP_PORT_STATS: &str = "NETCTL_PORT_STATS";
/// Array of `u32` indexed by `config::*`: runtime switches.
pub const MAP_CONFIG: &str = "NETCTL_CONFIG";
pub const MAP_CONFIG_MAX: u32 = 4;

/// Indexes of `MAP_CONFIG`.
pub mod config {
    /// Non-zero: emit aya-log events (off by default; costs one array
    /// lookup per packet when off).
    pub const TRACE: u32 = 0;
    /// Non-zero: the host namespace forwards IPv4 (`ip_forward=1`), so the
    /// routed fast path may forward too.
    pub const FORWARD: u32 = 1;
}

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
    pub const COUNT: u32 = 14;

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
}

/// The port hairpins: frames may go back out the port they came in on.
pub const PORT_F_HAIRPIN: u32 = 1;

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
    /// Egress bridge ifindex for CONNECTED/GATEWAY.
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

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames seen at ingress of the port.
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// Frames the datapath delivered itself (L2 or L3).
    pub redirected: u64,
    /// Frames handed to the kernel.
    pub passed: u64,
}

const _: () = assert!(core::mem::size_of::<PortInfo>() == 24);
const _: () = assert!(core::mem::size_of::<FdbKey>() == 12);
const _: () = assert!(core::mem::size_of::<FdbEntry>() == 16);
const _: () = assert!(core::mem::size_of::<RouteValue>() == 32);
const _: () = assert!(core::mem::size_of::<NeighEntry>() == 12);
const _: () = assert!(core::mem::size_of::<PortStats>() == 32);

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
    unsafe impl aya::Pod for super::NeighEntry {}
    unsafe impl aya::Pod for super::PortStats {}
}

/// Per-CPU hash `ifindex (u32) -> IfCounters` filled by `PROG_XDP`.
pub const MAP_XDP_STATS: &str = "NETCTL_XDP_STATS";

/// A program the verifier must reject (see `netctl-ebpf`); tests only.
pub const PROG_SELFTEST_REJECT: &str = "netctl_selftest_reject";

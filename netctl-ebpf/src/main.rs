//! netctl's eBPF programs. Built by `netctl/build.rs` for `bpfel-unknown-none`
//! and embedded in the `netctl` binary; no userspace code lives here.
//!
//! * `netctl_tc_count`: counts packets per device (the smallest program).
//! * `netctl_ingress`: the fast path on TC ingress of every port (host-side
//!   veth end): bridges and routes between the topology's containers with
//!   `bpf_redirect_peer`, and hands everything else to the kernel unchanged.
//! * `netctl_egress`: OUTPUT and POSTROUTING for the host's packets to
//!   containers, on TC egress of every port.
//! * `netctl_local`: nat OUTPUT for the host's packets to its own
//!   addresses, on TC ingress of `lo`.
//! * `netctl_xdp`: the future early-drop point; for now it only counts.

#![no_std]
#![no_main]
// `asm!` for the one atomic add (see `maps::bump_fdb_generation`).
#![feature(asm_experimental_arch)]

mod classify;
mod clock;
mod conntrack;
mod filter;
mod flows;
mod l2;
mod l3;
mod local;
mod maps;
mod nat;
mod packet;
mod parse;
mod reject;
mod steady;
mod trace;

use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, TC_ACT_SHOT, xdp_action},
    macros::{classifier, map, xdp},
    maps::PerCpuHashMap,
    programs::{TcContext, XdpContext},
};
use netctl_common::{
    IfCounters, MAP_IF_COUNTERS_MAX_ENTRIES, PORT_F_UPLINK, PortInfo, TCX_NEXT, config, reason,
    verdict,
};

use crate::parse::{ETH_HLEN, EthHdr, ensure_linear, is_multicast, mac_u64, ptr_at};

/// `ifindex -> IfCounters`, one value per CPU so the hot path needs no atomics.
/// The symbol name is the map name userspace looks up
/// (`netctl_common::MAP_IF_COUNTERS`).
#[map]
static NETCTL_IFSTATS: PerCpuHashMap<u32, IfCounters> =
    PerCpuHashMap::with_max_entries(MAP_IF_COUNTERS_MAX_ENTRIES, 0);

/// Counts every packet entering the device it is attached to, then lets it
/// pass unchanged. Attach on TC ingress (tcx).
#[classifier]
pub fn netctl_tc_count(ctx: TcContext) -> i32 {
    // SAFETY: the kernel passes a valid `__sk_buff` context for the whole run
    // of a SCHED_CLS program, and `ifindex` is a readable context field.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let len = u64::from(ctx.len());

    if let Some(counters) = NETCTL_IFSTATS.get_ptr_mut(ifindex) {
        // SAFETY: the pointer is this CPU's slot of a live map element, and
        // nothing in the datapath removes elements, so it stays valid. Only
        // programs on this CPU write the slot, so a plain read-modify-write is
        // enough: at worst (a preemptible kernel interleaving two runs on one
        // CPU) a count is lost, which statistics can afford. Wrapping adds
        // keep overflow-check panics (which the verifier rejects) out of
        // debug builds.
        unsafe {
            (*counters).packets = (*counters).packets.wrapping_add(1);
            (*counters).bytes = (*counters).bytes.wrapping_add(len);
        }
    } else {
        // First packet on this device: create the element; the kernel zeroes
        // the other CPUs' slots. If another CPU created it in the meantime,
        // the update writes only this CPU's slot, which is still correct. A
        // full map loses the count; traffic is unaffected either way.
        let first = IfCounters {
            packets: 1,
            bytes: len,
        };
        let _ = NETCTL_IFSTATS.insert(ifindex, first, 0);
    }

    TCX_NEXT
}

/// Which netfilter hooks a packet crosses in the host namespace after
/// PREROUTING, as the kernel would route it.
pub mod path {
    /// Not filtered at all (not IPv4, multicast, or no header to read).
    pub const NONE: u8 = 0;
    /// PREROUTING only: the kernel drops it before INPUT/FORWARD (TTL
    /// expiry, no route, forwarding off, hairpin refused).
    pub const PRE: u8 = 1;
    /// PREROUTING, INPUT: addressed to the host.
    pub const INPUT: u8 = 2;
    /// PREROUTING, FORWARD, POSTROUTING: bridged or routed onwards.
    pub const FORWARD: u8 = 3;
    /// OUTPUT, POSTROUTING: sent by the host itself.
    pub const OUTPUT: u8 = 4;
}

/// What the fast path will do with a packet, decided before anything is
/// changed, so the rules can still refuse it.
#[derive(Clone, Copy)]
pub struct Decision {
    /// A `reason::*`.
    pub reason: u32,
    /// The port to redirect to (REDIRECT_*), else 0.
    pub egress: u32,
    /// A `path::*`.
    pub path: u8,
    /// The output interface for FORWARD/POSTROUTING (`-o`).
    pub out_if: u32,
    /// Routed: the new destination and source MACs.
    pub rewrite: bool,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// The gateway of a route the kernel would take (0: on-link), for a
    /// translated packet the datapath must send itself.
    pub nexthop: [u8; 4],
    /// Bridged again after a destination NAT (see `l3::route`): only the
    /// destination MAC is rewritten, the TTL is left alone.
    pub bridged: bool,
}

impl Decision {
    /// Hand the packet to the kernel, counting `why`; it then crosses the
    /// hooks of `path`, leaving by `out_if`.
    #[inline(always)]
    pub const fn pass(why: u32, path: u8, out_if: u32) -> Self {
        Self {
            reason: why,
            egress: 0,
            path,
            out_if,
            rewrite: false,
            dst_mac: [0; 6],
            src_mac: [0; 6],
            nexthop: [0; 4],
            bridged: false,
        }
    }

    #[inline(always)]
    pub const fn redirect(why: u32, egress: u32, out_if: u32) -> Self {
        Self {
            reason: why,
            egress,
            path: path::FORWARD,
            out_if,
            rewrite: false,
            dst_mac: [0; 6],
            src_mac: [0; 6],
            nexthop: [0; 4],
            bridged: false,
        }
    }
}

/// The fast path, on TC ingress of every port of a topology.
#[classifier]
pub fn netctl_ingress(ctx: TcContext) -> i32 {
    // SAFETY: the kernel passes a valid `__sk_buff` context for the whole
    // run of a SCHED_CLS program; `ingress_ifindex` is a readable field.
    let ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    let len = ctx.len();
    let rc = steady::bridge(&ctx, ifindex, len);
    if rc != steady::NOT_STEADY {
        return rc as i32;
    }
    let Some(port) = maps::port_ptr(ifindex) else {
        maps::account(None, len, reason::PASS_NOT_PORT);
        if maps::config(config::TRACE) != 0 {
            trace::netctl_trace(ctx.skb.skb, ifindex, reason::PASS_NOT_PORT, 0);
        }
        return TCX_NEXT;
    };
    // SAFETY: a live element of the ports map, valid until the program
    // returns; fields userspace rewrites concurrently are read whole.
    let (bridge, slot) = unsafe { ((*port).bridge, (*port).slot) };
    let rules = maps::config(config::RULES_ON) != 0;
    let accept = u32::from(verdict::ACCEPT);
    // raw, conntrack and a translated connection's new destination come
    // before the route decision, as in the kernel.
    let prepared = rules && !multicast_frame(&ctx);
    if prepared {
        let v = filter::netctl_prepare(ctx.skb.skb, bridge, 0, 0);
        if v != accept {
            maps::account(Some(slot), len, reason::DROP_RULE);
            return TC_ACT_SHOT;
        }
    }
    // One clock read per packet: conntrack's, when it ran.
    let now = match prepared.then(filter::packet_time).flatten() {
        Some(t) => t,
        None => clock::now(),
    };
    let mut d = Decision::pass(reason::PASS_NOT_PORT, path::NONE, 0);
    let moved = rules && filter::dst_moved();
    d.reason = decide(&ctx, port, &mut d, moved, now);
    let mut rc = TCX_NEXT;
    if d.path != path::NONE && rules {
        let mut v = filter::netctl_filter(ctx.skb.skb, bridge, u32::from(d.path), d.out_if);
        if v == filter::REROUTE {
            d.reason = decide(&ctx, port, &mut d, filter::dst_moved(), now);
            v = filter::netctl_filter_rest(bridge, u32::from(d.path), d.out_if, 1);
        } else if v == filter::MORE {
            v = filter::netctl_filter_rest(bridge, u32::from(d.path), d.out_if, 0);
        }
        if v == accept {
            let n = nat::netctl_nat_src(ctx.skb.skb, d.out_if, u32::from(d.path == path::PRE));
            if n < 0 {
                maps::account(Some(slot), len, reason::DROP_NAT);
                return TC_ACT_SHOT;
            }
            // A packet the kernel would forward, whose source NAT made one
            // of the host's own addresses: the kernel's input path would
            // drop it as a martian, so the datapath sends it out itself.
            if n > 0 && d.egress == 0 && d.path == path::FORWARD && d.out_if != 0 {
                let nh = u32::from_ne_bytes(d.nexthop);
                if !l3::netctl_out_by_neigh(ctx.skb.skb, d.out_if, nh, 1) {
                    maps::account(Some(slot), len, reason::DROP_NAT);
                    return TC_ACT_SHOT;
                }
                maps::account(Some(slot), len, reason::REDIRECT_NEIGH);
                return TC_ACT_REDIRECT;
            }
        }
        if v != accept {
            let routed = if d.bridged {
                reject::Routed::Bridged
            } else if d.rewrite {
                reject::Routed::Here
            } else {
                reject::Routed::ByMac
            };
            (d.reason, rc) = reject::answer(&ctx, ifindex, port, d.path, v, routed);
            d.egress = 0;
        }
    }
    if d.reason == reason::DROP_NAT {
        // A translated frame with nowhere to go that the kernel would take
        // (bridged back out of its own port): the kernel drops it.
        maps::account(Some(slot), len, d.reason);
        return TC_ACT_SHOT;
    }
    if d.reason == reason::REDIRECT_L2 || d.reason == reason::REDIRECT_L3 {
        if d.rewrite && !l3::rewrite(&ctx, &d) {
            d.reason = reason::PASS_IP_SPECIAL;
        } else {
            l2::redirect_peer(&mut d);
            if d.reason != reason::PASS_REDIRECT_FAILED {
                rc = TC_ACT_REDIRECT;
            }
        }
    }
    maps::account(Some(slot), len, d.reason);
    if maps::config(config::TRACE) != 0 {
        trace::netctl_trace(ctx.skb.skb, ifindex, d.reason, d.egress);
    }
    rc
}

/// OUTPUT and POSTROUTING, on TC egress of every port, for the packets the
/// host itself sends to a container. Everything else leaving a port was
/// judged where it entered: at a port's ingress (bridged, or routed by the
/// kernel, which then has the bridge as input device), or — from a device
/// that is not a port, such as an uplink — not at all yet.
#[classifier]
pub fn netctl_egress(ctx: TcContext) -> i32 {
    if maps::config(config::RULES_ON) == 0 {
        return TCX_NEXT;
    }
    // SAFETY: the kernel passes a valid `__sk_buff` for the whole run;
    // the fields are readable. Locally generated packets have no input
    // device (`skb_iif` 0).
    let (ifindex, iif) = unsafe { ((*ctx.skb.skb).ifindex, (*ctx.skb.skb).ingress_ifindex) };
    if iif != 0 {
        return TCX_NEXT;
    }
    if l3::rerouted(&ctx) {
        return TCX_NEXT;
    }
    let Some(port) = maps::port_ptr(ifindex) else {
        return TCX_NEXT;
    };
    // SAFETY: a live element of the ports map (see `netctl_ingress`).
    let bridge = unsafe { (*port).bridge };
    let accept = u32::from(verdict::ACCEPT);
    let output = u32::from(path::OUTPUT);
    let mut v = filter::netctl_prepare(ctx.skb.skb, 0, 1, bridge);
    if v == accept {
        v = filter::netctl_filter(ctx.skb.skb, 0, output, bridge);
    }
    // nat OUTPUT may have given the packet another destination (DNAT,
    // the answer to a connection SNAT'd in INPUT, an ICMP error about
    // one): the kernel routes it again (`ip_route_me_harder`), and
    // POSTROUTING (MASQUERADE too) sees the new route's device.
    let moved = filter::dst_moved();
    let route = if moved {
        l3::route_out(filter::dst())
    } else {
        None
    };
    let out = route.map_or(bridge, |r| r.0);
    if v == filter::MORE {
        v = filter::netctl_filter_rest(0, output, out, 0);
    }
    if v == accept && nat::netctl_nat_src(ctx.skb.skb, out, 0) < 0 {
        v = u32::from(verdict::DROP);
    }
    if v == accept {
        if moved {
            let (out_if, nexthop) = route.unwrap_or((0, 0));
            return l3::netctl_reroute(ctx.skb.skb, out_if, nexthop);
        }
        return TCX_NEXT;
    }
    let (why, rc) = reject::answer_local(&ctx, port, v);
    maps::account(None, ctx.len(), why);
    rc
}

/// nat OUTPUT for the host's packets to its own addresses, on TC ingress
/// of `lo` (see `local`).
#[classifier]
pub fn netctl_local(ctx: TcContext) -> i32 {
    if maps::config(config::RULES_ON) == 0 {
        return TCX_NEXT;
    }
    // Sent here by a port's egress program, judged there already.
    if l3::rerouted(&ctx) {
        return TCX_NEXT;
    }
    let len = ctx.len();
    match local::netctl_local_out(ctx.skb.skb) {
        local::SENT => {
            maps::account(None, len, reason::REDIRECT_NEIGH);
            TC_ACT_REDIRECT
        }
        local::DROP => {
            maps::account(None, len, reason::DROP_NAT);
            TC_ACT_SHOT
        }
        local::DROP_RULE => {
            maps::account(None, len, reason::DROP_RULE);
            TC_ACT_SHOT
        }
        r if r & 0xff == local::REFUSED => {
            let (why, rc) = reject::answer_lo(&ctx, (r >> 8) as u32);
            maps::account(None, len, why);
            rc
        }
        _ => TCX_NEXT,
    }
}

/// Where the frame goes, written to `d`. Not inlined: its locals then live
/// in a frame of their own that is gone before the rules run, and every
/// frame of a call chain shares one 512-byte stack.
///
/// `moved`: a destination NAT gave the packet a new destination address.
/// A frame that came in by a bridge port is then routed by that address
/// whatever its MAC, as br_netfilter does (`br_nf_pre_routing_finish`).
#[inline(never)]
// Returns `d.reason`, which the caller stores again: with no result used,
// LLVM may leave the pointer `d` in r0, and the verifier refuses a
// function that returns a pointer to its caller's stack.
fn decide(ctx: &TcContext, port: *const PortInfo, d: &mut Decision, moved: bool, now: u64) -> u32 {
    // SAFETY: as in `netctl_ingress` (read again here: eBPF passes at
    // most five arguments).
    let ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    // SAFETY: see the caller; the copy is what this packet is judged by.
    let port = unsafe { *port };
    // A frame shorter than its Ethernet header is the kernel's to drop.
    if !ensure_linear(ctx, ETH_HLEN) {
        *d = Decision::pass(reason::PASS_IP_SPECIAL, path::NONE, 0);
        return d.reason;
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        *d = Decision::pass(reason::PASS_IP_SPECIAL, path::NONE, 0);
        return d.reason;
    };
    // SAFETY: bounds-checked by `ptr_at`; the fields are bytes.
    let (dst, src, proto) = unsafe { ((*eth).dst, (*eth).src, (*eth).proto) };
    let uplink = port.flags & PORT_F_UPLINK != 0;
    let stats = maps::NETCTL_PORT_STATS.get_ptr_mut(u32::from(port.slot));
    if !uplink {
        l2::learn(&port, stats, ifindex, src, now);
    }
    *d = if is_multicast(&dst) {
        Decision::pass(reason::PASS_MULTICAST, path::NONE, 0)
    } else if moved && !uplink {
        l3::route_moved(ctx, proto, now, &port, ifindex, src)
    } else if mac_u64(&dst) == mac_u64(&port.bridge_mac) {
        l3::route(ctx, proto, now, 0)
    } else if uplink {
        // Not bridged: a frame for another MAC is the kernel's to drop.
        Decision::pass(reason::PASS_UNKNOWN, path::NONE, 0)
    } else {
        l2::forward(&port, stats, ifindex, src, dst, now)
    };
    d.reason
}

/// Whether the frame is for a group (broadcast, multicast): the kernel
/// bridge floods those, and netfilter does not judge them here.
#[inline(always)]
fn multicast_frame(ctx: &TcContext) -> bool {
    ctx.load::<[u8; 1]>(0).is_ok_and(|b| b[0] & 1 != 0)
}

/// The earliest point a packet can be dropped (the raw table, later). For
/// now it passes everything and counts packets per device, so the cost of
/// having an XDP program on a veth can be measured.
#[xdp]
pub fn netctl_xdp(ctx: XdpContext) -> u32 {
    let ifindex = ctx.ingress_ifindex() as u32;
    let len = (ctx.data_end() - ctx.data()) as u64;
    maps::account_xdp(ifindex, len);
    xdp_action::XDP_PASS
}

/// Deliberately rejected by the verifier (it reads far past the end of the
/// `__sk_buff` context). netctl never attaches it: the tests load it to
/// prove that a rejected program surfaces as an error carrying the
/// verifier's log, not a panic.
#[classifier]
pub fn netctl_selftest_reject(ctx: TcContext) -> i32 {
    // SAFETY: none — this access is the point; the kernel refuses to load
    // the program, so it never runs.
    unsafe { core::ptr::read_volatile((ctx.skb.skb as *const u8).add(4000)) as i32 }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // eBPF cannot unwind or abort; the verifier rejects any reachable path to
    // here, so this loop only satisfies the type system.
    loop {}
}

// The kernel refuses GPL-only helpers to programs without a GPL-compatible
// license; declaring one now keeps later programs from tripping over it.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

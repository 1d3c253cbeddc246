//! netctl's eBPF programs. Built by `netctl/build.rs` for `bpfel-unknown-none`
//! and embedded in the `netctl` binary; no userspace code lives here.
//!
//! * `netctl_tc_count`: counts packets per device (the smallest program).
//! * `netctl_ingress`: the fast path on TC ingress of every port (host-side
//!   veth end): bridges and routes between the topology's containers with
//!   `bpf_redirect_peer`, and hands everything else to the kernel unchanged.
//! * `netctl_xdp`: the future early-drop point; for now it only counts.

#![no_std]
#![no_main]

mod l2;
mod l3;
mod maps;
mod parse;
mod trace;

use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, xdp_action},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map, xdp},
    maps::PerCpuHashMap,
    programs::{TcContext, XdpContext},
};
use netctl_common::{IfCounters, MAP_IF_COUNTERS_MAX_ENTRIES, PortInfo, TCX_NEXT, config, reason};

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

/// What the fast path did with a packet.
#[derive(Clone, Copy)]
pub struct Decision {
    /// A `reason::*`.
    pub reason: u32,
    /// The port redirected to (REDIRECT_*, PASS_REDIRECT_FAILED), else 0.
    pub egress: u32,
}

impl Decision {
    /// Hand the packet to the kernel, counting `why`.
    #[inline(always)]
    pub const fn pass(why: u32) -> Self {
        Self {
            reason: why,
            egress: 0,
        }
    }

    #[inline(always)]
    fn verdict(self) -> i32 {
        if self.reason == reason::REDIRECT_L2 || self.reason == reason::REDIRECT_L3 {
            TC_ACT_REDIRECT
        } else {
            TCX_NEXT
        }
    }
}

/// The fast path, on TC (tcx) ingress of every port of a topology.
#[classifier]
pub fn netctl_ingress(ctx: TcContext) -> i32 {
    // SAFETY: the kernel passes a valid `__sk_buff` context for the whole
    // run of a SCHED_CLS program; `ingress_ifindex` is a readable field.
    let ifindex = unsafe { (*ctx.skb.skb).ingress_ifindex };
    let len = ctx.len();
    let port = maps::port(ifindex);
    let d = match &port {
        Some(p) => decide(&ctx, ifindex, p),
        None => Decision::pass(reason::PASS_NOT_PORT),
    };
    maps::account(port.map(|p| p.slot), len, d.reason);
    if maps::config(config::TRACE) != 0 {
        trace::netctl_trace(ctx.skb.skb, ifindex, d.reason, d.egress);
    }
    d.verdict()
}

#[inline(always)]
fn decide(ctx: &TcContext, ifindex: u32, port: &PortInfo) -> Decision {
    // A frame shorter than its Ethernet header is the kernel's to drop.
    if !ensure_linear(ctx, ETH_HLEN) {
        return Decision::pass(reason::PASS_IP_SPECIAL);
    }
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Decision::pass(reason::PASS_IP_SPECIAL);
    };
    // SAFETY: bounds-checked by `ptr_at`; the fields are bytes.
    let (dst, src, proto) = unsafe { ((*eth).dst, (*eth).src, (*eth).proto) };
    // SAFETY: the helper takes no arguments and only reads the clock.
    let now = unsafe { bpf_ktime_get_ns() };

    l2::learn(port, ifindex, src, now);
    if is_multicast(&dst) {
        return Decision::pass(reason::PASS_MULTICAST);
    }
    if mac_u64(&dst) == mac_u64(&port.bridge_mac) {
        l3::forward(ctx, proto, now)
    } else {
        l2::forward(port, ifindex, dst, now)
    }
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

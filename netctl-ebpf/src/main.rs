//! netctl's eBPF programs. Built by `netctl/build.rs` for `bpfel-unknown-none`
//! and embedded in the `netctl` binary; no userspace code lives here.

#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{classifier, map},
    maps::PerCpuHashMap,
    programs::TcContext,
};
use netctl_common::{IfCounters, MAP_IF_COUNTERS_MAX_ENTRIES, TCX_NEXT};

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

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

#[cfg(feature = "user")]
mod user {
    // SAFETY: `IfCounters` is `#[repr(C)]`, `Copy`, made only of integers and
    // has no padding (asserted above), so every bit pattern is a valid value
    // and aya may read and write it as plain bytes.
    unsafe impl aya::Pod for super::IfCounters {}
}

//! The datapath's clock.

use aya_ebpf::helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns};

/// CLOCK_MONOTONIC, as of the last tick: the datapath's times (conntrack
/// timeouts, FDB ageing, refreshes) are in seconds, and the coarse clock
/// reads a stored value where the precise one reads the TSC, which costs
/// measurably per packet in a VM. Userspace compares against
/// CLOCK_MONOTONIC; the two differ by at most a tick.
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: the helper takes no arguments and only reads the clock.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// The kernel's jiffies counter. Unlike the helper above, the verifier
/// inlines it (one load), which is what the steady path wants; its unit
/// depends on the kernel's HZ, so what is compared with it is counted
/// conservatively (see `netctl_common::Steady`).
#[inline(always)]
pub fn jiffies() -> u64 {
    // SAFETY: the helper takes no arguments and only reads a counter.
    unsafe { bpf_jiffies64() }
}

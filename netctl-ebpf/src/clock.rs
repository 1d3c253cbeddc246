//! The datapath's clock.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;

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

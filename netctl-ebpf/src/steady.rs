//! The steady bridged flow: a frame the full path would judge exactly as
//! it judged the previous frame of the same source and destination on the
//! port, with nothing changed since.
//!
//! When the full path bridges a frame from `src` to `dst`, the source's
//! FDB entry needs no refresh for a while (`l2::LEARN_REFRESH_NS`), the
//! destination's entry is fresh, and the topology has no rules and no
//! trace running, it remembers that in the port's per-CPU value
//! (`PortStats::steady`, see `netctl_common::Steady`). Until the earlier of
//! the refresh and the ageing, while the FDB generation is the same, the
//! next frame with those MACs needs none of that work: learning has
//! nothing to refresh, forwarding answers the same port, and there is
//! nothing else to do. netctl changes the generation right after it turns
//! rules or tracing on, and a MAC move changes it too, so the first frame
//! after either takes the full path again.
//!
//! What this saves is memory more than instructions: between two frames a
//! busy sender's CPU runs the whole socket and wakeup path, which evicts
//! what the program read last time, so every cache line the program reads
//! is a miss. Here a frame reads the port's index entry, the FDB generation
//! and the first 56 bytes of its port's per-CPU value, and no clock but
//! the jiffies counter (an inlined load).

use aya_ebpf::{bindings::TC_ACT_REDIRECT, programs::TcContext};
use netctl_common::{MAP_PORTS_MAX, PortInfo, PortStats, Steady, config, reason};

use crate::{
    Decision, clock, l2, maps,
    parse::{ETH_HLEN, mac_u64},
};

/// The longest a jiffy lasts (HZ = 100): deadlines counted in these expire
/// early on a kernel with a higher HZ, never late.
const JIFFY_NS_MAX: u64 = 10_000_000;

/// The frame's destination and source MACs, as `parse::mac_u64` gives
/// them, if its Ethernet header is in the linear data.
#[inline(always)]
fn macs(ctx: &TcContext) -> Option<(u64, u64)> {
    let data = ctx.data();
    if data + ETH_HLEN > ctx.data_end() {
        return None;
    }
    let (d_lo, d_hi, s_lo, s_hi): (u64, u64, u64, u64);
    // SAFETY: four loads within the 14 bytes checked above. Written as
    // instructions because a Rust load must be aligned, and LLVM splits
    // unaligned ones into single bytes (five shifts and ors per MAC). The
    // header's alignment varies with the skb's headroom (the 32-bit loads
    // are misaligned under NET_IP_ALIGN = 2); the verifier accepts that on
    // architectures with efficient unaligned access, which x86-64 and
    // arm64 are, and refuses the program elsewhere (`datapath verify`
    // says so) rather than run it wrong.
    unsafe {
        core::arch::asm!(
            "{a} = *(u32 *)({p} + 0)",
            "{b} = *(u16 *)({p} + 4)",
            "{c} = *(u16 *)({p} + 6)",
            "{d} = *(u32 *)({p} + 8)",
            p = in(reg) data,
            a = out(reg) d_lo,
            b = out(reg) d_hi,
            c = out(reg) s_lo,
            d = out(reg) s_hi,
            options(nostack, readonly, pure),
        );
    }
    Some((d_lo | d_hi << 32, s_lo | s_hi << 16))
}

/// What `bridge` returns when the full path must judge the frame.
pub const NOT_STEADY: i64 = -1;

/// Redirects the frame and returns the program's result, or `NOT_STEADY`.
/// Not inlined: its locals then do not add to the stack frame of the
/// full path, which is near the verifier's 512 bytes.
#[inline(never)]
pub fn bridge(ctx: &TcContext, ifindex: u32, len: u32) -> i64 {
    let slot = ifindex % MAP_PORTS_MAX;
    let Some(s) = maps::NETCTL_PORT_STATS.get_ptr_mut(slot) else {
        return NOT_STEADY;
    };
    let Some((dst, src)) = macs(ctx) else {
        return NOT_STEADY;
    };
    let generation = maps::fdb_generation();
    // SAFETY: this CPU's copy of an array element, used by this CPU only.
    let st = unsafe { &(*s).steady };
    if st.ingress != ifindex
        || st.generation != generation
        || st.src != src
        || st.dst != dst
        || clock::jiffies() >= st.until_jiffies
    {
        return NOT_STEADY;
    }
    let mut d = Decision::redirect(reason::REDIRECT_L2, st.egress, 0);
    l2::redirect_peer(&mut d);
    if d.reason != reason::REDIRECT_L2 {
        // The full path tries again, and counts what it decides.
        return NOT_STEADY;
    }
    // SAFETY: as above.
    unsafe {
        (*s).steady_l2 = (*s).steady_l2.wrapping_add(1);
        (*s).rx_bytes = (*s).rx_bytes.wrapping_add(u64::from(len));
    }
    i64::from(TC_ACT_REDIRECT)
}

/// Called by the full path when it bridges a frame from `src` to `dst` out
/// of port `egress`, with the FDB generation it read before deciding and
/// the time the destination's entry ages out: remembers the flow as steady
/// if it is (see the module's comment).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub fn remember(
    port: &PortInfo,
    ifindex: u32,
    s: *mut PortStats,
    generation: u64,
    src: [u8; 6],
    dst: [u8; 6],
    egress: u32,
    until_ns: u64,
    now: u64,
) {
    // SAFETY: this CPU's copy of an array element, used by this CPU only.
    let l = unsafe { &(*s).learned };
    // `learn` ran for this frame: unless it could not record the source,
    // this says when the source's entry is due for a refresh.
    let learned = l.bridge == port.bridge && l.mac == mac_u64(&src);
    // Read after the generation: netctl turns rules or tracing on first and
    // changes the generation after, so a flow remembered here either
    // predates that change or saw it.
    let plain = maps::config(config::RULES_ON) == 0 && maps::config(config::TRACE) == 0;
    let due = l.refreshed_ns.saturating_add(l2::LEARN_REFRESH_NS);
    let left = until_ns.min(due).saturating_sub(now) / JIFFY_NS_MAX;
    // Only where the steady path looks (see `bridge`).
    let found = u32::from(port.slot) == ifindex % MAP_PORTS_MAX;
    let steady = if found && learned && plain && left > 0 {
        Steady {
            generation,
            src: mac_u64(&src),
            dst: mac_u64(&dst),
            until_jiffies: clock::jiffies().saturating_add(left),
            egress,
            ingress: ifindex,
        }
    } else {
        Steady::default()
    };
    // SAFETY: as above.
    unsafe { (*s).steady = steady };
}

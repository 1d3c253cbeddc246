//! The steady bridged flow: a frame whose every decision this CPU made for
//! the previous frame of its port and that nothing since has changed.
//!
//! A unicast frame from a source this CPU learned on the port less than
//! `l2::LEARN_REFRESH_NS` ago, to the MAC this CPU last bridged from the
//! port, with the FDB generation the same and the entry fresh, is judged
//! exactly as `decide` would judge it: learning has nothing to refresh and
//! forwarding answers the remembered port. If, besides, that answer was
//! stored while the topology had no rules and tracing was off
//! (`Forwarded::steady`; netctl changes the generation after turning
//! either on), there is nothing else to do for it. Checking that takes the
//! port's per-CPU value, the generation and a handful of instructions,
//! where the full path reads the config and walks `decide`. Everything
//! else falls through to the full path, which also keeps the remembered
//! answers current.

use aya_ebpf::{bindings::TC_ACT_REDIRECT, programs::TcContext};
use netctl_common::{PortInfo, TCX_NEXT, reason};

use crate::{Decision, l2, maps, parse::ETH_HLEN};

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
    // unaligned ones into single bytes (five shifts and ors per MAC); the
    // header's alignment varies with the skb's headroom, and the verifier
    // and x86 (where the JIT runs them) accept any.
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
        Some((d_lo | d_hi << 32, s_lo | s_hi << 16))
    }
}

/// Redirects the frame and returns the program's result, or `None` when
/// the full path must judge it.
#[inline(always)]
pub fn bridge(ctx: &TcContext, port: *const PortInfo, len: u32) -> Option<i32> {
    let (dst, src) = macs(ctx)?;
    // SAFETY: a live element of the ports map (see `netctl_ingress`).
    let (bridge, slot) = unsafe { ((*port).bridge, (*port).slot) };
    let s = maps::NETCTL_PORT_STATS.get_ptr_mut(u32::from(slot))?;
    let generation = maps::fdb_generation();
    let now = crate::clock::now();
    // SAFETY: this CPU's copy of an array element, used by this CPU only.
    let (l, f) = unsafe { (&(*s).learned, &(*s).forwarded) };
    let fresh = f.steady != 0
        && l.bridge == bridge
        && l.mac == src
        && now.saturating_sub(l.refreshed_ns) <= l2::LEARN_REFRESH_NS
        && f.generation == generation
        && f.mac == dst
        && now <= f.until_ns;
    if !fresh {
        return None;
    }
    let mut d = Decision::redirect(reason::REDIRECT_L2, f.egress, bridge);
    l2::redirect_peer(&mut d);
    if d.reason != reason::REDIRECT_L2 {
        maps::account(Some(slot), len, d.reason);
        return Some(TCX_NEXT);
    }
    // SAFETY: as above. `maps::account` without its `NETCTL_STATS` slot:
    // the decision counts in the port's value (`PortStats::steady_l2`).
    unsafe {
        (*s).rx_packets = (*s).rx_packets.wrapping_add(1);
        (*s).rx_bytes = (*s).rx_bytes.wrapping_add(u64::from(len));
        (*s).redirected = (*s).redirected.wrapping_add(1);
        (*s).steady_l2 = (*s).steady_l2.wrapping_add(1);
    }
    Some(TC_ACT_REDIRECT)
}

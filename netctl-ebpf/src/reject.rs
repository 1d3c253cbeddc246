//! What happens to a packet the rules refused: DROP drops it; REJECT turns
//! it into the answer the kernel's REJECT target would send (an ICMP
//! destination-unreachable or a TCP reset) and sends that out of the
//! bridge towards the packet's source, through the kernel's neighbour
//! table, as the kernel routes its own answer.
//!
//! The packet is rewritten in place (room made for the new headers, trimmed
//! to the answer's size, headers written with `bpf_skb_store_bytes`), so no
//! second buffer is needed. Like the kernel, no answer goes to an ICMP error, a TCP reset, a
//! later fragment or a packet too short to quote; those are only dropped.

use aya_ebpf::{
    bindings::{__sk_buff, TC_ACT_REDIRECT, TC_ACT_SHOT},
    bindings::{BPF_F_INGRESS, bpf_adj_room_mode::BPF_ADJ_ROOM_MAC},
    helpers::{
        bpf_redirect, bpf_redirect_neigh, bpf_skb_adjust_room, bpf_skb_change_tail,
        bpf_skb_load_bytes, bpf_skb_store_bytes,
    },
    programs::TcContext,
};
use netctl_common::{PortInfo, TCX_NEXT, reason, reject, verdict};

use crate::{
    filter::{ANSWER_LOCAL, ANSWER_TCP, LOOPBACK, netctl_filter_answer},
    packet::{PROTO_ICMP, PROTO_TCP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
    parse::{ETH_HLEN, EthHdr, Ipv4Hdr, csum_after_ttl_dec, mac_u64},
    path,
};

/// How a forwarded packet was to cross the host.
#[derive(Clone, Copy)]
pub enum Routed {
    /// As its destination MAC says: routed if it is the bridge's.
    ByMac,
    /// Routed by the datapath (MACs rewritten, TTL decremented), also a
    /// bridged frame that a destination NAT sends elsewhere.
    Here,
    /// Bridged again after a destination NAT, whatever its MAC
    /// (br_netfilter's `br_nf_pre_routing_finish` bridges a frame whose
    /// new route leaves by the bridge it came in by).
    Bridged,
}

/// The datapath's reason and TC verdict for a packet the rules refused
/// with `v` (a `verdict::*`, REJECT's kind in bits 8..16).
#[inline(always)]
pub fn answer(
    ctx: &TcContext,
    ifindex: u32,
    port: *const PortInfo,
    route: u8,
    v: u32,
    routed: Routed,
) -> (u32, i32) {
    if v & 0xff != u32::from(verdict::REJECT) {
        return (reason::DROP_RULE, TC_ACT_SHOT);
    }
    // The kernel answers a packet for the host from the address it was
    // sent to, and a forwarded one from the address of the interface the
    // error leaves by: the bridge's.
    // SAFETY: a live element of the ports map (see `netctl_ingress`).
    let (bridge_ip, mac, bridge) =
        unsafe { ((*port).bridge_ip, (*port).bridge_mac, (*port).bridge) };
    let Ok(eth) = ctx.load::<EthHdr>(0) else {
        return (reason::REJECT_FAILED, TC_ACT_SHOT);
    };
    let tcp = (v >> 8) & 0xff == u32::from(reject::TCP_RESET);
    let from_dst = route == path::INPUT || bridge_ip == [0; 4];
    // Routed, not bridged: the kernel decrements the TTL before FORWARD,
    // so its error quotes the decremented header.
    let routed = route == path::FORWARD
        && match routed {
            Routed::Here => true,
            Routed::Bridged => false,
            Routed::ByMac => mac_u64(&eth.dst) == mac_u64(&mac),
        };
    let flags = u32::from(from_dst) | (u32::from(routed) << 1);
    // A reset for a packet that came in by a bridge port leaves by that
    // port with the packet's MACs swapped (nf_send_reset's bridge case);
    // an ICMP error is routed from the bridge.
    let src_mac = if tcp { eth.dst } else { mac };
    let rc = netctl_reject(
        ctx.skb.skb,
        (v >> 8) & 0xff,
        u32::from_ne_bytes(bridge_ip),
        flags,
        mac_arg(&src_mac),
    );
    if rc != 0 {
        return (reason::REJECT_FAILED, TC_ACT_SHOT);
    }
    if tcp {
        // Straight out, past OUTPUT and POSTROUTING, as the kernel does.
        // SAFETY: the helper only records the target for after the
        // program returns.
        unsafe { bpf_redirect(ifindex, 0) };
        return (reason::REJECT_RULE, TC_ACT_REDIRECT);
    }
    // Judged by OUTPUT and POSTROUTING as the host's own packet, then
    // translated back as the kernel's nat POSTROUTING does.
    if netctl_filter_answer(ctx.skb.skb, bridge, 0) != u32::from(verdict::ACCEPT) {
        return (reason::DROP_RULE, TC_ACT_SHOT);
    }
    if crate::nat::netctl_nat_answer(ctx.skb.skb) < 0 {
        return (reason::REJECT_FAILED, TC_ACT_SHOT);
    }
    // Out of the bridge through the kernel's neighbour table, as the
    // kernel routes its own answer: to whichever port holds the packet's
    // source address, usually (not always) the one it came in by.
    // SAFETY: the helper only records the target for after the program
    // returns; no parameters are passed (NULL, length 0).
    let rc = unsafe { bpf_redirect_neigh(bridge, core::ptr::null_mut(), 0, 0) };
    if rc != i64::from(TC_ACT_REDIRECT) {
        // SAFETY: as above; back out of the port it came in by.
        unsafe { bpf_redirect(ifindex, 0) };
    }
    (reason::REJECT_RULE, TC_ACT_REDIRECT)
}

/// The reason and TC verdict for a packet the host sent that OUTPUT or
/// POSTROUTING refused. A REJECT's answer goes up the host's own stack, as
/// the kernel delivers its answer to the local socket: in at the bridge,
/// past the ports' programs.
#[inline(always)]
pub fn answer_local(ctx: &TcContext, port: *const PortInfo, v: u32) -> (u32, i32) {
    if v & 0xff != u32::from(verdict::REJECT) {
        return (reason::DROP_RULE, TC_ACT_SHOT);
    }
    let Ok(eth) = ctx.load::<EthHdr>(0) else {
        return (reason::REJECT_FAILED, TC_ACT_SHOT);
    };
    // To the host's MAC.
    if let Err(refused) = answer_host(ctx, v, mac_arg(&eth.dst)) {
        return refused;
    }
    // SAFETY: a live element of the ports map (see `netctl_egress`).
    let bridge = unsafe { (*port).bridge };
    // SAFETY: the helper only records the target for after the program
    // returns.
    unsafe { bpf_redirect(bridge, u64::from(BPF_F_INGRESS)) };
    (reason::REJECT_RULE, TC_ACT_REDIRECT)
}

/// The reason and TC verdict for a packet of the host's that a REJECT
/// refused on its way over lo (a translated connection's, see `local`):
/// the answer is written in its place and goes on up the host's stack.
#[inline(always)]
pub fn answer_lo(ctx: &TcContext, v: u32) -> (u32, i32) {
    // lo's MACs are zero, as the refused frame's.
    match answer_host(ctx, v, 0) {
        Ok(()) => (reason::REJECT_RULE, TCX_NEXT),
        Err(refused) => refused,
    }
}

/// Writes the REJECT answer `v` to a packet of the host's over the
/// packet, from `src_mac` (`mac_arg`), and judges it as the kernel routes
/// it, over loopback: out by `lo` (OUTPUT, POSTROUTING), in by `lo`
/// (PREROUTING, INPUT). Err: the reason and verdict for a packet that gets
/// no answer.
#[inline(always)]
fn answer_host(ctx: &TcContext, v: u32, src_mac: u64) -> Result<(), (u32, i32)> {
    let Ok(ip) = ctx.load::<Ipv4Hdr>(ETH_HLEN) else {
        return Err((reason::REJECT_FAILED, TC_ACT_SHOT));
    };
    // The kernel's own ICMP messages (echo and other replies) are sent
    // holding its ICMP socket, which icmp_send then cannot take: REJECT
    // drops them unanswered.
    if ip.protocol == PROTO_ICMP
        && ctx
            .load::<u8>(ETH_HLEN + 20)
            .is_ok_and(|t| matches!(t, 0 | 14 | 16 | 18))
    {
        return Err((reason::REJECT_RULE, TC_ACT_SHOT));
    }
    // A reset comes from the packet's destination; an ICMP error, routed
    // to the host itself, from the host's address the packet was sent from
    // (the local route's preferred source).
    let from = u32::from_ne_bytes(ip.saddr);
    if netctl_reject(ctx.skb.skb, (v >> 8) & 0xff, from, 0, src_mac) != 0 {
        return Err((reason::REJECT_FAILED, TC_ACT_SHOT));
    }
    let tcp = (v >> 8) & 0xff == u32::from(reject::TCP_RESET);
    let flags = ANSWER_LOCAL | if tcp { ANSWER_TCP } else { 0 };
    if netctl_filter_answer(ctx.skb.skb, LOOPBACK, flags) != u32::from(verdict::ACCEPT) {
        return Err((reason::DROP_RULE, TC_ACT_SHOT));
    }
    Ok(())
}

/// A MAC as the scalar `netctl_reject` takes (a global function's
/// arguments can only be scalars): the low 48 bits, big-endian.
#[inline(always)]
fn mac_arg(m: &[u8; 6]) -> u64 {
    u64::from_be_bytes([0, 0, m[0], m[1], m[2], m[3], m[4], m[5]])
}

/// Rewrites the packet in `skb` into the answer of kind `kind` (a
/// `reject::*`). `bridge_ip` (network order, as stored) is the source of
/// ICMP errors unless bit 0 of `flags` (answer from the destination); bit 1
/// says the packet was routed (its quoted TTL is one less). `src_mac` is the
/// bridge's MAC in the low 48 bits. Returns 0 when the answer is ready.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_reject(
    skb: *mut __sk_buff,
    kind: u32,
    bridge_ip: u32,
    flags: u32,
    src_mac: u64,
) -> i32 {
    let from_dst = flags & 1;
    let ctx = TcContext::new(skb);
    let Ok(eth) = ctx.load::<EthHdr>(0) else {
        return -1;
    };
    let Ok(ip) = ctx.load::<Ipv4Hdr>(ETH_HLEN) else {
        return -1;
    };
    // Options would move every offset below; such packets are dropped.
    if ip.ver_ihl != 0x45 || u16::from_be_bytes(ip.frag_off) & 0x1fff != 0 {
        return -1;
    }
    let m = src_mac.to_be_bytes();
    let mut l2 = [0u8; 12];
    l2[..6].copy_from_slice(&eth.src);
    l2[6..].copy_from_slice(&m[2..8]);

    if kind == u32::from(reject::TCP_RESET) {
        return tcp_reset(&ctx, skb, &ip, &l2);
    }
    let code = match kind as u8 {
        reject::ICMP_NET_UNREACHABLE => 0,
        reject::ICMP_HOST_UNREACHABLE => 1,
        reject::ICMP_ADMIN_PROHIBITED => 13,
        _ => 3,
    };
    let Some(s) = crate::classify::scratch() else {
        return -1;
    };
    // What the error quotes: the IP header and the first 8 bytes after it.
    // SAFETY: this CPU's scratch element.
    let quote = unsafe { &mut (*s).quote };
    // SAFETY: copies 28 bytes into the 28-byte scratch buffer.
    if unsafe {
        bpf_skb_load_bytes(
            skb as *const _,
            ETH_HLEN as u32,
            quote.as_mut_ptr().cast(),
            28,
        )
    } != 0
    {
        return -1;
    }
    // The kernel's icmp_send answers no ICMP message but the queries and
    // their replies: every other type counts as an error (known or not).
    if ip.protocol == PROTO_ICMP && !matches!(quote[20], 0 | 8 | 13..=18) {
        return -1;
    }
    if flags & 2 != 0 && quote[8] > 1 {
        let c = csum_after_ttl_dec([quote[10], quote[11]], quote[8], quote[9]);
        quote[8] -= 1;
        quote[10] = c[0];
        quote[11] = c[1];
    }
    let src = if from_dst != 0 {
        ip.daddr
    } else {
        bridge_ip.to_ne_bytes()
    };
    // The kernel quotes as much of the packet as keeps the error within
    // 576 bytes (RFC 1812): room is made for the new IP and ICMP headers in
    // front of the packet, which is then cut to length.
    let q = ctx.len().saturating_sub(ETH_HLEN as u32).min(576 - 28);
    if q < 28 {
        return -1;
    }
    // SAFETY: `skb` is the program's context; the helpers take no memory
    // arguments but the stack buffers given with their lengths.
    unsafe {
        if bpf_skb_adjust_room(skb, 28, BPF_ADJ_ROOM_MAC, 0) != 0 {
            return -1;
        }
        if bpf_skb_change_tail(skb, ETH_HLEN as u32 + 28 + q, 0) != 0 {
            return -1;
        }
        // The quoted header as the kernel saw it (TTL already decremented
        // for routed packets).
        if bpf_skb_store_bytes(skb, ETH_HLEN as u32 + 28, quote.as_ptr().cast(), 20, 0) != 0 {
            return -1;
        }
    }
    let quoted = netctl_sum(skb, ETH_HLEN as u32 + 28, q);
    // SAFETY: this CPU's scratch element (the stack is too small for the
    // answer on top of the callers' frames).
    let out = unsafe { &mut (&mut (*s).buf)[..28] };
    ip_header(out, 28 + q as u16, 0xc0, 0, PROTO_ICMP, src, ip.saddr);
    out[20] = 3;
    out[21] = code;
    out[22..28].fill(0);
    let c = fold(sum(out, 20, 8) + quoted);
    out[22] = (c >> 8) as u8;
    out[23] = c as u8;
    // SAFETY: as above.
    unsafe {
        if bpf_skb_store_bytes(skb, 0, l2.as_ptr().cast(), 12, 0) != 0 {
            return -1;
        }
        if bpf_skb_store_bytes(skb, ETH_HLEN as u32, out.as_ptr().cast(), 28, 0) != 0 {
            return -1;
        }
    }
    0
}

/// The ones'-complement sum (unfolded) of `len` bytes of the packet from
/// `off` (`len` at most 548), read four bytes at a time.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_sum(skb: *mut __sk_buff, off: u32, len: u32) -> u32 {
    let ctx = TcContext::new(skb);
    let len = len.min(576 - 28);
    let mut total = 0u32;
    let mut i = 0u32;
    while i < (576 - 28) / 4 {
        if i * 4 + 4 > len {
            break;
        }
        let Ok(w) = ctx.load::<[u8; 4]>((off + i * 4) as usize) else {
            return total;
        };
        total += u32::from(u16::from_be_bytes([w[0], w[1]]))
            + u32::from(u16::from_be_bytes([w[2], w[3]]));
        i += 1;
    }
    let done = i * 4;
    let rest = len.saturating_sub(done);
    if rest >= 2
        && let Ok(w) = ctx.load::<[u8; 2]>((off + done) as usize)
    {
        total += u32::from(u16::from_be_bytes(w));
    }
    // An odd last byte is the high half of a word padded with zero.
    if rest & 1 == 1
        && let Ok(b) = ctx.load::<u8>((off + len - 1) as usize)
    {
        total += u32::from(b) << 8;
    }
    total
}

fn tcp_reset(ctx: &TcContext, skb: *mut __sk_buff, ip: &Ipv4Hdr, l2: &[u8; 12]) -> i32 {
    if ip.protocol != PROTO_TCP {
        return -1;
    }
    let Ok(th) = ctx.load::<[u8; 20]>(ETH_HLEN + 20) else {
        return -1;
    };
    let flags = th[13];
    if flags & TCP_RST != 0 {
        return -1;
    }
    let doff = u32::from(th[12] >> 4) * 4;
    let tot = u32::from(u16::from_be_bytes(ip.tot_len));
    let payload = tot.saturating_sub(20 + doff);
    let Some(s) = crate::classify::scratch() else {
        return -1;
    };
    // SAFETY: as in `netctl_reject`.
    let out = unsafe { &mut (&mut (*s).buf)[..40] };
    out.fill(0);
    // The kernel's nf_send_reset: DF set, TOS 0, the default TTL.
    ip_header(out, 40, 0, 0x40, PROTO_TCP, ip.daddr, ip.saddr);
    out[20..22].copy_from_slice(&th[2..4]);
    out[22..24].copy_from_slice(&th[0..2]);
    if flags & TCP_ACK != 0 {
        out[24..28].copy_from_slice(&th[8..12]);
        out[33] = TCP_RST;
    } else {
        let seq = u32::from_be_bytes([th[4], th[5], th[6], th[7]]);
        let ack = seq
            .wrapping_add(payload)
            .wrapping_add(u32::from(flags & TCP_SYN != 0))
            .wrapping_add(u32::from(flags & TCP_FIN != 0));
        out[28..32].copy_from_slice(&ack.to_be_bytes());
        out[33] = TCP_RST | TCP_ACK;
    }
    out[32] = 5 << 4;
    // Pseudo-header: addresses, protocol, TCP length.
    let mut sm = sum(out, 12, 8) + u32::from(PROTO_TCP) + 20;
    sm += sum(out, 20, 20);
    let c = fold(sm);
    out[36] = (c >> 8) as u8;
    out[37] = c as u8;
    write(skb, l2, out)
}

/// An IPv4 header without options at the start of `out`, checksummed.
#[inline(always)]
fn ip_header(
    out: &mut [u8],
    len: u16,
    tos: u8,
    frag_hi: u8,
    proto: u8,
    src: [u8; 4],
    dst: [u8; 4],
) {
    // Every byte is written: the buffer is reused scratch memory.
    out[..20].fill(0);
    out[0] = 0x45;
    out[1] = tos;
    out[2..4].copy_from_slice(&len.to_be_bytes());
    out[6] = frag_hi;
    out[8] = 64;
    out[9] = proto;
    out[12..16].copy_from_slice(&src);
    out[16..20].copy_from_slice(&dst);
    let c = fold(sum(out, 0, 20));
    out[10] = (c >> 8) as u8;
    out[11] = c as u8;
}

/// The ones'-complement sum of `len` bytes (even) of `b` from `off`.
#[inline(always)]
fn sum(b: &[u8], off: usize, len: usize) -> u32 {
    let mut s = 0u32;
    let mut i = 0;
    while i + 1 < len && off + i + 1 < b.len() {
        s += u32::from(u16::from_be_bytes([b[off + i], b[off + i + 1]]));
        i += 2;
    }
    s
}

#[inline(always)]
fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

/// Resizes the frame to the answer and writes it: MACs, then everything
/// after the Ethernet header (the ethertype stays IPv4).
#[inline(always)]
fn write(skb: *mut __sk_buff, l2: &[u8; 12], out: &[u8]) -> i32 {
    let len = (ETH_HLEN + out.len()) as u32;
    // SAFETY: `skb` is the program's context; the helpers copy from stack
    // buffers of the lengths given.
    unsafe {
        if bpf_skb_change_tail(skb, len, 0) != 0 {
            return -1;
        }
        if bpf_skb_store_bytes(skb, 0, l2.as_ptr().cast(), 12, 0) != 0 {
            return -1;
        }
        if bpf_skb_store_bytes(
            skb,
            ETH_HLEN as u32,
            out.as_ptr().cast(),
            out.len() as u32,
            0,
        ) != 0
        {
            return -1;
        }
    }
    0
}

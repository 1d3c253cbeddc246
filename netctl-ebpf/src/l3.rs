//! The router: frames addressed to the bridge's MAC, forwarded between the
//! topology's bridges as the host namespace's IPv4 stack would.

use aya_ebpf::{maps::lpm_trie::Key, programs::TcContext};
use netctl_common::{config, reason, route_kind};

use crate::{
    Decision, l2,
    maps::{self, NETCTL_NEIGH, NETCTL_ROUTES},
    parse::{
        ETH_HLEN, ETH_P_IP, EthHdr, IPV4_HLEN, Ipv4Hdr, csum_after_ttl_dec, ensure_linear,
        ipv4_is_plain, ptr_at,
    },
};

/// Routes a frame addressed to the bridge's MAC: rewrites it for the next
/// hop and delivers it into that container, or says why the kernel should.
/// `proto` is the frame's ethertype, already read.
#[inline(always)]
pub fn forward(ctx: &TcContext, proto: [u8; 2], now: u64) -> Decision {
    if u16::from_be_bytes(proto) != ETH_P_IP {
        return Decision::pass(reason::PASS_NOT_IPV4);
    }
    if !ensure_linear(ctx, ETH_HLEN + IPV4_HLEN) {
        return Decision::pass(reason::PASS_IP_SPECIAL);
    }
    let (Some(eth), Some(ip)) = (ptr_at::<EthHdr>(ctx, 0), ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN)) else {
        return Decision::pass(reason::PASS_IP_SPECIAL);
    };
    // SAFETY: `ptr_at` checked that the header lies in the packet; the
    // fields are bytes, so no alignment is required.
    let (ver_ihl, frag_off, daddr) = unsafe { ((*ip).ver_ihl, (*ip).frag_off, (*ip).daddr) };
    if !ipv4_is_plain(ver_ihl, frag_off) {
        return Decision::pass(reason::PASS_IP_SPECIAL);
    }
    if maps::config(config::FORWARD) == 0 {
        return Decision::pass(reason::PASS_FORWARD_OFF);
    }

    let Some(route) = NETCTL_ROUTES.get(Key::new(32, daddr)) else {
        return Decision::pass(reason::PASS_NO_ROUTE);
    };
    let (kind, out_bridge, gateway) = (route.kind, route.bridge, route.gateway);
    let (out_mac, ageing_ns) = (route.bridge_mac, route.ageing_ns);
    let nexthop = match kind {
        route_kind::CONNECTED => daddr,
        route_kind::GATEWAY => gateway,
        route_kind::LOCAL => return Decision::pass(reason::PASS_LOCAL),
        _ => return Decision::pass(reason::PASS_NO_ROUTE),
    };

    // SAFETY: the pointer is to a live hash element, valid until the program
    // returns; a concurrent rewrite by userspace can tear the copy, which at
    // worst misdirects one packet the way a stale entry would.
    let Some(neigh) = NETCTL_NEIGH.get_ptr(nexthop).map(|p| unsafe { *p }) else {
        return Decision::pass(reason::PASS_NO_NEIGH);
    };
    if neigh.bridge != out_bridge {
        return Decision::pass(reason::PASS_NO_NEIGH);
    }
    let Some(entry) = maps::fdb(neigh.bridge, neigh.mac) else {
        return Decision::pass(reason::PASS_NO_NEIGH);
    };
    // The FDB key holds the bridge, so the entry's port is on the route's
    // bridge (netctl drops entries of ports that left it).
    let egress = entry.port;
    if now.saturating_sub(entry.last_seen_ns) > ageing_ns {
        return Decision::pass(reason::PASS_NO_NEIGH);
    }

    // Map lookups do not move packet data, so `eth` and `ip` are still good.
    // SAFETY: as for the first read of the header.
    let (ttl, protocol, check) = unsafe { ((*ip).ttl, (*ip).protocol, (*ip).check) };
    if ttl <= 1 {
        return Decision::pass(reason::PASS_TTL);
    }
    // Commit before touching the packet, so a failure hands the kernel the
    // frame as it arrived.
    let d = l2::redirect_peer(egress, reason::REDIRECT_L3);
    if d.reason != reason::REDIRECT_L3 {
        return d;
    }
    // SAFETY: both headers were bounds-checked after the last helper that
    // could move packet data. A TC program may write the packet: for a
    // cloned skb the kernel makes the head private before the program runs.
    unsafe {
        (*eth).dst = neigh.mac;
        (*eth).src = out_mac;
        (*ip).ttl = ttl - 1;
        (*ip).check = csum_after_ttl_dec(check, ttl, protocol);
    }
    d
}

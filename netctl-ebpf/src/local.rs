//! The host's packets to its own addresses, on TC ingress of `lo`: what
//! the kernel's nat OUTPUT chain does there (Docker's `-j DOCKER` for the
//! host's own addresses), so that the host reaches its published ports.
//!
//! raw OUTPUT judges every such packet, before conntrack sees it, as in
//! the kernel. The nat table is walked for a connection's first packet; a
//! connection it translates is judged by the rest of OUTPUT and by
//! POSTROUTING as it leaves for its new destination (the hooks after the
//! kernel's re-routing) and sent there by the datapath. Everything else
//! on `lo` goes on unjudged by the other tables and unchanged. The
//! connections seen here are tracked, so that a connection's later
//! packets skip the nat table.
//!
//! Replies of a translated connection come back from a container, where
//! the ingress program undoes the translation; they reach the host's
//! socket with one of its own addresses as source, which a bridge with
//! `accept_local` lets in.

use aya_ebpf::bindings::__sk_buff;
use netctl_common::{CtCache, config, ctbit, field, hook, verdict};

use crate::{
    classify::{self, netctl_classify},
    conntrack,
    filter::{self, LOOPBACK, netctl_load_fields, netctl_track},
    l3,
    maps::{self, NETCTL_RS_HOOKS},
    nat,
};

/// `netctl_local_out`'s answers.
pub const PASS: i32 = 0;
pub const SENT: i32 = 1;
pub const DROP: i32 = -1;
/// A raw OUTPUT rule dropped it.
pub const DROP_RULE: i32 = -2;
/// A REJECT refused it: its verdict in bits 8.. (the program answers: one
/// call deeper, the answer's walks would exceed the verifier's eight
/// frames).
pub const REFUSED: i32 = 2;

/// Runs nat OUTPUT for the packet in `skb`, which the host sent to one of
/// its own addresses, and the hooks after it for a translated connection.
/// Returns `PASS` (deliver locally, as it now is), `SENT` (redirected to
/// its new destination), `REFUSED`, `DROP` or `DROP_RULE`.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_local_out(skb: *mut __sk_buff) -> i32 {
    let Some(s) = classify::scratch() else {
        return PASS;
    };
    if !filter::begin(skb) {
        return PASS;
    }
    let generation = maps::config(config::RULES_SERIAL) & 1;
    let output = u32::from(hook::OUTPUT);
    let Some(h) = NETCTL_RS_HOOKS.get(generation * u32::from(hook::COUNT) + output) else {
        return PASS;
    };
    let (raw_end, nat_start, nat_end) = (h.raw_end, h.nat_start, h.nat_end);
    // raw OUTPUT sees the packet as the host sent it, to lo (a dropped RST
    // leaves its connection as it was). REJECT is not allowed in raw.
    if filter::raw(generation, output, raw_end, 0, Some(LOOPBACK)) != u32::from(verdict::ACCEPT) {
        return DROP_RULE;
    }
    let t = netctl_track(1);
    let first = (t >> 16) & 1 != 0;
    let live = (t >> 24) & 1 != 0;
    if t & 0xff == u32::from(ctbit::RELATED) {
        // An ICMP error the host sends itself about a translated
        // connection (one SNAT'd in INPUT to a host address): nat OUTPUT's
        // half of its translation may send it elsewhere.
        if nat::netctl_nat_icmp(skb) < 0 {
            return DROP;
        }
        if filter::dst_moved() {
            return netctl_local_leave(skb, 0);
        }
        return if nat::netctl_nat_src(skb, LOOPBACK, 0) < 0 {
            DROP
        } else {
            PASS
        };
    }
    if live {
        let d = nat::netctl_nat_dst(skb);
        if d < 0 {
            return DROP;
        }
        if d == 0 {
            // Not translated here: the reply direction's undoing of a
            // source NAT (if any) is the only change.
            return if nat::netctl_nat_src(skb, LOOPBACK, 0) < 0 {
                DROP
            } else {
                PASS
            };
        }
        return netctl_local_leave(skb, 0);
    }
    if !first {
        return PASS;
    }
    // SAFETY: this CPU's scratch element. What the entry will cache: none.
    unsafe { (*s).cache = CtCache::default() };
    netctl_load_fields(0, t & 0xff, 0);
    filter::set(field::OUT, LOOPBACK);
    // The nat table cannot drop; its verdict is ACCEPT.
    let _ = netctl_classify(generation, output, 1, nat_start, nat_end);
    // SAFETY: this CPU's scratch element; the walk recorded its choices.
    if unsafe { (*s).nat[0] } == 0 {
        confirm_plain();
        return PASS;
    }
    if nat::netctl_nat_new_dst(skb, LOOPBACK) < 0 {
        return DROP;
    }
    netctl_local_leave(skb, 1)
}

/// A translated connection's packet, its destination rewritten: routed
/// again, judged by the hooks after nat OUTPUT (the rest of OUTPUT, then
/// POSTROUTING) with its new destination and output interface, given its
/// source half, and sent. `first`: the connection's first packet (nat
/// POSTROUTING is walked, the entry is created).
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_local_leave(skb: *mut __sk_buff, first: u32) -> i32 {
    let Some(s) = classify::scratch() else {
        return DROP;
    };
    // SAFETY: this CPU's scratch element.
    let (daddr, ctstate) = unsafe { ((*s).pkt.daddr, (*s).track & 0xff) };
    // A destination beyond a device that is not a bridge of the topology
    // (the uplink) would answer with a source the kernel calls a martian
    // there: not supported.
    let Some((out, nexthop)) = l3::route_out(daddr) else {
        return DROP;
    };
    let local = out == LOOPBACK;
    let generation = maps::config(config::RULES_SERIAL) & 1;
    let output = u32::from(hook::OUTPUT);
    let (raw_end, nat_start, nat_end) = NETCTL_RS_HOOKS
        .get(generation * u32::from(hook::COUNT) + output)
        .map_or((0, 0, 0), |h| (h.raw_end, h.nat_start, h.nat_end));
    let accept = u32::from(verdict::ACCEPT);
    // mangle OUTPUT saw the packet as the host sent it, to lo (raw did
    // too, in `netctl_local_out`, before conntrack).
    let mut v = accept;
    if nat_start > raw_end {
        netctl_load_fields(0, ctstate, 1);
        filter::set(field::OUT, LOOPBACK);
        v = netctl_classify(generation, output, 0, raw_end, nat_start);
    }
    // filter OUTPUT, after nat OUTPUT, sees it translated, but still out
    // of the first route's device (the hook's `state->out`).
    if v == accept {
        netctl_load_fields(0, ctstate, 0);
        filter::set(field::OUT, LOOPBACK);
        v = netctl_classify(generation, output, 0, nat_end, u32::MAX);
    }
    if v == accept {
        filter::set(field::OUT, out);
        v = netctl_classify(generation, u32::from(hook::POSTROUTING), first, 0, u32::MAX);
    }
    if v & 0xff == u32::from(verdict::REJECT) {
        return REFUSED | ((v & 0xffff) as i32) << 8;
    }
    if v != accept || nat::netctl_nat_src(skb, out, 0) < 0 {
        return DROP;
    }
    if local {
        return PASS;
    }
    if l3::netctl_out_by_neigh(skb, out, nexthop, 0) {
        SENT
    } else {
        DROP
    }
}

/// Creates the entry of a connection nothing translated, so that its later
/// packets skip the nat table. Its cache never matches: the rules judge
/// nothing else here.
#[inline(always)]
fn confirm_plain() {
    let Some(s) = classify::scratch() else {
        return;
    };
    // SAFETY: this CPU's scratch element.
    let s = unsafe { &mut *s };
    let now = crate::clock::now();
    conntrack::confirm(
        &s.ct_key,
        s.ct_state,
        &s.orig_pkt,
        now,
        (&CtCache::default(), 0),
        &mut s.entry,
    );
}

//! The router: frames addressed to the bridge's MAC, forwarded between the
//! topology's bridges as the host namespace's IPv4 stack would.

use aya_ebpf::{
    bindings::{
        __sk_buff, BPF_FIB_LKUP_RET_SUCCESS, BPF_FIB_LOOKUP_OUTPUT, bpf_fib_lookup,
        bpf_redir_neigh, bpf_redir_neigh__bindgen_ty_1,
    },
    cty::c_void,
    helpers::{bpf_fib_lookup, bpf_redirect_neigh},
    macros::map,
    maps::{PerCpuArray, lpm_trie::Key},
    programs::TcContext,
};
use netctl_common::{PORT_F_HAIRPIN, PortInfo, config, reason, route_kind};

use crate::{
    Decision,
    maps::{self, NETCTL_NEIGH, NETCTL_ROUTES},
    parse::{
        ETH_HLEN, ETH_P_IP, EthHdr, IPV4_HLEN, Ipv4Hdr, csum_after_ttl_dec, ensure_linear,
        ipv4_is_plain, ptr_at,
    },
    path,
};

/// Routes a frame addressed to the bridge's MAC: decides the next hop and
/// the port to deliver to, or why the kernel should handle it, and which
/// hooks the packet crosses on the way. `proto` is the frame's ethertype.
///
/// `bridged_in`: the bridge a frame whose destination NAT moved it came in
/// by (0: none). Out of that same bridge it is bridged again rather than
/// routed: no forwarding switch, no TTL (see `route_moved`).
#[inline(always)]
pub fn route(ctx: &TcContext, proto: [u8; 2], now: u64, bridged_in: u32) -> Decision {
    if u16::from_be_bytes(proto) != ETH_P_IP {
        return Decision::pass(reason::PASS_NOT_IPV4, path::NONE, 0);
    }
    if !ensure_linear(ctx, ETH_HLEN + IPV4_HLEN) {
        return Decision::pass(reason::PASS_IP_SPECIAL, path::NONE, 0);
    }
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) else {
        return Decision::pass(reason::PASS_IP_SPECIAL, path::NONE, 0);
    };
    // SAFETY: `ptr_at` checked that the header lies in the packet; the
    // fields are bytes, so no alignment is required.
    let (ver_ihl, frag_off, daddr, ttl) =
        unsafe { ((*ip).ver_ihl, (*ip).frag_off, (*ip).daddr, (*ip).ttl) };

    let Some(route) = NETCTL_ROUTES.get(Key::new(32, daddr)) else {
        return Decision::pass(reason::PASS_NO_ROUTE, path::PRE, 0);
    };
    let (kind, out_bridge, gateway) = (route.kind, route.bridge, route.gateway);
    let (out_mac, ageing_ns) = (route.bridge_mac, route.ageing_ns);
    // The kernel's order: local delivery first, then the forwarding switch,
    // then TTL (checked in ip_forward, before the FORWARD hook).
    if kind == route_kind::LOCAL {
        return Decision::pass(reason::PASS_LOCAL, path::INPUT, 0);
    }
    let again = bridged_in != 0 && out_bridge == bridged_in;
    if !again && maps::config(config::FORWARD) == 0 {
        return Decision::pass(reason::PASS_FORWARD_OFF, path::PRE, 0);
    }
    if out_bridge == 0 {
        return Decision::pass(reason::PASS_NO_ROUTE, path::PRE, 0);
    }
    if !again && ttl <= 1 {
        return Decision::pass(reason::PASS_TTL, path::PRE, 0);
    }
    if !ipv4_is_plain(ver_ihl, frag_off) {
        return Decision::pass(reason::PASS_IP_SPECIAL, path::FORWARD, out_bridge);
    }
    let nexthop = match kind {
        route_kind::CONNECTED => daddr,
        route_kind::GATEWAY => gateway,
        _ => {
            let mut d = Decision::pass(reason::PASS_NO_ROUTE, path::FORWARD, out_bridge);
            d.nexthop = gateway;
            return d;
        }
    };

    // Not a neighbour the datapath knows: the kernel's to forward, or the
    // datapath's to send through the kernel's neighbour table, towards the
    // next hop found here (given to `bpf_redirect_neigh`, it spares the
    // kernel a route lookup per packet).
    let mut unknown = Decision::pass(reason::PASS_NO_NEIGH, path::FORWARD, out_bridge);
    unknown.nexthop = nexthop;
    // SAFETY: the pointer is to a live hash element, valid until the program
    // returns; a concurrent rewrite by userspace can tear the copy, which at
    // worst misdirects one packet the way a stale entry would.
    let known = NETCTL_NEIGH
        .get_ptr(nexthop)
        .map(|p| unsafe { *p })
        .filter(|n| n.bridge == out_bridge)
        .map(|n| n.mac);
    // Bridged again, a frame goes to whatever MAC the host's neighbour
    // table gives its next hop, as br_netfilter sends it
    // (`br_nf_pre_routing_finish_bridge`): a neighbour that is not a
    // container, or one the datapath has not been told of.
    let mac = match known {
        Some(m) => m,
        None if again => match kernel_neigh(ctx, out_bridge, nexthop) {
            Some(m) => m,
            None => return unknown,
        },
        None => return unknown,
    };
    // The FDB key holds the bridge, so the entry's port is on the route's
    // bridge (netctl drops entries of ports that left it).
    let Some(entry) =
        maps::fdb(out_bridge, mac).filter(|e| now.saturating_sub(e.last_seen_ns) <= ageing_ns)
    else {
        if again {
            // The kernel bridge floods it, as it would the frame
            // br_netfilter hands it, to every port but this one.
            unknown.dst_mac = mac;
            unknown.bridged = true;
        }
        return unknown;
    };
    let mut d = Decision::redirect(reason::REDIRECT_L3, entry.port, out_bridge);
    d.rewrite = true;
    d.dst_mac = mac;
    d.src_mac = out_mac;
    d.bridged = again;
    d
}

/// Where a frame that came in by bridge port `ifindex` goes once a
/// destination NAT gave it a new address: routed by that address,
/// whatever MAC it was sent to, as br_netfilter does. Local: up to the
/// host. Out of another device: routed. Out of the bridge it came in by:
/// bridged again to the new destination's MAC (from `src`, TTL kept), and
/// dropped if that is the port it came in by (unless hairpin).
#[inline(always)]
pub fn route_moved(
    ctx: &TcContext,
    proto: [u8; 2],
    now: u64,
    port: &PortInfo,
    ifindex: u32,
    src: [u8; 6],
) -> Decision {
    let mut d = route(ctx, proto, now, port.bridge);
    if d.egress == 0 {
        // The kernel's to deliver: up to the host, or routed on (or
        // dropped, or answered) by its new address. The kernel bridge
        // passes a frame up only when it is addressed to the bridge, and
        // would otherwise switch it by its old MAC, so it gets the
        // bridge's. (Before the rules: an answer to it then comes from
        // that MAC, as the kernel's would.) Bridged again to a MAC no
        // port is known for, it gets that MAC, for the bridge to flood.
        let mac = if d.bridged {
            d.dst_mac
        } else {
            port.bridge_mac
        };
        let _ = ctx_store_mac(ctx, mac);
        return d;
    }
    if !d.bridged {
        return d;
    }
    if d.egress == ifindex && port.flags & PORT_F_HAIRPIN == 0 {
        return Decision::pass(reason::DROP_NAT, path::PRE, 0);
    }
    d.reason = reason::REDIRECT_L2;
    d.src_mac = src;
    d
}

/// The MAC the host's neighbour table has for `nexthop` (network order)
/// on bridge `out_if`, if it has a usable one.
#[inline(always)]
fn kernel_neigh(ctx: &TcContext, out_if: u32, nexthop: [u8; 4]) -> Option<[u8; 6]> {
    let m = netctl_kernel_neigh(ctx.skb.skb, out_if, u32::from_ne_bytes(nexthop));
    (m >> 48 != 0).then(|| {
        let b = m.to_be_bytes();
        [b[2], b[3], b[4], b[5], b[6], b[7]]
    })
}

/// `netctl_kernel_neigh`'s parameter block: in map memory, since the
/// frames of the deepest call chain through `decide` leave no room for
/// its 64 bytes on the stack.
#[map]
static NETCTL_FIB_PARAMS: PerCpuArray<bpf_fib_lookup> = PerCpuArray::with_max_entries(1, 0);

/// `kernel_neigh`'s lookup: the MAC in the low 48 bits and bit 48 set, or
/// 0. The lookup is the kernel's route lookup out of `out_if` (which the
/// datapath's route agrees with), and fails when the neighbour is not
/// resolved (`BPF_FIB_LKUP_RET_NO_NEIGH`).
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_kernel_neigh(skb: *mut __sk_buff, out_if: u32, nexthop: u32) -> u64 {
    let Some(q) = NETCTL_FIB_PARAMS.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's element, used by nothing else while the program
    // runs; all-zero is a valid `bpf_fib_lookup` (plain integers and
    // unions of them).
    let q = unsafe {
        core::ptr::write_bytes(q, 0, 1);
        &mut *q
    };
    q.family = 2; // AF_INET
    q.ifindex = out_if;
    q.__bindgen_anon_4.ipv4_dst = nexthop;
    // SAFETY: `q` is a valid parameter block for the call, with its size;
    // `skb` is the program's context.
    let rc = unsafe {
        bpf_fib_lookup(
            skb as *mut c_void,
            q,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            BPF_FIB_LOOKUP_OUTPUT,
        )
    };
    if rc != i64::from(BPF_FIB_LKUP_RET_SUCCESS) || q.ifindex != out_if {
        return 0;
    }
    let m = q.dmac;
    u64::from_be_bytes([0, 1, m[0], m[1], m[2], m[3], m[4], m[5]])
}

/// `__sk_buff::tc_index` of a packet `netctl_reroute` sent on: the egress
/// program of the port it leaves by has nothing more to judge. (tc_index
/// is otherwise unused since the kernel dropped cls_tcindex and dsmark.)
const REROUTED: u32 = 0x6e63;

/// Whether `netctl_reroute` sent the packet on; clears the mark.
#[inline(always)]
pub fn rerouted(ctx: &TcContext) -> bool {
    // SAFETY: the program's `__sk_buff`; `tc_index` is readable and
    // writable for TC programs.
    unsafe {
        if (*ctx.skb.skb).tc_index != REROUTED {
            return false;
        }
        (*ctx.skb.skb).tc_index = 0;
    }
    true
}

/// Sends a packet of the host's, whose destination nat OUTPUT changed,
/// along `route_out`'s route to its new destination (`out_if` 0: none
/// the datapath follows), as the kernel's `ip_route_me_harder`. Returns
/// the program's verdict: redirected; left as it is without a route; or
/// dropped when the neighbour cannot be reached.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_reroute(skb: *mut __sk_buff, out_if: u32, nexthop: u32) -> i32 {
    if out_if == 0 {
        return netctl_common::TCX_NEXT;
    }
    // SAFETY: as in `rerouted`.
    unsafe { (*skb).tc_index = REROUTED };
    if netctl_out_by_neigh(skb, out_if, nexthop, 0) {
        aya_ebpf::bindings::TC_ACT_REDIRECT
    } else {
        // SAFETY: as in `rerouted`.
        unsafe { (*skb).tc_index = 0 };
        aya_ebpf::bindings::TC_ACT_SHOT
    }
}

/// The device and next hop (network order, 0: on-link) of the host's
/// route to `daddr`, as the datapath mirrors it: lo for the host's own
/// addresses (sent through lo with the local route the kernel's output
/// path gives them; redirected into lo, 127.0.0.1 would be a martian
/// there), a bridge or the uplink otherwise. None for routes out of
/// devices the datapath does not handle.
#[inline(always)]
pub fn route_out(daddr: [u8; 4]) -> Option<(u32, u32)> {
    let r = NETCTL_ROUTES.get(Key::new(32, daddr))?;
    let (kind, out_if, gateway) = (r.kind, r.bridge, r.gateway);
    match kind {
        route_kind::LOCAL => Some((crate::filter::LOOPBACK, 0)),
        route_kind::CONNECTED if out_if != 0 => Some((out_if, 0)),
        route_kind::GATEWAY if out_if != 0 => Some((out_if, u32::from_ne_bytes(gateway))),
        _ => None,
    }
}

/// Rewrites a routed frame for its next hop: MACs, TTL, header checksum.
/// False if the headers are no longer where `route` saw them.
#[inline(always)]
pub fn rewrite(ctx: &TcContext, d: &Decision) -> bool {
    let (Some(eth), Some(ip)) = (ptr_at::<EthHdr>(ctx, 0), ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN)) else {
        return false;
    };
    // SAFETY: both headers were bounds-checked just above, after the last
    // helper that could move packet data. A TC program may write the
    // packet: for a cloned skb the kernel makes the head private before the
    // program runs.
    unsafe {
        if d.bridged {
            (*eth).dst = d.dst_mac;
            return true;
        }
        let (ttl, protocol, check) = ((*ip).ttl, (*ip).protocol, (*ip).check);
        if ttl <= 1 {
            return false;
        }
        (*eth).dst = d.dst_mac;
        (*eth).src = d.src_mac;
        (*ip).ttl = ttl - 1;
        (*ip).check = csum_after_ttl_dec(check, ttl, protocol);
    }
    true
}

/// Writes the frame's destination MAC.
#[inline(always)]
fn ctx_store_mac(ctx: &TcContext, mac: [u8; 6]) -> bool {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return false;
    };
    // SAFETY: bounds-checked just above, after the last helper that could
    // move packet data (see `rewrite`).
    unsafe { (*eth).dst = mac };
    true
}

/// Sends a packet out of `out_if` through the kernel's neighbour table
/// towards `nexthop` (network order; 0: the destination, on-link): one the
/// kernel would have `forwarded` (its TTL decremented first), or one of
/// the host's own.
/// False if it cannot. A global function: its frame must not add to the
/// program's own, which every call chain shares, and a static one gets its
/// context argument split by LLVM into packet pointers the verifier
/// refuses to do arithmetic on.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_out_by_neigh(
    skb: *mut __sk_buff,
    out_if: u32,
    nexthop: u32,
    forwarded: u32,
) -> bool {
    let ctx = &TcContext::new(skb);
    let Some(ip) = ptr_at::<Ipv4Hdr>(ctx, ETH_HLEN) else {
        return false;
    };
    // SAFETY: bounds-checked just above, after the last helper that could
    // move packet data (see `rewrite`).
    unsafe {
        let (ttl, protocol, check) = ((*ip).ttl, (*ip).protocol, (*ip).check);
        if forwarded != 0 {
            if ttl <= 1 {
                return false;
            }
            (*ip).ttl = ttl - 1;
            (*ip).check = csum_after_ttl_dec(check, ttl, protocol);
        }
    }
    let rc = if nexthop == 0 {
        // SAFETY: no parameters: the helper uses the packet's destination.
        unsafe { bpf_redirect_neigh(out_if, core::ptr::null_mut(), 0, 0) }
    } else {
        let mut nh = bpf_redir_neigh {
            nh_family: 2, // AF_INET
            __bindgen_anon_1: bpf_redir_neigh__bindgen_ty_1 { ipv4_nh: nexthop },
        };
        // SAFETY: `nh` is a valid `bpf_redir_neigh` on the stack for the
        // call, with its size; the helper only reads it.
        unsafe {
            bpf_redirect_neigh(
                out_if,
                &mut nh,
                core::mem::size_of::<bpf_redir_neigh>() as i32,
                0,
            )
        }
    };
    rc == i64::from(aya_ebpf::bindings::TC_ACT_REDIRECT)
}

//! Per-packet trace events (aya-log), sent only while
//! `NETCTL_CONFIG[config::TRACE]` is non-zero.
//!
//! [`netctl_trace`] is a separate eBPF function, so with tracing off the fast
//! path pays one array lookup and a branch. It is a *global* function (BTF
//! linkage global, from `no_mangle`), which the verifier checks once on its
//! own, with unknown arguments, instead of once per caller state (a static
//! function was re-verified for every reason: ~150k instructions). With the
//! fixed-width reason names below, the whole program verifies in ~25k.
//! A global function may take only the context and scalars, so it reads the
//! headers again itself rather than have the fast path collect them; after a
//! routed redirect it shows the frame as rewritten (next hop's MAC, TTL
//! already decremented).

use aya_ebpf::{bindings::__sk_buff, programs::TcContext};
use aya_log_ebpf::info;
use netctl_common::{RS_LOG_MAX, field, reason};

use crate::{
    classify,
    maps::NETCTL_RS_LOG,
    parse::{ETH_HLEN, ETH_P_IP, EthHdr, Ipv4Hdr},
};

/// Logs what the ingress program decided for the packet in `skb`, which
/// arrived on `ifindex`; `egress` is the port it was redirected to (0 when
/// it was handed to the kernel). Returns 0: the verifier wants a global
/// function to return a scalar.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_trace(skb: *mut __sk_buff, ifindex: u32, why: u32, egress: u32) -> i32 {
    let ctx = TcContext::new(skb);
    let name = reason_name(why);
    // `bpf_skb_load_bytes` rather than direct access: speed does not matter
    // here, and copies need no bounds checks for the verifier to follow.
    let Ok(eth) = ctx.load::<EthHdr>(0) else {
        info!(
            &ctx,
            "{} in={} out={} (no ethernet header)", name, ifindex, egress
        );
        return 0;
    };
    let proto = u16::from_be_bytes(eth.proto);
    if proto == ETH_P_IP
        && let Ok(ip) = ctx.load::<Ipv4Hdr>(ETH_HLEN)
    {
        info!(
            &ctx,
            "{} in={} out={} {:mac} > {:mac} {:i} > {:i} ttl={}",
            name,
            ifindex,
            egress,
            eth.src,
            eth.dst,
            ip.saddr,
            ip.daddr,
            ip.ttl
        );
        return 0;
    }
    info!(
        &ctx,
        "{} in={} out={} {:mac} > {:mac} ethertype={:x}",
        name,
        ifindex,
        egress,
        eth.src,
        eth.dst,
        proto
    );
    0
}

/// Width of a reason's name in a trace line: the longest name.
const NAME_LEN: usize = 20;

/// `reason::NAMES`, each padded with spaces to [`NAME_LEN`] bytes, then "?"
/// for a reason out of range. A fixed length, looked up by index, keeps
/// verification cheap: a `&str` of a different length per reason has the
/// verifier walk the logging code once per reason (~270k instructions
/// instead of ~25k).
static NAMES: [[u8; NAME_LEN]; reason::COUNT as usize + 1] = {
    let mut out = [[b' '; NAME_LEN]; reason::COUNT as usize + 1];
    out[reason::COUNT as usize][0] = b'?';
    let mut i = 0;
    while i < reason::NAMES.len() {
        let name = reason::NAMES[i].as_bytes();
        assert!(name.len() <= NAME_LEN);
        let mut j = 0;
        while j < name.len() {
            out[i][j] = name[j];
            j += 1;
        }
        i += 1;
    }
    out
};

/// The name of reason `why`, space-padded to [`NAME_LEN`].
#[inline(always)]
fn reason_name(why: u32) -> &'static str {
    // Clamping (rather than a checked `get`) bounds the very register the
    // offset is computed from, which is what the verifier can follow.
    let name = &NAMES[why.min(reason::COUNT) as usize];
    // SAFETY: the bytes are those of ASCII `&str`s and ASCII spaces, so they
    // are valid UTF-8.
    unsafe { core::str::from_utf8_unchecked(name) }
}

/// The iptables LOG target: one line per packet that reaches a LOG rule,
/// with its `--log-prefix` and the kernel's `KEY=value` layout (`IN` and
/// `OUT` are ifindexes: names are not at hand here). Sent whether or
/// not tracing is on, as the kernel's LOG writes whether or not anyone
/// reads the log.
#[inline(never)]
#[unsafe(no_mangle)]
pub extern "C" fn netctl_log(generation: u32, log: u32, hook: u32) -> i32 {
    // aya-log ignores its context argument (events go to a ring buffer), and
    // an unused argument of a global function is optimised away, which the
    // verifier then refuses; so this function takes none.
    let ctx = ();
    let idx = (generation & 1) * RS_LOG_MAX + log.min(RS_LOG_MAX - 1);
    let Some(prefix) = NETCTL_RS_LOG.get(idx) else {
        return 0;
    };
    // The whole NUL-padded buffer, not the prefix cut to its length: a
    // string of varying length has the verifier walk the logging code once
    // per possible length. `netctl trace` drops the NULs.
    // SAFETY: userspace writes prefixes from Rust strings (UTF-8), cut at a
    // character boundary, NUL-padded; NUL is valid UTF-8.
    let prefix = unsafe { core::str::from_utf8_unchecked(&prefix[..]) };
    let Some(s) = classify::scratch() else {
        return 0;
    };
    // SAFETY: this CPU's scratch element, filled for the packet.
    let v = unsafe { (*s).values };
    let (inif, outif) = (
        u32::from_be_bytes(v[field::IN as usize]),
        u32::from_be_bytes(v[field::OUT as usize]),
    );
    let sp = u16::from_be_bytes([v[field::SPORT as usize][0], v[field::SPORT as usize][1]]);
    let dp = u16::from_be_bytes([v[field::DPORT as usize][0], v[field::DPORT as usize][1]]);
    // SAFETY: as above.
    let len = unsafe { (*s).len };
    info!(
        &ctx,
        "LOG hook={} {}IN={} OUT={} SRC={:i} DST={:i} LEN={} PROTO={} SPT={} DPT={}",
        hook,
        prefix,
        inif,
        outif,
        v[field::SRC as usize],
        v[field::DST as usize],
        len,
        v[field::PROTO as usize][0],
        sp,
        dp
    );
    0
}

//! The bridge: source learning and forwarding to a known port.

use aya_ebpf::{bindings::TC_ACT_REDIRECT, helpers::bpf_redirect_peer};
use netctl_common::{
    FdbEntry, FdbKey, Forwarded, Learned, PORT_F_HAIRPIN, PortInfo, PortStats, reason,
};

use crate::{
    Decision,
    maps::{self, NETCTL_FDB},
    parse::{is_multicast, mac_u64},
    path,
};

/// A learned entry is rewritten at most this often while the MAC stays on
/// its port, which keeps map writes off most packets.
pub const LEARN_REFRESH_NS: u64 = 1_000_000_000;

/// Records that `src` was seen on `ifindex`. `stats` is this CPU's value
/// of the port in `NETCTL_PORT_STATS`, which `maps::account` updates for
/// the frame anyway: the shortcuts live there so that a frame fetches one
/// per-CPU value of its port.
#[inline(always)]
pub fn learn(port: &PortInfo, stats: Option<*mut PortStats>, ifindex: u32, src: [u8; 6], now: u64) {
    if is_multicast(&src) || mac_u64(&src) == 0 {
        return;
    }
    let Some(s) = stats else {
        return;
    };
    // SAFETY: this CPU's copy of an array element, used by this CPU only.
    let l = unsafe { &mut (*s).learned };
    // The same MAC on the same bridge as this CPU last saw on this port (a
    // port's slot starts from zero whenever netctl gives it to a port),
    // with the entry refreshed less than LEARN_REFRESH_NS ago: the
    // lookup below would find it fresh. (Should the MAC have been learned
    // on another port since, it comes back here within that time, as a
    // flapping MAC's entry would on the kernel bridge at its next frame.)
    if l.bridge == port.bridge
        && l.mac == mac_u64(&src)
        && now.saturating_sub(l.refreshed_ns) <= LEARN_REFRESH_NS
    {
        return;
    }
    let old = maps::fdb(port.bridge, src);
    let found =
        old.filter(|e| e.port == ifindex && now.saturating_sub(e.last_seen_ns) <= LEARN_REFRESH_NS);
    let remember = |refreshed_ns| Learned {
        refreshed_ns,
        bridge: port.bridge,
        _pad: 0,
        mac: mac_u64(&src),
    };
    if let Some(e) = found {
        *l = remember(e.last_seen_ns);
        return;
    }
    let key = FdbKey {
        bridge: port.bridge,
        mac: src,
        _pad: [0; 2],
    };
    let entry = FdbEntry {
        port: ifindex,
        _pad: 0,
        last_seen_ns: now,
    };
    // A failed update (no memory) only means the next frame tries again.
    if NETCTL_FDB.insert(key, entry, 0).is_ok() {
        *l = remember(now);
        // The MAC moved: what any CPU remembers of its old port is wrong
        // now. (After the insert: a CPU that reads the new generation
        // finds the new entry.)
        if old.is_some_and(|e| e.port != ifindex) {
            maps::bump_fdb_generation();
        }
    }
}

/// Switches a unicast frame from `src` for `dst`, which is not the bridge
/// itself, to the port that learned it. Bridged frames cross FORWARD with
/// the bridge as both `-i` and `-o`, as with br_netfilter. `stats`: as for
/// `learn`, which has run for the frame.
#[inline(always)]
pub fn forward(
    port: &PortInfo,
    stats: Option<*mut PortStats>,
    ifindex: u32,
    src: [u8; 6],
    dst: [u8; 6],
    now: u64,
) -> Decision {
    // Read before the lookup, so that an answer stored with it is never
    // newer than the generation it claims.
    let generation = maps::fdb_generation();
    let (egress, until_ns) = 'found: {
        if let Some(s) = stats {
            // SAFETY: this CPU's copy of an array element, used by this CPU
            // only.
            let f = unsafe { &(*s).forwarded };
            // Same destination as this CPU's last frame from the port,
            // nothing moved or changed since, the entry not yet aged out:
            // the lookup below would answer the same.
            if f.generation == generation && f.mac == mac_u64(&dst) && now <= f.until_ns {
                break 'found (f.egress, f.until_ns);
            }
        }
        let Some(entry) = maps::fdb(port.bridge, dst) else {
            return Decision::pass(reason::PASS_UNKNOWN, path::FORWARD, port.bridge);
        };
        let until_ns = entry.last_seen_ns.saturating_add(port.ageing_ns);
        if now > until_ns {
            return Decision::pass(reason::PASS_UNKNOWN, path::FORWARD, port.bridge);
        }
        if entry.port == ifindex && port.flags & PORT_F_HAIRPIN == 0 {
            return Decision::pass(reason::PASS_SAME_PORT, path::PRE, 0);
        }
        if let Some(s) = stats {
            // SAFETY: as above.
            unsafe {
                (*s).forwarded = Forwarded {
                    until_ns,
                    generation,
                    egress: entry.port,
                    _pad: 0,
                    mac: mac_u64(&dst),
                };
            }
        }
        (entry.port, until_ns)
    };
    if let Some(s) = stats {
        crate::steady::remember(
            port, ifindex, s, generation, src, dst, egress, until_ns, now,
        );
    }
    // The key holds the bridge, so the entry's port is on this bridge; netctl
    // removes entries of ports that are gone or moved (and a redirect to a
    // vanished device fails and falls back to the kernel).
    Decision::redirect(reason::REDIRECT_L2, egress, port.bridge)
}

/// Delivers into the peer of host-side veth `d.egress` (the container's
/// eth0) once the program returns, or says that the kernel must.
#[inline(always)]
pub fn redirect_peer(d: &mut Decision) {
    // SAFETY: the helper only records the target in per-CPU state that the
    // kernel acts on after the program returns; it has no memory arguments.
    let rc = unsafe { bpf_redirect_peer(d.egress, 0) };
    if rc != i64::from(TC_ACT_REDIRECT) {
        d.reason = reason::PASS_REDIRECT_FAILED;
    }
}

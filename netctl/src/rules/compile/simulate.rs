//! The eBPF classifier's algorithm, run in userspace over a `MapImage` and
//! nothing else: if it agrees with the reference interpreter, the maps are
//! right, and the kernel side only has to do the same steps. It is also the
//! specification of those steps, so it follows them literally rather than
//! efficiently.

use netctl_common::{
    RS_BLOCKS_MAX, RS_CLASS_WILD, RS_ENTRIES_MAX, RS_LOG_MAX, RS_NAT_MAX, RS_NO_SLOT,
    RS_SUMMARY_WORDS, RsHook, RsNat, RsSummary, RsWordKey, RuleEntry, entry, field, hook, nat_kind,
    nat_range,
};

use super::{MapImage, WALK_MAX, reject_with};
use crate::rules::eval::{Outcome, PacketKeys, Verdict};
use crate::rules::model::{Hook, Nat, NatRange, PacketView, PortRange};

/// The classifier's key for each field (`field::*`), as the eBPF side must
/// compute it: ports only for tcp and udp, ICMP `type << 8 | code` only for
/// ICMP, 0 otherwise; ifindex 0 for an absent interface.
pub fn packet_keys(
    pkt: &PacketView,
    ifindex_of: impl Fn(&str) -> u32,
) -> [u32; field::COUNT as usize] {
    let k = PacketKeys::of(pkt);
    let mut keys = [0u32; field::COUNT as usize];
    keys[field::SRC as usize] = u32::from(pkt.src);
    keys[field::DST as usize] = u32::from(pkt.dst);
    keys[field::PROTO as usize] = u32::from(pkt.proto);
    keys[field::SPORT as usize] = u32::from(k.sport);
    keys[field::DPORT as usize] = u32::from(k.dport);
    keys[field::ICMP as usize] = u32::from(k.icmp_type) << 8 | u32::from(k.icmp_code);
    keys[field::IN as usize] = pkt.in_iface.as_deref().map_or(0, &ifindex_of);
    keys[field::OUT as usize] = pkt.out_iface.as_deref().map_or(0, &ifindex_of);
    keys[field::CTSTATE as usize] = u32::from(pkt.ctstate);
    keys
}

type Map<K, V> = super::FastMap<K, V>;

/// A `MapImage` indexed like the kernel's maps.
pub struct Simulator {
    generation: u8,
    hooks: Map<u32, RsHook>,
    /// (prefixlen, hook, field, value) of this generation.
    class: Map<(u32, u8, u8, u32), u32>,
    /// The prefix lengths present per (hook, field), longest first: the
    /// lookup only needs to try those.
    lens: Map<(u8, u8), Vec<u8>>,
    summary: Map<RsWordKey, RsSummary>,
    words: Map<RsWordKey, u64>,
    entries: Map<u32, RuleEntry>,
    logs: Map<u32, String>,
    nat: Map<u32, RsNat>,
}

/// Runs one packet through `image` (see `Simulator::run`).
pub fn simulate(
    image: &MapImage,
    hook: Hook,
    pkt: &PacketView,
    first_of_conn: bool,
    ifindex_of: impl Fn(&str) -> u32,
) -> Outcome {
    Simulator::new(image).run(hook, pkt, first_of_conn, ifindex_of)
}

impl Simulator {
    pub fn new(image: &MapImage) -> Simulator {
        let g = image.generation;
        let mine = || image.class.iter().filter(move |(k, _)| k.generation == g);
        let mut lens: Map<(u8, u8), Vec<u8>> = Map::default();
        for (k, _) in mine() {
            let v = lens.entry((k.hook, k.field)).or_default();
            let len = (k.prefixlen - 32) as u8;
            if !v.contains(&len) {
                v.push(len);
            }
        }
        for v in lens.values_mut() {
            v.sort_unstable_by(|a, b| b.cmp(a));
        }
        Simulator {
            generation: g,
            hooks: image.hooks.iter().copied().collect(),
            class: mine()
                .map(|(k, c)| {
                    (
                        (k.prefixlen, k.hook, k.field, u32::from_be_bytes(k.value)),
                        *c,
                    )
                })
                .collect(),
            lens,
            summary: image.summary.iter().copied().collect(),
            words: image.words.iter().copied().collect(),
            entries: image.entries.iter().copied().collect(),
            logs: image
                .logs
                .iter()
                .map(|(i, buf)| {
                    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
                    (*i, String::from_utf8_lossy(&buf[..len]).into_owned())
                })
                .collect(),
            nat: image.nat.iter().copied().collect(),
        }
    }

    /// The LPM trie lookup: the longest prefix of the left-aligned key.
    fn classify(&self, hk: u8, fld: u8, key: u32) -> Option<u32> {
        let width = field::WIDTH[fld as usize];
        let v = if width == 32 {
            key
        } else {
            key << (32 - width)
        };
        self.lens.get(&(hk, fld))?.iter().find_map(|&len| {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            let k = (32 + u32::from(len), hk, fld, v & mask);
            self.class.get(&k).copied()
        })
    }

    fn word_key(&self, hk: u8, fld: u8, class: u32, block: u32) -> RsWordKey {
        RsWordKey {
            generation: self.generation,
            hook: hk,
            field: fld,
            _pad: 0,
            class,
            block,
        }
    }

    /// What the datapath does with `pkt` at `hook`: classify each field,
    /// intersect the class summaries, then walk the matching entries from
    /// the cursor.
    ///
    /// # Panics
    ///
    /// When the image is inconsistent (a field without a default class, an
    /// entry missing) or a packet walks more than `WALK_MAX` entries: both
    /// mean the compiler is wrong.
    pub fn run(
        &self,
        hook: Hook,
        pkt: &PacketView,
        first_of_conn: bool,
        ifindex_of: impl Fn(&str) -> u32,
    ) -> Outcome {
        self.run_indexed(hook, pkt, first_of_conn, ifindex_of).0
    }

    /// `run`, and the index in the generation's `MAP_RS_NAT` (the NAT
    /// entry's `RuleEntry::log`) of the NAT action in `Outcome::nat`.
    pub fn run_indexed(
        &self,
        hook: Hook,
        pkt: &PacketView,
        first_of_conn: bool,
        ifindex_of: impl Fn(&str) -> u32,
    ) -> (Outcome, Option<u32>) {
        let mut nat_index = None;
        let out = self.walk(hook, pkt, first_of_conn, ifindex_of, &mut nat_index);
        (out, nat_index)
    }

    fn walk(
        &self,
        hook: Hook,
        pkt: &PacketView,
        first_of_conn: bool,
        ifindex_of: impl Fn(&str) -> u32,
        nat_index: &mut Option<u32>,
    ) -> Outcome {
        let mut out = Outcome::accept();
        let hk = hook.index() as u8;
        let index = u32::from(self.generation) * u32::from(hook::COUNT) + u32::from(hk);
        let Some(hdr) = self.hooks.get(&index).filter(|h| h.entries > 0) else {
            return out;
        };

        let keys = packet_keys(pkt, ifindex_of);
        let mut classes = [0u32; field::COUNT as usize];
        for f in 0..field::COUNT {
            classes[f as usize] = self
                .classify(hk, f, keys[f as usize])
                .unwrap_or_else(|| panic!("hook {hook:?}: field {f} has no default class"));
        }

        let zero = RsSummary {
            words: [0; RS_SUMMARY_WORDS],
        };
        let mut candidates = [u64::MAX; RS_SUMMARY_WORDS];
        for f in 0..field::COUNT {
            let get = |c| {
                self.summary
                    .get(&self.word_key(hk, f, c, u32::MAX))
                    .unwrap_or(&zero)
            };
            let (mine, wild) = (get(classes[f as usize]), get(RS_CLASS_WILD));
            for (w, cand) in candidates.iter_mut().enumerate() {
                *cand &= mine.words[w] | wild.words[w];
            }
        }

        let mut cursor = 0u32;
        let mut walked = 0u32;
        loop {
            let Some(i) = self.next_match(hk, &classes, &candidates, cursor, hdr.entries) else {
                return out;
            };
            if !first_of_conn && hdr.nat_start <= i && i < hdr.nat_end {
                cursor = hdr.nat_end;
                continue;
            }
            walked += 1;
            assert!(
                walked <= WALK_MAX,
                "hook {hook:?}: a packet walked more than {WALK_MAX} entries"
            );
            let e = self
                .entries
                .get(&(index * RS_ENTRIES_MAX + i))
                .unwrap_or_else(|| panic!("hook {hook:?}: entry {i} is missing"));
            if e.slot != RS_NO_SLOT {
                out.counted.push(e.slot);
            }
            match e.kind {
                entry::CONTINUE => cursor = i + 1,
                entry::LOG => {
                    let log = u32::from(self.generation) * RS_LOG_MAX + e.log;
                    out.logs
                        .push(self.logs.get(&log).cloned().unwrap_or_default());
                    cursor = i + 1;
                }
                entry::SKIP => cursor = e.target,
                entry::NAT => {
                    let a = self
                        .nat
                        .get(&(u32::from(self.generation) * RS_NAT_MAX + e.log))
                        .unwrap_or_else(|| panic!("hook {hook:?}: entry {i}: NAT action missing"));
                    out.nat = Some(
                        nat_of(a)
                            .unwrap_or_else(|| panic!("hook {hook:?}: entry {i}: bad NAT action")),
                    );
                    *nat_index = Some(e.log);
                    cursor = e.target;
                }
                entry::DROP => {
                    out.verdict = Verdict::Drop;
                    return out;
                }
                entry::REJECT => {
                    let with = reject_with(e.reject)
                        .unwrap_or_else(|| panic!("hook {hook:?}: entry {i}: bad reject code"));
                    out.verdict = Verdict::Reject(with);
                    return out;
                }
                k => panic!("hook {hook:?}: entry {i}: unknown kind {k}"),
            }
            if cursor >= hdr.entries {
                return out;
            }
        }
    }

    /// The lowest entry `>= cursor` (and `< entries`) set in every field's
    /// class or WILD bitvector, scanning only the candidate blocks.
    fn next_match(
        &self,
        hk: u8,
        classes: &[u32; field::COUNT as usize],
        candidates: &[u64; RS_SUMMARY_WORDS],
        cursor: u32,
        entries: u32,
    ) -> Option<u32> {
        let last_block = entries.div_ceil(64).min(RS_BLOCKS_MAX);
        for b in cursor / 64..last_block {
            if candidates[(b / 64) as usize] & (1 << (b % 64)) == 0 {
                continue;
            }
            let mut bits = u64::MAX;
            for f in 0..field::COUNT {
                let get = |c| {
                    self.words
                        .get(&self.word_key(hk, f, c, b))
                        .copied()
                        .unwrap_or(0)
                };
                bits &= get(classes[f as usize]) | get(RS_CLASS_WILD);
            }
            if b == cursor / 64 {
                bits &= u64::MAX << (cursor % 64);
            }
            if b == entries / 64 {
                bits &= (1u64 << (entries % 64)) - 1;
            }
            if bits != 0 {
                return Some(b * 64 + bits.trailing_zeros());
            }
        }
        None
    }
}

/// The NAT target a `MAP_RS_NAT` element stands for; `None` for an
/// element the datapath could not make sense of.
pub fn nat_of(a: &RsNat) -> Option<Nat> {
    if a.flags & !nat_range::PORTS != 0 {
        return None;
    }
    if matches!(a.kind, nat_kind::MASQUERADE | nat_kind::REDIRECT)
        && (a.addr_min, a.addr_max) != ([0; 4], [0; 4])
    {
        return None;
    }
    let ports = (a.flags & nat_range::PORTS != 0).then_some(PortRange {
        lo: a.port_min,
        hi: a.port_max,
    });
    let range = NatRange {
        addr_min: a.addr_min.into(),
        addr_max: a.addr_max.into(),
        ports,
    };
    Some(match a.kind {
        nat_kind::SNAT => Nat::Snat(range),
        nat_kind::DNAT => Nat::Dnat(range),
        nat_kind::MASQUERADE => Nat::Masquerade(ports),
        nat_kind::REDIRECT => Nat::Redirect(ports),
        _ => return None,
    })
}

//! Turns a hook's tables and chains into one straight-line program: the
//! datapath cannot keep a jump stack per packet, so user chains are inlined
//! at their call sites and every control transfer becomes a forward SKIP.
//!
//! An inlined rule holds only for packets that took the call, so its
//! predicate is the caller's conjoined with its own. Predicates are kept as
//! lists of per-field atoms (a set of keys of one field, possibly negated),
//! which makes conjunction concatenation and lets the class builder treat
//! every field alike.

use netctl_common::{
    RS_ENTRIES_MAX, RS_LOG_LEN, RS_LOG_MAX, RS_NAT_MAX, RS_SLOTS_MAX, RsNat, field, nat_kind,
    nat_range,
};

use super::FastMap;
use crate::rules::eval::builtin_chain;
use crate::rules::model::{
    Chain, Hook, Iface, Matches, MultiportKind, Nat, NatRange, Neg, Policy, PortRange, RejectWith,
    Ruleset, Table, TableRules, Target,
};
use crate::{Error, Result};

/// The set of keys an atom stands for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) enum AtomKey {
    /// One prefix: value left-aligned in 32 bits, length in the field's bits.
    /// The common case gets no allocation of its own.
    Prefix((u32, u8)),
    /// Disjoint prefixes, sorted (a port range or list, a ctstate mask).
    Prefixes(Vec<(u32, u8)>),
    /// An interface name pattern (`-i`/`-o`).
    Iface { name: String, wildcard: bool },
}

impl AtomKey {
    pub fn prefixes(&self) -> &[(u32, u8)] {
        match self {
            AtomKey::Prefix(p) => std::slice::from_ref(p),
            AtomKey::Prefixes(v) => v,
            AtomKey::Iface { .. } => &[],
        }
    }

    /// The bare `+`: the only pattern an interface unknown to the compiler
    /// (or no interface at all) matches.
    pub fn is_any_iface(&self) -> bool {
        matches!(self, AtomKey::Iface { name, wildcard: true } if name.is_empty())
    }

    pub fn iface_matches(&self, ifname: &str) -> bool {
        match self {
            AtomKey::Iface { name, wildcard } => Iface {
                name: name.clone(),
                wildcard: *wildcard,
            }
            .matches(ifname),
            _ => false,
        }
    }
}

/// One conjunct of a predicate: the field's key is (or, negated, is not) in
/// the atom's set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Atom {
    pub field: u8,
    pub id: u32,
    pub neg: bool,
}

/// Atoms interned per field, so equal sets share an id and the class
/// builder looks at each distinct set once.
#[derive(Default)]
pub(super) struct AtomTable {
    pub keys: [Vec<AtomKey>; field::COUNT as usize],
    index: [FastMap<AtomKey, u32>; field::COUNT as usize],
    /// Reused by `push_ranges`.
    scratch: Vec<(u32, u8)>,
}

impl AtomTable {
    fn intern(&mut self, field: u8, key: AtomKey, neg: bool) -> Atom {
        let f = field as usize;
        let id = match self.index[f].get(&key) {
            Some(&id) => id,
            None => {
                let id = self.keys[f].len() as u32;
                self.keys[f].push(key.clone());
                self.index[f].insert(key, id);
                id
            }
        };
        Atom { field, id, neg }
    }

    /// Adds the atom "key in prefixes", unless it holds for every key.
    fn push_prefixes(&mut self, out: &mut Vec<Atom>, field: u8, prefixes: &[(u32, u8)], neg: bool) {
        let key = match prefixes {
            [(0, 0)] if !neg => return,
            [p] => AtomKey::Prefix(*p),
            _ => AtomKey::Prefixes(prefixes.to_vec()),
        };
        out.push(self.intern(field, key, neg));
    }

    fn push_ranges(&mut self, out: &mut Vec<Atom>, field: u8, ranges: &[(u32, u32)], neg: bool) {
        let width = field::WIDTH[field as usize];
        let mut prefixes = std::mem::take(&mut self.scratch);
        prefixes.clear();
        if let [(lo, hi)] = ranges {
            // The common case: one range, no merging.
            if lo <= hi {
                range_prefixes(*lo, *hi, width, &mut prefixes);
            }
        } else {
            let mut rs: Vec<(u32, u32)> = ranges.iter().copied().filter(|(l, h)| l <= h).collect();
            rs.sort_unstable();
            let mut merged: Vec<(u32, u32)> = Vec::with_capacity(rs.len());
            for (lo, hi) in rs {
                match merged.last_mut() {
                    Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                    _ => merged.push((lo, hi)),
                }
            }
            for (lo, hi) in merged {
                range_prefixes(lo, hi, width, &mut prefixes);
            }
        }
        self.push_prefixes(out, field, &prefixes, neg);
        self.scratch = prefixes;
    }
}

/// The smallest set of aligned prefixes covering `lo..=hi` of a `width`-bit
/// key, left-aligned in 32 bits.
pub(super) fn range_prefixes(lo: u32, hi: u32, width: u8, out: &mut Vec<(u32, u8)>) {
    let (mut lo, hi) = (u64::from(lo), u64::from(hi));
    while lo <= hi {
        let mut bits = if lo == 0 {
            u32::from(width)
        } else {
            lo.trailing_zeros().min(u32::from(width))
        };
        while lo + (1u64 << bits) - 1 > hi {
            bits -= 1;
        }
        out.push(((lo << (32 - width)) as u32, width - bits as u8));
        lo += 1u64 << bits;
    }
}

/// LOG prefixes, deduplicated across the hooks of a generation.
#[derive(Default)]
pub(super) struct LogTable {
    pub prefixes: Vec<String>,
    index: FastMap<String, u32>,
}

impl LogTable {
    fn intern(&mut self, prefix: &str, at: &dyn Fn() -> String) -> Result<u32> {
        if let Some(&i) = self.index.get(prefix) {
            return Ok(i);
        }
        // iptables' own limit; the map has room for a NUL after it.
        if prefix.len() > 29 || prefix.len() >= RS_LOG_LEN {
            return Err(Error::Invalid(format!(
                "{}: LOG prefix {prefix:?} is longer than 29 bytes",
                at()
            )));
        }
        if self.prefixes.len() as u32 >= RS_LOG_MAX {
            return Err(Error::Invalid(format!(
                "{}: more than {RS_LOG_MAX} distinct LOG prefixes",
                at()
            )));
        }
        let i = self.prefixes.len() as u32;
        self.prefixes.push(prefix.to_owned());
        self.index.insert(prefix.to_owned(), i);
        Ok(i)
    }
}

/// NAT actions (`MAP_RS_NAT`), deduplicated across the hooks of a
/// generation.
#[derive(Default)]
pub(super) struct NatTable {
    pub actions: Vec<RsNat>,
    index: FastMap<NatKey, u32>,
}

/// `RsNat`'s fields, which is not `Hash`.
type NatKey = (u8, u8, [u8; 4], [u8; 4], u16, u16);

impl NatTable {
    fn intern(&mut self, nat: &Nat, at: &dyn Fn() -> String) -> Result<u32> {
        let a = rs_nat(nat);
        let key = (
            a.kind, a.flags, a.addr_min, a.addr_max, a.port_min, a.port_max,
        );
        if let Some(&i) = self.index.get(&key) {
            return Ok(i);
        }
        if self.actions.len() as u32 >= RS_NAT_MAX {
            return Err(Error::Invalid(format!(
                "{}: more than {RS_NAT_MAX} distinct NAT targets (SNAT, MASQUERADE, DNAT, \
                 REDIRECT with their ranges), which the datapath holds",
                at()
            )));
        }
        let i = self.actions.len() as u32;
        self.actions.push(a);
        self.index.insert(key, i);
        Ok(i)
    }
}

/// A NAT target as `MAP_RS_NAT` holds it.
pub(super) fn rs_nat(nat: &Nat) -> RsNat {
    let ports = |p: Option<PortRange>| match p {
        Some(p) => RsNat {
            flags: nat_range::PORTS,
            port_min: p.lo,
            port_max: p.hi,
            ..RsNat::default()
        },
        None => RsNat::default(),
    };
    let range = |kind, r: &NatRange| RsNat {
        kind,
        addr_min: r.addr_min.octets(),
        addr_max: r.addr_max.octets(),
        ..ports(r.ports)
    };
    match nat {
        Nat::Snat(r) => range(nat_kind::SNAT, r),
        Nat::Dnat(r) => range(nat_kind::DNAT, r),
        Nat::Masquerade(p) => RsNat {
            kind: nat_kind::MASQUERADE,
            ..ports(*p)
        },
        Nat::Redirect(p) => RsNat {
            kind: nat_kind::REDIRECT,
            ..ports(*p)
        },
    }
}

/// Where a SKIP goes, before the program is laid out.
pub(super) type Label = u32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum FlatKind {
    Continue,
    Log(u32),
    Skip(Label),
    Drop,
    Reject(RejectWith),
    /// Record NAT action `.0`, go on at the end of the nat table's block.
    Nat(u32, Label),
}

pub(super) struct FlatEntry {
    pub pred: Vec<Atom>,
    pub kind: FlatKind,
    /// Counter slot, or `RS_NO_SLOT`.
    pub slot: u32,
}

/// A hook's program with its labels resolved to entry indexes.
pub(super) struct FlatHook {
    pub entries: Vec<FlatEntry>,
    /// Entry index of each label.
    pub labels: Vec<u32>,
    pub nat_start: u32,
    pub nat_end: u32,
    pub raw_end: u32,
}

/// Flattens every table at `hook` into one program.
pub(super) fn flatten_hook(
    rs: &Ruleset,
    hook: Hook,
    atoms: &mut AtomTable,
    logs: &mut LogTable,
    nats: &mut NatTable,
) -> Result<FlatHook> {
    let mut f = Flattener {
        hook,
        table: None,
        atoms,
        logs,
        nats,
        entries: Vec::new(),
        labels: Vec::new(),
        calls: Vec::new(),
    };
    let (mut nat_start, mut nat_end, mut raw_end) = (0, 0, 0);
    // The kernel's order at this hook (nat runs after filter at INPUT).
    for &table in hook.tables() {
        if table == Table::Nat {
            nat_start = f.entries.len() as u32;
        }
        if let Some(tr) = rs.tables.iter().find(|t| t.table == table)
            && let Some(builtin) = builtin_chain(tr, hook)
        {
            f.table_block(tr, builtin)?;
        }
        if table == Table::Nat {
            nat_end = f.entries.len() as u32;
        }
        if table == Table::Raw {
            raw_end = f.entries.len() as u32;
        }
    }
    Ok(FlatHook {
        entries: f.entries,
        labels: f.labels,
        nat_start,
        nat_end,
        raw_end,
    })
}

struct Flattener<'a> {
    hook: Hook,
    table: Option<&'a TableRules>,
    atoms: &'a mut AtomTable,
    logs: &'a mut LogTable,
    nats: &'a mut NatTable,
    entries: Vec<FlatEntry>,
    labels: Vec<u32>,
    /// Chains being inlined, outermost first, to refuse loops.
    calls: Vec<&'a str>,
}

impl<'a> Flattener<'a> {
    fn label(&mut self) -> Label {
        self.labels.push(u32::MAX);
        self.labels.len() as Label - 1
    }

    fn place(&mut self, l: Label) {
        self.labels[l as usize] = self.entries.len() as u32;
    }

    fn push(&mut self, pred: Vec<Atom>, kind: FlatKind, slot: u32) -> Result<()> {
        if self.entries.len() as u32 >= RS_ENTRIES_MAX {
            return Err(Error::Invalid(format!(
                "hook {}: more than {RS_ENTRIES_MAX} entries once user chains are inlined \
                 (each call site gets its own copy of the chain)",
                self.hook.chain_name()
            )));
        }
        self.entries.push(FlatEntry { pred, kind, slot });
        Ok(())
    }

    /// One table's block: its built-in chain, then the policy entry. ACCEPT
    /// anywhere in the table goes to the block's end, the next table.
    fn table_block(&mut self, tr: &'a TableRules, builtin: &'a Chain) -> Result<()> {
        self.table = Some(tr);
        let (policy, end) = (self.label(), self.label());
        self.calls.push(&builtin.name);
        self.chain(builtin, &[], policy, end)?;
        self.calls.pop();
        self.place(policy);
        let slot = self.slot(builtin.policy_slot, &|| {
            format!("table {}, chain {}: policy", tr.table, builtin.name)
        })?;
        match builtin.policy {
            Some(Policy::Drop) => self.push(Vec::new(), FlatKind::Drop, slot)?,
            Some(Policy::Accept) | None => self.push(Vec::new(), FlatKind::Skip(end), slot)?,
        }
        self.place(end);
        Ok(())
    }

    fn slot(&self, slot: u32, at: &dyn Fn() -> String) -> Result<u32> {
        if slot >= RS_SLOTS_MAX {
            return Err(Error::Invalid(format!(
                "{}: counter slot {slot} is beyond the datapath's {RS_SLOTS_MAX}",
                at()
            )));
        }
        Ok(slot)
    }

    /// Inlines `chain` for packets satisfying `ctx`: RETURN (and, for the
    /// caller to arrange, falling off the end) goes to `ret`, ACCEPT to
    /// `accept`.
    fn chain(&mut self, chain: &'a Chain, ctx: &[Atom], ret: Label, accept: Label) -> Result<()> {
        let tr = self.table.expect("inside a table");
        for (n, rule) in chain.rules.iter().enumerate() {
            let at = || format!("table {}, chain {}, rule {}", tr.table, chain.name, n + 1);
            let slot = self.slot(rule.slot, &at)?;
            for term in self.terms(&rule.matches) {
                let pred = if ctx.is_empty() {
                    term
                } else {
                    let mut pred = Vec::with_capacity(ctx.len() + term.len());
                    pred.extend_from_slice(ctx);
                    pred.extend(term);
                    pred
                };
                let kind = match &rule.target {
                    Target::None => FlatKind::Continue,
                    Target::Log { prefix } => FlatKind::Log(self.logs.intern(prefix, &at)?),
                    Target::Accept => FlatKind::Skip(accept),
                    Target::Drop => FlatKind::Drop,
                    Target::Reject(with) => FlatKind::Reject(*with),
                    Target::Return => FlatKind::Skip(ret),
                    // Like ACCEPT, it ends the (nat) table's walk.
                    Target::Nat(nat) => FlatKind::Nat(self.nat(tr, nat, &at)?, accept),
                    Target::Jump(name) | Target::Goto(name) => {
                        let callee = self.callee(tr, name, &at)?;
                        self.push(pred.clone(), FlatKind::Continue, slot)?;
                        self.calls.push(&callee.name);
                        if matches!(rule.target, Target::Jump(_)) {
                            let back = self.label();
                            self.chain(callee, &pred, back, accept)?;
                            self.place(back);
                        } else {
                            // A goto leaves no return point: the goto'd
                            // chain returns where its caller would, and a
                            // packet that ran off its end must not fall
                            // into the caller's next rules.
                            self.chain(callee, &pred, ret, accept)?;
                            self.push(pred, FlatKind::Skip(ret), netctl_common::RS_NO_SLOT)?;
                        }
                        self.calls.pop();
                        continue;
                    }
                };
                self.push(pred, kind, slot)?;
            }
        }
        Ok(())
    }

    /// The NAT action's index, for a target where the datapath can apply
    /// it: which translation it is follows from the hook.
    fn nat(&mut self, tr: &TableRules, nat: &Nat, at: &dyn Fn() -> String) -> Result<u32> {
        if tr.table != Table::Nat {
            return Err(Error::Invalid(format!(
                "{}: {} outside the nat table",
                at(),
                nat.name()
            )));
        }
        if !nat.hooks().contains(&self.hook) {
            return Err(Error::Invalid(format!(
                "{}: {} reached from {}, where it does not work",
                at(),
                nat.name(),
                self.hook.chain_name()
            )));
        }
        self.nats.intern(nat, at)
    }

    fn callee(&self, tr: &'a TableRules, name: &str, at: &dyn Fn() -> String) -> Result<&'a Chain> {
        let callee = tr.chains.iter().find(|c| c.name == name).ok_or_else(|| {
            Error::Invalid(format!(
                "{}: jump to chain {name}, which does not exist",
                at()
            ))
        })?;
        if callee.policy.is_some() {
            return Err(Error::Invalid(format!(
                "{}: jump to built-in chain {name}",
                at()
            )));
        }
        if let Some(i) = self.calls.iter().position(|c| *c == name) {
            let mut cycle = self.calls[i..].join(" -> ");
            cycle.push_str(" -> ");
            cycle.push_str(name);
            return Err(Error::Invalid(format!("{}: jump loop {cycle}", at())));
        }
        // Deeper nesting than the walk bound cannot be walked anyway: every
        // level is an entry a packet that takes all the calls goes through.
        if self.calls.len() > super::WALK_MAX as usize {
            return Err(Error::Invalid(format!(
                "{}: user chains nested more than {} deep",
                at(),
                super::WALK_MAX
            )));
        }
        Ok(callee)
    }

    /// A rule's matches as disjoint conjunctions: one, except for
    /// `--ports` (source or destination port), which is a disjunction over
    /// two fields and becomes "sport in L" and "sport not in L, dport in L",
    /// so a packet matches at most one copy and is counted once.
    fn terms(&mut self, m: &Matches) -> impl Iterator<Item = Vec<Atom>> + use<> {
        let a = &mut *self.atoms;
        let mut base = Vec::with_capacity(4);
        for (fld, iface) in [(field::IN, &m.in_iface), (field::OUT, &m.out_iface)] {
            if let Some(Neg { negated, value }) = iface {
                let key = AtomKey::Iface {
                    name: value.name.clone(),
                    wildcard: value.wildcard,
                };
                base.push(a.intern(fld, key, *negated));
            }
        }
        for (fld, net) in [(field::SRC, &m.src), (field::DST, &m.dst)] {
            if let Some(n) = net {
                let p = (u32::from(n.value.network()), n.value.prefix_len());
                a.push_prefixes(&mut base, fld, &[p], n.negated);
            }
        }
        if let Some(p) = &m.proto
            && p.value != 0
        {
            a.push_prefixes(
                &mut base,
                field::PROTO,
                &[(u32::from(p.value) << 24, 8)],
                p.negated,
            );
        }
        for (fld, port) in [(field::SPORT, &m.sport), (field::DPORT, &m.dport)] {
            if let Some(p) = port {
                a.push_ranges(&mut base, fld, &[wide(p.value)], p.negated);
            }
        }
        if let Some(t) = &m.icmp {
            let v = t.value;
            // Type 255 is "any" and, as in the kernel, ignores its codes.
            let range = if v.typ == 0xff {
                (0, 0xffff)
            } else {
                let typ = u32::from(v.typ) << 8;
                (typ | u32::from(v.code_lo), typ | u32::from(v.code_hi))
            };
            a.push_ranges(&mut base, field::ICMP, &[range], t.negated);
        }
        if let Some(c) = &m.ctstate {
            // The datapath's key is the packet's one state bit, so a mask is
            // the set of its bits.
            let bits: Vec<(u32, u8)> = (0..8)
                .filter(|b| c.value & (1 << b) != 0)
                .map(|b| ((1u32 << b) << 24, 8))
                .collect();
            a.push_prefixes(&mut base, field::CTSTATE, &bits, c.negated);
        }
        let Some(mp) = &m.multiport else {
            return [Some(base), None].into_iter().flatten();
        };
        let ranges: Vec<(u32, u32)> = mp.value.ports.iter().map(|r| wide(*r)).collect();
        match (mp.value.kind, mp.negated) {
            (MultiportKind::Source, neg) => a.push_ranges(&mut base, field::SPORT, &ranges, neg),
            (MultiportKind::Destination, neg) => {
                a.push_ranges(&mut base, field::DPORT, &ranges, neg)
            }
            (MultiportKind::Either, true) => {
                a.push_ranges(&mut base, field::SPORT, &ranges, true);
                a.push_ranges(&mut base, field::DPORT, &ranges, true);
            }
            (MultiportKind::Either, false) => {
                let mut by_sport = base.clone();
                a.push_ranges(&mut by_sport, field::SPORT, &ranges, false);
                a.push_ranges(&mut base, field::SPORT, &ranges, true);
                a.push_ranges(&mut base, field::DPORT, &ranges, false);
                return [Some(by_sport), Some(base)].into_iter().flatten();
            }
        }
        [Some(base), None].into_iter().flatten()
    }
}

fn wide(r: PortRange) -> (u32, u32) {
    (u32::from(r.lo), u32::from(r.hi))
}

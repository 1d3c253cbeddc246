//! The typed model of a netfilter ruleset: what `iptables-save` text, the
//! topology file and the edit commands turn into, and what the compiler
//! turns into maps. Plain data: no kernel, no I/O.

use std::fmt;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

/// The four tables, in the order netfilter evaluates them at a hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Table {
    Raw,
    Mangle,
    Nat,
    Filter,
}

impl Table {
    pub const ALL: [Table; 4] = [Table::Raw, Table::Mangle, Table::Nat, Table::Filter];

    pub fn name(self) -> &'static str {
        match self {
            Table::Raw => "raw",
            Table::Mangle => "mangle",
            Table::Nat => "nat",
            Table::Filter => "filter",
        }
    }

    /// The built-in chains iptables gives this table, in iptables' order.
    pub fn hooks(self) -> &'static [Hook] {
        use Hook::*;
        match self {
            Table::Raw => &[Prerouting, Output],
            Table::Mangle => &[Prerouting, Input, Forward, Output, Postrouting],
            Table::Nat => &[Prerouting, Input, Output, Postrouting],
            Table::Filter => &[Input, Forward, Output],
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The five netfilter hooks; a built-in chain is named after its hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl Hook {
    pub const ALL: [Hook; 5] = [
        Hook::Prerouting,
        Hook::Input,
        Hook::Forward,
        Hook::Output,
        Hook::Postrouting,
    ];

    /// The built-in chain's name.
    pub fn chain_name(self) -> &'static str {
        match self {
            Hook::Prerouting => "PREROUTING",
            Hook::Input => "INPUT",
            Hook::Forward => "FORWARD",
            Hook::Output => "OUTPUT",
            Hook::Postrouting => "POSTROUTING",
        }
    }

    pub fn from_chain_name(name: &str) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| h.chain_name() == name)
    }

    /// The tables with a built-in chain at this hook, in the order the
    /// kernel runs them: by priority (raw -300, mangle -150, DNAT -100,
    /// filter 0, SNAT 100), so nat comes after filter at INPUT and before
    /// it at OUTPUT.
    pub fn tables(self) -> &'static [Table] {
        use Table::*;
        match self {
            Hook::Prerouting => &[Raw, Mangle, Nat],
            Hook::Input => &[Mangle, Filter, Nat],
            Hook::Forward => &[Mangle, Filter],
            Hook::Output => &[Raw, Mangle, Nat, Filter],
            Hook::Postrouting => &[Mangle, Nat],
        }
    }

    /// Index in `netctl_common::hook`.
    pub fn index(self) -> u32 {
        self as u32
    }
}

/// The policy of a built-in chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Policy {
    Accept,
    Drop,
}

/// A match, possibly negated with `!`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Neg<T> {
    pub negated: bool,
    pub value: T,
}

impl<T> Neg<T> {
    pub fn new(value: T) -> Self {
        Neg {
            negated: false,
            value,
        }
    }
    pub fn not(value: T) -> Self {
        Neg {
            negated: true,
            value,
        }
    }
}

/// `-i`/`-o NAME`; `NAME+` matches every interface whose name starts with
/// `NAME` (`+` alone matches all).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Iface {
    /// The name without the trailing `+`.
    pub name: String,
    pub wildcard: bool,
}

impl Iface {
    pub fn matches(&self, ifname: &str) -> bool {
        if self.wildcard {
            ifname.starts_with(&self.name)
        } else {
            ifname == self.name
        }
    }
}

/// An inclusive port range; a single port has `lo == hi`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    pub fn contains(self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }
}

/// Which ports `-m multiport` looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MultiportKind {
    /// `--sports`
    Source,
    /// `--dports`
    Destination,
    /// `--ports`: source or destination.
    Either,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Multiport {
    pub kind: MultiportKind,
    /// At most 15 ports, a range counting as two (iptables' limit).
    pub ports: Vec<PortRange>,
}

/// `-m icmp --icmp-type TYPE[/CODE]`: `any` is type 255 with codes 0..=255,
/// as in the kernel's `ipt_icmp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IcmpType {
    pub typ: u8,
    pub code_lo: u8,
    pub code_hi: u8,
}

impl IcmpType {
    pub fn matches(self, typ: u8, code: u8) -> bool {
        // The kernel's icmp_type_code_match: type 0xFF matches every type.
        (self.typ == 0xff || self.typ == typ) && self.code_lo <= code && code <= self.code_hi
    }
}

/// Bits of `-m conntrack --ctstate`.
pub mod ctstate {
    pub const INVALID: u8 = 1 << 0;
    pub const NEW: u8 = 1 << 1;
    pub const ESTABLISHED: u8 = 1 << 2;
    pub const RELATED: u8 = 1 << 3;
    pub const UNTRACKED: u8 = 1 << 4;
}

/// IP protocol numbers netctl names.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

/// Everything a rule matches on; `None` means "any". All present matches
/// must hold (iptables' conjunction).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Matches {
    // Records leave out absent matches: a 10,000-rule ruleset is written
    // at every change. (Versions that wrote them all read these too.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_iface: Option<Neg<Iface>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub out_iface: Option<Neg<Iface>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<Neg<Ipv4Net>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst: Option<Neg<Ipv4Net>>,
    /// `-p`: a protocol number (`all` is `None`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proto: Option<Neg<u8>>,
    /// `--sport`/`--dport` of the implicit tcp/udp match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sport: Option<Neg<PortRange>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dport: Option<Neg<PortRange>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multiport: Option<Neg<Multiport>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icmp: Option<Neg<IcmpType>>,
    /// `ctstate` bits (`ctstate::*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctstate: Option<Neg<u8>>,
}

/// `--reject-with`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RejectWith {
    #[default]
    IcmpPortUnreachable,
    IcmpNetUnreachable,
    IcmpHostUnreachable,
    IcmpAdminProhibited,
    TcpReset,
}

impl RejectWith {
    pub fn name(self) -> &'static str {
        match self {
            RejectWith::IcmpPortUnreachable => "icmp-port-unreachable",
            RejectWith::IcmpNetUnreachable => "icmp-net-unreachable",
            RejectWith::IcmpHostUnreachable => "icmp-host-unreachable",
            RejectWith::IcmpAdminProhibited => "icmp-admin-prohibited",
            RejectWith::TcpReset => "tcp-reset",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// A rule without `-j`: it only counts.
    None,
    Accept,
    Drop,
    Reject(RejectWith),
    Return,
    Log {
        prefix: String,
    },
    Jump(String),
    Goto(String),
    /// SNAT, MASQUERADE, DNAT, REDIRECT: nat table only.
    Nat(Nat),
}

/// `ADDR[-ADDR][:PORT[-PORT]]` of `--to-source`/`--to-destination`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatRange {
    /// The addresses, inclusive (`addr_min == addr_max` for one).
    pub addr_min: Ipv4Addr,
    pub addr_max: Ipv4Addr,
    /// `:PORT[-PORT]` (tcp and udp only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<PortRange>,
}

/// The nat table's targets. The kernel's NAT targets end the nat table's
/// traversal (like ACCEPT) and bind the connection to the translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Nat {
    /// `SNAT --to-source RANGE` (POSTROUTING, INPUT).
    Snat(NatRange),
    /// `MASQUERADE [--to-ports PORT[-PORT]]` (POSTROUTING): the source
    /// becomes the outgoing interface's address.
    Masquerade(Option<PortRange>),
    /// `DNAT --to-destination RANGE` (PREROUTING, OUTPUT).
    Dnat(NatRange),
    /// `REDIRECT [--to-ports PORT[-PORT]]` (PREROUTING, OUTPUT): the
    /// destination becomes the incoming interface's address.
    Redirect(Option<PortRange>),
}

impl Nat {
    /// The target's name, as `-j` takes it.
    pub fn name(&self) -> &'static str {
        match self {
            Nat::Snat(_) => "SNAT",
            Nat::Masquerade(_) => "MASQUERADE",
            Nat::Dnat(_) => "DNAT",
            Nat::Redirect(_) => "REDIRECT",
        }
    }

    /// The hooks the kernel lets the target be used from (`xt_target.hooks`).
    pub fn hooks(&self) -> &'static [Hook] {
        match self {
            Nat::Snat(_) => &[Hook::Input, Hook::Postrouting],
            Nat::Masquerade(_) => &[Hook::Postrouting],
            Nat::Dnat(_) | Nat::Redirect(_) => &[Hook::Prerouting, Hook::Output],
        }
    }

    /// The port range, if one was given.
    pub fn ports(&self) -> Option<PortRange> {
        match self {
            Nat::Snat(r) | Nat::Dnat(r) => r.ports,
            Nat::Masquerade(p) | Nat::Redirect(p) => *p,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    pub matches: Matches,
    pub target: Target,
    /// The rule's counter slot in the datapath, assigned by the store; a
    /// rule keeps its slot across edits so its counters survive them.
    #[serde(default)]
    pub slot: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    pub name: String,
    /// `Some` for built-in chains, `None` for user-defined ones.
    pub policy: Option<Policy>,
    /// Counter slot of the policy (built-in chains).
    #[serde(default)]
    pub policy_slot: u32,
    pub rules: Vec<Rule>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRules {
    pub table: Table,
    /// Built-in chains first, in `Table::hooks` order, then user chains.
    pub chains: Vec<Chain>,
}

/// A whole ruleset: the four tables, each with its built-in chains.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ruleset {
    pub tables: Vec<TableRules>,
}

/// A packet as the classifier sees it (and as the reference evaluator and
/// the fidelity harness describe one).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PacketView {
    pub in_iface: Option<String>,
    pub out_iface: Option<String>,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    /// tcp/udp ports (0 for other protocols).
    pub sport: u16,
    pub dport: u16,
    /// ICMP type and code (0 for other protocols).
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// One `ctstate::*` bit.
    pub ctstate: u8,
    /// Length in bytes of the IP packet (what iptables' byte counters add).
    pub len: u32,
}

// Constructors and lookups. The store, the parser and the edit commands all
// need "the table with its built-in chains" and "the chain called X"; keeping
// those here means every caller agrees on what a fresh table looks like.

impl Chain {
    /// A built-in chain with an ACCEPT policy, as iptables creates it.
    pub fn builtin(hook: Hook) -> Chain {
        Chain {
            name: hook.chain_name().to_string(),
            policy: Some(Policy::Accept),
            policy_slot: 0,
            rules: Vec::new(),
        }
    }

    /// An empty user-defined chain.
    pub fn user(name: impl Into<String>) -> Chain {
        Chain {
            name: name.into(),
            policy: None,
            policy_slot: 0,
            rules: Vec::new(),
        }
    }

    /// Built-in chains are the ones with a policy (a user chain may be called
    /// `PREROUTING` in the filter table, which has no such hook).
    pub fn is_builtin(&self) -> bool {
        self.policy.is_some()
    }

    /// The hook of a built-in chain.
    pub fn hook(&self) -> Option<Hook> {
        if self.is_builtin() {
            Hook::from_chain_name(&self.name)
        } else {
            None
        }
    }
}

impl Rule {
    /// A rule with no counter slot yet.
    pub fn new(matches: Matches, target: Target) -> Rule {
        Rule {
            matches,
            target,
            slot: 0,
        }
    }

    /// Same matches and target: what `iptables -D CHAIN rule-spec` compares.
    pub fn same_spec(&self, other: &Rule) -> bool {
        self.matches == other.matches && self.target == other.target
    }
}

impl TableRules {
    /// The table as iptables creates it: its built-in chains, ACCEPT
    /// policies, no rules.
    pub fn new(table: Table) -> TableRules {
        TableRules {
            table,
            chains: table.hooks().iter().map(|&h| Chain::builtin(h)).collect(),
        }
    }

    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chains.iter().find(|c| c.name == name)
    }

    pub fn chain_mut(&mut self, name: &str) -> Option<&mut Chain> {
        self.chains.iter_mut().find(|c| c.name == name)
    }

    /// Nothing but built-in chains with ACCEPT policies and no rules: what
    /// iptables-save never shows for a table nobody touched.
    pub fn is_default(&self) -> bool {
        self.chains
            .iter()
            .all(|c| c.policy == Some(Policy::Accept) && c.rules.is_empty())
    }

    /// How many rules of this table jump or go to `chain` (what `iptables -L`
    /// calls references).
    pub fn references(&self, chain: &str) -> usize {
        self.chains
            .iter()
            .flat_map(|c| &c.rules)
            .filter(|r| matches!(&r.target, Target::Jump(t) | Target::Goto(t) if t == chain))
            .count()
    }
}

impl Default for Ruleset {
    fn default() -> Self {
        Ruleset::new()
    }
}

impl Ruleset {
    /// The four tables with their built-in chains, ACCEPT policies, no rules.
    pub fn new() -> Ruleset {
        Ruleset {
            tables: Table::ALL.into_iter().map(TableRules::new).collect(),
        }
    }

    pub fn table(&self, table: Table) -> Option<&TableRules> {
        self.tables.iter().find(|t| t.table == table)
    }

    /// The table, added (fresh, in `Table::ALL` order) if the ruleset lacks it.
    pub fn table_mut(&mut self, table: Table) -> &mut TableRules {
        let pos = match self.tables.iter().position(|t| t.table == table) {
            Some(pos) => pos,
            None => {
                let at = self
                    .tables
                    .iter()
                    .position(|t| t.table > table)
                    .unwrap_or(self.tables.len());
                self.tables.insert(at, TableRules::new(table));
                at
            }
        };
        &mut self.tables[pos]
    }

    pub fn chain(&self, table: Table, name: &str) -> Option<&Chain> {
        self.table(table)?.chain(name)
    }

    pub fn chain_mut(&mut self, table: Table, name: &str) -> Option<&mut Chain> {
        self.tables
            .iter_mut()
            .find(|t| t.table == table)?
            .chain_mut(name)
    }

    /// Gives every rule and built-in policy whose slot is 0 a fresh counter
    /// slot, and returns the slots it gave (their counters should start at
    /// zero). Slots are the smallest numbers from 1 not used elsewhere in the
    /// ruleset, so numbers freed by deleted rules are reused and slots stay
    /// below 65536 unless the ruleset has that many counters; they never
    /// exceed `RS_SLOTS_MAX / 2`, the datapath's share of one generation. A
    /// slot above that, or one used twice, is treated as unassigned (the
    /// second user gets a new one), so the result is always a valid
    /// numbering. User chains have no policy and keep `policy_slot` 0.
    pub fn assign_slots(&mut self) -> Result<Vec<u32>, super::parse::RuleError> {
        self.assign_slots_avoiding_slots(&[])
    }

    /// `assign_slots`, but numbers `before` uses are given out only when no
    /// other is left: a rule that replaces another (or a ruleset restored
    /// over another) then starts from counters of its own rather than
    /// inheriting the slot its predecessor just freed.
    pub fn assign_slots_avoiding(
        &mut self,
        before: &Ruleset,
    ) -> Result<Vec<u32>, super::parse::RuleError> {
        self.assign_slots_avoiding_slots(&before.slots())
    }

    /// `assign_slots_avoiding`, given the slots of `before` (`slots`).
    pub fn assign_slots_avoiding_slots(
        &mut self,
        before: &[u32],
    ) -> Result<Vec<u32>, super::parse::RuleError> {
        const MAX: u32 = netctl_common::RS_SLOTS_MAX / 2;
        let mut used = vec![false; MAX as usize + 1];
        let mut wanted = 0usize;
        let mut keep = |slot: &mut u32| {
            let s = *slot;
            if s == 0 || s > MAX || used[s as usize] {
                *slot = 0;
                wanted += 1;
            } else {
                used[s as usize] = true;
            }
        };
        for t in &mut self.tables {
            for c in &mut t.chains {
                if c.is_builtin() {
                    keep(&mut c.policy_slot);
                } else {
                    c.policy_slot = 0;
                }
                for r in &mut c.rules {
                    keep(&mut r.slot);
                }
            }
        }
        let free = used.iter().skip(1).filter(|u| !**u).count();
        if wanted > free {
            return Err(super::parse::RuleError::Iptables(format!(
                "the ruleset needs {} counters, more than the datapath's {MAX}",
                MAX as usize - free + wanted
            )));
        }
        let mut recent = vec![false; MAX as usize + 1];
        for &s in before {
            if s <= MAX && !used[s as usize] {
                recent[s as usize] = true;
            }
        }
        let mut order = (1..=MAX)
            .filter(|&s| !used[s as usize] && !recent[s as usize])
            .chain((1..=MAX).filter(|&s| recent[s as usize]));
        let mut given = Vec::with_capacity(wanted);
        let mut take = |slot: &mut u32| {
            if *slot == 0 {
                // `wanted <= free` was checked, so the iterator has enough.
                if let Some(s) = order.next() {
                    *slot = s;
                    given.push(s);
                }
            }
        };
        for t in &mut self.tables {
            for c in &mut t.chains {
                if c.is_builtin() {
                    take(&mut c.policy_slot);
                }
                for r in &mut c.rules {
                    take(&mut r.slot);
                }
            }
        }
        Ok(given)
    }

    /// Every slot in use, for callers that zero or read counters in bulk.
    pub fn slots(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for t in &self.tables {
            for c in &t.chains {
                if c.is_builtin() && c.policy_slot != 0 {
                    out.push(c.policy_slot);
                }
                out.extend(c.rules.iter().map(|r| r.slot).filter(|&s| s != 0));
            }
        }
        out
    }
}

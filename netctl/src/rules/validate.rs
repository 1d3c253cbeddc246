//! The checks iptables (1.8.9, nf_tables backend) makes before it loads a
//! ruleset, applied to the model, so that netctl refuses what iptables
//! refuses and for the same reason. A ruleset can come from text, from an
//! edit or from code, and the datapath compiler relies on what is checked
//! here (no loops, jumps to chains that exist, ports only with tcp/udp), so
//! every path into the store goes through `validate`.
//!
//! Where iptables-nft differs from what one might expect, the real behaviour
//! wins (each was tried in a throwaway network namespace):
//! * `-i`/`-o` are refused by chain name, as iptables checks them: `-o` in
//!   chains called PREROUTING or INPUT, `-i` in POSTROUTING or OUTPUT (even
//!   `-o +`, and even a user chain of that name in a table without the
//!   hook); a user chain called from INPUT may use `-o` (it never matches).
//! * REJECT is refused outside the filter table (the kernel's REJECT is
//!   filter-only), wherever the chain is called from.
//! * The NAT targets are refused outside the nat table, and in chains
//!   reached from a hook the target does not work at (SNAT: POSTROUTING and
//!   INPUT; MASQUERADE: POSTROUTING; DNAT, REDIRECT: PREROUTING and OUTPUT),
//!   with the kernel's reason (the words of `xt_check_target`, which
//!   iptables-legacy leaves in dmesg). A user chain no built-in chain
//!   reaches may hold any of them, as in the kernel.
//! * NAT ports (`:PORT`, `--to-ports`) need `-p tcp`, `-p udp`, `-p sctp`,
//!   `-p dccp` or `-p icmp` (a protocol number, negated or not).
//! * A loop of jumps (a chain jumping to itself included), or jumps nested
//!   more than 15 deep, is refused only when a built-in chain reaches it
//!   ("Too many links").
//! * A user chain may be named after a hook the table lacks (`PREROUTING` in
//!   filter).
//!
//! Two things iptables-nft accepts are refused: `! -p tcp` with `--dport`
//! (iptables-legacy refuses it; nft reads "ports" of any protocol), and a
//! DROP policy in the nat table (the command refuses it, iptables-restore
//! does not). NAT ports are taken with a plain `-p tcp` or `-p udp` only
//! (not sctp, dccp, icmp identifiers or `! -p tcp`), and an address range
//! whose first address is above its last is refused: iptables takes them,
//! the datapath has no meaning for them. So are model states iptables cannot express: host bits in an
//! address, `! --dport 0:65535` and ICMP code ranges, which iptables-save
//! would write differently from what they mean.

use std::collections::HashMap;

use super::model::{
    Chain, Hook, Iface, Matches, Nat, Neg, Policy, RejectWith, Rule, Ruleset, Table, TableRules,
    Target, ctstate, proto,
};
use super::parse::{RuleError, check_log_prefix, is_target_name, nat_ports_proto};

type Result<T, E = RuleError> = std::result::Result<T, E>;

/// Jumps allowed below a built-in chain: the kernel's `NFT_JUMP_STACK_SIZE`
/// (16) levels, the built-in chain being the first.
pub const MAX_JUMP_DEPTH: usize = 15;

/// Checks a whole ruleset; the first problem found, with where it is.
pub fn validate(rs: &Ruleset) -> Result<()> {
    let mut seen = Vec::new();
    for t in &rs.tables {
        if seen.contains(&t.table) {
            return Err(RuleError::msg(format!(
                "table {} appears twice in the ruleset",
                t.table
            )));
        }
        seen.push(t.table);
        validate_table(t)?;
    }
    Ok(())
}

fn chain_err(t: Table, chain: &str, e: RuleError) -> RuleError {
    RuleError::Chain {
        table: t,
        chain: chain.to_string(),
        error: Box::new(e),
    }
}

fn rule_err(t: Table, chain: &str, index: usize, e: RuleError) -> RuleError {
    RuleError::Rule {
        table: t,
        chain: chain.to_string(),
        rule: index + 1,
        error: Box::new(e),
    }
}

/// Checks one table: its chains, its rules and the jumps between them.
pub fn validate_table(tr: &TableRules) -> Result<()> {
    let t = tr.table;
    for &hook in t.hooks() {
        let n = tr
            .chains
            .iter()
            .filter(|c| c.is_builtin() && c.name == hook.chain_name())
            .count();
        if n != 1 {
            return Err(chain_err(
                t,
                hook.chain_name(),
                RuleError::msg(if n == 0 {
                    format!("table {t} lacks its built-in chain {}", hook.chain_name())
                } else {
                    format!("built-in chain {} appears twice", hook.chain_name())
                }),
            ));
        }
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (ci, c) in tr.chains.iter().enumerate() {
        if let Some(policy) = c.policy {
            if !t.hooks().iter().any(|h| h.chain_name() == c.name) {
                return Err(chain_err(
                    t,
                    &c.name,
                    RuleError::msg(format!(
                        "Bad built-in chain name. (table {t} has no built-in chain {}; a user-defined chain has no policy)",
                        c.name
                    )),
                ));
            }
            if t == Table::Nat && policy == Policy::Drop {
                return Err(chain_err(t, &c.name, nat_drop()));
            }
        } else {
            check_chain_name(&c.name).map_err(|e| chain_err(t, &c.name, e))?;
        }
        if names.insert(&c.name, ci).is_some() {
            return Err(chain_err(
                t,
                &c.name,
                RuleError::msg("Chain already exists."),
            ));
        }
    }
    for c in &tr.chains {
        for (i, r) in c.rules.iter().enumerate() {
            check_rule(t, c, r).map_err(|e| rule_err(t, &c.name, i, e))?;
            if let Target::Jump(to) | Target::Goto(to) = &r.target {
                let dest = names.get(to.as_str()).map(|&ci| &tr.chains[ci]);
                let e = match dest {
                    None => Some(RuleError::msg(format!("Chain '{to}' does not exist"))),
                    Some(d) if d.is_builtin() => Some(RuleError::msg(format!(
                        "RULE_APPEND failed (Operation not supported): a rule cannot jump to built-in chain {to}"
                    ))),
                    Some(_) => None,
                };
                if let Some(e) = e {
                    return Err(rule_err(t, &c.name, i, e));
                }
            }
        }
    }
    check_jump_depth(tr, &names)?;
    check_nat_hooks(tr)
}

/// A set of hooks: bit `Hook::index()`.
pub type HookMask = u8;

fn hook_bit(h: Hook) -> HookMask {
    1 << h.index()
}

/// The hooks each chain of a table is reached from (by position in
/// `tr.chains`): a built-in chain its own, a user chain those of every chain
/// that jumps or goes to it (`mark_source_chains`' `comefrom`). Chains no
/// built-in chain reaches have none.
pub fn chain_hooks(tr: &TableRules) -> Vec<HookMask> {
    let index: HashMap<&str, usize> = tr
        .chains
        .iter()
        .enumerate()
        .map(|(i, c)| (c.name.as_str(), i))
        .collect();
    let mut masks: Vec<HookMask> = tr
        .chains
        .iter()
        .map(|c| c.hook().map_or(0, hook_bit))
        .collect();
    let mut work: Vec<usize> = (0..tr.chains.len()).filter(|&i| masks[i] != 0).collect();
    while let Some(i) = work.pop() {
        for r in &tr.chains[i].rules {
            if let Target::Jump(to) | Target::Goto(to) = &r.target
                && let Some(&j) = index.get(to.as_str())
                && masks[j] | masks[i] != masks[j]
            {
                masks[j] |= masks[i];
                work.push(j);
            }
        }
    }
    masks
}

/// The kernel's `textify_hooks`: hook names in hook order, `/` between.
fn hook_names(mask: HookMask) -> String {
    Hook::ALL
        .iter()
        .filter(|&&h| mask & hook_bit(h) != 0)
        .map(|h| h.chain_name())
        .collect::<Vec<_>>()
        .join("/")
}

/// The hooks `nat` may be used from.
pub fn nat_hooks(nat: &Nat) -> HookMask {
    nat.hooks().iter().fold(0, |m, &h| m | hook_bit(h))
}

/// NAT targets only where the kernel lets them work (`xt_check_target`'s
/// hook check), judged by the hooks their chain is reached from.
fn check_nat_hooks(tr: &TableRules) -> Result<()> {
    let masks = chain_hooks(tr);
    for (c, &used) in tr.chains.iter().zip(&masks) {
        for (i, r) in c.rules.iter().enumerate() {
            let Target::Nat(nat) = &r.target else {
                continue;
            };
            let allowed = nat_hooks(nat);
            if used & !allowed != 0 {
                return Err(rule_err(
                    tr.table,
                    &c.name,
                    i,
                    RuleError::msg(format!(
                        "RULE_APPEND failed (Invalid argument): {} target: used from hooks {}, \
                         but only usable from {}",
                        nat.name(),
                        hook_names(used),
                        hook_names(allowed)
                    )),
                ));
            }
        }
    }
    Ok(())
}

/// Depth-first walk from each built-in chain: a chain met again on the
/// current path is a loop, a path longer than `MAX_JUMP_DEPTH` jumps is too
/// deep. Heights are memoised (capped), so diamonds cost nothing and the
/// recursion never goes deeper than the limit.
fn check_jump_depth(tr: &TableRules, names: &HashMap<&str, usize>) -> Result<()> {
    let edges: Vec<Vec<(usize, usize)>> = tr
        .chains
        .iter()
        .map(|c| {
            c.rules
                .iter()
                .enumerate()
                .filter_map(|(i, r)| match &r.target {
                    Target::Jump(to) | Target::Goto(to) => names.get(to.as_str()).map(|&d| (i, d)),
                    _ => None,
                })
                .collect()
        })
        .collect();
    let mut memo: Vec<Option<usize>> = vec![None; tr.chains.len()];
    for (bi, b) in tr.chains.iter().enumerate() {
        if !b.is_builtin() {
            continue;
        }
        let mut path = vec![bi];
        if let Err(kind) = height(bi, &edges, &mut memo, &mut path) {
            let names: Vec<&str> = path.iter().map(|&c| tr.chains[c].name.as_str()).collect();
            let first_rule = edges[bi]
                .iter()
                .find(|(_, d)| Some(d) == path.get(1))
                .map(|(i, _)| *i)
                .unwrap_or(0);
            let msg = match kind {
                Depth::Loop => format!(
                    "RULE_APPEND failed (Too many links): jumps loop: {}",
                    names.join(" -> ")
                ),
                Depth::TooDeep => format!(
                    "RULE_APPEND failed (Too many links): jumps nested more than {MAX_JUMP_DEPTH} deep: {}",
                    names.join(" -> ")
                ),
            };
            return Err(rule_err(tr.table, &b.name, first_rule, RuleError::msg(msg)));
        }
    }
    Ok(())
}

enum Depth {
    Loop,
    TooDeep,
}

/// The most jumps below chain `c`; on error `path` holds the offending path.
fn height(
    c: usize,
    edges: &[Vec<(usize, usize)>],
    memo: &mut [Option<usize>],
    path: &mut Vec<usize>,
) -> Result<usize, Depth> {
    if let Some(h) = memo[c] {
        if path.len() - 1 + h > MAX_JUMP_DEPTH {
            return Err(Depth::TooDeep);
        }
        return Ok(h);
    }
    let mut h = 0;
    for &(_, d) in &edges[c] {
        if path.contains(&d) {
            path.push(d);
            return Err(Depth::Loop);
        }
        path.push(d);
        if path.len() - 1 > MAX_JUMP_DEPTH {
            return Err(Depth::TooDeep);
        }
        h = h.max(1 + height(d, edges, memo, path)?);
        path.pop();
    }
    memo[c] = Some(h);
    Ok(h)
}

fn nat_drop() -> RuleError {
    RuleError::msg(
        "The \"nat\" table is not intended for filtering, the use of DROP is therefore inhibited.",
    )
}

/// The names `iptables -N` accepts.
pub fn check_chain_name(name: &str) -> Result<()> {
    if name.len() > 28 {
        return Err(RuleError::msg(format!(
            "chain name `{name}' too long (must be under 29 chars)"
        )));
    }
    if let Some(c) = name.chars().next().filter(|c| *c == '-' || *c == '!') {
        return Err(RuleError::msg(format!(
            "chain name not allowed to start with `{c}'"
        )));
    }
    if is_target_name(name) {
        return Err(RuleError::msg("chain name may not clash with target name"));
    }
    if name.chars().any(char::is_whitespace) {
        return Err(RuleError::msg(format!("Invalid chain name `{name}'")));
    }
    if name.contains('"') {
        // iptables-restore would read the quote as the start of a string.
        return Err(RuleError::unsupported(format!(
            "a double quote in chain name `{name}'"
        )));
    }
    Ok(())
}

/// The checks that concern one rule in its chain and table.
pub fn check_rule(table: Table, chain: &Chain, rule: &Rule) -> Result<()> {
    let m = &rule.matches;
    if let Some(i) = &m.in_iface {
        check_iface(&i.value)?;
    }
    if let Some(o) = &m.out_iface {
        check_iface(&o.value)?;
    }
    check_directions(&chain.name, m.in_iface.is_some(), m.out_iface.is_some())?;
    for (flag, net) in [("-s", &m.src), ("-d", &m.dst)] {
        let Some(n) = net else { continue };
        if n.value.trunc() != n.value {
            return Err(RuleError::msg(format!(
                "{flag} {} has host bits set (iptables stores it as {})",
                n.value,
                n.value.trunc()
            )));
        }
        if n.negated && n.value.prefix_len() == 0 {
            return Err(RuleError::msg(format!(
                "! {flag} {} never matches (iptables-nft: RULE_APPEND failed (Invalid argument))",
                n.value
            )));
        }
    }
    if m.proto.as_ref().is_some_and(|p| p.negated && p.value == 0) {
        return Err(RuleError::msg("rule would never match protocol"));
    }
    let is_proto = |want: u8| {
        m.proto
            .as_ref()
            .is_some_and(|p| p.value == want && !p.negated)
    };
    let port_proto = is_proto(proto::TCP) || is_proto(proto::UDP);
    for (flag, ports) in [("--sport", &m.sport), ("--dport", &m.dport)] {
        let Some(p) = ports else { continue };
        if !port_proto {
            return Err(needs_proto(m, flag, "-p tcp or -p udp"));
        }
        if p.value.lo > p.value.hi {
            return Err(RuleError::msg("invalid portrange (min > max)"));
        }
        if p.negated && p.value.lo == 0 && p.value.hi == u16::MAX {
            return Err(RuleError::msg(format!(
                "! {flag} 0:65535 never matches, and iptables-save cannot write it"
            )));
        }
    }
    if let Some(mp) = &m.multiport {
        if !port_proto {
            return Err(RuleError::msg(
                "multiport needs `-p tcp' or `-p udp' (not negated)",
            ));
        }
        if mp.value.ports.is_empty() {
            return Err(RuleError::msg("multiport expection an option"));
        }
        let used: usize = mp
            .value
            .ports
            .iter()
            .map(|p| if p.lo == p.hi { 1 } else { 2 })
            .sum();
        if used > 15 {
            return Err(RuleError::msg("too many ports specified"));
        }
        if mp.value.ports.iter().any(|p| p.lo > p.hi) {
            return Err(RuleError::msg("invalid portrange specified"));
        }
    }
    if let Some(i) = &m.icmp {
        if !is_proto(proto::ICMP) {
            return Err(needs_proto(m, "--icmp-type", "-p icmp"));
        }
        let t = i.value;
        if t.code_lo > t.code_hi {
            return Err(RuleError::msg(format!(
                "Unknown ICMP code `{}/{}:{}'",
                t.typ, t.code_lo, t.code_hi
            )));
        }
        if t.code_lo != t.code_hi && (t.code_lo, t.code_hi) != (0, 0xFF) {
            return Err(RuleError::unsupported(format!(
                "an ICMP code range ({}/{}:{}; iptables-save would write {}/{})",
                t.typ, t.code_lo, t.code_hi, t.typ, t.code_lo
            )));
        }
        if t.typ == 0xFF && (t.code_lo, t.code_hi) != (0, 0xFF) {
            return Err(RuleError::unsupported(
                "a code with ICMP type 255 (iptables-save writes it as `any')",
            ));
        }
    }
    if let Some(c) = &m.ctstate {
        let all = ctstate::INVALID
            | ctstate::NEW
            | ctstate::ESTABLISHED
            | ctstate::RELATED
            | ctstate::UNTRACKED;
        if c.value == 0 || c.value & !all != 0 {
            return Err(RuleError::msg(format!("Bad ctstate bits {:#x}", c.value)));
        }
    }
    match &rule.target {
        Target::Drop if table == Table::Nat => return Err(nat_drop()),
        Target::Reject(with) => {
            if table != Table::Filter {
                return Err(RuleError::msg(format!(
                    "RULE_APPEND failed (Invalid argument): REJECT target: only valid in filter table, not {table}"
                )));
            }
            if *with == RejectWith::TcpReset && !is_proto(proto::TCP) {
                return Err(RuleError::msg(
                    "RULE_APPEND failed (Invalid argument): REJECT --reject-with tcp-reset needs -p tcp",
                ));
            }
        }
        Target::Log { prefix } if !prefix.is_empty() => check_log_prefix(prefix)?,
        Target::Nat(nat) => check_nat(table, m, nat)?,
        Target::Jump(to) | Target::Goto(to) if to.is_empty() => {
            return Err(RuleError::msg("Invalid target name (too short)"));
        }
        _ => {}
    }
    Ok(())
}

/// A NAT target in its table, with the protocol its ports need.
fn check_nat(table: Table, m: &Matches, nat: &Nat) -> Result<()> {
    if table != Table::Nat {
        return Err(RuleError::msg(format!(
            "RULE_APPEND failed (Invalid argument): {} target: only valid in nat table, not {table}",
            nat.name()
        )));
    }
    if let Nat::Snat(r) | Nat::Dnat(r) = nat
        && u32::from(r.addr_min) > u32::from(r.addr_max)
    {
        return Err(RuleError::unsupported(format!(
            "an address range whose first address is above its last ({}-{})",
            r.addr_min, r.addr_max
        )));
    }
    let Some(ports) = nat.ports() else {
        return Ok(());
    };
    if ports.lo > ports.hi {
        return Err(RuleError::msg(format!("Port range `{}' funky", ports.hi)));
    }
    match &m.proto {
        Some(p) if nat_ports_proto(p.value) => {
            if p.negated || !matches!(p.value, proto::TCP | proto::UDP) {
                return Err(RuleError::unsupported(format!(
                    "{} ports with `{}-p {}' (NAT ports need a plain -p tcp or -p udp)",
                    nat.name(),
                    if p.negated { "! " } else { "" },
                    super::parse::protocol_name(p.value).unwrap_or("?")
                )));
            }
            Ok(())
        }
        _ => Err(RuleError::msg(
            "Need TCP, UDP, SCTP or DCCP with port specification",
        )),
    }
}

/// iptables' check, by chain name: no `-o` where packets come in, no `-i`
/// where they go out.
pub fn check_directions(chain: &str, has_in: bool, has_out: bool) -> Result<()> {
    if has_out && matches!(chain, "PREROUTING" | "INPUT") {
        return Err(RuleError::msg(format!("Can't use -o with {chain}")));
    }
    if has_in && matches!(chain, "POSTROUTING" | "OUTPUT") {
        return Err(RuleError::msg(format!("Can't use -i with {chain}")));
    }
    Ok(())
}

fn needs_proto(m: &Matches, flag: &str, want: &str) -> RuleError {
    match &m.proto {
        Some(Neg { negated: true, .. }) => {
            RuleError::msg(format!("{flag} needs {want}, which cannot be negated"))
        }
        _ => RuleError::msg(format!("unknown option \"{flag}\" (it needs {want})")),
    }
}

fn check_iface(i: &Iface) -> Result<()> {
    let shown = if i.wildcard {
        format!("{}+", i.name)
    } else {
        i.name.clone()
    };
    super::parse::parse_iface(&shown).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::parse::{parse, parse_rule_spec, split_line};

    fn rs_with(table: Table, chain: &str, specs: &[&str]) -> Ruleset {
        let mut rs = Ruleset::new();
        let t = rs.table_mut(table);
        if t.chain(chain).is_none() {
            t.chains.push(Chain::user(chain));
        }
        for s in specs {
            let r = parse_rule_spec(&split_line(s).unwrap()).unwrap();
            t.chain_mut(chain).unwrap().rules.push(r);
        }
        rs
    }

    fn err(table: Table, chain: &str, specs: &[&str]) -> String {
        match validate(&rs_with(table, chain, specs)) {
            Ok(()) => panic!("{specs:?} in {table} {chain} passed"),
            Err(e) => e.innermost().to_string(),
        }
    }

    fn ok(table: Table, chain: &str, specs: &[&str]) {
        if let Err(e) = validate(&rs_with(table, chain, specs)) {
            panic!("{specs:?} in {table} {chain}: {e}");
        }
    }

    #[test]
    fn fresh_ruleset_is_valid() {
        validate(&Ruleset::new()).unwrap();
        validate(&Ruleset { tables: vec![] }).unwrap();
    }

    #[test]
    fn interface_directions() {
        assert_eq!(
            err(Table::Filter, "INPUT", &["-o eth0"]),
            "Can't use -o with INPUT"
        );
        assert_eq!(
            err(Table::Filter, "OUTPUT", &["-i eth0"]),
            "Can't use -i with OUTPUT"
        );
        assert_eq!(
            err(Table::Nat, "POSTROUTING", &["-i eth0"]),
            "Can't use -i with POSTROUTING"
        );
        assert_eq!(
            err(Table::Raw, "PREROUTING", &["! -o eth+"]),
            "Can't use -o with PREROUTING"
        );
        ok(Table::Filter, "FORWARD", &["-i eth0 -o eth1"]);
        // iptables-nft lets user chains use either, wherever they are called from.
        let mut rs = rs_with(Table::Filter, "uc", &["-o eth0 -j ACCEPT"]);
        rs.chain_mut(Table::Filter, "INPUT")
            .unwrap()
            .rules
            .push(Rule::new(Matches::default(), Target::Jump("uc".into())));
        validate(&rs).unwrap();
    }

    #[test]
    fn protocol_requirements() {
        let mut r = Rule::new(Matches::default(), Target::Accept);
        r.matches.dport = Some(Neg::new(crate::rules::model::PortRange { lo: 22, hi: 22 }));
        let mut rs = Ruleset::new();
        rs.chain_mut(Table::Filter, "INPUT")
            .unwrap()
            .rules
            .push(r.clone());
        assert!(validate(&rs).unwrap_err().to_string().contains("--dport"));
        r.matches.proto = Some(Neg::not(6));
        rs.chain_mut(Table::Filter, "INPUT").unwrap().rules = vec![r.clone()];
        assert!(
            validate(&rs)
                .unwrap_err()
                .to_string()
                .contains("cannot be negated")
        );
        r.matches.proto = Some(Neg::new(17));
        rs.chain_mut(Table::Filter, "INPUT").unwrap().rules = vec![r];
        validate(&rs).unwrap();
    }

    #[test]
    fn reject_rules() {
        ok(
            Table::Filter,
            "INPUT",
            &["-j REJECT", "-p tcp -j REJECT --reject-with tcp-reset"],
        );
        ok(Table::Filter, "uc", &["-j REJECT"]);
        for t in [Table::Mangle, Table::Raw, Table::Nat] {
            let chain = t.hooks()[0].chain_name();
            assert!(err(t, chain, &["-j REJECT"]).contains("only valid in filter table"));
            assert!(err(t, "uc", &["-j REJECT"]).contains("only valid in filter table"));
        }
        assert!(
            err(
                Table::Filter,
                "INPUT",
                &["-j REJECT --reject-with tcp-reset"]
            )
            .contains("needs -p tcp")
        );
        assert!(
            err(
                Table::Filter,
                "INPUT",
                &["-p udp -j REJECT --reject-with tcp-reset"]
            )
            .contains("needs -p tcp")
        );
        assert!(
            err(
                Table::Filter,
                "INPUT",
                &["! -p tcp -j REJECT --reject-with tcp-reset"]
            )
            .contains("needs -p tcp")
        );
    }

    /// The kernel's words (dmesg after iptables-legacy, tried in a
    /// throwaway namespace), after iptables-nft's.
    #[test]
    fn nat_targets_in_their_table_and_hooks() {
        let ok_at = [
            (
                "-j SNAT --to-source 192.0.2.1",
                &["POSTROUTING", "INPUT"][..],
            ),
            ("-j MASQUERADE", &["POSTROUTING"]),
            (
                "-p tcp -j DNAT --to-destination 172.17.0.2:80",
                &["PREROUTING", "OUTPUT"],
            ),
            (
                "-p udp -j REDIRECT --to-ports 53",
                &["PREROUTING", "OUTPUT"],
            ),
        ];
        for (spec, hooks) in ok_at {
            for chain in ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"] {
                if hooks.contains(&chain) {
                    ok(Table::Nat, chain, &[spec]);
                } else {
                    assert!(
                        err(Table::Nat, chain, &[spec])
                            .contains(&format!("used from hooks {chain}, but only usable from")),
                        "{spec} in {chain}"
                    );
                }
            }
            // A user chain nothing calls may hold any of them.
            ok(Table::Nat, "uc", &[spec]);
            for t in [Table::Filter, Table::Mangle, Table::Raw] {
                let name = spec.split("-j ").nth(1).unwrap().split(' ').next().unwrap();
                assert_eq!(
                    err(t, "uc", &[spec]),
                    format!(
                        "RULE_APPEND failed (Invalid argument): {name} target: only valid in nat table, not {t}"
                    )
                );
            }
        }
        assert_eq!(
            err(Table::Nat, "PREROUTING", &["-j SNAT --to-source 1.2.3.4"]),
            "RULE_APPEND failed (Invalid argument): SNAT target: used from hooks PREROUTING, \
             but only usable from INPUT/POSTROUTING"
        );
        assert_eq!(
            err(
                Table::Nat,
                "POSTROUTING",
                &["-j DNAT --to-destination 1.2.3.4"]
            ),
            "RULE_APPEND failed (Invalid argument): DNAT target: used from hooks POSTROUTING, \
             but only usable from PREROUTING/OUTPUT"
        );
        assert_eq!(
            err(Table::Nat, "INPUT", &["-j MASQUERADE"]),
            "RULE_APPEND failed (Invalid argument): MASQUERADE target: used from hooks INPUT, \
             but only usable from POSTROUTING"
        );
    }

    /// A user chain takes the hooks of every chain that reaches it, through
    /// jumps and gotos, however deep.
    #[test]
    fn nat_targets_in_user_chains_follow_their_callers() {
        let text = |calls: &str| {
            format!(
                "*nat\n:a - [0:0]\n:b - [0:0]\n:c - [0:0]\n-A a -j b\n-A b -g c\n\
                 -A c -j MASQUERADE\n{calls}COMMIT\n"
            )
        };
        parse(&text("")).unwrap();
        parse(&text("-A POSTROUTING -j a\n")).unwrap();
        assert_eq!(
            parse(&text("-A POSTROUTING -j a\n-A OUTPUT -j b\n"))
                .unwrap_err()
                .to_string(),
            "line 7: RULE_APPEND failed (Invalid argument): MASQUERADE target: used from hooks \
             OUTPUT/POSTROUTING, but only usable from POSTROUTING"
        );
        let mut rs = Ruleset::new();
        let nat = rs.table_mut(Table::Nat);
        nat.chains.push(Chain::user("x"));
        nat.chains.push(Chain::user("y"));
        let jump = |to: &str| Rule::new(Matches::default(), Target::Jump(to.into()));
        nat.chain_mut("INPUT").unwrap().rules.push(jump("x"));
        nat.chain_mut("x").unwrap().rules.push(jump("y"));
        nat.chain_mut("y")
            .unwrap()
            .rules
            .push(parse_rule_spec(&split_line("-j SNAT --to-source 10.0.0.1").unwrap()).unwrap());
        validate(&rs).unwrap();
        assert_eq!(
            chain_hooks(rs.table(Table::Nat).unwrap()),
            [1, 2, 8, 16, 2, 2]
        );
        rs.chain_mut(Table::Nat, "PREROUTING")
            .unwrap()
            .rules
            .push(jump("y"));
        assert_eq!(
            validate(&rs).unwrap_err().to_string(),
            "table nat, chain y, rule 1: RULE_APPEND failed (Invalid argument): SNAT target: \
             used from hooks PREROUTING/INPUT, but only usable from INPUT/POSTROUTING"
        );
    }

    #[test]
    fn nat_ports_need_tcp_or_udp() {
        ok(
            Table::Nat,
            "POSTROUTING",
            &[
                "-p tcp -j SNAT --to-source 1.2.3.4:1000-2000",
                "-p udp -j MASQUERADE --to-ports 1024-65535",
                "-j SNAT --to-source 1.2.3.4-1.2.3.9",
            ],
        );
        for spec in [
            "! -p tcp -j MASQUERADE --to-ports 5",
            "-p icmp -j MASQUERADE --to-ports 5",
            "-p sctp -j MASQUERADE --to-ports 5",
            "-p dccp -j MASQUERADE --to-ports 5",
            "-j SNAT --to-source 1.2.3.9-1.2.3.4",
        ] {
            assert!(
                err(Table::Nat, "POSTROUTING", &[spec]).ends_with("is not supported"),
                "{spec}"
            );
        }
        // Model states the parser cannot make.
        let mut r = Rule::new(
            Matches::default(),
            Target::Nat(Nat::Redirect(Some(crate::rules::model::PortRange {
                lo: 80,
                hi: 80,
            }))),
        );
        let mut rs = Ruleset::new();
        rs.chain_mut(Table::Nat, "PREROUTING").unwrap().rules = vec![r.clone()];
        assert_eq!(
            validate(&rs).unwrap_err().innermost().to_string(),
            "Need TCP, UDP, SCTP or DCCP with port specification"
        );
        r.matches.proto = Some(Neg::new(proto::TCP));
        r.target = Target::Nat(Nat::Redirect(Some(crate::rules::model::PortRange {
            lo: 81,
            hi: 80,
        })));
        rs.chain_mut(Table::Nat, "PREROUTING").unwrap().rules = vec![r];
        assert_eq!(
            validate(&rs).unwrap_err().innermost().to_string(),
            "Port range `80' funky"
        );
    }

    #[test]
    fn nat_drop_is_inhibited() {
        let want = "The \"nat\" table is not intended for filtering, the use of DROP is therefore inhibited.";
        assert_eq!(err(Table::Nat, "PREROUTING", &["-j DROP"]), want);
        assert_eq!(err(Table::Nat, "uc", &["-j DROP"]), want);
        let mut rs = Ruleset::new();
        rs.chain_mut(Table::Nat, "OUTPUT").unwrap().policy = Some(Policy::Drop);
        assert_eq!(validate(&rs).unwrap_err().innermost().to_string(), want);
        ok(Table::Mangle, "PREROUTING", &["-j DROP"]);
    }

    #[test]
    fn jumps() {
        assert_eq!(
            err(Table::Filter, "INPUT", &["-j nochain"]),
            "Chain 'nochain' does not exist"
        );
        assert_eq!(
            err(Table::Filter, "INPUT", &["-g nochain"]),
            "Chain 'nochain' does not exist"
        );
        assert!(err(Table::Filter, "INPUT", &["-j OUTPUT"]).contains("built-in chain OUTPUT"));
        assert!(err(Table::Filter, "INPUT", &["-j INPUT"]).contains("built-in chain INPUT"));
        // Jumping to itself is a loop only if a built-in chain gets there.
        ok(Table::Filter, "uc", &["-j uc"]);
        let mut rs = rs_with(Table::Filter, "uc", &["-j uc"]);
        rs.chain_mut(Table::Filter, "INPUT")
            .unwrap()
            .rules
            .push(Rule::new(Matches::default(), Target::Jump("uc".into())));
        assert_eq!(
            validate(&rs).unwrap_err().innermost().to_string(),
            "RULE_APPEND failed (Too many links): jumps loop: INPUT -> uc -> uc"
        );
        // A chain of the right name in another table does not count.
        let mut rs = rs_with(Table::Nat, "DOCKER", &[]);
        rs.chain_mut(Table::Filter, "INPUT")
            .unwrap()
            .rules
            .push(Rule::new(Matches::default(), Target::Jump("DOCKER".into())));
        assert!(validate(&rs).is_err());
    }

    #[test]
    fn loops_and_depth() {
        let text = |extra: &str| {
            format!("*filter\n:a - [0:0]\n:b - [0:0]\n-A a -j b\n-A b -g a\n{extra}COMMIT\n")
        };
        // Unreachable loops are accepted, as iptables-nft does.
        parse(&text("")).unwrap();
        let e = parse(&text("-A FORWARD -j a\n")).unwrap_err().to_string();
        assert_eq!(
            e,
            "line 6: RULE_APPEND failed (Too many links): jumps loop: FORWARD -> a -> b -> a"
        );

        // 15 jumps below INPUT are fine, 16 are not (measured on nf_tables).
        let mut t = String::from("*filter\n");
        for i in 1..=20 {
            t += &format!(":c{i} - [0:0]\n");
        }
        for i in 1..20 {
            t += &format!("-A c{i} -j c{}\n", i + 1);
        }
        parse(&format!("{t}-A INPUT -j c6\nCOMMIT\n")).unwrap();
        let e = parse(&format!("{t}-A INPUT -g c5\nCOMMIT\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "line 41: RULE_APPEND failed (Too many links): jumps nested more than 15 deep"
            ),
            "{e}"
        );

        // Diamonds are not loops, and stay cheap.
        let mut t = String::from("*filter\n");
        for i in 0..15 {
            t += &format!(":d{i} - [0:0]\n");
        }
        for i in 0..14 {
            for _ in 0..8 {
                t += &format!("-A d{i} -j d{}\n", i + 1);
            }
        }
        parse(&format!("{t}-A INPUT -j d0\n-A OUTPUT -j d0\nCOMMIT\n")).unwrap();
    }

    #[test]
    fn chain_names() {
        assert!(check_chain_name("0123456789012345678901234567").is_ok());
        assert_eq!(
            check_chain_name("01234567890123456789012345678")
                .unwrap_err()
                .to_string(),
            "chain name `01234567890123456789012345678' too long (must be under 29 chars)"
        );
        assert_eq!(
            check_chain_name("-abc").unwrap_err().to_string(),
            "chain name not allowed to start with `-'"
        );
        assert_eq!(
            check_chain_name("!abc").unwrap_err().to_string(),
            "chain name not allowed to start with `!'"
        );
        for n in [
            "ACCEPT",
            "DROP",
            "RETURN",
            "REJECT",
            "LOG",
            "QUEUE",
            "NFQUEUE",
            "MASQUERADE",
            "",
        ] {
            assert_eq!(
                check_chain_name(n).unwrap_err().to_string(),
                "chain name may not clash with target name",
                "{n}"
            );
        }
        assert_eq!(
            check_chain_name("a b").unwrap_err().to_string(),
            "Invalid chain name `a b'"
        );
        assert!(check_chain_name("PREROUTING").is_ok());
        assert!(check_chain_name("123").is_ok());
        // The filter table has no PREROUTING hook, so the name is free.
        ok(Table::Filter, "PREROUTING", &["-j ACCEPT"]);
    }

    #[test]
    fn chain_structure() {
        let mut rs = Ruleset::new();
        rs.table_mut(Table::Filter).chains.push(Chain {
            name: "uc".into(),
            policy: Some(Policy::Drop),
            policy_slot: 0,
            rules: vec![],
        });
        assert!(
            validate(&rs)
                .unwrap_err()
                .to_string()
                .contains("Bad built-in chain name.")
        );
        let mut rs = Ruleset::new();
        rs.table_mut(Table::Filter).chains.push(Chain::user("uc"));
        rs.table_mut(Table::Filter).chains.push(Chain::user("uc"));
        assert!(
            validate(&rs)
                .unwrap_err()
                .to_string()
                .contains("Chain already exists.")
        );
        let mut rs = Ruleset::new();
        rs.table_mut(Table::Filter)
            .chains
            .push(Chain::user("INPUT"));
        assert!(
            validate(&rs)
                .unwrap_err()
                .to_string()
                .contains("Chain already exists.")
        );
        let mut rs = Ruleset::new();
        rs.table_mut(Table::Raw).chains.remove(0);
        assert!(
            validate(&rs)
                .unwrap_err()
                .to_string()
                .contains("lacks its built-in chain PREROUTING")
        );
        let mut rs = Ruleset::new();
        let t = rs.tables[0].clone();
        rs.tables.push(t);
        assert!(validate(&rs).is_err());
    }

    #[test]
    fn model_states_iptables_cannot_write() {
        use crate::rules::model::{IcmpType, PortRange};
        let mut rs = Ruleset::new();
        let mut r = Rule::new(Matches::default(), Target::Accept);
        r.matches.src = Some(Neg::new("10.1.2.3/16".parse().unwrap()));
        rs.chain_mut(Table::Filter, "INPUT").unwrap().rules = vec![r];
        assert!(validate(&rs).unwrap_err().to_string().contains("host bits"));

        let mut r = Rule::new(Matches::default(), Target::Accept);
        r.matches.dst = Some(Neg::not("0.0.0.0/0".parse().unwrap()));
        rs.chain_mut(Table::Filter, "INPUT").unwrap().rules = vec![r];
        assert!(
            validate(&rs)
                .unwrap_err()
                .to_string()
                .contains("never matches")
        );

        let mut r = Rule::new(Matches::default(), Target::Accept);
        r.matches.proto = Some(Neg::new(6));
        r.matches.dport = Some(Neg::not(PortRange { lo: 0, hi: 65535 }));
        rs.chain_mut(Table::Filter, "INPUT").unwrap().rules = vec![r];
        assert!(
            validate(&rs)
                .unwrap_err()
                .to_string()
                .contains("never matches")
        );

        let mut r = Rule::new(Matches::default(), Target::Accept);
        r.matches.proto = Some(Neg::new(1));
        r.matches.icmp = Some(Neg::new(IcmpType {
            typ: 3,
            code_lo: 0,
            code_hi: 5,
        }));
        rs.chain_mut(Table::Filter, "INPUT").unwrap().rules = vec![r];
        assert!(
            validate(&rs)
                .unwrap_err()
                .to_string()
                .contains("not supported")
        );

        let mut r = Rule::new(
            Matches::default(),
            Target::Log {
                prefix: "x".repeat(30),
            },
        );
        r.matches.proto = Some(Neg::new(1));
        rs.chain_mut(Table::Filter, "INPUT").unwrap().rules = vec![r];
        assert!(validate(&rs).unwrap_err().to_string().contains("29"));
    }

    #[test]
    fn errors_say_where() {
        let rs = rs_with(Table::Filter, "INPUT", &["-j ACCEPT", "-o eth0"]);
        assert_eq!(
            validate(&rs).unwrap_err().to_string(),
            "table filter, chain INPUT, rule 2: Can't use -o with INPUT"
        );
    }
}

//! Reading iptables' own language: `iptables-save` text and the argv of an
//! iptables command line. Operators carry rules around as iptables-save
//! output and type them as `iptables -A ...`, so netctl takes exactly that
//! text, with iptables' rules for what it means and iptables' words when it
//! refuses something. Only a subset of iptables is implemented (the matches
//! and targets the datapath has); everything outside it is refused as "not
//! supported" rather than dropped, because a rule that silently loses a match
//! accepts or drops traffic nobody asked it to.
//!
//! The rule-spec parser here is shared with `edit.rs`; rule-local syntax is
//! checked here, everything that needs the whole ruleset in `validate.rs`.

use std::collections::HashMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::model::{
    Counters, IcmpType, Iface, Matches, Multiport, MultiportKind, Nat, NatRange, Neg, Policy,
    PortRange, RejectWith, Rule, Ruleset, Table, TableRules, Target, ctstate, proto,
};
use super::netdb;

/// What is wrong with a ruleset text, a rule, or an edit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// Part of iptables that netctl does not implement.
    #[error("{0} is not supported")]
    Unsupported(String),
    /// Refused for the reason iptables gives, in its words where it has any.
    #[error("{0}")]
    Iptables(String),
    /// Where in a ruleset text the problem is.
    #[error("line {line}: {error}")]
    Line { line: usize, error: Box<RuleError> },
    /// Which rule of a ruleset the problem is in (rules count from 1).
    #[error("table {table}, chain {chain}, rule {rule}: {error}")]
    Rule {
        table: Table,
        chain: String,
        rule: usize,
        error: Box<RuleError>,
    },
    /// Which chain of a ruleset the problem is in.
    #[error("table {table}, chain {chain}: {error}")]
    Chain {
        table: Table,
        chain: String,
        error: Box<RuleError>,
    },
}

impl RuleError {
    pub(crate) fn msg(m: impl Into<String>) -> RuleError {
        RuleError::Iptables(m.into())
    }

    pub(crate) fn unsupported(m: impl Into<String>) -> RuleError {
        RuleError::Unsupported(m.into())
    }

    fn at_line(self, line: usize) -> RuleError {
        match self {
            e @ RuleError::Line { .. } => e,
            e => RuleError::Line {
                line,
                error: Box::new(e),
            },
        }
    }

    /// The error without where it happened: what an edit reports about the
    /// rule it was given.
    pub fn innermost(&self) -> &RuleError {
        match self {
            RuleError::Line { error, .. }
            | RuleError::Rule { error, .. }
            | RuleError::Chain { error, .. } => error.innermost(),
            e => e,
        }
    }
}

type Result<T, E = RuleError> = std::result::Result<T, E>;

/// Counters a ruleset text carries (`[packets:bytes]`), by position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CounterRef {
    /// The policy counters of a built-in chain.
    Policy { table: Table, chain: String },
    /// Rule `index` (from 0) of a chain.
    Rule {
        table: Table,
        chain: String,
        index: usize,
    },
}

/// A ruleset text, read but not yet checked as a whole.
#[derive(Clone, Debug)]
pub struct Parsed {
    /// The tables of the text; tables the text has no `*table` section for
    /// are as a fresh machine has them (built-in chains, ACCEPT, no rules).
    pub ruleset: Ruleset,
    /// The tables the text has sections for, in order. iptables-restore
    /// replaces only these, so a caller that merges can tell them apart.
    pub tables: Vec<Table>,
    /// The non-zero counters the text gives, for `iptables-restore -c`.
    pub counters: Vec<(CounterRef, Counters)>,
    /// The line of each rule, by chain and index.
    rule_lines: HashMap<(Table, String), Vec<usize>>,
    chain_lines: HashMap<(Table, String), usize>,
}

impl Parsed {
    /// `validate::validate`, with errors placed on the line they come from.
    pub fn validate(&self) -> Result<()> {
        super::validate::validate(&self.ruleset).map_err(|e| self.locate(e))
    }

    fn locate(&self, e: RuleError) -> RuleError {
        let line = match &e {
            RuleError::Rule {
                table, chain, rule, ..
            } => self
                .rule_lines
                .get(&(*table, chain.clone()))
                .and_then(|lines| lines.get(rule.saturating_sub(1)))
                .copied(),
            RuleError::Chain { table, chain, .. } => {
                self.chain_lines.get(&(*table, chain.clone())).copied()
            }
            _ => None,
        };
        match (line, e) {
            (Some(line), RuleError::Rule { error, .. } | RuleError::Chain { error, .. }) => {
                error.at_line(line)
            }
            (_, e) => e,
        }
    }
}

/// Reads iptables-save text into a ruleset and checks it as iptables-restore
/// would. Slots are left 0 (see `Ruleset::assign_slots`); counters in the
/// text are checked for syntax but not kept (use `parse_text` for them).
pub fn parse(text: &str) -> Result<Ruleset> {
    let parsed = parse_text(text)?;
    parsed.validate()?;
    Ok(parsed.ruleset)
}

/// Reads iptables-save text without checking the ruleset as a whole.
pub fn parse_text(text: &str) -> Result<Parsed> {
    let mut p = Parsed {
        ruleset: Ruleset::new(),
        tables: Vec::new(),
        counters: Vec::new(),
        rule_lines: HashMap::new(),
        chain_lines: HashMap::new(),
    };
    // The table being read: iptables-restore flushes a table when its
    // section starts and commits it at COMMIT.
    let mut current: Option<Section> = None;
    let mut last = 0;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        last = n;
        parse_line(&mut p, &mut current, raw, n).map_err(|e| e.at_line(n))?;
    }
    if let Some(s) = current {
        return Err(RuleError::msg(format!(
            "COMMIT expected (table {} is not committed)",
            s.rules.table
        ))
        .at_line(last + 1));
    }
    Ok(p)
}

/// One `*table` ... `COMMIT` section being read.
struct Section {
    rules: TableRules,
    counters: Vec<(CounterRef, Counters)>,
    /// Line of each rule, by chain name and index.
    rule_lines: HashMap<String, Vec<usize>>,
    chain_lines: HashMap<String, usize>,
}

impl Section {
    fn commit(self, p: &mut Parsed) {
        let t = self.rules.table;
        // A second section for a table replaces the first, as
        // iptables-restore flushes the table again.
        p.rule_lines.retain(|k, _| k.0 != t);
        p.chain_lines.retain(|k, _| k.0 != t);
        p.counters.retain(|(r, _)| match r {
            CounterRef::Policy { table, .. } | CounterRef::Rule { table, .. } => *table != t,
        });
        p.tables.retain(|x| *x != t);
        p.tables.push(t);
        p.rule_lines.extend(
            self.rule_lines
                .into_iter()
                .map(|(chain, lines)| ((t, chain), lines)),
        );
        p.chain_lines.extend(
            self.chain_lines
                .into_iter()
                .map(|(chain, line)| ((t, chain), line)),
        );
        p.counters.extend(self.counters);
        *p.ruleset.table_mut(t) = self.rules;
    }
}

/// `[p:b] -A CHAIN spec` (the line without trailing blanks).
fn parse_rule_line(line: &str) -> Result<(Option<Counters>, Command)> {
    let (ctrs, rest) = match line.strip_prefix('[') {
        Some(_) => {
            let end = line
                .find(']')
                .ok_or_else(|| RuleError::msg("bad counters: `]' expected"))?;
            let c = parse_counters(&line[..=end])
                .ok_or_else(|| RuleError::msg(format!("bad counters `{}'", &line[..=end])))?;
            (Some(c), &line[end + 1..])
        }
        None => (None, line),
    };
    let cmd = if rest.contains('"') {
        parse_command(&split_line(rest)?, Mode::Restore)?
    } else {
        // `split_line` without quotes, without a copy of every word.
        parse_command(&words(rest), Mode::Restore)?
    };
    Ok((ctrs, cmd))
}

fn parse_line(p: &mut Parsed, current: &mut Option<Section>, raw: &str, n: usize) -> Result<()> {
    let line = raw.trim_end();
    if line.trim_start().is_empty() || line.starts_with('#') {
        return Ok(());
    }
    if let Some(rest) = line.strip_prefix('*') {
        if let Some(s) = current {
            return Err(RuleError::msg(format!(
                "table {} is not committed before *{}: COMMIT expected",
                s.rules.table,
                rest.trim()
            )));
        }
        let name = rest.split_whitespace().next().unwrap_or("");
        let table = table_by_name(name).map_err(|e| match e {
            RuleError::Iptables(_) if name.is_empty() => RuleError::msg("table name invalid"),
            RuleError::Iptables(_) => RuleError::msg(format!("table name '{name}' invalid")),
            e => e,
        })?;
        if rest.split_whitespace().nth(1).is_some() {
            return Err(RuleError::msg(format!("unexpected text after *{name}")));
        }
        *current = Some(Section {
            rules: TableRules::new(table),
            counters: Vec::new(),
            rule_lines: HashMap::new(),
            chain_lines: HashMap::new(),
        });
        return Ok(());
    }
    let Some(sec) = current else {
        return Err(RuleError::msg(format!(
            "`{line}' is outside a table: a *table line must come first"
        )));
    };
    if line == "COMMIT" {
        if let Some(s) = current.take() {
            s.commit(p);
        }
        return Ok(());
    }
    if let Some(rest) = line.strip_prefix(':') {
        return parse_chain_line(sec, rest, n);
    }
    // A rule: `[p:b] -A CHAIN spec`.
    let (ctrs, cmd) = parse_rule_line(line)?;
    let chain_name = cmd.chain.unwrap_or_default();
    let rule = cmd
        .rule
        .unwrap_or_else(|| Rule::new(Matches::default(), Target::None));
    let table = sec.rules.table;
    let chain = sec.rules.chain_mut(&chain_name).ok_or_else(|| {
        RuleError::msg(format!(
            "No chain/target/match by that name. (chain {chain_name} is not declared in table {table})"
        ))
    })?;
    let idx = chain.rules.len();
    chain.rules.push(rule);
    // Rules are only appended, so the index in `lines` is `idx`.
    match sec.rule_lines.get_mut(chain_name.as_str()) {
        Some(lines) => lines.push(n),
        None => {
            sec.rule_lines.insert(chain_name.clone(), vec![n]);
        }
    }
    if let Some(c) = ctrs.filter(|c| *c != Counters::default()) {
        sec.counters.push((
            CounterRef::Rule {
                table,
                chain: chain_name,
                index: idx,
            },
            c,
        ));
    }
    Ok(())
}

fn parse_chain_line(sec: &mut Section, rest: &str, n: usize) -> Result<()> {
    let table = &mut sec.rules;
    let counters = &mut sec.counters;
    let mut words = rest.split_whitespace();
    let name = words
        .next()
        .ok_or_else(|| RuleError::msg("chain name invalid"))?;
    let policy = words
        .next()
        .ok_or_else(|| RuleError::msg("policy invalid"))?;
    let ctrs = match words.next() {
        Some(w) => Some(parse_counters(w).ok_or_else(|| {
            RuleError::msg(format!("invalid policy counters for chain '{name}'"))
        })?),
        None => None,
    };
    if let Some(w) = words.next() {
        return Err(RuleError::msg(format!(
            "unexpected `{w}' after chain {name}"
        )));
    }
    sec.chain_lines.insert(name.to_string(), n);
    let builtin = table.chain(name).is_some_and(|c| c.is_builtin());
    if builtin {
        let pol = parse_policy(policy)?;
        if let Some(c) = table.chain_mut(name) {
            c.policy = Some(pol);
        }
        if let Some(c) = ctrs.filter(|c| *c != Counters::default()) {
            counters
                .retain(|(r, _)| !matches!(r, CounterRef::Policy { chain, .. } if chain == name));
            counters.push((
                CounterRef::Policy {
                    table: table.table,
                    chain: name.to_string(),
                },
                c,
            ));
        }
        return Ok(());
    }
    if policy != "-" {
        return Err(RuleError::msg(format!(
            "Bad built-in chain name. ({name} is a user-defined chain in table {} and cannot have policy {policy})",
            table.table
        )));
    }
    if ctrs.is_some_and(|c| c != Counters::default()) {
        return Err(RuleError::unsupported(format!(
            "counters on user-defined chain {name} (only built-in chains count packets)"
        )));
    }
    // Declaring a chain twice is harmless to iptables-restore (it ignores
    // EEXIST), so it is here too.
    if table.chain(name).is_none() {
        table.chains.push(super::model::Chain::user(name));
    }
    Ok(())
}

/// `[packets:bytes]`.
fn parse_counters(s: &str) -> Option<Counters> {
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    let (p, b) = inner.split_once(':')?;
    let num = |x: &str| -> Option<u64> {
        if x.is_empty() || !x.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        x.parse().ok()
    };
    Some(Counters {
        packets: num(p)?,
        bytes: num(b)?,
    })
}

/// `ACCEPT` or `DROP`, spelt as iptables wants them.
pub fn parse_policy(s: &str) -> Result<Policy> {
    match s {
        "ACCEPT" => Ok(Policy::Accept),
        "DROP" => Ok(Policy::Drop),
        _ => Err(RuleError::msg(format!(
            "Bad policy name. (`{s}': a policy is ACCEPT or DROP)"
        ))),
    }
}

/// A table name, as `-t` and `*table` take it.
pub fn table_by_name(name: &str) -> Result<Table> {
    match name {
        "raw" => Ok(Table::Raw),
        "mangle" => Ok(Table::Mangle),
        "nat" => Ok(Table::Nat),
        "filter" => Ok(Table::Filter),
        "security" => Err(RuleError::unsupported("table security")),
        _ => Err(RuleError::msg(format!("table '{name}' does not exist"))),
    }
}

/// The blanks that separate arguments.
const SPACES: [char; 4] = [' ', '\t', '\n', '\r'];

/// The words of a line without quotes: `split_line` without copies.
fn words(line: &str) -> Vec<&str> {
    let blank = |c: u8| matches!(c, b' ' | b'\t' | b'\n' | b'\r');
    let b = line.as_bytes();
    let mut out = Vec::with_capacity(32);
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && blank(b[i]) {
            i += 1;
        }
        let start = i;
        while i < b.len() && !blank(b[i]) {
            i += 1;
        }
        if i > start {
            // Cut at ASCII blanks, so at character boundaries.
            out.push(&line[start..i]);
        }
    }
    out
}

/// Splits a line into arguments the way iptables-restore does: blanks
/// separate, double quotes group (and may start or end mid-word), a
/// backslash inside quotes takes the next character literally. Single quotes
/// are ordinary characters, as in iptables-restore.
pub fn split_line(line: &str) -> Result<Vec<String>> {
    if !line.contains('"') {
        return Ok(words(line).into_iter().map(str::to_string).collect());
    }
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote = false;
    let mut escaped = false;
    for ch in line.chars() {
        if quote {
            if escaped {
                cur.push(ch);
                escaped = false;
            } else if ch == '\\' {
                escaped = true;
            } else if ch == '"' {
                // A closing quote ends the argument, even an empty one.
                quote = false;
                out.push(std::mem::take(&mut cur));
                in_word = false;
            } else {
                cur.push(ch);
            }
            continue;
        }
        match ch {
            '"' => {
                quote = true;
                in_word = true;
            }
            c if SPACES.contains(&c) => {
                if in_word && !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                in_word = false;
            }
            _ => {
                cur.push(ch);
                in_word = true;
            }
        }
    }
    if quote {
        return Err(RuleError::msg("unterminated quote"));
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    Ok(out)
}

/// Parses a rule specification alone, e.g. `-p tcp --dport 22 -j ACCEPT`.
pub fn parse_rule_spec<S: AsRef<str>>(args: &[S]) -> Result<Rule> {
    let mut argv = vec!["-A".to_string(), "X".to_string()];
    argv.extend(args.iter().map(|a| a.as_ref().to_string()));
    let cmd = parse_command(&argv, Mode::RuleSpec)?;
    Ok(cmd
        .rule
        .unwrap_or_else(|| Rule::new(Matches::default(), Target::None)))
}

/// Where a command line comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// A line of a ruleset text: `-A CHAIN spec` only, no `-t`.
    Restore,
    /// The argv of `netctl rules`.
    Command,
    /// A bare rule spec (after a made-up `-A X`).
    RuleSpec,
}

/// The command of an iptables command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cmd {
    Append,
    Insert,
    Delete,
    Replace,
    NewChain,
    DeleteChain,
    Policy,
    Flush,
    Zero,
}

impl Cmd {
    fn letter(self) -> char {
        match self {
            Cmd::Append => 'A',
            Cmd::Insert => 'I',
            Cmd::Delete => 'D',
            Cmd::Replace => 'R',
            Cmd::NewChain => 'N',
            Cmd::DeleteChain => 'X',
            Cmd::Policy => 'P',
            Cmd::Flush => 'F',
            Cmd::Zero => 'Z',
        }
    }
}

/// A parsed command line, before it is turned into an `Edit`.
#[derive(Clone, Debug)]
pub(crate) struct Command {
    pub table: Option<Table>,
    pub cmd: Cmd,
    pub chain: Option<String>,
    pub num: Option<usize>,
    pub policy: Option<String>,
    /// The rule spec, when the command has one.
    pub rule: Option<Rule>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Opt {
    Cmd(Cmd),
    Table,
    Ipv4,
    Source,
    Dest,
    InIface,
    OutIface,
    Proto,
    Match,
    Jump,
    Goto,
    Sport,
    Dport,
    Sports,
    Dports,
    Ports,
    IcmpType,
    CtState,
    RejectWith,
    LogPrefix,
    ToSource,
    ToDest,
    ToPorts,
    /// `--random`, `--random-fully`, `--persistent` of the NAT targets.
    NatRandom,
    NatRandomFully,
    NatPersistent,
}

impl Opt {
    fn takes_value(self) -> bool {
        !matches!(
            self,
            Opt::Ipv4 | Opt::Cmd(_) | Opt::NatRandom | Opt::NatRandomFully | Opt::NatPersistent
        )
    }

    fn is_rule_option(self) -> bool {
        !matches!(self, Opt::Ipv4 | Opt::Cmd(_) | Opt::Table)
    }
}

fn short_opt(c: char) -> Option<Opt> {
    Some(match c {
        'A' => Opt::Cmd(Cmd::Append),
        'I' => Opt::Cmd(Cmd::Insert),
        'D' => Opt::Cmd(Cmd::Delete),
        'R' => Opt::Cmd(Cmd::Replace),
        'N' => Opt::Cmd(Cmd::NewChain),
        'X' => Opt::Cmd(Cmd::DeleteChain),
        'P' => Opt::Cmd(Cmd::Policy),
        'F' => Opt::Cmd(Cmd::Flush),
        'Z' => Opt::Cmd(Cmd::Zero),
        't' => Opt::Table,
        '4' => Opt::Ipv4,
        's' => Opt::Source,
        'd' => Opt::Dest,
        'i' => Opt::InIface,
        'o' => Opt::OutIface,
        'p' => Opt::Proto,
        'm' => Opt::Match,
        'j' => Opt::Jump,
        'g' => Opt::Goto,
        _ => return None,
    })
}

fn long_opt(name: &str) -> Option<Opt> {
    Some(match name {
        "append" => Opt::Cmd(Cmd::Append),
        "insert" => Opt::Cmd(Cmd::Insert),
        "delete" => Opt::Cmd(Cmd::Delete),
        "replace" => Opt::Cmd(Cmd::Replace),
        "new-chain" => Opt::Cmd(Cmd::NewChain),
        "delete-chain" => Opt::Cmd(Cmd::DeleteChain),
        "policy" => Opt::Cmd(Cmd::Policy),
        "flush" => Opt::Cmd(Cmd::Flush),
        "zero" => Opt::Cmd(Cmd::Zero),
        "table" => Opt::Table,
        "ipv4" => Opt::Ipv4,
        "source" | "src" => Opt::Source,
        "destination" | "dst" => Opt::Dest,
        "in-interface" => Opt::InIface,
        "out-interface" => Opt::OutIface,
        "protocol" => Opt::Proto,
        "match" => Opt::Match,
        "jump" => Opt::Jump,
        "goto" => Opt::Goto,
        "sport" | "source-port" => Opt::Sport,
        "dport" | "destination-port" => Opt::Dport,
        "sports" | "source-ports" => Opt::Sports,
        "dports" | "destination-ports" => Opt::Dports,
        "ports" => Opt::Ports,
        "icmp-type" => Opt::IcmpType,
        "ctstate" => Opt::CtState,
        "reject-with" => Opt::RejectWith,
        "log-prefix" => Opt::LogPrefix,
        "to-source" => Opt::ToSource,
        "to-destination" => Opt::ToDest,
        "to-ports" => Opt::ToPorts,
        "random" => Opt::NatRandom,
        "random-fully" => Opt::NatRandomFully,
        "persistent" => Opt::NatPersistent,
        _ => return None,
    })
}

/// Target names iptables knows besides the standard verdicts: `-j` to them
/// is unsupported and `-N` of them clashes, as in iptables.
const EXTENSION_TARGETS: &[&str] = &[
    "AUDIT",
    "CHECKSUM",
    "CLASSIFY",
    "CLUSTERIP",
    "CONNMARK",
    "CONNSECMARK",
    "CT",
    "DNAT",
    "DSCP",
    "ECN",
    "HMARK",
    "IDLETIMER",
    "LED",
    "MARK",
    "MASQUERADE",
    "NETMAP",
    "NFLOG",
    "NFQUEUE",
    "NOTRACK",
    "QUEUE",
    "RATEEST",
    "REDIRECT",
    "SECMARK",
    "SET",
    "SNAT",
    "SYNPROXY",
    "TCPMSS",
    "TCPOPTSTRIP",
    "TEE",
    "TOS",
    "TPROXY",
    "TRACE",
    "TTL",
    "ULOG",
    "standard",
];

/// Whether `name` is a target iptables would load (so not a chain name).
pub fn is_target_name(name: &str) -> bool {
    matches!(name, "" | "ACCEPT" | "DROP" | "RETURN" | "REJECT" | "LOG")
        || EXTENSION_TARGETS.contains(&name)
}

/// How a protocol match was loaded.
#[derive(Clone, Copy, PartialEq, Eq)]
enum ProtoMatch {
    Tcp,
    Udp,
    Icmp,
}

/// The rule being assembled, with what iptables tracks while parsing.
#[derive(Default)]
struct Builder {
    m: Matches,
    target: Option<Target>,
    /// `-s`, `-d`, ... seen, for "multiple -s flags not allowed".
    seen: Vec<Opt>,
    proto_matches: Vec<ProtoMatch>,
    multiport: bool,
    conntrack: bool,
    first_rule_option: Option<String>,
}

pub(crate) fn parse_command<S: AsRef<str>>(args: &[S], mode: Mode) -> Result<Command> {
    let args: Vec<&str> = args.iter().map(|a| a.as_ref()).collect();
    let mut b = Builder::default();
    let mut table = None;
    let mut cmd: Option<Cmd> = None;
    let mut chain = None;
    let mut num = None;
    let mut policy = None;
    let mut invert = false;
    let mut i = 0;
    while i < args.len() {
        let tok = args[i];
        i += 1;
        if tok == "!" {
            if invert {
                return Err(RuleError::msg("multiple consecutive ! not allowed"));
            }
            invert = true;
            continue;
        }
        // `written` is the option as written (without an attached value).
        let (opt, written, inline) = if let Some(long) = tok.strip_prefix("--") {
            let (name, val) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (long, None),
            };
            match long_opt(name) {
                Some(o) => (o, &tok[..2 + name.len()], val),
                None => return Err(unknown_option(&format!("--{name}"))),
            }
        } else if let Some(short) = tok.strip_prefix('-').filter(|s| !s.is_empty()) {
            let mut chars = short.chars();
            let c = chars.next().unwrap_or('-');
            let rest = chars.as_str();
            let written = &tok[..1 + c.len_utf8()];
            match short_opt(c) {
                Some(o) if o.takes_value() || matches!(o, Opt::Cmd(_)) => {
                    (o, written, (!rest.is_empty()).then_some(rest))
                }
                Some(o) if rest.is_empty() => (o, written, None),
                _ => return Err(unknown_option(tok)),
            }
        } else {
            return Err(RuleError::msg(format!("Bad argument `{tok}'")));
        };

        if let Opt::Cmd(c) = opt {
            if invert {
                return Err(RuleError::msg("unexpected '!' flag"));
            }
            if let Some(prev) = cmd {
                return Err(RuleError::msg(format!(
                    "Cannot use -{} with -{}",
                    c.letter(),
                    prev.letter()
                )));
            }
            cmd = Some(c);
            // The chain: attached, or the next word; optional for -X, -F, -Z.
            let optional = matches!(c, Cmd::DeleteChain | Cmd::Flush | Cmd::Zero);
            let next_is_word = |i: usize| {
                args.get(i)
                    .is_some_and(|a| !a.starts_with('-') && !a.starts_with('!'))
            };
            chain = match inline {
                Some(v) => Some(v.to_string()),
                None if !optional => match args.get(i) {
                    Some(a) => {
                        i += 1;
                        Some(a.to_string())
                    }
                    None => {
                        return Err(RuleError::msg(format!(
                            "option \"{written}\" requires an argument"
                        )));
                    }
                },
                None if next_is_word(i) => {
                    i += 1;
                    Some(args[i - 1].to_string())
                }
                None => None,
            };
            match c {
                Cmd::Insert | Cmd::Delete | Cmd::Replace => {
                    if next_is_word(i) {
                        num = Some(parse_rule_number(args[i])?);
                        i += 1;
                    } else if c == Cmd::Replace {
                        return Err(RuleError::msg("-R requires a rule number"));
                    }
                }
                Cmd::Zero if chain.is_some() && next_is_word(i) => {
                    num = Some(parse_rule_number(args[i])?);
                    i += 1;
                }
                Cmd::Policy => {
                    if next_is_word(i) {
                        policy = Some(args[i].to_string());
                        i += 1;
                    } else {
                        return Err(RuleError::msg("-P requires a chain and a policy"));
                    }
                }
                _ => {}
            }
            continue;
        }

        let value = if opt.takes_value() {
            match inline {
                Some(v) => v,
                None => match args.get(i) {
                    Some(a) => {
                        i += 1;
                        *a
                    }
                    None => {
                        return Err(RuleError::msg(format!(
                            "option \"{written}\" requires an argument"
                        )));
                    }
                },
            }
        } else {
            ""
        };

        match opt {
            Opt::Table => {
                if invert {
                    return Err(RuleError::msg("unexpected ! flag before --table"));
                }
                if mode == Mode::Restore {
                    return Err(RuleError::msg(
                        "-t cannot be used in a ruleset file: the *table line names the table",
                    ));
                }
                table = Some(table_by_name(value)?);
            }
            Opt::Ipv4 => {
                if invert {
                    return Err(RuleError::msg("unexpected '!' flag"));
                }
            }
            _ => {
                if b.first_rule_option.is_none() && opt.is_rule_option() {
                    b.first_rule_option = Some(written.to_string());
                }
                rule_option(&mut b, opt, written, value, invert)?;
            }
        }
        invert = false;
    }
    if invert {
        return Err(RuleError::msg("nothing appropriate following !"));
    }
    let Some(cmd) = cmd else {
        return Err(RuleError::msg("no command specified"));
    };
    if mode == Mode::Restore && cmd != Cmd::Append {
        return Err(RuleError::unsupported(format!(
            "-{} in a ruleset file (only -A lines are)",
            cmd.letter()
        )));
    }
    let takes_rule = match cmd {
        Cmd::Append | Cmd::Insert | Cmd::Replace => true,
        Cmd::Delete => num.is_none(),
        _ => false,
    };
    if let Some(c) = chain.as_ref().filter(|c| c.len() > 28) {
        return Err(RuleError::msg(format!(
            "chain name `{c}' too long (must be under 29 chars)"
        )));
    }
    if matches!(cmd, Cmd::Append | Cmd::Insert | Cmd::Replace | Cmd::Delete) {
        // By name and by the option's presence, as iptables does: `-o +` in
        // INPUT is refused although parsing drops it.
        super::validate::check_directions(
            chain.as_deref().unwrap_or(""),
            b.seen.contains(&Opt::InIface),
            b.seen.contains(&Opt::OutIface),
        )?;
    }
    if let Some(o) = b.first_rule_option.as_ref().filter(|_| !takes_rule) {
        return Err(RuleError::msg(format!(
            "Illegal option `{o}' with this command"
        )));
    }
    let rule = if takes_rule { Some(b.finish()?) } else { None };
    Ok(Command {
        table,
        cmd,
        chain,
        num,
        policy,
        rule,
    })
}

/// Options of matches and targets netctl lacks, and anything else iptables
/// has (-f, -c, -w, -v, ...), are unsupported rather than unknown: netctl
/// cannot tell a typo from an option it does not implement.
fn unknown_option(tok: &str) -> RuleError {
    RuleError::unsupported(tok.to_string())
}

fn parse_rule_number(s: &str) -> Result<usize> {
    match s.parse::<usize>() {
        Ok(n) if n > 0 && s.bytes().all(|c| c.is_ascii_digit()) => Ok(n),
        _ => Err(RuleError::msg(format!("Invalid rule number `{s}'"))),
    }
}

fn rule_option(b: &mut Builder, opt: Opt, written: &str, value: &str, invert: bool) -> Result<()> {
    let once = |b: &mut Builder, letter: &str| -> Result<()> {
        if b.seen.contains(&opt) {
            return Err(RuleError::msg(format!(
                "multiple {letter} flags not allowed"
            )));
        }
        b.seen.push(opt);
        Ok(())
    };
    match opt {
        Opt::Source | Opt::Dest => {
            once(b, if opt == Opt::Source { "-s" } else { "-d" })?;
            if value == "!" {
                return Err(intrapositioned(written));
            }
            let net = parse_net(value)?;
            // `-s 0.0.0.0/0` is no match at all: iptables-save never shows it.
            let v = if net.prefix_len() == 0 && !invert {
                None
            } else {
                Some(Neg {
                    negated: invert,
                    value: net,
                })
            };
            if opt == Opt::Source {
                b.m.src = v;
            } else {
                b.m.dst = v;
            }
        }
        Opt::InIface | Opt::OutIface => {
            once(b, if opt == Opt::InIface { "-i" } else { "-o" })?;
            if value == "!" {
                return Err(intrapositioned(written));
            }
            let iface = parse_iface(value)?;
            // `-i +` matches every interface: iptables drops it.
            let v = if iface.wildcard && iface.name.is_empty() && !invert {
                None
            } else {
                Some(Neg {
                    negated: invert,
                    value: iface,
                })
            };
            if opt == Opt::InIface {
                b.m.in_iface = v;
            } else {
                b.m.out_iface = v;
            }
        }
        Opt::Proto => {
            once(b, "-p")?;
            if value == "!" {
                return Err(intrapositioned(written));
            }
            let p = parse_protocol(value)?;
            if p == 0 {
                if invert {
                    return Err(RuleError::msg("rule would never match protocol"));
                }
                b.m.proto = None;
            } else {
                b.m.proto = Some(Neg {
                    negated: invert,
                    value: p,
                });
            }
        }
        Opt::Jump | Opt::Goto => {
            if invert {
                return Err(RuleError::msg("cannot have ! before -j"));
            }
            if b.target.is_some() {
                return Err(RuleError::msg("multiple -j flags not allowed"));
            }
            b.target = Some(parse_target(value, opt == Opt::Goto)?);
        }
        Opt::Match => {
            if invert {
                return Err(RuleError::msg("unexpected ! flag before --match"));
            }
            match value {
                "tcp" => b.proto_matches.push(ProtoMatch::Tcp),
                "udp" => b.proto_matches.push(ProtoMatch::Udp),
                "icmp" => {
                    if b.proto_matches.contains(&ProtoMatch::Icmp) {
                        return Err(RuleError::unsupported("a second -m icmp in one rule"));
                    }
                    b.proto_matches.push(ProtoMatch::Icmp);
                }
                "multiport" => {
                    if b.multiport {
                        return Err(RuleError::unsupported("a second -m multiport in one rule"));
                    }
                    b.multiport = true;
                }
                "conntrack" => {
                    if b.conntrack {
                        return Err(RuleError::unsupported("a second -m conntrack in one rule"));
                    }
                    b.conntrack = true;
                }
                "" => {
                    return Err(RuleError::msg(
                        "Couldn't load match `':No such file or directory",
                    ));
                }
                other => return Err(RuleError::unsupported(format!("-m {other}"))),
            }
        }
        Opt::Sport | Opt::Dport => {
            let pm = b.ports_match(written)?;
            let (slot, long) = if opt == Opt::Sport {
                (&mut b.m.sport, "--source-port")
            } else {
                (&mut b.m.dport, "--destination-port")
            };
            if slot.is_some() {
                return Err(RuleError::msg(match pm {
                    ProtoMatch::Tcp => format!("Only one `{long}' allowed"),
                    _ => format!("udp: option \"{long}\" can only be used once."),
                }));
            }
            if value == "!" {
                return Err(intrapositioned(written));
            }
            let range = parse_port_range(value)?;
            *slot = Some(Neg {
                negated: invert,
                value: range,
            });
        }
        Opt::Sports | Opt::Dports | Opt::Ports => {
            if !b.multiport {
                return Err(RuleError::msg(format!("unknown option \"{written}\"")));
            }
            let long = match opt {
                Opt::Sports => "--source-ports",
                Opt::Dports => "--destination-ports",
                _ => "--ports",
            };
            if let Some(prev) = &b.m.multiport {
                let prev_long = match prev.value.kind {
                    MultiportKind::Source => "--source-ports",
                    MultiportKind::Destination => "--destination-ports",
                    MultiportKind::Either => "--ports",
                };
                return Err(RuleError::msg(if prev_long == long {
                    format!("multiport: option \"{long}\" can only be used once.")
                } else {
                    format!(
                        "multiport: option \"{long}\" cannot be used together with \"{prev_long}\"."
                    )
                }));
            }
            multiport_proto(&b.m)?;
            let kind = match opt {
                Opt::Sports => MultiportKind::Source,
                Opt::Dports => MultiportKind::Destination,
                _ => MultiportKind::Either,
            };
            b.m.multiport = Some(Neg {
                negated: invert,
                value: Multiport {
                    kind,
                    ports: parse_multiport(value)?,
                },
            });
        }
        Opt::IcmpType => {
            if !b.proto_matches.contains(&ProtoMatch::Icmp) {
                if b.m.proto.as_ref().map(|p| p.value) == Some(proto::ICMP) {
                    b.proto_matches.push(ProtoMatch::Icmp);
                } else {
                    return Err(RuleError::msg(format!("unknown option \"{written}\"")));
                }
            }
            if b.m.icmp.is_some() {
                return Err(RuleError::msg(
                    "icmp: option \"--icmp-type\" can only be used once.",
                ));
            }
            b.m.icmp = Some(Neg {
                negated: invert,
                value: parse_icmp_type(value)?,
            });
        }
        Opt::CtState => {
            if !b.conntrack {
                return Err(RuleError::msg(format!("unknown option \"{written}\"")));
            }
            if b.m.ctstate.is_some() {
                return Err(RuleError::msg(
                    "conntrack: option \"--ctstate\" can only be used once.",
                ));
            }
            b.m.ctstate = Some(Neg {
                negated: invert,
                value: parse_ctstate(value)?,
            });
        }
        Opt::RejectWith => {
            let Some(Target::Reject(with)) = &mut b.target else {
                return Err(RuleError::msg(format!("unknown option \"{written}\"")));
            };
            if invert {
                return Err(RuleError::msg(
                    "REJECT: option \"--reject-with\" cannot be inverted.",
                ));
            }
            if b.seen.contains(&opt) {
                return Err(RuleError::msg(
                    "REJECT: option \"--reject-with\" can only be used once.",
                ));
            }
            b.seen.push(opt);
            *with = parse_reject_with(value)?;
        }
        Opt::LogPrefix => {
            let Some(Target::Log { prefix }) = &mut b.target else {
                return Err(RuleError::msg(format!("unknown option \"{written}\"")));
            };
            if invert {
                return Err(RuleError::msg(
                    "LOG: option \"--log-prefix\" cannot be inverted.",
                ));
            }
            if b.seen.contains(&opt) {
                return Err(RuleError::msg(
                    "LOG: option \"--log-prefix\" can only be used once.",
                ));
            }
            b.seen.push(opt);
            check_log_prefix(value)?;
            *prefix = value.to_string();
        }
        Opt::ToSource | Opt::ToDest | Opt::ToPorts => nat_option(b, opt, written, value, invert)?,
        Opt::NatRandom | Opt::NatRandomFully | Opt::NatPersistent => {
            // Which NAT target has which flag (libxt_NAT's option tables).
            let known = matches!(
                (&b.target, opt),
                (Some(Target::Nat(_)), Opt::NatRandom)
                    | (
                        Some(Target::Nat(Nat::Snat(_) | Nat::Masquerade(_))),
                        Opt::NatRandomFully
                    )
                    | (
                        Some(Target::Nat(Nat::Snat(_) | Nat::Dnat(_))),
                        Opt::NatPersistent
                    )
            );
            if !known {
                return Err(RuleError::msg(format!("unknown option \"{written}\"")));
            }
            return Err(RuleError::unsupported(written));
        }
        Opt::Cmd(_) | Opt::Table | Opt::Ipv4 => {}
    }
    Ok(())
}

/// `--to-source`, `--to-destination`, `--to-ports`, each of its own target.
fn nat_option(b: &mut Builder, opt: Opt, written: &str, value: &str, invert: bool) -> Result<()> {
    let (name, long) = match (&b.target, opt) {
        (Some(Target::Nat(n @ Nat::Snat(_))), Opt::ToSource) => (n.name(), "--to-source"),
        (Some(Target::Nat(n @ Nat::Dnat(_))), Opt::ToDest) => (n.name(), "--to-destination"),
        (Some(Target::Nat(n @ (Nat::Masquerade(_) | Nat::Redirect(_)))), Opt::ToPorts) => {
            (n.name(), "--to-ports")
        }
        _ => return Err(RuleError::msg(format!("unknown option \"{written}\""))),
    };
    // xtables_option_parse's order: "once" before "inverted".
    if b.seen.contains(&opt) {
        return Err(RuleError::msg(format!(
            "{name}: option \"{long}\" can only be used once."
        )));
    }
    if invert {
        return Err(RuleError::msg(format!(
            "{name}: option \"{long}\" cannot be inverted."
        )));
    }
    b.seen.push(opt);
    // iptables looks at the protocol number only (`! -p tcp` will do), as
    // far as the line has given it.
    let portok = b.m.proto.as_ref().is_some_and(|p| nat_ports_proto(p.value));
    match &mut b.target {
        Some(Target::Nat(Nat::Snat(r) | Nat::Dnat(r))) => *r = parse_nat_to(value, portok)?,
        Some(Target::Nat(Nat::Masquerade(p) | Nat::Redirect(p))) => {
            *p = Some(parse_nat_ports(value, portok)?);
        }
        _ => {}
    }
    Ok(())
}

/// The protocols iptables lets NAT targets give ports for: tcp, udp,
/// sctp, dccp and icmp (whose "port" is the query identifier).
pub fn nat_ports_proto(p: u8) -> bool {
    matches!(p, proto::TCP | proto::UDP | 132 | 33 | proto::ICMP)
}

/// libxt_NAT's `parse_ports`: `PORT` or `PORT-PORT` (the port a number,
/// or for a single port a service name, which netctl refuses).
pub fn parse_nat_ports(arg: &str, portok: bool) -> Result<PortRange> {
    if !portok {
        return Err(RuleError::msg(
            "Need TCP, UDP, SCTP or DCCP with port specification",
        ));
    }
    let Some((lo, rest)) = nat_port_number(arg)? else {
        if netdb::TCP_SERVICES
            .iter()
            .chain(netdb::UDP_SERVICES)
            .any(|(_, n)| *n == arg)
        {
            return Err(RuleError::unsupported(format!(
                "service name `{arg}' (give the port number)"
            )));
        }
        return Err(RuleError::msg(format!("Port `{arg}' not valid")));
    };
    let max = match rest.as_bytes().first() {
        None => return Ok(PortRange { lo, hi: lo }),
        Some(b'-') => &rest[1..],
        Some(b':') => return Err(RuleError::msg("Invalid port:port syntax - use dash")),
        Some(_) => {
            return Err(RuleError::msg(format!(
                "Garbage after port value: `{rest}'"
            )));
        }
    };
    // A range takes no service names.
    let Some((hi, rest)) = nat_port_number(max)? else {
        return Err(RuleError::msg(format!("Port `{max}' not valid")));
    };
    if hi < lo {
        return Err(RuleError::msg(format!("Port range `{max}' funky")));
    }
    match rest.as_bytes().first() {
        None => Ok(PortRange { lo, hi }),
        Some(b'/') => Err(RuleError::unsupported(format!(
            "a shifted port map (`{arg}')"
        ))),
        Some(_) => Err(RuleError::msg(format!(
            "Garbage after port range: `{rest}'"
        ))),
    }
}

/// The port number `arg` starts with and what follows it; `None` when it
/// starts with no number of at most 65535 (iptables then tries a service
/// name). iptables reads the number as C does (`010` is 8, `0x10` 16):
/// netctl refuses those spellings rather than guess.
fn nat_port_number(arg: &str) -> Result<Option<(u16, &str)>> {
    let digits = arg.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Ok(None);
    }
    let (num, rest) = arg.split_at(digits);
    if (num.len() > 1 && num.starts_with('0')) || (num == "0" && rest.starts_with(['x', 'X'])) {
        return Err(RuleError::unsupported(format!(
            "port `{arg}' with a leading zero"
        )));
    }
    Ok(num.parse::<u16>().ok().map(|p| (p, rest)))
}

/// libxt_NAT's `parse_to`: `ADDR[-ADDR][:PORT[-PORT]]`, ports first.
pub fn parse_nat_to(arg: &str, portok: bool) -> Result<NatRange> {
    if arg.contains('[') {
        return Err(RuleError::msg("Invalid address format"));
    }
    // More than one colon would be an IPv6 address.
    let colon = arg.find(':').filter(|&c| !arg[c + 1..].contains(':'));
    let (addrs, ports) = match colon {
        Some(c) => {
            let ports = parse_nat_ports(&arg[c + 1..], portok)?;
            // iptables takes a colon at the start (or, by a slip meant for
            // `[]:`, third) for "no address": the address is kept.
            if c == 0 {
                return Err(RuleError::unsupported(format!(
                    "a NAT range without an address (`{arg}')"
                )));
            }
            if c == 2 {
                return Err(RuleError::unsupported(format!(
                    "a NAT range without an address (`{arg}', which iptables reads as `:{}')",
                    &arg[c + 1..]
                )));
            }
            (&arg[..c], Some(ports))
        }
        None => (arg, None),
    };
    let (min, max) = match addrs.split_once('-') {
        Some((a, b)) => (a, Some(b)),
        None => (addrs, None),
    };
    let addr = |s: &str| {
        parse_inet_pton(s).ok_or_else(|| RuleError::msg(format!("Bad IP address \"{s}\"")))
    };
    let addr_min = addr(min)?;
    let addr_max = match max {
        Some(m) => addr(m)?,
        None => addr_min,
    };
    Ok(NatRange {
        addr_min,
        addr_max,
        ports,
    })
}

/// `inet_pton(AF_INET)`: four decimal parts of 0-255 without leading zeros.
fn parse_inet_pton(s: &str) -> Option<Ipv4Addr> {
    let a = parse_dotted(s)?;
    s.split('.')
        .all(|p| p.len() == 1 || !p.starts_with('0'))
        .then_some(a)
}

fn intrapositioned(opt: &str) -> RuleError {
    RuleError::unsupported(format!(
        "`{opt} ! VALUE' (intrapositioned negation; write `! {opt} VALUE')"
    ))
}

impl Builder {
    /// The tcp or udp match a `--sport`/`--dport` belongs to, loading it
    /// from `-p` when none was named, as iptables does.
    fn ports_match(&mut self, written: &str) -> Result<ProtoMatch> {
        if let Some(pm) = self
            .proto_matches
            .iter()
            .rev()
            .find(|p| matches!(p, ProtoMatch::Tcp | ProtoMatch::Udp))
        {
            return Ok(*pm);
        }
        let pm = match self.m.proto.as_ref().map(|p| p.value) {
            Some(proto::TCP) => ProtoMatch::Tcp,
            Some(proto::UDP) => ProtoMatch::Udp,
            _ => return Err(RuleError::msg(format!("unknown option \"{written}\""))),
        };
        self.proto_matches.push(pm);
        Ok(pm)
    }

    fn finish(self) -> Result<Rule> {
        let p = self.m.proto.clone();
        let is = |want: u8| p.as_ref().is_some_and(|p| p.value == want);
        let negated = p.as_ref().is_some_and(|p| p.negated);
        for pm in &self.proto_matches {
            let (want, name, lower) = match pm {
                ProtoMatch::Tcp => (proto::TCP, "TCP", "tcp"),
                ProtoMatch::Udp => (proto::UDP, "UDP", "udp"),
                ProtoMatch::Icmp => (proto::ICMP, "ICMP", "icmp"),
            };
            if !is(want) {
                return Err(RuleError::msg(format!(
                    "{name} match requires '-p {lower}'"
                )));
            }
            if negated {
                // iptables-legacy refuses this ("only valid for protocol"),
                // iptables-nft builds a rule that reads ports of packets of
                // any other protocol; neither is worth having.
                return Err(RuleError::msg(format!(
                    "{name} match requires '-p {lower}', not '! -p {lower}'"
                )));
            }
        }
        if self.proto_matches.contains(&ProtoMatch::Icmp) && self.m.icmp.is_none() {
            return Err(RuleError::msg(
                "icmp: option \"--icmp-type\" must be specified",
            ));
        }
        if self.multiport && self.m.multiport.is_none() {
            // (sic) iptables' words.
            return Err(RuleError::msg("multiport expection an option"));
        }
        if self.conntrack && self.m.ctstate.is_none() {
            return Err(RuleError::msg("conntrack: At least one option is required"));
        }
        let required = match &self.target {
            Some(Target::Nat(Nat::Snat(_))) => Some(("SNAT", Opt::ToSource, "--to-source")),
            Some(Target::Nat(Nat::Dnat(_))) => Some(("DNAT", Opt::ToDest, "--to-destination")),
            _ => None,
        };
        if let Some((name, _, long)) = required.filter(|(_, o, _)| !self.seen.contains(o)) {
            return Err(RuleError::msg(format!(
                "{name}: option \"{long}\" must be specified"
            )));
        }
        let mut m = self.m;
        for ports in [&mut m.sport, &mut m.dport] {
            *ports = ports.take().and_then(canonical_ports);
        }
        Ok(Rule::new(m, self.target.unwrap_or(Target::None)))
    }
}

/// A `--sport`/`--dport` as iptables-nft stores it: a full range is no
/// match at all, and `! 0:N` becomes `N+1:65535` (it is kept as "greater
/// than N", which reads back that way).
pub fn canonical_ports(p: Neg<PortRange>) -> Option<Neg<PortRange>> {
    let PortRange { lo, hi } = p.value;
    if !p.negated && lo == 0 && hi == u16::MAX {
        return None;
    }
    if p.negated && lo == 0 && lo < hi && hi < u16::MAX {
        return Some(Neg::new(PortRange {
            lo: hi + 1,
            hi: u16::MAX,
        }));
    }
    Some(p)
}

fn multiport_proto(m: &Matches) -> Result<()> {
    match &m.proto {
        None => Err(RuleError::msg(
            "multiport needs `-p tcp', `-p udp', `-p udplite', `-p sctp' or `-p dccp'",
        )),
        Some(p) if p.negated => Err(RuleError::msg(
            "multiport only works with TCP, UDP, UDPLITE, SCTP and DCCP",
        )),
        Some(p) if p.value == proto::TCP || p.value == proto::UDP => Ok(()),
        Some(p) if matches!(p.value, 33 | 132 | 136) => Err(RuleError::unsupported(format!(
            "-m multiport with -p {}",
            protocol_name(p.value).unwrap_or("?")
        ))),
        Some(_) => Err(RuleError::msg(
            "multiport only works with TCP, UDP, UDPLITE, SCTP and DCCP",
        )),
    }
}

/// `a.b.c.d`, `a.b.c.d/len` or `a.b.c.d/m.m.m.m` (contiguous), host bits
/// cleared as iptables does.
pub fn parse_net(s: &str) -> Result<Ipv4Net> {
    if s.as_bytes().contains(&b',') {
        return Err(RuleError::unsupported(format!("an address list (`{s}')")));
    }
    let (addr, mask) = match s.as_bytes().iter().position(|&c| c == b'/') {
        // At an ASCII byte, so at a character boundary.
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let addr = parse_dotted(addr).ok_or_else(|| {
        if addr.is_empty() || addr.bytes().all(|c| c.is_ascii_digit() || c == b'.') {
            RuleError::msg(format!("host/network `{addr}' not found"))
        } else {
            RuleError::unsupported(format!("host name `{addr}' (give an address)"))
        }
    })?;
    let len = match mask {
        None => 32,
        Some(m) => parse_mask(m)?,
    };
    let net = Ipv4Net::new(addr, len)
        .map_err(|_| RuleError::msg(format!("invalid mask `{len}' specified")))?;
    Ok(net.trunc())
}

fn parse_dotted(s: &str) -> Option<Ipv4Addr> {
    // Four parts of one to three digits each, every one at most 255.
    let mut b = [0u8; 4];
    let mut parts = s.as_bytes().split(|&c| c == b'.');
    for o in &mut b {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 3 {
            return None;
        }
        let mut v = 0u32;
        for &c in p {
            if !c.is_ascii_digit() {
                return None;
            }
            v = v * 10 + u32::from(c - b'0');
        }
        *o = u8::try_from(v).ok()?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Ipv4Addr::from(b))
}

fn parse_mask(m: &str) -> Result<u8> {
    let bad = || RuleError::msg(format!("invalid mask `{m}' specified"));
    if !m.is_empty() && m.bytes().all(|c| c.is_ascii_digit()) {
        if m.len() > 1 && m.starts_with('0') {
            return Err(bad());
        }
        return match m.parse::<u8>() {
            Ok(n) if n <= 32 => Ok(n),
            _ => Err(bad()),
        };
    }
    let mask = u32::from(parse_dotted(m).ok_or_else(bad)?);
    let len = mask.leading_ones();
    if mask.checked_shl(len).unwrap_or(0) != 0 {
        return Err(RuleError::unsupported(format!("non-contiguous mask `{m}'")));
    }
    Ok(len as u8)
}

/// An interface name, `NAME+` for a prefix.
pub fn parse_iface(s: &str) -> Result<Iface> {
    if s.len() + 1 > 16 {
        return Err(RuleError::msg(format!(
            "interface name `{s}' must be shorter than IFNAMSIZ (15)"
        )));
    }
    if s.is_empty() {
        return Err(RuleError::msg("Empty interface is likely to be undesired"));
    }
    if s.contains(['/', ' ', '\t', '\n']) {
        return Err(RuleError::msg(format!(
            "weird character in interface `{s}' ('/' and ' ' are not allowed by the kernel)"
        )));
    }
    if s.contains(['"', '\\']) {
        // iptables-save would write it unquoted and iptables-restore could
        // not read it back.
        return Err(RuleError::unsupported(format!(
            "a quote or backslash in interface name `{s}'"
        )));
    }
    Ok(match s.strip_suffix('+') {
        Some(prefix) => Iface {
            name: prefix.to_string(),
            wildcard: true,
        },
        None => Iface {
            name: s.to_string(),
            wildcard: false,
        },
    })
}

/// The protocols iptables names itself before asking `/etc/protocols`
/// (`xtables_chain_protos`), so `-p 58` prints as `ipv6-icmp`.
const CHAIN_PROTOS: &[(&str, u8)] = &[
    ("tcp", 6),
    ("sctp", 132),
    ("udp", 17),
    ("udplite", 136),
    ("icmp", 1),
    ("ipv6-icmp", 58),
    ("icmpv6", 58),
    ("esp", 50),
    ("ah", 51),
    ("mobility-header", 135),
    ("ipv6-mh", 135),
    ("mh", 135),
    ("all", 0),
];

/// The name iptables prints for a protocol number (`proto_to_name`).
pub fn protocol_name(p: u8) -> Option<&'static str> {
    CHAIN_PROTOS
        .iter()
        .find(|(_, n)| *n == p)
        .map(|(name, _)| *name)
        .or_else(|| {
            if p == 0 {
                None
            } else {
                netdb::protocol_name(p)
            }
        })
}

/// `-p`: a number 0-255 or a name, case-insensitive (iptables lowercases it).
pub fn parse_protocol(s: &str) -> Result<u8> {
    let lower = s.to_ascii_lowercase();
    if !lower.is_empty() && lower.bytes().all(|c| c.is_ascii_digit()) {
        return lower
            .parse::<u8>()
            .map_err(|_| RuleError::msg(format!("unknown protocol \"{s}\" specified")));
    }
    CHAIN_PROTOS
        .iter()
        .find(|(name, _)| *name == lower)
        .map(|(_, n)| *n)
        .or_else(|| netdb::protocol_by_name(&lower))
        .ok_or_else(|| RuleError::msg(format!("unknown protocol \"{s}\" specified")))
}

fn parse_port(s: &str) -> Result<u16> {
    if !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) {
        if s.len() > 1 && s.starts_with('0') {
            // iptables reads it as octal (strtoul base 0): refuse the guess.
            return Err(RuleError::unsupported(format!(
                "port `{s}' with a leading zero"
            )));
        }
        return s
            .parse::<u16>()
            .map_err(|_| RuleError::msg(format!("invalid port/service `{s}' specified")));
    }
    if netdb::TCP_SERVICES
        .iter()
        .chain(netdb::UDP_SERVICES)
        .any(|(_, n)| *n == s)
    {
        return Err(RuleError::unsupported(format!(
            "service name `{s}' (give the port number)"
        )));
    }
    Err(RuleError::msg(format!(
        "invalid port/service `{s}' specified"
    )))
}

/// `--sport`/`--dport`: `N`, `N:M`, `:M` (from 0) or `N:` (to 65535).
pub fn parse_port_range(s: &str) -> Result<PortRange> {
    let (lo, hi) = match s.split_once(':') {
        None => {
            let p = parse_port(s)?;
            (p, p)
        }
        Some((a, b)) => {
            let lo = if a.is_empty() { 0 } else { parse_port(a)? };
            let hi = if b.is_empty() {
                u16::MAX
            } else {
                parse_port(b)?
            };
            (lo, hi)
        }
    };
    if lo > hi {
        return Err(RuleError::msg("invalid portrange (min > max)"));
    }
    Ok(PortRange { lo, hi })
}

/// `-m multiport` lists: `a,b,c:d`, at most 15 ports, a range counting two.
pub fn parse_multiport(s: &str) -> Result<Vec<PortRange>> {
    let mut out = Vec::new();
    let mut used = 0;
    for item in s.split(',') {
        if used >= 15 {
            return Err(RuleError::msg("too many ports specified"));
        }
        match item.split_once(':') {
            None => {
                let p = parse_port(item)?;
                out.push(PortRange { lo: p, hi: p });
                used += 1;
            }
            Some((a, b)) => {
                if used == 14 {
                    return Err(RuleError::msg("too many ports specified"));
                }
                let lo = parse_port(a)?;
                let hi = parse_port(b)?;
                if lo >= hi {
                    return Err(RuleError::msg("invalid portrange specified"));
                }
                out.push(PortRange { lo, hi });
                used += 2;
            }
        }
    }
    Ok(out)
}

/// iptables' ICMP type names (`libxt_icmp.h`): name, type, codes. The first
/// entry for a type and code range is the name `iptables -L` prints.
pub const ICMP_NAMES: &[(&str, u8, u8, u8)] = &[
    ("any", 0xFF, 0, 0xFF),
    ("echo-reply", 0, 0, 0xFF),
    ("pong", 0, 0, 0xFF),
    ("destination-unreachable", 3, 0, 0xFF),
    ("network-unreachable", 3, 0, 0),
    ("host-unreachable", 3, 1, 1),
    ("protocol-unreachable", 3, 2, 2),
    ("port-unreachable", 3, 3, 3),
    ("fragmentation-needed", 3, 4, 4),
    ("source-route-failed", 3, 5, 5),
    ("network-unknown", 3, 6, 6),
    ("host-unknown", 3, 7, 7),
    ("network-prohibited", 3, 9, 9),
    ("host-prohibited", 3, 10, 10),
    ("TOS-network-unreachable", 3, 11, 11),
    ("TOS-host-unreachable", 3, 12, 12),
    ("communication-prohibited", 3, 13, 13),
    ("host-precedence-violation", 3, 14, 14),
    ("precedence-cutoff", 3, 15, 15),
    ("source-quench", 4, 0, 0xFF),
    ("redirect", 5, 0, 0xFF),
    ("network-redirect", 5, 0, 0),
    ("host-redirect", 5, 1, 1),
    ("TOS-network-redirect", 5, 2, 2),
    ("TOS-host-redirect", 5, 3, 3),
    ("echo-request", 8, 0, 0xFF),
    ("ping", 8, 0, 0xFF),
    ("router-advertisement", 9, 0, 0xFF),
    ("router-solicitation", 10, 0, 0xFF),
    ("time-exceeded", 11, 0, 0xFF),
    ("ttl-exceeded", 11, 0, 0xFF),
    ("ttl-zero-during-transit", 11, 0, 0),
    ("ttl-zero-during-reassembly", 11, 1, 1),
    ("parameter-problem", 12, 0, 0xFF),
    ("ip-header-bad", 12, 0, 0),
    ("required-option-missing", 12, 1, 1),
    ("timestamp-request", 13, 0, 0xFF),
    ("timestamp-reply", 14, 0, 0xFF),
    ("address-mask-request", 17, 0, 0xFF),
    ("address-mask-reply", 18, 0, 0xFF),
];

/// `--icmp-type`: a name or an unambiguous prefix of one (any case), `T` or
/// `T/C`.
pub fn parse_icmp_type(s: &str) -> Result<IcmpType> {
    let mut found: Option<&(&str, u8, u8, u8)> = None;
    for entry in ICMP_NAMES {
        // A prefix of the name, in any case.
        let name = entry.0.as_bytes();
        if name.len() < s.len() || !name[..s.len()].eq_ignore_ascii_case(s.as_bytes()) {
            continue;
        }
        if let Some(prev) = found {
            return Err(RuleError::msg(format!(
                "Ambiguous ICMP type `{s}': `{}' or `{}'?",
                prev.0, entry.0
            )));
        }
        found = Some(entry);
    }
    if let Some(&(_, typ, code_lo, code_hi)) = found {
        return Ok(IcmpType {
            typ,
            code_lo,
            code_hi,
        });
    }
    let (t, code) = match s.split_once('/') {
        Some((t, c)) => (t, Some(c)),
        None => (s, None),
    };
    let (tlo, thi) = icmp_range(t).ok_or_else(|| unknown_icmp(s, t))?;
    if tlo != thi {
        return Err(RuleError::msg("ICMP type range not supported"));
    }
    let (code_lo, code_hi) = match code {
        None => (0, 0xFF),
        Some(c) => icmp_range(c).ok_or_else(|| {
            if c.is_empty() || c.starts_with(|ch: char| ch.is_ascii_digit()) {
                unknown_icmp(s, c)
            } else {
                RuleError::msg(format!("Unknown ICMP code `{s}'"))
            }
        })?,
    };
    if code_lo > code_hi {
        return Err(RuleError::msg(format!("Unknown ICMP code `{s}'")));
    }
    if code.is_some() && code_lo != code_hi {
        // iptables-save writes only the first code, so a range would not
        // survive a save and restore.
        return Err(RuleError::unsupported(format!(
            "an ICMP code range (`{s}')"
        )));
    }
    if tlo == 0xFF && code.is_some() {
        return Err(RuleError::unsupported(format!(
            "a code with ICMP type 255 (`{s}'; iptables-save writes it as `any')"
        )));
    }
    Ok(IcmpType {
        typ: tlo,
        code_lo,
        code_hi,
    })
}

fn unknown_icmp(whole: &str, part: &str) -> RuleError {
    match part.find(|c: char| !c.is_ascii_digit()) {
        Some(i) if i > 0 => RuleError::msg(format!(
            "unknown character {}",
            part[i..].chars().next().unwrap_or('?')
        )),
        _ => RuleError::msg(format!("Unknown ICMP type `{whole}'")),
    }
}

/// `N` or `N:M`, decimal, each 0-255.
fn icmp_range(s: &str) -> Option<(u8, u8)> {
    let num = |x: &str| -> Option<u8> {
        if x.is_empty() || !x.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        x.parse().ok()
    };
    match s.split_once(':') {
        None => num(s).map(|n| (n, n)),
        Some((a, b)) => Some((num(a)?, num(b)?)),
    }
}

/// `--ctstate`: a comma list; each word may be any prefix of a state name,
/// any case, as in iptables.
pub fn parse_ctstate(s: &str) -> Result<u8> {
    const NAMES: &[(&str, u8)] = &[
        ("INVALID", ctstate::INVALID),
        ("NEW", ctstate::NEW),
        ("ESTABLISHED", ctstate::ESTABLISHED),
        ("RELATED", ctstate::RELATED),
        ("UNTRACKED", ctstate::UNTRACKED),
        ("SNAT", 0),
        ("DNAT", 0),
    ];
    let mut bits = 0;
    let mut rest = s;
    loop {
        let (word, more) = match rest.split_once(',') {
            Some((w, m)) => (w, Some(m)),
            None => (rest, None),
        };
        let hit = (!word.is_empty())
            .then(|| {
                NAMES.iter().find(|(name, _)| {
                    name.len() >= word.len() && name[..word.len()].eq_ignore_ascii_case(word)
                })
            })
            .flatten();
        match hit {
            None => return Err(RuleError::msg(format!("Bad ctstate \"{rest}\""))),
            Some((name, 0)) => {
                return Err(RuleError::unsupported(format!("--ctstate {name}")));
            }
            Some((_, bit)) => bits |= bit,
        }
        match more {
            Some(m) => rest = m,
            None => break,
        }
    }
    Ok(bits)
}

/// `--reject-with`: like iptables, any prefix (any case) of a type's name or
/// alias; the first type in iptables' order wins.
pub fn parse_reject_with(s: &str) -> Result<RejectWith> {
    // iptables' table, in its order; `None` for types netctl lacks.
    const TYPES: &[(&str, &str, Option<RejectWith>)] = &[
        (
            "icmp-net-unreachable",
            "net-unreach",
            Some(RejectWith::IcmpNetUnreachable),
        ),
        (
            "icmp-host-unreachable",
            "host-unreach",
            Some(RejectWith::IcmpHostUnreachable),
        ),
        ("icmp-proto-unreachable", "proto-unreach", None),
        (
            "icmp-port-unreachable",
            "port-unreach",
            Some(RejectWith::IcmpPortUnreachable),
        ),
        ("icmp-net-prohibited", "net-prohib", None),
        ("icmp-host-prohibited", "host-prohib", None),
        ("tcp-reset", "tcp-rst", Some(RejectWith::TcpReset)),
        (
            "icmp-admin-prohibited",
            "admin-prohib",
            Some(RejectWith::IcmpAdminProhibited),
        ),
    ];
    let prefix_of = |full: &str| full.len() >= s.len() && full[..s.len()].eq_ignore_ascii_case(s);
    if !s.is_empty() {
        for (name, alias, with) in TYPES {
            if prefix_of(name) || prefix_of(alias) {
                return with.ok_or_else(|| RuleError::unsupported(format!("--reject-with {name}")));
            }
        }
    }
    Err(RuleError::msg(format!("unknown reject type \"{s}\"")))
}

/// The LOG prefix rules: iptables truncates past 29 bytes without a word,
/// which netctl will not do to a prefix someone greps logs for.
pub fn check_log_prefix(s: &str) -> Result<()> {
    if s.is_empty() {
        return Err(RuleError::msg(
            "Argument must have a minimum length of 1 characters",
        ));
    }
    if s.contains('\n') {
        return Err(RuleError::msg("Newlines not allowed in --log-prefix"));
    }
    if s.contains('\0') {
        return Err(RuleError::msg("NUL not allowed in --log-prefix"));
    }
    if s.len() > 29 {
        return Err(RuleError::unsupported(format!(
            "a --log-prefix of {} bytes (at most 29; iptables would cut it to `{}')",
            s.len(),
            String::from_utf8_lossy(&s.as_bytes()[..29])
        )));
    }
    Ok(())
}

fn parse_target(name: &str, goto: bool) -> Result<Target> {
    if name.is_empty() {
        return Err(RuleError::msg("Invalid target name (too short)"));
    }
    let verdict = match name {
        "ACCEPT" => Some(Target::Accept),
        "DROP" => Some(Target::Drop),
        "RETURN" => Some(Target::Return),
        "REJECT" => Some(Target::Reject(RejectWith::default())),
        "LOG" => Some(Target::Log {
            prefix: String::new(),
        }),
        // The range is filled in by `--to-source`/`--to-destination`,
        // which `Builder::finish` insists on.
        "SNAT" | "DNAT" => {
            let none = NatRange {
                addr_min: Ipv4Addr::UNSPECIFIED,
                addr_max: Ipv4Addr::UNSPECIFIED,
                ports: None,
            };
            Some(Target::Nat(if name == "SNAT" {
                Nat::Snat(none)
            } else {
                Nat::Dnat(none)
            }))
        }
        "MASQUERADE" => Some(Target::Nat(Nat::Masquerade(None))),
        "REDIRECT" => Some(Target::Nat(Nat::Redirect(None))),
        _ => None,
    };
    if let Some(t) = verdict {
        if goto {
            return Err(RuleError::unsupported(format!(
                "-g {name} (-g takes a user-defined chain)"
            )));
        }
        return Ok(t);
    }
    if EXTENSION_TARGETS.contains(&name) {
        return Err(RuleError::unsupported(format!("-j {name}")));
    }
    Ok(if goto {
        Target::Goto(name.to_string())
    } else {
        Target::Jump(name.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> Result<Rule> {
        parse_rule_spec(&split_line(s)?)
    }

    fn err(s: &str) -> String {
        match spec(s) {
            Ok(r) => panic!("{s:?} parsed as {r:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn lines_without_quotes_split_alike() {
        for line in [
            "",
            " \t ",
            "-A INPUT -j ACCEPT",
            "  -A\tINPUT  -s 10.0.0.1/32\r -j DROP\t",
            r"-A X -j LOG --log-prefix a\b 'c",
            "-A X -i \u{e9}th0 -j DROP",
        ] {
            let words: Vec<String> = words(line).into_iter().map(str::to_string).collect();
            assert_eq!(words, split_line(line).unwrap(), "{line:?}");
        }
    }

    #[test]
    fn tokenizer_follows_iptables_restore() {
        assert_eq!(
            split_line("  -A  INPUT\t-j ACCEPT ").unwrap(),
            ["-A", "INPUT", "-j", "ACCEPT"]
        );
        assert_eq!(
            split_line(r#"--log-prefix "a \"b\\ c" x"#).unwrap(),
            ["--log-prefix", r#"a "b\ c"#, "x"]
        );
        assert_eq!(split_line(r#"ab"c d"e"#).unwrap(), ["abc d", "e"]);
        assert_eq!(split_line(r#"x "" y"#).unwrap(), ["x", "", "y"]);
        assert_eq!(split_line(r"a\b 'c d'").unwrap(), [r"a\b", "'c", "d'"]);
        assert!(split_line(r#"-j LOG --log-prefix "abc"#).is_err());
    }

    #[test]
    fn full_rule() {
        let r = spec(
            "-s 10.0.0.0/255.0.0.0 ! -d 1.2.3.4 -i eth+ ! -o docker0 -p TCP -m tcp ! --sport 1:1023 --dport 80 -m conntrack --ctstate new,Est -j REJECT --reject-with tcp-reset",
        )
        .unwrap();
        let m = &r.matches;
        assert_eq!(m.src, Some(Neg::new("10.0.0.0/8".parse().unwrap())));
        assert_eq!(m.dst, Some(Neg::not("1.2.3.4/32".parse().unwrap())));
        assert_eq!(
            m.in_iface,
            Some(Neg::new(Iface {
                name: "eth".into(),
                wildcard: true
            }))
        );
        assert_eq!(
            m.out_iface,
            Some(Neg::not(Iface {
                name: "docker0".into(),
                wildcard: false
            }))
        );
        assert_eq!(m.proto, Some(Neg::new(6)));
        assert_eq!(m.sport, Some(Neg::not(PortRange { lo: 1, hi: 1023 })));
        assert_eq!(m.dport, Some(Neg::new(PortRange { lo: 80, hi: 80 })));
        assert_eq!(
            m.ctstate,
            Some(Neg::new(ctstate::NEW | ctstate::ESTABLISHED))
        );
        assert_eq!(r.target, Target::Reject(RejectWith::TcpReset));
        assert_eq!(r.slot, 0);
    }

    #[test]
    fn long_options_and_attached_values() {
        let a = spec("--protocol tcp --destination-port 22 --source=1.2.3.4 --in-interface eth0 --jump ACCEPT").unwrap();
        let b = spec("-ptcp --dport 22 -s1.2.3.4 -ieth0 -jACCEPT").unwrap();
        let c = spec("-p tcp -m tcp --dport 22 -s 1.2.3.4/32 -i eth0 -j ACCEPT").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
    }

    #[test]
    fn normalises_what_iptables_drops() {
        let none = Rule::new(Matches::default(), Target::None);
        assert_eq!(spec("-s 0.0.0.0/0 -d 1.2.3.4/0").unwrap(), none);
        assert_eq!(spec("-i + -p all").unwrap(), none);
        assert_eq!(spec("-p 0").unwrap(), none);
        let r = spec("-p tcp --dport 0:65535 -m tcp").unwrap();
        assert_eq!(r.matches.dport, None);
        assert_eq!(spec("-p tcp --dport :").unwrap().matches.dport, None);
        // iptables-nft keeps `! 0:N` as "> N" and reads it back as N+1:65535.
        assert_eq!(
            spec("-p tcp ! --dport 0:22 ! --sport :1").unwrap().matches,
            spec("-p tcp --dport 23:65535 --sport 2:65535")
                .unwrap()
                .matches
        );
        assert_eq!(
            spec("-p tcp ! --dport 0").unwrap().matches.dport,
            Some(Neg::not(PortRange { lo: 0, hi: 0 }))
        );
        assert_eq!(
            spec("-s 10.1.2.3/16").unwrap().matches.src,
            Some(Neg::new("10.1.0.0/16".parse().unwrap()))
        );
        assert_eq!(
            spec("! -i +").unwrap().matches.in_iface,
            Some(Neg::not(Iface {
                name: String::new(),
                wildcard: true
            }))
        );
        assert_eq!(
            spec("-p tcp --sport :80 --dport 1024:")
                .unwrap()
                .matches
                .sport,
            Some(Neg::new(PortRange { lo: 0, hi: 80 }))
        );
    }

    #[test]
    fn protocols() {
        assert_eq!(parse_protocol("ICMP").unwrap(), 1);
        assert_eq!(parse_protocol("all").unwrap(), 0);
        assert_eq!(parse_protocol("47").unwrap(), 47);
        assert_eq!(parse_protocol("gre").unwrap(), 47);
        assert_eq!(parse_protocol("ipv6-icmp").unwrap(), 58);
        assert_eq!(
            parse_protocol("256").unwrap_err().to_string(),
            "unknown protocol \"256\" specified"
        );
        assert_eq!(protocol_name(58), Some("ipv6-icmp"));
        assert_eq!(protocol_name(47), Some("gre"));
        assert_eq!(protocol_name(253), None);
        assert_eq!(protocol_name(0), Some("all"));
    }

    #[test]
    fn icmp_types() {
        let t = |s: &str| parse_icmp_type(s).unwrap();
        assert_eq!(
            t("echo-request"),
            IcmpType {
                typ: 8,
                code_lo: 0,
                code_hi: 255
            }
        );
        assert_eq!(t("ECHO-REQ"), t("8"));
        assert_eq!(
            t("port-unreachable"),
            IcmpType {
                typ: 3,
                code_lo: 3,
                code_hi: 3
            }
        );
        assert_eq!(t("3/3"), t("port-unr"));
        assert_eq!(
            t("any"),
            IcmpType {
                typ: 255,
                code_lo: 0,
                code_hi: 255
            }
        );
        assert_eq!(t("255"), t("any"));
        assert_eq!(t("8:8"), t("8"));
        let e = |s: &str| parse_icmp_type(s).unwrap_err().to_string();
        assert_eq!(
            e("echo"),
            "Ambiguous ICMP type `echo': `echo-reply' or `echo-request'?"
        );
        assert_eq!(e("8:9"), "ICMP type range not supported");
        assert_eq!(e("8x"), "unknown character x");
        assert_eq!(e("256"), "Unknown ICMP type `256'");
        assert!(e("8/0:5").contains("not supported"));
        assert!(e("255/3").contains("not supported"));
    }

    #[test]
    fn ctstates() {
        use ctstate::*;
        assert_eq!(
            parse_ctstate("RELATED,ESTABLISHED").unwrap(),
            RELATED | ESTABLISHED
        );
        assert_eq!(
            parse_ctstate("n,e,inv,u").unwrap(),
            NEW | ESTABLISHED | INVALID | UNTRACKED
        );
        assert_eq!(
            parse_ctstate("NEW,").unwrap_err().to_string(),
            "Bad ctstate \"\""
        );
        assert_eq!(
            parse_ctstate(",NEW").unwrap_err().to_string(),
            "Bad ctstate \",NEW\""
        );
        assert_eq!(
            parse_ctstate("NEWX").unwrap_err().to_string(),
            "Bad ctstate \"NEWX\""
        );
        assert_eq!(
            parse_ctstate("SNAT").unwrap_err().to_string(),
            "--ctstate SNAT is not supported"
        );
    }

    #[test]
    fn reject_types() {
        assert_eq!(
            parse_reject_with("port-unreach").unwrap(),
            RejectWith::IcmpPortUnreachable
        );
        assert_eq!(
            parse_reject_with("ICMP-HOST-UNREACHABLE").unwrap(),
            RejectWith::IcmpHostUnreachable
        );
        assert_eq!(parse_reject_with("tcp-rst").unwrap(), RejectWith::TcpReset);
        assert_eq!(
            parse_reject_with("icmp-").unwrap(),
            RejectWith::IcmpNetUnreachable
        );
        assert_eq!(
            parse_reject_with("admin-prohib").unwrap(),
            RejectWith::IcmpAdminProhibited
        );
        assert!(
            parse_reject_with("icmp-proto-unreachable")
                .unwrap_err()
                .to_string()
                .contains("not supported")
        );
        assert_eq!(
            parse_reject_with("bogus").unwrap_err().to_string(),
            "unknown reject type \"bogus\""
        );
    }

    #[test]
    fn ports() {
        assert_eq!(parse_multiport("1,2,3:5").unwrap().len(), 3);
        assert!(parse_multiport("1,2,3,4,5,6,7,8,9,10,11,12,13,14,15").is_ok());
        assert!(parse_multiport("1,2,3,4,5,6,7,8,9,10,11,12,13,14:15").is_ok());
        assert!(parse_multiport("1:2,3,4,5,6,7,8,9,10,11,12,13,14,15").is_ok());
        assert_eq!(
            parse_multiport("1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16")
                .unwrap_err()
                .to_string(),
            "too many ports specified"
        );
        assert_eq!(
            parse_multiport("1,2,3,4,5,6,7,8,9,10,11,12,13,14,15:16")
                .unwrap_err()
                .to_string(),
            "too many ports specified"
        );
        assert_eq!(
            parse_multiport("5:5").unwrap_err().to_string(),
            "invalid portrange specified"
        );
        assert_eq!(
            parse_multiport("5:").unwrap_err().to_string(),
            "invalid port/service `' specified"
        );
        assert_eq!(
            parse_port_range("5:3").unwrap_err().to_string(),
            "invalid portrange (min > max)"
        );
        assert_eq!(
            parse_port_range("65536").unwrap_err().to_string(),
            "invalid port/service `65536' specified"
        );
        assert!(
            parse_port_range("ssh")
                .unwrap_err()
                .to_string()
                .contains("not supported")
        );
        assert!(
            parse_port_range("010")
                .unwrap_err()
                .to_string()
                .contains("not supported")
        );
    }

    #[test]
    fn addresses_and_interfaces() {
        assert_eq!(
            parse_net("10.0.0.1/255.255.255.255").unwrap().to_string(),
            "10.0.0.1/32"
        );
        assert_eq!(
            parse_net("1.2.3.4/33").unwrap_err().to_string(),
            "invalid mask `33' specified"
        );
        assert_eq!(
            parse_net("1.2.3.4/08").unwrap_err().to_string(),
            "invalid mask `08' specified"
        );
        assert!(
            parse_net("1.2.3.4/255.0.255.0")
                .unwrap_err()
                .to_string()
                .contains("not supported")
        );
        assert!(
            parse_net("localhost")
                .unwrap_err()
                .to_string()
                .contains("not supported")
        );
        assert!(
            parse_net("1.2.3.4,5.6.7.8")
                .unwrap_err()
                .to_string()
                .contains("not supported")
        );
        assert_eq!(
            parse_net("1.2.3").unwrap_err().to_string(),
            "host/network `1.2.3' not found"
        );
        assert_eq!(
            parse_iface("0123456789abcdef").unwrap_err().to_string(),
            "interface name `0123456789abcdef' must be shorter than IFNAMSIZ (15)"
        );
        assert!(parse_iface("0123456789abcde").is_ok());
        assert!(parse_iface("0123456789abcde+").is_err());
        assert!(parse_iface("a b").is_err());
        assert_eq!(
            parse_iface("a+b").unwrap(),
            Iface {
                name: "a+b".into(),
                wildcard: false
            }
        );
    }

    #[test]
    fn log_prefix() {
        assert_eq!(
            spec(r#"-j LOG --log-prefix "hello world: ""#)
                .unwrap()
                .target,
            Target::Log {
                prefix: "hello world: ".into()
            }
        );
        assert_eq!(
            spec("-j LOG").unwrap().target,
            Target::Log {
                prefix: String::new()
            }
        );
        assert!(spec(&format!("-j LOG --log-prefix {}", "x".repeat(29))).is_ok());
        assert!(err(&format!("-j LOG --log-prefix {}", "x".repeat(30))).contains("not supported"));
        assert_eq!(
            err(r#"-j LOG --log-prefix """#),
            "Argument must have a minimum length of 1 characters"
        );
        assert_eq!(err("-j LOG --log-level 5"), "--log-level is not supported");
    }

    #[test]
    fn refusals_in_iptables_words() {
        assert_eq!(err("--dport 22"), "unknown option \"--dport\"");
        assert_eq!(err("--dport 22 -p tcp"), "unknown option \"--dport\"");
        assert_eq!(err("-m tcp --dport 22"), "TCP match requires '-p tcp'");
        assert_eq!(
            err("-p udp -m tcp --dport 22"),
            "TCP match requires '-p tcp'"
        );
        assert_eq!(
            err("-p icmp -m udp --dport 8"),
            "UDP match requires '-p udp'"
        );
        assert!(err("! -p tcp --dport 22").contains("not '! -p tcp'"));
        assert_eq!(
            err("-p tcp -m icmp --icmp-type 8"),
            "ICMP match requires '-p icmp'"
        );
        assert_eq!(err("--icmp-type 8"), "unknown option \"--icmp-type\"");
        assert_eq!(
            err("-p icmp -m icmp"),
            "icmp: option \"--icmp-type\" must be specified"
        );
        assert_eq!(
            err("-m conntrack"),
            "conntrack: At least one option is required"
        );
        assert_eq!(err("--ctstate NEW"), "unknown option \"--ctstate\"");
        assert_eq!(err("-p tcp -m multiport"), "multiport expection an option");
        assert_eq!(
            err("-m multiport --dports 1"),
            "multiport needs `-p tcp', `-p udp', `-p udplite', `-p sctp' or `-p dccp'"
        );
        assert_eq!(
            err("! -p tcp -m multiport --dports 1"),
            "multiport only works with TCP, UDP, UDPLITE, SCTP and DCCP"
        );
        assert_eq!(
            err("-p tcp -m multiport --dports 1 --sports 2"),
            "multiport: option \"--source-ports\" cannot be used together with \"--destination-ports\"."
        );
        assert_eq!(
            err("-p tcp --dport 1 --dport 2"),
            "Only one `--destination-port' allowed"
        );
        assert_eq!(
            err("-p udp --sport 1 --source-port 2"),
            "udp: option \"--source-port\" can only be used once."
        );
        assert_eq!(
            err("-s 1.1.1.1 -s 2.2.2.2"),
            "multiple -s flags not allowed"
        );
        assert_eq!(err("-j ACCEPT -g X"), "multiple -j flags not allowed");
        assert_eq!(err("! ! -s 1.2.3.4"), "multiple consecutive ! not allowed");
        assert_eq!(err("! -j ACCEPT"), "cannot have ! before -j");
        assert_eq!(err("! -m tcp"), "unexpected ! flag before --match");
        assert_eq!(err("-s 1.2.3.4 !"), "nothing appropriate following !");
        assert_eq!(err("! -p all"), "rule would never match protocol");
        assert_eq!(
            err("-j REJECT ! --reject-with tcp-reset"),
            "REJECT: option \"--reject-with\" cannot be inverted."
        );
        assert_eq!(
            err("-j DROP --reject-with tcp-reset"),
            "unknown option \"--reject-with\""
        );
        assert_eq!(err("-j"), "option \"-j\" requires an argument");
        assert_eq!(err(r#"-j """#), "Invalid target name (too short)");
    }

    #[test]
    fn unsupported_things_say_so() {
        assert_eq!(err("-m comment --comment x"), "-m comment is not supported");
        assert_eq!(err("-j NETMAP"), "-j NETMAP is not supported");
        assert_eq!(err("-f"), "-f is not supported");
        assert_eq!(err("-p tcp --syn"), "--syn is not supported");
        assert_eq!(err("-c 1 2"), "-c is not supported");
        assert_eq!(err("-m state --state NEW"), "-m state is not supported");
        assert!(
            err("-m conntrack --ctstate NEW -m conntrack --ctstate NEW").contains("not supported")
        );
        assert!(err("-p tcp --dport ! 22").contains("not supported"));
    }

    #[test]
    fn targets() {
        assert_eq!(
            spec("-j DOCKER").unwrap().target,
            Target::Jump("DOCKER".into())
        );
        assert_eq!(
            spec("-g DOCKER").unwrap().target,
            Target::Goto("DOCKER".into())
        );
        assert_eq!(
            spec("-j accept").unwrap().target,
            Target::Jump("accept".into())
        );
        assert_eq!(spec("").unwrap().target, Target::None);
        assert_eq!(spec("-j RETURN").unwrap().target, Target::Return);
        assert_eq!(
            spec("-j REJECT").unwrap().target,
            Target::Reject(RejectWith::IcmpPortUnreachable)
        );
        assert!(err("-g ACCEPT").contains("not supported"));
    }

    fn nat(s: &str) -> Nat {
        match spec(s).unwrap_or_else(|e| panic!("{s}: {e}")).target {
            Target::Nat(n) => n,
            t => panic!("{s}: {t:?}"),
        }
    }

    fn range(min: &str, max: &str, ports: Option<(u16, u16)>) -> NatRange {
        NatRange {
            addr_min: min.parse().unwrap(),
            addr_max: max.parse().unwrap(),
            ports: ports.map(|(lo, hi)| PortRange { lo, hi }),
        }
    }

    #[test]
    fn nat_targets() {
        assert_eq!(
            nat("-j SNAT --to-source 192.0.2.1"),
            Nat::Snat(range("192.0.2.1", "192.0.2.1", None))
        );
        assert_eq!(
            nat("-p tcp -j SNAT --to-source 1.2.3.4:1000-2000"),
            Nat::Snat(range("1.2.3.4", "1.2.3.4", Some((1000, 2000))))
        );
        assert_eq!(
            nat("-p udp -j SNAT --to-source 192.0.2.1-192.0.2.9:1000"),
            Nat::Snat(range("192.0.2.1", "192.0.2.9", Some((1000, 1000))))
        );
        assert_eq!(
            nat("-p tcp -j DNAT --to-destination=172.17.0.2:80"),
            Nat::Dnat(range("172.17.0.2", "172.17.0.2", Some((80, 80))))
        );
        assert_eq!(
            nat("-j DNAT --to-destination 10.0.0.1-10.0.0.1"),
            Nat::Dnat(range("10.0.0.1", "10.0.0.1", None))
        );
        assert_eq!(nat("-j MASQUERADE"), Nat::Masquerade(None));
        assert_eq!(
            nat("-p tcp -j MASQUERADE --to-ports 1024-65535"),
            Nat::Masquerade(Some(PortRange {
                lo: 1024,
                hi: 65535
            }))
        );
        assert_eq!(nat("-j REDIRECT"), Nat::Redirect(None));
        assert_eq!(
            nat("-p udp -j REDIRECT --to-ports 8080"),
            Nat::Redirect(Some(PortRange { lo: 8080, hi: 8080 }))
        );
        // iptables looks at the protocol number, negated or not, and lets
        // icmp, sctp and dccp have ports too (validate refuses those).
        for p in ["! -p tcp", "-p icmp", "-p sctp", "-p dccp"] {
            assert!(
                nat(&format!("{p} -j MASQUERADE --to-ports 5"))
                    .ports()
                    .is_some()
            );
        }
        // The same through the edit commands, which share the parser.
        let e = crate::rules::edit::parse_edit(&[
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-p",
            "tcp",
            "-j",
            "DNAT",
            "--to-destination",
            "172.17.0.2:80",
        ])
        .unwrap();
        assert!(matches!(
            e.op,
            crate::rules::edit::EditOp::Append { rule: Rule { target: Target::Nat(Nat::Dnat(r)), .. }, .. }
                if r == range("172.17.0.2", "172.17.0.2", Some((80, 80)))
        ));
    }

    /// Each answer as iptables 1.8.9 gives it (legacy and nf_tables alike),
    /// tried in a throwaway namespace.
    #[test]
    fn nat_refusals_in_iptables_words() {
        let need = "Need TCP, UDP, SCTP or DCCP with port specification";
        assert_eq!(
            err("-j SNAT"),
            "SNAT: option \"--to-source\" must be specified"
        );
        assert_eq!(
            err("-j DNAT"),
            "DNAT: option \"--to-destination\" must be specified"
        );
        assert_eq!(err("-j SNAT --to-source 1.2.3.4:1000"), need);
        assert_eq!(err("-j SNAT --to-source :1000"), need);
        assert_eq!(err("-j DNAT --to-destination 1.2.3.4:80 -p tcp"), need);
        assert_eq!(err("-p 47 -j DNAT --to-destination 1.2.3.4:5"), need);
        assert_eq!(err("-j MASQUERADE --to-ports 1000"), need);
        assert_eq!(err("-j REDIRECT --to-ports 80"), need);
        assert_eq!(
            err("-p tcp -j SNAT --to-source 1.2.3.4:1000:2000"),
            "Bad IP address \"1.2.3.4:1000:2000\""
        );
        assert_eq!(
            err("-p tcp -j SNAT --to-source 1.2.3.4:2000-1000"),
            "Port range `1000' funky"
        );
        assert_eq!(
            err("-p tcp -j MASQUERADE --to-ports 2000-1000x"),
            "Port range `1000x' funky"
        );
        assert_eq!(
            err("-p tcp -j SNAT --to-source 1.2.3.4:65536"),
            "Port `65536' not valid"
        );
        assert_eq!(
            err("-p tcp -j SNAT --to-source 1.2.3.4:1000-"),
            "Port `' not valid"
        );
        assert_eq!(
            err("-p tcp -j SNAT --to-source 1.2.3.4:"),
            "Port `' not valid"
        );
        assert_eq!(
            err("-p tcp -j SNAT --to-source 1.2.3.4:-5"),
            "Port `-5' not valid"
        );
        assert_eq!(
            err("-p tcp -j SNAT --to-source 1.2.3.4:nosuch"),
            "Port `nosuch' not valid"
        );
        assert_eq!(
            err("-p tcp -j SNAT --to-source 1.2.3.4:5-ssh"),
            "Port `ssh' not valid"
        );
        assert_eq!(
            err("-p tcp -j SNAT --to-source 1.2.3.4:1000x"),
            "Garbage after port value: `x'"
        );
        assert_eq!(
            err("-p tcp -j SNAT --to-source 1.2.3.4:5-6-7"),
            "Garbage after port range: `-7'"
        );
        assert_eq!(
            err("-p tcp -j MASQUERADE --to-ports 1000:2000"),
            "Invalid port:port syntax - use dash"
        );
        assert_eq!(err("-j SNAT --to-source 1.2.3"), "Bad IP address \"1.2.3\"");
        assert_eq!(err("-j SNAT --to-source foo"), "Bad IP address \"foo\"");
        assert_eq!(
            err("-j SNAT --to-source 01.2.3.4"),
            "Bad IP address \"01.2.3.4\""
        );
        assert_eq!(
            err("-j SNAT --to-source 1.2.3.256"),
            "Bad IP address \"1.2.3.256\""
        );
        assert_eq!(
            err("-j SNAT --to-source 1.2.3.4/24"),
            "Bad IP address \"1.2.3.4/24\""
        );
        assert_eq!(
            err("-j SNAT --to-source 1.2.3.4,1.2.3.5"),
            "Bad IP address \"1.2.3.4,1.2.3.5\""
        );
        assert_eq!(err("-j SNAT --to-source 1.2.3.4-"), "Bad IP address \"\"");
        assert_eq!(err("-j SNAT --to-source -1.2.3.4"), "Bad IP address \"\"");
        assert_eq!(err(r#"-j SNAT --to-source """#), "Bad IP address \"\"");
        assert_eq!(
            err("-j SNAT --to-source 1.2.3.4-1.2.3.5-1.2.3.6"),
            "Bad IP address \"1.2.3.5-1.2.3.6\""
        );
        assert_eq!(
            err("-p tcp -j SNAT --to-source [1.2.3.4]:80"),
            "Invalid address format"
        );
        assert_eq!(
            err("-j SNAT --to-source 1.2.3.4 --to-source 1.2.3.5"),
            "SNAT: option \"--to-source\" can only be used once."
        );
        assert_eq!(
            err("-j SNAT ! --to-source 1.2.3.4"),
            "SNAT: option \"--to-source\" cannot be inverted."
        );
        assert_eq!(
            err("-p tcp -j MASQUERADE ! --to-ports 80"),
            "MASQUERADE: option \"--to-ports\" cannot be inverted."
        );
        assert_eq!(
            err("-p tcp -j MASQUERADE --to-ports 5 --to-ports 6"),
            "MASQUERADE: option \"--to-ports\" can only be used once."
        );
        assert_eq!(
            err("-j SNAT --to-destination 1.2.3.4"),
            "unknown option \"--to-destination\""
        );
        assert_eq!(
            err("-j SNAT --to-source 1.2.3.4 --to-ports 1000"),
            "unknown option \"--to-ports\""
        );
        assert_eq!(
            err("-j DNAT --to-destination 1.2.3.4 --to-ports 5"),
            "unknown option \"--to-ports\""
        );
        assert_eq!(
            err("-j REDIRECT --to-source 1.2.3.4"),
            "unknown option \"--to-source\""
        );
        assert_eq!(err("-p tcp --to-ports 80"), "unknown option \"--to-ports\"");
        assert_eq!(err("-p tcp --random"), "unknown option \"--random\"");
        assert_eq!(
            err("-j ACCEPT --to-source 1.2.3.4"),
            "unknown option \"--to-source\""
        );
        assert_eq!(
            err("--to-source 1.2.3.4 -j SNAT"),
            "unknown option \"--to-source\""
        );
        assert_eq!(
            err("-p tcp -j REDIRECT --to-ports 5 --random-fully"),
            "unknown option \"--random-fully\""
        );
        assert_eq!(
            err("-j DNAT --to-destination 1.2.3.4 --random-fully"),
            "unknown option \"--random-fully\""
        );
        assert_eq!(
            err("-j MASQUERADE --persistent"),
            "unknown option \"--persistent\""
        );
    }

    /// What iptables takes and netctl does not implement says so.
    #[test]
    fn unsupported_nat_options_say_so() {
        for (s, what) in [
            ("-j SNAT --to-source 1.2.3.4 --random", "--random"),
            (
                "-j SNAT --to-source 1.2.3.4 --random-fully",
                "--random-fully",
            ),
            ("-j SNAT --to-source 1.2.3.4 --persistent", "--persistent"),
            (
                "-j DNAT --to-destination 1.2.3.4 --persistent",
                "--persistent",
            ),
            ("-j DNAT --to-destination 1.2.3.4 --random", "--random"),
            ("-p tcp -j MASQUERADE --random", "--random"),
            ("-j MASQUERADE --random-fully", "--random-fully"),
            ("-p tcp -j REDIRECT --to-ports 80 --random", "--random"),
        ] {
            assert_eq!(err(s), format!("{what} is not supported"), "{s}");
        }
        assert_eq!(
            err("-p tcp -j SNAT --to-source 12:80"),
            "a NAT range without an address (`12:80', which iptables reads as `:80') \
             is not supported"
        );
        for s in [
            // Port-only: iptables keeps the address (and reads `12:80` so).
            "-p tcp -j SNAT --to-source :1000",
            "-p tcp -j SNAT --to-source 12:80",
            "-p udp -j DNAT --to-destination :80",
            // Shifted port maps.
            "-p tcp -j DNAT --to-destination 1.2.3.4:80-90/85",
            "-p tcp -j MASQUERADE --to-ports 5-6/7",
            // Service names, and numbers C reads in octal or hex.
            "-p tcp -j SNAT --to-source 1.2.3.4:ssh",
            "-p tcp -j MASQUERADE --to-ports ssh",
            "-p tcp -j SNAT --to-source 1.2.3.4:010",
            "-p tcp -j SNAT --to-source 1.2.3.4:0x10",
            "-p tcp -j MASQUERADE --to-ports 5-06",
        ] {
            assert!(err(s).ends_with("is not supported"), "{s}: {}", err(s));
        }
        // In a ruleset text, with the line.
        let e = parse(
            "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -j MASQUERADE\n\
             -A POSTROUTING -o eth0 -j SNAT --to-source 192.0.2.1 --persistent\nCOMMIT\n",
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "line 4: --persistent is not supported");
        let e = parse("*nat\n-A PREROUTING -p tcp -j REDIRECT --to-ports 80 --random\nCOMMIT\n")
            .unwrap_err();
        assert_eq!(e.to_string(), "line 2: --random is not supported");
    }

    #[test]
    fn nat_ports_and_addresses() {
        let p = |s: &str| parse_nat_ports(s, true);
        assert_eq!(p("0").unwrap(), PortRange { lo: 0, hi: 0 });
        assert_eq!(p("5-5").unwrap(), PortRange { lo: 5, hi: 5 });
        assert_eq!(p("0-65535").unwrap(), PortRange { lo: 0, hi: 65535 });
        assert!(p("65536").is_err());
        assert!(p("99999999999999999999").is_err());
        assert_eq!(
            parse_nat_ports("5", false).unwrap_err().to_string(),
            "Need TCP, UDP, SCTP or DCCP with port specification"
        );
        let to = |s: &str| parse_nat_to(s, true).unwrap();
        assert_eq!(to("0.0.0.0"), range("0.0.0.0", "0.0.0.0", None));
        // iptables takes a descending range as it is (validate refuses it).
        assert_eq!(to("1.2.3.9-1.2.3.4"), range("1.2.3.9", "1.2.3.4", None));
        assert_eq!(
            to("10.0.0.1-10.0.0.3:1-2"),
            range("10.0.0.1", "10.0.0.3", Some((1, 2)))
        );
        // Ports are read first, as iptables does.
        assert_eq!(
            parse_nat_to("foo:80x", true).unwrap_err().to_string(),
            "Garbage after port value: `x'"
        );
    }

    const TEXT: &str = "# Generated by iptables-save v1.8.9 (nf_tables) on Thu Nov 26 15:01:04 2026
*filter
:INPUT DROP [123:4567]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
[5:300] -A INPUT -i eth0 -p tcp -m tcp --dport 80 -j DOCKER
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A DOCKER -j RETURN
COMMIT
# Completed on Thu Nov 26 15:01:04 2026
*nat
:PREROUTING ACCEPT [0:0]
-A PREROUTING -j LOG --log-prefix \"nat \"
COMMIT
";

    #[test]
    fn ruleset_text() {
        let p = parse_text(TEXT).unwrap();
        let rs = &p.ruleset;
        let f = rs.table(Table::Filter).unwrap();
        assert_eq!(f.chains.len(), 4);
        assert_eq!(f.chain("INPUT").unwrap().policy, Some(Policy::Drop));
        assert_eq!(f.chain("INPUT").unwrap().rules.len(), 2);
        assert_eq!(f.chain("DOCKER").unwrap().policy, None);
        assert_eq!(
            rs.chain(Table::Nat, "POSTROUTING").unwrap().policy,
            Some(Policy::Accept)
        );
        assert!(rs.table(Table::Raw).unwrap().is_default());
        assert_eq!(p.tables, [Table::Filter, Table::Nat]);
        assert_eq!(
            p.counters,
            [
                (
                    CounterRef::Policy {
                        table: Table::Filter,
                        chain: "INPUT".into()
                    },
                    Counters {
                        packets: 123,
                        bytes: 4567
                    }
                ),
                (
                    CounterRef::Rule {
                        table: Table::Filter,
                        chain: "INPUT".into(),
                        index: 0
                    },
                    Counters {
                        packets: 5,
                        bytes: 300
                    }
                ),
            ]
        );
        assert!(p.validate().is_ok());
        assert_eq!(parse(TEXT).unwrap(), p.ruleset);
    }

    fn text_err(s: &str) -> String {
        parse(s).unwrap_err().to_string()
    }

    #[test]
    fn ruleset_text_errors_carry_line_numbers() {
        assert_eq!(
            text_err("*foo\nCOMMIT\n"),
            "line 1: table name 'foo' invalid"
        );
        assert_eq!(
            text_err("*filter\n:INPUT RETURN [0:0]\nCOMMIT\n"),
            "line 2: Bad policy name. (`RETURN': a policy is ACCEPT or DROP)"
        );
        assert_eq!(
            text_err("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\n"),
            "line 4: COMMIT expected (table filter is not committed)"
        );
        assert!(
            text_err("*filter\n-A nochain -j ACCEPT\nCOMMIT\n")
                .starts_with("line 2: No chain/target/match by that name.")
        );
        assert_eq!(
            text_err(
                "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\n\n-A INPUT -m comment --comment x -j ACCEPT\nCOMMIT\n"
            ),
            "line 7: -m comment is not supported"
        );
        assert!(
            text_err("*filter\n:uc DROP [0:0]\nCOMMIT\n")
                .starts_with("line 2: Bad built-in chain name.")
        );
        assert!(text_err("-A INPUT -j ACCEPT\n").starts_with("line 1: "));
        assert!(text_err("*filter\n*nat\nCOMMIT\n").starts_with("line 2: "));
        assert!(text_err("*filter\n-I INPUT -j ACCEPT\nCOMMIT\n").contains("not supported"));
        assert!(
            text_err("*filter\n-t nat -A INPUT -j ACCEPT\nCOMMIT\n")
                .starts_with("line 2: -t cannot")
        );
        assert!(text_err("*filter\n[1:x] -A INPUT\nCOMMIT\n").starts_with("line 2: bad counters"));
        assert_eq!(
            text_err("*filter\n:ACCEPT - [0:0]\nCOMMIT\n"),
            "line 2: chain name may not clash with target name"
        );
        assert_eq!(
            text_err("*nat\n:POSTROUTING DROP [0:0]\nCOMMIT\n")
                .lines()
                .next(),
            Some(
                "line 2: The \"nat\" table is not intended for filtering, the use of DROP is therefore inhibited."
            )
        );
        assert_eq!(
            text_err("*filter\n-A INPUT -o + -j ACCEPT\nCOMMIT\n"),
            "line 2: Can't use -o with INPUT"
        );
        // Whole-ruleset checks come back with the line of the rule.
        assert_eq!(
            text_err(
                "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -j ACCEPT\n-A INPUT -o eth0 -j ACCEPT\nCOMMIT\n"
            ),
            "line 4: Can't use -o with INPUT"
        );
        assert_eq!(
            text_err("*nat\n-A PREROUTING -j DROP\nCOMMIT\n")
                .lines()
                .next(),
            Some(
                "line 2: The \"nat\" table is not intended for filtering, the use of DROP is therefore inhibited."
            )
        );
    }

    #[test]
    fn a_second_section_replaces_the_table() {
        let rs = parse("*filter\n-A INPUT -j DROP\nCOMMIT\n*filter\n-A FORWARD -j DROP\nCOMMIT\n")
            .unwrap();
        assert!(rs.chain(Table::Filter, "INPUT").unwrap().rules.is_empty());
        assert_eq!(rs.chain(Table::Filter, "FORWARD").unwrap().rules.len(), 1);
    }
}

//! Counters out of `iptables-save -c` text (the kernel's, and netctl's,
//! which prints the same format), and their comparison: per table, chain,
//! policy and rule position.

use std::collections::BTreeMap;
use std::fmt;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}:{}]", self.packets, self.bytes)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainCounts {
    /// Policy and its counter (built-in chains).
    pub policy: Option<(String, Count)>,
    /// Each rule's counter and its text (without the counter).
    pub rules: Vec<(Count, String)>,
}

/// `(table, chain)` → counters.
pub type Saved = BTreeMap<(String, String), ChainCounts>;

fn parse_count(s: &str) -> Option<Count> {
    let s = s.strip_prefix('[')?.strip_suffix(']')?;
    let (p, b) = s.split_once(':')?;
    Some(Count {
        packets: p.parse().ok()?,
        bytes: b.parse().ok()?,
    })
}

/// Parses `iptables-save -c` output.
pub fn parse(text: &str) -> anyhow::Result<Saved> {
    let mut out = Saved::new();
    let mut table = String::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        let bad = || anyhow::anyhow!("line {}: cannot read {line:?}", n + 1);
        if line.is_empty() || line.starts_with('#') || line == "COMMIT" {
            continue;
        }
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_string();
        } else if let Some(rest) = line.strip_prefix(':') {
            let mut w = rest.split_whitespace();
            let chain = w.next().ok_or_else(bad)?.to_string();
            let pol = w.next().ok_or_else(bad)?;
            let c = w.next().and_then(parse_count).unwrap_or_default();
            let e = out.entry((table.clone(), chain)).or_default();
            if pol != "-" {
                e.policy = Some((pol.to_string(), c));
            }
        } else if line.starts_with('[') {
            let (c, rule) = line.split_once(' ').ok_or_else(bad)?;
            let c = parse_count(c).ok_or_else(bad)?;
            let rule = rule.trim();
            let chain = rule
                .strip_prefix("-A ")
                .and_then(|r| r.split_whitespace().next())
                .ok_or_else(bad)?;
            out.entry((table.clone(), chain.to_string()))
                .or_default()
                .rules
                .push((c, rule.to_string()));
        } else if let Some(rule) = line.strip_prefix("-A ") {
            let chain = rule.split_whitespace().next().ok_or_else(bad)?;
            out.entry((table.clone(), chain.to_string()))
                .or_default()
                .rules
                .push((Count::default(), line.to_string()));
        } else {
            return Err(bad());
        }
    }
    Ok(out)
}

/// One counter that differs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diff {
    pub table: String,
    pub chain: String,
    /// `None`: the policy.
    pub rule: Option<usize>,
    pub text: String,
    pub left: Option<Count>,
    pub right: Option<Count>,
}

impl fmt::Display for Diff {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |c: &Option<Count>| c.map_or("(absent)".to_string(), |c| c.to_string());
        let what = match self.rule {
            None => format!("{}/{} policy", self.table, self.chain),
            Some(i) => format!("{}/{} rule {}", self.table, self.chain, i + 1),
        };
        write!(
            f,
            "{what}: {} vs {}   {}",
            show(&self.left),
            show(&self.right),
            self.text
        )
    }
}

/// Every counter that differs between `a` and `b`. A chain missing on one
/// side counts as zeros there (an empty table may be left out).
pub fn compare(a: &Saved, b: &Saved) -> Vec<Diff> {
    let mut out = Vec::new();
    let empty = ChainCounts::default();
    let keys: std::collections::BTreeSet<_> = a.keys().chain(b.keys()).cloned().collect();
    for k in keys {
        let (ca, cb) = (a.get(&k).unwrap_or(&empty), b.get(&k).unwrap_or(&empty));
        let pa = ca.policy.as_ref().map(|p| p.1);
        let pb = cb.policy.as_ref().map(|p| p.1);
        if pa.unwrap_or_default() != pb.unwrap_or_default() {
            out.push(Diff {
                table: k.0.clone(),
                chain: k.1.clone(),
                rule: None,
                text: ca
                    .policy
                    .as_ref()
                    .or(cb.policy.as_ref())
                    .map(|p| p.0.clone())
                    .unwrap_or_default(),
                left: pa,
                right: pb,
            });
        }
        for i in 0..ca.rules.len().max(cb.rules.len()) {
            let (ra, rb) = (ca.rules.get(i), cb.rules.get(i));
            if ra.map(|r| r.0) != rb.map(|r| r.0) {
                out.push(Diff {
                    table: k.0.clone(),
                    chain: k.1.clone(),
                    rule: Some(i),
                    text: ra.or(rb).map(|r| r.1.clone()).unwrap_or_default(),
                    left: ra.map(|r| r.0),
                    right: rb.map(|r| r.0),
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_iptables_save_c() {
        let t = "# x\n*filter\n:INPUT DROP [1:84]\n:uc - [0:0]\n[1:84] -A INPUT -i lo -j uc\n[0:0] -A uc -j RETURN\nCOMMIT\n";
        let s = parse(t).unwrap();
        let i = &s[&("filter".into(), "INPUT".into())];
        assert_eq!(
            i.policy,
            Some((
                "DROP".into(),
                Count {
                    packets: 1,
                    bytes: 84
                }
            ))
        );
        assert_eq!(i.rules[0].1, "-A INPUT -i lo -j uc");
        let mut s2 = s.clone();
        s2.get_mut(&("filter".into(), "uc".into())).unwrap().rules[0]
            .0
            .packets = 3;
        let d = compare(&s, &s2);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].rule, Some(0));
    }
}

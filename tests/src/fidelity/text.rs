//! A ruleset as `iptables-restore` text, written by netctl's own
//! `rules::save`, with every table present: a restore replaces only the
//! tables it names, and a table left out (netctl's save omits default
//! ones) would keep the previous case's rules in the kernel.

use netctl::rules::model::{Ruleset, Table};
use netctl::rules::save::{SaveOptions, save_with};

pub fn restore_text(rs: &Ruleset) -> String {
    Table::ALL
        .iter()
        .map(|&t| {
            save_with(
                rs,
                &SaveOptions {
                    table: Some(t),
                    ..SaveOptions::default()
                },
            )
        })
        .collect()
}

/// The ruleset as a person reads it: `iptables-save` text without the
/// tables that are default (every built-in chain ACCEPT, no rules), which
/// a restore leaves as they are in a fresh namespace.
pub fn minimal_text(rs: &Ruleset) -> String {
    let t: String = netctl::rules::save::save(rs)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    if t.is_empty() {
        "# (no rules: every table default, every policy ACCEPT)\n".into()
    } else {
        t
    }
}

/// A ruleset from `iptables-save` text, shaped as the harness's cases are:
/// every table present (empty ones too) and counter slots assigned.
pub fn ruleset(text: &str) -> anyhow::Result<Ruleset> {
    let mut rs = netctl::rules::parse::parse(text)?;
    for t in Table::ALL {
        rs.table_mut(t);
    }
    rs.assign_slots()?;
    Ok(rs)
}

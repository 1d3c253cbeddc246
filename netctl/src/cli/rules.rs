//! `netctl rules`: iptables' command line over a topology's datapath rules.

use std::io::Read as _;

use anyhow::{Context, Result, bail};

use super::args::TopoOpt;
use netctl::rules::edit::{self, EditOp};
use netctl::rules::list::{self, ListOptions};
use netctl::rules::live;
use netctl::rules::model::Table;
use netctl::rules::parse::{self, table_by_name};
use netctl::rules::save::{self, SaveOptions};
use netctl::topology::store;

pub async fn run(topology: Option<String>, args: Vec<String>) -> Result<()> {
    let name = super::datapath::pick(&TopoOpt { topology })?;
    let Some(t) = store::load(&name)? else {
        bail!("topology {name:?} is not applied");
    };
    let rest = &args[1..];
    match args[0].as_str() {
        "restore" => {
            let text = match rest {
                [] => read_stdin()?,
                [f] if f == "-" => read_stdin()?,
                [f] => std::fs::read_to_string(f).with_context(|| format!("read {f}"))?,
                _ => bail!("usage: netctl rules restore [FILE|-]"),
            };
            let rs = parse::parse(&text)?;
            let r = live::replace(&t, rs).await?;
            eprintln!(
                "rules of {name}: {} map elements live in {:.1} ms (old generation cleared in {:.1} ms)",
                r.elements,
                r.live_seconds * 1e3,
                r.cleanup_seconds * 1e3
            );
        }
        "save" => {
            let mut counters = false;
            let mut table = None;
            let mut it = rest.iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "-c" | "--counters" => counters = true,
                    "-t" | "--table" => table = Some(table_arg(it.next())?),
                    other => bail!("rules save: unknown option {other}"),
                }
            }
            let rs = live::current(&t)?;
            let c = live::counters(&t, &rs)?;
            let lookup = |s: u32| c.get(&s).copied().unwrap_or_default();
            let text = save::save_with(
                &rs,
                &SaveOptions {
                    counters: Some(&lookup),
                    rule_counters: counters,
                    table,
                },
            );
            print!("{text}");
        }
        "list" | "-L" | "--list" => {
            let mut opts = ListOptions::default();
            let mut table = Table::Filter;
            let mut chain = None;
            let mut it = rest.iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "-t" | "--table" => table = table_arg(it.next())?,
                    "--line-numbers" => opts.line_numbers = true,
                    "-v" | "--verbose" => opts.verbose = true,
                    "-n" | "--numeric" => opts.numeric = true,
                    "-x" | "--exact" => opts.exact = true,
                    flags if flags.starts_with('-') && !flags.starts_with("--") => {
                        for f in flags[1..].chars() {
                            match f {
                                'v' => opts.verbose = true,
                                'n' => opts.numeric = true,
                                'x' => opts.exact = true,
                                'L' => {}
                                other => bail!("rules list: unknown option -{other}"),
                            }
                        }
                    }
                    c if chain.is_none() => chain = Some(c.to_string()),
                    other => bail!("rules list: unexpected argument {other}"),
                }
            }
            let rs = live::current(&t)?;
            let c = live::counters(&t, &rs)?;
            let lookup = |s: u32| c.get(&s).copied().unwrap_or_default();
            print!(
                "{}",
                list::list(&rs, table, chain.as_deref(), &opts, &lookup)?
            );
        }
        "-S" | "--list-rules" => {
            let mut table = Table::Filter;
            let mut chain = None;
            let mut it = rest.iter();
            while let Some(a) = it.next() {
                match a.as_str() {
                    "-t" | "--table" => table = table_arg(it.next())?,
                    c if chain.is_none() => chain = Some(c.to_string()),
                    other => bail!("rules -S: unexpected argument {other}"),
                }
            }
            let rs = live::current(&t)?;
            match save::list_rules(&rs, table, chain.as_deref()) {
                Some(text) => print!("{text}"),
                None => bail!("No chain/target/match by that name."),
            }
        }
        _ => {
            let e = edit::parse_edit(&args)?;
            let before = live::current(&t)?;
            if let EditOp::Zero { .. } = e.op {
                let slots = e.zeroed_slots(&before)?;
                netctl::datapath::ruleset::zero_counters(&name, &slots)?;
                return Ok(());
            }
            let mut rs = before.clone();
            edit::apply(&mut rs, e)?;
            live::install(&t, &rs, &before).await?;
        }
    }
    Ok(())
}

fn table_arg(v: Option<&String>) -> Result<Table> {
    let Some(v) = v else {
        bail!("option -t needs a table name");
    };
    Ok(table_by_name(v)?)
}

fn read_stdin() -> Result<String> {
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .context("read standard input")?;
    Ok(s)
}

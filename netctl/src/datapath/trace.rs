//! `netctl trace`: switches the datapath's event logging on, prints the
//! events aya-log carries out of the kernel, and switches it off again.
//! When off, the programs pay one array lookup per packet and log nothing.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;

use aya::programs::SchedClassifier;
use netctl_common::config;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};

use super::bpf_error;
use super::inspect::set_config;
use super::pins::{self, progs_dir};
use crate::error::{Error, Result};

/// Prints each record on stdout, one line each.
struct Printer;

impl log::Log for Printer {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, r: &log::Record) {
        let mut out = std::io::stdout().lock();
        // LOG prefixes arrive NUL-padded to a fixed width (see the eBPF
        // side's `netctl_log`).
        let line = r.args().to_string().replace('\0', "");
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
    fn flush(&self) {}
}

/// The programs that log: the ports' ingress program and `lo`'s, as pinned
/// under `progs/` (only the current build's are there once it is applied).
fn program_ids(topology: &str) -> Result<BTreeSet<u32>> {
    let mut ids = BTreeSet::new();
    let dir = progs_dir(topology);
    let names = match std::fs::read_dir(&dir) {
        Ok(rd) => rd
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .collect::<Vec<_>>(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(Error::io(format!("read {}", dir.display()), e)),
    };
    if pins::link_pins(topology)?
        .iter()
        .all(|p| !pins::is_port_pin(p))
    {
        return Ok(ids);
    }
    for name in names {
        if !(name.starts_with("ingress-") || name.starts_with("local-")) {
            continue;
        }
        let p = dir.join(&name);
        let prog = SchedClassifier::from_pin(&p)
            .map_err(|e| bpf_error(&format!("open {}", p.display()), &e))?;
        let info = prog.info().map_err(|e| bpf_error("program info", &e))?;
        ids.insert(info.id());
    }
    Ok(ids)
}

/// Turns tracing off when dropped, also when the trace is interrupted.
struct TraceOn<'a>(&'a str);

impl Drop for TraceOn<'_> {
    fn drop(&mut self) {
        let _ = set_config(self.0, config::TRACE, 0);
    }
}

/// Streams events until `duration` passes (or Ctrl-C).
pub async fn run(topology: &str, duration: Option<Duration>) -> Result<()> {
    let ids = program_ids(topology)?;
    if ids.is_empty() {
        return Err(Error::Invalid(format!(
            "topology {topology} has no eBPF datapath attached"
        )));
    }
    let mut loggers = Vec::new();
    for id in ids {
        let l = aya_log::EbpfLogger::init_from_id_with_logger(id, Printer)
            .map_err(|e| bpf_error(&format!("attach to the event log of program {id}"), &e))?;
        // SAFETY: the ring buffer's fd is owned by `l`, which the AsyncFd
        // owns, so it stays open for as long as it is registered.
        let afd = unsafe { AsyncFd::register_with_interest(l, tokio::io::Interest::READABLE) }
            .map_err(|e| Error::io("watch event log", e.into()))?;
        loggers.push(afd);
    }
    // Ended by a signal, the process must still turn tracing off (`_off`):
    // an interrupted trace left on would cost every packet an event. Ctrl-C
    // and also `kill`, `timeout` and a closed terminal; the handlers are in
    // place before tracing goes on.
    let handler =
        |kind, name: &str| signal(kind).map_err(|e| Error::io(format!("{name} handler"), e));
    let mut int = handler(SignalKind::interrupt(), "SIGINT")?;
    let mut term = handler(SignalKind::terminate(), "SIGTERM")?;
    let mut hup = handler(SignalKind::hangup(), "SIGHUP")?;
    set_config(topology, config::TRACE, 1)?;
    let _off = TraceOn(topology);
    let drain = async {
        let mut set = tokio::task::JoinSet::new();
        for mut l in loggers {
            set.spawn(async move {
                loop {
                    let Ok(mut g) = l.readable_mut().await else {
                        return;
                    };
                    g.get_inner_mut().flush();
                    g.clear_ready();
                }
            });
        }
        while set.join_next().await.is_some() {}
    };
    let stop = async {
        let until = async {
            match duration {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = until => {}
            _ = int.recv() => {}
            _ = term.recv() => {}
            _ = hup.recv() => {}
        }
    };
    tokio::select! {
        _ = drain => {}
        _ = stop => {}
    }
    Ok(())
}

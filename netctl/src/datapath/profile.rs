//! What the datapath's programs cost per run: the kernel's own run-time
//! statistics (`BPF_ENABLE_STATS`), switched on only while a profile is
//! taken, read from the topology's pinned programs before and after.

use std::time::Duration;

use aya::programs::SchedClassifier;
use serde::Serialize;

use super::{bpf_error, pins};
use crate::error::{Error, Result};

/// One program over the profile's window.
#[derive(Debug, Clone, Serialize)]
pub struct ProgramCost {
    /// The pin's name under `progs/` (`ingress-…`, `egress-…`, `local-…`).
    pub program: String,
    pub runs: u64,
    pub run_ns: u64,
    /// Average nanoseconds per run (0 without runs).
    pub ns_per_run: f64,
}

fn sample(topology: &str) -> Result<Vec<(String, u64, u64)>> {
    let dir = pins::progs_dir(topology);
    let rd = std::fs::read_dir(&dir)
        .map_err(|e| Error::Invalid(format!("topology {topology} has no datapath ({e})")))?;
    let mut v = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let p = SchedClassifier::from_pin(e.path())
            .map_err(|err| bpf_error(&format!("open {}", e.path().display()), &err))?;
        let info = p.info().map_err(|err| bpf_error("program info", &err))?;
        v.push((name, info.run_count(), info.run_time().as_nanos() as u64));
    }
    v.sort();
    Ok(v)
}

/// Switches the kernel's run-time statistics on for `window` and reports
/// what each of the topology's programs cost meanwhile. The statistics add
/// two clock reads to every run of every BPF program on the machine while
/// they are on, which this reports in, too: compare profiles with each
/// other, not with benchmarks taken without.
pub fn take(topology: &str, window: Duration) -> Result<Vec<ProgramCost>> {
    let _on = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .map_err(|e| Error::Bpf(format!("enable BPF run-time statistics: {e}")))?;
    let before = sample(topology)?;
    std::thread::sleep(window);
    let after = sample(topology)?;
    Ok(after
        .into_iter()
        .map(|(program, runs, ns)| {
            let (r0, n0) = before
                .iter()
                .find(|(p, ..)| *p == program)
                .map_or((0, 0), |(_, r, n)| (*r, *n));
            let (runs, run_ns) = (runs.saturating_sub(r0), ns.saturating_sub(n0));
            ProgramCost {
                program,
                runs,
                run_ns,
                ns_per_run: if runs == 0 {
                    0.0
                } else {
                    run_ns as f64 / runs as f64
                },
            }
        })
        .collect())
}

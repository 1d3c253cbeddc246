//! The kernel's iptables as the benchmarks drive it: `iptables-restore` and
//! `iptables-save` of one backend, run inside a namespace the benchmark
//! made (the child enters it with `setns`), never in the root namespace.

use std::fs::File;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, anyhow};

use super::failed;
use super::ns::ns_command;

/// The kernel side's iptables commands.
pub struct Ipt {
    pub backend: String,
    pub restore: &'static str,
    pub save: &'static str,
    pub version: String,
}

impl Ipt {
    /// `legacy` (x_tables) or `nft` (nf_tables through iptables-nft).
    pub fn new(backend: &str) -> Result<Ipt> {
        let (restore, save, cmd) = match backend {
            "legacy" => (
                "iptables-legacy-restore",
                "iptables-legacy-save",
                "iptables-legacy",
            ),
            _ => ("iptables-nft-restore", "iptables-nft-save", "iptables-nft"),
        };
        let version = crate::sh::output(Command::new(cmd).arg("-V"))
            .ok_or_else(|| anyhow!("{cmd} is missing (apt-get install iptables)"))?
            .trim()
            .to_string();
        Ok(Ipt {
            backend: backend.to_string(),
            restore,
            save,
            version,
        })
    }

    /// `-w`: the legacy backend's lock is a file shared with every other
    /// iptables user of the machine; wait for it instead of failing.
    pub fn wait_args(&self) -> &'static [&'static str] {
        if self.backend == "legacy" {
            &["-w"]
        } else {
            &[]
        }
    }

    /// `iptables-restore` in namespace `ns` (called `name` in errors), the
    /// ruleset on stdin; timed from the spawn to its exit.
    pub fn restore_stdin(&self, ns: &File, name: &str, text: &str) -> Result<f64> {
        let t = Instant::now();
        let mut c = ns_command(ns, self.restore)
            .args(self.wait_args())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", self.restore))?;
        let mut stdin = c.stdin.take().unwrap();
        let text = text.to_string();
        // A writer thread, so that a restore failing early cannot block us.
        let w = std::thread::spawn(move || stdin.write_all(text.as_bytes()));
        let o = c.wait_with_output()?;
        let secs = t.elapsed().as_secs_f64();
        let _ = w.join();
        if !o.status.success() {
            return Err(failed(&format!("{} in {name}", self.restore), &o));
        }
        Ok(secs)
    }

    /// `iptables-save ARGS` in namespace `ns`: its output.
    pub fn save_in(&self, ns: &File, name: &str, args: &[&str]) -> Result<String> {
        let o = ns_command(ns, self.save)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot start {}", self.save))?;
        if !o.status.success() {
            return Err(failed(&format!("{} in {name}", self.save), &o));
        }
        Ok(String::from_utf8_lossy(&o.stdout).to_string())
    }
}

/// Which side of a kernel-against-netctl benchmark a sample is from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Kernel,
    Netctl,
}

pub(super) const SIDES: [Side; 2] = [Side::Kernel, Side::Netctl];

impl Side {
    pub(super) fn key(self) -> &'static str {
        match self {
            Side::Kernel => "kernel",
            Side::Netctl => "netctl",
        }
    }
    pub(super) fn idx(self) -> usize {
        SIDES.iter().position(|s| *s == self).unwrap()
    }
}

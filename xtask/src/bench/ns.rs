//! Named network namespaces as the benchmarks use them: opened once (never
//! the root namespace), then entered by the children they start.

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{Context, Result, ensure};

/// Opens `/run/netns/NAME`, refusing the namespace we run in (the root one).
pub fn open_ns(name: &str) -> Result<File> {
    let f = File::open(format!("/run/netns/{name}"))
        .with_context(|| format!("open /run/netns/{name}"))?;
    let (n, me) = (f.metadata()?, fs::metadata("/proc/self/ns/net")?);
    ensure!(
        (n.dev(), n.ino()) != (me.dev(), me.ino()),
        "/run/netns/{name} is our own (root) network namespace"
    );
    Ok(f)
}

/// A command whose child enters `ns` before exec (no `ip netns exec`).
pub fn ns_command(ns: &File, prog: &str) -> Command {
    let fd = ns.as_raw_fd();
    let mut c = Command::new(prog);
    // SAFETY: the closure runs in the forked child before exec and only makes
    // the async-signal-safe setns(2) call on an fd the child inherited (`ns`
    // stays open in the parent across the spawn). If it fails, the spawn
    // fails and the program is never run — never in the root namespace.
    unsafe {
        c.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    c
}

//! Named network namespaces as the benchmarks use them: opened once (never
//! the root namespace), then entered by the children they start.

use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

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

/// Enters the network namespace `ns` on the calling thread only (callers
/// are dedicated threads: sockets they then create belong to `ns`).
pub fn enter(ns: &File) -> Result<()> {
    // SAFETY: setns(2) on a valid, open namespace fd; it changes only the
    // calling thread's network namespace.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setns");
    }
    Ok(())
}

/// Pins the calling thread to `cpu`.
pub fn pin_thread(cpu: usize) -> Result<()> {
    // SAFETY: as in `super::two_cpus`; pid 0 is the calling thread.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) } != 0 {
        return Err(std::io::Error::last_os_error()).context("sched_setaffinity");
    }
    Ok(())
}

/// Runs `f` on a thread of its own that first enters `ns`: what `f` opens
/// (sockets, /proc/thread-self/net/…, /proc/sys/net/…) is `ns`'s.
pub fn in_ns<T: Send>(ns: &File, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns)?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("a thread inside a namespace panicked"))?
    })
}

/// Whether `ping` from inside `ns` reaches `to` (three tries of one echo,
/// one second each).
pub fn ping(ns: &File, to: Ipv4Addr) -> bool {
    (0..3).any(|_| {
        ns_command(ns, "ping")
            .args(["-q", "-c1", "-W1", &to.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

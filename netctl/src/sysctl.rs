//! Per-namespace sysctls. /proc/sys/net resolves against the network
//! namespace of the task that opens it, so reads and writes happen on a
//! thread that has joined the namespace.

use std::fs;

use crate::error::Result;
use crate::netns::{self, Netns};

const V4_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
const V6_FORWARD: &str = "/proc/sys/net/ipv6/conf/all/forwarding";

fn read_in(ns: &Netns, path: &'static str) -> Result<String> {
    let f = move || fs::read_to_string(path).map(|s| s.trim().to_string());
    match ns {
        Netns::Current => f().map_err(|e| crate::Error::io(format!("read {path}"), e)),
        _ => netns::run_in(ns, f),
    }
}

/// Whether IPv4 forwarding is on in `ns`.
pub fn ip_forward(ns: &Netns) -> Result<bool> {
    Ok(read_in(ns, V4_FORWARD)? == "1")
}

/// Switches IPv4 and IPv6 forwarding in `ns`.
pub fn set_ip_forward(ns: &Netns, on: bool) -> Result<()> {
    let v = if on { "1" } else { "0" };
    let f = move || -> std::io::Result<()> {
        fs::write(V4_FORWARD, v)?;
        // IPv6 may be disabled on the host; IPv4 forwarding still counts.
        let _ = fs::write(V6_FORWARD, v);
        Ok(())
    };
    match ns {
        Netns::Current => f().map_err(|e| crate::Error::io(format!("write {V4_FORWARD}"), e)),
        _ => netns::run_in(ns, f),
    }
}

/// Sets `accept_local` on device `dev` of the namespace this thread is in:
/// whether the kernel takes packets arriving there with one of its own
/// addresses as source.
pub fn set_accept_local_here(dev: &str, on: bool) -> Result<()> {
    let path = format!("/proc/sys/net/ipv4/conf/{dev}/accept_local");
    fs::write(&path, if on { "1" } else { "0" })
        .map_err(|e| crate::Error::io(format!("write {path}"), e))
}

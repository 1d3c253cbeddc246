//! iperf3 between two namespaces, as `bench datapath` and `bench rules` run
//! it: a one-off server in one namespace, the client in the other, the
//! client's JSON report returned.

use std::fs::{self, File};
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::{Value, json};

use super::failed;
use super::ns::ns_command;

/// How long a server may take to listen, a client to connect, and iperf3 to
/// finish beyond its nominal duration.
pub const READY_TIMEOUT: Duration = Duration::from_secs(5);
const EXTRA_TIME: Duration = Duration::from_secs(20);
/// The UDP payload size of the packet-rate test.
pub const UDP_LEN: usize = 64;

/// The first line of `iperf3 --version`, or an error when iperf3 is missing.
pub fn version() -> Result<String> {
    let v = crate::sh::output(Command::new("iperf3").arg("--version"))
        .ok_or_else(|| anyhow!("iperf3 is missing (apt-get install iperf3)"))?;
    Ok(v.lines().next().unwrap_or("").trim().to_string())
}

/// Where iperf3 runs: the client's and the server's namespaces, the address
/// the server binds and the client connects to, and the CPUs to pin the
/// client and the server to (`-A`), if any.
pub struct Ends<'a> {
    pub client: &'a File,
    pub server: &'a File,
    pub server_addr: Ipv4Addr,
    pub pin: Option<(usize, usize)>,
    /// The address and port the client connects to instead, when a DNAT
    /// between the two (a published port) leads to the server.
    pub dial: Option<SocketAddrV4>,
}

/// A child process that is killed (by its pid) and reaped when dropped.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Starts a one-off iperf3 server in the server namespace and waits until it
/// listens (read from /proc/PID/net/tcp*, which shows the child's namespace;
/// a probe connection would use up the `-1` server).
fn server(e: &Ends, port: u16) -> Result<Reaped> {
    let child = ns_command(e.server, "iperf3")
        .args(["-s", "-1", "-p", &port.to_string()])
        .args(["-B", &e.server_addr.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start iperf3 -s")?;
    let mut srv = Reaped(child);
    let pid = srv.0.id();
    let end = Instant::now() + READY_TIMEOUT;
    loop {
        if listening(pid, port) {
            return Ok(srv);
        }
        if let Some(st) = srv.0.try_wait()? {
            let mut err = String::new();
            if let Some(mut s) = srv.0.stderr.take() {
                let _ = s.read_to_string(&mut err);
            }
            bail!("iperf3 server exited ({st}): {}", err.trim());
        }
        ensure!(
            Instant::now() < end,
            "iperf3 server not listening on port {port} after {READY_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether process `pid` listens on TCP `port` (/proc/PID/net shows the
/// child's namespace).
fn listening(pid: u32, port: u16) -> bool {
    let want = format!(":{port:04X}");
    ["tcp", "tcp6"].iter().any(|f| {
        fs::read_to_string(format!("/proc/{pid}/net/{f}"))
            .map(|s| {
                s.lines().skip(1).any(|l| {
                    let c: Vec<&str> = l.split_whitespace().collect();
                    c.len() > 3 && c[1].ends_with(&want) && c[3] == "0A"
                })
            })
            .unwrap_or(false)
    })
}

/// Runs `cmd` to completion, killing it (by pid) if it outlives `limit`.
fn output_within(mut cmd: Command, limit: Duration) -> Result<Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    let pid = child.id() as libc::pid_t;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(o) => Ok(o?),
        Err(_) => {
            // SAFETY: kill(2) of our own child, not yet reaped (the waiting
            // thread reaps it after this), so the pid is still ours.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let _ = rx.recv();
            bail!("{:?} did not finish within {limit:?}", cmd.get_program())
        }
    }
}

/// One iperf3 test of `dur` on `port` (a fresh one each time: the server
/// serves one test; the client connects to `e.dial` if set), with `extra`
/// client options; its `-J` report.
pub fn client(e: &Ends, port: u16, dur: Duration, extra: &[&str]) -> Result<Value> {
    let mut srv = server(e, port)?;
    let dial = e.dial.unwrap_or(SocketAddrV4::new(e.server_addr, port));
    let mut c = ns_command(e.client, "iperf3");
    c.args(["-c", &dial.ip().to_string(), "-p", &dial.port().to_string()])
        .args([
            "-t",
            &dur.as_secs().to_string(),
            "-J",
            "--connect-timeout",
            "3000",
        ])
        .args(extra);
    if let Some((cc, sc)) = e.pin {
        c.args(["-A", &format!("{cc},{sc}")]);
    }
    let o = output_within(c, dur + EXTRA_TIME)?;
    let v: Value = serde_json::from_slice(&o.stdout).map_err(|_| failed("iperf3 -c", &o))?;
    if let Some(err) = v["error"].as_str() {
        bail!("iperf3: {err}");
    }
    ensure!(o.status.success(), "{}", failed("iperf3 -c", &o));
    // The one-off server exits after its test; give it a moment, then reap.
    let end = Instant::now() + READY_TIMEOUT;
    while srv.0.try_wait()?.is_none() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(v)
}

/// A TCP test's received rate (bits/s) from its `-J` report, and the
/// detail the benchmarks keep: bytes received, the sender's rate, its
/// retransmits, both ends' CPU use.
pub fn tcp_result(v: &Value) -> Result<(f64, Value)> {
    let end = &v["end"];
    let r = &end["sum_received"];
    let bps = r["bits_per_second"]
        .as_f64()
        .ok_or_else(|| anyhow!("iperf3 JSON has no end.sum_received.bits_per_second"))?;
    Ok((
        bps,
        json!({
            "received_bytes": r["bytes"],
            "sent_bps": end["sum_sent"]["bits_per_second"],
            "retransmits": end["sum_sent"]["retransmits"],
            "cpu": end["cpu_utilization_percent"],
        }),
    ))
}

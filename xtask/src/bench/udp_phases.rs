//! 64-byte UDP packets per second through several setups at once, taking
//! turns in short phases (every setup once per cycle, in a new shuffled
//! order each cycle), from one sender thread to one receiver thread per
//! setup.
//!
//! Why not one setup after the other: on a small VM the rate of 64-byte
//! UDP swings by ±25% from one run of a few seconds to the next (the host's
//! load, and whether the receiver sleeps between datagrams, which makes
//! each datagram cost the sender a wakeup), for every setup alike. Ratios
//! of runs seconds apart then need dozens of repetitions to say anything
//! about a few percent. Phases of 10 ms see the same machine state; the
//! ratio of their sums is steady to a fraction of a percent.
//!
//! Each datagram carries the number of the phase that sent it, so a
//! receiver running late still credits it to the right setup.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};

use super::iperf::{READY_TIMEOUT, UDP_LEN};
use super::ns::{enter, pin_thread};

/// How long one setup sends before the next takes over.
pub const PHASE: Duration = Duration::from_millis(10);
/// Sends between two looks at the clock.
const BURST: usize = 32;
/// How long the receivers wait for stragglers after the last phase.
const DRAIN: Duration = Duration::from_millis(200);

/// One setup: the sender's and receiver's namespaces, the receiver's address.
pub struct Target<'a> {
    pub client: &'a File,
    pub server: &'a File,
    pub addr: Ipv4Addr,
}

/// Per target, in the order given.
pub struct Outcome {
    /// Datagrams received per second of the target's phases.
    pub rx_pps: Vec<f64>,
    /// Datagrams sent per second of the target's phases.
    pub tx_pps: Vec<f64>,
    /// Sent but never received.
    pub lost: Vec<u64>,
    /// Seconds of the target's phases.
    pub seconds: Vec<f64>,
    /// Phases in all (each target had the same share, ±1).
    pub phases: usize,
}

/// Sends for `each` per target in all, in phases of [`PHASE`], to `port` of
/// every target. `pin`: (sender CPU, receivers' CPU).
pub fn run(
    targets: &[Target],
    each: Duration,
    port: u16,
    pin: Option<(usize, usize)>,
) -> Result<Outcome> {
    let n = targets.len();
    ensure!(n > 0, "no setup to send to");
    // Room for every phase, with a margin for phases cut short.
    let most = (each.as_secs_f64() * n as f64 / PHASE.as_secs_f64()).ceil() as usize + 2 * n;
    let stop = Arc::new(AtomicBool::new(false));
    let mut receivers = Vec::new();
    for t in targets {
        let ns = t.server.try_clone()?;
        let addr = SocketAddr::from((t.addr, port));
        let stopped = Arc::clone(&stop);
        let (ready_tx, ready_rx) = mpsc::channel();
        let h = std::thread::spawn(move || -> Result<Vec<u64>> {
            enter(&ns)?;
            if let Some((_, cpu)) = pin {
                pin_thread(cpu)?;
            }
            let s = UdpSocket::bind(addr).with_context(|| format!("bind {addr}"))?;
            s.set_read_timeout(Some(DRAIN))?;
            let _ = ready_tx.send(());
            let mut counts = vec![0u64; most];
            let mut buf = [0u8; 2 * UDP_LEN];
            loop {
                match s.recv(&mut buf) {
                    Ok(len) if len >= 4 => {
                        let phase = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
                        if let Some(c) = counts.get_mut(phase as usize) {
                            *c += 1;
                        }
                    }
                    Ok(_) => {}
                    Err(_) if stopped.load(Ordering::Relaxed) => return Ok(counts),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(e) => return Err(e).context("recv"),
                }
            }
        });
        if ready_rx.recv_timeout(READY_TIMEOUT).is_err() {
            stop.store(true, Ordering::Relaxed);
            return Err(match h.join() {
                Ok(Err(e)) => e,
                _ => anyhow!("UDP receiver in {addr} did not start"),
            });
        }
        receivers.push(h);
    }

    let clients: Vec<File> = targets
        .iter()
        .map(|t| t.client.try_clone())
        .collect::<std::io::Result<_>>()?;
    let dests: Vec<SocketAddr> = targets
        .iter()
        .map(|t| SocketAddr::from((t.addr, port)))
        .collect();
    let total = each * n as u32;
    let sender = std::thread::spawn(move || -> Result<Vec<(usize, u64, Duration)>> {
        // Each socket belongs to the namespace it was made in.
        let mut socks = Vec::new();
        for (ns, to) in clients.iter().zip(&dests) {
            enter(ns)?;
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect(to).with_context(|| format!("connect {to}"))?;
            socks.push(s);
        }
        if let Some((cpu, _)) = pin {
            pin_thread(cpu)?;
        }
        let mut buf = [0u8; UDP_LEN];
        let mut phases: Vec<(usize, u64, Duration)> = Vec::new();
        let mut order: Vec<usize> = (0..n).collect();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let start = Instant::now();
        'run: loop {
            // A new order every cycle: each setup follows each other one
            // about equally often (the one before leaves a backlog on the
            // receivers' CPU and state in the caches), and none runs twice
            // in a row.
            shuffle(&mut order, &mut rng);
            if n > 1 && phases.last().is_some_and(|p| p.0 == order[0]) {
                order.swap(0, n - 1);
            }
            for &i in &order {
                if start.elapsed() >= total || phases.len() >= most {
                    break 'run;
                }
                buf[..4].copy_from_slice(&(phases.len() as u32).to_le_bytes());
                let t0 = Instant::now();
                let mut sent = 0u64;
                while t0.elapsed() < PHASE {
                    for _ in 0..BURST {
                        // A full socket buffer or an ICMP error is a
                        // datagram not sent, nothing more.
                        if socks[i].send(&buf).is_ok() {
                            sent += 1;
                        }
                    }
                }
                phases.push((i, sent, t0.elapsed()));
            }
        }
        Ok(phases)
    });
    let sent = sender.join().map_err(|_| anyhow!("UDP sender panicked"));
    std::thread::sleep(DRAIN);
    stop.store(true, Ordering::Relaxed);
    let mut counts = Vec::new();
    for h in receivers {
        counts.push(h.join().map_err(|_| anyhow!("UDP receiver panicked"))??);
    }
    let phases = sent??;

    let mut rx = vec![0u64; n];
    let mut tx = vec![0u64; n];
    let mut secs = vec![0f64; n];
    for (p, (i, sent, took)) in phases.iter().enumerate() {
        rx[*i] += counts[*i][p];
        tx[*i] += sent;
        secs[*i] += took.as_secs_f64();
    }
    Ok(Outcome {
        rx_pps: (0..n).map(|i| rx[i] as f64 / secs[i]).collect(),
        tx_pps: (0..n).map(|i| tx[i] as f64 / secs[i]).collect(),
        lost: (0..n).map(|i| tx[i].saturating_sub(rx[i])).collect(),
        seconds: secs,
        phases: phases.len(),
    })
}

/// Fisher-Yates with xorshift64: a fixed sequence of orders, the same in
/// every run of the bench.
fn shuffle(v: &mut [usize], state: &mut u64) {
    for i in (1..v.len()).rev() {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        v.swap(i, (*state % (i as u64 + 1)) as usize);
    }
}

#[cfg(test)]
mod tests {
    use super::shuffle;

    #[test]
    fn orders_are_permutations_and_vary() {
        let mut rng = 1u64;
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let mut v: Vec<usize> = (0..5).collect();
            shuffle(&mut v, &mut rng);
            let mut sorted = v.clone();
            sorted.sort();
            assert_eq!(sorted, [0, 1, 2, 3, 4]);
            seen.insert(v);
        }
        assert!(seen.len() > 20, "{} orders in 50 cycles", seen.len());
    }
}

//! `netctl conntrack list|flush`: the datapath's connection tracking
//! table, printed the way `conntrack -L` prints the kernel's.

use std::fmt::Write as _;

use anyhow::Result;

use super::args::ConntrackCmd;
use super::commands::print_json;
use super::datapath::pick;
use netctl::datapath::conntrack::{self, Connection, Tuple};

pub fn run(c: ConntrackCmd) -> Result<()> {
    match c {
        ConntrackCmd::List { t, json } => {
            let topo = pick(&t)?;
            let v = conntrack::list(&topo)?;
            if json {
                return print_json(&v);
            }
            for c in &v {
                println!("{}", line(c));
            }
            // As conntrack does: the count on stderr, the table alone on
            // stdout.
            eprintln!(
                "netctl conntrack: {} flow entries have been shown.",
                v.len()
            );
        }
        ConntrackCmd::Flush { t } => {
            let topo = pick(&t)?;
            let f = conntrack::flush(&topo)?;
            println!(
                "topology {topo}: deleted {} connection(s) ({} more timed out, {} NAT reply tuple(s))",
                f.connections, f.expired, f.nat
            );
        }
    }
    Ok(())
}

fn tuple(s: &mut String, t: &Tuple) {
    let _ = write!(s, "src={} dst={}", t.src, t.dst);
    if let (Some(sp), Some(dp)) = (t.sport, t.dport) {
        let _ = write!(s, " sport={sp} dport={dp}");
    }
    if let Some(id) = t.id {
        let _ = write!(s, " id={id}");
    }
    let _ = write!(s, " packets={} bytes={}", t.packets, t.bytes);
}

/// `tcp      6 431999 ESTABLISHED src=… dst=… sport=… dport=… packets=…
/// bytes=… src=… … [nat=snat]`, with `[UNREPLIED]` before the reply tuple
/// when nothing came back yet.
fn line(c: &Connection) -> String {
    let mut s = format!("{:<8} {} {} ", c.proto, c.protonum, c.timeout);
    if let Some(st) = c.state {
        s.push_str(st);
        s.push(' ');
    }
    tuple(&mut s, &c.original);
    s.push(' ');
    if c.unreplied {
        s.push_str("[UNREPLIED] ");
    }
    tuple(&mut s, &c.reply);
    if let Some(n) = &c.nat {
        let _ = write!(s, " nat={}", n.kind);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use netctl_common::{CtEntry, CtKey, CtNat, ct_flag, nat_bit, tcp_state};

    fn key(proto: u8, a: [u8; 4], ap: u16, b: [u8; 4], bp: u16) -> CtKey {
        CtKey {
            proto,
            clash: 0,
            _pad: [0; 2],
            a_addr: a,
            b_addr: b,
            a_port: ap,
            b_port: bp,
        }
    }

    #[test]
    fn lines_read_like_conntrack_l() {
        let k = key(6, [10, 0, 0, 2], 40001, [10, 0, 1, 2], 8080);
        let e = CtEntry {
            orig_addr: [10, 0, 0, 2],
            orig_port: 40001,
            tcp_state: tcp_state::ESTABLISHED,
            flags: ct_flag::SEEN_REPLY,
            packets: [5, 4],
            bytes: [300, 250],
            ..Default::default()
        };
        let c = conntrack::connection(&k, &e, 0, &conntrack::Timeouts::default()).unwrap();
        assert_eq!(
            line(&c),
            "tcp      6 432000 ESTABLISHED src=10.0.0.2 dst=10.0.1.2 sport=40001 dport=8080 \
             packets=5 bytes=300 src=10.0.1.2 dst=10.0.0.2 sport=8080 dport=40001 packets=4 bytes=250"
        );

        let k = key(17, [10, 0, 0, 2], 41000, [10, 0, 1, 2], 9);
        let e = CtEntry {
            orig_addr: [10, 0, 0, 2],
            orig_port: 41000,
            packets: [1, 0],
            bytes: [29, 0],
            nat: CtNat {
                flags: nat_bit::SRC,
                snat_addr: [10, 0, 1, 1],
                snat_port: 41000,
                ..Default::default()
            },
            ..Default::default()
        };
        let c = conntrack::connection(&k, &e, 0, &conntrack::Timeouts::default()).unwrap();
        assert_eq!(
            line(&c),
            "udp      17 30 src=10.0.0.2 dst=10.0.1.2 sport=41000 dport=9 packets=1 bytes=29 \
             [UNREPLIED] src=10.0.1.2 dst=10.0.1.1 sport=9 dport=41000 packets=0 bytes=0 nat=snat"
        );

        let k = key(1, [10, 0, 0, 2], 7, [10, 0, 1, 2], 7);
        let e = CtEntry {
            orig_addr: [10, 0, 0, 2],
            orig_port: 7,
            flags: ct_flag::SEEN_REPLY,
            packets: [1, 1],
            bytes: [84, 84],
            ..Default::default()
        };
        let c = conntrack::connection(&k, &e, 0, &conntrack::Timeouts::default()).unwrap();
        assert_eq!(
            line(&c),
            "icmp     1 30 src=10.0.0.2 dst=10.0.1.2 id=7 packets=1 bytes=84 \
             src=10.0.1.2 dst=10.0.0.2 id=7 packets=1 bytes=84"
        );
    }
}

//! The two sides of the comparison, built the same way: a host namespace
//! with bridges `br-a` (10.1.0.1/24) and `br-b` (10.2.0.1/24), containers
//! `ca` (10.1.0.2) and `ca2` (10.1.0.3) on br-a and `cb` (10.2.0.2) on br-b,
//! with the same MACs and the same host-side port names.
//!
//! * the kernel side is made with `ip` alone and its rules are loaded with
//!   `iptables-restore` in its host namespace: the kernel's own path;
//! * the netctl side is a netctl topology with `datapath = "ebpf"`, its
//!   rules loaded with `netctl rules restore`.
//!
//! On both, the containers drop every IP packet in their own INPUT chain
//! (a witness setup, not the path under test), so they never answer what
//! the harness sends in their name, and the host namespaces answer ICMP
//! without rate limits. Every object has the run's unique prefix; `Cleanup`
//! removes them.

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::Scope;
use super::sock::{self, PacketSock};
use super::wire::{self, Mac};
use crate::{in_ns, netctl, stderr, stdout, write_file};

/// One container of the layout.
#[derive(Clone, Debug)]
pub struct Spec {
    pub name: &'static str,
    pub bridge: &'static str,
    pub ip: Ipv4Addr,
    pub gw: Ipv4Addr,
    pub mac: Mac,
    pub host_if: &'static str,
}

pub const BRIDGES: [(&str, &str); 2] = [("br-a", "10.1.0.1/24"), ("br-b", "10.2.0.1/24")];

/// "Outside": a network routed through an address on br-b (`OUTSIDE_VIA`,
/// which has a permanent neighbour entry, `spoofed`), so that what is sent
/// there arrives at cb. (Without a route, the host's answers — ICMP net
/// unreachable from `ip_error` — are rate-limited by a sysctl that is not
/// per namespace, `net.ipv4.route.error_cost`: not comparable.)
pub const OUTSIDE: (&str, &str) = ("192.0.2.0/24", "10.2.0.100");

/// The containers, in the order `Probe::from` indexes them.
pub fn specs() -> Vec<Spec> {
    let c = |name, bridge, ip: [u8; 4], host_if| Spec {
        name,
        bridge,
        ip: Ipv4Addr::from(ip),
        gw: Ipv4Addr::new(ip[0], ip[1], ip[2], 1),
        mac: [0x02, 0x42, ip[0], ip[1], ip[2], ip[3]],
        host_if,
    };
    vec![
        c("ca", "br-a", [10, 1, 0, 2], "vca"),
        c("ca2", "br-a", [10, 1, 0, 3], "vca2"),
        c("cb", "br-b", [10, 2, 0, 2], "vcb"),
    ]
}

/// Sources a container may send from besides its own address, on its
/// bridge's subnet. The host has permanent neighbours for them (the first
/// container's MAC on that bridge), as for the containers: an answer to an
/// unresolvable address would wait for ARP and, seconds later, come back
/// as an ICMP host-unreachable through OUTPUT, into whatever case runs
/// then.
pub fn spoofed(bridge: &str) -> Vec<Ipv4Addr> {
    let (_, a) = BRIDGES.iter().find(|b| b.0 == bridge).unwrap();
    let o: Ipv4Addr = a.split('/').next().unwrap().parse().unwrap();
    let o = o.octets();
    (100..104)
        .map(|h| Ipv4Addr::new(o[0], o[1], o[2], h))
        .collect()
}

/// Which implementation a lab runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Kernel,
    Netctl,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Kernel => "kernel",
            Kind::Netctl => "netctl",
        }
    }
}

/// Sockets of one container: its `eth0` (inject, observe) and its port on
/// the host side (markers towards it).
pub struct Port {
    pub spec: Spec,
    pub eth0: PacketSock,
    pub host_port: PacketSock,
}

pub struct Lab {
    pub kind: Kind,
    pub host_ns: String,
    /// The netctl topology's name (netctl side).
    pub topo: Option<String>,
    pub ports: Vec<Port>,
    /// Each bridge's socket in the host namespace, and its MAC.
    pub bridges: Vec<(String, PacketSock, Mac)>,
    scratch: String,
}

fn ip(args: &[&str]) -> Result<()> {
    let o = Command::new("ip").args(args).output()?;
    if !o.status.success() {
        bail!("ip {}: {}", args.join(" "), stderr(&o));
    }
    Ok(())
}

fn ns_cmd(ns: &str, args: &[&str]) -> Result<String> {
    let o = in_ns(ns, args);
    if !o.status.success() {
        bail!("{} in {ns}: {}", args.join(" "), stderr(&o));
    }
    Ok(stdout(&o))
}

/// Writes sysctls of namespace `ns` (`/proc/sys/net/...` paths relative to
/// `/proc/sys/net/`); a missing key is an error.
fn sysctls(ns: &str, kv: &[(&str, &str)]) -> Result<()> {
    let kv: Vec<(String, String)> = kv
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    netctl::netns::run_in(&netctl::netns::Netns::named(ns), move || {
        for (k, v) in &kv {
            std::fs::write(format!("/proc/sys/net/{k}"), v)
                .map_err(|e| std::io::Error::new(e.kind(), format!("/proc/sys/net/{k}: {e}")))?;
        }
        Ok(())
    })
    .map_err(|e| anyhow::anyhow!("sysctl in {ns}: {e}"))
}

/// The host namespace's settings, the same on both sides: forwarding on,
/// ICMP errors without rate limits (REJECT's answers are compared), no
/// redirects, no reverse-path filter.
fn host_sysctls(ns: &str) -> Result<()> {
    let mut kv = vec![
        ("ipv4/ip_forward", "1"),
        ("ipv4/icmp_ratelimit", "0"),
        ("ipv4/icmp_msgs_per_sec", "1000000"),
        ("ipv4/icmp_msgs_burst", "1000000"),
        ("ipv4/conf/all/send_redirects", "0"),
        ("ipv4/conf/all/rp_filter", "0"),
        ("ipv4/conf/default/rp_filter", "0"),
        // netctl tracks TCP without window tracking, as the kernel does
        // with be_liberal: the reference it claims to mirror.
        ("netfilter/nf_conntrack_tcp_be_liberal", "1"),
    ];
    let per_dev: Vec<String> = BRIDGES
        .iter()
        .flat_map(|(b, _)| {
            [
                format!("ipv4/conf/{b}/send_redirects"),
                format!("ipv4/conf/{b}/rp_filter"),
            ]
        })
        .collect();
    for k in &per_dev {
        kv.push((k, "0"));
    }
    // IGMPv2 on the bridges: leaving a group then sends nothing later.
    let igmp: Vec<String> = BRIDGES
        .iter()
        .map(|(b, _)| format!("ipv4/conf/{b}/force_igmp_version"))
        .collect();
    for k in &igmp {
        kv.push((k, "2"));
    }
    sysctls(ns, &kv)?;
    // A bridge with multicast snooping joins 224.0.0.106 and its IGMP
    // reports go through OUTPUT on timers, into the counters of whatever
    // case runs then. Switched off (in IGMPv2 mode the leave sends nothing
    // later), the host sends no IGMP from here on.
    for (b, _) in BRIDGES {
        ip(&[
            "-n",
            ns,
            "link",
            "set",
            b,
            "type",
            "bridge",
            "mcast_snooping",
            "0",
        ])?;
    }
    Ok(())
}

/// The `Inbound` scope: the host's own TCP resets and echo replies are
/// dropped before any rule (priority -400, before raw), so that conntrack
/// states do not depend on OUTPUT. (REJECT's answers are not touched: its
/// ICMP errors pass, its resets leave by the bridge port directly.)
fn quiet_host(ns: &str) -> Result<()> {
    ns_cmd(
        ns,
        &[
            "nft",
            "add table ip fidelity_quiet; \
             add chain ip fidelity_quiet out { type filter hook output priority -400; }; \
             add rule ip fidelity_quiet out meta l4proto tcp drop; \
             add rule ip fidelity_quiet out icmp type echo-reply drop",
        ],
    )?;
    Ok(())
}

/// Conntrack runs in a namespace only once something there needs it (a
/// ctstate match, a NAT target); without it the nat chains are never
/// walked. netctl tracks connections always, as a host with Docker's
/// MASQUERADE rule does: an nft table of its own (which `iptables-save`
/// does not show) turns conntrack on for the kernel side.
fn conntrack_on(ns: &str) -> Result<()> {
    ns_cmd(
        ns,
        &[
            "nft",
            "add table ip fidelity_ct; \
             add chain ip fidelity_ct pre { type filter hook prerouting priority -400; }; \
             add rule ip fidelity_ct pre ct state new",
        ],
    )?;
    Ok(())
}

fn container_witness(ns: &str) -> Result<()> {
    // The container's own stack must stay silent: no RST for a SYN/ACK it
    // never asked for, no echo reply. Packet sockets still see everything.
    ns_cmd(ns, &["iptables", "-w", "-A", "INPUT", "-j", "DROP"])?;
    Ok(())
}

fn bridge_mac(ns: &str, br: &str) -> Result<Mac> {
    let j = crate::ip_json(&["-n", ns, "link", "show", br]);
    let s = j[0]["address"]
        .as_str()
        .with_context(|| format!("no address for {br} in {ns}"))?;
    wire::parse_mac(s).with_context(|| format!("bad MAC {s}"))
}

impl Lab {
    /// Builds the kernel side: plain `ip`, no netctl.
    pub fn kernel(prefix: &str, scope: Scope) -> Result<Lab> {
        let host = format!("{prefix}-kh");
        ip(&["netns", "add", &host])?;
        let specs = specs();
        for s in &specs {
            ip(&["netns", "add", &format!("{prefix}-k{}", s.name)])?;
        }
        let v6off = [
            ("ipv6/conf/all/disable_ipv6", "1"),
            ("ipv6/conf/default/disable_ipv6", "1"),
        ];
        sysctls(&host, &v6off)?;
        ip(&["-n", &host, "link", "set", "lo", "up"])?;
        for (br, addr) in BRIDGES {
            ip(&["-n", &host, "link", "add", br, "type", "bridge"])?;
            ip(&["-n", &host, "addr", "add", addr, "dev", br])?;
            ip(&["-n", &host, "link", "set", br, "up"])?;
        }
        for s in &specs {
            let cns = format!("{prefix}-k{}", s.name);
            sysctls(&cns, &v6off)?;
            ip(&[
                "-n", &host, "link", "add", s.host_if, "type", "veth", "peer", "name", "eth0",
                "netns", &cns,
            ])?;
            ip(&[
                "-n", &host, "link", "set", s.host_if, "master", s.bridge, "up",
            ])?;
            let mac = wire::mac_str(&s.mac);
            ip(&["-n", &cns, "link", "set", "eth0", "address", &mac])?;
            ip(&["-n", &cns, "link", "set", "lo", "up"])?;
            ip(&["-n", &cns, "link", "set", "eth0", "up"])?;
            ip(&[
                "-n",
                &cns,
                "addr",
                "add",
                &format!("{}/24", s.ip),
                "dev",
                "eth0",
            ])?;
            ip(&[
                "-n",
                &cns,
                "route",
                "add",
                "default",
                "via",
                &s.gw.to_string(),
            ])?;
            container_witness(&cns)?;
        }
        ip(&[
            "-n", &host, "route", "add", OUTSIDE.0, "via", OUTSIDE.1, "dev", "br-b",
        ])?;
        // A Docker host: bridged IPv4 crosses iptables (br_netfilter), and
        // a destination changed in PREROUTING is routed anew, or bridged
        // again when it stays on the bridge (`br_nf_pre_routing_finish`).
        sysctls(&host, &[("bridge/bridge-nf-call-iptables", "1")])
            .context("the kernel side needs br_netfilter (modprobe br_netfilter)")?;
        host_sysctls(&host)?;
        conntrack_on(&host)?;
        if scope == Scope::Inbound {
            quiet_host(&host)?;
        }
        Self::finish(Kind::Kernel, prefix, host, None, |s| {
            format!("{prefix}-k{}", s.name)
        })
    }

    /// Builds the netctl side: a topology applied with the netctl binary.
    pub fn netctl(prefix: &str, scope: Scope) -> Result<Lab> {
        let topo = format!("{prefix}n");
        let host = format!("{topo}-h");
        let mut t = format!(
            "name = \"{topo}\"\nhost_netns = \"{host}\"\nip_forward = true\ndatapath = \"ebpf\"\n"
        );
        for (br, addr) in BRIDGES {
            t += &format!("\n[[bridge]]\nname = \"{br}\"\naddresses = [\"{addr}\"]\n");
        }
        for s in specs() {
            t += &format!(
                "\n[[container]]\nname = \"{}\"\nbridge = \"{}\"\naddresses = [\"{}/24\"]\nmac = \"{}\"\nhost_ifname = \"{}\"\n",
                s.name,
                s.bridge,
                s.ip,
                wire::mac_str(&s.mac),
                s.host_if
            );
        }
        t += &format!(
            "\n[[route]]\nto = \"{}\"\nvia = \"{}\"\n",
            OUTSIDE.0, OUTSIDE.1
        );
        let f = write_file(prefix, "fidelity.toml", &t);
        let o = netctl(&["apply", f.to_str().unwrap()]);
        if !o.status.success() {
            bail!("netctl apply: {}", stderr(&o));
        }
        for s in specs() {
            let cns = format!("{topo}-{}", s.name);
            sysctls(
                &cns,
                &[
                    ("ipv6/conf/all/disable_ipv6", "1"),
                    ("ipv6/conf/default/disable_ipv6", "1"),
                ],
            )?;
            container_witness(&cns)?;
        }
        host_sysctls(&host)?;
        if scope == Scope::Inbound {
            quiet_host(&host)?;
        }
        let t2 = topo.clone();
        Self::finish(Kind::Netctl, prefix, host, Some(topo), move |s| {
            format!("{t2}-{}", s.name)
        })
    }

    fn finish(
        kind: Kind,
        prefix: &str,
        host: String,
        topo: Option<String>,
        cns: impl Fn(&Spec) -> String,
    ) -> Result<Lab> {
        let mut ports = Vec::new();
        for s in specs() {
            let ns = cns(&s);
            // The host reaches the containers without ARP, so its answers
            // (REJECT's, the stack's) leave at once, inside the case.
            ip(&[
                "-n",
                &host,
                "neigh",
                "replace",
                &s.ip.to_string(),
                "lladdr",
                &wire::mac_str(&s.mac),
                "dev",
                s.bridge,
                "nud",
                "permanent",
            ])?;
            ports.push(Port {
                eth0: PacketSock::open(&ns, "eth0")?,
                host_port: PacketSock::sender(&host, s.host_if)?,
                spec: s,
            });
        }
        for (br, _) in BRIDGES {
            let owner = ports.iter().find(|p| p.spec.bridge == br).unwrap();
            let mac = wire::mac_str(&owner.spec.mac);
            for a in spoofed(br) {
                ip(&[
                    "-n",
                    &host,
                    "neigh",
                    "replace",
                    &a.to_string(),
                    "lladdr",
                    &mac,
                    "dev",
                    br,
                    "nud",
                    "permanent",
                ])?;
            }
        }
        let mut bridges = Vec::new();
        for (br, _) in BRIDGES {
            bridges.push((
                br.to_string(),
                PacketSock::open(&host, br)?,
                bridge_mac(&host, br)?,
            ));
        }
        Ok(Lab {
            kind,
            host_ns: host,
            topo,
            ports,
            bridges,
            scratch: prefix.to_string(),
        })
    }

    pub fn bridge_mac(&self, br: &str) -> Mac {
        self.bridges.iter().find(|b| b.0 == br).unwrap().2
    }

    fn bridge_sock(&self, br: &str) -> &PacketSock {
        &self.bridges.iter().find(|b| b.0 == br).unwrap().1
    }

    /// Replaces the ruleset (iptables-save text), with zero counters, and
    /// forgets every connection.
    pub fn load(&self, text: &str) -> Result<()> {
        match self.kind {
            Kind::Kernel => {
                let mut c = Command::new("ip")
                    .args(["netns", "exec", &self.host_ns, IPTABLES_RESTORE, "-w"])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()?;
                std::io::Write::write_all(c.stdin.as_mut().unwrap(), text.as_bytes())?;
                let o = c.wait_with_output()?;
                if !o.status.success() {
                    bail!(
                        "iptables-restore: {}\n{}",
                        stderr(&o).trim(),
                        numbered(text)
                    );
                }
                sock::flush_conntrack(&self.host_ns)?;
            }
            Kind::Netctl => {
                let f = write_file(&self.scratch, "rules.v4", text);
                let topo = self.topo.as_deref().unwrap();
                let o = netctl(&["rules", "--topology", topo, "restore", f.to_str().unwrap()]);
                if !o.status.success() {
                    bail!(
                        "netctl rules restore: {}\n{}",
                        stderr(&o).trim(),
                        numbered(text)
                    );
                }
                // iptables-restore starts every counter from zero: so must
                // a restore here (checked, and made so if it did not).
                let left = super::counters::parse(&self.save()?)?;
                if left
                    .values()
                    .flat_map(|c| {
                        c.rules
                            .iter()
                            .map(|r| r.0)
                            .chain(c.policy.iter().map(|p| p.1))
                    })
                    .any(|c| c.packets != 0 || c.bytes != 0)
                {
                    eprintln!("fidelity: netctl rules restore kept counters; zeroing them");
                    for t in ["raw", "mangle", "nat", "filter"] {
                        let o = netctl(&["rules", "--topology", topo, "-Z", "-t", t]);
                        if !o.status.success() {
                            bail!("netctl rules -Z -t {t}: {}", stderr(&o));
                        }
                    }
                }
                // The datapath's connections (kept across a restore), and
                // the reply tuples of translated ones (`netctl conntrack
                // flush` empties both).
                let ct = format!("/sys/fs/bpf/netctl/{topo}/NETCTL_CT");
                if std::path::Path::new(&ct).exists() {
                    sock::clear_pinned_map(&ct)?;
                } else {
                    bail!("{ct} is missing: cannot forget the datapath's connections");
                }
                let ct_nat = format!("{ct}_NAT");
                if std::path::Path::new(&ct_nat).exists() {
                    sock::clear_pinned_map(&ct_nat)?;
                }
            }
        }
        Ok(())
    }

    /// The ruleset with counters, as `iptables-save -c` prints it.
    pub fn save(&self) -> Result<String> {
        match self.kind {
            Kind::Kernel => ns_cmd(&self.host_ns, &[IPTABLES_SAVE, "-c"]),
            Kind::Netctl => {
                // Table by table: a plain save leaves out default tables,
                // and with them their policies' counters.
                let topo = self.topo.as_deref().unwrap();
                let mut text = String::new();
                for t in ["raw", "mangle", "nat", "filter"] {
                    let o = netctl(&["rules", "--topology", topo, "save", "-c", "-t", t]);
                    if !o.status.success() {
                        bail!("netctl rules save -c -t {t}: {}", stderr(&o));
                    }
                    text += &stdout(&o);
                }
                Ok(text)
            }
        }
    }

    /// The connections the side tracks, for people (`FIDELITY_DUMP`).
    pub fn connections(&self) -> String {
        let o = match self.kind {
            Kind::Kernel => in_ns(&self.host_ns, &["cat", "/proc/net/nf_conntrack"]),
            Kind::Netctl => netctl(&[
                "conntrack",
                "list",
                "--topology",
                self.topo.as_deref().unwrap_or_default(),
            ]),
        };
        stdout(&o) + &stderr(&o)
    }

    /// Sends `frame` from container `c`'s eth0.
    pub fn inject(&self, c: usize, frame: &[u8]) -> Result<()> {
        self.ports[c].eth0.send(frame)
    }

    /// Waits until everything container `c` sent before has gone through
    /// the host: a marker frame to its bridge's MAC, sent after it on the
    /// same veth from the same CPU, reaches the bridge device.
    pub fn settle_from(&self, c: usize, token: u64) -> Result<()> {
        let p = &self.ports[c];
        let br = p.spec.bridge;
        let m = wire::marker(&self.bridge_mac(br), &p.spec.mac, token);
        p.eth0.send(&m)?;
        self.bridge_sock(br)
            .until_marker(token, TIMEOUT)
            .map(|_| ())
            .with_context(|| format!("{}: {} did not reach {br}", self.kind.name(), p.spec.name))
    }

    /// What reached container `c`'s eth0 so far: a marker sent to it from
    /// its host-side port queues behind everything the host sent it.
    pub fn arrived_at(&self, c: usize, token: u64) -> Result<Vec<wire::Ip>> {
        let p = &self.ports[c];
        let m = wire::marker(&p.spec.mac, &self.bridge_mac(p.spec.bridge), token);
        p.host_port.send(&m)?;
        p.eth0
            .until_marker(token, TIMEOUT)
            .with_context(|| format!("{}: marker to {}", self.kind.name(), p.spec.name))
    }

    pub fn drain(&self) {
        for p in &self.ports {
            p.eth0.drain();
        }
        for b in &self.bridges {
            b.1.drain();
        }
    }
}

/// Whether the netctl binary has the `rules` command the netctl side needs.
pub fn netctl_has_rules() -> bool {
    netctl(&["rules", "--help"]).status.success()
}

fn numbered(text: &str) -> String {
    text.lines()
        .enumerate()
        .map(|(i, l)| format!("{:4} {l}\n", i + 1))
        .collect()
}

/// The kernel side's iptables: the legacy (x_tables) backend, whose
/// tables register every built-in chain, so that a chain's policy counts
/// whether or not the chain has rules, and the nat table turns conntrack
/// on, as netctl's model has it. (iptables-nft creates built-in chains only
/// when they have rules or a DROP policy: an empty chain neither counts nor
/// makes conntrack run.)
pub const IPTABLES_RESTORE: &str = "iptables-legacy-restore";
pub const IPTABLES_SAVE: &str = "iptables-legacy-save";

/// How long an event may take before the harness calls it lost.
pub const TIMEOUT: Duration = Duration::from_secs(5);

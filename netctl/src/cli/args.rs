//! The command line, as clap types. Handlers live in `commands`.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;

#[derive(Parser)]
#[command(
    name = "netctl",
    version,
    about = "Container networking for Linux hosts, with an eBPF fast path"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Args, Clone, Default)]
pub struct NsOpt {
    /// Work in this named network namespace instead of the current one.
    #[arg(long = "netns", short = 'n', global = true)]
    pub netns: Option<String>,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Every namespace with links, addresses, routes, veth peers and bridges.
    Show {
        /// Only these namespaces (repeatable).
        #[arg(long = "netns", short = 'n')]
        netns: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Make the kernel match a topology file.
    Apply {
        file: PathBuf,
        /// Print the plan without changing anything.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Remove everything an applied topology owns (FILE or topology name).
    Destroy { target: String },
    /// Check a topology file without touching the kernel.
    Validate { file: PathBuf },
    /// Named network namespaces (interoperable with `ip netns`).
    #[command(subcommand)]
    Netns(NetnsCmd),
    /// Links: list, move between namespaces, change, delete.
    #[command(subcommand)]
    Link(LinkCmd),
    /// veth pairs.
    #[command(subcommand)]
    Veth(VethCmd),
    /// Bridges and their ports.
    #[command(subcommand)]
    Bridge(BridgeCmd),
    /// Addresses.
    #[command(subcommand)]
    Addr(AddrCmd),
    /// Routes.
    #[command(subcommand)]
    Route(RouteCmd),
    /// The eBPF datapath of a topology: sync, detach, XDP.
    #[command(subcommand)]
    Datapath(DatapathCmd),
    /// The datapath's pinned maps.
    #[command(subcommand)]
    Maps(MapsCmd),
    /// The datapath's forwarding database (learned MACs, ages).
    #[command(subcommand)]
    Fdb(FdbCmd),
    /// Per-decision and per-port counters of the datapath.
    Stats {
        #[command(flatten)]
        t: TopoOpt,
        #[arg(long)]
        json: bool,
    },
    /// Stream datapath events (switches event logging on while running).
    Trace {
        #[command(flatten)]
        t: TopoOpt,
        /// Stop after this many seconds (default: until Ctrl-C).
        #[arg(long)]
        duration: Option<f64>,
    },
    /// Netfilter rules of a topology's datapath, in iptables' syntax:
    /// `restore [FILE|-]`, `save [-c] [-t TABLE]`,
    /// `list [-t TABLE] [-v] [-n] [-x] [--line-numbers] [CHAIN]` (or `-L`),
    /// `-S [CHAIN]`, and iptables' edits (`-A`, `-I`, `-D`, `-R`, `-N`, `-X`,
    /// `-P`, `-F`, `-Z`, with `-t TABLE`).
    #[command(allow_hyphen_values = true)]
    Rules {
        /// The topology (default: the only one with a datapath). Long form
        /// only: `-t` is iptables' table option.
        #[arg(long)]
        topology: Option<String>,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        args: Vec<String>,
    },
    /// Connections the datapath tracks: `list` (as `conntrack -L`), `flush`.
    #[command(subcommand)]
    Conntrack(ConntrackCmd),
    /// IPv4/IPv6 forwarding in a namespace.
    Forward {
        #[arg(value_parser = ["on", "off", "show"])]
        state: String,
        #[command(flatten)]
        ns: NsOpt,
    },
}

#[derive(Subcommand)]
pub enum NetnsCmd {
    Add {
        name: String,
    },
    Del {
        name: String,
    },
    List,
    /// Run a command inside a namespace (no /sys remount, unlike ip netns exec).
    Exec {
        name: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        cmd: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum LinkCmd {
    Show {
        #[command(flatten)]
        ns: NsOpt,
        #[arg(long)]
        json: bool,
    },
    /// Move a device into another namespace.
    Move {
        dev: String,
        /// Target namespace.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        ns: NsOpt,
    },
    Set {
        dev: String,
        #[arg(long, value_parser = ["up", "down"])]
        state: Option<String>,
        #[arg(long)]
        mtu: Option<u32>,
        #[arg(long)]
        mac: Option<String>,
        #[command(flatten)]
        ns: NsOpt,
    },
    Del {
        dev: String,
        #[command(flatten)]
        ns: NsOpt,
    },
}

#[derive(Subcommand)]
pub enum VethCmd {
    /// Create a pair; the peer goes straight into --peer-netns.
    Add {
        name: String,
        #[arg(long, default_value = "eth0")]
        peer: String,
        #[arg(long)]
        peer_netns: Option<String>,
        /// Bridge to attach the local end to.
        #[arg(long)]
        bridge: Option<String>,
        /// MAC of the peer (container) end.
        #[arg(long)]
        mac: Option<String>,
        #[arg(long)]
        mtu: Option<u32>,
        #[command(flatten)]
        ns: NsOpt,
    },
}

#[derive(Subcommand)]
pub enum BridgeCmd {
    Add {
        name: String,
        /// Ageing time in seconds (kernel default 300).
        #[arg(long)]
        ageing: Option<u32>,
        #[command(flatten)]
        ns: NsOpt,
    },
    Del {
        name: String,
        #[command(flatten)]
        ns: NsOpt,
    },
    Attach {
        bridge: String,
        port: String,
        #[command(flatten)]
        ns: NsOpt,
    },
    Detach {
        port: String,
        #[command(flatten)]
        ns: NsOpt,
    },
    Ageing {
        bridge: String,
        seconds: u32,
        #[command(flatten)]
        ns: NsOpt,
    },
    Hairpin {
        port: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
        #[command(flatten)]
        ns: NsOpt,
    },
}

#[derive(Subcommand)]
pub enum AddrCmd {
    Add {
        addr: IpNet,
        #[arg(long)]
        dev: String,
        #[command(flatten)]
        ns: NsOpt,
    },
    Del {
        addr: IpNet,
        #[arg(long)]
        dev: String,
        #[command(flatten)]
        ns: NsOpt,
    },
}

#[derive(Subcommand)]
pub enum RouteCmd {
    /// Print a table like `ip route` (main by default).
    Show {
        /// `main`, `local`, `default`, `all` or a number.
        #[arg(long, default_value = "main")]
        table: String,
        #[command(flatten)]
        ns: NsOpt,
        #[arg(long)]
        json: bool,
    },
    /// Explain which entry a destination matches and why.
    Get {
        addr: IpAddr,
        #[command(flatten)]
        ns: NsOpt,
        #[arg(long)]
        json: bool,
    },
    Add(RouteArgs),
    Del(RouteArgs),
}

#[derive(Args, Clone, Default)]
pub struct TopoOpt {
    /// The topology (default: the only one with a datapath).
    #[arg(long, short = 't')]
    pub topology: Option<String>,
}

#[derive(Subcommand)]
pub enum DatapathCmd {
    /// Re-read the host namespace (routes, ports) into the datapath's maps.
    Sync { topology: String },
    /// Remove the programs and pins; traffic falls back to the kernel bridge.
    Detach { topology: String },
    /// Attach or detach the XDP program on every port.
    Xdp {
        topology: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Load every datapath program through this kernel's verifier (no attach).
    Verify {
        /// One program (default: all that netctl attaches).
        program: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// What each program of a topology costs per run, over a window of
    /// live traffic (the kernel's BPF run-time statistics, on meanwhile).
    Profile {
        topology: String,
        /// Seconds to watch.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        #[arg(long)]
        json: bool,
    },
    /// Topologies with a datapath, their attached ports and programs.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum MapsCmd {
    List {
        #[command(flatten)]
        t: TopoOpt,
        #[arg(long)]
        json: bool,
    },
    /// Decoded contents of one map (ports, fdb, routes, neigh, stats, port_stats, config, xdp_stats).
    Dump {
        name: String,
        #[command(flatten)]
        t: TopoOpt,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum FdbCmd {
    Show {
        #[command(flatten)]
        t: TopoOpt,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub enum ConntrackCmd {
    /// Tracked connections, one a line as `conntrack -L` prints them.
    List {
        #[command(flatten)]
        t: TopoOpt,
        #[arg(long)]
        json: bool,
    },
    /// Forget every tracked connection and NAT binding (as `conntrack -F`).
    Flush {
        #[command(flatten)]
        t: TopoOpt,
    },
}

#[derive(Args)]
pub struct RouteArgs {
    /// Destination prefix or `default`.
    pub to: String,
    #[arg(long)]
    pub via: Option<IpAddr>,
    #[arg(long)]
    pub dev: Option<String>,
    #[arg(long)]
    pub table: Option<u32>,
    #[arg(long)]
    pub metric: Option<u32>,
    #[command(flatten)]
    pub ns: NsOpt,
}

//! Loading, attaching and keeping a topology's datapath in step with the
//! kernel. Everything here is synchronous (aya is) and must run on a thread
//! inside the topology's host namespace: aya resolves interface names there.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;

use aya::EbpfLoader;
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues};
use aya::programs::links::FdLink;
use aya::programs::tc::{
    NlOptions, SchedClassifierLink, TcAttachOptions, TcError, qdisc_add_clsact,
    qdisc_detach_program,
};
use aya::programs::{LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode};
use netctl_common::{
    FdbEntry, FdbKey, MAP_CONFIG, MAP_CT_TIMEOUTS, MAP_FDB, MAP_FDB_GEN, MAP_IFADDR, MAP_NEIGH,
    MAP_PORT_INDEX, MAP_PORT_STATS, MAP_PORTS, MAP_PORTS_MAX, MAP_ROUTES, MAP_STATS, NeighEntry,
    PORT_INDEX_SLOTS, PROG_EGRESS, PROG_INGRESS, PROG_LOCAL, PROG_XDP, PortInfo, PortStats,
    RouteValue, STATS_STEADY_RETIRED, config,
};

use super::desired::Desired;
use super::link_ops;
use super::pins::{self, LinkPin, link_pin_name, links_dir, parse_link_pin, topology_dir};
use super::{bpf_error, embedded_object, object};
use crate::error::{Error, Result};
use crate::topology::Attach;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct SyncReport {
    /// The program was loaded (first apply, or new ports to attach).
    pub loaded: bool,
    pub attached: Vec<String>,
    pub detached: Vec<String>,
    /// tcx links (pin names) that run another build's program now.
    pub updated: Vec<String>,
    /// How the ports are attached.
    pub attach: Attach,
}

pub(crate) fn map_at(dir: &Path, name: &str) -> Result<Map> {
    let p = dir.join(name);
    let md = MapData::from_pin(&p)
        .map_err(|e| bpf_error(&format!("open pinned map {}", p.display()), &e))?;
    Map::from_map_data(md).map_err(|e| bpf_error(name, &e))
}

fn e(what: &str) -> impl Fn(aya::maps::MapError) -> Error + '_ {
    move |err| bpf_error(what, &err)
}

/// A short, stable hash of the embedded object: pinned programs carry it.
fn object_tag() -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in object() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{h:016x}")
}

/// Brings the pinned datapath of `topology` to `d`: attaches the ingress
/// program to new ports, detaches it from ports that are gone, rewrites the
/// maps. Loads the object only when no current program is pinned.
pub fn sync_blocking(topology: &str, d: &Desired) -> Result<SyncReport> {
    pins::ensure_bpffs()?;
    embedded_object()?;
    pins::create_topology_dirs(topology)?;
    let dir = topology_dir(topology);
    let links = links_dir(topology);
    let progs = pins::progs_dir(topology);
    let mut report = SyncReport {
        attach: d.attach,
        ..Default::default()
    };
    let prog_pin = progs.join(format!("ingress-{}", object_tag()));

    // A program from another build of netctl: its links go, so that every
    // port runs the current one.
    let mut stale_program = false;
    let egress_pin = egress_pin_of(&prog_pin);
    let local_pin = local_pin_of(&prog_pin);
    for old in list_dir(&progs)? {
        let old_pin = progs.join(&old);
        if old_pin != prog_pin && old_pin != egress_pin && old_pin != local_pin {
            fs::remove_file(progs.join(&old)).map_err(|err| Error::io("unpin program", err))?;
            stale_program = true;
        }
    }
    let want: BTreeMap<String, &super::desired::Port> = d
        .ports
        .iter()
        .map(|p| (link_pin_name(&p.ifname, p.ifindex), p))
        .collect();
    let kinds = port_pin_kinds(d.attach);
    let present = pins::link_pins(topology)?;
    let mut kept: BTreeMap<&str, Vec<LinkPin>> = BTreeMap::new();
    for pin in &present {
        let (kind, port) = LinkPin::split(pin);
        let wanted = want.contains_key(port);
        let keep = match kind {
            LinkPin::Local => continue,
            LinkPin::Xdp => wanted,
            // A stale program's tcx links get the new one in place below;
            // its cls_bpf filters are replaced when the port is attached.
            LinkPin::Filters => wanted && kinds.contains(&kind) && !stale_program,
            LinkPin::TcxIngress | LinkPin::TcxEgress => wanted && kinds.contains(&kind),
        };
        if keep {
            kept.entry(port).or_default().push(kind);
            continue;
        }
        // The filters of a port attached again in the same mode go just
        // before that, keeping the port's gap short.
        let reattached = wanted && kinds.contains(&kind);
        remove_link_pin(&links, pin, kind, !reattached)?;
        if !wanted && kind != LinkPin::TcxEgress {
            let what = if kind == LinkPin::Xdp { pin } else { port };
            report.detached.push(what.to_string());
        }
    }
    // A port keeps only a whole attachment (a failed apply may leave half).
    let mut missing: Vec<&super::desired::Port> = Vec::new();
    let mut updated: Vec<String> = Vec::new();
    for (port, p) in &want {
        let have = kept.get(port.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        if kinds.iter().all(|k| have.contains(k)) {
            if stale_program {
                updated.extend(kinds.iter().map(|k| k.name(port)));
            }
            continue;
        }
        for k in have.iter().filter(|k| **k != LinkPin::Xdp) {
            remove_link_pin(&links, &k.name(port), *k, true)?;
        }
        missing.push(*p);
    }

    report.loaded = load_program(topology)?;
    // Maps first, so the first packet through a new link finds its port.
    write_maps(&dir, d)?;
    update_links(&prog_pin, &links, &updated)?;
    report.updated = updated;
    report.attached = attach_all(&prog_pin, &links, &missing, d.attach, stale_program)?;
    attach_local(
        &local_pin,
        &links,
        stale_program || !present.iter().any(|p| p == pins::LOCAL_PIN),
    )?;
    // The host's connections to its own published ports get their replies
    // back from a container with one of the host's addresses as source
    // (see netctl-ebpf's `local`), which the kernel lets in on a bridge
    // only with accept_local.
    for b in &d.bridges {
        crate::sysctl::set_accept_local_here(b, true)?;
    }
    Ok(report)
}

/// `lo`, where the host's packets to its own addresses arrive.
const LOOPBACK: &str = "lo";

/// Attaches the pinned `lo` program (nat OUTPUT for the host's packets to
/// its own addresses) to `lo`'s TC ingress, unless `!attach` (it is
/// there), and pins its marker.
fn attach_local(local_pin: &Path, links: &Path, attach: bool) -> Result<()> {
    if !attach {
        return Ok(());
    }
    let _ = qdisc_detach_program(LOOPBACK, TcAttachType::Ingress, PROG_LOCAL);
    add_clsact(LOOPBACK)?;
    let mut prog = SchedClassifier::from_pin(local_pin)
        .map_err(|err| bpf_error("open pinned lo program", &err))?;
    attach_filter(&mut prog, PROG_LOCAL, LOOPBACK, TcAttachType::Ingress)?;
    let marker = links.join(pins::LOCAL_PIN);
    if marker.exists() {
        fs::remove_file(&marker).map_err(|err| Error::io("unpin lo marker", err))?;
    }
    prog.pin(&marker)
        .map_err(|err| bpf_error(&format!("pin {}", marker.display()), &err))
}

/// Loads the object (maps pinned, or reused from their pins) and pins the
/// ingress program, unless the current program is already pinned. Needs no
/// namespace: `apply` runs it while the netlink work is under way, since
/// the verifier takes a few tens of milliseconds.
pub fn load_program(topology: &str) -> Result<bool> {
    pins::ensure_bpffs()?;
    let obj = embedded_object()?;
    pins::create_topology_dirs(topology)?;
    let dir = topology_dir(topology);
    let progs = pins::progs_dir(topology);
    let prog_pin = progs.join(format!("ingress-{}", object_tag()));
    if prog_pin.exists()
        && egress_pin_of(&prog_pin).exists()
        && local_pin_of(&prog_pin).exists()
        && dir.join(MAP_PORTS).exists()
    {
        return Ok(false);
    }
    // A map an older build pinned in another shape is recreated.
    for name in super::layout::drop_incompatible(&dir) {
        tracing::info!("map {name} of topology {topology} changed shape: recreated empty");
    }
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&dir)
        .load(obj)
        .map_err(|err| bpf_error("loading the eBPF object", &err))?;
    for (name, pin) in [
        (PROG_INGRESS, prog_pin.clone()),
        (PROG_EGRESS, egress_pin_of(&prog_pin)),
        (PROG_LOCAL, local_pin_of(&prog_pin)),
    ] {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or_else(|| Error::Bpf(format!("program {name} missing from the object")))?
            .try_into()
            .map_err(|err| bpf_error(name, &err))?;
        prog.load()
            .map_err(|err| bpf_error(&format!("loading program {name}"), &err))?;
        prog.pin(&pin)
            .map_err(|err| bpf_error(&format!("pin {}", pin.display()), &err))?;
    }
    Ok(true)
}

/// The egress program's pin beside the ingress program's
/// (`progs/ingress-<tag>` → `progs/egress-<tag>`).
fn egress_pin_of(prog_pin: &Path) -> std::path::PathBuf {
    sibling_pin(prog_pin, "egress-")
}

/// The `lo` program's pin (`progs/local-<tag>`).
fn local_pin_of(prog_pin: &Path) -> std::path::PathBuf {
    sibling_pin(prog_pin, "local-")
}

fn sibling_pin(prog_pin: &Path, prefix: &str) -> std::path::PathBuf {
    let name = prog_pin
        .file_name()
        .map(|n| n.to_string_lossy().replacen("ingress-", prefix, 1))
        .unwrap_or_default();
    prog_pin.with_file_name(name)
}

fn list_dir(dir: &Path) -> Result<Vec<String>> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir).map_err(|err| Error::io(format!("read {}", dir.display()), err))? {
        let e = e.map_err(|err| Error::io("read dir", err))?;
        v.push(e.file_name().to_string_lossy().to_string());
    }
    Ok(v)
}

/// The `links/` pins a port attached in mode `attach` has.
fn port_pin_kinds(attach: Attach) -> &'static [LinkPin] {
    match attach {
        Attach::Tcx => &[LinkPin::TcxIngress, LinkPin::TcxEgress],
        Attach::ClsBpf => &[LinkPin::Filters],
    }
}

/// Removes a `links/` pin and what it holds attached: a tcx link detaches
/// at once; a cls_bpf marker's filters come off the port when
/// `detach_filters`; an XDP link goes with its last reference.
fn remove_link_pin(links: &Path, pin: &str, kind: LinkPin, detach_filters: bool) -> Result<()> {
    let path = links.join(pin);
    match kind {
        LinkPin::TcxIngress | LinkPin::TcxEgress => {
            return link_ops::detach_pinned(&path)
                .map_err(|err| Error::io(format!("detach link {pin}"), err));
        }
        LinkPin::Filters if detach_filters => detach_port(LinkPin::split(pin).1),
        _ => {}
    }
    fs::remove_file(&path).map_err(|err| Error::io(format!("unpin link {pin}"), err))
}

/// Puts the current programs under the tcx links `pins` (an upgrade): the
/// kernel swaps them atomically, so no packet meets a port without them.
fn update_links(prog_pin: &Path, links: &Path, pins: &[String]) -> Result<()> {
    if pins.is_empty() {
        return Ok(());
    }
    let ingress = SchedClassifier::from_pin(prog_pin)
        .map_err(|err| bpf_error("open pinned program", &err))?;
    let egress = SchedClassifier::from_pin(egress_pin_of(prog_pin))
        .map_err(|err| bpf_error("open pinned egress program", &err))?;
    for pin in pins {
        let prog = match LinkPin::split(pin).0 {
            LinkPin::TcxEgress => &egress,
            _ => &ingress,
        };
        let fd = prog
            .fd()
            .map_err(|err| bpf_error("pinned program fd", &err))?;
        link_ops::update_pinned(&links.join(pin), fd)
            .map_err(|err| Error::io(format!("update link {pin} to the new program"), err))?;
    }
    Ok(())
}

/// Attaches the pinned programs (ingress and egress) to every port and pins
/// what records it under `links/` (see [`LinkPin`]).
///
/// With tcx each attach waits for an RCU grace period while holding RTNL
/// (`tcx_entry_sync`), about 13 ms per program here, serialised across the
/// host; a cls_bpf filter costs well under a millisecond and stays attached
/// without a pin. Both run the same programs with the same verdicts
/// (TCX_NEXT is cls_bpf's TC_ACT_UNSPEC: pass on). `replace`: the ports'
/// cls_bpf filters are an earlier program's.
fn attach_all(
    prog_pin: &Path,
    links: &Path,
    ports: &[&super::desired::Port],
    attach: Attach,
    replace: bool,
) -> Result<Vec<String>> {
    if ports.is_empty() {
        return Ok(Vec::new());
    }
    let mut prog = SchedClassifier::from_pin(prog_pin)
        .map_err(|err| bpf_error("open pinned program", &err))?;
    let mut egress = SchedClassifier::from_pin(egress_pin_of(prog_pin))
        .map_err(|err| bpf_error("open pinned egress program", &err))?;
    let mut done = Vec::new();
    for p in ports {
        let port = link_pin_name(&p.ifname, p.ifindex);
        match attach {
            Attach::Tcx => {
                for (prog, name, at, kind) in [
                    (
                        &mut prog,
                        PROG_INGRESS,
                        TcAttachType::Ingress,
                        LinkPin::TcxIngress,
                    ),
                    (
                        &mut egress,
                        PROG_EGRESS,
                        TcAttachType::Egress,
                        LinkPin::TcxEgress,
                    ),
                ] {
                    attach_tcx(prog, name, &p.ifname, at, &links.join(kind.name(&port)))?;
                }
            }
            Attach::ClsBpf => {
                // An earlier program's filters go first, so a port never
                // runs two copies. (A port without a marker has none.)
                if replace {
                    let _ = qdisc_detach_program(&p.ifname, TcAttachType::Ingress, PROG_INGRESS);
                    let _ = qdisc_detach_program(&p.ifname, TcAttachType::Egress, PROG_EGRESS);
                }
                add_clsact(&p.ifname)?;
                attach_filter(&mut prog, PROG_INGRESS, &p.ifname, TcAttachType::Ingress)?;
                attach_filter(&mut egress, PROG_EGRESS, &p.ifname, TcAttachType::Egress)?;
                let marker = links.join(LinkPin::Filters.name(&port));
                prog.pin(&marker)
                    .map_err(|err| bpf_error(&format!("pin {}", marker.display()), &err))?;
            }
        }
        done.push(p.ifname.clone());
    }
    done.sort();
    Ok(done)
}

/// Attaches `prog` (called `name`) to `ifname` with a tcx link, after any
/// programs already there, and pins the link at `pin`.
fn attach_tcx(
    prog: &mut SchedClassifier,
    name: &str,
    ifname: &str,
    at: TcAttachType,
    pin: &Path,
) -> Result<()> {
    let order = TcAttachOptions::TcxOrder(LinkOrder::default());
    let fd: FdLink = attach_tc(prog, name, ifname, at, order)?
        .try_into()
        .map_err(|err| bpf_error("tcx link as fd link", &err))?;
    // Until pinned, the link lives only as this fd: a failure here detaches.
    fd.pin(pin)
        .map_err(|err| bpf_error(&format!("pin {}", pin.display()), &err))?;
    Ok(())
}

/// Attaches `prog` (called `name`) to `ifname` as `options` say, and
/// returns the link, which the caller owns from then on.
fn attach_tc(
    prog: &mut SchedClassifier,
    name: &str,
    ifname: &str,
    at: TcAttachType,
    options: TcAttachOptions,
) -> Result<SchedClassifierLink> {
    let id = prog
        .attach_with_options(ifname, at, options)
        .map_err(|err| bpf_error(&format!("attaching {name} to {ifname}"), &err))?;
    prog.take_link(id)
        .map_err(|err| bpf_error("taking the tc link", &err))
}

/// Adds the clsact qdisc to `ifname` unless it has one.
fn add_clsact(ifname: &str) -> Result<()> {
    match qdisc_add_clsact(ifname) {
        Ok(()) => Ok(()),
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        Err(err) => Err(bpf_error(&format!("add clsact qdisc on {ifname}"), &err)),
    }
}

/// Attaches `prog` (called `name`) to `ifname`'s clsact qdisc as a
/// direct-action cls_bpf filter.
fn attach_filter(
    prog: &mut SchedClassifier,
    name: &str,
    ifname: &str,
    at: TcAttachType,
) -> Result<()> {
    let options = TcAttachOptions::Netlink(NlOptions::default());
    let link = attach_tc(prog, name, ifname, at, options)?;
    // The filter lives on the qdisc; dropping the handle would delete it.
    std::mem::forget(link);
    Ok(())
}

/// Adds the `steady_l2` counts of the ports leaving `slots` to
/// `STATS_STEADY_RETIRED`, so that the `REDIRECT_L2` total keeps them.
/// Only netctl writes that entry, so the read-modify-write races no
/// datapath increment.
fn retire_steady_counts(
    dir: &Path,
    stats: &PerCpuArray<MapData, PortStats>,
    slots: impl Iterator<Item = u16>,
) -> Result<()> {
    let mut sum = 0u64;
    for s in slots {
        let per_cpu = stats.get(&u32::from(s), 0).map_err(e(MAP_PORT_STATS))?;
        sum += per_cpu.iter().map(|v| v.steady_l2).sum::<u64>();
    }
    if sum == 0 {
        return Ok(());
    }
    let mut counts: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(map_at(dir, MAP_STATS)?).map_err(e(MAP_STATS))?;
    let mut values: Vec<u64> = counts
        .get(&STATS_STEADY_RETIRED, 0)
        .map_err(e(MAP_STATS))?
        .iter()
        .copied()
        .collect();
    if let Some(first) = values.first_mut() {
        *first = first.wrapping_add(sum);
    }
    let values = PerCpuValues::try_from(values).map_err(|err| Error::io("per-CPU values", err))?;
    counts
        .set(STATS_STEADY_RETIRED, values, 0)
        .map_err(e(MAP_STATS))
}

fn nr_cpus() -> Result<usize> {
    aya::util::nr_cpus().map_err(|(what, err)| Error::io(what.to_string(), err))
}

/// Where each port's counters go (`PortInfo::slot`, set in `want`).
#[derive(Debug, PartialEq, Eq)]
struct SlotPlan {
    /// Slots of new ports, to start from zero.
    fresh: Vec<u16>,
    /// Ports moving to their own slot: (from, to).
    moves: Vec<(u16, u16)>,
}

/// A port's own slot is `ifindex % MAP_PORTS_MAX`: the steady path finds
/// its value from the ifindex alone (netctl-ebpf `steady`). A port keeps
/// its slot across applies (its counters survive) unless it can move to
/// its own; a new port takes its own if free, else the first free one.
/// Slots of ports that are gone are free.
fn assign_slots(
    existing: &BTreeMap<u32, PortInfo>,
    want: &mut BTreeMap<u32, PortInfo>,
) -> Result<SlotPlan> {
    let own = |ifindex: u32| (ifindex % MAP_PORTS_MAX) as u16;
    let mut used: BTreeSet<u16> = BTreeSet::new();
    for (i, p) in want.iter_mut() {
        if let Some(old) = existing.get(i) {
            p.slot = old.slot;
            used.insert(old.slot);
        }
    }
    let mut plan = SlotPlan {
        fresh: Vec::new(),
        moves: Vec::new(),
    };
    for (i, p) in want.iter_mut() {
        if existing.contains_key(i) && p.slot != own(*i) && !used.contains(&own(*i)) {
            used.remove(&p.slot);
            used.insert(own(*i));
            plan.moves.push((p.slot, own(*i)));
            p.slot = own(*i);
        }
    }
    let mut placed = BTreeSet::new();
    for (i, p) in want.iter_mut() {
        if !existing.contains_key(i) && used.insert(own(*i)) {
            p.slot = own(*i);
            plan.fresh.push(p.slot);
            placed.insert(*i);
        }
    }
    let mut free = (0..MAP_PORTS_MAX as u16).filter(|s| !used.contains(s));
    for (i, p) in want.iter_mut() {
        if !existing.contains_key(i) && !placed.contains(i) {
            p.slot = free.next().ok_or_else(|| {
                Error::Invalid(format!("more than {MAP_PORTS_MAX} ports in one topology"))
            })?;
            plan.fresh.push(p.slot);
        }
    }
    Ok(plan)
}

fn write_maps(dir: &Path, d: &Desired) -> Result<()> {
    let mut ports: HashMap<MapData, u32, PortInfo> =
        HashMap::try_from(map_at(dir, MAP_PORTS)?).map_err(e(MAP_PORTS))?;
    let existing: BTreeMap<u32, PortInfo> = ports.iter().filter_map(|r| r.ok()).collect();
    let mut want_ports: BTreeMap<u32, PortInfo> =
        d.ports.iter().map(|p| (p.ifindex, p.info)).collect();
    let plan = assign_slots(&existing, &mut want_ports)?;
    let mut stats: PerCpuArray<MapData, PortStats> =
        PerCpuArray::try_from(map_at(dir, MAP_PORT_STATS)?).map_err(e(MAP_PORT_STATS))?;
    let cpus = nr_cpus()?;
    // Ports that are gone leave the map first: `netctl stats` then never
    // counts them twice (in their slot and as retired), and an apply that
    // fails further on does not retire them again. Their counts move
    // before their slots are taken again.
    let gone: Vec<(u32, u16)> = existing
        .iter()
        .filter(|(i, _)| !want_ports.contains_key(i))
        .map(|(i, p)| (*i, p.slot))
        .collect();
    for (i, _) in &gone {
        let _ = ports.remove(i);
    }
    retire_steady_counts(dir, &stats, gone.iter().map(|g| g.1))?;
    // A port moving to its own slot takes its counters along (what the
    // datapath counts in the old one meanwhile, microseconds, is lost).
    for (from, to) in &plan.moves {
        let values = stats.get(&u32::from(*from), 0).map_err(e(MAP_PORT_STATS))?;
        stats
            .set(u32::from(*to), values, 0)
            .map_err(e(MAP_PORT_STATS))?;
    }
    let fresh_slots = plan.fresh;
    for s in &fresh_slots {
        let zero = PerCpuValues::try_from(vec![PortStats::default(); cpus])
            .map_err(|err| Error::io("per-CPU values", err))?;
        stats
            .set(u32::from(*s), zero, 0)
            .map_err(e(MAP_PORT_STATS))?;
    }
    for (k, v) in &want_ports {
        ports.insert(k, v, 0).map_err(e(MAP_PORTS))?;
    }
    write_port_index(dir, &want_ports, &existing)?;
    // At once, not only at the end: the steady path does not look a port
    // up, so until then it would still use what it remembered of ports
    // that are gone or changed.
    invalidate_remembered(dir)?;

    let mut routes: LpmTrie<MapData, [u8; 4], RouteValue> =
        LpmTrie::try_from(map_at(dir, MAP_ROUTES)?).map_err(e(MAP_ROUTES))?;
    let want_routes: BTreeSet<(u32, [u8; 4])> = d
        .routes
        .keys()
        .map(|n| (u32::from(n.prefix_len()), n.network().octets()))
        .collect();
    let stale_routes: Vec<Key<[u8; 4]>> = routes
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| !want_routes.contains(&(k.prefix_len(), k.data())))
        .collect();
    for (n, v) in &d.routes {
        let key = Key::new(u32::from(n.prefix_len()), n.network().octets());
        routes.insert(&key, v, 0).map_err(e(MAP_ROUTES))?;
    }
    for k in &stale_routes {
        let _ = routes.remove(k);
    }

    let mut neigh: HashMap<MapData, [u8; 4], NeighEntry> =
        HashMap::try_from(map_at(dir, MAP_NEIGH)?).map_err(e(MAP_NEIGH))?;
    let stale_neigh: Vec<[u8; 4]> = neigh
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| !d.neigh.contains_key(&Ipv4Addr::from(*k)))
        .collect();
    for (ip, v) in &d.neigh {
        neigh.insert(ip.octets(), v, 0).map_err(e(MAP_NEIGH))?;
    }
    for k in &stale_neigh {
        let _ = neigh.remove(k);
    }

    // Learned entries of ports that are gone would never age out of use
    // (their port no longer exists), so drop them with the port.
    let mut fdb: HashMap<MapData, FdbKey, FdbEntry> =
        HashMap::try_from(map_at(dir, MAP_FDB)?).map_err(e(MAP_FDB))?;
    // The program trusts an entry's port to be on the key's bridge.
    let gone: Vec<FdbKey> = fdb
        .iter()
        .filter_map(|r| r.ok())
        .filter(|(k, v)| want_ports.get(&v.port).is_none_or(|p| p.bridge != k.bridge))
        .map(|(k, _)| k)
        .collect();
    for k in &gone {
        let _ = fdb.remove(k);
    }

    let mut addrs: HashMap<MapData, u32, [u8; 4]> =
        HashMap::try_from(map_at(dir, MAP_IFADDR)?).map_err(e(MAP_IFADDR))?;
    let stale_addrs: Vec<u32> = addrs
        .keys()
        .filter_map(|k| k.ok())
        .filter(|k| !d.ifaddrs.contains_key(k))
        .collect();
    for (i, a) in &d.ifaddrs {
        addrs.insert(i, a, 0).map_err(e(MAP_IFADDR))?;
    }
    for k in &stale_addrs {
        let _ = addrs.remove(k);
    }

    let mut timeouts: Array<MapData, u32> =
        Array::try_from(map_at(dir, MAP_CT_TIMEOUTS)?).map_err(e(MAP_CT_TIMEOUTS))?;
    for (i, secs) in d.ct_timeouts.0.iter().enumerate() {
        timeouts
            .set(i as u32, secs, 0)
            .map_err(e(MAP_CT_TIMEOUTS))?;
    }

    let mut cfg: Array<MapData, u32> =
        Array::try_from(map_at(dir, MAP_CONFIG)?).map_err(e(MAP_CONFIG))?;
    cfg.set(config::FORWARD, u32::from(d.forward), 0)
        .map_err(e(MAP_CONFIG))?;
    cfg.set(config::LAYOUT, super::layout::REVISION, 0)
        .map_err(e(MAP_CONFIG))?;
    // Ports, ageing times or FDB entries may have changed.
    invalidate_remembered(dir)
}

/// Makes the forwarding answers the CPUs remember (`PortStats::forwarded`)
/// stale, by a new FDB generation. Needed after any change to what they
/// depend on: ports, ageing times, FDB entries, and — for the steady path,
/// which skips rules and tracing — `config::RULES_ON` and `config::TRACE`.
/// The datapath adds 1 when a MAC moves, atomically; this adds 2^32, so
/// that even when it overwrites such a bump the value is one no CPU has
/// seen before.
/// `MEMBARRIER_CMD_GLOBAL` (linux/membarrier.h).
const MEMBARRIER_CMD_GLOBAL: libc::c_int = 1;

/// Returns once every program run that started before the call has
/// finished. Programs run under RCU, and `membarrier(MEMBARRIER_CMD_GLOBAL)`
/// waits for an RCU grace period. Between turning rules or tracing on and
/// invalidating the remembered flows, this makes the order hold on any
/// architecture: a run that read the old config ended before the new
/// generation, so what it recorded is stale; a run after it sees the new
/// config. (The datapath's two loads are not ordered on weakly ordered
/// CPUs.)
pub(crate) fn wait_for_program_runs() -> Result<()> {
    // SAFETY: membarrier takes two integers and touches no memory of ours.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0) };
    if rc < 0 {
        return Err(Error::io(
            "membarrier (waiting for running eBPF programs)",
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

pub(crate) fn invalidate_remembered(dir: &Path) -> Result<()> {
    let mut fdb_gen: Array<MapData, u64> =
        Array::try_from(map_at(dir, MAP_FDB_GEN)?).map_err(e(MAP_FDB_GEN))?;
    let generation = fdb_gen.get(&0, 0).map_err(e(MAP_FDB_GEN))?;
    fdb_gen
        .set(0, generation.wrapping_add(1 << 32), 0)
        .map_err(e(MAP_FDB_GEN))
}

/// Writes the direct-mapped port index: a slot holds the port of the
/// lowest ifindex that maps to it (the others are found in the hash).
/// A slot that changes hands is written with ifindex 0 first, so the
/// datapath never matches an ifindex beside another port's fields.
fn write_port_index(
    dir: &Path,
    want: &BTreeMap<u32, PortInfo>,
    existing: &BTreeMap<u32, PortInfo>,
) -> Result<()> {
    let mut index: Array<MapData, PortInfo> =
        Array::try_from(map_at(dir, MAP_PORT_INDEX)?).map_err(e(MAP_PORT_INDEX))?;
    let slots = index_slots(want);
    for (slot, p) in &slots {
        let now = index.get(slot, 0).map_err(e(MAP_PORT_INDEX))?;
        if now == *p {
            continue;
        }
        if now.ifindex != p.ifindex {
            let closed = PortInfo { ifindex: 0, ..*p };
            index.set(*slot, closed, 0).map_err(e(MAP_PORT_INDEX))?;
        }
        index.set(*slot, *p, 0).map_err(e(MAP_PORT_INDEX))?;
    }
    for i in existing.keys().filter(|i| !want.contains_key(i)) {
        let slot = i % PORT_INDEX_SLOTS;
        if !slots.contains_key(&slot) {
            index
                .set(slot, PortInfo::default(), 0)
                .map_err(e(MAP_PORT_INDEX))?;
        }
    }
    Ok(())
}

/// What each used slot of the port index holds: the port of the lowest
/// ifindex among those that map to it.
fn index_slots(want: &BTreeMap<u32, PortInfo>) -> BTreeMap<u32, PortInfo> {
    let mut slots = BTreeMap::new();
    for (i, p) in want {
        slots.entry(i % PORT_INDEX_SLOTS).or_insert(*p);
    }
    slots
}

/// Removes the ingress filter from the port named in a marker pin, if that
/// device (same name, same ifindex) still exists here.
fn detach_port(marker: &str) {
    let Some((_, ifindex)) = parse_link_pin(marker) else {
        return;
    };
    // The marker's name may be mangled (bpffs has no '.'); the ifindex is
    // what identifies the device.
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has the IF_NAMESIZE bytes if_indextoname may write.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return;
    }
    // SAFETY: on success `buf` holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .to_string();
    let _ = qdisc_detach_program(&name, TcAttachType::Ingress, PROG_INGRESS);
    let _ = qdisc_detach_program(&name, TcAttachType::Egress, PROG_EGRESS);
}

/// Removes a topology's datapath: the programs come off the ports (traffic
/// falls back to the kernel bridge), unpinning the XDP links
/// detaches them, then the maps go. Runs in the topology's host namespace.
pub fn detach_blocking(topology: &str, bridges: &[String]) -> Result<bool> {
    let dir = topology_dir(topology);
    if !dir.exists() {
        return Ok(false);
    }
    let links = links_dir(topology);
    for pin in pins::link_pins(topology)? {
        match LinkPin::split(&pin) {
            (LinkPin::Local, _) => {
                let _ = qdisc_detach_program(LOOPBACK, TcAttachType::Ingress, PROG_LOCAL);
            }
            (LinkPin::Filters, port) => detach_port(port),
            // Detached now rather than when the pins go: the kernel releases
            // an unpinned link later, from a workqueue.
            (LinkPin::TcxIngress | LinkPin::TcxEgress, _) => {
                let _ = link_ops::detach_pinned(&links.join(&pin));
            }
            (LinkPin::Xdp, _) => {}
        }
    }
    // The kernel bridge takes over, and with it the kernel's view of a
    // local source arriving on a bridge.
    for b in bridges {
        let _ = crate::sysctl::set_accept_local_here(b, false);
    }
    pins::remove_topology(topology)
}

/// Attaches (`on`) or detaches the XDP program on every port of the
/// topology. It is separate from `sync` because nothing in the datapath
/// needs it yet: an XDP program makes a veth copy ordinary skbs, so it is
/// attached only on request (see `cargo xtask bench datapath`).
pub fn xdp_blocking(topology: &str, d: &Desired, on: bool) -> Result<Vec<String>> {
    let links = links_dir(topology);
    let mut changed = Vec::new();
    if !on {
        for pin in pins::link_pins(topology)? {
            if pin.starts_with("xdp-") {
                fs::remove_file(links.join(&pin))
                    .map_err(|err| Error::io(format!("unpin {pin}"), err))?;
                changed.push(pin);
            }
        }
        return Ok(changed);
    }
    let dir = topology_dir(topology);
    if !dir.join(MAP_PORTS).exists() {
        return Err(Error::Invalid(format!(
            "topology {topology} has no eBPF datapath attached"
        )));
    }
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(&dir)
        .load(object())
        .map_err(|err| bpf_error("loading the eBPF object", &err))?;
    let prog: &mut Xdp = ebpf
        .program_mut(PROG_XDP)
        .ok_or_else(|| Error::Bpf(format!("program {PROG_XDP} missing from the object")))?
        .try_into()
        .map_err(|err| bpf_error(PROG_XDP, &err))?;
    prog.load()
        .map_err(|err| bpf_error(&format!("loading program {PROG_XDP}"), &err))?;
    let present: BTreeSet<String> = pins::link_pins(topology)?.into_iter().collect();
    for p in &d.ports {
        let name = format!("xdp-{}", link_pin_name(&p.ifname, p.ifindex));
        if present.contains(&name) {
            continue;
        }
        let id = prog
            .attach(&p.ifname, XdpMode::Driver)
            .map_err(|err| bpf_error(&format!("attaching {PROG_XDP} to {}", p.ifname), &err))?;
        let link = prog
            .take_link(id)
            .map_err(|err| bpf_error("xdp link", &err))?;
        let fd: FdLink = link
            .try_into()
            .map_err(|err| bpf_error("xdp link as fd link", &err))?;
        fd.pin(links.join(&name))
            .map_err(|err| bpf_error(&format!("pin {name}"), &err))?;
        changed.push(name);
    }
    Ok(changed)
}

/// How a topology's ports are attached, from their pins (`None`: none is).
pub fn attached_as(topology: &str) -> Result<Option<Attach>> {
    Ok(pins::link_pins(topology)?
        .iter()
        .find_map(|p| match LinkPin::split(p).0 {
            LinkPin::TcxIngress => Some(Attach::Tcx),
            LinkPin::Filters => Some(Attach::ClsBpf),
            _ => None,
        }))
}

/// Ports (by ifname@ifindex) that have a pinned ingress link.
pub fn attached_ports(topology: &str) -> Result<Vec<(String, u32)>> {
    Ok(pins::link_pins(topology)?
        .iter()
        .filter(|p| pins::is_port_pin(p))
        .filter_map(|p| parse_link_pin(p))
        .collect())
}

// ---- async entry points, running the blocking work in the host netns ----

use crate::netns::{self, Netns};
use crate::nl::Nl;
use crate::observe::NsView;
use crate::topology::Topology;

/// Reads the kernel state the datapath mirrors, for topology `t`.
pub async fn desired_for(t: &Topology) -> Result<Desired> {
    let host = t.host();
    let hv = NsView::read(&Nl::open(&host).await?).await?;
    Ok(super::desired::compute(t, &hv))
}

/// Makes the pinned datapath of `t` match the kernel's state.
pub async fn sync(t: &Topology) -> Result<SyncReport> {
    let d = desired_for(t).await?;
    let name = t.name.clone();
    in_host(&t.host(), move || sync_blocking(&name, &d)).await
}

/// Removes the datapath of topology `name`, whose host side is in `host`
/// (no-op when there is none).
pub async fn detach(t: &Topology) -> Result<bool> {
    let name = t.name.clone();
    let bridges: Vec<String> = t.bridges.iter().map(|b| b.name.clone()).collect();
    match t.host() {
        Netns::Named(n) if !netns::exists(&n) => detach_blocking_pins_only(&name),
        host => in_host(&host, move || detach_blocking(&name, &bridges)).await,
    }
}

/// Removes only the pins (the host namespace is gone, and the ports with it,
/// or nothing records where it is).
pub fn detach_blocking_pins_only(topology: &str) -> Result<bool> {
    pins::remove_topology(topology)
}

/// Attaches or detaches the XDP program on the topology's ports.
pub async fn xdp(t: &Topology, on: bool) -> Result<Vec<String>> {
    let d = desired_for(t).await?;
    let name = t.name.clone();
    in_host(&t.host(), move || xdp_blocking(&name, &d, on)).await
}

async fn in_host<T, F>(host: &Netns, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    // Errors cross the thread as io::Error; keep the library error intact.
    let out = std::sync::Arc::new(std::sync::Mutex::new(None));
    let slot = out.clone();
    let host2 = host.clone();
    tokio::task::spawn_blocking(move || {
        netns::run_in(&host2, move || {
            *slot.lock().unwrap() = Some(f());
            Ok(())
        })
    })
    .await
    .map_err(|err| Error::Invalid(format!("datapath thread: {err}")))??;
    let r = out.lock().unwrap().take();
    r.unwrap_or_else(|| Err(Error::Invalid("datapath thread returned nothing".into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_index_slot_goes_to_the_lowest_ifindex() {
        let port = |ifindex| PortInfo {
            ifindex,
            ..Default::default()
        };
        let want: BTreeMap<u32, PortInfo> = [7, 7 + PORT_INDEX_SLOTS, 9, 2 * PORT_INDEX_SLOTS + 9]
            .into_iter()
            .rev()
            .map(|i| (i, port(i)))
            .collect();
        let slots = index_slots(&want);
        assert_eq!(slots.len(), 2);
        assert_eq!(slots[&7].ifindex, 7);
        assert_eq!(slots[&9].ifindex, 9);
    }

    fn ports(slots: &[(u32, u16)]) -> BTreeMap<u32, PortInfo> {
        slots
            .iter()
            .map(|&(ifindex, slot)| {
                (
                    ifindex,
                    PortInfo {
                        ifindex,
                        slot,
                        ..Default::default()
                    },
                )
            })
            .collect()
    }

    fn slots(want: &BTreeMap<u32, PortInfo>) -> Vec<(u32, u16)> {
        want.iter().map(|(i, p)| (*i, p.slot)).collect()
    }

    #[test]
    fn new_ports_take_the_slot_their_ifindex_names() {
        let mut want = ports(&[(3, 0), (4, 0), (4096 + 3, 0)]);
        let plan = assign_slots(&BTreeMap::new(), &mut want).unwrap();
        // 4099 names slot 3 as well: it gets the first free one.
        assert_eq!(slots(&want), [(3, 3), (4, 4), (4099, 0)]);
        assert_eq!(plan.fresh, [3, 4, 0]);
        assert!(plan.moves.is_empty());
    }

    #[test]
    fn kept_ports_keep_their_counters_and_move_to_their_own_slot_when_free() {
        // 10 sits in slot 0 (an older build's choice), 20 in 20, 30 in 10.
        let existing = ports(&[(10, 0), (20, 20), (30, 10)]);
        let mut want = ports(&[(10, 0), (20, 0), (30, 0), (40, 0)]);
        let plan = assign_slots(&existing, &mut want).unwrap();
        // 10's own slot is 30's: it stays. 30 moves to its own, which 40
        // (new) does not then take.
        assert_eq!(slots(&want), [(10, 0), (20, 20), (30, 30), (40, 40)]);
        assert_eq!(plan.moves, [(10, 30)]);
        assert_eq!(plan.fresh, [40]);
        // Once 30 has left slot 10, 10 moves there on the next apply.
        let mut again = want.clone();
        let plan = assign_slots(&want, &mut again).unwrap();
        assert_eq!(plan.moves, [(0, 10)]);
        assert_eq!(again[&10].slot, 10);
    }

    #[test]
    fn slots_of_removed_ports_are_free_again() {
        let existing = ports(&[(5, 5), (6, 6)]);
        let mut want = ports(&[(6, 0), (4096 + 5, 0)]);
        let plan = assign_slots(&existing, &mut want).unwrap();
        assert_eq!(slots(&want), [(6, 6), (4101, 5)]);
        assert_eq!(plan.fresh, [5]);
    }
}

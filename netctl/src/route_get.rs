//! Explains a route lookup the way the kernel does it with the default
//! policy rules (local table, then main, then default): local address →
//! delivered here; else the longest matching prefix (lowest metric among
//! equals); else unreachable. Pure, so every rule is unit-tested.

use std::net::IpAddr;

use serde::Serialize;

use crate::state::{RT_TABLE_DEFAULT, RT_TABLE_LOCAL, RT_TABLE_MAIN, Route, RouteKind};

#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The address is one of this namespace's own (local table).
    Local,
    /// A broadcast address of a local subnet (local table).
    Broadcast,
    /// A host route (/32 or /128) matched.
    HostRoute,
    /// The most specific network route matched.
    LongestPrefix,
    /// Only the default route matched.
    Default,
    /// The matching entry is unreachable/blackhole/prohibit.
    Rejected,
    /// Nothing matched at all.
    NoRoute,
}

#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub destination: IpAddr,
    pub reason: Reason,
    pub table: Option<u32>,
    pub matched: Option<Route>,
    /// Every entry of the deciding table that contains the destination,
    /// most specific first.
    pub candidates: Vec<Route>,
}

fn lookup(routes: &[Route], table: u32, dst: IpAddr) -> Vec<Route> {
    let mut c: Vec<Route> = routes
        .iter()
        .filter(|r| r.table == table && r.dst.contains(&dst))
        .filter(|r| r.kind != RouteKind::Multicast && r.kind != RouteKind::Anycast)
        .cloned()
        .collect();
    c.sort_by(|a, b| {
        b.dst
            .prefix_len()
            .cmp(&a.dst.prefix_len())
            .then(a.metric.unwrap_or(0).cmp(&b.metric.unwrap_or(0)))
    });
    c
}

pub fn explain(routes: &[Route], dst: IpAddr) -> Decision {
    let local = lookup(routes, RT_TABLE_LOCAL, dst);
    if let Some(r) = local.first() {
        let reason = match r.kind {
            RouteKind::Local => Some(Reason::Local),
            RouteKind::Broadcast => Some(Reason::Broadcast),
            _ => None,
        };
        if let Some(reason) = reason {
            return Decision {
                destination: dst,
                reason,
                table: Some(RT_TABLE_LOCAL),
                matched: Some(r.clone()),
                candidates: local,
            };
        }
    }
    for table in [RT_TABLE_MAIN, RT_TABLE_DEFAULT] {
        let c = lookup(routes, table, dst);
        let Some(r) = c.first() else { continue };
        // A throw route ends the lookup in this table only.
        if r.kind == RouteKind::Throw {
            continue;
        }
        let reason = match r.kind {
            RouteKind::Unreachable | RouteKind::Blackhole | RouteKind::Prohibit => Reason::Rejected,
            _ if r.dst.prefix_len() == 0 => Reason::Default,
            _ if r.dst.prefix_len() == r.dst.max_prefix_len() => Reason::HostRoute,
            _ => Reason::LongestPrefix,
        };
        return Decision {
            destination: dst,
            reason,
            table: Some(table),
            matched: Some(r.clone()),
            candidates: c,
        };
    }
    Decision {
        destination: dst,
        reason: Reason::NoRoute,
        table: None,
        matched: None,
        candidates: Vec::new(),
    }
}

impl Decision {
    /// One paragraph for people; `dev` names an ifindex.
    pub fn describe(&self, dev: &dyn Fn(u32) -> String) -> String {
        let entry = |r: &Route| crate::render::route_line(r, dev, true);
        let d = self.destination;
        match (&self.reason, &self.matched) {
            (Reason::Local, Some(r)) => format!(
                "{d} is a local address (table local: {}): delivered to this host",
                entry(r)
            ),
            (Reason::Broadcast, Some(r)) => format!(
                "{d} is a broadcast address of a local subnet (table local: {}): delivered to this host and the link",
                entry(r)
            ),
            (Reason::HostRoute, Some(r)) => {
                format!("{d} matches the host route {}", entry(r))
            }
            (Reason::LongestPrefix, Some(r)) => {
                let others: Vec<String> = self.candidates[1..]
                    .iter()
                    .map(|c| {
                        if c.dst.prefix_len() == 0 {
                            "default".to_string()
                        } else {
                            c.dst.to_string()
                        }
                    })
                    .collect();
                let beats = if others.is_empty() {
                    String::new()
                } else {
                    format!(
                        "; /{} is longer than {}",
                        r.dst.prefix_len(),
                        others.join(", ")
                    )
                };
                format!(
                    "{d} matches {} by longest prefix (table {}: {}){beats}",
                    r.dst,
                    table_name(r.table),
                    entry(r)
                )
            }
            (Reason::Default, Some(r)) => format!(
                "{d} matches no specific route; it takes the default route (table {}: {})",
                table_name(r.table),
                entry(r)
            ),
            (Reason::Rejected, Some(r)) => format!(
                "{d} matches a {} route (table {}: {}): dropped, the sender gets an error",
                r.kind.as_str(),
                table_name(r.table),
                entry(r)
            ),
            _ => format!(
                "{d} is unreachable: no local address, no matching route and no default route; \
                 the kernel answers with ICMP net unreachable (ENETUNREACH for local senders)"
            ),
        }
    }
}

pub fn table_name(t: u32) -> String {
    match t {
        RT_TABLE_LOCAL => "local".into(),
        RT_TABLE_MAIN => "main".into(),
        RT_TABLE_DEFAULT => "default".into(),
        n => n.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(table: u32, kind: RouteKind, dst: &str, gw: Option<&str>, oif: u32) -> Route {
        Route::fixture(table, kind, dst, gw, oif)
    }

    fn table() -> Vec<Route> {
        vec![
            r(RT_TABLE_LOCAL, RouteKind::Local, "10.0.0.2/32", None, 2),
            r(
                RT_TABLE_LOCAL,
                RouteKind::Broadcast,
                "10.0.0.255/32",
                None,
                2,
            ),
            r(RT_TABLE_LOCAL, RouteKind::Local, "127.0.0.0/8", None, 1),
            r(
                RT_TABLE_MAIN,
                RouteKind::Unicast,
                "0.0.0.0/0",
                Some("10.0.0.1"),
                2,
            ),
            r(RT_TABLE_MAIN, RouteKind::Unicast, "10.0.0.0/24", None, 2),
            r(
                RT_TABLE_MAIN,
                RouteKind::Unicast,
                "10.0.0.0/8",
                Some("10.0.0.9"),
                2,
            ),
            r(
                RT_TABLE_MAIN,
                RouteKind::Unicast,
                "10.9.9.9/32",
                Some("10.0.0.7"),
                2,
            ),
            r(
                RT_TABLE_MAIN,
                RouteKind::Unreachable,
                "192.0.2.0/24",
                None,
                0,
            ),
        ]
    }

    #[test]
    fn local_wins_over_everything() {
        let d = explain(&table(), "10.0.0.2".parse().unwrap());
        assert_eq!(d.reason, Reason::Local);
        let d = explain(&table(), "127.1.2.3".parse().unwrap());
        assert_eq!(d.reason, Reason::Local);
        let d = explain(&table(), "10.0.0.255".parse().unwrap());
        assert_eq!(d.reason, Reason::Broadcast);
    }

    #[test]
    fn longest_prefix_then_default() {
        let d = explain(&table(), "10.0.0.77".parse().unwrap());
        assert_eq!(d.reason, Reason::LongestPrefix);
        assert_eq!(d.matched.unwrap().dst.to_string(), "10.0.0.0/24");
        assert_eq!(d.candidates.len(), 3);
        let d = explain(&table(), "10.1.0.1".parse().unwrap());
        assert_eq!(d.matched.unwrap().dst.to_string(), "10.0.0.0/8");
        let d = explain(&table(), "10.9.9.9".parse().unwrap());
        assert_eq!(d.reason, Reason::HostRoute);
        let d = explain(&table(), "8.8.8.8".parse().unwrap());
        assert_eq!(d.reason, Reason::Default);
        let d = explain(&table(), "192.0.2.1".parse().unwrap());
        assert_eq!(d.reason, Reason::Rejected);
    }

    #[test]
    fn nothing_matches() {
        let t: Vec<Route> = table()
            .into_iter()
            .filter(|r| r.dst.prefix_len() != 0)
            .collect();
        let d = explain(&t, "8.8.8.8".parse().unwrap());
        assert_eq!(d.reason, Reason::NoRoute);
        assert!(d.describe(&|i| i.to_string()).contains("unreachable"));
    }

    #[test]
    fn lower_metric_breaks_ties() {
        let mut t = table();
        let mut a = r(
            RT_TABLE_MAIN,
            RouteKind::Unicast,
            "172.16.0.0/16",
            Some("10.0.0.3"),
            2,
        );
        a.metric = Some(200);
        let mut b = r(
            RT_TABLE_MAIN,
            RouteKind::Unicast,
            "172.16.0.0/16",
            Some("10.0.0.4"),
            2,
        );
        b.metric = Some(100);
        t.push(a);
        t.push(b);
        let d = explain(&t, "172.16.1.1".parse().unwrap());
        assert_eq!(d.matched.unwrap().gateway.unwrap().to_string(), "10.0.0.4");
    }
}

//! The netlink boundary: one `Nl` per namespace, each wrapping an rtnetlink
//! handle whose socket was opened inside that namespace. Everything above
//! this module speaks in `state` types, never in netlink messages.

mod addr;
mod fdb;
mod link;
mod nsid;
mod route;

pub use link::{LinkChange, VethSpec};
pub use route::RouteSpec;

use std::os::fd::{IntoRawFd, OwnedFd};

use futures::TryStreamExt;
use rtnetlink::Handle;

use crate::error::{Result, from_rtnl};
use crate::netns::{self, Netns};

pub struct Nl {
    pub(crate) h: Handle,
    pub ns: Netns,
    /// The connection task owns the socket, and the socket holds a
    /// reference on its namespace: it must end with the `Nl`, or a deleted
    /// namespace (and its devices) would live on.
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Nl {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Nl {
    /// Opens a netlink connection inside `ns` (see `netns::run_in`).
    pub async fn open(ns: &Netns) -> Result<Nl> {
        let fd = match ns {
            Netns::Current => netns::route_socket()
                .map_err(|e| crate::error::Error::io("open netlink socket", e))?,
            Netns::Named(_) => netns::run_in(ns, netns::route_socket)?,
        };
        Ok(Nl::from_socket(ns.clone(), fd))
    }

    /// Creates the named namespace and returns a connection inside it, with
    /// `lo` up (a new namespace's lo is down; containers expect it up). On
    /// failure the namespace is gone again.
    pub async fn create_netns(name: &str) -> Result<Nl> {
        let fd = netns::create(name, netns::route_socket)?;
        let nl = Nl::from_socket(Netns::named(name), fd);
        if let Err(e) = nl.set_up(1).await {
            // The socket holds the namespace: close it before deleting.
            drop(nl);
            let _ = netns::delete(name);
            return Err(e);
        }
        Ok(nl)
    }

    /// Wraps a netlink route socket that was opened in `ns`.
    pub fn from_socket(ns: Netns, fd: OwnedFd) -> Nl {
        use std::os::fd::FromRawFd;
        // SAFETY: `fd` is an owned, open NETLINK_ROUTE socket; ownership moves
        // into the TokioSocket, which closes it on drop.
        let sock = unsafe { netlink_sys::TokioSocket::from_raw_fd(fd.into_raw_fd()) };
        let (conn, h, _) = rtnetlink::from_socket(sock);
        let task = tokio::spawn(conn);
        Nl { h, ns, task }
    }

    pub(crate) fn ctx(&self, what: impl std::fmt::Display) -> String {
        match &self.ns {
            Netns::Current => what.to_string(),
            Netns::Named(n) => format!("{what} (netns {n})"),
        }
    }

    pub(crate) async fn collect<T, S>(&self, what: &str, s: S) -> Result<Vec<T>>
    where
        S: futures::Stream<Item = std::result::Result<T, rtnetlink::Error>>,
    {
        s.try_collect()
            .await
            .map_err(|e| from_rtnl(self.ctx(what), e))
    }
}

//! netctl: container networking for Linux hosts — namespaces, veth pairs,
//! bridges, addresses and routes over netlink, with an eBPF datapath.

pub mod datapath;
pub mod error;
pub mod mac;
pub mod names;
pub mod netns;
pub mod nl;
pub mod observe;
pub mod ops;
pub mod render;
pub mod route_get;
pub mod rules;
pub mod show;
pub mod state;
pub mod sysctl;
pub mod topology;

pub use error::{Error, Result};

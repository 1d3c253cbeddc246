//! One error type for the library, so that every failure names the object it
//! concerns and, where the kernel's answer is cryptic, explains it.

use std::io;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Invalid(String),

    #[error("network namespace {0:?} does not exist")]
    NoSuchNetns(String),

    #[error("network namespace {0:?} already exists")]
    NetnsExists(String),

    #[error("no device {name:?} in namespace {netns}")]
    NoSuchLink { name: String, netns: String },

    #[error(
        "{name} is a netns-local device ({kind}) and cannot be moved to another namespace; \
         create it in {target} instead"
    )]
    NetnsLocal {
        name: String,
        kind: String,
        target: String,
    },

    // The cause is part of the message rather than a `#[source]`, so
    // that chains printed with `{:#}` do not say it twice.
    #[error("{what}: {cause}")]
    Kernel { what: String, cause: io::Error },

    #[error("{what}: {cause}")]
    Io { what: String, cause: io::Error },

    #[error("eBPF: {0}")]
    Bpf(String),

    /// A ruleset, rule or rule edit refused (iptables' reason, where it has one).
    #[error(transparent)]
    Rules(#[from] crate::rules::parse::RuleError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            what: what.into(),
            cause: source,
        }
    }

    /// The errno the kernel answered with, when there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Kernel { cause, .. } | Error::Io { cause, .. } => cause.raw_os_error(),
            _ => None,
        }
    }
}

/// Turns an rtnetlink error into an `io::Error` carrying the kernel's errno,
/// so callers can match on it and messages read like `ip`'s.
pub(crate) fn from_rtnl(what: impl Into<String>, e: rtnetlink::Error) -> Error {
    let source = match e {
        rtnetlink::Error::NetlinkError(msg) => match msg.code {
            Some(code) => io::Error::from_raw_os_error(-code.get()),
            None => io::Error::other("netlink error without code"),
        },
        other => io::Error::other(other.to_string()),
    };
    Error::Kernel {
        what: what.into(),
        cause: source,
    }
}

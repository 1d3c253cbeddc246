//! Declarative topologies: file → validated model → plan → kernel.

pub mod apply;
pub mod docker;
pub mod model;
pub mod parse;
pub mod plan;
pub mod store;

pub use apply::{Report, apply, destroy};
pub use model::*;
pub use parse::{TopologyError, parse};
pub use plan::Step;

/// Reads and validates a topology file.
pub fn load_file(path: &std::path::Path) -> crate::Result<Topology> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| crate::Error::io(format!("read {}", path.display()), e))?;
    parse(&text, &path.display().to_string()).map_err(|e| crate::Error::Invalid(e.to_string()))
}

#[cfg(test)]
mod docker_tests;
#[cfg(test)]
mod tests;

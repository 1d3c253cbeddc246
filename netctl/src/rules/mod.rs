//! Netfilter rules: the model, iptables-save text, edits, and the compiler
//! that turns a ruleset into the datapath's classification maps.

pub mod compile;
pub mod edit;
pub mod eval;
pub mod list;
pub mod model;
pub mod netdb;
pub mod parse;
pub mod save;
pub mod validate;
// `gen` is a reserved word from edition 2024 on.
pub mod r#gen;
pub mod live;
pub mod store;

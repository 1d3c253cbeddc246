pub mod args;
pub mod commands;
mod conntrack;
mod datapath;
mod rules;

pub mod args;
pub mod commands;
mod datapath;
mod rules;

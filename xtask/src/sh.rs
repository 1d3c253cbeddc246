//! Running commands and saying what they do.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

pub fn cargo(args: &[&str]) -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.args(args).current_dir(root());
    c
}

pub fn cargo_owned(args: &[String]) -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.args(args).current_dir(root());
    c
}

/// Runs `cmd`, announcing it; fails with the step's name.
pub fn step(what: &str, mut cmd: Command) -> Result<()> {
    eprintln!("==> {what}");
    let st = cmd
        .status()
        .with_context(|| format!("{what}: cannot start {:?}", cmd.get_program()))?;
    if !st.success() {
        bail!("{what}: {:?} failed ({st})", cmd.get_program());
    }
    Ok(())
}

/// Runs `cmd` quietly and returns its stdout, or `None` if it failed.
pub fn output(cmd: &mut Command) -> Option<String> {
    let o = cmd.output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).to_string())
}

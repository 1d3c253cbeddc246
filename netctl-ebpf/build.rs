//! Rebuild the eBPF object when `bpf-linker` changes: cargo does not know the
//! linker is an input.

use std::{env, path::PathBuf};

fn main() {
    let found = env::var_os("PATH").and_then(|path| {
        env::split_paths(&path)
            .map(|dir| dir.join("bpf-linker"))
            .find(|p: &PathBuf| p.is_file())
    });
    if let Some(linker) = found {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}

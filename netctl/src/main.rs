use clap::Parser;

mod cli;

use cli::args::{Cli, Cmd, NetnsCmd};

fn main() {
    // Output piped into `head` and closed early ends the process quietly,
    // as with other command-line tools, instead of a panic on EPIPE.
    // SAFETY: setting a signal's disposition to the default, before any
    // thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("NETCTL_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let args = Cli::parse();
    // exec replaces the process; it must happen before any runtime thread
    // exists, since setns on a multi-threaded process only moves one thread.
    if let Cmd::Netns(NetnsCmd::Exec { name, cmd }) = &args.cmd {
        match netctl::netns::exec(name, cmd) {
            Ok(never) => match never {},
            Err(e) => fail(&e.into()),
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = rt.block_on(cli::commands::run(args.cmd)) {
        fail(&e);
    }
}

fn fail(e: &anyhow::Error) -> ! {
    eprintln!("netctl: {e:#}");
    std::process::exit(1);
}

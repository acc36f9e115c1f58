//! `inhouse`: the client for the daemon's socket. The commands are [`inhouse::cli`]; this only
//! parses the command line, runs it and maps an error to exit status 1.

use clap::Parser;

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    match inhouse::cli::run(inhouse::cli::Args::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("inhouse: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

//! `leasehold-kube-emulator [--port N] [--token T]... [--history N] [--bookmarks SECS]`
//!
//! Runs the Kubernetes API server emulator on 127.0.0.1 until killed. Without `--token`,
//! requests need no authentication.

use std::process::ExitCode;
use std::time::Duration;

use leasehold_kube_emulator::{AccessToken, Emulator, EmulatorConfig};

fn usage(problem: &str) -> ExitCode {
    eprintln!(
        "{problem}\nusage: leasehold-kube-emulator [--port N] [--token T]... [--history EVENTS] [--bookmarks SECS]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let mut config = EmulatorConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let Some(value) = args.next() else { return usage(&format!("{flag} needs a value")) };
        match flag.as_str() {
            "--port" => match value.parse() {
                Ok(p) => config.port = Some(p),
                Err(_) => return usage(&format!("--port: {value:?} is not a port number")),
            },
            "--token" => config.tokens.push(AccessToken::full(value)),
            "--history" => match value.parse() {
                Ok(n) => config.history_limit = n,
                Err(_) => return usage(&format!("--history: {value:?} is not a number of events")),
            },
            "--bookmarks" => match value.parse::<f64>() {
                Ok(s) if s > 0.0 && s.is_finite() => config.bookmark_interval = Some(Duration::from_secs_f64(s)),
                Ok(_) => config.bookmark_interval = None,
                Err(_) => return usage(&format!("--bookmarks: {value:?} is not a number of seconds")),
            },
            other => return usage(&format!("unknown flag {other:?}")),
        }
    }
    let emulator = match Emulator::start(config) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cannot start the emulator: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("kube API server emulator listening on {}", emulator.url());
    loop {
        std::thread::park();
    }
}

//! `leasehold-ha`: run an HA member, or operate a cluster with `ctl`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use leasehold_ha_daemon::config::DaemonConfig;
use leasehold_ha_daemon::ctl::{self, CtlCommand};
use leasehold_ha_daemon::daemon;

/// Leader election for a resource, driven by hooks, over etcd, ZooKeeper, Consul or Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "leasehold-ha", version)]
struct Cli {
    /// The configuration file (TOML). Keys can be overridden with `LEASEHOLD_<KEY>` variables.
    #[arg(short, long, env = "LEASEHOLD_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a member until SIGTERM or SIGINT (a leader demotes and releases the key first).
    Run {
        /// Validate the configuration, print a summary and exit.
        #[arg(long)]
        check_config: bool,
    },
    /// Operate the cluster: list, topology, switchover, failover, pause, resume, history,
    /// restart, reload, reinit, remove.
    Ctl {
        #[command(subcommand)]
        command: CtlCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(path) = cli.config else {
        eprintln!("error: no configuration file: pass --config <file> or set LEASEHOLD_CONFIG");
        return ExitCode::from(2);
    };
    let config = match DaemonConfig::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    // ctl prints tables on stdout; only warnings go to stderr there.
    let is_ctl = matches!(cli.command, Command::Ctl { .. });
    leasehold_ha_daemon::logging::init(if is_ctl { "warn" } else { &config.log_level });
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Run { check_config: true } => {
            println!(
                "{}: ok (scope {}, member {}, store {}, ttl {:?}, loop_wait {:?}, retry_timeout {:?}, api {})",
                path.display(),
                config.scope,
                config.name,
                config.store.kind(),
                config.timing.ttl,
                config.timing.loop_wait,
                config.timing.retry_timeout,
                config.restapi.connect_url
            );
            Ok(0)
        }
        Command::Run { check_config: false } => runtime.block_on(daemon::run(config, path.clone())),
        Command::Ctl { command } => runtime.block_on(ctl::run(config, command)),
    };
    match result {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

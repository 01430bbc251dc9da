//! Seed sweep for the deterministic simulator: runs many seeds, prints a progress line and a
//! summary table (runs, simulated time, speed-up, violations by invariant, overlap outside the
//! envelope, failover latency, lost acknowledged writes). A failing seed prints its report
//! (config, schedule, violations, timeline) and the replay command.
//!
//! ```text
//! cargo run --release --features sim --example sim_sweep -- --iterations 2000 --profile consul --nodes 5
//! cargo run --release --features sim --example sim_sweep -- --reproduce 1234 --profile etcd --nodes 3
//! cargo run --release --features sim --example sim_sweep -- --reproduce 7 --profile etcd --svg run.svg
//! ```
#![allow(clippy::disallowed_methods)] // wall-clock time only for the speed figure

#[cfg(not(feature = "sim"))]
fn main() {
    eprintln!("sim_sweep needs the `sim` feature: cargo run --release --features sim --example sim_sweep -- --help");
}

#[cfg(feature = "sim")]
fn main() -> std::process::ExitCode {
    sweep::main()
}

#[cfg(feature = "sim")]
mod sweep {
    use std::collections::BTreeMap;
    use std::process::ExitCode;
    use std::time::{Duration, Instant};

    use leasehold::sim::{InvariantId, Mutation, Scenario, SimConfig, StoreProfile};

    struct Args {
        seed: u64,
        iterations: u64,
        reproduce: Option<u64>,
        profiles: Vec<StoreProfile>,
        nodes: usize,
        sync: bool,
        faults: usize,
        beyond: bool,
        mutation: Option<Mutation>,
        chaos: Option<Duration>,
        patroni_timing: bool,
        svg: Option<String>,
    }

    fn parse() -> Result<Args, String> {
        let mut a = Args {
            seed: 0,
            iterations: 200,
            reproduce: None,
            profiles: StoreProfile::ALL.to_vec(),
            nodes: 3,
            sync: false,
            faults: 12,
            beyond: false,
            mutation: None,
            chaos: None,
            patroni_timing: false,
            svg: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut val = || it.next().ok_or_else(|| format!("{flag} needs a value"));
            let num = |v: String| v.parse::<u64>().map_err(|_| format!("{flag}: {v:?} is not a number"));
            match flag.as_str() {
                "--seed" => a.seed = num(val()?)?,
                "--iterations" => a.iterations = num(val()?)?,
                "--reproduce" => a.reproduce = Some(num(val()?)?),
                "--profile" => a.profiles = vec![val()?.parse()?],
                "--nodes" => {
                    a.nodes = num(val()?)? as usize;
                    if !(1..=9).contains(&a.nodes) {
                        return Err("--nodes: must be 1 to 9".into());
                    }
                }
                "--faults" => a.faults = num(val()?)? as usize,
                "--chaos-secs" => a.chaos = Some(Duration::from_secs(num(val()?)?)),
                "--timing" => {
                    a.patroni_timing = match val()?.as_str() {
                        "fast" => false,
                        "patroni" => true,
                        v => return Err(format!("--timing: {v:?} is not fast or patroni")),
                    }
                }
                "--sync" => a.sync = true,
                "--svg" => a.svg = Some(val()?),
                "--beyond" => a.beyond = true,
                "--mutation" => {
                    let v = val()?;
                    a.mutation = Some(
                        Mutation::ALL
                            .into_iter()
                            .find(|m| format!("{m:?}").eq_ignore_ascii_case(&v))
                            .ok_or_else(|| format!("--mutation: unknown {v:?}; one of {:?}", Mutation::ALL))?,
                    );
                }
                "--help" | "-h" => {
                    return Err("usage: sim_sweep [--seed N] [--iterations N] [--reproduce SEED] [--profile etcd|zookeeper|consul|kubernetes] [--nodes 1-9] [--sync] [--faults N] [--beyond] [--mutation NAME] [--chaos-secs N] [--timing fast|patroni] [--svg PATH (with --reproduce)]\n  --timing patroni: Timing::default() (ttl 30 s, loop_wait 10 s) with 720 s of chaos unless --chaos-secs".into());
                }
                other => return Err(format!("unknown argument {other:?} (try --help)")),
            }
        }
        Ok(a)
    }

    fn scenario(a: &Args, profile: StoreProfile, seed: u64) -> Scenario {
        let mut cfg = SimConfig::new(a.nodes);
        cfg.synchronous = a.sync;
        cfg.mutation = a.mutation;
        let mut s = Scenario::with_config(cfg).profile(profile);
        if a.patroni_timing {
            s = s.timing(leasehold::Timing::default()).chaos(Duration::from_secs(720));
        }
        if let Some(chaos) = a.chaos {
            s = s.chaos(chaos);
        }
        s.seed(seed).random_faults(a.faults, a.beyond)
    }

    fn pct(v: &[Duration], p: f64) -> Duration {
        if v.is_empty() {
            return Duration::ZERO;
        }
        v[((v.len() - 1) as f64 * p).round() as usize]
    }

    pub fn main() -> ExitCode {
        // RUST_LOG=leasehold=debug shows the nodes' own log lines next to a replay.
        if std::env::var_os("RUST_LOG").is_some() {
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_writer(std::io::stderr)
                .init();
        }
        let a = match parse() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        };
        if a.svg.is_some() && a.reproduce.is_none() {
            eprintln!("--svg needs --reproduce SEED (the picture is of one run)");
            return ExitCode::from(2);
        }
        if let Some(seed) = a.reproduce {
            let r = scenario(&a, a.profiles[0], seed).run();
            println!("{r}");
            if let Some(path) = &a.svg {
                if let Err(e) = std::fs::write(path, r.svg()) {
                    eprintln!("--svg: cannot write {path}: {e}");
                    return ExitCode::from(2);
                }
                eprintln!("wrote the timeline picture to {path}");
            }
            return if r.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE };
        }
        let mut failed = false;
        println!(
            "{:<11} {:>6} {:>10} {:>8} {:>9} {:>24} {:>9} {:>9} {:>30} {:>6}",
            "profile",
            "runs",
            "sim time",
            "wall",
            "speed-up",
            "violations",
            "outside",
            "overlap",
            "failover min/med/p99/max",
            "lost"
        );
        for &profile in &a.profiles {
            let start = Instant::now();
            let (mut sim, mut by_inv, mut failovers) =
                (Duration::ZERO, BTreeMap::<InvariantId, u64>::new(), Vec::new());
            let (mut overlap, mut outside, mut lost) = (Duration::ZERO, 0u64, 0u64);
            for i in 0..a.iterations {
                let seed = a.seed + i;
                let r = scenario(&a, profile, seed).run();
                sim += r.simulated;
                failovers.extend(r.measured.failovers.iter().copied());
                lost += r.measured.lost_acked_writes;
                if !r.within_envelope {
                    overlap += r.measured.overlap;
                    outside += r.measured.outside_envelope_breaches;
                }
                for v in &r.violations {
                    *by_inv.entry(v.invariant).or_default() += 1;
                }
                if !r.is_ok() && !failed {
                    failed = true;
                    eprintln!("\nFAILED {profile} seed {seed}\n{r}");
                }
                if a.iterations >= 20 && (i + 1) % (a.iterations / 10) == 0 {
                    eprint!("\r{profile}: {}/{} seeds", i + 1, a.iterations);
                }
            }
            eprint!("\r");
            let wall = start.elapsed();
            failovers.sort();
            let v: Vec<String> = by_inv.iter().map(|(k, n)| format!("{k}:{n}")).collect();
            let fo = format!(
                "{:.2}/{:.2}/{:.2}/{:.2}s",
                pct(&failovers, 0.0).as_secs_f64(),
                pct(&failovers, 0.5).as_secs_f64(),
                pct(&failovers, 0.99).as_secs_f64(),
                pct(&failovers, 1.0).as_secs_f64()
            );
            println!(
                "{:<11} {:>6} {:>9.0}s {:>7.2}s {:>8.0}x {:>24} {:>9} {:>8.3}s {:>30} {:>6}",
                profile.to_string(),
                a.iterations,
                sim.as_secs_f64(),
                wall.as_secs_f64(),
                sim.as_secs_f64() / wall.as_secs_f64().max(1e-9),
                if v.is_empty() { "none".to_string() } else { v.join(" ") },
                outside,
                overlap.as_secs_f64(),
                fo,
                lost
            );
        }
        if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
    }
}

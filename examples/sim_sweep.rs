//! Seed sweep for the deterministic simulator: runs many seeds, prints a progress line and a
//! summary table (runs, simulated time, speed-up, violations by invariant, overlap outside the
//! envelope, failover latency, lost acknowledged writes). A failing seed prints its report
//! (config, schedule, violations, timeline) and the replay command; every further failing seed
//! prints one line with its first violation and its replay command.
//!
//! `--vary` draws the node count (3, 5 or 7) and the number of faults (12 to 40) from each
//! seed, and with `--sync` the synchronous standby count (1 to nodes - 1) and strict mode (one
//! seed in four), so one sweep covers many sizes; the replay command of a failure names the
//! drawn values. `--jobs N` runs seeds on N threads (same results, in any order).
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
        sync_count: Option<usize>,
        strict: bool,
        faults: usize,
        beyond: bool,
        mutation: Option<Mutation>,
        chaos: Option<Duration>,
        patroni_timing: bool,
        svg: Option<String>,
        vary: bool,
        jobs: usize,
    }

    fn parse() -> Result<Args, String> {
        let mut a = Args {
            seed: 0,
            iterations: 200,
            reproduce: None,
            profiles: StoreProfile::ALL.to_vec(),
            nodes: 3,
            sync: false,
            sync_count: None,
            strict: false,
            faults: 12,
            beyond: false,
            mutation: None,
            chaos: None,
            patroni_timing: false,
            svg: None,
            vary: false,
            jobs: 1,
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
                "--sync-count" => {
                    let n = num(val()?)? as usize;
                    if !(1..=8).contains(&n) {
                        return Err(format!(
                            "--sync-count: {n} must be 1 to 8 (at least one standby, fewer than nodes)"
                        ));
                    }
                    a.sync_count = Some(n);
                    a.sync = true;
                }
                "--strict" => {
                    a.strict = true;
                    a.sync = true;
                }
                "--svg" => a.svg = Some(val()?),
                "--beyond" => a.beyond = true,
                "--vary" => a.vary = true,
                "--jobs" => a.jobs = (num(val()?)? as usize).clamp(1, 64),
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
                    return Err("usage: sim_sweep [--seed N] [--iterations N] [--reproduce SEED] [--profile etcd|zookeeper|consul|kubernetes] [--nodes 1-9] [--sync] [--sync-count N] [--strict] [--faults N] [--beyond] [--mutation NAME] [--chaos-secs N] [--timing fast|patroni] [--svg PATH (with --reproduce)] [--vary] [--jobs N]\n  --sync-count N: synchronous standbys (synchronous_node_count; implies --sync)\n  --strict: synchronous_mode_strict (implies --sync)\n  --vary: nodes (3, 5, 7) and faults (12-40) drawn per seed; with --sync also the standby count (1 to nodes - 1, unless --sync-count) and strict mode (1 seed in 4)\n  --timing patroni: Timing::default() (ttl 30 s, loop_wait 10 s) with 720 s of chaos unless --chaos-secs".into());
                }
                other => return Err(format!("unknown argument {other:?} (try --help)")),
            }
        }
        Ok(a)
    }

    /// What `--vary` draws for one seed.
    struct Size {
        nodes: usize,
        faults: usize,
        sync_count: usize,
        strict: bool,
    }

    /// The node, fault and standby counts and strict mode for `seed`: the arguments', or with
    /// `--vary` drawn from the seed (a fixed mix, so a replay with the printed values is exact).
    fn size(a: &Args, seed: u64) -> Size {
        let fixed = Size { nodes: a.nodes, faults: a.faults, sync_count: a.sync_count.unwrap_or(1), strict: a.strict };
        if !a.vary {
            return fixed;
        }
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        let nodes = [3, 5, 7][(z % 3) as usize];
        Size {
            nodes,
            faults: 12 + ((z >> 8) % 29) as usize,
            sync_count: a.sync_count.unwrap_or(1 + ((z >> 16) % (nodes as u64 - 1)) as usize),
            strict: a.strict || (z >> 24).is_multiple_of(4),
        }
    }

    fn scenario(a: &Args, profile: StoreProfile, seed: u64) -> Scenario {
        let Size { nodes, faults, sync_count, strict } = size(a, seed);
        let mut cfg = SimConfig::new(nodes);
        cfg.synchronous = a.sync;
        cfg.sync_count = sync_count;
        cfg.strict = a.sync && strict;
        cfg.mutation = a.mutation;
        let mut s = Scenario::with_config(cfg).profile(profile);
        if a.patroni_timing {
            s = s.timing(leasehold::Timing::default()).chaos(Duration::from_secs(720));
        }
        if let Some(chaos) = a.chaos {
            s = s.chaos(chaos);
        }
        s.seed(seed).random_faults(faults, a.beyond)
    }

    /// What one profile's sweep adds up to.
    #[derive(Default)]
    struct Totals {
        sim: Duration,
        by_inv: BTreeMap<InvariantId, u64>,
        failovers: Vec<Duration>,
        overlap: Duration,
        outside: u64,
        lost: u64,
        failed: Vec<String>,
        first_report: Option<(u64, String)>,
    }

    impl Totals {
        fn add(&mut self, seed: u64, r: &leasehold::sim::Report) {
            self.sim += r.simulated;
            self.failovers.extend(r.measured.failovers.iter().copied());
            self.lost += r.measured.lost_acked_writes;
            if !r.within_envelope {
                self.overlap += r.measured.overlap;
                self.outside += r.measured.outside_envelope_breaches;
            }
            for v in &r.violations {
                *self.by_inv.entry(v.invariant).or_default() += 1;
            }
            if !r.is_ok() {
                let first = r.violations.first().map(ToString::to_string).unwrap_or_else(|| "not ok".into());
                let replay = r.replay_command().unwrap_or_else(|| "(no replay command)".into());
                self.failed.push(format!("seed {seed}: {first}\n    replay: {replay}"));
                if self.first_report.as_ref().is_none_or(|(s, _)| seed < *s) {
                    self.first_report = Some((seed, r.to_string()));
                }
            }
        }

        fn merge(&mut self, o: Totals) {
            self.sim += o.sim;
            for (k, n) in o.by_inv {
                *self.by_inv.entry(k).or_default() += n;
            }
            self.failovers.extend(o.failovers);
            self.overlap += o.overlap;
            self.outside += o.outside;
            self.lost += o.lost;
            self.failed.extend(o.failed);
            if let Some((seed, r)) = o.first_report
                && self.first_report.as_ref().is_none_or(|(s, _)| seed < *s)
            {
                self.first_report = Some((seed, r));
            }
        }
    }

    /// A progress bar on stderr, redrawn in place.
    fn progress(profile: StoreProfile, done: u64, total: u64) {
        let width = 30;
        let filled = (done * width / total.max(1)) as usize;
        eprint!("\r{profile:<10} [{}{}] {done}/{total} seeds", "#".repeat(filled), " ".repeat(width as usize - filled));
    }

    /// Runs `a.iterations` seeds from `a.seed` on `a.jobs` threads.
    fn sweep_profile(a: &Args, profile: StoreProfile) -> Totals {
        use std::sync::atomic::{AtomicU64, Ordering};
        let next = AtomicU64::new(0);
        let done = AtomicU64::new(0);
        let step = (a.iterations / 100).max(1);
        let mut totals = Totals::default();
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..a.jobs)
                .map(|_| {
                    scope.spawn(|| {
                        let mut t = Totals::default();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            if i >= a.iterations {
                                return t;
                            }
                            let seed = a.seed + i;
                            t.add(seed, &scenario(a, profile, seed).run());
                            let d = done.fetch_add(1, Ordering::Relaxed) + 1;
                            if a.iterations >= 20 && d.is_multiple_of(step) {
                                progress(profile, d, a.iterations);
                            }
                        }
                    })
                })
                .collect();
            for w in workers {
                totals.merge(w.join().expect("a sweep worker panicked"));
            }
        });
        totals
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
            let t = sweep_profile(&a, profile);
            let (sim, by_inv, mut failovers) = (t.sim, &t.by_inv, t.failovers.clone());
            let (overlap, outside, lost) = (t.overlap, t.outside, t.lost);
            if let Some((seed, report)) = &t.first_report {
                failed = true;
                eprintln!("\nFAILED {profile} seed {seed}\n{report}");
                let mut lines = t.failed.clone();
                lines.sort();
                eprintln!("{} failing seeds on {profile}:", lines.len());
                for l in lines {
                    eprintln!("  {l}");
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

//! Simulator speed: simulated time per wall time for a 5-node cluster under chaos, per store
//! profile, at the simulator's fast timing and at Patroni's default timing; and the time
//! proptest needs to find and shrink a failure (a mutation), with the shrunk schedule's fault
//! count. Prints numbers; asserts nothing about time.
//!
//! ```text
//! cargo bench --features sim --bench sim            # all profiles, 20 seeds each
//! SIM_BENCH_SEEDS=200 cargo bench --features sim --bench sim
//! ```
#![allow(clippy::disallowed_methods)] // wall-clock time is what this measures

use std::time::{Duration, Instant};

use leasehold::sim::{InvariantId, Mutation, Scenario, SimConfig, StoreProfile, strategy};
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

/// Which timing a chaos run uses.
#[derive(Clone, Copy)]
enum Speed {
    /// `Timing::fast()`: ttl 5 s, loop_wait 1 s (the simulator's default, and CI's sweep).
    Fast,
    /// `Timing::default()`: Patroni's ttl 30 s, loop_wait 10 s, retry_timeout 10 s, with the
    /// chaos phase stretched 6x so the faults per ttl stay the same.
    Patroni,
}

fn chaos_run(profile: StoreProfile, speed: Speed, seed: u64) -> leasehold::sim::Report {
    let mut s = Scenario::new(5).profile(profile);
    if let Speed::Patroni = speed {
        s = s.timing(leasehold::Timing::default()).chaos(Duration::from_secs(720));
    }
    // The default timeline (400 rows) and picture are kept: what a user of the sweep gets.
    s.seed(seed).random_faults(12, false).run()
}

fn main() {
    let seeds: u64 = std::env::var("SIM_BENCH_SEEDS").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    for (speed, title) in [
        (Speed::Fast, "Timing::fast (ttl 5 s, loop_wait 1 s), 120 s chaos"),
        (Speed::Patroni, "Timing::default (ttl 30 s, loop_wait 10 s), 720 s chaos"),
    ] {
        println!(
            "5 nodes, 12 random faults, {title} + liveness phase, client write every 50 ms, {seeds} seeds per profile, one thread"
        );
        println!(
            "{:<11} {:>10} {:>9} {:>10} {:>12} {:>14}",
            "profile", "simulated", "wall", "speed-up", "steps", "steps/s"
        );
        let (mut all_sim, mut all_wall) = (Duration::ZERO, Duration::ZERO);
        for profile in StoreProfile::ALL {
            let (mut sim, mut steps) = (Duration::ZERO, 0u64);
            let start = Instant::now();
            for seed in 0..seeds {
                let r = chaos_run(profile, speed, seed);
                sim += r.simulated;
                steps += r.steps;
                std::hint::black_box(&r);
            }
            let wall = start.elapsed();
            all_sim += sim;
            all_wall += wall;
            println!(
                "{:<11} {:>9.0}s {:>8.2}s {:>9.0}x {:>12} {:>14.0}",
                profile.to_string(),
                sim.as_secs_f64(),
                wall.as_secs_f64(),
                sim.as_secs_f64() / wall.as_secs_f64(),
                steps,
                steps as f64 / wall.as_secs_f64()
            );
        }
        println!(
            "{:<11} {:>9.0}s {:>8.2}s {:>9.0}x",
            "all",
            all_sim.as_secs_f64(),
            all_wall.as_secs_f64(),
            all_sim.as_secs_f64() / all_wall.as_secs_f64()
        );
        println!();
    }

    // A simulated day in one run: Patroni's timing, the same fault density (12 per 720 s).
    println!("one simulated day per profile: 5 nodes, Timing::default, 1,440 random faults over 24 h, one thread");
    for profile in StoreProfile::ALL {
        let day = Scenario::new(5).profile(profile).timing(leasehold::Timing::default());
        let start = Instant::now();
        let r = day.chaos(Duration::from_secs(86_400)).seed(1).random_faults(1440, false).run();
        let wall = start.elapsed();
        println!(
            "{:<11} {:>9.0}s simulated in {:.2}s wall ({:.0}x), {} steps, violations: {}",
            profile.to_string(),
            r.simulated.as_secs_f64(),
            wall.as_secs_f64(),
            r.simulated.as_secs_f64() / wall.as_secs_f64(),
            r.steps,
            r.violations.len()
        );
    }
    println!();

    // Shrinking: proptest finds a failure of the safety-margin mutation and shrinks it.
    let start = Instant::now();
    let mut runner =
        TestRunner::new(Config { cases: 256, max_shrink_iters: 1000, failure_persistence: None, ..Config::default() });
    let strat = (proptest::prelude::any::<u64>(), strategy::schedule(3, Duration::from_secs(40), 20, 10_000, 600));
    let result = runner.run(&strat, |(seed, faults)| {
        let mut cfg = SimConfig::new(3);
        cfg.chaos = Duration::from_secs(40);
        cfg.liveness = cfg.liveness_bound() + 2 * cfg.timing.ttl;
        let r = Scenario::with_config(cfg).seed(seed).faults(faults).mutation(Mutation::NoSafetyMargin).run();
        if r.violated(InvariantId::I6) || r.violated(InvariantId::I1) || r.violated(InvariantId::I1Prime) {
            return Err(TestCaseError::fail("violation"));
        }
        Ok(())
    });
    let wall = start.elapsed();
    match result {
        Err(TestError::Fail(_, (seed, faults))) => println!(
            "shrink: NoSafetyMargin failure found and shrunk to {} fault(s) (seed {seed}) in {:.2}s wall",
            faults.len(),
            wall.as_secs_f64()
        ),
        other => println!("shrink: no failure found in {:.2}s ({other:?})", wall.as_secs_f64()),
    }
}

//! Faults: a killed and restarted agent, a session invalidated early (destroyed, as a
//! failing check or an operator does), lock-delay, ACL refusals, health checks, the session
//! TTL floor: on a real Consul agent where one is found (else the emulator). Three faults a
//! real agent cannot be made to produce stay on the emulator, each saying why: a client agent
//! down while the servers keep its session, blocking queries returning early, and a lost
//! acquire reply.

mod common;

use std::time::Duration;

use common::{Target, emulator, options, timing};
use leasehold::testkit::election::timing_for;
use leasehold::{CasOutcome, Dcs, DcsError, LeaderRecord, MemberRecord, Timing, WatchEvent};
use leasehold_consul::testing::{ConsulAgent, ConsulAgentConfig};
use leasehold_consul::{ConsulClient, ConsulOptions};
use leasehold_consul_emulator::{Emulator, EmulatorConfig, Expiry};
use reqwest::Method;

fn record(member: &str, token: &str) -> LeaderRecord {
    LeaderRecord { member: member.into(), token: token.into(), api_url: None, conn_url: None }
}

async fn client(emulator: &Emulator) -> ConsulClient {
    ConsulClient::connect(options(emulator), &timing()).await.expect("connect")
}

/// Polls `f` every 50 ms until it returns true, for at most `limit`.
async fn eventually<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..(limit.as_millis() / 50).max(1) {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

async fn on(target: &Target) -> ConsulClient {
    ConsulClient::connect(target.options(), &timing()).await.expect("connect")
}

/// Emulator only: with `consul agent -dev` the agent is the server, so stopping it loses
/// every session; the emulator keeps the servers' state while its HTTP side is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_down_is_unavailable_and_the_session_survives_a_short_outage() {
    let emu = emulator(Expiry::AtTwiceTtl);
    let c = client(&emu).await;
    let pg = c.scope("pg");
    let lease = pg.acquire(&record("a", "t1")).await.unwrap().won().expect("free key");

    emu.stop_agent();
    for result in [pg.load().await.map(|_| ()), pg.acquire(&record("a", "t2")).await.map(|_| ())] {
        let err = result.expect_err("agent is down");
        assert!(err.is_retryable(), "connection refused means not applied: {err}");
    }
    let renew = pg.renew(&lease).await.expect_err("agent is down");
    assert!(renew.is_retryable(), "{renew}");
    // Shorter than the session TTL (1 s): the servers keep the session.
    tokio::time::sleep(Duration::from_millis(300)).await;
    emu.start_agent().unwrap();

    let renewed = pg.renew(&lease).await.unwrap();
    assert!(renewed.is_won(), "{renewed:?}");
    assert_eq!(renewed.won().unwrap().epoch, lease.epoch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_session_is_reported_and_a_new_one_republishes_members() {
    let mut target = Target::start().await;
    let c = on(&target).await;
    let pg = c.scope("pg");
    pg.publish_member(&MemberRecord::new("a")).await.unwrap();
    let lease = pg.acquire(&record("a", "t1")).await.unwrap().won().unwrap();
    let old = c.session_id().unwrap();

    match &mut target {
        // Killed and restarted: a -dev agent starts empty, as a cluster that lost its state.
        Target::Real(agent) => {
            agent.kill();
            let err = pg.load().await.expect_err("agent is down");
            assert!(err.is_retryable(), "connection refused means not applied: {err}");
            agent.restart().await.expect("consul starts again");
        }
        Target::Emulator(emu) => {
            emu.stop_agent();
            // Past 2x the session TTL: the session is invalidated while the agent is unreachable.
            let gone =
                eventually(Duration::from_secs(5), || async { !emu.sessions().iter().any(|s| s.id == old) }).await;
            assert!(gone, "session should expire while the agent is down");
            emu.start_agent().unwrap();
        }
    }
    let renew = pg.renew(&lease).await;
    assert!(
        matches!(&renew, Err(e) if e.is_lease_lost()) || matches!(&renew, Ok(CasOutcome::Lost(None))),
        "renew after the session was lost must report the loss: {renew:?}"
    );
    let observer = on(&target).await.scope("pg");
    let back = eventually(Duration::from_secs(10), || async {
        c.session_id().is_some_and(|s| s != old) && observer.load().await.is_ok_and(|v| v.member("a").is_some())
    })
    .await;
    assert!(back, "a new session with the member key re-published");
    assert!(observer.load().await.unwrap().leader.is_none(), "the leader key went with the old session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_invalidated_early_demotes_and_lock_delay_blocks_others() {
    let target = Target::start().await;
    let (a, b) = (on(&target).await, on(&target).await);
    let (pa, pb) = (a.scope("pg"), b.scope("pg"));
    let lease = pa.acquire(&record("a", "t1")).await.unwrap().won().unwrap();
    let view = pb.load().await.unwrap();
    assert_eq!(view.leader.as_ref().map(|l| l.epoch), Some(lease.epoch));

    // As a failing health check or an operator would, long before the TTL.
    assert!(target.invalidate_session(&a.session_id().unwrap()).await);
    // Either answer demotes: the session is gone (LeaseLost), or the mirror already saw the
    // key deleted with it (Lost, no holder); a CI run met the second.
    let renew = pa.renew(&lease).await;
    assert!(
        matches!(&renew, Err(e) if e.is_lease_lost()) || matches!(&renew, Ok(CasOutcome::Lost(None))),
        "an invalidated session must lose the key: {renew:?}"
    );
    // b reads through its own mirror, which learns of the deletion one blocking query later.
    let deleted =
        eventually(Duration::from_secs(2), || async { pb.load().await.is_ok_and(|v| v.leader.is_none()) }).await;
    assert!(deleted, "Behavior=delete removed the leader key");

    let taken =
        eventually(Duration::from_secs(2), || async { pb.acquire(&record("b", "t2")).await.is_ok_and(|o| o.is_won()) })
            .await;
    assert!(taken, "acquired after the 1 ms lock-delay");
    let view = pb.load().await.unwrap();
    let epoch = view.leader.expect("b holds").epoch;
    assert!(epoch > lease.epoch, "{epoch:?} > {:?}", lease.epoch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_delay_makes_acquire_lost_until_it_passes() {
    let target = Target::start().await;
    let opts = ConsulOptions { lock_delay: Duration::from_millis(1500), ..target.options() };
    let a = ConsulClient::connect(opts, &timing()).await.unwrap();
    let b = on(&target).await;
    a.scope("pg").acquire(&record("a", "t1")).await.unwrap().won().unwrap();
    assert!(target.invalidate_session(&a.session_id().unwrap()).await);
    let pb = b.scope("pg");
    let first = pb.acquire(&record("b", "t2")).await.unwrap();
    assert_eq!(first, CasOutcome::Lost(None), "lock-delay blocks the key right after invalidation");
    let won =
        eventually(Duration::from_secs(4), || async { pb.acquire(&record("b", "t3")).await.is_ok_and(|o| o.is_won()) })
            .await;
    assert!(won, "acquire succeeds once the lock-delay passed");
    assert_eq!(pb.bounds().max_expiry, 2 * b.lease_ttl() + Duration::from_millis(1));
}

/// Emulator only: a real agent answers a blocking query early only on its own schedule.
/// Watches without the mirror (each its own blocking query on the scope, which any change
/// of the scope wakes); the mirror's wakes are tested in `tests/mirror.rs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_returning_blocking_queries_do_not_fake_changes() {
    let emu = emulator(Expiry::AtTwiceTtl);
    let without_mirror = || async {
        let options = ConsulOptions { watch_mirror: false, ..options(&emu) };
        ConsulClient::connect(options, &timing()).await.expect("connect")
    };
    let (a, b) = (without_mirror().await, without_mirror().await);
    let (pa, pb) = (a.scope("pg"), b.scope("pg"));
    pb.publish_member(&MemberRecord::new("b")).await.unwrap();
    let view = pa.load().await.unwrap();
    let before = emu.request_counts();
    emu.return_early(5);
    let event = pa.watch(view.revision.as_ref(), Duration::from_millis(800)).await.unwrap();
    assert_eq!(event, WatchEvent::Timeout);
    let blocking = (emu.request_counts() - before).kv_blocking_get;
    assert!(blocking >= 6, "five early returns were retried, then a real wait: {blocking} blocking queries");

    emu.return_early(3);
    let (event, ()) = tokio::join!(pa.watch(view.revision.as_ref(), Duration::from_secs(5)), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        pb.publish_member(&MemberRecord { position: Some(1), ..MemberRecord::new("b") }).await.unwrap();
    });
    assert_eq!(event.unwrap(), WatchEvent::Changed);
}

/// Emulator only: a real agent cannot be made to apply a write and drop its reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_acquire_reply_is_outcome_unknown_and_a_reread_finds_our_token() {
    let emu = emulator(Expiry::AtTwiceTtl);
    let c = client(&emu).await;
    let pg = c.scope("pg");
    emu.drop_next_acquire_reply();
    let err = pg.acquire(&record("a", "lost-reply")).await.expect_err("the reply never arrives");
    assert!(err.is_outcome_unknown(), "{err}");
    let view = pg.load().await.unwrap();
    let leader = view.leader.expect("the acquire was applied");
    assert_eq!(leader.record.token, "lost-reply");
    // The node re-reads and finds its token: the key is ours and renewable at that epoch.
    let lease = leasehold::Lease {
        record: leader.record,
        epoch: leader.epoch,
        version: leader.version,
        valid_for: Duration::ZERO,
    };
    assert!(pg.renew(&lease).await.unwrap().is_won());
    let again = pg.acquire(&record("a", "second")).await.unwrap();
    assert!(matches!(&again, CasOutcome::Lost(Some(v)) if v.record.token == "lost-reply"), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_tokens_are_fatal_with_a_clear_message() {
    let target = Target::start().await;
    for token in [None, Some("wrong".to_string())] {
        let opts = ConsulOptions { token: token.clone(), ..target.options() };
        let err = ConsulClient::connect(opts, &timing()).await.expect_err("403");
        assert!(err.is_fatal(), "{err}");
        let text = err.to_string();
        assert!(text.contains("ACL token") && text.contains("403"), "{token:?}: {text}");
    }
    let bad = ConsulClient::connect(
        ConsulOptions { address: "localhost:8500".into(), ..ConsulOptions::default() },
        &timing(),
    )
    .await;
    let err = bad.expect_err("invalid address");
    assert!(err.is_fatal() && err.to_string().contains("address"), "{err}");
    let c = on(&target).await;
    let err = c.scope("a/b").load().await.expect_err("bad scope");
    assert!(err.is_fatal() && err.to_string().contains("scope"), "{err}");
}

/// An ACL token with exactly what the backend documents (`key:write` on the prefix,
/// `session:write` on the node) does every call; without `session:write` the client is
/// refused at connect, without `key:write` at the first write. Real agent only (the
/// emulator's ACLs are one token list).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_token_with_key_and_session_rights_is_enough() {
    let target = Target::start().await;
    if !target.is_real() {
        common::announce("skipped: ACL policies need a real Consul agent (none found)".into());
        return;
    }
    let token = |rules: &'static str, name: &'static str| {
        let target = &target;
        async move {
            let policy = serde_json::json!({"Name": name, "Rules": rules}).to_string();
            let (status, body) = target.http(Method::PUT, "/v1/acl/policy", Some(policy)).await;
            assert_eq!(status, 200, "create policy: {body}");
            let token = serde_json::json!({"Policies": [{"Name": name}]}).to_string();
            let (status, body) = target.http(Method::PUT, "/v1/acl/token", Some(token)).await;
            assert_eq!(status, 200, "create token: {body}");
            let created: serde_json::Value = serde_json::from_str(&body).unwrap();
            created["SecretID"].as_str().unwrap().to_string()
        }
    };
    let full =
        token("key_prefix \"service/\" { policy = \"write\" }\nsession_prefix \"\" { policy = \"write\" }", "lh-full")
            .await;
    let no_session = token("key_prefix \"service/\" { policy = \"write\" }", "lh-keys").await;
    let read_only =
        token("key_prefix \"service/\" { policy = \"read\" }\nsession_prefix \"\" { policy = \"write\" }", "lh-read")
            .await;
    let with = |t: &str| ConsulOptions { token: Some(t.to_string()), ..target.options() };

    let c = ConsulClient::connect(with(&full), &timing()).await.expect("key and session rights are enough");
    let pg = c.scope("pg");
    pg.publish_member(&MemberRecord::new("a")).await.unwrap();
    let lease = pg.acquire(&record("a", "t")).await.unwrap().won().expect("free");
    let lease = pg.renew(&lease).await.unwrap().won().expect("ours");
    let view = pg.load().await.unwrap();
    let _ = pg.watch(view.revision.as_ref(), Duration::from_millis(200)).await.unwrap();
    let v = pg.write_control(leasehold::ControlKey::Config, leasehold::Expect::Absent, b"{}").await.unwrap();
    assert!(v.is_won());
    assert!(pg.release(&lease).await.unwrap().is_won());
    c.shutdown().await.unwrap();

    let err = ConsulClient::connect(with(&no_session), &timing()).await.expect_err("no session rights");
    assert!(err.is_fatal() && err.to_string().contains("403"), "{err}");
    let c = ConsulClient::connect(with(&read_only), &timing()).await.expect("sessions allowed");
    let err = c.scope("pg").acquire(&record("a", "t2")).await.expect_err("no key:write");
    assert!(err.is_fatal() && err.to_string().contains("403"), "{err}");
}

/// Consul's session-TTL floor: a ttl whose session TTL (ttl / 2) is below it is refused by
/// the options check with a message naming the floor, and an agent whose floor is higher
/// than the client was told refuses the session: a fatal error naming the floor, never a
/// silently longer lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_below_the_session_ttl_floor_is_refused_naming_it() {
    let ten = Timing { ttl: Duration::from_secs(10), ..Timing::default() };
    let err = ConsulClient::connect(ConsulOptions::default(), &ten).await.expect_err("ttl 10 s: session TTL 5 s");
    assert!(err.is_fatal() && err.to_string().contains("10s session-TTL floor"), "{err}");

    // An agent with Consul's default floor (10 s), a client that believes it is 1 s.
    let (mut agent, mut emu) = (None, None);
    let address = match ConsulAgent::binary().expect("usable") {
        Some(_) => agent.insert(ConsulAgent::start(ConsulAgentConfig::default()).await.expect("starts")).address(),
        None => emu.insert(Emulator::start(EmulatorConfig::default()).expect("emulator")).url(),
    };
    let options = ConsulOptions { address, session_ttl_min: Duration::from_secs(1), ..ConsulOptions::default() };
    let err = ConsulClient::connect(options, &timing_for(Duration::from_secs(4)))
        .await
        .expect_err("the agent refuses a 2 s session");
    let text = err.to_string();
    assert!(err.is_fatal() && text.contains("10s session-TTL floor") && text.contains("2s"), "{text}");
}

/// Sessions are TTL-only by default (`Checks: []`; Consul 1.6 ignores `NodeChecks` and would
/// tie the session to serfHealth), and `checks` ties them to registered checks: a failing
/// check invalidates the session, and renew reports the loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_are_ttl_only_by_default_and_checks_are_honoured() {
    let target = Target::start().await;
    let c = on(&target).await;
    let info = target.session_info(&c.session_id().unwrap()).await;
    assert_eq!(info["Checks"], serde_json::json!([]), "TTL-only: {info}");
    assert_eq!(info["TTL"], "1s");
    assert_eq!(info["Behavior"], "delete");
    assert_eq!(info["LockDelay"], 1_000_000, "1 ms");
    if !target.is_real() {
        common::announce("skipped: the check part needs a real Consul agent (none found)".into());
        return;
    }
    let check = serde_json::json!({"Name": "lh-check", "TTL": "60s", "Status": "passing"}).to_string();
    let (status, body) = target.http(Method::PUT, "/v1/agent/check/register", Some(check)).await;
    assert_eq!(status, 200, "{body}");
    let opts = ConsulOptions { checks: vec!["lh-check".into()], ..target.options() };
    let checked = ConsulClient::connect(opts, &timing()).await.expect("a registered check");
    let info = target.session_info(&checked.session_id().unwrap()).await;
    assert_eq!(info["Checks"], serde_json::json!(["lh-check"]), "{info}");
    let pg = checked.scope("pg");
    let lease = pg.acquire(&record("a", "t")).await.unwrap().won().expect("free");
    let (status, body) = target.http(Method::PUT, "/v1/agent/check/fail/lh-check", None).await;
    assert_eq!(status, 200, "{body}");
    let lost =
        eventually(Duration::from_secs(3), || async { matches!(pg.renew(&lease).await, Err(e) if e.is_lease_lost()) })
            .await;
    assert!(lost, "a failing check invalidates the session and the renew reports it");
    let opts = ConsulOptions { checks: vec!["no-such-check".into()], ..target.options() };
    let err = ConsulClient::connect(opts, &timing()).await.expect_err("unregistered check");
    assert!(err.to_string().contains("no-such-check"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_client_refuses_calls_and_its_session_expires() {
    let target = Target::start().await;
    let c = on(&target).await;
    let id = c.session_id().unwrap();
    c.stop();
    let err = c.scope("pg").load().await.expect_err("stopped");
    assert!(matches!(err, DcsError::Fatal { .. }), "{err}");
    // Session TTL 1 s; Consul may keep it up to twice that, and sweeps lazily.
    let gone = eventually(Duration::from_secs(10), || async { !target.session_exists(&id).await }).await;
    assert!(gone, "an unrenewed session expires");
    let closing = on(&target).await;
    let id = closing.session_id().unwrap();
    closing.shutdown().await.unwrap();
    assert!(!target.session_exists(&id).await, "shutdown destroys the session at once");
}

//! Faults injected through the emulator: agent down, a session invalidated early, blocking
//! queries returning early, a lost acquire reply; and the clear errors for bad tokens.

mod common;

use std::time::Duration;

use common::{TOKEN, emulator, options};
use leasehold::{CasOutcome, Dcs, DcsError, LeaderRecord, MemberRecord, WatchEvent};
use leasehold_consul::{ConsulClient, ConsulOptions};
use leasehold_consul_emulator::{Emulator, EmulatorConfig, Expiry};

fn record(member: &str, token: &str) -> LeaderRecord {
    LeaderRecord { member: member.into(), token: token.into(), api_url: None, conn_url: None }
}

async fn client(emulator: &Emulator) -> ConsulClient {
    ConsulClient::connect(options(emulator, Duration::from_secs(2))).await.expect("connect")
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
async fn a_long_outage_loses_the_session_and_a_new_one_republishes_members() {
    let emu = emulator(Expiry::AtTtl);
    let c = client(&emu).await;
    let pg = c.scope("pg");
    pg.publish_member(&MemberRecord::new("a")).await.unwrap();
    let lease = pg.acquire(&record("a", "t1")).await.unwrap().won().unwrap();
    let old = c.session_id().unwrap();

    emu.stop_agent();
    // Past 2x the session TTL: the session is invalidated while the agent is unreachable.
    let gone = eventually(Duration::from_secs(5), || async { !emu.sessions().iter().any(|s| s.id == old) }).await;
    assert!(gone, "session should expire while the agent is down");
    emu.start_agent().unwrap();

    let renew = pg.renew(&lease).await;
    assert!(
        matches!(&renew, Err(e) if e.is_lease_lost()) || matches!(&renew, Ok(CasOutcome::Lost(None))),
        "renew after the session expired must report the loss: {renew:?}"
    );
    let observer = client(&emu).await.scope("pg");
    let back = eventually(Duration::from_secs(5), || async {
        c.session_id().is_some_and(|s| s != old) && observer.load().await.is_ok_and(|v| v.member("a").is_some())
    })
    .await;
    assert!(back, "a new session with the member key re-published");
    assert!(observer.load().await.unwrap().leader.is_none(), "the leader key went with the old session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_invalidated_early_demotes_and_lock_delay_blocks_others() {
    let emu = emulator(Expiry::AtTwiceTtl);
    let (a, b) = (client(&emu).await, client(&emu).await);
    let (pa, pb) = (a.scope("pg"), b.scope("pg"));
    let lease = pa.acquire(&record("a", "t1")).await.unwrap().won().unwrap();
    let view = pb.load().await.unwrap();
    assert_eq!(view.leader.as_ref().map(|l| l.epoch), Some(lease.epoch));

    // As a failing serfHealth check would, long before the TTL.
    assert!(emu.invalidate_session(&a.session_id().unwrap()));
    let renew = pa.renew(&lease).await;
    assert!(matches!(&renew, Err(e) if e.is_lease_lost()), "invalidated session must be LeaseLost: {renew:?}");
    assert!(pb.load().await.unwrap().leader.is_none(), "Behavior=delete removed the leader key");

    let taken = pb.acquire(&record("b", "t2")).await.unwrap().won().expect("after the 1 ms lock-delay");
    assert!(taken.epoch > lease.epoch, "{:?} > {:?}", taken.epoch, lease.epoch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_delay_makes_acquire_lost_until_it_passes() {
    let emu = emulator(Expiry::AtTwiceTtl);
    let opts = ConsulOptions { lock_delay: Duration::from_millis(800), ..options(&emu, Duration::from_secs(2)) };
    let a = ConsulClient::connect(opts).await.unwrap();
    let b = client(&emu).await;
    a.scope("pg").acquire(&record("a", "t1")).await.unwrap().won().unwrap();
    assert!(emu.invalidate_session(&a.session_id().unwrap()));
    let pb = b.scope("pg");
    let first = pb.acquire(&record("b", "t2")).await.unwrap();
    assert_eq!(first, CasOutcome::Lost(None), "lock-delay blocks the key right after invalidation");
    let won =
        eventually(Duration::from_secs(3), || async { pb.acquire(&record("b", "t3")).await.is_ok_and(|o| o.is_won()) })
            .await;
    assert!(won, "acquire succeeds once the lock-delay passed");
    assert_eq!(pb.bounds().max_expiry, 2 * b.session_ttl() + Duration::from_millis(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_returning_blocking_queries_do_not_fake_changes() {
    let emu = emulator(Expiry::AtTwiceTtl);
    let (a, b) = (client(&emu).await, client(&emu).await);
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
    let emu = emulator(Expiry::AtTwiceTtl);
    for token in [None, Some("wrong".to_string())] {
        let opts = ConsulOptions { token: token.clone(), ..options(&emu, Duration::from_secs(2)) };
        let err = ConsulClient::connect(opts).await.expect_err("403");
        assert!(err.is_fatal(), "{err}");
        let text = err.to_string();
        assert!(text.contains("ACL token") && text.contains("403"), "{token:?}: {text}");
    }
    let bad =
        ConsulClient::connect(ConsulOptions { address: "localhost:8500".into(), ..ConsulOptions::default() }).await;
    let err = bad.expect_err("invalid address");
    assert!(err.is_fatal() && err.to_string().contains("address"), "{err}");
    let c = ConsulClient::connect(ConsulOptions { token: Some(TOKEN.into()), ..options(&emu, Duration::from_secs(2)) })
        .await
        .unwrap();
    let err = c.scope("a/b").load().await.expect_err("bad scope");
    assert!(err.is_fatal() && err.to_string().contains("scope"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_session_ttl_adopts_the_agents_minimum() {
    // Consul's real bounds here: 10 s minimum.
    let emu = Emulator::start(EmulatorConfig::with_token(TOKEN)).unwrap();
    let c = ConsulClient::connect(options(&emu, Duration::from_secs(4))).await.expect("adopts 10 s");
    assert_eq!(c.session_ttl(), Duration::from_secs(10));
    let pg = c.scope("pg");
    assert_eq!(pg.bounds().ttl, Duration::from_secs(10));
    let sessions = emu.sessions();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].ttl, Some(Duration::from_secs(10)));
    assert!(sessions[0].node_checks.is_empty(), "no health checks by default");
    assert_eq!(sessions[0].lock_delay, Duration::from_millis(1));
    assert_eq!(sessions[0].behavior, leasehold_consul_emulator::Behavior::Delete);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_client_refuses_calls_and_its_session_expires() {
    let emu = emulator(Expiry::AtTtl);
    let c = client(&emu).await;
    let id = c.session_id().unwrap();
    c.stop();
    let err = c.scope("pg").load().await.expect_err("stopped");
    assert!(matches!(err, DcsError::Fatal { .. }), "{err}");
    let gone = eventually(Duration::from_secs(5), || async { !emu.sessions().iter().any(|s| s.id == id) }).await;
    assert!(gone, "an unrenewed session expires");
    let closing = client(&emu).await;
    let id = closing.session_id().unwrap();
    closing.close().await.unwrap();
    assert!(!emu.sessions().iter().any(|s| s.id == id), "close destroys the session at once");
}

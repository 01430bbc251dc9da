//! Faults against real ZooKeeper: an ensemble leader killed during leadership, a server
//! frozen past the session timeout, a session expired by the server, ACL-protected znodes,
//! and bad connect strings.

use std::time::Duration;

use leasehold::Timing;
use leasehold::testkit::election::timing_for;
use leasehold::{CasOutcome, ControlKey, Dcs, DcsError, Expect, LeaderRecord, Lease, MemberRecord};
use leasehold_test_servers::CutProxy;
use leasehold_zookeeper::testing::{ZkServer, test_options};
use leasehold_zookeeper::{AclPolicy, DigestAuth, ZkClient, ZkOptions};
use zookeeper_client as zk;

fn record(member: &str, token: &str) -> LeaderRecord {
    LeaderRecord { member: member.into(), token: token.into(), api_url: None, conn_url: None }
}

async fn acquire(dcs: &dyn Dcs, r: &LeaderRecord) -> Lease {
    match dcs.acquire(r).await {
        Ok(CasOutcome::Won(lease)) => lease,
        other => panic!("acquire by {} to win, got {other:?}", r.member),
    }
}

#[allow(clippy::disallowed_methods)] // Tests bound their waiting loops on the real clock.
fn now() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

/// Retries `f` every 100 ms until it returns `Some`, failing after `limit` (a liveness bound
/// with ample slack, not a speed assertion).
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(now() < deadline, "gave up waiting for {what} after {limit:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_survives_the_ensemble_leader_being_killed() {
    let mut server = ZkServer::ensemble().await.expect("ensemble");
    let holder = ZkClient::connect(test_options(&server), &timing_for(Duration::from_secs(6))).await.expect("connect");
    let rival = ZkClient::connect(test_options(&server), &timing_for(Duration::from_secs(6))).await.expect("connect");
    let (dh, dr) = (holder.scope("killed"), rival.scope("killed"));
    let lease = acquire(&dh, &record("a", "t1")).await;

    let zk_leader = server.leader().await.expect("an ensemble leader");
    server.kill(zk_leader).expect("kill the ZooKeeper leader");

    // The session moves to a surviving server; the key stays ours with the same epoch.
    let renewed = eventually("a renew through the surviving quorum", Duration::from_secs(30), || async {
        match dh.renew(&lease).await {
            Ok(CasOutcome::Won(l)) => Some(l),
            Ok(lost @ CasOutcome::Lost(_)) => panic!("the key was lost when the ZooKeeper leader died: {lost:?}"),
            Err(e) if e.is_lease_lost() || e.is_fatal() => panic!("renew failed for good: {e}"),
            Err(_) => None,
        }
    })
    .await;
    assert_eq!(renewed.epoch, lease.epoch);
    assert!(renewed.valid_for <= holder.lease_ttl());
    let outcome = eventually("the rival's acquire to get an answer", Duration::from_secs(30), || async {
        dr.acquire(&record("b", "t2")).await.ok()
    })
    .await;
    assert!(
        matches!(&outcome, CasOutcome::Lost(Some(v)) if v.record.token == "t1" && v.epoch == lease.epoch),
        "{outcome:?}"
    );
    assert!(server.leader().await.is_some_and(|l| l != zk_leader));
    assert!(matches!(dh.release(&renewed).await, Ok(CasOutcome::Won(()))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_server_ends_the_belief_on_our_clock_and_members_come_back() {
    let mut server = ZkServer::standalone().await.expect("standalone");
    let options = ZkOptions { request_timeout: Duration::from_millis(500), ..test_options(&server) };
    let client = ZkClient::connect(options.clone(), &timing_for(Duration::from_secs(2))).await.expect("connect");
    let timeout = client.lease_ttl();
    let dcs = client.scope("frozen");
    dcs.publish_member(&MemberRecord::new("a")).await.expect("publish");
    let lease = acquire(&dcs, &record("a", "t1")).await;
    assert!(lease.valid_for <= timeout);
    let first_session = client.session_id();

    server.pause(0).expect("SIGSTOP");
    // While the server is frozen nothing can come from it: the belief must end anyway.
    let mut last = lease.clone();
    let deadline = now() + timeout * 4;
    let lost = loop {
        assert!(now() < deadline, "renew never reported LeaseLost while the server was frozen");
        match dcs.renew(&last).await {
            Ok(CasOutcome::Won(l)) => {
                assert!(l.valid_for <= timeout);
                last = l;
            }
            Ok(CasOutcome::Lost(v)) => panic!("a frozen server cannot report the key lost: {v:?}"),
            Err(e) if e.is_lease_lost() => break e,
            Err(e) => assert!(e.is_retryable() || e.is_outcome_unknown(), "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(lost.to_string().contains("session"), "{lost}");
    // Requests while disconnected fail instead of queueing.
    let load = dcs.load().await;
    assert!(matches!(&load, Err(e) if e.is_retryable()), "{load:?}");
    // Keep it frozen past the client's own expiry declaration (1.4 x timeout from last contact).
    tokio::time::sleep(timeout * 2).await;
    server.resume(0).expect("SIGCONT");

    // A new session: the member is back, the old leadership is gone for good.
    eventually("a new session", Duration::from_secs(30), || async {
        (client.is_connected() && client.session_id() != first_session).then_some(())
    })
    .await;
    let observer =
        ZkClient::connect(test_options(&server), &timing_for(Duration::from_secs(2))).await.expect("observer");
    let dobs = observer.scope("frozen");
    let view = eventually("the member re-registered and the old key gone", Duration::from_secs(30), || async {
        let view = dobs.load().await.ok()?;
        (view.member("a").is_some() && view.leader.is_none()).then_some(view)
    })
    .await;
    assert!(view.problems.is_empty());
    let renew = dcs.renew(&lease).await;
    assert!(matches!(&renew, Err(e) if e.is_lease_lost()), "{renew:?}");
    let again = acquire(&dcs, &record("a", "t2")).await;
    assert!(again.epoch > lease.epoch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_expired_by_the_server_is_replaced() {
    let server = ZkServer::standalone().await.expect("standalone");
    // The client reaches the server through a proxy the test cuts: the server then expires the
    // session itself, as it does when a member's network fails for longer than the session.
    let proxy = CutProxy::start(server.client_port(0)).expect("proxy");
    let options = ZkOptions { connect: format!("127.0.0.1:{}", proxy.port()), ..test_options(&server) };
    let client = ZkClient::connect(options, &timing_for(Duration::from_secs(2))).await.expect("connect");
    let dcs = client.scope("expired");
    dcs.publish_member(&MemberRecord::new("a")).await.expect("publish");
    let lease = acquire(&dcs, &record("a", "t1")).await;
    let first_session = client.session_id();

    proxy.cut();
    let observer =
        ZkClient::connect(test_options(&server), &timing_for(Duration::from_secs(2))).await.expect("observer");
    let dobs = observer.scope("expired");
    eventually(
        "the server to expire the session (its member and leader znodes gone)",
        Duration::from_secs(30),
        || async {
            let view = dobs.load().await.ok()?;
            (view.member("a").is_none() && view.leader.is_none()).then_some(())
        },
    )
    .await;
    proxy.heal();
    let lost = eventually("renew to report the lost session", Duration::from_secs(20), || async {
        match dcs.renew(&lease).await {
            Err(e) if e.is_lease_lost() => Some(Ok(())),
            Ok(CasOutcome::Lost(v)) => Some(Err(format!("{v:?}"))),
            Ok(CasOutcome::Won(_)) | Err(_) => None,
        }
    })
    .await;
    // Lost(None) (key gone) is also a correct answer once the old session's znodes are deleted.
    if let Err(v) = lost {
        assert_eq!(v, "None");
    }
    eventually("a new session", Duration::from_secs(20), || async {
        (client.is_connected() && client.session_id() != first_session).then_some(())
    })
    .await;
    let view = eventually("the member re-registered", Duration::from_secs(20), || async {
        let view = dcs.load().await.ok()?;
        view.member("a").is_some().then_some(view)
    })
    .await;
    assert!(view.leader.is_none(), "{:?}", view.leader);
    let renew = dcs.renew(&lease).await;
    assert!(matches!(&renew, Err(e) if e.is_lease_lost()), "{renew:?}");
    let again = acquire(&dcs, &record("a", "t2")).await;
    assert!(again.epoch > lease.epoch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_protected_znodes_resist_another_identity() {
    let server = ZkServer::standalone().await.expect("standalone");
    let secure = |user: &str| ZkOptions {
        prefix: "/secure".into(),
        digest: Some(DigestAuth { user: user.into(), password: format!("{user}-pw") }),
        acl: AclPolicy::CreatorWriteOthersRead,
        ..test_options(&server)
    };
    let timing = timing_for(Duration::from_secs(4));
    let owner = ZkClient::connect(secure("alice"), &timing).await.expect("owner");
    let intruder = ZkClient::connect(secure("mallory"), &timing).await.expect("intruder");
    let (dow, din) = (owner.scope("pg"), intruder.scope("pg"));
    let lease = acquire(&dow, &record("a", "t1")).await;
    let v = dow.write_control(ControlKey::Config, Expect::Absent, b"{}").await.expect("write").won().expect("won");

    // Others may read ...
    let view = din.load().await.expect("read as another identity");
    assert_eq!(view.leader.as_ref().map(|l| l.epoch), Some(lease.epoch));
    // ... but not write or delete.
    let write = din.write_control(ControlKey::Config, Expect::Version(v.clone()), b"{\"pause\":true}").await;
    assert!(matches!(&write, Err(e) if e.is_fatal() && e.to_string().contains("not authorized")), "{write:?}");
    let raw = zk::Client::connector()
        .with_auth("digest", b"mallory:mallory-pw")
        .connect(&server.connect_string())
        .await
        .expect("raw client");
    assert_eq!(raw.delete("/secure/pg/leader", None).await, Err(zk::Error::NoAuth));
    assert_eq!(raw.delete("/secure/pg/config", None).await, Err(zk::Error::NoAuth));
    let anonymous = zk::Client::connect(&server.connect_string()).await.expect("anonymous client");
    assert_eq!(anonymous.delete("/secure/pg/leader", None).await, Err(zk::Error::NoAuth));
    assert!(anonymous.set_data("/secure/pg/config", b"x", None).await.is_err());

    let view = dow.load().await.expect("load");
    assert_eq!(view.leader.as_ref().map(|l| l.record.token.clone()), Some("t1".to_string()));
    assert_eq!(view.control_version(ControlKey::Config), Some(&v));
    assert!(matches!(dow.release(&lease).await, Ok(CasOutcome::Won(()))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_connect_strings_are_clear_errors() {
    let cases = ["", "localhost", "127.0.0.1:0", "127.0.0.1:2181,:2182", "127.0.0.1:2181/a//b"];
    for connect in cases {
        let options = ZkOptions { connect: connect.into(), ..ZkOptions::default() };
        let err: DcsError = ZkClient::connect(options, &Timing::default()).await.expect_err(connect);
        assert!(err.is_fatal(), "{connect:?}: {err}");
        assert!(err.to_string().contains("option connect"), "{connect:?}: {err}");
    }
    // Valid syntax, nobody listening: retryable, and the message says so.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let options = ZkOptions { connect: format!("127.0.0.1:{port}"), ..ZkOptions::default() };
    let err = ZkClient::connect(options, &timing_for(Duration::from_secs(2))).await.expect_err("nothing listens");
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("no ZooKeeper server"), "{err}");
}

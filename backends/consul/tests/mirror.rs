//! The process's mirror (one blocking query over the prefix) against a real Consul agent (the
//! emulator when none is found; the output says which): what it saves, and that it still
//! tells a leader when its key was deleted or changed behind its back. Requests are counted
//! by a proxy between the client and the agent.
#![allow(clippy::disallowed_methods)] // The tests spawn a waiting watch beside the write that should (not) wake it.

mod common;

use std::time::Duration;

use common::{PREFIX, Target, timing};
use leasehold::{CasOutcome, Dcs, LeaderRecord, MemberRecord, Record, WatchEvent};
use leasehold_consul::{ConsulClient, ConsulDcs, ConsulOptions};
use leasehold_test_servers::CutProxy;
use reqwest::Method;

fn record(member: &str, token: &str) -> LeaderRecord {
    LeaderRecord { member: member.into(), token: token.into(), api_url: None, conn_url: None }
}

/// A proxy in front of the target and client options through it.
fn proxied(target: &Target, watch_mirror: bool) -> (CutProxy, ConsulOptions) {
    let port = target.address().rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
    let proxy = CutProxy::start(port).expect("proxy");
    let options =
        ConsulOptions { address: format!("http://127.0.0.1:{}", proxy.port()), watch_mirror, ..target.options() };
    (proxy, options)
}

/// Reads of `scope`'s keys the proxy saw (the mirror's query on the whole prefix is not one).
fn scope_reads(proxy: &CutProxy, scope: &str) -> u64 {
    let path = format!("GET /v1/kv/{PREFIX}/{scope}/");
    proxy.http_requests().iter().filter(|(line, _)| line.starts_with(&path)).map(|(_, n)| n).sum()
}

/// Calls `op` until one call sends no read of the scope (the mirror answered it), at most
/// for 10 s; whether that happened.
async fn until_served_by_mirror<F, Fut>(proxy: &CutProxy, scope: &str, mut op: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..100 {
        let before = scope_reads(proxy, scope);
        op().await;
        if scope_reads(proxy, scope) == before {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

async fn load_until(dcs: &ConsulDcs, seen: impl Fn(&leasehold::ClusterView) -> bool) -> leasehold::ClusterView {
    for _ in 0..100 {
        let view = dcs.load().await.expect("load");
        if seen(&view) {
            return view;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    dcs.load().await.expect("load")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renew_of_an_unchanged_key_sends_no_read_and_a_key_deleted_by_another_client_is_lost() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("warn").try_init();
    let target = Target::start().await;
    let (proxy, options) = proxied(&target, true);
    let client = ConsulClient::connect(options, &timing()).await.expect("connect");
    let dcs = client.scope("mdel");
    let lease = dcs.acquire(&record("a", "t1")).await.expect("acquire").won().expect("free");

    let served = until_served_by_mirror(&proxy, "mdel", || {
        let (dcs, held) = (dcs.clone(), lease.clone());
        async move { assert!(dcs.renew(&held).await.expect("renew").is_won(), "still ours") }
    })
    .await;
    assert!(served, "a renew of an unchanged key is the session renewal alone once the mirror runs");
    let renewed = dcs.renew(&lease).await.expect("renew").won().expect("still ours");
    assert_eq!(renewed.epoch, lease.epoch);
    assert!(!renewed.valid_for.is_zero());

    // Another client (an operator) deletes the key: the holder's next renew is Lost.
    let path = format!("/v1/kv/{PREFIX}/mdel/leader");
    let (status, body) = target.http(Method::DELETE, &path, None).await;
    assert_eq!((status, body.trim()), (200, "true"));
    let view = load_until(&dcs, |v| v.leader.is_none()).await;
    assert!(view.leader.is_none(), "the deletion shows in a load: {:?}", view.leader);
    let outcome = dcs.renew(&renewed).await.expect("renew");
    assert_eq!(outcome, CasOutcome::Lost(None), "the deleted key is lost");

    // A plain write over a held key (the lock stays, the record changes) is Lost too.
    let lease = dcs.acquire(&record("a", "t2")).await.expect("acquire").won().expect("free again");
    assert!(
        until_served_by_mirror(&proxy, "mdel", || {
            let dcs = dcs.clone();
            async move { dcs.load().await.map(drop).expect("load") }
        })
        .await
    );
    let other = record("intruder", "x").encode();
    let (status, _) = target.http(Method::PUT, &path, Some(String::from_utf8(other).expect("utf-8"))).await;
    assert_eq!(status, 200);
    load_until(&dcs, |v| v.leader.as_ref().is_none_or(|l| l.record.member == "intruder")).await;
    match dcs.renew(&lease).await.expect("renew") {
        CasOutcome::Lost(now) => {
            assert!(now.as_ref().is_none_or(|l| l.record.member == "intruder"), "Lost names what is there: {now:?}");
        }
        CasOutcome::Won(l) => panic!("a changed key must not renew: {l:?}"),
    }
    client.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_write_does_not_wake_a_watch_but_a_leader_change_does() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("warn").try_init();
    let target = Target::start().await;
    let (proxy, options) = proxied(&target, true);
    let follower = ConsulClient::connect(options, &timing()).await.expect("connect");
    let other = ConsulClient::connect(target.options(), &timing()).await.expect("connect");
    let (f, o) = (follower.scope("mwake"), other.scope("mwake"));
    o.publish_member(&MemberRecord::new("m1")).await.expect("publish");
    assert!(
        until_served_by_mirror(&proxy, "mwake", || {
            let f = f.clone();
            async move { f.load().await.map(drop).expect("load") }
        })
        .await
    );

    let view = f.load().await.expect("load");
    let waiter = {
        let (f, after) = (f.clone(), view.revision.clone());
        tokio::spawn(async move { f.watch(after.as_ref(), Duration::from_millis(1500)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut m2 = MemberRecord::new("m2");
    m2.api_url = Some("http://m2:8008".into());
    o.publish_member(&m2).await.expect("publish");
    assert_eq!(waiter.await.expect("joined").expect("watch"), WatchEvent::Timeout, "a member write wakes nobody");
    let seen = load_until(&f, |v| v.member("m2").is_some()).await;
    assert!(seen.member("m2").is_some(), "the member shows in the next load");

    let view = f.load().await.expect("load");
    let waiter = {
        let (f, after) = (f.clone(), view.revision.clone());
        tokio::spawn(async move { f.watch(after.as_ref(), Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    o.acquire(&record("m1", "t")).await.expect("acquire").won().expect("free");
    assert_eq!(waiter.await.expect("joined").expect("watch"), WatchEvent::Changed, "a new leader wakes");
    let view = load_until(&f, |v| v.leader.is_some()).await;
    assert_eq!(view.leader.map(|l| l.record.member).as_deref(), Some("m1"));
    follower.shutdown().await.expect("shutdown");
    other.shutdown().await.expect("shutdown");
}

/// `watch_mirror: false` is today's behaviour: every load reads the store, and a watch is a
/// blocking query on the scope that any change wakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_mirror_loads_read_the_store_and_member_writes_wake() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("warn").try_init();
    let target = Target::start().await;
    let (proxy, options) = proxied(&target, false);
    let follower = ConsulClient::connect(options, &timing()).await.expect("connect");
    let other = ConsulClient::connect(target.options(), &timing()).await.expect("connect");
    let (f, o) = (follower.scope("moff"), other.scope("moff"));
    o.publish_member(&MemberRecord::new("m1")).await.expect("publish");
    for _ in 0..3 {
        let before = scope_reads(&proxy, "moff");
        f.load().await.expect("load");
        assert_eq!(scope_reads(&proxy, "moff"), before + 1, "each load is a read");
    }
    let view = f.load().await.expect("load");
    let waiter = {
        let (f, after) = (f.clone(), view.revision.clone());
        tokio::spawn(async move { f.watch(after.as_ref(), Duration::from_secs(10)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    o.publish_member(&MemberRecord::new("m2")).await.expect("publish");
    assert_eq!(waiter.await.expect("joined").expect("watch"), WatchEvent::Changed);
    follower.shutdown().await.expect("shutdown");
    other.shutdown().await.expect("shutdown");
}

/// A process reads its own writes from the mirror at once: the load right after a write,
/// a member publish or a release shows it (the mirror waits to catch up, or the load reads the
/// store), never the state before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_from_the_mirror_show_this_processes_own_writes_at_once() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("warn").try_init();
    let target = Target::start().await;
    let (proxy, options) = proxied(&target, true);
    let client = ConsulClient::connect(options, &timing()).await.expect("connect");
    let dcs = client.scope("mown");
    dcs.publish_member(&MemberRecord::new("m")).await.expect("publish");
    assert!(
        until_served_by_mirror(&proxy, "mown", || {
            let dcs = dcs.clone();
            async move { dcs.load().await.map(drop).expect("load") }
        })
        .await
    );
    let mut expect = leasehold::Expect::Absent;
    for round in 0..10u64 {
        let value = format!("{{\"round\":{round}}}");
        let version = match dcs.write_control(leasehold::ControlKey::Config, expect, value.as_bytes()).await {
            Ok(CasOutcome::Won(v)) => v,
            other => panic!("round {round}: the config write wins: {other:?}"),
        };
        let view = dcs.load().await.expect("load");
        assert_eq!(view.control_version(leasehold::ControlKey::Config), Some(&version), "round {round}: own write");
        expect = leasehold::Expect::Version(version);

        let member = MemberRecord { position: Some(round), ..MemberRecord::new("m") };
        dcs.publish_member(&member).await.expect("publish");
        let view = dcs.load().await.expect("load");
        assert_eq!(view.member("m").and_then(|m| m.position), Some(round), "round {round}: own member record");

        let lease = dcs.acquire(&record("m", &format!("t{round}"))).await.expect("acquire").won().expect("free");
        let view = dcs.load().await.expect("load");
        assert_eq!(view.leader.as_ref().map(|l| l.epoch), Some(lease.epoch), "round {round}: own acquire");
        assert!(dcs.release(&lease).await.expect("release").is_won());
        let view = dcs.load().await.expect("load");
        assert!(view.leader.is_none(), "round {round}: own release: {:?}", view.leader);
    }
    client.shutdown().await.expect("shutdown");
}

/// 200 scopes of one client acquiring at once (a process starting with many scopes), through a
/// proxy that records the most connections open at once: `max_requests` bounds them.
async fn peak_connections_of_a_burst(target: &Target, max_requests: usize, tag: &str) -> usize {
    let (proxy, options) = proxied(target, true);
    let client = ConsulClient::connect(ConsulOptions { max_requests, ..options }, &timing()).await.expect("connect");
    let scopes: Vec<ConsulDcs> = (0..200).map(|i| client.scope(&format!("{tag}{i}"))).collect();
    let record = record("a", "t1");
    let outcomes = futures::future::join_all(scopes.iter().map(|dcs| dcs.acquire(&record))).await;
    for outcome in outcomes {
        assert!(outcome.expect("acquire").is_won(), "every scope is free");
    }
    proxy.peak_connections()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_acquires_opens_no_more_connections_than_max_requests_allows() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("warn").try_init();
    let target = Target::start().await;
    // hyper opens a connection for a request that finds none idle, and one that loses that
    // race stays in the pool: up to twice the cap, plus the mirror's blocking query.
    let (cap, bound) = (4, 2 * 4 + 1);
    let unbound = peak_connections_of_a_burst(&target, 1000, "wide").await;
    assert!(unbound > bound, "the burst is concurrent: only {unbound} connections at once without a binding cap");
    let capped = peak_connections_of_a_burst(&target, cap, "capped").await;
    eprintln!("peak connections: {unbound} without a binding cap, {capped} with max_requests = {cap}");
    assert!(capped <= bound, "{capped} connections at once with max_requests = {cap} (at most {bound})");
}

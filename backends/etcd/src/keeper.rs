//! The tasks that keep the process's leases alive, share keep-alives between concurrent
//! renewals, and replace a lease (re-writing member keys) when etcd reports it gone. One
//! task per lease: the process lease (leader keys, and member keys unless
//! `EtcdOptions::member_ttl` gives them a lease of their own) and that member lease.
//!
//! etcd-client sends one keep-alive per `LeaseKeeper::keep_alive` call and never on its own
//! (reference/crates.md section 1), so this task owns the timer and the stream.

use std::sync::Weak;
use std::time::Duration;

use etcd_client::{Error, LeaseKeepAliveStream, LeaseKeeper};
use leasehold::DcsError;
use tokio::sync::mpsc;

use crate::client::{Ack, Inner, Waiter, Which, lock, now};
use crate::error::{Op, classify, is_lease_not_found, never_sent, timed};

/// Attempts at one keep-alive (new streams after a broken one), within the request timeout.
const RETRIES: u32 = 8;
/// Pause between them.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

type Stream = Option<(LeaseKeeper, LeaseKeepAliveStream)>;

/// A copy of an error for every waiter of one shared keep-alive.
fn copy(e: &DcsError) -> DcsError {
    match e {
        DcsError::Unavailable { message, .. } => DcsError::unavailable(message),
        DcsError::OutcomeUnknown { message, .. } => DcsError::unknown(message),
        DcsError::LeaseLost { message } => DcsError::lease_lost(message),
        DcsError::Fatal { message, .. } => DcsError::fatal(message),
        other => DcsError::fatal(other.to_string()),
    }
}

/// Runs until the client is dropped or stopped.
pub(crate) async fn run(inner: Weak<Inner>, which: Which, mut requests: mpsc::UnboundedReceiver<Waiter>) {
    let mut stream: Stream = None;
    loop {
        let every = match inner.upgrade() {
            None => return,
            Some(inner) if lock(inner.lease_state(which)).lost => {
                (inner.lease_ttl(which) / 3).min(Duration::from_secs(1))
            }
            Some(inner) => inner.lease_ttl(which) / 3,
        };
        let mut waiters = Vec::new();
        tokio::select! {
            waiter = requests.recv() => match waiter {
                Some(w) => waiters.push(w),
                None => return,
            },
            () = tokio::time::sleep(every) => {}
        }
        // Everyone who asked before this keep-alive is sent is served by it.
        while let Ok(w) = requests.try_recv() {
            waiters.push(w);
        }
        let Some(inner) = inner.upgrade() else { return };
        if waiters.is_empty() && !inner.kept_in_background(which) {
            continue;
        }
        let result = round(&inner, which, &mut stream).await;
        if let Err(e) = &result {
            tracing::warn!(error = %e, lease = which.name(), "etcd lease keep-alive failed");
        }
        for w in waiters {
            let _ = w.send(result.as_ref().map(|a| *a).map_err(copy));
        }
    }
}

/// One keep-alive (after re-granting a lost lease and re-writing owed member keys). A lease
/// is granted anew only once etcd said it is gone: one that may still carry keys is never
/// replaced (a key attached to it would then look like someone else's).
async fn round(inner: &Inner, which: Which, stream: &mut Stream) -> Result<Ack, DcsError> {
    if lock(inner.lease_state(which)).lost {
        *stream = None;
        regrant(inner, which).await?;
    }
    let id = lock(inner.lease_state(which)).id;
    if inner.carries_members(which) {
        republish(inner, id).await;
    }
    let limit = inner.options.request_timeout;
    let sent = now();
    let deadline = sent + limit;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let reused = stream.is_some();
        inner.count();
        let answer = tokio::time::timeout_at(deadline, keep_alive_once(inner, which, stream, id)).await;
        match answer {
            Err(_) => {
                *stream = None;
                return Err(DcsError::unavailable(format!("lease keep-alive: no answer within {limit:?}")));
            }
            Ok(Err(e)) if is_lease_not_found(&e) => return Err(lease_gone(inner, which, id, stream).await),
            // A stream on a connection that died, or a member that cannot be reached: open
            // a new stream, which the balancer may place on another member.
            Ok(Err(e)) if (reused || never_sent(&e)) && attempts < RETRIES => {
                tracing::debug!(error = %e, "lease keep-alive stream failed; opening a new one");
                *stream = None;
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Ok(Err(e)) => {
                *stream = None;
                return Err(classify(Op::Read, "lease keep-alive", e));
            }
            Ok(Ok(ttl)) if ttl <= 0 => return Err(lease_gone(inner, which, id, stream).await),
            Ok(Ok(ttl)) => {
                let expires = sent + Duration::from_secs(ttl.unsigned_abs());
                let mut lease = lock(inner.lease_state(which));
                if lease.id == id && expires > lease.expires {
                    lease.expires = expires;
                    lease.sent = sent;
                }
                return Ok(Ack { id, expires });
            }
        }
    }
}

/// One keep-alive on the open stream, or opening a stream (which sends the first one).
/// The remaining TTL etcd reports.
async fn keep_alive_once(inner: &Inner, which: Which, stream: &mut Stream, id: i64) -> Result<i64, Error> {
    match stream {
        Some((keeper, messages)) => {
            keeper.keep_alive().await?;
            match messages.message().await? {
                Some(resp) => Ok(resp.ttl()),
                None => Err(Error::LeaseKeepAliveError("the keep-alive stream was closed".into())),
            }
        }
        None => {
            // Opening the stream sends the first keep-alive and fails if the lease is gone.
            let opened = inner.etcd.lease_client().keep_alive(id).await?;
            *stream = Some(opened);
            Ok(i64::try_from(inner.lease_ttl(which).as_secs()).unwrap_or(i64::MAX))
        }
    }
}

/// etcd says lease `id` is gone, and with it every key attached to it.
async fn lease_gone(inner: &Inner, which: Which, id: i64, stream: &mut Stream) -> DcsError {
    *stream = None;
    {
        let mut lease = lock(inner.lease_state(which));
        if lease.id == id {
            lease.lost = true;
        }
    }
    if which == Which::Process {
        lock(&inner.held).clear();
    }
    let keys = if inner.carries_members(which) { "its leader and member keys" } else { "its leader keys" };
    tracing::warn!(lease = id, "the etcd {} lease expired; {keys} are gone", which.name());
    if let Err(e) = regrant(inner, which).await {
        tracing::warn!(error = %e, "granting a new etcd lease failed; will retry");
    }
    DcsError::lease_lost(format!("etcd reports the {} lease {id:x} expired or revoked", which.name()))
}

/// Grants a new lease and, when it carries them, re-writes the member keys under it.
pub(crate) async fn regrant(inner: &Inner, which: Which) -> Result<(), DcsError> {
    let ttl = i64::try_from(inner.lease_ttl(which).as_secs()).unwrap_or(i64::MAX);
    let sent = now();
    inner.count();
    let what = format!("grant a new {} lease", which.name());
    let grant = timed(Op::Write, &what, inner.options.request_timeout, || async {
        inner.etcd.lease_client().grant(ttl, None).await
    })
    .await?;
    if grant.ttl() <= 0 {
        return Err(DcsError::unavailable(format!("etcd did not grant a new lease: {}", grant.error())));
    }
    {
        let mut lease = lock(inner.lease_state(which));
        lease.id = grant.id();
        lease.expires = sent + Duration::from_secs(grant.ttl().unsigned_abs());
        lease.sent = sent;
        lease.lost = false;
    }
    tracing::info!(lease = grant.id(), "granted a new etcd {} lease", which.name());
    if inner.carries_members(which) {
        for entry in lock(&inner.published).values_mut() {
            entry.written_with = None;
        }
        republish(inner, grant.id()).await;
    }
    Ok(())
}
/// Writes every member key not yet written with lease `id`.
async fn republish(inner: &Inner, id: i64) {
    let owed: Vec<(String, Vec<u8>)> = lock(&inner.published)
        .iter()
        .filter(|(_, p)| p.written_with != Some(id))
        .map(|(k, p)| (k.clone(), p.bytes.clone()))
        .collect();
    for (key, bytes) in owed {
        match inner.put_member(&key, bytes.clone(), id).await {
            Ok(()) => {
                // A newer record published meanwhile stays owed and is written next round.
                if let Some(entry) = lock(&inner.published).get_mut(&key)
                    && entry.bytes == bytes
                {
                    entry.written_with = Some(id);
                }
            }
            Err(e) => tracing::warn!(key = %key, error = %e, "re-writing a member key failed; will retry"),
        }
    }
}

//! Maps etcd-client errors onto [`DcsError`] classes: what the caller must do next.

use std::future::Future;
use std::time::Duration;

use etcd_client::Error;
use leasehold::DcsError;
use tonic::Code;

/// Whether a request could have changed the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// Range, read-only txn, watch, keep-alive: a failure changed nothing we rely on.
    Read,
    /// Put, delete, txn with writes, lease grant: a failure after sending may have been applied.
    Write,
}

/// Messages etcd sends when it refused a request without applying it.
const NOT_APPLIED: [&str; 6] = [
    "etcdserver: no leader",
    "etcdserver: too many requests",
    "etcdserver: not capable",
    "etcdserver: server stopped",
    "etcdserver: leader changed",
    "etcdserver: request is too large",
];

/// Messages of transport failures that happened before the request left this process.
const NEVER_SENT: [&str; 4] = ["error trying to connect", "tcp connect error", "Connection refused", "dns error"];

/// Whether `e` says the process lease does not exist (expired or revoked).
pub(crate) fn is_lease_not_found(e: &Error) -> bool {
    match e {
        Error::GRpcStatus(s) => s.message().contains("requested lease not found"),
        Error::LeaseKeepAliveError(m) => m.contains("lease not found"),
        _ => false,
    }
}

/// Whether `e` says the requested revision was compacted away.
pub(crate) fn is_compacted(e: &Error) -> bool {
    matches!(e, Error::GRpcStatus(s) if s.message().contains("compacted"))
}

/// Classifies a failed request `what` (for example `"acquire /service/pg/leader"`).
///
/// * Authentication and permission failures are [`DcsError::Fatal`] with a message saying what
///   to fix; so are requests etcd calls malformed and configuration errors of the client.
/// * A missing lease is [`DcsError::LeaseLost`].
/// * "no leader", throttling and connection refusals were not applied: unavailable.
/// * Other failures are unavailable for reads and outcome unknown for writes (the member may
///   have proposed the write before the answer was lost).
pub(crate) fn classify(op: Op, what: &str, e: Error) -> DcsError {
    if is_lease_not_found(&e) {
        return DcsError::lease_lost(format!("{what}: the process lease expired or was revoked ({e})"));
    }
    match &e {
        Error::GRpcStatus(status) => {
            let message = status.message();
            let auth = message.contains("authentication failed")
                || message.contains("invalid auth token")
                || message.contains("user name is empty")
                || message.contains("auth: ");
            match status.code() {
                _ if auth => DcsError::fatal_with(
                    format!("{what}: etcd authentication failed: {message}; check the user name and password"),
                    e,
                ),
                Code::Unauthenticated => DcsError::fatal_with(
                    format!("{what}: etcd authentication failed: {message}; check the user name and password"),
                    e,
                ),
                Code::PermissionDenied => DcsError::fatal_with(
                    format!(
                        "{what}: permission denied by etcd: {message}; the user's role needs readwrite on the key prefix"
                    ),
                    e,
                ),
                Code::InvalidArgument | Code::Unimplemented | Code::FailedPrecondition
                    if !NOT_APPLIED.iter().any(|m| message.contains(m)) =>
                {
                    DcsError::fatal_with(format!("{what}: etcd rejected the request: {message}"), e)
                }
                Code::ResourceExhausted => {
                    DcsError::unavailable_with(format!("{what}: throttled by etcd: {message}"), e)
                }
                _ if NOT_APPLIED.iter().any(|m| message.contains(m)) => {
                    DcsError::unavailable_with(format!("{what}: etcd refused it: {message}"), e)
                }
                _ if never_sent(&e) => {
                    DcsError::unavailable_with(format!("{what}: no etcd member reachable: {message}"), e)
                }
                code if op == Op::Write => DcsError::unknown_with(
                    format!("{what}: failed after it was sent ({code:?}: {message}); it may have been applied"),
                    e,
                ),
                code => DcsError::unavailable_with(format!("{what}: {code:?}: {message}"), e),
            }
        }
        Error::TransportError(_) => DcsError::unavailable_with(format!("{what}: cannot connect to etcd"), e),
        Error::InvalidArgs(_)
        | Error::InvalidUri(_)
        | Error::IoError(_)
        | Error::Utf8Error(_)
        | Error::InvalidMetadataValue(_)
        | Error::EndpointError(_) => DcsError::fatal_with(format!("{what}: etcd client configuration: {e}"), e),
        _ if op == Op::Write => DcsError::unknown_with(format!("{what}: {e}"), e),
        _ => DcsError::unavailable_with(format!("{what}: {e}"), e),
    }
}

/// Attempts at a request that failed before it was sent (a dead member picked by the
/// balancer): the next attempt may pick a live one.
const NEVER_SENT_ATTEMPTS: u32 = 8;
/// Pause between those attempts, so a reconnecting member is not hammered.
const NEVER_SENT_PAUSE: Duration = Duration::from_millis(20);

/// Whether `e` happened before the request left this process (safe to send again).
pub(crate) fn never_sent(e: &Error) -> bool {
    match e {
        Error::GRpcStatus(s) => NEVER_SENT.iter().any(|m| s.message().contains(m)),
        Error::TransportError(_) => true,
        _ => false,
    }
}

/// Runs `request` with a deadline, sending it again when it failed before it was sent
/// (etcd-client's balancer hands calls to members it cannot reach; this is the failover to
/// the others). Running out of time is unavailable for reads and outcome unknown for writes.
pub(crate) async fn timed<T, F, Fut>(op: Op, what: &str, limit: Duration, mut request: F) -> Result<T, DcsError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let deadline = crate::client::now() + limit;
    let mut attempts = 1;
    loop {
        match tokio::time::timeout_at(deadline, request()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) if never_sent(&e) && attempts < NEVER_SENT_ATTEMPTS => {
                tracing::debug!(what, error = %e, "request not sent; trying another member");
                attempts += 1;
                tokio::time::sleep(NEVER_SENT_PAUSE).await;
            }
            Ok(Err(e)) => return Err(classify(op, what, e)),
            Err(_) if op == Op::Write => {
                return Err(DcsError::unknown(format!("{what}: no answer within {limit:?}; it may have been applied")));
            }
            Err(_) => return Err(DcsError::unavailable(format!("{what}: no answer within {limit:?}"))),
        }
    }
}

//! Maps kube errors onto [`DcsError`] classes: what the caller must do next.

use std::future::Future;
use std::time::Duration;

use leasehold::DcsError;

/// Whether a request could have changed the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// GET, LIST, WATCH: a failure changed nothing.
    Read,
    /// POST, PUT, DELETE: a failure after sending may have been applied.
    Write,
}

/// The HTTP status of an API error, if the server answered with one.
pub(crate) fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

/// Whether the error chain shows that the connection was never made, so nothing was sent.
fn never_connected(e: &kube::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::AddrNotAvailable
                    | std::io::ErrorKind::HostUnreachable
                    | std::io::ErrorKind::NetworkUnreachable
            )
        {
            return true;
        }
        source = err.source();
    }
    false
}

/// Classifies a failed request `what` (for example `"replace Lease pg-leader"`).
///
/// * 401 and 403 are [`DcsError::Fatal`] with a message saying what to fix.
/// * 400, 404 (of a collection), 405, 422: the request is wrong for this server: fatal.
/// * 429: throttled, not applied: unavailable.
/// * Other 5xx, timeouts, broken connections: unavailable for reads, outcome unknown for
///   writes (the API server may have written to etcd before failing).
pub(crate) fn classify(op: Op, what: &str, e: kube::Error) -> DcsError {
    match &e {
        kube::Error::Api(status) => match status.code {
            401 => DcsError::fatal_with(
                format!(
                    "{what}: unauthorized (401): the API server rejected the credentials; check the kubeconfig user or the service account token"
                ),
                e,
            ),
            403 => DcsError::fatal_with(
                format!(
                    "{what}: forbidden (403): {}; the account needs the Role in backends/kubernetes/manifests (leases: get, list, watch, create, update, delete in this namespace)",
                    status.message
                ),
                e,
            ),
            429 => DcsError::unavailable_with(format!("{what}: throttled by the API server (429)"), e),
            400 | 404 | 405 | 406 | 413 | 415 | 422 => DcsError::fatal_with(
                format!("{what}: rejected by the API server ({}): {}", status.code, status.message),
                e,
            ),
            code if op == Op::Write && code >= 500 => {
                DcsError::unknown_with(format!("{what}: the API server failed ({code}) after the write was sent"), e)
            }
            code => {
                DcsError::unavailable_with(format!("{what}: the API server answered {code}: {}", status.message), e)
            }
        },
        kube::Error::Auth(_) | kube::Error::InferConfig(_) | kube::Error::InferKubeconfig(_) => {
            DcsError::fatal_with(format!("{what}: client configuration or credentials unusable"), e)
        }
        kube::Error::BuildRequest(_) | kube::Error::TlsRequired => {
            DcsError::fatal_with(format!("{what}: the request cannot be built"), e)
        }
        kube::Error::SerdeError(_) if op == Op::Read => {
            DcsError::fatal_with(format!("{what}: the API server's answer does not parse as a Lease"), e)
        }
        _ if never_connected(&e) => DcsError::unavailable_with(format!("{what}: cannot connect to the API server"), e),
        _ if op == Op::Write => {
            DcsError::unknown_with(format!("{what}: the write was sent but its answer was lost"), e)
        }
        _ => DcsError::unavailable_with(format!("{what}: request failed"), e),
    }
}

/// Runs one request with a deadline; a timeout is classified like a lost answer.
pub(crate) async fn timed<T>(
    op: Op,
    what: &str,
    limit: Duration,
    request: impl Future<Output = Result<T, kube::Error>>,
) -> Result<Result<T, kube::Error>, DcsError> {
    match tokio::time::timeout(limit, request).await {
        Ok(result) => Ok(result),
        Err(_) if op == Op::Write => {
            Err(DcsError::unknown(format!("{what}: no answer within {limit:?}; the write may have been applied")))
        }
        Err(_) => Err(DcsError::unavailable(format!("{what}: no answer within {limit:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use kube::core::Status;

    use super::*;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(Status::failure("m", "r").with_code(code)))
    }

    #[test]
    fn classes_follow_the_next_step() {
        assert!(classify(Op::Read, "x", api(401)).is_fatal());
        let forbidden = classify(Op::Write, "replace Lease a", api(403));
        assert!(forbidden.is_fatal());
        assert!(forbidden.to_string().contains("forbidden (403)"), "{forbidden}");
        assert!(classify(Op::Write, "x", api(422)).is_fatal());
        assert!(classify(Op::Write, "x", api(429)).is_retryable());
        assert!(classify(Op::Write, "x", api(504)).is_outcome_unknown());
        assert!(classify(Op::Read, "x", api(503)).is_retryable());
        let refused = kube::Error::ReadEvents(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(classify(Op::Write, "x", refused).is_retryable());
        let reset = kube::Error::ReadEvents(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(classify(Op::Write, "x", reset).is_outcome_unknown());
    }
}

//! ZooKeeper errors mapped onto [`DcsError`] classes.

use leasehold::DcsError;
use zookeeper_client as zk;

/// Whether a failed request could have changed the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// A read: any transport failure is `Unavailable`.
    Read,
    /// A write: a request that may have reached the server is `OutcomeUnknown`.
    Write,
}

/// Classifies an error that is not part of the operation's normal outcomes (`NoNode`,
/// `NodeExists` and `BadVersion` are handled by the callers).
pub(crate) fn classify(op: Op, what: &str, err: zk::Error) -> DcsError {
    use zk::Error as E;
    match err {
        E::NoAuth => DcsError::fatal_with(
            format!("{what}: not authorized by the znode's ACL (check digest credentials and the acl option)"),
            err,
        ),
        E::AuthFailed => DcsError::fatal_with(format!("{what}: authentication failed (check digest credentials)"), err),
        E::InvalidAcl | E::BadArguments(_) | E::Unimplemented | E::UnmarshalError { .. } | E::MarshallingError => {
            DcsError::fatal_with(format!("{what}: the server rejected the request as malformed"), err)
        }
        E::QuotaExceeded => DcsError::fatal_with(format!("{what}: path quota exceeded"), err),
        // Expired: the request never ran in a live session. The leader-specific callers turn
        // this into LeaseLost.
        E::SessionExpired | E::SessionMoved | E::ClientClosed => {
            DcsError::unavailable_with(format!("{what}: the session is gone; a new one is being established"), err)
        }
        E::Throttled | E::NotReadOnly | E::NoHosts => DcsError::unavailable_with(format!("{what}: not applied"), err),
        E::ConnectionLoss | E::Timeout if op == Op::Write => {
            DcsError::unknown_with(format!("{what}: connection lost after the request may have been sent"), err)
        }
        _ if op == Op::Write => DcsError::unknown_with(format!("{what}: unexpected failure"), err),
        _ => DcsError::unavailable_with(format!("{what}: request failed"), err),
    }
}

/// The request did not finish within `request_timeout`, or the connection dropped while it
/// was queued.
pub(crate) fn interrupted(op: Op, what: &str, why: &str) -> DcsError {
    match op {
        Op::Read => DcsError::unavailable(format!("{what}: {why}")),
        Op::Write => DcsError::unknown(format!("{what}: {why}; the request may still be applied")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transport_failures_depend_on_the_operation() {
        assert!(classify(Op::Read, "x", zk::Error::ConnectionLoss).is_retryable());
        assert!(classify(Op::Write, "x", zk::Error::ConnectionLoss).is_outcome_unknown());
        assert!(classify(Op::Write, "x", zk::Error::SessionExpired).is_retryable());
        assert!(classify(Op::Write, "x", zk::Error::NoAuth).is_fatal());
        assert!(classify(Op::Read, "x", zk::Error::AuthFailed).is_fatal());
        assert!(interrupted(Op::Write, "x", "timed out").is_outcome_unknown());
        assert!(interrupted(Op::Read, "x", "timed out").is_retryable());
    }
}

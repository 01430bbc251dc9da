//! Errors classified by what the caller must do next.

use std::error::Error as StdError;
use std::fmt;

type Source = Box<dyn StdError + Send + Sync + 'static>;

/// A store operation failed. The variant says what the caller must do next; losing a race is
/// never an error (see [`CasOutcome`](crate::CasOutcome)).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DcsError {
    /// The request was **not applied** (connection refused, no quorum, throttled). Back off and
    /// retry; nothing needs re-reading.
    #[error("store unavailable: {message}")]
    Unavailable {
        /// What happened, for humans.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<Source>,
    },
    /// The request may or may not have been applied (timeout, reply lost, connection reset after
    /// sending). Re-read linearizably before acting on it; never treat it as success.
    #[error("outcome unknown: {message}")]
    OutcomeUnknown {
        /// What happened, for humans.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<Source>,
    },
    /// The process's lease or session is gone (expired, revoked, invalidated). Every key it held
    /// is gone or about to go: demote now and never touch the leader key with the old lease.
    #[error("lease or session lost: {message}")]
    LeaseLost {
        /// What happened, for humans.
        message: String,
    },
    /// Retrying cannot help: authentication failed, permission denied, the configuration is
    /// wrong, or the store speaks a protocol we do not understand. Stop and tell the operator.
    #[error("fatal store error: {message}")]
    Fatal {
        /// What happened, for humans.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<Source>,
    },
}

/// What the caller must do after a [`DcsError`], as a plain value for `match`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NextStep {
    /// Back off and retry.
    Retry,
    /// Re-read before acting: the write may have happened.
    Reread,
    /// Leadership is gone: demote at once.
    Demote,
    /// Stop and report.
    Stop,
}

impl DcsError {
    /// [`DcsError::Unavailable`] from a message.
    pub fn unavailable(message: impl fmt::Display) -> Self {
        DcsError::Unavailable { message: message.to_string(), source: None }
    }

    /// [`DcsError::Unavailable`] with a source error.
    pub fn unavailable_with(message: impl fmt::Display, source: impl Into<Source>) -> Self {
        DcsError::Unavailable { message: message.to_string(), source: Some(source.into()) }
    }

    /// [`DcsError::OutcomeUnknown`] from a message.
    pub fn unknown(message: impl fmt::Display) -> Self {
        DcsError::OutcomeUnknown { message: message.to_string(), source: None }
    }

    /// [`DcsError::OutcomeUnknown`] with a source error.
    pub fn unknown_with(message: impl fmt::Display, source: impl Into<Source>) -> Self {
        DcsError::OutcomeUnknown { message: message.to_string(), source: Some(source.into()) }
    }

    /// [`DcsError::LeaseLost`] from a message.
    pub fn lease_lost(message: impl fmt::Display) -> Self {
        DcsError::LeaseLost { message: message.to_string() }
    }

    /// [`DcsError::Fatal`] from a message.
    pub fn fatal(message: impl fmt::Display) -> Self {
        DcsError::Fatal { message: message.to_string(), source: None }
    }

    /// [`DcsError::Fatal`] with a source error.
    pub fn fatal_with(message: impl fmt::Display, source: impl Into<Source>) -> Self {
        DcsError::Fatal { message: message.to_string(), source: Some(source.into()) }
    }

    /// The caller's next step.
    pub fn next_step(&self) -> NextStep {
        match self {
            DcsError::Unavailable { .. } => NextStep::Retry,
            DcsError::OutcomeUnknown { .. } => NextStep::Reread,
            DcsError::LeaseLost { .. } => NextStep::Demote,
            DcsError::Fatal { .. } => NextStep::Stop,
        }
    }

    /// Not applied; back off and retry.
    pub fn is_retryable(&self) -> bool {
        self.next_step() == NextStep::Retry
    }

    /// Maybe applied; re-read before acting.
    pub fn is_outcome_unknown(&self) -> bool {
        self.next_step() == NextStep::Reread
    }

    /// The lease or session is gone; demote now.
    pub fn is_lease_lost(&self) -> bool {
        self.next_step() == NextStep::Demote
    }

    /// Retrying cannot help.
    pub fn is_fatal(&self) -> bool {
        self.next_step() == NextStep::Stop
    }
}

/// A record read from the store could not be decoded. The record is treated as absent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undecodable {what} at {key:?}: {reason}")]
pub struct DecodeError {
    /// Which record type was expected (`"leader"`, `"member"`, ...).
    pub what: &'static str,
    /// The store key or object name the bytes came from.
    pub key: String,
    /// Why decoding failed.
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predicates_follow_the_variant() {
        assert!(DcsError::unavailable("x").is_retryable());
        assert!(DcsError::unknown("x").is_outcome_unknown());
        assert!(DcsError::lease_lost("x").is_lease_lost());
        assert!(DcsError::fatal("x").is_fatal());
        assert!(!DcsError::fatal("x").is_retryable());
        let e = DcsError::unavailable_with("connect", std::io::Error::other("refused"));
        assert!(e.to_string().contains("connect"));
        assert!(StdError::source(&e).is_some());
    }
}

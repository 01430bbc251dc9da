#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod config;
pub mod dcs;
pub mod error;
pub mod node;
pub mod record;
pub mod rules;
#[cfg(feature = "sim")]
pub mod sim;
pub mod time;

#[cfg(feature = "tokio")]
pub mod driver;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use config::{Timing, TimingError};
pub use dcs::{CasOutcome, Dcs, Expect, Lease, StoreBounds, WatchEvent};
pub use error::{DcsError, DecodeError, NextStep};
pub use record::{
    ClusterView, ConfigRecord, ControlKey, DecodeCache, Epoch, FailoverRecord, HistoryEntry, HistoryRecord,
    InitializeRecord, Key, LeaderRecord, LeaderView, MemberRecord, RawEntry, RawView, Record, ResourceRole,
    StatusRecord, SyncRecord, Tags, Version, Versioned,
};
pub use rules::{ElectionFacts, PeerReply, PeerStatus, Reason, Verdict, WatchdogHealth};
pub use time::{Clock, Instant};

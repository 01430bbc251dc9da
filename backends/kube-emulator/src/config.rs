//! What the emulator is configured with: tokens and what they may do, history, bookmarks.

use std::time::Duration;

use crate::resource::Resource;

/// An API verb, as RBAC rules name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verb {
    /// GET one object.
    Get,
    /// LIST a collection.
    List,
    /// WATCH a collection.
    Watch,
    /// POST (create).
    Create,
    /// PUT (replace).
    Update,
    /// DELETE one object.
    Delete,
    /// PATCH one object (JSON merge patch).
    Patch,
}

impl Verb {
    /// Every verb the emulator serves.
    pub const ALL: [Verb; 7] =
        [Verb::Get, Verb::List, Verb::Watch, Verb::Create, Verb::Update, Verb::Delete, Verb::Patch];

    /// The RBAC name (`get`, `list`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::List => "list",
            Verb::Watch => "watch",
            Verb::Create => "create",
            Verb::Update => "update",
            Verb::Delete => "delete",
            Verb::Patch => "patch",
        }
    }
}

/// A bearer token and what its holder may do (a tiny stand-in for RBAC).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessToken {
    /// The token, sent as `Authorization: Bearer <token>`.
    pub token: String,
    /// The user name used in 403 messages.
    pub user: String,
    /// Allowed verbs.
    pub verbs: Vec<Verb>,
    /// Allowed resources; `None` means all.
    pub resources: Option<Vec<Resource>>,
    /// Allowed namespaces; `None` means all (including cluster-wide lists).
    pub namespaces: Option<Vec<String>>,
}

impl AccessToken {
    /// A token allowed everything.
    pub fn full(token: impl Into<String>) -> Self {
        AccessToken {
            token: token.into(),
            user: "admin".into(),
            verbs: Verb::ALL.to_vec(),
            resources: None,
            namespaces: None,
        }
    }

    /// A token allowed only `verbs` (a 403 for everything else).
    pub fn with_verbs(token: impl Into<String>, verbs: &[Verb]) -> Self {
        AccessToken {
            token: token.into(),
            user: "limited".into(),
            verbs: verbs.to_vec(),
            resources: None,
            namespaces: None,
        }
    }

    /// Restricts the token to `resources`.
    pub fn only_resources(mut self, resources: &[Resource]) -> Self {
        self.resources = Some(resources.to_vec());
        self
    }

    /// Restricts the token to `namespaces`.
    pub fn only_namespaces(mut self, namespaces: &[&str]) -> Self {
        self.namespaces = Some(namespaces.iter().map(|n| n.to_string()).collect());
        self
    }
}

/// How a watch from a compacted resourceVersion is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum GoneStyle {
    /// HTTP 200 and one `ERROR` event carrying a 410 `Status` (what the API server does).
    #[default]
    ErrorEvent,
    /// HTTP 410 with a `Status` body.
    HttpStatus,
}

/// A failure injected into the next write request (create, update, patch or delete).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Serve the write normally (to aim a later fault at a later write of a sequence).
    Pass,
    /// Answer with this status code without applying the write.
    Reject(u16),
    /// Apply the write, then answer with this status code (a reply that lies about the outcome,
    /// as a timed-out request whose write went through).
    ApplyThenReject(u16),
}

/// Emulator settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmulatorConfig {
    /// Accepted bearer tokens; empty means no authentication at all.
    pub tokens: Vec<AccessToken>,
    /// Events kept for watches; older ones are compacted (a watch from before them gets 410).
    pub history_limit: usize,
    /// How often a watch that asked for bookmarks gets one; `None` sends none.
    pub bookmark_interval: Option<Duration>,
    /// How a watch from a compacted version is refused.
    pub gone: GoneStyle,
    /// Upper bound (and default) of a watch request's `timeoutSeconds`.
    pub max_watch_timeout: Duration,
    /// Live events buffered per watch before a slow watcher is cut off with 410.
    pub watch_channel_capacity: usize,
    /// Listen on this port; `None` picks a free one below 32768.
    pub port: Option<u16>,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            tokens: Vec::new(),
            history_limit: 10_000,
            bookmark_interval: Some(Duration::from_secs(1)),
            gone: GoneStyle::ErrorEvent,
            max_watch_timeout: Duration::from_secs(1800),
            watch_channel_capacity: 65_536,
            port: None,
        }
    }
}

impl EmulatorConfig {
    /// The default configuration requiring `token` (allowed everything).
    pub fn with_token(token: impl Into<String>) -> Self {
        EmulatorConfig { tokens: vec![AccessToken::full(token)], ..EmulatorConfig::default() }
    }
}

//! A thin client of the Consul HTTP API: the few session and KV calls the backend makes,
//! with errors classified by what the caller must do next.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use leasehold::DcsError;
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::options::{Consistency, ConsulOptions};

/// Whether a request can change state: decides `Unavailable` vs `OutcomeUnknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Read,
    Write,
}

/// How a request is sent: within the client's cap on requests in flight, or as a blocking
/// query, which waits by design and is not counted against it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Lane {
    /// Counted against `max_requests`; the whole exchange, a wait for a slot included, within
    /// `request_timeout`.
    Counted,
    /// A blocking query with its own timeout.
    Blocking(Duration),
}

/// One KV entry as the agent returns it, value decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    pub(crate) key: String,
    pub(crate) value: Vec<u8>,
    /// `CreateIndex`: 0 when the agent did not send it.
    pub(crate) create_index: u64,
    pub(crate) modify_index: u64,
    pub(crate) session: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireEntry {
    key: String,
    value: Option<String>,
    #[serde(default)]
    create_index: u64,
    modify_index: u64,
    #[serde(default)]
    session: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WireSession {
    #[serde(rename = "ID")]
    id: String,
}

/// A KV read: the entries and `X-Consul-Index`.
#[derive(Clone, Debug)]
pub(crate) struct Listing {
    pub(crate) index: u64,
    pub(crate) entries: Vec<Entry>,
    /// The answer's size in bytes (what a blocking query on the prefix costs per round).
    pub(crate) bytes: usize,
}

/// What a session create can answer besides an error.
pub(crate) enum Created {
    Id(String),
    /// `Invalid Session TTL`: the agent's bounds, parsed from its message when possible.
    InvalidTtl {
        min: Option<Duration>,
        message: String,
    },
}

/// What a write with `?acquire=` can answer besides an error.
pub(crate) enum Acquired {
    Done(bool),
    /// The session does not exist (any more).
    InvalidSession,
}

#[derive(Clone)]
pub(crate) struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
    datacenter: Option<String>,
    timeout: Duration,
    /// Slots for requests in flight (`ConsulOptions::max_requests`), shared by clones.
    in_flight: Arc<Semaphore>,
    max_requests: usize,
}

/// Session TTLs and waits in Go duration syntax, exact to the nanosecond.
pub(crate) fn go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos.is_multiple_of(1_000_000_000) {
        format!("{}s", d.as_secs())
    } else if nanos.is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{nanos}ns")
    }
}

/// Parses the Go durations Consul prints in messages (`10s`, `1m30s`, `24h0m0s`, `1.5s`).
pub(crate) fn parse_go_duration(text: &str) -> Option<Duration> {
    let mut total = 0f64;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let n = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let number: f64 = rest[..n].parse().ok()?;
        rest = &rest[n..];
        let u = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += number * scale;
        rest = &rest[u..];
    }
    Duration::try_from_secs_f64(total).ok()
}

/// Keys go into the path with everything but unreserved characters and `/` escaped.
fn escape_path(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Maps a failed send or body read: nothing sent is `Unavailable`; a write that may have
/// reached the agent is `OutcomeUnknown`.
fn transport(e: reqwest::Error, kind: Kind, what: &str) -> DcsError {
    // reqwest's own text names only the URL; the cause (refused, a TLS alert, an unknown CA)
    // is in its sources.
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if e.is_connect() || e.is_builder() || kind == Kind::Read {
        DcsError::unavailable_with(format!("consul {what}: {text}"), e)
    } else {
        DcsError::unknown_with(format!("consul {what}: no answer, it may have been applied: {text}"), e)
    }
}

impl Api {
    pub(crate) fn new(options: &ConsulOptions) -> Result<Api, DcsError> {
        // Idle connections kept are bounded like those in use: a burst (every scope acquiring
        // at start-up) leaves no more behind than the cap lets it open.
        let builder = reqwest::Client::builder()
            .connect_timeout(options.request_timeout.min(Duration::from_secs(5)))
            .pool_max_idle_per_host(options.max_requests);
        let builder = tls(builder, options)?;
        let http = builder.build().map_err(|e| DcsError::fatal_with(format!("consul HTTP client: {e}"), e))?;
        Ok(Api {
            http,
            base: options.address.trim_end_matches('/').to_string(),
            token: options.token.clone(),
            datacenter: options.datacenter.clone(),
            timeout: options.request_timeout,
            in_flight: Arc::new(Semaphore::new(options.max_requests)),
            max_requests: options.max_requests,
        })
    }

    /// Sends one request and returns status, `X-Consul-Index` and body. Only transport
    /// failures are errors here; callers interpret the status.
    async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Vec<u8>>,
        kind: Kind,
        lane: Lane,
    ) -> Result<(StatusCode, Option<u64>, Vec<u8>), DcsError> {
        let mut url = format!("{}{}", self.base, path);
        let mut params: Vec<String> = query
            .iter()
            .map(|(k, v)| if v.is_empty() { (*k).to_string() } else { format!("{k}={}", escape_path(v)) })
            .collect();
        if let Some(dc) = &self.datacenter {
            params.push(format!("dc={dc}"));
        }
        if !params.is_empty() {
            url.push('?');
            url.push_str(&params.join("&"));
        }
        let what = path.split('/').take(4).collect::<Vec<_>>().join("/");
        let (_slot, timeout) = match lane {
            Lane::Blocking(timeout) => (None, timeout),
            Lane::Counted => {
                let deadline = crate::client::now() + self.timeout;
                match tokio::time::timeout_at(deadline, self.in_flight.acquire()).await {
                    Ok(Ok(slot)) => (Some(slot), deadline.saturating_duration_since(crate::client::now())),
                    // The semaphore is never closed; either way nothing was sent.
                    Ok(Err(_)) | Err(_) => {
                        return Err(DcsError::unavailable(format!(
                            "consul {what}: not sent: this client's {} requests in flight (max_requests) \
                             did not free a slot within request_timeout ({:?})",
                            self.max_requests, self.timeout
                        )));
                    }
                }
            }
        };
        let mut request = self.http.request(method, &url).timeout(timeout);
        if let Some(token) = &self.token {
            request = request.header("X-Consul-Token", token);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let response = request.send().await.map_err(|e| transport(e, kind, &what))?;
        let status = response.status();
        let index = response.headers().get("X-Consul-Index").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        let bytes = response.bytes().await.map_err(|e| transport(e, kind, &what))?;
        Ok((status, index, bytes.to_vec()))
    }

    /// Turns an unexpected status into an error of the right class.
    fn status_error(status: StatusCode, body: &[u8], kind: Kind, what: &str) -> DcsError {
        let text = String::from_utf8_lossy(body).trim().to_string();
        match status {
            StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => DcsError::fatal(format!(
                "consul refused the ACL token for {what} ({status}: {text}): set `token` to a token with \
                 key:write on the prefix and session:write on the agent's node"
            )),
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                DcsError::unavailable(format!("consul {what}: {status}: {text}"))
            }
            s if s.is_server_error() => {
                let not_applied = ["No cluster leader", "No path to datacenter", "rpc error making call: EOF"];
                if kind == Kind::Read || not_applied.iter().any(|m| text.contains(m)) {
                    DcsError::unavailable(format!("consul {what}: {status}: {text}"))
                } else {
                    DcsError::unknown(format!("consul {what}: {status}: {text}"))
                }
            }
            _ => DcsError::fatal(format!("consul {what}: unexpected {status}: {text}")),
        }
    }

    /// `PUT /v1/session/create`.
    pub(crate) async fn create_session(
        &self,
        name: &str,
        ttl: Duration,
        lock_delay: Duration,
        checks: &[String],
    ) -> Result<Created, DcsError> {
        let body = serde_json::json!({
            "Name": name,
            "TTL": go_duration(ttl),
            "Behavior": "delete",
            "LockDelay": go_duration(lock_delay),
            // `Checks`, not `NodeChecks`: Consul 1.6 ignores `NodeChecks` (and then ties the
            // session to `serfHealth`); 1.7 and later still honour `Checks`. An empty list is
            // a TTL-only session on every version.
            "Checks": checks,
        });
        let (status, _, bytes) = self
            .send(
                Method::PUT,
                "/v1/session/create",
                &[],
                Some(body.to_string().into_bytes()),
                Kind::Write,
                Lane::Counted,
            )
            .await?;
        if status.is_success() {
            let created: WireSession = serde_json::from_slice(&bytes)
                .map_err(|e| DcsError::fatal_with("consul session/create: answer is not {\"ID\": ...}", e))?;
            return Ok(Created::Id(created.id));
        }
        let text = String::from_utf8_lossy(&bytes).to_string();
        if text.contains("Invalid Session TTL") {
            let min = text
                .split_once("between [")
                .and_then(|(_, rest)| rest.split_once('='))
                .and_then(|(min, _)| parse_go_duration(min));
            return Ok(Created::InvalidTtl { min, message: text });
        }
        Err(Self::status_error(status, &bytes, Kind::Write, "session/create"))
    }

    /// `PUT /v1/session/renew/:id`: `false` when the session is gone (404).
    pub(crate) async fn renew_session(&self, id: &str) -> Result<bool, DcsError> {
        let path = format!("/v1/session/renew/{}", escape_path(id));
        let (status, _, bytes) = self.send(Method::PUT, &path, &[], None, Kind::Write, Lane::Counted).await?;
        match status {
            s if s.is_success() => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            s => Err(Self::status_error(s, &bytes, Kind::Write, "session/renew")),
        }
    }

    /// `PUT /v1/session/destroy/:id`.
    pub(crate) async fn destroy_session(&self, id: &str) -> Result<(), DcsError> {
        let path = format!("/v1/session/destroy/{}", escape_path(id));
        let (status, _, bytes) = self.send(Method::PUT, &path, &[], None, Kind::Write, Lane::Counted).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(Self::status_error(status, &bytes, Kind::Write, "session/destroy"))
        }
    }

    fn consistency(mode: Consistency) -> Option<(&'static str, String)> {
        match mode {
            Consistency::Default => None,
            Consistency::Consistent => Some(("consistent", String::new())),
            Consistency::Stale => Some(("stale", String::new())),
        }
    }

    fn parse_entries(bytes: &[u8]) -> Result<Vec<Entry>, DcsError> {
        let wire: Vec<WireEntry> = serde_json::from_slice(bytes)
            .map_err(|e| DcsError::fatal_with(format!("consul kv: answer is not a list of entries: {e}"), e))?;
        wire.into_iter()
            .map(|w| {
                let value = match w.value {
                    None => Vec::new(),
                    Some(b64) => base64::engine::general_purpose::STANDARD.decode(b64).map_err(|e| {
                        DcsError::fatal_with(format!("consul kv: value of {:?} is not base64", w.key), e)
                    })?,
                };
                Ok(Entry {
                    key: w.key,
                    value,
                    create_index: w.create_index,
                    modify_index: w.modify_index,
                    session: w.session.filter(|s| !s.is_empty()),
                })
            })
            .collect()
    }

    /// `GET /v1/kv/<key>` (one key, or every key under it with `recurse`), optionally blocking.
    pub(crate) async fn read(
        &self,
        key: &str,
        recurse: bool,
        mode: Consistency,
        block: Option<(u64, Duration)>,
    ) -> Result<Listing, DcsError> {
        let mut query = Vec::new();
        if recurse {
            query.push(("recurse", String::new()));
        }
        query.extend(Self::consistency(mode));
        let mut lane = Lane::Counted;
        if let Some((index, wait)) = block {
            query.push(("index", index.to_string()));
            query.push(("wait", go_duration(wait)));
            // Consul adds up to wait/16 of jitter; the rest covers the network.
            lane = Lane::Blocking(wait + wait / 16 + self.timeout);
        }
        let path = format!("/v1/kv/{}", escape_path(key));
        let (status, index, bytes) = self.send(Method::GET, &path, &query, None, Kind::Read, lane).await?;
        let index = match index {
            Some(i) => i,
            None if status == StatusCode::OK || status == StatusCode::NOT_FOUND => {
                return Err(DcsError::fatal(format!(
                    "consul kv read of {key:?}: no X-Consul-Index header: not a Consul agent?"
                )));
            }
            None => 0,
        };
        match status {
            StatusCode::OK => Ok(Listing { index, entries: Self::parse_entries(&bytes)?, bytes: bytes.len() }),
            StatusCode::NOT_FOUND => Ok(Listing { index, entries: Vec::new(), bytes: bytes.len() }),
            s => Err(Self::status_error(s, &bytes, Kind::Read, "kv read")),
        }
    }

    /// One key, consistently.
    pub(crate) async fn get(&self, key: &str) -> Result<Option<Entry>, DcsError> {
        let listing = self.read(key, false, Consistency::Consistent, None).await?;
        Ok(listing.entries.into_iter().find(|e| e.key == key))
    }

    async fn put_with(
        &self,
        key: &str,
        value: &[u8],
        query: &[(&str, String)],
    ) -> Result<(StatusCode, Vec<u8>), DcsError> {
        let path = format!("/v1/kv/{}", escape_path(key));
        let (status, _, bytes) =
            self.send(Method::PUT, &path, query, Some(value.to_vec()), Kind::Write, Lane::Counted).await?;
        Ok((status, bytes))
    }

    fn boolean(status: StatusCode, bytes: &[u8], what: &str) -> Result<bool, DcsError> {
        if !status.is_success() {
            return Err(Self::status_error(status, bytes, Kind::Write, what));
        }
        match String::from_utf8_lossy(bytes).trim() {
            "true" => Ok(true),
            "false" => Ok(false),
            other => Err(DcsError::unknown(format!("consul {what}: answer {other:?} is neither true nor false"))),
        }
    }

    /// `PUT ?cas=`: 0 creates only if absent.
    pub(crate) async fn put_cas(&self, key: &str, value: &[u8], cas: u64) -> Result<bool, DcsError> {
        let (status, bytes) = self.put_with(key, value, &[("cas", cas.to_string())]).await?;
        Self::boolean(status, &bytes, "kv cas")
    }

    /// `PUT ?acquire=<session>`.
    pub(crate) async fn acquire(&self, key: &str, value: &[u8], session: &str) -> Result<Acquired, DcsError> {
        let (status, bytes) = self.put_with(key, value, &[("acquire", session.to_string())]).await?;
        let text = String::from_utf8_lossy(&bytes).to_lowercase();
        if status.is_server_error() && (text.contains("invalid session") || text.contains("not found")) {
            return Ok(Acquired::InvalidSession);
        }
        Self::boolean(status, &bytes, "kv acquire").map(Acquired::Done)
    }

    /// `DELETE ?cas=`. Consul answers `true` for a key that does not exist.
    pub(crate) async fn delete_cas(&self, key: &str, cas: u64) -> Result<bool, DcsError> {
        let path = format!("/v1/kv/{}", escape_path(key));
        let (status, _, bytes) =
            self.send(Method::DELETE, &path, &[("cas", cas.to_string())], None, Kind::Write, Lane::Counted).await?;
        Self::boolean(status, &bytes, "kv delete")
    }
}

#[cfg(feature = "tls")]
fn tls(builder: reqwest::ClientBuilder, options: &ConsulOptions) -> Result<reqwest::ClientBuilder, DcsError> {
    let Some(tls) = &options.tls else { return Ok(builder) };
    let read = |field: &str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| DcsError::fatal_with(format!("consul option tls.{field}: cannot read {path:?}: {e}"), e))
    };
    // native-tls by name: with rustls also in the build (another crate's choice) the
    // default backend would be ambiguous, and identities are backend-specific.
    let mut builder = builder.tls_backend_native();
    if let Some(ca) = &tls.ca_cert {
        let cert = reqwest::Certificate::from_pem(&read("ca_cert", ca)?).map_err(|e| {
            DcsError::fatal_with(format!("consul option tls.ca_cert: {ca:?} is not a PEM certificate: {e}"), e)
        })?;
        builder = builder.add_root_certificate(cert);
    }
    if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
        let identity = reqwest::Identity::from_pkcs8_pem(&read("client_cert", cert)?, &read("client_key", key)?)
            .map_err(|e| {
                DcsError::fatal_with(
                    format!(
                        "consul option tls.client_cert/client_key: not a PEM certificate and PKCS#8 key \
                         (\"BEGIN PRIVATE KEY\"): {e}"
                    ),
                    e,
                )
            })?;
        builder = builder.identity(identity);
    }
    Ok(builder)
}

#[cfg(not(feature = "tls"))]
fn tls(builder: reqwest::ClientBuilder, options: &ConsulOptions) -> Result<reqwest::ClientBuilder, DcsError> {
    if options.tls.is_some() || options.address.starts_with("https://") {
        return Err(DcsError::fatal("consul option tls: HTTPS needs leasehold-consul built with the `tls` feature"));
    }
    Ok(builder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_go_syntax() {
        assert_eq!(go_duration(Duration::from_secs(15)), "15s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(go_duration(Duration::from_nanos(1_500_001)), "1500001ns");
        assert_eq!(parse_go_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_go_duration("24h0m0s"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("10x"), None);
        assert_eq!(escape_path("service/a b/leader"), "service/a%20b/leader");
    }
}

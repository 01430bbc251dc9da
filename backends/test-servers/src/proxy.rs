#![allow(clippy::disallowed_methods)] // a test proxy runs its own threads; the rule is for the library
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// A TCP proxy on a loopback port in front of one upstream port, for the fault "the network
/// between a client and its server is cut" that no signal to either process produces:
/// [`cut`](CutProxy::cut) closes every connection and refuses new ones until
/// [`heal`](CutProxy::heal). Threads, not tokio, so it works under any test runtime.
pub struct CutProxy {
    port: u16,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Conns>>,
    stop: Arc<AtomicBool>,
    requests: Arc<Mutex<RequestLines>>,
}

/// The connections open through a proxy: both sockets of each, so that a cut can close them,
/// dropped (and their descriptors closed) when the connection ends.
#[derive(Default)]
struct Conns {
    next_id: u64,
    open: BTreeMap<u64, [TcpStream; 2]>,
    peak: usize,
}

/// HTTP/1.x request lines seen from clients, by method and path (query left out): what a
/// bench counts when the server keeps no per-request figures of its own.
pub type RequestLines = BTreeMap<String, u64>;

impl CutProxy {
    /// Starts forwarding a free loopback port to `127.0.0.1:upstream`.
    pub fn start(upstream: u16) -> io::Result<CutProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let proxy = CutProxy {
            port,
            cut: Arc::default(),
            conns: Arc::default(),
            stop: Arc::default(),
            requests: Arc::default(),
        };
        let (cut, conns, stop, requests) =
            (proxy.cut.clone(), proxy.conns.clone(), proxy.stop.clone(), proxy.requests.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    thread::sleep(Duration::from_millis(20));
                    continue;
                };
                if cut.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                if let Err(e) = forward(client, upstream, &conns, &requests) {
                    eprintln!("proxy to port {upstream}: {e}");
                }
            }
        });
        Ok(proxy)
    }

    /// The loopback port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Closes every open connection and refuses new ones until [`heal`](Self::heal).
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        let open = std::mem::take(&mut self.conns.lock().unwrap_or_else(|e| e.into_inner()).open);
        for s in open.values().flatten() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Accepts connections again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    /// The most connections that were open through the proxy at once since it started.
    pub fn peak_connections(&self) -> usize {
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).peak
    }

    /// HTTP/1.x requests forwarded so far, by `"METHOD /path"`. Counts request lines in the
    /// client-to-server stream, so it is meaningful only for plain HTTP/1.x clients whose
    /// bodies hold no CRLF-terminated line that looks like a request line (JSON bodies do not).
    pub fn http_requests(&self) -> RequestLines {
        self.requests.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Finds request lines (`GET /v1/kv/x?index=3 HTTP/1.1`) in a client's byte stream, across
/// reads: a request is its line, its headers up to an empty line, then `content-length` bytes
/// of body (chunked request bodies are not followed; the HTTP clients measured send none).
#[derive(Default)]
struct RequestLineScanner {
    line: Vec<u8>,
    in_headers: bool,
    body_len: usize,
    body_left: usize,
}

impl RequestLineScanner {
    const MAX_LINE: usize = 8192;

    fn feed(&mut self, mut bytes: &[u8], seen: &Mutex<RequestLines>) {
        while !bytes.is_empty() {
            if self.body_left > 0 {
                let skip = self.body_left.min(bytes.len());
                self.body_left -= skip;
                bytes = &bytes[skip..];
                continue;
            }
            let b = bytes[0];
            bytes = &bytes[1..];
            if b != b'\n' {
                if self.line.len() < Self::MAX_LINE {
                    self.line.push(b);
                }
                continue;
            }
            let line = std::mem::take(&mut self.line);
            let line = line.strip_suffix(b"\r").unwrap_or(&line);
            if !self.in_headers {
                if let Some(key) = request_line(line) {
                    *seen.lock().unwrap_or_else(|e| e.into_inner()).entry(key).or_default() += 1;
                    self.in_headers = true;
                    self.body_len = 0;
                }
            } else if line.is_empty() {
                self.in_headers = false;
                self.body_left = self.body_len;
            } else if let Some(len) = content_length(line) {
                self.body_len = len;
            }
        }
    }
}

/// The value of a `content-length` header line.
fn content_length(line: &[u8]) -> Option<usize> {
    let line = std::str::from_utf8(line).ok()?;
    let (name, value) = line.split_once(':')?;
    name.trim().eq_ignore_ascii_case("content-length").then(|| value.trim().parse().ok())?
}

/// `"METHOD /path"` when `line` (without its line end) is an HTTP/1.x request line.
fn request_line(line: &[u8]) -> Option<String> {
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    let is_method = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
    if parts.next().is_some() || !is_method || !version.starts_with("HTTP/1.") {
        return None;
    }
    let path = target.split('?').next().unwrap_or(target);
    Some(format!("{method} {path}"))
}

/// Connects `client` to the upstream and copies both ways on two threads, recording both
/// sockets so that a cut can close them.
fn forward(
    client: TcpStream,
    upstream: u16,
    conns: &Arc<Mutex<Conns>>,
    requests: &Arc<Mutex<RequestLines>>,
) -> io::Result<()> {
    client.set_nonblocking(false)?;
    let server = TcpStream::connect(("127.0.0.1", upstream))?;
    let id = {
        let mut c = conns.lock().unwrap_or_else(|e| e.into_inner());
        let id = c.next_id;
        c.next_id += 1;
        c.open.insert(id, [client.try_clone()?, server.try_clone()?]);
        c.peak = c.peak.max(c.open.len());
        id
    };
    for (upstream_bound, mut from, mut to) in
        [(true, client.try_clone()?, server.try_clone()?), (false, server, client)]
    {
        let (requests, conns) = (requests.clone(), conns.clone());
        thread::spawn(move || {
            let mut buf = [0u8; 16384];
            let mut scanner = RequestLineScanner::default();
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 || to.write_all(&buf[..n]).is_err() {
                    break;
                }
                if upstream_bound {
                    scanner.feed(&buf[..n], &requests);
                }
            }
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
            // Whichever direction ends first: the connection is over.
            conns.lock().unwrap_or_else(|e| e.into_inner()).open.remove(&id);
        });
    }
    Ok(())
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_are_counted_across_reads_and_bodies_are_not() {
        let seen = Mutex::new(RequestLines::new());
        let mut scanner = RequestLineScanner::default();
        // The first body is a line that looks like a request: it must not be counted.
        let stream = b"PUT /v1/session/renew/abc HTTP/1.1\r\nHost: x\r\nContent-Length: 17\r\n\r\nGET /x HTTP/1.1\r\nGET /v1/kv/s?index=4 HTTP/1.1\r\n\r\n";
        let (head, tail) = stream.split_at(40);
        scanner.feed(head, &seen);
        scanner.feed(tail, &seen);
        let seen = seen.into_inner().unwrap();
        assert_eq!(seen.get("PUT /v1/session/renew/abc"), Some(&1));
        assert_eq!(seen.get("GET /v1/kv/s"), Some(&1));
        assert_eq!(seen.len(), 2, "{seen:?}");
    }
}

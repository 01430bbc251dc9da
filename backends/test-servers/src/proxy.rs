#![allow(clippy::disallowed_methods)] // a test proxy runs its own threads; the rule is for the library
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
    conns: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl CutProxy {
    /// Starts forwarding a free loopback port to `127.0.0.1:upstream`.
    pub fn start(upstream: u16) -> io::Result<CutProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let proxy = CutProxy { port, cut: Arc::default(), conns: Arc::default(), stop: Arc::default() };
        let (cut, conns, stop) = (proxy.cut.clone(), proxy.conns.clone(), proxy.stop.clone());
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
                if let Err(e) = forward(client, upstream, &conns) {
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
        for s in self.conns.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// Accepts connections again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// Connects `client` to the upstream and copies both ways on two threads, recording both
/// sockets so that a cut can close them.
fn forward(client: TcpStream, upstream: u16, conns: &Mutex<Vec<TcpStream>>) -> io::Result<()> {
    client.set_nonblocking(false)?;
    let server = TcpStream::connect(("127.0.0.1", upstream))?;
    conns.lock().unwrap_or_else(|e| e.into_inner()).extend([client.try_clone()?, server.try_clone()?]);
    for (mut from, mut to) in [(client.try_clone()?, server.try_clone()?), (server, client)] {
        thread::spawn(move || {
            let mut buf = [0u8; 16384];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 || to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = to.shutdown(Shutdown::Both);
            let _ = from.shutdown(Shutdown::Both);
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

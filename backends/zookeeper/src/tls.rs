//! TLS to ZooKeeper (feature `tls`): the certificates of [`ZkTls`], the process-wide crypto
//! provider, and a diagnosis of refused handshakes.
//!
//! zookeeper-client reports a failed TLS handshake only as "no host could be connected"
//! (the reason goes to its debug log). When no server accepts a session, [`diagnose`] repeats
//! the handshake with the same certificates and names what went wrong (unknown CA, wrong
//! name, client certificate refused).

use std::io::{self, Read};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use leasehold::DcsError;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use zookeeper_client as zk;

use crate::options::ZkTls;

/// How long one diagnostic handshake may take (connect, handshake, and the wait for a
/// rejection right after it).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Installs rustls' ring provider as the process default unless one is installed already.
///
/// zookeeper-client builds its rustls config with `ClientConfig::builder()`, which takes the
/// process default; with both the ring and the aws-lc-rs providers compiled in (this crate
/// enables ring, zookeeper-client's rustls enables aws-lc-rs) rustls picks none by itself and
/// that call panics.
pub(crate) fn install_default_provider() {
    // Err means a provider is installed already (ours or the application's): fine either way.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn invalid(field: &str, message: String) -> DcsError {
    DcsError::fatal(format!("invalid zookeeper option {field}: {message}"))
}

fn read(field: &str, path: &Path) -> Result<String, DcsError> {
    std::fs::read_to_string(path).map_err(|e| invalid(field, format!("cannot read {}: {e}", path.display())))
}

fn certs(field: &str, path: &Path, pem: &str) -> Result<Vec<CertificateDer<'static>>, DcsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(field, format!("{} is not valid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(field, format!("{} holds no CERTIFICATE block", path.display())));
    }
    Ok(certs)
}

/// The certificates of a [`ZkTls`], read and checked, in the two forms needed.
pub(crate) struct Loaded {
    /// For zookeeper-client.
    pub(crate) options: zk::TlsOptions,
    /// The same trust and identity for [`diagnose`], on the ring provider.
    pub(crate) probe: Arc<ClientConfig>,
}

/// Reads the PEM files of `tls`. Every problem is `Fatal` and names the option.
pub(crate) fn load(tls: &ZkTls) -> Result<Loaded, DcsError> {
    let ca_pem = read("tls.ca_file", &tls.ca_file)?;
    let mut roots = RootCertStore::empty();
    for cert in certs("tls.ca_file", &tls.ca_file, &ca_pem)? {
        roots.add(cert).map_err(|e| {
            invalid("tls.ca_file", format!("{} holds an unusable CA certificate: {e}", tls.ca_file.display()))
        })?;
    }
    let mut options = zk::TlsOptions::new()
        .with_pem_ca(&ca_pem)
        .map_err(|e| invalid("tls.ca_file", format!("{}: {e}", tls.ca_file.display())))?;
    if !tls.verify_hostname {
        // SAFETY: not a memory-safety contract: the library marks this `unsafe` because it
        // opens the door to a man-in-the-middle holding any certificate from the CA. The
        // operator asked for it with `verify_hostname: false`.
        #[allow(unsafe_code)]
        {
            options = unsafe { options.with_no_hostname_verification() };
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| invalid("tls.ca_file", format!("{}: {e}", tls.ca_file.display())))?;
    let verifier: Arc<dyn ServerCertVerifier> =
        if tls.verify_hostname { webpki } else { Arc::new(AnyName { inner: webpki }) };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| DcsError::fatal(format!("rustls has no usable TLS version: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let probe = match (&tls.cert_file, &tls.key_file) {
        (Some(cert_file), Some(key_file)) => {
            let cert_pem = read("tls.cert_file", cert_file)?;
            let key_pem = read("tls.key_file", key_file)?;
            let chain = certs("tls.cert_file", cert_file, &cert_pem)?;
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| {
                invalid("tls.key_file", format!("{} holds no usable private key: {e}", key_file.display()))
            })?;
            let config = builder.with_client_auth_cert(chain, key).map_err(|e| {
                invalid("tls.key_file", format!("{} does not fit {}: {e}", key_file.display(), cert_file.display()))
            })?;
            options = options
                .with_pem_identity(&cert_pem, &key_pem)
                .map_err(|e| invalid("tls.cert_file", format!("{}: {e}", cert_file.display())))?;
            config
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Loaded { options, probe: Arc::new(probe) })
}

/// The CA check without the name check, as zookeeper-client does with hostname
/// verification off (used by the diagnosis only).
#[derive(Debug)]
struct AnyName {
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Why the TLS handshake with the first server that takes a TCP connection fails, if it
/// does: `Some("127.0.0.1:2281: invalid peer certificate: UnknownIssuer (check tls.ca_file ...)")`.
/// `None` when no server takes a TCP connection or every handshake succeeds.
pub(crate) async fn diagnose(config: Arc<ClientConfig>, servers: Vec<(String, u16)>) -> Option<String> {
    let probe = move || {
        servers
            .iter()
            .take(3)
            .find_map(|(host, port)| probe(&config, host, *port).map(|why| format!("{host}:{port}: {why}")))
    };
    tokio::task::spawn_blocking(probe).await.ok().flatten()
}

/// A blocking handshake with one server; `Some(reason)` if the server or we refused it.
fn probe(config: &Arc<ClientConfig>, host: &str, port: u16) -> Option<String> {
    let addr = (host, port).to_socket_addrs().ok()?.next()?;
    let mut socket = TcpStream::connect_timeout(&addr, PROBE_TIMEOUT).ok()?;
    socket.set_read_timeout(Some(PROBE_TIMEOUT)).ok()?;
    socket.set_write_timeout(Some(PROBE_TIMEOUT)).ok()?;
    let name = ServerName::try_from(host.to_string()).ok()?;
    let mut conn = rustls::ClientConnection::new(config.clone(), name).ok()?;
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut socket) {
            return Some(explain(&e, "during the TLS handshake"));
        }
    }
    // In TLS 1.3 the server judges the client's certificate after the client finished its
    // side of the handshake: a refusal arrives as an alert on the first read. A server that
    // accepted us waits for ZooKeeper's connect request, so the read times out.
    let mut byte = [0u8; 1];
    match rustls::Stream::new(&mut conn, &mut socket).read(&mut byte) {
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => None,
        Err(e) => Some(explain(&e, "right after the TLS handshake")),
        Ok(0) => Some("the server closed the connection right after the TLS handshake".into()),
        Ok(_) => None,
    }
}

fn explain(e: &io::Error, when: &str) -> String {
    let hint = match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer | CertificateError::BadSignature)) => {
            "the server's certificate is not signed by the CA of tls.ca_file"
        }
        Some(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        )) => "the server's certificate does not name the host of the connect string; see tls.verify_hostname",
        Some(rustls::Error::InvalidCertificate(_)) => "the server's certificate was refused",
        Some(rustls::Error::AlertReceived(_)) => {
            "the server refused the handshake: a client certificate (tls.cert_file, tls.key_file) signed by a CA \
             in the server's ssl.trustStore is needed when it runs with ssl.clientAuth=need"
        }
        Some(_) => "TLS error",
        None => "is this the server's secureClientPort?",
    };
    format!("{when}: {e} ({hint})")
}

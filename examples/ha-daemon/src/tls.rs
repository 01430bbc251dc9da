//! TLS for the REST API, Patroni's `restapi.certfile / keyfile / cafile / verify_client`:
//! the server side (rustls through tokio-rustls, served by axum) and the clients that talk to
//! members (`ctl` and the peers' probes, through reqwest).
//!
//! Files are read and checked when the configuration is loaded, so `run --check-config`
//! refuses a missing file, a file without a certificate or key, or a key that does not belong
//! to the certificate, naming the key at fault.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde::Deserialize;

use crate::config::ConfigError;

/// Patroni's `restapi.verify_client`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VerifyClient {
    /// No client certificate is asked for.
    #[default]
    None,
    /// A client certificate is checked when given, and required for the POST endpoints.
    Optional,
    /// Every connection must present a certificate signed by `restapi.cafile`.
    Required,
}

/// The REST API's certificate files (`[restapi]`), checked at load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerTls {
    /// `restapi.certfile`: the server's certificate chain (PEM), leaf first.
    pub certfile: PathBuf,
    /// `restapi.keyfile`: its private key (PEM).
    pub keyfile: PathBuf,
    /// `restapi.cafile`: the CA that signs client certificates (required with
    /// `verify_client` other than `none`); also what peers verify each other against.
    pub cafile: Option<PathBuf>,
    /// `restapi.verify_client`.
    pub verify_client: VerifyClient,
}

/// What a client of the REST API trusts and presents (`ctl` or a peer's probe).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientTls {
    /// CA file the server's certificate must chain to; `None`: the system's roots.
    pub cacert: Option<PathBuf>,
    /// Client certificate and key, for servers with `verify_client`.
    pub identity: Option<(PathBuf, PathBuf)>,
}

/// The crypto provider of every rustls object built here: ring, as the rest of the tree.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| ConfigError::new(key, format!("cannot read {}: {e}", path.display())))
}

/// The certificates of the PEM file at `path`; at least one.
pub fn load_certs(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bytes = read(key, path)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| ConfigError::new(key, format!("{} is not a PEM certificate file: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ConfigError::new(key, format!("{} holds no PEM certificate", path.display())));
    }
    Ok(certs)
}

/// The private key of the PEM file at `path` (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(key: &str, path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let bytes = read(key, path)?;
    PrivateKeyDer::from_pem_slice(&bytes)
        .map_err(|e| ConfigError::new(key, format!("{} holds no usable PEM private key: {e}", path.display())))
}

/// A root store from the CA file at `path`.
pub fn load_roots(key: &str, path: &Path) -> Result<RootCertStore, ConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(key, path)? {
        roots
            .add(cert)
            .map_err(|e| ConfigError::new(key, format!("{} is not a usable CA certificate: {e}", path.display())))?;
    }
    Ok(roots)
}

impl ServerTls {
    /// The rustls server configuration; every file is read and checked (the key must match
    /// the certificate).
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
        let certs = load_certs("restapi.certfile", &self.certfile)?;
        let key = load_key("restapi.keyfile", &self.keyfile)?;
        let builder = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| ConfigError::new("restapi.certfile", e.to_string()))?;
        // Read also without verify_client: peers verify each other's certificates against it.
        let roots = self.cafile.as_deref().map(|ca| load_roots("restapi.cafile", ca)).transpose()?;
        let builder = match (self.verify_client, &self.cafile, roots) {
            (VerifyClient::None, _, _) => builder.with_no_client_auth(),
            (mode, Some(ca), Some(roots)) => {
                let roots = Arc::new(roots);
                let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider());
                let verifier = if mode == VerifyClient::Optional { verifier.allow_unauthenticated() } else { verifier };
                let verifier = verifier
                    .build()
                    .map_err(|e| ConfigError::new("restapi.cafile", format!("{}: {e}", ca.display())))?;
                builder.with_client_cert_verifier(verifier)
            }
            (_, _, _) => {
                return Err(ConfigError::new(
                    "restapi.cafile",
                    "is required when restapi.verify_client is optional or required (client certificates are checked against it)",
                ));
            }
        };
        let mut config = builder.with_single_cert(certs, key).map_err(|e| {
            ConfigError::new(
                "restapi.keyfile",
                format!("{} does not fit {}: {e}", self.keyfile.display(), self.certfile.display()),
            )
        })?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ClientTls {
    /// Reads and checks the files; `ca_key` and `cert_key`/`key_key` name the config keys
    /// they came from, for the error.
    pub fn check(&self, ca_key: &str, cert_key: &str, key_key: &str) -> Result<(), ConfigError> {
        if let Some(ca) = &self.cacert {
            load_roots(ca_key, ca)?;
        }
        if let Some((cert, key)) = &self.identity {
            load_certs(cert_key, cert)?;
            load_key(key_key, key)?;
        }
        Ok(())
    }

    /// An HTTP client for members' APIs: requests give up after `timeout`; `https://` URLs
    /// are verified against `cacert` and present the identity when one is set.
    pub fn http_client(&self, timeout: Duration) -> anyhow::Result<reqwest::Client> {
        // rustls by name: another crate in the same build may switch on native-tls, which would
        // then be the default and refuse a rustls identity.
        let mut builder =
            reqwest::Client::builder().tls_backend_rustls().timeout(timeout).connect_timeout(timeout).no_proxy();
        if let Some(ca) = &self.cacert {
            let pem = std::fs::read(ca).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", ca.display()))?;
            builder = builder.tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem)?);
        }
        if let Some((cert, key)) = &self.identity {
            let mut pem = std::fs::read(cert).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", cert.display()))?;
            pem.push(b'\n');
            pem.extend(std::fs::read(key).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", key.display()))?);
            builder = builder.identity(reqwest::Identity::from_pem(&pem)?);
        }
        Ok(builder.build()?)
    }
}

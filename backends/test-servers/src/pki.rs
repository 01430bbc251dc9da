//! A throwaway PKI for TLS tests: a CA, a server certificate for 127.0.0.1 and a client
//! certificate, made at test time with rcgen (nothing secret is checked in).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// PEM files written by [`make_pki`].
#[derive(Clone, Debug)]
pub struct Pki {
    /// The CA's certificate: what clients and the server trust.
    pub ca: PathBuf,
    /// The server's certificate, for `127.0.0.1` and `localhost`; also good for client
    /// authentication, so a member that serves with it can present it to its peers.
    pub server_cert: PathBuf,
    /// Its key.
    pub server_key: PathBuf,
    /// A client certificate (no names; client authentication only).
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in `dir`.
pub fn make_pki(dir: &Path) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "leasehold test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key")).expect("CA cert");

    let leaf = |names: Vec<String>, usages: Vec<ExtendedKeyUsagePurpose>, cn: &str| {
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = usages;
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &ca).expect("leaf cert");
        (cert.pem(), key.serialize_pem())
    };
    let (server_pem, server_key_pem) = leaf(
        vec!["127.0.0.1".into(), "localhost".into()],
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
        "server",
    );
    let (client_pem, client_key_pem) = leaf(vec![], vec![ExtendedKeyUsagePurpose::ClientAuth], "leasehold");

    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write PEM");
        path
    };
    Pki {
        ca: write("ca.pem", &ca.pem()),
        server_cert: write("server.pem", &server_pem),
        server_key: write("server-key.pem", &server_key_pem),
        client_cert: write("client.pem", &client_pem),
        client_key: write("client-key.pem", &client_key_pem),
    }
}

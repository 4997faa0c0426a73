//! Certificates made in the test with rcgen: a CA, a server certificate for localhost and
//! 127.0.0.1 signed by it, and a client certificate; written as PEM files in a directory.

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use std::path::{Path, PathBuf};

pub struct Pki {
    pub dir: PathBuf,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// The PEM texts, for files written elsewhere (PostgreSQL's data directory).
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

/// A CA named `name` and its server and client certificates, in `dir` with `prefix`.
pub fn make(dir: &Path, prefix: &str, name: &str) -> Pki {
    std::fs::create_dir_all(dir).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} test CA"));
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();

    let mut server =
        CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
    server
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let server_key = KeyPair::generate().unwrap();
    let server_cert = server.signed_by(&server_key, &ca).unwrap();

    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    client.distinguished_name.push(DnType::CommonName, "agent");
    let client_key = KeyPair::generate().unwrap();
    let client_cert = client.signed_by(&client_key, &ca).unwrap();

    let write = |file: &str, text: &str| {
        let p = dir.join(format!("{prefix}{file}"));
        std::fs::write(&p, text).unwrap();
        p
    };
    Pki {
        dir: dir.to_owned(),
        ca: write("ca.pem", &ca.pem()),
        server_cert: write("server.pem", &server_cert.pem()),
        server_key: write("server.key", &server_key.serialize_pem()),
        client_cert: write("client.pem", &client_cert.pem()),
        client_key: write("client.key", &client_key.serialize_pem()),
        server_cert_pem: server_cert.pem(),
        server_key_pem: server_key.serialize_pem(),
    }
}

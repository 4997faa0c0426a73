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

/// A rustls client configuration trusting `ca`, offering `alpn`.
pub fn client_config(ca: &Path, alpn: &[&[u8]]) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    std::sync::Arc::new(config)
}

/// TLS to 127.0.0.1:`port` as "localhost": after an SSLRequest, or (`direct`) from the
/// first byte with ALPN `alpn`.
pub async fn tls_connect(
    port: u16,
    ca: &Path,
    direct: bool,
    alpn: &[&[u8]],
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    if !direct {
        tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await?;
        assert_eq!(tcp.read_u8().await?, b'S');
    }
    let connector = tokio_rustls::TlsConnector::from(client_config(ca, alpn));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await
}

/// tokio-postgres over an already encrypted stream, as the agent user on `app`.
pub async fn postgres_over(
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) = tokio_postgres::Config::new()
        .user(super::AGENT.0)
        .password(super::AGENT.1)
        .dbname("app")
        .connect_raw(tls, tokio_postgres::NoTls)
        .await?;
    tokio::spawn(conn);
    Ok(client)
}

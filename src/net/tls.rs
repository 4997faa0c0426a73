//! TLS with rustls (aws-lc-rs provider only, TLS 1.2 and 1.3): the client-facing acceptor,
//! whose certificate and key are reloaded when their files change or on RELOAD, and the
//! upstream connector for each sslmode (libpq's meanings: require encrypts without checking,
//! verify-ca checks the chain, verify-full the chain and the host name).

use arc_swap::ArcSwapOption;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

pub use crate::config::tls::{ServerFiles, SslMode, TlsError, UpstreamTls};
use crate::config::tls::{file_err, load_certs, load_key};

/// The ALPN protocol PostgreSQL 17 requires for direct TLS (`sslnegotiation=direct`).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for c in load_certs(path)? {
        store.add(c).map_err(|e| file_err(path, e))?;
    }
    Ok(store)
}

/// When the certificate stops being valid (Unix seconds), from the leaf's notAfter.
fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(parsed.validity().not_after.timestamp())
}

fn build_server(files: &ServerFiles) -> Result<(ServerConfig, Option<i64>), TlsError> {
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let expiry = not_after(&certs[0]);
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &files.client_ca {
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots(ca)?),
                provider(),
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| file_err(ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| file_err(&files.key, format!("does not match the certificate: {e}")))?;
    // Direct TLS clients must offer "postgresql"; SSLRequest clients may offer nothing.
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok((config, expiry))
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The client-facing TLS configuration, swapped whole when its files change: connections
/// already open keep the session they negotiated; new ones get the new certificate.
#[derive(Default)]
pub struct Acceptor {
    current: ArcSwapOption<ServerConfig>,
    state: Mutex<Option<Loaded>>,
    /// The certificate's notAfter (Unix seconds), for the expiry metric; 0 when none.
    expiry: std::sync::atomic::AtomicI64,
}

struct Loaded {
    files: ServerFiles,
    mtimes: Vec<Option<SystemTime>>,
}

impl Acceptor {
    pub fn config(&self) -> Option<Arc<ServerConfig>> {
        self.current.load_full()
    }

    pub fn expiry(&self) -> i64 {
        self.expiry.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn stamps(files: &ServerFiles) -> Vec<Option<SystemTime>> {
        let mut v = vec![mtime(&files.cert), mtime(&files.key)];
        if let Some(ca) = &files.client_ca {
            v.push(mtime(ca));
        }
        v
    }

    /// Loads `files` (None: TLS off). On error the previous configuration stays in force.
    pub fn load(&self, files: Option<&ServerFiles>) -> Result<(), TlsError> {
        let Some(files) = files else {
            self.current.store(None);
            *self.state.lock().unwrap_or_else(|e| e.into_inner()) = None;
            self.expiry.store(0, std::sync::atomic::Ordering::Relaxed);
            return Ok(());
        };
        let mtimes = Self::stamps(files);
        let (config, expiry) = build_server(files)?;
        self.current.store(Some(Arc::new(config)));
        self.expiry
            .store(expiry.unwrap_or(0), std::sync::atomic::Ordering::Relaxed);
        *self.state.lock().unwrap_or_else(|e| e.into_inner()) = Some(Loaded {
            files: files.clone(),
            mtimes,
        });
        Ok(())
    }

    /// Reloads when a file's modification time changed. Returns whether it did.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let files = {
            let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            match &*st {
                Some(l) if Self::stamps(&l.files) != l.mtimes => l.files.clone(),
                _ => return Ok(false),
            }
        };
        self.load(Some(&files)).map(|()| true)
    }
}

/// Builds the rustls client configuration for `t` (None for sslmode=disable).
pub fn client_config(t: &UpstreamTls) -> Result<Option<Arc<ClientConfig>>, TlsError> {
    if t.mode == SslMode::Disable {
        return Ok(None);
    }
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let verifier: Arc<dyn ServerCertVerifier> = match t.mode {
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let Some(ca) = &t.ca else {
                return Err(TlsError::Config(format!(
                    "server_tls_sslmode = \"{}\" needs server_tls_ca_file",
                    t.mode.as_str()
                )));
            };
            let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots(ca)?),
                provider(),
            )
            .build()
            .map_err(|e| file_err(ca, e))?;
            Arc::new(Checked {
                inner,
                check_name: t.mode == SslMode::VerifyFull,
            })
        }
        _ => Arc::new(Unchecked(provider().signature_verification_algorithms)),
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => builder
            .with_client_auth_cert(load_certs(cert)?, load_key(key)?)
            .map_err(|e| file_err(key, e))?,
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(TlsError::Config(
                "server_tls_cert_file and server_tls_key_file go together".into(),
            ));
        }
    };
    Ok(Some(Arc::new(config)))
}

/// TLS for fetching a JWKS: certificates verified against Mozilla's roots, or `ca` when set.
pub fn web_client_config(ca: Option<&Path>) -> Result<Arc<ClientConfig>, TlsError> {
    let store = match ca {
        Some(path) => roots(path)?,
        None => RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        },
    };
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(store)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The name the upstream's certificate must carry: its host name or IP address.
pub fn server_name(host: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(host.to_owned()).ok()
}

/// sslmode=prefer/require: encrypted, and the handshake's signatures checked, but the
/// certificate itself is not (libpq's meaning of those modes).
#[derive(Debug)]
struct Unchecked(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// verify-ca and verify-full: webpki's checks, with the host name ignored for verify-ca.
#[derive(Debug)]
struct Checked {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    check_name: bool,
}

impl ServerCertVerifier for Checked {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                NotValidForName | NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
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

//! What TLS is configured from: the client-facing certificate files, libpq's sslmode and
//! files for each upstream, and reading PEM files (so that a configuration naming a missing
//! or unreadable file is refused when it is loaded). `net::tls` builds rustls from these.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

pub fn file_err(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no PEM certificate in it"));
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_err(path, e))
}

/// What the client-facing TLS is built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA for client certificates: when set, clients may present one (and it is verified).
    pub client_ca: Option<PathBuf>,
}

/// libpq's sslmode for upstream connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    Disable,
    /// TLS if the server offers it, not verified.
    #[default]
    Prefer,
    /// TLS or fail, not verified.
    Require,
    /// TLS, chain verified against the CA bundle.
    VerifyCa,
    /// TLS, chain and host name verified.
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// How to reach one upstream over TLS.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct UpstreamTls {
    pub mode: SslMode,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Reads every file of the client-facing TLS.
pub fn check_server_files(f: &ServerFiles) -> Result<(), TlsError> {
    load_certs(&f.cert)?;
    load_key(&f.key)?;
    if let Some(ca) = &f.client_ca {
        load_certs(ca)?;
    }
    Ok(())
}

/// Checks one upstream's TLS settings and reads their files.
pub fn check_upstream(t: &UpstreamTls) -> Result<(), TlsError> {
    if t.mode == SslMode::Disable {
        return Ok(());
    }
    match (&t.ca, t.mode) {
        (Some(ca), _) => {
            load_certs(ca)?;
        }
        (None, SslMode::VerifyCa | SslMode::VerifyFull) => {
            return Err(TlsError::Config(format!(
                "server_tls_sslmode = \"{}\" needs server_tls_ca_file",
                t.mode.as_str()
            )));
        }
        (None, _) => {}
    }
    match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => {
            load_certs(cert)?;
            load_key(key)?;
            Ok(())
        }
        (None, None) => Ok(()),
        _ => Err(TlsError::Config(
            "server_tls_cert_file and server_tls_key_file go together".into(),
        )),
    }
}

//! The JWKS: keys for asymmetric tokens, fetched from `[jwt] jwks_url` or found through OIDC
//! discovery (`<issuer>/.well-known/openid-configuration`), cached, refreshed every
//! `jwks_refresh` and when a token names an unknown `kid` (at most once per
//! `jwks_min_refresh`, so unknown kids cannot make the proxy hammer the issuer). A failed
//! refresh keeps the keys it had.

use super::Refusal;
use crate::config::{Config, Jwt};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The most a JWKS or discovery document may weigh.
const MAX_DOCUMENT: usize = 1 << 20;
/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
pub struct Jwks {
    state: tokio::sync::Mutex<State>,
}

#[derive(Default)]
struct State {
    set: Option<Arc<JwkSet>>,
    /// Where `set` came from: a reload that points elsewhere starts afresh.
    from: String,
    fetched: Option<Instant>,
    attempted: Option<Instant>,
}

impl Jwks {
    /// The key to check a token signed with `alg` (and naming `kid`) against.
    pub async fn key(
        &self,
        config: &Config,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<DecodingKey, Refusal> {
        let jwt = config.jwt.as_ref().ok_or(Refusal::AlgorithmNotAllowed)?;
        let from = match (&jwt.jwks_url, &jwt.issuer) {
            (Some(url), _) => url.to_string(),
            (None, Some(issuer)) => issuer.to_string(),
            (None, None) => return Err(Refusal::AlgorithmNotAllowed),
        };
        let mut st = self.state.lock().await;
        if st.from != from {
            *st = State {
                from,
                ..State::default()
            };
        }
        let stale = st
            .fetched
            .is_none_or(|t| t.elapsed() >= jwt.jwks_refresh.duration());
        if stale && st.may_attempt(jwt) {
            st.refresh(jwt).await;
        }
        match st.find(kid, alg) {
            Found::Key(k) => return Ok(k),
            Found::WrongAlgorithm => return Err(Refusal::AlgorithmNotAllowed),
            Found::None => {}
        }
        if !st.may_attempt(jwt) {
            return Err(st.missing());
        }
        st.refresh(jwt).await;
        match st.find(kid, alg) {
            Found::Key(k) => Ok(k),
            Found::WrongAlgorithm => Err(Refusal::AlgorithmNotAllowed),
            Found::None => Err(st.missing()),
        }
    }
}

enum Found {
    Key(DecodingKey),
    WrongAlgorithm,
    None,
}

impl State {
    fn may_attempt(&self, jwt: &Jwt) -> bool {
        self.attempted
            .is_none_or(|t| t.elapsed() >= jwt.jwks_min_refresh.duration())
    }

    fn missing(&self) -> Refusal {
        if self.set.is_some() {
            Refusal::UnknownKid
        } else {
            Refusal::KeysUnavailable
        }
    }

    async fn refresh(&mut self, jwt: &Jwt) {
        self.attempted = Some(Instant::now());
        match fetch_set(jwt).await {
            Ok(set) => {
                tracing::info!(from = %self.from, keys = set.keys.len(), "JWKS fetched");
                self.set = Some(Arc::new(set));
                self.fetched = Some(Instant::now());
            }
            Err(e) => {
                tracing::warn!(from = %self.from, error = %e, "JWKS fetch failed: keeping the keys held")
            }
        }
    }

    /// The key named `kid` (or, for a token without one, the first that fits `alg`).
    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Found {
        let Some(set) = &self.set else {
            return Found::None;
        };
        let jwk = match kid {
            Some(kid) => set.find(kid),
            None => set.keys.iter().find(|k| fits(k, alg)),
        };
        let Some(jwk) = jwk else { return Found::None };
        if !fits(jwk, alg) {
            return Found::WrongAlgorithm;
        }
        match DecodingKey::from_jwk(jwk) {
            Ok(key) if key.family().algorithms().contains(&alg) => Found::Key(key),
            _ => Found::WrongAlgorithm,
        }
    }
}

/// Whether `jwk` may verify `alg`: an asymmetric key whose own `alg`, when it names one, is it.
fn fits(jwk: &Jwk, alg: Algorithm) -> bool {
    let symmetric = matches!(
        jwk.algorithm,
        jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)
    );
    let named = jwk
        .common
        .key_algorithm
        .is_none_or(|ka| ka.to_string() == format!("{alg:?}"));
    !symmetric && named
}

async fn fetch_set(jwt: &Jwt) -> Result<JwkSet, String> {
    let url = match (&jwt.jwks_url, &jwt.issuer) {
        (Some(url), _) => url.to_string(),
        (None, Some(issuer)) => {
            let well_known = format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            );
            let doc: serde_json::Value = get_json(jwt, &well_known).await?;
            doc.get("jwks_uri")
                .and_then(|u| u.as_str())
                .ok_or("the discovery document has no jwks_uri")?
                .to_owned()
        }
        (None, None) => return Err("no jwks_url or issuer".into()),
    };
    get_json(jwt, &url).await
}

async fn get_json<T: serde::de::DeserializeOwned>(jwt: &Jwt, url: &str) -> Result<T, String> {
    let body = tokio::time::timeout(FETCH_TIMEOUT, get(jwt, url))
        .await
        .map_err(|_| format!("{url}: timed out"))??;
    serde_json::from_slice(&body).map_err(|e| format!("{url}: not the JSON expected: {e}"))
}

/// One HTTP/1.1 GET; the body when the status is 200.
async fn get(jwt: &Jwt, url: &str) -> Result<Bytes, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("{url}: no host"))?
        .to_owned();
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("{url}: only http and https are fetched")),
    };
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let bare = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let tcp = tokio::net::TcpStream::connect((bare.as_str(), port))
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let authority = uri.authority().map_or(host.clone(), |a| a.to_string());
    if https {
        let ca = jwt.jwks_ca_file.as_deref().map(std::path::Path::new);
        let tls = crate::net::tls::web_client_config(ca).map_err(|e| e.to_string())?;
        let name = crate::net::tls::server_name(&bare).ok_or_else(|| format!("{url}: bad host"))?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("{url}: TLS: {e}"))?;
        exchange(stream, &authority, &path, url).await
    } else {
        exchange(tcp, &authority, &path, url).await
    }
}

async fn exchange<S>(stream: S, authority: &str, path: &str, url: &str) -> Result<Bytes, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let driver = tokio::spawn(conn);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("{url}: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    let body = Limited::new(response.into_body(), MAX_DOCUMENT)
        .collect()
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .to_bytes();
    driver.abort();
    if status != hyper::StatusCode::OK {
        return Err(format!("{url}: HTTP {status}"));
    }
    Ok(body)
}

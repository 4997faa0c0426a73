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

/// The keys are read under a short lock, and one fetch at a time runs outside it. A login
/// waits for a fetch when it needs a key not yet held, or when it is the one login that finds
/// the keys due for their scheduled refresh (the others go on with the keys held).
#[derive(Default)]
pub struct Jwks {
    state: std::sync::Mutex<State>,
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    set: Option<Arc<JwkSet>>,
    /// Where `set` came from: a reload that points elsewhere starts afresh.
    from: String,
    fetched: Option<Instant>,
    attempted: Option<Instant>,
}

/// What the held keys say about one token.
enum Lookup {
    Found(DecodingKey),
    WrongAlgorithm,
    /// Not held; a fetch may be tried now.
    Missing {
        may_fetch: bool,
        refusal: Refusal,
    },
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
        let (lookup, stale) = self.look_up(jwt, &from, kid, alg);
        match lookup {
            Lookup::Found(k) => {
                if stale {
                    // Scheduled refresh, by whichever login finds the keys old and no fetch
                    // running; the others go on with the keys held.
                    if let Ok(_f) = self.fetching.try_lock() {
                        self.refresh(jwt, &from).await;
                    }
                }
                Ok(k)
            }
            Lookup::WrongAlgorithm => Err(Refusal::AlgorithmNotAllowed),
            Lookup::Missing {
                may_fetch: false,
                refusal,
            } => Err(refusal),
            Lookup::Missing {
                may_fetch: true, ..
            } => {
                let _f = self.fetching.lock().await;
                // A fetch that ran while this one waited may have brought the key.
                if let (
                    Lookup::Missing {
                        may_fetch: true, ..
                    },
                    _,
                ) = self.look_up(jwt, &from, kid, alg)
                {
                    self.refresh(jwt, &from).await;
                }
                match self.look_up(jwt, &from, kid, alg).0 {
                    Lookup::Found(k) => Ok(k),
                    Lookup::WrongAlgorithm => Err(Refusal::AlgorithmNotAllowed),
                    Lookup::Missing { refusal, .. } => Err(refusal),
                }
            }
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The held key for the token, and whether the keys are due for a refresh.
    fn look_up(&self, jwt: &Jwt, from: &str, kid: Option<&str>, alg: Algorithm) -> (Lookup, bool) {
        let mut st = self.state();
        if st.from != from {
            *st = State {
                from: from.to_owned(),
                ..State::default()
            };
        }
        let may_fetch = st
            .attempted
            .is_none_or(|t| t.elapsed() >= jwt.jwks_min_refresh.duration());
        let stale = may_fetch
            && st
                .fetched
                .is_none_or(|t| t.elapsed() >= jwt.jwks_refresh.duration());
        let lookup = match st.find(kid, alg) {
            Found::Key(k) => Lookup::Found(k),
            Found::WrongAlgorithm => Lookup::WrongAlgorithm,
            Found::None => Lookup::Missing {
                may_fetch,
                refusal: if st.set.is_some() {
                    Refusal::UnknownKid
                } else {
                    Refusal::KeysUnavailable
                },
            },
        };
        (lookup, stale)
    }

    /// Fetches the keys (the caller holds `fetching`); the state lock is not held meanwhile.
    async fn refresh(&self, jwt: &Jwt, from: &str) {
        self.state().attempted = Some(Instant::now());
        let fetched = fetch_set(jwt).await;
        let mut st = self.state();
        if st.from != from {
            return;
        }
        match fetched {
            Ok(set) => {
                tracing::info!(from, keys = set.keys.len(), "JWKS fetched");
                st.set = Some(Arc::new(set));
                st.fetched = Some(Instant::now());
            }
            Err(e) => tracing::warn!(from, error = %e, "JWKS fetch failed: keeping the keys held"),
        }
    }
}

enum Found {
    Key(DecodingKey),
    WrongAlgorithm,
    None,
}

impl State {
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
    let for_signing = !matches!(
        jwk.common.public_key_use,
        Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
    );
    !symmetric && named && for_signing
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
            let uri = doc
                .get("jwks_uri")
                .and_then(|u| u.as_str())
                .ok_or("the discovery document has no jwks_uri")?;
            // An https issuer's keys are not fetched in the clear.
            if issuer.starts_with("https://") && !uri.starts_with("https://") {
                return Err(format!("jwks_uri {uri:?} is not https like its issuer"));
            }
            uri.to_owned()
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
    // Aborted however this function ends (an error, or the caller's timeout dropping it).
    let driver = AbortOnDrop(tokio::spawn(conn));
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
    drop(driver);
    if status != hyper::StatusCode::OK {
        return Err(format!("{url}: HTTP {status}"));
    }
    Ok(body)
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

//! Agent identities against a real PostgreSQL: API keys and JWTs mapped to roles, Row Level
//! Security through compat claims (`auth.uid()` as Supabase defines it) and sealed claims
//! (`pgsluice.uid()`), refused tokens, role escapes, forged seals, key rotation.

mod support;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use pgsluice::config::PoolMode;
use pgsluice::devdb::DevDb;
use serde_json::json;
use std::time::Duration;
use support::agents::*;
use support::*;

fn token_url(proxy: &Proxy, mode: PoolMode, user: &str, token: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={user} password={token} dbname=app",
        proxy.port(mode)
    )
}

/// The audit log's lines of one `event`, after the proxy has flushed it.
async fn audit_events(proxy: &Proxy, log: &std::path::Path, event: &str) -> Vec<serde_json::Value> {
    proxy.running.app.audit.flush().await;
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == event)
        .collect()
}

/// The reasons of the `token_refused` lines, in order.
async fn refusal_reasons(proxy: &Proxy, log: &std::path::Path) -> Vec<String> {
    audit_events(proxy, log, "token_refused")
        .await
        .iter()
        .map(|v| v["reason"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// A token client logged in through `mode`'s listener.
async fn agent(proxy: &Proxy, mode: PoolMode, user: &str, token: &str) -> tokio_postgres::Client {
    connect(&token_url(proxy, mode, user, token)).await.unwrap()
}

async fn bodies(c: &tokio_postgres::Client) -> Vec<String> {
    c.query("SELECT body FROM notes ORDER BY body", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Who sees what, through both listeners, with `policy` (an expression for the owner).
async fn each_agent_sees_its_rows(mode: &str, policy: &str) {
    let pg = start_postgres();
    prepare(&pg).await;
    let proxy = Proxy::start(&agent_config(
        &pg,
        mode,
        "allow_plaintext_tokens = \"local\"",
        "pool_size = 2",
    ))
    .await;
    if mode == "sealed" {
        let text = agent_config(&pg, mode, "", "");
        let warnings = install(&pg, &text).await;
        assert!(warnings.is_empty(), "{warnings:?}");
        // Idempotent: a second run changes nothing and succeeds.
        install(&pg, &text).await;
    }
    own_rows_policy(&pg, policy).await;
    let alice = token("authenticated", Some(ALICE), json!({}));
    let bob = token("authenticated", Some(BOB), json!({}));
    let service = token("service_role", None, json!({}));
    for listener in [PoolMode::Session, PoolMode::Transaction] {
        // One after another: in session mode each takes over the server the last one had.
        for round in 0..2 {
            for (user, pw, want) in [
                ("authenticated", alice.as_str(), &["alice-1", "alice-2"][..]),
                ("authenticated", bob.as_str(), &["bob-1"][..]),
                ("batch-agent", BATCH_KEY, &["batch-1"][..]),
            ] {
                let c = agent(&proxy, listener, user, pw).await;
                assert_eq!(bodies(&c).await, want, "{mode} {listener:?} round {round}");
                let s = agent(&proxy, listener, "service_role", &service).await;
                assert_eq!(bodies(&s).await.len(), 4, "service_role bypasses RLS");
            }
        }
        let a = agent(&proxy, listener, "authenticated", &alice).await;
        // A write is checked against the writer's own subject.
        let e = a
            .execute(
                &format!("INSERT INTO notes (owner, body) VALUES ('{BOB}', 'forged')"),
                &[],
            )
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), "42501", "{e}");
        let who: String = a
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(who, "authenticated");
    }
    // Many agents interleaved on a pool of 2 in transaction mode.
    let mut tasks = Vec::new();
    for i in 0..12 {
        let (user, pw, want): (&str, String, Vec<&str>) = match i % 3 {
            0 => ("authenticated", alice.clone(), vec!["alice-1", "alice-2"]),
            1 => ("authenticated", bob.clone(), vec!["bob-1"]),
            _ => ("batch-agent", BATCH_KEY.to_owned(), vec!["batch-1"]),
        };
        let url = token_url(&proxy, PoolMode::Transaction, user, &pw);
        tasks.push(tokio::spawn(async move {
            let c = connect(&url).await.unwrap();
            for _ in 0..15 {
                let got = bodies(&c).await;
                assert_eq!(got, want);
                let got: Vec<String> = c
                    .simple_query("SELECT body FROM notes ORDER BY body")
                    .await
                    .unwrap()
                    .iter()
                    .filter_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                        _ => None,
                    })
                    .collect();
                assert_eq!(got, want);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert!(role_backends_of(&pg, "authenticated") <= 2);
}

fn role_backends_of(pg: &DevDb, role: &str) -> i64 {
    pg.psql(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = '{role}'"
    ))
    .unwrap()
    .parse()
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_claims_drive_supabase_policies() {
    each_agent_sees_its_rows("compat", "auth.uid()").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_claims_drive_pgsluice_policies() {
    each_agent_sees_its_rows("sealed", "pgsluice.uid()").await;
}

/// A proxy in `mode` with the test roles, table and (for sealed) schema, and `extra`
/// appended to `[general]`.
async fn agents_proxy(mode: &str, general: &str) -> (DevDb, Proxy) {
    let pg = start_postgres();
    prepare(&pg).await;
    let text = agent_config(&pg, mode, general, "pool_size = 2");
    if mode == "sealed" {
        install(&pg, &text).await;
        own_rows_policy(&pg, "pgsluice.uid()").await;
    }
    let proxy = Proxy::start(&text).await;
    (pg, proxy)
}

#[test]
fn accepts_the_whole_agents_contract() {
    let contract = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/contract");
    let read = |name: &str, fallback: &str| {
        std::fs::read_to_string(contract.join(name)).unwrap_or_else(|_| fallback.to_owned())
    };
    let minimal = read("minimal.toml", include_str!("data/minimal.toml"));
    let agents = read("agents.toml", include_str!("data/agents.toml"));
    let dir = std::env::temp_dir().join(format!("pgsluice-agents-contract-{}", std::process::id()));
    let pki = certs::make(&dir, "", "contract");
    let text = fill_contract(&format!("{minimal}\n{agents}"))
        .replace("@TLS_CERT@", &pki.server_cert.display().to_string())
        .replace("@TLS_KEY@", &pki.server_key.display().to_string())
        .replace("@JWT_SECRET@", JWT_SECRET)
        .replace("@AUTHENTICATED_PASSWORD@", "auth-pw")
        .replace("@SERVICE_ROLE_PASSWORD@", "svc-pw")
        .replace("@API_KEY_SHA256@", &sha256_hex(BATCH_KEY))
        .replace("@API_KEY_SUBJECT@", BATCH)
        .replace("@INTERACTIVE_PASSWORD@", "interactive-pw");
    let c = pgsluice::config::Config::parse(&text, std::path::Path::new("agents.toml")).unwrap();
    let jwt = c.jwt.as_ref().unwrap();
    assert_eq!(jwt.claims_mode, pgsluice::config::ClaimsMode::Sealed);
    assert_eq!(
        (jwt.role_claim.as_str(), jwt.subject_claim.as_str()),
        ("role", "sub")
    );
    assert_eq!(
        c.role("service_role").unwrap().server_user.as_str(),
        "service_role"
    );
    let key = c.api_key("batch-agent").unwrap();
    assert_eq!(
        c.class_of(key.priority.as_ref()),
        Some(pgsluice::config::Priority::LOW)
    );
    assert_eq!(key.subject.as_str(), BATCH);
    assert!(c.mcp.as_ref().unwrap().enabled);
    let interactive = c.user("interactive").unwrap();
    assert_eq!(
        c.class_of(interactive.priority.as_ref()),
        Some(pgsluice::config::Priority::HIGH)
    );
    // It shares the upstream role (and so the pool) with "agent".
    assert_eq!(
        interactive.server_user,
        c.user("agent").unwrap().server_user
    );
    assert_eq!(
        pgsluice::identity::token_login(&c, "batch-agent"),
        Some(pgsluice::identity::TokenLogin::ApiKey)
    );
    assert_eq!(
        pgsluice::identity::token_login(&c, "authenticated"),
        Some(pgsluice::identity::TokenLogin::Jwt)
    );
    assert_eq!(pgsluice::identity::token_login(&c, "agent"), None);
    // A key mapped to a role that does not exist is refused, naming line and key.
    let broken: String = text
        .lines()
        .map(|l| match l.contains("# acts as this mapped role") {
            true => "role = \"nobody\"\n".to_owned(),
            false => format!("{l}\n"),
        })
        .collect();
    let e =
        pgsluice::config::Config::parse(&broken, std::path::Path::new("agents.toml")).unwrap_err();
    assert_eq!(e.key.as_deref(), Some("role"), "{e}");
    assert!(e.reason.contains("no [[roles]] named \"nobody\""), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every bad token gets the same 28P01 no sooner than the failure floor, and an audit line
/// saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_alike_and_audited() {
    let pg = start_postgres();
    prepare(&pg).await;
    let dir = std::env::temp_dir().join(format!("pgsluice-agents-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("audit.jsonl");
    let text = agent_config(&pg, "compat", "allow_plaintext_tokens = \"local\"", "").replace(
        "issuer = \"supabase\"",
        "issuer = \"supabase\"\naudiences = [\"authenticated\"]",
    ) + &format!("\n[audit]\ndestination = \"{}\"\n", log.display());
    let proxy = Proxy::start(&text).await;
    let aud = json!({ "aud": "authenticated" });
    let good = token("authenticated", Some(ALICE), aud.clone());
    let c = agent(&proxy, PoolMode::Transaction, "authenticated", &good).await;
    assert_eq!(
        bodies(&c).await.len(),
        0,
        "no policy yet: RLS shows nothing"
    );
    let b64 = |v: serde_json::Value| {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    };
    let unsigned = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(
            json!({"role": "authenticated", "sub": ALICE, "exp": now() + 3600, "aud": "authenticated", "iss": "supabase"})
        )
    );
    let other_secret = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"role": "authenticated", "sub": ALICE, "exp": now() + 3600, "aud": "authenticated", "iss": "supabase"}),
        &EncodingKey::from_secret(b"not-the-secret-not-the-secret-not-the-secret"),
    )
    .unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "authenticated",
            token(
                "authenticated",
                Some(ALICE),
                json!({"aud": "authenticated", "exp": now() - 3600}),
            ),
            "expired",
        ),
        (
            "authenticated",
            token(
                "authenticated",
                Some(ALICE),
                json!({"aud": "authenticated", "nbf": now() + 3600}),
            ),
            "not_yet_valid",
        ),
        (
            "authenticated",
            token(
                "authenticated",
                Some(ALICE),
                json!({"aud": "authenticated", "iss": "evil"}),
            ),
            "wrong_issuer",
        ),
        (
            "authenticated",
            token("authenticated", Some(ALICE), json!({"aud": "anon"})),
            "wrong_audience",
        ),
        ("authenticated", other_secret, "bad_signature"),
        ("authenticated", unsigned, "malformed_token"),
        (
            "authenticated",
            token("service_role", None, aud.clone()),
            "role_not_allowed",
        ),
        ("authenticated", "not-a-token".into(), "malformed_token"),
        ("batch-agent", "sk-wrong-key".into(), "unknown_api_key"),
    ];
    for (user, tok, why) in &cases {
        let started = std::time::Instant::now();
        let e = connect(&token_url(&proxy, PoolMode::Session, user, tok))
            .await
            .unwrap_err();
        let db = e.as_db_error().unwrap_or_else(|| panic!("{why}: {e}"));
        assert_eq!(db.code().code(), "28P01", "{why}");
        assert_eq!(
            db.message(),
            format!("password authentication failed for user \"{user}\""),
            "{why}"
        );
        assert!(
            started.elapsed() >= Duration::from_millis(100),
            "{why}: answered before the floor"
        );
    }
    let reasons = refusal_reasons(&proxy, &log).await;
    let text = std::fs::read_to_string(&log).unwrap();
    let want: Vec<&str> = cases.iter().map(|c| c.2).collect();
    assert_eq!(reasons, want);
    // The successful login's audit line names the identity, never the token.
    assert!(!text.contains(&good), "a token reached the audit log");
    assert!(text.contains(ALICE), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Without TLS a token is not even asked for (28000), unless allow_plaintext_tokens allows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_need_tls_unless_allowed() {
    let pg = start_postgres();
    prepare(&pg).await;
    let proxy = Proxy::start(&agent_config(&pg, "compat", "", "")).await;
    let e = connect(&token_url(
        &proxy,
        PoolMode::Session,
        "batch-agent",
        BATCH_KEY,
    ))
    .await
    .unwrap_err();
    assert_eq!(sqlstate(&e), "28000", "{e}");
}

/// A token client acts as its mapped role and can become no other, on both listeners.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mapped_roles_cannot_be_escaped() {
    let (_pg, proxy) = agents_proxy("sealed", "allow_plaintext_tokens = \"local\"").await;
    let alice = token("authenticated", Some(ALICE), json!({}));
    let escapes = [
        "SET ROLE service_role",
        "SET ROLE postgres",
        "SET SESSION AUTHORIZATION postgres",
        "SELECT set_config('role', 'service_role', false)",
        "SELECT set_config('session_authorization', 'postgres', false)",
        "DO $$ BEGIN EXECUTE 'SET ROLE service_role'; END $$",
        "DO $$ BEGIN PERFORM set_config('role', 'postgres', true); END $$",
    ];
    for listener in [PoolMode::Session, PoolMode::Transaction] {
        let c = agent(&proxy, listener, "authenticated", &alice).await;
        for sql in escapes {
            let e = c.batch_execute(sql).await.unwrap_err();
            assert_eq!(sqlstate(&e), "42501", "{listener:?} {sql}: {e}");
            let who: String = c
                .query_one("SELECT current_user::text", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(who, "authenticated", "{listener:?} after {sql}");
            assert_eq!(
                bodies(&c).await,
                ["alice-1", "alice-2"],
                "{listener:?} after {sql}"
            );
        }
        c.batch_execute("RESET ROLE; RESET SESSION AUTHORIZATION")
            .await
            .unwrap();
        let who: String = c
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(who, "authenticated");
    }
}

/// In sealed mode nothing a client can run changes whose claims `pgsluice.uid()` returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_claims_cannot_be_forged_or_replayed() {
    let (pg, proxy) = agents_proxy("sealed", "allow_plaintext_tokens = \"local\"").await;
    let config = pgsluice::config::Config::parse(
        &agent_config(&pg, "sealed", "", ""),
        std::path::Path::new("t.toml"),
    )
    .unwrap();
    let key = pgsluice::identity::claims::SealKey::from_config(&config).unwrap();
    let alice = token("authenticated", Some(ALICE), json!({}));
    let bob_claims = json!({"sub": BOB, "role": "authenticated"}).to_string();
    for listener in [PoolMode::Session, PoolMode::Transaction] {
        let c = agent(&proxy, listener, "authenticated", &alice).await;
        let uid = || async {
            let r = c
                .query_one("SELECT pgsluice.uid()::text", &[])
                .await
                .unwrap();
            r.get::<_, Option<String>>(0)
        };
        assert_eq!(uid().await.as_deref(), Some(ALICE));
        // The GUCs compat mode uses mean nothing here.
        c.batch_execute(&format!(
            "SELECT set_config('request.jwt.claims', '{bob_claims}', false)"
        ))
        .await
        .unwrap();
        assert_eq!(uid().await.as_deref(), Some(ALICE), "{listener:?}");
        // A made-up mac.
        let e = c
            .execute(
                "SELECT pgsluice.seal($1, 9000000000000000000, 'deadbeef')",
                &[&bob_claims],
            )
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), "28000", "{e}");
        // A genuine mac, for another backend.
        let (pid, counter) = (12345, 9_000_000_000_000_000_000i64);
        let mac = key.mac(pid, counter, &bob_claims);
        let e = c
            .execute(
                "SELECT pgsluice.seal($1, $2, $3)",
                &[&bob_claims, &counter, &mac],
            )
            .await
            .unwrap_err();
        assert_eq!(sqlstate(&e), "28000", "another backend's seal: {e}");
        if listener == PoolMode::Session {
            // A genuine mac for this very backend, with a counter already passed: a replay.
            let own: i32 = c
                .query_one("SELECT pg_backend_pid()", &[])
                .await
                .unwrap()
                .get(0);
            let old = key.mac(own, 1, &bob_claims);
            let e = c
                .execute("SELECT pgsluice.seal($1, 1, $2)", &[&bob_claims, &old])
                .await
                .unwrap_err();
            assert_eq!(sqlstate(&e), "28000", "replayed: {e}");
            let message = e.as_db_error().map(|d| d.message().to_owned());
            assert!(message.unwrap_or_default().contains("replayed"), "{e:?}");
        }
        assert_eq!(uid().await.as_deref(), Some(ALICE), "{listener:?}");
        // The tables are out of reach.
        for sql in [
            "SELECT * FROM pgsluice.sealed",
            "SELECT * FROM pgsluice.seal_key",
            "UPDATE pgsluice.sealed SET claims = '{}'",
            "DELETE FROM pgsluice.sealed",
        ] {
            let e = c.batch_execute(sql).await.unwrap_err();
            assert_eq!(sqlstate(&e), "42501", "{sql}: {e}");
        }
        assert_eq!(bodies(&c).await, ["alice-1", "alice-2"]);
    }
}

/// One server, handed from a token client to a password client sharing its role and on to
/// another token client: each sees its own claims and none of the last one's.
async fn claims_stay_with_their_client(mode: &str, uid: &str) {
    let pg = start_postgres();
    prepare(&pg).await;
    let mut text = agent_config(
        &pg,
        mode,
        "allow_plaintext_tokens = \"local\"",
        "pool_size = 1",
    );
    text.push_str(
        "\n[[users]]\nname = \"plain\"\npassword = \"plain-pw\"\nserver_user = \"authenticated\"\nserver_password = \"auth-pw\"\n",
    );
    if mode == "sealed" {
        install(&pg, &text).await;
    }
    let proxy = Proxy::start(&text).await;
    let alice = token("authenticated", Some(ALICE), json!({}));
    let bob = token("authenticated", Some(BOB), json!({}));
    let sql = format!("SELECT {uid}::text");
    let a = agent(&proxy, PoolMode::Transaction, "authenticated", &alice).await;
    let p = connect(&proxy.url(PoolMode::Transaction, ("plain", "plain-pw"), "app"))
        .await
        .unwrap();
    let b = agent(&proxy, PoolMode::Transaction, "authenticated", &bob).await;
    for _ in 0..3 {
        for (c, want) in [
            (&a, Some(ALICE)),
            (&p, None),
            (&b, Some(BOB)),
            (&p, None),
            (&a, Some(ALICE)),
        ] {
            let got: Option<String> = c.query_one(sql.as_str(), &[]).await.unwrap().get(0);
            assert_eq!(got.as_deref(), want, "{mode}");
        }
    }
    assert_eq!(
        role_backends_of(&pg, "authenticated"),
        1,
        "one server served them all"
    );
    // A session-mode password client after them sees no claims either.
    let s = connect(&proxy.url(PoolMode::Session, ("plain", "plain-pw"), "app"))
        .await
        .unwrap();
    let got: Option<String> = s.query_one(sql.as_str(), &[]).await.unwrap().get(0);
    assert_eq!(got, None, "{mode}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compat_claims_stay_with_their_client() {
    claims_stay_with_their_client("compat", "auth.uid()").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_claims_stay_with_their_client() {
    claims_stay_with_their_client("sealed", "pgsluice.uid()").await;
}

/// A config whose tokens come from an OIDC issuer (discovery, then its JWKS), no shared secret.
fn oidc_config(pg: &DevDb, issuer: &str, general: &str) -> String {
    let base = agent_config(pg, "compat", general, "");
    let start = base.find("[jwt]").unwrap();
    let end = start + base[start..].find("[[roles]]").unwrap();
    format!(
        "{}[jwt]\nissuer = \"{issuer}\"\nallowed_roles = [\"authenticated\"]\njwks_min_refresh = 0\n\n{}",
        &base[..start],
        &base[end..]
    )
}

async fn login_error(url: &str) -> String {
    match connect(url).await {
        Ok(_) => "ok".into(),
        Err(e) => sqlstate(&e),
    }
}

/// RS/ES tokens against the issuer's JWKS: key rotation needs no restart; unknown kids,
/// HS256 signed with the public key and signatures by the wrong key are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_keys_rotate_without_restart() {
    let pg = start_postgres();
    prepare(&pg).await;
    own_rows_policy(&pg, "auth.uid()").await;
    let k1 = jwks::SigningKey::new("k1");
    let k2 = jwks::SigningKey::new("k2");
    let server = jwks::JwksServer::start(vec![k1.jwk.clone()]).await;
    let dir = std::env::temp_dir().join(format!("pgsluice-agents-jwks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("audit.jsonl");
    let text = oidc_config(&pg, &server.base, "allow_plaintext_tokens = \"local\"")
        + &format!("\n[audit]\ndestination = \"{}\"\n", log.display());
    let proxy = Proxy::start(&text).await;
    let claims = |sub: &str| json!({"role": "authenticated", "sub": sub, "exp": now() + 600, "iss": server.base});
    let url = |tok: &str| token_url(&proxy, PoolMode::Transaction, "authenticated", tok);
    let c = connect(&url(&k1.sign(&claims(ALICE)))).await.unwrap();
    assert_eq!(bodies(&c).await, ["alice-1", "alice-2"]);
    // Key confusion: HS256 "signed" with the issuer's public key.
    let confused = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(BOB),
        &EncodingKey::from_secret(k1.public_pem().as_bytes()),
    )
    .unwrap();
    assert_eq!(login_error(&url(&confused)).await, "28P01");
    // A kid the issuer never published.
    let stranger = jwks::SigningKey::new("k-unknown");
    assert_eq!(
        login_error(&url(&stranger.sign(&claims(BOB)))).await,
        "28P01"
    );
    // k2's kid, k1's signature.
    let forged = jwks::SigningKey {
        kid: "k2".into(),
        pem: k1.pem.clone(),
        jwk: k1.jwk.clone(),
    };
    // The issuer rotates to k2: new tokens work at once, k1's no longer.
    server.serve(vec![k2.jwk.clone()]);
    let c2 = connect(&url(&k2.sign(&claims(BOB)))).await.unwrap();
    assert_eq!(bodies(&c2).await, ["bob-1"]);
    assert_eq!(login_error(&url(&k1.sign(&claims(ALICE)))).await, "28P01");
    assert_eq!(
        login_error(&url(&forged.sign(&claims(ALICE)))).await,
        "28P01",
        "wrong key for its kid"
    );
    // The client that logged in before the rotation keeps working.
    assert_eq!(bodies(&c).await, ["alice-1", "alice-2"]);
    assert!(*server.fetches.lock().unwrap() >= 2);
    let reasons = refusal_reasons(&proxy, &log).await;
    assert_eq!(
        reasons,
        [
            "algorithm_not_allowed",
            "unknown_kid",
            "unknown_kid",
            "bad_signature"
        ]
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// SASL OAUTHBEARER (RFC 7628, PostgreSQL 18's `oauth` method) with a raw-protocol client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauthbearer_logs_in_with_a_token() {
    let pg = start_postgres();
    prepare(&pg).await;
    own_rows_policy(&pg, "auth.uid()").await;
    let dir = std::env::temp_dir().join(format!("pgsluice-oauth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let hba = dir.join("hba.conf");
    std::fs::write(
        &hba,
        "host all authenticated 127.0.0.1/32 oauth\nhost all all 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap();
    let general = format!(
        "allow_plaintext_tokens = \"local\"\nauth_hba_file = \"{}\"",
        hba.display()
    );
    let proxy = Proxy::start(&agent_config(&pg, "compat", &general, "")).await;
    let port = proxy.port(PoolMode::Transaction);
    let sasl = |tok: &str| {
        let data = format!("n,,\x01auth=Bearer {tok}\x01\x01");
        let mut body = b"OAUTHBEARER\0".to_vec();
        body.extend_from_slice(&(data.len() as i32).to_be_bytes());
        body.extend_from_slice(data.as_bytes());
        raw::message(b'p', &body)
    };
    // A good token.
    let mut r = raw::Raw::open(port).await;
    r.send(&raw::startup_packet(
        196608,
        &[("user", "authenticated"), ("database", "app")],
    ))
    .await;
    let (tag, body) = r.recv().await.unwrap();
    assert_eq!((tag, &body[..4]), (b'R', &10i32.to_be_bytes()[..]));
    assert!(
        body.windows(11).any(|w| w == b"OAUTHBEARER"),
        "mechanisms offered"
    );
    // A query sent behind the token, without waiting for AuthenticationOk, is answered.
    let mut first = sasl(&token("authenticated", Some(ALICE), json!({})));
    first.extend(raw::message(b'Q', b"SELECT count(*) FROM notes\0"));
    r.send(&first).await;
    let (tag, body) = r.recv().await.unwrap();
    assert_eq!(
        (tag, &body[..]),
        (b'R', &0i32.to_be_bytes()[..]),
        "AuthenticationOk"
    );
    while r.recv().await.unwrap().0 != b'Z' {}
    let mut answer = Vec::new();
    loop {
        let (tag, body) = r.recv().await.expect("the early query's answer");
        match tag {
            b'D' => answer.push(body),
            b'Z' => break,
            b'E' => panic!("{}", raw::error_code(&body)),
            _ => {}
        }
    }
    assert_eq!(answer.len(), 1);
    assert!(
        answer[0].ends_with(b"\x012"),
        "alice sees her 2 rows: {answer:?}"
    );
    let rows = r
        .query("SELECT body FROM notes ORDER BY body")
        .await
        .unwrap();
    assert_eq!(rows, ["alice-1", "alice-2"]);
    // A bad one: the RFC 7628 error challenge, the client's 0x01, then 28P01.
    let mut r = raw::Raw::open(port).await;
    r.send(&raw::startup_packet(
        196608,
        &[("user", "authenticated"), ("database", "app")],
    ))
    .await;
    r.recv().await.unwrap();
    r.send(&sasl("not-a-token")).await;
    let (tag, body) = r.recv().await.unwrap();
    assert_eq!(
        (tag, &body[..4]),
        (b'R', &11i32.to_be_bytes()[..]),
        "SASLContinue"
    );
    let status: serde_json::Value = serde_json::from_slice(&body[4..]).unwrap();
    assert_eq!(status["status"], "invalid_token");
    // A query behind the client's 0x01 never runs: 28P01, then the end.
    let mut end = raw::message(b'p', b"\x01");
    end.extend(raw::message(b'Q', b"SELECT count(*) FROM notes\0"));
    r.send(&end).await;
    let (tag, body) = r.recv().await.unwrap();
    assert_eq!((tag, raw::error_code(&body)), (b'E', "28P01".to_owned()));
    assert!(r.recv().await.is_none(), "nothing after the refusal");
    let _ = std::fs::remove_dir_all(&dir);
}

/// psql with the token as its password over TLS; SHOW CLIENTS shows identity, role, priority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_with_a_token_over_tls_and_show_clients() {
    let pg = start_postgres();
    prepare(&pg).await;
    let dir = std::env::temp_dir().join(format!("pgsluice-agents-tls-{}", std::process::id()));
    let pki = certs::make(&dir, "", "agents");
    let text = agent_config(&pg, "compat", "", "")
        + &format!(
            "\n[tls]\nmode = \"prefer\"\ncert = \"{}\"\nkey = \"{}\"\n",
            pki.server_cert.display(),
            pki.server_key.display()
        );
    let proxy = Proxy::start(&text).await;
    let alice = token("authenticated", Some(ALICE), json!({}));
    let out = std::process::Command::new(pg.bindir.join("psql"))
        .arg(format!(
            "host=127.0.0.1 port={} user=authenticated dbname=app sslmode=require",
            proxy.port(PoolMode::Session)
        ))
        .args([
            "-XAtq",
            "-c",
            "SELECT current_user, current_setting('request.jwt.claim.sub')",
        ])
        .env("PGPASSWORD", &alice)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("authenticated|{ALICE}")
    );
    // Held open while the console looks.
    let url = format!(
        "host=127.0.0.1 port={} user=batch-agent dbname=app sslmode=require",
        proxy.port(PoolMode::Transaction)
    );
    let mut held = std::process::Command::new(pg.bindir.join("psql"))
        .arg(&url)
        .args(["-XAtq", "-c", "SELECT pg_sleep(3)"])
        .env("PGPASSWORD", BATCH_KEY)
        .spawn()
        .unwrap();
    let mut rows = Vec::new();
    for _ in 0..50 {
        rows = console(&pg, &proxy, ADMIN, "SHOW CLIENTS").unwrap();
        if rows.iter().any(|r| r["user"] == "batch-agent") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let row = rows
        .iter()
        .find(|r| r["user"] == "batch-agent")
        .expect("the key's client is listed");
    assert_eq!(
        (
            row["identity"].as_str(),
            row["role"].as_str(),
            row["priority"].as_str(),
            row["auth_method"].as_str()
        ),
        ("batch-agent", "authenticated", "low", "api-key")
    );
    assert!(held.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two keys valid at once for one identity; RELOAD without one revokes it for new
/// connections; KILL_IDENTITY closes the identity's open ones, nobody else's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_rotate_and_revoke() {
    let pg = start_postgres();
    prepare(&pg).await;
    own_rows_policy(&pg, "auth.uid()").await;
    let dir = std::env::temp_dir().join(format!("pgsluice-agents-keys-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pgsluice.toml");
    let text = agent_config(&pg, "compat", "allow_plaintext_tokens = \"local\"", "");
    std::fs::write(&file, &text).unwrap();
    let proxy = Proxy::start_file(&file).await;
    let url = |key: &str| token_url(&proxy, PoolMode::Transaction, "batch-agent", key);
    let old = connect(&url(BATCH_KEY)).await.unwrap();
    let new = connect(&url(BATCH_KEY_NEXT)).await.unwrap();
    assert_eq!(bodies(&old).await, ["batch-1"]);
    assert_eq!(bodies(&new).await, ["batch-1"]);
    // The old key's hash removed.
    let rotated = text.replace(&format!("\"sha256:{}\", ", sha256_hex(BATCH_KEY)), "");
    assert_ne!(rotated, text);
    std::fs::write(&file, &rotated).unwrap();
    console(&pg, &proxy, ADMIN, "RELOAD").unwrap();
    assert_eq!(
        login_error(&url(BATCH_KEY)).await,
        "28P01",
        "revoked on RELOAD"
    );
    assert_eq!(login_error(&url(BATCH_KEY_NEXT)).await, "ok");
    // Connections made before stay until the operator closes them.
    assert_eq!(bodies(&old).await, ["batch-1"]);
    let alice = token("authenticated", Some(ALICE), json!({}));
    let bystander = agent(&proxy, PoolMode::Transaction, "authenticated", &alice).await;
    console(&pg, &proxy, ADMIN, "KILL_IDENTITY 'batch-agent'").unwrap();
    for c in [&old, &new] {
        let e = c.simple_query("SELECT 1").await.unwrap_err();
        assert!(e.is_closed() || sqlstate(&e) == "57P01", "{e}");
    }
    assert_eq!(bodies(&bystander).await, ["alice-1", "alice-2"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// install-sql names what lets a mapped role escape RLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_sql_warns_about_escapable_roles() {
    let pg = start_postgres();
    prepare(&pg).await;
    pg.psql(
        "GRANT service_role TO authenticated; CREATE ROLE lax LOGIN PASSWORD 'lax-pw' BYPASSRLS;",
    )
    .unwrap();
    let text = agent_config(&pg, "sealed", "", "")
        .replace(
            "name = \"service_role\"\nserver_user = \"service_role\"",
            "name = \"service_role\"\nserver_user = \"lax\"",
        )
        .replace("bypass_rls = true\n", "");
    let warnings = install(&pg, &text).await;
    let all = warnings.join("\n");
    assert!(
        all.contains("\"authenticated\" is a member of \"service_role\""),
        "{all}"
    );
    assert!(all.contains("\"lax\" has BYPASSRLS"), "{all}");
    assert_eq!(warnings.len(), 2, "{all}");
}

/// An identity with `audit_statements` gets a line per statement: normalized text (no
/// values), duration, rows, SQLSTATE. Others get none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_of_an_audited_identity_are_logged() {
    let pg = start_postgres();
    prepare(&pg).await;
    own_rows_policy(&pg, "auth.uid()").await;
    let dir = std::env::temp_dir().join(format!("pgsluice-agents-stmts-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("audit.jsonl");
    let text = agent_config(&pg, "compat", "allow_plaintext_tokens = \"local\"", "").replace(
        "priority = \"low\"\n",
        "priority = \"low\"\naudit_statements = true\n",
    ) + &format!("\n[audit]\ndestination = \"{}\"\n", log.display());
    let proxy = Proxy::start(&text).await;
    for listener in [PoolMode::Session, PoolMode::Transaction] {
        let k = agent(&proxy, listener, "batch-agent", BATCH_KEY).await;
        // Simple queries: each is over (ReadyForQuery) before the next is sent, so each line
        // is its statement's (pipelined statements are timed per ReadyForQuery).
        let n = k
            .simple_query("SELECT body FROM notes WHERE body <> 'secret-value'")
            .await
            .unwrap()
            .iter()
            .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
            .count();
        assert_eq!(n, 1);
        let e = k.simple_query("SELECT 1/0").await.unwrap_err();
        assert_eq!(sqlstate(&e), "22012");
    }
    let alice = token("authenticated", Some(ALICE), json!({}));
    let a = agent(&proxy, PoolMode::Transaction, "authenticated", &alice).await;
    a.simple_query("SELECT 'alice-was-here'").await.unwrap();
    let lines = audit_events(&proxy, &log, "statement").await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        lines.iter().all(|l| l["identity"] == "batch-agent"),
        "{text}"
    );
    assert!(
        !text.contains("secret-value") && !text.contains("alice-was-here"),
        "{text}"
    );
    let select: Vec<_> = lines
        .iter()
        .filter(|l| {
            l["statement"]
                .as_str()
                .is_some_and(|s| s.contains("from notes"))
        })
        .collect();
    assert_eq!(select.len(), 2, "one per listener: {text}");
    for l in &select {
        assert_eq!(
            (l["rows"].as_u64(), l["sqlstate"].as_str()),
            (Some(1), Some("00000"))
        );
        assert!(l["duration_us"].as_u64().is_some());
    }
    let failed = lines.iter().filter(|l| l["sqlstate"] == "22012").count();
    assert_eq!(failed, 2, "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sealed mode on a database without the schema fails closed: no statement runs without
/// its claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_mode_without_the_schema_fails_closed() {
    let pg = start_postgres();
    prepare(&pg).await;
    let proxy = Proxy::start(&agent_config(
        &pg,
        "sealed",
        "allow_plaintext_tokens = \"local\"",
        "",
    ))
    .await;
    let alice = token("authenticated", Some(ALICE), json!({}));
    let c = agent(&proxy, PoolMode::Transaction, "authenticated", &alice).await;
    let e = c
        .simple_query("INSERT INTO notes (owner, body) VALUES (gen_random_uuid(), 'x')")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "08006", "{e}");
    let e = connect(&token_url(
        &proxy,
        PoolMode::Session,
        "authenticated",
        &alice,
    ))
    .await
    .unwrap_err();
    // No schema pgsluice (3F000), or no function seal() (42883).
    assert!(["3F000", "42883"].contains(&sqlstate(&e).as_str()), "{e}");
    let n = superuser(&pg)
        .await
        .query_one("SELECT count(*) FROM notes", &[])
        .await
        .unwrap();
    assert_eq!(n.get::<_, i64>(0), 4, "nothing was written");
    // Password clients of other roles never meet the seal: their pools are not token pools.
    for mode in [PoolMode::Session, PoolMode::Transaction] {
        let p = connect(&proxy.url(mode, AGENT, "app")).await.unwrap();
        for _ in 0..3 {
            p.simple_query("SELECT 1").await.unwrap();
        }
    }
}

/// An agent that may create objects cannot redirect pgsluice.uid() through its own
/// operators and search_path (CVE-2018-1058's pattern).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_claims_ignore_the_agents_search_path() {
    let (pg, proxy) = agents_proxy("sealed", "allow_plaintext_tokens = \"local\"").await;
    superuser(&pg)
        .await
        .batch_execute("GRANT CREATE ON SCHEMA public TO authenticated")
        .await
        .unwrap();
    let alice = token("authenticated", Some(ALICE), json!({}));
    let c = agent(&proxy, PoolMode::Session, "authenticated", &alice).await;
    c.batch_execute(&format!(
        "CREATE FUNCTION public.evil(jsonb, text) RETURNS text LANGUAGE sql AS $$ SELECT '{BOB}' $$;
         CREATE OPERATOR public.->> (leftarg = jsonb, rightarg = text, function = public.evil);
         SET search_path = public, pg_catalog"
    ))
    .await
    .unwrap();
    let forged: Option<String> = c
        .query_one("SELECT '{\"sub\": \"x\"}'::jsonb ->> 'sub'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        forged.as_deref(),
        Some(BOB),
        "the operator is in effect for the agent"
    );
    let uid: Option<String> = c
        .query_one("SELECT pgsluice.uid()::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(uid.as_deref(), Some(ALICE));
    assert_eq!(bodies(&c).await, ["alice-1", "alice-2"]);
}

/// RELOAD from sealed to compat and back while clients stay: no client ever sees another's
/// claims (one server, pool 1, policies reading both kinds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_the_claims_mode_leaves_no_seal_behind() {
    let pg = start_postgres();
    prepare(&pg).await;
    let dir = std::env::temp_dir().join(format!("pgsluice-agents-mode-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("pgsluice.toml");
    let sealed = agent_config(
        &pg,
        "sealed",
        "allow_plaintext_tokens = \"local\"",
        "pool_size = 1",
    );
    install(&pg, &sealed).await;
    std::fs::write(&file, &sealed).unwrap();
    let proxy = Proxy::start_file(&file).await;
    let alice = token("authenticated", Some(ALICE), json!({}));
    let bob = token("authenticated", Some(BOB), json!({}));
    let a = agent(&proxy, PoolMode::Transaction, "authenticated", &alice).await;
    let b = agent(&proxy, PoolMode::Transaction, "authenticated", &bob).await;
    let both = "SELECT pgsluice.uid()::text, auth.uid()::text";
    let seen =
        |r: tokio_postgres::Row| (r.get::<_, Option<String>>(0), r.get::<_, Option<String>>(1));
    assert_eq!(
        seen(a.query_one(both, &[]).await.unwrap()),
        (Some(ALICE.into()), None)
    );
    // To compat: Bob's transaction on the server Alice sealed sees no seal of hers.
    std::fs::write(
        &file,
        sealed.replace("claims_mode = \"sealed\"", "claims_mode = \"compat\""),
    )
    .unwrap();
    console(&pg, &proxy, ADMIN, "RELOAD").unwrap();
    assert_eq!(
        seen(b.query_one(both, &[]).await.unwrap()),
        (None, Some(BOB.into()))
    );
    assert_eq!(
        seen(a.query_one(both, &[]).await.unwrap()),
        (None, Some(ALICE.into()))
    );
    // And back: sealed again, each its own.
    std::fs::write(&file, &sealed).unwrap();
    console(&pg, &proxy, ADMIN, "RELOAD").unwrap();
    assert_eq!(
        seen(b.query_one(both, &[]).await.unwrap()).0,
        Some(BOB.into())
    );
    assert_eq!(
        seen(a.query_one(both, &[]).await.unwrap()).0,
        Some(ALICE.into())
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// install-sql refuses a pgsluice schema someone else made first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_sql_refuses_a_schema_it_does_not_own() {
    let pg = start_postgres();
    prepare(&pg).await;
    superuser(&pg)
        .await
        .batch_execute(&format!(
            "CREATE SCHEMA pgsluice AUTHORIZATION {SCRAM_ROLE}"
        ))
        .await
        .unwrap();
    let e = try_install(&pg, &agent_config(&pg, "sealed", "", ""))
        .await
        .unwrap_err();
    assert!(e.contains("schema pgsluice belongs to another role"), "{e}");
}

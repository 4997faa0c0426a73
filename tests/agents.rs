//! Agent identities against a real PostgreSQL: API keys and JWTs mapped to roles, Row Level
//! Security through compat claims (`auth.uid()` as Supabase defines it) and sealed claims
//! (`pgsluice.uid()`), refused tokens, role escapes, forged seals, key rotation.

mod support;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use pgsluice::config::PoolMode;
use pgsluice::devdb::DevDb;
use serde_json::json;
use sha2::Digest;
use std::time::{SystemTime, UNIX_EPOCH};
use support::*;

const JWT_SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters";
const ALICE: &str = "11111111-1111-1111-1111-111111111111";
const BOB: &str = "22222222-2222-2222-2222-222222222222";
const BATCH: &str = "33333333-3333-3333-3333-333333333333";
const BATCH_KEY: &str = "sk-batch-agent-0123456789";
const BATCH_KEY_NEXT: &str = "sk-batch-agent-rotated-9876543210";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn sha256_hex(s: &str) -> String {
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// An HS256 token for `role` and `sub`, valid for an hour, with `extra` claims merged in.
fn token(role: &str, sub: Option<&str>, extra: serde_json::Value) -> String {
    let mut claims = json!({ "role": role, "exp": now() + 3600, "iss": "supabase" });
    if let Some(sub) = sub {
        claims["sub"] = sub.into();
    }
    if let serde_json::Value::Object(m) = extra {
        for (k, v) in m {
            claims[k] = v;
        }
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

/// Roles as Supabase has them, a table with policies for both claim modes, and rows for
/// three agents.
async fn prepare(pg: &DevDb) {
    pg.psql(
        "CREATE ROLE authenticated LOGIN PASSWORD 'auth-pw' NOINHERIT;
         CREATE ROLE service_role LOGIN PASSWORD 'svc-pw' NOINHERIT BYPASSRLS;",
    )
    .unwrap();
    let owner = superuser(pg).await;
    owner
        .batch_execute(&format!(
            "CREATE SCHEMA auth;
             GRANT USAGE ON SCHEMA auth TO PUBLIC;
             CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $$
               SELECT coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''),
                 (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'))::uuid $$;
             CREATE TABLE notes (id serial PRIMARY KEY, owner uuid NOT NULL, body text NOT NULL);
             ALTER TABLE notes ENABLE ROW LEVEL SECURITY;
             GRANT SELECT, INSERT ON notes TO authenticated, service_role;
             GRANT USAGE ON SEQUENCE notes_id_seq TO authenticated, service_role;
             INSERT INTO notes (owner, body) VALUES
               ('{ALICE}', 'alice-1'), ('{ALICE}', 'alice-2'), ('{BOB}', 'bob-1'), ('{BATCH}', 'batch-1');"
        ))
        .await
        .unwrap();
}

async fn superuser(pg: &DevDb) -> tokio_postgres::Client {
    connect(&format!(
        "host={} port={} user=postgres dbname=appdb",
        pg.socket_dir.display(),
        pg.port
    ))
    .await
    .unwrap()
}

/// The agents.toml sections for `pg`, in `mode` ("compat" or "sealed").
fn agent_config(pg: &DevDb, mode: &str, general: &str, db_extra: &str) -> String {
    let base = config_text(pg, general, db_extra);
    format!(
        r#"{base}
[jwt]
secret = "{JWT_SECRET}"
role_claim = "role"
subject_claim = "sub"
allowed_roles = ["authenticated", "service_role"]
claims_mode = "{mode}"
issuer = "supabase"

[[roles]]
name = "authenticated"
server_user = "authenticated"
server_password = "auth-pw"

[[roles]]
name = "service_role"
server_user = "service_role"
server_password = "svc-pw"
priority = "high"
bypass_rls = true

[[api_keys]]
name = "batch-agent"
hash = ["sha256:{key}", "sha256:{next}"]
role = "authenticated"
subject = "{BATCH}"
databases = ["app"]
priority = "low"
"#,
        key = sha256_hex(BATCH_KEY),
        next = sha256_hex(BATCH_KEY_NEXT),
    )
}

fn token_url(proxy: &Proxy, mode: PoolMode, user: &str, token: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={user} password={token} dbname=app",
        proxy.port(mode)
    )
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
        let url = format!(
            "postgres://postgres@:{}/appdb?host={}&sslmode=disable",
            pg.port,
            pg.socket_dir.display()
        );
        let config = pgsluice::config::Config::parse(
            &agent_config(&pg, mode, "", ""),
            std::path::Path::new("t.toml"),
        )
        .unwrap();
        let warnings = pgsluice::install_sql::run(&config, &url).await.unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        // Idempotent: a second run changes nothing and succeeds.
        pgsluice::install_sql::run(&config, &url).await.unwrap();
    }
    let owner = superuser(&pg).await;
    owner
        .batch_execute(&format!(
            "CREATE POLICY own ON notes FOR ALL TO authenticated USING (owner = {policy}) WITH CHECK (owner = {policy})"
        ))
        .await
        .unwrap();
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
                let c = connect(&token_url(&proxy, listener, user, pw))
                    .await
                    .unwrap();
                assert_eq!(bodies(&c).await, want, "{mode} {listener:?} round {round}");
                let s = connect(&token_url(&proxy, listener, "service_role", &service))
                    .await
                    .unwrap();
                assert_eq!(bodies(&s).await.len(), 4, "service_role bypasses RLS");
            }
        }
        let a = connect(&token_url(&proxy, listener, "authenticated", &alice))
            .await
            .unwrap();
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

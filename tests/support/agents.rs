//! Agent identities for the tests: Supabase-style roles, a notes table with rows for three
//! agents, tokens, and the agents.toml sections for a test PostgreSQL.

use super::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use sha2::Digest;
use std::time::{SystemTime, UNIX_EPOCH};

pub const JWT_SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters";
pub const ALICE: &str = "11111111-1111-1111-1111-111111111111";
pub const BOB: &str = "22222222-2222-2222-2222-222222222222";
pub const BATCH: &str = "33333333-3333-3333-3333-333333333333";
pub const BATCH_KEY: &str = "sk-batch-agent-0123456789";
pub const BATCH_KEY_NEXT: &str = "sk-batch-agent-rotated-9876543210";

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn sha256_hex(s: &str) -> String {
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// An HS256 token for `role` and `sub`, valid for an hour, with `extra` claims merged in.
pub fn token(role: &str, sub: Option<&str>, extra: serde_json::Value) -> String {
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
pub async fn prepare(pg: &DevDb) {
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

/// The policy every test uses: a row is its owner's, `owner` an expression for the subject.
pub async fn own_rows_policy(pg: &DevDb, owner: &str) {
    superuser(pg)
        .await
        .batch_execute(&format!(
            "CREATE POLICY own ON notes FOR ALL TO authenticated USING (owner = {owner}) WITH CHECK (owner = {owner})"
        ))
        .await
        .unwrap();
}

/// `pgsluice install-sql` for the config `text`, as the database owner; its warnings.
pub async fn install(pg: &DevDb, text: &str) -> Vec<String> {
    try_install(pg, text).await.unwrap()
}

pub async fn try_install(pg: &DevDb, text: &str) -> Result<Vec<String>, String> {
    let config = pgsluice::config::Config::parse(text, std::path::Path::new("t.toml")).unwrap();
    let url = format!(
        "postgres://postgres@:{}/appdb?host={}&sslmode=disable",
        pg.port,
        pg.socket_dir.display()
    );
    pgsluice::install_sql::run(&config, &url).await
}

pub async fn superuser(pg: &DevDb) -> tokio_postgres::Client {
    connect(&format!(
        "host={} port={} user=postgres dbname=appdb",
        pg.socket_dir.display(),
        pg.port
    ))
    .await
    .unwrap()
}

/// The agents.toml sections for `pg`, in `mode` ("compat" or "sealed").
pub fn agent_config(pg: &DevDb, mode: &str, general: &str, db_extra: &str) -> String {
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

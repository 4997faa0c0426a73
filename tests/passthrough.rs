//! Users the configuration does not list: auth_query passthrough (their verifier or md5 hash
//! looked up upstream through a SECURITY DEFINER function, as PgBouncer recommends), and
//! SCRAM passthrough (no upstream password anywhere: the ClientKey of the client's own SCRAM
//! exchange logs in upstream).

mod support;

use pgsluice::config::PoolMode;
use support::*;

/// Runs SQL as the superuser in appdb.
fn in_appdb(pg: &pgsluice::devdb::DevDb, sql: &str) -> String {
    let conninfo = format!(
        "host={} port={} user=postgres dbname=appdb",
        pg.socket_dir.display(),
        pg.port
    );
    let (ok, out, err) = psql(pg, &conninfo, &["-c", sql]);
    assert!(ok, "{sql}: {err}");
    out
}

async fn current_user(url: &str) -> Result<String, String> {
    let c = connect(url).await.map_err(|e| sqlstate(&e))?;
    let mut last = String::new();
    // Several transactions: each may run on a new server connection logged in by passthrough.
    for _ in 0..3 {
        last = c
            .query_one("SELECT current_user::text", &[])
            .await
            .map_err(|e| sqlstate(&e))?
            .get(0);
    }
    Ok(last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_query_for_users_only_postgres_knows() {
    let pg = start_postgres();
    pg.psql("CREATE ROLE pgsluice_auth LOGIN PASSWORD 'auth-pw'")
        .unwrap();
    pg.psql("CREATE ROLE only_in_pg LOGIN PASSWORD 'pg-only-pw'")
        .unwrap();
    pg.psql("SET password_encryption = 'md5'; CREATE ROLE only_md5 LOGIN PASSWORD 'md5-only-pw'")
        .unwrap();
    in_appdb(
        &pg,
        "CREATE FUNCTION public.pgsluice_lookup(u text, OUT usename name, OUT passwd text)
           RETURNS record LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog
           AS $$ SELECT rolname, rolpassword FROM pg_authid WHERE rolname = u AND rolcanlogin $$;
         REVOKE ALL ON FUNCTION public.pgsluice_lookup(text) FROM PUBLIC;
         GRANT EXECUTE ON FUNCTION public.pgsluice_lookup(text) TO pgsluice_auth;",
    );
    let general = "auth_user = \"pgsluice_auth\"\nauth_query = \"SELECT usename, passwd FROM public.pgsluice_lookup($1)\"";
    let text = format!(
        "{}\n[[users]]\nname = \"pgsluice_auth\"\npassword = \"auth-pw\"\n",
        config_text(&pg, general, "pool_size = 3")
    );
    let proxy = Proxy::start(&text).await;
    let url = |user: &str, pw: &str, mode| {
        format!(
            "host=127.0.0.1 port={} user={user} password={pw} dbname=app",
            proxy.port(mode)
        )
    };
    // SCRAM verifier from upstream, SCRAM passthrough to log in as the user.
    assert_eq!(
        current_user(&url("only_in_pg", "pg-only-pw", PoolMode::Transaction)).await,
        Ok("only_in_pg".to_owned())
    );
    assert_eq!(
        current_user(&url("only_in_pg", "pg-only-pw", PoolMode::Session)).await,
        Ok("only_in_pg".to_owned())
    );
    // md5 hash from upstream, md5 to log in.
    assert_eq!(
        current_user(&url("only_md5", "md5-only-pw", PoolMode::Transaction)).await,
        Ok("only_md5".to_owned())
    );
    // The password changed upstream: an md5 answer that fails against the cached secret is
    // checked against a fresh lookup in the same login, without waiting for auth_cache_ttl.
    pg.psql("SET password_encryption = 'md5'; ALTER ROLE only_md5 PASSWORD 'changed-pw'")
        .unwrap();
    assert_eq!(
        current_user(&url("only_md5", "changed-pw", PoolMode::Transaction)).await,
        Ok("only_md5".to_owned())
    );
    assert_eq!(
        current_user(&url("only_md5", "md5-only-pw", PoolMode::Transaction)).await,
        Err("28P01".to_owned())
    );
    // A SCRAM proof cannot be checked against a new verifier (its salt changed): the failed
    // login makes the next one look the user up again.
    pg.psql("ALTER ROLE only_in_pg PASSWORD 'changed-too'")
        .unwrap();
    assert_eq!(
        current_user(&url("only_in_pg", "changed-too", PoolMode::Transaction)).await,
        Err("28P01".to_owned())
    );
    assert_eq!(
        current_user(&url("only_in_pg", "changed-too", PoolMode::Transaction)).await,
        Ok("only_in_pg".to_owned())
    );
    // Wrong password and unknown user: the same 28P01.
    assert_eq!(
        current_user(&url("only_in_pg", "guess", PoolMode::Transaction)).await,
        Err("28P01".to_owned())
    );
    assert_eq!(
        current_user(&url("nobody_anywhere", "x", PoolMode::Transaction)).await,
        Err("28P01".to_owned())
    );
    // The lookup ran as pgsluice_auth, which cannot read pg_authid itself.
    let direct = connect(&format!(
        "host=127.0.0.1 port={} user=pgsluice_auth password=auth-pw dbname=appdb",
        pg.port
    ))
    .await
    .unwrap();
    assert_eq!(
        sqlstate(
            &direct
                .simple_query("SELECT * FROM pg_authid")
                .await
                .unwrap_err()
        ),
        "42501"
    );
    // SHOW USERS lists configured users only; SHOW POOLS has the looked-up users' pools.
    let pools = console(&pg, &proxy, ADMIN, "SHOW POOLS").unwrap();
    for role in ["only_in_pg", "only_md5", "pgsluice_auth"] {
        assert!(pools.iter().any(|p| p["user"] == role), "{role}: {pools:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_passthrough_without_any_password_in_config() {
    let pg = start_postgres();
    pg.psql("CREATE ROLE verifier_role LOGIN PASSWORD 'only-the-client-knows'")
        .unwrap();
    let verifier = pg
        .psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'verifier_role'")
        .unwrap();
    assert!(verifier.starts_with("SCRAM-SHA-256$"), "{verifier}");
    // The config holds the verifier only: it can check the client, not log in upstream by itself.
    let text = format!(
        "{}\n[[users]]\nname = \"verifier_role\"\npassword = \"{verifier}\"\n",
        config_text(&pg, "", "pool_size = 2")
    );
    assert!(!text.contains("only-the-client-knows"));
    let proxy = Proxy::start(&text).await;
    let url = |pw: &str| {
        format!(
            "host=127.0.0.1 port={} user=verifier_role password={pw} dbname=app",
            proxy.port(PoolMode::Transaction)
        )
    };
    assert_eq!(
        current_user(&url("only-the-client-knows")).await,
        Ok("verifier_role".to_owned())
    );
    // Many clients at once: new server connections all log in with the recovered key.
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let u = url("only-the-client-knows");
        tasks.push(tokio::spawn(async move { current_user(&u).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), Ok("verifier_role".to_owned()));
    }
    assert_eq!(current_user(&url("wrong")).await, Err("28P01".to_owned()));
}

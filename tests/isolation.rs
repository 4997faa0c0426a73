//! Isolation under attack: a hostile or buggy client on a small transaction-mode pool tries
//! to make another client see its replies, its settings or its statements. Each test runs the
//! attack, then checks every victim's exact results.

mod support;

use pgsluice::config::PoolMode;
use support::raw::{Raw, ext, message};
use support::*;
use tokio::task::JoinHandle;

fn query_msg(sql: &str) -> Vec<u8> {
    let mut b = sql.as_bytes().to_vec();
    b.push(0);
    message(b'Q', &b)
}

fn copy_data(data: &[u8]) -> Vec<u8> {
    message(b'd', data)
}

fn copy_done() -> Vec<u8> {
    message(b'c', &[])
}

fn copy_fail() -> Vec<u8> {
    message(b'f', b"client gave up\0")
}

async fn login(port: u16) -> Raw {
    let mut r = Raw::open(port).await;
    r.login(196608, AGENT.0, AGENT.1, "app").await.unwrap();
    r
}

/// Reads until a message with `tag` arrives; returns the tags seen before it.
async fn until_tag(r: &mut Raw, tag: u8) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let (t, body) = r.recv().await.expect("connection ended or stalled");
        if t == tag {
            return seen;
        }
        seen.push(support::raw::summarize(t, &body));
    }
}

/// A victim queued behind the attacker: sends its statements now, and checks later that it got
/// exactly its own replies.
fn victim(
    port: u16,
    label: &'static str,
) -> (JoinHandle<Vec<String>>, tokio::sync::oneshot::Sender<()>) {
    let (go, ready) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut r = login(port).await;
        let _ = ready.await;
        // Its own setting, then a query that reads it and its own constant.
        let mut b = query_msg(&format!("SET application_name = '{label}'"));
        b.extend(query_msg(&format!(
            "SELECT '{label}:' || current_setting('application_name')"
        )));
        r.send(&b).await;
        r.replies_until_ready(2).await
    });
    (task, go)
}

fn expected(label: &str) -> Vec<String> {
    [
        "C:SET",
        "Z:I",
        "T",
        &format!("D:{label}:{label}"),
        "C:SELECT 1",
        "Z:I",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// After its attack the attacker gets its own results (stray replies of its own attack may
/// come first), or, where the proxy could no longer tell its replies apart, a clear 08P01
/// and the end of its connection.
async fn attacker_recovers(a: &mut Raw) {
    a.send(&query_msg("SELECT 'attacker-after'")).await;
    let mut seen = Vec::new();
    loop {
        let Some((t, body)) = a.recv().await else {
            assert!(
                seen.last().is_some_and(|s| s == "E:08P01"),
                "attacker cut off silently after {seen:?}"
            );
            return;
        };
        let s = support::raw::summarize(t, &body);
        if s == "D:attacker-after" {
            break;
        }
        seen.push(s);
    }
    let rest = a.replies_until_ready(1).await;
    assert_eq!(rest, ["C:SELECT 1", "Z:I"], "after {seen:?}");
}

/// One COPY attack on a pool of one: `start` takes the only server (the attacker waits for
/// CopyInResponse when `wait_copy`), two victims queue behind it, then `rest` goes out. Every
/// victim must get exactly its own replies, and the attacker must keep working.
async fn copy_attack(name: &str, port: u16, start: Vec<u8>, wait_copy: bool, rest: Vec<u8>) {
    eprintln!("attack: {name}");
    let mut a = login(port).await;
    a.send(&start).await;
    if wait_copy {
        let before = until_tag(&mut a, b'G').await;
        assert!(
            before.iter().all(|s| s != "Z:I" && !s.starts_with("E:")),
            "{before:?}"
        );
    }
    let (b, go_b) = victim(port, "victim_b");
    let (c, go_c) = victim(port, "victim_c");
    let _ = go_b.send(());
    let _ = go_c.send(());
    // The victims' queries are queued behind the attacker's server before the attack goes on.
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    a.send(&rest).await;
    // The attacker reads its own replies meanwhile (a 20 MB row comes back in its error).
    let (b, c, ()) = tokio::join!(b, c, attacker_recovers(&mut a));
    assert_eq!(b.unwrap(), expected("victim_b"), "{name}");
    assert_eq!(c.unwrap(), expected("victim_c"), "{name}");
}

async fn copy_setup() -> (pgsluice::devdb::DevDb, Proxy) {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "pool_size = 1")).await;
    let setup = proxy.connect(PoolMode::Transaction).await;
    // tb fails every COPY right after CopyInResponse, before reading anything from the client.
    setup
        .batch_execute(
            "CREATE TABLE t (x int);
             CREATE TABLE tb (x int);
             CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS
               $$BEGIN PERFORM pg_sleep(0.05); RAISE EXCEPTION 'boom'; END$$;
             CREATE TRIGGER tb_boom BEFORE INSERT ON tb FOR EACH STATEMENT EXECUTE FUNCTION boom();",
        )
        .await
        .unwrap();
    (pg, proxy)
}

fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_copy_never_hands_its_replies_to_the_next_client() {
    let (pg, proxy) = copy_setup().await;
    let port = proxy.port(PoolMode::Transaction);
    let big_row = {
        let mut v = vec![b'x'; 20 << 20];
        v.push(b'\n');
        v
    };
    // Read by a server only after its COPY failed: the Syncs around it are answered apart.
    let junk = vec![b'7'; 4 << 20];
    for round in 0..3 {
        // Simple protocol: a bad row, Syncs inside the COPY, more data, CopyDone, Sync.
        copy_attack(
            "simple, bad row, Syncs inside",
            port,
            query_msg("COPY t FROM STDIN"),
            true,
            cat(&[
                copy_data(b"1\nbad\n"),
                ext::sync(),
                ext::sync(),
                copy_data(b"2\n"),
                copy_done(),
                ext::sync(),
            ]),
        )
        .await;
        // Simple protocol, everything at once, and the COPY fails before reading any of it.
        copy_attack(
            "simple, all at once, fails before reading, data between Syncs",
            port,
            cat(&[
                query_msg("COPY tb FROM STDIN"),
                ext::sync(),
                copy_data(&junk),
                ext::sync(),
                copy_done(),
                ext::sync(),
            ]),
            false,
            Vec::new(),
        )
        .await;
        // Extended protocol as tokio-postgres sends it, failing before reading anything.
        copy_attack(
            "extended, fails before reading, data between Syncs",
            port,
            cat(&[
                ext::parse("", "COPY tb FROM STDIN"),
                ext::bind("", "", &[]),
                ext::execute("", 0),
                ext::sync(),
                copy_data(&junk),
                ext::sync(),
            ]),
            true,
            cat(&[copy_data(b"1\n"), copy_done(), ext::sync()]),
        )
        .await;
        // Extended protocol with a bad row and Syncs on both sides of it.
        copy_attack(
            "extended, bad row, Syncs both sides",
            port,
            cat(&[
                ext::parse("", "COPY t FROM STDIN"),
                ext::bind("", "", &[]),
                ext::execute("", 0),
                ext::sync(),
            ]),
            true,
            cat(&[
                copy_data(b"bad\n"),
                ext::sync(),
                copy_data(b"3\n"),
                copy_done(),
                ext::sync(),
                ext::sync(),
            ]),
        )
        .await;
        // CopyFail with Syncs before and after it.
        copy_attack(
            "CopyFail between Syncs",
            port,
            query_msg("COPY t FROM STDIN"),
            true,
            cat(&[copy_data(b"4\n"), ext::sync(), copy_fail(), ext::sync()]),
        )
        .await;
        // A 20 MB row that fails, then Syncs.
        if round == 0 {
            copy_attack(
                "20 MB bad row",
                port,
                query_msg("COPY t FROM STDIN"),
                true,
                cat(&[copy_data(&big_row), ext::sync(), copy_done(), ext::sync()]),
            )
            .await;
        }
        // COPY OUT with Syncs behind it: every Sync is answered, in order.
        copy_attack(
            "COPY OUT with Syncs",
            port,
            cat(&[
                query_msg("COPY (SELECT g FROM generate_series(1, 3) g) TO STDOUT"),
                ext::sync(),
            ]),
            false,
            ext::sync(),
        )
        .await;
    }
    // Nothing the failed COPYs sent was stored, and the pool still serves.
    let c = proxy.connect(PoolMode::Transaction).await;
    let n: i64 = c
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    drop(pg);
}

/// A second client user on the same upstream role as AGENT: the two share one pool.
const AGENT2: (&str, &str) = ("agent2", "agent2-pw");

/// Two users mapped to one upstream role, on a transaction pool of `pool_size`.
async fn shared_pool(pool_size: usize, general: &str) -> (pgsluice::devdb::DevDb, Proxy) {
    let pg = start_postgres();
    let text = format!(
        "{}\n[[users]]\nname = \"{}\"\npassword = \"{}\"\nserver_user = \"{SCRAM_ROLE}\"\nserver_password = \"{ROLE_PASSWORD}\"\n",
        config_text(&pg, general, &format!("pool_size = {pool_size}")),
        AGENT2.0,
        AGENT2.1
    );
    let proxy = Proxy::start(&text).await;
    (pg, proxy)
}

async fn login_as(port: u16, user: (&str, &str)) -> Raw {
    let mut r = Raw::open(port).await;
    r.login(196608, user.0, user.1, "app").await.unwrap();
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_client_can_replace_or_read_another_clients_statements() {
    let (_pg, proxy) = shared_pool(1, "").await;
    let port = proxy.port(PoolMode::Transaction);
    let victim = connect(&proxy.url(PoolMode::Transaction, AGENT, "app"))
        .await
        .unwrap();
    victim
        .batch_execute("CREATE TABLE IF NOT EXISTS loot (v int)")
        .await
        .unwrap();
    let stmt = victim.prepare("SELECT $1::int + 1").await.unwrap();
    let v: i32 = victim.query_one(&stmt, &[&41]).await.unwrap().get(0);
    assert_eq!(v, 42);

    // The attacker shares the only server: it can read the statement's server-side name.
    let mut a = login_as(port, AGENT2).await;
    let names = a
        .query("SELECT name FROM pg_prepared_statements WHERE statement = 'SELECT $1::int + 1'")
        .await
        .unwrap();
    assert_eq!(names.len(), 1, "{names:?}");
    let name = &names[0];
    assert!(name.starts_with("pgsluice_"), "{name}");

    // Replacing it by name in SQL is refused, and the attacker keeps working.
    let replace = format!("DEALLOCATE {name}; PREPARE {name}(int) AS SELECT $1 * 0 + 666");
    assert_eq!(a.query(&replace).await, Err("42501".to_string()));
    for sql in [
        format!("EXECUTE {name}(1)"),
        format!("PREPARE {name}(int) AS SELECT 666"),
    ] {
        assert_eq!(a.query(&sql).await, Err("42501".to_string()), "{sql}");
    }
    assert_eq!(
        a.query("SELECT 'still here'").await.unwrap(),
        ["still here"]
    );
    // The name spelled so that no scan sees it: the server that ran it is closed, not reused.
    let spelled: String = name
        .chars()
        .map(|c| format!("\\{:04x}", c as u32))
        .collect();
    let replace =
        format!("DEALLOCATE U&\"{spelled}\"; PREPARE U&\"{spelled}\"(int) AS SELECT $1 * 0 + 666");
    assert_eq!(a.query(&replace).await.unwrap(), Vec::<String>::new());

    // The victim's statement still means what it prepared.
    for x in [1, 2, 3] {
        let v: i32 = victim.query_one(&stmt, &[&x]).await.unwrap().get(0);
        assert_eq!(v, x + 1);
    }

    // SQL-level PREPARE in transaction mode does not reach the next client on that server.
    assert_eq!(
        a.query("PREPARE secret_stmt AS SELECT 'attacker secret'")
            .await
            .unwrap(),
        Vec::<String>::new()
    );
    let err = victim
        .simple_query("EXECUTE secret_stmt")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "26000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unnamed_statement_of_another_client_cannot_be_bound_or_described() {
    let (_pg, proxy) = shared_pool(1, "").await;
    let port = proxy.port(PoolMode::Transaction);
    let mut a = login_as(port, AGENT).await;
    // The previous client leaves its unnamed statement, with a literal it meant to keep.
    let mut b = ext::parse("", "SELECT 'secret of a' || $1::text");
    b.extend(ext::sync());
    a.send(&b).await;
    assert_eq!(a.replies_until_ready(1).await, ["1", "Z:I"]);

    let mut v = login_as(port, AGENT2).await;
    let mut b = ext::bind("", "", &[Some("!")]);
    b.extend(ext::execute("", 0));
    b.extend(ext::sync());
    v.send(&b).await;
    assert_eq!(v.replies_until_ready(1).await, ["E:26000", "Z:I"]);
    let mut b = ext::describe(b'S', "");
    b.extend(ext::sync());
    v.send(&b).await;
    assert_eq!(v.replies_until_ready(1).await, ["E:26000", "Z:I"]);

    // Its own unnamed statement works as ever, in one pipeline or across Syncs.
    let mut b = ext::parse("", "SELECT 'mine' || $1::text");
    b.extend(ext::bind("", "", &[Some("!")]));
    b.extend(ext::execute("", 0));
    b.extend(ext::sync());
    v.send(&b).await;
    assert_eq!(
        v.replies_until_ready(1).await,
        ["1", "2", "D:mine!", "C:SELECT 1", "Z:I"]
    );
}

/// A protocol FunctionCall of set_config(name, value, false) by its OID (2078), text format.
fn function_call_set_config(name: &str, value: &str) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(&2078i32.to_be_bytes());
    b.extend_from_slice(&0i16.to_be_bytes());
    b.extend_from_slice(&3i16.to_be_bytes());
    for arg in [name, value, "false"] {
        b.extend_from_slice(&(arg.len() as i32).to_be_bytes());
        b.extend_from_slice(arg.as_bytes());
    }
    b.extend_from_slice(&0i16.to_be_bytes());
    message(b'F', &b)
}

/// What the victim's session looks like: the settings an attacker would want to plant.
const VICTIM_VIEW: &str = "SELECT current_setting('search_path') || '|' || current_setting('statement_timeout') || '|' || current_setting('default_transaction_read_only') || '|' || current_user || '|' || current_setting('application_name')";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_changed_out_of_sight_never_reach_another_client() {
    let (pg, proxy) = shared_pool(1, "").await;
    pg.psql(&format!(
        "CREATE ROLE lowpriv; GRANT lowpriv TO {SCRAM_ROLE};"
    ))
    .unwrap();
    let port = proxy.port(PoolMode::Transaction);
    let clean = format!("\"$user\", public|0|off|{SCRAM_ROLE}|");
    let mut v = login_as(port, AGENT).await;
    assert_eq!(
        v.query(VICTIM_VIEW).await.unwrap(),
        std::slice::from_ref(&clean)
    );

    let mut a = login_as(port, AGENT2).await;
    let attacks = [
        "SELECT U&\"s\\0065t_config\"('search_path', 'evil', false)".to_string(),
        "DO $$BEGIN PERFORM set_config('statement_timeout', '1', false); EXECUTE 'SET default_transaction_read_only = on'; END$$".to_string(),
        "CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS $$SELECT 1 FROM set_config('application_name', 'planted', false)$$; SELECT pg_temp.f()".to_string(),
        "SELECT U&\"s\\0065t_config\"('role', 'lowpriv', false)".to_string(),
    ];
    for attack in &attacks {
        a.query(attack).await.unwrap();
        // The victim, on the same (only) server, sees none of it; and neither does a
        // setting it reads back after a SET of its own.
        assert_eq!(
            v.query(VICTIM_VIEW).await.unwrap(),
            std::slice::from_ref(&clean),
            "{attack}"
        );
        v.query("SET work_mem = '5MB'").await.unwrap();
        assert_eq!(
            v.query(VICTIM_VIEW).await.unwrap(),
            std::slice::from_ref(&clean),
            "{attack}"
        );
        v.query("RESET work_mem").await.unwrap();
    }
    // set_config through a protocol FunctionCall.
    a.send(&function_call_set_config("search_path", "evil2"))
        .await;
    let replies = a.replies_until_ready(1).await;
    assert_eq!(
        replies.last().map(String::as_str),
        Some("Z:I"),
        "{replies:?}"
    );
    assert_eq!(
        v.query(VICTIM_VIEW).await.unwrap(),
        std::slice::from_ref(&clean)
    );
    // The attacker's own settings stay its own: it set them where the proxy could not see, so
    // they are gone when its next transaction lands after another client.
    a.query("SELECT set_config('search_path', 'evil3', false)")
        .await
        .unwrap();
    // A session-mode login on the same pool starts clean too.
    let s = connect(&proxy.url(PoolMode::Session, AGENT, "app"))
        .await
        .unwrap();
    let row = s.simple_query(VICTIM_VIEW).await.unwrap();
    let tokio_postgres::SimpleQueryMessage::Row(r) = &row[1] else {
        panic!("{row:?}")
    };
    assert_eq!(r.get(0), Some(clean.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_objects_of_one_client_never_reach_the_next() {
    let (pg, proxy) = shared_pool(1, "").await;
    let port = proxy.port(PoolMode::Transaction);
    let mut a = login_as(port, AGENT2).await;
    let mut v = login_as(port, AGENT).await;
    a.query("CREATE TEMP TABLE secrets AS SELECT 'attacker row'::text AS v")
        .await
        .unwrap();
    a.query("BEGIN; DECLARE held CURSOR WITH HOLD FOR SELECT 'attacker cursor'; COMMIT")
        .await
        .unwrap();
    a.query("SELECT pg_advisory_lock(4242)").await.unwrap();
    // The victim takes the server next: none of it is there.
    assert_eq!(
        v.query("SELECT v FROM pg_temp.secrets").await,
        Err("42P01".to_string())
    );
    assert_eq!(
        v.query("FETCH ALL FROM held").await,
        Err("34000".to_string())
    );
    // The lock was let go: another session can take it.
    assert_eq!(pg.psql("SELECT pg_try_advisory_lock(4242)").unwrap(), "t");
    // The victim's own temp table lives for its transaction, as transaction mode allows.
    assert_eq!(
        v.query("BEGIN; CREATE TEMP TABLE mine AS SELECT 1 AS x; SELECT x FROM mine; COMMIT")
            .await
            .unwrap(),
        ["1"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_application_name_never_sees_another_clients() {
    let (_pg, proxy) = shared_pool(1, "").await;
    for first_mode in [PoolMode::Transaction, PoolMode::Session] {
        let mut a = Raw::open(proxy.port(first_mode)).await;
        a.login_with(
            196608,
            AGENT2.0,
            AGENT2.1,
            "app",
            &[("application_name", "first")],
        )
        .await
        .unwrap();
        assert_eq!(
            a.query("SELECT current_setting('application_name')")
                .await
                .unwrap(),
            ["first"]
        );
        drop(a);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        for mode in [PoolMode::Session, PoolMode::Transaction] {
            let mut b = Raw::open(proxy.port(mode)).await;
            b.login(196608, AGENT.0, AGENT.1, "app").await.unwrap();
            assert_eq!(
                b.param("application_name"),
                Some(""),
                "{first_mode:?} -> {mode:?}"
            );
            assert_eq!(
                b.query("SELECT current_setting('application_name')")
                    .await
                    .unwrap(),
                [""],
                "{first_mode:?} -> {mode:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_replaced_by_dynamic_sql_never_runs_for_its_owner() {
    let (_pg, proxy) = shared_pool(1, "").await;
    let url = proxy.url(PoolMode::Transaction, AGENT, "app");
    let victim = connect(&url).await.unwrap();
    let stmt = victim.prepare("SELECT $1::int + 1").await.unwrap();
    let v: i32 = victim.query_one(&stmt, &[&1]).await.unwrap().get(0);
    assert_eq!(v, 2);
    // Out of the proxy's sight: every statement of the proxy's replaced under its own name.
    let mut a = login_as(proxy.port(PoolMode::Transaction), AGENT2).await;
    a.query(
        "DO $$DECLARE r record; BEGIN
           FOR r IN SELECT name FROM pg_prepared_statements WHERE NOT from_sql LOOP
             EXECUTE format('DEALLOCATE %I', r.name);
             EXECUTE format('PREPARE %I(int) AS SELECT $1 * 0 + 666', r.name);
           END LOOP; END$$",
    )
    .await
    .unwrap();
    // The victim's next execution never runs the replacement: that server ends before
    // reading it (the victim sees the connection lost), and a new connection works.
    match victim.query_one(&stmt, &[&5]).await {
        Ok(row) => assert_eq!(row.get::<_, i32>(0), 6),
        Err(e) => assert!(e.is_closed() || e.code().is_some(), "{e}"),
    }
    let again = connect(&url).await.unwrap();
    let stmt = again.prepare("SELECT $1::int + 1").await.unwrap();
    for x in [5, 6] {
        let v: i32 = again.query_one(&stmt, &[&x]).await.unwrap().get(0);
        assert_eq!(v, x + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syncs_after_a_failed_copy_are_counted() {
    let (_pg, proxy) = copy_setup().await;
    let port = proxy.port(PoolMode::Transaction);
    let mut a = login(port).await;
    a.send(&query_msg("COPY t FROM STDIN")).await;
    until_tag(&mut a, b'G').await;
    // A bad row, then the first five bytes of another CopyData: the COPY fails while the
    // attacker is in the middle of a message, so its server stays attached.
    let mut first = copy_data(b"bad\n");
    let rest = copy_data(b"123456789\n");
    first.extend_from_slice(&rest[..5]);
    a.send(&first).await;
    assert_eq!(a.replies_until_ready(1).await, ["E:22P02", "Z:I"]);
    let (b, go_b) = victim(port, "victim_b");
    let _ = go_b.send(());
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    // The rest of that message, three Syncs the server now answers, and queries behind them.
    let mut m = rest[5..].to_vec();
    m.extend(cat(&[ext::sync(), ext::sync(), ext::sync()]));
    m.extend(query_msg("SELECT pg_sleep(0.3)"));
    m.extend(query_msg("SELECT 'forged'"));
    a.send(&m).await;
    let mine = a.replies_until_ready(5).await;
    assert_eq!(
        mine,
        [
            "Z:I",
            "Z:I",
            "Z:I",
            "T",
            "D:",
            "C:SELECT 1",
            "Z:I",
            "T",
            "D:forged",
            "C:SELECT 1",
            "Z:I"
        ]
    );
    assert_eq!(b.await.unwrap(), expected("victim_b"));
}

/// Cancels whatever backend `pid` runs, every few milliseconds, until `stop` is set: what a
/// client sharing the upstream role can do from any other session.
fn cancel_storm(
    pg: &pgsluice::devdb::DevDb,
    pid: i32,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> JoinHandle<()> {
    let url = format!(
        "host=127.0.0.1 port={} user={SCRAM_ROLE} password={ROLE_PASSWORD} dbname=postgres",
        pg.port
    );
    tokio::spawn(async move {
        let side = connect(&url).await.unwrap();
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            side.execute("SELECT pg_cancel_backend($1)", &[&pid])
                .await
                .unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_during_the_handover_reset_never_leaves_the_next_client_on_an_unreset_server() {
    let (pg, proxy) = shared_pool(1, "").await;
    let port = proxy.port(PoolMode::Transaction);
    let mut a = login_as(port, AGENT2).await;
    let mut caught = 0;
    for _ in 0..4 {
        // The attacker leaves a secret temp table behind a thousand others, so that the reset's
        // DISCARD TEMP takes long enough to be hit, and learns its server's pid.
        let pid: i32 = a.query("SELECT pg_backend_pid()").await.unwrap()[0]
            .parse()
            .unwrap();
        a.query(
            "DO $$ BEGIN FOR i IN 1..1000 LOOP EXECUTE format('CREATE TEMP TABLE pad%s (a int)', i); \
             END LOOP; END $$; CREATE TEMP TABLE secrets AS SELECT 'attacker row'::text AS v",
        )
        .await
        .unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let storm = cancel_storm(&pg, pid, stop.clone());
        let mut v = login_as(port, AGENT).await;
        let seen = v.query("SELECT v FROM pg_temp.secrets").await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        storm.await.unwrap();
        match seen {
            // The reset ran before the victim's query: no such table.
            Err(code) if code == "42P01" => {}
            // The cancel reached the victim's own statement.
            Err(code) if code == "57014" => {}
            // The reset was interrupted: the victim's query did not run and its connection
            // ended with a connection-failure error.
            Err(code) if code == "08006" => caught += 1,
            other => panic!("the victim ran on the attacker's session: {other:?}"),
        }
        drop(v);
        a = login_as(port, AGENT2).await;
    }
    assert!(caught > 0, "no cancel hit a reset: the test did not attack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_that_refuse_a_pipeline_still_run_first_after_a_handover() {
    let (_pg, proxy) = shared_pool(1, "").await;
    let port = proxy.port(PoolMode::Transaction);
    let mut a = login_as(port, AGENT2).await;
    let mut v = login_as(port, AGENT).await;
    a.query("CREATE TABLE IF NOT EXISTS handover_t (a int)")
        .await
        .unwrap();
    // Each victim statement comes right after the attacker's, so each one follows a reset.
    for first in [
        "VACUUM handover_t",
        "CREATE INDEX CONCURRENTLY handover_i ON handover_t (a)",
        "BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT current_setting('transaction_isolation'); COMMIT",
    ] {
        a.query("SELECT 1").await.unwrap();
        let rows = v.query(first).await;
        assert!(rows.is_ok(), "{first}: {rows:?}");
    }
    a.query("SELECT 1").await.unwrap();
    assert_eq!(
        v.query("BEGIN ISOLATION LEVEL REPEATABLE READ; SELECT current_setting('transaction_isolation'); COMMIT")
            .await
            .unwrap(),
        ["repeatable read"]
    );
}

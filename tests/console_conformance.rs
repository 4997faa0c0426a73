//! The admin console answers PgBouncer's SHOW commands as PgBouncer 1.25 does, so that its
//! exporters and dashboards keep working: for every column PgBouncer has, the same name, at
//! the same position, with the same type; pgsluice's own columns come after them.
//!
//! The reference is a real PgBouncer 1.25.2 when one is built (`PGBOUNCER_1_25`, or where
//! `./dev test` builds it from ../shared/peers), checked against the recording in
//! tests/data/pgbouncer-1.25.2-console.txt, which is the reference otherwise.
//! `PGSLUICE_RECORD_CONSOLE=1` rewrites the recording from the live PgBouncer.

mod support;

use std::collections::BTreeMap;
use support::pgbouncer::{PgBouncer, release_1_25};
use support::raw::Raw;
use support::*;

const COMMANDS: &[&str] = &[
    "POOLS",
    "STATS",
    "STATS_TOTALS",
    "STATS_AVERAGES",
    "DATABASES",
    "CLIENTS",
    "SERVERS",
    "LISTS",
    "USERS",
    "CONFIG",
    "MEM",
    "VERSION",
];

const RECORDING: &str = "tests/data/pgbouncer-1.25.2-console.txt";

type Columns = BTreeMap<String, Vec<(String, u32)>>;

/// Every command's columns, through a console on `port`.
async fn capture(port: u16, db: &str) -> Columns {
    let mut c = Raw::open(port).await;
    c.login(196608, ADMIN.0, ADMIN.1, db).await.unwrap();
    let mut out = Columns::new();
    for cmd in COMMANDS {
        let cols = c.columns(&format!("SHOW {cmd}")).await;
        out.insert(
            (*cmd).to_owned(),
            cols.unwrap_or_else(|e| panic!("SHOW {cmd}: {e}")),
        );
    }
    out
}

fn render(c: &Columns) -> String {
    let mut s = String::from(
        "# The columns of PgBouncer 1.25.2's SHOW commands, as name:type-OID (tests/console_conformance.rs).\n",
    );
    for (cmd, cols) in c {
        let cols: Vec<String> = cols.iter().map(|(n, t)| format!("{n}:{t}")).collect();
        s.push_str(&format!("{cmd}\t{}\n", cols.join(" ")));
    }
    s
}

fn parse(text: &str) -> Columns {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (cmd, cols) = l.split_once('\t').unwrap();
            let cols = cols
                .split(' ')
                .map(|c| {
                    let (n, t) = c.rsplit_once(':').unwrap();
                    (n.to_owned(), t.parse().unwrap())
                })
                .collect();
            (cmd.to_owned(), cols)
        })
        .collect()
}

/// PgBouncer 1.25.2's columns: live when it is built (and then the recording must agree),
/// else the recording.
async fn reference(pg: &pgsluice::devdb::DevDb) -> Columns {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(RECORDING);
    let recorded = parse(&std::fs::read_to_string(&path).unwrap_or_default());
    let Some(binary) = release_1_25() else {
        assert_eq!(recorded.len(), COMMANDS.len(), "{RECORDING} is incomplete");
        return recorded;
    };
    let bouncer = PgBouncer::start_binary(
        &binary,
        &format!("app = host=127.0.0.1 port={} dbname=appdb", pg.port),
        &format!("\"{}\" \"{}\"\n", ADMIN.0, ADMIN.1),
        &format!("admin_users = {}", ADMIN.0),
    );
    let live = capture(bouncer.port, "pgbouncer").await;
    if std::env::var_os("PGSLUICE_RECORD_CONSOLE").is_some() {
        std::fs::write(&path, render(&live)).unwrap();
    } else {
        assert_eq!(
            render(&recorded),
            render(&live),
            "{RECORDING} differs from the live PgBouncer 1.25.2: PGSLUICE_RECORD_CONSOLE=1 rewrites it"
        );
    }
    live
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_commands_have_pgbouncers_columns_names_order_and_types() {
    let pg = start_postgres();
    let bouncer = reference(&pg).await;
    let proxy = Proxy::start(&config_text(&pg, "", "")).await;
    let ours = capture(proxy.port(pgsluice::config::PoolMode::Session), "pgbouncer").await;
    let mut wrong = Vec::new();
    for cmd in COMMANDS {
        let (theirs, mine) = (&bouncer[*cmd], &ours[*cmd]);
        for (i, col) in theirs.iter().enumerate() {
            match mine.get(i) {
                Some(m) if m == col => {}
                other => wrong.push(format!(
                    "SHOW {cmd} column {i}: PgBouncer {col:?}, pgsluice {other:?}"
                )),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

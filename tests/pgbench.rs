//! pgbench through the transaction listener: select-only and tpcb-like, in simple, extended
//! and prepared mode, with zero failures.

mod support;

use pgsluice::config::PoolMode;
use support::*;

fn pgbench(pg: &pgsluice::devdb::DevDb, port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new(pg.bindir.join("pgbench"))
        .env("PGPASSWORD", AGENT.1)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", AGENT.0])
        .args(args)
        .arg("app")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pgbench {args:?} failed:\n{text}");
    text
}

fn field(report: &str, prefix: &str) -> f64 {
    report
        .lines()
        .find_map(|l| l.trim().strip_prefix(prefix))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.split('/').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no {prefix:?} in:\n{report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_select_only_and_tpcb_through_transaction_mode() {
    let pg = start_postgres();
    let proxy = Proxy::start(&config_text(&pg, "", "pool_size = 5")).await;
    let session = proxy.port(PoolMode::Session);
    let txn = proxy.port(PoolMode::Transaction);
    let report = tokio::task::block_in_place(|| pgbench(&pg, session, &["-i", "-s", "2", "-q"]));
    assert!(report.contains("done"), "{report}");
    for (workload, clients) in [
        (&["-S"][..], "20"),
        (&[][..], "10"),
        (&["-S", "-M", "extended"][..], "20"),
        (&["-S", "-M", "prepared"][..], "20"),
        // No more clients than servers here: pgbench 15 prepares with a blocking PQprepare,
        // which stalls its whole thread (and the transactions it holds open) while one of its
        // clients waits for a server. That is pgbench's limit, the same through any pooler.
        (&["-M", "prepared"][..], "5"),
    ] {
        let mut args = vec!["-c", clients, "-j", "2", "-t", "300", "-n"];
        args.extend_from_slice(workload);
        let report = tokio::task::block_in_place(|| pgbench(&pg, txn, &args));
        let clients: f64 = clients.parse().unwrap();
        assert_eq!(
            field(&report, "number of transactions actually processed:"),
            300.0 * clients,
            "{report}"
        );
        assert_eq!(
            field(&report, "number of failed transactions:"),
            0.0,
            "{report}"
        );
        assert!(field(&report, "tps =") > 0.0);
    }
    // tpcb-like invariant: branch, teller and account balances agree.
    let row = proxy
        .connect(PoolMode::Transaction)
        .await
        .query_one(
            "SELECT (SELECT sum(bbalance) FROM pgbench_branches)::bigint, (SELECT sum(tbalance) FROM pgbench_tellers)::bigint,
                    (SELECT sum(abalance) FROM pgbench_accounts)::bigint, (SELECT count(*) FROM pgbench_history)",
            &[],
        )
        .await
        .unwrap();
    let (b, t, a, h): (i64, i64, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
    assert_eq!(b, t);
    assert_eq!(t, a);
    assert_eq!(
        h,
        3000 + 1500,
        "every tpcb transaction wrote one history row"
    );
}

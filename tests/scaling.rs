//! Two instances in front of one PostgreSQL, as behind a Kubernetes Service: a CancelRequest
//! that lands on the instance the client is not connected to still cancels its query (the
//! key names its instance; the peer forwards it, signed); a forged forwarded cancel does
//! nothing; `instances` divides the pool among them.

mod support;

use pgsluice::config::PoolMode;
use pgsluice::devdb::free_port;
use std::time::{Duration, Instant};
use support::raw::Raw;
use support::*;

const PROTOCOL_3_0: i32 = 3 << 16;

/// An instance with `peer_id` `me`, both listeners on fixed ports, knowing both peers.
async fn instance(pg: &pgsluice::devdb::DevDb, me: u8, ports: [(u16, u16); 2]) -> Proxy {
    let (session, txn) = ports[usize::from(me - 1)];
    let peers: String = ports
        .iter()
        .enumerate()
        .map(|(i, (_, t))| {
            format!(
                "\n[[peers]]\nid = {}\nhost = \"127.0.0.1\"\nport = {t}\n",
                i + 1
            )
        })
        .collect();
    let general =
        format!("peer_id = {me}\npeer_secret = \"shared-between-the-peers\"\ninstances = 2");
    let text = config_text(pg, &general, "pool_size = 20")
        .replacen("127.0.0.1:0", &format!("127.0.0.1:{session}"), 1)
        .replacen("127.0.0.1:0", &format!("127.0.0.1:{txn}"), 1)
        + &peers;
    Proxy::start(&text).await
}

/// A CancelRequest with `secret` (4 bytes from a client, more from a peer) sent to `port`.
async fn cancel_at(port: u16, pid: i32, secret: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut out = ((12 + secret.len()) as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&80877102i32.to_be_bytes());
    out.extend_from_slice(&pid.to_be_bytes());
    out.extend_from_slice(secret);
    s.write_all(&out).await.unwrap();
    let mut sink = [0u8; 8];
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut sink)).await;
}

async fn sleeper(port: u16) -> Raw {
    let mut c = Raw::open(port).await;
    c.login(PROTOCOL_3_0, AGENT.0, AGENT.1, "app")
        .await
        .unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_sent_to_the_other_instance_cancels_the_query() {
    let pg = start_postgres();
    let ports = [
        (free_port().unwrap(), free_port().unwrap()),
        (free_port().unwrap(), free_port().unwrap()),
    ];
    let a = instance(&pg, 1, ports).await;
    let b = instance(&pg, 2, ports).await;
    let (a_txn, b_txn) = (ports[0].1, ports[1].1);

    // Keys carry their instance.
    let mut on_a = sleeper(a_txn).await;
    assert_eq!(on_a.secret.to_be_bytes()[0], 1);
    let on_b = sleeper(b_txn).await;
    assert_eq!(on_b.secret.to_be_bytes()[0], 2);

    // A query on A, canceled through B.
    let (pid, secret) = (on_a.pid, on_a.secret);
    let started = Instant::now();
    let running = tokio::spawn(async move { on_a.query("SELECT pg_sleep(30)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    cancel_at(b_txn, pid, &secret.to_be_bytes()).await;
    let r = tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the cancel sent to the other instance must end the query")
        .unwrap();
    assert_eq!(r, Err("57014".to_owned()));
    assert!(started.elapsed() < Duration::from_secs(10));

    // A forwarded cancel with a forged signature does nothing.
    let mut victim = sleeper(a_txn).await;
    let (pid, secret) = (victim.pid, victim.secret);
    let running = tokio::spawn(async move { victim.query("SELECT pg_sleep(1.5)").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut forged = secret.to_be_bytes().to_vec();
    forged.extend_from_slice(&[0u8; 32]);
    cancel_at(a_txn, pid, &forged).await;
    assert!(
        running.await.unwrap().is_ok(),
        "a forged peer cancel canceled"
    );

    // instances = 2: each takes half of pool_size 20.
    let pools = console(&pg, &a, ADMIN, "SHOW POOLS").unwrap();
    let app = pools.iter().find(|r| r["database"] == "app").unwrap();
    assert_eq!(app["pool_size"], "10");
    drop((b, on_b));
    let _ = a.port(PoolMode::Transaction);
}

//! COPY, servers and clients that go away or misbehave, and protocol violations.

use super::*;
use std::io::Write;

#[tokio::test]
async fn a_server_that_dies_mid_message_is_reported() {
    let mut r = Rig::new(true).await;
    r.client_sends(&query("SELECT 1")).await;
    let full = row("12345");
    r.server_peer.write_all(&full[..7]).unwrap();
    r.run().await;
    r.server_peer.shutdown(std::net::Shutdown::Both).unwrap();
    r.run().await;
    assert_eq!(r.last_event().await, Some(&Event::ServerGone(Lost::Closed)));
    assert!(r.relay.server_mid_message());
}

#[tokio::test]
async fn a_client_that_leaves_is_reported() {
    let mut r = Rig::new(true).await;
    r.client_peer.shutdown(std::net::Shutdown::Both).unwrap();
    r.run().await;
    assert_eq!(r.last_event().await, Some(&Event::ClientGone(Lost::Closed)));
}

#[tokio::test]
async fn terminate_is_reported_and_not_forwarded() {
    let mut r = Rig::new(true).await;
    r.client_sends(&m(b'X', &[])).await;
    assert_eq!(r.last_event().await, Some(&Event::ClientTerminated));
    r.expect_server(&[]).await;
}

#[tokio::test]
async fn an_unknown_message_type_is_a_protocol_violation() {
    let mut r = Rig::new(true).await;
    r.client_sends(&m(b'!', b"x")).await;
    assert!(matches!(r.last_event().await, Some(Event::Protocol(_))));
    r.expect_server(&[]).await;
}

#[tokio::test]
async fn an_oversized_small_message_is_refused_at_its_header() {
    let mut r = Rig::new(true).await;
    // A Sync claiming 20,000 bytes: PostgreSQL's limit for it is 10,000.
    let mut header = vec![b'S'];
    header.extend_from_slice(&20_000u32.to_be_bytes());
    r.client_sends(&header).await;
    assert!(matches!(r.last_event().await, Some(Event::Protocol(_))));
}

#[tokio::test]
async fn copy_in_ends_with_the_servers_reply() {
    let mut r = Rig::new(true).await;
    r.client_sends(&query("COPY t FROM STDIN")).await;
    let copy_in = m(b'G', &[0, 0, 0]);
    r.server_sends(&copy_in).await;
    r.expect_client(&copy_in).await;
    let data = cat(&[m(b'd', b"1\n"), m(b'c', &[])]);
    r.client_sends(&data).await;
    r.expect_server(&cat(&[query("COPY t FROM STDIN"), data.clone()]))
        .await;
    r.server_sends(&cat(&[complete("COPY 1"), ready(b'I')]))
        .await;
    r.expect_release(true).await;
}

#[tokio::test]
async fn copy_data_with_no_copy_running_is_dropped() {
    let mut r = Rig::new(true).await;
    r.client_sends(&cat(&[m(b'd', b"stray"), query("SELECT 1")]))
        .await;
    // PostgreSQL ignores them outside COPY: no server is taken for them.
    r.expect_server(&query("SELECT 1")).await;
}

#[tokio::test]
async fn a_failed_copy_with_syncs_inside_it_is_never_reused() {
    let mut r = Rig::new(true).await;
    r.client_sends(&cat(&[
        parse("", "COPY t FROM STDIN"),
        bind("", ""),
        execute(),
        sync(),
    ]))
    .await;
    r.server_sends(&cat(&[
        parse_complete(),
        bind_complete(),
        m(b'G', &[0, 0, 0]),
    ]))
    .await;
    // A Sync inside the COPY, then the COPY fails.
    r.client_sends(&cat(&[m(b'd', b"bad\n"), sync(), m(b'c', &[]), sync()]))
        .await;
    r.server_sends(&cat(&[error("22P02"), ready(b'I')])).await;
    assert!(!r.relay.server_reusable());
}

#[tokio::test]
async fn copy_out_passes_through() {
    let mut r = Rig::new(true).await;
    r.client_sends(&query("COPY t TO STDOUT")).await;
    let reply = cat(&[
        m(b'H', &[0, 0, 0]),
        m(b'd', b"1\n"),
        m(b'c', &[]),
        complete("COPY 1"),
        ready(b'I'),
    ]);
    r.server_sends(&reply).await;
    r.expect_client(&reply).await;
    r.expect_release(true).await;
}

#[tokio::test]
async fn a_fatal_error_from_the_server_is_delivered_before_it_goes() {
    let mut r = Rig::new(true).await;
    r.client_sends(&query("SELECT pg_sleep(10)")).await;
    let fatal = m(b'E', b"SFATAL\0C57P01\0Mterminating\0\0");
    r.server_peer.write_all(&fatal).unwrap();
    r.server_peer.shutdown(std::net::Shutdown::Both).unwrap();
    assert_eq!(r.event().await, Some(&Event::ServerGone(Lost::Closed)));
    assert!(r.relay.server_sent_fatal());
    r.expect_client(&fatal).await;
}

#[tokio::test]
async fn bytes_after_the_last_ready_for_query_make_the_release_unclean() {
    let mut r = Rig::new(true).await;
    r.client_sends(&query("SELECT 1")).await;
    let fatal = m(b'E', b"SFATAL\0C57P01\0Mterminating\0\0");
    r.server_sends(&cat(&[complete("SELECT 0"), ready(b'I'), fatal]))
        .await;
    r.expect_release(false).await;
    r.expect_client(&cat(&[complete("SELECT 0"), ready(b'I')]))
        .await;
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_reading_is_cut_off_after_the_stall_timeout() {
    let mut r = Rig::new(true).await;
    r.relay.stall_timeout = Some(Duration::from_secs(2));
    r.client_sends(&query("SELECT repeat('x', 1000000)")).await;
    // Far more than the relay buffers, and more than the socket pair holds.
    let big = row(&"x".repeat(200_000));
    let mut sent = 0;
    while sent < 8 {
        match r.server_peer.write(&big) {
            Ok(_) => sent += 1,
            Err(_) => break,
        }
        r.run().await;
    }
    let start = tokio::time::Instant::now();
    assert_eq!(r.event().await, Some(&Event::ClientStalled));
    assert!(start.elapsed() <= Duration::from_secs(3));
}

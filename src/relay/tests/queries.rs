//! Simple and extended queries, pipelines, transactions and what the relay reads on the way.

use super::*;

#[tokio::test]
async fn a_simple_query_passes_both_ways_and_frees_the_server() {
    let mut r = Rig::new(true).await;
    r.client_sends(&query("SELECT 1")).await;
    r.expect_server(&query("SELECT 1")).await;
    let reply = cat(&[row("1"), complete("SELECT 1"), ready(b'I')]);
    r.server_sends(&reply).await;
    r.expect_client(&reply).await;
    assert_eq!(
        r.last_event().await,
        Some(&Event::Release {
            clean: true,
            resync: false
        })
    );
    assert!(r.relay.server_reusable());
}

#[tokio::test]
async fn a_transaction_block_keeps_the_server_until_it_ends() {
    let mut r = Rig::new(true).await;
    r.client_sends(&query("BEGIN")).await;
    r.server_sends(&cat(&[complete("BEGIN"), ready(b'T')]))
        .await;
    r.expect_client(&cat(&[complete("BEGIN"), ready(b'T')]))
        .await;
    assert!(r.events.is_empty(), "{:?}", r.events);
    assert!(!r.relay.server_reusable());
    r.client_sends(&query("COMMIT")).await;
    r.server_sends(&cat(&[complete("COMMIT"), ready(b'I')]))
        .await;
    r.expect_release(true).await;
    assert!(r.relay.server_reusable());
}

/// Inside a transaction the relay keeps its buffers for the next statement (only as many
/// clients as there are servers can be there); between transactions, and while a
/// session-mode client is idle, it holds none.
#[tokio::test]
async fn buffers_stay_inside_a_transaction_and_go_back_between_them() {
    let held = |r: &Rig| (r.relay.c.buf.capacity() > 0, r.relay.s.buf.capacity() > 0);
    let mut r = Rig::new(true).await;
    r.client_sends(&query("BEGIN")).await;
    r.expect_server(&query("BEGIN")).await;
    r.server_sends(&cat(&[complete("BEGIN"), ready(b'T')]))
        .await;
    r.expect_client(&cat(&[complete("BEGIN"), ready(b'T')]))
        .await;
    r.run().await;
    assert_eq!(held(&r), (true, true), "inside the transaction");
    // A buffer a large statement grew is freed even there.
    let large = query(&format!("SELECT '{}'", "x".repeat(200_000)));
    r.client_sends(&large).await;
    r.expect_server(&large).await;
    r.run().await;
    assert!(
        !r.relay.c.buf.try_reclaim(200_000),
        "the large statement's buffer is kept"
    );
    r.server_sends(&cat(&[complete("SELECT 1"), ready(b'T')]))
        .await;
    r.expect_client(&cat(&[complete("SELECT 1"), ready(b'T')]))
        .await;
    r.client_sends(&query("COMMIT")).await;
    r.server_sends(&cat(&[complete("COMMIT"), ready(b'I')]))
        .await;
    r.expect_release(true).await;
    r.expect_client(&cat(&[complete("COMMIT"), ready(b'I')]))
        .await;
    r.run().await;
    assert_eq!(held(&r), (false, false), "between transactions");

    let mut r = Rig::new(false).await;
    let reply = cat(&[row("1"), complete("SELECT 1"), ready(b'I')]);
    r.client_sends(&query("SELECT 1")).await;
    r.server_sends(&reply).await;
    r.expect_client(&reply).await;
    r.run().await;
    assert_eq!(held(&r), (false, false), "an idle session-mode client");
}

#[tokio::test]
async fn a_failed_transaction_block_keeps_the_server() {
    let mut r = Rig::new(true).await;
    r.client_sends(&query("BEGIN; SELECT 1/0")).await;
    let reply = cat(&[complete("BEGIN"), error("22012"), ready(b'E')]);
    r.server_sends(&reply).await;
    r.expect_client(&reply).await;
    assert!(r.events.is_empty());
    assert!(!r.relay.server_reusable());
}

#[tokio::test]
async fn session_mode_never_releases_the_server() {
    let mut r = Rig::new(false).await;
    r.client_sends(&query("SELECT 1")).await;
    r.server_sends(&cat(&[row("1"), complete("SELECT 1"), ready(b'I')]))
        .await;
    r.expect_client(&cat(&[row("1"), complete("SELECT 1"), ready(b'I')]))
        .await;
    assert!(r.events.is_empty(), "{:?}", r.events);
}

#[tokio::test]
async fn pipelined_queries_release_only_after_the_last_reply() {
    let mut r = Rig::new(true).await;
    let two = cat(&[query("SELECT 1"), query("SELECT 2")]);
    r.client_sends(&two).await;
    r.expect_server(&two).await;
    r.server_sends(&cat(&[row("1"), complete("SELECT 1"), ready(b'I')]))
        .await;
    assert!(r.events.is_empty(), "one reply is still owed");
    r.server_sends(&cat(&[row("2"), complete("SELECT 1"), ready(b'I')]))
        .await;
    r.expect_release(true).await;
    r.expect_client(&cat(&[
        row("1"),
        complete("SELECT 1"),
        ready(b'I'),
        row("2"),
        complete("SELECT 1"),
        ready(b'I'),
    ]))
    .await;
}

#[tokio::test]
async fn an_unnamed_extended_query_passes_unchanged() {
    let mut r = Rig::new(true).await;
    let msgs = cat(&[parse("", "SELECT 1"), bind("", ""), execute(), sync()]);
    r.client_sends(&msgs).await;
    r.expect_server(&msgs).await;
    let reply = cat(&[
        parse_complete(),
        bind_complete(),
        row("1"),
        complete("SELECT 1"),
        ready(b'I'),
    ]);
    r.server_sends(&reply).await;
    r.expect_client(&reply).await;
    r.expect_release(true).await;
}

#[tokio::test]
async fn extended_messages_before_a_sync_hold_the_server() {
    let mut r = Rig::new(true).await;
    r.client_sends(&cat(&[parse("", "SELECT 1"), bind("", ""), execute()]))
        .await;
    r.server_sends(&cat(&[
        parse_complete(),
        bind_complete(),
        row("1"),
        complete("SELECT 1"),
    ]))
    .await;
    assert!(
        r.events.is_empty(),
        "an implicit transaction is open until Sync"
    );
    assert!(!r.relay.server_reusable());
    r.client_sends(&sync()).await;
    r.server_sends(&ready(b'I')).await;
    r.expect_release(true).await;
}

#[tokio::test]
async fn an_error_mid_pipeline_skips_to_the_sync() {
    let mut r = Rig::new(true).await;
    let msgs = cat(&[
        parse("", "SELECT 1/0"),
        bind("", ""),
        execute(),
        parse("", "SELECT 2"),
        bind("", ""),
        execute(),
        sync(),
    ]);
    r.client_sends(&msgs).await;
    r.expect_server(&msgs).await;
    let reply = cat(&[
        parse_complete(),
        bind_complete(),
        error("22012"),
        ready(b'I'),
    ]);
    r.server_sends(&reply).await;
    r.expect_client(&reply).await;
    r.expect_release(true).await;
    assert!(r.relay.server_reusable());
}

#[tokio::test]
async fn a_set_marks_the_session_for_a_settings_read_back() {
    let mut r = Rig::new(true).await;
    r.client_sends(&query("SET search_path = x")).await;
    r.server_sends(&cat(&[complete("SET"), ready(b'I')])).await;
    assert_eq!(
        r.last_event().await,
        Some(&Event::Release {
            clean: true,
            resync: true
        })
    );
}

#[tokio::test]
async fn parameter_status_updates_what_the_client_was_told() {
    let mut r = Rig::new(true).await;
    r.client_sends(&query("SET application_name = 'a'")).await;
    let mut status = z(b"application_name");
    status.extend(z(b"a"));
    let reply = cat(&[complete("SET"), m(b'S', &status), ready(b'I')]);
    r.server_sends(&reply).await;
    r.expect_client(&reply).await;
    assert_eq!(r.state.params.reported.get("application_name"), Some("a"));
}

#[tokio::test]
async fn notices_and_empty_queries_pass_through() {
    let mut r = Rig::new(true).await;
    r.client_sends(&query("")).await;
    let notice = m(b'N', b"SWARNING\0C01000\0Mnote\0\0");
    let reply = cat(&[notice, m(b'I', &[]), ready(b'I')]);
    r.server_sends(&reply).await;
    r.expect_client(&reply).await;
    r.expect_release(true).await;
}

#[tokio::test]
async fn a_function_call_is_answered_like_a_query() {
    let mut r = Rig::new(true).await;
    let call = m(b'F', &[0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0]);
    r.client_sends(&call).await;
    r.expect_server(&call).await;
    let reply = cat(&[m(b'V', &[255, 255, 255, 255]), ready(b'I')]);
    r.server_sends(&reply).await;
    r.expect_client(&reply).await;
    r.expect_release(true).await;
}

#[tokio::test]
async fn a_set_inside_a_transaction_is_read_back_after_it() {
    let mut r = Rig::new(true).await;
    r.client_sends(&query(
        "BEGIN; SET LOCAL work_mem = '1MB'; SET statement_timeout = 5",
    ))
    .await;
    r.server_sends(&cat(&[
        complete("BEGIN"),
        complete("SET"),
        complete("SET"),
        ready(b'T'),
    ]))
    .await;
    r.client_sends(&query("COMMIT")).await;
    r.server_sends(&cat(&[complete("COMMIT"), ready(b'I')]))
        .await;
    assert_eq!(
        r.last_event().await,
        Some(&Event::Release {
            clean: true,
            resync: true
        })
    );
}

#[tokio::test]
async fn listen_between_transactions_goes_to_the_notification_hub() {
    let mut r = Rig::new(true).await;
    r.client_sends(&query("LISTEN jobs")).await;
    assert!(matches!(r.last_event().await, Some(Event::Listen(_))));
    r.expect_server(&[]).await;
}

#[tokio::test]
async fn describe_of_a_portal_passes_unchanged() {
    let mut r = Rig::new(true).await;
    let msgs = cat(&[
        parse("", "SELECT 1"),
        bind("", ""),
        describe(b'P', ""),
        execute(),
        sync(),
    ]);
    r.client_sends(&msgs).await;
    r.expect_server(&msgs).await;
}

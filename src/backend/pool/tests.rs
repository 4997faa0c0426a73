//! The pool's rules, without PostgreSQL: a fake connector hands out one end of a socket pair
//! per "server" and keeps the other, so a test can also make a server die. Waits and timeouts
//! run on tokio's paused clock where the pool uses tokio's timers; ages (lifetime, idle time)
//! use the real clock and short durations, checked only in the direction a slow machine
//! cannot break (after at least that long, it must have expired).

use super::*;
use crate::backend::fake::{Fake, pool_on, settings, upstream};
use std::pin::pin;

fn pool(s: PoolSettings) -> (Arc<Pool>, Arc<Fake>) {
    pool_on(s, DbLimit::new(0))
}

async fn checkout(pool: &Arc<Pool>) -> Result<ServerConn, CheckoutError> {
    let never = Notify::new();
    let notified = pin!(never.notified());
    pool.checkout(notified, &Demand::default()).await
}

/// A checkout on its own task, and a moment for it to join the queue.
async fn queued(pool: &Arc<Pool>) -> tokio::task::JoinHandle<Result<ServerConn, CheckoutError>> {
    let p = pool.clone();
    let task = tokio::spawn(async move { checkout(&p).await });
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    task
}

fn counts(pool: &Pool) -> (usize, usize, usize) {
    let c = pool.counts();
    (c.open, c.idle, c.waiting)
}

#[tokio::test]
async fn opens_up_to_the_pool_size_then_queues() {
    let (pool, fake) = pool(settings(2));
    let a = checkout(&pool).await.unwrap();
    let b = checkout(&pool).await.unwrap();
    assert_eq!((fake.opened(), counts(&pool)), (2, (2, 0, 0)));
    let third = queued(&pool).await;
    assert_eq!(counts(&pool), (2, 0, 1));
    let a_id = a.id;
    pool.release(a);
    let got = third.await.unwrap().unwrap();
    assert_eq!(
        got.id, a_id,
        "the released server goes straight to the waiter"
    );
    assert_eq!((fake.opened(), counts(&pool)), (2, (2, 0, 0)));
    drop((b, got));
}

#[tokio::test]
async fn server_ids_start_at_one() {
    let (pool, _) = pool(settings(2));
    let a = checkout(&pool).await.unwrap();
    let b = checkout(&pool).await.unwrap();
    assert_eq!((a.id, b.id), (1, 2));
}

#[tokio::test]
async fn waiters_are_served_in_arrival_order() {
    let (pool, _) = pool(settings(1));
    let held = checkout(&pool).await.unwrap();
    let id = held.id;
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for n in 0..4 {
        let (p, order) = (pool.clone(), order.clone());
        tasks.push(tokio::spawn(async move {
            let c = checkout(&p).await.unwrap();
            lock(&order).push(n);
            p.release(c);
        }));
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(counts(&pool).2, 4);
    pool.release(held);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(*lock(&order), [0, 1, 2, 3]);
    assert_eq!(pool.try_idle(0, &Demand::default()).map(|c| c.id), Some(id));
}

#[tokio::test(start_paused = true)]
async fn a_waiter_gives_up_after_query_wait_timeout() {
    let mut s = settings(1);
    s.wait_timeout = Some(Duration::from_secs(5));
    let (pool, _) = pool(s);
    let _held = checkout(&pool).await.unwrap();
    let start = tokio::time::Instant::now();
    let r = checkout(&pool).await;
    assert!(
        matches!(r, Err(CheckoutError::WaitTimeout)),
        "{:?}",
        r.err()
    );
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    assert_eq!(counts(&pool), (1, 0, 0), "it left the queue");
}

#[tokio::test]
async fn a_cancel_takes_the_waiter_out_of_the_queue() {
    let (pool, _) = pool(settings(1));
    let _held = checkout(&pool).await.unwrap();
    let cancel = Arc::new(Notify::new());
    let (p, c) = (pool.clone(), cancel.clone());
    let task = tokio::spawn(async move {
        let mut notified = pin!(c.notified());
        notified.as_mut().enable();
        p.checkout(notified, &Demand::default()).await
    });
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(counts(&pool).2, 1);
    cancel.notify_waiters();
    assert!(matches!(task.await.unwrap(), Err(CheckoutError::Canceled)));
    assert_eq!(counts(&pool).2, 0);
}

#[tokio::test]
async fn a_grant_to_a_waiter_that_left_is_not_lost() {
    let (pool, fake) = pool(settings(1));
    let held = checkout(&pool).await.unwrap();
    let waiter = queued(&pool).await;
    // The waiter's task ends while the server is on its way to it.
    waiter.abort();
    pool.release(held);
    let _ = waiter.await;
    assert_eq!(counts(&pool), (1, 1, 0));
    assert!(checkout(&pool).await.is_ok());
    assert_eq!(fake.opened(), 1);
}

#[tokio::test]
async fn the_idle_list_hands_out_the_most_recently_used_first() {
    let (pool, _) = pool(settings(3));
    let conns = [
        checkout(&pool).await.unwrap(),
        checkout(&pool).await.unwrap(),
        checkout(&pool).await.unwrap(),
    ];
    let ids: Vec<u64> = conns.iter().map(|c| c.id).collect();
    for c in conns {
        pool.release(c);
    }
    let again: Vec<u64> = (0..3)
        .map(|_| pool.try_idle(0, &Demand::default()).unwrap().id)
        .collect();
    assert_eq!(again, [ids[2], ids[1], ids[0]]);
}

#[tokio::test]
async fn a_client_gets_back_the_server_it_used_last() {
    let (pool, _) = pool(settings(3));
    let mut a = checkout(&pool).await.unwrap();
    let b = checkout(&pool).await.unwrap();
    let c = checkout(&pool).await.unwrap();
    a.last_client = 7;
    let (a_id, c_id) = (a.id, c.id);
    pool.release(a);
    pool.release(b);
    pool.release(c);
    assert_eq!(
        pool.try_idle(7, &Demand::default()).map(|s| s.id),
        Some(a_id)
    );
    assert_eq!(
        pool.try_idle(9, &Demand::default()).map(|s| s.id),
        Some(c_id)
    );
}

#[tokio::test(start_paused = true)]
async fn the_reserve_opens_after_reserve_pool_timeout_and_no_further() {
    let mut s = settings(1);
    s.reserve_size = 1;
    s.reserve_timeout = Duration::from_secs(3);
    s.wait_timeout = Some(Duration::from_secs(10));
    let (pool, fake) = pool(s);
    let _held = checkout(&pool).await.unwrap();
    let start = tokio::time::Instant::now();
    let reserve = checkout(&pool).await.unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    assert_eq!(fake.opened(), 2);
    // The reserve is full: the next one waits its whole query_wait_timeout.
    let r = checkout(&pool).await;
    assert!(
        matches!(r, Err(CheckoutError::WaitTimeout)),
        "{:?}",
        r.err()
    );
    assert_eq!(fake.opened(), 2);
    drop(reserve);
}

#[tokio::test]
async fn maintenance_opens_up_to_min_pool_size() {
    let mut s = settings(5);
    s.min_size = 2;
    let (pool, fake) = pool(s);
    pool.maintain().await;
    assert_eq!((fake.opened(), counts(&pool)), (2, (2, 2, 0)));
    pool.maintain().await;
    assert_eq!(
        fake.opened(),
        2,
        "min_pool_size is a floor, not a target to add to"
    );
}

#[tokio::test]
async fn idle_servers_past_server_idle_timeout_are_retired_down_to_min_pool_size() {
    let mut s = settings(5);
    s.min_size = 1;
    s.idle_timeout = Some(Duration::from_millis(30));
    let (pool, _) = pool(s);
    let conns = [
        checkout(&pool).await.unwrap(),
        checkout(&pool).await.unwrap(),
        checkout(&pool).await.unwrap(),
    ];
    for c in conns {
        pool.release(c);
    }
    pool.maintain().await;
    assert_eq!(counts(&pool), (3, 3, 0), "not idle long enough yet");
    tokio::time::sleep(Duration::from_millis(60)).await;
    pool.maintain().await;
    assert_eq!(counts(&pool), (1, 1, 0));
}

#[tokio::test]
async fn maintenance_keeps_the_most_recently_used_and_retires_the_rest() {
    let mut s = settings(5);
    s.idle_timeout = Some(Duration::from_millis(40));
    let (pool, _) = pool(s);
    let old = checkout(&pool).await.unwrap();
    let warm = checkout(&pool).await.unwrap();
    let warm_id = warm.id;
    pool.release(old);
    tokio::time::sleep(Duration::from_millis(60)).await;
    pool.release(warm);
    pool.maintain().await;
    assert_eq!(counts(&pool), (1, 1, 0));
    assert_eq!(
        pool.try_idle(0, &Demand::default()).map(|c| c.id),
        Some(warm_id)
    );
}

#[tokio::test]
async fn a_server_past_server_lifetime_is_not_reused() {
    let mut s = settings(1);
    s.lifetime = Some(Duration::from_millis(30));
    let (pool, fake) = pool(s);
    let first = checkout(&pool).await.unwrap();
    let first_id = first.id;
    pool.release(first);
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert!(pool.try_idle(0, &Demand::default()).is_none());
    let next = checkout(&pool).await.unwrap();
    assert_ne!(next.id, first_id);
    assert_eq!((fake.opened(), counts(&pool)), (2, (1, 0, 0)));
}

#[tokio::test]
async fn a_server_that_died_while_idle_is_evicted() {
    let (pool, fake) = pool(settings(2));
    let c = checkout(&pool).await.unwrap();
    let pid = c.pid;
    pool.release(c);
    fake.kill(pid);
    // The reactor learns of the closed socket when it next polls.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        pool.try_idle(0, &Demand::default()).is_none(),
        "the fast path does not hand out a dead server"
    );
    pool.maintain().await;
    assert_eq!(
        counts(&pool),
        (0, 0, 0),
        "gone from the counts without a checkout"
    );
    let next = checkout(&pool).await.unwrap();
    assert_ne!(next.pid, pid);
}

#[tokio::test]
async fn a_failed_login_fails_the_next_checkouts_fast_within_server_login_retry() {
    let mut s = settings(2);
    s.login_retry = Some(Duration::from_millis(50));
    let (pool, fake) = pool(s);
    fake.fail.store(true, Ordering::Relaxed);
    assert!(matches!(
        checkout(&pool).await,
        Err(CheckoutError::Connect(_))
    ));
    assert!(matches!(
        checkout(&pool).await,
        Err(CheckoutError::RecentFailure(_))
    ));
    assert_eq!(counts(&pool), (0, 0, 0), "a failed open holds no place");
    fake.fail.store(false, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert!(checkout(&pool).await.is_ok());
}

#[tokio::test]
async fn a_dropped_connection_frees_its_place_for_a_waiter() {
    let (pool, fake) = pool(settings(1));
    let held = checkout(&pool).await.unwrap();
    let waiter = queued(&pool).await;
    drop(held);
    let got = waiter.await.unwrap().unwrap();
    assert_eq!(
        got.pid, 2,
        "the waiter opened a new server in the freed place"
    );
    assert_eq!((fake.opened(), counts(&pool)), (2, (1, 0, 0)));
}

#[tokio::test]
async fn max_db_connections_is_shared_by_the_pools_of_a_database() {
    let db = DbLimit::new(1);
    let (a, fa) = pool_on(settings(5), db.clone());
    let (b, fb) = pool_on(settings(5), db.clone());
    let held = checkout(&a).await.unwrap();
    let waiter = queued(&b).await;
    assert_eq!(counts(&b), (0, 0, 1));
    // A's server comes back while B waits at the cap: it is closed, and B opens one.
    a.release(held);
    let got = waiter.await.unwrap().unwrap();
    assert_eq!((fa.opened(), fb.opened()), (1, 1));
    assert_eq!((counts(&a), counts(&b)), ((0, 0, 0), (1, 0, 0)));
    drop(got);
}

#[tokio::test]
async fn at_the_database_cap_an_idle_server_of_another_pool_makes_room() {
    let db = DbLimit::new(1);
    let (a, _) = pool_on(settings(5), db.clone());
    let (b, fb) = pool_on(settings(5), db.clone());
    let c = checkout(&a).await.unwrap();
    a.release(c);
    assert_eq!(counts(&a), (1, 1, 0));
    let got = checkout(&b).await.unwrap();
    assert_eq!(fb.opened(), 1);
    assert_eq!(counts(&a), (0, 0, 0));
    drop(got);
}

#[tokio::test]
async fn a_smaller_pool_closes_servers_as_they_come_back() {
    let (pool, _) = pool(settings(3));
    let conns = [
        checkout(&pool).await.unwrap(),
        checkout(&pool).await.unwrap(),
        checkout(&pool).await.unwrap(),
    ];
    pool.apply(upstream("fake"), settings(1));
    for c in conns {
        pool.release(c);
        tokio::task::yield_now().await;
    }
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(counts(&pool), (1, 1, 0));
}

/// Shrunk under load: servers coming back close, and their places do not go to waiters until
/// the pool is down to its new size (no close-and-reopen per transaction).
#[tokio::test]
async fn a_smaller_pool_under_load_comes_down_to_its_size() {
    let (pool, fake) = pool(settings(3));
    let conns = [
        checkout(&pool).await.unwrap(),
        checkout(&pool).await.unwrap(),
        checkout(&pool).await.unwrap(),
    ];
    let waiter = queued(&pool).await;
    pool.apply(upstream("fake"), settings(1));
    let mut conns = conns.into_iter();
    for c in conns.by_ref().take(2) {
        pool.release(c);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(
        counts(&pool),
        (1, 0, 1),
        "down to 1, the waiter still waits"
    );
    assert_eq!(
        fake.opened(),
        3,
        "no server opened for the waiter meanwhile"
    );
    for c in conns {
        pool.release(c);
    }
    assert!(waiter.await.unwrap().is_ok());
    assert_eq!(fake.opened(), 3);
}

#[tokio::test]
async fn a_larger_pool_serves_its_waiters_at_once() {
    let (pool, fake) = pool(settings(1));
    let _held = checkout(&pool).await.unwrap();
    let waiter = queued(&pool).await;
    pool.apply(upstream("fake"), settings(2));
    assert!(waiter.await.unwrap().is_ok());
    assert_eq!(fake.opened(), 2);
}

#[tokio::test]
async fn servers_of_a_replaced_upstream_are_not_reused() {
    let (pool, fake) = pool(settings(2));
    let c = checkout(&pool).await.unwrap();
    let old = c.id;
    pool.apply(upstream("elsewhere"), settings(2));
    pool.release(c);
    assert!(pool.try_idle(0, &Demand::default()).is_none());
    let next = checkout(&pool).await.unwrap();
    assert_ne!(next.id, old);
    assert_eq!(fake.opened(), 2);
}

#[tokio::test(start_paused = true)]
async fn pause_holds_checkouts_until_resume() {
    let (pool, fake) = pool(settings(2));
    pool.pause();
    assert!(pool.try_idle(0, &Demand::default()).is_none());
    let waiter = queued(&pool).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!waiter.is_finished());
    assert_eq!(fake.opened(), 0);
    pool.resume();
    assert!(waiter.await.unwrap().is_ok());
}

#[test]
fn a_server_found_closed_makes_the_pool_suspicious_for_a_while() {
    let mut st = State::default();
    let t = std::time::Instant::now();
    assert!(!st.suspect(t), "a new pool trusts the reactor");
    st.found_dead(t);
    assert!(st.suspect(t + Duration::from_secs(9)));
    assert!(
        !st.suspect(t + SUSPECT_FOR),
        "and trusts it again after SUSPECT_FOR"
    );
}

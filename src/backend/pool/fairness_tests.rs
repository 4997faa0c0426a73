//! The queue's order, the priority reserve, identity shares and shedding, on a pool of fake
//! servers and tokio's paused clock.

use super::*;
use crate::backend::fake::{pool_on, settings};
use crate::config::Priority;
use std::pin::pin;

fn pool(size: usize, fairness: Fairness) -> Arc<Pool> {
    pool_on(
        PoolSettings {
            fairness,
            ..settings(size)
        },
        DbLimit::new(0),
    )
    .0
}

async fn take(pool: &Arc<Pool>, demand: &Demand) -> Result<ServerConn, CheckoutError> {
    let never = Notify::new();
    pool.checkout(pin!(never.notified()), demand).await
}

/// A checkout on its own task that records its tag when served, holds the server for
/// `hold`, then gives it back.
fn client(
    pool: &Arc<Pool>,
    demand: Demand,
    tag: u32,
    hold: Duration,
    served: &Arc<Mutex<Vec<(u32, tokio::time::Instant)>>>,
) -> tokio::task::JoinHandle<Result<(), CheckoutError>> {
    let (p, served) = (pool.clone(), served.clone());
    tokio::spawn(async move {
        let c = take(&p, &demand).await?;
        lock(&served).push((tag, tokio::time::Instant::now()));
        tokio::time::sleep(hold).await;
        p.release(c);
        Ok(())
    })
}

async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

fn tags(served: &Mutex<Vec<(u32, tokio::time::Instant)>>) -> Vec<u32> {
    lock(served).iter().map(|(t, _)| *t).collect()
}

#[tokio::test(start_paused = true)]
async fn a_high_priority_client_behind_fifty_low_ones_is_served_next() {
    let pool = pool(2, Fairness::default());
    let a = take(&pool, &Demand::of(Priority::LOW)).await.unwrap();
    let b = take(&pool, &Demand::of(Priority::LOW)).await.unwrap();
    let served = Arc::new(Mutex::new(Vec::new()));
    let hold = Duration::from_millis(10);
    let mut tasks: Vec<_> = (0..50)
        .map(|n| client(&pool, Demand::of(Priority::LOW), n, hold, &served))
        .collect();
    settle().await;
    tokio::time::advance(Duration::from_secs(1)).await;
    tasks.push(client(
        &pool,
        Demand::of(Priority::HIGH),
        1000,
        hold,
        &served,
    ));
    tasks.push(client(
        &pool,
        Demand::of(Priority::NORMAL),
        500,
        hold,
        &served,
    ));
    settle().await;
    assert_eq!(pool.waiting_by_class()[..3], [50, 1, 1]);
    pool.release(a);
    settle().await;
    pool.release(b);
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let order = tags(&served);
    assert_eq!(order[..3], [1000, 500, 0], "{order:?}");
    assert_eq!(order[3..], (1..50).collect::<Vec<_>>()[..]);
    assert_eq!(pool.stats.served[2].load(Ordering::Relaxed), 1);
}

/// The stated bound: nobody overtakes a waiter who arrived more than 2 × priority_aging
/// after it, so under endless high-priority load a low waiter is served within
/// 2 × priority_aging plus the time the waiters ahead of it hold the server.
#[tokio::test(start_paused = true)]
async fn a_low_priority_client_progresses_under_sustained_high_priority_load() {
    let aging = Duration::from_secs(5);
    let pool = pool(
        1,
        Fairness {
            aging,
            ..Fairness::default()
        },
    );
    let served = Arc::new(Mutex::new(Vec::new()));
    let hold = Duration::from_millis(500);
    // High-priority clients arriving faster than one server serves them, for 60 s.
    let load = {
        let (pool, served) = (pool.clone(), served.clone());
        tokio::spawn(async move {
            let mut tasks = Vec::new();
            for n in 0..180 {
                tasks.push(client(&pool, Demand::of(Priority::HIGH), n, hold, &served));
                tokio::time::sleep(Duration::from_millis(333)).await;
            }
            tasks
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let arrived = tokio::time::Instant::now();
    let low = client(&pool, Demand::of(Priority::LOW), 9999, hold, &served);
    low.await.unwrap().unwrap();
    let waited = lock(&served)
        .iter()
        .find(|(t, _)| *t == 9999)
        .map(|(_, at)| *at - arrived)
        .unwrap();
    // Highs that arrived before arrived + 10 s go first: at most 10 s of them plus the
    // backlog at arrival, each holding 0.5 s of a server that serves 1.5 arrivals' worth.
    assert!(
        waited >= 2 * aging,
        "it should not jump the queue: {waited:?}"
    );
    assert!(waited <= Duration::from_secs(20), "{waited:?}");
    for t in load.await.unwrap() {
        t.await.unwrap().unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn the_priority_reserve_is_never_taken_by_a_lower_class() {
    let pool = pool(
        3,
        Fairness {
            reserve: 1,
            ..Fairness::default()
        },
    );
    let low = take(&pool, &Demand::of(Priority::LOW)).await.unwrap();
    let normal = take(&pool, &Demand::of(Priority::NORMAL)).await.unwrap();
    let served = Arc::new(Mutex::new(Vec::new()));
    let hold = Duration::from_millis(10);
    let waiting = client(&pool, Demand::of(Priority::LOW), 1, hold, &served);
    settle().await;
    assert_eq!(counts(&pool), (2, 0, 1), "the third place is the reserve");
    let high = take(&pool, &Demand::of(Priority::HIGH)).await.unwrap();
    assert_eq!(counts(&pool), (3, 0, 1));
    // A high-priority server coming back does not go to the low waiter: still the reserve.
    pool.release(high);
    settle().await;
    assert_eq!(counts(&pool), (3, 1, 1));
    assert!(pool.try_idle(0, &Demand::of(Priority::NORMAL)).is_none());
    pool.release(low);
    waiting.await.unwrap().unwrap();
    assert_eq!(tags(&served), [1]);
    drop(normal);
}

fn counts(pool: &Pool) -> (usize, usize, usize) {
    let c = pool.counts();
    (c.open, c.idle, c.waiting)
}

fn share(who: &str, max: usize, refuse: bool) -> Demand {
    Demand {
        class: Priority::NORMAL,
        share: Some(Arc::new(Share {
            who: who.into(),
            max,
            refuse,
            dedicated: 0,
        })),
        session: false,
        attrs: None,
        region: None,
    }
}

#[tokio::test(start_paused = true)]
async fn an_identity_at_its_share_waits_while_others_are_served() {
    let pool = pool(3, Fairness::default());
    let noisy = share("noisy", 2, false);
    let a = take(&pool, &noisy).await.unwrap();
    let _b = take(&pool, &noisy).await.unwrap();
    let served = Arc::new(Mutex::new(Vec::new()));
    let third = client(&pool, noisy.clone(), 1, Duration::ZERO, &served);
    settle().await;
    assert_eq!(counts(&pool), (2, 0, 1), "at its share, with a place free");
    let quiet = take(&pool, &share("quiet", 2, false)).await.unwrap();
    assert_eq!(counts(&pool), (3, 0, 1));
    pool.release(a);
    third.await.unwrap().unwrap();
    assert_eq!(tags(&served), [1]);
    // Refusing instead of waiting: 53300 naming the limit.
    let strict = share("noisy", 2, true);
    let _c = take(&pool, &strict).await.unwrap();
    let r = take(&pool, &strict).await;
    let err = r.err().unwrap().to_client();
    assert_eq!(err.code, "53300");
    assert!(err.message.contains("max_user_connections (2)"), "{err}");
    drop(quiet);
}

#[tokio::test(start_paused = true)]
async fn shedding_refuses_the_lowest_class_first() {
    let pool = pool(
        1,
        Fairness {
            shed_queue: 3,
            ..Fairness::default()
        },
    );
    let held = take(&pool, &Demand::default()).await.unwrap();
    let served = Arc::new(Mutex::new(Vec::new()));
    let hold = Duration::from_millis(1);
    let lows: Vec<_> = (0..3)
        .map(|n| client(&pool, Demand::of(Priority::LOW), n, hold, &served))
        .collect();
    settle().await;
    // A normal client arrives at a full queue: the newest low one is shed for it.
    let normal = client(&pool, Demand::of(Priority::NORMAL), 10, hold, &served);
    settle().await;
    assert_eq!(pool.waiting_by_class()[..3], [2, 1, 0]);
    // A low one arriving now is itself the lowest: shed at once.
    let r = take(&pool, &Demand::of(Priority::LOW)).await;
    let err = r.err().unwrap().to_client();
    assert_eq!(err.code, "53300");
    assert!(err.message.contains("shed_queue_length 3"), "{err}");
    pool.release(held);
    normal.await.unwrap().unwrap();
    let results: Vec<_> = futures_join(lows).await;
    assert!(
        matches!(results[2], Err(CheckoutError::Shed(_))),
        "{results:?}"
    );
    assert!(results[..2].iter().all(Result::is_ok));
    assert_eq!(tags(&served), [10, 0, 1]);
    assert_eq!(pool.stats.shed[0].load(Ordering::Relaxed), 2);
}

async fn futures_join(
    tasks: Vec<tokio::task::JoinHandle<Result<(), CheckoutError>>>,
) -> Vec<Result<(), CheckoutError>> {
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

#[tokio::test(start_paused = true)]
async fn dedicated_places_are_kept_for_their_owner_in_the_pool_and_the_database() {
    let db = DbLimit::with_reserved(3, 1);
    let vip = Demand {
        class: Priority::LOW,
        share: Some(Arc::new(Share {
            who: "key:vip".into(),
            max: 0,
            refuse: false,
            dedicated: 1,
        })),
        session: false,
        attrs: None,
        region: None,
    };
    let fair = Fairness {
        dedicated: 1,
        ..Fairness::default()
    };
    let (own, _) = pool_on(
        PoolSettings {
            fairness: fair,
            ..settings(2)
        },
        db.clone(),
    );
    let (other, _) = pool_on(settings(5), db.clone());
    // Another pool fills what the database shares: 2 of 3.
    let a = take(&other, &Demand::default()).await.unwrap();
    let b = take(&other, &Demand::default()).await.unwrap();
    let served = Arc::new(Mutex::new(Vec::new()));
    let blocked = client(&other, Demand::default(), 1, Duration::ZERO, &served);
    // In the owner's pool, a shared client gets no server either: the one place left is
    // the owner's.
    let shared = client(&own, Demand::default(), 2, Duration::ZERO, &served);
    settle().await;
    assert_eq!((counts(&other).2, counts(&own).2), (1, 1));
    // The owner is served at once, low class or not.
    let mine = take(&own, &vip).await.unwrap();
    assert_eq!(db.open.load(Ordering::Relaxed), 3);
    // Its server coming back does not go to the shared waiter: that place is the owner's
    // (the server closes, as another pool waits at the database's cap).
    own.release(mine);
    settle().await;
    assert_eq!(counts(&own), (0, 0, 1));
    assert_eq!(counts(&other), (2, 0, 1));
    let again = take(&own, &vip).await.unwrap();
    drop(again);
    drop((a, b));
    blocked.await.unwrap().unwrap();
    shared.await.unwrap().unwrap();
    assert_eq!(tags(&served).len(), 2);
}

/// One pool filling the database: after its owner gives dedicated servers back, the shared
/// clients keep being served (the surplus server closes instead of sitting idle).
#[tokio::test(start_paused = true)]
async fn shared_clients_are_served_after_the_owner_gives_servers_back() {
    let db = DbLimit::with_reserved(3, 1);
    let vip = Demand {
        share: Some(Arc::new(Share {
            who: "key:vip".into(),
            max: 0,
            refuse: false,
            dedicated: 1,
        })),
        ..Demand::default()
    };
    let (pool, _) = pool_on(
        PoolSettings {
            fairness: Fairness {
                dedicated: 1,
                ..Fairness::default()
            },
            ..settings(3)
        },
        db.clone(),
    );
    let a = take(&pool, &Demand::default()).await.unwrap();
    let b = take(&pool, &Demand::default()).await.unwrap();
    let mine = take(&pool, &vip).await.unwrap();
    let served = Arc::new(Mutex::new(Vec::new()));
    let waiting = client(&pool, Demand::default(), 1, Duration::ZERO, &served);
    settle().await;
    pool.release(mine);
    settle().await;
    assert_eq!(
        db.open.load(Ordering::Relaxed),
        2,
        "the owner's server closed"
    );
    pool.release(a);
    tokio::time::timeout(Duration::from_secs(1), waiting)
        .await
        .expect("the shared waiter is served")
        .unwrap()
        .unwrap();
    // And the owner still finds its place.
    let again = take(&pool, &vip).await.unwrap();
    drop((again, b));
}

//! The session store's writes and cold reads on the redb file against Redis, side by side in one
//! run: a login's durable commit (one at a time, and at 8 and 64 at once), a cold read (the
//! session not in the cache), a refresh's commit, and a refresh's store work with its lease
//! (the cluster-wide single flight: lease, read again, commit). Starts its own `redis-server` on a free
//! loopback port (Debian: `apt-get install redis-server`), with no persistence, and stops it.
//!
//! Run: `cargo bench --bench shared_store` (`BENCH_LOGINS`, default 2,000 per measurement).

// A benchmark measures real time (clippy.toml bans the real clocks in the crate).
#![allow(clippy::disallowed_methods)]

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use oidc_bff::cache::CachePolicy;
use oidc_bff::clock::SystemClock;
use oidc_bff::config::StorageConfig;
use oidc_bff::redis_url::{RedisStore, RedisTarget};
use oidc_bff::session::{AccessToken, Secret, SessionKey, SessionPolicy, Ticket, Tokens};
use oidc_bff::tickets::{Activity, MissingKey, TicketStore, open_store};

fn ticket(index: usize, now: u64) -> Ticket {
    let token = |bytes: usize| format!("eyJhbGciOiJSUzI1NiJ9.{}.c2ln", "A".repeat(bytes));
    Ticket {
        tokens: Tokens {
            access_token: AccessToken::new(token(1_000)).expect("token"),
            access_expires_at: Some(now + 300),
            refresh_token: Some(Secret::new(format!("refresh-{index}"))),
            id_token: Some(Secret::new(token(1_000))),
            scope: Some("openid profile email".into()),
        },
        subject: format!("user-{index}"),
        provider_sid: Some(format!("sid-{index}")),
        created_at: now,
        expires_at: now + 7 * 86_400,
        resource_tokens: Vec::new(),
        userinfo: None,
        principal: Default::default(),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

async fn open(dir: &std::path::Path, redis: Option<RedisStore>) -> TicketStore {
    let storage = StorageConfig {
        data_dir: dir.to_owned(),
        ticket_key_file: dir.join("ticket.key"),
        db_cache_bytes: 64 << 20,
        redis,
    };
    // A cache of one: every read after a write of another session is cold.
    let cache = CachePolicy {
        capacity: NonZeroUsize::MIN,
        sliding: Duration::from_secs(3_600),
        absolute: Duration::from_secs(3_600),
    };
    let policy = SessionPolicy {
        idle_timeout: Duration::from_secs(8 * 3_600),
        lifetime: Duration::from_secs(7 * 86_400),
        refresh_skew: Duration::from_secs(30),
    };
    let tls = oidc_bff::tls::client_config(None).expect("tls");
    open_store(
        &storage,
        cache,
        policy,
        Arc::new(SystemClock),
        MissingKey::Create,
        &tls,
    )
    .await
    .expect("open")
    .0
}

fn percentile(times: &mut [Duration], fraction: f64) -> Duration {
    times.sort_unstable();
    times[((times.len() - 1) as f64 * fraction) as usize]
}

/// `count` logins, `concurrency` at a time: logins per second.
async fn logins_per_second(store: &Arc<TicketStore>, count: usize, concurrency: usize) -> f64 {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let store = Arc::clone(store);
        tasks.spawn(async move {
            let now = now();
            for index in (worker..count).step_by(concurrency) {
                store.store(ticket(index, now)).await.expect("store");
            }
        });
    }
    tasks.join_all().await;
    count as f64 / started.elapsed().as_secs_f64()
}

async fn measure(name: &str, store: TicketStore, count: usize) {
    let store = Arc::new(store);
    let mut commits = Vec::with_capacity(count);
    let mut keys: Vec<SessionKey> = Vec::with_capacity(count);
    for index in 0..count {
        let started = Instant::now();
        keys.push(store.store(ticket(index, now())).await.expect("store"));
        commits.push(started.elapsed());
    }
    let mut cold = Vec::with_capacity(count);
    let mut renews = Vec::with_capacity(count);
    for key in &keys {
        let started = Instant::now();
        let session = store
            .retrieve(key, Activity::Peek)
            .await
            .expect("retrieve")
            .expect("live");
        cold.push(started.elapsed());
        let renewed = (*session.ticket).clone();
        let started = Instant::now();
        assert!(store.renew(session.id, renewed).await.expect("renew"));
        renews.push(started.elapsed());
    }
    // What a refresh costs the store: the renewal lease (in Redis: set if absent, then a renewal
    // task; released in the background when dropped), the session read again from the store,
    // and the commit. The provider's token call, which dominates a real refresh, is left out.
    let mut leased = Vec::with_capacity(count);
    for key in &keys {
        let id = key.id();
        let started = Instant::now();
        let lease = store
            .renewal_lease(id, Duration::from_secs(1))
            .await
            .expect("lease")
            .expect("free");
        let session = store.reread(id).await.expect("reread").expect("live");
        let renewed = (*session.ticket).clone();
        assert!(store.renew(id, renewed).await.expect("renew"));
        drop(lease);
        leased.push(started.elapsed());
    }
    let at = |concurrency| logins_per_second(&store, count, concurrency);
    let (one, eight, sixty_four) = (at(1).await, at(8).await, at(64).await);
    println!(
        "| {name} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {one:.0} | {eight:.0} | {sixty_four:.0} |",
        percentile(&mut commits, 0.5).as_secs_f64() * 1e6,
        percentile(&mut commits, 0.99).as_secs_f64() * 1e6,
        percentile(&mut cold, 0.5).as_secs_f64() * 1e6,
        percentile(&mut renews, 0.5).as_secs_f64() * 1e6,
        percentile(&mut leased, 0.5).as_secs_f64() * 1e6,
    );
}

fn main() {
    let count: usize = std::env::var("BENCH_LOGINS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(2_000);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mut redis = std::process::Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server (Debian: apt-get install redis-server)");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let file_dir = tempfile::tempdir().expect("dir");
        let redis_dir = tempfile::tempdir().expect("dir");
        let target =
            RedisTarget::parse(&format!("redis://127.0.0.1:{port}")).expect("redis url");
        println!("{count} logins each; cold reads and refresh commits over the same sessions");
        println!(
            "| store | login commit p50 | p99 | cold read p50 | refresh commit p50 | refresh with lease p50 | logins/s ×1 | ×8 | ×64 |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        measure("redb file", open(file_dir.path(), None).await, count).await;
        let redis_store = RedisStore {
            target,
            password: None,
        };
        measure(
            "Redis (loopback)",
            open(redis_dir.path(), Some(redis_store)).await,
            count,
        )
        .await;
    });
    let _ = redis.kill();
    let _ = redis.wait();
}

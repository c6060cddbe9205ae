//! Eviction sweep benchmark: 1,000,000 sessions of which 100,000 are past their idle timeout
//! (set `BENCH_SESSIONS` to scale; a tenth are due), created on an earlier day than the others,
//! so that the sweep also prunes their entries from the identity indexes. Measures one sweep's duration and the
//! latency of session lookups (every tenth live session in turn, so mostly cache misses read
//! from redb) before and during the sweep.
//!
//! Run: `cargo bench --bench sweep`. Target: the sweep takes under 5 s and lookups stay flat.
//! The sweep runs with the batch size the gateway uses (10,000 per transaction).

// A benchmark measures real time (clippy.toml bans the real clocks in the crate).
#![allow(clippy::disallowed_methods)]

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use oidc_bff::cache::CachePolicy;
use oidc_bff::clock::{Clock, ManualClock};
use oidc_bff::config::StorageConfig;
use oidc_bff::seal::random_bytes;
use oidc_bff::session::{AccessToken, Secret, SessionKey, SessionPolicy, Ticket, Tokens};
use oidc_bff::tickets::{Activity, MissingKey, TicketStore, open_data_dir};

const BATCH: usize = 10_000;
/// How long the due sessions have been idle: more than a day, so that they were created on an
/// earlier day than every live session and the sweep also drops their identity-index entries.
const IDLE_HOURS: u64 = 30;

fn ticket(index: usize, now: u64) -> Ticket {
    let token = |bytes: usize| {
        let mut payload = vec![0u8; bytes];
        aws_lc_rs::rand::fill(&mut payload).expect("random");
        format!(
            "eyJhbGciOiJSUzI1NiJ9.{}.{}",
            URL_SAFE_NO_PAD.encode(&payload),
            URL_SAFE_NO_PAD.encode([7u8; 256])
        )
    };
    Ticket {
        tokens: Tokens {
            access_token: AccessToken::new(token(470)).expect("token"),
            access_expires_at: Some(now + 300),
            refresh_token: Some(Secret::new(URL_SAFE_NO_PAD.encode(random_bytes::<32>()))),
            id_token: Some(Secret::new(token(500))),
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

fn load(
    store: &TicketStore,
    runtime: &tokio::runtime::Runtime,
    count: usize,
    now: u64,
) -> Vec<SessionKey> {
    let mut keys = Vec::new();
    for start in (0..count).step_by(BATCH) {
        let end = (start + BATCH).min(count);
        let tickets = (start..end).map(|index| ticket(index, now)).collect();
        let batch = runtime.block_on(store.store_batch(tickets)).expect("store");
        keys.extend(batch.into_iter().step_by(10));
    }
    keys
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * fraction).round() as usize]
}

fn main() {
    let sessions: usize = std::env::var("BENCH_SESSIONS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(1_000_000);
    let due = sessions / 10;
    let dir = tempfile::tempdir().expect("dir");
    let start = UNIX_EPOCH
        + Duration::from_secs(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .expect("clock")
                .as_secs()
                - IDLE_HOURS * 3_600,
        );
    let clock = Arc::new(ManualClock::new(start));
    let storage = StorageConfig {
        data_dir: dir.path().to_owned(),
        ticket_key_file: dir.path().join("ticket.key"),
        db_cache_bytes: 64 << 20,
        redis: None,
    };
    let cache = CachePolicy {
        capacity: NonZeroUsize::new(10_000).expect("non-zero"),
        sliding: Duration::from_secs(15),
        absolute: Duration::from_secs(100),
    };
    let policy = SessionPolicy {
        idle_timeout: Duration::from_secs(8 * 3_600),
        lifetime: Duration::from_secs(7 * 86_400),
        refresh_skew: Duration::from_secs(30),
    };
    let (store, _) =
        open_data_dir(&storage, cache, policy, clock.clone(), MissingKey::Create).expect("open");
    let store = Arc::new(store);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");

    println!(
        "loading {due} sessions idle for {IDLE_HOURS} h and {} active ones ...",
        sessions - due
    );
    let started = Instant::now();
    load(&store, &runtime, due, clock.unix_now());
    clock.advance(Duration::from_secs(IDLE_HOURS * 3_600));
    let live = load(&store, &runtime, sessions - due, clock.unix_now());
    println!("  loaded in {:.1} s", started.elapsed().as_secs_f64());

    // Cold lookups of live sessions (spread over the file, mostly cache misses), timed before
    // and during the sweep by a concurrent task.
    let lookups = |stop: Arc<AtomicBool>, limit: usize| {
        let store = Arc::clone(&store);
        let keys = live.clone();
        runtime.spawn(async move {
            let mut latencies = Vec::new();
            for key in keys.iter().cycle().take(limit) {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let started = Instant::now();
                let session = store.retrieve(key, Activity::Peek).await.expect("retrieve");
                latencies.push(started.elapsed());
                assert!(session.is_some(), "a live session was lost");
                tokio::task::yield_now().await;
            }
            latencies.sort();
            latencies
        })
    };
    let before = runtime
        .block_on(lookups(Arc::new(AtomicBool::new(false)), 5_000))
        .expect("lookups");

    let identity_before = store
        .database()
        .expect("the file")
        .identity_entries()
        .expect("entries");
    let stop = Arc::new(AtomicBool::new(false));
    let during = lookups(Arc::clone(&stop), usize::MAX);
    let started = Instant::now();
    let removed = runtime
        .block_on(store.evict_expired(10_000))
        .expect("sweep");
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let during = runtime.block_on(during).expect("lookups");
    let remaining = runtime.block_on(store.count()).expect("count");
    let identity_after = store
        .database()
        .expect("the file")
        .identity_entries()
        .expect("entries");
    assert_eq!(
        identity_before - identity_after,
        2 * due as u64,
        "the due sessions' identity-index entries were pruned"
    );
    assert_eq!(removed, due, "every due session was removed");
    assert_eq!(
        remaining as usize,
        sessions - due,
        "no live session was removed"
    );

    println!();
    println!("| measurement | result | target |");
    println!("|---|---|---|");
    println!(
        "| eviction sweep, {due} due of {sessions}, their {} identity-index entries pruned | {:.2} s ({:.0} sessions/s) | < 5 s |",
        identity_before - identity_after,
        took.as_secs_f64(),
        due as f64 / took.as_secs_f64()
    );
    println!(
        "| cold lookup p50 / p99 before the sweep | {:.1} / {:.1} µs | — |",
        percentile(&before, 0.5).as_secs_f64() * 1e6,
        percentile(&before, 0.99).as_secs_f64() * 1e6
    );
    println!(
        "| cold lookup p50 / p99 during the sweep ({} lookups) | {:.1} / {:.1} µs | flat |",
        during.len(),
        percentile(&during, 0.5).as_secs_f64() * 1e6,
        percentile(&during, 0.99).as_secs_f64() * 1e6
    );
}

//! Ticket store benchmark at production scale (default 1,000,000 sessions; set
//! `BENCH_SESSIONS` to change it).
//!
//! Measures, on realistic tickets (JWT access and ID tokens of ~1 KiB each, a refresh token,
//! ten claims): retrieve with a cache hit, retrieve from redb with a cold cache, a login's
//! durable store, the file size against the sealed ticket bytes, and the process RSS with every
//! session stored and the cache full at its default capacity.
//!
//! Run: `cargo bench --bench store`. Targets: hit ≤ 1 µs, cold ≤ 10 µs, file ≤ 1.5× sealed
//! bytes, RSS ≤ 128 MiB. `BENCH_KEEP_DIR=/path` keeps the loaded file; then
//! `BENCH_PHASE=measure BENCH_DIR=/path target/release/deps/store-…` repeats (or profiles) the
//! measurements alone. A cold read is served from the operating system's page cache when the
//! file is in it (`fincore` shows how much is), from the disk otherwise.

// A benchmark measures real time (clippy.toml bans the real clocks in the crate).
#![allow(clippy::disallowed_methods)]

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use oidc_bff::cache::CachePolicy;
use oidc_bff::clock::SystemClock;
use oidc_bff::config::StorageConfig;
use oidc_bff::seal::{Sealer, random_bytes};
use oidc_bff::session::{AccessToken, Secret, SessionKey, SessionPolicy, Ticket, Tokens};
use oidc_bff::tickets::{Activity, MissingKey, TicketStore, open_data_dir};

const DEFAULT_CACHE: usize = 10_000;
const BATCH: usize = 10_000;

/// A JWS-shaped token: a real RS256 header, the payload given, a 256-byte signature.
fn jws(payload: &[u8]) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":"key-1","typ":"JWT"}"#);
    let mut signature = [0u8; 256];
    aws_lc_rs::rand::fill(&mut signature).expect("random");
    format!(
        "{header}.{}.{}",
        URL_SAFE_NO_PAD.encode(payload),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

/// A realistic ticket: a ~1 KiB JWT access token (random payload: real ones are JSON, which
/// only helps), a ~1 KiB ID token carrying ten user claims, an opaque refresh token.
fn ticket(index: usize, now: u64) -> Ticket {
    let id_claims = serde_json::json!({
        "iss": "https://login.example.com/realms/production",
        "aud": "spa-gateway-client",
        "exp": now + 300,
        "iat": now,
        "auth_time": now,
        "nonce": URL_SAFE_NO_PAD.encode(random_bytes::<32>()),
        "at_hash": URL_SAFE_NO_PAD.encode(random_bytes::<16>()),
        "sid": format!("{}-{index}", URL_SAFE_NO_PAD.encode(random_bytes::<16>())),
        "sub": format!("user-{index}"),
        "name": "Alice Example",
        "given_name": "Alice",
        "family_name": "Example",
        "preferred_username": format!("alice{index}"),
        "email": format!("alice{index}@example.com"),
        "email_verified": true,
        "locale": "en-GB",
        "zoneinfo": "Europe/London",
        "roles": ["reader", "writer"],
    });
    let mut access_payload = vec![0u8; 470];
    aws_lc_rs::rand::fill(&mut access_payload).expect("random");
    Ticket {
        tokens: Tokens {
            access_token: AccessToken::new(jws(&access_payload)).expect("token"),
            access_expires_at: Some(now + 300),
            refresh_token: Some(Secret::new(URL_SAFE_NO_PAD.encode(random_bytes::<32>()))),
            id_token: Some(Secret::new(jws(id_claims.to_string().as_bytes()))),
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

/// The bytes a ticket takes sealed: the session record (without the ID token) and the ID-token
/// record, each a format byte, the postcard plaintext and the AEAD's nonce and tag.
fn sealed_sizes(ticket: &Ticket) -> (usize, usize) {
    let mut session = ticket.clone();
    let id_token = session.tokens.id_token.take();
    let record = 1 + postcard::to_stdvec(&session).expect("encode").len() + Sealer::OVERHEAD;
    let id_token = id_token.map_or(0, |token| {
        1 + postcard::to_stdvec(&token).expect("encode").len() + Sealer::OVERHEAD
    });
    (record, id_token)
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<f64>()
                .ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index]
}

fn open_store(dir: &std::path::Path) -> TicketStore {
    let storage = StorageConfig {
        data_dir: dir.to_owned(),
        ticket_key_file: dir.join("ticket.key"),
        // The gateway's default page cache; BENCH_DB_CACHE_MIB tries another.
        db_cache_bytes: std::env::var("BENCH_DB_CACHE_MIB")
            .ok()
            .and_then(|value| value.parse::<usize>().ok())
            .unwrap_or(64)
            << 20,
        redis: None,
    };
    let cache = CachePolicy {
        capacity: NonZeroUsize::new(DEFAULT_CACHE).expect("non-zero"),
        sliding: Duration::from_secs(3_600),
        absolute: Duration::from_secs(3_600),
    };
    let policy = SessionPolicy {
        idle_timeout: Duration::from_secs(8 * 3_600),
        lifetime: Duration::from_secs(7 * 86_400),
        refresh_skew: Duration::from_secs(30),
    };
    open_data_dir(
        &storage,
        cache,
        policy,
        Arc::new(SystemClock),
        MissingKey::Create,
    )
    .expect("open")
    .0
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn main() {
    match std::env::var("BENCH_PHASE").as_deref() {
        Ok("measure") => measure(),
        _ => load(),
    }
}

/// Phase 1: fills the file, then measures in a fresh child process, so that the RSS reported
/// is that of a gateway serving an existing file, not of the bulk loader.
fn load() {
    let sessions: usize = std::env::var("BENCH_SESSIONS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(1_000_000);
    // BENCH_KEEP_DIR=path loads into that (empty) directory and keeps it, so that the measure
    // phase can be rerun or profiled on its own: BENCH_PHASE=measure BENCH_DIR=path.
    let kept = std::env::var_os("BENCH_KEEP_DIR").map(std::path::PathBuf::from);
    let temp = tempfile::tempdir().expect("temp dir");
    let dir_path = kept.unwrap_or_else(|| temp.path().to_owned());
    std::fs::create_dir_all(&dir_path).expect("bench dir");
    let store = open_store(&dir_path);
    let runtime = runtime();
    let now = unix_now();

    println!("loading {sessions} sessions in batches of {BATCH} ...");
    let sample = ticket(0, now);
    let (record, id_token_record) = sealed_sizes(&sample);
    println!(
        "  access token {} chars, ID token {} chars",
        sample.tokens.access_token.expose().len(),
        sample
            .tokens
            .id_token
            .as_ref()
            .map_or(0, |t| t.expose().len())
    );
    // Keep only the keys the measurements use.
    // Every tenth session: 20,000 of them for the sweep in id order, the rest in random order.
    let cold_count = 100_000.min(sessions);
    let step = (sessions / cold_count).max(1);
    let mut cold_keys: Vec<String> = Vec::with_capacity(cold_count);
    let mut hot: Vec<String> = Vec::with_capacity(DEFAULT_CACHE);
    let started = Instant::now();
    let mut sealed_bytes = 0usize;
    for start in (0..sessions).step_by(BATCH) {
        let end = (start + BATCH).min(sessions);
        let tickets: Vec<Ticket> = (start..end).map(|index| ticket(index, now)).collect();
        sealed_bytes += tickets
            .iter()
            .map(|t| {
                let (record, id_token) = sealed_sizes(t);
                record + id_token
            })
            .sum::<usize>();
        let keys = runtime
            .block_on(store.store_batch(tickets))
            .expect("store batch");
        for (offset, key) in keys.into_iter().enumerate() {
            let index = start + offset;
            if index < DEFAULT_CACHE {
                hot.push(key.encode());
            }
            if index % step == 0 && cold_keys.len() < cold_count {
                cold_keys.push(key.encode());
            }
        }
    }
    println!(
        "  loaded in {:.1} s; one sealed session record ≈ {record} B, its ID token {id_token_record} B",
        started.elapsed().as_secs_f64()
    );
    let mut db = store.into_db().expect("sole owner of the database");
    let (allocated, stored, fragmented) = db.space().expect("stats");
    println!(
        "  before compaction: file {:.0} MiB, allocated {:.0} MiB, stored {:.0} MiB, fragmented {:.0} MiB",
        std::fs::metadata(dir_path.join("sessions.redb"))
            .expect("file")
            .len() as f64
            / 1048576.0,
        allocated as f64 / 1048576.0,
        stored as f64 / 1048576.0,
        fragmented as f64 / 1048576.0
    );
    let started = Instant::now();
    db.compact().expect("compact");
    println!("  compacted in {:.1} s", started.elapsed().as_secs_f64());
    drop(db);
    std::fs::write(dir_path.join("cold.keys"), cold_keys.join("\n")).expect("keys");
    std::fs::write(dir_path.join("hot.keys"), hot.join("\n")).expect("keys");
    let file = std::fs::metadata(dir_path.join("sessions.redb"))
        .expect("file")
        .len() as f64;

    let status = std::process::Command::new(std::env::current_exe().expect("exe"))
        .env("BENCH_PHASE", "measure")
        .env("BENCH_DIR", &dir_path)
        .status()
        .expect("measure phase");
    assert!(status.success(), "measure phase failed");
    println!(
        "| file size / sealed ticket bytes ({sessions} sessions) | {:.0} MiB / {:.0} MiB = {:.2}× | ≤ 1.5× |",
        file / 1048576.0,
        sealed_bytes as f64 / 1048576.0,
        file / sealed_bytes as f64
    );
}

/// Fisher-Yates with a fixed-seed xorshift: the same order on every run.
fn shuffle<T>(items: &mut [T]) {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for index in (1..items.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let other = (state % (index as u64 + 1)) as usize;
        items.swap(index, other);
    }
}

fn read_keys(path: std::path::PathBuf) -> Vec<SessionKey> {
    std::fs::read_to_string(path)
        .expect("keys")
        .lines()
        .map(|line| SessionKey::parse(line).expect("key"))
        .collect()
}

/// Phase 2: a fresh process opens the file and measures what a serving gateway does.
fn measure() {
    let dir = std::path::PathBuf::from(std::env::var("BENCH_DIR").expect("BENCH_DIR"));
    let cold_keys = read_keys(dir.join("cold.keys"));
    let hot = read_keys(dir.join("hot.keys"));
    let store = open_store(&dir);
    let db = store.database().expect("the file");
    let runtime = runtime();
    let now = unix_now();
    println!("  RSS after opening: {:.0} MiB", rss_mib());

    // Cold retrieves (the session is not in the ticket cache), two ways. First a sweep in id
    // order over every fiftieth session, read twice (the database read alone, then the whole
    // retrieve: read, open, decode, cache): each pass touches more pages than redb's cache
    // holds, so the B-tree's branch pages are read again every time, LRU's worst case. Then
    // what a serving gateway sees: sessions in random order, timed after a warm-up of random
    // reads has brought redb's cache to its steady state, on keys not read before.
    let (sweep, mut random): (Vec<_>, Vec<_>) = cold_keys
        .into_iter()
        .enumerate()
        .partition(|(index, _)| index % 5 == 0);
    let sweep: Vec<SessionKey> = sweep.into_iter().map(|(_, key)| key).collect();
    shuffle(&mut random);
    let random: Vec<SessionKey> = random.into_iter().map(|(_, key)| key).collect();
    let (warm_up, measured) = random.split_at(random.len() / 2);
    let (raw_keys, retrieve_keys) = measured.split_at(measured.len() / 2);

    let raw_per_key = |keys: &[SessionKey]| {
        let started = Instant::now();
        for key in keys {
            assert!(db.get(key.id()).expect("get").is_some());
        }
        started.elapsed() / keys.len().max(1) as u32
    };
    let retrieve_per_key = |keys: &[SessionKey]| {
        let started = Instant::now();
        runtime.block_on(async {
            for key in keys {
                let session = store.retrieve(key, Activity::Peek).await.expect("retrieve");
                assert!(session.is_some());
            }
        });
        started.elapsed() / keys.len().max(1) as u32
    };
    let sweep_raw = raw_per_key(&sweep);
    let sweep_cold = retrieve_per_key(&sweep);
    retrieve_per_key(warm_up);
    let raw_read = raw_per_key(raw_keys);
    let cold = retrieve_per_key(retrieve_keys);
    println!("  RSS after cold reads: {:.0} MiB", rss_mib());
    // Fill the cache to its default capacity, then time hits on those keys.
    runtime.block_on(async {
        for key in &hot {
            store.retrieve(key, Activity::Peek).await.expect("warm");
        }
    });
    println!("  RSS after filling the cache: {:.0} MiB", rss_mib());
    let stats_before = store.cache_stats();
    let hit_rounds = 1_000_000;
    let started = Instant::now();
    runtime.block_on(async {
        for round in 0..hit_rounds {
            let key = &hot[round % hot.len()];
            let session = store.retrieve(key, Activity::Peek).await.expect("retrieve");
            assert!(session.is_some());
        }
    });
    let hit = started.elapsed() / hit_rounds as u32;
    let stats = store.cache_stats();
    assert_eq!(
        stats.hits - stats_before.hits,
        hit_rounds as u64,
        "all were cache hits"
    );

    // Logins: one durable commit each.
    let logins = 500;
    let mut latencies = Vec::with_capacity(logins);
    runtime.block_on(async {
        for index in 0..logins {
            let ticket = ticket(2_000_000 + index, now);
            let started = Instant::now();
            store.store(ticket).await.expect("store");
            latencies.push(started.elapsed());
        }
    });
    latencies.sort();

    // Decoding alone, without I/O or decryption: the part of a cold read that is this
    // crate's own work (postcard, and the stored JWS parts turned back into text). A cold read
    // decodes the session record, which leaves the ID token out.
    let mut session_part = ticket(0, now);
    session_part.tokens.id_token = None;
    let encoded = postcard::to_stdvec(&session_part).expect("encode");
    let decode_rounds: u32 = 200_000;
    let started = Instant::now();
    for _ in 0..decode_rounds {
        let decoded: Ticket = postcard::from_bytes(std::hint::black_box(&encoded)).expect("decode");
        std::hint::black_box(decoded);
    }
    let decode = started.elapsed() / decode_rounds;

    let rss = rss_mib();
    println!();
    println!("| measurement | result | target |");
    println!("|---|---|---|");
    println!(
        "| retrieve, cache hit | {:.2} µs | ≤ 1 µs |",
        hit.as_secs_f64() * 1e6
    );
    println!(
        "| retrieve, cold cache (redb), random order, {} keys | {:.2} µs | ≤ 10 µs |",
        retrieve_keys.len(),
        cold.as_secs_f64() * 1e6
    );
    println!(
        "| the redb read alone, random order, {} other keys | {:.2} µs | — |",
        raw_keys.len(),
        raw_read.as_secs_f64() * 1e6
    );
    println!(
        "| retrieve, cold cache, sweep in id order over {} keys (read alone) | {:.2} µs ({:.2} µs) | — |",
        sweep.len(),
        sweep_cold.as_secs_f64() * 1e6,
        sweep_raw.as_secs_f64() * 1e6
    );
    println!(
        "| decode one session record alone (no I/O, no decryption) | {:.2} µs | — |",
        decode.as_secs_f64() * 1e6
    );
    println!(
        "| store (login, durable commit) p50 / p99 | {:.2} / {:.2} ms | — |",
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3
    );
    println!("| RSS, all stored, cache full ({DEFAULT_CACHE}) | {rss:.0} MiB | ≤ 128 MiB |");
}

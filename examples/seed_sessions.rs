//! Fills a data directory with synthetic sessions and prints their cookie values, one per line,
//! for load tests that need many live sessions (bench/proxy.mjs: 10,000 sessions over 1,000
//! connections). The sessions are real records in the real store, sealed with the directory's
//! own ticket key, so a gateway started on the directory accepts the cookies. Their tokens are
//! random (valid for 24 h, no refresh token): only for upstreams that do not check them.
//!
//!   cargo run --release --example seed_sessions -- DATA_DIR COUNT > cookies.txt

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use oidc_bff::cache::CachePolicy;
use oidc_bff::clock::{Clock, SystemClock};
use oidc_bff::config::StorageConfig;
use oidc_bff::seal::random_bytes;
use oidc_bff::session::{AccessToken, Secret, SessionPolicy, Ticket, Tokens};
use oidc_bff::tickets::{MissingKey, open_data_dir};

fn token(payload: &serde_json::Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":"seed","typ":"JWT"}"#);
    format!(
        "{header}.{}.{}",
        URL_SAFE_NO_PAD.encode(payload.to_string()),
        URL_SAFE_NO_PAD.encode(random_bytes::<32>())
    )
}

fn ticket(index: usize, now: u64) -> Ticket {
    let subject = format!("load-user-{index}");
    let claims = serde_json::json!({
        "iss": "https://seed.invalid", "aud": "oidc-bff", "sub": subject,
        "iat": now, "exp": now + 86_400, "name": format!("Load User {index}"),
    });
    Ticket {
        tokens: Tokens {
            access_token: AccessToken::new(token(&claims)).expect("token"),
            access_expires_at: Some(now + 86_400),
            refresh_token: None,
            id_token: Some(Secret::new(token(&claims))),
            scope: Some("openid profile".into()),
        },
        subject,
        provider_sid: None,
        created_at: now,
        expires_at: now + 7 * 86_400,
        resource_tokens: Vec::new(),
        userinfo: None,
        principal: Default::default(),
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(count)) = (args.next(), args.next()) else {
        eprintln!("usage: seed_sessions DATA_DIR COUNT");
        std::process::exit(64);
    };
    let Ok(count) = count.parse::<usize>() else {
        eprintln!("seed_sessions: COUNT must be a number");
        std::process::exit(64);
    };
    let dir = std::path::PathBuf::from(dir);
    let storage = StorageConfig {
        ticket_key_file: dir.join("ticket.key"),
        data_dir: dir,
        db_cache_bytes: 64 << 20,
        redis: None,
    };
    let cache = CachePolicy {
        capacity: NonZeroUsize::MIN,
        sliding: Duration::from_secs(1),
        absolute: Duration::from_secs(1),
    };
    let policy = SessionPolicy {
        idle_timeout: Duration::from_secs(8 * 3_600),
        lifetime: Duration::from_secs(7 * 86_400),
        refresh_skew: Duration::from_secs(30),
    };
    let clock = Arc::new(SystemClock);
    let now = clock.unix_now();
    let (store, _) = open_data_dir(&storage, cache, policy, clock, MissingKey::Create)
        .expect("open the data dir");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let mut written = 0;
    while written < count {
        let batch: Vec<Ticket> = (written..count.min(written + 5_000))
            .map(|index| ticket(index, now))
            .collect();
        written += batch.len();
        let keys = runtime
            .block_on(store.store_batch(batch))
            .expect("store the sessions");
        for key in keys {
            println!("{}", key.encode());
        }
    }
}

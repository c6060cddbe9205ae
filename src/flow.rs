//! Pending logins, carried by the browser that started them in one sealed, short-lived cookie.
//!
//! The cookie binds the callback to that browser: a `state` replayed from another browser finds
//! no pending login there. It holds, per login, the state, nonce, PKCE verifier and return path,
//! sealed with AES-256-GCM under a key of its own. It is `SameSite=Lax` because the callback is
//! the end of a cross-site redirect chain, where a Strict cookie would not be sent.
//!
//! Abandoned logins (many tabs, back button) must not pile up: at most [`MAX_PENDING`] logins
//! are kept, each for [`FLOW_TTL`] seconds, and the cookie stays under [`MAX_COOKIE_BYTES`];
//! the oldest are dropped first.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use crate::seal::{Sealer, constant_time_eq, random_bytes};

/// How long a login may take, in seconds.
pub const FLOW_TTL: u64 = 600;
/// Most logins pending at once in one browser.
pub const MAX_PENDING: usize = 4;
/// Largest cookie value written, well under browsers' 4 KiB per cookie.
pub const MAX_COOKIE_BYTES: usize = 3_000;
/// Longest return path accepted.
pub const MAX_RETURN_PATH: usize = 1_024;

const AAD: &[u8] = b"oidc-bff login flow v1";

/// One login in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingLogin {
    /// The `state` sent to the provider.
    pub state: String,
    /// The `nonce` sent to the provider.
    pub nonce: String,
    /// The PKCE code verifier.
    pub pkce_verifier: String,
    /// Where to send the browser afterwards (a checked local path).
    pub return_path: String,
    /// When the login started.
    pub started_at: u64,
}

impl PendingLogin {
    /// A new login with fresh random state, nonce and verifier (256 bits each).
    pub fn start(return_path: String, now: u64) -> Self {
        let random = || URL_SAFE_NO_PAD.encode(random_bytes::<32>());
        Self {
            state: random(),
            nonce: random(),
            pkce_verifier: random(),
            return_path,
            started_at: now,
        }
    }

    /// The S256 PKCE challenge for this login's verifier.
    pub fn code_challenge(&self) -> String {
        let digest =
            aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, self.pkce_verifier.as_bytes());
        URL_SAFE_NO_PAD.encode(digest.as_ref())
    }
}

/// The pending logins of one browser.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PendingLogins(Vec<PendingLogin>);

impl PendingLogins {
    /// Reads the cookie values present (anything unreadable or expired is ignored).
    pub fn from_cookies<'a>(
        sealer: &Sealer,
        values: impl Iterator<Item = &'a str>,
        now: u64,
    ) -> Self {
        let mut logins = Vec::new();
        for value in values {
            let Ok(sealed) = URL_SAFE_NO_PAD.decode(value) else {
                continue;
            };
            let Ok(plain) = sealer.open(AAD, &sealed) else {
                continue;
            };
            if let Ok(decoded) = postcard::from_bytes::<Vec<PendingLogin>>(&plain) {
                logins.extend(decoded);
            }
        }
        logins.retain(|login| now < login.started_at.saturating_add(FLOW_TTL));
        logins.sort_by_key(|login| login.started_at);
        Self(logins)
    }

    /// Adds a login, dropping the oldest beyond the cap.
    pub fn push(&mut self, login: PendingLogin) {
        self.0.push(login);
        while self.0.len() > MAX_PENDING {
            self.0.remove(0);
        }
    }

    /// Removes and returns the login with this state (compared in constant time: the state is
    /// attacker-supplied).
    pub fn take(&mut self, state: &str) -> Option<PendingLogin> {
        let index = self
            .0
            .iter()
            .position(|login| constant_time_eq(login.state.as_bytes(), state.as_bytes()))?;
        Some(self.0.remove(index))
    }

    /// How many logins are pending.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none are pending.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The cookie value, or `None` when nothing is pending (delete the cookie). Drops the oldest
    /// logins until the value fits.
    pub fn to_cookie(&mut self, sealer: &Sealer) -> Option<String> {
        loop {
            if self.0.is_empty() {
                return None;
            }
            let plain = postcard::to_stdvec(&self.0)
                .expect("pending logins hold only strings and integers");
            let value = URL_SAFE_NO_PAD.encode(sealer.seal(AAD, &plain));
            if value.len() <= MAX_COOKIE_BYTES {
                return Some(value);
            }
            self.0.remove(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::MasterKey;

    fn sealer() -> Sealer {
        MasterKey::from_bytes([7; 32]).flow_sealer()
    }

    #[test]
    fn a_login_round_trips_through_the_cookie_and_is_taken_once() {
        let sealer = sealer();
        let login = PendingLogin::start("/orders".into(), 1_000);
        let mut logins = PendingLogins::default();
        logins.push(login.clone());
        let cookie = logins.to_cookie(&sealer).expect("cookie");
        let mut read = PendingLogins::from_cookies(&sealer, [cookie.as_str()].into_iter(), 1_100);
        assert_eq!(read.take(&login.state), Some(login.clone()));
        assert_eq!(read.take(&login.state), None);
        assert_eq!(read.to_cookie(&sealer), None);
    }

    #[test]
    fn expired_tampered_and_foreign_cookies_hold_no_login() {
        let sealer = sealer();
        let mut logins = PendingLogins::default();
        logins.push(PendingLogin::start("/".into(), 1_000));
        let cookie = logins.to_cookie(&sealer).expect("cookie");
        let expired = PendingLogins::from_cookies(&sealer, [cookie.as_str()].into_iter(), 1_600);
        assert!(expired.is_empty());
        let mut tampered = cookie.clone().into_bytes();
        tampered[10] = if tampered[10] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).expect("ascii");
        let read = PendingLogins::from_cookies(&sealer, [tampered.as_str()].into_iter(), 1_001);
        assert!(read.is_empty());
        let other = MasterKey::from_bytes([8; 32]).flow_sealer();
        assert!(
            PendingLogins::from_cookies(&other, [cookie.as_str()].into_iter(), 1_001).is_empty()
        );
    }

    #[test]
    fn abandoned_logins_do_not_pile_up() {
        let sealer = sealer();
        let mut cookie = None;
        let mut states = Vec::new();
        for second in 0..50 {
            let mut logins =
                PendingLogins::from_cookies(&sealer, cookie.as_deref().into_iter(), second);
            let login =
                PendingLogin::start(format!("/{}", "x".repeat(MAX_RETURN_PATH - 2)), second);
            states.push(login.state.clone());
            logins.push(login);
            cookie = logins.to_cookie(&sealer);
            assert!(cookie.as_ref().expect("cookie").len() <= MAX_COOKIE_BYTES);
        }
        let mut logins = PendingLogins::from_cookies(&sealer, cookie.as_deref().into_iter(), 50);
        assert!(logins.len() <= MAX_PENDING);
        assert!(
            logins.take(states.last().expect("state")).is_some(),
            "newest kept"
        );
        assert!(logins.take(&states[0]).is_none(), "oldest dropped");
    }

    #[test]
    fn pkce_challenge_is_s256_of_the_verifier() {
        // RFC 7636 appendix B example.
        let login = PendingLogin {
            state: String::new(),
            nonce: String::new(),
            pkce_verifier: "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk".into(),
            return_path: "/".into(),
            started_at: 0,
        };
        assert_eq!(
            login.code_challenge(),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}

//! Keys and sealing: the ticket key file, the keys derived from it, and AES-256-GCM sealing of
//! records and cookies.
//!
//! One 256-bit master key lives in a file (generated on first start with mode 0600). HKDF-SHA256
//! derives independent keys from it for each purpose, so a record sealed for the ticket table can
//! never be replayed as a login-flow cookie and the index keyer reveals nothing about either.
//! What is sealed, and where, is the business of the callers; this module only guarantees
//! confidentiality and integrity, bound to caller-chosen associated data.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::{hkdf, hmac, rand};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Length of the master key and of every derived key, in bytes.
pub const KEY_LEN: usize = 32;

/// Failure to load or create the key file.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// The file could not be read, created or written.
    #[error("--ticket-key-file {}: {}", path.display(), crate::describe::io_reason(error))]
    Io {
        /// The key file.
        path: PathBuf,
        /// What the operating system said (in the message, so not a source as well).
        error: io::Error,
    },
    /// The file exists but does not hold a 256-bit key.
    #[error(
        "--ticket-key-file {path}: expected 32 bytes of base64url (43 characters), found something else"
    )]
    Malformed {
        /// The key file.
        path: PathBuf,
    },
    /// Other users can read the file, so the key must be presumed leaked.
    #[error(
        "--ticket-key-file {path}: readable by group or others (mode {mode:o}); run chmod 600 on it"
    )]
    TooOpen {
        /// The key file.
        path: PathBuf,
        /// The file's permission bits.
        mode: u32,
    },
    /// The system random generator failed.
    #[error("the system random generator failed")]
    Random,
}

/// A sealed value could not be opened: tampered with, truncated, sealed under another key, or for
/// another purpose. Deliberately carries no detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("sealed data failed authentication")]
pub struct OpenError;

/// The 256-bit master key; never printed.
pub struct MasterKey([u8; KEY_LEN]);

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, KeyFileError> {
        let mut key = [0u8; KEY_LEN];
        rand::fill(&mut key).map_err(|_| KeyFileError::Random)?;
        Ok(Self(key))
    }

    /// A key from its raw bytes (tests and tools).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Reads the key at `path`, creating it (mode 0600, never overwriting) when it does not exist.
    pub fn load_or_create(path: &Path) -> Result<Self, KeyFileError> {
        match Self::load(path) {
            Err(KeyFileError::Io { error, .. }) if error.kind() == io::ErrorKind::NotFound => {
                let key = Self::generate()?;
                let io_error = |error| KeyFileError::Io {
                    path: path.to_owned(),
                    error,
                };
                // create_new: two processes starting at once must not each write a different key.
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(path)
                    .map_err(io_error)?;
                let mut text = URL_SAFE_NO_PAD.encode(key.0);
                text.push('\n');
                file.write_all(text.as_bytes()).map_err(io_error)?;
                file.sync_all().map_err(io_error)?;
                Ok(key)
            }
            other => other,
        }
    }

    /// Reads an existing key file: 43 characters of base64url, surrounding whitespace allowed.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let io_error = |error| KeyFileError::Io {
            path: path.to_owned(),
            error,
        };
        let mode = fs::metadata(path).map_err(io_error)?.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(KeyFileError::TooOpen {
                path: path.to_owned(),
                mode: mode & 0o777,
            });
        }
        let text = fs::read_to_string(path).map_err(io_error)?;
        let malformed = || KeyFileError::Malformed {
            path: path.to_owned(),
        };
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|_| malformed())?;
        let key: [u8; KEY_LEN] = bytes.try_into().map_err(|_| malformed())?;
        Ok(Self(key))
    }

    /// Derives the key for one purpose. Purposes are fixed labels, so keys never collide.
    fn derive(&self, purpose: Purpose) -> [u8; KEY_LEN] {
        let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"oidc-bff key derivation v1");
        let prk = salt.extract(&self.0);
        let info = [purpose.label()];
        let okm = prk
            .expand(&info, hkdf::HKDF_SHA256)
            .expect("HKDF-SHA256 can expand to 32 bytes, far below its 255*32 limit");
        let mut out = [0u8; KEY_LEN];
        okm.fill(&mut out)
            .expect("the output length equals the length requested from expand");
        out
    }

    /// The sealer for tickets stored in the database.
    pub fn ticket_sealer(&self) -> Sealer {
        Sealer::new(&self.derive(Purpose::Tickets))
    }

    /// The sealer for short-lived login-flow cookies.
    pub fn flow_sealer(&self) -> Sealer {
        Sealer::new(&self.derive(Purpose::LoginFlow))
    }

    /// The keyed hash that turns provider `sid`/`sub` values and logout ids into opaque bytes.
    pub fn keyer(&self) -> Keyer {
        Keyer(hmac::Key::new(
            hmac::HMAC_SHA256,
            &self.derive(Purpose::Indexes),
        ))
    }
}

#[derive(Clone, Copy)]
enum Purpose {
    Tickets,
    LoginFlow,
    Indexes,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::Tickets => b"tickets",
            Purpose::LoginFlow => b"login-flow",
            Purpose::Indexes => b"indexes",
        }
    }
}

/// AES-256-GCM with a random 96-bit nonce per message.
///
/// Layout of a sealed value: `nonce (12 bytes) || ciphertext || tag (16 bytes)`. Random nonces
/// are safe for well over the number of records one gateway seals under one key (NIST's bound is
/// 2^32 messages per key).
pub struct Sealer {
    key: LessSafeKey,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

impl Sealer {
    fn new(key: &[u8; KEY_LEN]) -> Self {
        let unbound =
            UnboundKey::new(&AES_256_GCM, key).expect("AES-256-GCM takes exactly 32-byte keys");
        Self {
            key: LessSafeKey::new(unbound),
        }
    }

    /// Bytes added to a plaintext by sealing.
    pub const OVERHEAD: usize = NONCE_LEN + 16;

    /// Encrypts and authenticates `plaintext`, binding it to `aad` (which is not stored).
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce).expect("the system random generator is available after start-up");
        let mut out = Vec::with_capacity(plaintext.len() + Self::OVERHEAD);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut out[NONCE_LEN..],
            )
            .expect("AES-GCM sealing only fails for inputs over 64 GiB");
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Like [`Sealer::open`], but decrypts where the value lies (no copy): the plaintext is
    /// the part of `sealed` returned. On failure `sealed` holds garbage.
    pub fn open_in_place<'a>(
        &self,
        aad: &[u8],
        sealed: &'a mut [u8],
    ) -> Result<&'a [u8], OpenError> {
        if sealed.len() < Self::OVERHEAD {
            return Err(OpenError);
        }
        let (nonce, body) = sealed.split_at_mut(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenError)?;
        let plaintext = self
            .key
            .open_in_place(nonce, Aad::from(aad), body)
            .map_err(|_| OpenError)?;
        Ok(plaintext)
    }

    /// Checks and decrypts a value made by [`Sealer::seal`] with the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < Self::OVERHEAD {
            return Err(OpenError);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| OpenError)?;
        let mut buffer = body.to_vec();
        let plaintext_len = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut buffer)
            .map_err(|_| OpenError)?
            .len();
        // The plaintext is the front of the buffer; drop the tag instead of copying.
        buffer.truncate(plaintext_len);
        Ok(buffer)
    }
}

/// HMAC-SHA256 under a derived key: opaque, stable identifiers for values that must not be
/// stored or shown in the clear.
#[derive(Clone)]
pub struct Keyer(hmac::Key);

impl fmt::Debug for Keyer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keyer(<redacted>)")
    }
}

impl Keyer {
    /// The keyed hash of `value` under a domain label, so equal values in different roles differ.
    pub fn hash(&self, domain: &str, value: &[u8]) -> [u8; 32] {
        let mut context = hmac::Context::with_key(&self.0);
        context.update(&(domain.len() as u64).to_be_bytes());
        context.update(domain.as_bytes());
        context.update(value);
        let tag = context.sign();
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }
}

/// Fills a buffer of `N` random bytes from the system generator.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    rand::fill(&mut out).expect("the system random generator is available after start-up");
    out
}

/// Compares two secrets in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a, b).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> MasterKey {
        MasterKey::from_bytes([byte; KEY_LEN])
    }

    #[test]
    fn sealed_values_open_only_with_the_same_key_purpose_and_aad() {
        let sealer = key(1).ticket_sealer();
        let sealed = sealer.seal(b"row-1", b"secret ticket");
        assert_eq!(
            sealer.open(b"row-1", &sealed).as_deref(),
            Ok(&b"secret ticket"[..])
        );
        assert_eq!(sealer.open(b"row-2", &sealed), Err(OpenError));
        let mut copy = sealed.clone();
        assert_eq!(
            sealer.open_in_place(b"row-1", &mut copy).ok(),
            sealer.open(b"row-1", &sealed).ok().as_deref()
        );
        let mut copy = sealed.clone();
        assert_eq!(sealer.open_in_place(b"row-2", &mut copy), Err(OpenError));
        assert_eq!(
            key(2).ticket_sealer().open(b"row-1", &sealed),
            Err(OpenError)
        );
        assert_eq!(key(1).flow_sealer().open(b"row-1", &sealed), Err(OpenError));
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let sealer = key(3).ticket_sealer();
        let sealed = sealer.seal(b"", b"payload");
        for index in 0..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[index] ^= 0x01;
            assert_eq!(sealer.open(b"", &tampered), Err(OpenError), "byte {index}");
        }
        assert_eq!(sealer.open(b"", &sealed[..5]), Err(OpenError));
    }

    #[test]
    fn key_file_is_created_private_and_read_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ticket.key");
        let created = MasterKey::load_or_create(&path).expect("create");
        let mode = fs::metadata(&path).expect("metadata").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let loaded = MasterKey::load_or_create(&path).expect("load");
        assert_eq!(created.0, loaded.0);
    }

    #[test]
    fn malformed_and_world_readable_key_files_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("bad.key");
        fs::write(&path, "not a key").expect("write");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(matches!(
            MasterKey::load(&path),
            Err(KeyFileError::Malformed { .. })
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            MasterKey::load(&path),
            Err(KeyFileError::TooOpen { .. })
        ));
    }

    #[test]
    fn keyer_separates_domains() {
        let keyer = key(4).keyer();
        assert_eq!(keyer.hash("sid", b"x"), keyer.hash("sid", b"x"));
        assert_ne!(keyer.hash("sid", b"x"), keyer.hash("sub", b"x"));
    }
}

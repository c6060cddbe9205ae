//! TLS for both directions: the server configuration browsers meet (TLS 1.2+, ALPN h2 and
//! http/1.1, certificate from files or a generated self-signed one) and the client configuration
//! for the provider and upstreams (system roots plus `--ca-file`).
//!
//! Both use rustls with the aws-lc-rs provider, whose default key exchange includes the
//! post-quantum hybrid X25519MLKEM768. Loading is synchronous and happens at start.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::sync::RwLocked;

/// A TLS setup problem, naming the file involved.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or parsed.
    #[error("{flag} {path}: {reason}")]
    Pem {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The certificate and the key do not belong together.
    #[error("--tls-cert and --tls-key do not belong together: {0}")]
    Mismatch(rustls::Error),
    /// rustls refused the certificate, key or settings.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The self-signed certificate could not be generated.
    #[error("generating the self-signed certificate: {0}")]
    SelfSigned(#[from] rcgen::Error),
    /// The system's trust store could not be read.
    #[error("reading the system's trusted certificates: {0}")]
    SystemRoots(io::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The provider for the server side: aws-lc-rs's default suites, AES-128-GCM with SHA-256 first.
///
/// Browsers already list that suite first. Clients that list AES-256-GCM with SHA-384 first
/// (OpenSSL's default: curl, wrk, most scripts) would otherwise cost a handshake that hashes
/// with SHA-384, which few CPUs accelerate (SHA-256 has SHA-NI and the ARMv8 extensions); on
/// this project's machine that was a fifth of a handshake's CPU time. Both suites give TLS's
/// 128-bit security level, and a suite a client does not offer is never chosen.
fn server_provider() -> Arc<CryptoProvider> {
    use rustls::crypto::aws_lc_rs::cipher_suite as suite;
    let preferred = [
        suite::TLS13_AES_128_GCM_SHA256,
        suite::TLS13_AES_256_GCM_SHA384,
        suite::TLS13_CHACHA20_POLY1305_SHA256,
        suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ];
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites = preferred.to_vec();
    Arc::new(provider)
}

/// The server certificate in use, for the start-up log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertificateSource {
    /// Loaded from files.
    Files,
    /// Generated at start for localhost; browsers will warn.
    SelfSigned,
}

/// The server certificate in use, swappable at runtime (SIGHUP) without dropping connections:
/// each new handshake reads the current one.
#[derive(Debug)]
pub struct ReloadableCert {
    current: std::sync::RwLock<Arc<CertifiedKey>>,
}

impl ReloadableCert {
    /// Starts with `key`.
    pub fn new(key: Arc<CertifiedKey>) -> Self {
        Self {
            current: std::sync::RwLock::new(key),
        }
    }

    /// Serves `key` to every later handshake.
    pub fn replace(&self, key: Arc<CertifiedKey>) {
        *self.current.write_locked() = key;
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.current.read_locked()))
    }
}

/// Loads (or generates) the server certificate and key, checking that they belong together.
pub fn certified_key(tls: &TlsConfig) -> Result<(Arc<CertifiedKey>, CertificateSource), TlsError> {
    let (chain, key, source) = match tls {
        TlsConfig::Files { cert, key } => (
            load_certificates("--tls-cert", cert)?,
            load_private_key("--tls-key", key)?,
            CertificateSource::Files,
        ),
        TlsConfig::SelfSigned => {
            let (chain, key) = self_signed_localhost()?;
            (chain, key, CertificateSource::SelfSigned)
        }
    };
    let certified =
        CertifiedKey::from_der(chain, key, &provider()).map_err(|error| match source {
            CertificateSource::Files => TlsError::Mismatch(error),
            CertificateSource::SelfSigned => TlsError::Rustls(error),
        })?;
    Ok((Arc::new(certified), source))
}

/// Builds the server configuration: TLS 1.2 and 1.3 only (rustls offers nothing older), the
/// suites of `server_provider` in its order, ALPN `h2` then `http/1.1`, the certificate from
/// `certificates`.
pub fn server_config(certificates: Arc<ReloadableCert>) -> Result<ServerConfig, TlsError> {
    let mut config = ServerConfig::builder_with_provider(server_provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certificates);
    config.ignore_client_order = true;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// A fresh self-signed certificate for `localhost`, `127.0.0.1` and `::1`.
pub fn self_signed_localhost()
-> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let names = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    let certified = rcgen::generate_simple_self_signed(names)?;
    let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
    Ok((vec![certified.cert.der().clone()], key.into()))
}

/// Builds the client configuration for outbound connections: the system's trusted roots plus
/// the certificates in `ca_file`, ALPN `h2` and `http/1.1`.
pub fn client_config(ca_file: Option<&Path>) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    // Unreadable individual system certificates are skipped, as every TLS client does.
    roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        for certificate in load_certificates("--ca-file", path)? {
            roots.add(certificate).map_err(|error| TlsError::Pem {
                flag: "--ca-file",
                path: path.to_owned(),
                reason: format!("not a usable CA certificate: {error}"),
            })?;
        }
    }
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// Reads every certificate in a PEM file (named by `flag`); at least one is required.
pub fn load_certificates(
    flag: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_error = |reason: String| TlsError::Pem {
        flag,
        path: path.to_owned(),
        reason,
    };
    let certificates = CertificateDer::pem_file_iter(path)
        .map_err(|error| pem_error(error.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| pem_error(error.to_string()))?;
    if certificates.is_empty() {
        return Err(pem_error(
            "no certificate in it (a PEM file with -----BEGIN CERTIFICATE----- blocks)".into(),
        ));
    }
    Ok(certificates)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file (named by `flag`).
pub fn load_private_key(
    flag: &'static str,
    path: &Path,
) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|error| TlsError::Pem {
        flag,
        path: path.to_owned(),
        reason: error.to_string(),
    })
}

/// Server certificate source.
#[derive(Debug, Clone)]
pub enum TlsConfig {
    /// Certificate and key files.
    Files {
        /// PEM certificate chain.
        cert: PathBuf,
        /// PEM private key.
        key: PathBuf,
    },
    /// A self-signed certificate generated at start.
    SelfSigned,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn self_signed_server_config_offers_h2_and_http11() {
        let (key, source) = certified_key(&TlsConfig::SelfSigned).expect("key");
        assert_eq!(source, CertificateSource::SelfSigned);
        let config = server_config(Arc::new(ReloadableCert::new(key))).expect("config");
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn missing_and_empty_pem_files_name_the_file() {
        let dir = tempfile::tempdir().expect("dir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").expect("write");
        let error = load_certificates("--tls-cert", &empty).expect_err("empty");
        assert!(error.to_string().starts_with("--tls-cert "), "{error}");
        assert!(error.to_string().contains("empty.pem"), "{error}");
        let error =
            load_private_key("--tls-key", &dir.path().join("absent.pem")).expect_err("absent");
        assert!(error.to_string().starts_with("--tls-key "), "{error}");
        assert!(error.to_string().contains("absent.pem"), "{error}");
    }

    #[test]
    fn ca_file_certificates_are_trusted() {
        let dir = tempfile::tempdir().expect("dir");
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, certified.cert.pem()).expect("write");
        client_config(Some(&path)).expect("client config with extra root");
    }

    /// Runs a TLS 1.3 handshake in memory between a client offering `suites` in that order and
    /// the gateway's server configuration (self-signed, which the client trusts), and returns
    /// the suite they agreed on.
    fn negotiated_suite(suites: &[rustls::SupportedCipherSuite]) -> rustls::CipherSuite {
        let (key, _) = certified_key(&TlsConfig::SelfSigned).expect("key");
        let mut roots = RootCertStore::empty();
        roots
            .add(key.cert[0].clone())
            .expect("trust the certificate");
        let server = server_config(Arc::new(ReloadableCert::new(key))).expect("config");
        let mut server = rustls::ServerConnection::new(Arc::new(server)).expect("server");
        let mut offered = rustls::crypto::aws_lc_rs::default_provider();
        offered.cipher_suites = suites.to_vec();
        let client = ClientConfig::builder_with_provider(Arc::new(offered))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
        let mut client = rustls::ClientConnection::new(Arc::new(client), name).expect("client");
        for _ in 0..10 {
            let mut bytes = Vec::new();
            client.write_tls(&mut bytes).expect("client writes");
            server
                .read_tls(&mut bytes.as_slice())
                .expect("server reads");
            server.process_new_packets().expect("server accepts");
            bytes.clear();
            server.write_tls(&mut bytes).expect("server writes");
            client
                .read_tls(&mut bytes.as_slice())
                .expect("client reads");
            client.process_new_packets().expect("client accepts");
            if !client.is_handshaking() && !server.is_handshaking() {
                break;
            }
        }
        assert!(!server.is_handshaking(), "the handshake did not finish");
        server.negotiated_cipher_suite().expect("suite").suite()
    }

    #[test]
    fn the_server_picks_aes_128_gcm_even_when_the_client_lists_aes_256_first() {
        use rustls::crypto::aws_lc_rs::cipher_suite as suite;
        // OpenSSL's (and so curl's and wrk's) default order.
        let openssl_order = [
            suite::TLS13_AES_256_GCM_SHA384,
            suite::TLS13_CHACHA20_POLY1305_SHA256,
            suite::TLS13_AES_128_GCM_SHA256,
        ];
        assert_eq!(
            negotiated_suite(&openssl_order),
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        );
        // A suite the client does not offer is never chosen.
        assert_eq!(
            negotiated_suite(&[suite::TLS13_CHACHA20_POLY1305_SHA256]),
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
        );
        assert_eq!(
            negotiated_suite(&[suite::TLS13_AES_256_GCM_SHA384]),
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384
        );
    }
}

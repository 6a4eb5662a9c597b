//! The cluster's own certificate authority, and mutual TLS for QUIC.
//!
//! Every node of a shoal cluster presents a certificate signed by the cluster
//! CA and rejects any peer without one, in both directions: the server
//! requires and verifies a client certificate, the client verifies the server
//! against the cluster CA only (never the system roots).
//!
//! # Files
//!
//! An operator's CA directory (written by [`ClusterCa::save`]):
//!
//! * `ca.crt` — the CA certificate (PEM), distributed to every node;
//! * `ca.key` — the CA private key (PKCS#8 PEM, mode 0600), kept by the operator;
//! * `ca.name` — the cluster name, one line of text.
//!
//! The cluster name is kept in `ca.name` because re-issuing from a loaded CA
//! needs the CA's distinguished name, and reading it back out of `ca.crt`
//! would need an X.509 parser. [`ClusterCa::load`] rebuilds the name from
//! `ca.name` and checks that it matches `ca.crt` byte for byte, and that
//! `ca.key` matches `ca.crt`'s public key, so a certificate issued by a loaded
//! CA always chains to the `ca.crt` that was saved.
//!
//! A node directory (written by [`NodeIdentity::save`]) holds `<name>.crt`,
//! `<name>.key` (mode 0600) and the cluster's `ca.crt`.
//!
//! Every file is written atomically: a temporary file in the same directory,
//! fsync, rename, then an fsync of the directory.
//!
//! # Certificates
//!
//! Keys are ECDSA P-256. The CA may sign end-entity certificates only (path
//! length 0). Node certificates carry the subject alternative name
//! [`SERVER_NAME`], the node name as common name, and are valid for both TLS
//! server and client authentication. All certificates are valid from one day
//! before issue (clock skew between nodes) until ten years after.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use quinn::crypto::rustls::{NoInitialCipherSuite, QuicClientConfig, QuicServerConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
};
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::{VerifierBuilderError, WebPkiClientVerifier};

#[cfg(test)]
mod tests;

/// Name every node certificate carries (SAN) and every client asks for (SNI).
pub const SERVER_NAME: &str = "shoal-node";

/// ALPN protocol both sides of a shoal QUIC connection require.
pub const ALPN: &[u8] = b"shoal/1";

/// File name of the cluster CA certificate, in CA and node directories alike.
pub const CA_CERT_FILE: &str = "ca.crt";

/// File name of the cluster CA private key, in the operator's CA directory.
pub const CA_KEY_FILE: &str = "ca.key";

/// File name of the cluster name, next to [`CA_KEY_FILE`].
pub const CA_NAME_FILE: &str = "ca.name";

/// Common name of every cluster CA; the cluster name is its organization.
const CA_COMMON_NAME: &str = "shoal cluster CA";

/// How long before issue a certificate becomes valid, to absorb clock skew.
const BACKDATE: Duration = Duration::from_secs(24 * 60 * 60);

/// How long after issue a certificate stays valid.
const VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// Longest cluster or node name (the X.509 upper bound for a common name).
const MAX_NAME_LEN: usize = 64;

/// Largest file [`read_file`] accepts; PEM files here are well under 4 KiB.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// Errors from creating, loading or using cluster certificates.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file or directory operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "reading" or "creating directory".
        action: &'static str,
        /// The file or directory concerned.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A file that must exist does not.
    #[error("{} is missing", path.display())]
    MissingFile {
        /// The missing file.
        path: PathBuf,
    },
    /// A file exists but its contents are unusable (truncated, corrupt, wrong kind).
    #[error("{} is corrupt: {reason}", path.display())]
    CorruptFile {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// Saving would replace an existing cluster CA.
    #[error("{} already exists; refusing to replace an existing cluster CA", path.display())]
    AlreadyExists {
        /// The file that already exists.
        path: PathBuf,
    },
    /// A private key does not belong to the certificate next to it.
    #[error("private key {} does not match certificate {}", key.display(), cert.display())]
    KeyMismatch {
        /// The key file.
        key: PathBuf,
        /// The certificate file.
        cert: PathBuf,
    },
    /// A file does not agree with the cluster CA certificate: a node certificate
    /// that does not verify against it, or a `ca.name` it was not issued for.
    #[error("{} does not agree with cluster CA {}: {reason}", path.display(), ca.display())]
    CaMismatch {
        /// The file that does not agree.
        path: PathBuf,
        /// The CA certificate file it was checked against.
        ca: PathBuf,
        /// Why it does not agree.
        reason: String,
    },
    /// A node identity is being saved next to the certificate of another cluster CA.
    #[error("{} holds a different cluster CA than this node identity's", path.display())]
    DifferentCa {
        /// The existing CA certificate file.
        path: PathBuf,
    },
    /// A cluster name, node name or file name is not acceptable.
    #[error("invalid {what} {name:?}: {reason}")]
    InvalidName {
        /// Which kind of name, e.g. "cluster name".
        what: &'static str,
        /// The name as given.
        name: String,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// Generating a key or certificate failed.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// rustls rejected a certificate, key or configuration.
    #[error("TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client certificate verifier could not be built.
    #[error("building the client certificate verifier failed: {0}")]
    Verifier(#[from] VerifierBuilderError),
    /// quinn refused the TLS configuration (no QUIC-capable cipher suite).
    #[error("QUIC rejected the TLS configuration: {0}")]
    Quic(#[from] NoInitialCipherSuite),
}

/// The cluster's certificate authority: generated once (`shoal cluster init`),
/// its key kept by the operator.
pub struct ClusterCa {
    cluster_name: String,
    /// The parameters the CA certificate was made from; their distinguished
    /// name, key usages and key identifier method make the issuer of node
    /// certificates.
    params: CertificateParams,
    key: KeyPair,
    cert: CertificateDer<'static>,
    cert_pem: String,
}

impl ClusterCa {
    /// Generates a new CA (fresh ECDSA P-256 key, self-signed certificate) for
    /// the cluster `cluster_name`: 1 to 64 ASCII letters, digits, `-`, `_` or `.`.
    pub fn generate(cluster_name: &str) -> Result<Self, TlsError> {
        validate_name("cluster name", cluster_name)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let params = ca_params(cluster_name);
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cluster_name: cluster_name.to_owned(),
            params,
            key,
            cert_pem: cert.pem(),
            cert: cert.der().clone(),
        })
    }

    /// Writes `ca.crt`, `ca.key` (PEM) and `ca.name` into `dir` (created if
    /// missing); the key file gets mode 0600 on unix; each file is written
    /// atomically (temp file in the same dir, fsync, rename). Refuses to
    /// overwrite an existing `ca.key` or `ca.crt` ([`TlsError::AlreadyExists`]),
    /// so a CA is never replaced by accident.
    pub fn save(&self, dir: &Path) -> Result<(), TlsError> {
        create_dir(dir)?;
        let key_path = dir.join(CA_KEY_FILE);
        let cert_path = dir.join(CA_CERT_FILE);
        for path in [&key_path, &cert_path] {
            if exists(path)? {
                return Err(TlsError::AlreadyExists { path: path.clone() });
            }
        }
        // Key first and without clobbering: if two saves race, one fails here
        // before writing anything else.
        write_atomic(
            &key_path,
            self.key.serialize_pem().as_bytes(),
            Mode::Private,
            Replace::No,
        )?;
        let name_line = format!("{}\n", self.cluster_name);
        write_atomic(
            &dir.join(CA_NAME_FILE),
            name_line.as_bytes(),
            Mode::Public,
            Replace::Yes,
        )?;
        write_atomic(
            &cert_path,
            self.cert_pem.as_bytes(),
            Mode::Public,
            Replace::No,
        )
    }

    /// Loads a CA saved by [`ClusterCa::save`] from `dir`. A missing,
    /// truncated or corrupt file gives an error naming the file, as does a
    /// `ca.key` or `ca.name` that does not belong to `ca.crt`.
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        let cert_path = dir.join(CA_CERT_FILE);
        let key_path = dir.join(CA_KEY_FILE);
        let name_path = dir.join(CA_NAME_FILE);

        let (cert, cert_pem) = read_cert(&cert_path)?;
        let trusted_subject = subject_of(&cert).map_err(|e| corrupt(&cert_path, e))?;

        let key_bytes = read_file(&key_path)?;
        let pkcs8 = PrivatePkcs8KeyDer::from_pem_slice(&key_bytes)
            .map_err(|e| corrupt(&key_path, pem_reason(&e, "PRIVATE KEY")))?;
        let key = KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &PKCS_ECDSA_P256_SHA256)
            .map_err(|e| corrupt(&key_path, format!("not an ECDSA P-256 key: {e}")))?;
        check_key_matches(&cert, &cert_path, PrivateKeyDer::Pkcs8(pkcs8), &key_path)?;

        let name_bytes = read_file(&name_path)?;
        let cluster_name = std::str::from_utf8(&name_bytes)
            .map_err(|_| corrupt(&name_path, "not UTF-8 text"))?
            .trim_end_matches(['\n', '\r']);
        validate_name("cluster name", cluster_name).map_err(|e| corrupt(&name_path, e))?;

        // Node certificates name their issuer by the distinguished name rebuilt
        // here; it must be exactly the subject of the saved ca.crt.
        let params = ca_params(cluster_name);
        let rebuilt = params.self_signed(&key)?;
        let rebuilt_subject = subject_of(rebuilt.der())?;
        if rebuilt_subject != trusted_subject {
            return Err(TlsError::CaMismatch {
                path: name_path,
                ca: cert_path,
                reason: format!("the CA certificate was not made for cluster {cluster_name:?}"),
            });
        }

        Ok(Self {
            cluster_name: cluster_name.to_owned(),
            params,
            key,
            cert,
            cert_pem,
        })
    }

    /// Issues a node certificate (SAN = [`SERVER_NAME`], CN = `node_name`,
    /// usable for both TLS server and client auth) with a fresh key, signed by
    /// this CA. `node_name` follows the same rules as a cluster name.
    pub fn issue(&self, node_name: &str) -> Result<NodeIdentity, TlsError> {
        validate_name("node name", node_name)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;

        let mut params = CertificateParams::new(vec![SERVER_NAME.to_owned()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, self.cluster_name.as_str());
        dn.push(DnType::CommonName, node_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params);

        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(NodeIdentity {
            cert: cert.der().clone(),
            cert_pem: cert.pem(),
            key: Arc::new(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                key.serialize_der(),
            ))),
            key_pem: Arc::from(key.serialize_pem()),
            ca_cert: self.cert.clone(),
            ca_pem: self.cert_pem.clone(),
        })
    }

    /// The CA certificate, PEM encoded (the contents of `ca.crt`).
    pub fn cert_pem(&self) -> String {
        self.cert_pem.clone()
    }

    /// The cluster name the CA was generated for.
    pub fn cluster_name(&self) -> &str {
        &self.cluster_name
    }
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("cluster_name", &self.cluster_name)
            .finish_non_exhaustive()
    }
}

/// A node's certificate, key and the cluster CA it trusts.
#[derive(Clone)]
pub struct NodeIdentity {
    cert: CertificateDer<'static>,
    cert_pem: String,
    key: Arc<PrivateKeyDer<'static>>,
    key_pem: Arc<str>,
    ca_cert: CertificateDer<'static>,
    ca_pem: String,
}

impl NodeIdentity {
    /// Writes `<name>.crt` and `<name>.key` (mode 0600 on unix) into `dir`
    /// (created if missing), each atomically, replacing earlier ones. `ca.crt`
    /// is written too if missing; if present it must be this identity's CA
    /// ([`TlsError::DifferentCa`] otherwise). `name` is a file stem: the rules
    /// of a node name, not starting with `.`, and not `ca`.
    pub fn save(&self, dir: &Path, name: &str) -> Result<(), TlsError> {
        validate_file_stem(name)?;
        create_dir(dir)?;
        let ca_path = dir.join(CA_CERT_FILE);
        if exists(&ca_path)? {
            let (existing, _) = read_cert(&ca_path)?;
            if existing != self.ca_cert {
                return Err(TlsError::DifferentCa { path: ca_path });
            }
        } else {
            write_atomic(&ca_path, self.ca_pem.as_bytes(), Mode::Public, Replace::Yes)?;
        }
        let key_path = dir.join(format!("{name}.key"));
        write_atomic(
            &key_path,
            self.key_pem.as_bytes(),
            Mode::Private,
            Replace::Yes,
        )?;
        let cert_path = dir.join(format!("{name}.crt"));
        write_atomic(
            &cert_path,
            self.cert_pem.as_bytes(),
            Mode::Public,
            Replace::Yes,
        )
    }

    /// Loads `<name>.crt`, `<name>.key` and `ca.crt` from `dir`. Besides
    /// missing, truncated or corrupt files (errors name the file), rejects a key
    /// that does not match the certificate and a certificate that does not
    /// verify against `ca.crt` (wrong CA, expired, not a node certificate).
    pub fn load(dir: &Path, name: &str) -> Result<Self, TlsError> {
        validate_file_stem(name)?;
        let cert_path = dir.join(format!("{name}.crt"));
        let key_path = dir.join(format!("{name}.key"));
        let ca_path = dir.join(CA_CERT_FILE);

        let (cert, cert_pem) = read_cert(&cert_path)?;
        let key_bytes = read_file(&key_path)?;
        let key = PrivateKeyDer::from_pem_slice(&key_bytes)
            .map_err(|e| corrupt(&key_path, pem_reason(&e, "PRIVATE KEY")))?;
        let key_pem =
            String::from_utf8(key_bytes).map_err(|_| corrupt(&key_path, "not UTF-8 text"))?;
        let (ca_cert, ca_pem) = read_cert(&ca_path)?;

        check_key_matches(&cert, &cert_path, key.clone_key(), &key_path)?;
        let roots = root_store(&ca_cert).map_err(|e| corrupt(&ca_path, e))?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).build()?;
        let server_name = ServerName::try_from(SERVER_NAME)
            .map_err(|e| rustls::Error::General(format!("server name {SERVER_NAME:?}: {e}")))?;
        verifier
            .verify_server_cert(&cert, &[], &server_name, &[], UnixTime::now())
            .map_err(|e| TlsError::CaMismatch {
                path: cert_path,
                ca: ca_path,
                reason: e.to_string(),
            })?;

        Ok(Self {
            cert,
            cert_pem,
            key: Arc::new(key),
            key_pem: Arc::from(key_pem),
            ca_cert,
            ca_pem,
        })
    }

    /// QUIC server config: presents this node's certificate, requires and
    /// verifies a client certificate chained to the cluster CA; TLS 1.3 only,
    /// ALPN [`ALPN`]. Transport settings are quinn's defaults.
    pub fn server_config(&self) -> Result<quinn::ServerConfig, TlsError> {
        let provider = provider();
        let roots = Arc::new(root_store(&self.ca_cert)?);
        let verifier =
            WebPkiClientVerifier::builder_with_provider(roots, provider.clone()).build()?;
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = QuicServerConfig::try_from(tls)?;
        Ok(quinn::ServerConfig::with_crypto(Arc::new(quic)))
    }

    /// QUIC client config: presents this node's certificate (client auth),
    /// verifies the server against the cluster CA only (not system roots);
    /// TLS 1.3 only, ALPN [`ALPN`]. Connect with server name [`SERVER_NAME`]:
    /// `endpoint.connect_with(config, addr, SERVER_NAME)`.
    pub fn client_config(&self) -> Result<quinn::ClientConfig, TlsError> {
        let provider = provider();
        let roots = Arc::new(root_store(&self.ca_cert)?);
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![self.cert.clone()], self.key.clone_key())?;
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = QuicClientConfig::try_from(tls)?;
        Ok(quinn::ClientConfig::new(Arc::new(quic)))
    }
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeIdentity").finish_non_exhaustive()
    }
}

/// The crypto provider of every config built here: ring, explicitly, never a
/// process-wide default.
fn provider() -> Arc<CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    // AES-128-GCM first: as safe for this use and 10 AES rounds instead of 14,
    // which shows at the rates QUIC streams tensors.
    provider
        .cipher_suites
        .sort_by_key(|suite| suite.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(provider)
}

/// Certificate parameters of the CA of `cluster_name`. Only the distinguished
/// name, key usages and key identifier method are needed to issue, and they
/// are deterministic: [`ClusterCa::load`] rebuilds them from the name.
fn ca_params(cluster_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, cluster_name);
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params);
    params
}

fn set_validity(params: &mut CertificateParams) {
    let now = SystemTime::now();
    params.not_before = now.checked_sub(BACKDATE).unwrap_or(now).into();
    params.not_after = now.checked_add(VALIDITY).unwrap_or(now).into();
}

/// A trust store holding just `ca`.
fn root_store(ca: &CertificateDer<'_>) -> Result<RootCertStore, rustls::Error> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone().into_owned())?;
    Ok(roots)
}

/// The encoded subject name of `cert`, as path building compares it.
fn subject_of(cert: &CertificateDer<'_>) -> Result<Vec<u8>, rustls::Error> {
    let roots = root_store(cert)?;
    roots
        .roots
        .first()
        .map(|anchor| anchor.subject.as_ref().to_vec())
        .ok_or_else(|| rustls::Error::General("certificate not added to trust store".into()))
}

/// Checks that `key` is the private key of `cert`.
fn check_key_matches(
    cert: &CertificateDer<'static>,
    cert_path: &Path,
    key: PrivateKeyDer<'static>,
    key_path: &Path,
) -> Result<(), TlsError> {
    let signing_key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| corrupt(key_path, e))?;
    match rustls::sign::CertifiedKey::new(vec![cert.clone()], signing_key).keys_match() {
        Ok(()) => Ok(()),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::KeyMismatch {
                key: key_path.to_owned(),
                cert: cert_path.to_owned(),
            })
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(()),
        Err(e) => Err(corrupt(cert_path, e)),
    }
}

/// Reads a PEM certificate file: the first certificate, and the file's text.
fn read_cert(path: &Path) -> Result<(CertificateDer<'static>, String), TlsError> {
    let bytes = read_file(path)?;
    let cert = CertificateDer::from_pem_slice(&bytes)
        .map_err(|e| corrupt(path, pem_reason(&e, "CERTIFICATE")))?;
    let text = String::from_utf8(bytes).map_err(|_| corrupt(path, "not UTF-8 text"))?;
    Ok((cert, text))
}

fn pem_reason(err: &pem::Error, label: &str) -> String {
    match err {
        pem::Error::NoItemsFound => format!("no PEM {label} section found"),
        pem::Error::MissingSectionEnd { .. } => "PEM section has no end marker (truncated?)".into(),
        other => format!("invalid PEM: {other}"),
    }
}

fn corrupt(path: &Path, reason: impl fmt::Display) -> TlsError {
    TlsError::CorruptFile {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn io_error(action: &'static str, path: &Path, source: io::Error) -> TlsError {
    TlsError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}

/// Reads a whole (small) file; a missing file is [`TlsError::MissingFile`].
fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    let file = match fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(TlsError::MissingFile {
                path: path.to_owned(),
            });
        }
        Err(e) => return Err(io_error("opening", path, e)),
    };
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error("reading", path, e))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(corrupt(path, format!("larger than {MAX_FILE_BYTES} bytes")));
    }
    Ok(bytes)
}

fn exists(path: &Path) -> Result<bool, TlsError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error("checking", path, e)),
    }
}

fn create_dir(dir: &Path) -> Result<(), TlsError> {
    fs::create_dir_all(dir).map_err(|e| io_error("creating directory", dir, e))
}

/// Permissions of a written file.
#[derive(Clone, Copy)]
enum Mode {
    /// Readable by the owner only (0600 on unix).
    Private,
    /// The process default (0666 less the umask on unix).
    Public,
}

/// Whether a write may replace an existing file.
#[derive(Clone, Copy, PartialEq)]
enum Replace {
    Yes,
    No,
}

/// Writes `contents` to `path` atomically: a temporary file in the same
/// directory, fsync, rename (or, with [`Replace::No`], a hard link that fails
/// if `path` exists), then fsync of the directory.
fn write_atomic(
    path: &Path,
    contents: &[u8],
    mode: Mode,
    replace: Replace,
) -> Result<(), TlsError> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(
        ".{file_name}.tmp-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));

    let result = write_then_place(&tmp, path, contents, mode, replace);
    // After a rename there is nothing left at `tmp`; after a hard link or a
    // failure there is, and it must go.
    let _ = fs::remove_file(&tmp);
    result?;
    #[cfg(unix)]
    if let Ok(dir) = fs::File::open(dir) {
        // Makes the rename durable; some filesystems refuse, which is harmless.
        let _ = dir.sync_all();
    }
    Ok(())
}

fn write_then_place(
    tmp: &Path,
    path: &Path,
    contents: &[u8],
    mode: Mode,
    replace: Replace,
) -> Result<(), TlsError> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if let Mode::Private = mode {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(tmp)
        .map_err(|e| io_error("creating", tmp, e))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .map_err(|e| io_error("writing", tmp, e))?;
    drop(file);

    if replace == Replace::Yes {
        return fs::rename(tmp, path).map_err(|e| io_error("renaming into", path, e));
    }
    match fs::hard_link(tmp, path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(TlsError::AlreadyExists {
            path: path.to_owned(),
        }),
        // Filesystems without hard links: check, then rename.
        Err(_) => {
            if exists(path)? {
                return Err(TlsError::AlreadyExists {
                    path: path.to_owned(),
                });
            }
            fs::rename(tmp, path).map_err(|e| io_error("renaming into", path, e))
        }
    }
}

/// Cluster and node names: 1 to 64 ASCII letters, digits, `-`, `_` or `.`.
fn validate_name(what: &'static str, name: &str) -> Result<(), TlsError> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > MAX_NAME_LEN {
        "longer than 64 characters"
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        "only ASCII letters, digits, '-', '_' and '.' are allowed"
    } else {
        return Ok(());
    };
    Err(TlsError::InvalidName {
        what,
        name: name.to_owned(),
        reason,
    })
}

/// File stems of node identities: a valid name, not hidden, not the CA's.
fn validate_file_stem(name: &str) -> Result<(), TlsError> {
    const WHAT: &str = "identity file name";
    validate_name(WHAT, name)?;
    let reason = if name.starts_with('.') {
        "must not start with '.'"
    } else if name == "ca" {
        "\"ca\" is reserved for the cluster CA's files"
    } else {
        return Ok(());
    };
    Err(TlsError::InvalidName {
        what: WHAT,
        name: name.to_owned(),
        reason,
    })
}

//! TLS on both sides: the client-facing listener (TLS or mTLS, modes
//! `off`/`optional`/`required`) and the gateway's own client identity
//! towards upstreams, with SPIFFE checks in both directions.
//!
//! Chain, expiry (to the second) and CRLs are checked by webpki; on top the
//! gateway checks the SPIFFE ID and its trust domain, and a deny list of
//! fingerprints and serials that can change at run time. A rejected
//! certificate fails the handshake and is logged with its reason.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{
    CertificateDer, CertificateRevocationListDer, PrivateKeyDer, ServerName, UnixTime,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use serde::Deserialize;
use thiserror::Error;

use crate::spiffe::{self, SpiffeId};

/// A TLS setup that could not be built; names the file or setting.
/// Why a client certificate that chains to a trusted CA was refused anyway
/// (trust domain, SPIFFE ID, deny list), carried inside the TLS error so
/// the refusal can be audited with its reason.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CertRefused(pub String);

#[derive(Debug, Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: String,
        /// What was wrong.
        why: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_err(path: &Path, why: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

/// How the client-facing listener uses TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain HTTP; allowed on loopback listeners only.
    #[default]
    Off,
    /// TLS; a client certificate is verified when presented.
    Optional,
    /// TLS; every client must present a valid certificate.
    Required,
}

/// The process-wide crypto provider (ring), so every config agrees.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "no certificate in file"));
    }
    Ok(certs)
}

/// Reads a private key from a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_err(path, e))
}

/// Builds a root store from PEM bundles.
pub fn load_roots(paths: &[PathBuf]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for p in paths {
        for c in load_certs(p)? {
            roots.add(c).map_err(|e| file_err(p, e))?;
        }
    }
    if roots.is_empty() {
        return Err(TlsError::Config("no trust anchors configured".into()));
    }
    Ok(roots)
}

/// Reads every CRL in PEM files (for a client-certificate verifier).
pub fn load_crls(
    paths: &[PathBuf],
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let mut out = Vec::new();
    for p in paths {
        let crls: Vec<_> = CertificateRevocationListDer::pem_file_iter(p)
            .map_err(|e| file_err(p, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| file_err(p, e))?;
        out.extend(crls);
    }
    Ok(out)
}

/// Certificates refused by fingerprint (SHA-256, hex) or serial (hex),
/// changeable at run time (file reload, admin API).
#[derive(Debug, Default)]
pub struct DenyList {
    entries: RwLock<HashSet<String>>,
}

fn normalize(entry: &str) -> String {
    entry
        .trim()
        .trim_start_matches("sha256:")
        .trim_start_matches("serial:")
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase()
        .trim_start_matches('0')
        .to_owned()
}

impl DenyList {
    /// Parses a deny-list file: one fingerprint or serial per line, `#` comments.
    pub fn parse(text: &str) -> HashSet<String> {
        text.lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .filter(|l| !l.is_empty())
            .map(normalize)
            .collect()
    }

    /// Replaces the whole list (file reload).
    pub fn replace(&self, entries: HashSet<String>) {
        *self.entries.write().unwrap_or_else(|e| e.into_inner()) = entries;
    }

    /// Adds one entry (admin API).
    pub fn add(&self, entry: &str) {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(normalize(entry));
    }

    /// Whether a certificate with this fingerprint or serial is refused.
    pub fn denies(&self, fingerprint: &str, serial: &str) -> bool {
        let e = self.entries.read().unwrap_or_else(|e| e.into_inner());
        e.contains(&normalize(fingerprint)) || e.contains(&normalize(serial))
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the gateway knows about a client from its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    /// The SPIFFE ID in the URI SAN.
    pub spiffe_id: Option<SpiffeId>,
    /// SHA-256 of the DER certificate, hex.
    pub fingerprint: String,
    /// Serial number, hex.
    pub serial: String,
    /// Expiry, unix seconds.
    pub not_after: i64,
}

impl PeerCert {
    /// Reads the identity facts of a DER certificate.
    pub fn from_der(der: &[u8]) -> Result<PeerCert, String> {
        let spiffe_id = spiffe::SpiffeId::from_cert_der(der).map_err(|e| e.to_string())?;
        let (_, not_after) = spiffe::validity(der).map_err(|e| e.to_string())?;
        Ok(PeerCert {
            spiffe_id,
            fingerprint: spiffe::fingerprint_sha256(der),
            serial: spiffe::serial_hex(der).map_err(|e| e.to_string())?,
            not_after,
        })
    }

    /// Whether the certificate has expired at `now` (unix seconds).
    pub fn expired_at(&self, now: i64) -> bool {
        now > self.not_after
    }
}

/// Unix time now, in seconds.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Client certificate checks beyond the chain: SPIFFE ID, trust domain,
/// deny list.
#[derive(Debug)]
pub struct ClientPolicy {
    /// Trust domains whose SPIFFE IDs are accepted (empty: any).
    pub trust_domains: Vec<String>,
    /// Whether a certificate must carry a SPIFFE ID.
    pub require_spiffe: bool,
    /// Refused certificates.
    pub deny: Arc<DenyList>,
}

impl ClientPolicy {
    /// Checks a verified client certificate; `Err` names the reason.
    pub fn check(&self, peer: &PeerCert) -> Result<(), String> {
        if self.deny.denies(&peer.fingerprint, &peer.serial) {
            return Err(format!("certificate {} is revoked", peer.fingerprint));
        }
        match &peer.spiffe_id {
            None if self.require_spiffe => Err("certificate carries no SPIFFE ID".into()),
            None => Ok(()),
            Some(id) => {
                if self.trust_domains.is_empty()
                    || self.trust_domains.iter().any(|t| t == id.trust_domain())
                {
                    Ok(())
                } else {
                    Err(format!(
                        "trust domain {:?} is not allowed",
                        id.trust_domain()
                    ))
                }
            }
        }
    }
}

#[derive(Debug)]
struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    policy: Arc<ClientPolicy>,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let peer = PeerCert::from_der(end_entity);
        let fp = peer
            .as_ref()
            .map(|p| p.fingerprint.clone())
            .unwrap_or_default();
        if let Err(e) = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)
        {
            tracing::warn!(fingerprint = %fp, reason = %e, "client certificate rejected");
            return Err(e);
        }
        let peer = peer.map_err(|e| {
            tracing::warn!(reason = %e, "client certificate rejected: unreadable");
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
        })?;
        if let Err(why) = self.policy.check(&peer) {
            tracing::warn!(fingerprint = %peer.fingerprint, spiffe_id = ?peer.spiffe_id.as_ref().map(|s| s.to_string()), reason = %why, "client certificate rejected");
            let err = if why.contains("revoked") {
                rustls::CertificateError::Revoked
            } else {
                // The reason and the presented ID travel in the error, so the
                // listener can audit the refusal (the alert becomes
                // certificate_unknown instead of access_denied).
                let presented = peer
                    .spiffe_id
                    .as_ref()
                    .map_or_else(|| "no SPIFFE ID".to_owned(), |s| s.to_string());
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(CertRefused(format!(
                    "{why} (presented {presented}, fingerprint {})",
                    peer.fingerprint
                )))))
            };
            return Err(rustls::Error::InvalidCertificate(err));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Files and rules for the client-facing TLS listener.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// `optional` or `required` (`off` builds no config).
    pub mode: TlsMode,
    /// The gateway's certificate chain (PEM).
    pub cert: PathBuf,
    /// The gateway's private key (PEM).
    pub key: PathBuf,
    /// Trust bundles for client certificates.
    pub client_ca: Vec<PathBuf>,
    /// CRL files (PEM).
    pub crl: Vec<PathBuf>,
}

/// The client-certificate verifier of the listener: webpki (chain,
/// expiry, CRLs) plus the gateway's SPIFFE, trust-domain and deny-list
/// checks. `None` when no client trust bundle is configured.
pub fn client_verifier(
    t: &ServerTls,
    policy: Arc<ClientPolicy>,
) -> Result<Option<Arc<dyn ClientCertVerifier>>, TlsError> {
    if t.client_ca.is_empty() {
        if t.mode == TlsMode::Required {
            return Err(TlsError::Config(
                "tls.mode = \"required\" needs tls.client_ca".into(),
            ));
        }
        return Ok(None);
    }
    let roots = Arc::new(load_roots(&t.client_ca)?);
    client_verifier_from_roots(roots, load_crls(&t.crl)?, t.mode, policy).map(Some)
}

/// The same verifier as [`client_verifier`] over trust anchors already in
/// memory (e.g. a SPIFFE bundle from the Workload API), so roots that
/// rotate get exactly the file-based checks.
pub fn client_verifier_from_roots(
    roots: Arc<RootCertStore>,
    crls: Vec<CertificateRevocationListDer<'static>>,
    mode: TlsMode,
    policy: Arc<ClientPolicy>,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut vb = WebPkiClientVerifier::builder_with_provider(roots, provider())
        .with_crls(crls)
        .allow_unknown_revocation_status();
    if mode != TlsMode::Required {
        vb = vb.allow_unauthenticated();
    }
    let inner = vb.build().map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(Arc::new(SpiffeClientVerifier { inner, policy }))
}

/// Builds the listener's rustls config.
pub fn server_config(
    t: &ServerTls,
    policy: Arc<ClientPolicy>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = load_certs(&t.cert)?;
    let key = load_key(&t.key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut cfg = match client_verifier(t, policy)? {
        None => builder.with_no_client_auth().with_single_cert(certs, key),
        Some(v) => builder
            .with_client_cert_verifier(v)
            .with_single_cert(certs, key),
    }
    .map_err(|e| TlsError::Config(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// An upstream's certificate checked by chain to `roots` and by its SPIFFE
/// ID (instead of a host name); shared by file and Workload API trust.
pub(crate) fn verify_upstream_cert(
    roots: &RootCertStore,
    expected: &SpiffeId,
    provider: &CryptoProvider,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
) -> Result<ServerCertVerified, rustls::Error> {
    let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        roots,
        intermediates,
        now,
        provider.signature_verification_algorithms.all,
    )?;
    let got = spiffe::SpiffeId::from_cert_der(end_entity.as_ref())
        .ok()
        .flatten();
    if got.as_ref() != Some(expected) {
        tracing::warn!(expected = %expected, got = ?got.map(|g| g.to_string()), "upstream presented the wrong SPIFFE ID");
        return Err(rustls::Error::InvalidCertificate(
            rustls::CertificateError::ApplicationVerificationFailure,
        ));
    }
    Ok(ServerCertVerified::assertion())
}

/// Verifies an upstream by chain and SPIFFE ID (instead of host name).
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    expected: SpiffeId,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        verify_upstream_cert(
            &self.roots,
            &self.expected,
            &self.provider,
            end_entity,
            intermediates,
            now,
        )
    }

    signatures_by_provider!();
}

/// How the gateway connects to one upstream over TLS.
#[derive(Debug, Clone, Default)]
pub struct UpstreamTls {
    /// Trust bundle for the upstream's certificate (empty: none configured).
    pub ca: Vec<PathBuf>,
    /// The gateway's client certificate (mTLS), with `key`.
    pub cert: Option<PathBuf>,
    /// The gateway's client key.
    pub key: Option<PathBuf>,
    /// The SPIFFE ID the upstream must present (replaces host-name checks).
    pub spiffe_id: Option<SpiffeId>,
}

/// Builds the rustls client config for one upstream.
pub fn client_config(t: &UpstreamTls) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = provider();
    let roots = Arc::new(load_roots(&t.ca)?);
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &t.spiffe_id {
        Some(id) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier {
                roots,
                expected: id.clone(),
                provider,
            })),
        None => builder.with_root_certificates((*roots).clone()),
    };
    let mut cfg = match (&t.cert, &t.key) {
        (Some(c), Some(k)) => builder
            .with_client_auth_cert(load_certs(c)?, load_key(k)?)
            .map_err(|e| TlsError::Config(e.to_string()))?,
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(TlsError::Config(
                "upstream tls: set both cert and key, or neither".into(),
            ))
        }
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{IssueRequest, LocalCa};
    use std::time::Duration;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn crl_and_policy_refuse_certificates() {
        let dir = std::env::temp_dir().join(format!("pc-crl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = LocalCa::generate("test CA").unwrap();
        let id = |p: &str| Some(SpiffeId::parse(&format!("spiffe://example.org/{p}")).unwrap());
        let good = ca.issue(&IssueRequest::new(id("agent/good"))).unwrap();
        let bad = ca.issue(&IssueRequest::new(id("agent/stolen"))).unwrap();
        let evil = LocalCa::generate("test CA")
            .unwrap()
            .issue(&IssueRequest::new(id("agent/x")))
            .unwrap();
        let crl = ca
            .crl(
                std::slice::from_ref(&bad.info.serial),
                Duration::from_secs(3600),
            )
            .unwrap();
        let t = ServerTls {
            mode: TlsMode::Required,
            cert: PathBuf::new(),
            key: PathBuf::new(),
            client_ca: vec![write(&dir, "ca.pem", ca.cert_pem())],
            crl: vec![write(&dir, "crl.pem", &crl)],
        };
        let deny = Arc::new(DenyList::default());
        let policy = Arc::new(ClientPolicy {
            trust_domains: vec!["example.org".into()],
            require_spiffe: true,
            deny: deny.clone(),
        });
        let v = client_verifier(&t, policy).unwrap().unwrap();
        let der = |pem: &str| CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let now = UnixTime::now();
        assert!(v.verify_client_cert(&der(&good.cert_pem), &[], now).is_ok());
        let e = v
            .verify_client_cert(&der(&bad.cert_pem), &[], now)
            .unwrap_err();
        assert!(e.to_string().to_lowercase().contains("revoked"), "{e}");
        assert!(
            v.verify_client_cert(&der(&evil.cert_pem), &[], now)
                .is_err(),
            "another CA"
        );
        deny.add(&good.info.fingerprint);
        assert!(
            v.verify_client_cert(&der(&good.cert_pem), &[], now)
                .is_err(),
            "deny list"
        );
        assert!(v.client_auth_mandatory());
    }

    #[test]
    fn deny_list_normalizes() {
        let d = DenyList::default();
        d.replace(DenyList::parse(
            "# revoked\nAB:CD:01 # laptop\n\nsha256:00ff\n",
        ));
        assert!(d.denies("abcd01", "x"));
        assert!(d.denies("nope", "0FF"));
        assert!(!d.denies("abcd02", "1"));
        d.add("serial:7f");
        assert!(d.denies("", "7F"));
        assert_eq!(d.len(), 3);
    }
}

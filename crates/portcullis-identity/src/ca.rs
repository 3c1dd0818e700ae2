//! A local certificate authority for the embedded default and small teams:
//! one self-signed ECDSA P-256 CA that issues short-lived X.509-SVIDs
//! (leaf certificates carrying a SPIFFE ID) for agents, servers and the
//! gateway itself.
//!
//! On disk a CA is a folder with `ca.pem` (certificate) and `ca.key`
//! (PKCS#8 private key, mode 0600). An issued certificate is a folder with
//! `cert.pem`, `key.pem` (0600) and `ca.pem` (the bundle to trust).

use std::fmt;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};
use ring::rand::SecureRandom;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::der_parser::asn1_rs::Tag;
use x509_parser::extensions::ParsedExtension;
use x509_parser::oid_registry::OID_X509_EXT_SUBJECT_KEY_IDENTIFIER;

use crate::spiffe::{self, CertError, SpiffeId};

/// File name of the CA certificate inside a CA folder.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key inside a CA folder.
pub const CA_KEY_FILE: &str = "ca.key";
/// File name of an issued leaf certificate inside its output folder.
pub const LEAF_CERT_FILE: &str = "cert.pem";
/// File name of an issued leaf private key inside its output folder.
pub const LEAF_KEY_FILE: &str = "key.pem";
/// File name of the CA bundle copied next to an issued certificate.
pub const BUNDLE_FILE: &str = "ca.pem";

/// Default leaf lifetime: short-lived certificates are the norm.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Default backdating of `notBefore`, so peers with slightly slow clocks accept a fresh cert.
pub const DEFAULT_NOT_BEFORE_SKEW: Duration = Duration::from_secs(60);
/// Lifetime of a CA made by [`init`] / [`LocalCa::generate`] (ten years).
pub const CA_LIFETIME: Duration = Duration::from_secs(3650 * 24 * 3600);

/// What went wrong creating, loading or using a CA; names the file or field.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file or folder operation failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was attempted, e.g. "write".
        action: &'static str,
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `init` without `force` found an existing CA file.
    #[error("{} already exists; refusing to overwrite a CA (use --force to replace it)", path.display())]
    Exists {
        /// The file that exists.
        path: PathBuf,
    },
    /// Key or certificate generation failed.
    #[error("cannot generate {what}: {source}")]
    Generate {
        /// What was being generated.
        what: &'static str,
        /// The rcgen error.
        source: rcgen::Error,
    },
    /// The CA certificate is unreadable or unusable.
    #[error("CA certificate {origin}: {reason}")]
    BadCaCert {
        /// Where it came from (a path, or "in memory").
        origin: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The CA key is unreadable or does not match the certificate.
    #[error("CA key {origin}: {reason}")]
    BadCaKey {
        /// Where it came from (a path, or "in memory").
        origin: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The issue request cannot be satisfied.
    #[error("certificate request: {0}")]
    Request(String),
    /// A TTL string could not be parsed.
    #[error("invalid TTL {input:?}: {reason}")]
    Ttl {
        /// The input.
        input: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// The system CSPRNG failed.
    #[error("the system random number generator failed")]
    Random,
    /// A generated certificate could not be read back.
    #[error(transparent)]
    Cert(#[from] CertError),
}

/// Where [`init`] wrote the CA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaPaths {
    /// The CA folder.
    pub dir: PathBuf,
    /// `dir/ca.pem`: the certificate to distribute as the trust bundle.
    pub cert: PathBuf,
    /// `dir/ca.key`: the private key (mode 0600).
    pub key: PathBuf,
}

impl CaPaths {
    /// The file locations of the CA in `dir`, whether or not they exist.
    pub fn in_dir(dir: &Path) -> Self {
        CaPaths {
            dir: dir.to_path_buf(),
            cert: dir.join(CA_CERT_FILE),
            key: dir.join(CA_KEY_FILE),
        }
    }
}

/// What to put in a leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueRequest {
    /// The workload identity (URI SAN); must have a path.
    pub spiffe_id: Option<SpiffeId>,
    /// DNS SANs, for servers reached by name.
    pub dns: Vec<String>,
    /// IP SANs, for servers reached by address.
    pub ips: Vec<IpAddr>,
    /// Lifetime from now.
    pub ttl: Duration,
    /// How far `notBefore` is backdated.
    pub not_before_skew: Duration,
    /// Explicit `(not_before, not_after)` in unix seconds, overriding
    /// `ttl` and `not_before_skew`: for tests needing expired or
    /// not-yet-valid certificates.
    pub validity: Option<(i64, i64)>,
}

impl IssueRequest {
    /// A request for `spiffe_id` with the default TTL and skew, no DNS/IP SANs.
    pub fn new(spiffe_id: Option<SpiffeId>) -> Self {
        IssueRequest {
            spiffe_id,
            dns: Vec::new(),
            ips: Vec::new(),
            ttl: DEFAULT_TTL,
            not_before_skew: DEFAULT_NOT_BEFORE_SKEW,
            validity: None,
        }
    }
}

/// Facts about an issued certificate, for printing and deny lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The SPIFFE ID in the URI SAN, if any.
    pub spiffe_id: Option<SpiffeId>,
    /// Serial number, lowercase hex (see [`spiffe::serial_hex`]).
    pub serial: String,
    /// SHA-256 fingerprint of the DER, lowercase hex.
    pub fingerprint: String,
    /// `notBefore`, unix seconds.
    pub not_before: i64,
    /// `notAfter`, unix seconds.
    pub not_after: i64,
}

/// An issued certificate as PEM strings (nothing written to disk).
#[derive(Clone)]
pub struct IssuedPem {
    /// The leaf certificate.
    pub cert_pem: String,
    /// The leaf's PKCS#8 private key.
    pub key_pem: String,
    /// The issuing CA's certificate (the bundle peers trust).
    pub ca_pem: String,
    /// The leaf certificate, DER.
    pub cert_der: Vec<u8>,
    /// Facts about the leaf.
    pub info: CertInfo,
}

impl fmt::Debug for IssuedPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedPem")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// Where [`issue`] wrote a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedPaths {
    /// `out/cert.pem`.
    pub cert: PathBuf,
    /// `out/key.pem` (mode 0600).
    pub key: PathBuf,
    /// `out/ca.pem`: copy of the CA certificate.
    pub ca: PathBuf,
    /// Facts about the leaf.
    pub info: CertInfo,
}

/// A loaded CA that can sign leaf certificates.
pub struct LocalCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    cert_der: Vec<u8>,
    key_pem: String,
    subject_raw: Vec<u8>,
    not_after: i64,
}

impl fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCa")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl LocalCa {
    /// Creates a fresh CA in memory (ECDSA P-256, ten years, path length 0).
    pub fn generate(common_name: &str) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| {
            CaError::Generate {
                what: "CA key",
                source,
            }
        })?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Portcullis");
        dn.push(DnType::CommonName, common_name);
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.serial_number = Some(random_serial()?);
        let now = now_unix();
        let skew = secs(DEFAULT_NOT_BEFORE_SKEW, "CA skew")?;
        let life = secs(CA_LIFETIME, "CA lifetime")?;
        params.not_before = odt(now.saturating_sub(skew))?;
        params.not_after = odt(now.saturating_add(life))?;
        let cert = params
            .self_signed(&key)
            .map_err(|source| CaError::Generate {
                what: "CA certificate",
                source,
            })?;
        let cert_pem = cert.pem();
        let key_pem = key.serialize_pem();
        Self::from_pem_inner(&cert_pem, &key_pem, "in memory", "in memory")
    }

    /// Loads `dir/ca.pem` and `dir/ca.key`.
    pub fn load(dir: &Path) -> Result<Self, CaError> {
        let paths = CaPaths::in_dir(dir);
        let cert_pem = read_string(&paths.cert)?;
        let key_pem = read_string(&paths.key)?;
        Self::from_pem_inner(
            &cert_pem,
            &key_pem,
            &paths.cert.display().to_string(),
            &paths.key.display().to_string(),
        )
    }

    /// Builds a CA from its certificate and PKCS#8 key in PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        Self::from_pem_inner(cert_pem, key_pem, "in memory", "in memory")
    }

    fn from_pem_inner(
        cert_pem: &str,
        key_pem: &str,
        cert_origin: &str,
        key_origin: &str,
    ) -> Result<Self, CaError> {
        let bad_cert = |reason: String| CaError::BadCaCert {
            origin: cert_origin.to_owned(),
            reason,
        };
        let bad_key = |reason: String| CaError::BadCaKey {
            origin: key_origin.to_owned(),
            reason,
        };
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| bad_cert(format!("no PEM certificate: {e}")))?;
        let cert = spiffe::parse_cert(der.as_ref()).map_err(|e| bad_cert(e.to_string()))?;
        if !cert.is_ca() {
            return Err(bad_cert(
                "is not a CA certificate (basicConstraints cA)".into(),
            ));
        }
        let key = KeyPair::from_pem(key_pem).map_err(|e| bad_key(e.to_string()))?;
        if rcgen::PublicKeyData::subject_public_key_info(&key) != cert.public_key().raw {
            return Err(bad_key("does not match the CA certificate".into()));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = rebuild_name(cert.subject()).map_err(bad_cert)?;
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ski = cert
            .get_extension_unique(&OID_X509_EXT_SUBJECT_KEY_IDENTIFIER)
            .map_err(|e| bad_cert(format!("subjectKeyIdentifier: {e}")))?;
        params.key_identifier_method = match ski.map(|e| e.parsed_extension()) {
            Some(ParsedExtension::SubjectKeyIdentifier(k)) => {
                KeyIdMethod::PreSpecified(k.0.to_vec())
            }
            _ => KeyIdMethod::Sha256,
        };
        let subject_raw = cert.subject().as_raw().to_vec();
        let not_after = cert.validity().not_after.timestamp();
        Ok(LocalCa {
            issuer: Issuer::new(params, key),
            cert_pem: cert_pem.to_owned(),
            cert_der: der.as_ref().to_vec(),
            key_pem: key_pem.to_owned(),
            subject_raw,
            not_after,
        })
    }

    /// The CA certificate in PEM: the trust bundle to hand to peers.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate in DER, for building root stores.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA private key in PEM, for persisting a generated CA.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Signs a CRL (PEM) revoking the certificates with these serials (hex,
    /// as `cert issue` prints them), valid for `valid_for` from now.
    pub fn crl(&self, revoked_serials: &[String], valid_for: Duration) -> Result<String, CaError> {
        let now = now_unix();
        let gen = |source| CaError::Generate {
            what: "CRL",
            source,
        };
        let mut revoked = Vec::new();
        for s in revoked_serials {
            let bytes = hex::decode(s.trim_start_matches("0x")).map_err(|_| CaError::Generate {
                what: "CRL serial",
                source: rcgen::Error::InvalidAsn1String(rcgen::InvalidAsn1String::PrintableString(
                    s.clone(),
                )),
            })?;
            revoked.push(rcgen::RevokedCertParams {
                serial_number: rcgen::SerialNumber::from_slice(&bytes),
                revocation_time: odt(now.saturating_sub(1))?,
                reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                invalidity_date: None,
            });
        }
        let params = rcgen::CertificateRevocationListParams {
            this_update: odt(now.saturating_sub(60))?,
            next_update: odt(now.saturating_add(secs(valid_for, "CRL lifetime")?))?,
            crl_number: random_serial()?,
            issuing_distribution_point: None,
            revoked_certs: revoked,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.issuer).map_err(gen)?;
        crl.pem().map_err(gen)
    }

    /// Issues a leaf X.509-SVID (serverAuth + clientAuth) for `req`.
    pub fn issue(&self, req: &IssueRequest) -> Result<IssuedPem, CaError> {
        let params = self.leaf_params(req)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|source| {
            CaError::Generate {
                what: "leaf key",
                source,
            }
        })?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| CaError::Generate {
                what: "leaf certificate",
                source,
            })?;
        let cert_der = cert.der().to_vec();
        let parsed = spiffe::parse_cert(&cert_der)?;
        if parsed.issuer().as_raw() != self.subject_raw.as_slice() {
            return Err(CaError::BadCaCert {
                origin: "subject".into(),
                reason: "cannot be reproduced exactly as the leaf's issuer name".into(),
            });
        }
        let v = parsed.validity();
        let info = CertInfo {
            spiffe_id: req.spiffe_id.clone(),
            serial: spiffe::serial_hex_of(&parsed),
            fingerprint: spiffe::fingerprint_sha256(&cert_der),
            not_before: v.not_before.timestamp(),
            not_after: v.not_after.timestamp(),
        };
        Ok(IssuedPem {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            ca_pem: self.cert_pem.clone(),
            cert_der,
            info,
        })
    }

    fn leaf_params(&self, req: &IssueRequest) -> Result<CertificateParams, CaError> {
        let bad = |m: String| CaError::Request(m);
        let mut sans = Vec::new();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Portcullis");
        if let Some(id) = &req.spiffe_id {
            if id.is_trust_domain_id() {
                return Err(bad(format!(
                    "SPIFFE ID {id} has no path; a leaf certificate's SPIFFE ID needs one"
                )));
            }
            let s = id.to_string();
            sans.push(SanType::URI(
                s.as_str()
                    .try_into()
                    .map_err(|e| bad(format!("SPIFFE ID {s}: {e}")))?,
            ));
            if s.len() <= 64 {
                dn.push(DnType::CommonName, s);
            }
        }
        for d in &req.dns {
            let ok = !d.is_empty()
                && d.len() <= 253
                && d.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'*' | b'_'));
            if !ok {
                return Err(bad(format!("DNS name {d:?} is not a valid host name")));
            }
            sans.push(SanType::DnsName(
                d.as_str()
                    .try_into()
                    .map_err(|e| bad(format!("DNS name {d:?}: {e}")))?,
            ));
            if dn.get(&DnType::CommonName).is_none() && d.len() <= 64 {
                dn.push(DnType::CommonName, d.as_str());
            }
        }
        sans.extend(req.ips.iter().map(|ip| SanType::IpAddress(*ip)));
        if sans.is_empty() {
            return Err(bad(
                "nothing to certify: give a SPIFFE ID, a DNS name or an IP".into(),
            ));
        }
        let (not_before, not_after) = match req.validity {
            Some(w) => w,
            None => {
                let now = now_unix();
                let ttl = secs(req.ttl, "ttl")?;
                if ttl == 0 {
                    return Err(bad("ttl must be positive".into()));
                }
                let skew = secs(req.not_before_skew, "not_before_skew")?;
                let not_after = now.saturating_add(ttl);
                if not_after > self.not_after {
                    return Err(bad(format!(
                        "ttl would outlive the CA (CA expires {})",
                        format_unix(self.not_after)
                    )));
                }
                (now.saturating_sub(skew), not_after)
            }
        };
        if not_after <= not_before {
            return Err(bad("notAfter must be later than notBefore".into()));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial()?);
        params.not_before = odt(not_before)?;
        params.not_after = odt(not_after)?;
        Ok(params)
    }
}

/// Creates a new CA in `dir` (`ca.pem`, `ca.key` with mode 0600).
///
/// Refuses to replace an existing CA file unless `force`.
pub fn init(dir: &Path, force: bool) -> Result<CaPaths, CaError> {
    let paths = CaPaths::in_dir(dir);
    if !force {
        for p in [&paths.cert, &paths.key] {
            if p.symlink_metadata().is_ok() {
                return Err(CaError::Exists { path: p.clone() });
            }
        }
    }
    create_private_dir(dir)?;
    let mut id = [0u8; 4];
    ring::rand::SystemRandom::new()
        .fill(&mut id)
        .map_err(|_| CaError::Random)?;
    let ca = LocalCa::generate(&format!("Portcullis local CA {}", hex::encode(id)))?;
    write_atomic(&paths.key, ca.key_pem().as_bytes(), 0o600)?;
    write_atomic(&paths.cert, ca.cert_pem().as_bytes(), 0o644)?;
    Ok(paths)
}

/// Issues a leaf from the CA in `ca_dir` into `out_dir` (`cert.pem`,
/// `key.pem` with mode 0600, `ca.pem`); existing files there are replaced.
pub fn issue(ca_dir: &Path, req: &IssueRequest, out_dir: &Path) -> Result<IssuedPaths, CaError> {
    let ca = LocalCa::load(ca_dir)?;
    let issued = ca.issue(req)?;
    create_private_dir(out_dir)?;
    let paths = IssuedPaths {
        cert: out_dir.join(LEAF_CERT_FILE),
        key: out_dir.join(LEAF_KEY_FILE),
        ca: out_dir.join(BUNDLE_FILE),
        info: issued.info.clone(),
    };
    write_atomic(&paths.key, issued.key_pem.as_bytes(), 0o600)?;
    write_atomic(&paths.cert, issued.cert_pem.as_bytes(), 0o644)?;
    write_atomic(&paths.ca, issued.ca_pem.as_bytes(), 0o644)?;
    Ok(paths)
}

/// Issues a leaf from an in-memory CA, returning PEM strings (no files).
pub fn issue_in_memory(ca: &LocalCa, req: &IssueRequest) -> Result<IssuedPem, CaError> {
    ca.issue(req)
}

/// Parses a TTL such as `90s`, `30m`, `24h` or `7d` (a positive whole number
/// and one unit).
pub fn parse_ttl(s: &str) -> Result<Duration, CaError> {
    let bad = |reason| CaError::Ttl {
        input: s.to_owned(),
        reason,
    };
    let t = s.trim();
    let Some(unit) = t.chars().last() else {
        return Err(bad("empty"));
    };
    let mult: u64 = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86400,
        _ => return Err(bad("expected a number followed by s, m, h or d")),
    };
    let digits = t.get(..t.len() - 1).unwrap_or("");
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("expected a number followed by s, m, h or d"));
    }
    let n: u64 = digits.parse().map_err(|_| bad("number too large"))?;
    if n == 0 {
        return Err(bad("must be positive"));
    }
    let total = n.checked_mul(mult).ok_or(bad("number too large"))?;
    if total > secs_u64(CA_LIFETIME) {
        return Err(bad("longer than ten years"));
    }
    Ok(Duration::from_secs(total))
}

/// Formats unix seconds as RFC 3339 UTC (e.g. `2025-01-02T03:04:05Z`) for messages.
pub fn format_unix(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("@{secs}"))
}

fn secs_u64(d: Duration) -> u64 {
    d.as_secs()
}

fn secs(d: Duration, what: &str) -> Result<i64, CaError> {
    i64::try_from(d.as_secs()).map_err(|_| CaError::Request(format!("{what} is too large")))
}

fn now_unix() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

fn odt(secs: i64) -> Result<OffsetDateTime, CaError> {
    OffsetDateTime::from_unix_timestamp(secs)
        .map_err(|_| CaError::Request(format!("time {secs} is out of range")))
}

/// A positive 128-bit random serial (RFC 5280: ≤ 20 octets, unpredictable).
fn random_serial() -> Result<SerialNumber, CaError> {
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| CaError::Random)?;
    if b.iter().all(|x| *x == 0) {
        return Err(CaError::Random);
    }
    Ok(SerialNumber::from_slice(&b))
}

/// Rebuilds a certificate name for rcgen so a leaf's issuer field matches
/// the CA's subject byte for byte (checked after signing).
fn rebuild_name(name: &x509_parser::x509::X509Name<'_>) -> Result<DistinguishedName, String> {
    let mut dn = DistinguishedName::new();
    for rdn in name.iter() {
        let mut attrs = rdn.iter();
        let (Some(attr), None) = (attrs.next(), attrs.next()) else {
            return Err("subject has a multi-valued or empty RDN".into());
        };
        let oid: Vec<u64> = attr
            .attr_type()
            .iter()
            .ok_or("subject has an attribute OID out of range")?
            .collect();
        let ty = DnType::CustomDnType(oid);
        if dn.get(&ty).is_some() {
            return Err("subject repeats an attribute type".into());
        }
        let v = attr.attr_value();
        let text = || std::str::from_utf8(v.data).map_err(|_| "subject attribute is not text");
        let value = match v.header.tag() {
            Tag::Utf8String => DnValue::Utf8String(text()?.to_owned()),
            Tag::PrintableString => DnValue::PrintableString(
                text()?
                    .try_into()
                    .map_err(|e| format!("subject PrintableString: {e}"))?,
            ),
            Tag::Ia5String => DnValue::Ia5String(
                text()?
                    .try_into()
                    .map_err(|e| format!("subject IA5String: {e}"))?,
            ),
            t => return Err(format!("subject uses unsupported string type {t}")),
        };
        dn.push(ty, value);
    }
    Ok(dn)
}

fn read_string(path: &Path) -> Result<String, CaError> {
    std::fs::read_to_string(path).map_err(|source| CaError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })
}

/// Creates `dir` (and parents); a folder this creates is private (0700).
fn create_private_dir(dir: &Path) -> Result<(), CaError> {
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        b.mode(0o700);
    }
    b.create(dir).map_err(|source| CaError::Io {
        action: "create folder",
        path: dir.to_path_buf(),
        source,
    })
}

/// Writes `bytes` to `path` via a fresh temporary file created with `mode`
/// and renamed into place, so a key is never readable with a wider mode,
/// even when replacing an older file, and a crash leaves no half file.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CaError> {
    let io = |action, source| CaError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut rnd = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut rnd)
        .map_err(|_| CaError::Random)?;
    let tmp = dir.join(format!(".{name}.{}.tmp", hex::encode(rnd)));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let result = (|| {
        let mut f = opts.open(&tmp).map_err(|e| io("create", e))?;
        f.write_all(bytes).map_err(|e| io("write", e))?;
        f.sync_all().map_err(|e| io("sync", e))?;
        std::fs::rename(&tmp, path).map_err(|e| io("replace", e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use rustls::pki_types::UnixTime;
    use rustls::server::danger::ClientCertVerifier;
    use rustls::server::WebPkiClientVerifier;
    use rustls::RootCertStore;
    use x509_parser::extensions::GeneralName;

    fn tempdir(tag: &str) -> PathBuf {
        let mut r = [0u8; 8];
        ring::rand::SystemRandom::new().fill(&mut r).unwrap();
        let d = std::env::temp_dir().join(format!("portcullis-ca-{tag}-{}", hex::encode(r)));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    fn verifier(ca_pem: &str) -> Arc<dyn ClientCertVerifier> {
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap()
    }

    fn verify(ca_pem: &str, leaf_pem: &str, at: i64) -> Result<(), rustls::Error> {
        let leaf = CertificateDer::from_pem_slice(leaf_pem.as_bytes()).unwrap();
        let now = UnixTime::since_unix_epoch(Duration::from_secs(u64::try_from(at).unwrap()));
        verifier(ca_pem)
            .verify_client_cert(&leaf, &[], now)
            .map(|_| ())
    }

    #[cfg(unix)]
    fn mode(p: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn init_and_issue_on_disk() {
        let root = tempdir("disk");
        let ca_dir = root.join("ca");
        let ca = init(&ca_dir, false).unwrap();
        assert_eq!(ca.cert, ca_dir.join("ca.pem"));
        assert_eq!(ca.key, ca_dir.join("ca.key"));
        #[cfg(unix)]
        {
            assert_eq!(mode(&ca.key), 0o600);
            assert_eq!(mode(&ca_dir), 0o700);
        }
        // Refuses to overwrite, then replaces with force (a different CA).
        let before = std::fs::read(&ca.cert).unwrap();
        assert!(matches!(init(&ca_dir, false), Err(CaError::Exists { .. })));
        assert_eq!(std::fs::read(&ca.cert).unwrap(), before);
        init(&ca_dir, true).unwrap();
        assert_ne!(std::fs::read(&ca.cert).unwrap(), before);
        #[cfg(unix)]
        assert_eq!(mode(&ca.key), 0o600);

        let mut req = IssueRequest::new(Some(id("spiffe://example.org/agent/alice")));
        req.dns = vec!["agent.example.org".into()];
        req.ips = vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
        req.ttl = Duration::from_secs(3600);
        let out = root.join("out");
        let issued = issue(&ca_dir, &req, &out).unwrap();
        assert_eq!(issued.cert, out.join("cert.pem"));
        assert_eq!(issued.key, out.join("key.pem"));
        assert_eq!(issued.ca, out.join("ca.pem"));
        #[cfg(unix)]
        assert_eq!(mode(&issued.key), 0o600);
        assert_eq!(
            std::fs::read(&issued.ca).unwrap(),
            std::fs::read(&ca.cert).unwrap()
        );

        let leaf_pem = std::fs::read_to_string(&issued.cert).unwrap();
        let der = CertificateDer::from_pem_slice(leaf_pem.as_bytes()).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let names = &san.value.general_names;
        assert!(names.contains(&GeneralName::URI("spiffe://example.org/agent/alice")));
        assert!(names.contains(&GeneralName::DNSName("agent.example.org")));
        assert!(names.contains(&GeneralName::IPAddress(&[127, 0, 0, 1])));
        assert_eq!(
            names
                .iter()
                .filter(|n| matches!(n, GeneralName::URI(_)))
                .count(),
            1
        );
        let eku = cert.extended_key_usage().unwrap().unwrap();
        assert!(eku.value.server_auth && eku.value.client_auth);
        let ku = cert.key_usage().unwrap().unwrap();
        assert!(ku.critical && ku.value.digital_signature());
        assert!(!ku.value.key_cert_sign() && !ku.value.crl_sign());
        assert!(!cert.is_ca());
        assert!(cert.raw_serial().len() >= 15);

        let (nb, na) = spiffe::validity(der.as_ref()).unwrap();
        assert_eq!(na - nb, 3600 + 60);
        let now = now_unix();
        assert!((na - now - 3600).abs() <= 5);
        assert_eq!((nb, na), (issued.info.not_before, issued.info.not_after));
        assert_eq!(
            issued.info.fingerprint,
            spiffe::fingerprint_sha256(der.as_ref())
        );
        assert_eq!(
            issued.info.serial,
            spiffe::serial_hex(der.as_ref()).unwrap()
        );
        assert_eq!(
            SpiffeId::from_leaf_cert_der(der.as_ref()).unwrap(),
            id("spiffe://example.org/agent/alice")
        );

        // rustls accepts the leaf as a client certificate from this CA.
        let ca_pem = std::fs::read_to_string(&issued.ca).unwrap();
        verify(&ca_pem, &leaf_pem, now).unwrap();
        // ... and the key file loads as a rustls private key.
        let key_pem = std::fs::read(&issued.key).unwrap();
        rustls::pki_types::PrivateKeyDer::from_pem_slice(&key_pem).unwrap();

        // Re-issue into the same folder replaces the files and keeps 0600.
        let again = issue(&ca_dir, &req, &out).unwrap();
        assert_ne!(again.info.serial, issued.info.serial);
        #[cfg(unix)]
        assert_eq!(mode(&again.key), 0o600);

        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn load_roundtrip_signs_verifiable_leaves() {
        let ca = LocalCa::generate("test CA").unwrap();
        let loaded = LocalCa::from_pem(ca.cert_pem(), ca.key_pem()).unwrap();
        let leaf = loaded
            .issue(&IssueRequest::new(Some(id("spiffe://td/x"))))
            .unwrap();
        verify(ca.cert_pem(), &leaf.cert_pem, now_unix()).unwrap();
        // Serials are random and distinct.
        let other = loaded
            .issue(&IssueRequest::new(Some(id("spiffe://td/x"))))
            .unwrap();
        assert_ne!(leaf.info.serial, other.info.serial);
    }

    #[test]
    fn another_ca_expired_and_not_yet_valid_are_refused() {
        let ca = LocalCa::generate("ca one").unwrap();
        let other = LocalCa::generate("ca two").unwrap();
        let now = now_unix();
        let leaf = issue_in_memory(&other, &IssueRequest::new(Some(id("spiffe://td/a")))).unwrap();
        assert!(verify(ca.cert_pem(), &leaf.cert_pem, now).is_err());

        let mut req = IssueRequest::new(Some(id("spiffe://td/a")));
        req.validity = Some((now - 7200, now - 3600));
        let expired = issue_in_memory(&ca, &req).unwrap();
        assert_eq!(expired.info.not_after, now - 3600);
        let e = verify(ca.cert_pem(), &expired.cert_pem, now).unwrap_err();
        assert!(format!("{e:?}").contains("Expired"), "{e:?}");

        req.validity = Some((now + 3600, now + 7200));
        let future = issue_in_memory(&ca, &req).unwrap();
        let e = verify(ca.cert_pem(), &future.cert_pem, now).unwrap_err();
        assert!(format!("{e:?}").contains("NotValidYet"), "{e:?}");
        verify(ca.cert_pem(), &future.cert_pem, now + 3700).unwrap();
    }

    #[test]
    fn bad_requests() {
        let ca = LocalCa::generate("ca").unwrap();
        let r = |req: IssueRequest| ca.issue(&req).unwrap_err().to_string();
        assert!(r(IssueRequest::new(None)).contains("nothing to certify"));
        assert!(r(IssueRequest::new(Some(id("spiffe://td")))).contains("has no path"));
        let mut q = IssueRequest::new(None);
        q.dns = vec!["bad name".into()];
        assert!(r(q).contains("not a valid host name"));
        let mut q = IssueRequest::new(Some(id("spiffe://td/a")));
        q.validity = Some((100, 100));
        assert!(r(q).contains("later than"));
        let mut q = IssueRequest::new(Some(id("spiffe://td/a")));
        q.ttl = Duration::from_secs(20 * 365 * 86400);
        assert!(r(q).contains("outlive the CA"));
        let mut q = IssueRequest::new(Some(id("spiffe://td/a")));
        q.ttl = Duration::ZERO;
        assert!(r(q).contains("positive"));
        // DNS/IP only, no SPIFFE ID, is fine (e.g. a plain TLS server).
        let mut q = IssueRequest::new(None);
        q.ips = vec!["10.0.0.1".parse().unwrap()];
        let leaf = ca.issue(&q).unwrap();
        assert_eq!(SpiffeId::from_cert_der(&leaf.cert_der).unwrap(), None);
    }

    #[test]
    fn mismatched_or_bad_ca_material_is_refused() {
        let a = LocalCa::generate("a").unwrap();
        let b = LocalCa::generate("b").unwrap();
        let e = LocalCa::from_pem(a.cert_pem(), b.key_pem()).unwrap_err();
        assert!(e.to_string().contains("does not match"), "{e}");
        let leaf = a
            .issue(&IssueRequest::new(Some(id("spiffe://td/a"))))
            .unwrap();
        let e = LocalCa::from_pem(&leaf.cert_pem, &leaf.key_pem).unwrap_err();
        assert!(e.to_string().contains("not a CA"), "{e}");
        let e = LocalCa::from_pem("nope", a.key_pem()).unwrap_err();
        assert!(e.to_string().contains("CA certificate"), "{e}");
        let dir = tempdir("missing");
        let e = LocalCa::load(&dir).unwrap_err();
        assert!(e.to_string().contains("ca.pem"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ttl_parsing() {
        assert_eq!(parse_ttl("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_ttl("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_ttl("24h").unwrap(), Duration::from_secs(86400));
        assert_eq!(parse_ttl("7d").unwrap(), Duration::from_secs(7 * 86400));
        for bad in [
            "",
            "h",
            "0s",
            "10",
            "10x",
            "-5m",
            "1.5h",
            "+3h",
            "99999999999999999999d",
            "3651d",
            "1 h",
            "1hh",
            "１h",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn formats_times() {
        assert_eq!(format_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_unix(1_700_000_000), "2023-11-14T22:13:20Z");
    }
}

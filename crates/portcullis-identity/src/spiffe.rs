//! SPIFFE IDs (`spiffe://trust-domain/path`) and the certificate facts the
//! gateway keys identity, revocation and expiry on.
//!
//! Parsing follows the SPIFFE ID standard strictly: lowercase `spiffe`
//! scheme, a trust domain of `[a-z0-9._-]` (≤ 255 bytes) with no userinfo or
//! port, no query, fragment or percent-encoding, path segments of
//! `[A-Za-z0-9._-]` that are neither empty nor `.`/`..`, ≤ 2048 bytes in all.

use std::fmt;
use std::str::FromStr;

use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::oid_registry::{OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_KEY_USAGE};

/// Longest SPIFFE ID accepted, in bytes (SPIFFE ID standard §2.3).
pub const MAX_SPIFFE_ID_LEN: usize = 2048;
/// Longest trust domain name accepted, in bytes (SPIFFE ID standard §2.3).
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

const SCHEME_PREFIX: &str = "spiffe://";

/// Why a string is not a SPIFFE ID; each variant names the offending part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// The input was empty.
    #[error("SPIFFE ID is empty")]
    Empty,
    /// The input exceeds [`MAX_SPIFFE_ID_LEN`].
    #[error("SPIFFE ID is {0} bytes long; the limit is 2048")]
    TooLong(usize),
    /// The scheme is not `spiffe://`.
    #[error("SPIFFE ID must start with \"spiffe://\"")]
    Scheme,
    /// The scheme is `spiffe` in another case (the standard requires lowercase).
    #[error("SPIFFE ID scheme must be lowercase \"spiffe\"")]
    SchemeCase,
    /// Nothing between `spiffe://` and the path.
    #[error("SPIFFE ID has no trust domain")]
    MissingTrustDomain,
    /// The trust domain exceeds [`MAX_TRUST_DOMAIN_LEN`].
    #[error("trust domain is {0} bytes long; the limit is 255")]
    TrustDomainTooLong(usize),
    /// The authority carries userinfo (`user@`).
    #[error("SPIFFE ID must not contain userinfo ('@') in the trust domain")]
    Userinfo,
    /// The authority carries a port (`:`).
    #[error("SPIFFE ID must not contain a port (':') in the trust domain")]
    Port,
    /// The trust domain has an uppercase letter.
    #[error("trust domain must be lowercase, found {0:?}")]
    TrustDomainUppercase(char),
    /// The trust domain has a character outside `[a-z0-9._-]`.
    #[error("trust domain has invalid character {0:?} (allowed: a-z 0-9 . - _)")]
    TrustDomainChar(char),
    /// A `?` query component is present.
    #[error("SPIFFE ID must not contain a query ('?')")]
    Query,
    /// A `#` fragment component is present.
    #[error("SPIFFE ID must not contain a fragment ('#')")]
    Fragment,
    /// A `%` percent-encoding is present.
    #[error("SPIFFE ID must not contain percent-encoding ('%')")]
    PercentEncoded,
    /// A path segment is empty (`//` or a trailing `/`).
    #[error("SPIFFE ID path has an empty segment ('//' or a trailing '/')")]
    EmptySegment,
    /// A path segment is `.` or `..`.
    #[error("SPIFFE ID path has a '.' or '..' segment")]
    DotSegment,
    /// A path segment has a character outside `[A-Za-z0-9._-]`.
    #[error("SPIFFE ID path has invalid character {0:?} (allowed: A-Z a-z 0-9 . - _)")]
    PathChar(char),
}

/// Why a certificate's identity facts could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// The bytes are not one DER X.509 certificate.
    #[error("certificate is not valid DER X.509: {0}")]
    Der(String),
    /// Bytes follow the certificate.
    #[error("certificate DER has {0} trailing bytes")]
    TrailingData(usize),
    /// An extension the identity depends on is malformed or duplicated.
    #[error("certificate extension {name}: {reason}")]
    Extension {
        /// The extension, e.g. `subjectAltName`.
        name: &'static str,
        /// What was wrong with it.
        reason: String,
    },
    /// More than one URI SAN next to a SPIFFE ID (an X.509-SVID has exactly one).
    #[error("certificate has {0} URI SANs; an X.509-SVID must have exactly one")]
    MultipleUriSans(usize),
    /// The SPIFFE URI SAN is not a valid SPIFFE ID.
    #[error("certificate URI SAN {uri:?} is not a valid SPIFFE ID: {source}")]
    BadSpiffeId {
        /// The URI as found in the certificate.
        uri: String,
        /// Why it was rejected.
        source: SpiffeIdError,
    },
    /// The certificate is not usable as a leaf X.509-SVID.
    #[error("certificate is not a leaf X.509-SVID: {0}")]
    NotLeafSvid(&'static str),
}

/// A validated SPIFFE ID: the workload identity carried in a certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    /// Empty, or `/seg(/seg)*`.
    path: String,
}

impl SpiffeId {
    /// Parses `s` strictly per the SPIFFE ID standard.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if s.len() > MAX_SPIFFE_ID_LEN {
            return Err(SpiffeIdError::TooLong(s.len()));
        }
        let rest = match s.strip_prefix(SCHEME_PREFIX) {
            Some(r) => r,
            None => {
                let head = s.get(..SCHEME_PREFIX.len());
                return Err(match head {
                    Some(h) if h.eq_ignore_ascii_case(SCHEME_PREFIX) => SpiffeIdError::SchemeCase,
                    _ => SpiffeIdError::Scheme,
                });
            }
        };
        if rest.contains('?') {
            return Err(SpiffeIdError::Query);
        }
        if rest.contains('#') {
            return Err(SpiffeIdError::Fragment);
        }
        if rest.contains('%') {
            return Err(SpiffeIdError::PercentEncoded);
        }
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        check_trust_domain(td)?;
        check_path(path)?;
        Ok(SpiffeId {
            trust_domain: td.to_owned(),
            path: path.to_owned(),
        })
    }

    /// The trust domain, which decides which CA bundle may vouch for this ID.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The path (`/a/b`, or empty for a trust domain's own ID), for policy.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether this names a trust domain itself (no path); leaf SVIDs must not.
    pub fn is_trust_domain_id(&self) -> bool {
        self.path.is_empty()
    }

    /// Reads the SPIFFE ID from a certificate's URI SAN.
    ///
    /// `Ok(None)`: no URI SAN has the `spiffe` scheme (not an SVID).
    /// Errors: a `spiffe` URI SAN next to any other URI SAN (an X.509-SVID
    /// has exactly one), or a `spiffe` URI SAN that is not a valid SPIFFE ID.
    pub fn from_cert_der(der: &[u8]) -> Result<Option<SpiffeId>, CertError> {
        let cert = parse_cert(der)?;
        spiffe_id_of(&cert)
    }

    /// Reads the SPIFFE ID of a leaf X.509-SVID, enforcing the leaf rules.
    ///
    /// Beyond [`SpiffeId::from_cert_der`]: the ID must exist and have a
    /// path, `cA` must not be true, and key usage must not allow
    /// `keyCertSign` or `cRLSign` (X.509-SVID standard §5.2).
    pub fn from_leaf_cert_der(der: &[u8]) -> Result<SpiffeId, CertError> {
        let cert = parse_cert(der)?;
        let id = spiffe_id_of(&cert)?.ok_or(CertError::NotLeafSvid("no SPIFFE ID URI SAN"))?;
        if id.is_trust_domain_id() {
            return Err(CertError::NotLeafSvid("SPIFFE ID has no path"));
        }
        let bc = cert
            .get_extension_unique(&OID_X509_EXT_BASIC_CONSTRAINTS)
            .map_err(|e| ext_err("basicConstraints", e))?;
        if let Some(ext) = bc {
            match ext.parsed_extension() {
                ParsedExtension::BasicConstraints(b) if b.ca => {
                    return Err(CertError::NotLeafSvid("basicConstraints cA is true"))
                }
                ParsedExtension::BasicConstraints(_) => {}
                _ => return Err(ext_err("basicConstraints", "unparseable")),
            }
        }
        let ku = cert
            .get_extension_unique(&OID_X509_EXT_KEY_USAGE)
            .map_err(|e| ext_err("keyUsage", e))?;
        if let Some(ext) = ku {
            match ext.parsed_extension() {
                ParsedExtension::KeyUsage(k) if k.key_cert_sign() || k.crl_sign() => {
                    return Err(CertError::NotLeafSvid(
                        "key usage allows keyCertSign or cRLSign",
                    ))
                }
                ParsedExtension::KeyUsage(_) => {}
                _ => return Err(ext_err("keyUsage", "unparseable")),
            }
        }
        Ok(id)
    }
}

/// Checks a trust domain name on its own (e.g. an allowed-trust-domain list).
pub fn check_trust_domain(td: &str) -> Result<(), SpiffeIdError> {
    if td.is_empty() {
        return Err(SpiffeIdError::MissingTrustDomain);
    }
    if td.contains('@') {
        return Err(SpiffeIdError::Userinfo);
    }
    if td.contains(':') {
        return Err(SpiffeIdError::Port);
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong(td.len()));
    }
    for c in td.chars() {
        match c {
            'a'..='z' | '0'..='9' | '.' | '-' | '_' => {}
            'A'..='Z' => return Err(SpiffeIdError::TrustDomainUppercase(c)),
            _ => return Err(SpiffeIdError::TrustDomainChar(c)),
        }
    }
    Ok(())
}

fn check_path(path: &str) -> Result<(), SpiffeIdError> {
    let Some(segments) = path.strip_prefix('/') else {
        // `path` is either empty or starts with '/', by construction.
        return Ok(());
    };
    for seg in segments.split('/') {
        match seg {
            "" => return Err(SpiffeIdError::EmptySegment),
            "." | ".." => return Err(SpiffeIdError::DotSegment),
            _ => {}
        }
        if let Some(c) = seg
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            return Err(SpiffeIdError::PathChar(c));
        }
    }
    Ok(())
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME_PREFIX}{}{}", self.trust_domain, self.path)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SpiffeId::parse(s)
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SpiffeId::parse(&s).map_err(serde::de::Error::custom)
    }
}

fn ext_err(name: &'static str, reason: impl fmt::Display) -> CertError {
    CertError::Extension {
        name,
        reason: reason.to_string(),
    }
}

/// Parses exactly one DER certificate (no trailing bytes).
pub(crate) fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, CertError> {
    let (rest, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| CertError::Der(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CertError::TrailingData(rest.len()));
    }
    Ok(cert)
}

fn spiffe_id_of(cert: &X509Certificate<'_>) -> Result<Option<SpiffeId>, CertError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| ext_err("subjectAltName", e))?;
    let Some(san) = san else {
        return Ok(None);
    };
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    let mut spiffe = uris.iter().filter(|u| has_spiffe_scheme(u));
    let Some(first) = spiffe.next() else {
        return Ok(None);
    };
    if uris.len() > 1 {
        return Err(CertError::MultipleUriSans(uris.len()));
    }
    SpiffeId::parse(first)
        .map(Some)
        .map_err(|source| CertError::BadSpiffeId {
            uri: (*first).to_owned(),
            source,
        })
}

/// `spiffe:` in any case: a miscased scheme is a bad SPIFFE ID, not "no ID".
fn has_spiffe_scheme(uri: &str) -> bool {
    uri.get(..7)
        .is_some_and(|h| h.eq_ignore_ascii_case("spiffe:"))
}

/// SHA-256 of the DER bytes, lowercase hex without colons: the certificate
/// fingerprint used for deny lists and session binding.
pub fn fingerprint_sha256(der: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}

/// The serial number as lowercase hex without colons or DER sign padding:
/// the form used in serial deny lists.
pub fn serial_hex(der: &[u8]) -> Result<String, CertError> {
    let cert = parse_cert(der)?;
    Ok(serial_hex_of(&cert))
}

pub(crate) fn serial_hex_of(cert: &X509Certificate<'_>) -> String {
    let raw = cert.raw_serial();
    let first = raw.iter().position(|b| *b != 0);
    match first {
        Some(i) => hex::encode(raw.get(i..).unwrap_or(raw)),
        None => "00".to_owned(),
    }
}

/// `(not_before, not_after)` as unix seconds, for expiry checks to the second.
pub fn validity(der: &[u8]) -> Result<(i64, i64), CertError> {
    let cert = parse_cert(der)?;
    let v = cert.validity();
    Ok((v.not_before.timestamp(), v.not_after.timestamp()))
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

    fn ok(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap_or_else(|e| panic!("{s:?} rejected: {e}"))
    }

    fn err(s: &str) -> SpiffeIdError {
        match SpiffeId::parse(s) {
            Ok(id) => panic!("{s:?} accepted as {id}"),
            Err(e) => e,
        }
    }

    #[test]
    fn valid_ids() {
        let id = ok("spiffe://example.org/ns/prod/sa/agent");
        assert_eq!(id.trust_domain(), "example.org");
        assert_eq!(id.path(), "/ns/prod/sa/agent");
        assert_eq!(id.to_string(), "spiffe://example.org/ns/prod/sa/agent");
        assert!(!id.is_trust_domain_id());

        let td = ok("spiffe://example.org");
        assert!(td.is_trust_domain_id());
        assert_eq!(td.to_string(), "spiffe://example.org");

        ok("spiffe://a_b-c.0/A.b-C_9/x");
        ok("spiffe://td/...");
        ok("spiffe://td/.a");
        ok("spiffe://td/a..b");
        assert_eq!(
            "spiffe://td/x".parse::<SpiffeId>().unwrap(),
            ok("spiffe://td/x")
        );
    }

    #[test]
    fn invalid_ids() {
        use SpiffeIdError as E;
        assert_eq!(err(""), E::Empty);
        assert_eq!(err("http://example.org/x"), E::Scheme);
        assert_eq!(err("spiffe:/example.org/x"), E::Scheme);
        assert_eq!(err("spiffe:example.org"), E::Scheme);
        assert_eq!(err("SPIFFE://example.org/x"), E::SchemeCase);
        assert_eq!(err("Spiffe://example.org/x"), E::SchemeCase);
        assert_eq!(err("spiffe://"), E::MissingTrustDomain);
        assert_eq!(err("spiffe:///path"), E::MissingTrustDomain);
        assert_eq!(err("spiffe://Example.org/x"), E::TrustDomainUppercase('E'));
        assert_eq!(err("spiffe://ex ample/x"), E::TrustDomainChar(' '));
        assert_eq!(err("spiffe://exämple/x"), E::TrustDomainChar('ä'));
        assert_eq!(err("spiffe://example.org:443/x"), E::Port);
        assert_eq!(err("spiffe://example.org:/x"), E::Port);
        assert_eq!(err("spiffe://user@example.org/x"), E::Userinfo);
        assert_eq!(err("spiffe://example.org/x?y=1"), E::Query);
        assert_eq!(err("spiffe://example.org?y"), E::Query);
        assert_eq!(err("spiffe://example.org/x#f"), E::Fragment);
        assert_eq!(err("spiffe://example.org/x%20y"), E::PercentEncoded);
        assert_eq!(err("spiffe://ex%41mple.org/x"), E::PercentEncoded);
        assert_eq!(err("spiffe://example.org/"), E::EmptySegment);
        assert_eq!(err("spiffe://example.org/a/"), E::EmptySegment);
        assert_eq!(err("spiffe://example.org//a"), E::EmptySegment);
        assert_eq!(err("spiffe://example.org/a/./b"), E::DotSegment);
        assert_eq!(err("spiffe://example.org/a/.."), E::DotSegment);
        assert_eq!(err("spiffe://example.org/a b"), E::PathChar(' '));
        assert_eq!(err("spiffe://example.org/a+b"), E::PathChar('+'));
        assert_eq!(err("spiffe://example.org/ä"), E::PathChar('ä'));
        assert_eq!(err("spiffe://example.org/a\\b"), E::PathChar('\\'));
    }

    #[test]
    fn length_limits() {
        let td = "a".repeat(255);
        ok(&format!("spiffe://{td}/x"));
        assert_eq!(
            err(&format!("spiffe://{}/x", "a".repeat(256))),
            SpiffeIdError::TrustDomainTooLong(256)
        );
        let base = "spiffe://td/";
        let exact = format!("{base}{}", "p".repeat(MAX_SPIFFE_ID_LEN - base.len()));
        assert_eq!(exact.len(), 2048);
        ok(&exact);
        let over = format!("{exact}p");
        assert_eq!(err(&over), SpiffeIdError::TooLong(2049));
    }

    #[test]
    fn trust_domain_check() {
        assert!(check_trust_domain("example.org").is_ok());
        assert_eq!(
            check_trust_domain(""),
            Err(SpiffeIdError::MissingTrustDomain)
        );
        assert_eq!(check_trust_domain("a:1"), Err(SpiffeIdError::Port));
    }

    #[test]
    fn serde_roundtrip() {
        let id = ok("spiffe://example.org/agent");
        let j = serde_json::to_string(&id).unwrap();
        assert_eq!(j, "\"spiffe://example.org/agent\"");
        let back: SpiffeId = serde_json::from_str(&j).unwrap();
        assert_eq!(back, id);
        assert!(serde_json::from_str::<SpiffeId>("\"spiffe://X/a\"").is_err());
    }

    #[test]
    fn garbage_der_is_an_error() {
        assert!(matches!(
            SpiffeId::from_cert_der(b""),
            Err(CertError::Der(_))
        ));
        assert!(serial_hex(b"\x30\x03\x02\x01\x01").is_err());
        assert!(validity(&[0xff; 40]).is_err());
        assert_eq!(
            fingerprint_sha256(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    /// A self-signed certificate with exactly these URI SANs (plus a DNS SAN).
    fn cert_with_uris(uris: &[&str]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["host.example".to_owned()]).unwrap();
        for u in uris {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI((*u).try_into().unwrap()));
        }
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn spiffe_id_from_certificates() {
        let one = cert_with_uris(&["spiffe://example.org/agent"]);
        assert_eq!(
            SpiffeId::from_cert_der(&one).unwrap(),
            Some(ok("spiffe://example.org/agent"))
        );
        assert_eq!(
            SpiffeId::from_leaf_cert_der(&one).unwrap(),
            ok("spiffe://example.org/agent")
        );
        // No URI SAN, or only non-SPIFFE URIs: not an SVID, not an error.
        assert_eq!(SpiffeId::from_cert_der(&cert_with_uris(&[])).unwrap(), None);
        assert_eq!(
            SpiffeId::from_cert_der(&cert_with_uris(&["https://a.example/x", "urn:x:y"])).unwrap(),
            None
        );
        assert!(matches!(
            SpiffeId::from_leaf_cert_der(&cert_with_uris(&[])),
            Err(CertError::NotLeafSvid(_))
        ));
        // Two SPIFFE IDs, or a SPIFFE ID next to another URI: rejected.
        for uris in [
            &["spiffe://example.org/a", "spiffe://example.org/b"][..],
            &["https://a.example/x", "spiffe://example.org/a"][..],
        ] {
            assert!(matches!(
                SpiffeId::from_cert_der(&cert_with_uris(uris)),
                Err(CertError::MultipleUriSans(2))
            ));
        }
        // A malformed or miscased SPIFFE URI is an error, not "no identity".
        for bad in [
            "spiffe://Example.org/a",
            "SPIFFE://example.org/a",
            "spiffe://td/a/../b",
        ] {
            let e = SpiffeId::from_cert_der(&cert_with_uris(&[bad])).unwrap_err();
            assert!(matches!(e, CertError::BadSpiffeId { .. }), "{bad}: {e}");
        }
        // A trust-domain-only ID is not a leaf identity.
        let td = cert_with_uris(&["spiffe://example.org"]);
        assert!(SpiffeId::from_cert_der(&td).unwrap().is_some());
        assert!(matches!(
            SpiffeId::from_leaf_cert_der(&td),
            Err(CertError::NotLeafSvid(_))
        ));
        // Trailing bytes after the certificate are refused.
        let mut long = one.clone();
        long.push(0);
        assert!(matches!(
            SpiffeId::from_cert_der(&long),
            Err(CertError::TrailingData(1))
        ));
    }

    #[test]
    fn ca_certificates_are_not_leaf_svids() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .subject_alt_names
            .push(rcgen::SanType::URI("spiffe://td/ca".try_into().unwrap()));
        let der = params.self_signed(&key).unwrap().der().to_vec();
        assert!(matches!(
            SpiffeId::from_leaf_cert_der(&der),
            Err(CertError::NotLeafSvid(_))
        ));
        params.is_ca = rcgen::IsCa::NoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        let der = params.self_signed(&key).unwrap().der().to_vec();
        assert!(matches!(
            SpiffeId::from_leaf_cert_der(&der),
            Err(CertError::NotLeafSvid(_))
        ));
    }

    #[test]
    fn serial_and_validity() {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["h.example".to_owned()]).unwrap();
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&[0x00, 0x8f, 0x01]));
        params.not_before = time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        params.not_after = time::OffsetDateTime::from_unix_timestamp(1_700_086_400).unwrap();
        let der = params.self_signed(&key).unwrap().der().to_vec();
        assert_eq!(serial_hex(&der).unwrap(), "8f01");
        assert_eq!(validity(&der).unwrap(), (1_700_000_000, 1_700_086_400));
        let fp = fingerprint_sha256(&der);
        assert_eq!(fp.len(), 64);
        assert!(fp
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    }

    /// Seeded xorshift so failures reproduce.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % (n as u64)) as usize
        }
    }

    #[test]
    fn fuzz_parse_never_panics_and_roundtrips() {
        const ALPHABET: &[u8] = b"spiffe:/.-_%?#@:AZaz09 \\\x00\xff";
        let seeds = [
            "spiffe://example.org/ns/prod/sa/agent",
            "spiffe://td",
            "spiffe://a.b-c_d/x/y/z",
        ];
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for i in 0..20_000 {
            let mut bytes = seeds[i % seeds.len()].as_bytes().to_vec();
            for _ in 0..=rng.below(4) {
                match rng.below(3) {
                    0 if !bytes.is_empty() => {
                        let at = rng.below(bytes.len());
                        bytes.remove(at);
                    }
                    1 => {
                        let at = rng.below(bytes.len() + 1);
                        bytes.insert(at, ALPHABET[rng.below(ALPHABET.len())]);
                    }
                    _ if !bytes.is_empty() => {
                        let at = rng.below(bytes.len());
                        bytes[at] = (rng.next() & 0xff) as u8;
                    }
                    _ => {}
                }
            }
            let s = String::from_utf8_lossy(&bytes);
            if let Ok(id) = SpiffeId::parse(&s) {
                // Whatever is accepted is canonical: it prints back unchanged
                // and stays within the spec's character sets.
                assert_eq!(id.to_string(), s, "roundtrip");
                assert!(s.is_ascii());
                let rest = s.strip_prefix("spiffe://").unwrap();
                assert!(
                    !rest.contains(['?', '#', '%', '@', ':', '\\'].as_slice()),
                    "{s}"
                );
                assert!(!rest.contains("//") && !rest.ends_with('/'), "{s}");
            }
        }
        // Pure random strings too.
        for _ in 0..5_000 {
            let len = rng.below(64);
            let s: String = (0..len)
                .map(|_| char::from(ALPHABET[rng.below(ALPHABET.len())]))
                .collect();
            let _ = SpiffeId::parse(&s);
            let _ = SpiffeId::parse(&format!("spiffe://{s}"));
        }
    }

    #[test]
    fn fuzz_der_never_panics() {
        let ca = crate::ca::LocalCa::generate("fuzz CA").unwrap();
        let mut req = crate::ca::IssueRequest::new(Some(ok("spiffe://example.org/fuzz")));
        req.dns = vec!["fuzz.example".into()];
        let leaf = ca.issue(&req).unwrap();
        let seeds = [leaf.cert_der.clone(), ca.cert_der().to_vec()];
        let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
        for i in 0..3_000 {
            let mut der = seeds[i % seeds.len()].clone();
            for _ in 0..=rng.below(8) {
                match rng.below(4) {
                    0 => {
                        let at = rng.below(der.len());
                        der[at] = (rng.next() & 0xff) as u8;
                    }
                    1 => {
                        let at = rng.below(der.len());
                        der[at] ^= 1 << rng.below(8);
                    }
                    2 => {
                        let at = rng.below(der.len());
                        der.truncate(at.max(1));
                    }
                    _ => {
                        let at = rng.below(der.len() + 1);
                        der.insert(at, (rng.next() & 0xff) as u8);
                    }
                }
            }
            let _ = SpiffeId::from_cert_der(&der);
            let _ = SpiffeId::from_leaf_cert_der(&der);
            let _ = serial_hex(&der);
            let _ = validity(&der);
            let _ = fingerprint_sha256(&der);
        }
        for _ in 0..2_000 {
            let len = rng.below(300);
            let mut der: Vec<u8> = (0..len).map(|_| (rng.next() & 0xff) as u8).collect();
            if let Some(b) = der.first_mut() {
                *b = 0x30; // SEQUENCE, to get past the first byte more often
            }
            let _ = SpiffeId::from_cert_der(&der);
            let _ = serial_hex(&der);
            let _ = validity(&der);
        }
    }
}

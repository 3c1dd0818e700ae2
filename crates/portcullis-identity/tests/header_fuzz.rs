//! Property checks for the header and token parsing paths that see
//! attacker-controlled bytes first: seeded random and mutated inputs must
//! never panic, and must never be accepted unless well formed.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // test code

use portcullis_identity::jwks::JwksSource;
use portcullis_identity::jwt::{bearer_from_header, TokenValidator, ValidatorConfig};
use portcullis_identity::tls::PeerCert;

/// Seeded xorshift so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn bytes(&mut self, max: usize, alphabet: &[u8]) -> Vec<u8> {
        let n = (self.next() as usize) % (max + 1);
        (0..n)
            .map(|_| alphabet[(self.next() as usize) % alphabet.len()])
            .collect()
    }
}

const TOKENISH: &[u8] = b"Bearer bearer BEARER Basic  \t.-_~+/=abcXYZ019\"\\,;:\x00\xff\x7f\n";

#[test]
fn bearer_header_parsing_never_panics_and_is_strict() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for _ in 0..50_000 {
        let input = rng.bytes(96, TOKENISH);
        if let Ok(token) = bearer_from_header(&input) {
            // Whatever is accepted is a single token68 with no spaces or quotes.
            assert!(!token.is_empty());
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b)),
                "{token:?} from {input:?}"
            );
        }
    }
    assert_eq!(
        bearer_from_header(b"Bearer abc.def-ghi").unwrap(),
        "abc.def-ghi"
    );
    assert!(bearer_from_header(b"Bearer a b").is_err());
    assert!(bearer_from_header(b"Bearer \"a\"").is_err());
}

#[test]
fn garbage_tokens_are_refused_without_panicking() {
    let dir = std::env::temp_dir().join(format!("pc-fuzz-jwks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jwks = dir.join("jwks.json");
    std::fs::write(&jwks, r#"{"keys":[]}"#).unwrap();
    let v =
        TokenValidator::new(ValidatorConfig::new("iss", "aud", JwksSource::File(jwks))).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut rng = Rng(0x0bad_5eed_dead_beef);
    let parts: [&[u8]; 4] = [
        b"eyJhbGciOiJub25lIn0",
        b"eyJhbGciOiJIUzI1NiJ9",
        b"eyJhbGciOiJFZERTQSIsImtpZCI6IngifQ",
        b"e30",
    ];
    rt.block_on(async {
        for _ in 0..5_000 {
            let mut t = Vec::new();
            for i in 0..(rng.next() % 5) {
                if i > 0 {
                    t.push(b'.');
                }
                if rng.next().is_multiple_of(2) {
                    t.extend_from_slice(parts[(rng.next() % 4) as usize]);
                } else {
                    t.extend(rng.bytes(
                        40,
                        b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_=+/",
                    ));
                }
            }
            let s = String::from_utf8_lossy(&t).to_string();
            assert!(v.validate(&s).await.is_err(), "accepted {s:?}");
        }
    });
}

#[test]
fn certificate_facts_never_panic_on_garbage() {
    let mut rng = Rng(0xfeed_face_cafe_f00d);
    for _ in 0..20_000 {
        let mut der = vec![0x30, 0x82];
        der.extend(rng.bytes(300, &(0u8..=255).collect::<Vec<_>>()));
        let _ = PeerCert::from_der(&der);
    }
}

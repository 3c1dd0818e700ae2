//! The `ca init` / `cert issue` command-line contract: files, modes, SANs,
//! output and one-line errors.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use portcullis_identity::spiffe::{self, SpiffeId};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
}

fn tempdir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let d = std::env::temp_dir().join(format!(
        "portcullis-ca-cli-{tag}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap()
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "failed: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Fails with exactly one stderr line starting `portcullis: `.
fn fails(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(!out.status.success(), "unexpected success");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "stderr: {err}");
    assert!(err.starts_with("portcullis: "), "stderr: {err}");
    err
}

#[cfg(unix)]
fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn pem_der(p: &Path) -> Vec<u8> {
    let text = std::fs::read_to_string(p).unwrap();
    let b64: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE-----"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    decode_b64(&b64)
}

fn decode_b64(s: &str) -> Vec<u8> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = A.iter().position(|a| *a == c).unwrap() as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[test]
fn ca_init_then_cert_issue() {
    let root = tempdir("flow");
    let ca_dir = root.join("ca");
    let out_dir = root.join("agent");

    let stdout = ok(bin().args(["ca", "init", "--dir"]).arg(&ca_dir));
    let ca_pem = ca_dir.join("ca.pem");
    let ca_key = ca_dir.join("ca.key");
    assert!(stdout.contains(&ca_pem.display().to_string()), "{stdout}");
    assert!(stdout.contains(&ca_key.display().to_string()), "{stdout}");
    assert!(ca_pem.is_file() && ca_key.is_file());
    #[cfg(unix)]
    assert_eq!(mode(&ca_key), 0o600);

    // A second init refuses; --force replaces.
    let before = std::fs::read(&ca_pem).unwrap();
    let err = fails(bin().args(["ca", "init", "--dir"]).arg(&ca_dir));
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(&ca_pem).unwrap(), before);
    ok(bin().args(["ca", "init", "--force", "--dir"]).arg(&ca_dir));
    assert_ne!(std::fs::read(&ca_pem).unwrap(), before);
    #[cfg(unix)]
    assert_eq!(mode(&ca_key), 0o600);

    let stdout = ok(bin()
        .args(["cert", "issue", "--ca"])
        .arg(&ca_dir)
        .args([
            "--spiffe-id",
            "spiffe://example.org/agent/alice",
            "--ttl",
            "2h",
            "--dns",
            "localhost",
            "--dns",
            "agent.example.org",
            "--ip",
            "127.0.0.1",
            "--ip",
            "::1",
            "--out",
        ])
        .arg(&out_dir));
    let cert = out_dir.join("cert.pem");
    let key = out_dir.join("key.pem");
    let bundle = out_dir.join("ca.pem");
    for p in [&cert, &key, &bundle] {
        assert!(p.is_file(), "{} missing", p.display());
        assert!(stdout.contains(&p.display().to_string()), "{stdout}");
    }
    #[cfg(unix)]
    assert_eq!(mode(&key), 0o600);
    assert_eq!(
        std::fs::read(&bundle).unwrap(),
        std::fs::read(&ca_pem).unwrap()
    );
    assert!(std::fs::read_to_string(&key)
        .unwrap()
        .contains("BEGIN PRIVATE KEY"));

    let der = pem_der(&cert);
    assert_eq!(
        SpiffeId::from_leaf_cert_der(&der).unwrap().to_string(),
        "spiffe://example.org/agent/alice"
    );
    let (nb, na) = spiffe::validity(&der).unwrap();
    assert_eq!(na - nb, 2 * 3600 + 60);
    // The printed facts match the certificate.
    assert!(
        stdout.contains("spiffe://example.org/agent/alice"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&spiffe::serial_hex(&der).unwrap()),
        "{stdout}"
    );
    assert!(
        stdout.contains(&spiffe::fingerprint_sha256(&der)),
        "{stdout}"
    );
    assert!(stdout.contains("expires:"), "{stdout}");
    // The DNS and IP SANs are there (raw DER search: IA5 text and octets).
    let has = |needle: &[u8]| der.windows(needle.len()).any(|w| w == needle);
    assert!(has(b"agent.example.org") && has(b"localhost"));
    assert!(has(&[0x87, 4, 127, 0, 0, 1]));
    let mut v6 = vec![0x87, 16];
    v6.extend_from_slice(&std::net::Ipv6Addr::LOCALHOST.octets());
    assert!(has(&v6));

    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn default_ca_dir_comes_from_the_state_folder() {
    let root = tempdir("state");
    let out_dir = root.join("out");
    ok(bin()
        .args(["ca", "init"])
        .env("PORTCULLIS_STATE_DIR", &root));
    assert!(root.join("ca/ca.pem").is_file());
    #[cfg(unix)]
    assert_eq!(mode(&root.join("ca/ca.key")), 0o600);
    ok(bin()
        .args(["cert", "issue", "--spiffe-id", "spiffe://td/gw", "--out"])
        .arg(&out_dir)
        .env("PORTCULLIS_STATE_DIR", &root));
    assert!(out_dir.join("cert.pem").is_file());
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn bad_input_is_one_line() {
    let root = tempdir("bad");
    let ca_dir = root.join("ca");
    ok(bin().args(["ca", "init", "--dir"]).arg(&ca_dir));
    let issue = |args: &[&str]| {
        let mut c = bin();
        c.args(["cert", "issue", "--ca"])
            .arg(&ca_dir)
            .args(args)
            .arg("--out")
            .arg(root.join("out"));
        c
    };
    let e = fails(&mut issue(&["--spiffe-id", "spiffe://Example.org/x"]));
    assert!(e.contains("--spiffe-id") && e.contains("lowercase"), "{e}");
    let e = fails(&mut issue(&["--spiffe-id", "spiffe://example.org"]));
    assert!(e.contains("has no path"), "{e}");
    let e = fails(&mut issue(&["--spiffe-id", "spiffe://td/x", "--ttl", "1w"]));
    assert!(e.contains("--ttl"), "{e}");
    let e = fails(&mut issue(&[
        "--spiffe-id",
        "spiffe://td/x",
        "--ip",
        "1.2.3",
    ]));
    assert!(e.contains("--ip"), "{e}");
    assert!(!root.join("out").exists());
    let e = fails(
        bin()
            .args(["cert", "issue", "--spiffe-id", "spiffe://td/x", "--ca"])
            .arg(root.join("nowhere"))
            .arg("--out")
            .arg(root.join("out")),
    );
    assert!(e.contains("ca.pem"), "{e}");
    std::fs::remove_dir_all(&root).unwrap();
}

//! DLP detectors: true positives in several formats and near-misses for
//! each, redaction that keeps the JSON structure and removes every secret
//! byte, findings that never hold the secret, blocking, streams split at
//! every kind of boundary with bounded memory, and seeded random inputs.
//!
//! Secrets are assembled at run time from seeded random characters, so no
//! token-shaped literal sits in the repository.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use base64::Engine as _;
use portcullis_inspect::dlp::{
    self, inspect, scan_text, Action, DlpPolicy, Severity, StreamScanner, PII, SECRETS,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

const ALNUM: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const UPPER_DIGITS: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
const B64: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URLSAFE: &str = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const HEX: &str = "0123456789abcdef";

/// `n` characters of `alphabet`, from a seed.
fn rnd(seed: u64, alphabet: &str, n: usize) -> String {
    let mut rng = StdRng::seed_from_u64(seed);
    let a: Vec<char> = alphabet.chars().collect();
    (0..n).map(|_| a[rng.random_range(0..a.len())]).collect()
}

fn all_flag() -> DlpPolicy {
    DlpPolicy::with(&[SECRETS, PII], Action::Flag)
}

/// Detector ids found in `text` (both classes).
fn ids(text: &str) -> Vec<&'static str> {
    scan_text(text, &all_flag())
        .into_iter()
        .map(|m| m.detector)
        .collect()
}

/// `text` yields exactly one match, of `id`, covering exactly `secret`.
#[track_caller]
fn finds(id: &str, text: &str, secret: &str) {
    let ms = scan_text(text, &all_flag());
    assert_eq!(
        ms.len(),
        1,
        "{id}: expected one match in {text:?}, got {ms:?}"
    );
    assert_eq!(ms[0].detector, id, "{text:?}");
    assert_eq!(&text[ms[0].span.clone()], secret, "{id}: span in {text:?}");
}

#[track_caller]
fn misses(text: &str) {
    let found = ids(text);
    assert!(
        found.is_empty(),
        "expected nothing in {text:?}, got {found:?}"
    );
}

// ---------------------------------------------------------------------------
// Credentials.

fn pem(kind: &str, seed: u64, lines: usize, eol: &str) -> String {
    let mut s = format!("-----BEGIN {kind}-----{eol}");
    for i in 0..lines {
        s.push_str(&rnd(seed + i as u64, B64, 64));
        s.push_str(eol);
    }
    s.push_str(&rnd(seed + 999, B64, 20));
    s.push_str("==");
    s.push_str(eol);
    s.push_str(&format!("-----END {kind}-----"));
    s
}

#[test]
fn private_keys() {
    for kind in [
        "PRIVATE KEY",
        "RSA PRIVATE KEY",
        "EC PRIVATE KEY",
        "OPENSSH PRIVATE KEY",
        "ENCRYPTED PRIVATE KEY",
        "PGP PRIVATE KEY BLOCK",
    ] {
        let key = pem(kind, 1, 5, "\n");
        finds("private-key", &format!("here:\n{key}\nthat was it."), &key);
        // Escaped newlines (a key inside JSON inside text).
        let key = pem(kind, 2, 3, "\\n");
        finds("private-key", &format!("\"k\": \"{key}\""), &key);
    }
    // Truncated: no END line, the body seen is still taken.
    let body = rnd(3, B64, 64);
    let text = format!("-----BEGIN RSA PRIVATE KEY-----\n{body}\n");
    assert_eq!(ids(&text), ["private-key"]);
    // Public keys and certificates are not secrets.
    misses(&format!(
        "-----BEGIN PUBLIC KEY-----\n{body}\n-----END PUBLIC KEY-----"
    ));
    misses(&format!(
        "-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----"
    ));
    misses("the header reads -----BEGIN and then nothing");
}

#[test]
fn gcp_service_account() {
    let key = pem("PRIVATE KEY", 4, 4, "\\n") + "\\n";
    let text = format!(
        r#"{{"type": "service_account", "project_id": "demo", "private_key_id": "{}", "private_key": "{key}", "client_email": "svc@demo.iam.gserviceaccount.com"}}"#,
        rnd(5, HEX, 40)
    );
    let ms = scan_text(&text, &all_flag());
    let key_match = ms
        .iter()
        .find(|m| m.class == SECRETS)
        .expect("a secret match");
    assert_eq!(key_match.detector, "gcp-service-account-key");
    assert_eq!(&text[key_match.span.clone()], key);
    // The API key form.
    let api = format!("AIza{}", rnd(6, URLSAFE, 35));
    finds("gcp-api-key", &format!("key={api}&q=1"), &api);
    finds("gcp-api-key", &format!("\"{api}\""), &api);
    misses(&format!("AIza{} is too short", rnd(7, ALNUM, 20)));
}

#[test]
fn aws() {
    finds(
        "aws-access-key-id",
        "aws_access_key_id = AKIAIOSFODNN7EXAMPLE",
        "AKIAIOSFODNN7EXAMPLE",
    );
    let sts = format!("ASIA{}", rnd(8, UPPER_DIGITS, 16));
    finds(
        "aws-access-key-id",
        &format!("\"AccessKeyId\": \"{sts}\""),
        &sts,
    );
    for prefix in ["ABIA", "ACCA"] {
        let id = format!("{prefix}{}", rnd(8, UPPER_DIGITS, 16));
        finds("aws-access-key-id", &format!("id={id}"), &id);
    }
    let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    finds(
        "aws-secret-access-key",
        &format!("aws_secret_access_key={secret}\n"),
        secret,
    );
    finds(
        "aws-secret-access-key",
        &format!("export AWS_SECRET_ACCESS_KEY=\"{secret}\""),
        secret,
    );
    let other = rnd(9, B64, 40);
    finds(
        "aws-secret-access-key",
        &format!("{{\"SecretAccessKey\": \"{other}\"}}"),
        &other,
    );
    finds(
        "aws-secret-access-key",
        &format!("AWS credentials for prod: {other} (rotate monthly)"),
        &other,
    );
    // Near misses: the prefix in prose, a shouted word, a git SHA near "aws".
    misses("Long-term keys start with AKIA and temporary ones with ASIA.");
    misses("AKIA_PLACEHOLDER_VALUE");
    misses("ASIAPACIFICREGIONALS is a word");
    misses("aws deploy at commit 3f786850e387550fdab836ed7e6dc881de23001b done");
    misses(&format!("a random {other} with no context"));
}

#[test]
fn azure() {
    let key = base64::engine::general_purpose::STANDARD.encode(rnd(10, ALNUM, 64));
    let conn = format!("DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={key};EndpointSuffix=core.windows.net");
    finds("azure-storage-key", &conn, &key);
    let sb_key = base64::engine::general_purpose::STANDARD.encode(rnd(11, ALNUM, 32));
    finds(
        "azure-storage-key",
        &format!("Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=Root;SharedAccessKey={sb_key}"),
        &sb_key,
    );
    let sig = base64::engine::general_purpose::STANDARD
        .encode(rnd(12, ALNUM, 32))
        .replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D");
    let url = format!("https://acct.blob.core.windows.net/c/b.txt?sv=2022-11-02&ss=b&sp=r&se=2030-01-01T00:00:00Z&sig={sig}");
    finds("azure-sas-signature", &url, &sig);
    // Near misses: a sig of the wrong size, a short account key.
    misses(&format!("https://example.com/?sig={}", rnd(13, ALNUM, 60)));
    misses("AccountKey=short;");
}

fn jwt_of(header: &Value, payload: &Value, sig: &str) -> String {
    let e = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.{sig}", e(header), e(payload))
}

#[test]
fn jwts() {
    let t = jwt_of(
        &json!({"alg": "HS256", "typ": "JWT"}),
        &json!({"sub": "1234567890", "name": "Jo", "iat": 1516239022}),
        &rnd(14, URLSAFE, 43),
    );
    finds("jwt", &format!("Authorization: Bearer {t}"), &t);
    finds("jwt", &format!("token {t}."), &t);
    let rs = jwt_of(
        &json!({"kid": "k1", "alg": "RS256"}),
        &json!({"scope": "read"}),
        &rnd(15, URLSAFE, 342),
    );
    finds("jwt", &format!("[{rs}]"), &rs);
    let unsigned = jwt_of(&json!({"alg": "none"}), &json!({"sub": "x"}), "");
    finds("jwt", &format!("{unsigned} "), &unsigned);
    // Near misses: a header that is not JSON, no "alg", an empty signature
    // with a real alg, and dotted names.
    misses("eyJub3RqdXN0.eyJub3RqdXN0.abc");
    misses(&jwt_of(&json!({"typ": "JWT"}), &json!({"a": 1}), "sig"));
    misses(&format!(
        "{} ",
        jwt_of(&json!({"alg": "HS256"}), &json!({"a": 1}), "")
    ));
    misses("com.example.service.v1.Handler and a.b.c");
}

#[test]
fn provider_tokens() {
    let cases: Vec<(&str, String)> = vec![
        ("github-token", format!("ghp_{}", rnd(20, ALNUM, 36))),
        ("github-token", format!("gho_{}", rnd(21, ALNUM, 36))),
        ("github-token", format!("ghs_{}", rnd(22, ALNUM, 36))),
        ("github-token", format!("ghu_{}", rnd(23, ALNUM, 36))),
        ("github-token", format!("ghr_{}", rnd(24, ALNUM, 36))),
        (
            "github-token",
            format!("github_pat_{}_{}", rnd(25, ALNUM, 22), rnd(26, ALNUM, 59)),
        ),
        ("gitlab-token", format!("glpat-{}", rnd(27, URLSAFE, 20))),
        (
            "slack-token",
            format!(
                "xoxb-{}-{}-{}",
                rnd(28, "0123456789", 12),
                rnd(29, "0123456789", 13),
                rnd(30, ALNUM, 24)
            ),
        ),
        ("slack-token", format!("xoxp-{}", rnd(31, ALNUM, 40))),
        (
            "slack-webhook",
            format!(
                "https://hooks.slack.com/services/T{}/B{}/{}",
                rnd(32, UPPER_DIGITS, 8),
                rnd(33, UPPER_DIGITS, 8),
                rnd(34, ALNUM, 24)
            ),
        ),
        (
            "stripe-secret-key",
            format!("sk_live_{}", rnd(35, ALNUM, 24)),
        ),
        (
            "stripe-secret-key",
            format!("rk_live_{}", rnd(36, ALNUM, 99)),
        ),
        ("openai-api-key", format!("sk-{}", rnd(37, ALNUM, 48))),
        (
            "openai-api-key",
            format!("sk-proj-{}", rnd(38, URLSAFE, 156)),
        ),
        (
            "openai-api-key",
            format!("sk-{}T3BlbkFJ{}", rnd(39, ALNUM, 20), rnd(40, ALNUM, 20)),
        ),
        (
            "anthropic-api-key",
            format!("sk-ant-api03-{}AA", rnd(41, URLSAFE, 93)),
        ),
        (
            "google-oauth-token",
            format!("ya29.{}", rnd(42, URLSAFE, 120)),
        ),
        ("npm-token", format!("npm_{}", rnd(43, ALNUM, 36))),
        (
            "pypi-token",
            format!("pypi-AgEIcHlwaS5vcmc{}", rnd(44, URLSAFE, 70)),
        ),
        (
            "sendgrid-api-key",
            format!("SG.{}.{}", rnd(45, URLSAFE, 22), rnd(46, URLSAFE, 43)),
        ),
    ];
    for (id, tok) in &cases {
        finds(id, tok, tok);
        finds(id, &format!("token: {tok}\n"), tok);
        finds(id, &format!("{{\"k\":\"{tok}\"}}"), tok);
        finds(id, &format!("see ({tok}), then"), tok);
    }
    // Twilio needs its name nearby.
    let auth = rnd(47, HEX, 32);
    finds(
        "twilio-credential",
        &format!("TWILIO_AUTH_TOKEN={auth}"),
        &auth,
    );
    let sk = format!("SK{}", rnd(48, HEX, 32));
    finds("twilio-credential", &format!("Twilio API key {sk}"), &sk);
    // Near misses.
    misses(&format!("ghp_{}", "X".repeat(36)));
    misses("ghp_short and gho_ alone");
    misses("the task-list and disk-usage and sk-learn packages");
    misses("npm_config_cache=/tmp/npm");
    misses("SG.example is a domain");
    misses("pypi-server and glpat- prefixes");
    misses("visit hooks.slack.com/ for docs");
    misses(&format!("SK{}", rnd(49, HEX, 32)));
}

#[test]
fn url_credentials() {
    let pw = rnd(50, ALNUM, 12);
    finds(
        "url-credentials",
        &format!("DATABASE_URL=postgres://admin:{pw}@db.internal:5432/app"),
        &pw,
    );
    finds(
        "url-credentials",
        &format!("git clone https://bot:{pw}@git.example.com/r.git"),
        &pw,
    );
    misses("https://example.com:8443/path and ssh://git@github.com/org/repo");
    misses("postgres://${DB_USER}:${DB_PASS}@db/app");
}

#[test]
fn generic_secrets_need_context() {
    let v = rnd(51, ALNUM, 24);
    for text in [
        format!("password={v}"),
        format!("DB_PASSWORD: \"{v}\""),
        format!("{{\"api_key\":\"{v}\"}}"),
        format!("client_secret = '{v}'"),
        format!("X-Auth-Token: {v}"),
        format!("{{\\\"token\\\": \\\"{v}\\\"}}"),
        format!("Authorization: Bearer {v}"),
        format!("secret := \"{v}\""),
        format!("credentials => {v}."),
    ] {
        finds("generic-secret", &text, &v);
    }
    // The same value without a key, ids and hashes, benign keys, code.
    misses(&format!("value {v} here"));
    misses("commit 3f786850e387550fdab836ed7e6dc881de23001b");
    misses("request 550e8400-e29b-41d4-a716-446655440000 done");
    misses("sha256=9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08");
    misses(&format!("next_page_token: {v}"));
    misses(&format!("\"tokenType\": \"{v}\""));
    misses("max_tokens=4096, token_count: 12");
    misses("password = get_password_from_vault(user_name_2)");
    misses("secret_key = settings.SECRET_KEY_FROM_ENV_V2");
    misses("password: correcthorsebatterystaple");
    misses("token = getAccessTokenFromVault");
    misses("secret: HTTPServerConfiguration");
    misses("token = os.environ[\"GITHUB_TOKEN\"]");
    misses("password=hunter2");
}

#[test]
fn delimited_passwords_are_taken_whole() {
    // A quoted value is the secret, punctuation and blanks included (what
    // server-everything's get-env prints); unquoted, the value runs to the
    // next blank, so a partial redaction cannot leak the rest.
    for (text, v) in [
        (r#"{"DB_PASSWORD": "P4ss;word99!", "X": 1}"#, "P4ss;word99!"),
        (r#""API_PASSWORD": "xK9#mQ2$vL7(pW4)","#, "xK9#mQ2$vL7(pW4)"),
        (r#""SMTP_PASSWORD": "Zx8!qW3=rT6&yU1""#, "Zx8!qW3=rT6&yU1"),
        (
            r#""password": "correct horse battery staple""#,
            "correct horse battery staple",
        ),
        ("DB_PASSWORD=Tr0ub4dor&3x\n", "Tr0ub4dor&3x"),
        ("PASSWORD=Summer2024,Go\n", "Summer2024,Go"),
        ("password: 'Rainy(Day)42'", "Rainy(Day)42"),
        (r#"{\"password\": \"P4ss;word99!\"}"#, "P4ss;word99!"),
    ] {
        finds("generic-secret", text, v);
    }
    // Inside structured content the string under the key is the value.
    let mut v = json!({"env": {"DB_PASSWORD": "P4ss;word99!", "HOME": "/root"}});
    let out = inspect(&mut v, &DlpPolicy::default());
    assert_eq!(out.redactions, 1);
    assert_eq!(v["env"]["DB_PASSWORD"], "[REDACTED:generic-secret]");
}

#[test]
fn password_forms_without_an_equals_sign() {
    let v = "l!ucugR3VuZN%BkM";
    for text in [
        format!("--password '{v}'"),
        format!("docker login -u ci --password \"{v}\" registry.example.com"),
        format!("mysql -u root -p'{v}' shop"),
        format!("<add key=\"ApiSecret\" value=\"{v}\" />"),
        format!("<property name=\"password\" value=\"{v}\"/>"),
        format!("<password>{v}</password>"),
        format!("define('DB_PASSWORD', '{v}');"),
        format!("WIFI_PASS={v}"),
        format!("db_pass: \"{v}\""),
        format!("SECRET_KEY = '{v}'"),
    ] {
        finds("generic-secret", &text, v);
    }
    // Short values a person chose, under any secret's key when quoted.
    finds(
        "generic-secret",
        "SECRET_KEY = 'P@ssw0rd123'",
        "P@ssw0rd123",
    );
    finds(
        "generic-secret",
        "spring.datasource.password=letmein2023",
        "letmein2023",
    );
    finds(
        "generic-secret",
        "\"password\": \"correct-horse-battery\",",
        "correct-horse-battery",
    );
    finds(
        "generic-secret",
        "keystore.password=Seven Silver Swans Swim\nnext=1",
        "Seven Silver Swans Swim",
    );
    // A query string ends the value at `&`; a connection string at `;key=`.
    finds(
        "generic-secret",
        "GET /login?user=bob&password=Kp8vLq2zXw&remember=1",
        "Kp8vLq2zXw",
    );
    finds(
        "generic-secret",
        "Server=db;User Id=sa;Password=Tr0ub4dor&3x;Encrypt=true",
        "Tr0ub4dor&3x",
    );
}

#[test]
fn password_look_alikes_are_not_secrets() {
    for text in [
        // Fields named in a tuple, a list of names, constants and types.
        "('http', 'user/name', 'password', 'localhost:22')",
        "{'ASPasswordCredential', 'ASPasswordCredentialIdentity'}",
        "pub const ERROR_INVALID_PASSWORD: WIN32_ERROR = 86u32;",
        "private_key: SSHPrivateKeyTypes,",
        // Names of secrets, request tokens, regular expressions.
        "--secret-arn \"arn:aws:secretsmanager:us-west-2:123456789012:secret:mysecret\"",
        "--change-token 12cd3456-67cd-890b-1cd2-c3a4567d89f1",
        "\"pattern\": \"^arn:aws:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:.+$\"",
        // Placeholders, references, prose.
        r#"{"DB_PASSWORD": "your-password-here"}"#,
        r#"{"password": "The password of the database user (optional)."}"#,
        "<password>${env.NEXUS_PASSWORD}</password>",
        "PASSWORD=\"$(cat /run/secrets/db_password)\"",
        "password: \"********\"",
        // Words that hold `pass`, flags that take no password.
        "bypass_cache = True\nfirst_pass = run(pass_number=2)\nSKIP_PASS_CHECK=1",
        "pass_rate: 0.97\npasses: 3",
        "echo \"$PAT\" | docker login ghcr.io -u ci --password-stdin",
        "$ mysql -u root -p shop\nmkdir -p 'My Folder Name'",
        "password = request.form['password']",
        "let tokens = quote!(..100u32);",
    ] {
        misses(text);
    }
}

#[test]
fn provider_tokens_with_short_prefixes() {
    let cases = [
        ("shopify-token", format!("shpat_{}", rnd(80, HEX, 32))),
        ("shopify-token", format!("shppa_{}", rnd(81, HEX, 32))),
        ("vault-token", format!("hvs.{}", rnd(82, URLSAFE, 90))),
        ("vault-token", format!("hvb.{}", rnd(83, URLSAFE, 138))),
        ("databricks-token", format!("dapi{}", rnd(84, HEX, 32))),
        ("databricks-token", format!("dapi{}-2", rnd(85, HEX, 32))),
        ("sentry-token", format!("sntryu_{}", rnd(86, HEX, 64))),
        ("sentry-token", format!("sntrys_{}", rnd(87, URLSAFE, 100))),
        ("doppler-token", format!("dp.st.{}", rnd(88, ALNUM, 43))),
        ("doppler-token", format!("dp.pt.{}", rnd(89, ALNUM, 43))),
        (
            "postman-api-key",
            format!("PMAK-{}-{}", rnd(90, HEX, 24), rnd(91, HEX, 34)),
        ),
        (
            "telegram-bot-token",
            format!("{}:AA{}", rnd(92, "123456789", 10), rnd(93, URLSAFE, 33)),
        ),
    ];
    for (id, tok) in &cases {
        finds(id, &format!("here is the key: {tok} - keep it safe"), tok);
        finds(id, &format!("{{\"value\": \"{tok}\"}}"), tok);
    }
    // Telegram's API puts `bot` right before the token.
    let tg = &cases[11].1;
    finds(
        "telegram-bot-token",
        &format!("curl https://api.telegram.org/bot{tg}/getMe"),
        tg,
    );
    // Look-alikes: words, hosts, shapefiles, placeholders.
    misses("ogr2ogr -f \"ESRI Shapefile\" parcels.shp in.geojson");
    misses("export CDP_URL=http://cdp.internal:9222/json/version");
    misses("inet6 fe80::aa:bbff:fecc:dd01/64 scope link");
    misses(&format!("dapi{}", "0".repeat(32)));
    misses("see dp.st.example for the format");
}

// ---------------------------------------------------------------------------
// Personal data.

#[test]
fn emails() {
    for e in [
        "alice@example.com",
        "bob.smith+tag@mail.example.co.uk",
        "x_y-z@sub-domain.example.org",
    ] {
        finds("email", &format!("mail {e}, thanks"), e);
        finds("email", &format!("<{e}>"), e);
    }
    // Decided: no dotted domain, not an email (local and ssh accounts).
    misses("login as user@localhost or root@db1");
    misses("icon@2x.png and @Override and @param name");
    misses("user@.example.com and a..b@example.com");
}

#[test]
fn phones() {
    for p in [
        "+1 415 555 0100",
        "+14155550100",
        "+44 20 7946 0958",
        "+33 1 23 45 67 89",
        "+49 (30) 1234567",
        "(415) 555-0100",
        "415-555-0100",
        "1-800-555-0100",
        "020 7946 0958",
        "01 23 45 67 89",
        "07700 900123",
    ] {
        finds("phone", &format!("call {p} today"), p);
    }
    misses("version 1.2.3 on 2024-01-15 at 10:23:45");
    misses("id 4155550100 and 1700000000123");
    misses("from 192.168.100.200 port 8080");
    misses("total: 2 + 3 = 5, x+1234567");
    misses("ISO 8601: 2024-01-15T10:23:45.123Z");
}

#[test]
fn cards() {
    for c in [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "4111111111111111",
        "5555 5555 5555 4444",
        "3782 822463 10005",
        "6011111111111117",
        "4222222222222",
    ] {
        finds("payment-card", &format!("card {c} exp 12/30"), c);
    }
    finds(
        "payment-card",
        "card 4111 1111 1111 1111 123",
        "4111 1111 1111 1111",
    );
    // Luhn-invalid, wrong issuer digit, mixed separators, odd grouping.
    misses("card 4111 1111 1111 1112");
    misses("order 1234567812345670");
    misses("4111-1111 1111-1111");
    misses("41 1111 1111 1111 11");
    misses("ts 1700000000123456789");
}

#[test]
fn ibans() {
    for i in [
        "DE89 3704 0044 0532 0130 00",
        "DE89370400440532013000",
        "GB82 WEST 1234 5698 7654 32",
        "FR14 2004 1010 0505 0001 3M02 606",
        "NL91ABNA0417164300",
    ] {
        finds("iban", &format!("IBAN: {i} please"), i);
    }
    finds(
        "iban",
        "pay DE89 3704 0044 0532 0130 00 NOW",
        "DE89 3704 0044 0532 0130 00",
    );
    misses("IBAN: DE89 3704 0044 0532 0130 01");
    misses("GB82 WEST 1234 5698 7654 33");
    misses("XX89370400440532013000");
    misses("AB12CDEFGHIJKLMNOPQRS");
}

#[test]
fn ssns() {
    for s in ["123-45-6789", "123 45 6789", "772-11-3344"] {
        finds("us-ssn", &format!("SSN {s}."), s);
    }
    for bad in [
        "000-12-3456",
        "666-12-3456",
        "900-12-3456",
        "123-00-4567",
        "123-45-0000",
        "123456789",
        "2024-01-1234",
        "x123-45-6789",
        "123-45-6789-1",
    ] {
        misses(&format!("n {bad} end"));
    }
}

#[test]
fn national_ids() {
    finds("es-dni", "DNI 12345678Z", "12345678Z");
    finds("es-dni", "DNI 12345678-Z", "12345678-Z");
    finds("es-dni", "NIE X1234567L", "X1234567L");
    misses("DNI 12345678A");
    misses("NIE X1234567A");
    finds("uk-nino", "NI number AB 12 34 56 C", "AB 12 34 56 C");
    finds("uk-nino", "NINO: JG103759A.", "JG103759A");
    misses("BG 12 34 56 C and GB123456A");
    misses("AB123456E and DA123456A");
    misses("AB 12 3456 C");
    // CPF as written, both check digits; BSN after its name, eleven-test.
    finds("br-cpf", "CPF 529.982.247-25 ativo", "529.982.247-25");
    finds("br-cpf", "<cpf>111.444.777-35</cpf>", "111.444.777-35");
    misses("CPF 529.982.247-26 ativo");
    misses("CPF 111.111.111-11");
    misses("libfoo 123.456.789-10 released");
    finds("nl-bsn", "BSN: 111222333, geboren 1988", "111222333");
    finds("nl-bsn", "{\"bsn\": \"123456782\"}", "123456782");
    finds("nl-bsn", "burgerservicenummer 111222333", "111222333");
    misses("BSN: 123456789 (fout)");
    misses("Order 111222333 shipped to Utrecht.");
}

#[test]
fn numbers_next_to_log_noise_are_still_found() {
    // The digit pass skips dates, dotted numbers, hex ids and `123ms`
    // quickly; what follows them must still be read.
    let cases = [
        (
            "2024-03-01 4111 1111 1111 1111",
            "payment-card",
            "4111 1111 1111 1111",
        ),
        (
            "2024-03-01T10:23:45Z call +44 20 7946 0958",
            "phone",
            "+44 20 7946 0958",
        ),
        ("ip=10.1.2.3 ssn=123-45-6789", "us-ssn", "123-45-6789"),
        ("version 1.2.3: 415.555.0100", "phone", "415.555.0100"),
        (
            "sha=3f7868a0e38 DE89 3704 0044 0532 0130 00",
            "iban",
            "DE89 3704 0044 0532 0130 00",
        ),
        ("200 123ms dni=12345678Z", "es-dni", "12345678Z"),
        ("took 12ms;AB 12 34 56 C", "uk-nino", "AB 12 34 56 C"),
        ("amount=129.99 (415) 555-0100", "phone", "(415) 555-0100"),
    ];
    for (text, id, want) in cases {
        finds(id, text, want);
    }
}

#[test]
fn key_spellings() {
    let v = rnd(52, ALNUM, 24);
    for key in [
        "password",
        "Password",
        "PASSWORD",
        "db_passwd",
        "PWD",
        "apiKey",
        "ApiKey",
        "API_KEY",
        "X-Api-Key",
        "access_key",
        "authKey",
        "privateKey",
        "clientSecret",
        "CLIENT_SECRET",
        "accessToken",
        "REFRESH_TOKEN",
        "credentials",
    ] {
        finds("generic-secret", &format!("{key}: {v}"), &v);
    }
}

#[test]
fn hints_show_only_public_prefixes() {
    let hint = |text: &str| {
        let mut v = json!(text);
        inspect(&mut v, &DlpPolicy::default()).findings[0]
            .hint
            .clone()
    };
    let tail = rnd(53, ALNUM, 30);
    assert_eq!(
        hint(&format!("sk_live_{tail}")),
        format!("sk_live_…{}", &tail[26..])
    );
    assert_eq!(
        hint(&format!("sk-proj-{tail}")),
        format!("sk-proj-…{}", &tail[26..])
    );
    assert_eq!(
        hint(&format!("password={tail}")),
        format!("…{}", &tail[26..])
    );
    assert_eq!(hint("secret: Ab1Cd2Ef3Gh4Ij5K"), "…");
}

#[test]
fn hostile_inputs_stay_linear() {
    // Shapes that pile anchors or candidates on each other. In release
    // builds each costs at most a few hundred ms per MiB; quadratic
    // behaviour would take minutes even at this size.
    let n = 256 * 1024;
    let inputs = [
        "password".repeat(n / 8),
        "password=".repeat(n / 9),
        "password=aaaaaaaaaaaaaaaaaaaa ".repeat(n / 30),
        "token: ".repeat(n / 14) + &"A1".repeat(n / 4),
        "eyJ".repeat(n / 3) + ".a.b",
        "-----BEGIN PRIVATE KEY-----".repeat(n / 27),
        "-----BEGIN RSA PRIVATE KEY-----\n".to_string() + &"QUJD\n".repeat(n / 5),
        "@".repeat(n),
        "a@".repeat(n / 2),
        "1".repeat(n),
        "1 ".repeat(n / 2),
        "4111 ".repeat(n / 5),
        "DE89 ".repeat(n / 5),
        "AB12".repeat(n / 4),
        "://a:b".repeat(n / 6),
        "aws ".repeat(n / 4),
        "aws_secret_access_key=".repeat(n / 22),
        "sk-".repeat(n / 3),
        "xoxb-".repeat(n / 5),
        "ghp_".repeat(n / 4),
    ];
    for text in inputs {
        let t0 = std::time::Instant::now();
        let mut v = json!({"content": [{"type": "text", "text": text}]});
        inspect(&mut v, &DlpPolicy::with(&[SECRETS, PII], Action::Redact));
        let took = t0.elapsed();
        assert!(
            took < std::time::Duration::from_secs(10),
            "{took:?} on {:?}…",
            &text[..20]
        );
    }
}

// ---------------------------------------------------------------------------
// inspect(): structure, findings, actions.

fn secrets_in(seed: u64) -> Vec<String> {
    vec![
        format!("ghp_{}", rnd(seed, ALNUM, 36)),
        "AKIAIOSFODNN7EXAMPLE".to_string(),
        pem("RSA PRIVATE KEY", seed + 1, 4, "\n"),
        format!("sk_live_{}", rnd(seed + 2, ALNUM, 30)),
    ]
}

/// No run of eight characters of `secret` (outside its first `public`
/// bytes) appears in `hay`.
#[track_caller]
fn assert_no_secret(hay: &str, secret: &str, public: usize) {
    let b = secret.as_bytes();
    for i in public..b.len().saturating_sub(8) {
        let w = &secret[i..i + 8];
        if w.chars().all(|c| c.is_ascii_alphanumeric()) {
            assert!(!hay.contains(w), "{w:?} of the secret leaked into {hay}");
        }
    }
}

#[test]
fn redaction_keeps_structure_and_removes_every_secret_byte() {
    let s = secrets_in(60);
    let mut result = json!({
        "content": [
            {"type": "text", "text": format!("token {} and {}", s[0], s[1])},
            {"type": "resource", "resource": {"uri": "file:///k.pem", "mimeType": "text/plain", "text": s[2]}},
            {"type": "image", "data": "iVBORw0KGgo=", "mimeType": "image/png"}
        ],
        "structuredContent": {
            "deploy": {"env": [{"name": "STRIPE", "value": s[3]}, {"name": "N", "value": 3}]},
            "owner": "ops@example.com",
            "ok": true
        },
        "isError": false
    });
    let before = result.clone();
    let out = inspect(&mut result, &DlpPolicy::default());
    assert!(!out.blocked);
    assert_eq!(out.redactions, 4, "{:#?}", out.findings);
    let text = result["content"][0]["text"].as_str().unwrap();
    assert_eq!(
        text,
        "token [REDACTED:github-token] and [REDACTED:aws-access-key-id]"
    );
    assert_eq!(
        result["content"][1]["resource"]["text"],
        "[REDACTED:private-key]"
    );
    assert_eq!(
        result["structuredContent"]["deploy"]["env"][0]["value"],
        "[REDACTED:stripe-secret-key]"
    );
    // Everything else is untouched, including flagged personal data.
    let mut expected = before.clone();
    expected["content"][0]["text"] = json!(text);
    expected["content"][1]["resource"]["text"] = json!("[REDACTED:private-key]");
    expected["structuredContent"]["deploy"]["env"][0]["value"] =
        json!("[REDACTED:stripe-secret-key]");
    assert_eq!(result, expected);
    let dump = result.to_string();
    for (i, secret) in s.iter().enumerate() {
        assert_no_secret(&dump, secret, if i == 2 { 31 } else { 4 });
    }
    // Findings: paths, spans, classes, and never the secret.
    let paths: Vec<(&str, &str, Action)> = out
        .findings
        .iter()
        .map(|f| (f.path.as_str(), f.detector, f.action))
        .collect();
    assert_eq!(
        paths,
        [
            ("/content/0/text", "github-token", Action::Redact),
            ("/content/0/text", "aws-access-key-id", Action::Redact),
            ("/content/1/resource/text", "private-key", Action::Redact),
            (
                "/structuredContent/deploy/env/0/value",
                "stripe-secret-key",
                Action::Redact
            ),
            ("/structuredContent/owner", "email", Action::Flag),
        ]
    );
    let t0 = before["content"][0]["text"].as_str().unwrap();
    assert_eq!(&t0[out.findings[0].span.clone()], s[0]);
    assert_eq!(out.findings[1].hint, "AKIA…MPLE");
    assert_eq!(out.findings[2].severity, Severity::Critical);
    let findings = serde_json::to_string(&out.findings).unwrap();
    for (i, secret) in s.iter().enumerate() {
        assert_no_secret(&findings, secret, if i == 2 { 31 } else { 8 });
    }
    assert!(!findings.contains("ops@example"), "{findings}");
    // Inspecting the redacted result again finds no secret.
    let again = inspect(&mut result, &DlpPolicy::default());
    assert!(again.findings.iter().all(|f| f.class == PII), "{again:?}");
}

#[test]
fn json_pointer_escapes_and_key_context() {
    let v = rnd(61, ALNUM, 28);
    let aws = rnd(62, B64, 40);
    let mut result = json!({"structuredContent": {
        "a/b~c": {"password": v, "SecretAccessKey": aws, "next_page_token": v, "id": v}
    }});
    let out = inspect(&mut result, &DlpPolicy::default());
    // Object order depends on serde_json's features (workspace feature
    // unification can turn on preserve_order): compare sorted.
    let mut got: Vec<(&str, &str)> = out
        .findings
        .iter()
        .map(|f| (f.path.as_str(), f.detector))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            (
                "/structuredContent/a~1b~0c/SecretAccessKey",
                "aws-secret-access-key"
            ),
            ("/structuredContent/a~1b~0c/password", "generic-secret"),
        ]
    );
    let o = &result["structuredContent"]["a/b~c"];
    assert_eq!(o["password"], "[REDACTED:generic-secret]");
    assert_eq!(o["next_page_token"], v.as_str());
    assert_eq!(o["id"], v.as_str());
}

#[test]
fn actions_per_class() {
    let tok = format!("ghp_{}", rnd(63, ALNUM, 36));
    let text = format!("{tok} mail carol@example.com card 4111 1111 1111 1111");
    let run = |p: &DlpPolicy| {
        let mut v = json!({"content": [{"type": "text", "text": text}]});
        let out = inspect(&mut v, p);
        (v["content"][0]["text"].as_str().unwrap().to_string(), out)
    };
    // Default: secrets redacted, pii flagged.
    let (t, out) = run(&DlpPolicy::default());
    assert_eq!(
        t,
        "[REDACTED:github-token] mail carol@example.com card 4111 1111 1111 1111"
    );
    assert_eq!(out.findings.len(), 3);
    assert!(!out.blocked);
    // Block pii: blocked, and the matches are redacted too.
    let (t, out) = run(&DlpPolicy::default().and(PII, Action::Block));
    assert!(out.blocked);
    assert_eq!(
        t,
        "[REDACTED:github-token] mail [REDACTED:email] card [REDACTED:payment-card]"
    );
    // Only pii inspected, redacted.
    let (t, out) = run(&DlpPolicy::with(&[PII], Action::Redact));
    assert!(t.starts_with(&tok), "{t}");
    assert_eq!(out.redactions, 2);
    // Nothing inspected.
    let (t, out) = run(&DlpPolicy {
        actions: Default::default(),
    });
    assert_eq!(t, text);
    assert!(out.findings.is_empty());
    // Policies read from config.
    let p: DlpPolicy =
        serde_json::from_value(json!({"actions": {"secrets": "block", "pii": "redact"}})).unwrap();
    assert_eq!(p.action(SECRETS), Some(Action::Block));
    let (_, out) = run(&p);
    assert!(out.blocked);
}

#[test]
fn legacy_class_api_still_works() {
    assert!(dlp::class("secrets").is_some() && dlp::class("pii").is_some());
    assert!(dlp::class("cards").is_none());
    assert_eq!(
        dlp::classes().iter().map(|c| c.name).collect::<Vec<_>>(),
        ["secrets", "pii"]
    );
    let mut v = json!({"content": [{"type": "text", "text": "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY and AKIAIOSFODNN7EXAMPLE"}], "isError": false});
    let (n, unknown) = dlp::redact(&mut v, &["secrets".into(), "nope".into()]);
    assert_eq!((n, unknown), (2, vec!["nope".to_string()]));
    let t = v["content"][0]["text"].as_str().unwrap();
    assert_eq!(
        t,
        "AWS_SECRET_ACCESS_KEY=[REDACTED:aws-secret-access-key] and [REDACTED:aws-access-key-id]"
    );
    assert_eq!(v["isError"], false);
    let mut v = json!([
        "mail bob@example.com or call +1 415 555 0100",
        "nothing here"
    ]);
    assert_eq!(dlp::redact(&mut v, &[" pii".into()]).0, 2);
    assert_eq!(v[1], "nothing here");
    let secrets = dlp::class("secrets").unwrap();
    let mut s = format!("x {}", pem("PRIVATE KEY", 64, 2, "\n"));
    assert!(secrets.matches(&s));
    assert_eq!(secrets.redact_text(&mut s), 1);
    assert_eq!(s, "x [REDACTED:private-key]");
    assert!(!dlp::class("pii").unwrap().matches("nothing"));
    assert!(secrets.detectors().any(|d| d.id == "jwt"));
}

#[test]
fn detector_table() {
    for d in dlp::detectors() {
        assert!(d.class == SECRETS || d.class == PII, "{}", d.id);
    }
    let count = |c: &str| dlp::detectors().iter().filter(|d| d.class == c).count();
    assert!(count(SECRETS) >= 20 && count(PII) >= 6);
}

// ---------------------------------------------------------------------------
// Streams.

/// Streams `text` in chunks of the given sizes (cycled); returns the
/// released text, the findings and the largest buffer seen.
fn stream(
    text: &str,
    sizes: &[usize],
    policy: &DlpPolicy,
) -> (String, Vec<dlp::DlpFinding>, usize, bool) {
    let mut sc = StreamScanner::new(policy);
    let (mut out, mut findings, mut max, mut blocked) = (String::new(), Vec::new(), 0, false);
    let mut rest = text;
    let mut k = 0;
    while !rest.is_empty() {
        let mut n = sizes[k % sizes.len()].min(rest.len());
        while !rest.is_char_boundary(n) {
            n += 1;
        }
        k += 1;
        let c = sc.push(&rest[..n]);
        rest = &rest[n..];
        out.push_str(&c.text);
        findings.extend(c.findings);
        blocked |= c.blocked;
        max = max.max(sc.buffered());
    }
    let c = sc.finish();
    out.push_str(&c.text);
    findings.extend(c.findings);
    blocked |= c.blocked;
    assert_eq!(sc.buffered(), 0);
    (out, findings, max, blocked)
}

fn batch(text: &str, policy: &DlpPolicy) -> (String, Vec<dlp::DlpFinding>) {
    let mut v = Value::String(text.to_string());
    let out = inspect(&mut v, policy);
    (v.as_str().unwrap().to_string(), out.findings)
}

#[test]
fn stream_finds_a_key_split_across_two_chunks() {
    let tok = format!("ghp_{}", rnd(70, ALNUM, 36));
    let text = format!("line one\nexport GH={tok}\nline three\n");
    let at = text.find("ghp_").unwrap() + 10;
    let mut sc = StreamScanner::new(&DlpPolicy::default());
    let a = sc.push(&text[..at]);
    assert!(!a.text.contains("ghp_"), "{a:?}");
    let b = sc.push(&text[at..]);
    let c = sc.finish();
    let out = format!("{}{}{}", a.text, b.text, c.text);
    assert_eq!(
        out,
        "line one\nexport GH=[REDACTED:github-token]\nline three\n"
    );
    let f: Vec<_> = [a.findings, b.findings, c.findings].concat();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].detector, "github-token");
    assert_eq!(&text[f[0].span.clone()], tok);
}

#[test]
fn stream_finds_a_pem_block_across_many_chunks() {
    let key = pem("OPENSSH PRIVATE KEY", 71, 40, "\n");
    let text = format!("cat id_ed25519\n{key}\n$ ");
    for sizes in [&[7usize][..], &[64], &[1, 13, 250]] {
        let (out, f, max, _) = stream(&text, sizes, &DlpPolicy::default());
        assert_eq!(
            out, "cat id_ed25519\n[REDACTED:private-key]\n$ ",
            "{sizes:?}"
        );
        assert_eq!(f.len(), 1);
        assert_eq!(&text[f[0].span.clone()], key);
        assert!(max <= StreamScanner::KEY_HOLD + 128 + 250, "{max}");
    }
}

#[test]
fn stream_caps_an_endless_private_key_and_swallows_its_body() {
    // 64 KiB of key body: more than the key hold.
    let key = pem("RSA PRIVATE KEY", 72, 1024, "\n");
    let text = format!("start\n{key}\nafter the key\n");
    let (out, f, max, _) = stream(&text, &[100], &DlpPolicy::default());
    assert!(max <= StreamScanner::KEY_HOLD + 128 + 100, "{max}");
    assert_eq!(out, "start\n[REDACTED:private-key]\nafter the key\n");
    assert_no_secret(&out, &key, 31);
    assert_eq!(f.len(), 2);
    assert_eq!(f[0].span.start, 6);
    assert_eq!(f[1].span.end, 6 + key.len());
    assert_eq!(f[0].span.end, f[1].span.start);
}

#[test]
fn stream_memory_is_bounded() {
    let mut rng = StdRng::seed_from_u64(73);
    let mut text = String::new();
    while text.len() < 1 << 20 {
        match rng.random_range(0..4) {
            0 => text.push_str("the quick brown fox jumps over the lazy dog. "),
            1 => text.push_str(&rnd(rng.random(), ALNUM, rng.random_range(1..100_000))),
            2 => text.push('\n'),
            _ => text.push_str("2024-01-15T10:23:45Z GET /api 200 "),
        }
    }
    let (out, _, max, _) = stream(&text, &[100, 4096, 1], &DlpPolicy::default());
    assert!(
        max <= StreamScanner::HOLD + StreamScanner::CONTEXT + 128 + 4096,
        "{max}"
    );
    assert_eq!(out.len(), text.len());
}

#[test]
fn stream_redacts_delimited_passwords_like_batch() {
    // Quoted values with punctuation and blanks, line passphrases, XML and
    // flags, cut at every size: a stream must see each value whole.
    let text = concat!(
        "{\n  \"NODE_ENV\": \"production\",\n  \"DB_PASSWORD\": \"P4ss;word99!\",\n",
        "  \"PASSPHRASE\": \"correct horse battery staple\",\n  \"HOME\": \"/root\"\n}\n",
        "keystore.password=Seven Silver Swans Swim\n",
        "DB_PASSWORD=Tr0ub4dor&3x PORT=5432\n",
        "<password>Orbit&Comet=5</password>\n",
        "$ docker login -u ci --password 'Zx8!qW3=rT6&yU1' registry.example.com\n",
        "GET /login?user=bob&password=Kp8vLq2zXw&remember=1\n",
    )
    .repeat(8);
    let policy = DlpPolicy::default();
    let (batched, bf) = batch(&text, &policy);
    assert_eq!(bf.len(), 7 * 8, "{batched}");
    for secret in [
        "P4ss;word99!",
        "horse battery",
        "Swans Swim",
        "Tr0ub4dor&3x",
        "Comet=5",
        "rT6&yU1",
        "Kp8vLq2zXw",
    ] {
        assert!(!batched.contains(secret), "{secret} in {batched}");
    }
    for sizes in [&[1usize][..], &[2, 3, 5], &[7, 64], &[4096]] {
        let (streamed, sf, _, _) = stream(&text, sizes, &policy);
        assert_eq!(streamed, batched, "{sizes:?}");
        assert_eq!(sf, bf, "{sizes:?}");
    }
}

#[test]
fn stream_matches_batch_on_realistic_text() {
    let mut rng = StdRng::seed_from_u64(75);
    let secrets = secrets_in(76);
    let mut text = String::new();
    while text.len() < 256 * 1024 {
        match rng.random_range(0..12) {
            0..=3 => text
                .push_str("Deploys went out on time this week; the cache hit rate held at 97%. "),
            4..=6 => text.push_str(&format!(
                "2024-03-{:02}T10:{:02}:00Z GET /api/v1/items 200 {}ms ip=10.0.{}.{} req={}\n",
                rng.random_range(1..29),
                rng.random_range(0..60),
                rng.random_range(1..900),
                rng.random_range(0..256),
                rng.random_range(0..256),
                rnd(rng.random(), HEX, 32)
            )),
            7 => text.push_str("let token_count = count_tokens(&prompt); // max_tokens=4096\n"),
            8 => text.push_str(
                "mail ops@example.com or call +44 20 7946 0958; card 4111 1111 1111 1111\n",
            ),
            9 => text.push_str(&format!("password={}\n", rnd(rng.random(), ALNUM, 24))),
            _ => text.push_str(&secrets[rng.random_range(0..secrets.len())]),
        }
    }
    let policy = DlpPolicy::default();
    let (batched, bf) = batch(&text, &policy);
    assert!(bf.len() > 100);
    for sizes in [&[4096usize][..], &[1, 17, 300], &[65536]] {
        let (streamed, sf, _, _) = stream(&text, sizes, &policy);
        assert!(
            streamed == batched,
            "stream in {sizes:?} differs from batch"
        );
        assert_eq!(sf, bf);
    }
}

#[test]
fn stream_blocks() {
    let text = format!("x {} y", rnd(74, HEX, 4) + "@example.com");
    let (_, f, _, blocked) = stream(&text, &[3], &DlpPolicy::with(&[PII], Action::Block));
    assert!(blocked);
    assert_eq!(f.len(), 1);
}

// ---------------------------------------------------------------------------
// Seeded random inputs.

fn random_text(rng: &mut StdRng) -> String {
    let pieces = [
        "password=",
        "token: ",
        "AKIA",
        "ghp_",
        "-----BEGIN RSA PRIVATE KEY-----\n",
        "-----END RSA PRIVATE KEY-----",
        "eyJ",
        ".",
        "@",
        "example.com",
        "+44 ",
        "4111 ",
        "DE89 ",
        " ",
        "\n",
        "\\n",
        "\"",
        "sk-",
        "sk-ant-",
        "://",
        ":",
        "@db/",
        "é",
        "😀",
        "\u{200b}",
        "0",
        "12",
        "-",
        "Bearer ",
        "aws ",
        "sig=",
        "AccountKey=",
        "twilio ",
    ];
    let mut s = String::new();
    for _ in 0..rng.random_range(0..80) {
        if rng.random_bool(0.5) {
            s.push_str(pieces[rng.random_range(0..pieces.len())]);
        } else {
            let alpha = [ALNUM, B64, HEX, "0123456789 -"][rng.random_range(0..4)];
            s.push_str(&rnd(rng.random(), alpha, rng.random_range(1..60)));
        }
    }
    s
}

#[test]
fn random_inputs_never_panic_and_never_change_text_without_a_finding() {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let everything = DlpPolicy::with(&[SECRETS, PII], Action::Redact);
    for round in 0..2000 {
        let text = random_text(&mut rng);
        for policy in [&DlpPolicy::default(), &everything] {
            let mut v = json!({"content": [{"type": "text", "text": text}], "n": 1});
            let out = inspect(&mut v, policy);
            let after = v["content"][0]["text"].as_str().unwrap();
            let redacting = out
                .findings
                .iter()
                .filter(|f| f.action != Action::Flag)
                .count();
            assert_eq!(redacting, out.redactions);
            if redacting == 0 {
                assert_eq!(after, text);
            } else {
                assert_eq!(after.matches("[REDACTED:").count(), redacting, "{text:?}");
            }
            assert_eq!(v["n"], 1);
            for f in &out.findings {
                assert!(text.is_char_boundary(f.span.start) && text.is_char_boundary(f.span.end));
                assert!(f.span.start < f.span.end && f.span.end <= text.len());
                let m = &text[f.span.clone()];
                if m.len() >= 12 {
                    assert!(!f.hint.contains(m), "{f:?}");
                }
            }
            // Streaming in random chunks gives the same answer.
            if round % 3 != 0 {
                continue;
            }
            let sizes: Vec<usize> = (0..4).map(|_| rng.random_range(1..40)).collect();
            let (streamed, sf, _, _) = stream(&text, &sizes, policy);
            let (batched, bf) = batch(&text, policy);
            assert_eq!(streamed, batched, "{text:?} in {sizes:?}");
            assert_eq!(sf, bf, "{text:?}");
        }
    }
}

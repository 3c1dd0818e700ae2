//! Who may use the console without an admin certificate, and proof that a
//! form came from the console: the one-time login link, session cookies,
//! CSRF tokens and the Origin check.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::RngCore;
use ring::hmac;

/// The session cookie's name.
pub const COOKIE: &str = "portcullis_console";
/// How long a login link may wait for its one use.
pub const LINK_TTL: Duration = Duration::from_secs(600);
/// How long a console session lasts from login.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// At most this many console sessions at once (the oldest goes first).
pub const MAX_SESSIONS: usize = 32;

/// Who is using the console: an admin certificate, or a session opened by
/// the login link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Who {
    /// The SPIFFE ID of an admin client certificate.
    Cert(String),
    /// A login-link session, by the SHA-256 (hex) of its cookie.
    Link(String),
}

impl Who {
    /// `console:<admin identity or "login-link">`: the actor in audit records.
    pub fn actor(&self) -> String {
        match self {
            Who::Cert(id) => format!("console:{id}"),
            Who::Link(_) => "console:login-link".to_owned(),
        }
    }

    /// For the page header.
    pub fn label(&self) -> &str {
        match self {
            Who::Cert(id) => id,
            Who::Link(_) => "login-link",
        }
    }

    fn binding(&self) -> String {
        match self {
            Who::Cert(id) => format!("cert:{id}"),
            Who::Link(h) => format!("session:{h}"),
        }
    }
}

fn random_hex() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    hex::encode(b)
}

fn sha256_hex(s: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, s.as_bytes()))
}

/// Compares two strings without stopping at the first difference.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The console's credentials other than certificates.
pub struct Auth {
    /// SHA-256 of the pending login token and when it lapses; `None` once used.
    link: Mutex<Option<(String, Instant)>>,
    /// Open sessions: SHA-256 of the cookie → when opened.
    sessions: Mutex<HashMap<String, Instant>>,
    csrf_key: hmac::Key,
}

impl Default for Auth {
    fn default() -> Self {
        Auth::new()
    }
}

impl Auth {
    /// No login link, no session, a fresh CSRF key.
    pub fn new() -> Auth {
        let mut k = [0u8; 32];
        rand::rng().fill_bytes(&mut k);
        Auth {
            link: Mutex::new(None),
            sessions: Mutex::new(HashMap::new()),
            csrf_key: hmac::Key::new(hmac::HMAC_SHA256, &k),
        }
    }

    /// Issues the one-time login token (32 random bytes, hex), valid for
    /// [`LINK_TTL`]; replaces any earlier one.
    pub fn issue_link(&self) -> String {
        let token = random_hex();
        *lock(&self.link) = Some((sha256_hex(&token), Instant::now() + LINK_TTL));
        token
    }

    /// Spends the login token: `Some(cookie value)` of a new session when
    /// it is the pending one and still valid; never twice.
    pub fn redeem(&self, token: &str) -> Option<String> {
        let mut link = lock(&self.link);
        let (want, until) = link.as_ref()?;
        if !same(&sha256_hex(token), want) {
            return None;
        }
        let fresh = Instant::now() < *until;
        // Used (or lapsed): gone either way.
        *link = None;
        drop(link);
        if !fresh {
            return None;
        }
        let cookie = random_hex();
        let mut s = lock(&self.sessions);
        let now = Instant::now();
        s.retain(|_, at| now.duration_since(*at) < SESSION_TTL);
        while s.len() >= MAX_SESSIONS {
            let oldest = s.iter().min_by_key(|(_, at)| **at).map(|(k, _)| k.clone());
            match oldest {
                Some(k) => s.remove(&k),
                None => break,
            };
        }
        s.insert(sha256_hex(&cookie), now);
        Some(cookie)
    }

    /// The session a cookie value names, if it is open.
    pub fn session(&self, cookie: &str) -> Option<Who> {
        let h = sha256_hex(cookie);
        let mut s = lock(&self.sessions);
        match s.get(&h) {
            Some(at) if at.elapsed() < SESSION_TTL => Some(Who::Link(h)),
            Some(_) => {
                s.remove(&h);
                None
            }
            None => None,
        }
    }

    /// The CSRF token of `who`'s forms.
    pub fn csrf(&self, who: &Who) -> String {
        hex::encode(hmac::sign(&self.csrf_key, who.binding().as_bytes()))
    }

    /// Whether `token` is `who`'s CSRF token.
    pub fn csrf_ok(&self, who: &Who, token: &str) -> bool {
        match hex::decode(token) {
            Ok(tag) => hmac::verify(&self.csrf_key, who.binding().as_bytes(), &tag).is_ok(),
            Err(_) => false,
        }
    }
}

/// The console cookie's value in a `Cookie` header, if there is one.
pub fn cookie_value(header: &str) -> Option<&str> {
    header.split(';').find_map(|kv| {
        let (k, v) = kv.trim().split_once('=')?;
        (k.trim() == COOKIE).then(|| v.trim())
    })
}

/// The `Set-Cookie` value of a new console session.
pub fn set_cookie(value: &str) -> String {
    format!(
        "{COOKIE}={value}; HttpOnly; Secure; SameSite=Strict; Path=/console; Max-Age={}",
        SESSION_TTL.as_secs()
    )
}

/// Whether a state-changing request's `Origin` (if any) is this listener
/// itself (`https://` + its `Host`); `null` or any other origin is foreign.
pub fn same_origin(origin: Option<&str>, host: Option<&str>) -> bool {
    match (origin, host) {
        (None, _) => true,
        (Some(o), Some(h)) => o.eq_ignore_ascii_case(&format!("https://{h}")),
        (Some(_), None) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_link_works_once() {
        let a = Auth::new();
        assert!(a.redeem("nope").is_none());
        let t = a.issue_link();
        assert_eq!(t.len(), 64);
        assert!(a.redeem("0".repeat(64).as_str()).is_none());
        // A wrong guess spends nothing... the right token still works once.
        let cookie = a.redeem(&t).unwrap();
        assert!(a.redeem(&t).is_none());
        let who = a.session(&cookie).unwrap();
        assert_eq!(who.actor(), "console:login-link");
        assert!(a.session("forged").is_none());
    }

    #[test]
    fn csrf_tokens_are_bound_to_who() {
        let a = Auth::new();
        let alice = Who::Cert("spiffe://x/admin/alice".into());
        let bob = Who::Cert("spiffe://x/admin/bob".into());
        let t = a.csrf(&alice);
        assert!(a.csrf_ok(&alice, &t));
        assert!(!a.csrf_ok(&bob, &t));
        assert!(!a.csrf_ok(&alice, ""));
        assert!(!a.csrf_ok(&alice, "zz"));
        // Another process (another key) does not accept it.
        assert!(!Auth::new().csrf_ok(&alice, &t));
    }

    #[test]
    fn sessions_are_bounded() {
        let a = Auth::new();
        let mut cookies = Vec::new();
        for _ in 0..MAX_SESSIONS + 3 {
            let t = a.issue_link();
            cookies.push(a.redeem(&t).unwrap());
        }
        assert_eq!(lock(&a.sessions).len(), MAX_SESSIONS);
        assert!(a.session(cookies.last().unwrap()).is_some());
    }

    #[test]
    fn cookies_and_origins() {
        assert_eq!(
            cookie_value("a=b; portcullis_console=xyz; c=d"),
            Some("xyz")
        );
        assert_eq!(cookie_value("portcullis_consolex=1"), None);
        let c = set_cookie("v");
        for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/console"] {
            assert!(c.contains(flag), "{c}");
        }
        assert!(same_origin(None, Some("127.0.0.1:1")));
        assert!(same_origin(
            Some("https://127.0.0.1:1"),
            Some("127.0.0.1:1")
        ));
        assert!(!same_origin(
            Some("https://evil.example"),
            Some("127.0.0.1:1")
        ));
        assert!(!same_origin(Some("null"), Some("127.0.0.1:1")));
        assert!(!same_origin(
            Some("http://127.0.0.1:1"),
            Some("127.0.0.1:1")
        ));
    }
}

//! Quarantines: an identity (or one of its parts — agent, user, device —
//! or a single session) put in `deny-all` or `read-only` mode, with a
//! reason and an optional expiry.
//!
//! The check runs on every message, so it is built to cost nothing when
//! nobody is quarantined (one atomic load) and a few hash lookups when
//! someone is.
//!
//! Expiries are wall-clock (they must mean the same after a restart and on
//! every replica), but a wall clock can jump. A quarantine therefore also
//! keeps a monotonic floor taken when this process learned of it: it stays
//! in force until both the wall clock and the monotonic clock say its time
//! is up, so stepping the clock forward never lifts it early (stepping it
//! back only keeps it longer).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How far a quarantined caller may still go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Only tools annotated read-only (and labelled safe) and safe reads.
    ReadOnly,
    /// Nothing at all.
    DenyAll,
}

impl Mode {
    /// The wire name (`read-only`, `deny-all`).
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::ReadOnly => "read-only",
            Mode::DenyAll => "deny-all",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "read-only" | "readonly" | "read_only" => Some(Mode::ReadOnly),
            "deny-all" | "deny_all" | "deny" => Some(Mode::DenyAll),
            _ => None,
        }
    }
}

/// Which part of a caller a quarantine names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// The whole identity key (`w=…;u=…`).
    Identity,
    /// A workload (SPIFFE ID), whichever user it acts for.
    Agent,
    /// A user (`iss#sub`, or a local user), whichever agent acts for them.
    User,
    /// A device id from a posture assertion.
    Device,
    /// One session.
    Session,
}

impl TargetKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            TargetKind::Identity => "identity",
            TargetKind::Agent => "agent",
            TargetKind::User => "user",
            TargetKind::Device => "device",
            TargetKind::Session => "session",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<TargetKind> {
        Some(match s {
            "identity" => TargetKind::Identity,
            "agent" => TargetKind::Agent,
            "user" => TargetKind::User,
            "device" => TargetKind::Device,
            "session" => TargetKind::Session,
            _ => return None,
        })
    }
}

/// What a quarantine applies to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Target {
    /// Which part of the caller.
    pub kind: TargetKind,
    /// Its value (identity key, SPIFFE ID, user id, device id, session id).
    pub value: String,
}

impl Target {
    /// A target.
    pub fn new(kind: TargetKind, value: impl Into<String>) -> Target {
        Target {
            kind,
            value: value.into(),
        }
    }

    /// The store key: `kind:value`.
    pub fn key(&self) -> String {
        format!("{}:{}", self.kind.as_str(), self.value)
    }

    /// Parses a store key.
    pub fn from_key(k: &str) -> Option<Target> {
        let (kind, value) = k.split_once(':')?;
        Some(Target::new(TargetKind::parse(kind)?, value))
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.as_str(), self.value)
    }
}

/// One quarantine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantine {
    /// Who is quarantined.
    pub target: Target,
    /// How strictly.
    pub mode: Mode,
    /// Why (shown to operators, recorded in the audit log; never sent to
    /// the caller beyond "quarantined").
    pub reason: String,
    /// Who decided it (`admin:<identity>`, `auto:<rule>`).
    pub by: String,
    /// When (Unix seconds).
    pub created_at: u64,
    /// When it lifts by itself (Unix seconds), if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
}

impl Quarantine {
    /// Whether it is in force at `now`.
    pub fn active(&self, now: u64) -> bool {
        self.expires_at.is_none_or(|t| t > now)
    }
}

/// The parts of a caller a quarantine can name.
#[derive(Debug, Clone, Copy, Default)]
pub struct Subject<'a> {
    /// The identity key.
    pub identity: &'a str,
    /// The workload's SPIFFE ID.
    pub agent: Option<&'a str>,
    /// The user id.
    pub user: Option<&'a str>,
    /// The verified device id.
    pub device: Option<&'a str>,
    /// The session id (handshake era).
    pub session: Option<&'a str>,
}

impl Subject<'_> {
    /// Whether `t` names this caller.
    pub fn matches(&self, t: &Target) -> bool {
        let v = Some(t.value.as_str());
        match t.kind {
            TargetKind::Identity => self.identity == t.value,
            TargetKind::Agent => self.agent == v,
            TargetKind::User => self.user == v,
            TargetKind::Device => self.device == v,
            TargetKind::Session => self.session == v && !t.value.is_empty(),
        }
    }
}

/// The quarantines in force, by target.
#[derive(Default)]
pub struct Quarantines {
    /// Number of entries: the hot path's "anyone at all?" test.
    count: AtomicUsize,
    map: RwLock<HashMap<Target, Held>>,
}

/// A quarantine and its monotonic floor (see the module docs).
struct Held {
    q: Quarantine,
    /// Not lifted before this instant, whatever the wall clock says.
    floor: Option<Instant>,
}

impl Held {
    fn new(q: Quarantine, now: u64) -> Held {
        let floor = q
            .expires_at
            .map(|t| Instant::now() + Duration::from_secs(t.saturating_sub(now)));
        Held { q, floor }
    }

    /// In force by the wall clock, or not yet past its monotonic floor.
    fn active(&self, now: u64) -> bool {
        self.q.active(now) || self.floor.is_some_and(|f| Instant::now() < f)
    }
}

impl Quarantines {
    /// Adds or replaces a quarantine; returns the one it replaced.
    pub fn insert(&self, q: Quarantine) -> Option<Quarantine> {
        self.insert_at(q, crate::now_unix())
    }

    /// [`Quarantines::insert`] with the wall clock given: the floor is the
    /// time left at `now`.
    pub fn insert_at(&self, q: Quarantine, now: u64) -> Option<Quarantine> {
        let mut m = self.map.write().unwrap_or_else(|e| e.into_inner());
        let old = m.insert(q.target.clone(), Held::new(q, now));
        self.count.store(m.len(), Ordering::Release);
        old.map(|h| h.q)
    }

    /// Lifts a quarantine; returns it if there was one.
    pub fn remove(&self, t: &Target) -> Option<Quarantine> {
        let mut m = self.map.write().unwrap_or_else(|e| e.into_inner());
        let old = m.remove(t);
        self.count.store(m.len(), Ordering::Release);
        old.map(|h| h.q)
    }

    /// Whether no quarantine is held (expired ones count until swept).
    pub fn is_empty(&self) -> bool {
        self.count.load(Ordering::Acquire) == 0
    }

    /// The strictest quarantine in force for `s` at `now`.
    pub fn check(&self, s: &Subject<'_>, now: u64) -> Option<Quarantine> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let m = self.map.read().unwrap_or_else(|e| e.into_inner());
        let mut best: Option<&Quarantine> = None;
        let mut consider = |kind: TargetKind, v: Option<&str>| {
            let Some(v) = v.filter(|v| !v.is_empty()) else {
                return;
            };
            // The lookup key borrows nothing from the map: build it once.
            if let Some(h) = m.get(&Target::new(kind, v)) {
                if h.active(now) && best.is_none_or(|b| h.q.mode > b.mode) {
                    best = Some(&h.q);
                }
            }
        };
        consider(TargetKind::Identity, Some(s.identity));
        consider(TargetKind::Agent, s.agent);
        consider(TargetKind::User, s.user);
        consider(TargetKind::Device, s.device);
        consider(TargetKind::Session, s.session);
        best.cloned()
    }

    /// Every quarantine in force at `now`, oldest first.
    pub fn list(&self, now: u64) -> Vec<Quarantine> {
        let m = self.map.read().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<Quarantine> = m
            .values()
            .filter(|h| h.active(now))
            .map(|h| h.q.clone())
            .collect();
        v.sort_by_key(|q| (q.created_at, q.target.key()));
        v
    }

    /// Removes expired entries; returns them.
    pub fn sweep(&self, now: u64) -> Vec<Quarantine> {
        let mut m = self.map.write().unwrap_or_else(|e| e.into_inner());
        let dead: Vec<Target> = m
            .iter()
            .filter(|(_, h)| !h.active(now))
            .map(|(t, _)| t.clone())
            .collect();
        let out = dead
            .iter()
            .filter_map(|t| m.remove(t))
            .map(|h| h.q)
            .collect();
        self.count.store(m.len(), Ordering::Release);
        out
    }
}

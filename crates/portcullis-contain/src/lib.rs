//! Breach containment: the state that limits the blast radius when an
//! identity, a token or a server goes bad — quarantines, the kill switch,
//! revocations, rate limits, concurrency caps, circuit breakers and the
//! rules that quarantine automatically — and the persistent store that
//! keeps it across restarts.
//!
//! Nothing here knows about MCP or the gateway: the pipeline asks
//! questions (`verdict`, `check`, `allow`) and reports outcomes.
#![forbid(unsafe_code)]

pub mod breaker;
pub mod concurrency;
pub mod quarantine;
pub mod rate;
pub mod revocation;
pub mod rules;
pub mod state;
pub mod store;

pub use quarantine::{Mode, Quarantine, Subject, Target, TargetKind};
pub use state::{ContainEvent, Containment, Verdict};
pub use store::{FileStore, MemoryStore, StateStore, StoreError, StoreStatus};

/// Seconds since the Unix epoch (wall clock), the unit of every stored
/// expiry so entries mean the same after a restart.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

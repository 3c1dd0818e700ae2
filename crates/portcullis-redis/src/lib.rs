//! The shared state store for several gateway replicas: Redis behind the
//! same `StateStore` trait as the embedded `FileStore`, so containment
//! (quarantines, revocations, the kill switch, pins, risk baselines) decided
//! on one replica holds on all of them, and a GCRA rate limiter whose limit
//! is global (`portcullis_contain::rate::SharedLimiter`).
//!
//! - Entries are Redis keys with `EXPIREAT`, indexed per namespace; each
//!   write is one Lua script that also publishes the change, so every
//!   replica hears of it at once ([`layout`] has the keys and messages).
//! - `changes()` yields other replicas' changes; a replica's own writes are
//!   applied by its caller already.
//! - Redis away: `list` answers from a cache of every namespace read or
//!   written (`health()` says it is stale), writes go to an outbox and fail
//!   with "not yet stored" while being retried in order until stored; on
//!   reconnection every cached namespace is re-listed and the differences
//!   are announced as changes.
//!
//! Only this crate of the workspace depends on `redis`.
#![forbid(unsafe_code)]

mod backoff;
pub mod config;
pub mod error;
pub mod layout;
mod lua;
mod store;
mod view;

pub use config::RedisCfg;
pub use error::RedisStoreError;
pub use store::{Health, RedisStore};

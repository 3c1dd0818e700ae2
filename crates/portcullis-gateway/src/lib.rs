//! The Portcullis gateway: client-facing transports, client sessions,
//! federation over several upstreams, and the upstream pool.
//!
//! Data flows one way: transport → (identity → policy → inspect, in later
//! stages) → route → upstream, and back. Each module knows only its own
//! concern; `gateway` wires them for one message.
#![forbid(unsafe_code)]

pub mod admin;
mod admin_contain;
pub mod auth;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod console;
pub mod contain;
pub mod defs;
pub mod gateway;
pub mod inspection;
mod listen;
pub mod listener;
pub mod monitor;
pub mod naming;
pub mod pep;
pub mod pins;
pub mod protocol;
pub mod segments;
pub mod server;
pub mod session;
pub mod upstream;

pub use config::Config;
pub use gateway::Gateway;

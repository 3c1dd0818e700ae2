//! Continuous monitoring (zero-trust pillar 5): every decision recorded in
//! a log that cannot be quietly edited, the gateway observable live, and
//! behaviour fed back into decisions as a per-identity risk score.
#![forbid(unsafe_code)]

pub mod audit;
pub mod metrics;
pub mod risk;

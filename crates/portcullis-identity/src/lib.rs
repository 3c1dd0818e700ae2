//! Identity and mutual authentication: who is calling, for whom, from what
//! device — and the gateway's own identity towards upstreams.
#![forbid(unsafe_code)]
pub mod ca;
pub mod client_credentials;
pub mod dev_issuer;
pub mod introspect;
pub mod jwks;
pub mod jwt;
pub mod paths;
pub mod posture;
pub mod principal;
pub mod spiffe;
pub mod tls;
pub mod workload;

//! `portcullis-policy`: the policy decision point (PDP) of Portcullis.
//!
//! Cedar policies, validated against a shipped schema
//! ([`SHIPPED_SCHEMA`], namespace `Portcullis`), decide every MCP request.
//! The gateway (the enforcement point) builds a [`Request`] per message and
//! calls [`Engine::decide`]:
//!
//! ```no_run
//! use std::sync::Arc;
//! use portcullis_policy::*;
//!
//! let engine = Arc::new(Engine::load(None, &["policies/default.cedar".into()])?);
//! let who = PrincipalFacts::anonymous();
//! let tool = ResourceFacts::tool("docs", "docs__search");
//! let session = SessionFacts::default();
//! let decision = engine.decide(&Request {
//!     principal: &who,
//!     action: Action::from_method("tools/call", false),
//!     resource: &tool,
//!     arguments: None,
//!     method: None,
//!     session: &session,
//!     risk: 0,
//!     argument_findings: &[],
//!     now_unix: 1_700_000_000,
//! });
//! if !decision.allow { /* answer with a JSON-RPC error carrying decision.reason */ }
//! # Ok::<(), LoadError>(())
//! ```
//!
//! Guarantees:
//! - Default deny; any evaluation error of any applicable policy denies
//!   (Cedar itself skips an erroring policy, so an erroring `forbid` would
//!   otherwise fail open) and is listed in [`Decision::errors`].
//! - Obligations come from annotations on the determining `permit`
//!   policies: `@redact("secrets,pii")`, `@dlp_block("secrets")`,
//!   `@injection("wrap")`, `@rate_class("slow")`,
//!   `@require_approval("message")`. A forbid's `@reason("…")` becomes the
//!   client-facing reason; `@id("…")` names a policy.
//! - [`Engine`] is immutable and `Send + Sync`: hot reload builds a new one
//!   and swaps an `Arc<Engine>`; a set that fails to load is an `Err` and the
//!   caller keeps the old engine.
//! - An index built at load evaluates only the policies whose scope can
//!   match (by action, principal type and resource scope);
//!   [`Engine::decide_unindexed`] is the full-set reference it is tested
//!   against.
//!
//! See `docs/policy.md` for the algorithm, the argument mapping and costs.
#![forbid(unsafe_code)]

pub mod args;
mod build;
mod engine;
mod facts;
pub mod fixture;
mod load;

pub use engine::{
    Decision, Engine, Obligations, REASON_ALLOWED, REASON_BAD_REQUEST, REASON_ERROR,
    REASON_FORBIDDEN, REASON_NO_PERMIT,
};
pub use facts::{
    Action, Annotations, DeviceFacts, PrincipalFacts, PrincipalKind, Request, ResourceFacts,
    ResourceKind, SessionFacts, Strength, UserClaims, ACTION_IDS,
};
pub use fixture::RequestSpec;
pub use load::{LoadError, Problem, INJECTION_ACTIONS, SHIPPED_SCHEMA};

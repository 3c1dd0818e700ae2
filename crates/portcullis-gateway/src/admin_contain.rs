//! Admin endpoints of breach containment: quarantines, the kill switch,
//! token and session revocation, circuit breakers.

use axum::Router;

use crate::admin::Admin;

/// Containment routes, merged into the admin router.
pub(crate) fn routes() -> Router<Admin> {
    Router::new()
}

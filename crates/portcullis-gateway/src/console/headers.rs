//! The security headers every console response carries.

use axum::response::Response;
use http::{header, HeaderName, HeaderValue};

/// The console's Content-Security-Policy: its own scripts, styles and
/// images only, no inline code, never framed.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Adds the console's headers to a response (replacing any already set).
pub fn secure(r: &mut Response) {
    let h = r.headers_mut();
    let set: [(HeaderName, &'static str); 5] = [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::CACHE_CONTROL, "no-store"),
    ];
    for (k, v) in set {
        h.insert(k, HeaderValue::from_static(v));
    }
}

/// Middleware: [`secure`] on every response of the console's routes.
pub async fn layer(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut r = next.run(req).await;
    secure(&mut r);
    r
}

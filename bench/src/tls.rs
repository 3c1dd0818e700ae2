//! Client-side TLS for `https://` targets (rustls with the ring provider,
//! as in the rest of the workspace), the process CPU clock used to report
//! server CPU per call, and the dev-issuer token helper.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use portcullis_identity::tls::{load_certs, load_key, load_roots, provider};
use rustls::client::Resumption;
use rustls::ClientConfig;

/// Files for the client side of TLS.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// Trust bundle for the server's certificate (PEM).
    pub cacert: Option<PathBuf>,
    /// Client certificate chain (PEM), for mTLS.
    pub cert: Option<PathBuf>,
    /// Client private key (PEM), with `cert`.
    pub key: Option<PathBuf>,
}

/// Builds a client config: server verified against `cacert` by host name
/// or IP, client certificate when given. `resume: false` disables session
/// resumption (every connection makes a full handshake).
pub fn client_config(f: &TlsFiles, resume: bool) -> anyhow::Result<Arc<ClientConfig>> {
    let Some(ca) = &f.cacert else {
        bail!("https:// targets need --cacert FILE (the server's trust bundle)");
    };
    let roots = load_roots(std::slice::from_ref(ca)).context("--cacert")?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots);
    let mut cfg = match (&f.cert, &f.key) {
        (Some(c), Some(k)) => builder
            .with_client_auth_cert(load_certs(c)?, load_key(k)?)
            .context("--cert/--key")?,
        (None, None) => builder.with_no_client_auth(),
        _ => bail!("--cert and --key go together"),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    if !resume {
        cfg.resumption = Resumption::disabled();
    }
    Ok(Arc::new(cfg))
}

/// User plus system CPU time of a process so far (`/proc/PID/stat`, in
/// USER_HZ = 100 ticks per second, the Linux ABI value).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it start with the state.
    let rest = s.get(s.rfind(')')? + 1..)?;
    let mut f = rest.split_whitespace();
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// Mints a bearer token with the Portcullis development issuer kept in
/// `dir` (created on first use, with `dir/jwks.json` for the gateway's
/// `[auth.oauth] jwks`; issuer `urn:portcullis:dev`).
pub async fn mint(
    dir: &Path,
    subject: &str,
    audience: &str,
    scopes: &[String],
    ttl: Duration,
) -> anyhow::Result<String> {
    let issuer = portcullis_identity::dev_issuer::DevIssuer::load_or_create(dir)
        .await
        .with_context(|| format!("dev issuer in {}", dir.display()))?;
    Ok(issuer.mint(subject, audience, scopes, ttl))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_time_is_readable() {
        assert!(cpu_time(std::process::id()).is_some());
        assert!(cpu_time(u32::MAX).is_none());
    }
}

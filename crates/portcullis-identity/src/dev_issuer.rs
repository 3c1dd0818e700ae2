//! The gateway's own development token issuer, so the no-config default can
//! require authentication and still be one step to use: an Ed25519 key kept
//! in the state folder, a JWKS written next to it (readable through
//! [`JwksSource::File`]), and EdDSA access tokens minted for the startup
//! banner and for tests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::PrivatePkcs8KeyDer;
use serde_json::{json, Value};

use crate::jwks::{sha256, JwksSource};
use crate::jwt::unix_now;

/// The `iss` of every dev token.
pub const DEV_ISSUER: &str = "urn:portcullis:dev";
/// File name of the private key (PKCS#8 PEM, mode 0600) in the state folder.
pub const DEV_KEY_FILE: &str = "dev-issuer-key.pem";
/// File name of the public key set in the state folder.
pub const DEV_JWKS_FILE: &str = "jwks.json";

/// Why the dev issuer could not be loaded or created.
#[derive(Debug, thiserror::Error)]
pub enum DevIssuerError {
    /// Reading or writing the state folder failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The key file is not an Ed25519 PKCS#8 PEM key.
    #[error("{0}: not an Ed25519 PKCS#8 PEM private key")]
    BadKey(PathBuf),
    /// The system random generator failed.
    #[error("could not generate a key")]
    Random,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DevIssuerError + '_ {
    move |source| DevIssuerError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The development issuer: signs EdDSA access tokens with a key kept on disk.
pub struct DevIssuer {
    pair: Ed25519KeyPair,
    kid: String,
    jwks: Value,
    dir: PathBuf,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIssuer")
            .field("kid", &self.kid)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl DevIssuer {
    /// Loads the key from `dir` (creating folder and key on first use, key
    /// file mode 0600) and (re)writes `dir/jwks.json`.
    pub async fn load_or_create(dir: &Path) -> Result<Self, DevIssuerError> {
        let mut builder = tokio::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        builder.mode(0o700);
        builder.create(dir).await.map_err(io(dir))?;

        let key_path = dir.join(DEV_KEY_FILE);
        let der = match read_key(&key_path).await? {
            Some(der) => der,
            None => create_key(&key_path).await?,
        };
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der)
            .map_err(|_| DevIssuerError::BadKey(key_path.clone()))?;
        let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
        // RFC 7638 thumbprint: members in lexicographic order, no spaces.
        let thumbprint_input = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
        let kid = URL_SAFE_NO_PAD.encode(sha256(thumbprint_input.as_bytes()));
        let jwks = json!({"keys": [{
            "kty": "OKP", "crv": "Ed25519", "x": x,
            "kid": kid, "alg": "EdDSA", "use": "sig",
        }]});

        let jwks_path = dir.join(DEV_JWKS_FILE);
        let tmp = dir.join(format!("{DEV_JWKS_FILE}.tmp"));
        tokio::fs::write(&tmp, format!("{jwks:#}\n"))
            .await
            .map_err(io(&tmp))?;
        tokio::fs::rename(&tmp, &jwks_path)
            .await
            .map_err(io(&jwks_path))?;
        Ok(Self {
            pair,
            kid,
            jwks,
            dir: dir.to_owned(),
        })
    }

    /// The issuer name tokens carry (`urn:portcullis:dev`).
    pub fn issuer(&self) -> &'static str {
        DEV_ISSUER
    }

    /// The key id (RFC 7638 thumbprint) tokens carry in their header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key set, as served or written to `jwks.json`.
    pub fn jwks_json(&self) -> Value {
        self.jwks.clone()
    }

    /// Where the public key set was written.
    pub fn jwks_path(&self) -> PathBuf {
        self.dir.join(DEV_JWKS_FILE)
    }

    /// A key set source reading `jwks.json`, for a `TokenValidator`.
    pub fn jwks_source(&self) -> JwksSource {
        JwksSource::File(self.jwks_path())
    }

    /// Mints an EdDSA access token for `sub`, bound to `audience`, carrying
    /// `scopes`, valid for `ttl` from now.
    pub fn mint(
        &self,
        sub: &str,
        audience: &str,
        scopes: &[impl AsRef<str>],
        ttl: Duration,
    ) -> String {
        let now = unix_now();
        let scope = scopes
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<_>>()
            .join(" ");
        let mut jti = [0u8; 16];
        rand::Rng::fill(&mut rand::rng(), &mut jti);
        let claims = json!({
            "iss": DEV_ISSUER,
            "sub": sub,
            "aud": audience,
            "scope": scope,
            "iat": now,
            "nbf": now,
            "exp": now.saturating_add(ttl.as_secs()),
            "jti": URL_SAFE_NO_PAD.encode(jti),
            "client_id": "portcullis-dev",
        });
        self.sign(&claims)
    }

    /// Signs arbitrary claims as an EdDSA JWT with this issuer's key (for
    /// tests and dev tooling; `mint` is the normal path).
    pub fn sign(&self, claims: &Value) -> String {
        let header = json!({"alg": "EdDSA", "typ": "at+jwt", "kid": self.kid});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self.pair.sign(signing_input.as_bytes());
        format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature.as_ref())
        )
    }
}

/// Reads an existing key; `None` when there is none yet. Tightens a key file
/// others can read back to 0600.
async fn read_key(path: &Path) -> Result<Option<Vec<u8>>, DevIssuerError> {
    let pem = match tokio::fs::read(path).await {
        Ok(pem) => pem,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let meta = tokio::fs::metadata(path).await.map_err(io(path))?;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "dev issuer key was readable by others; setting mode 0600");
            tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .await
                .map_err(io(path))?;
        }
    }
    let der = PrivatePkcs8KeyDer::from_pem_slice(&pem)
        .map_err(|_| DevIssuerError::BadKey(path.to_owned()))?;
    Ok(Some(der.secret_pkcs8_der().to_vec()))
}

/// Generates a key and writes it with mode 0600 (never replacing a file
/// that appeared meanwhile: then that one is used).
async fn create_key(path: &Path) -> Result<Vec<u8>, DevIssuerError> {
    let doc =
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| DevIssuerError::Random)?;
    let der = doc.as_ref().to_vec();
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    let b64 = STANDARD.encode(&der);
    let mut rest = b64.as_str();
    while !rest.is_empty() {
        let (line, tail) = rest.split_at(rest.len().min(64));
        pem.push_str(line);
        pem.push('\n');
        rest = tail;
    }
    pem.push_str("-----END PRIVATE KEY-----\n");

    let mut opts = tokio::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    opts.mode(0o600);
    match opts.open(path).await {
        Ok(mut file) => {
            use tokio::io::AsyncWriteExt as _;
            file.write_all(pem.as_bytes()).await.map_err(io(path))?;
            file.sync_all().await.map_err(io(path))?;
            tracing::info!(path = %path.display(), "created the dev token issuer key");
            Ok(der)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => read_key(path)
            .await?
            .ok_or_else(|| DevIssuerError::BadKey(path.to_owned())),
        Err(e) => Err(io(path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwks::testkit::temp_dir;
    use crate::jwt::{TokenValidator, ValidatorConfig};

    #[tokio::test]
    async fn create_reload_mint_validate() {
        let dir = temp_dir("dev").join("state");
        let issuer = DevIssuer::load_or_create(&dir).await.unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.join(DEV_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(issuer.issuer(), "urn:portcullis:dev");
        let jwks = issuer.jwks_json();
        assert_eq!(jwks["keys"][0]["kid"], issuer.kid());
        assert_eq!(jwks["keys"][0]["kty"], "OKP");
        let on_disk: Value =
            serde_json::from_slice(&std::fs::read(issuer.jwks_path()).unwrap()).unwrap();
        assert_eq!(on_disk, jwks);

        // the same key comes back
        let again = DevIssuer::load_or_create(&dir).await.unwrap();
        assert_eq!(again.kid(), issuer.kid());

        let aud = "http://127.0.0.1:8787/mcp";
        let token = issuer.mint("dev-user", aud, &["mcp:tools"], Duration::from_secs(3600));
        let v = TokenValidator::new(ValidatorConfig::new(DEV_ISSUER, aud, again.jwks_source()))
            .unwrap();
        let claims = v.validate(&token).await.unwrap();
        assert_eq!(claims.sub.as_deref(), Some("dev-user"));
        assert_eq!(claims.scopes, ["mcp:tools"]);
        assert!(claims.jti.is_some());
        // other audience: refused
        let other = issuer.mint(
            "dev-user",
            "https://elsewhere/mcp",
            &[] as &[&str],
            Duration::from_secs(60),
        );
        assert!(v.validate(&other).await.is_err());
    }

    #[tokio::test]
    async fn loose_key_file_mode_is_tightened_and_junk_refused() {
        let dir = temp_dir("dev-mode");
        DevIssuer::load_or_create(&dir).await.unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let key = dir.join(DEV_KEY_FILE);
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
            DevIssuer::load_or_create(&dir).await.unwrap();
            assert_eq!(
                std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        std::fs::write(dir.join(DEV_KEY_FILE), "junk").unwrap();
        assert!(matches!(
            DevIssuer::load_or_create(&dir).await,
            Err(DevIssuerError::BadKey(_))
        ));
    }
}

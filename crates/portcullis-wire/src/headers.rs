//! The 2026-07-28 `Mcp-*` request headers and their agreement with the body.
//!
//! Headers exist so that intermediaries can route without parsing bodies;
//! a gateway that decides on a header a client can set independently of the
//! body is open to confusion attacks, so every header is checked against the
//! parsed body and the body wins.

use base64::Engine;
use serde_json::Value;

/// Header carrying the JSON-RPC method.
pub const MCP_METHOD: &str = "mcp-method";
/// Header carrying the target's name (tool name, prompt name, resource URI).
pub const MCP_NAME: &str = "mcp-name";
/// Header carrying the protocol revision.
pub const MCP_PROTOCOL_VERSION: &str = "mcp-protocol-version";
/// Header carrying the handshake-era session id.
pub const MCP_SESSION_ID: &str = "mcp-session-id";
/// Prefix of the per-parameter headers intermediaries must forward.
pub const MCP_PARAM_PREFIX: &str = "mcp-param-";

/// Decodes a header value, honouring the `=?base64?…?=` form used for
/// values that are not plain visible ASCII. `None` if the encoding is bad.
pub fn decode_value(raw: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(raw).ok()?;
    let trimmed = s.trim();
    if let Some(inner) = trimmed
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(inner)
            .ok()?;
        return String::from_utf8(bytes).ok();
    }
    Some(trimmed.to_owned())
}

/// Encodes a value for a header, using base64 when it is not plain ASCII.
pub fn encode_value(v: &str) -> String {
    let plain = v.bytes().all(|b| (0x20..0x7f).contains(&b))
        && !v.starts_with(' ')
        && !v.ends_with(' ')
        && !v.starts_with("=?");
    if plain {
        v.to_owned()
    } else {
        format!(
            "=?base64?{}?=",
            base64::engine::general_purpose::STANDARD.encode(v.as_bytes())
        )
    }
}

/// The value `Mcp-Name` must carry for `method` with `params`, if the
/// method is one that names a target.
pub fn expected_name(method: &str, params: &Value) -> Option<String> {
    let key = match method {
        "tools/call" | "prompts/get" => "name",
        "resources/read" => "uri",
        _ => return None,
    };
    params.get(key).and_then(Value::as_str).map(str::to_owned)
}

/// Why the headers disagree with the body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderMismatch {
    /// `Mcp-Method` differs from the body's method.
    #[error("Mcp-Method header {header:?} does not match body method {body:?}")]
    Method {
        /// The header's value.
        header: String,
        /// The body's method.
        body: String,
    },
    /// `Mcp-Name` differs from the body's target name.
    #[error("Mcp-Name header {header:?} does not match body {body:?}")]
    Name {
        /// The header's value.
        header: String,
        /// The body's target.
        body: String,
    },
    /// A required header is absent.
    #[error("missing required header {0}")]
    Missing(&'static str),
    /// A header value could not be decoded.
    #[error("header {0} is not valid")]
    Undecodable(&'static str),
}

/// Checks `Mcp-Method` and `Mcp-Name` against the body of a 2026-07-28
/// request. `method_header`/`name_header` are the raw header bytes.
pub fn check(
    method: &str,
    params: &Value,
    method_header: Option<&[u8]>,
    name_header: Option<&[u8]>,
) -> Result<(), HeaderMismatch> {
    let Some(mh) = method_header else {
        return Err(HeaderMismatch::Missing("Mcp-Method"));
    };
    let mh = decode_value(mh).ok_or(HeaderMismatch::Undecodable("Mcp-Method"))?;
    if mh != method {
        return Err(HeaderMismatch::Method {
            header: mh,
            body: method.to_owned(),
        });
    }
    let expected = expected_name(method, params);
    match (expected, name_header) {
        (None, None) => Ok(()),
        (Some(_), None) => Err(HeaderMismatch::Missing("Mcp-Name")),
        (None, Some(nh)) => {
            // A name header on a method without a target must not smuggle one.
            let nh = decode_value(nh).ok_or(HeaderMismatch::Undecodable("Mcp-Name"))?;
            Err(HeaderMismatch::Name {
                header: nh,
                body: String::new(),
            })
        }
        (Some(e), Some(nh)) => {
            let nh = decode_value(nh).ok_or(HeaderMismatch::Undecodable("Mcp-Name"))?;
            if nh == e {
                Ok(())
            } else {
                Err(HeaderMismatch::Name {
                    header: nh,
                    body: e,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn base64_round_trip() {
        let v = "héllo wörld";
        let enc = encode_value(v);
        assert!(enc.starts_with("=?base64?"));
        assert_eq!(decode_value(enc.as_bytes()).as_deref(), Some(v));
        assert_eq!(encode_value("echo"), "echo");
        assert_eq!(decode_value(b"=?base64?!!?="), None);
    }

    #[test]
    fn checks_agreement() {
        let p = json!({"name": "echo"});
        assert!(check("tools/call", &p, Some(b"tools/call"), Some(b"echo")).is_ok());
        assert!(matches!(
            check("tools/call", &p, Some(b"tools/call"), Some(b"rm")),
            Err(HeaderMismatch::Name { .. })
        ));
        assert!(matches!(
            check("tools/call", &p, Some(b"tools/list"), Some(b"echo")),
            Err(HeaderMismatch::Method { .. })
        ));
        assert!(matches!(
            check("tools/call", &p, Some(b"tools/call"), None),
            Err(HeaderMismatch::Missing(_))
        ));
        assert!(check("tools/list", &json!({}), Some(b"tools/list"), None).is_ok());
        let r = json!({"uri": "file:///a b"});
        let enc = encode_value("file:///a b");
        assert!(check(
            "resources/read",
            &r,
            Some(b"resources/read"),
            Some(enc.as_bytes())
        )
        .is_ok());
    }
}

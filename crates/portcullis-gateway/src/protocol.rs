//! Revision-specific shapes: the 2026-07-28 `_meta` envelope, result
//! stamping, capability merging.

use portcullis_wire::Revision;
use serde_json::{json, Map, Value};

/// `_meta` key carrying the protocol revision of a 2026-07-28 request.
pub const META_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
/// `_meta` key carrying the client's capabilities.
pub const META_CAPS: &str = "io.modelcontextprotocol/clientCapabilities";
/// `_meta` key carrying the client's name and version.
pub const META_CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
/// `_meta` key carrying the server's name and version on results.
pub const META_SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
/// `_meta` key opting a 2026-07-28 request in to log notifications.
pub const META_LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";

/// Methods whose results carry `ttlMs` and `cacheScope` at 2026-07-28.
pub const CACHEABLE: [&str; 6] = [
    "server/discover",
    "tools/list",
    "prompts/list",
    "resources/list",
    "resources/templates/list",
    "resources/read",
];

/// Methods that may answer `input_required` at 2026-07-28.
pub const INPUT_REQUIRED_METHODS: [&str; 3] = ["tools/call", "prompts/get", "resources/read"];

/// Sets `path` inside `v` (creating objects where the path is absent or
/// null); leaves `v` unchanged if a step is some other non-object value.
/// Peer-controlled JSON must never panic, so no `v["k"] = …` indexing.
pub fn set_path(v: &mut Value, path: &[&str], val: Value) -> bool {
    let Some((last, init)) = path.split_last() else {
        return false;
    };
    let mut cur = v;
    for k in init {
        if cur.is_null() {
            *cur = Value::Object(Map::new());
        }
        let Some(obj) = cur.as_object_mut() else {
            return false;
        };
        cur = obj.entry(*k).or_insert(Value::Null);
    }
    if cur.is_null() {
        *cur = Value::Object(Map::new());
    }
    match cur.as_object_mut() {
        Some(obj) => {
            obj.insert((*last).to_owned(), val);
            true
        }
        None => false,
    }
}

/// The `_meta` object a 2026-07-28 request carries.
pub fn stateless_meta(caps: &Value, client_info: &Value) -> Value {
    json!({
        META_VERSION: Revision::V2026_07_28.as_str(),
        META_CAPS: caps,
        META_CLIENT_INFO: client_info,
    })
}

/// The revision a request's `_meta` names, if any.
pub fn meta_version(params: &Value) -> Option<&str> {
    params.get("_meta")?.get(META_VERSION)?.as_str()
}

/// Adds (or replaces) the 2026-07-28 envelope in `params`, keeping other
/// `_meta` entries such as `progressToken`.
pub fn stamp_request_meta(params: &mut Value, caps: &Value, client_info: &Value) {
    if !params.is_object() {
        *params = Value::Object(Map::new());
    }
    let Some(obj) = params.as_object_mut() else {
        return;
    };
    let meta = obj
        .entry("_meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if !meta.is_object() {
        *meta = Value::Object(Map::new());
    }
    if let Some(m) = meta.as_object_mut() {
        m.insert(
            META_VERSION.into(),
            Value::from(Revision::V2026_07_28.as_str()),
        );
        m.insert(META_CAPS.into(), caps.clone());
        m.insert(META_CLIENT_INFO.into(), client_info.clone());
    }
}

/// Removes the 2026-07-28 envelope keys from `params._meta` (when the
/// request goes to a handshake-era upstream).
pub fn strip_request_meta(params: &mut Value) {
    if let Some(meta) = params.get_mut("_meta").and_then(Value::as_object_mut) {
        meta.remove(META_VERSION);
        meta.remove(META_CAPS);
        meta.remove(META_CLIENT_INFO);
        meta.remove(META_LOG_LEVEL);
        if meta.is_empty() {
            if let Some(o) = params.as_object_mut() {
                o.remove("_meta");
            }
        }
    }
}

/// Makes a result fit the client's revision: 2026-07-28 results carry
/// `resultType` (and cache hints on cacheable methods); handshake-era
/// results carry none of these.
pub fn fit_result(result: &mut Value, method: &str, client: Revision) {
    let Some(obj) = result.as_object_mut() else {
        return;
    };
    if client.is_handshake() {
        obj.remove("resultType");
        obj.remove("ttlMs");
        obj.remove("cacheScope");
        if let Some(meta) = obj.get_mut("_meta").and_then(Value::as_object_mut) {
            meta.remove(META_SERVER_INFO);
            if meta.is_empty() {
                obj.remove("_meta");
            }
        }
        return;
    }
    obj.entry("resultType")
        .or_insert_with(|| Value::from("complete"));
    if CACHEABLE.contains(&method)
        && obj.get("resultType").and_then(Value::as_str) == Some("complete")
    {
        obj.entry("ttlMs").or_insert_with(|| Value::from(0));
        obj.entry("cacheScope")
            .or_insert_with(|| Value::from("private"));
    }
}

/// Whether a raw result may need [`fit_result`] (or input bridging), so the
/// common case — a handshake result going to a handshake client — is
/// forwarded without parsing or re-serializing it.
pub fn result_needs_fitting(raw: &str, method: &str, client: Revision) -> bool {
    if client.is_handshake() {
        raw.contains("\"resultType\"")
            || raw.contains("\"ttlMs\"")
            || raw.contains("\"cacheScope\"")
    } else {
        !raw.contains("\"resultType\"") || CACHEABLE.contains(&method)
    }
}

/// Whether the capability object names `key` (e.g. `tools`).
pub fn has_cap(caps: &Value, key: &str) -> bool {
    caps.get(key).is_some_and(|v| !v.is_null())
}

/// The capabilities the gateway offers: the union of its upstreams'.
pub fn merge_capabilities<'a>(upstreams: impl Iterator<Item = &'a Value>) -> Value {
    let mut tools = false;
    let mut prompts = false;
    let mut resources = false;
    let mut subscribe = false;
    let mut logging = false;
    let mut completions = false;
    for caps in upstreams {
        tools |= has_cap(caps, "tools");
        prompts |= has_cap(caps, "prompts");
        resources |= has_cap(caps, "resources");
        subscribe |= caps
            .get("resources")
            .and_then(|r| r.get("subscribe"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        logging |= has_cap(caps, "logging");
        completions |= has_cap(caps, "completions");
    }
    let mut out = Map::new();
    if tools {
        out.insert("tools".into(), json!({"listChanged": true}));
    }
    if prompts {
        out.insert("prompts".into(), json!({"listChanged": true}));
    }
    if resources {
        out.insert(
            "resources".into(),
            json!({"listChanged": true, "subscribe": subscribe}),
        );
    }
    if logging {
        out.insert("logging".into(), json!({}));
    }
    if completions {
        out.insert("completions".into(), json!({}));
    }
    Value::Object(out)
}

/// The gateway's own name and version, as MCP `Implementation`.
pub fn server_info() -> Value {
    json!({"name": "portcullis", "title": "Portcullis MCP gateway", "version": env!("CARGO_PKG_VERSION")})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_path_never_panics() {
        let mut v = json!({"a": 1});
        assert!(!set_path(&mut v, &["a", "b"], json!(2)));
        assert!(set_path(&mut v, &["c", "d"], json!(3)));
        assert_eq!(v, json!({"a": 1, "c": {"d": 3}}));
        let mut s = json!("str");
        assert!(!set_path(&mut s, &["x"], json!(1)));
        let mut n = Value::Null;
        assert!(set_path(&mut n, &["x"], json!(1)));
    }

    #[test]
    fn stamps_and_strips_meta() {
        let mut p = json!({"name": "x", "_meta": {"progressToken": 5}});
        stamp_request_meta(&mut p, &json!({}), &json!({"name": "c"}));
        assert_eq!(meta_version(&p), Some("2026-07-28"));
        strip_request_meta(&mut p);
        assert_eq!(p, json!({"name": "x", "_meta": {"progressToken": 5}}));
        let mut q = json!({"_meta": {}});
        stamp_request_meta(&mut q, &json!({}), &json!({}));
        strip_request_meta(&mut q);
        assert_eq!(q, json!({}));
    }

    #[test]
    fn fits_results_per_revision() {
        let mut r = json!({"tools": []});
        fit_result(&mut r, "tools/list", Revision::V2026_07_28);
        assert_eq!(r["resultType"], "complete");
        assert_eq!(r["cacheScope"], "private");
        fit_result(&mut r, "tools/list", Revision::V2025_06_18);
        assert_eq!(r, json!({"tools": []}));
        let mut c = json!({"content": []});
        fit_result(&mut c, "tools/call", Revision::V2026_07_28);
        assert!(c.get("ttlMs").is_none());
    }

    #[test]
    fn skips_fitting_when_nothing_to_change() {
        let plain = r#"{"content":[]}"#;
        assert!(!result_needs_fitting(
            plain,
            "tools/call",
            Revision::V2025_06_18
        ));
        assert!(result_needs_fitting(
            plain,
            "tools/call",
            Revision::V2026_07_28
        ));
        let modern = r#"{"content":[],"resultType":"complete"}"#;
        assert!(result_needs_fitting(
            modern,
            "tools/call",
            Revision::V2025_06_18
        ));
        assert!(!result_needs_fitting(
            modern,
            "tools/call",
            Revision::V2026_07_28
        ));
        assert!(result_needs_fitting(
            modern,
            "tools/list",
            Revision::V2026_07_28
        ));
    }

    #[test]
    fn merges_capabilities() {
        let a = json!({"tools": {}, "logging": {}});
        let b = json!({"resources": {"subscribe": true}});
        let m = merge_capabilities([&a, &b].into_iter());
        assert_eq!(m["resources"]["subscribe"], true);
        assert!(m.get("prompts").is_none());
        assert!(m.get("logging").is_some());
    }
}

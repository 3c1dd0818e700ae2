//! JSON-RPC 2.0 messages kept as raw JSON.
//!
//! A gateway must not change what it does not police: the top-level fields
//! of a message are kept in order as raw JSON text, and only `id`, `method`
//! and (on demand) `params`/`result` are looked into. Unknown fields,
//! `_meta` extensions and methods from newer revisions survive the trip.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::WireError;

/// What a message is, by the JSON-RPC rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Has `method` and `id`: expects a response.
    Request,
    /// Has `method`, no `id`.
    Notification,
    /// Has `id` and `result`.
    Response,
    /// Has `id` (possibly null) and `error`.
    Error,
}

/// One JSON-RPC message with its top-level fields as raw JSON.
#[derive(Clone)]
pub struct Message {
    fields: Vec<(String, Box<RawValue>)>,
    kind: Kind,
    method: Option<String>,
}

/// One entry of a batch: a message, or why it is not one (with the id it
/// carried, if any, so the error reply can name it).
pub type BatchItem = Result<Message, (Option<Box<RawValue>>, WireError)>;

/// A request body: one message, or a batch (2025-03-26 only).
#[derive(Debug)]
pub enum Body {
    /// A single message.
    Single(Message),
    /// A JSON array of messages; each entry parsed on its own so one bad
    /// entry does not lose the others.
    Batch(Vec<BatchItem>),
}

/// A JSON object kept as raw JSON per key, in order: look into or replace
/// one member (a tool name, `_meta`) without re-encoding the others
/// (arguments, content).
#[derive(Clone, Debug, Default)]
pub struct RawObject(Vec<(String, Box<RawValue>)>);

impl RawObject {
    /// Parses raw JSON that must be an object.
    pub fn parse(raw: &str) -> Option<RawObject> {
        serde_json::from_str(raw).ok()
    }

    /// The member's raw JSON.
    pub fn get(&self, key: &str) -> Option<&RawValue> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    }

    /// The member as a string, if it is one.
    pub fn get_str(&self, key: &str) -> Option<String> {
        self.get(key)
            .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
    }

    /// The member parsed as a JSON value.
    pub fn get_value(&self, key: &str) -> Option<Value> {
        self.get(key)
            .and_then(|v| serde_json::from_str(v.get()).ok())
    }

    /// Sets a member to raw JSON (replacing in place, or appending).
    pub fn set(&mut self, key: &str, value: Box<RawValue>) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key.to_owned(), value)),
        }
    }

    /// Sets a member from a JSON value.
    pub fn set_value(&mut self, key: &str, value: &Value) {
        self.set(key, raw(value));
    }

    /// Removes a member.
    pub fn remove(&mut self, key: &str) {
        self.0.retain(|(k, _)| k != key);
    }

    /// Whether the object has no members.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Serializes the object.
    pub fn to_raw(&self) -> Box<RawValue> {
        let mut out = String::with_capacity(
            2 + self
                .0
                .iter()
                .map(|(k, v)| k.len() + v.get().len() + 4)
                .sum::<usize>(),
        );
        out.push('{');
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            if let Ok(key) = serde_json::to_string(k) {
                out.push_str(&key);
            }
            out.push(':');
            out.push_str(v.get());
        }
        out.push('}');
        RawValue::from_string(out).unwrap_or_else(|_| null_raw())
    }

    /// The object as a JSON value.
    pub fn to_value(&self) -> Value {
        serde_json::from_str(self.to_raw().get()).unwrap_or(Value::Null)
    }
}

impl<'de> Deserialize<'de> for RawObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON-RPC object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawObject, A::Error> {
                let mut out: Vec<(String, Box<RawValue>)> = Vec::with_capacity(4);
                while let Some((k, v)) = map.next_entry::<String, Box<RawValue>>()? {
                    if out.iter().any(|(name, _)| *name == k) {
                        return Err(de::Error::custom(format!("duplicate field `{k}`")));
                    }
                    out.push((k, v));
                }
                Ok(RawObject(out))
            }
        }
        d.deserialize_map(V)
    }
}

fn raw(v: &Value) -> Box<RawValue> {
    // Serializing a `Value` cannot fail (keys are strings, numbers finite).
    match serde_json::value::to_raw_value(v) {
        Ok(r) => r,
        Err(_) => null_raw(),
    }
}

fn null_raw() -> Box<RawValue> {
    RawValue::from_string("null".to_owned()).unwrap_or_else(|_| unreachable_raw())
}

#[expect(
    clippy::panic,
    reason = "\"null\" is always valid JSON; this branch cannot run"
)]
fn unreachable_raw() -> Box<RawValue> {
    panic!("literal null rejected by serde_json")
}

impl Message {
    /// Parses one message from bytes, enforcing the JSON-RPC 2.0 shape.
    pub fn parse(bytes: &[u8]) -> Result<Message, WireError> {
        let fields: RawObject = match serde_json::from_slice(bytes) {
            Ok(f) => f,
            Err(e) if e.is_data() => {
                return Err(WireError::Invalid(format!("not a JSON-RPC object: {e}")))
            }
            Err(e) => return Err(WireError::Parse(e.to_string())),
        };
        Message::from_fields(fields.0)
    }

    /// Parses a POST body: a single message or (where allowed) a batch.
    pub fn parse_body(bytes: &[u8]) -> Result<Body, WireError> {
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace()).copied();
        if first != Some(b'[') {
            return Message::parse(bytes).map(Body::Single);
        }
        let items: Vec<Box<RawValue>> =
            serde_json::from_slice(bytes).map_err(|e| WireError::Parse(e.to_string()))?;
        if items.is_empty() {
            return Err(WireError::Invalid("empty batch".into()));
        }
        Ok(Body::Batch(
            items
                .into_iter()
                .map(|item| {
                    Message::parse(item.get().as_bytes()).map_err(|e| (id_of(item.get()), e))
                })
                .collect(),
        ))
    }

    fn from_fields(fields: Vec<(String, Box<RawValue>)>) -> Result<Message, WireError> {
        let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v);
        match get("jsonrpc").map(|v| v.get()) {
            Some("\"2.0\"") => {}
            _ => return Err(WireError::Invalid("`jsonrpc` must be \"2.0\"".into())),
        }
        let id = get("id");
        if let Some(id) = id {
            let t = id.get().as_bytes().first().copied();
            let ok = matches!(t, Some(b'"') | Some(b'-') | Some(b'0'..=b'9'));
            let null = id.get() == "null";
            if !ok && !null {
                return Err(WireError::Invalid(
                    "`id` must be a string or a number".into(),
                ));
            }
        }
        let method = match get("method") {
            Some(m) => Some(
                serde_json::from_str::<String>(m.get())
                    .map_err(|_| WireError::Invalid("`method` must be a string".into()))?,
            ),
            None => None,
        };
        let has_result = get("result").is_some();
        let has_error = get("error").is_some();
        if let Some(p) = get("params") {
            if !matches!(p.get().as_bytes().first(), Some(b'{') | Some(b'[')) {
                return Err(WireError::Invalid(
                    "`params` must be an object or array".into(),
                ));
            }
        }
        let kind = match (&method, id, has_result, has_error) {
            (Some(_), Some(id), false, false) if id.get() != "null" => Kind::Request,
            (Some(_), None, false, false) => Kind::Notification,
            (None, Some(id), true, false) if id.get() != "null" => Kind::Response,
            (None, Some(_), false, true) => Kind::Error,
            _ => {
                return Err(WireError::Invalid(
                    "not a request, notification, response or error".into(),
                ))
            }
        };
        Ok(Message {
            fields,
            kind,
            method,
        })
    }

    /// A new request with the given raw id.
    pub fn request(id: Box<RawValue>, method: &str, params: Option<Value>) -> Message {
        let mut fields = vec![
            ("jsonrpc".to_owned(), raw(&Value::from("2.0"))),
            ("id".to_owned(), id),
            ("method".to_owned(), raw(&Value::from(method))),
        ];
        if let Some(p) = params {
            fields.push(("params".to_owned(), raw(&p)));
        }
        Message {
            fields,
            kind: Kind::Request,
            method: Some(method.to_owned()),
        }
    }

    /// A new notification.
    pub fn notification(method: &str, params: Option<Value>) -> Message {
        let mut fields = vec![
            ("jsonrpc".to_owned(), raw(&Value::from("2.0"))),
            ("method".to_owned(), raw(&Value::from(method))),
        ];
        if let Some(p) = params {
            fields.push(("params".to_owned(), raw(&p)));
        }
        Message {
            fields,
            kind: Kind::Notification,
            method: Some(method.to_owned()),
        }
    }

    /// A successful response carrying `result`.
    pub fn response(id: Box<RawValue>, result: Value) -> Message {
        Message::response_raw(id, raw(&result))
    }

    /// A successful response whose result is already serialized.
    pub fn response_raw(id: Box<RawValue>, result: Box<RawValue>) -> Message {
        Message {
            fields: vec![
                ("jsonrpc".to_owned(), raw(&Value::from("2.0"))),
                ("id".to_owned(), id),
                ("result".to_owned(), result),
            ],
            kind: Kind::Response,
            method: None,
        }
    }

    /// An error response; `id` is `null` when the request's id is unknown.
    pub fn error(
        id: Option<Box<RawValue>>,
        code: i64,
        message: &str,
        data: Option<Value>,
    ) -> Message {
        let mut err = serde_json::Map::new();
        err.insert("code".into(), Value::from(code));
        err.insert("message".into(), Value::from(message));
        if let Some(d) = data {
            err.insert("data".into(), d);
        }
        Message {
            fields: vec![
                ("jsonrpc".to_owned(), raw(&Value::from("2.0"))),
                ("id".to_owned(), id.unwrap_or_else(null_raw)),
                ("error".to_owned(), raw(&Value::Object(err))),
            ],
            kind: Kind::Error,
            method: None,
        }
    }

    /// The message kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The method, for requests and notifications.
    pub fn method(&self) -> Option<&str> {
        self.method.as_deref()
    }

    fn field(&self, name: &str) -> Option<&RawValue> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_ref())
    }

    fn set_field(&mut self, name: &str, value: Box<RawValue>) {
        if let Some(slot) = self.fields.iter_mut().find(|(k, _)| k == name) {
            slot.1 = value;
        } else {
            self.fields.push((name.to_owned(), value));
        }
    }

    /// The raw id, if any.
    pub fn id(&self) -> Option<&RawValue> {
        self.field("id")
    }

    /// A copy of the raw id, for building a reply.
    pub fn id_owned(&self) -> Option<Box<RawValue>> {
        self.id().map(|r| r.to_owned())
    }

    /// Replaces the id (request-id remapping).
    pub fn set_id(&mut self, id: Box<RawValue>) {
        self.set_field("id", id);
    }

    /// The raw params, if any.
    pub fn params_raw(&self) -> Option<&RawValue> {
        self.field("params")
    }

    /// The params parsed as a JSON value (`Null` when absent).
    pub fn params(&self) -> Value {
        self.params_raw()
            .and_then(|p| serde_json::from_str(p.get()).ok())
            .unwrap_or(Value::Null)
    }

    /// Replaces the params.
    pub fn set_params(&mut self, params: &Value) {
        self.set_field("params", raw(params));
    }

    /// The params as a raw object (`None` when absent or not an object).
    pub fn params_object(&self) -> Option<RawObject> {
        self.params_raw().and_then(|p| RawObject::parse(p.get()))
    }

    /// Replaces the params with an already-serialized value.
    pub fn set_params_raw(&mut self, params: Box<RawValue>) {
        self.set_field("params", params);
    }

    /// The raw result of a response.
    pub fn result_raw(&self) -> Option<&RawValue> {
        self.field("result")
    }

    /// The result parsed as a JSON value (`Null` when absent).
    pub fn result(&self) -> Value {
        self.result_raw()
            .and_then(|p| serde_json::from_str(p.get()).ok())
            .unwrap_or(Value::Null)
    }

    /// Replaces the result.
    pub fn set_result(&mut self, result: &Value) {
        self.set_field("result", raw(result));
    }

    /// The error object of an error response, parsed.
    pub fn error_value(&self) -> Option<Value> {
        self.field("error")
            .and_then(|p| serde_json::from_str(p.get()).ok())
    }

    /// Serializes the message, fields in their original order.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            2 + self
                .fields
                .iter()
                .map(|(k, v)| k.len() + v.get().len() + 4)
                .sum::<usize>(),
        );
        out.push(b'{');
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            // Keys came from a JSON parser or from our own literals, so
            // re-encoding them as JSON strings cannot fail.
            if let Ok(key) = serde_json::to_vec(k) {
                out.extend_from_slice(&key);
            }
            out.push(b':');
            out.extend_from_slice(v.get().as_bytes());
        }
        out.push(b'}');
        out
    }

    /// Serializes the message into a string.
    pub fn to_string_lossless(&self) -> String {
        String::from_utf8(self.to_bytes()).unwrap_or_default()
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string_lossless())
    }
}

/// Best-effort id extraction from an invalid message, so the error reply
/// can still carry the caller's id.
pub fn id_of(text: &str) -> Option<Box<RawValue>> {
    #[derive(Deserialize)]
    struct OnlyId {
        id: Option<Box<RawValue>>,
    }
    serde_json::from_str::<OnlyId>(text).ok().and_then(|o| o.id)
}

/// Builds a raw JSON value from a `Value`.
pub fn to_raw(v: &Value) -> Box<RawValue> {
    raw(v)
}

/// Builds a raw JSON string value.
pub fn raw_string(s: &str) -> Box<RawValue> {
    raw(&Value::from(s))
}

/// Builds a raw JSON number value.
pub fn raw_u64(n: u64) -> Box<RawValue> {
    raw(&Value::from(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_unknown_fields_and_order() {
        let text = r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"x","_meta":{"vendor/ext":[1,2.50]}},"x-extra":{"k":true}}"#;
        let m = Message::parse(text.as_bytes()).unwrap();
        assert_eq!(m.kind(), Kind::Request);
        assert_eq!(m.method(), Some("tools/call"));
        assert_eq!(String::from_utf8(m.to_bytes()).unwrap(), text);
    }

    #[test]
    fn remaps_id_only() {
        let mut m = Message::parse(br#"{"jsonrpc":"2.0","id":"abc","method":"ping"}"#).unwrap();
        m.set_id(raw_u64(42));
        assert_eq!(
            m.to_string_lossless(),
            r#"{"jsonrpc":"2.0","id":42,"method":"ping"}"#
        );
    }

    #[test]
    fn classifies_kinds() {
        let k = |s: &str| Message::parse(s.as_bytes()).map(|m| m.kind());
        assert_eq!(
            k(r#"{"jsonrpc":"2.0","method":"n"}"#),
            Ok(Kind::Notification)
        );
        assert_eq!(
            k(r#"{"jsonrpc":"2.0","id":1,"result":{}}"#),
            Ok(Kind::Response)
        );
        assert_eq!(
            k(r#"{"jsonrpc":"2.0","id":null,"error":{"code":1,"message":"m"}}"#),
            Ok(Kind::Error)
        );
    }

    #[test]
    fn rejects_bad_shapes() {
        for bad in [
            r#"{"id":1,"method":"x"}"#,
            r#"{"jsonrpc":"1.0","id":1,"method":"x"}"#,
            r#"{"jsonrpc":"2.0","id":{},"method":"x"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":5}"#,
            r#"{"jsonrpc":"2.0","id":1}"#,
            r#"{"jsonrpc":"2.0","id":1,"result":1,"error":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"x","params":3}"#,
            r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"x"}"#,
            r#"[1,2]"#,
            r#""str""#,
        ] {
            assert!(
                matches!(Message::parse(bad.as_bytes()), Err(WireError::Invalid(_))),
                "{bad}"
            );
        }
        assert!(matches!(
            Message::parse(b"{not json"),
            Err(WireError::Parse(_))
        ));
        assert!(matches!(Message::parse(b""), Err(WireError::Parse(_))));
    }

    #[test]
    fn raw_object_edits_one_member() {
        let m = Message::parse(br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a__x","arguments":{"n": 1.50,"s":"\u00e9"}}}"#).unwrap();
        let mut p = m.params_object().unwrap();
        assert_eq!(p.get_str("name").as_deref(), Some("a__x"));
        p.set_value("name", &Value::from("x"));
        assert_eq!(
            p.to_raw().get(),
            r#"{"name":"x","arguments":{"n": 1.50,"s":"\u00e9"}}"#
        );
        p.remove("arguments");
        assert_eq!(p.to_raw().get(), r#"{"name":"x"}"#);
        assert!(RawObject::parse("[1]").is_none());
    }

    #[test]
    fn batches_keep_good_entries() {
        let body = br#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"id":2}]"#;
        match Message::parse_body(body).unwrap() {
            Body::Batch(items) => {
                assert!(items[0].is_ok());
                let (id, _) = items[1].as_ref().unwrap_err();
                assert_eq!(id.as_ref().unwrap().get(), "2");
            }
            Body::Single(_) => panic!("expected batch"),
        }
        assert!(Message::parse_body(b"[]").is_err());
    }

    #[test]
    fn builds_errors() {
        let e = Message::error(None, -32700, "bad", None);
        assert_eq!(
            e.to_string_lossless(),
            r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"bad"}}"#
        );
    }
}

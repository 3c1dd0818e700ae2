//! JSON → Cedar values for `context.arguments`. Total: every JSON value
//! maps to something (never a panic, never a silently dropped field); what
//! Cedar cannot hold becomes a string with a marker prefix. The mapping is
//! documented in `docs/policy.md` ("Arguments").

use cedar_policy::RestrictedExpression;
use serde_json::{Number, Value};

/// Nesting deeper than this (the top-level arguments object is depth 1) is
/// kept as its JSON text.
pub const MAX_DEPTH: usize = 16;
/// Prefix of a float that has no exact Cedar `decimal` (e.g. `float:1e-7`).
pub const FLOAT_MARKER: &str = "float:";
/// Prefix of an integer outside `i64` (e.g. `int:18446744073709551615`).
pub const BIG_INT_MARKER: &str = "int:";
/// Prefix of a subtree nested deeper than [`MAX_DEPTH`] (its JSON text follows).
pub const DEEP_MARKER: &str = "json:";
/// The key a non-object `arguments` value is kept under.
pub const NON_OBJECT_KEY: &str = "$value";

/// Largest Cedar decimal magnitude, in ten-thousandths (`i64::MAX`).
const DECIMAL_SCALE_DIGITS: usize = 4;

/// How one JSON value maps (exposed for tests and `explain`).
#[derive(Debug, Clone, PartialEq)]
pub enum Mapped {
    /// A Cedar `Bool`.
    Bool(bool),
    /// A Cedar `Long`.
    Long(i64),
    /// A Cedar `decimal` (its canonical literal, 1–4 fractional digits).
    Decimal(String),
    /// A Cedar `String`.
    String(String),
    /// A Cedar `Set`.
    Set(Vec<Mapped>),
    /// A Cedar record.
    Record(Vec<(String, Mapped)>),
}

impl Mapped {
    /// The Cedar expression for this value.
    pub fn to_expr(&self) -> RestrictedExpression {
        match self {
            Mapped::Bool(b) => RestrictedExpression::new_bool(*b),
            Mapped::Long(n) => RestrictedExpression::new_long(*n),
            Mapped::Decimal(d) => decimal_expr(d),
            Mapped::String(s) => RestrictedExpression::new_string(s.clone()),
            Mapped::Set(items) => RestrictedExpression::new_set(items.iter().map(Mapped::to_expr)),
            Mapped::Record(fields) => record_expr(fields),
        }
    }
}

/// `decimal("<lit>")`. `RestrictedExpression::new_decimal` parses the name
/// `decimal` on every call (a few µs); the name is parsed once here.
fn decimal_expr(lit: &str) -> RestrictedExpression {
    use cedar_policy_core::ast::{Name, RestrictedExpr};
    static NAME: std::sync::OnceLock<Option<Name>> = std::sync::OnceLock::new();
    match NAME.get_or_init(|| "decimal".parse().ok().map(Name::unqualified_name)) {
        Some(name) => RestrictedExpression::from(RestrictedExpr::call_extension_fn(
            name.clone(),
            [RestrictedExpr::val(lit)],
        )),
        None => RestrictedExpression::new_decimal(lit),
    }
}

fn record_expr(fields: &[(String, Mapped)]) -> RestrictedExpression {
    match RestrictedExpression::new_record(fields.iter().map(|(k, v)| (k.clone(), v.to_expr()))) {
        Ok(r) => r,
        // Unreachable for JSON objects (keys are unique); never panic anyway.
        Err(_) => RestrictedExpression::new_string(format!(
            "{DEEP_MARKER}{}",
            serde_json::to_string(&fields.iter().map(|(k, _)| k).collect::<Vec<_>>())
                .unwrap_or_default()
        )),
    }
}

/// The Cedar record `context.arguments` for `args`, built directly (the
/// same values as [`map_arguments`] followed by [`Mapped::to_expr`], without
/// the intermediate form).
pub fn arguments_expr(args: Option<&Value>) -> RestrictedExpression {
    match args {
        None | Some(Value::Null) => empty_record(),
        Some(v @ Value::Object(_)) => value_expr(v, 1),
        Some(other) => {
            RestrictedExpression::new_record([(NON_OBJECT_KEY.to_owned(), value_expr(other, 2))])
                .unwrap_or_else(|_| empty_record())
        }
    }
}

fn empty_record() -> RestrictedExpression {
    RestrictedExpression::new_record(std::iter::empty::<(String, RestrictedExpression)>())
        .unwrap_or_else(|_| RestrictedExpression::new_string(String::new()))
}

fn value_expr(v: &Value, depth: usize) -> RestrictedExpression {
    match v {
        Value::Null => empty_record(),
        Value::Bool(b) => RestrictedExpression::new_bool(*b),
        Value::String(s) => RestrictedExpression::new_string(s.clone()),
        Value::Number(n) => map_number(n).to_expr(),
        Value::Array(_) | Value::Object(_) if depth > MAX_DEPTH => {
            RestrictedExpression::new_string(format!(
                "{DEEP_MARKER}{}",
                serde_json::to_string(v).unwrap_or_default()
            ))
        }
        Value::Array(items) => {
            RestrictedExpression::new_set(items.iter().map(|i| value_expr(i, depth + 1)))
        }
        Value::Object(map) => RestrictedExpression::new_record(
            map.iter()
                .map(|(k, v)| (k.clone(), value_expr(v, depth + 1))),
        )
        .unwrap_or_else(|_| map_value(v, depth).to_expr()),
    }
}

/// Maps the whole `arguments` value to the record `context.arguments`:
/// absent or `null` → `{}`; an object → its record; anything else →
/// `{"$value": …}`.
pub fn map_arguments(args: Option<&Value>) -> Mapped {
    match args {
        None | Some(Value::Null) => Mapped::Record(Vec::new()),
        Some(Value::Object(_)) => args.map_or(Mapped::Record(Vec::new()), |v| map_value(v, 1)),
        Some(other) => Mapped::Record(vec![(NON_OBJECT_KEY.to_owned(), map_value(other, 2))]),
    }
}

/// Maps one JSON value found at `depth` (the arguments object is depth 1).
pub fn map_value(v: &Value, depth: usize) -> Mapped {
    match v {
        Value::Null => Mapped::Record(Vec::new()),
        Value::Bool(b) => Mapped::Bool(*b),
        Value::Number(n) => map_number(n),
        Value::String(s) => Mapped::String(s.clone()),
        Value::Array(_) | Value::Object(_) if depth > MAX_DEPTH => Mapped::String(format!(
            "{DEEP_MARKER}{}",
            serde_json::to_string(v).unwrap_or_default()
        )),
        Value::Array(items) => Mapped::Set(items.iter().map(|i| map_value(i, depth + 1)).collect()),
        Value::Object(map) => Mapped::Record(
            map.iter()
                .map(|(k, v)| (k.clone(), map_value(v, depth + 1)))
                .collect(),
        ),
    }
}

/// Integers in `i64` → `Long`; larger ones → `"int:<digits>"`; floats →
/// `decimal` when exact in 4 fractional digits and in range, else
/// `"float:<shortest repr>"`.
pub fn map_number(n: &Number) -> Mapped {
    if let Some(i) = n.as_i64() {
        return Mapped::Long(i);
    }
    if n.is_u64() {
        return Mapped::String(format!("{BIG_INT_MARKER}{n}"));
    }
    let text = n.to_string();
    match decimal_literal(&text) {
        Some(d) => Mapped::Decimal(d),
        None => Mapped::String(format!("{FLOAT_MARKER}{text}")),
    }
}

/// The Cedar decimal literal for a JSON number's text, when it is exact
/// with at most 4 fractional digits and within Cedar's range.
pub fn decimal_literal(text: &str) -> Option<String> {
    let (neg, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exp) = match body.find(['e', 'E']) {
        Some(pos) => {
            let (m, e) = body.split_at(pos);
            let e = e.get(1..)?;
            (m, e.parse::<i32>().ok()?)
        }
        None => (body, 0),
    };
    let (int_part, frac_part) = match mantissa.find('.') {
        Some(pos) => (mantissa.get(..pos)?, mantissa.get(pos + 1..)?),
        None => (mantissa, ""),
    };
    if int_part.is_empty() || !int_part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac_part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // digits * 10^(exp - frac_len)
    let mut digits: String = format!("{int_part}{frac_part}");
    let frac_len = i32::try_from(frac_part.len()).ok()?;
    let point = exp.checked_sub(frac_len)?; // value = digits * 10^point
                                            // Scale to ten-thousandths: digits * 10^(point + 4).
    let shift = point.checked_add(4)?;
    if shift >= 0 {
        let shift = usize::try_from(shift).ok()?;
        if shift > 40 {
            return None;
        }
        digits.push_str(&"0".repeat(shift));
    } else {
        let cut = usize::try_from(-shift).ok()?;
        // The removed digits must all be zero for an exact value.
        let keep = digits.len().saturating_sub(cut);
        if digits.get(keep..)?.bytes().any(|b| b != b'0') {
            return None;
        }
        digits.truncate(keep);
    }
    let trimmed = digits.trim_start_matches('0');
    if trimmed.len() > 19 {
        return None;
    }
    let scaled: i128 = if trimmed.is_empty() {
        0
    } else {
        trimmed.parse().ok()?
    };
    let signed = if neg { -scaled } else { scaled };
    let scaled = i64::try_from(signed).ok()?;
    let int = scaled / 10_000;
    let frac = (scaled % 10_000).unsigned_abs();
    let sign = if scaled < 0 && int == 0 { "-" } else { "" };
    let mut frac_text = format!("{frac:0width$}", width = DECIMAL_SCALE_DIGITS);
    while frac_text.len() > 1 && frac_text.ends_with('0') {
        frac_text.pop();
    }
    Some(format!("{sign}{int}.{frac_text}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn num(text: &str) -> Mapped {
        let v: Value = serde_json::from_str(text).unwrap();
        map_value(&v, 2)
    }

    #[test]
    fn integers() {
        assert_eq!(num("0"), Mapped::Long(0));
        assert_eq!(num("-9223372036854775808"), Mapped::Long(i64::MIN));
        assert_eq!(num("9223372036854775807"), Mapped::Long(i64::MAX));
        assert_eq!(
            num("9223372036854775808"),
            Mapped::String("int:9223372036854775808".into())
        );
        assert_eq!(
            num("18446744073709551615"),
            Mapped::String("int:18446744073709551615".into())
        );
    }

    #[test]
    fn integers_below_i64_are_floats_in_serde_json() {
        // serde_json parses a negative integer below i64::MIN as f64.
        match num("-9223372036854775809") {
            Mapped::String(s) => assert!(s.starts_with(FLOAT_MARKER), "{s}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn floats_exact_in_four_digits_become_decimals() {
        assert_eq!(num("1.5"), Mapped::Decimal("1.5".into()));
        assert_eq!(num("0.1"), Mapped::Decimal("0.1".into()));
        assert_eq!(num("-0.25"), Mapped::Decimal("-0.25".into()));
        assert_eq!(num("1.0"), Mapped::Decimal("1.0".into()));
        assert_eq!(num("12.3456"), Mapped::Decimal("12.3456".into()));
        assert_eq!(num("1e3"), Mapped::Decimal("1000.0".into()));
        assert_eq!(num("2.5E-3"), Mapped::Decimal("0.0025".into()));
        assert_eq!(num("-1e-4"), Mapped::Decimal("-0.0001".into()));
        assert_eq!(
            num("922337203685477.5807"),
            Mapped::String("float:922337203685477.6".into())
        );
        assert_eq!(num("123456789.75"), Mapped::Decimal("123456789.75".into()));
    }

    #[test]
    fn floats_without_exact_decimal_become_marked_strings() {
        assert_eq!(num("0.00001"), Mapped::String("float:0.00001".into()));
        assert_eq!(num("1.23456"), Mapped::String("float:1.23456".into()));
        assert_eq!(num("1e300"), Mapped::String("float:1e+300".into()));
        assert_eq!(num("-1e300"), Mapped::String("float:-1e+300".into()));
        assert_eq!(num("1e16"), Mapped::String("float:1e+16".into()));
    }

    #[test]
    fn decimal_literal_edges() {
        assert_eq!(decimal_literal("0.0"), Some("0.0".into()));
        assert_eq!(decimal_literal("-0.0"), Some("0.0".into()));
        assert_eq!(decimal_literal("1.50000"), Some("1.5".into()));
        assert_eq!(decimal_literal("abc"), None);
        assert_eq!(decimal_literal("1e"), None);
        assert_eq!(decimal_literal(".5"), None);
        assert_eq!(decimal_literal("1e99999999999"), None);
        assert_eq!(decimal_literal("1e-99999"), None);
        assert_eq!(
            decimal_literal("-922337203685477.5808"),
            Some("-922337203685477.5808".into())
        );
        assert_eq!(decimal_literal("922337203685477.5808"), None);
    }

    #[test]
    fn strings_bools_null() {
        assert_eq!(num("\"x\""), Mapped::String("x".into()));
        assert_eq!(num("true"), Mapped::Bool(true));
        assert_eq!(num("null"), Mapped::Record(vec![]));
    }

    #[test]
    fn arrays_become_sets_and_objects_records() {
        assert_eq!(
            num("[1, \"a\"]"),
            Mapped::Set(vec![Mapped::Long(1), Mapped::String("a".into())])
        );
        assert_eq!(
            num("{\"a\": {\"b\": false}}"),
            Mapped::Record(vec![(
                "a".into(),
                Mapped::Record(vec![("b".into(), Mapped::Bool(false))])
            )])
        );
    }

    #[test]
    fn deep_nesting_is_kept_as_json_text() {
        let mut v = json!("leaf");
        for _ in 0..40 {
            v = json!({ "k": v });
        }
        let mapped = map_arguments(Some(&v));
        // Walk down MAX_DEPTH records, then find the marked JSON text.
        let mut cur = &mapped;
        for _ in 0..MAX_DEPTH {
            match cur {
                Mapped::Record(f) => cur = &f[0].1,
                other => panic!("expected a record, got {other:?}"),
            }
        }
        match cur {
            Mapped::String(s) => {
                assert!(s.starts_with(DEEP_MARKER));
                let back: Value = serde_json::from_str(&s[DEEP_MARKER.len()..]).unwrap();
                assert!(back.is_object());
            }
            other => panic!("expected the deep subtree as text, got {other:?}"),
        }
        // And the Cedar expression builds.
        let _ = mapped.to_expr();
    }

    #[test]
    fn top_level_shapes() {
        assert_eq!(map_arguments(None), Mapped::Record(vec![]));
        assert_eq!(map_arguments(Some(&Value::Null)), Mapped::Record(vec![]));
        assert_eq!(
            map_arguments(Some(&json!([1]))),
            Mapped::Record(vec![("$value".into(), Mapped::Set(vec![Mapped::Long(1)]))])
        );
        assert_eq!(
            map_arguments(Some(&json!(7))),
            Mapped::Record(vec![("$value".into(), Mapped::Long(7))])
        );
    }

    #[test]
    fn direct_expression_equals_the_mapped_form() {
        let mut deep = json!(1);
        for _ in 0..30 {
            deep = json!({"d": [deep]});
        }
        let eval = |e: RestrictedExpression| {
            cedar_policy::Context::from_pairs([("x".to_owned(), e)])
                .unwrap()
                .get("x")
                .unwrap()
        };
        for v in [
            json!({"a": 1, "b": 1.5, "c": 1e-9, "d": null, "e": [1, "x", [true]], "f": {"g": {}},
                   "h": 18446744073709551615u64, "i": -0.25, "j": 1e300}),
            deep,
            json!([1, 2]),
            json!("s"),
            Value::Null,
        ] {
            assert_eq!(
                eval(arguments_expr(Some(&v))),
                eval(map_arguments(Some(&v)).to_expr()),
                "{v}"
            );
        }
        assert_eq!(
            eval(arguments_expr(None)),
            eval(map_arguments(None).to_expr())
        );
    }

    #[test]
    fn every_field_survives() {
        let v = json!({"a": 1, "b": 1.5, "c": 1e-9, "d": null, "e": [], "f": {}, "g": "s",
                       "h": 18446744073709551615u64, "i": true});
        match map_arguments(Some(&v)) {
            Mapped::Record(fields) => assert_eq!(fields.len(), 9),
            other => panic!("{other:?}"),
        }
    }
}

//! Data-loss prevention: named classes of sensitive text (`secrets`,
//! `pii`) found by patterns, and redaction of every string in a JSON
//! result. Patterns are compiled once; redaction walks the value in place.

use std::sync::OnceLock;

use regex::Regex;
use serde_json::Value;

/// A named class of sensitive data.
pub struct Class {
    /// The class name used in policy (`@redact("secrets")`).
    pub name: &'static str,
    patterns: Vec<Regex>,
}

fn compile(src: &[&str]) -> Vec<Regex> {
    // The patterns are constants checked by the tests; one that failed to
    // compile would be skipped rather than panic.
    src.iter().filter_map(|p| Regex::new(p).ok()).collect()
}

/// Every class the gateway knows.
pub fn classes() -> &'static [Class] {
    static C: OnceLock<Vec<Class>> = OnceLock::new();
    C.get_or_init(|| {
        vec![
            Class {
                name: "secrets",
                patterns: compile(&[
                    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
                    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
                    r"(?i)\baws_secret_access_key\s*[=:]\s*[A-Za-z0-9/+=]{20,}",
                    r"\bgh[pousr]_[A-Za-z0-9]{36,}\b",
                    r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b",
                    r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\b",
                    r#"(?i)\b(?:api[_-]?key|secret|password|passwd|access[_-]?token)\s*[=:]\s*["']?[^\s"']{8,}"#,
                ]),
            },
            Class {
                name: "pii",
                patterns: compile(&[
                    r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b",
                    r"\b\d{3}-\d{2}-\d{4}\b",
                    r"\b(?:\d[ -]?){13,19}\b",
                    r"\+\d{1,3}[ .-]?\(?\d{1,4}\)?(?:[ .-]?\d{2,4}){2,4}\b",
                ]),
            },
        ]
    })
}

/// Finds a class by name.
pub fn class(name: &str) -> Option<&'static Class> {
    classes().iter().find(|c| c.name == name)
}

impl Class {
    /// Replaces every match in `text` with `[REDACTED:<class>]`; returns
    /// how many were replaced.
    pub fn redact_text(&self, text: &mut String) -> usize {
        let mut n = 0;
        for re in &self.patterns {
            let count = re.find_iter(text).count();
            if count > 0 {
                n += count;
                *text = re
                    .replace_all(text, format!("[REDACTED:{}]", self.name).as_str())
                    .into_owned();
            }
        }
        n
    }

    /// Whether `text` holds anything of this class.
    pub fn matches(&self, text: &str) -> bool {
        self.patterns.iter().any(|re| re.is_match(text))
    }
}

/// Redacts the named classes in every string of `v` (keys are kept);
/// returns the number of replacements. Unknown class names are ignored and
/// reported back so the caller can log them.
pub fn redact(v: &mut Value, names: &[String]) -> (usize, Vec<String>) {
    let mut unknown = Vec::new();
    let mut chosen = Vec::new();
    for n in names {
        match class(n.trim()) {
            Some(c) => chosen.push(c),
            None => unknown.push(n.clone()),
        }
    }
    let mut count = 0;
    walk(v, &mut |s| {
        for c in &chosen {
            count += c.redact_text(s);
        }
    });
    (count, unknown)
}

fn walk(v: &mut Value, f: &mut impl FnMut(&mut String)) {
    match v {
        Value::String(s) => f(s),
        Value::Array(a) => a.iter_mut().for_each(|x| walk(x, f)),
        Value::Object(o) => o.values_mut().for_each(|x| walk(x, f)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_pattern_compiles() {
        assert_eq!(class("secrets").unwrap().patterns.len(), 7);
        assert_eq!(class("pii").unwrap().patterns.len(), 4);
    }

    #[test]
    fn redacts_secrets_in_results() {
        let mut v = json!({"content": [{"type": "text", "text": "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY and AKIAIOSFODNN7EXAMPLE"}], "isError": false});
        let (n, unknown) = redact(&mut v, &["secrets".into(), "nope".into()]);
        assert_eq!(n, 2);
        assert_eq!(unknown, vec!["nope"]);
        let t = v["content"][0]["text"].as_str().unwrap();
        assert!(!t.contains("wJalr") && !t.contains("AKIA"), "{t}");
        assert!(t.contains("[REDACTED:secrets]"));
        assert_eq!(v["isError"], false);
    }

    #[test]
    fn redacts_pii_and_leaves_clean_text() {
        let mut v = json!([
            "mail bob@example.com or call +1 415 555 0100",
            "nothing here"
        ]);
        let (n, _) = redact(&mut v, &["pii".into()]);
        assert_eq!(n, 2);
        assert_eq!(v[1], "nothing here");
        let mut key = json!({"k": "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----"});
        assert_eq!(redact(&mut key, &["secrets".into()]).0, 1);
    }
}

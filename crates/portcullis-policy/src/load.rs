//! Loading: parse each file, re-id its policies, validate the whole set
//! against the schema, check annotations. Every problem is reported as
//! `file:line:col: message`.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use cedar_policy::{Effect, Policy, PolicyId, PolicySet, Schema, ValidationMode, Validator};
use miette::Diagnostic;

/// The schema shipped with Portcullis (namespace `Portcullis`).
pub const SHIPPED_SCHEMA: &str = include_str!("schema.cedarschema");
/// The name errors in the shipped schema would carry.
pub const SHIPPED_SCHEMA_NAME: &str = "schema.cedarschema";

/// One load problem, located in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file name as given.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column (in characters).
    pub col: usize,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.col, self.message
        )
    }
}

/// A policy set that failed to load: every problem found, one per line.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", render(.problems))]
pub struct LoadError {
    /// The problems, in file order.
    pub problems: Vec<Problem>,
}

fn render(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

impl LoadError {
    /// The problems as `file:line:col: message` lines.
    pub fn lines(&self) -> Vec<String> {
        self.problems.iter().map(ToString::to_string).collect()
    }
}

/// 1-based (line, column) of a byte offset in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |p| p + 1);
    let col = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, col)
}

/// A problem located at a diagnostic's first label (else 1:1).
fn at_diagnostic(file: &str, text: &str, d: &dyn Diagnostic, message: String) -> Problem {
    let offset = d
        .labels()
        .and_then(|mut l| l.next())
        .map_or(0, |l| l.offset());
    let (line, col) = line_col(text, offset);
    let mut message = message.replace('\n', " ");
    if let Some(help) = d.help() {
        message.push_str(&format!(" (help: {})", help.to_string().replace('\n', " ")));
    }
    Problem {
        file: file.to_owned(),
        line,
        col,
        message,
    }
}

/// What a loaded policy carries besides its Cedar form.
#[derive(Debug, Clone, Default)]
pub(crate) struct Meta {
    pub redact: Vec<String>,
    pub dlp_block: Vec<String>,
    pub injection: Option<String>,
    pub rate_class: Option<String>,
    pub require_approval: Option<String>,
    pub reason: Option<String>,
}

/// The outcome of loading: the full policy set and each policy's meta.
pub(crate) struct Loaded {
    pub schema: Schema,
    pub policies: Vec<Policy>,
    pub meta: HashMap<PolicyId, Meta>,
}

fn problem(file: &str, text: &str, offset: usize, message: impl Into<String>) -> Problem {
    let (line, col) = line_col(text, offset);
    Problem {
        file: file.to_owned(),
        line,
        col,
        message: message.into(),
    }
}

/// The byte offset of `needle` in `text` (0 when absent): best-effort
/// locations for problems Cedar does not locate.
fn find(text: &str, needle: &str) -> usize {
    text.find(needle).unwrap_or(0)
}

fn is_class_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Parses the schema text (the shipped one when `None`).
pub(crate) fn parse_schema(schema: Option<(&str, &str)>) -> Result<Schema, LoadError> {
    let (name, text) = schema.unwrap_or((SHIPPED_SCHEMA_NAME, SHIPPED_SCHEMA));
    match Schema::from_cedarschema_str(text) {
        Ok((schema, _warnings)) => Ok(schema),
        Err(e) => {
            let message = e.to_string();
            Err(LoadError {
                problems: vec![at_diagnostic(name, text, &e, message)],
            })
        }
    }
}

/// Parses, re-ids, checks annotations and validates `sources`.
pub(crate) fn load(
    schema: Option<(&str, &str)>,
    sources: &[(String, String)],
) -> Result<Loaded, LoadError> {
    let schema = parse_schema(schema)?;
    let mut problems = Vec::new();
    let mut policies = Vec::new();
    let mut meta = HashMap::new();
    // policy id → (file index) for locating validation errors.
    let mut origin: HashMap<PolicyId, usize> = HashMap::new();
    for (fi, (file, text)) in sources.iter().enumerate() {
        let set = match PolicySet::from_str(text) {
            Ok(set) => set,
            Err(errs) => {
                for e in errs.iter() {
                    problems.push(at_diagnostic(file, text, e, e.to_string()));
                }
                continue;
            }
        };
        if let Some(t) = set.templates().next() {
            problems.push(problem(
                file,
                text,
                find(text, "?principal").min(find(text, "?resource")),
                format!(
                    "template `{}` has slots: templates are not supported, write static policies",
                    t.id()
                ),
            ));
        }
        // PolicySet iteration order is insertion order (policy0, policy1, …).
        for (n, p) in set.policies().enumerate() {
            let id = match p.annotation("id") {
                Some(id) if !id.trim().is_empty() => id.to_owned(),
                Some(_) => {
                    problems.push(problem(
                        file,
                        text,
                        find(text, "@id"),
                        "@id must not be empty",
                    ));
                    continue;
                }
                None => format!("{file}:policy{n}"),
            };
            let pid = PolicyId::new(&id);
            if origin.contains_key(&pid) {
                problems.push(problem(
                    file,
                    text,
                    find(text, &format!("\"{id}\"")),
                    format!("duplicate policy id `{id}`"),
                ));
                continue;
            }
            let m = match policy_meta(p) {
                Ok(m) => m,
                Err(msg) => {
                    let anchor = p
                        .annotation("id")
                        .map_or(0, |id| find(text, &format!("\"{id}\"")));
                    problems.push(problem(file, text, anchor, msg));
                    continue;
                }
            };
            origin.insert(pid.clone(), fi);
            meta.insert(pid.clone(), m);
            policies.push(p.new_id(pid));
        }
    }
    // Validate what parsed, even when other files did not: every problem
    // of every file is reported at once.
    if !policies.is_empty() {
        match PolicySet::from_policies(policies.iter().cloned()) {
            Ok(full) => {
                let result = Validator::new(schema.clone()).validate(&full, ValidationMode::Strict);
                for e in result.validation_errors() {
                    let fi = origin.get(e.policy_id()).copied().unwrap_or(0);
                    let (file, text) = sources
                        .get(fi)
                        .map_or(("?", ""), |(f, t)| (f.as_str(), t.as_str()));
                    let message = strip_action_env(&e.to_string());
                    let p = at_diagnostic(file, text, e, message);
                    // The validator reports a problem once per action the
                    // policy applies to: keep one per place and message.
                    if !problems.contains(&p) {
                        problems.push(p);
                    }
                }
                // A policy that can never apply is an error here: a forbid
                // on an argument the schema does not declare would otherwise
                // load and silently never fire.
                for w in result.validation_warnings() {
                    if !matches!(w, cedar_policy::ValidationWarning::ImpossiblePolicy(_)) {
                        continue;
                    }
                    let fi = origin.get(w.policy_id()).copied().unwrap_or(0);
                    let (file, text) = sources
                        .get(fi)
                        .map_or(("?", ""), |(f, t)| (f.as_str(), t.as_str()));
                    let message = format!(
                        "{} (does it test an attribute the schema does not declare, e.g. an argument?)",
                        strip_action_env(&w.to_string())
                    );
                    let p = at_diagnostic(file, text, w, message);
                    if !problems.contains(&p) {
                        problems.push(p);
                    }
                }
            }
            Err(e) => problems.push(Problem {
                file: "?".into(),
                line: 1,
                col: 1,
                message: e.to_string(),
            }),
        }
    }
    if problems.is_empty() {
        Ok(Loaded {
            schema,
            policies,
            meta,
        })
    } else {
        Err(LoadError { problems })
    }
}

/// Drops the ` for Portcullis::Action::"X"` part of a validator message.
fn strip_action_env(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    const NEEDLE: &str = " for Portcullis::Action::\"";
    while let Some(pos) = rest.find(NEEDLE) {
        out.push_str(rest.get(..pos).unwrap_or_default());
        let after = rest.get(pos + NEEDLE.len()..).unwrap_or_default();
        rest = after
            .find('"')
            .and_then(|q| after.get(q + 1..))
            .unwrap_or_default();
    }
    out.push_str(rest);
    out
}

/// What `@injection(...)` may ask for, mildest first.
pub const INJECTION_ACTIONS: [&str; 3] = ["flag", "wrap", "block"];

/// Reads and checks the obligation annotations of one policy.
fn policy_meta(p: &Policy) -> Result<Meta, String> {
    let mut m = Meta::default();
    let permit = p.effect() == Effect::Permit;
    for key in [
        "redact",
        "dlp_block",
        "injection",
        "rate_class",
        "require_approval",
    ] {
        if p.annotation(key).is_some() && !permit {
            return Err(format!(
                "@{key} is an obligation and only applies to permit policies"
            ));
        }
    }
    for (key, into) in [("redact", &mut m.redact), ("dlp_block", &mut m.dlp_block)] {
        if let Some(r) = p.annotation(key) {
            for class in r.split(',').map(str::trim) {
                if !is_class_name(class) {
                    return Err(format!(
                        "@{key}(\"{r}\"): expected comma-separated DLP class names"
                    ));
                }
                into.push(class.to_owned());
            }
        }
    }
    if let Some(a) = p.annotation("injection") {
        if !INJECTION_ACTIONS.contains(&a.trim()) {
            return Err(format!(
                "@injection(\"{a}\"): expected one of {}",
                INJECTION_ACTIONS.join(", ")
            ));
        }
        m.injection = Some(a.trim().to_owned());
    }
    if let Some(c) = p.annotation("rate_class") {
        if !is_class_name(c) {
            return Err(format!("@rate_class(\"{c}\"): expected a class name"));
        }
        m.rate_class = Some(c.to_owned());
    }
    if let Some(a) = p.annotation("require_approval") {
        if a.trim().is_empty() {
            return Err("@require_approval needs a message for the human".into());
        }
        m.require_approval = Some(a.to_owned());
    }
    m.reason = p.annotation("reason").map(str::to_owned);
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_col_counts_chars() {
        let t = "ab\ncdé\nx";
        assert_eq!(line_col(t, 0), (1, 1));
        assert_eq!(line_col(t, 3), (2, 1));
        assert_eq!(line_col(t, 7), (2, 4));
        assert_eq!(line_col(t, 9), (3, 2));
        assert_eq!(line_col(t, 999), (3, 2));
    }

    #[test]
    fn shipped_schema_parses() {
        parse_schema(None).unwrap();
    }
}

//! Requests as data (JSON or TOML) and policy test fixtures: what
//! `portcullis policy explain` and `portcullis policy test` read.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use crate::engine::{Decision, Engine};
use crate::facts::{Action, PrincipalFacts, Request, ResourceFacts, SessionFacts};

/// A request written as data.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// Who (`{"type": "agent", "spiffe_id": …, "strength": "certificate"}`, …).
    pub principal: PrincipalFacts,
    /// A Cedar action id (`CallTool`) or an MCP method (`tools/call`).
    pub action: String,
    /// The method goes server → client (elicitation, sampling, roots).
    #[serde(default)]
    pub server_to_client: bool,
    /// On what (`{"type": "tool", "id": "docs__search", "server": "docs"}`).
    pub resource: ResourceFacts,
    /// The arguments, if any.
    #[serde(default)]
    pub arguments: Option<Value>,
    /// Session facts.
    #[serde(default)]
    pub session: SessionFacts,
    /// Risk score.
    #[serde(default)]
    pub risk: i64,
    /// What the argument scan found (`internal-address`, `internal-address:high`, …).
    #[serde(default)]
    pub argument_findings: Vec<String>,
    /// Seconds since the epoch.
    #[serde(default)]
    pub now_unix: i64,
}

impl RequestSpec {
    /// The action: an action id when it is one, else the MCP method's action.
    pub fn action(&self) -> Action {
        Action::from_id(&self.action)
            .unwrap_or_else(|| Action::from_method(&self.action, self.server_to_client))
    }

    /// The request this spec describes.
    pub fn request(&self) -> Request<'_> {
        let action = self.action();
        let method = match &action {
            Action::Other(_) => None,
            _ if self.action.contains('/') || self.action == "ping" => Some(self.action.as_str()),
            _ => None,
        };
        Request {
            principal: &self.principal,
            action,
            resource: &self.resource,
            arguments: self.arguments.as_ref(),
            method,
            session: &self.session,
            risk: self.risk,
            argument_findings: &self.argument_findings,
            now_unix: self.now_unix,
        }
    }
}

/// The expected decision of a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Expect {
    /// Allowed.
    Allow,
    /// Denied.
    Deny,
}

/// One fixture case: a request and what must come of it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// Shown in the report.
    pub name: String,
    /// The request.
    pub request: RequestSpec,
    /// The expected decision.
    pub expect: Expect,
    /// If given: exactly these determining policy ids (any order).
    #[serde(default)]
    pub determining: Option<Vec<String>>,
    /// If given: exactly these redact classes.
    #[serde(default)]
    pub redact: Option<Vec<String>>,
    /// If given: exactly these `@dlp_block` classes.
    #[serde(default)]
    pub dlp_block: Option<Vec<String>>,
    /// If given: this `@injection` action (`""` for none).
    #[serde(default)]
    pub injection: Option<String>,
    /// If given: this rate class.
    #[serde(default)]
    pub rate_class: Option<String>,
    /// If given: whether approval is required.
    #[serde(default)]
    pub require_approval: Option<bool>,
    /// If given: whether evaluation errors occurred.
    #[serde(default)]
    pub errors: Option<bool>,
}

/// A fixture file: the policies to load and the cases.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    /// A schema file (the shipped schema when absent), relative to the fixture.
    #[serde(default)]
    pub schema: Option<PathBuf>,
    /// Policy files, relative to the fixture.
    pub policies: Vec<PathBuf>,
    /// The cases (`[[case]]` in TOML, `"cases"` in JSON).
    #[serde(rename = "case", alias = "cases", default)]
    pub cases: Vec<Case>,
}

/// Why a fixture could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    /// The file could not be read.
    #[error("{0}: cannot read: {1}")]
    Read(String, std::io::Error),
    /// The file is not a valid fixture.
    #[error("{0}: {1}")]
    Parse(String, String),
}

impl Fixture {
    /// Reads a fixture (JSON when the name ends in `.json`, else TOML);
    /// relative paths in it are resolved against its folder.
    pub fn read(path: &Path) -> Result<Fixture, FixtureError> {
        let name = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| FixtureError::Read(name.clone(), e))?;
        let mut fx: Fixture = if path.extension().is_some_and(|e| e == "json") {
            serde_json::from_str(&text)
                .map_err(|e| FixtureError::Parse(name.clone(), e.to_string()))?
        } else {
            toml::from_str(&text)
                .map_err(|e| FixtureError::Parse(name.clone(), e.to_string().replace('\n', " ")))?
        };
        let base = path.parent().unwrap_or(Path::new("."));
        fx.schema = fx.schema.map(|s| base.join(s));
        fx.policies = fx.policies.iter().map(|p| base.join(p)).collect();
        Ok(fx)
    }
}

/// The outcome of one case.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The decision the engine made.
    pub decision: Decision,
    /// What differed from the expectation (`None`: the case passed).
    pub failure: Option<String>,
}

/// Checks one case against `engine`.
pub fn check(engine: &Engine, case: &Case) -> Outcome {
    let d = engine.decide(&case.request.request());
    let mut why = Vec::new();
    let got = if d.allow { Expect::Allow } else { Expect::Deny };
    if got != case.expect {
        why.push(
            format!("expected {:?}, got {:?} ({})", case.expect, got, d.reason).to_lowercase(),
        );
    }
    if let Some(want) = &case.determining {
        let mut want = want.clone();
        want.sort();
        if want != d.determining {
            why.push(format!(
                "expected determining {want:?}, got {:?}",
                d.determining
            ));
        }
    }
    for (key, want, got) in [
        ("redact", &case.redact, &d.obligations.redact),
        ("dlp_block", &case.dlp_block, &d.obligations.dlp_block),
    ] {
        if let Some(want) = want {
            let mut want = want.clone();
            want.sort();
            want.dedup();
            if &want != got {
                why.push(format!("expected {key} {want:?}, got {got:?}"));
            }
        }
    }
    if let Some(want) = &case.injection {
        let got = d.obligations.injection.as_deref().unwrap_or("");
        if want != got {
            why.push(format!("expected injection {want:?}, got {got:?}"));
        }
    }
    if let Some(want) = &case.rate_class {
        if Some(want) != d.obligations.rate_class.as_ref() {
            why.push(format!(
                "expected rate class {want:?}, got {:?}",
                d.obligations.rate_class
            ));
        }
    }
    if let Some(want) = case.require_approval {
        if want != d.obligations.require_approval.is_some() {
            why.push(format!(
                "expected require_approval {want}, got {:?}",
                d.obligations.require_approval
            ));
        }
    }
    if let Some(want) = case.errors {
        if want == d.errors.is_empty() {
            why.push(format!("expected errors {want}, got {:?}", d.errors));
        }
    }
    Outcome {
        decision: d,
        failure: (!why.is_empty()).then(|| why.join("; ")),
    }
}

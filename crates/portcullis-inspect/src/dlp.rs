//! Data-loss prevention on what tools return (and, by config, on what
//! agents send): detectors for credentials (class `secrets`) and personal
//! data (class `pii`), one action per class (redact in place, block the
//! result, or flag it), and a streaming scanner for SSE results.
//!
//! How it stays fast on large results (about 1.5 ms per MiB of mixed
//! prose, code and logs):
//! - every detector that starts at (or a few bytes after) a fixed string —
//!   `AKIA`, `ghp_`, `-----BEGIN`, `eyJ`, `pass`, `oken` … — is found by
//!   a case-sensitive Aho-Corasick pass (so its SIMD prefilter applies;
//!   the case variants that matter are listed): the main automaton holds
//!   the frequent anchors, a second small one the rare provider prefixes
//!   (see the anchor budget above `DETECTORS`), and
//!   their hits are merged in text order; `@` is found by a byte search; a
//!   cheap byte test at the hit (the key word's first letters, a separator
//!   and eight or sixteen value bytes after `password`, `user:pass@` after
//!   `://` …) comes next, and only then the detector's regex, in a small
//!   window around the hit;
//! - the personal-data detectors with no literal to hang on (card and phone
//!   numbers, IBANs, national ids) share one scalar pass over runs of
//!   digits that reads each run's shape (digit counts, group lengths, the
//!   letters before it) and runs a detector's regex only where its format
//!   could fit, so dates, addresses, versions and hex ids cost no regex;
//! - every candidate is then validated in code (Luhn, mod-97, the JWT
//!   header, Shannon entropy, date and area rules …), and overlapping
//!   candidates are resolved: higher severity first, then the earlier, then
//!   the longer.
//!
//! Patterns are compiled once, on first use. Work stays linear in the text
//! on hostile input too (a megabyte of `passwordpassword…` or `eyJeyJ…`):
//! anchors inside a long match of their own detector search no further
//! than its end, and a match longer than 16 KiB is never taken apart.
//!
//! A finding carries the detector id, its class and severity, the JSON
//! pointer of the string, the byte span in the original string and at most
//! a masked hint (a public prefix such as `AKIA` and the last four
//! characters of a match of twenty or more) — never the matched text.
//!
//! Decisions worth knowing:
//! - an address without a dot in its domain (`user@localhost`, `git@host`)
//!   is not an email: it is not deliverable and is mostly an ssh or local
//!   account name;
//! - a high-entropy string alone is not a secret (hashes, ids and UUIDs
//!   are everywhere): the generic detector needs a key such as `password=`,
//!   `"token":`, `api_key:` or `Bearer` before the value, or an object key
//!   of that kind in structured content;
//! - the generic detector reads the key, its separator and the value in
//!   code: a quoted value is the secret whole (`"P4ss;word99!"`,
//!   `"correct horse battery staple"`), an unquoted one runs to the next
//!   blank (`Tr0ub4dor&3x`), less a following `&key=`/`;key=` pair, so a
//!   redaction never leaves part of a password behind; it also reads
//!   `--password '…'`, `-p'…'`, `<password>…</password>`, `key="…"
//!   value="…"`, `define('DB_PASSWORD', '…')` and keys ending in `pass`
//!   (`WIFI_PASS`). After a password key a value a person chose counts
//!   (`Summer2024!`, `letmein2023`, a passphrase of plain words when
//!   delimited); after other keys (`secret`, `token`, `api_key` …) a
//!   random-looking value, or a quoted short one with three character
//!   classes (`'P@ssw0rd123'`). Placeholders, references, masks, UUIDs,
//!   ARNs, URLs, regular expressions, code (`get_token(user)`,
//!   `settings.SECRET_KEY`, `NAME: Type = …`) and keys that say the value
//!   is no secret (`token_type`, `password_policy`, `--change-token`) are
//!   not taken;
//! - bare nine-digit numbers are not SSNs, and bare ten-digit numbers are
//!   not phone numbers: both need their usual separators; a Dutch BSN (nine
//!   bare digits, which pass its eleven-test one time in eleven) counts only
//!   right after its name (`BSN: …`, `"bsn": "…"`, `burgerservicenummer`),
//!   a Brazilian CPF only as written (`ddd.ddd.ddd-dd`) with both check
//!   digits right.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::Range;
use std::sync::OnceLock;

use aho_corasick::{AhoCorasick, MatchKind};
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Name of the credentials class (keys, tokens, passwords) as policy writes it.
pub const SECRETS: &str = "secrets";
/// Name of the personal-data class as policy writes it.
pub const PII: &str = "pii";

/// The class names in their fixed order, so per-class state can be an array.
const CLASS_NAMES: [&str; 2] = [SECRETS, PII];

/// How bad a leak of a detector's match would be, so findings can be ranked
/// and overlaps resolved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Contact data: worth knowing, rarely harmful alone.
    Low,
    /// Identifiers and weakly-typed secrets.
    Medium,
    /// Tokens and financial or government ids.
    High,
    /// Keys that give direct, lasting access (private keys, cloud secrets).
    Critical,
}

impl Severity {
    /// Lower-case name, so the severity reads the same in logs and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

/// What a match of a class does to the result, so policy can choose per class.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Replace the match with `[REDACTED:<detector>]`, keeping the structure.
    Redact,
    /// Refuse the whole result (matches are also redacted, in case a caller
    /// forwards it anyway).
    Block,
    /// Leave the text and report the finding.
    Flag,
}

/// The action per class, so config and policy obligations can change what
/// DLP does per segment. A class missing from the map is not inspected.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DlpPolicy {
    /// Class name (`secrets`, `pii`) to action; unknown names are ignored.
    pub actions: BTreeMap<String, Action>,
}

impl Default for DlpPolicy {
    /// Out of the box credentials are redacted and personal data flagged.
    fn default() -> Self {
        DlpPolicy::with(&[SECRETS], Action::Redact).and(PII, Action::Flag)
    }
}

impl DlpPolicy {
    /// One action for each named class, for callers that name classes (the
    /// `redact` obligation).
    pub fn with(classes: &[&str], action: Action) -> DlpPolicy {
        DlpPolicy {
            actions: classes.iter().map(|c| (c.to_string(), action)).collect(),
        }
    }

    /// This policy with one more class set, so policies read as one chain.
    pub fn and(mut self, class: &str, action: Action) -> DlpPolicy {
        self.actions.insert(class.to_string(), action);
        self
    }

    /// The action for a class; `None` leaves the class uninspected.
    pub fn action(&self, class: &str) -> Option<Action> {
        self.actions.get(class).copied()
    }

    fn enabled(&self) -> On {
        CLASS_NAMES.map(|c| self.action(c))
    }
}

/// The action of each class in `CLASS_NAMES` order (`None`: not inspected).
type On = [Option<Action>; 2];

/// One finding, safe to log: it never holds the matched text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DlpFinding {
    /// Stable detector id, also used in the redaction marker.
    pub detector: &'static str,
    /// The detector's class (`secrets` or `pii`).
    pub class: &'static str,
    /// The detector's severity.
    pub severity: Severity,
    /// What the policy did with it.
    pub action: Action,
    /// JSON pointer (RFC 6901) of the string; empty for a stream.
    pub path: String,
    /// Byte span of the match in the original string (or stream).
    pub span: Range<usize>,
    /// At most a public prefix and the last four characters, e.g. `AKIA…MPLE`.
    pub hint: String,
}

/// What [`inspect`] found and did, so the caller can log, count and block.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DlpOutcome {
    /// Every finding, in document order.
    pub findings: Vec<DlpFinding>,
    /// How many matches were replaced in place.
    pub redactions: usize,
    /// Whether a class whose action is `Block` matched (or the detectors
    /// could not be built: DLP fails closed).
    pub blocked: bool,
}

/// A match in plain text, for evaluation harnesses and callers that want
/// detections without a JSON document.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DlpMatch {
    /// Stable detector id.
    pub detector: &'static str,
    /// The detector's class.
    pub class: &'static str,
    /// The detector's severity.
    pub severity: Severity,
    /// Byte span in the text.
    pub span: Range<usize>,
}

/// Decides whether a regex match is real and returns the span to report:
/// `(text, whole match, secret part)`.
type Check = fn(&str, Range<usize>, Range<usize>) -> Option<Range<usize>>;

/// One detector, so the table of ids, classes and severities can be listed.
pub struct Detector {
    /// Stable id, used in findings and redaction markers.
    pub id: &'static str,
    /// Class name (`secrets` or `pii`).
    pub class: &'static str,
    /// Severity of a match.
    pub severity: Severity,
    cix: usize,
    /// Literals (case-sensitive, at least three bytes, or `@`) the match
    /// starts at or near; empty: found by the digit-run pass.
    anchors: &'static [&'static str],
    /// How far before an anchor the match may start.
    back: usize,
    /// How far after an anchor the first search window reaches (it grows
    /// while a match runs into its end).
    ahead: usize,
    /// Whether matches start with a public prefix (`PUBLIC_PREFIXES`)
    /// that a hint may show.
    public_prefix: bool,
    /// For detectors without anchors: the bit the digit-run pass sets when
    /// a run could hold a match.
    digits: u8,
    pattern: &'static str,
    check: Check,
    /// A cheap test on the bytes around an anchor hit (`text`, anchor
    /// start, anchor end) before the regex runs.
    pre: Pre,
}

/// See [`Detector`]'s `pre`.
type Pre = fn(&[u8], usize, usize) -> bool;

/// Indexes into `CLASS_NAMES`: secrets, personal data.
const S: usize = 0;
const P: usize = 1;

/// The detectors, most specific first (ties in overlap resolution go to the
/// earlier entry).
///
/// Anchor budget: the main anchors share one Aho-Corasick automaton whose
/// SIMD prefilter (Teddy) takes at most 64 literals and slows down as
/// literals crowd its 16 buckets (53 anchors: 0.38 ms per MiB; adding six
/// provider prefixes: 0.55 ms; past 64 it is not used at all: 1.6 ms). So
/// the rarer literals added later — the provider prefixes without a long
/// distinctive form (Shopify, Vault, Databricks, Sentry, Doppler, Postman,
/// Telegram), MySQL's `-p'…'` and the Dutch BSN's name — ride on a second,
/// small automaton (`SECONDARY`: 14 literals, 0.05 ms per MiB), and the two
/// streams of hits are merged in text order. Teddy fingerprints the first
/// three bytes of each literal, so a literal that starts like common text
/// costs even when it never matches (`servicenummer`, starting like
/// `server`, made the second automaton 75% slower; `rgerservice` costs
/// nothing). (`pass`, `PASS`, `Pass` replaced `assw` and
/// `ASSW` in the main one: they also find `WIFI_PASS` and `passphrase`.)
static DETECTORS: &[Detector] = &[
    Detector {
        id: "gcp-service-account-key",
        class: SECRETS,
        severity: Severity::Critical,
        cix: S,
        anchors: &["-----BEGIN"],
        back: 24,
        ahead: 8192,
        public_prefix: false,
        digits: 0,
        pattern: r#""private_key"\s*:\s*"(-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY-----[^"]*)""#,
        check: any,
        pre: always,
    },
    Detector {
        id: "private-key",
        class: SECRETS,
        severity: Severity::Critical,
        cix: S,
        anchors: &["-----BEGIN"],
        back: 0,
        ahead: 4096,
        public_prefix: true,
        digits: 0,
        pattern: r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----(?:[A-Za-z0-9+/=\s\\:,.\-!]*?-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----|[A-Za-z0-9+/=\s\\:,.\-!]*)",
        check: pem_key,
        pre: always,
    },
    Detector {
        id: "aws-access-key-id",
        class: SECRETS,
        severity: Severity::High,
        cix: S,
        anchors: &["AKIA", "ASIA", "ABIA", "ACCA"],
        back: 0,
        ahead: 24,
        public_prefix: true,
        digits: 0,
        pattern: r"(?-u:\b)(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}(?-u:\b)",
        check: aws_key_id,
        pre: always,
    },
    Detector {
        id: "aws-secret-access-key",
        class: SECRETS,
        severity: Severity::Critical,
        cix: S,
        anchors: &["aws", "AWS", "ecret", "ECRET"],
        back: 1,
        ahead: 200,
        public_prefix: false,
        digits: 0,
        pattern: r"(?i:(?-u:\b)aws|secret[_\-]?access[_\-]?key)[^\n]{0,80}?[^A-Za-z0-9/+]([A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|$)",
        check: aws_secret,
        pre: pre_aws_secret,
    },
    Detector {
        id: "gcp-api-key",
        class: SECRETS,
        severity: Severity::High,
        cix: S,
        anchors: &["AIza"],
        back: 0,
        ahead: 48,
        public_prefix: true,
        digits: 0,
        pattern: r"(?-u:\b)(AIza[0-9A-Za-z_\-]{35})(?:[^0-9A-Za-z_\-]|$)",
        check: token,
        pre: always,
    },
    Detector {
        id: "azure-storage-key",
        class: SECRETS,
        severity: Severity::Critical,
        cix: S,
        anchors: &["Key"],
        back: 12,
        ahead: 160,
        public_prefix: false,
        digits: 0,
        pattern: r"(?i:AccountKey|SharedAccessKey)=([A-Za-z0-9+/]{40,}={0,2})",
        check: azure_key,
        pre: pre_key_equals,
    },
    Detector {
        id: "azure-sas-signature",
        class: SECRETS,
        severity: Severity::High,
        cix: S,
        anchors: &["sig="],
        back: 1,
        ahead: 140,
        public_prefix: false,
        digits: 0,
        pattern: r"[?&;]sig=([A-Za-z0-9%+/=]{40,120})",
        check: sas_signature,
        pre: always,
    },
    Detector {
        id: "jwt",
        class: SECRETS,
        severity: Severity::High,
        cix: S,
        anchors: &["eyJ"],
        back: 0,
        ahead: 1024,
        public_prefix: false,
        digits: 0,
        pattern: r"(?-u:\b)(eyJ[A-Za-z0-9_\-]{8,}(?:\.[A-Za-z0-9_\-]*){2,4})",
        check: jwt,
        pre: pre_jwt,
    },
    Detector {
        id: "github-token",
        class: SECRETS,
        severity: Severity::High,
        cix: S,
        anchors: &["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"],
        back: 0,
        ahead: 300,
        public_prefix: true,
        digits: 0,
        pattern: r"(?-u:\b)(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})(?-u:\b)",
        check: token,
        pre: always,
    },
    Detector {
        id: "gitlab-token",
        class: SECRETS,
        severity: Severity::High,
        cix: S,
        anchors: &["glpat-"],
        back: 0,
        ahead: 128,
        public_prefix: true,
        digits: 0,
        pattern: r"(?-u:\b)glpat-[A-Za-z0-9_\-]{20,}",
        check: token,
        pre: always,
    },
    Detector {
        id: "slack-token",
        class: SECRETS,
        severity: Severity::High,
        cix: S,
        anchors: &["xox"],
        back: 0,
        ahead: 256,
        public_prefix: true,
        digits: 0,
        pattern: r"(?-u:\b)xox[abposr]-[A-Za-z0-9\-]{10,}",
        check: token,
        pre: always,
    },
    Detector {
        id: "slack-webhook",
        class: SECRETS,
        severity: Severity::Medium,
        cix: S,
        anchors: &["hooks.slack"],
        back: 8,
        ahead: 160,
        public_prefix: false,
        digits: 0,
        pattern: r"https://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/\-]{20,}",
        check: any,
        pre: always,
    },
    Detector {
        id: "stripe-secret-key",
        class: SECRETS,
        severity: Severity::Critical,
        cix: S,
        anchors: &["_live_", "k_test_"],
        back: 2,
        ahead: 256,
        public_prefix: true,
        digits: 0,
        pattern: r"(?-u:\b)[sr]k_(?:live|test)_[A-Za-z0-9]{20,}",
        check: token,
        pre: always,
    },
    Detector {
        id: "anthropic-api-key",
        class: SECRETS,
        severity: Severity::High,
        cix: S,
        anchors: &["sk-"],
        back: 0,
        ahead: 256,
        public_prefix: true,
        digits: 0,
        pattern: r"(?-u:\b)sk-ant-[A-Za-z0-9_\-]{32,}",
        check: token,
        pre: pre_anthropic,
    },
    Detector {
        id: "openai-api-key",
        class: SECRETS,
        severity: Severity::High,
        cix: S,
        anchors: &["sk-"],
        back: 0,
        ahead: 256,
        public_prefix: true,
        digits: 0,
        pattern: r"(?-u:\b)(sk-(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{20,}|sk-[A-Za-z0-9]{20}T3BlbkFJ[A-Za-z0-9]{20}|sk-[A-Za-z0-9]{32,64})(?:[^A-Za-z0-9_\-]|$)",
        check: token,
        pre: pre_openai,
    },
    Detector {
        id: "google-oauth-token",
        class: SECRETS,
        severity: Severity::High,
        cix: S,
        anchors: &["ya29."],
        back: 0,
        ahead: 256,
        public_prefix: true,
        digits: 0,
        pattern: r"(?-u:\b)ya29\.[0-9A-Za-z_\-]{20,}",
        check: token,
        pre: always,
    },
    Detector {
        id: "npm-token",
        class: SECRETS,
        severity: Severity::High,
        cix: S,
        anchors: &["npm_"],
        back: 0,
        ahead: 48,
        public_prefix: true,
        digits: 0,
        pattern: r"(?-u:\b)npm_[A-Za-z0-9]{36}(?-u:\b)",
        check: token,
        pre: always,
    },
    Detector {
        id: "pypi-token",
        class: SECRETS,
        severity: Severity::High,
        cix: S,
        anchors: &["pypi-AgE"],
        back: 0,
        ahead: 256,
        public_prefix: true,
        digits: 0,
        pattern: r"(?-u:\b)pypi-AgE[A-Za-z0-9_\-]{50,}",
        check: token,
        pre: always,
    },
    Detector {
        id: "twilio-credential",
        class: SECRETS,
        severity: Severity::High,
        cix: S,
        anchors: &["wilio", "WILIO"],
        back: 1,
        ahead: 200,
        public_prefix: false,
        digits: 0,
        pattern: r#"(?i:twilio)[^\n]{0,80}?(?:(?-u:\b)(SK[0-9a-fA-F]{32})(?-u:\b)|(?i:auth_?token|api_?secret|secret)["']?\s*[:=]\s*["']?([A-Za-z0-9]{32})(?-u:\b))"#,
        check: token,
        pre: always,
    },
    Detector {
        id: "sendgrid-api-key",
        class: SECRETS,
        severity: Severity::High,
        cix: S,
        anchors: &["SG."],
        back: 0,
        ahead: 80,
        public_prefix: true,
        digits: 0,
        pattern: r"(?-u:\b)(SG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43})(?:[^A-Za-z0-9_\-]|$)",
        check: token,
        pre: always,
    },
    Detector {
        id: "huggingface-token",
        class: SECRETS,
        severity: Severity::High,
        cix: S,
        anchors: &["hf_"],
        back: 0,
        ahead: 48,
        public_prefix: true,
        digits: 0,
        pattern: r"(?-u:\b)hf_[A-Za-z]{34}(?-u:\b)",
        check: token,
        pre: always,
    },
    Detector {
        id: "digitalocean-token",
        class: SECRETS,
        severity: Severity::High,
        cix: S,
        anchors: &["_v1_"],
        back: 3,
        ahead: 80,
        public_prefix: true,
        digits: 0,
        pattern: r"(?-u:\b)do[opr]_v1_[a-f0-9]{64}(?-u:\b)",
        check: token,
        pre: always,
    },
    Detector {
        id: "grafana-token",
        class: SECRETS,
        severity: Severity::High,
        cix: S,
        anchors: &["glsa_"],
        back: 0,
        ahead: 256,
        public_prefix: true,
        digits: 0,
        pattern: r"(?-u:\b)glsa_[A-Za-z0-9]{32}_[A-Fa-f0-9]{8}(?-u:\b)",
        check: token,
        pre: always,
    },
    Detector {
        id: "linear-api-key",
        class: SECRETS,
        severity: Severity::High,
        cix: S,
        anchors: &["lin_api_"],
        back: 0,
        ahead: 56,
        public_prefix: true,
        digits: 0,
        pattern: r"(?-u:\b)lin_api_[A-Za-z0-9]{40}(?-u:\b)",
        check: token,
        pre: always,
    },
    Detector {
        id: "figma-token",
        class: SECRETS,
        severity: Severity::High,
        cix: S,
        anchors: &["figd_"],
        back: 0,
        ahead: 64,
        public_prefix: true,
        digits: 0,
        pattern: r"(?-u:\b)figd_[A-Za-z0-9_\-]{40}(?:[^A-Za-z0-9_\-]|$)",
        check: token,
        pre: always,
    },
    Detector {
        id: "groq-api-key",
        class: SECRETS,
        severity: Severity::High,
        cix: S,
        anchors: &["gsk_"],
        back: 0,
        ahead: 64,
        public_prefix: true,
        digits: 0,
        pattern: r"(?-u:\b)gsk_[A-Za-z0-9]{52}(?-u:\b)",
        check: token,
        pre: always,
    },
    Detector {
        id: "supabase-token",
        class: SECRETS,
        severity: Severity::High,
        cix: S,
        anchors: &["sbp_"],
        back: 0,
        ahead: 56,
        public_prefix: true,
        digits: 0,
        pattern: r"(?-u:\b)sbp_[a-f0-9]{40}(?-u:\b)",
        check: token,
        pre: always,
    },
    Detector {
        id: "atlassian-api-token",
        class: SECRETS,
        severity: Severity::High,
        cix: S,
        anchors: &["ATATT3"],
        back: 0,
        ahead: 256,
        public_prefix: true,
        digits: 0,
        pattern: r"(?-u:\b)ATATT3[A-Za-z0-9_\-=]{150,}",
        check: token,
        pre: always,
    },
    Detector {
        id: "age-secret-key",
        class: SECRETS,
        severity: Severity::Critical,
        cix: S,
        anchors: &["AGE-SECRET-KEY-1"],
        back: 0,
        ahead: 80,
        public_prefix: true,
        digits: 0,
        pattern: r"AGE-SECRET-KEY-1[QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L]{58}",
        check: token,
        pre: always,
    },
    Detector {
        id: "shopify-token",
        class: SECRETS,
        severity: Severity::High,
        cix: S,
        anchors: &["shp"],
        back: 0,
        ahead: 48,
        public_prefix: true,
        digits: 0,
        pattern: r"(?-u:\b)shp(?:at|ss|ca|pa)_[a-fA-F0-9]{32}(?-u:\b)",
        check: token,
        pre: pre_shopify,
    },
    Detector {
        id: "vault-token",
        class: SECRETS,
        severity: Severity::High,
        cix: S,
        anchors: &["hvs.", "hvb."],
        back: 0,
        ahead: 256,
        public_prefix: true,
        digits: 0,
        pattern: r"(?-u:\b)(hv[sb]\.[A-Za-z0-9_\-]{24,})(?:[^A-Za-z0-9_\-]|$)",
        check: token,
        pre: always,
    },
    Detector {
        id: "databricks-token",
        class: SECRETS,
        severity: Severity::High,
        cix: S,
        anchors: &["dapi"],
        back: 0,
        ahead: 48,
        public_prefix: true,
        digits: 0,
        pattern: r"(?-u:\b)dapi[a-f0-9]{32}(?:-[0-9]{1,2})?(?-u:\b)",
        check: token,
        pre: always,
    },
    Detector {
        id: "sentry-token",
        class: SECRETS,
        severity: Severity::High,
        cix: S,
        anchors: &["sntry"],
        back: 0,
        ahead: 512,
        public_prefix: true,
        digits: 0,
        pattern: r"(?-u:\b)(sntrys_[A-Za-z0-9+/=_\-]{60,}|sntryu_[a-f0-9]{64})(?:[^A-Za-z0-9+/=_\-]|$)",
        check: token,
        pre: always,
    },
    Detector {
        id: "doppler-token",
        class: SECRETS,
        severity: Severity::High,
        cix: S,
        anchors: &["dp."],
        back: 0,
        ahead: 64,
        public_prefix: true,
        digits: 0,
        pattern: r"(?-u:\b)dp\.(?:pt|st|sa|ct|scim|audit)\.[A-Za-z0-9]{40,44}(?-u:\b)",
        check: token,
        pre: pre_doppler,
    },
    Detector {
        id: "postman-api-key",
        class: SECRETS,
        severity: Severity::High,
        cix: S,
        anchors: &["PMAK-"],
        back: 0,
        ahead: 72,
        public_prefix: true,
        digits: 0,
        pattern: r"(?-u:\b)PMAK-[a-f0-9]{24}-[a-f0-9]{34}(?-u:\b)",
        check: token,
        pre: always,
    },
    Detector {
        id: "telegram-bot-token",
        class: SECRETS,
        severity: Severity::High,
        cix: S,
        anchors: &[":AA"],
        back: 13,
        ahead: 40,
        public_prefix: false,
        digits: 0,
        pattern: r"(?:(?-u:\b)|bot)([0-9]{8,10}:AA[A-Za-z0-9_\-]{33})(?:[^A-Za-z0-9_\-]|$)",
        check: token,
        pre: pre_telegram,
    },
    Detector {
        id: "url-credentials",
        class: SECRETS,
        severity: Severity::High,
        cix: S,
        anchors: &["://"],
        back: 24,
        ahead: 400,
        public_prefix: false,
        digits: 0,
        pattern: r#"[A-Za-z][A-Za-z0-9+.\-]{1,20}://[^\s:/@?#"'<>]{1,128}:([^\s:/@?#"'<>]{1,256})@[A-Za-z0-9\[]"#,
        check: url_password,
        pre: pre_url_credentials,
    },
    Detector {
        id: "generic-secret",
        class: SECRETS,
        severity: Severity::Medium,
        cix: S,
        anchors: &[
            "ecret",
            "ECRET",
            "pass",
            "PASS",
            "Pass",
            "pwd",
            "PWD",
            "oken",
            "OKEN",
            "redential",
            "REDENTIAL",
            "earer",
            "EARER",
            "key",
            "Key",
            "KEY",
            // Second automaton (see `SECONDARY`).
            "-p'",
            "-p\"",
        ],
        back: 8,
        ahead: 256,
        public_prefix: false,
        digits: 0,
        pattern: r#"(?i:password|passwd|passphrase|pwd|pass|secret|token|api[_\-]?key|access[_\-]?key|auth[_\-]?key|app(?:lication)?[_\-]?key|private[_\-]?key|credentials?|bearer)|\s-p["']"#,
        check: generic,
        pre: pre_generic,
    },
    Detector {
        id: "email",
        class: PII,
        severity: Severity::Low,
        cix: P,
        anchors: &["@"],
        back: 64,
        ahead: 320,
        public_prefix: false,
        digits: 0,
        pattern: r"[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9\-]{0,62}[A-Za-z0-9])?)*\.[A-Za-z]{2,24}(?-u:\b)",
        check: email,
        pre: pre_email,
    },
    Detector {
        id: "payment-card",
        class: PII,
        severity: Severity::High,
        cix: P,
        anchors: &[],
        back: 0,
        ahead: 0,
        public_prefix: false,
        digits: CARD,
        pattern: r"(?-u:\b)[0-9](?:[\x20\-]?[0-9]){12,18}(?-u:\b)",
        check: card,
        pre: always,
    },
    Detector {
        id: "us-ssn",
        class: PII,
        severity: Severity::High,
        cix: P,
        anchors: &[],
        back: 0,
        ahead: 0,
        public_prefix: false,
        digits: SSN,
        pattern: r"(?-u:\b)[0-9]{3}(?:-[0-9]{2}-|\x20[0-9]{2}\x20)[0-9]{4}(?-u:\b)",
        check: ssn,
        pre: always,
    },
    Detector {
        id: "iban",
        class: PII,
        severity: Severity::High,
        cix: P,
        anchors: &[],
        back: 0,
        ahead: 0,
        public_prefix: false,
        digits: IBAN,
        pattern: r"(?-u:\b)[A-Z]{2}[0-9]{2}(?:\x20?[A-Z0-9]){11,30}(?-u:\b)",
        check: iban,
        pre: always,
    },
    Detector {
        id: "es-dni",
        class: PII,
        severity: Severity::Medium,
        cix: P,
        anchors: &[],
        back: 0,
        ahead: 0,
        public_prefix: false,
        digits: DNI,
        pattern: r"(?-u:\b)(?:[0-9]{8}|[XYZ]-?[0-9]{7})-?[A-Z](?-u:\b)",
        check: dni,
        pre: always,
    },
    Detector {
        id: "br-cpf",
        class: PII,
        severity: Severity::High,
        cix: P,
        anchors: &[],
        back: 0,
        ahead: 0,
        public_prefix: false,
        digits: CPF,
        pattern: r"(?-u:\b)[0-9]{3}\.[0-9]{3}\.[0-9]{3}-[0-9]{2}(?-u:\b)",
        check: cpf,
        pre: always,
    },
    Detector {
        id: "nl-bsn",
        class: PII,
        severity: Severity::High,
        cix: P,
        anchors: &["bsn", "BSN", "Bsn", "rgerservice"],
        back: 2,
        ahead: 40,
        public_prefix: false,
        digits: 0,
        pattern: r"(?-u:\b)(?i:bsn|burgerservicenummer)[^0-9\n]{0,12}?([0-9]{9})(?-u:\b)",
        check: bsn,
        pre: pre_bsn,
    },
    Detector {
        id: "uk-nino",
        class: PII,
        severity: Severity::Medium,
        cix: P,
        anchors: &[],
        back: 0,
        ahead: 0,
        public_prefix: false,
        digits: NINO,
        pattern: r"(?-u:\b)[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]\x20?[0-9]{2}\x20?[0-9]{2}\x20?[0-9]{2}\x20?[A-D](?-u:\b)",
        check: nino,
        pre: always,
    },
    Detector {
        id: "phone",
        class: PII,
        severity: Severity::Low,
        cix: P,
        anchors: &[],
        back: 0,
        ahead: 0,
        public_prefix: false,
        digits: PHONE,
        pattern: r"\+[1-9][0-9]{0,3}[\x20.\-]?(?:\([0-9]{1,4}\)[\x20.\-]?)?[0-9]{1,5}(?:[\x20.\-]?[0-9]{1,5}){1,5}(?-u:\b)|(?:(?-u:\b)1[\x20.\-])?(?:\([2-9][0-9]{2}\)\x20?|(?-u:\b)[2-9][0-9]{2}[\x20.\-])[2-9][0-9]{2}[\x20.\-][0-9]{4}(?-u:\b)|(?-u:\b)0[1-9][0-9]{0,4}(?:[\x20\-][0-9]{2,8}){1,4}(?-u:\b)",
        check: phone,
        pre: always,
    },
];

/// Anchors searched by the second automaton (see the anchor budget above
/// `DETECTORS`).
const SECONDARY: &[&str] = &[
    "-p'",
    "-p\"",
    "shp",
    "hvs.",
    "hvb.",
    "dapi",
    "sntry",
    "dp.",
    "PMAK-",
    ":AA",
    "bsn",
    "BSN",
    "Bsn",
    "rgerservice",
];

/// Every detector, so callers can list ids, classes and severities.
pub fn detectors() -> &'static [Detector] {
    DETECTORS
}

/// A named class of sensitive data, kept for callers that work by class
/// name (the `redact` obligation, the audit log's redacted mode).
pub struct Class {
    /// The class name used in policy (`@redact("secrets")`).
    pub name: &'static str,
}

static CLASSES: [Class; 2] = [Class { name: SECRETS }, Class { name: PII }];

/// Every class the gateway knows.
pub fn classes() -> &'static [Class] {
    &CLASSES
}

/// Finds a class by name.
pub fn class(name: &str) -> Option<&'static Class> {
    CLASSES.iter().find(|c| c.name == name)
}

impl Class {
    /// The detectors of this class, so docs and reports can list them.
    pub fn detectors(&self) -> impl Iterator<Item = &'static Detector> + '_ {
        DETECTORS.iter().filter(move |d| d.class == self.name)
    }

    /// Replaces every match of this class in `text` with
    /// `[REDACTED:<detector>]`; returns how many were replaced.
    pub fn redact_text(&self, text: &mut String) -> usize {
        let mut v = Value::String(std::mem::take(text));
        let out = inspect(&mut v, &DlpPolicy::with(&[self.name], Action::Redact));
        if let Value::String(s) = v {
            *text = s;
        }
        out.redactions
    }

    /// Whether `text` holds anything of this class.
    pub fn matches(&self, text: &str) -> bool {
        !scan_text(text, &DlpPolicy::with(&[self.name], Action::Flag)).is_empty()
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
            Some(c) => chosen.push(c.name),
            None => unknown.push(n.clone()),
        }
    }
    if chosen.is_empty() {
        return (0, unknown);
    }
    let policy = DlpPolicy::with(&chosen, Action::Redact);
    if engine().is_none() {
        // Fail closed: without detectors, every string goes.
        let mut n = 0;
        walk(v, &mut String::new(), None, &mut |s, _, _| {
            *s = "[REDACTED:dlp-unavailable]".to_string();
            n += 1;
        });
        return (n, unknown);
    }
    (inspect(v, &policy).redactions, unknown)
}

/// Inspects every string of a result (`content[].text`, `structuredContent`
/// at any depth, resource `text`, and anything else; JSON inside a text is
/// just text): redacts in place per the policy, keeping the structure, and
/// reports what it found. Object keys are kept, but a key such as
/// `"password"` or `"SecretAccessKey"` is context for its string value.
pub fn inspect(result: &mut Value, policy: &DlpPolicy) -> DlpOutcome {
    let mut out = DlpOutcome::default();
    let on = policy.enabled();
    if on.iter().all(Option::is_none) {
        return out;
    }
    let Some(engine) = engine() else {
        out.blocked = true;
        return out;
    };
    let mut path = String::new();
    walk(result, &mut path, None, &mut |s, path, key| {
        let hits = engine.find(s, &on, key);
        if !hits.is_empty() {
            if let Some(new) = apply(s, &hits, &on, path, 0, 0, &mut out) {
                *s = new;
            }
        }
    });
    out
}

/// Runs the detectors of the policy's classes over plain text (actions are
/// ignored); the matches are resolved (no overlaps) and in text order.
pub fn scan_text(text: &str, policy: &DlpPolicy) -> Vec<DlpMatch> {
    let on = policy.enabled();
    let Some(engine) = engine() else {
        return Vec::new();
    };
    engine
        .find(text, &on, None)
        .into_iter()
        .filter_map(|h| {
            let d = DETECTORS.get(h.det)?;
            Some(DlpMatch {
                detector: d.id,
                class: d.class,
                severity: d.severity,
                span: h.span,
            })
        })
        .collect()
}

/// Calls `f(string, json_pointer, nearest_object_key)` on every string.
fn walk(
    v: &mut Value,
    path: &mut String,
    key: Option<&str>,
    f: &mut impl FnMut(&mut String, &str, Option<&str>),
) {
    match v {
        Value::String(s) => f(s, path, key),
        Value::Array(a) => {
            for (i, x) in a.iter_mut().enumerate() {
                let n = path.len();
                let _ = write!(path, "/{i}");
                walk(x, path, key, f);
                path.truncate(n);
            }
        }
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                let n = path.len();
                path.push('/');
                for c in k.chars() {
                    match c {
                        '~' => path.push_str("~0"),
                        '/' => path.push_str("~1"),
                        c => path.push(c),
                    }
                }
                walk(x, path, Some(k), f);
                path.truncate(n);
            }
        }
        _ => {}
    }
}

/// A validated match of detector `det` (an index into `DETECTORS`).
#[derive(Clone, Debug)]
struct Hit {
    det: usize,
    span: Range<usize>,
}

fn det_of(h: &Hit) -> Option<&'static Detector> {
    DETECTORS.get(h.det)
}

/// Records `hits` (resolved, in order, none before `start`) of `text` as
/// findings in `out` and returns the redacted `text[start..]` when something
/// was replaced. `base` shifts spans (stream offsets).
fn apply(
    text: &str,
    hits: &[Hit],
    on: &On,
    path: &str,
    start: usize,
    base: usize,
    out: &mut DlpOutcome,
) -> Option<String> {
    let mut new = String::new();
    let mut copied = start;
    let mut replaced = false;
    for h in hits {
        let Some(d) = det_of(h) else { continue };
        let Some(action) = on.get(d.cix).copied().flatten() else {
            continue;
        };
        let matched = text.get(h.span.clone()).unwrap_or("");
        out.findings.push(DlpFinding {
            detector: d.id,
            class: d.class,
            severity: d.severity,
            action,
            path: path.to_string(),
            span: h.span.start + base..h.span.end + base,
            hint: hint(d, matched),
        });
        if action == Action::Block {
            out.blocked = true;
        }
        if action != Action::Flag {
            if !replaced {
                new.reserve(text.len());
                replaced = true;
            }
            new.push_str(text.get(copied..h.span.start).unwrap_or(""));
            new.push_str("[REDACTED:");
            new.push_str(d.id);
            new.push(']');
            copied = h.span.end;
            out.redactions += 1;
        }
    }
    if !replaced {
        return None;
    }
    new.push_str(text.get(copied..).unwrap_or(""));
    Some(new)
}

/// Token prefixes that are public (they name the provider and kind, not
/// the secret), so a hint may show them.
const PUBLIC_PREFIXES: &[&str] = &[
    "-----BEGIN",
    "AKIA",
    "ASIA",
    "ABIA",
    "ACCA",
    "AIza",
    "eyJ",
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "glpat-",
    "xoxa-",
    "xoxb-",
    "xoxo-",
    "xoxp-",
    "xoxr-",
    "xoxs-",
    "sk_live_",
    "rk_live_",
    "sk_test_",
    "rk_test_",
    "hf_",
    "dop_v1_",
    "doo_v1_",
    "dor_v1_",
    "glsa_",
    "lin_api_",
    "figd_",
    "gsk_",
    "sbp_",
    "ATATT3",
    "AGE-SECRET-KEY-1",
    "sk-ant-",
    "sk-proj-",
    "sk-svcacct-",
    "sk-admin-",
    "sk-",
    "ya29.",
    "npm_",
    "pypi-",
    "SG.",
    "shpat_",
    "shpss_",
    "shpca_",
    "shppa_",
    "hvs.",
    "hvb.",
    "dapi",
    "sntrys_",
    "sntryu_",
    "dp.pt.",
    "dp.st.",
    "dp.sa.",
    "dp.ct.",
    "dp.scim.",
    "dp.audit.",
    "PMAK-",
];

/// A public prefix (when the detector's matches start with one) and, for
/// matches of twenty characters or more, the last four.
fn hint(d: &Detector, matched: &str) -> String {
    let mut h = String::new();
    if d.public_prefix {
        if let Some(p) = PUBLIC_PREFIXES
            .iter()
            .filter(|p| matched.starts_with(**p))
            .max_by_key(|p| p.len())
        {
            h.push_str(p);
        }
    }
    h.push('…');
    let n = matched.chars().count();
    if n >= 20 {
        h.extend(matched.chars().skip(n - 4));
    }
    h
}

// ---------------------------------------------------------------------------
// The engine.

struct Engine {
    regexes: Vec<Regex>,
    grouped: Vec<bool>,
    /// The anchors (case-sensitive, so Aho-Corasick can use its SIMD
    /// prefilter; the case variants that matter are listed).
    anchors: AhoCorasick,
    /// Anchor pattern id to the detectors it starts.
    owners: Vec<Vec<usize>>,
    /// The second automaton (`SECONDARY`) and its owners.
    anchors2: AhoCorasick,
    owners2: Vec<Vec<usize>>,
    /// The detectors anchored at `@` (a single byte is found faster alone).
    at: Vec<usize>,
    /// The detectors found by the digit-run pass.
    numeric: Vec<usize>,
    /// A private key's END line at the start of a text (streams).
    key_end: Regex,
}

fn engine() -> Option<&'static Engine> {
    static E: OnceLock<Option<Engine>> = OnceLock::new();
    E.get_or_init(build).as_ref()
}

fn build() -> Option<Engine> {
    let mut regexes = Vec::with_capacity(DETECTORS.len());
    for d in DETECTORS {
        regexes.push(Regex::new(d.pattern).ok()?);
    }
    let grouped = regexes.iter().map(|r| r.captures_len() > 1).collect();
    let mut lits: Vec<&str> = Vec::new();
    let mut owners: Vec<Vec<usize>> = Vec::new();
    let (mut at, mut numeric) = (Vec::new(), Vec::new());
    for (i, d) in DETECTORS.iter().enumerate() {
        if d.anchors.is_empty() {
            numeric.push(i);
        }
        for &a in d.anchors {
            if a == "@" {
                at.push(i);
                continue;
            }
            match lits.iter().position(|l| *l == a) {
                Some(k) => owners.get_mut(k)?.push(i),
                None => {
                    lits.push(a);
                    owners.push(vec![i]);
                }
            }
        }
    }
    let (main, second): (Vec<usize>, Vec<usize>) =
        (0..lits.len()).partition(|&k| lits.get(k).is_some_and(|l| !SECONDARY.contains(l)));
    let (anchors, owners1) = automaton(&lits, &owners, &main)?;
    let (anchors2, owners2) = automaton(&lits, &owners, &second)?;
    Some(Engine {
        regexes,
        grouped,
        anchors,
        owners: owners1,
        anchors2,
        owners2,
        at,
        numeric,
        key_end: Regex::new(r"\A-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----").ok()?,
    })
}

/// One anchor automaton over the literals `pick` (indexes into `lits`),
/// and the detectors each of its patterns starts.
fn automaton(
    lits: &[&str],
    owners: &[Vec<usize>],
    pick: &[usize],
) -> Option<(AhoCorasick, Vec<Vec<usize>>)> {
    // Not overlapping (the fast mode), longest literal first (so the first
    // listed at a position is the longest there); a literal also starts the
    // detectors of every anchor it contains (`_live_` holds nothing else,
    // but a longer anchor holding `Key` would).
    let mut all: Vec<Vec<usize>> = Vec::with_capacity(pick.len());
    for &k in pick {
        let l = lits.get(k)?;
        let mut o: Vec<usize> = Vec::new();
        for (m, other) in lits.iter().enumerate() {
            if l.contains(other) {
                o.extend(owners.get(m)?.iter().copied());
            }
        }
        o.sort_unstable();
        o.dedup();
        all.push(o);
    }
    let mut order: Vec<usize> = (0..pick.len()).collect();
    order.sort_by_key(|&k| {
        std::cmp::Reverse(
            pick.get(k)
                .and_then(|&i| lits.get(i))
                .map_or(0, |l| l.len()),
        )
    });
    let pats: Vec<&str> = order
        .iter()
        .filter_map(|&k| pick.get(k).and_then(|&i| lits.get(i)).copied())
        .collect();
    let owners: Vec<Vec<usize>> = order.iter().filter_map(|&k| all.get(k).cloned()).collect();
    let ac = AhoCorasick::builder()
        .match_kind(MatchKind::LeftmostFirst)
        .build(&pats)
        .ok()?;
    Some((ac, owners))
}

/// How many detectors, for per-detector arrays.
const N: usize = DETECTORS.len();
/// Index of `private-key` in `DETECTORS` (checked by a test), for streams.
const PRIVATE_KEY: usize = 1;

/// Past a match this long (valid or not), later anchors of its detector
/// inside it search only up to its end, without growing their window:
/// that keeps hostile input (a megabyte of `passwordpassword…`) linear.
const LONG: usize = 256;

/// Matches longer than this get no capture groups (and so no finding).
const MAX_GROUPED: usize = 16 * 1024;

/// The long matches one search saw.
#[derive(Default)]
struct Long {
    /// The end of the last one, valid or not (0: none).
    seen: usize,
    /// The span of the last valid one.
    valid: Option<(usize, usize)>,
}

impl Engine {
    /// Every validated, non-overlapping match in `text`, in order, for the
    /// enabled classes; `key` is the object key the string sits under.
    fn find(&self, text: &str, on: &On, key: Option<&str>) -> Vec<Hit> {
        let mut hits = Vec::new();
        // Per detector: the end of the last long match seen (valid or not),
        // and the span of the last long valid one.
        let mut hidden = [0usize; N];
        let mut covered = [(0usize, 0usize); N];
        let enabled = |d: &Detector| on.get(d.cix).is_some_and(Option::is_some);
        // The two automata's hits, merged in text order.
        let mut one = self.anchors.find_iter(text);
        let mut two = self.anchors2.find_iter(text);
        let (mut a, mut b) = (one.next(), two.next());
        loop {
            let first = match (&a, &b) {
                (Some(x), Some(y)) => x.start() <= y.start(),
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let (m, owners) = if first {
                let Some(m) = a.take() else { break };
                a = one.next();
                (m, self.owners.get(m.pattern().as_usize()))
            } else {
                let Some(m) = b.take() else { break };
                b = two.next();
                (m, self.owners2.get(m.pattern().as_usize()))
            };
            let Some(owners) = owners else {
                continue;
            };
            for &i in owners {
                let Some(d) = DETECTORS.get(i) else { continue };
                let Some(h) = hidden.get_mut(i) else { continue };
                if !enabled(d) || !(d.pre)(text.as_bytes(), m.start(), m.end()) {
                    continue;
                }
                // A match of an anchored detector starts at most `back`
                // bytes before one of its anchors.
                let from = floor(text, m.start().saturating_sub(d.back));
                // Inside a long valid match of the same detector, anything
                // found would overlap it, start later and lose to it.
                let Some(c) = covered.get_mut(i) else {
                    continue;
                };
                if c.0 <= from && m.start() < c.1 {
                    continue;
                }
                let (end, grow) = if *h > m.start() {
                    ((m.end() + d.ahead).min(*h), false)
                } else {
                    (m.end() + d.ahead, true)
                };
                let long = self.search(i, text, from, m.start(), end, grow, &mut hits);
                *h = (*h).max(long.seen);
                if let Some(v) = long.valid {
                    *c = v;
                }
            }
        }
        for &i in &self.at {
            let Some(d) = DETECTORS.get(i).filter(|d| enabled(d)) else {
                continue;
            };
            let mut pos = 0;
            while let Some(o) = text.get(pos..).and_then(|t| t.find('@')) {
                let p = pos + o;
                if (d.pre)(text.as_bytes(), p, p + 1) {
                    let from = floor(text, p.saturating_sub(d.back));
                    self.search(i, text, from, p, p + 1 + d.ahead, true, &mut hits);
                }
                pos = p + 1;
            }
        }
        let mut want = 0u8;
        for &i in &self.numeric {
            if let Some(d) = DETECTORS.get(i).filter(|d| enabled(d)) {
                want |= d.digits;
            }
        }
        if want != 0 {
            digit_runs(text, |start, end, bits| {
                for &i in &self.numeric {
                    let Some(d) = DETECTORS.get(i) else { continue };
                    if bits & want & d.digits == 0 {
                        continue;
                    }
                    // A match starts in the run or up to three bytes before
                    // it (`+`, `(`, letters); an IBAN runs on past it.
                    let from = floor(text, start.saturating_sub(3));
                    let until = if d.digits == IBAN {
                        start + 48
                    } else {
                        end + 3
                    };
                    self.search(i, text, from, end, until, true, &mut hits);
                }
            });
        }
        if let Some(k) = key {
            if let Some(h) = key_context(k, text) {
                if DETECTORS.get(h.det).is_some_and(enabled) {
                    hits.push(h);
                }
            }
        }
        hits.sort_by(|a, b| {
            (a.det, a.span.start, a.span.end).cmp(&(b.det, b.span.start, b.span.end))
        });
        hits.dedup_by(|a, b| a.det == b.det && a.span == b.span);
        resolve(hits)
    }

    /// Finds the matches of detector `i` that start in `[from, limit]`,
    /// reading a window that ends at `until` and (when `grow`) grows while
    /// a match runs into its end; pushes the validated ones and reports the
    /// long matches seen.
    #[allow(clippy::too_many_arguments)]
    fn search(
        &self,
        i: usize,
        text: &str,
        mut from: usize,
        limit: usize,
        until: usize,
        grow: bool,
        out: &mut Vec<Hit>,
    ) -> Long {
        let (Some(d), Some(re)) = (DETECTORS.get(i), self.regexes.get(i)) else {
            return Long::default();
        };
        let grouped = self.grouped.get(i).copied().unwrap_or(false);
        let mut end = ceil(text, until);
        let mut long = Long::default();
        while from <= limit && from < end {
            let Some(hay) = text.get(..end) else { break };
            let Some(whole) = re.find_at(hay, from).map(|m| m.range()) else {
                break;
            };
            if whole.start > limit {
                break;
            }
            if grow && whole.end == end && end < text.len() {
                end = ceil(text, end + (end - from).max(256));
                continue;
            }
            // The part to report: the first group that took part. Groups
            // cost a slower engine, so only matches of sane length get them
            // (a longer "secret" is not one).
            let secret = if !grouped {
                Some(whole.clone())
            } else if whole.len() <= MAX_GROUPED {
                text.get(..whole.end)
                    .and_then(|h| re.captures_at(h, whole.start))
                    .filter(|c| c.get_match().range() == whole)
                    .map(|c| {
                        c.iter()
                            .skip(1)
                            .flatten()
                            .next()
                            .map_or(whole.clone(), |m| m.range())
                    })
            } else {
                None
            };
            let valid = secret
                .and_then(|secret| (d.check)(text, whole.clone(), secret))
                .filter(|s| s.start < s.end);
            if whole.len() >= LONG {
                long.seen = long.seen.max(whole.end);
                if valid.is_some() {
                    long.valid = Some((whole.start, whole.end));
                }
            }
            // After a valid match, go on after it; after an invalid one, an
            // overlapping match may still start just after its start.
            from = match valid {
                Some(span) => {
                    out.push(Hit { det: i, span });
                    whole.end.max(ceil(text, whole.start + 1))
                }
                None => ceil(text, whole.start + 1),
            };
        }
        long
    }
}

// Bits of the numeric detectors, set by `digit_runs` when a run of digits
// could hold one of their matches.
const CARD: u8 = 1;
const SSN: u8 = 2;
const PHONE: u8 = 4;
const IBAN: u8 = 8;
const DNI: u8 = 16;
const NINO: u8 = 32;
const CPF: u8 = 64;

/// One scalar pass over the digits of `text`: each run of digit groups
/// joined by one space, dash, dot, slash or parenthesis is read for its
/// shape (digit counts between separators, the last group lengths, the
/// letters just before it), and `f(start, end, bits)` learns which numeric
/// detectors could match there. The bits are necessary conditions of each
/// detector's pattern, so runs of timestamps, addresses, versions and hex
/// ids cost no regex at all.
fn digit_runs(text: &str, mut f: impl FnMut(usize, usize, u8)) {
    let b = text.as_bytes();
    let at = |i: usize| b.get(i).copied().unwrap_or(0);
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let upper = |c: u8| c.is_ascii_uppercase();
    let mut i = 0;
    let skip_token = |mut j: usize| {
        while b.get(j).is_some_and(|&c| word_byte(c)) {
            j += 1;
        }
        j
    };
    while let Some(start) = next_digit(b, i) {
        // Fast paths, most digits in logs and code being parts of words: a
        // digit glued to a lower-case letter or `_` cannot start or end any
        // of these matches, and glued to capitals only after an IBAN or
        // NINO prefix (two capitals) or an NIE letter.
        let p1 = start.checked_sub(1).map_or(0, at);
        if p1.is_ascii_lowercase() || p1 == b'_' {
            i = skip_token(start);
            continue;
        }
        if upper(p1) {
            let p2 = start.checked_sub(2).map_or(0, at);
            let p3 = start.checked_sub(3).map_or(0, at);
            let prefix =
                (upper(p2) && !word(p3)) || (matches!(p1, b'X' | b'Y' | b'Z') && !word(p2));
            if !prefix {
                i = skip_token(start);
                continue;
            }
        }
        let mut j = start;
        while at(j).is_ascii_digit() {
            j += 1;
        }
        let n1 = at(j);
        if n1.is_ascii_lowercase() || n1 == b'_' {
            i = skip_token(j);
            continue;
        }
        let joined = match (n1, at(j + 1)) {
            (b' ' | b'-' | b'.' | b'/' | b')', c) if c.is_ascii_digit() => true,
            (b')', b' ') | (b' ', b'(') => at(j + 2).is_ascii_digit(),
            _ => false,
        };
        let first = j - start;
        let digit = |k: usize| at(k).is_ascii_digit();
        // A lone group of fewer than six digits (a count, a time) can only
        // be an IBAN's check digits.
        if !joined && first < 6 && !upper(p1) {
            i = j;
            continue;
        }
        if joined && p1 != b'+' && !upper(p1) {
            // An ISO date (`2024-03-01`): its groups fit no format here.
            let date = first == 4
                && matches!(at(start), b'1' | b'2')
                && n1 == b'-'
                && digit(j + 1)
                && digit(j + 2)
                && at(j + 3) == b'-'
                && digit(j + 4)
                && digit(j + 5)
                && !digit(j + 6);
            if date {
                i = j + 6;
                continue;
            }
            // Dotted numbers (addresses, versions, amounts): only a North
            // American `415.555.0100` uses dots.
            if n1 == b'.' && first != 3 && !(first == 1 && at(start) == b'1') {
                let mut k = j;
                while digit(k) || (at(k) == b'.' && digit(k + 1)) {
                    k += 1;
                }
                i = k;
                continue;
            }
            // `200 123ms`: the next group is part of a word, so the number
            // is this short group alone.
            if first < 6 && matches!(n1, b' ' | b'-') {
                let mut k = j + 1;
                while digit(k) {
                    k += 1;
                }
                if at(k).is_ascii_lowercase() || at(k) == b'_' {
                    i = skip_token(k);
                    continue;
                }
            }
        }
        let (p1, p2, p3) = (
            start.checked_sub(1).map_or(0, at),
            start.checked_sub(2).map_or(0, at),
            start.checked_sub(3).map_or(0, at),
        );
        let mut bits = 0u8;
        // Digits since the last separator that cards and SSNs do not allow
        // (they take spaces and dashes) and that phones do not allow.
        let (mut card_run, mut phone_run, mut phone_first) = (0usize, 0usize, 0u8);
        // Last three group lengths in each of those two families.
        let (mut g, mut pg) = ([0usize; 3], [0usize; 3]);
        let (mut total, mut groups, mut first_len) = (0usize, 0usize, 0usize);
        let mut broken = false;
        let mut j = start;
        loop {
            let gs = j;
            while at(j).is_ascii_digit() {
                j += 1;
            }
            let len = j - gs;
            if groups == 0 {
                first_len = len;
            }
            total += len;
            groups += 1;
            if phone_run == 0 {
                phone_first = at(gs);
            }
            card_run += len;
            phone_run += len;
            g = [g[1], g[2], len];
            pg = [pg[1], pg[2], len];
            if card_run >= 13 {
                bits |= CARD;
            }
            if g == [3, 2, 4] {
                bits |= SSN;
            }
            if pg == [3, 3, 4] || (phone_first == b'0' && phone_run >= 10) {
                bits |= PHONE;
            }
            let digit = |k: usize| at(k).is_ascii_digit();
            // (bytes to skip, ends the card family, ends the phone family)
            let (step, card_break, phone_break) = match (at(j), at(j + 1)) {
                (b' ' | b'-', _) if digit(j + 1) => (1, false, false),
                (b'.' | b')', _) if digit(j + 1) => (1, true, false),
                (b')', b' ') | (b' ', b'(') if digit(j + 2) => (2, true, false),
                (b'/', _) if digit(j + 1) => (1, true, true),
                _ => (0, true, true),
            };
            if step == 0 {
                break;
            }
            if card_break {
                card_run = 0;
                g = [0; 3];
                broken = true;
            }
            if phone_break {
                phone_run = 0;
                pg = [0; 3];
            }
            j += step;
        }
        let end = j;
        let (n1, n2) = (at(end), at(end + 1));
        if p1 == b'+' && total >= 7 {
            bits |= PHONE;
        }
        // Cards, SSNs, phones and DNIs start and end at a word boundary:
        // a run glued to letters can only hold them past a dot or slash.
        if !broken && (word(p1) || word(n1)) {
            bits &= !(CARD | SSN | PHONE);
        }
        let letter_after = upper(n1) || (n1 == b'-' && upper(n2));
        if groups == 1 && total == 8 && !word(p1) && letter_after {
            bits |= DNI;
        }
        let nie =
            matches!(p1, b'X' | b'Y' | b'Z') || (p1 == b'-' && matches!(p2, b'X' | b'Y' | b'Z'));
        if groups == 1 && total == 7 && nie && letter_after {
            bits |= DNI;
        }
        let two_letters = (upper(p1) && upper(p2)) || (p1 == b' ' && upper(p2) && upper(p3));
        if total == 6 && two_letters && (upper(n1) || (n1 == b' ' && upper(n2))) {
            bits |= NINO;
        }
        if upper(p1) && upper(p2) && !word(p3) && first_len >= 2 {
            bits |= IBAN;
        }
        // A Brazilian CPF as written: `ddd.ddd.ddd-dd`.
        let cpf = end == start + 14
            && (0..14).all(|k| match k {
                3 | 7 => at(start + k) == b'.',
                11 => at(start + k) == b'-',
                _ => digit(start + k),
            });
        if cpf && !word(p1) && !word(n1) {
            bits |= CPF;
        }
        if bits != 0 {
            f(start, end, bits);
        }
        i = end.max(start + 1);
    }
}

/// Bytes of a word (`[0-9A-Za-z_]`) as bits, for the tight skipping loop.
const WORD_BITS: u128 = {
    let mut bits = 0u128;
    let mut c = 0u8;
    while c < 128 {
        if c.is_ascii_alphanumeric() || c == b'_' {
            bits |= 1 << c;
        }
        c += 1;
    }
    bits
};

fn word_byte(c: u8) -> bool {
    c < 128 && (WORD_BITS >> c) & 1 == 1
}

/// The index of the next ASCII digit at or after `i`, eight bytes at a time.
fn next_digit(b: &[u8], mut i: usize) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    while let Some(w) = b.get(i..i + 8).and_then(|c| <[u8; 8]>::try_from(c).ok()) {
        // Digits become bytes below 10; flag every byte below 10. Borrows
        // only flag bytes above a real one, so the lowest flag is exact.
        let t = u64::from_le_bytes(w) ^ (ONES * 0x30);
        let m = t.wrapping_sub(ONES * 10) & !t & HIGH;
        if m != 0 {
            return Some(i + (m.trailing_zeros() / 8) as usize);
        }
        i += 8;
    }
    b.get(i..)?
        .iter()
        .position(u8::is_ascii_digit)
        .map(|o| i + o)
}

/// Keeps the best of overlapping hits: higher severity, then earlier, then
/// longer, then the detector listed first.
fn resolve(mut hits: Vec<Hit>) -> Vec<Hit> {
    if hits.len() > 1 {
        let sev = |h: &Hit| det_of(h).map_or(Severity::Low, |d| d.severity);
        hits.sort_by(|a, b| {
            sev(b)
                .cmp(&sev(a))
                .then(a.span.start.cmp(&b.span.start))
                .then(b.span.len().cmp(&a.span.len()))
                .then(a.det.cmp(&b.det))
        });
        let mut taken: BTreeMap<usize, usize> = BTreeMap::new();
        hits.retain(|h| {
            let before = taken
                .range(..=h.span.start)
                .next_back()
                .is_some_and(|(_, &e)| e > h.span.start);
            let after = taken
                .range(h.span.start..)
                .next()
                .is_some_and(|(&s, _)| s < h.span.end);
            if before || after {
                return false;
            }
            taken.insert(h.span.start, h.span.end);
            true
        });
        hits.sort_by_key(|h| h.span.start);
    }
    hits
}

/// The largest char boundary at or before `i`.
fn floor(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The smallest char boundary at or after `i` (at most the length).
fn ceil(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while i < s.len() && !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

// ---------------------------------------------------------------------------
// Prechecks: necessary conditions of each pattern, read straight from the
// bytes after an anchor, so that most anchor hits (`token` in prose, `key`
// in code, `://` in every URL) cost no regex.

fn byte(b: &[u8], i: usize) -> u8 {
    b.get(i).copied().unwrap_or(0)
}

fn always(_: &[u8], _: usize, _: usize) -> bool {
    true
}

fn is_key_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-')
}

/// Bytes that end a generic secret's value (as in its pattern).
fn ends_value(c: u8) -> bool {
    c == 0 || c.is_ascii_whitespace() || b"\"'`,;<>(){}[]\\&=".contains(&c)
}

/// Whether the bytes before an anchor complete its key word (`api` before
/// `key`, `t` before `oken` …): most anchor hits in code are other words.
fn key_word_before(b: &[u8], start: usize, anchor: &[u8]) -> bool {
    let at = |k: usize| {
        start
            .checked_sub(k)
            .map_or(0, |i| byte(b, i).to_ascii_lowercase())
    };
    match anchor {
        b"key" | b"Key" | b"KEY" => {
            // `api`, `access`, `auth`, `app`, `application`, `private`
            // before it, with at most one `_` or `-` between.
            let gap = usize::from(matches!(at(1), b'_' | b'-'));
            let ends = |w: &[u8]| {
                w.iter()
                    .rev()
                    .enumerate()
                    .all(|(k, &c)| at(gap + 1 + k) == c)
            };
            [
                &b"api"[..],
                b"access",
                b"auth",
                b"app",
                b"application",
                b"private",
            ]
            .iter()
            .any(|w| ends(w))
        }
        b"oken" | b"OKEN" => at(1) == b't',
        b"ecret" | b"ECRET" => at(1) == b's',
        b"redential" | b"REDENTIAL" => at(1) == b'c',
        b"earer" | b"EARER" => at(1) == b'b',
        _ => true,
    }
}

/// The generic detector's shapes, read from the bytes: `<key>[suffix]`, a
/// closing quote, then `:`/`=` and a value (eight bytes when quoted or
/// after a password key, sixteen otherwise); a quoted key then `,` or
/// `value=` (`define('DB_PASSWORD', '…')`, `<add key="ApiSecret"
/// value="…">`); `<password>…`; a flag (`--password '…'`); `-p'…'`; or
/// `Bearer <16 token bytes>`.
fn pre_generic(b: &[u8], start: usize, end: usize) -> bool {
    let anchor = b.get(start..end).unwrap_or_default();
    if anchor.first() == Some(&b'-') && anchor.get(1) == Some(&b'p') && anchor.len() == 3 {
        // `mysql -p'…'`: a short flag glued to a quoted value.
        let before = start.checked_sub(1).map_or(b' ', |i| byte(b, i));
        return before.is_ascii_whitespace() && !matches!(byte(b, end), b'\n' | 0);
    }
    if !key_word_before(b, start, anchor) {
        return false;
    }
    let password = matches!(anchor, b"pass" | b"PASS" | b"Pass" | b"pwd" | b"PWD");
    let mut j = end;
    if byte(b, j).is_ascii_whitespace() && matches!(anchor, b"earer" | b"EARER") {
        while byte(b, j).is_ascii_whitespace() {
            j += 1;
        }
        let v = j;
        while j < v + 16 && (byte(b, j).is_ascii_alphanumeric() || b"-._~+/".contains(&byte(b, j)))
        {
            j += 1;
        }
        return j - v >= 16;
    }
    while j < end + 32 && is_key_byte(byte(b, j)) {
        j += 1;
    }
    let kend = j;
    if byte(b, kend) == b'>' {
        // `<password>value</password>`
        return (kend + 1..kend + 9).all(|k| !matches!(byte(b, k), b'<' | b'\n' | 0));
    }
    let mut quoted_key = false;
    while j < kend + 4 && matches!(byte(b, j), b'\\' | b'"' | b'\'') {
        quoted_key |= byte(b, j) != b'\\';
        j += 1;
    }
    let gap = j;
    while matches!(byte(b, j), b' ' | b'\t') {
        j += 1;
    }
    let spaced = j > gap;
    match byte(b, j) {
        b':' | b'=' => {
            // Not a comparison (`==`) or a path (`Token::new`).
            if byte(b, j + 1) == byte(b, j) {
                return false;
            }
            j += 1;
            if matches!(byte(b, j), b'=' | b'>') {
                j += 1;
            }
            // After a password key, a value may be a line with blanks in
            // it (`key=four plain words` in a `.properties` file).
            if password {
                value_bytes(b, j, 8, true)
            } else {
                value_bytes(b, j, 16, false)
            }
        }
        b',' if quoted_key => {
            // `'DB_PASSWORD', '…'`: a quoted value follows.
            let mut k = j + 1;
            while matches!(byte(b, k), b' ' | b'\t') && k < j + 1 + MAX_BLANKS {
                k += 1;
            }
            matches!(byte(b, k), b'"' | b'\'') && value_bytes(b, k, 8, false)
        }
        b'v' | b'V' => {
            quoted_key
                && spaced
                && b.get(j..j + 5)
                    .is_some_and(|w| w.eq_ignore_ascii_case(b"value"))
        }
        _ if spaced && !quoted_key => {
            // A flag: the key starts with `-`.
            let mut k = start;
            while k > 0 && start - k < 40 && is_key_byte(byte(b, k - 1)) {
                k -= 1;
            }
            byte(b, k) == b'-' && value_bytes(b, j, 8, false)
        }
        _ => false,
    }
}

/// At least `min` value bytes at `j` (after blanks): up to the closing
/// quote (eight are enough) when quoted, else up to a blank (or, with
/// `blanks`, the end of the line) or a quote.
fn value_bytes(b: &[u8], mut j: usize, min: usize, blanks: bool) -> bool {
    while matches!(byte(b, j), b' ' | b'\t') {
        j += 1;
    }
    let mut quoted = false;
    while matches!(byte(b, j), b'\\' | b'"' | b'\'' | b'`') {
        quoted |= byte(b, j) != b'\\';
        j += 1;
    }
    let (min, stop): (usize, fn(u8) -> bool) = if quoted {
        (8, |c| matches!(c, 0 | b'\n' | b'\r' | b'"' | b'\'' | b'`'))
    } else if blanks {
        (min, |c| {
            matches!(c, 0 | b'\n' | b'\r' | b'"' | b'\'' | b'`' | b'<')
        })
    } else {
        (min, |c| {
            c == 0 || c.is_ascii_whitespace() || matches!(c, b'"' | b'\'' | b'`' | b'<')
        })
    };
    (j..j + min).all(|k| !stop(byte(b, k)))
}

/// `user:password@` before the end of the authority.
fn pre_url_credentials(b: &[u8], _: usize, end: usize) -> bool {
    let mut colon = false;
    for j in end..end + 400 {
        match byte(b, j) {
            b'@' => return colon,
            b':' => colon = true,
            c if ends_value(c) || matches!(c, b'/' | b'?' | b'#') => return false,
            _ => {}
        }
    }
    false
}

/// Forty base64 bytes in a row soon after the context word.
fn pre_aws_secret(b: &[u8], _: usize, end: usize) -> bool {
    let mut run = 0;
    for j in end..end + 140 {
        let c = byte(b, j);
        if c.is_ascii_alphanumeric() || c == b'/' || c == b'+' {
            run += 1;
            if run >= 40 {
                return true;
            }
        } else if c == 0 {
            return false;
        } else {
            run = 0;
        }
    }
    false
}

fn pre_key_equals(b: &[u8], _: usize, end: usize) -> bool {
    byte(b, end) == b'='
}

fn token_bytes(b: &[u8], from: usize, n: usize) -> bool {
    (from..from + n).all(|j| {
        let c = byte(b, j);
        c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
    })
}

/// `sk-` then a project, service or admin kind, or twenty letters and
/// digits in a row.
fn pre_openai(b: &[u8], _: usize, end: usize) -> bool {
    let rest = b.get(end..).unwrap_or(&[]);
    ["proj-", "svcacct-", "admin-"]
        .iter()
        .any(|k| rest.starts_with(k.as_bytes()))
        || (end..end + 20).all(|j| byte(b, j).is_ascii_alphanumeric())
}

fn pre_anthropic(b: &[u8], _: usize, end: usize) -> bool {
    b.get(end..).is_some_and(|r| r.starts_with(b"ant-")) && token_bytes(b, end + 4, 20)
}

/// `shp` then a Shopify token kind (`shpat_`, `shpss_`, `shpca_`, `shppa_`).
fn pre_shopify(b: &[u8], _: usize, end: usize) -> bool {
    let rest = b.get(end..).unwrap_or_default();
    ["at_", "ss_", "ca_", "pa_"]
        .iter()
        .any(|k| rest.starts_with(k.as_bytes()))
}

/// `dp.` then a Doppler token kind (`dp.pt.`, `dp.st.` …).
fn pre_doppler(b: &[u8], _: usize, end: usize) -> bool {
    let rest = b.get(end..).unwrap_or_default();
    ["pt.", "st.", "sa.", "ct.", "scim.", "audit."]
        .iter()
        .any(|k| rest.starts_with(k.as_bytes()))
}

/// A bot id (digits) before `:AA`, and token bytes after it.
fn pre_telegram(b: &[u8], start: usize, end: usize) -> bool {
    start
        .checked_sub(1)
        .is_some_and(|i| byte(b, i).is_ascii_digit())
        && token_bytes(b, end, 31)
}

/// A digit soon after `bsn` (or `burgerservicenummer`).
fn pre_bsn(b: &[u8], _: usize, end: usize) -> bool {
    (end..end + 20).any(|j| byte(b, j).is_ascii_digit())
}

/// `eyJ` at the start of a word, and eight more token bytes.
fn pre_jwt(b: &[u8], start: usize, end: usize) -> bool {
    let before = start.checked_sub(1).map_or(0, |i| byte(b, i));
    !(before.is_ascii_alphanumeric() || before == b'_') && token_bytes(b, end, 8)
}

/// A local-part byte before the `@`, and a dotted domain after it.
fn pre_email(b: &[u8], start: usize, end: usize) -> bool {
    let before = start.checked_sub(1).map_or(0, |i| byte(b, i));
    if !(before.is_ascii_alphanumeric() || b"._%+-".contains(&before)) {
        return false;
    }
    let mut j = end;
    while j < end + 255 {
        match byte(b, j) {
            b'.' => return byte(b, j + 1).is_ascii_alphanumeric() && j > end,
            c if c.is_ascii_alphanumeric() || c == b'-' => j += 1,
            _ => return false,
        }
    }
    false
}

// ---------------------------------------------------------------------------
// Validation.

fn slice<'a>(text: &'a str, r: &Range<usize>) -> &'a str {
    text.get(r.clone()).unwrap_or("")
}

fn any(_: &str, _: Range<usize>, s: Range<usize>) -> Option<Range<usize>> {
    Some(s)
}

/// A private key with key material: a header alone ("keys begin with
/// `-----BEGIN PRIVATE KEY-----`") names a format, it leaks nothing. A
/// header at the very end of the text is kept (the body may follow in the
/// next chunk of a stream).
fn pem_key(text: &str, _: Range<usize>, s: Range<usize>) -> Option<Range<usize>> {
    let t = slice(text, &s);
    let close = t.get(10..)?.find("-----")? + 15;
    let body = t.get(close..).unwrap_or("");
    let material = body.bytes().filter(u8::is_ascii_alphanumeric).count();
    let at_end = text.get(s.end..).is_some_and(|rest| rest.trim().is_empty());
    (material >= 32 || at_end).then_some(s)
}

/// Shannon entropy in bits per byte.
fn entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        if let Some(c) = counts.get_mut(usize::from(b)) {
            *c += 1;
        }
    }
    let n = s.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

fn distinct(s: &str) -> usize {
    let mut seen = [false; 256];
    let mut n = 0;
    for b in s.bytes() {
        if let Some(x) = seen.get_mut(usize::from(b)) {
            if !*x {
                *x = true;
                n += 1;
            }
        }
    }
    n
}

/// A provider token: not a placeholder such as `ghp_XXXX…`.
fn token(text: &str, _: Range<usize>, s: Range<usize>) -> Option<Range<usize>> {
    (distinct(slice(text, &s)) >= 8).then_some(s)
}

fn aws_key_id(text: &str, _: Range<usize>, s: Range<usize>) -> Option<Range<usize>> {
    let t = slice(text, &s);
    let body = t.get(4..)?;
    // `ASIA` plus sixteen capitals can be a shouted word; real ids of that
    // kind almost always carry a digit.
    let plausible = !t.starts_with("ASIA") || body.bytes().any(|b| b.is_ascii_digit());
    (distinct(body) >= 5 && plausible).then_some(s)
}

fn aws_secret_value(t: &str) -> bool {
    t.len() == 40
        && t.bytes().any(|b| b.is_ascii_uppercase())
        && t.bytes().any(|b| b.is_ascii_lowercase())
        && t.bytes()
            .any(|b| b.is_ascii_digit() || b == b'/' || b == b'+')
        && entropy(t) >= 3.5
}

fn aws_secret(text: &str, _: Range<usize>, s: Range<usize>) -> Option<Range<usize>> {
    aws_secret_value(slice(text, &s)).then_some(s)
}

const B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

fn azure_key(text: &str, _: Range<usize>, s: Range<usize>) -> Option<Range<usize>> {
    let key = B64.decode(slice(text, &s)).ok()?;
    (key.len() >= 32).then_some(s)
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        let hex = |j: usize| b.get(j).and_then(|&x| char::from(x).to_digit(16));
        match (c, hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push(u8::try_from(h * 16 + l).unwrap_or(0));
                i += 3;
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    out
}

/// An Azure SAS `sig` is a base64 HMAC-SHA256: 32 bytes once decoded.
fn sas_signature(text: &str, _: Range<usize>, s: Range<usize>) -> Option<Range<usize>> {
    let raw = percent_decode(slice(text, &s));
    let sig = B64.decode(raw).ok()?;
    (sig.len() == 32).then_some(s)
}

/// Three segments (or five, a JWE) whose header is a JSON object with an
/// `alg`; an empty signature only with `"alg": "none"`.
fn jwt(text: &str, _: Range<usize>, s: Range<usize>) -> Option<Range<usize>> {
    let mut parts: Vec<&str> = slice(text, &s).split('.').collect();
    // A dot after the token ends the sentence, not a segment.
    while parts.len() > 3 && parts.len() != 5 && parts.last().is_some_and(|p| p.is_empty()) {
        parts.pop();
    }
    if parts.len() != 3 && parts.len() != 5 {
        return None;
    }
    let header: Value = serde_json::from_slice(&B64URL.decode(parts.first()?).ok()?).ok()?;
    let alg = header.get("alg")?.as_str()?;
    if parts.len() == 3 {
        B64URL.decode(parts.get(1)?).ok()?;
        if parts.get(2)?.is_empty() && !alg.eq_ignore_ascii_case("none") {
            return None;
        }
    }
    let len = parts.iter().map(|p| p.len() + 1).sum::<usize>() - 1;
    Some(s.start..s.start + len)
}

fn url_password(text: &str, _: Range<usize>, s: Range<usize>) -> Option<Range<usize>> {
    let t = slice(text, &s);
    let template = t.starts_with('$') || t.starts_with('{') || t.bytes().all(|b| b == b'*');
    (!template).then_some(s)
}

/// Words of key names that say the value is not a secret (a page token, a
/// token's type or lifetime, a file holding the secret, a password's
/// rules …); matched against the key's words (`snake_case`, `camelCase`,
/// dotted and dashed names are split).
const BENIGN_KEY_WORDS: &[&str] = &[
    "page",
    "cursor",
    "next",
    "csrf",
    "xsrf",
    "count",
    "limit",
    "max",
    "min",
    "type",
    "length",
    "len",
    "size",
    "usage",
    "public",
    "pub",
    "hash",
    "hashed",
    "sha",
    "digest",
    "checksum",
    "fingerprint",
    "ttl",
    "name",
    "path",
    "file",
    "dir",
    "url",
    "uri",
    "endpoint",
    "header",
    "format",
    "kind",
    "policy",
    "rotation",
    "timeout",
    "at",
    "in",
    "prompt",
    "label",
    "hint",
    "placeholder",
    "field",
    "id",
    "ids",
    "help",
    "stdin",
    "rules",
    "strength",
    "arn",
    "starting",
    "continuation",
    "change",
    "lock",
    "idempotency",
    "request",
    "regex",
    "pattern",
    "allow",
];

/// Endings of key names with the same meaning, for keys written as one
/// word (`secretName`, `passfile`, `tokenUrl`, `keyId`).
const BENIGN_KEY_ENDINGS: &[&str] = &[
    "name",
    "file",
    "path",
    "url",
    "uri",
    "type",
    "hash",
    "policy",
    "format",
    "header",
    "prompt",
    "label",
    "hint",
    "field",
    "timeout",
    "ttl",
    "count",
    "length",
    "size",
    "digest",
    "checksum",
    "fingerprint",
    "endpoint",
    "cursor",
    "id",
    "ids",
];

/// The lower-case words of a key name: split at `_`, `-`, `.`, `:` and
/// at case changes (`apiKey`, `APIKey`).
fn key_words(key: &str) -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    let mut cur = String::new();
    let chars: Vec<char> = key.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        if !c.is_ascii_alphanumeric() {
            if !cur.is_empty() {
                words.push(std::mem::take(&mut cur));
            }
            continue;
        }
        let prev = i.checked_sub(1).and_then(|k| chars.get(k)).copied();
        let next = chars.get(i + 1).copied();
        let boundary = c.is_ascii_uppercase()
            && prev.is_some_and(|p| {
                p.is_ascii_lowercase()
                    || p.is_ascii_digit()
                    || (p.is_ascii_uppercase() && next.is_some_and(|n| n.is_ascii_lowercase()))
            });
        if boundary && !cur.is_empty() {
            words.push(std::mem::take(&mut cur));
        }
        cur.push(c.to_ascii_lowercase());
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

fn benign_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    key_words(key)
        .iter()
        .any(|w| BENIGN_KEY_WORDS.contains(&w.as_str()) || w.starts_with("expir"))
        || BENIGN_KEY_ENDINGS.iter().any(|e| k.ends_with(e))
}

/// What a key says its value is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyKind {
    /// A password or passphrase: chosen by a person, judged as such.
    Password,
    /// A secret, token or key: judged by randomness (or, quoted, as a
    /// strong short secret).
    Other,
}

/// The kind of secret a key names; `None` for keys that name no secret
/// (`bypass`, `pass_rate`) or say the value is not one (`token_type`).
fn key_kind(key: &str) -> Option<KeyKind> {
    // Most keys (`type`, `id`, `text` …) hold none of the words: answer
    // without splitting them.
    let b = key.as_bytes();
    let holds = |w: &[u8]| b.windows(w.len()).any(|x| x.eq_ignore_ascii_case(w));
    if ![
        &b"pass"[..],
        b"pwd",
        b"secret",
        b"token",
        b"key",
        b"credential",
    ]
    .iter()
    .any(|w| holds(w))
    {
        return None;
    }
    if benign_key(key) {
        return None;
    }
    let words = key_words(key);
    let compact: String = words.concat();
    if compact.contains("passw") || compact.contains("pwd") || compact.contains("passphrase") {
        return Some(KeyKind::Password);
    }
    // `WIFI_PASS`, `db_pass`, `--pass`: `pass` as the key's last word.
    if words.last().is_some_and(|w| w == "pass") {
        return Some(KeyKind::Password);
    }
    [
        "secret",
        "token",
        "apikey",
        "accesskey",
        "authkey",
        "appkey",
        "applicationkey",
        "privatekey",
        "credential",
    ]
    .iter()
    .any(|w| compact.contains(w))
    .then_some(KeyKind::Other)
}

/// Whether a key's last word names a secret (`DB_PASSWORD`, `ApiSecret`,
/// `api_key`, `dbpassword`).
fn names_secret(key: &str) -> bool {
    let words = key_words(key);
    let Some(last) = words.last() else {
        return false;
    };
    let before = words.len().checked_sub(2).and_then(|i| words.get(i));
    [
        "password",
        "passwd",
        "pwd",
        "pass",
        "passphrase",
        "secret",
        "token",
        "credential",
        "credentials",
    ]
    .iter()
    .any(|w| last.ends_with(w))
        || (last == "key"
            && before.is_some_and(|b| {
                ["api", "access", "auth", "app", "application", "private"].contains(&b.as_str())
            }))
        || last.ends_with("apikey")
}

/// Random-looking: long enough, high entropy, letters and digits, and not
/// an identifier (`snake_case`, `CONSTANT_NAME`, dotted or slashed words).
fn looks_random(v: &str) -> bool {
    // Hex has at most 4 bits per character: a random 32-digit key often
    // measures below 3.5, so hex is held to a lower bar.
    let floor = if v.bytes().all(|b| b.is_ascii_hexdigit()) {
        3.0
    } else {
        3.5
    };
    if v.len() < 16 || entropy(v) < floor {
        return false;
    }
    if !v.bytes().any(|b| b.is_ascii_alphabetic()) {
        return false;
    }
    if !v.bytes().any(|b| b.is_ascii_digit()) && !random_case(v) {
        return false;
    }
    // A CamelCase name (`HTTPPasswordMgrWithDefaultRealm`): words, not noise.
    if v.bytes().all(|b| b.is_ascii_alphabetic()) {
        let words = key_words(v);
        let letters: usize = words.iter().map(String::len).sum();
        if words.iter().all(|w| w.len() >= 2) && letters >= 3 * words.len() {
            return false;
        }
    }
    let lower = v.to_ascii_lowercase();
    if ["xxxx", "****", "....", "${", "{{", "%("]
        .iter()
        .any(|p| lower.contains(p))
    {
        return false;
    }
    let segments: Vec<&str> = v
        .split(['_', '-', '.', '/', ':'])
        .filter(|s| !s.is_empty())
        .collect();
    let wordy = |s: &&str| {
        let b = s.as_bytes();
        s.bytes().all(|c| c.is_ascii_lowercase())
            || s.bytes().all(|c| c.is_ascii_uppercase())
            || s.len() <= 3
            || (s.len() <= 4 && s.bytes().all(|c| c.is_ascii_digit()))
            || (b.first().is_some_and(u8::is_ascii_uppercase)
                && b.get(1..)
                    .is_some_and(|r| r.iter().all(u8::is_ascii_lowercase)))
    };
    !(segments.len() >= 2 && segments.iter().all(wordy))
}

/// Letter case that words do not have: capitals side by side and case
/// flips inside words, several times (`NMzNZcVVEGdU`, not `getSecretFromVault`).
fn random_case(v: &str) -> bool {
    let b = v.as_bytes();
    let (mut caps, mut flips) = (0, 0);
    for w in b.windows(2) {
        if let [x, y] = w {
            caps += usize::from(x.is_ascii_uppercase() && y.is_ascii_uppercase());
            flips += usize::from(x.is_ascii_lowercase() && y.is_ascii_uppercase());
        }
    }
    caps >= 2 && flips >= 2
}

/// Most blanks read around a generic secret's separator.
const MAX_BLANKS: usize = 16;
/// Longest value the generic detector reads after a key.
const MAX_VALUE: usize = 512;
/// Longest quoted value with blanks in it (well inside the context a
/// stream holds back, `StreamScanner::CONTEXT`).
const MAX_SPACED: usize = 128;

/// How a value follows its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    /// `key = value`, `key: value`, `"key": "value"`, `key => value`.
    Assign,
    /// `?key=value&…`: the value ends at `&`.
    Query,
    /// `"key", "value"` (`define('DB_PASSWORD', '…')`) or
    /// `key="…" value="…"`: the value must be quoted.
    Pair,
    /// `<password>value</password>`.
    Element,
    /// `--password value`.
    Flag,
}

/// Where the value after the key `text[kstart..kend]` starts, and how it
/// is written; `None` when no value follows.
fn separator(text: &str, kstart: usize, kend: usize) -> Option<(usize, Form)> {
    let b = text.as_bytes();
    let before = kstart.checked_sub(1).map_or(0, |i| byte(b, i));
    let mut j = kend;
    if before == b'<' && byte(b, j) == b'>' {
        return Some((j + 1, Form::Element));
    }
    let mut quoted_key = false;
    while j < kend + 4 && matches!(byte(b, j), b'\\' | b'"' | b'\'') {
        quoted_key |= byte(b, j) != b'\\';
        j += 1;
    }
    let skip = |mut j: usize| {
        let from = j;
        while matches!(byte(b, j), b' ' | b'\t') && j < from + MAX_BLANKS {
            j += 1;
        }
        j
    };
    let gap = j;
    j = skip(j);
    let spaced = j > gap;
    match byte(b, j) {
        b':' | b'=' => {
            if byte(b, j + 1) == byte(b, j) {
                return None;
            }
            j += 1;
            if matches!(byte(b, j), b'=' | b'>') {
                j += 1;
            }
            let form = if matches!(before, b'?' | b'&') {
                Form::Query
            } else {
                Form::Assign
            };
            Some((skip(j), form))
        }
        b',' if quoted_key => Some((skip(j + 1), Form::Pair)),
        b'v' | b'V' if quoted_key && spaced => {
            let w = b.get(j..j + 5)?;
            if !w.eq_ignore_ascii_case(b"value") {
                return None;
            }
            let k = skip(j + 5);
            (byte(b, k) == b'=').then(|| (skip(k + 1), Form::Pair))
        }
        c if spaced && !quoted_key && c != 0 && !c.is_ascii_whitespace() => {
            (b.get(kstart) == Some(&b'-')).then_some((j, Form::Flag))
        }
        _ => None,
    }
}

/// A value found after a key: its span, whether quotes delimit it, and
/// whether it is the whole rest of its line (`KEY=value` in a `.env` or
/// `.properties` file).
struct Found {
    span: Range<usize>,
    quoted: bool,
    line: bool,
}

/// The value at `at`: the whole quoted string (on one line; a JSON string
/// inside a string closes with the same escapes it opened with), or an
/// unquoted run up to a blank — cut before a following `&key=`, `;key=`
/// or `,key=` pair, at `&` in a query string, and without the punctuation
/// that ends a sentence.
fn value_at(text: &str, at: usize, form: Form) -> Option<Found> {
    let b = text.as_bytes();
    let mut i = at;
    let mut esc = 0;
    while byte(b, i) == b'\\' && esc < 2 {
        i += 1;
        esc += 1;
    }
    let q = byte(b, i);
    if matches!(q, b'"' | b'\'' | b'`') {
        let start = i + 1;
        let mut k = start;
        // A quoted value with blanks in it (a passphrase) closes within
        // `MAX_SPACED` bytes, so a stream, which holds back that much
        // context, judges it as the whole text would.
        let mut limit = start + MAX_VALUE;
        while k < limit {
            let c = byte(b, k);
            if matches!(c, 0 | b'\n' | b'\r') {
                break;
            }
            if c == b' ' || c == b'\t' {
                limit = limit.min(start + MAX_SPACED);
            }
            if c == q {
                let mut n = 0;
                while k - n > start && byte(b, k - n - 1) == b'\\' {
                    n += 1;
                }
                if n <= esc {
                    return Some(Found {
                        span: start..k - n,
                        quoted: true,
                        line: false,
                    });
                }
            }
            k += 1;
        }
        // No closing quote on the line: read it as unquoted.
        return unquoted(text, start, form);
    }
    if form == Form::Pair {
        return None;
    }
    unquoted(text, i, form)
}

fn unquoted(text: &str, start: usize, form: Form) -> Option<Found> {
    let b = text.as_bytes();
    let mut k = start;
    // A backslash ends an unquoted value (`\n` inside a string literal); in
    // a query string so do the characters a URL does not hold unencoded
    // (and `)`, the end of a Markdown link).
    let query = form == Form::Query;
    while k < start + MAX_VALUE {
        let c = byte(b, k);
        if c == 0
            || c.is_ascii_whitespace()
            || matches!(c, b'"' | b'\'' | b'`' | b'<' | b'\\')
            || (query && matches!(c, b'&' | b'#' | b')' | b']' | b'['))
        {
            break;
        }
        k += 1;
    }
    if k >= start + MAX_VALUE {
        return None;
    }
    // `NAME: Type = value` declares a type: the "value" is its name.
    let mut after = k;
    while matches!(byte(b, after), b' ' | b'\t') && after < k + MAX_BLANKS {
        after += 1;
    }
    if byte(b, after) == b'=' && byte(b, after + 1) != b'=' {
        return None;
    }
    // A following `key=` pair (`&remember=1`, `;Encrypt=true`) is not part
    // of the value; in a query string `&` always ends it.
    let pair_at = |p: usize| {
        let mut q = p;
        while q < k
            && (byte(b, q).is_ascii_alphanumeric() || matches!(byte(b, q), b'_' | b'.' | b'-'))
        {
            q += 1;
        }
        q > p && byte(b, q) == b'='
    };
    // (An element's text runs to its closing tag: no pairs in it.)
    for p in start..k {
        let c = byte(b, p);
        if form != Form::Element && matches!(c, b'&' | b';' | b',') && pair_at(p + 1) {
            k = p;
            break;
        }
    }
    // Punctuation that ends a sentence or a list, and closing brackets
    // the value did not open.
    loop {
        let v = text.get(start..k)?;
        let Some(last) = v.bytes().last() else { break };
        let open = |o: u8| v.bytes().filter(|&c| c == o).count();
        let unbalanced = match last {
            b')' => open(b'(') < open(b')'),
            b']' => open(b'[') < open(b']'),
            b'}' => open(b'{') < open(b'}'),
            b',' | b';' | b'.' | b':' => true,
            _ => false,
        };
        if !unbalanced {
            break;
        }
        k -= 1;
    }
    let rest = text.get(k..).unwrap_or_default();
    let line = rest.trim_start_matches([' ', '\t']).is_empty()
        || rest
            .trim_start_matches([' ', '\t'])
            .starts_with(['\n', '\r']);
    Some(Found {
        span: start..k,
        quoted: false,
        line,
    })
}

/// Words that a passphrase does not hold but descriptions, placeholders
/// and prose do.
const NOT_PASSPHRASE_WORDS: &[&str] = &[
    "the",
    "a",
    "an",
    "of",
    "for",
    "to",
    "and",
    "or",
    "is",
    "are",
    "be",
    "with",
    "in",
    "on",
    "at",
    "by",
    "from",
    "as",
    "if",
    "it",
    "this",
    "that",
    "your",
    "my",
    "our",
    "use",
    "used",
    "enter",
    "here",
    "see",
    "set",
    "not",
    "no",
    "none",
    "change",
    "replace",
    "insert",
    "todo",
    "fixme",
    "default",
    "example",
    "sample",
    "placeholder",
    "dummy",
    "password",
    "passphrase",
    "pass",
    "secret",
    "token",
    "key",
    "value",
    "user",
    "username",
    "required",
    "optional",
    "empty",
    "hidden",
    "masked",
    "redacted",
    "string",
];

/// A reference, template or mask rather than a value (`${DB_PASSWORD}`,
/// `{{ .Values.pw }}`, `%(pw)s`, `$(cat …)`, `<password>`, `********`,
/// `sk-...a1b2`), a UUID (request and idempotency tokens), an ARN or a
/// URL (names of secrets, not secrets), or a regular expression.
fn not_a_value(v: &str) -> bool {
    let lower = v.to_ascii_lowercase();
    let b = v.as_bytes();
    let uuid = v.len() == 36
        && v.bytes().enumerate().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == b'-'
            } else {
                c.is_ascii_alphanumeric()
            }
        });
    [
        "xxxx", "****", "...", "…", "${", "{{", "%(", "$(", "<", ">", "\\d", "\\w", "\\s", "[a-z",
        "[a-za-z", "[0-9", ".*", ".+", "{1,",
    ]
    .iter()
    .any(|p| lower.contains(p))
        || matches!(b.first(), Some(b'$' | b'%' | b'{' | b'*' | b'@' | b'<'))
        || ["arn:", "urn:", "http://", "https://"]
            .iter()
            .any(|p| lower.starts_with(p))
        || distinct(v) < 4
        || uuid
}

/// A placeholder a person wrote in place of a value (`your-password-here`,
/// `changeme`, `[REDACTED]`, `example-secret`).
fn placeholder(v: &str) -> bool {
    let lower = v.to_ascii_lowercase();
    [
        "changeme",
        "change_me",
        "change-me",
        "example",
        "placeholder",
        "redacted",
        "your_",
        "your-",
        "yourpass",
        "dummy",
        "replace_with",
        "replace-with",
        "todo",
        "fixme",
    ]
    .iter()
    .any(|p| lower.contains(p))
        || lower.split(|c: char| !c.is_ascii_alphanumeric()).any(|w| {
            matches!(
                w,
                "your" | "here" | "redacted" | "hidden" | "masked" | "none" | "null"
            )
        })
}

/// Code rather than a literal: a path (`rsa::RsaPrivateKey::…`), a call or
/// an index (`get_token(user)`, `os.environ[…]`, `Jobs[-1].JobId`), a
/// dotted name (`settings.SECRET_KEY`, `process.env.DB_PASSWORD`), a tuple
/// or list. A quoted value is code only when all of it is a call or an
/// index (`"Rainy(Day)42"` is a password).
fn code_like(v: &str, quoted: bool) -> bool {
    if v.contains("::") {
        return true;
    }
    let ident = |s: &str| {
        s.chars()
            .next()
            .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == '$')
            && s.chars()
                .all(|x| x.is_ascii_alphanumeric() || matches!(x, '_' | '$' | '.' | '!'))
            && !s.contains("..")
    };
    if quoted {
        // `name(…)` or `name[…]`, then only more of a path.
        let Some(i) = v.find(['(', '[']) else {
            return false;
        };
        let close = if v.get(i..i + 1) == Some("(") {
            ')'
        } else {
            ']'
        };
        let Some(j) = v.get(i..).and_then(|r| r.find(close)).map(|j| i + j) else {
            return false;
        };
        let tail = v.get(j + 1..).unwrap_or_default();
        return ident(v.get(..i).unwrap_or_default())
            && (tail.is_empty()
                || (tail.starts_with('.') && ident(tail.get(1..).unwrap_or_default())));
    }
    if v.starts_with(['(', '[', '{']) {
        return true;
    }
    // A constant or type name (`WIN32_ERROR`, `DOT11_ADHOC_CONNECT_FAIL_REASON`).
    if v.contains('_')
        && v.bytes()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_')
        && v.starts_with(|c: char| c.is_ascii_uppercase())
    {
        return true;
    }
    if let Some(i) = v.find(['(', '[']) {
        if ident(v.get(..i).unwrap_or_default()) {
            return true;
        }
    }
    // A dotted name: every part an identifier (`Summer.2024` is not one).
    v.contains('.')
        && v.split('.').all(|p| {
            p.chars()
                .next()
                .is_some_and(|f| f.is_ascii_alphabetic() || f == '_' || f == '$')
                && p.chars()
                    .all(|x| x.is_ascii_alphanumeric() || x == '_' || x == '$')
        })
}

/// A value a person would choose as a password (`Summer2024!`,
/// `Tr0ub4dor&3`): 8 to 64 characters with letters, digits and a capital or
/// symbol.
fn password_like(v: &str) -> bool {
    if !(8..=64).contains(&v.len()) || v.contains(char::is_whitespace) {
        return false;
    }
    let b = v.as_bytes();
    let lower = b.iter().any(u8::is_ascii_lowercase);
    let upper = b.iter().any(u8::is_ascii_uppercase);
    let digit = b.iter().any(u8::is_ascii_digit);
    let symbol = b.iter().any(|c| c.is_ascii_punctuation());
    (lower || upper) && digit && (upper || symbol)
}

/// Letters and digits only (`letmein2023`): a weak password, still one.
fn letters_and_digits(v: &str) -> bool {
    (8..=64).contains(&v.len())
        && v.bytes().all(|c| c.is_ascii_alphanumeric())
        && v.bytes().any(|c| c.is_ascii_alphabetic())
        && v.bytes().any(|c| c.is_ascii_digit())
}

/// A passphrase: three to eight words of letters (and digits) joined by
/// spaces, dashes, dots or underscores (`correct horse battery staple`,
/// `Blue-Ocean-Sunrise`), twelve characters or more, none of them a word
/// of prose or of a placeholder.
fn passphrase(v: &str) -> bool {
    if !(12..=128).contains(&v.len()) {
        return false;
    }
    let words: Vec<&str> = v.split([' ', '-', '_', '.']).collect();
    (3..=8).contains(&words.len())
        && words.iter().all(|w| {
            (2..=24).contains(&w.len())
                && w.bytes().all(|c| c.is_ascii_alphanumeric())
                && w.bytes().any(|c| c.is_ascii_alphabetic())
                && !NOT_PASSPHRASE_WORDS.contains(&w.to_ascii_lowercase().as_str())
        })
}

/// A short secret someone typed under a secret's key (`'P@ssw0rd123'`,
/// `"s3cr3t-Sauce!"`): 8 to 64 characters, no blanks, lower case, upper
/// case and digits (or two of them and a symbol), and not a version.
fn strong_short(v: &str) -> bool {
    if !(8..=64).contains(&v.len()) || v.contains(char::is_whitespace) {
        return false;
    }
    let b = v.as_bytes();
    let lower = b.iter().any(u8::is_ascii_lowercase);
    let upper = b.iter().any(u8::is_ascii_uppercase);
    let digit = b.iter().any(u8::is_ascii_digit);
    let symbol = b
        .iter()
        .any(|c| c.is_ascii_punctuation() && !matches!(c, b'.' | b'_' | b'-' | b'/'));
    let classes = [lower, upper, digit, symbol].iter().filter(|&&x| x).count();
    let version = b
        .windows(3)
        .any(|w| matches!(w, [x, b'.', y] if x.is_ascii_digit() && y.is_ascii_digit()));
    digit && classes >= 3 && !version
}

/// Whether `v` is a secret under a key of this kind — `quoted` when quotes
/// delimit it, `line` when it is the whole rest of its line; the length of
/// the secret part when it is (sentence punctuation left out).
fn secret_value(v: &str, kind: KeyKind, quoted: bool, line: bool) -> Option<usize> {
    // A quoted value is code only under a token's key (a paginator's
    // `"output_token": "Jobs[-1].JobId"`); after a password key a quoted
    // `"Adm1n(2024)"` is what someone typed.
    let code = if quoted {
        kind == KeyKind::Other && code_like(v, true)
    } else {
        code_like(v, false)
    };
    if v.len() < 8 || not_a_value(v) || code {
        return None;
    }
    match kind {
        KeyKind::Password => {
            if placeholder(v) {
                return None;
            }
            let ok = if v.contains(char::is_whitespace) {
                // Quoted, a password may hold blanks: a passphrase, or a
                // short mix of classes that is not a sentence
                // (`"Iv0ry Tower; 88"`, not `"Min 8 chars, 1 digit"`).
                quoted
                    && (passphrase(v)
                        || (v.len() <= 64
                            && v.split_whitespace().count() <= 3
                            && password_like(&v.replace(char::is_whitespace, ""))
                            && !v.split_whitespace().any(|w| {
                                NOT_PASSPHRASE_WORDS.contains(
                                    &w.trim_matches(|c: char| !c.is_ascii_alphanumeric())
                                        .to_ascii_lowercase()
                                        .as_str(),
                                )
                            })))
            } else {
                password_like(v)
                    || letters_and_digits(v)
                    || ((quoted || line) && passphrase(v))
                    || looks_random(v)
            };
            ok.then_some(v.len())
        }
        KeyKind::Other => {
            if v.contains(char::is_whitespace) {
                return None;
            }
            if quoted && strong_short(v) && !placeholder(v) {
                return Some(v.len());
            }
            let t = if quoted {
                v
            } else {
                v.trim_end_matches(['!', '?'])
            };
            looks_random(t).then_some(t.len())
        }
    }
}

/// The generic detector: the regex finds a key word (or `Bearer`, or
/// `-p'`); the key, its separator and its value are read here.
fn generic(text: &str, whole: Range<usize>, _: Range<usize>) -> Option<Range<usize>> {
    let b = text.as_bytes();
    let word = slice(text, &whole);
    if word.eq_ignore_ascii_case("bearer") {
        let mut i = whole.end;
        while byte(b, i).is_ascii_whitespace() && i < whole.end + 8 {
            i += 1;
        }
        let mut k = i;
        while k < i + MAX_VALUE
            && (byte(b, k).is_ascii_alphanumeric() || b"-._~+/".contains(&byte(b, k)))
        {
            k += 1;
        }
        while byte(b, k) == b'=' {
            k += 1;
        }
        let t = text.get(i..k)?.trim_end_matches(['.', ':', '!', '?']);
        return (t.len() >= 16 && looks_random(t)).then(|| i..i + t.len());
    }
    if word.ends_with("-p'") || word.ends_with("-p\"") {
        let f = value_at(text, whole.end - 1, Form::Pair)?;
        let n = secret_value(slice(text, &f.span), KeyKind::Password, f.quoted, f.line)?;
        return Some(f.span.start..f.span.start + n);
    }
    // The whole key around the word (`DB_PASSWORD`, `spring.datasource.password`);
    // at most 32 bytes before it, well inside the left context a stream
    // keeps (`StreamScanner::LEFT`).
    let mut kstart = whole.start;
    while kstart > 0 && whole.start - kstart < 32 && is_key_byte(byte(b, kstart - 1)) {
        kstart -= 1;
    }
    let mut kend = whole.end;
    while kend < whole.end + 32 && is_key_byte(byte(b, kend)) {
        kend += 1;
    }
    let key = text.get(kstart..kend)?;
    let kind = key_kind(key)?;
    let (at, form) = separator(text, kstart, kend)?;
    // Two quoted strings side by side are a setting only when the first
    // names a secret (`'DB_PASSWORD', '…'`), not in any list of names
    // (`'HTTPPasswordMgr', 'HTTPPasswordMgrWithDefaultRealm'`).
    if form == Form::Pair && !names_secret(key) {
        return None;
    }
    // `'password', 'localhost:22'` in a tuple of fields is not a setting:
    // a bare `password` before a comma names a field, `DB_PASSWORD` one.
    let comma = text
        .get(kend..at)
        .is_some_and(|sep| sep.contains(',') && !sep.to_ascii_lowercase().contains("value"));
    if comma && key_words(key).len() < 2 && key.bytes().any(|c| c.is_ascii_lowercase()) {
        return None;
    }
    // `:secret:` inside an ARN (`arn:aws:secretsmanager:…:secret:name`).
    if kstart.checked_sub(1).is_some_and(|i| byte(b, i) == b':') {
        return None;
    }
    let f = value_at(text, at, form)?;
    if let Some(n) = secret_value(slice(text, &f.span), kind, f.quoted, f.line) {
        return Some(f.span.start..f.span.start + n);
    }
    // A line of a `.properties`, `.ini` or `.env` file (`key = value` at
    // the start of a line): the value is the rest of the line, blanks
    // included (`keystore.password=Seven Silver Swans Swim`).
    if kind == KeyKind::Password && form == Form::Assign && !f.quoted && starts_line(text, kstart) {
        let rest = text.get(f.span.start..)?;
        let end = rest.find(['\n', '\r']).unwrap_or(rest.len());
        let v = rest.get(..end)?.trim_end();
        if v.len() <= MAX_SPACED && v.contains(' ') && passphrase(v) && !placeholder(v) {
            return Some(f.span.start..f.span.start + v.len());
        }
    }
    None
}

/// Whether only blanks precede `at` on its line.
fn starts_line(text: &str, at: usize) -> bool {
    let head = text.get(..at).unwrap_or_default();
    let line = head.rsplit('\n').next().unwrap_or_default();
    line.bytes().all(|c| c == b' ' || c == b'\t')
}

/// Structured content: a string under a key such as `password` or
/// `SecretAccessKey` is judged as that key's value (a quoted one: the
/// string is the whole value).
fn key_context(key: &str, value: &str) -> Option<Hit> {
    let k = key.to_ascii_lowercase().replace(['_', '-'], "");
    let start = value.len() - value.trim_start().len();
    let v = value.trim();
    if k.contains("secretaccesskey") {
        let det = DETECTORS
            .iter()
            .position(|d| d.id == "aws-secret-access-key")?;
        return aws_secret_value(v).then_some(Hit {
            det,
            span: start..start + v.len(),
        });
    }
    let kind = key_kind(key)?;
    let n = secret_value(v, kind, true, true)?;
    let det = DETECTORS.iter().position(|d| d.id == "generic-secret")?;
    Some(Hit {
        det,
        span: start..start + n,
    })
}

const FILE_EXTENSIONS: &[&str] = &[
    "png", "jpg", "jpeg", "gif", "svg", "webp", "ico", "bmp", "css", "js", "ts", "json", "html",
];

fn email(text: &str, _: Range<usize>, s: Range<usize>) -> Option<Range<usize>> {
    let t = slice(text, &s);
    let before = text.get(..s.start).unwrap_or("");
    if before.ends_with("://") {
        return None; // the user of a URL (`ssh://git@host`), not an address
    }
    if before
        .bytes()
        .next_back()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b"._%+-".contains(&b))
    {
        return None; // the tail of a longer local part
    }
    let (local, domain) = t.split_once('@')?;
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return None;
    }
    let tld = domain.rsplit('.').next()?.to_ascii_lowercase();
    (!FILE_EXTENSIONS.contains(&tld.as_str())).then_some(s)
}

/// Tries the whole span, then shorter ones ending before each separator
/// (longest first): a number is often followed by another on the same line.
fn shrink(
    text: &str,
    s: Range<usize>,
    is_sep: impl Fn(u8) -> bool,
    ok: impl Fn(&str) -> bool,
) -> Option<Range<usize>> {
    let t = slice(text, &s);
    if ok(t) {
        return Some(s);
    }
    let b = t.as_bytes();
    let mut i = b.len();
    while i > 0 {
        i -= 1;
        if b.get(i).copied().is_some_and(&is_sep) {
            let cand = t
                .get(..i)?
                .trim_end_matches(|c: char| c.is_ascii() && is_sep(c as u8));
            if !cand.is_empty() && ok(cand) {
                return Some(s.start..s.start + cand.len());
            }
        }
    }
    None
}

fn digits(t: &str) -> impl Iterator<Item = u32> + '_ {
    t.chars().filter_map(|c| c.to_digit(10))
}

fn luhn(t: &str) -> bool {
    let ds: Vec<u32> = digits(t).collect();
    let sum: u32 = ds
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                if d * 2 > 9 {
                    d * 2 - 9
                } else {
                    d * 2
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn card_number(t: &str) -> bool {
    let n = digits(t).count();
    if !(13..=19).contains(&n) || !matches!(t.as_bytes().first(), Some(b'2'..=b'6')) {
        return false;
    }
    let seps: Vec<u8> = t.bytes().filter(|b| !b.is_ascii_digit()).collect();
    if let Some(&sep) = seps.first() {
        if seps.iter().any(|&x| x != sep) {
            return false;
        }
        let groups: Vec<usize> = t.split(char::from(sep)).map(str::len).collect();
        if groups.first() != Some(&4) || groups.iter().any(|&g| g < 3) {
            return false;
        }
    }
    luhn(t)
}

/// 13–19 digits (one kind of separator, groups of at least three, first of
/// four), an issuer digit 2–6 and a valid Luhn check digit.
fn card(text: &str, _: Range<usize>, s: Range<usize>) -> Option<Range<usize>> {
    shrink(text, s, |b| b == b' ' || b == b'-', card_number)
}

fn prev_char(text: &str, at: usize) -> Option<char> {
    text.get(..at)?.chars().next_back()
}

fn next_chars(text: &str, at: usize) -> (Option<char>, Option<char>) {
    let mut it = text.get(at..).unwrap_or("").chars();
    (it.next(), it.next())
}

/// Whether the character before `at` continues a word or number.
fn glued_before(text: &str, at: usize) -> bool {
    prev_char(text, at)
        .is_some_and(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '/' | '+' | '_'))
}

/// Whether the text after `at` continues a word or a dashed, dotted or
/// slashed number (a date, an id, an address).
fn glued_after(text: &str, at: usize) -> bool {
    match next_chars(text, at) {
        (Some('-' | '.' | '/'), Some(c)) => c.is_ascii_digit(),
        (Some(c), _) => c.is_ascii_alphanumeric() || c == '_',
        _ => false,
    }
}

/// US SSN: area not 000, 666 or 9xx; group not 00; serial not 0000.
fn ssn(text: &str, _: Range<usize>, s: Range<usize>) -> Option<Range<usize>> {
    if glued_before(text, s.start) || glued_after(text, s.end) {
        return None;
    }
    let d: Vec<u32> = digits(slice(text, &s)).collect();
    let num = |r: Range<usize>| d.get(r).map(|x| x.iter().fold(0, |a, &v| a * 10 + v));
    let (area, group, serial) = (num(0..3)?, num(3..5)?, num(5..9)?);
    (area != 0 && area != 666 && area < 900 && group != 0 && serial != 0).then_some(s)
}

/// IBAN lengths by country (ISO 13616 registry).
const IBAN_LENGTHS: &[(&str, usize)] = &[
    ("AD", 24),
    ("AE", 23),
    ("AL", 28),
    ("AT", 20),
    ("AZ", 28),
    ("BA", 20),
    ("BE", 16),
    ("BG", 22),
    ("BH", 22),
    ("BR", 29),
    ("BY", 28),
    ("CH", 21),
    ("CR", 22),
    ("CY", 28),
    ("CZ", 24),
    ("DE", 22),
    ("DK", 18),
    ("DO", 28),
    ("EE", 20),
    ("EG", 29),
    ("ES", 24),
    ("FI", 18),
    ("FO", 18),
    ("FR", 27),
    ("GB", 22),
    ("GE", 22),
    ("GI", 23),
    ("GL", 18),
    ("GR", 27),
    ("GT", 28),
    ("HR", 21),
    ("HU", 28),
    ("IE", 22),
    ("IL", 23),
    ("IQ", 23),
    ("IS", 26),
    ("IT", 27),
    ("JO", 30),
    ("KW", 30),
    ("KZ", 20),
    ("LB", 28),
    ("LC", 32),
    ("LI", 21),
    ("LT", 20),
    ("LU", 20),
    ("LV", 21),
    ("MC", 27),
    ("MD", 24),
    ("ME", 22),
    ("MK", 19),
    ("MR", 27),
    ("MT", 31),
    ("MU", 30),
    ("NL", 18),
    ("NO", 15),
    ("PK", 24),
    ("PL", 28),
    ("PS", 29),
    ("PT", 25),
    ("QA", 29),
    ("RO", 24),
    ("RS", 22),
    ("SA", 24),
    ("SC", 31),
    ("SE", 24),
    ("SI", 19),
    ("SK", 24),
    ("SM", 27),
    ("ST", 25),
    ("SV", 28),
    ("TL", 23),
    ("TN", 24),
    ("TR", 26),
    ("UA", 29),
    ("VA", 22),
    ("VG", 24),
    ("XK", 20),
];

fn iban_number(t: &str) -> bool {
    let compact: String = t.chars().filter(|c| *c != ' ').collect();
    let (Some(country), Some(head), Some(tail)) =
        (compact.get(..2), compact.get(..4), compact.get(4..))
    else {
        return false;
    };
    if !IBAN_LENGTHS
        .iter()
        .any(|&(c, n)| c == country && n == compact.len())
    {
        return false;
    }
    let mut rem: u32 = 0;
    for c in tail.chars().chain(head.chars()) {
        let Some(v) = c.to_digit(36) else {
            return false;
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// IBAN: the country's length and the mod-97 check.
fn iban(text: &str, _: Range<usize>, s: Range<usize>) -> Option<Range<usize>> {
    shrink(text, s, |b| b == b' ', iban_number)
}

/// Spanish DNI (eight digits) or NIE (X/Y/Z and seven digits) with its
/// check letter.
fn dni(text: &str, _: Range<usize>, s: Range<usize>) -> Option<Range<usize>> {
    const LETTERS: &[u8] = b"TRWAGMYFPDXBNJZSQVHLCKE";
    let t: Vec<u8> = slice(text, &s).bytes().filter(|&b| b != b'-').collect();
    let (&letter, body) = t.split_last()?;
    let mut n: u32 = 0;
    for &b in body {
        let v = match b {
            b'X' => 0,
            b'Y' => 1,
            b'Z' => 2,
            b'0'..=b'9' => u32::from(b - b'0'),
            _ => return None,
        };
        n = n * 10 + v;
    }
    let expected = LETTERS.get(usize::try_from(n % 23).ok()?)?;
    (*expected == letter).then_some(s)
}

/// Brazilian CPF: its two mod-11 check digits (and not one digit eleven
/// times, which passes them).
fn cpf(text: &str, _: Range<usize>, s: Range<usize>) -> Option<Range<usize>> {
    let d: Vec<u32> = digits(slice(text, &s)).collect();
    if d.len() != 11 || d.iter().all(|&x| Some(&x) == d.first()) {
        return None;
    }
    for k in [9usize, 10] {
        let sum: u32 = d
            .iter()
            .take(k)
            .zip((2..=u32::try_from(k + 1).ok()?).rev())
            .map(|(&x, w)| x * w)
            .sum();
        let want = if sum % 11 < 2 { 0 } else { 11 - sum % 11 };
        if d.get(k) != Some(&want) {
            return None;
        }
    }
    Some(s)
}

/// Dutch BSN after its name: the eleven-test (weights 9 … 2, minus the
/// last digit, a multiple of 11).
fn bsn(text: &str, _: Range<usize>, s: Range<usize>) -> Option<Range<usize>> {
    let d: Vec<u32> = digits(slice(text, &s)).collect();
    let (&last, body) = d.split_last()?;
    if d.len() != 9 || body.first() == Some(&0) {
        return None;
    }
    let sum: u32 = body.iter().zip((2..=9u32).rev()).map(|(&x, w)| x * w).sum();
    (sum % 11 == last).then_some(s)
}

/// UK National Insurance number: the format rules (no checksum exists).
fn nino(text: &str, _: Range<usize>, s: Range<usize>) -> Option<Range<usize>> {
    let t = slice(text, &s);
    let spaces = t.bytes().filter(|&b| b == b' ').count();
    if spaces != 0 && spaces != 4 {
        return None;
    }
    let prefix = t.get(..2)?;
    let banned = ["BG", "GB", "KN", "NK", "NT", "TN", "ZZ"];
    (!banned.contains(&prefix)).then_some(s)
}

/// Phone numbers: `+` and 8–15 digits; North American 10 digits; a
/// national trunk `0` and 10–11 digits. Not part of a longer number, nor
/// next to another group of digits (tables of numbers, IBANs).
fn phone(text: &str, _: Range<usize>, s: Range<usize>) -> Option<Range<usize>> {
    let t = slice(text, &s);
    let before = prev_char(text, s.start);
    let before2 = text.get(..s.start).and_then(|p| p.chars().rev().nth(1));
    // Next to another group of digits (a table, an IBAN's tail) only a
    // number that opens with `(` or `+` is taken.
    let bare = t.as_bytes().first().is_some_and(u8::is_ascii_digit);
    let spaced_before = bare
        && matches!(before, Some(' ' | '.' | '-'))
        && before2.is_some_and(|c| c.is_ascii_digit());
    let spaced_after = match next_chars(text, s.end) {
        (Some(' ' | '.' | '-'), Some(c)) => c.is_ascii_digit(),
        _ => false,
    };
    if glued_before(text, s.start)
        || before == Some(')')
        || spaced_before
        || spaced_after
        || glued_after(text, s.end)
    {
        return None;
    }
    let n = digits(t).count();
    let ok = match t.as_bytes().first() {
        Some(b'+') => (8..=15).contains(&n),
        Some(b'0') => (10..=11).contains(&n),
        _ => n == 10 || (n == 11 && t.starts_with('1')),
    };
    ok.then_some(s)
}

// ---------------------------------------------------------------------------
// Streams.

/// What one step of a [`StreamScanner`] releases.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StreamChunk {
    /// Text safe to forward now (redacted per the policy). It may be shorter
    /// than what was pushed: the scanner holds back a tail that could still
    /// be the start of a match.
    pub text: String,
    /// Findings in the released text; spans are byte offsets in the whole
    /// original stream.
    pub findings: Vec<DlpFinding>,
    /// Whether a `Block` class has matched so far in this stream.
    pub blocked: bool,
}

/// Scans text that arrives in chunks (SSE events) and finds matches that
/// straddle chunk boundaries, with bounded memory.
///
/// Each push releases all text that can no longer be part of an unfinished
/// match and holds back the rest: the trailing run of non-space text (at
/// most [`StreamScanner::HOLD`] bytes) plus [`StreamScanner::CONTEXT`] bytes
/// before it, so a `password=` or an `aws` context word stays with a value
/// still arriving; a match that reaches into that tail is held whole. A
/// private key block without its END line yet is held up to
/// [`StreamScanner::KEY_HOLD`]; past that, what was seen is redacted and
/// released, and (when the `secrets` action redacts or blocks) every
/// following key-body line is swallowed up to and including the END line,
/// however long it is. Other matches longer than `HOLD` (no real token is)
/// are redacted only up to the cut.
pub struct StreamScanner {
    on: On,
    /// `keep` bytes already released (left context for word boundaries),
    /// then the bytes not released yet.
    pending: String,
    keep: usize,
    /// Stream offset of `pending[0]`.
    offset: usize,
    /// Stream offset where a cut private key's continuation began.
    in_key: Option<usize>,
    key_marker_sent: bool,
    blocked: bool,
}

impl StreamScanner {
    /// Most bytes held back for a token that may still be growing.
    pub const HOLD: usize = 8 * 1024;
    /// Context held back before that token.
    pub const CONTEXT: usize = 256;
    /// Most bytes held back for an open private key block.
    pub const KEY_HOLD: usize = 32 * 1024;
    /// Released bytes kept as left context, so a match right after a cut is
    /// judged as it would be in the whole text (a generic secret's key, its
    /// suffix and separator take at most about 100 bytes before the value).
    const LEFT: usize = 128;

    /// A scanner applying `policy` to one stream.
    pub fn new(policy: &DlpPolicy) -> StreamScanner {
        StreamScanner {
            on: policy.enabled(),
            pending: String::new(),
            keep: 0,
            offset: 0,
            in_key: None,
            key_marker_sent: false,
            blocked: false,
        }
    }

    /// Takes the next chunk; returns what can be released now.
    pub fn push(&mut self, chunk: &str) -> StreamChunk {
        self.pending.push_str(chunk);
        self.step(false)
    }

    /// Ends the stream: releases everything still held.
    pub fn finish(&mut self) -> StreamChunk {
        self.step(true)
    }

    /// Bytes held now, context included: at most `KEY_HOLD` plus 128 between
    /// pushes, and at most `HOLD + CONTEXT` plus 128 outside a private key.
    pub fn buffered(&self) -> usize {
        self.pending.len()
    }

    fn step(&mut self, last: bool) -> StreamChunk {
        let mut out = DlpOutcome::default();
        let mut text = String::new();
        let engine = if self.on.iter().all(Option::is_none) {
            None
        } else {
            match engine() {
                Some(e) => Some(e),
                None => {
                    // Fail closed: nothing leaves.
                    self.blocked = true;
                    self.release(self.pending.len(), false);
                    return self.chunk(text, out);
                }
            }
        };
        let Some(engine) = engine else {
            text.push_str(self.pending.get(self.keep..).unwrap_or(""));
            self.release(self.pending.len(), true);
            return self.chunk(text, out);
        };
        if self.in_key.is_some() {
            self.continue_key(engine, last, &mut text, &mut out);
            if self.in_key.is_some() {
                return self.chunk(text, out);
            }
        }
        let keep = self.keep;
        let mut hits = engine.find(&self.pending, &self.on, None);
        hits.retain(|h| h.span.start >= keep);
        let len = self.pending.len();
        let mut cut = if last {
            len
        } else {
            hold_point(&self.pending).max(keep)
        };
        let mut open_key = false;
        if let Some(h) = hits.iter().find(|h| h.span.start < cut && cut < h.span.end) {
            cut = h.span.start;
            let key = h.det == PRIVATE_KEY;
            let limit = if key {
                Self::KEY_HOLD
            } else {
                Self::HOLD + Self::CONTEXT
            };
            if len - h.span.start > limit {
                cut = h.span.end;
                let redacts = self
                    .on
                    .get(S)
                    .copied()
                    .flatten()
                    .is_some_and(|a| a != Action::Flag);
                let matched = self.pending.get(h.span.clone()).unwrap_or("");
                open_key = key && redacts && !matched.contains("-----END");
            }
        }
        hits.retain(|h| h.span.end <= cut);
        let head = self.pending.get(..cut).unwrap_or("");
        match apply(head, &hits, &self.on, "", keep, self.offset, &mut out) {
            Some(redacted) => text.push_str(&redacted),
            None => text.push_str(head.get(keep..).unwrap_or("")),
        }
        if open_key {
            self.release(cut, false);
            self.in_key = Some(self.offset);
            self.key_marker_sent = true;
        } else {
            self.release(cut, !last);
        }
        self.chunk(text, out)
    }

    /// Drops `pending[..upto]` (released), keeping up to `LEFT` bytes of
    /// it as context when `context` (a redacted key body is no context).
    fn release(&mut self, upto: usize, context: bool) {
        let upto = floor(&self.pending, upto);
        let from = if context {
            ceil(&self.pending, upto.saturating_sub(Self::LEFT))
        } else {
            upto
        };
        self.pending.drain(..from);
        self.offset += from;
        self.keep = upto - from;
    }

    /// Swallows the body of a private key cut at `KEY_HOLD`, up to and
    /// including its END line; a partial END line is held back.
    fn continue_key(
        &mut self,
        engine: &Engine,
        last: bool,
        text: &mut String,
        out: &mut DlpOutcome,
    ) {
        let Some(start) = self.in_key else { return };
        let keep = self.keep;
        let tail = self.pending.get(keep..).unwrap_or("");
        let body = tail
            .bytes()
            .take_while(|b| {
                b.is_ascii_alphanumeric()
                    || matches!(b, b'+' | b'/' | b'=' | b'\\')
                    || b.is_ascii_whitespace()
            })
            .count();
        let rest = tail.get(body..).unwrap_or("");
        let (consumed, done) = if let Some(m) = engine.key_end.find(rest) {
            (body + m.end(), true)
        } else if !last
            && rest.len() < 64
            && rest
                .bytes()
                .all(|b| b == b'-' || b == b' ' || b.is_ascii_uppercase() || b.is_ascii_digit())
        {
            (body, false)
        } else {
            (body, true)
        };
        if consumed > 0 && !self.key_marker_sent {
            text.push_str("[REDACTED:private-key]");
            self.key_marker_sent = true;
        }
        self.release(keep + consumed, false);
        if done {
            self.in_key = None;
            self.key_marker_sent = false;
            if self.offset > start {
                if let Some(d) = DETECTORS.get(PRIVATE_KEY) {
                    let action = self
                        .on
                        .get(d.cix)
                        .copied()
                        .flatten()
                        .unwrap_or(Action::Redact);
                    out.blocked |= action == Action::Block;
                    out.redactions += 1;
                    out.findings.push(DlpFinding {
                        detector: d.id,
                        class: d.class,
                        severity: d.severity,
                        action,
                        path: String::new(),
                        span: start..self.offset,
                        hint: "…".to_string(),
                    });
                }
            }
        }
    }

    fn chunk(&mut self, text: String, out: DlpOutcome) -> StreamChunk {
        self.blocked |= out.blocked;
        StreamChunk {
            text,
            findings: out.findings,
            blocked: self.blocked,
        }
    }
}

/// Where the held-back tail starts: `CONTEXT` bytes before the trailing run
/// of non-space text (itself at most `HOLD` bytes).
fn hold_point(s: &str) -> usize {
    let b = s.as_bytes();
    let len = b.len();
    let mut run = len;
    while run > 0 && len - run < StreamScanner::HOLD {
        match b.get(run - 1) {
            Some(c) if !c.is_ascii_whitespace() => run -= 1,
            _ => break,
        }
    }
    floor(s, run.saturating_sub(StreamScanner::CONTEXT))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_builds_and_ids_are_unique() {
        assert!(engine().is_some());
        let mut ids: Vec<&str> = DETECTORS.iter().map(|d| d.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), DETECTORS.len());
        assert_eq!(DETECTORS[PRIVATE_KEY].id, "private-key");
        for d in DETECTORS {
            assert_eq!(CLASS_NAMES[d.cix], d.class, "{}", d.id);
            // Short anchors would defeat the SIMD prefilter.
            assert!(
                d.anchors.iter().all(|a| a.len() >= 3 || *a == "@"),
                "{}",
                d.id
            );
            assert_eq!(d.anchors.is_empty(), d.digits != 0, "{}", d.id);
        }
    }
}

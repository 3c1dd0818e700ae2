//! `portcullis policy validate|test|explain`: policies checked, tested and
//! explained offline, with the same engine the gateway runs; `policy
//! reload` asks a running gateway to re-read its set (admin API).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use portcullis_policy::fixture::{check, Fixture};
use portcullis_policy::{Decision, Engine, LoadError, RequestSpec};

/// `portcullis policy …`
#[derive(Subcommand)]
pub enum PolicyCmd {
    /// Validate Cedar policy files against the schema (exit 0 when valid;
    /// else one `file:line:col: message` line per error on stderr).
    Validate {
        /// A Cedar schema file (default: the shipped schema).
        #[arg(long, value_name = "FILE")]
        schema: Option<PathBuf>,
        /// Policy files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// Run a fixture (TOML, or JSON when named *.json): policies plus
    /// request → expected decision cases. Non-zero on any failure.
    Test {
        /// The fixture file.
        file: PathBuf,
    },
    /// Decide one request and explain it: decision, determining policies,
    /// errors and the reason.
    Explain {
        /// A Cedar schema file (default: the shipped schema).
        #[arg(long, value_name = "FILE")]
        schema: Option<PathBuf>,
        /// Policy files.
        #[arg(long, required = true, num_args = 1.., value_name = "FILE")]
        policies: Vec<PathBuf>,
        /// The request as JSON, or `@FILE` to read it from a file.
        #[arg(long, value_name = "JSON")]
        request: String,
    },
    /// Make the running gateway re-read its policy files (admin API). Exit 1
    /// when the new set is rejected (the running set is kept; errors on
    /// stderr).
    Reload {
        #[command(flatten)]
        opts: crate::admin_cmd::Opts,
    },
}

/// Exit status for a usage or load problem (distinct from a failed test).
const EXIT_ERROR: u8 = 2;

fn print_load_error(e: &LoadError) {
    for line in e.lines() {
        eprintln!("{line}");
    }
}

/// Runs `portcullis policy …` and returns the process exit status.
pub fn run(cmd: PolicyCmd) -> ExitCode {
    match cmd {
        PolicyCmd::Validate { schema, files } => match Engine::load(schema.as_deref(), &files) {
            Ok(engine) => {
                println!(
                    "ok: {} polic{} in {} file{}, sha256 {}",
                    engine.policy_count(),
                    if engine.policy_count() == 1 {
                        "y"
                    } else {
                        "ies"
                    },
                    files.len(),
                    if files.len() == 1 { "" } else { "s" },
                    engine.hash()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                print_load_error(&e);
                ExitCode::FAILURE
            }
        },
        PolicyCmd::Test { file } => test(&file),
        PolicyCmd::Explain {
            schema,
            policies,
            request,
        } => explain(schema, &policies, &request),
        PolicyCmd::Reload { opts } => crate::admin_cmd::policy_reload(opts),
    }
}

fn test(file: &std::path::Path) -> ExitCode {
    let fixture = match Fixture::read(file) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("portcullis: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let engine = match Engine::load(fixture.schema.as_deref(), &fixture.policies) {
        Ok(e) => e,
        Err(e) => {
            print_load_error(&e);
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let (mut passed, mut failed) = (0usize, 0usize);
    for case in &fixture.cases {
        let outcome = check(&engine, case);
        match outcome.failure {
            None => {
                passed += 1;
                println!("pass: {}", case.name);
            }
            Some(why) => {
                failed += 1;
                println!("FAIL: {}: {why}", case.name);
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn explain(schema: Option<PathBuf>, policies: &[PathBuf], request: &str) -> ExitCode {
    let text = match request.strip_prefix('@') {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("portcullis: --request {path}: cannot read: {e}");
                return ExitCode::from(EXIT_ERROR);
            }
        },
        None => request.to_owned(),
    };
    let spec: RequestSpec = match serde_json::from_str(&text) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("portcullis: --request: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let engine = match Engine::load(schema.as_deref(), policies) {
        Ok(e) => e,
        Err(e) => {
            print_load_error(&e);
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let req = spec.request();
    let d = engine.decide(&req);
    print_decision(&d);
    println!(
        "policy set: {} ({} policies, {} evaluated for this request)",
        engine.hash(),
        engine.policy_count(),
        engine.candidate_count(&req)
    );
    ExitCode::SUCCESS
}

fn print_decision(d: &Decision) {
    println!("decision: {}", if d.allow { "allow" } else { "deny" });
    println!("reason: {}", d.reason);
    if d.determining.is_empty() {
        println!("determining: (none)");
    } else {
        println!("determining: {}", d.determining.join(", "));
    }
    if d.errors.is_empty() {
        println!("errors: (none)");
    } else {
        println!("errors:");
        for e in &d.errors {
            println!("  {e}");
        }
    }
    if d.allow {
        let o = &d.obligations;
        println!(
            "obligations: redact=[{}] rate_class={} require_approval={} dlp_block=[{}] injection={}",
            o.redact.join(","),
            o.rate_class.as_deref().unwrap_or("-"),
            o.require_approval
                .as_deref()
                .map_or_else(|| "-".to_owned(), |m| format!("{m:?}")),
            o.dlp_block.join(","),
            o.injection.as_deref().unwrap_or("-"),
        );
    }
}

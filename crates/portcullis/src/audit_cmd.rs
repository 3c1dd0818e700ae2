//! `portcullis audit verify|tail`: prove the audit log was not edited, and
//! watch it live.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use portcullis_monitor::audit::{self, TailFilter, VerifyOptions};

/// The audit subcommands.
#[derive(Subcommand)]
pub enum AuditCmd {
    /// Verify the hash chain and signed checkpoints of one or more files
    /// (rotated files in any order; a live file also takes its rotated
    /// predecessors with --all). Exit 0 if the chain holds, else 1 naming
    /// the file and line of the first bad record.
    Verify {
        /// The audit files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Also verify every rotated predecessor of each live file.
        #[arg(long)]
        all: bool,
        /// Pin the signing key: hex Ed25519 public key, or a file holding it
        /// (e.g. <state>/audit-ed25519.pk8.pub).
        #[arg(long, value_name = "HEX|FILE")]
        key: Option<String>,
        /// Exported anchor checkpoints to cross-check (detects truncation
        /// and wholesale rewrites).
        #[arg(long, value_name = "FILE")]
        anchors: Option<PathBuf>,
        /// Fail if records follow the last signed checkpoint.
        #[arg(long)]
        strict: bool,
    },
    /// Print records as they are written (filtering by identity, decision,
    /// tool or kind).
    Tail {
        /// The live audit file.
        file: PathBuf,
        /// Keep following appends and rotations.
        #[arg(short, long)]
        follow: bool,
        /// Print the last N matching records first (default 10).
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: usize,
        /// Only records whose identity contains this.
        #[arg(long)]
        identity: Option<String>,
        /// Only records with this decision (allow, deny).
        #[arg(long)]
        decision: Option<String>,
        /// Only records about this tool.
        #[arg(long)]
        tool: Option<String>,
        /// Only records of this kind (decision, auth_failure, …).
        #[arg(long)]
        kind: Option<String>,
    },
}

fn load_key(k: &str) -> anyhow::Result<Vec<u8>> {
    let text = match std::fs::read_to_string(k) {
        Ok(t) => t,
        Err(_) => k.to_owned(),
    };
    let bytes = hex::decode(text.trim())
        .map_err(|e| anyhow::anyhow!("--key: not a hex public key or a file holding one: {e}"))?;
    if bytes.len() != 32 {
        anyhow::bail!(
            "--key: an Ed25519 public key is 32 bytes, got {}",
            bytes.len()
        );
    }
    Ok(bytes)
}

/// Runs an audit subcommand; the exit code is the verdict.
pub fn run(cmd: AuditCmd) -> ExitCode {
    match cmd {
        AuditCmd::Verify {
            files,
            all,
            key,
            anchors,
            strict,
        } => {
            let key = match key.as_deref().map(load_key).transpose() {
                Ok(k) => k,
                Err(e) => {
                    eprintln!("portcullis: {e:#}");
                    return ExitCode::from(2);
                }
            };
            let mut list = Vec::new();
            for f in files {
                if all {
                    match audit::rotated_files(&f) {
                        Ok(v) => list.extend(v),
                        Err(e) => {
                            eprintln!("portcullis: {}: {e}", f.display());
                            return ExitCode::from(2);
                        }
                    }
                } else {
                    list.push(f);
                }
            }
            let opts = VerifyOptions {
                key,
                anchors,
                strict,
            };
            match audit::verify(&list, &opts) {
                Ok(r) => {
                    for w in &r.warnings {
                        eprintln!("warning: {w}");
                    }
                    for rec in &r.recoveries {
                        eprintln!("recovered: {rec}");
                    }
                    println!(
                        "ok: {} records in {} file{} (seq {}..{}), {} signed checkpoints, {} after the last checkpoint{}",
                        r.records,
                        r.files,
                        if r.files == 1 { "" } else { "s" },
                        r.first_seq,
                        r.last_seq,
                        r.checkpoints,
                        r.unsigned_tail,
                        r.key_hex
                            .as_deref()
                            .map(|k| format!("; key {k}"))
                            .unwrap_or_default()
                    );
                    ExitCode::SUCCESS
                }
                Err(f) => {
                    println!("FAILED: {f}");
                    ExitCode::FAILURE
                }
            }
        }
        AuditCmd::Tail {
            file,
            follow,
            lines,
            identity,
            decision,
            tool,
            kind,
        } => {
            let filter = TailFilter {
                identity,
                decision,
                tool,
                kind,
            };
            match tail(&file, lines, follow, &filter) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("portcullis: {}: {e}", file.display());
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Prints the last `n` matching records, then (with `follow`) every new one.
fn tail(
    path: &std::path::Path,
    n: usize,
    follow: bool,
    filter: &TailFilter,
) -> std::io::Result<()> {
    use std::io::Write;
    let text = std::fs::read_to_string(path)?;
    let matching: Vec<&str> = text
        .lines()
        .filter(|l| serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| filter.matches(&v)))
        .collect();
    let mut out = std::io::stdout().lock();
    for l in matching.iter().skip(matching.len().saturating_sub(n)) {
        writeln!(out, "{l}")?;
    }
    out.flush()?;
    drop(out);
    if follow {
        audit::follow(path, true, filter, |line| {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{line}").is_ok() && out.flush().is_ok()
        })?;
    }
    Ok(())
}

//! `portcullis`: the command-line front of the gateway.
#![forbid(unsafe_code)]

mod admin_cmd;
mod audit_cmd;
mod ca_cmd;
mod demo;
#[cfg(feature = "otel")]
mod otel;
mod policy_cmd;
mod scan_cmd;
mod serve;
mod wrap;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Parser, Subcommand};
use portcullis_gateway::Config;

/// Portcullis: a zero-trust gateway for the Model Context Protocol.
#[derive(Parser)]
#[command(name = "portcullis", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway (Streamable HTTP endpoint at http://ADDR/mcp).
    Serve {
        /// Configuration file (portcullis.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Listen address, e.g. 127.0.0.1:8787 (port 0 picks a free one).
        #[arg(long)]
        listen: Option<String>,
        /// An HTTP upstream: NAME=URL (repeatable).
        #[arg(long = "upstream", value_name = "NAME=URL")]
        upstreams: Vec<String>,
        /// A stdio upstream: NAME='COMMAND ARGS' (repeatable).
        #[arg(long = "upstream-cmd", value_name = "NAME=COMMAND")]
        upstream_cmds: Vec<String>,
        /// Let unauthenticated clients in on a loopback listener
        /// (development only; refused on any other address).
        #[arg(long)]
        allow_anonymous_loopback: bool,
        /// Write the tamper-evident audit log to FILE (overrides `[audit] path`).
        #[arg(long, value_name = "FILE")]
        audit_log: Option<PathBuf>,
        /// Serve the admin API and /metrics on ADDR over mTLS, e.g. 127.0.0.1:8788
        /// (admin client certificate from the development CA unless `[admin]`
        /// names cert, key and client_ca).
        #[arg(long, value_name = "ADDR")]
        admin: Option<String>,
    },
    /// Front a stdio MCP server: stdio in, stdio out, policed in between.
    Wrap {
        /// Configuration file (portcullis.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Name of the wrapped server (used in logs).
        #[arg(long, default_value = "server")]
        name: String,
        /// The agent name this stdio front speaks as (with the local user,
        /// its identity).
        #[arg(long, default_value = "local-agent")]
        agent: String,
        /// Write the tamper-evident audit log to FILE (overrides `[audit] path`).
        #[arg(long, value_name = "FILE")]
        audit_log: Option<PathBuf>,
        /// The server's command line, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// The audit log: verify its chain, follow it.
    Audit {
        #[command(subcommand)]
        cmd: audit_cmd::AuditCmd,
    },
    /// The built-in demo MCP server (stdio by default).
    DemoServer {
        /// Serve Streamable HTTP on this address instead of stdio.
        #[arg(long)]
        http: Option<SocketAddr>,
        /// Serve https with this certificate chain (PEM; with --tls-key).
        #[arg(long, requires_all = ["http", "tls_key"])]
        tls_cert: Option<PathBuf>,
        /// The private key for --tls-cert (PEM).
        #[arg(long, requires = "tls_cert")]
        tls_key: Option<PathBuf>,
        /// Require client certificates issued by this CA (PEM bundle).
        #[arg(long, requires = "tls_cert")]
        client_ca: Option<PathBuf>,
        /// Answer 401 unless the request carries `Authorization: Bearer PREFIX…`.
        #[arg(long, value_name = "PREFIX", requires = "http")]
        require_bearer: Option<String>,
    },
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// Local certificate authority commands.
    Ca {
        #[command(subcommand)]
        cmd: ca_cmd::CaCmd,
    },
    /// Certificate commands (issued by the local CA).
    Cert {
        #[command(subcommand)]
        cmd: ca_cmd::CertCmd,
    },
    /// Policy commands: validate, test and explain Cedar policies offline;
    /// reload the running gateway's set (admin API).
    Policy {
        #[command(subcommand)]
        cmd: policy_cmd::PolicyCmd,
    },
    /// Admin: list the gateway's client sessions, or kill them.
    Sessions(admin_cmd::SessionsArgs),
    /// Admin: revoke a client certificate, token or session; list revocations.
    Revoke(admin_cmd::RevokeArgs),
    /// Admin: quarantine an identity, agent, user, device or session.
    Quarantine {
        #[command(subcommand)]
        cmd: admin_cmd::QuarantineCmd,
    },
    /// Admin: the kill switch (stop every call, or every call but read-only tools).
    Killswitch {
        #[command(subcommand)]
        cmd: admin_cmd::KillswitchCmd,
    },
    /// Admin: the upstream circuit breakers; reset one.
    Breakers(admin_cmd::BreakersArgs),
    /// Admin: pinned tool definitions; show and approve changes (rug-pulls).
    Pins {
        #[command(subcommand)]
        cmd: admin_cmd::PinsCmd,
    },
    /// Scan an MCP server's tools, prompts and resources for poisoning.
    Scan(scan_cmd::ScanArgs),
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate a configuration file and print a summary.
    Check {
        /// The file to check.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The file to check (positional form).
        file: Option<PathBuf>,
    },
}

/// Logs to stderr; with the `otel` feature and an OTLP endpoint in the
/// environment, request spans are exported too (flushed when the returned
/// guard drops).
fn init_logging() -> Option<Box<dyn std::any::Any>> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("warn,portcullis=info,portcullis_gateway=info")
        });
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .compact();
    #[cfg(feature = "otel")]
    {
        let (layer, guard) = match otel::layer() {
            Some((l, g)) => (Some(l), Some(g)),
            None => (None, None),
        };
        tracing_subscriber::registry()
            .with(filter)
            .with(fmt)
            .with(layer)
            .init();
        guard.map(|g| Box::new(g) as Box<dyn std::any::Any>)
    }
    #[cfg(not(feature = "otel"))]
    {
        tracing_subscriber::registry().with(filter).with(fmt).init();
        None
    }
}

fn config_check(file: Option<PathBuf>) -> anyhow::Result<()> {
    let Some(file) = file else {
        bail!("config check needs a file (--config FILE)");
    };
    let cfg = Config::load(&file)?;
    println!(
        "{}: ok ({} upstream{}, listening on {}{})",
        file.display(),
        cfg.upstreams.len(),
        if cfg.upstreams.len() == 1 { "" } else { "s" },
        cfg.listen.addr,
        cfg.listen.path
    );
    for u in &cfg.upstreams {
        let target = match (&u.url, &u.command) {
            (Some(url), _) => url.clone(),
            (_, Some(cmd)) => format!("stdio: {}", cmd.join(" ")),
            _ => String::new(),
        };
        println!("  {} -> {target}", u.name);
    }
    Ok(())
}

/// The async runtime: one worker per core by default; `PORTCULLIS_WORKERS`
/// sets the count (1 = a single-threaded runtime, no cross-thread wake-ups).
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let workers = std::env::var("PORTCULLIS_WORKERS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0);
    match workers {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Config {
            cmd: ConfigCmd::Check { config, file },
        } => config_check(config.or(file)),
        Cmd::Ca { cmd } => ca_cmd::run_ca(cmd),
        Cmd::Cert { cmd } => ca_cmd::run_cert(cmd),
        Cmd::Policy { cmd } => return policy_cmd::run(cmd),
        Cmd::Audit { cmd } => return audit_cmd::run(cmd),
        Cmd::Sessions(a) => return admin_cmd::sessions(a),
        Cmd::Revoke(a) => return admin_cmd::revoke(a),
        Cmd::Quarantine { cmd } => return admin_cmd::quarantine(cmd),
        Cmd::Killswitch { cmd } => return admin_cmd::killswitch(cmd),
        Cmd::Breakers(a) => return admin_cmd::breakers(a),
        Cmd::Pins { cmd } => return admin_cmd::pins(cmd),
        Cmd::Scan(a) => return scan_cmd::run(a),
        other => {
            let _telemetry = init_logging();
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("portcullis: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            rt.block_on(async move {
                match other {
                    Cmd::Serve {
                        config,
                        listen,
                        upstreams,
                        upstream_cmds,
                        allow_anonymous_loopback,
                        audit_log,
                        admin,
                    } => {
                        serve::run(serve::ServeArgs {
                            config,
                            listen,
                            upstreams,
                            upstream_cmds,
                            allow_anonymous_loopback,
                            audit_log,
                            admin,
                        })
                        .await
                    }
                    Cmd::Wrap {
                        config,
                        name,
                        agent,
                        audit_log,
                        command,
                    } => wrap::run(config, name, agent, audit_log, command).await,
                    Cmd::DemoServer { http: None, .. } => demo::run_stdio().await,
                    Cmd::DemoServer {
                        http: Some(addr),
                        tls_cert,
                        tls_key,
                        client_ca,
                        require_bearer,
                    } => {
                        demo::run_http(demo::HttpOptions {
                            addr,
                            tls_cert,
                            tls_key,
                            client_ca,
                            require_bearer,
                        })
                        .await
                    }
                    Cmd::Config { .. }
                    | Cmd::Ca { .. }
                    | Cmd::Cert { .. }
                    | Cmd::Policy { .. }
                    | Cmd::Audit { .. }
                    | Cmd::Sessions(_)
                    | Cmd::Revoke(_)
                    | Cmd::Quarantine { .. }
                    | Cmd::Killswitch { .. }
                    | Cmd::Breakers(_)
                    | Cmd::Pins { .. }
                    | Cmd::Scan(_) => Ok(()),
                }
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("portcullis: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! `portcullis`: the command-line front of the gateway.
#![forbid(unsafe_code)]

mod ca_cmd;
mod demo;
mod wrap;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use portcullis_gateway::config::UpstreamConfig;
use portcullis_gateway::{server, Config, Gateway};

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
    },
    /// Front a stdio MCP server: stdio in, stdio out, policed in between.
    Wrap {
        /// Configuration file (portcullis.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Name of the wrapped server (used in logs).
        #[arg(long, default_value = "server")]
        name: String,
        /// The server's command line, after `--`.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// The built-in demo MCP server (stdio by default).
    DemoServer {
        /// Serve Streamable HTTP on this address instead of stdio.
        #[arg(long)]
        http: Option<SocketAddr>,
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

fn init_logging() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("PORTCULLIS_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new("warn,portcullis=info,portcullis_gateway=info")
        });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .compact()
        .init();
}

fn parse_pair(s: &str, flag: &str) -> anyhow::Result<(String, String)> {
    match s.split_once('=') {
        Some((n, v)) if !n.is_empty() && !v.is_empty() => Ok((n.to_owned(), v.to_owned())),
        _ => bail!("{flag} expects NAME=VALUE, got {s:?}"),
    }
}

fn load(config: Option<&PathBuf>) -> anyhow::Result<Config> {
    match config {
        Some(p) => Config::load(p).with_context(|| format!("config {}", p.display())),
        None => Ok(Config::empty()),
    }
}

/// The embedded default upstream: this binary's own demo server over stdio.
fn demo_upstream() -> anyhow::Result<UpstreamConfig> {
    let exe = std::env::current_exe().context("cannot locate the portcullis binary")?;
    Ok(UpstreamConfig::command(
        "demo",
        vec![exe.display().to_string(), "demo-server".into()],
    ))
}

async fn serve(
    config: Option<PathBuf>,
    listen: Option<String>,
    upstreams: Vec<String>,
    upstream_cmds: Vec<String>,
) -> anyhow::Result<()> {
    let mut cfg = load(config.as_ref())?;
    if let Some(l) = listen {
        cfg.listen.addr = l;
    }
    let from_flags = !upstreams.is_empty() || !upstream_cmds.is_empty();
    if from_flags {
        // Flags override the file's upstreams of the same name.
        for u in upstreams {
            let (name, url) = parse_pair(&u, "--upstream")?;
            cfg.upstreams.retain(|x| x.name != name);
            cfg.upstreams.push(UpstreamConfig::http(&name, &url));
        }
        for u in upstream_cmds {
            let (name, cmd) = parse_pair(&u, "--upstream-cmd")?;
            let argv = shlex::split(&cmd)
                .filter(|a| !a.is_empty())
                .with_context(|| format!("--upstream-cmd {name}: cannot split {cmd:?}"))?;
            cfg.upstreams.retain(|x| x.name != name);
            cfg.upstreams.push(UpstreamConfig::command(&name, argv));
        }
    }
    if cfg.upstreams.is_empty() {
        cfg.upstreams.push(demo_upstream()?);
    }
    cfg.validate()?;
    let addr: SocketAddr = cfg.listen.addr.parse().context("listen.addr")?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let bound = listener.local_addr()?;
    let path = cfg.listen.path.clone();
    let gw = Gateway::new(cfg, &[], true);
    server::spawn_sweeper(gw.clone());
    let app = server::router(gw.clone(), bound);
    tracing::info!(upstreams = ?gw.upstream_names(), "gateway ready");
    eprintln!("listening on http://{bound}{path}");
    let shutdown = async {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(t) => t,
                    Err(_) => {
                        let _ = ctrl_c.await;
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
    };
    portcullis_gateway::listener::serve(listener, None, app, shutdown).await;
    gw.shutdown();
    // Give stdio children their grace period.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    Ok(())
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
        other => {
            init_logging();
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
                    } => serve(config, listen, upstreams, upstream_cmds).await,
                    Cmd::Wrap {
                        config,
                        name,
                        command,
                    } => wrap::run(config, name, command).await,
                    Cmd::DemoServer { http: None } => demo::run_stdio().await,
                    Cmd::DemoServer { http: Some(addr) } => demo::run_http(addr).await,
                    Cmd::Config { .. } | Cmd::Ca { .. } | Cmd::Cert { .. } => Ok(()),
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

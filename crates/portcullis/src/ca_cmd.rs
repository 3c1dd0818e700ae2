//! `portcullis ca init` and `portcullis cert issue`: the local CA from the
//! command line. Both are synchronous (file I/O and key generation only).

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use portcullis_identity::ca::{self, IssueRequest};
use portcullis_identity::paths;
use portcullis_identity::spiffe::SpiffeId;

/// `portcullis ca …`
#[derive(Subcommand)]
pub enum CaCmd {
    /// Create a local CA (ca.pem, and ca.key with mode 0600).
    Init {
        /// CA folder (default: the state folder's `ca`, e.g. ~/.local/state/portcullis/ca).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Replace an existing CA in that folder.
        #[arg(long)]
        force: bool,
    },
}

/// `portcullis cert …`
#[derive(Subcommand)]
pub enum CertCmd {
    /// Issue a client/server certificate carrying a SPIFFE ID (cert.pem, key.pem, ca.pem).
    Issue {
        /// CA folder (default: the state folder's `ca`).
        #[arg(long = "ca", value_name = "DIR")]
        ca: Option<PathBuf>,
        /// The workload identity, e.g. spiffe://example.org/agent/alice.
        #[arg(long = "spiffe-id", value_name = "ID")]
        spiffe_id: String,
        /// Lifetime: a number and s, m, h or d.
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// A DNS name to include (repeatable).
        #[arg(long = "dns", value_name = "NAME")]
        dns: Vec<String>,
        /// An IP address to include (repeatable).
        #[arg(long = "ip", value_name = "IP")]
        ips: Vec<String>,
        /// Output folder.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

fn ca_dir_or_default(dir: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match dir {
        Some(d) => Ok(d),
        None => Ok(paths::default_ca_dir()?),
    }
}

/// Runs `portcullis ca …`.
pub fn run_ca(cmd: CaCmd) -> anyhow::Result<()> {
    match cmd {
        CaCmd::Init { dir, force } => {
            let dir = ca_dir_or_default(dir)?;
            let p = ca::init(&dir, force)?;
            println!("wrote {}", p.cert.display());
            println!("wrote {} (mode 0600)", p.key.display());
            println!(
                "issue a certificate: portcullis cert issue --ca {} --spiffe-id spiffe://example.org/agent --out DIR",
                p.dir.display()
            );
            Ok(())
        }
    }
}

/// Runs `portcullis cert …`.
pub fn run_cert(cmd: CertCmd) -> anyhow::Result<()> {
    match cmd {
        CertCmd::Issue {
            ca: ca_dir,
            spiffe_id,
            ttl,
            dns,
            ips,
            out,
        } => {
            let id = SpiffeId::parse(&spiffe_id)
                .with_context(|| format!("--spiffe-id {spiffe_id:?}"))?;
            let ttl = ca::parse_ttl(&ttl).context("--ttl")?;
            let ips = ips
                .iter()
                .map(|s| {
                    s.parse::<IpAddr>()
                        .with_context(|| format!("--ip {s:?} is not an IP address"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let ca_dir = ca_dir_or_default(ca_dir)?;
            let mut req = IssueRequest::new(Some(id));
            req.ttl = ttl;
            req.dns = dns;
            req.ips = ips;
            let p = ca::issue(&ca_dir, &req, &out)?;
            println!("wrote {}", p.cert.display());
            println!("wrote {} (mode 0600)", p.key.display());
            println!("wrote {}", p.ca.display());
            if let Some(id) = &p.info.spiffe_id {
                println!("spiffe id:   {id}");
            }
            println!("serial:      {}", p.info.serial);
            println!("fingerprint: {}", p.info.fingerprint);
            println!("expires:     {}", ca::format_unix(p.info.not_after));
            Ok(())
        }
    }
}

//! Real `redis-server` processes for the tests and benches: each on its own
//! free loopback port, no persistence unless asked (`SAVE`), in its own
//! temporary folder, killed when dropped.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    dead_code
)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use portcullis_redis::RedisCfg;
use tokio::process::{Child, Command};

/// A fresh folder under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "portcullis-redis-{tag}-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// TLS material for a server.
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
    /// `--tls-auth-clients yes`: client certificates required.
    pub require_client_cert: bool,
}

/// One redis-server.
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    pub dir: TempDir,
    extra: Vec<String>,
    tls: Option<ServerTls>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn require_redis_server() {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("redis-server").is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "redis-server is not on PATH: run scripts/install-test-deps.sh (Debian package redis-server)"
    );
}

impl RedisServer {
    /// A plain TCP server with `extra` arguments (e.g. `--requirepass x`).
    pub async fn start(extra: &[&str]) -> RedisServer {
        Self::start_inner(extra, None).await
    }

    /// A TLS-only server.
    pub async fn start_tls(extra: &[&str], tls: ServerTls) -> RedisServer {
        Self::start_inner(extra, Some(tls)).await
    }

    async fn start_inner(extra: &[&str], tls: Option<ServerTls>) -> RedisServer {
        require_redis_server();
        let mut s = RedisServer {
            child: None,
            port: 0,
            dir: TempDir::new("server"),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            tls,
        };
        // Another process may take the port between probe and bind: retry.
        for _ in 0..5 {
            s.port = free_port();
            if s.spawn().await {
                return s;
            }
        }
        panic!("redis-server did not start; see {}", s.log().display());
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    async fn spawn(&mut self) -> bool {
        let port = self.port.to_string();
        let dir = self.dir.path().display().to_string();
        let log = self.log().display().to_string();
        let mut args: Vec<String> = vec![
            "--bind".into(),
            "127.0.0.1".into(),
            "--save".into(),
            "".into(),
            "--appendonly".into(),
            "no".into(),
            "--dir".into(),
            dir,
            "--logfile".into(),
            log,
            "--daemonize".into(),
            "no".into(),
            "--protected-mode".into(),
            "no".into(),
        ];
        match &self.tls {
            None => args.extend(["--port".into(), port]),
            Some(t) => args.extend([
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port,
                "--tls-cert-file".into(),
                t.cert.display().to_string(),
                "--tls-key-file".into(),
                t.key.display().to_string(),
                "--tls-ca-cert-file".into(),
                t.ca.display().to_string(),
                "--tls-auth-clients".into(),
                if t.require_client_cert { "yes" } else { "no" }.into(),
            ]),
        }
        args.extend(self.extra.iter().cloned());
        let mut child = Command::new("redis-server")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn redis-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                self.child = Some(child);
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = child.kill().await;
        false
    }

    /// `redis://127.0.0.1:PORT` (or `rediss://`).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL: no goodbye to the clients, nothing saved).
    pub async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill().await;
        }
    }

    /// Starts it again on the same port (loading `dump.rdb` if a `SAVE`
    /// left one in its folder).
    pub async fn restart(&mut self) {
        self.kill().await;
        for _ in 0..50 {
            if self.spawn().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("redis-server did not restart on port {}", self.port);
    }
}

/// A store configuration for tests: short timeouts, fast backoff, a prefix
/// of its own.
pub fn cfg(url: &str) -> RedisCfg {
    let mut c = RedisCfg::new(url);
    c.prefix = "t:".into();
    c.connect_timeout_ms = 1000;
    c.op_timeout_ms = 500;
    c.backoff_min_ms = 20;
    c.backoff_max_ms = 200;
    c
}

/// Polls `f` every 10 ms until it holds, up to `secs`.
pub async fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A raw connection, to look at what the store wrote.
pub async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

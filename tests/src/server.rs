//! Spawning the `tidewire` binary under test, one process per test, on its own port and
//! database file.
//!
//! ```no_run
//! use tidewire_tests::Server;
//! let mut server = Server::builder().flag("heartbeat-secs", 1).start().unwrap();
//! println!("serving on {}", server.url());
//! server.kill_hard();
//! server.restart().unwrap(); // same database file, same port
//! ```
//!
//! The binary is found beside the test executable (`target/debug/tidewire`), or in
//! `TIDEWIRE_BIN`; when absent, or older than a file under `server/` or `shared/src`, it is
//! built once with `cargo build -p tidewire-server --bin tidewire` into the same target
//! directory. The child is killed when the [`Server`] drops.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::{Error, Rest, Result};

/// How long a server may take to print its listening line.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);

/// How much of the child's stderr is kept for failure messages.
const LOG_KEEP: usize = 64 * 1024;

/// The line prefix the server prints on stdout once it accepts connections.
const LISTENING: &str = "tidewire listening on http://";

/// Flags for a server to start; see [`Server::builder`].
#[derive(Debug, Clone, Default)]
pub struct ServerBuilder {
    flags: Vec<(String, String)>,
    envs: Vec<(String, String)>,
}

impl ServerBuilder {
    /// Adds `--name value` (give the name without dashes, e.g. `"retention-events"`).
    /// A flag given twice keeps the last value. `listen` (default `127.0.0.1:0`) and
    /// `database` (default a fresh SQLite file, e.g. `postgres://…` for several nodes)
    /// replace the defaults.
    pub fn flag(mut self, name: &str, value: impl ToString) -> Self {
        self.flags.retain(|(n, _)| n != name);
        self.flags.push((name.to_owned(), value.to_string()));
        self
    }

    /// The value of a flag given with [`ServerBuilder::flag`].
    pub fn get(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Sets an environment variable of the child.
    pub fn env(mut self, name: &str, value: impl ToString) -> Self {
        self.envs.push((name.to_owned(), value.to_string()));
        self
    }

    /// Lifts the write rate limit (for tests that write a lot from one address).
    pub fn unlimited_writes(self) -> Self {
        self.flag("write-rate", 1_000_000)
            .flag("write-burst", 1_000_000)
    }

    /// Starts the server on `127.0.0.1:0` with a fresh SQLite file and waits (blocking, at most
    /// [`START_TIMEOUT`]) for its listening line.
    pub fn start(self) -> Result<Server> {
        let dir = tempfile::Builder::new().prefix("tidewire-e2e-").tempdir()?;
        let mut server = Server {
            child: None,
            addr: None,
            dir,
            builder: self,
            log: Arc::new(Mutex::new(String::new())),
        };
        let listen = server
            .builder
            .get("listen")
            .unwrap_or("127.0.0.1:0")
            .to_owned();
        server.spawn(&listen)?;
        Ok(server)
    }
}

/// A running `tidewire serve` child process. Killed on drop.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    addr: Option<SocketAddr>,
    dir: tempfile::TempDir,
    builder: ServerBuilder,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// A builder for a server with extra flags.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    /// Starts a server with default flags.
    pub fn start() -> Result<Server> {
        ServerBuilder::default().start()
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("the server has been started")
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// `ws://127.0.0.1:PORT`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}", self.addr())
    }

    /// A REST client for this server.
    pub fn rest(&self) -> Rest {
        Rest::new(&self.url())
    }

    /// The child's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The SQLite file the server uses unless `database` was given (kept across
    /// [`Server::restart`]).
    pub fn database_path(&self) -> PathBuf {
        self.dir.path().join("t.db")
    }

    /// What the child wrote on stderr so far (the last 64 KiB).
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Kills the child with SIGKILL and reaps it.
    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM (graceful shutdown). Use [`Server::wait_exit`] to see it end.
    pub fn terminate(&self) -> Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| Error::Start("the server is not running".into()))?;
        let pid = i32::try_from(pid).map_err(|e| Error::Start(e.to_string()))?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .map_err(|e| Error::Io(e.into()))
    }

    /// Waits (blocking, polling every 10 ms) until the child exits; times out after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| Error::Start("the server is not running".into()))?;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    after: timeout,
                    what: "the server to exit".into(),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the child if it still runs (after [`Server::terminate`] + [`Server::wait_exit`] it
    /// does not), then starts it again with the same flags, the same database file and the
    /// same port, so clients can reconnect to the same URL.
    pub fn restart(&mut self) -> Result<()> {
        self.kill_hard();
        let addr = self.addr().to_string();
        // The port was just freed; another process could take it, so retry for a while.
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn(&addr) {
                Ok(()) => return Ok(()),
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The child's resident set size in KiB, from `/proc/<pid>/status`.
    pub fn rss_kib(&self) -> Result<u64> {
        let pid = self
            .pid()
            .ok_or_else(|| Error::Start("the server is not running".into()))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| Error::Start("no VmRSS in /proc status".into()))
    }

    fn spawn(&mut self, listen: &str) -> Result<()> {
        let bin = binary()?;
        let db = self
            .builder
            .get("database")
            .map(str::to_owned)
            .unwrap_or_else(|| format!("sqlite://{}", self.database_path().display()));
        let mut cmd = Command::new(&bin);
        cmd.arg("serve")
            .arg("--listen")
            .arg(listen)
            .arg("--database")
            .arg(&db);
        for (name, value) in &self.builder.flags {
            if name != "database" && name != "listen" {
                cmd.arg(format!("--{name}")).arg(value);
            }
        }
        for (name, value) in &self.builder.envs {
            cmd.env(name, value);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::Start(format!("spawning {}: {e}", bin.display())))?;

        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::clone(&self.log);
        std::thread::spawn(move || drain_into(stderr, &log));

        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.trim().strip_prefix(LISTENING) {
                    let _ = tx.send(addr.trim_end_matches('/').to_owned());
                }
            }
        });

        match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => {
                let addr: SocketAddr = addr
                    .parse()
                    .map_err(|e| Error::Start(format!("bad listening address `{addr}`: {e}")))?;
                self.addr = Some(addr);
                self.child = Some(child);
                Ok(())
            }
            Err(_) => {
                let _ = child.kill();
                let status = child.wait().ok();
                // Give the stderr thread a moment to collect the last lines.
                std::thread::sleep(Duration::from_millis(100));
                Err(Error::Start(format!(
                    "`{} serve --listen {listen} --database {db} {:?}` printed no `{LISTENING}…` \
                     line within {START_TIMEOUT:?} (exit status {status:?}); stderr:\n{}",
                    bin.display(),
                    self.builder.flags,
                    self.log()
                )))
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill_hard();
    }
}

fn drain_into(mut from: impl Read, log: &Mutex<String>) {
    let mut buf = [0u8; 8192];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if let Ok(mut log) = log.lock() {
                    log.push_str(&String::from_utf8_lossy(&buf[..n]));
                    if log.len() > LOG_KEEP {
                        let mut cut = log.len() - LOG_KEEP;
                        while !log.is_char_boundary(cut) {
                            cut += 1;
                        }
                        log.drain(..cut);
                    }
                }
            }
        }
    }
}

/// Whether a source file of the server or the protocol crate changed after `bin` was built.
fn sources_newer_than(bin: &Path) -> bool {
    fn newest(dir: &Path, depth: usize) -> Option<std::time::SystemTime> {
        let mut best = None;
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let meta = entry.metadata().ok()?;
            let t = if meta.is_dir() && depth > 0 {
                newest(&entry.path(), depth - 1)
            } else {
                meta.modified().ok()
            };
            best = best.max(t);
        }
        best
    }
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
        return true;
    };
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    ["server/src", "server/Cargo.toml", "shared/src"]
        .iter()
        .map(|p| workspace.join(p))
        .filter_map(|p| {
            if p.is_dir() {
                newest(&p, 8)
            } else {
                std::fs::metadata(&p).and_then(|m| m.modified()).ok()
            }
        })
        .any(|t| t > built)
}

/// The path of the `tidewire` binary, building it once when it is missing or older than the
/// server's sources.
pub fn binary() -> Result<PathBuf> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(find_or_build).clone().map_err(Error::Start)
}

fn find_or_build() -> std::result::Result<PathBuf, String> {
    if let Some(bin) = std::env::var_os("TIDEWIRE_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // target/<profile>/deps/<test> -> target/<profile>
    let profile_dir = exe
        .parent()
        .filter(|d| d.ends_with("deps"))
        .and_then(Path::parent)
        .ok_or_else(|| format!("cannot place the binary beside {}", exe.display()))?;
    let bin = profile_dir.join("tidewire");
    if bin.exists() && !sources_newer_than(&bin) {
        return Ok(bin);
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| profile_dir.parent().map(Path::to_path_buf))
        .ok_or("no target directory")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "tidewire-server", "--bin", "tidewire"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.ends_with("release") {
        cmd.arg("--release");
    }
    let out = cmd.output().map_err(|e| format!("running cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo build -p tidewire-server failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!("{} is missing after the build", bin.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_replace_and_read_back() {
        let b = Server::builder()
            .flag("database", "postgres://x")
            .flag("heartbeat-secs", 1)
            .flag("heartbeat-secs", 2);
        assert_eq!(b.get("database"), Some("postgres://x"));
        assert_eq!(b.get("heartbeat-secs"), Some("2"));
        assert_eq!(b.get("listen"), None);
    }
}

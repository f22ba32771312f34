//! Starting and stopping the servers under test: Tidewire (fresh SQLite file, limits raised),
//! the bare axum baseline (this binary's `baseline` subcommand) and the Socket.IO peer (Node).
//!
//! ```text
//! let s = start(Peer::Baseline, &tidewire_bin).await?;   // waits until it accepts
//! stop(s).await;
//! let mut tw = Tidewire::start(&bin, 15_000, 5_000).await?;
//! tw.terminate().await?; tw.wait_exit(limit).await?; tw.restart().await?;
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::BenchError;

/// Which server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Peer {
    /// The `tidewire` binary.
    Tidewire,
    /// The bare axum broadcast server.
    Baseline,
    /// Socket.IO 4 on Node.
    SocketIo,
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// Resident memory of a process, KiB (0 when unknown).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn free_addr() -> Result<SocketAddr, BenchError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

async fn wait_listening(addr: SocketAddr, what: &str) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            return Err(BenchError::Failed(format!(
                "{what} did not start on {addr}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A running server.
pub struct Server {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    dir: Option<PathBuf>,
}

impl Server {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }
}

/// A Tidewire process that can be restarted on the same port and database.
pub struct Tidewire {
    bin: PathBuf,
    args: Vec<String>,
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Tidewire {
    /// Starts Tidewire on a free port with a fresh SQLite file.
    pub async fn start(
        bin: &Path,
        max_conns: usize,
        drain_ms: u64,
    ) -> Result<Tidewire, BenchError> {
        let addr = free_addr()?;
        let dir = std::env::temp_dir().join(format!(
            "tidewire-bench-{}-{}",
            std::process::id(),
            addr.port()
        ));
        std::fs::create_dir_all(&dir)?;
        let db = dir.join("bench.db");
        let args: Vec<String> = [
            "serve",
            "--listen",
            &addr.to_string(),
            "--database",
            &format!("sqlite://{}", db.display()),
            "--write-rate",
            "1000000",
            "--write-burst",
            "1000000",
            "--max-connections-per-client",
            &(max_conns * 2 + 100).to_string(),
            // Every client of one worker process shares its source address, and the phases
            // open more than the default total: the load test measures, it is not capped.
            "--max-connections-per-address",
            "0",
            "--max-connections",
            "0",
            "--queue-capacity",
            "1024",
            "--drain-window-ms",
            &drain_ms.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let child = spawn(bin, &args)?;
        let tw = Tidewire {
            bin: bin.to_path_buf(),
            args,
            child,
            addr,
            dir,
        };
        wait_listening(addr, "tidewire").await?;
        Ok(tw)
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    /// Sends SIGTERM (graceful shutdown).
    pub async fn terminate(&self) -> Result<(), BenchError> {
        let st = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .await?;
        if st.success() {
            Ok(())
        } else {
            Err(BenchError::Failed("kill -TERM failed".into()))
        }
    }

    /// Waits for the process to exit; kills it after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> Result<(), BenchError> {
        if tokio::time::timeout(limit, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
            return Err(BenchError::Failed(format!(
                "tidewire did not exit within {limit:?} of SIGTERM"
            )));
        }
        Ok(())
    }

    /// Starts a new process with the same port and database; waits until it accepts.
    pub async fn restart(&mut self) -> Result<(), BenchError> {
        self.child = spawn(&self.bin, &self.args)?;
        wait_listening(self.addr, "restarted tidewire").await
    }
}

fn spawn(bin: &Path, args: &[String]) -> Result<Child, BenchError> {
    Ok(Command::new(bin)
        .args(args)
        .current_dir(repo_root())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?)
}

/// Stops a restartable Tidewire and removes its database.
pub async fn stop_tidewire(mut t: Tidewire) {
    let _ = t.child.kill().await;
    let _ = std::fs::remove_dir_all(&t.dir);
}

/// Starts `peer` on a free port and waits until it accepts connections.
pub async fn start(peer: Peer, tidewire: &Path, max_conns: usize) -> Result<Server, BenchError> {
    let root = repo_root();
    if peer == Peer::Tidewire {
        let Tidewire {
            child, addr, dir, ..
        } = Tidewire::start(tidewire, max_conns, 5000).await?;
        return Ok(Server {
            child,
            addr,
            dir: Some(dir),
        });
    }
    let addr = free_addr()?;
    let mut cmd = match peer {
        Peer::Baseline => {
            let mut c = Command::new(std::env::current_exe()?);
            c.args(["baseline", "--listen", &addr.to_string()]);
            c
        }
        _ => {
            let dir = root.join("bench/socketio");
            if !dir.join("node_modules/socket.io").exists() {
                let st = Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund"])
                    .current_dir(&dir)
                    .status()
                    .await?;
                if !st.success() {
                    return Err(BenchError::Failed("npm ci in bench/socketio failed".into()));
                }
            }
            let mut c = Command::new("node");
            c.arg(dir.join("server.js")).arg(addr.port().to_string());
            c
        }
    };
    let child = cmd
        .current_dir(&root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let s = Server {
        child,
        addr,
        dir: None,
    };
    wait_listening(addr, &format!("{peer:?}")).await?;
    Ok(s)
}

/// Stops a server and removes its files.
pub async fn stop(mut s: Server) {
    let _ = s.child.kill().await;
    if let Some(d) = &s.dir {
        let _ = std::fs::remove_dir_all(d);
    }
}

//! `tidewire-bench`: Tidewire against a bare axum broadcast server (the ceiling) and Socket.IO 4,
//! same machine, same run, same load generator.
//!
//! ```text
//! cargo run --release --manifest-path bench/Cargo.toml -- all --smoke   # ~20 s, checks it works
//! cargo run --release --manifest-path bench/Cargo.toml -- all           # writes docs/benchmarks.md
//! ```
//!
//! For every server and transport it starts the server, connects N subscribers to one room,
//! measures server memory per idle connection and connect rate, end-to-end latency at a fixed
//! publish rate, and fan-out deliveries/s while publishing as fast as the server sustains.

mod baseline;
mod clients;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use clients::{now_micros, Kind, Shared};
use tokio::process::{Child, Command};

/// Everything that can stop a benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Socket or process I/O.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// WebSocket failure.
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    /// HTTP client failure.
    #[error("http: {0}")]
    Http(#[from] reqwest::Error),
    /// The server closed a subscriber.
    #[error("connection closed by the server")]
    Closed,
    /// The server refused a subscriber.
    #[error("unexpected answer: {0}")]
    Status(String),
    /// A server did not start or a check failed.
    #[error("{0}")]
    Failed(String),
}

#[derive(Parser)]
#[command(about = "Tidewire benchmarks against a bare axum server and Socket.IO 4")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the whole comparison and write the report.
    All(AllArgs),
    /// Serve the bare axum broadcast baseline (started by `all`).
    Baseline {
        /// Address to listen on.
        #[arg(long)]
        listen: SocketAddr,
    },
}

#[derive(clap::Args, Clone)]
struct AllArgs {
    /// Small N and short phases: checks the benchmark works (≈20 s); writes no report.
    #[arg(long)]
    smoke: bool,
    /// Subscriber counts, comma-separated (default 1000; smoke 50).
    #[arg(long, value_delimiter = ',')]
    subscribers: Vec<usize>,
    /// Repeated runs; the report gives medians (default 3; smoke 1).
    #[arg(long)]
    runs: Option<usize>,
    /// Seconds of flat-out publishing for fan-out throughput (default 10; smoke 1).
    #[arg(long)]
    fanout_secs: Option<f64>,
    /// Seconds of fixed-rate publishing for latency (default 5; smoke 1).
    #[arg(long)]
    latency_secs: Option<f64>,
    /// Publishes per second in the latency phase.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// Concurrent publishers in the fan-out phase.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// The `tidewire` binary; built with `cargo build --release -p tidewire-server` when absent.
    #[arg(long)]
    tidewire_bin: Option<PathBuf>,
    /// Where to write the report (default docs/benchmarks.md; smoke writes none unless given).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Only these targets (e.g. tidewire-sse,axum-sse).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Peer {
    Tidewire,
    Baseline,
    SocketIo,
}

#[derive(Clone, Copy)]
struct Target {
    name: &'static str,
    peer: Peer,
    kind: Kind,
}

const TARGETS: [Target; 5] = [
    Target {
        name: "tidewire-sse",
        peer: Peer::Tidewire,
        kind: Kind::TidewireSse,
    },
    Target {
        name: "tidewire-ws",
        peer: Peer::Tidewire,
        kind: Kind::TidewireWs,
    },
    Target {
        name: "axum-sse",
        peer: Peer::Baseline,
        kind: Kind::BaselineSse,
    },
    Target {
        name: "axum-ws",
        peer: Peer::Baseline,
        kind: Kind::BaselineWs,
    },
    Target {
        name: "socketio-ws",
        peer: Peer::SocketIo,
        kind: Kind::SocketIo,
    },
];

/// One measurement of one target at one N.
#[derive(Clone, Debug, Default)]
struct Measure {
    connected: usize,
    failed: usize,
    connects_per_s: f64,
    bytes_per_conn: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    latency_received: f64,
    deliveries_per_s: f64,
    publishes_per_s: f64,
    first_error: Option<String>,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

fn rss_kib(pid: u32) -> u64 {
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

struct Server {
    child: Child,
    addr: SocketAddr,
    _dir: Option<PathBuf>,
}

impl Server {
    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }
}

async fn start(peer: Peer, tidewire: &Path, queue: usize) -> Result<Server, BenchError> {
    let addr = free_addr()?;
    let root = repo_root();
    let mut dir = None;
    let mut cmd = match peer {
        Peer::Tidewire => {
            let d = std::env::temp_dir().join(format!(
                "tidewire-bench-{}-{}",
                std::process::id(),
                addr.port()
            ));
            std::fs::create_dir_all(&d)?;
            let db = d.join("bench.db");
            dir = Some(d);
            let mut c = Command::new(tidewire);
            c.arg("serve")
                .args(["--listen", &addr.to_string()])
                .args(["--database", &format!("sqlite://{}", db.display())])
                .args(["--write-rate", "1000000", "--write-burst", "1000000"])
                .args(["--max-connections-per-client", "1000000"])
                .args(["--queue-capacity", &queue.to_string()]);
            c
        }
        Peer::Baseline => {
            let mut c = Command::new(std::env::current_exe()?);
            c.args(["baseline", "--listen", &addr.to_string()]);
            c
        }
        Peer::SocketIo => {
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
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            return Err(BenchError::Failed(format!(
                "{peer:?} did not start on {addr}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(Server {
        child,
        addr,
        _dir: dir,
    })
}

async fn stop(mut s: Server) {
    let _ = s.child.kill().await;
    if let Some(d) = &s._dir {
        let _ = std::fs::remove_dir_all(d);
    }
}

const PAD: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

fn publish_request(
    http: &reqwest::Client,
    peer: Peer,
    addr: SocketAddr,
) -> reqwest::RequestBuilder {
    let t = now_micros();
    let (url, body) = match peer {
        Peer::Tidewire => (
            format!("http://{addr}/v1/rooms/bench/events"),
            format!(r#"{{"type":"bench","data":{{"t":{t},"pad":"{PAD}"}}}}"#),
        ),
        _ => (
            format!("http://{addr}/publish"),
            format!(r#"{{"t":{t},"pad":"{PAD}"}}"#),
        ),
    };
    http.post(url)
        .header("content-type", "application/json")
        .body(body)
}

async fn publish_once(http: &reqwest::Client, peer: Peer, addr: SocketAddr) -> bool {
    match publish_request(http, peer, addr).send().await {
        Ok(r) => r.status().is_success(),
        Err(_) => false,
    }
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * q) as usize).min(sorted.len() - 1);
    sorted[i] as f64 / 1000.0
}

struct Phases {
    fanout: Duration,
    latency: Duration,
    settle: Duration,
    rate: u32,
    publishers: usize,
}

async fn measure(t: Target, n: usize, ph: &Phases, tidewire: &Path) -> Result<Measure, BenchError> {
    let server = start(t.peer, tidewire, 1024).await?;
    let addr = server.addr;
    let pid = server.pid();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss0 = rss_kib(pid);
    let shared = Arc::new(Shared::default());
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        set.spawn(clients::run(t.kind, addr, shared.clone()));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while shared.ready.load(Ordering::Relaxed) + shared.failed.load(Ordering::Relaxed) < n
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let connected = shared.ready.load(Ordering::Relaxed);
    tokio::time::sleep(ph.settle).await;
    let rss1 = rss_kib(pid);
    let mut m = Measure {
        connected,
        connects_per_s: connected as f64 / connect_secs,
        bytes_per_conn: (rss1.saturating_sub(rss0) * 1024) as f64 / connected.max(1) as f64,
        ..Measure::default()
    };

    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(10))
        .build()?;

    // Latency at a fixed publish rate.
    shared.recording.store(true, Ordering::Relaxed);
    let count = (ph.latency.as_secs_f64() * f64::from(ph.rate)).round() as usize;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(ph.rate)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pubs = tokio::task::JoinSet::new();
    for _ in 0..count {
        tick.tick().await;
        let h = http.clone();
        pubs.spawn(async move { publish_once(&h, t.peer, addr).await });
    }
    let mut ok = 0usize;
    while let Some(r) = pubs.join_next().await {
        ok += usize::from(r.unwrap_or(false));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    shared.recording.store(false, Ordering::Relaxed);
    let mut lat = std::mem::take(
        &mut *shared
            .latencies
            .lock()
            .map_err(|_| BenchError::Failed("latency samples lock poisoned".into()))?,
    );
    lat.sort_unstable();
    m.p50_ms = percentile(&lat, 0.50);
    m.p90_ms = percentile(&lat, 0.90);
    m.p99_ms = percentile(&lat, 0.99);
    m.max_ms = lat.last().map(|&v| v as f64 / 1000.0).unwrap_or(f64::NAN);
    m.latency_received = lat.len() as f64 / (ok.max(1) * connected.max(1)) as f64;

    // Fan-out: publish as fast as the server takes it.
    let d0 = shared.deliveries.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let end = t0 + ph.fanout;
    let mut pubs = tokio::task::JoinSet::new();
    for _ in 0..ph.publishers {
        let h = http.clone();
        pubs.spawn(async move {
            let mut ok = 0u64;
            while Instant::now() < end {
                ok += u64::from(publish_once(&h, t.peer, addr).await);
            }
            ok
        });
    }
    let mut published = 0u64;
    while let Some(r) = pubs.join_next().await {
        published += r.unwrap_or(0);
    }
    let secs = t0.elapsed().as_secs_f64();
    let d1 = shared.deliveries.load(Ordering::Relaxed);
    m.deliveries_per_s = (d1 - d0) as f64 / secs;
    m.publishes_per_s = published as f64 / secs;
    m.failed = shared.failed.load(Ordering::Relaxed);
    m.first_error = shared.first_error.lock().ok().and_then(|f| f.clone());

    set.abort_all();
    while set.join_next().await.is_some() {}
    stop(server).await;
    Ok(m)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn med(ms: &[Measure], f: impl Fn(&Measure) -> f64) -> f64 {
    let mut v: Vec<f64> = ms.iter().map(f).collect();
    median(&mut v)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.to_string()))
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let gib = mem
        .split_whitespace()
        .nth(1)
        .and_then(|k| k.parse::<f64>().ok())
        .map(|k| k / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    format!(
        "{cpu}, {cores} cores, {gib:.0} GiB RAM, Linux {}",
        kernel.trim()
    )
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() && b.is_finite() {
        format!("{:.2}×", a / b)
    } else {
        "n/a".into()
    }
}

fn report(results: &[(&'static str, usize, Vec<Measure>)], args: &AllArgs, ph: &Phases) -> String {
    let mut s = String::new();
    s.push_str(
        "| server | N | connected | deliveries/s | publishes/s | p50 ms | p90 ms | p99 ms | max ms | latency events received | server KiB/idle conn | connects/s |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for (name, n, ms) in results {
        s.push_str(&format!(
            "| {name} | {n} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} % | {:.1} | {:.0} |\n",
            med(ms, |m| m.connected as f64),
            med(ms, |m| m.deliveries_per_s),
            med(ms, |m| m.publishes_per_s),
            med(ms, |m| m.p50_ms),
            med(ms, |m| m.p90_ms),
            med(ms, |m| m.p99_ms),
            med(ms, |m| m.max_ms),
            med(ms, |m| m.latency_received * 100.0),
            med(ms, |m| m.bytes_per_conn / 1024.0),
            med(ms, |m| m.connects_per_s),
        ));
    }
    let get = |name: &str, n: usize, f: &dyn Fn(&Measure) -> f64| {
        results
            .iter()
            .find(|(x, y, _)| *x == name && *y == n)
            .map(|(_, _, ms)| med(ms, f))
            .unwrap_or(f64::NAN)
    };
    s.push_str("\n### Ratios (medians of the same run)\n\n| N | metric | Tidewire SSE / axum SSE | Tidewire WS / axum WS | Tidewire SSE / Socket.IO | Tidewire WS / Socket.IO |\n|---|---|---|---|---|---|\n");
    let mut ns: Vec<usize> = results.iter().map(|r| r.1).collect();
    ns.dedup();
    for n in ns {
        let d = |x: &str| get(x, n, &|m| m.deliveries_per_s);
        let p = |x: &str| get(x, n, &|m| m.p99_ms);
        s.push_str(&format!(
            "| {n} | fan-out deliveries/s (higher is better) | {} | {} | {} | {} |\n",
            ratio(d("tidewire-sse"), d("axum-sse")),
            ratio(d("tidewire-ws"), d("axum-ws")),
            ratio(d("tidewire-sse"), d("socketio-ws")),
            ratio(d("tidewire-ws"), d("socketio-ws")),
        ));
        s.push_str(&format!(
            "| {n} | p99 latency at {} publishes/s (lower is better) | {} | {} | {} | {} |\n",
            ph.rate,
            ratio(p("tidewire-sse"), p("axum-sse")),
            ratio(p("tidewire-ws"), p("axum-ws")),
            ratio(p("tidewire-sse"), p("socketio-ws")),
            ratio(p("tidewire-ws"), p("socketio-ws")),
        ));
    }
    s.push_str(&format!(
        "\nRuns: {} (medians shown); fan-out phase {:.0} s with {} concurrent HTTP publishers; latency phase {:.0} s at {} publishes/s; ~110-byte JSON payload. Machine: {}.\n",
        args.runs.unwrap_or(3),
        ph.fanout.as_secs_f64(),
        ph.publishers,
        ph.latency.as_secs_f64(),
        ph.rate,
        machine()
    ));
    s
}

async fn tidewire_bin(args: &AllArgs) -> Result<PathBuf, BenchError> {
    if let Some(b) = &args.tidewire_bin {
        return Ok(b.clone());
    }
    let root = repo_root();
    let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "build",
            "--release",
            "-p",
            "tidewire-server",
            "--bin",
            "tidewire",
        ])
        .current_dir(&root)
        .env_remove("CARGO_MANIFEST_DIR")
        .status()
        .await?;
    if !st.success() {
        return Err(BenchError::Failed("building tidewire failed".into()));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let target = if target.is_absolute() {
        target
    } else {
        root.join(target)
    };
    Ok(target.join("release/tidewire"))
}

async fn all(mut args: AllArgs) -> Result<(), BenchError> {
    let smoke = args.smoke;
    if args.subscribers.is_empty() {
        args.subscribers = vec![if smoke { 50 } else { 1000 }];
    }
    let runs = args.runs.unwrap_or(if smoke { 1 } else { 3 });
    args.runs = Some(runs);
    let ph = Phases {
        fanout: Duration::from_secs_f64(args.fanout_secs.unwrap_or(if smoke { 1.0 } else { 10.0 })),
        latency: Duration::from_secs_f64(args.latency_secs.unwrap_or(if smoke {
            1.0
        } else {
            5.0
        })),
        settle: Duration::from_millis(if smoke { 300 } else { 1000 }),
        rate: if smoke { args.rate.min(20) } else { args.rate }.max(1),
        publishers: args.publishers.max(1),
    };
    let bin = tidewire_bin(&args).await?;
    let targets: Vec<Target> = TARGETS
        .iter()
        .copied()
        .filter(|t| args.only.is_empty() || args.only.iter().any(|o| o == t.name))
        .collect();
    let mut results: Vec<(&'static str, usize, Vec<Measure>)> = Vec::new();
    for t in &targets {
        for &n in &args.subscribers {
            results.push((t.name, n, Vec::new()));
        }
    }
    // Runs interleave the targets so that machine noise spreads over all of them.
    for run in 0..runs {
        for t in &targets {
            for &n in &args.subscribers {
                let m = measure(*t, n, &ph, &bin).await?;
                eprintln!("run {run} {} N={n}: {m:?}", t.name);
                if let Some(r) = results.iter_mut().find(|r| r.0 == t.name && r.1 == n) {
                    r.2.push(m);
                }
            }
        }
    }
    let table = report(&results, &args, &ph);
    println!("{table}");
    if smoke {
        let mut bad = Vec::new();
        for (name, n, ms) in &results {
            for m in ms {
                if m.connected != *n || m.deliveries_per_s <= 0.0 || !m.p99_ms.is_finite() {
                    bad.push(format!("{name} N={n}: {m:?}"));
                }
            }
        }
        if !bad.is_empty() {
            return Err(BenchError::Failed(format!(
                "smoke check failed:\n{}",
                bad.join("\n")
            )));
        }
    }
    let out = match (&args.out, smoke) {
        (Some(o), _) => Some(o.clone()),
        (None, false) => Some(repo_root().join("docs/benchmarks.md")),
        (None, true) => None,
    };
    if let Some(out) = out {
        let path = repo_root().join("bench/REPORT-HEAD.md");
        let head = std::fs::read_to_string(&path).unwrap_or_default();
        let tail_path = repo_root().join("bench/REPORT-TAIL.md");
        let tail = std::fs::read_to_string(&tail_path).unwrap_or_default();
        std::fs::write(&out, format!("{head}\n{table}\n{tail}"))?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::All(a) => all(a).await,
        Cmd::Baseline { listen } => baseline::serve(listen).await,
    };
    if let Err(e) = r {
        eprintln!("tidewire-bench: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_medians_pick_the_right_sample() {
        let v: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 100.0);
        assert!(percentile(&[], 0.5).is_nan());
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(ratio(4.0, 2.0), "2.00×");
        assert_eq!(ratio(1.0, 0.0), "n/a");
    }
}

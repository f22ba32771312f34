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
//! publish rate, and fan-out deliveries/s while publishing as fast as the server sustains. The
//! subscribers live in worker processes (this binary, `worker` subcommand), at most
//! `--per-worker` each, each worker on its own 127.0.0.x source address. Then a reconnect storm
//! ([`storm`]) restarts Tidewire under N clients and checks that nothing is lost.

mod baseline;
mod clients;
mod histogram;
mod pool;
mod proto;
mod seqcheck;
mod servers;
mod simulate;
mod sse;
mod storm;
mod worker;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use clients::{now_micros, Kind};
use pool::Pool;
use servers::{repo_root, rss_kib, Peer};
use storm::{StormConfig, StormReport};
use tokio::process::Command;

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
    /// A worker process sent or got something unexpected.
    #[error("worker protocol: {0}")]
    Protocol(String),
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
    /// Model N nodes (10 to 1,000) and M connections (to 10 million) and print the
    /// single-channel bus against the interest-based one (pure computation, see `simulate`).
    Simulate(simulate::SimArgs),
    /// Hold a share of the clients and answer the generator on stdin/stdout (started by `all`).
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
}

#[derive(clap::Args, Clone)]
struct AllArgs {
    /// Small N and short phases: checks the benchmark works (≈20 s); writes no report.
    #[arg(long)]
    smoke: bool,
    /// Subscriber counts, comma-separated (default 1000,10000; smoke 60).
    #[arg(long, value_delimiter = ',')]
    subscribers: Vec<usize>,
    /// Clients per worker process (default 10000; smoke 30, so that it uses several).
    #[arg(long)]
    per_worker: Option<usize>,
    /// Repeated runs; the report gives medians (default 3; smoke 1).
    #[arg(long)]
    runs: Option<usize>,
    /// Seconds of flat-out publishing for fan-out throughput (default 4; smoke 1).
    #[arg(long)]
    fanout_secs: Option<f64>,
    /// Seconds of fixed-rate publishing for latency (default 3; smoke 1).
    #[arg(long)]
    latency_secs: Option<f64>,
    /// Publishes per second in the latency phase up to 1,000 subscribers.
    #[arg(long, default_value_t = 100)]
    rate: u32,
    /// Publishes per second in the latency phase above 1,000 subscribers.
    #[arg(long, default_value_t = 2)]
    rate_large: u32,
    /// Reconnect-storm clients (default 15000; smoke 300); 0 skips the storm.
    #[arg(long)]
    storm_clients: Option<usize>,
    /// Publishes per second during the storm, over its 10 rooms.
    #[arg(long, default_value_t = 20)]
    storm_rate: u32,
    /// Concurrent publishers in the fan-out phase.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// The `tidewire` binary; built with `cargo build --release -p tidewire-server` when absent.
    #[arg(long)]
    tidewire_bin: Option<PathBuf>,
    /// Where to write the report (default docs/benchmarks.md; smoke writes none unless given).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Only these targets (e.g. tidewire-sse,axum-sse,storm).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
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
    rate: u32,
    first_error: Option<String>,
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

struct Phases {
    fanout: Duration,
    latency: Duration,
    settle: Duration,
    rate: u32,
    rate_large: u32,
    publishers: usize,
    per_worker: usize,
}

impl Phases {
    /// The latency phase's publish rate at `n` subscribers.
    fn rate_at(&self, n: usize) -> u32 {
        if n <= 1000 {
            self.rate
        } else {
            self.rate_large
        }
        .max(1)
    }
}

async fn measure(t: Target, n: usize, ph: &Phases, tidewire: &Path) -> Result<Measure, BenchError> {
    let server = servers::start(t.peer, tidewire, n).await?;
    let r = measure_on(&server, t, n, ph).await;
    servers::stop(server).await;
    r
}

async fn measure_on(
    server: &servers::Server,
    t: Target,
    n: usize,
    ph: &Phases,
) -> Result<Measure, BenchError> {
    let addr = server.addr;
    let pid = server.pid();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss0 = rss_kib(pid);
    let started = Instant::now();
    let mut pool = Pool::spawn(t.kind, addr, n, ph.per_worker, None)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut st = pool.status().await?;
    while st.ready + st.failed < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        st = pool.status().await?;
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let connected = st.ready;
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
    pool.record(true).await?;
    let rate = ph.rate_at(n);
    m.rate = rate;
    let count = (ph.latency.as_secs_f64() * f64::from(rate)).round() as usize;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
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
    // Let the backlog drain (bounded) so that it neither misses from the latency samples nor
    // counts in the fan-out phase.
    let expected = (ok * connected) as u64;
    let drain_until = Instant::now() + Duration::from_secs(10);
    let mut last = pool.status().await?.deliveries;
    while last < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = pool.status().await?.deliveries;
        if now == last {
            break;
        }
        last = now;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    pool.record(false).await?;
    let lat = pool.latency().await?;
    m.p50_ms = lat.percentile_ms(0.50);
    m.p90_ms = lat.percentile_ms(0.90);
    m.p99_ms = lat.percentile_ms(0.99);
    m.max_ms = lat.max_ms();
    m.latency_received = lat.len() as f64 / (ok.max(1) * connected.max(1)) as f64;

    // Fan-out: publish as fast as the server takes it.
    let d0 = pool.status().await?.deliveries;
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
    let st = pool.status().await?;
    let secs = t0.elapsed().as_secs_f64();
    m.deliveries_per_s = st.deliveries.saturating_sub(d0) as f64 / secs;
    m.publishes_per_s = published as f64 / secs;
    m.failed = st.failed;
    m.first_error = st.first_error;
    pool.quit().await;
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
    if results.is_empty() {
        return s;
    }
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
    ns.sort_unstable();
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
            ph.rate_at(n),
            ratio(p("tidewire-sse"), p("axum-sse")),
            ratio(p("tidewire-ws"), p("axum-ws")),
            ratio(p("tidewire-sse"), p("socketio-ws")),
            ratio(p("tidewire-ws"), p("socketio-ws")),
        ));
    }
    s.push_str(&format!(
        "\nRuns: {} (medians shown); fan-out phase {:.0} s with {} concurrent HTTP publishers; latency phase {:.0} s ({}); ~110-byte JSON payload; subscribers in worker processes of at most {} clients, each on its own 127.0.0.x source address. Machine: {}.\n",
        args.runs.unwrap_or(3),
        ph.fanout.as_secs_f64(),
        ph.publishers,
        ph.latency.as_secs_f64(),
        args.subscribers
            .iter()
            .map(|&n| format!("{}/s at N={n}", ph.rate_at(n)))
            .collect::<Vec<_>>()
            .join(", "),
        ph.per_worker,
        machine()
    ));
    s
}

fn storm_report(r: &StormReport, cfg: &StormConfig) -> String {
    let mut hist = String::new();
    for (sec, c) in r.result.resumed_per_second.iter().enumerate() {
        hist.push_str(&format!("| {sec}–{} s | {c} |\n", sec + 1));
    }
    format!(
        "\n### Reconnect storm\n\n{} Tidewire SSE clients over {} rooms ({} worker processes), a steady {} publishes/s; SIGTERM, the server drains (window {} ms, `reconnect` delays spread over it) and exits, a new process starts on the same port and SQLite file. Each client checks `seq` contiguity of its room over the whole run and must end at the last `seq` acknowledged to the publisher.\n\n| clients subscribed | resumed on the new process | time to all resumed (from SIGTERM) | new process listening after | events acknowledged | events received (all clients) | lost | duplicated | clients complete |\n|---|---|---|---|---|---|---|---|---|\n| {} | {} | {:.1} s | {:.1} s | {} | {} | {} | {} | {} |\n\nClients resumed per second after SIGTERM:\n\n| second | clients |\n|---|---|\n{hist}{}",
        cfg.clients,
        cfg.rooms,
        r.workers,
        cfg.rate,
        cfg.drain_ms,
        r.connected,
        r.result.resumed,
        r.all_resumed_s(),
        r.restart_ms as f64 / 1000.0,
        r.acked,
        r.result.received,
        r.result.lost,
        r.result.duplicated,
        r.result.complete,
        match (&r.first_error, r.unacked_in_log) {
            (None, 0) => String::new(),
            (e, u) => format!(
                "\nNotes: {}{}\n",
                e.as_deref().map(|e| format!("first client error: {e}. ")).unwrap_or_default(),
                if u > 0 { format!("{u} events in the log were never acknowledged to the publisher (an answer lost in the restart); the clients count them as expected.") } else { String::new() }
            ),
        }
    )
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
        args.subscribers = if smoke { vec![60] } else { vec![1000, 10_000] };
    }
    let runs = args.runs.unwrap_or(if smoke { 1 } else { 3 });
    args.runs = Some(runs);
    let ph = Phases {
        fanout: Duration::from_secs_f64(args.fanout_secs.unwrap_or(if smoke { 1.0 } else { 4.0 })),
        latency: Duration::from_secs_f64(args.latency_secs.unwrap_or(if smoke {
            1.0
        } else {
            3.0
        })),
        settle: Duration::from_millis(if smoke { 300 } else { 1000 }),
        rate: if smoke { args.rate.min(20) } else { args.rate }.max(1),
        rate_large: args.rate_large.max(1),
        publishers: args.publishers.max(1),
        per_worker: args
            .per_worker
            .unwrap_or(if smoke { 30 } else { 10_000 })
            .max(1),
    };
    let storm_clients = args
        .storm_clients
        .unwrap_or(if smoke { 300 } else { 15_000 });
    let storm_cfg = StormConfig {
        clients: storm_clients,
        per_worker: if smoke { 150 } else { ph.per_worker },
        rooms: 10,
        rate: args.storm_rate.max(1),
        before: Duration::from_secs(if smoke { 1 } else { 3 }),
        after: Duration::from_secs(2),
        drain_ms: 5000,
    };
    let run_storm =
        storm_clients > 0 && (args.only.is_empty() || args.only.iter().any(|o| o == "storm"));
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
    let storm = if run_storm {
        let r = storm::run(&storm_cfg, &bin).await?;
        eprintln!("storm: {r:?}");
        Some(r)
    } else {
        None
    };
    let mut table = report(&results, &args, &ph);
    if let Some(r) = &storm {
        table.push_str(&storm_report(r, &storm_cfg));
    }
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
        if let Some(r) = &storm {
            if !r.clean() {
                bad.push(format!("storm: {r:?}"));
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
        Cmd::Worker(w) => worker::serve(w).await,
        Cmd::Simulate(a) => {
            simulate::run(&a);
            Ok(())
        }
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
    fn medians_ratios_and_latency_rates() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(ratio(4.0, 2.0), "2.00×");
        assert_eq!(ratio(1.0, 0.0), "n/a");
        let ph = Phases {
            fanout: Duration::ZERO,
            latency: Duration::ZERO,
            settle: Duration::ZERO,
            rate: 100,
            rate_large: 2,
            publishers: 1,
            per_worker: 1,
        };
        assert_eq!(ph.rate_at(1000), 100);
        assert_eq!(ph.rate_at(10_000), 2);
        assert_eq!(ph.rate_at(60), 100);
    }
}

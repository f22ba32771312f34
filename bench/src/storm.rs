//! The reconnect storm: N Tidewire SSE clients (spread over worker processes) receive a steady
//! stream of events in a few rooms while the server is restarted gracefully (SIGTERM: it sends
//! every connection `reconnect` with a delay spread over its drain window, exits, and a new
//! process starts on the same port and SQLite file). Measured: the time until every client has
//! resumed on the new process, resumes per second, and per client the events lost and
//! duplicated over the whole run (each client checks `seq` contiguity of its room, and ends at
//! the last `seq` acknowledged to the publisher).
//!
//! ```text
//! // generator side
//! let r = storm::run(&cfg, &tidewire_bin).await?;   // r.result.lost == 0, r.all_resumed_s
//! // worker side (started by the pool): Fleet::new(first, n, rooms).start(addr, src, permits)
//! ```

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::clients::{connect_from, now_micros, Kind};
use crate::histogram::per_second;
use crate::pool::Pool;
use crate::proto::{Status, StormResult};
use crate::seqcheck::SeqCheck;
use crate::servers::{self, Tidewire};
use crate::sse::{json_number, SseReader};
use crate::BenchError;

/// Reconnection attempts after a failure before a client gives up (≈ one minute).
const ATTEMPTS: u32 = 300;

/// The room of client `i`.
pub fn room(i: usize, rooms: usize) -> String {
    format!("storm-{}", i % rooms.max(1))
}

/// What one client saw.
#[derive(Default)]
struct Track {
    check: SeqCheck,
    last_id: Option<String>,
    /// When each of its streams started (first event received), µs since the epoch.
    starts: Vec<u64>,
}

/// A worker's storm clients.
pub struct Fleet {
    first: usize,
    rooms: usize,
    tracks: Vec<Mutex<Track>>,
    ready: AtomicUsize,
    failed: AtomicUsize,
    deliveries: AtomicU64,
    first_error: Mutex<Option<String>>,
    /// A stream that starts after this (µs since the epoch) is with the restarted server.
    pub resume_after: AtomicU64,
}

impl Fleet {
    /// Clients `first .. first + n` over `rooms` rooms.
    pub fn new(first: usize, n: usize, rooms: usize) -> Arc<Fleet> {
        Arc::new(Fleet {
            first,
            rooms,
            tracks: (0..n).map(|_| Mutex::new(Track::default())).collect(),
            ready: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            deliveries: AtomicU64::new(0),
            first_error: Mutex::new(None),
            resume_after: AtomicU64::new(u64::MAX),
        })
    }

    /// Connects every client (at most `connecting`'s permits at a time).
    pub fn start(self: Arc<Self>, addr: SocketAddr, source: IpAddr, connecting: Arc<Semaphore>) {
        tokio::spawn(async move {
            for i in 0..self.tracks.len() {
                let Ok(p) = connecting.clone().acquire_owned().await else {
                    return;
                };
                tokio::spawn(self.clone().client(i, addr, source, p));
            }
        });
    }

    fn track(&self, i: usize) -> std::sync::MutexGuard<'_, Track> {
        self.tracks[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counters for `status`.
    pub fn status(&self) -> Status {
        let after = self.resume_after.load(Ordering::Relaxed);
        let resumed = (0..self.tracks.len())
            .filter(|&i| self.track(i).starts.iter().any(|&t| t > after))
            .count();
        Status {
            ready: self.ready.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            deliveries: self.deliveries.load(Ordering::Relaxed),
            resumed,
            first_error: self.first_error.lock().ok().and_then(|f| f.clone()),
        }
    }

    /// Waits (up to `wait_ms`) until every client reached its room's head, then counts.
    pub async fn finish(
        &self,
        sigterm_us: u64,
        wait_ms: u64,
        heads: &[(String, u64)],
    ) -> StormResult {
        let heads: BTreeMap<&str, u64> = heads.iter().map(|(r, s)| (r.as_str(), *s)).collect();
        let head = |i: usize| {
            heads
                .get(room(self.first + i, self.rooms).as_str())
                .copied()
                .unwrap_or(0)
        };
        let deadline = Instant::now() + Duration::from_millis(wait_ms);
        while Instant::now() < deadline
            && (0..self.tracks.len()).any(|i| self.track(i).check.last() < head(i))
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let after = self.resume_after.load(Ordering::Relaxed);
        let mut r = StormResult {
            clients: self.tracks.len(),
            ..StormResult::default()
        };
        let mut resumes = Vec::new();
        for i in 0..self.tracks.len() {
            let t = self.track(i);
            let h = head(i);
            r.complete += usize::from(t.check.last() >= h);
            r.lost += t.check.lost_at(h);
            r.duplicated += t.check.duplicated();
            r.received += t.check.received();
            if let Some(&s) = t.starts.iter().find(|&&s| s > after) {
                resumes.push(s.saturating_sub(sigterm_us) / 1000);
            }
        }
        r.resumed = resumes.len();
        r.last_resume_ms = resumes.iter().copied().max().unwrap_or(0);
        r.resumed_per_second = per_second(resumes);
        r
    }

    fn fail(&self, e: &BenchError) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut f) = self.first_error.lock() {
            f.get_or_insert_with(|| e.to_string());
        }
    }

    /// One client: stream, follow `reconnect`, retry failures, until it gives up.
    async fn client(
        self: Arc<Self>,
        i: usize,
        addr: SocketAddr,
        source: IpAddr,
        permit: OwnedSemaphorePermit,
    ) {
        let mut permit = Some(permit);
        let mut failures = 0;
        let jitter = ((self.first + i) * 37 % 100) as u64;
        loop {
            match self.stream(i, addr, source, &mut permit).await {
                Ok((retry_ms, started)) => {
                    if started {
                        failures = 0;
                    }
                    tokio::time::sleep(Duration::from_millis(retry_ms.unwrap_or(200 + jitter)))
                        .await;
                }
                Err(e) => {
                    failures += 1;
                    if failures >= ATTEMPTS {
                        self.fail(&e);
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(200 + jitter)).await;
                }
            }
        }
    }

    /// One connection. Returns the `reconnect` delay if the server sent one, and whether the
    /// stream started.
    async fn stream(
        &self,
        i: usize,
        addr: SocketAddr,
        source: IpAddr,
        permit: &mut Option<OwnedSemaphorePermit>,
    ) -> Result<(Option<u64>, bool), BenchError> {
        let room = room(self.first + i, self.rooms);
        let last_id = self.track(i).last_id.clone();
        let resume = match last_id {
            Some(id) => format!("Last-Event-ID: {id}\r\n"),
            None => String::new(),
        };
        let mut s = connect_from(source, addr).await?;
        let req = format!(
            "GET /v1/sse?rooms={room}&since={room}%3D0 HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n{resume}\r\n"
        );
        s.write_all(req.as_bytes()).await?;
        let mut reader = SseReader::default();
        let mut chunk = vec![0u8; 8 * 1024];
        let mut head = Vec::new();
        let mut started = false;
        // The status line and headers first.
        let body_start = loop {
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Err(BenchError::Closed);
            }
            head.extend_from_slice(&chunk[..n]);
            if let Some(p) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                if !head.starts_with(b"HTTP/1.1 200") {
                    return Err(BenchError::Status(
                        String::from_utf8_lossy(&head[..head.len().min(80)]).into_owned(),
                    ));
                }
                break p + 4;
            }
            if head.len() > 16 * 1024 {
                return Err(BenchError::Status("response head too long".into()));
            }
        };
        let mut pending = head.split_off(body_start);
        loop {
            for ev in reader.feed(&pending) {
                if !started {
                    started = true;
                    self.track(i).starts.push(now_micros());
                    if permit.take().is_some() {
                        self.ready.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let Some(data) = &ev.data else {
                    if let Some(id) = ev.id {
                        self.track(i).last_id = Some(id);
                    }
                    continue;
                };
                if data.contains(r#""type":"reconnect""#) {
                    return Ok((Some(json_number(data, "retry_ms").unwrap_or(1000)), started));
                }
                if let Some(seq) = json_number(data, "seq") {
                    let mut t = self.track(i);
                    t.check.observe(seq);
                    if let Some(id) = ev.id {
                        t.last_id = Some(id);
                    }
                    self.deliveries.fetch_add(1, Ordering::Relaxed);
                }
            }
            let n = s.read(&mut chunk).await?;
            if n == 0 {
                return Ok((None, started));
            }
            pending.clear();
            pending.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Settings of one storm.
#[derive(Clone, Debug)]
pub struct StormConfig {
    /// Clients.
    pub clients: usize,
    /// Clients per worker process.
    pub per_worker: usize,
    /// Rooms the clients are spread over.
    pub rooms: usize,
    /// Publishes per second, over all rooms, for the whole run.
    pub rate: u32,
    /// Publishing before the restart.
    pub before: Duration,
    /// Publishing after every client resumed.
    pub after: Duration,
    /// The server's drain window.
    pub drain_ms: u64,
}

/// What a storm measured.
#[derive(Clone, Debug, Default)]
pub struct StormReport {
    /// The settings.
    pub clients: usize,
    /// Worker processes used.
    pub workers: usize,
    /// Clients subscribed before the restart.
    pub connected: usize,
    /// From SIGTERM until the new process listened.
    pub restart_ms: u64,
    /// Publishes acknowledged.
    pub acked: u64,
    /// Events in the rooms' logs that no publish acknowledged (a write that committed while
    /// its answer was lost).
    pub unacked_in_log: u64,
    /// The clients' counts.
    pub result: StormResult,
    /// The first client failure, if any.
    pub first_error: Option<String>,
}

impl StormReport {
    /// Seconds from SIGTERM until the last client resumed.
    pub fn all_resumed_s(&self) -> f64 {
        self.result.last_resume_ms as f64 / 1000.0
    }

    /// Every client resumed and ended at its room's head with nothing lost or duplicated.
    pub fn clean(&self) -> bool {
        self.connected == self.clients
            && self.result.resumed == self.clients
            && self.result.complete == self.clients
            && self.result.lost == 0
            && self.result.duplicated == 0
    }
}

/// Publishes `count`-th event: retried (same `Idempotency-Key`) until acknowledged or `until`.
async fn publish(
    http: &reqwest::Client,
    addr: SocketAddr,
    room: &str,
    k: u64,
    until: Instant,
) -> Option<u64> {
    let url = format!("http://{addr}/v1/rooms/{room}/events");
    let body = format!(r#"{{"type":"storm","data":{{"n":{k}}}}}"#);
    while Instant::now() < until {
        let r = http
            .post(&url)
            .header("content-type", "application/json")
            .header("idempotency-key", format!("storm-{k}"))
            .body(body.clone())
            .send()
            .await;
        if let Ok(r) = r {
            if r.status().is_success() {
                if let Ok(text) = r.text().await {
                    if let Some(seq) = json_number(&text, "seq") {
                        return Some(seq);
                    }
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Runs one storm against a fresh Tidewire.
pub async fn run(cfg: &StormConfig, bin: &Path) -> Result<StormReport, BenchError> {
    let mut tw = Tidewire::start(bin, cfg.clients, cfg.drain_ms).await?;
    let addr = tw.addr;
    let mut pool = Pool::spawn(
        Kind::TidewireSse,
        addr,
        cfg.clients,
        cfg.per_worker,
        Some(cfg.rooms),
    )?;
    let mut report = StormReport {
        clients: cfg.clients,
        workers: pool.len(),
        ..StormReport::default()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = pool.status().await?;
        report.connected = s.ready;
        report.first_error = s.first_error;
        if s.ready + s.failed >= cfg.clients || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "storm: {} of {} clients subscribed over {} workers",
        report.connected,
        cfg.clients,
        pool.len()
    );

    // A steady stream for the whole run; each publish retries through the restart.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let stop = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (stop, http, rate, rooms) = (stop.clone(), http.clone(), cfg.rate.max(1), cfg.rooms);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
            let mut sent = tokio::task::JoinSet::new();
            let mut k = 0u64;
            // Bounded: the run stops it; 10 minutes at most in any case.
            while stop.load(Ordering::Relaxed) == 0 && k < u64::from(rate) * 600 {
                tick.tick().await;
                let (http, r) = (http.clone(), room(k as usize, rooms));
                let until = Instant::now() + Duration::from_secs(60);
                sent.spawn(async move { (r.clone(), publish(&http, addr, &r, k, until).await) });
                k += 1;
            }
            let mut acked: BTreeMap<String, Vec<u64>> = BTreeMap::new();
            while let Some(j) = sent.join_next().await {
                if let Ok((r, Some(seq))) = j {
                    acked.entry(r).or_default().push(seq);
                }
            }
            acked
        })
    };
    tokio::time::sleep(cfg.before).await;

    let sigterm_us = now_micros();
    let t0 = Instant::now();
    tw.terminate().await?;
    tw.wait_exit(Duration::from_millis(cfg.drain_ms + 10_000))
        .await?;
    let new_us = now_micros();
    pool.resume_after(new_us).await?;
    tw.restart().await?;
    report.restart_ms = t0.elapsed().as_millis() as u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = pool.status().await?;
        if s.resumed + s.failed >= cfg.clients || Instant::now() > deadline {
            report.first_error = report.first_error.or(s.first_error);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(cfg.after).await;
    stop.store(1, Ordering::Relaxed);
    let acked = publisher
        .await
        .map_err(|e| BenchError::Failed(format!("publisher: {e}")))?;
    let mut heads = Vec::new();
    for (r, seqs) in &acked {
        let head = seqs.iter().copied().max().unwrap_or(0);
        report.acked += seqs.len() as u64;
        report.unacked_in_log += head.saturating_sub(seqs.len() as u64);
        heads.push((r.clone(), head));
    }
    report.result = pool
        .storm_final(sigterm_us, Duration::from_secs(30), heads)
        .await?;
    pool.quit().await;
    servers::stop_tidewire(tw).await;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_spread_over_rooms_and_a_clean_storm_needs_everything() {
        assert_eq!(room(0, 10), "storm-0");
        assert_eq!(room(13, 10), "storm-3");
        assert_eq!(room(5, 0), "storm-0");
        let mut r = StormReport {
            clients: 2,
            connected: 2,
            result: StormResult {
                clients: 2,
                complete: 2,
                resumed: 2,
                ..StormResult::default()
            },
            ..StormReport::default()
        };
        assert!(r.clean());
        r.result.duplicated = 1;
        assert!(!r.clean());
        r.result.duplicated = 0;
        r.result.resumed = 1;
        assert!(!r.clean());
    }
}

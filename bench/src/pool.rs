//! The generator's side of its worker processes: N clients are spread over ⌈N / per-worker⌉
//! copies of this binary (`tidewire-bench worker …`), each with its own loopback source address
//! (127.0.0.2, .3, …), so that neither a process's open-file limit nor one address's ephemeral
//! ports bound N. Commands and replies follow [`crate::proto`].
//!
//! ```text
//! let mut pool = Pool::spawn(Kind::TidewireSse, addr, 15_000, 10_000, None)?;   // 2 workers
//! let s = pool.status().await?;                                                 // summed
//! pool.quit().await;
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command as Process};

use crate::clients::Kind;
use crate::histogram::LatencyHistogram;
use crate::proto::{Command, Reply, Status, StormResult};
use crate::BenchError;

struct Worker {
    child: Child,
    stdin: ChildStdin,
    out: Lines<BufReader<ChildStdout>>,
}

/// Running workers.
pub struct Pool {
    workers: Vec<Worker>,
}

/// How `n` clients split over workers of at most `per_worker`: (first index, count) each.
pub fn split(n: usize, per_worker: usize) -> Vec<(usize, usize)> {
    let w = n.div_ceil(per_worker.max(1)).max(1);
    let mut first = 0;
    (0..w)
        .map(|i| {
            let count = n / w + usize::from(i < n % w);
            let part = (first, count);
            first += count;
            part
        })
        .collect()
}

/// Source addresses handed out so far in this process: each worker of each pool gets the next
/// one, so a pool never binds an address whose ports a previous pool left in TIME_WAIT (60 s,
/// ~10,000 of them after a 10,000-client phase; an address has ~28,000 ephemeral ports).
static NEXT_SOURCE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The source address of worker `i`: 127.0.0.2 upwards (127.0.0.1 is left to the servers),
/// wrapping after 250.
pub fn source(i: usize) -> IpAddr {
    let i = (i % 250) as u8;
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i))
}

impl Pool {
    /// Starts the workers; `storm_rooms` puts them in reconnect-storm mode.
    pub fn spawn(
        kind: Kind,
        addr: SocketAddr,
        n: usize,
        per_worker: usize,
        storm_rooms: Option<usize>,
    ) -> Result<Pool, BenchError> {
        let exe = std::env::current_exe()?;
        let mut workers = Vec::new();
        for (first, count) in split(n, per_worker) {
            let i = NEXT_SOURCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut p = Process::new(&exe);
            p.args(["worker", "--kind", kind.name()])
                .args(["--addr", &addr.to_string()])
                .args(["--clients", &count.to_string()])
                .args(["--first", &first.to_string()])
                .args(["--source", &source(i).to_string()]);
            if let Some(r) = storm_rooms {
                p.args(["--storm-rooms", &r.to_string()]);
            }
            let mut child = p
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                return Err(BenchError::Failed("worker pipes missing".into()));
            };
            workers.push(Worker {
                child,
                stdin,
                out: BufReader::new(stdout).lines(),
            });
        }
        Ok(Pool { workers })
    }

    /// Number of worker processes.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Sends `c` to every worker, then reads each one's reply (bounded by `within`).
    async fn ask(&mut self, c: &Command, within: Duration) -> Result<Vec<Reply>, BenchError> {
        let line = c.line();
        for w in &mut self.workers {
            w.stdin.write_all(line.as_bytes()).await?;
            w.stdin.flush().await?;
        }
        let mut replies = Vec::new();
        for w in &mut self.workers {
            let next = tokio::time::timeout(within, w.out.next_line())
                .await
                .map_err(|_| BenchError::Protocol(format!("no reply to {:?}", line.trim())))??;
            let text = next.ok_or_else(|| BenchError::Protocol("a worker exited".into()))?;
            replies.push(Reply::parse(&text)?);
        }
        Ok(replies)
    }

    /// Counters summed over the workers.
    pub async fn status(&mut self) -> Result<Status, BenchError> {
        let mut s = Status::default();
        for r in self.ask(&Command::Status, Duration::from_secs(30)).await? {
            match r {
                Reply::Status(x) => s.add(&x),
                other => return Err(unexpected(&other)),
            }
        }
        Ok(s)
    }

    /// Starts or stops latency recording.
    pub async fn record(&mut self, on: bool) -> Result<(), BenchError> {
        self.ask(&Command::Record(on), Duration::from_secs(30))
            .await
            .map(drop)
    }

    /// Latency samples since the last call, merged.
    pub async fn latency(&mut self) -> Result<LatencyHistogram, BenchError> {
        let mut h = LatencyHistogram::default();
        for r in self.ask(&Command::Latency, Duration::from_secs(30)).await? {
            match r {
                Reply::Latency { pairs, max_us } => {
                    h.merge(&LatencyHistogram::from_pairs(&pairs, max_us))
                }
                other => return Err(unexpected(&other)),
            }
        }
        Ok(h)
    }

    /// Storm: streams started after `t_us` count as resumed on the new server.
    pub async fn resume_after(&mut self, t_us: u64) -> Result<(), BenchError> {
        self.ask(&Command::ResumeAfter(t_us), Duration::from_secs(30))
            .await
            .map(drop)
    }

    /// Storm: every worker's result, summed.
    pub async fn storm_final(
        &mut self,
        sigterm_us: u64,
        wait: Duration,
        heads: Vec<(String, u64)>,
    ) -> Result<StormResult, BenchError> {
        let c = Command::Final {
            sigterm_us,
            wait_ms: wait.as_millis() as u64,
            heads,
        };
        let mut total = StormResult::default();
        for r in self.ask(&c, wait + Duration::from_secs(30)).await? {
            match r {
                Reply::Storm(x) => total.add(&x),
                other => return Err(unexpected(&other)),
            }
        }
        Ok(total)
    }

    /// Asks every worker to quit; kills those that do not within a few seconds.
    pub async fn quit(mut self) {
        let _ = self.ask(&Command::Quit, Duration::from_secs(10)).await;
        for w in &mut self.workers {
            if tokio::time::timeout(Duration::from_secs(10), w.child.wait())
                .await
                .is_err()
            {
                let _ = w.child.kill().await;
            }
        }
    }
}

fn unexpected(r: &Reply) -> BenchError {
    BenchError::Protocol(format!("unexpected reply {r:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_split_evenly_and_sources_differ() {
        assert_eq!(split(10, 10_000), vec![(0, 10)]);
        assert_eq!(split(15_000, 10_000), vec![(0, 7_500), (7_500, 7_500)]);
        assert_eq!(split(7, 3), vec![(0, 3), (3, 2), (5, 2)]);
        assert_eq!(split(0, 5), vec![(0, 0)]);
        assert_eq!(source(0).to_string(), "127.0.0.2");
        assert_eq!(source(3).to_string(), "127.0.0.5");
    }
}

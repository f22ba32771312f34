//! A worker process (`tidewire-bench worker …`, started by [`crate::pool::Pool`]): holds its
//! share of the clients and answers the generator's commands ([`crate::proto`]) on stdin and
//! stdout until `quit` or until stdin closes.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::Semaphore;

use crate::clients::{self, Kind, Shared};
use crate::proto::{Command, Reply, Status};
use crate::storm::Fleet;
use crate::BenchError;

/// Connection attempts in flight per worker: enough to measure the server's accept rate, few
/// enough to stay inside the listen backlog.
const CONNECTING: usize = 256;

/// The worker's command line.
#[derive(clap::Args, Clone, Debug)]
pub struct WorkerArgs {
    /// Target name (tidewire-sse, tidewire-ws, axum-sse, axum-ws, socketio-ws).
    #[arg(long)]
    kind: String,
    /// The server.
    #[arg(long)]
    addr: SocketAddr,
    /// Clients in this worker.
    #[arg(long)]
    clients: usize,
    /// Index of this worker's first client over all workers (picks storm rooms).
    #[arg(long, default_value_t = 0)]
    first: usize,
    /// Loopback source address of every client socket.
    #[arg(long)]
    source: IpAddr,
    /// Reconnect-storm mode: Tidewire SSE clients over this many rooms, checking `seq`.
    #[arg(long)]
    storm_rooms: Option<usize>,
}

enum Mode {
    Load(Arc<Shared>),
    Storm(Arc<Fleet>),
}

/// Runs the worker until `quit`.
pub async fn serve(a: WorkerArgs) -> Result<(), BenchError> {
    let kind = Kind::from_name(&a.kind)
        .ok_or_else(|| BenchError::Failed(format!("unknown target {}", a.kind)))?;
    let connecting = Arc::new(Semaphore::new(CONNECTING));
    let mode = match a.storm_rooms {
        None => {
            let shared = Arc::new(Shared::default());
            let s = shared.clone();
            tokio::spawn(async move {
                for _ in 0..a.clients {
                    let Ok(p) = connecting.clone().acquire_owned().await else {
                        return;
                    };
                    tokio::spawn(clients::run(kind, a.addr, a.source, s.clone(), p));
                }
            });
            Mode::Load(shared)
        }
        Some(rooms) => {
            if kind != Kind::TidewireSse {
                return Err(BenchError::Failed(
                    "the storm runs tidewire-sse clients".into(),
                ));
            }
            let fleet = Fleet::new(a.first, a.clients, rooms.max(1));
            fleet.clone().start(a.addr, a.source, connecting);
            Mode::Storm(fleet)
        }
    };
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut out = tokio::io::stdout();
    while let Some(line) = lines.next_line().await? {
        let cmd = Command::parse(&line);
        let quit = matches!(cmd, Ok(Command::Quit));
        let reply = match cmd {
            Ok(c) => answer(c, &mode).await,
            Err(e) => Reply::Error {
                message: e.to_string(),
            },
        };
        out.write_all(reply.line().as_bytes()).await?;
        out.flush().await?;
        if quit {
            break;
        }
    }
    Ok(())
}

async fn answer(c: Command, mode: &Mode) -> Reply {
    match (c, mode) {
        (Command::Quit, _) => Reply::Ok,
        (Command::Status, Mode::Load(s)) => Reply::Status(Status {
            ready: s.ready.load(Ordering::Relaxed),
            failed: s.failed.load(Ordering::Relaxed),
            deliveries: s.deliveries.load(Ordering::Relaxed),
            resumed: 0,
            first_error: s.first_error.lock().ok().and_then(|f| f.clone()),
        }),
        (Command::Status, Mode::Storm(f)) => Reply::Status(f.status()),
        (Command::Record(on), Mode::Load(s)) => {
            s.recording.store(on, Ordering::Relaxed);
            Reply::Ok
        }
        (Command::Latency, Mode::Load(s)) => match s.latencies.lock() {
            Ok(mut l) => {
                let h = std::mem::take(&mut *l);
                Reply::Latency {
                    pairs: h.pairs(),
                    max_us: h.max_us(),
                }
            }
            Err(_) => Reply::Error {
                message: "latency lock poisoned".into(),
            },
        },
        (Command::ResumeAfter(t), Mode::Storm(f)) => {
            f.resume_after.store(t, Ordering::Relaxed);
            Reply::Ok
        }
        (
            Command::Final {
                sigterm_us,
                wait_ms,
                heads,
            },
            Mode::Storm(f),
        ) => Reply::Storm(f.finish(sigterm_us, wait_ms, &heads).await),
        (c, _) => Reply::Error {
            message: format!("{c:?} does not apply to this worker's mode"),
        },
    }
}

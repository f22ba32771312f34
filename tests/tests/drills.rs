//! Failure drills: break a real `tidewire` process on purpose and show, by counting, that no
//! acknowledged event is lost and none is delivered twice.
//!
//! Every drill prints one line of counts:
//! `[drill name] sent=… acknowledged=… delivered=… lost=… duplicated=…`.
//!
//! Sizes: small by default (the whole suite stays well under 90 s on 2 cores, so it runs in
//! `cargo test --workspace`); `TIDEWIRE_DRILLS_FULL=1` selects the sizes of the issue.
//!
//! ```text
//! CARGO_TARGET_DIR=target-drills cargo test -p tidewire-tests --test drills -- --nocapture
//! TIDEWIRE_DRILLS_FULL=1 CARGO_TARGET_DIR=target-drills cargo test -p tidewire-tests --test drills -- --nocapture
//! ```
//!
//! The drills (see `docs/reliability.md` for the latest counts):
//! - `crash`: `kill -9` while 20 writers write; restart on the same SQLite file.
//! - `disk_full`: the SQLite file on a tiny tmpfs that fills up; writes answer 503
//!   `store_unavailable` and nothing is half-written; the server recovers when space returns.
//! - `net_cut`: a half-open network (a proxy that goes silent); the server reaps the
//!   connection, the client notices, reconnects and resumes.
//! - `probes`: the hostile clients of the security audit (slowloris from two processes, a
//!   16,000-pair cursor, 8,000 presence rooms, 300 × 512 KiB broadcasts to a stalled reader)
//!   while `/healthz` is timed and RSS read.
//! - `outbox_crash`: 8 app writers commit 2,000 transactions through the outbox of their own
//!   PostgreSQL while Tidewire is killed twice (and left down a while); every committed call
//!   is in the log once, in commit order, and nothing rolled back.
//! - `restart_storm`: many SSE clients across a graceful restart; reconnects spread over the
//!   drain window, all resume, nothing lost.
//! - `slow_consumer`: fast SSE subscribers and one slow one (a tiny receive buffer, a read
//!   every 250 ms) under a steady publisher; the server cuts the slow one, which resumes with
//!   everything, while the fast ones' latency stays within a factor of a baseline phase of the
//!   same run and the server's RSS stays bounded.
//!
//! Drills 3 (duplicated and reordered delivery) and 4 (client clock skew) are browser tests of
//! the SDK: `client/tests/drills.rs`, run under `tidewire-harness`.

#[path = "drills/crash.rs"]
mod crash;
#[path = "drills/disk_full.rs"]
mod disk_full;
#[path = "drills/net_cut.rs"]
mod net_cut;
#[path = "drills/outbox_crash.rs"]
mod outbox_crash;
#[path = "drills/probes.rs"]
mod probes;
#[path = "drills/restart_storm.rs"]
mod restart_storm;
#[path = "drills/slow_consumer.rs"]
mod slow_consumer;

use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tidewire_tests::{Server, ServerBuilder};

/// Drills share the process (and its two cores); one that compares timings between phases
/// takes this exclusively ([`exclusive_cpu`]), the others share it ([`shared_cpu`]).
static CPU: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Held by a drill that may run beside the others.
pub async fn shared_cpu() -> tokio::sync::RwLockReadGuard<'static, ()> {
    CPU.read().await
}

/// Held by a drill that must run alone (it measures a baseline and compares with it).
pub async fn exclusive_cpu() -> tokio::sync::RwLockWriteGuard<'static, ()> {
    CPU.write().await
}

/// The usual wait for something that should happen promptly.
pub const T: Duration = Duration::from_secs(10);

/// Whether the full sizes were asked for (`TIDEWIRE_DRILLS_FULL=1`).
pub fn full() -> bool {
    std::env::var("TIDEWIRE_DRILLS_FULL").is_ok_and(|v| v == "1")
}

/// Starts a server or fails the drill with its stderr.
#[track_caller]
pub fn start(builder: ServerBuilder) -> Server {
    match builder.start() {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

/// A seeded RNG; prints the seed so a failing run can be replayed with `TIDEWIRE_E2E_SEED`.
pub fn rng(label: &str) -> StdRng {
    let seed = tidewire_tests::seed();
    println!("[{label}] seed {seed} (replay with TIDEWIRE_E2E_SEED={seed})");
    StdRng::seed_from_u64(seed)
}

/// Prints a drill's count line.
pub fn report(label: &str, sent: usize, acked: usize, delivered: usize, lost: usize, dup: usize) {
    println!(
        "[{label}] sent={sent} acknowledged={acked} delivered={delivered} lost={lost} duplicated={dup}"
    );
}

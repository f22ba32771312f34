//! End-to-end tests of one `tidewire serve` process over real sockets.
//!
//! Each test starts its own server on port 0 with a fresh SQLite file, so tests run in
//! parallel. Run with:
//!
//! ```text
//! cargo build -p tidewire-server --bin tidewire
//! cargo test -p tidewire-tests --test single_node -- --test-threads 6
//! ```

mod bad_input;
mod endpoints;
mod limits;
mod poll;
mod restart;
mod resume;
mod resync;
mod shutdown;
mod slow_consumer;
mod sse;
mod writes;
mod ws;

use std::time::Duration;

use rand::rngs::StdRng;
use rand::SeedableRng;
use tidewire_tests::{Server, ServerBuilder};

/// The usual wait for something that should happen promptly.
pub const T: Duration = Duration::from_secs(10);

/// Starts a server or fails the test with its stderr.
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

/// Runs `make()`'s future on its own OS thread and runtime, so a CPU-heavy task of the test
/// (a flood sender) cannot starve a client the test measures, and the other way round.
/// Everything the future uses must be created inside it (sockets belong to their runtime).
pub fn on_own_thread<F, Fut, T>(make: F) -> tokio::sync::oneshot::Receiver<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let _ = tx.send(rt.block_on(make()));
    });
    rx
}

//! Support for unit tests that need the machine's PostgreSQL or Redis: make sure the service
//! answers, starting it when it does not, and never pass silently when it cannot be had.
//! Compiled only for this crate's unit tests (`#[cfg(test)]`); it is not part of the
//! library's API. The service-specific helpers build on it: `store::postgres::testing`,
//! `presence::redis::testing`.
//!
//! ```text
//! // In a unit test of this crate:
//! let up = crate::testing::ensure_service(
//!     "Redis",
//!     "redis://127.0.0.1:6379",
//!     "redis-server --daemonize yes --port 6379",
//!     || async { true /* ping it */ },
//! )
//! .await;
//! ```

use std::future::Future;
use std::time::Duration;

/// Answers `true` once `reachable()` does. When it does not at first, runs `start` (a shell
/// command) and waits up to 5 s. Still unreachable: prints `SKIPPED: …` and answers `false`
/// when `TIDEWIRE_SKIP_SERVICES=1`, and panics otherwise, so a missing service is never a
/// silent pass.
pub(crate) async fn ensure_service<F, Fut>(name: &str, url: &str, start: &str, reachable: F) -> bool
where
    F: Fn() -> Fut,
    Fut: Future<Output = bool>,
{
    if reachable().await {
        return true;
    }
    let _ = std::process::Command::new("sh")
        .arg("-c")
        .arg(start)
        .status();
    for _ in 0..20 {
        if reachable().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if std::env::var("TIDEWIRE_SKIP_SERVICES").as_deref() == Ok("1") {
        eprintln!("SKIPPED: {name} not reachable at {url} (TIDEWIRE_SKIP_SERVICES=1)");
        return false;
    }
    panic!("{name} not reachable at {url} and could not be started; set TIDEWIRE_SKIP_SERVICES=1 to skip");
}

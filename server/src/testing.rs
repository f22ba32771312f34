//! Support for unit tests that need the machine's PostgreSQL or Redis: make sure the service
//! answers, starting it when it does not, and never pass silently when it cannot be had.
//! Compiled only for this crate's unit tests (`#[cfg(test)]`); it is not part of the
//! library's API. The service-specific helpers build on it: `store::postgres::testing` and
//! [`redis`] here.
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

/// The local Redis, for the unit tests of the Redis bus, presence and ticket ledger.
pub(crate) mod redis {
    /// The Redis the tests use: `TIDEWIRE_TEST_REDIS` or the local default.
    pub fn url() -> String {
        std::env::var("TIDEWIRE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
    }

    async fn reachable(url: &str) -> bool {
        let Ok(client) = ::redis::Client::open(url) else {
            return false;
        };
        let ping = async {
            let mut c = client.get_multiplexed_async_connection().await?;
            ::redis::cmd("PING").query_async::<String>(&mut c).await
        };
        matches!(
            tokio::time::timeout(std::time::Duration::from_secs(3), ping).await,
            Ok(Ok(_))
        )
    }

    /// Makes sure Redis answers: starts the local one when it does not, and panics loudly
    /// when it still does not, unless `TIDEWIRE_SKIP_SERVICES=1`, in which case it prints
    /// `SKIPPED: …` and answers `false`.
    pub async fn ensure() -> bool {
        let url = url();
        super::ensure_service(
            "Redis",
            &url,
            "mkdir -p /var/lib/redis /var/log/redis; redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save '' --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log",
            || reachable(&url),
        )
        .await
    }

    /// Deletes every key that starts with `prefix`.
    pub async fn clean(prefix: &str) {
        let client = ::redis::Client::open(url()).expect("url");
        let mut c = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let keys: Vec<String> = ::redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut c)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: ::redis::RedisResult<i64> =
                ::redis::cmd("DEL").arg(keys).query_async(&mut c).await;
        }
    }
}

/// A private 3-master Redis Cluster for the tests that need sharded pub/sub, started on free
/// ports in a temporary directory and shut down on drop.
#[cfg(feature = "redis")]
pub(crate) mod redis_cluster {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    /// A running cluster.
    pub struct Cluster {
        pub ports: Vec<u16>,
        _dir: tempfile::TempDir,
    }

    fn sh(cmd: &str) -> bool {
        Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// A free port whose cluster bus port (port + 10000) is below 65536.
    fn free_port() -> u16 {
        loop {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let p = l.local_addr().expect("addr").port();
            if p < 55_000 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
                return p;
            }
        }
    }

    impl Cluster {
        /// Starts three masters and creates the cluster; `None` (after a loud line) when
        /// `redis-server` is missing and `TIDEWIRE_SKIP_SERVICES=1`, a panic otherwise.
        pub fn start() -> Option<Cluster> {
            if !sh("command -v redis-server && command -v redis-cli") {
                if std::env::var("TIDEWIRE_SKIP_SERVICES").as_deref() == Ok("1") {
                    eprintln!("SKIPPED: redis-server not installed (TIDEWIRE_SKIP_SERVICES=1)");
                    return None;
                }
                panic!("redis-server is not installed; set TIDEWIRE_SKIP_SERVICES=1 to skip");
            }
            let dir = tempfile::tempdir().expect("tempdir");
            let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
            for p in &ports {
                assert!(sh(&format!(
                    "cd {} && redis-server --port {p} --bind 127.0.0.1 --cluster-enabled yes --cluster-config-file nodes-{p}.conf --save '' --appendonly no --daemonize yes --logfile redis-{p}.log",
                    dir.path().display()
                )), "start redis-server on {p}");
            }
            let cluster = Cluster { ports, _dir: dir };
            let deadline = Instant::now() + Duration::from_secs(10);
            while !cluster
                .ports
                .iter()
                .all(|p| sh(&format!("redis-cli -p {p} ping | grep -q PONG")))
            {
                assert!(Instant::now() < deadline, "cluster nodes did not start");
                std::thread::sleep(Duration::from_millis(50));
            }
            let nodes: Vec<String> = cluster
                .ports
                .iter()
                .map(|p| format!("127.0.0.1:{p}"))
                .collect();
            assert!(
                sh(&format!(
                    "redis-cli --cluster create {} --cluster-replicas 0 --cluster-yes",
                    nodes.join(" ")
                )),
                "redis-cli --cluster create"
            );
            while !cluster.ports.iter().all(|p| {
                sh(&format!(
                    "redis-cli -p {p} cluster info | grep -q 'cluster_state:ok'"
                ))
            }) {
                assert!(Instant::now() < deadline, "the cluster did not become ok");
                std::thread::sleep(Duration::from_millis(100));
            }
            Some(cluster)
        }

        /// The `--redis` value naming it.
        pub fn spec(&self) -> String {
            let hosts: Vec<String> = self
                .ports
                .iter()
                .map(|p| format!("127.0.0.1:{p}"))
                .collect();
            format!("redis+cluster://{}", hosts.join(","))
        }
    }

    impl Drop for Cluster {
        fn drop(&mut self) {
            for p in &self.ports {
                sh(&format!("redis-cli -p {p} shutdown nosave"));
            }
        }
    }
}

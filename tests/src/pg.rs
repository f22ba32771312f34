//! Databases on the machine's PostgreSQL for tests that need one (an app database with an
//! outbox, a shared store): each made with a fresh name and dropped (`WITH (FORCE)`) when
//! its [`Database`] drops.
//!
//! ```no_run
//! # async fn f() {
//! let Some(app) = tidewire_tests::Database::create("tw_ob").await else { return };
//! let pool = app.pool().await;
//! sqlx::query("CREATE TABLE cards (id int PRIMARY KEY)").execute(&pool).await.unwrap();
//! # }
//! ```
//!
//! The server is `TIDEWIRE_TEST_POSTGRES` (an admin URL ending in `/postgres`) or
//! `postgres://postgres@127.0.0.1:5432/postgres`. When it does not answer it is started
//! (`pg_ctlcluster`); still down, [`Database::create`] panics, or answers `None` after a
//! `SKIPPED:` line when `TIDEWIRE_SKIP_SERVICES=1`.

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

/// The admin URL of the test server.
pub fn admin_url() -> String {
    std::env::var("TIDEWIRE_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

async fn admin() -> Option<PgConnection> {
    let url = admin_url();
    for attempt in 0..20 {
        match tokio::time::timeout(Duration::from_secs(3), PgConnection::connect(&url)).await {
            Ok(Ok(c)) => return Some(c),
            _ if attempt == 0 => {
                let _ = std::process::Command::new("sh")
                    .arg("-c")
                    .arg("pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start")
                    .status();
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    None
}

/// A database of its own; dropped with it.
#[derive(Debug)]
pub struct Database {
    name: String,
    url: String,
}

impl Database {
    /// A fresh database named `<prefix>_<random>`.
    pub async fn create(prefix: &str) -> Option<Database> {
        let Some(mut conn) = admin().await else {
            if std::env::var("TIDEWIRE_SKIP_SERVICES").as_deref() == Ok("1") {
                eprintln!("SKIPPED: PostgreSQL not reachable at {}", admin_url());
                return None;
            }
            panic!(
                "PostgreSQL not reachable at {} and could not be started; set \
                 TIDEWIRE_SKIP_SERVICES=1 to skip",
                admin_url()
            );
        };
        let name = format!("{prefix}_{:016x}", rand::random::<u64>());
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create database");
        let admin = admin_url();
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        let url = format!("{base}/{name}");
        Some(Database { name, url })
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// A pool of up to 16 connections to it.
    pub async fn pool(&self) -> PgPool {
        PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&self.url)
            .await
            .expect("connect to the test database")
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        // Dropped from sync code, maybe inside a runtime: psql, not sqlx.
        let admin = admin_url();
        let _ = std::process::Command::new("psql")
            .arg(&admin)
            .arg("-qc")
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

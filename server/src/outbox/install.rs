//! Installs the outbox schema in the app's database: once, under an advisory lock (nodes
//! starting together install it once), applying the versions it does not have yet, then
//! writing the server's limits into `tidewire.settings` so the SQL functions check what this
//! server would refuse.
//!
//! ```no_run
//! # async fn f() -> tidewire_server::Result<()> {
//! use sqlx::Connection;
//! use tidewire_server::outbox::{install::install, Limits};
//! let mut conn = sqlx::PgConnection::connect("postgres://postgres@127.0.0.1/app").await.unwrap();
//! install(&mut conn, Limits { max_item_bytes: 262_144, max_data_bytes: 1_048_576 }).await?;
//! # Ok(()) }
//! ```

use sqlx::{Connection, PgConnection};

use super::{sql, Db, Limits};
use crate::Result;

/// The advisory lock held while installing (another key than the store's migration lock:
/// the store and the outbox may share one database).
const INSTALL_LOCK: i64 = 0x7477_6f75_7462_6f78;

/// Applies the missing schema versions and records `limits`; answers the outbox's install id
/// (part of the synthetic idempotency keys).
pub async fn install(conn: &mut PgConnection, limits: Limits) -> Result<String> {
    let mut tx = conn.begin().await.db()?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(INSTALL_LOCK)
        .execute(&mut *tx)
        .await
        .db()?;
    let exists: bool =
        sqlx::query_scalar("SELECT to_regclass('tidewire.schema_version') IS NOT NULL")
            .fetch_one(&mut *tx)
            .await
            .db()?;
    let have = if exists {
        sqlx::query_scalar::<_, Option<i32>>("SELECT max(version) FROM tidewire.schema_version")
            .fetch_one(&mut *tx)
            .await
            .db()?
            .unwrap_or(0)
    } else {
        0
    };
    if have > sql::VERSION {
        return Err(crate::Error::Config(format!(
            "the outbox schema is at version {have}, newer than this server's {}: upgrade \
             the server",
            sql::VERSION
        )));
    }
    for script in sql::VERSIONS.iter().skip(have.max(0) as usize) {
        sqlx::raw_sql(*script).execute(&mut *tx).await.db()?;
    }
    sqlx::query("UPDATE tidewire.settings SET max_item_bytes = $1, max_data_bytes = $2")
        .bind(clamp(limits.max_item_bytes))
        .bind(clamp(limits.max_data_bytes))
        .execute(&mut *tx)
        .await
        .db()?;
    let install_id: String = sqlx::query_scalar("SELECT install_id FROM tidewire.settings")
        .fetch_one(&mut *tx)
        .await
        .db()?;
    tx.commit().await.db()?;
    Ok(install_id)
}

fn clamp(bytes: usize) -> i32 {
    bytes.min(i32::MAX as usize) as i32
}

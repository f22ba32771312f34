//! The install SQL, versioned like the store's migrations: version `n` is `VERSIONS[n - 1]`,
//! each one idempotent, each ending by recording its number in `tidewire.schema_version`.
//! `tidewire outbox sql` prints [`script`]; the server applies what is missing with
//! [`install`](super::install::install).
//!
//! ```
//! let sql = tidewire_server::outbox::sql::script();
//! assert!(sql.contains("CREATE OR REPLACE FUNCTION tidewire.publish("));
//! assert!(sql.contains("INSERT INTO tidewire.schema_version (version) VALUES (1)"));
//! ```

/// Every schema version, oldest first.
pub const VERSIONS: &[&str] = &[include_str!("install.sql")];

/// The current schema version.
pub const VERSION: i32 = VERSIONS.len() as i32;

/// The whole install script (every version, in order), for a DBA to apply by hand.
pub fn script() -> String {
    VERSIONS.concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The partition count is written twice, once in SQL and once in Rust: they agree.
    #[test]
    fn the_sql_partitions_match_the_rust_constant() {
        let mask = format!(
            "tidewire.room_hash(room) & {}",
            super::super::PARTITIONS - 1
        );
        assert!(script().contains(&mask), "{mask}");
        assert!((super::super::PARTITIONS as u32).is_power_of_two());
        assert_eq!(VERSION, 1);
    }
}

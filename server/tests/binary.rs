//! The `tidewire` binary's command line: clear errors for unreachable or unknown backends.
//!
//! Everything the running binary does (the listening line, SIGTERM → reconnect → bounded
//! exit, restarts on the same file) is tested end to end by the `tidewire-tests` crate: every
//! test there reads the listening line, `single_node/shutdown.rs` covers SIGTERM and the
//! `restart_storm` drill the restart (see `tests/README.md`).

use std::process::Command;
use std::time::{Duration, Instant};

fn tidewire() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidewire"));
    cmd.env_remove("TIDEWIRE_DATABASE")
        .env_remove("TIDEWIRE_LISTEN")
        .env("RUST_LOG", "warn");
    cmd
}

#[test]
fn an_unreachable_postgres_or_unknown_database_is_a_clear_error() {
    for (url, expect) in [
        ("postgres://root@127.0.0.1:1/x", "store unavailable"),
        ("mysql://localhost/x", "unknown database URL"),
    ] {
        let started = Instant::now();
        let out = tidewire()
            .args(["serve", "--listen", "127.0.0.1:0", "--database", url])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expect), "{url}: {err}");
        assert!(started.elapsed() < Duration::from_secs(15));
    }
}

#[test]
fn outbox_sql_prints_the_install_script() {
    let out = tidewire().args(["outbox", "sql"]).output().unwrap();
    assert!(out.status.success());
    let sql = String::from_utf8(out.stdout).unwrap();
    assert_eq!(sql, tidewire_server::outbox::sql::script());
    for f in [
        "publish(",
        "put_item(",
        "delete_item(",
        "watch_table(",
        "unwatch_table(",
    ] {
        assert!(sql.contains(&format!("FUNCTION tidewire.{f}")), "{f}");
    }
}

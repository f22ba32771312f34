//! The `tidewire` binary: `tidewire serve [flags]`.
//!
//! ```text
//! tidewire serve --listen 127.0.0.1:0 --database sqlite::memory:
//! tidewire listening on http://127.0.0.1:41234
//! tidewire outbox sql | psql "$APP_DATABASE"   # the outbox schema, applied by hand
//! ```

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tidewire_server::config::{Cli, Command, LogFormat, OutboxCommand};
use tidewire_server::{serve, shutdown, Server};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Cli { command } = Cli::parse();
    let config = match command {
        Command::Serve(config) => config,
        Command::Outbox(OutboxCommand::Sql) => {
            let mut out = std::io::stdout().lock();
            out.write_all(tidewire_server::outbox::sql::script().as_bytes())?;
            out.flush()?;
            return Ok(());
        }
    };
    let config = *config;
    init_logs(config.log.as_deref(), config.log_format);
    let listen = config.listen;
    let backlog = config.listen_backlog;
    let user_timeout = config.idle_timeout();
    let drain = config.drain_window();
    let metrics_listen = config.metrics_listen;
    let options = serve::Options {
        tcp_user_timeout: Some(user_timeout),
        ..serve::Options::from_config(&config)
    };
    let server = match Server::new(config).await {
        Ok(s) => s,
        Err(err) => {
            eprintln!("tidewire: {err}");
            std::process::exit(2);
        }
    };
    let listener =
        bind(listen, backlog).map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "tidewire listening on http://{addr}")?;
        out.flush()?;
    }
    tracing::info!(%addr, "listening");
    if let Some(at) = metrics_listen {
        let metrics = tokio::net::TcpListener::bind(at)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {at} for /metrics: {e}"))?;
        tracing::info!(addr = %metrics.local_addr()?, "metrics listening");
        let app = server.metrics_router();
        tokio::spawn(async move { axum::serve(metrics, app).await });
    }
    let draining = server.clone();
    serve::serve(listener, server.router(), options, async move {
        shutdown::signal().await;
        tracing::info!("shutting down: telling clients to reconnect, draining");
        draining.begin_shutdown();
        // Bounded: exit even if some connection hangs.
        tokio::spawn(async move {
            tokio::time::sleep(drain + Duration::from_secs(2)).await;
            tracing::warn!("drain deadline passed; exiting");
            std::process::exit(0);
        });
    })
    .await;
    tracing::info!("drained; bye");
    Ok(())
}

/// Logs to stderr at the level `--log` (or `RUST_LOG`, or `info`) names: plain text when
/// stderr is not a terminal (no colour codes in files and collectors), JSON lines with
/// `--log-format json`.
fn init_logs(level: Option<&str>, format: LogFormat) {
    let filter = match level {
        Some(l) => EnvFilter::new(l),
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.with_ansi(std::io::stderr().is_terminal()).init(),
    }
}

/// A listening socket with room for `backlog` connections waiting to be accepted (the kernel
/// caps it at `net.core.somaxconn`). Tokio's default of 1,024 overflows when thousands of
/// clients reconnect at once after a restart, and each dropped SYN costs its client a
/// 1–3 s kernel retry.
fn bind(addr: SocketAddr, backlog: u32) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

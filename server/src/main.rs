//! The `tidewire` binary: `tidewire serve [flags]`.
//!
//! ```text
//! tidewire serve --listen 127.0.0.1:0 --database sqlite::memory:
//! tidewire listening on http://127.0.0.1:41234
//! tidewire outbox sql | psql "$APP_DATABASE"   # the outbox schema, applied by hand
//! ```

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tidewire_server::config::{Cli, Command, OutboxCommand};
use tidewire_server::{serve, shutdown, Server};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
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
    let listen = config.listen;
    let backlog = config.listen_backlog;
    let user_timeout = config.idle_timeout();
    let drain = config.drain_window();
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
    let draining = server.clone();
    let options = serve::Options {
        tcp_user_timeout: Some(user_timeout),
        ..serve::Options::default()
    };
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

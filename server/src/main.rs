//! The `tidewire` binary: `tidewire serve [flags]`.
//!
//! ```text
//! tidewire serve --listen 127.0.0.1:0 --database sqlite::memory:
//! tidewire listening on http://127.0.0.1:41234
//! ```

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use tidewire_server::config::{Cli, Command};
use tidewire_server::{shutdown, Server};
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
    let Command::Serve(config) = command;
    let config = *config;
    let listen = config.listen;
    let drain = config.drain_window();
    let server = match Server::new(config).await {
        Ok(s) => s,
        Err(err) => {
            eprintln!("tidewire: {err}");
            std::process::exit(2);
        }
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "tidewire listening on http://{addr}")?;
        out.flush()?;
    }
    tracing::info!(%addr, "listening");
    let app = server
        .router()
        .into_make_service_with_connect_info::<SocketAddr>();
    let draining = server.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
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
        .await?;
    tracing::info!("drained; bye");
    Ok(())
}

//! Mount Tidewire under `/realtime` in your own axum app, next to your own routes.
//!
//! ```text
//! cargo run -p tidewire-server --example embed
//! curl -X PUT localhost:3000/realtime/v1/rooms/board-1/items/a -d '{"n":1}'
//! curl localhost:3000/realtime/v1/rooms/board-1/snapshot
//! ```

use std::net::SocketAddr;

use axum::routing::get;
use axum::Router;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = tidewire_server::Config {
        database: "sqlite://embed.db".into(),
        ..tidewire_server::Config::default()
    };
    let realtime = tidewire_server::Server::new(config).await?;
    let app = Router::new()
        .route("/", get(|| async { "my app; realtime under /realtime" }))
        .nest("/realtime", realtime.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        tidewire_server::shutdown::signal().await;
        realtime.begin_shutdown();
    })
    .await?;
    Ok(())
}

//! Configuration: `tidewire serve` flags, each with a `TIDEWIRE_*` environment variable.
//!
//! The same struct configures the library:
//!
//! ```
//! let mut config = tidewire_server::Config::default();
//! config.database = "sqlite::memory:".into();
//! assert_eq!(config.queue_capacity, 1024);
//! assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;

/// The `tidewire` command line.
#[derive(Debug, Parser)]
#[command(
    name = "tidewire",
    version,
    about = "Tidewire: a real-time backend in one binary"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands of `tidewire`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(Box<Config>),
    /// The outbox of the app's own PostgreSQL (`docs/outbox.md`).
    #[command(subcommand)]
    Outbox(OutboxCommand),
}

/// `tidewire outbox …`
#[derive(Debug, Subcommand)]
pub enum OutboxCommand {
    /// Print the SQL that `serve --outbox` installs (schema `tidewire`), for applying by hand.
    Sql,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines; colour only on a terminal.
    Text,
    /// One JSON object per line.
    Json,
}

/// Every setting of the server, with its flag and `TIDEWIRE_*` variable.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on (`127.0.0.1:0` picks a free port).
    #[arg(long, env = "TIDEWIRE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Database URL: `sqlite://path`, `sqlite::memory:`, or `postgres://user@host/db` (several
    /// nodes share one PostgreSQL).
    #[arg(
        long,
        env = "TIDEWIRE_DATABASE",
        default_value = "sqlite://tidewire.db"
    )]
    pub database: String,
    /// Redis URL (`redis://host:6379`) for several nodes: the bus and presence go through it.
    /// A Redis Cluster: comma-separated seed URLs, or `redis+cluster://host:port,host:port`.
    #[arg(long, env = "TIDEWIRE_REDIS")]
    pub redis: Option<String>,
    /// Prefix of every Redis key and channel (several deployments can share one Redis).
    #[arg(long, env = "TIDEWIRE_REDIS_PREFIX", default_value = "tidewire:")]
    pub redis_prefix: String,
    /// Tests only: drop every N-th durable bus message on purpose (0: none).
    #[arg(
        long,
        env = "TIDEWIRE_BUS_DROP_EVERY",
        default_value_t = 0,
        hide = true
    )]
    pub bus_drop_every: u64,
    // Scale-out (issue #20): the flags of the interest-based bus, Redis Cluster and the
    // cluster-wide limits. `--redis` itself also accepts a cluster (see `redis_conn`).
    /// With `--redis`: how long a connection's cluster-wide slot (connections per client)
    /// outlives its node's last refresh; a killed node's connections stop counting after it.
    #[arg(long, env = "TIDEWIRE_CLUSTER_LIMITS_TTL_MS", default_value_t = 30_000)]
    pub cluster_limits_ttl_ms: u64,
    /// Admin credentials for the live dashboard at `/admin` and its data, comma separated
    /// (several for rotation); sent as `Authorization: Bearer`. Without one `/admin` is 404.
    #[arg(
        long,
        env = "TIDEWIRE_ADMIN_TOKEN",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub admin_token: Vec<String>,
    /// HS256 secret for JWT auth; without it access is open (the demo).
    #[arg(long, env = "TIDEWIRE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Allowed CORS origins, comma separated (default: any origin).
    #[arg(long, env = "TIDEWIRE_CORS_ORIGIN", value_delimiter = ',')]
    pub cors_origin: Vec<String>,
    /// Directory served at `/` (the demo page).
    #[arg(long, env = "TIDEWIRE_WWW_DIR", default_value = "www")]
    pub www_dir: PathBuf,
    /// Directory served at `/pkg/` (the npm package built from `client/`).
    #[arg(long, env = "TIDEWIRE_PKG_DIR", default_value = "client/pkg")]
    pub pkg_dir: PathBuf,
    /// Events kept per room.
    #[arg(long, env = "TIDEWIRE_RETENTION_EVENTS", default_value_t = 10_000)]
    pub retention_events: u64,
    /// Seconds an event is kept.
    #[arg(long, env = "TIDEWIRE_RETENTION_SECS", default_value_t = 604_800)]
    pub retention_secs: u64,
    /// Seconds between SSE heartbeat comments and WebSocket pings.
    #[arg(long, env = "TIDEWIRE_HEARTBEAT_SECS", default_value_t = 15)]
    pub heartbeat_secs: u64,
    /// Seconds of silence after which a WebSocket is closed (4003).
    #[arg(long, env = "TIDEWIRE_IDLE_TIMEOUT_SECS", default_value_t = 45)]
    pub idle_timeout_secs: u64,
    /// The SSE `retry:` hint in milliseconds.
    #[arg(long, env = "TIDEWIRE_SSE_RETRY_MS", default_value_t = 1000)]
    pub sse_retry_ms: u64,
    /// Window over which reconnect delays are spread on shutdown, in milliseconds.
    #[arg(long, env = "TIDEWIRE_DRAIN_WINDOW_MS", default_value_t = 5000)]
    pub drain_window_ms: u64,
    /// Grace period before a disconnected presence member leaves, in milliseconds.
    #[arg(long, env = "TIDEWIRE_PRESENCE_GRACE_MS", default_value_t = 5000)]
    pub presence_grace_ms: u64,
    /// Events queued per connection before it counts as a slow consumer.
    #[arg(long, env = "TIDEWIRE_QUEUE_CAPACITY", default_value_t = 1024)]
    pub queue_capacity: usize,
    /// Bytes queued per connection before it counts as a slow consumer (with the count above,
    /// whichever is reached first).
    #[arg(long, env = "TIDEWIRE_MAX_QUEUE_BYTES", default_value_t = 4_194_304)]
    pub max_queue_bytes: usize,
    /// Largest broadcast `data`, in bytes of JSON.
    #[arg(long, env = "TIDEWIRE_MAX_BROADCAST_BYTES", default_value_t = 65_536)]
    pub max_broadcast_bytes: usize,
    /// Largest presence `meta`, in bytes of JSON.
    #[arg(
        long,
        env = "TIDEWIRE_MAX_PRESENCE_META_BYTES",
        default_value_t = 4_096
    )]
    pub max_presence_meta_bytes: usize,
    /// Origins (`https://app.example`) allowed to open a WebSocket, comma separated (default:
    /// any). A browser sends `Origin` on every WebSocket upgrade; one not listed gets `403`.
    #[arg(long, env = "TIDEWIRE_ALLOWED_ORIGIN", value_delimiter = ',')]
    pub allowed_origin: Vec<String>,
    /// Log level and filter (`info`, `tidewire_server=debug`, …); `RUST_LOG` when not given.
    #[arg(long, env = "TIDEWIRE_LOG")]
    pub log: Option<String>,
    /// Log lines as `text` (plain when stderr is not a terminal, coloured when it is) or
    /// `json` (one object per line, for log collectors).
    #[arg(long, env = "TIDEWIRE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Serve `/metrics` on this address only, not on `--listen` (keep it off the public port).
    #[arg(long, env = "TIDEWIRE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Largest request body (and WebSocket frame), in bytes.
    #[arg(long, env = "TIDEWIRE_MAX_BODY_BYTES", default_value_t = 1_048_576)]
    pub max_body_bytes: usize,
    /// Largest item value, in bytes of JSON.
    #[arg(long, env = "TIDEWIRE_MAX_ITEM_BYTES", default_value_t = 262_144)]
    pub max_item_bytes: usize,
    /// Rooms one connection may follow.
    #[arg(long, env = "TIDEWIRE_MAX_ROOMS_PER_CONNECTION", default_value_t = 64)]
    pub max_rooms_per_connection: usize,
    /// Concurrent streaming connections per client key.
    #[arg(
        long,
        env = "TIDEWIRE_MAX_CONNECTIONS_PER_CLIENT",
        default_value_t = 256
    )]
    pub max_connections_per_client: usize,
    /// Sustained writes per second per client key.
    #[arg(long, env = "TIDEWIRE_WRITE_RATE", default_value_t = 50)]
    pub write_rate: u32,
    /// Burst of writes per client key.
    #[arg(long, env = "TIDEWIRE_WRITE_BURST", default_value_t = 200)]
    pub write_burst: u32,
    /// Connections waiting to be accepted (the listen backlog; the kernel caps it at
    /// `net.core.somaxconn`). Large, so a reconnect storm after a restart is not dropped SYNs.
    #[arg(long, env = "TIDEWIRE_LISTEN_BACKLOG", default_value_t = 4096)]
    pub listen_backlog: u32,
    /// Load balancers and reverse proxies whose `X-Forwarded-For` is believed: IP addresses or
    /// CIDR blocks, comma-separated. Anonymous clients behind them are keyed (for limits) by the
    /// rightmost address in the header that is not itself a trusted proxy, not by the proxy's.
    #[arg(long, env = "TIDEWIRE_TRUSTED_PROXIES", value_delimiter = ',', value_parser = parse_net)]
    pub trusted_proxies: Vec<IpNet>,
    /// Milliseconds a request head may take to arrive whole (from the accept, or from its
    /// first byte on a kept-alive connection); a slower one is cut.
    #[arg(
        long,
        env = "TIDEWIRE_HEADER_READ_TIMEOUT_MS",
        default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub header_read_timeout_ms: u64,
    /// Milliseconds a kept-alive HTTP connection may stay open with no request in flight.
    #[arg(
        long,
        env = "TIDEWIRE_KEEP_ALIVE_TIMEOUT_MS",
        default_value_t = 60_000,
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    pub keep_alive_timeout_ms: u64,
    /// TCP connections open at once from one client address (an IPv6 /64); more are answered
    /// 429 and closed. Trusted proxies are capped only by --max-connections. 0: no cap.
    #[arg(
        long,
        env = "TIDEWIRE_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 1024
    )]
    pub max_connections_per_address: usize,
    /// TCP connections open at once in all; keep it below the open-file limit (`ulimit -n`)
    /// with room for the store. Over it, a small reserve still answers /healthz. 0: no cap.
    #[arg(long, env = "TIDEWIRE_MAX_CONNECTIONS", default_value_t = 16_000)]
    pub max_connections: usize,
    /// The app's own PostgreSQL (`postgres://user@host/app`): installs the `tidewire` schema
    /// there and streams what the app's transactions publish into the rooms.
    #[arg(long, env = "TIDEWIRE_OUTBOX", hide_env_values = true)]
    pub outbox: Option<String>,
    /// Milliseconds between outbox polls (they catch lost notifications and rebalance
    /// partitions between nodes).
    #[arg(long, env = "TIDEWIRE_OUTBOX_POLL_MS", default_value_t = 1000)]
    pub outbox_poll_ms: u64,
    /// Backend API keys, comma-separated (several for rotation): `Authorization: Bearer <key>`
    /// may read and write every room.
    #[arg(
        long,
        env = "TIDEWIRE_API_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_key: Vec<String>,
    /// Seconds an idempotency key is remembered.
    #[arg(long, env = "TIDEWIRE_IDEMPOTENCY_TTL_SECS", default_value_t = 86_400)]
    pub idempotency_ttl_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        // The defaults live once, in the clap attributes above; environment variables are
        // not consulted for a library default.
        #[derive(Parser)]
        struct Defaults {
            #[command(flatten)]
            config: Config,
        }
        let cmd = <Defaults as clap::CommandFactory>::command()
            .mut_args(|a| a.env(clap::builder::Resettable::Reset));
        let matches = cmd
            .try_get_matches_from(["tidewire"])
            .expect("defaults always parse");
        <Defaults as clap::FromArgMatches>::from_arg_matches(&matches)
            .expect("defaults always parse")
            .config
    }
}

/// An IP address (a one-address block) or a CIDR block.
fn parse_net(s: &str) -> std::result::Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("`{s}` is neither an IP address nor a CIDR block"))
}

impl Config {
    /// The heartbeat interval.
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs.max(1))
    }
    /// The WebSocket idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs.max(1))
    }
    /// The shutdown drain window.
    pub fn drain_window(&self) -> Duration {
        Duration::from_millis(self.drain_window_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_values() {
        let c = Config::default();
        assert_eq!(c.database, "sqlite://tidewire.db");
        assert_eq!(c.retention_events, 10_000);
        assert_eq!(c.retention_secs, 604_800);
        assert_eq!(c.heartbeat_secs, 15);
        assert_eq!(c.idle_timeout_secs, 45);
        assert_eq!(c.max_body_bytes, 1_048_576);
        assert_eq!(c.max_item_bytes, 262_144);
        assert_eq!(c.write_rate, 50);
        assert_eq!(c.write_burst, 200);
        assert!(c.cors_origin.is_empty());
        assert!(c.redis.is_none());
        assert!(c.trusted_proxies.is_empty());
        assert_eq!(c.listen_backlog, 4096);
        assert_eq!(c.header_read_timeout_ms, 10_000);
        assert_eq!(c.keep_alive_timeout_ms, 60_000);
        assert_eq!(c.max_connections_per_address, 1024);
        assert_eq!(c.max_connections, 16_000);
        assert!(c.outbox.is_none());
        assert_eq!(c.outbox_poll_ms, 1000);
        assert!(c.api_key.is_empty());
    }

    #[test]
    fn outbox_and_api_key_flags_parse() {
        let cli = Cli::try_parse_from([
            "tidewire",
            "serve",
            "--outbox",
            "postgres://app@127.0.0.1/app",
            "--outbox-poll-ms",
            "250",
            "--api-key",
            "old-key-0123456789,new-key-0123456789",
        ])
        .unwrap();
        let Command::Serve(c) = cli.command else {
            panic!("serve")
        };
        assert_eq!(c.outbox.as_deref(), Some("postgres://app@127.0.0.1/app"));
        assert_eq!(c.outbox_poll_ms, 250);
        assert_eq!(c.api_key, ["old-key-0123456789", "new-key-0123456789"]);
        let cli = Cli::try_parse_from(["tidewire", "outbox", "sql"]).unwrap();
        assert!(matches!(cli.command, Command::Outbox(OutboxCommand::Sql)));
    }

    #[test]
    fn trusted_proxies_take_addresses_and_blocks() {
        let cli = Cli::try_parse_from([
            "tidewire",
            "serve",
            "--trusted-proxies",
            "10.0.0.0/8, 127.0.0.1,::1",
        ])
        .unwrap();
        let Command::Serve(c) = cli.command else {
            panic!("serve")
        };
        let shown: Vec<String> = c.trusted_proxies.iter().map(|n| n.to_string()).collect();
        assert_eq!(shown, ["10.0.0.0/8", "127.0.0.1/32", "::1/128"]);
        let bad = Cli::try_parse_from(["tidewire", "serve", "--trusted-proxies", "10.0.0.0/33"])
            .expect_err("a bad block is refused");
        assert!(
            bad.to_string()
                .contains("neither an IP address nor a CIDR block"),
            "{bad}"
        );
    }

    #[test]
    fn multi_node_flags_parse() {
        let cli = Cli::try_parse_from([
            "tidewire",
            "serve",
            "--database",
            "postgres://root@127.0.0.1/tidewire",
            "--redis",
            "redis://127.0.0.1:6379",
            "--redis-prefix",
            "app1:",
        ])
        .unwrap();
        let Command::Serve(c) = cli.command else {
            panic!("serve")
        };
        assert_eq!(c.redis.as_deref(), Some("redis://127.0.0.1:6379"));
        assert_eq!(c.redis_prefix, "app1:");
        assert_eq!(c.bus_drop_every, 0);
        assert_eq!(Config::default().redis_prefix, "tidewire:");
    }

    #[test]
    fn connection_limit_flags_parse_and_timeouts_are_not_zero() {
        let cli = Cli::try_parse_from([
            "tidewire",
            "serve",
            "--header-read-timeout-ms",
            "250",
            "--keep-alive-timeout-ms",
            "500",
            "--max-connections-per-address",
            "0",
            "--max-connections",
            "9000",
        ])
        .unwrap();
        let Command::Serve(c) = cli.command else {
            panic!("serve")
        };
        assert_eq!(
            (c.header_read_timeout_ms, c.keep_alive_timeout_ms),
            (250, 500)
        );
        assert_eq!(
            (c.max_connections_per_address, c.max_connections),
            (0, 9000)
        );
        for flag in ["--header-read-timeout-ms", "--keep-alive-timeout-ms"] {
            assert!(Cli::try_parse_from(["tidewire", "serve", flag, "0"]).is_err());
        }
    }

    #[test]
    fn flags_parse() {
        let cli = Cli::try_parse_from([
            "tidewire",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database",
            "sqlite::memory:",
            "--cors-origin",
            "http://a.test,http://b.test",
        ])
        .unwrap();
        let Command::Serve(c) = cli.command else {
            panic!("serve")
        };
        assert_eq!(c.listen.port(), 0);
        assert_eq!(c.cors_origin.len(), 2);
    }
}

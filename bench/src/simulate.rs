//! `tidewire-bench simulate`: a model of N nodes beyond this machine, pure computation (no
//! sockets, well under a second), comparing the single-channel bus (every node subscribes to
//! one channel and receives every room's events) with the interest-based bus (a node
//! subscribes only to the rooms its connections follow, one channel per room, sharded over K
//! Redis shards by hash slot).
//!
//! ```text
//! cargo run --release -p tidewire-bench -- simulate            # the table in docs/scaling.md
//! cargo run --release -p tidewire-bench -- simulate --nodes 50 --connections 2000000
//! ```
//!
//! The model, per row (N nodes, M connections):
//!
//! - R rooms with Zipf(s) popularity p_r (rank r: p_r ∝ r^-s); each connection follows one
//!   room drawn from it, and the load balancer puts it on a node uniformly at random. Room r
//!   has c_r = M·p_r connections; the expected number of nodes holding at least one of them is
//!   f_r = N·(1 − e^(−c_r/N)) (Poisson placement).
//! - The deployment writes W events/s: with `--activity uniform` (the default) every room the
//!   same W/R (a room's activity does not depend on its audience: documents, dashboards,
//!   games), with `--activity popular` room r gets W·p_r (popular rooms are busy rooms, which
//!   makes deliveries, not the bus, the cost).
//! - **Bus messages received per node**: single channel W; interest Σ w_r·f_r / N.
//! - **Deliveries per node** (the same in both): Σ w_r·c_r / N.
//! - **Redis egress**: single channel W·N, all on one shard (one channel cannot be sharded);
//!   interest Σ w_r·f_r, split over K shards by the room's hash slot — the busiest shard is
//!   reported (the hottest rooms land on some shard whole).
//! - **SUBSCRIBE churn**: a connection lives L seconds on average, replaced by a new one (so M
//!   stays). A node's follower count of room r is an M/M/∞ queue of mean c_r/N, which goes
//!   0 → 1 (a SUBSCRIBE; its 1 → 0 is the UNSUBSCRIBE) at rate (c_r/(N·L))·e^(−c_r/N). Summed
//!   over rooms and divided by nodes: channel subscriptions per node per second. Commands
//!   are fewer: a node batches what accumulates in 5 ms (at most 200 batches/s, one
//!   `SUBSCRIBE` of up to 500 channels on one Redis; on a cluster one `SSUBSCRIBE` per slot).
//! - **Where each design saturates**: a node spends `1/D` per delivery and `k/D` per bus
//!   message received (D: deliveries/s of one node, measured in `docs/benchmarks.md`: 715,000–
//!   850,000 SSE deliveries/s on 2 shared cores, taken as 800,000; k: the cost of taking one
//!   message off the bus relative to a delivery — read, JSON decode, the hub's lookup —
//!   estimated at 2, not measured); a Redis shard sends at most S messages/s (estimated at
//!   1,000,000 small pub/sub messages per second per shard, not measured here). Everything is
//!   linear in W, so each design's ceiling is the W at which its busiest node or shard hits
//!   its budget.

use clap::Args;

/// The simulator's knobs; the defaults are the table in `docs/scaling.md`.
#[derive(Args, Clone, Debug)]
pub struct SimArgs {
    /// Node counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
    pub nodes: Vec<u64>,
    /// Connection counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "100000,1000000,10000000")]
    pub connections: Vec<u64>,
    /// Rooms.
    #[arg(long, default_value_t = 100_000)]
    pub rooms: u64,
    /// Zipf exponent of room popularity.
    #[arg(long, default_value_t = 1.0)]
    pub zipf: f64,
    /// How events spread over rooms: `uniform` (every room alike) or `popular` (as the
    /// audience).
    #[arg(long, value_enum, default_value_t = Activity::Uniform)]
    pub activity: Activity,
    /// Events per second written over the whole deployment (for the per-node columns).
    #[arg(long, default_value_t = 20_000.0)]
    pub events: f64,
    /// Mean connection lifetime in seconds (connection churn).
    #[arg(long, default_value_t = 600.0)]
    pub lifetime: f64,
    /// Redis shards for the interest-based bus.
    #[arg(long, default_value_t = 8)]
    pub shards: u64,
    /// Deliveries per second one node sustains (docs/benchmarks.md).
    #[arg(long, default_value_t = 800_000.0)]
    pub node_deliveries: f64,
    /// Cost of one received bus message, in deliveries.
    #[arg(long, default_value_t = 2.0)]
    pub ingest_cost: f64,
    /// Messages per second one Redis shard sends.
    #[arg(long, default_value_t = 1_000_000.0)]
    pub shard_egress: f64,
}

/// How the deployment's writes spread over rooms.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activity {
    /// Every room writes the same rate.
    Uniform,
    /// A room writes in proportion to its audience.
    Popular,
}

/// One design's figures for one (N, M).
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    /// Bus messages received per node per second.
    pub bus_in_per_node: f64,
    /// Deliveries per node per second.
    pub deliveries_per_node: f64,
    /// Messages per second out of the busiest Redis shard.
    pub egress_busiest_shard: f64,
    /// Channel subscriptions (and as many unsubscriptions) per node per second.
    pub subscribes_per_node: f64,
    /// Subscribe commands per node per second after batching.
    pub subscribe_commands_per_node: f64,
    /// The deployment's event rate at which the first budget runs out.
    pub ceiling: f64,
    /// What runs out first: `node` or `redis`.
    pub limited_by: &'static str,
}

/// The slot-like shard of room `rank` (a fixed integer hash: the same room, the same shard).
fn shard_of(rank: u64, shards: u64) -> u64 {
    let mut x = rank.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    x % shards.max(1)
}

/// The Zipf popularity of ranks 1..=rooms (sums to 1).
pub fn zipf(rooms: u64, s: f64) -> Vec<f64> {
    let raw: Vec<f64> = (1..=rooms.max(1)).map(|r| (r as f64).powf(-s)).collect();
    let total: f64 = raw.iter().sum();
    raw.into_iter().map(|p| p / total).collect()
}

/// Both designs for `nodes` and `connections` under `a` (popularity `p` from [`zipf`]).
pub fn simulate(a: &SimArgs, p: &[f64], nodes: u64, connections: u64) -> (Figures, Figures) {
    let n = nodes.max(1) as f64;
    let m = connections as f64;
    let w = a.events;
    let shards = a.shards.max(1);
    let mut deliveries = 0.0;
    let mut interest_in = 0.0;
    let mut subscribes = 0.0;
    let mut per_shard = vec![0.0; shards as usize];
    let rooms = p.len().max(1) as f64;
    for (i, &pr) in p.iter().enumerate() {
        let c = m * pr;
        let wr = match a.activity {
            Activity::Uniform => w / rooms,
            Activity::Popular => w * pr,
        };
        let f = n * (1.0 - (-c / n).exp());
        deliveries += wr * c;
        interest_in += wr * f;
        per_shard[shard_of(i as u64 + 1, shards) as usize] += wr * f;
        subscribes += (c / a.lifetime) * (-c / n).exp();
    }
    let deliveries_per_node = deliveries / n;
    let subscribes_per_node = subscribes / n;
    // Batches of 5 ms: at most 200 a second, each one command (one Redis) per 500 channels.
    let commands = subscribes_per_node
        .min(200.0)
        .max(subscribes_per_node / 500.0);
    let busiest = per_shard.iter().copied().fold(0.0, f64::max);
    let ceiling = |node_cost_per_w: f64, shard_per_w: f64| {
        let by_node = a.node_deliveries / node_cost_per_w;
        let by_redis = a.shard_egress / shard_per_w;
        if by_node <= by_redis {
            (by_node, "node")
        } else {
            (by_redis, "redis")
        }
    };
    let single_in = w;
    let (c1, l1) = ceiling(
        (deliveries_per_node + a.ingest_cost * single_in) / w,
        (w * n) / w,
    );
    let single = Figures {
        bus_in_per_node: single_in,
        deliveries_per_node,
        egress_busiest_shard: w * n,
        subscribes_per_node: 0.0,
        subscribe_commands_per_node: 0.0,
        ceiling: c1,
        limited_by: l1,
    };
    let interest_per_node = interest_in / n;
    let (c2, l2) = ceiling(
        (deliveries_per_node + a.ingest_cost * interest_per_node) / w,
        busiest / w,
    );
    let interest = Figures {
        bus_in_per_node: interest_per_node,
        deliveries_per_node,
        egress_busiest_shard: busiest,
        subscribes_per_node,
        subscribe_commands_per_node: commands,
        ceiling: c2,
        limited_by: l2,
    };
    (single, interest)
}

fn human(x: f64) -> String {
    let (v, unit) = if x >= 1e9 {
        (x / 1e9, "G")
    } else if x >= 1e6 {
        (x / 1e6, "M")
    } else if x >= 1e3 {
        (x / 1e3, "k")
    } else {
        (x, "")
    };
    if v >= 100.0 || unit.is_empty() && v.fract() == 0.0 {
        format!("{v:.0}{unit}")
    } else {
        format!("{v:.1}{unit}")
    }
}

/// The Markdown table for `a`.
pub fn table(a: &SimArgs) -> String {
    let p = zipf(a.rooms, a.zipf);
    let mut out = format!(
        "{} rooms, Zipf s = {}, {} events/s written ({}), connections live {} s, {} Redis shards for the interest bus; \
         node budget {} deliveries/s, a bus message costs {} deliveries, a shard sends {} msg/s.\n\n",
        human(a.rooms as f64),
        a.zipf,
        human(a.events),
        match a.activity {
            Activity::Uniform => "the same in every room",
            Activity::Popular => "rooms as busy as they are popular",
        },
        a.lifetime,
        a.shards,
        human(a.node_deliveries),
        a.ingest_cost,
        human(a.shard_egress),
    );
    out.push_str("| nodes | connections | design | bus msgs in / node / s | deliveries / node / s | Redis egress, busiest shard / s | SUBSCRIBEs (channels) / node / s | commands / node / s | saturates at (events/s) | first limit |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    for &n in &a.nodes {
        for &m in &a.connections {
            let (single, interest) = simulate(a, &p, n, m);
            for (name, f) in [("one channel", &single), ("interest", &interest)] {
                out.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                    human(n as f64),
                    human(m as f64),
                    name,
                    human(f.bus_in_per_node),
                    human(f.deliveries_per_node),
                    human(f.egress_busiest_shard),
                    human(f.subscribes_per_node),
                    human(f.subscribe_commands_per_node),
                    human(f.ceiling),
                    f.limited_by,
                ));
            }
        }
    }
    out
}

/// Prints the table.
pub fn run(a: &SimArgs) {
    print!("{}", table(a));
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }

    fn defaults() -> SimArgs {
        Cli::parse_from(["sim"]).sim
    }

    #[test]
    fn zipf_sums_to_one_and_falls() {
        let p = zipf(1000, 1.0);
        assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        assert!(p[0] > p[1] && p[1] > p[999]);
    }

    #[test]
    fn interest_never_receives_more_and_with_every_room_everywhere_it_is_the_same() {
        for activity in [Activity::Uniform, Activity::Popular] {
            let mut a = defaults();
            a.activity = activity;
            let p = zipf(a.rooms, a.zipf);
            for n in [1, 10, 100, 1000] {
                let (single, interest) = simulate(&a, &p, n, 1_000_000);
                assert!(interest.bus_in_per_node <= single.bus_in_per_node + 1e-6);
                assert_eq!(single.deliveries_per_node, interest.deliveries_per_node);
                assert!(interest.ceiling >= single.ceiling, "{n} nodes");
                // A node receives a room's message only where it delivers it.
                assert!(
                    interest.egress_busiest_shard <= interest.deliveries_per_node * n as f64 + 1e-6
                );
            }
            // So many connections that every room is followed on every node: no saving.
            let (single, interest) = simulate(&a, &p, 10, 100_000_000_000);
            assert!(interest.bus_in_per_node > 0.999 * single.bus_in_per_node);
        }
    }

    #[test]
    fn the_single_channel_s_egress_grows_with_nodes_and_interest_s_with_deliveries() {
        let a = defaults();
        let p = zipf(a.rooms, a.zipf);
        let (s10, i10) = simulate(&a, &p, 10, 100_000);
        let (s1000, i1000) = simulate(&a, &p, 1000, 100_000);
        assert_eq!(s1000.egress_busiest_shard, 100.0 * s10.egress_busiest_shard);
        assert_eq!(s1000.bus_in_per_node, s10.bus_in_per_node);
        assert!(i1000.bus_in_per_node < i10.bus_in_per_node);
        assert!(i1000.egress_busiest_shard < s1000.egress_busiest_shard / 10.0);
        assert!(i1000.subscribes_per_node > 0.0);
        assert!(i1000.subscribe_commands_per_node <= 200.0);
    }

    #[test]
    fn the_table_has_two_rows_per_case() {
        let a = defaults();
        let t = table(&a);
        assert_eq!(t.lines().filter(|l| l.starts_with("| ")).count(), 1 + 2 * 9);
    }
}

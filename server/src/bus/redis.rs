//! The Redis [`Bus`]: Redis pub/sub between the nodes of a deployment.
//!
//! Every node publishes on one channel, `<prefix>bus`, and subscribes to it. Publishing goes
//! through redis' auto-reconnecting connection manager; the subscription runs in a task that
//! reconnects (every 250 ms) when Redis goes away. Messages published while a node is
//! disconnected are lost **for that node**: its [`Hub`](crate::hub::Hub) notices the `seq` gap
//! on the next event, and its periodic head check finds a lost last event, and both read the
//! missing events from the store. A failed publish is logged, never returned: the write has
//! committed, and the other nodes will find it in the store.
//!
//! ```no_run
//! # async fn f() -> tidewire_server::Result<()> {
//! use tidewire_server::bus::{redis::RedisBus, Bus, BusMessage};
//! let bus = RedisBus::connect("redis://127.0.0.1:6379", "app1:", 0).await?;
//! let _messages = bus.subscribe();
//! bus.publish(BusMessage::broadcast("r", None, "{}".into())).await?;
//! # Ok(()) }
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use redis::aio::ConnectionManager;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::{Bus, BusMessage, Kind};
use crate::redis_conn::connect_manager;
use crate::Result;

/// The wire form of a [`BusMessage`] on the Redis channel.
#[derive(Serialize, Deserialize)]
struct Wire {
    r: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    s: Option<u64>,
    k: char,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    o: Option<String>,
    p: String,
}

fn encode(msg: &BusMessage) -> String {
    let wire = Wire {
        r: msg.room.to_string(),
        s: msg.seq,
        k: match msg.kind {
            Kind::Durable => 'd',
            Kind::Broadcast => 'b',
            Kind::Presence => 'p',
        },
        o: msg.origin.as_deref().map(str::to_owned),
        p: msg.payload.to_text(),
    };
    serde_json::to_string(&wire).unwrap_or_default()
}

fn decode(text: &str) -> Option<BusMessage> {
    let wire: Wire = serde_json::from_str(text).ok()?;
    Some(BusMessage {
        room: wire.r.into(),
        seq: wire.s,
        kind: match wire.k {
            'd' => Kind::Durable,
            'b' => Kind::Broadcast,
            'p' => Kind::Presence,
            _ => return None,
        },
        origin: wire.o.map(Into::into),
        payload: wire.p.into(),
    })
}

/// The Redis bus.
pub struct RedisBus {
    client: redis::Client,
    publisher: ConnectionManager,
    channel: String,
    drop_every: u64,
    durable_sent: AtomicU64,
}

impl RedisBus {
    /// Connects to `url`; channels are named with `prefix`. `drop_every > 0` is for tests: every
    /// `drop_every`-th durable message is not published, as a lossy network would.
    pub async fn connect(url: &str, prefix: &str, drop_every: u64) -> Result<RedisBus> {
        let (client, publisher) = connect_manager(url).await?;
        Ok(RedisBus {
            client,
            publisher,
            channel: format!("{prefix}bus"),
            drop_every,
            durable_sent: AtomicU64::new(0),
        })
    }
}

async fn forward(
    client: &redis::Client,
    channel: &str,
    tx: &mpsc::UnboundedSender<BusMessage>,
) -> redis::RedisResult<()> {
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(channel).await?;
    tracing::info!(%channel, "subscribed to the Redis bus");
    let mut stream = pubsub.on_message();
    while let Some(msg) = stream.next().await {
        let Ok(text) = msg.get_payload::<String>() else {
            continue;
        };
        match decode(&text) {
            Some(m) => {
                if tx.send(m).is_err() {
                    return Ok(());
                }
            }
            None => tracing::warn!("ignoring a malformed bus message"),
        }
    }
    Ok(())
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, msg: BusMessage) -> Result<()> {
        if self.drop_every > 0 && msg.kind == Kind::Durable {
            let n = self.durable_sent.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_multiple_of(self.drop_every) {
                tracing::debug!(room = %msg.room, seq = ?msg.seq, "dropping a bus message on purpose");
                return Ok(());
            }
        }
        let mut conn = self.publisher.clone();
        let sent = tokio::time::timeout(
            Duration::from_secs(1),
            conn.publish::<_, _, i64>(&self.channel, encode(&msg)),
        )
        .await;
        match sent {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => tracing::warn!(%err, room = %msg.room, "bus publish failed"),
            Err(_) => tracing::warn!(room = %msg.room, "bus publish timed out"),
        }
        Ok(())
    }

    fn subscribe(&self) -> BoxStream<'static, BusMessage> {
        let (tx, rx) = mpsc::unbounded_channel();
        let client = self.client.clone();
        let channel = self.channel.clone();
        tokio::spawn(async move {
            while !tx.is_closed() {
                match forward(&client, &channel, &tx).await {
                    Ok(()) => tracing::warn!(%channel, "Redis bus subscription ended"),
                    Err(err) => tracing::warn!(%err, %channel, "Redis bus subscription failed"),
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        UnboundedReceiverStream::new(rx).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        for msg in [
            BusMessage::durable("r", 7, "{\"a\":1}".into()),
            BusMessage::broadcast("r", Some("c1"), "x".into()),
            BusMessage::presence("r", "p".into()),
        ] {
            assert_eq!(decode(&encode(&msg)), Some(msg));
        }
        assert_eq!(decode("{\"r\":\"x\",\"k\":\"z\",\"p\":\"\"}"), None);
        assert_eq!(decode("nope"), None);
    }

    #[tokio::test]
    async fn two_nodes_see_each_others_messages_and_drops_are_counted() {
        if !crate::testing::redis::ensure().await {
            return;
        }
        let prefix = format!("tw-test-{}:", ulid::Ulid::generate());
        let url = crate::testing::redis::url();
        let a = RedisBus::connect(&url, &prefix, 2).await.unwrap();
        let b = RedisBus::connect(&url, &prefix, 0).await.unwrap();
        let mut rx = b.subscribe();
        tokio::time::sleep(Duration::from_millis(300)).await;
        for seq in 1..=4 {
            a.publish(BusMessage::durable("r", seq, "{}".into()))
                .await
                .unwrap();
        }
        a.publish(BusMessage::broadcast("r", None, "b".into()))
            .await
            .unwrap();
        let mut got = Vec::new();
        for _ in 0..3 {
            let m = tokio::time::timeout(Duration::from_secs(5), rx.next())
                .await
                .unwrap()
                .unwrap();
            got.push(m.seq);
        }
        assert_eq!(
            got,
            [Some(1), Some(3), None],
            "every second durable one dropped"
        );
    }
}

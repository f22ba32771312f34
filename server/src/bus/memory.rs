//! The in-process [`Bus`]: one node, nothing lost, order kept.
//!
//! ```
//! let bus = tidewire_server::bus::memory::MemoryBus::new();
//! # let _ = bus;
//! ```

use std::sync::Mutex;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;

use super::{Bus, BusMessage};
use crate::Result;

/// The in-process bus.
#[derive(Debug, Default)]
pub struct MemoryBus {
    subscribers: Mutex<Vec<mpsc::UnboundedSender<BusMessage>>>,
}

impl MemoryBus {
    /// A bus with no subscribers.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, msg: BusMessage) -> Result<()> {
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subs.retain(|tx| tx.send(msg.clone()).is_ok());
        Ok(())
    }

    fn subscribe(&self) -> BoxStream<'static, BusMessage> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(tx);
        UnboundedReceiverStream::new(rx).boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_subscriber_gets_every_message_in_order() {
        let bus = MemoryBus::new();
        let mut a = bus.subscribe();
        let mut b = bus.subscribe();
        for seq in 1..=3 {
            bus.publish(BusMessage::durable("r", seq, "{}".into()))
                .await
                .unwrap();
        }
        for s in [&mut a, &mut b] {
            for seq in 1..=3 {
                assert_eq!(s.next().await.unwrap().seq, Some(seq));
            }
        }
        drop(a);
        bus.publish(BusMessage::durable("r", 4, "{}".into()))
            .await
            .unwrap();
        assert_eq!(
            bus.subscribers.lock().unwrap().len(),
            1,
            "closed ones are dropped"
        );
    }
}

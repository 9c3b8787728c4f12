//! The cross-node bus behind one trait. A node delivers to its own sessions
//! directly and publishes the same frame on the bus for the other nodes,
//! which deliver it to theirs (Centrifugo's broker split). `local` is the
//! in-process implementation: one node, or several nodes in one process
//! (tests). A Redis pub/sub implementation slots in behind the same trait.

use std::sync::Arc;

use tokio::sync::broadcast;

use crate::hub::Frame;

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus unavailable: {0}")]
    Unavailable(String),
}

/// Identifies the publishing node so it can skip its own messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeId(pub u64);

impl NodeId {
    pub fn random() -> Self {
        Self(rand::random())
    }
}

#[derive(Debug, Clone)]
pub enum BusMessage {
    /// A sequenced event for these responders (and staff when `to_staff`).
    Deliver {
        origin: NodeId,
        seq: u64,
        recipients: Arc<[Arc<str>]>,
        to_staff: bool,
        frame: Frame,
    },
}

impl BusMessage {
    pub fn origin(&self) -> NodeId {
        match self {
            BusMessage::Deliver { origin, .. } => *origin,
        }
    }
}

pub trait Bus: Send + Sync + 'static {
    /// Never blocks; a message no other node is listening for is dropped.
    fn publish(&self, msg: BusMessage) -> Result<(), BusError>;
    /// Messages published by any node (including this one: filter by origin).
    fn subscribe(&self) -> broadcast::Receiver<BusMessage>;
}

/// In-process bus: a bounded broadcast channel. A subscriber that falls more
/// than `capacity` behind sees a `Lagged` error and must resync.
pub struct LocalBus {
    tx: broadcast::Sender<BusMessage>,
}

impl LocalBus {
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self { tx }
    }
}

impl Bus for LocalBus {
    fn publish(&self, msg: BusMessage) -> Result<(), BusError> {
        // No receiver is not an error: a single node has no peers.
        let _ = self.tx.send(msg);
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<BusMessage> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn peers_receive_what_is_published() {
        let bus = LocalBus::new(8);
        let mut rx = bus.subscribe();
        bus.publish(BusMessage::Deliver {
            origin: NodeId(1),
            seq: 7,
            recipients: vec![Arc::<str>::from("r1")].into(),
            to_staff: false,
            frame: Frame::from_static(b"{}"),
        })
        .expect("publish");
        let got = rx.recv().await.expect("recv");
        assert_eq!(got.origin(), NodeId(1));
    }
}

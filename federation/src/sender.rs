//! The outbound federation queue (spec: server-server API, "Transactions").
//!
//! ```text
//!  append path --(same DB transaction as the event)--> federation_outbound rows
//!       '--> OutboundSink::enqueue: wake the (origin, destination) worker
//!  send_edu_durable (to-device, device lists) --> federation_outbound_edus rows, wake
//!  send_edu (typing, receipts, presence) --> in-memory queue, wake
//!  worker: oldest <= 50 PDUs + <= 100 EDUs (durable first) -> PUT /send/{txn} signed by
//!          origin -> 200: delete them
//!          failure: back off (2 s doubling to 10 min, +-50 % jitter), the rows stay
//!  start(): a worker for every pair with rows left (catch-up after our restart)
//! ```
//!
//! One transaction is in flight per pair at a time. The transaction ID is made of the queue ids
//! it carries, so a retry after a crash repeats the same ID and the peer can recognise it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ruma::ServerName;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use unitas_storage::{FederationQueue, Store};

use crate::client::{FederationClient, FederationError};
use crate::keys::SigningKey;
use crate::rooms::{OutboundSink, Pdu};

/// Most PDUs in one transaction (the spec's limit).
pub const MAX_PDUS_PER_TRANSACTION: i64 = 50;
/// Most EDUs in one transaction (the spec's limit).
pub const MAX_EDUS_PER_TRANSACTION: usize = 100;
/// EDUs kept per destination while it is unreachable; the oldest are dropped beyond this
/// (typing and receipts are ephemeral: a late one is worth little).
const MAX_QUEUED_EDUS: usize = 1_000;
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(600);

#[derive(Debug, Default)]
struct Queue {
    wake: Notify,
    /// Held while a transaction of this pair is in flight.
    in_flight: tokio::sync::Mutex<()>,
    /// Ephemeral EDUs (typing, receipts, presence) waiting for the next transaction; durable
    /// ones wait in the database.
    edus: Mutex<std::collections::VecDeque<Value>>,
}

#[derive(Debug)]
struct Inner {
    store: Store,
    client: Arc<FederationClient>,
    keys: HashMap<String, Arc<SigningKey>>,
    queues: Mutex<HashMap<(String, String), Arc<Queue>>>,
    shutdown: watch::Receiver<bool>,
    /// Transaction IDs of EDU-only transactions (unique per process start).
    edu_txn: std::sync::atomic::AtomicU64,
    /// Names this database's queue in transaction IDs (see [`FederationSender::new`]).
    txn_prefix: String,
}

/// The sender. Cheap to clone; it is the node's [`OutboundSink`].
#[derive(Debug, Clone)]
pub struct FederationSender {
    inner: Arc<Inner>,
}

/// Failures of [`FederationSender::flush_once`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The peer or the network failed.
    #[error(transparent)]
    Federation(#[from] FederationError),
    /// The database failed.
    #[error("storage: {0}")]
    Storage(#[from] unitas_storage::StorageError),
    /// No key for the origin (not one of our territories).
    #[error("no signing key for {0}")]
    NoKey(String),
}

/// `delay` times a random factor in [0.5, 1.5] (retries of many peers do not line up).
pub fn jittered(delay: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let factor = match getrandom::fill(&mut byte) {
        Ok(()) => 0.5 + f64::from(byte[0]) / 255.0,
        Err(_) => 1.0,
    };
    delay.mul_f64(factor)
}

impl FederationSender {
    /// A sender signing with `keys` (our territories' server names -> keys). It stops its workers
    /// when `shutdown` turns true. `txn_prefix` starts every transaction ID: stable for this
    /// node (so a retry repeats its ID) and different between nodes, because a territory that
    /// moves to another node keeps its server name and the new node's queue numbers start
    /// again, which peers would take for transactions they already handled.
    pub fn new(
        store: Store,
        client: Arc<FederationClient>,
        keys: HashMap<String, Arc<SigningKey>>,
        shutdown: watch::Receiver<bool>,
        txn_prefix: String,
    ) -> FederationSender {
        FederationSender {
            inner: Arc::new(Inner {
                store,
                client,
                keys,
                queues: Mutex::new(HashMap::new()),
                shutdown,
                edu_txn: std::sync::atomic::AtomicU64::new(
                    ruma::MilliSecondsSinceUnixEpoch::now().get().into(),
                ),
                txn_prefix,
            }),
        }
    }

    /// Starts a worker for every pair with queued events (left from before a restart).
    pub async fn start(&self) -> Result<(), SendError> {
        for (origin, destination) in self.inner.store.list_outbound_destinations().await? {
            self.queue(&origin, &destination).wake.notify_one();
        }
        Ok(())
    }

    /// The queue of a pair, with its worker started on first use.
    fn queue(&self, origin: &str, destination: &str) -> Arc<Queue> {
        let key = (origin.to_owned(), destination.to_owned());
        let mut queues = self.inner.queues.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(queue) = queues.get(&key) {
            return queue.clone();
        }
        let queue = Arc::new(Queue::default());
        queues.insert(key.clone(), queue.clone());
        if tokio::runtime::Handle::try_current().is_ok() {
            let this = self.clone();
            let worker_queue = queue.clone();
            tokio::spawn(async move { this.work(key.0, key.1, worker_queue).await });
        }
        queue
    }

    async fn work(self, origin: String, destination: String, queue: Arc<Queue>) {
        let mut shutdown = self.inner.shutdown.clone();
        let mut backoff: Option<Duration> = None;
        loop {
            if *shutdown.borrow() {
                return;
            }
            match self.send_once(&origin, &destination).await {
                Ok(0) => {
                    backoff = None;
                    tokio::select! {
                        () = queue.wake.notified() => {}
                        _ = shutdown.changed() => {}
                    }
                }
                Ok(_) => backoff = None,
                Err(err) => {
                    let delay = backoff.map_or(FIRST_BACKOFF, |b| (b * 2).min(MAX_BACKOFF));
                    backoff = Some(delay);
                    tracing::info!(%origin, %destination, error = %err, retry_in = ?delay,
                        "federation transaction failed");
                    tokio::select! {
                        () = tokio::time::sleep(jittered(delay)) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
        }
    }

    /// Sends one transaction of the pair's oldest queued events; the number sent (0: nothing
    /// queued).
    pub async fn send_once(&self, origin: &str, destination: &str) -> Result<usize, SendError> {
        let queue = self.queue(origin, destination);
        let _in_flight = queue.in_flight.lock().await;
        let rows = self
            .inner
            .store
            .peek_outbound(origin, destination, MAX_PDUS_PER_TRANSACTION)
            .await?;
        let durable = self
            .inner
            .store
            .peek_outbound_edus(origin, destination, MAX_EDUS_PER_TRANSACTION as i64)
            .await?;
        let edus: Vec<Value> = {
            let mut waiting = queue.edus.lock().unwrap_or_else(|e| e.into_inner());
            let n = waiting
                .len()
                .min(MAX_EDUS_PER_TRANSACTION.saturating_sub(durable.len()));
            waiting.drain(..n).collect()
        };
        if rows.is_empty() && edus.is_empty() && durable.is_empty() {
            return Ok(0);
        }
        let last_durable = durable.last().map(|(id, _)| *id);
        let mut all_edus: Vec<Value> = durable
            .iter()
            .filter_map(|(_, json)| serde_json::from_str(json).ok())
            .collect();
        all_edus.extend(edus.iter().cloned());
        let key = self
            .inner
            .keys
            .get(origin)
            .ok_or_else(|| SendError::NoKey(origin.to_owned()))?;
        let pdus: Vec<Value> = rows
            .iter()
            .filter_map(|(_, json)| serde_json::from_str(json).ok())
            .collect();
        let origin_name =
            ServerName::parse(origin).map_err(|_| SendError::NoKey(origin.to_owned()))?;
        let destination_name = ServerName::parse(destination).map_err(|_| {
            FederationError::Discovery(crate::discovery::DiscoveryError::InvalidName(
                destination.to_owned(),
            ))
        })?;
        let body = json!({
            "origin": origin,
            "origin_server_ts": ruma::MilliSecondsSinceUnixEpoch::now(),
            "pdus": pdus,
            "edus": all_edus,
        });
        let txn = transaction_id(
            &self.inner.txn_prefix,
            rows.first().zip(rows.last()).map(|(f, l)| (f.0, l.0)),
            durable.first().zip(durable.last()).map(|(f, l)| (f.0, l.0)),
            || {
                self.inner
                    .edu_txn
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            },
        );
        let sent = self
            .inner
            .client
            .request(
                &origin_name,
                key,
                &destination_name,
                http::Method::PUT,
                &format!("/_matrix/federation/v1/send/{txn}"),
                Some(&body),
            )
            .await;
        let answer = match sent {
            Ok(answer) => answer,
            Err(err) => {
                // The EDUs go back to the front of the queue for the next attempt.
                let mut waiting = queue.edus.lock().unwrap_or_else(|e| e.into_inner());
                for edu in edus.into_iter().rev() {
                    waiting.push_front(edu);
                }
                waiting.truncate(MAX_QUEUED_EDUS);
                return Err(err.into());
            }
        };
        if let Some(results) = answer.get("pdus").and_then(Value::as_object) {
            for (event_id, result) in results {
                if let Some(error) = result.get("error") {
                    tracing::debug!(%destination, %event_id, %error, "peer rejected our event");
                }
            }
        }
        if !rows.is_empty() || last_durable.is_some() {
            self.inner
                .store
                .delete_sent(
                    origin,
                    destination,
                    rows.last().map(|(id, _)| *id),
                    last_durable,
                )
                .await?;
        }
        Ok(rows.len() + usize::from(!edus_empty(&body)))
    }

    /// Queues an EDU that must survive the peer's downtime and our restart (to-device messages,
    /// device list updates): written to the database before this returns, sent in order with
    /// the pair's other traffic, deleted after the peer's 200.
    pub async fn send_edu_durable(
        &self,
        origin: &str,
        destinations: &[String],
        edu: &Value,
    ) -> Result<(), SendError> {
        let now = i64::from(ruma::MilliSecondsSinceUnixEpoch::now().get());
        self.inner
            .store
            .queue_outbound_edu(origin, destinations, &edu.to_string(), now)
            .await?;
        for destination in destinations {
            self.queue(origin, destination).wake.notify_one();
        }
        Ok(())
    }

    /// Queues an EDU (typing, receipt) from our server `origin` for `destinations`.
    pub fn send_edu(&self, origin: &str, destinations: &[String], edu: Value) {
        for destination in destinations {
            let queue = self.queue(origin, destination);
            {
                let mut waiting = queue.edus.lock().unwrap_or_else(|e| e.into_inner());
                if waiting.len() >= MAX_QUEUED_EDUS {
                    waiting.pop_front();
                }
                waiting.push_back(edu.clone());
            }
            queue.wake.notify_one();
        }
    }

    /// Sends everything queued now, ignoring backoff (tests, and an operator's "retry now"):
    /// the number of events delivered; the first failure ends the pair's attempt.
    pub async fn flush_once(&self) -> Result<usize, SendError> {
        let mut sent = 0;
        let mut first_error = None;
        let mut pairs = self.inner.store.list_outbound_destinations().await?;
        {
            let queues = self.inner.queues.lock().unwrap_or_else(|e| e.into_inner());
            for (pair, queue) in queues.iter() {
                let waiting = !queue
                    .edus
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_empty();
                if waiting && !pairs.contains(pair) {
                    pairs.push(pair.clone());
                }
            }
        }
        for (origin, destination) in pairs {
            loop {
                match self.send_once(&origin, &destination).await {
                    Ok(0) => break,
                    Ok(n) => sent += n,
                    Err(err) => {
                        first_error.get_or_insert(err);
                        break;
                    }
                }
            }
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(sent),
        }
    }
}

/// A transaction's ID: made of the queue ids of the PDUs and durable EDUs it carries, so a retry
/// after a crash or a lost answer repeats the same ID for the same content and the peer can
/// recognise it; transactions of in-memory EDUs alone get a fresh number each. The node's
/// prefix comes first.
fn transaction_id(
    prefix: &str,
    pdus: Option<(i64, i64)>,
    durable_edus: Option<(i64, i64)>,
    fresh: impl FnOnce() -> u64,
) -> String {
    let id = match (pdus, durable_edus) {
        (Some((first, last)), None) => format!("{first}-{last}"),
        (Some((first, last)), Some((e_first, e_last))) => {
            format!("{first}-{last}.d{e_first}-{e_last}")
        }
        (None, Some((e_first, e_last))) => format!("d{e_first}-{e_last}"),
        (None, None) => format!("e{}", fresh()),
    };
    if prefix.is_empty() {
        id
    } else {
        format!("{prefix}.{id}")
    }
}

fn edus_empty(body: &Value) -> bool {
    body.get("edus")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
}

impl OutboundSink for FederationSender {
    fn enqueue(&self, pdu: &Arc<Pdu>, destinations: &[String]) {
        let origin = pdu.sender.server_name().as_str();
        for destination in destinations {
            self.queue(origin, destination).wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::transaction_id;

    #[test]
    fn transaction_ids_repeat_for_the_same_queued_content() {
        assert_eq!(transaction_id("", Some((3, 9)), None, || 7), "3-9");
        assert_eq!(
            transaction_id("", Some((3, 9)), Some((1, 2)), || 7),
            "3-9.d1-2"
        );
        assert_eq!(transaction_id("", None, Some((1, 2)), || 7), "d1-2");
        assert_eq!(transaction_id("", None, None, || 7), "e7");
        assert_eq!(
            transaction_id("n1a2b3c4", Some((3, 9)), None, || 7),
            "n1a2b3c4.3-9"
        );
    }
}

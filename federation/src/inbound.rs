//! Received events: the ONE verification path for every PDU another server hands us (`/send`,
//! `/get_missing_events`, `/send_join` answers, later `/backfill`, `/state`, `/invite`).
//!
//! ```text
//!  JSON -> 1. format (Pdu::from_object: sizes, IDs, room)          -> rejected
//!       -> 2. signatures of every required server, with its keys valid at origin_server_ts
//!                                                                   -> rejected
//!       -> 3. content hash; a mismatch is redacted, then processed  -> (redacted) Pdu
//!  then the append path: auth against auth events, state before, soft-fail (rooms/append.rs)
//! ```
//!
//! `/send` handles each PDU on its own: one bad PDU gets an error entry, the others go on. A PDU
//! whose parents are unknown first fetches them from the origin with `/get_missing_events`
//! (at most [`MISSING_EVENTS_LIMIT`]), each of them through the same verification. Parents
//! still unknown after that (a larger gap) are fetched with the state before them: `/state_ids`
//! names the state and its auth chain, `/event` fetches what is not stored (the same
//! verification again), and the parent is stored as an outlier carrying its state, so the chain
//! after it appends like any fork.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, OwnedRoomId, RoomId, ServerName,
};
use serde_json::{Value, json};

use crate::client::FederationClient;
use crate::key_ring::KeyRing;
use crate::keys::SigningKey;
use crate::rooms::{AppendError, Appended, EventError, Pdu, RoomVersion, Rooms};

/// Most events one `/get_missing_events` request asks for.
pub const MISSING_EVENTS_LIMIT: usize = 20;
/// Most gaps filled through `/state_ids` for one received event.
const MAX_GAPS: usize = 5;
/// Most state and auth chain event IDs accepted from one `/state_ids` answer.
const MAX_GAP_EVENTS: usize = 200_000;
/// `/event` requests in flight to one server while filling a gap.
const PARALLEL_FETCHES: usize = 16;
/// Most PDUs in an inbound transaction (the spec's limit).
pub const MAX_TRANSACTION_PDUS: usize = 50;
/// Most EDUs in an inbound transaction (the spec's limit).
pub const MAX_TRANSACTION_EDUS: usize = 100;

/// Checks a received event's format, signatures (keys from the key ring, valid when the event
/// was sent) and content hash (redacting the event when it does not match). Many events at
/// once: [`verify_batch`].
pub async fn verify_pdu(
    key_ring: &KeyRing,
    object: CanonicalJsonObject,
    version: &RoomVersion,
    expected_room: Option<&RoomId>,
) -> Result<Pdu, EventError> {
    let prepared = prepare_pdu(key_ring, object, version, expected_room).await?;
    check_signatures(&prepared)?;
    finish_pdu(prepared)
}

/// Every signature of a prepared event, one by one (`verify`, as ruma and other servers do).
fn check_signatures(prepared: &Prepared) -> Result<(), EventError> {
    for (key, signature) in &prepared.checks {
        ed25519_dalek::Verifier::verify(key, prepared.signed.as_bytes(), signature)
            .map_err(|e| EventError::Signature(format!("{}: {e}", prepared.pdu.event_id)))?;
    }
    Ok(())
}

/// One received event ready for its signature checks: the parsed event, whether its content
/// hash matched, the bytes the required servers signed, and each (key, signature) to check.
struct Prepared {
    pdu: Pdu,
    hash_ok: bool,
    version: RoomVersion,
    signed: String,
    checks: Vec<(ed25519_dalek::VerifyingKey, ed25519_dalek::Signature)>,
}

/// Everything [`verify_pdu`] does before the signatures: the format (the event parsed), the
/// content hash, and the keys of every required server. The redacted canonical form is
/// serialised once: the signatures cover it and its SHA-256 is the reference hash (event ID).
async fn prepare_pdu(
    key_ring: &KeyRing,
    object: CanonicalJsonObject,
    version: &RoomVersion,
    expected_room: Option<&RoomId>,
) -> Result<Prepared, EventError> {
    let rules = version.rules();
    let signed =
        crate::rooms::pdu::signed_bytes(&object, &rules.redaction).map_err(EventError::Format)?;
    let reference = crate::rooms::pdu::reference_hash_of_signed(version, &signed);
    let computed = content_hash(&object)?;
    let hash_ok = match object.get("hashes") {
        Some(CanonicalJsonValue::Object(hashes)) => match hashes.get("sha256") {
            Some(CanonicalJsonValue::String(hash)) => {
                crate::keys::decode_base64(hash).as_deref() == Some(computed.as_slice())
            }
            _ => false,
        },
        _ => false,
    };
    let servers =
        ruma::signatures::required_server_signatures_to_verify_event(&object, &rules.signatures)
            .map_err(|e| EventError::Signature(e.to_string()))?;
    let mut signatures: Vec<(String, Vec<(String, CanonicalJsonValue)>)> = Vec::new();
    for server in &servers {
        let by_key = match object.get("signatures") {
            Some(CanonicalJsonValue::Object(signatures)) => match signatures.get(server.as_str()) {
                Some(CanonicalJsonValue::Object(by_key)) => {
                    by_key.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
                }
                _ => Vec::new(),
            },
            _ => Vec::new(),
        };
        signatures.push((server.to_string(), by_key));
    }
    let pdu = Pdu::from_object_with_hash(object, version, expected_room, reference)?;
    let at = i64::from(pdu.origin_server_ts.get());
    let mut checks = Vec::new();
    for (server, by_key) in &signatures {
        let mut reasons = Vec::new();
        let before = checks.len();
        for (key_id, signature) in by_key {
            if !key_id.starts_with("ed25519:") {
                continue;
            }
            let public = match key_ring.verify_key(server, key_id, at).await {
                Ok(public) => public,
                Err(err) => {
                    reasons.push(err.to_string());
                    continue;
                }
            };
            let bad = |what: &str| {
                EventError::Signature(format!("{}: {what} of {server} {key_id}", pdu.event_id))
            };
            let key = key_ring
                .decode(&public)
                .ok_or_else(|| bad("unusable key"))?;
            let CanonicalJsonValue::String(signature) = signature else {
                return Err(bad("signature not a string"));
            };
            let signature = crate::keys::decode_base64(signature)
                .and_then(|b| <[u8; 64]>::try_from(b).ok())
                .map(|b| ed25519_dalek::Signature::from_bytes(&b))
                .ok_or_else(|| bad("malformed signature"))?;
            checks.push((key, signature));
        }
        if checks.len() == before {
            return Err(EventError::Signature(format!(
                "no usable key of {server} signed {}: {}",
                pdu.event_id,
                reasons.join("; ")
            )));
        }
    }
    Ok(Prepared {
        pdu,
        hash_ok,
        version: version.clone(),
        signed,
        checks,
    })
}

/// The SHA-256 of the event's canonical JSON without `signatures`, `unsigned` and `hashes`
/// (spec: "Calculating the content hash"), serialised straight from the object (ruma's
/// `content_hash` copies the whole object first).
pub(crate) fn content_hash(object: &CanonicalJsonObject) -> Result<[u8; 32], EventError> {
    struct Hashed<'a>(&'a CanonicalJsonObject);
    impl serde::Serialize for Hashed<'_> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            serializer.collect_map(
                self.0
                    .iter()
                    .filter(|(k, _)| !matches!(k.as_str(), "signatures" | "unsigned" | "hashes")),
            )
        }
    }
    let json =
        serde_json::to_vec(&Hashed(object)).map_err(|e| EventError::Format(e.to_string()))?;
    use sha2::Digest as _;
    Ok(sha2::Sha256::digest(&json).into())
}

/// An event whose signatures passed: redacted on a content hash mismatch.
fn finish_pdu(prepared: Prepared) -> Result<Pdu, EventError> {
    if prepared.hash_ok {
        Ok(prepared.pdu)
    } else {
        tracing::info!(event_id = %prepared.pdu.event_id, "content hash mismatch: redacting");
        crate::rooms::redact::redact_pdu(&prepared.pdu, &prepared.version)
    }
}

/// [`verify_pdu`] for many events at once: every signature of every event in one ed25519 batch
/// (about twice as fast as one by one); when the batch fails, each event is checked on its own
/// so only the bad ones fail. One outcome per event, in order.
///
/// Batch verification is cofactored, single verification (and other servers') is not: a
/// signature with a small-order component, which only the key's holder can make, could pass
/// here and fail elsewhere. Weak (small-order) keys are refused outright.
pub async fn verify_batch(
    key_ring: &KeyRing,
    items: Vec<(CanonicalJsonObject, RoomVersion, OwnedRoomId)>,
) -> Vec<Result<Pdu, EventError>> {
    let mut prepared = Vec::with_capacity(items.len());
    for (object, version, room_id) in items {
        prepared.push(prepare_pdu(key_ring, object, &version, Some(&room_id)).await);
    }
    let mut messages: Vec<&[u8]> = Vec::new();
    let mut signatures = Vec::new();
    let mut keys = Vec::new();
    for ready in prepared.iter().flatten() {
        for (key, signature) in &ready.checks {
            messages.push(ready.signed.as_bytes());
            signatures.push(*signature);
            keys.push(*key);
        }
    }
    // One equation for the batch, each server key's terms summed (see `signature_batch`).
    let all_good = crate::signature_batch::verify_grouped(&messages, &signatures, &keys);
    prepared
        .into_iter()
        .map(|ready| {
            let ready = ready?;
            if !all_good {
                check_signatures(&ready)?;
            }
            finish_pdu(ready)
        })
        .collect()
}

/// Whether the room's server ACL (if any) lets `server` take part.
pub async fn acl_allows(
    rooms: &Rooms,
    room_id: &RoomId,
    server: &str,
) -> Result<bool, AppendError> {
    let Some(id) = rooms
        .current_state_event_id(room_id, "m.room.server_acl", "")
        .await?
    else {
        return Ok(true);
    };
    let Some(pdu) = rooms.get_pdu(&id).await? else {
        return Ok(true);
    };
    let content: Value = serde_json::from_str(pdu.content.get()).unwrap_or(Value::Null);
    Ok(crate::acl::allows(&content, server))
}

/// Parses a JSON value into a canonical JSON object (floats and out-of-range integers fail).
pub fn canonical_object(value: &Value) -> Result<CanonicalJsonObject, EventError> {
    // Read from the borrowed value into the canonical tree: no copy of the event first.
    crate::canonical::object_from_value(value)
        .map_err(|e| EventError::Format(format!("not canonical JSON: {e}")))
}

/// A `/send` transaction's body as it came: each PDU stays raw text until it is read into its
/// canonical form (no JSON tree of the whole body first). A missing `pdus` or `edus` is empty;
/// one of another type fails the whole body.
#[derive(Debug, serde::Deserialize)]
pub struct TransactionBody<'a> {
    /// The sending server.
    #[serde(default)]
    pub origin: Option<String>,
    /// The PDUs, unread.
    #[serde(borrow, default)]
    pub pdus: Vec<&'a serde_json::value::RawValue>,
    /// The EDUs.
    #[serde(default)]
    pub edus: Vec<Value>,
}

impl<'a> TransactionBody<'a> {
    /// Reads a body (JSON text).
    pub fn parse(body: &'a [u8]) -> Result<TransactionBody<'a>, serde_json::Error> {
        serde_json::from_slice(body)
    }
}

/// One of our territories, to sign requests with.
#[derive(Debug, Clone)]
pub struct LocalServer {
    /// Server name.
    pub name: String,
    /// Signing key.
    pub key: Arc<SigningKey>,
}

/// The inbound side: transactions and the events they pull in.
#[derive(Debug)]
pub struct Inbound {
    rooms: Rooms,
    key_ring: Arc<KeyRing>,
    client: Arc<FederationClient>,
    /// Answers of recent transactions, by (origin, txn ID): a retry gets the same answer.
    seen: Mutex<HashMap<(String, String), Value>>,
    /// (room, earliest event here) pairs a server answered `/backfill` for with nothing new:
    /// paging back there again asks nobody.
    exhausted: Mutex<HashSet<(OwnedRoomId, OwnedEventId)>>,
}

impl Inbound {
    /// The inbound side over the rooms service.
    pub fn new(rooms: Rooms, key_ring: Arc<KeyRing>, client: Arc<FederationClient>) -> Inbound {
        Inbound {
            rooms,
            key_ring,
            client,
            seen: Mutex::new(HashMap::new()),
            exhausted: Mutex::new(HashSet::new()),
        }
    }

    /// The key ring.
    pub fn key_ring(&self) -> &Arc<KeyRing> {
        &self.key_ring
    }

    /// `PUT /send/{txnId}` from `origin` (verified by the caller), received by `local`: the
    /// per-PDU results. The answer of a transaction ID already handled is repeated.
    pub async fn handle_transaction(
        &self,
        local: &LocalServer,
        origin: &ServerName,
        txn_id: &str,
        body: &TransactionBody<'_>,
    ) -> Result<Value, EventError> {
        let key = (origin.to_string(), txn_id.to_owned());
        if let Some(answer) = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(answer.clone());
        }
        let pdus = body.pdus.as_slice();
        let edus = body.edus.len();
        if pdus.len() > MAX_TRANSACTION_PDUS || edus > MAX_TRANSACTION_EDUS {
            return Err(EventError::TooLarge(format!(
                "{} PDUs and {edus} EDUs (at most {MAX_TRANSACTION_PDUS} and {MAX_TRANSACTION_EDUS})",
                pdus.len()
            )));
        }
        let started = std::time::Instant::now();
        // 1. Every PDU checked on its own (format, ACL, signatures, hashes).
        //    Signatures are checked on every core: each PDU stands on its own.
        let mut results = serde_json::Map::new();
        let mut prepared = Vec::new();
        for (index, raw) in pdus.iter().enumerate() {
            match self.check_pdu(origin, raw).await {
                Ok(checked) => prepared.push((index, checked)),
                Err(err) => tracing::info!(%origin, error = %err, "PDU refused before its checks"),
            }
        }
        let (indexes, items): (Vec<_>, Vec<_>) = prepared.into_iter().unzip();
        let versions: Vec<RoomVersion> = items.iter().map(|(_, v, _)| v.clone()).collect();
        let outcomes = self.verify_each(items).await;
        let mut verified: Vec<(Pdu, RoomVersion)> = Vec::new();
        for ((index, version), outcome) in indexes.into_iter().zip(versions).zip(outcomes) {
            match outcome {
                Ok(pdu) => verified.push((pdu, version)),
                Err(err) => {
                    if let Some(id) = Self::claimed_id(pdus[index], &version) {
                        results.insert(id.to_string(), json!({"error": err.to_string()}));
                    }
                }
            }
        }
        let verified_at = started.elapsed();
        // 2. Gaps before them filled from the origin (parents neither stored nor in the batch).
        let mut in_batch: std::collections::HashSet<OwnedEventId> =
            std::collections::HashSet::new();
        for (pdu, version) in &verified {
            let mut missing = false;
            for parent in &pdu.prev_events {
                if !in_batch.contains(parent)
                    && !self.rooms.has_event(parent).await.unwrap_or(false)
                {
                    missing = true;
                    break;
                }
            }
            if missing && let Err(err) = self.fetch_missing(local, origin, pdu, version).await {
                tracing::info!(%origin, error = %err, "could not fill a gap");
            }
            in_batch.insert(pdu.event_id.clone());
        }
        let gaps_at = started.elapsed();
        // 3. Appended per room in order, sharing group commits.
        let mut by_room: Vec<(OwnedRoomId, Vec<Pdu>)> = Vec::new();
        for (pdu, _) in verified {
            match by_room.iter_mut().find(|(room, _)| *room == pdu.room_id) {
                Some((_, list)) => list.push(pdu),
                None => by_room.push((pdu.room_id.clone(), vec![pdu])),
            }
        }
        for (_, list) in by_room {
            let ids: Vec<OwnedEventId> = list.iter().map(|p| p.event_id.clone()).collect();
            for (id, outcome) in ids
                .into_iter()
                .zip(self.rooms.append_remote_batch(list).await)
            {
                let entry = match outcome {
                    Ok(_) => json!({}),
                    Err(err) => json!({"error": err.to_string()}),
                };
                results.insert(id.to_string(), entry);
            }
        }
        tracing::trace!(
            %origin, pdus = pdus.len(),
            verify_us = verified_at.as_micros(),
            gaps_us = (gaps_at - verified_at).as_micros(),
            append_us = (started.elapsed() - gaps_at).as_micros(),
            "transaction handled"
        );
        let answer = json!({"pdus": results});
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.len() > 10_000 {
            seen.clear();
        }
        seen.insert(key, answer.clone());
        Ok(answer)
    }

    /// The checks of one PDU of a transaction before its signatures: the canonical object with
    /// its room's version and ID. (Failures here are not named in the answer: the event ID
    /// needs the room's version and a canonical object.)
    async fn check_pdu(
        &self,
        origin: &ServerName,
        raw: &serde_json::value::RawValue,
    ) -> Result<(CanonicalJsonObject, RoomVersion, OwnedRoomId), AppendError> {
        let object = crate::canonical::object_from_str(raw.get())
            .map_err(|e| EventError::Format(format!("not canonical JSON: {e}")))?;
        let room_id = object
            .get("room_id")
            .and_then(|r| r.as_str())
            .and_then(|r| RoomId::parse(r).ok());
        let Some(room_id) = room_id else {
            return Err(EventError::Format("no valid room_id".into()).into());
        };
        let version = self
            .rooms
            .room_version(&room_id)
            .await?
            .ok_or_else(|| AppendError::UnknownRoom(room_id.clone()))?;
        if !acl_allows(&self.rooms, &room_id, origin.as_str()).await? {
            return Err(EventError::Unauthorized(format!(
                "the server ACL of {room_id} denies {origin}"
            ))
            .into());
        }
        Ok((object, version, room_id))
    }

    /// The event ID a PDU claims (when it can be computed): names an error in the answer. Only
    /// computed for PDUs that failed (a verified PDU carries its ID).
    fn claimed_id(
        raw: &serde_json::value::RawValue,
        version: &RoomVersion,
    ) -> Option<OwnedEventId> {
        let object = crate::canonical::object_from_str(raw.get()).ok()?;
        let hash = ruma::signatures::reference_hash(&object, version.rules()).ok()?;
        OwnedEventId::try_from(format!("${hash}")).ok()
    }

    /// `/get_missing_events` for the gap between our forward extremities and `pdu`; the events
    /// returned are verified and appended oldest first.
    async fn fetch_missing(
        &self,
        local: &LocalServer,
        origin: &ServerName,
        pdu: &Pdu,
        version: &RoomVersion,
    ) -> Result<(), AppendError> {
        let earliest = self.rooms.forward_extremities(&pdu.room_id).await?;
        let body = json!({
            "earliest_events": earliest,
            "latest_events": [pdu.event_id],
            "limit": MISSING_EVENTS_LIMIT,
        });
        let local_name = ServerName::parse(&local.name)
            .map_err(|e| EventError::Format(format!("our server name: {e}")))?;
        let answer = self
            .client
            .request(
                &local_name,
                &local.key,
                origin,
                http::Method::POST,
                &format!(
                    "/_matrix/federation/v1/get_missing_events/{}",
                    percent(pdu.room_id.as_str())
                ),
                Some(&body),
            )
            .await
            .map_err(|e| EventError::Missing(format!("get_missing_events from {origin}: {e}")))?;
        let mut items = Vec::new();
        for value in answer
            .get("events")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            items.push((
                canonical_object(value)?,
                version.clone(),
                pdu.room_id.clone(),
            ));
        }
        // The transactions' path: batched signatures on every core, one outcome per event.
        let mut events = Vec::new();
        for outcome in self.verify_each(items).await {
            match outcome {
                Ok(event) => events.push(event),
                Err(err) => tracing::info!(%origin, error = %err, "missing event rejected"),
            }
        }
        events.sort_by_key(|e| e.depth);
        // Parents still unknown after that are a larger gap: the state before each comes from
        // /state_ids, the events from /event, then the chain appends on that state.
        let mut known: std::collections::HashSet<OwnedEventId> =
            events.iter().map(|e| e.event_id.clone()).collect();
        known.insert(pdu.event_id.clone());
        let mut gaps = Vec::new();
        for event in events.iter().chain(std::iter::once(pdu)) {
            for parent in &event.prev_events {
                if !known.contains(parent)
                    && !gaps.contains(parent)
                    && !self.rooms.has_event(parent).await?
                {
                    gaps.push(parent.clone());
                }
            }
        }
        for gap in gaps.into_iter().take(MAX_GAPS) {
            if let Err(err) = self
                .fill_gap(local, origin, &pdu.room_id, &gap, version)
                .await
            {
                tracing::info!(%origin, %gap, error = %err, "could not fetch the state at a gap");
            }
        }
        for event in events {
            if self.rooms.has_event(&event.event_id).await? {
                continue;
            }
            if let Err(err) = self.rooms.append_remote(event).await {
                tracing::info!(%origin, error = %err, "missing event not appended");
            }
        }
        Ok(())
    }

    /// Fetches an event we miss the parents of, and the state before it (`/state_ids`, then
    /// every event not stored here through `/event`, all through the one verification path),
    /// and stores them so that its children can be appended.
    async fn fill_gap(
        &self,
        local: &LocalServer,
        origin: &ServerName,
        room_id: &RoomId,
        missing: &OwnedEventId,
        version: &RoomVersion,
    ) -> Result<(), AppendError> {
        let local_name = ServerName::parse(&local.name)
            .map_err(|e| EventError::Format(format!("our server name: {e}")))?;
        let answer = self
            .client
            .request(
                &local_name,
                &local.key,
                origin,
                http::Method::GET,
                &format!(
                    "/_matrix/federation/v1/state_ids/{}?event_id={}",
                    percent(room_id.as_str()),
                    percent(missing.as_str())
                ),
                None,
            )
            .await
            .map_err(|e| EventError::Missing(format!("state_ids from {origin}: {e}")))?;
        let ids = |field: &str| -> Result<Vec<OwnedEventId>, EventError> {
            let list = answer
                .get(field)
                .and_then(Value::as_array)
                .ok_or_else(|| EventError::Format(format!("state_ids answer without {field}")))?;
            if list.len() > MAX_GAP_EVENTS {
                return Err(EventError::TooLarge(format!("{} {field}", list.len())));
            }
            Ok(list
                .iter()
                .filter_map(|v| v.as_str().and_then(|id| OwnedEventId::try_from(id).ok()))
                .collect())
        };
        let state_ids = ids("pdu_ids")?;
        let chain_ids = ids("auth_chain_ids")?;
        // Fetch what is not here yet (the missing event itself too), several at a time.
        let mut wanted = vec![missing.clone()];
        for id in state_ids.iter().chain(&chain_ids) {
            if !wanted.contains(id) && !self.rooms.has_event(id).await? {
                wanted.push(id.clone());
            }
        }
        let fetched = self
            .fetch_events(&local_name, local, origin, wanted)
            .await?;
        let verified = self.verify_many(fetched, version, room_id).await?;
        let mut by_id: HashMap<OwnedEventId, Pdu> = verified
            .into_iter()
            .map(|p| (p.event_id.clone(), p))
            .collect();
        let missing_pdu = by_id
            .remove(missing)
            .ok_or_else(|| EventError::Missing(format!("{missing} from {origin}")))?;
        // Stored events of the state come from here (their state group is not needed).
        let mut state = Vec::new();
        for id in &state_ids {
            match by_id.get(id) {
                Some(pdu) => state.push(pdu.clone()),
                None => match self.rooms.get_pdu(id).await? {
                    Some(pdu) => state.push((*pdu).clone()),
                    None => return Err(EventError::Missing(format!("state event {id}")).into()),
                },
            }
        }
        let chain: Vec<Pdu> = chain_ids.iter().filter_map(|id| by_id.remove(id)).collect();
        self.rooms
            .store_gap(version, missing_pdu, state, chain)
            .await
    }

    /// `/event/{id}` for each of `ids` from `origin`, [`PARALLEL_FETCHES`] at a time: the
    /// events as canonical objects, in no particular order. Any failure fails the whole.
    async fn fetch_events(
        &self,
        local_name: &ServerName,
        local: &LocalServer,
        origin: &ServerName,
        ids: Vec<OwnedEventId>,
    ) -> Result<Vec<CanonicalJsonObject>, EventError> {
        let mut out = Vec::with_capacity(ids.len());
        let mut queue = ids.into_iter();
        let mut running = tokio::task::JoinSet::new();
        loop {
            while running.len() < PARALLEL_FETCHES {
                let Some(id) = queue.next() else { break };
                let client = self.client.clone();
                let (local_name, key, origin) =
                    (local_name.to_owned(), local.key.clone(), origin.to_owned());
                running.spawn(async move {
                    let answer = client
                        .request(
                            &local_name,
                            &key,
                            &origin,
                            http::Method::GET,
                            &format!("/_matrix/federation/v1/event/{}", percent(id.as_str())),
                            None,
                        )
                        .await
                        .map_err(|e| EventError::Missing(format!("event {id}: {e}")))?;
                    let pdu = answer
                        .get("pdus")
                        .and_then(Value::as_array)
                        .and_then(|p| p.first())
                        .ok_or_else(|| EventError::Missing(format!("event {id}: no PDU")))?;
                    canonical_object(pdu)
                });
            }
            let Some(done) = running.join_next().await else {
                break;
            };
            let object = done.map_err(|e| EventError::Missing(format!("fetch task: {e}")))??;
            out.push(object);
        }
        Ok(out)
    }
}

/// Why joining a room over federation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// No server could be asked (a room ID without a server name, and no `via`).
    #[error("no server to join {0} through")]
    NoServer(String),
    /// Every server asked refused or failed; the last reason.
    #[error("could not join {room} through {servers}: {reason}")]
    Failed {
        /// Room.
        room: String,
        /// Servers asked.
        servers: String,
        /// The last failure.
        reason: String,
    },
}

/// What a checked membership template says: parents, auth events, depth, and for a restricted
/// join the resident server's user who vouches.
pub type CheckedTemplate = (
    Vec<OwnedEventId>,
    Vec<OwnedEventId>,
    u64,
    Option<ruma::OwnedUserId>,
);

/// Checks a resident server's join template before we sign anything made from it: exactly a
/// join of `user` in `room_id`, nothing more, except that a restricted room's template may name
/// a user of `resident` (the server asked) in `join_authorised_via_users_server`.
pub fn check_join_template(
    template: &Value,
    room_id: &RoomId,
    user: &ruma::UserId,
    resident: &str,
) -> Result<CheckedTemplate, String> {
    let object = template
        .as_object()
        .ok_or("the template is not an object")?;
    let field = |name: &str| object.get(name).and_then(Value::as_str);
    if field("type") != Some("m.room.member") {
        return Err("not an m.room.member event".into());
    }
    if field("state_key") != Some(user.as_str()) || field("sender") != Some(user.as_str()) {
        return Err("state_key and sender must be the joining user".into());
    }
    if field("room_id") != Some(room_id.as_str()) {
        return Err("another room".into());
    }
    let content = object.get("content").cloned().unwrap_or(Value::Null);
    let mut rest = content.clone();
    let authoriser = match rest
        .as_object_mut()
        .and_then(|c| c.remove("join_authorised_via_users_server"))
    {
        None => None,
        Some(value) => {
            let by = value
                .as_str()
                .and_then(|u| ruma::OwnedUserId::try_from(u).ok())
                .ok_or("join_authorised_via_users_server is not a user ID")?;
            if by.server_name().as_str() != resident {
                return Err(format!(
                    "the join is vouched for by {by}, not by a user of {resident}"
                ));
            }
            Some(by)
        }
    };
    if rest != json!({"membership": "join"}) {
        return Err(format!(
            "the content must be exactly {{\"membership\": \"join\"}}, got {content}"
        ));
    }
    let ids = |name: &str, max: usize| -> Result<Vec<OwnedEventId>, String> {
        let list = object
            .get(name)
            .and_then(Value::as_array)
            .ok_or(format!("{name} is missing"))?;
        if list.is_empty() || list.len() > max {
            return Err(format!("{name} must have 1 to {max} entries"));
        }
        list.iter()
            .map(|v| {
                v.as_str()
                    .and_then(|s| OwnedEventId::try_from(s).ok())
                    .ok_or(format!("{name} holds a malformed event ID"))
            })
            .collect()
    };
    let prev = ids("prev_events", 20)?;
    let auth = ids("auth_events", 10)?;
    let depth = object
        .get("depth")
        .and_then(Value::as_u64)
        .filter(|d| (1..=(1u64 << 53)).contains(d))
        .ok_or("depth must be a positive integer")?;
    Ok((prev, auth, depth, authoriser))
}

impl Inbound {
    /// Joins `user` (of our `local` territory) to a room this node does not know, through the
    /// first of `via` that answers: make_join, a strict check of the template, our own signed
    /// join, send_join, every returned event verified, then the room is set up from that state.
    pub async fn join_remote(
        &self,
        local: &LocalServer,
        user: &ruma::UserId,
        room_id: &RoomId,
        via: &[String],
    ) -> Result<Appended, JoinError> {
        if via.is_empty() {
            return Err(JoinError::NoServer(room_id.to_string()));
        }
        let mut last = String::new();
        for server in via {
            match self.join_through(local, user, room_id, server).await {
                Ok(outcome) => return Ok(outcome),
                Err(reason) => {
                    tracing::info!(%room_id, %server, %reason, "remote join failed");
                    last = reason;
                }
            }
        }
        Err(JoinError::Failed {
            room: room_id.to_string(),
            servers: via.join(", "),
            reason: last,
        })
    }

    async fn join_through(
        &self,
        local: &LocalServer,
        user: &ruma::UserId,
        room_id: &RoomId,
        server: &str,
    ) -> Result<Appended, String> {
        let started = std::time::Instant::now();
        /// The parts of a `send_join` answer we use, parsed once from the bytes.
        #[derive(serde::Deserialize)]
        struct JoinAnswer {
            #[serde(default)]
            state: Vec<CanonicalJsonObject>,
            #[serde(default)]
            auth_chain: Vec<CanonicalJsonObject>,
            /// Our join with the resident server's signature (restricted joins).
            #[serde(default)]
            event: Option<CanonicalJsonObject>,
        }
        let (version, mut join, mut answer) = self
            .membership_handshake::<JoinAnswer>(local, user, room_id, server, "join")
            .await?;
        if let Some(signed) = answer.event.take() {
            // The same event (signatures are not in its ID), now vouched for by the resident.
            let signed = self
                .verify_many(vec![signed], &version, room_id)
                .await
                .map_err(|e| format!("send_join event: {e}"))?
                .pop()
                .ok_or("send_join answered an empty event")?;
            if signed.event_id != join.event_id {
                return Err("send_join answered another event than our join".into());
            }
            join = signed;
        }
        let handshake = started.elapsed();
        let version_id = version.id().as_str().to_owned();
        let state = self
            .verify_many(answer.state, &version, room_id)
            .await
            .map_err(|e| format!("state: {e}"))?;
        let auth_chain = self
            .verify_many(answer.auth_chain, &version, room_id)
            .await
            .map_err(|e| format!("auth_chain: {e}"))?;
        let verified = started.elapsed();
        // The room's version is the create event's, not just what make_join said.
        let create = state
            .iter()
            .find(|p| p.kind.to_string() == "m.room.create" && p.state_key.as_deref() == Some(""))
            .ok_or("the state has no m.room.create")?;
        let created: Value =
            serde_json::from_str(create.content.get()).map_err(|e| e.to_string())?;
        let declared = created
            .get("room_version")
            .and_then(Value::as_str)
            .unwrap_or("1");
        if declared != version_id {
            return Err(format!(
                "make_join said version {version_id}, the room is {declared}"
            ));
        }
        let (events, chain) = (state.len(), auth_chain.len());
        let outcome = self
            .rooms
            .join_from_state(&version, join, state, auth_chain)
            .await
            .map_err(|e| e.to_string());
        tracing::debug!(
            %room_id, events, chain,
            handshake_ms = handshake.as_millis(),
            verify_ms = (verified - handshake).as_millis(),
            store_ms = (started.elapsed() - verified).as_millis(),
            "joined over federation"
        );
        outcome
    }
}

/// Checks a membership template (`make_join`, `make_leave`) before we sign anything made from
/// it: exactly `membership` of `user` in `room_id`, nothing more. Returns the parents, auth
/// events and depth.
pub fn check_membership_template(
    template: &Value,
    room_id: &RoomId,
    user: &ruma::UserId,
    membership: &str,
    resident: &str,
) -> Result<CheckedTemplate, String> {
    if membership == "join" {
        return check_join_template(template, room_id, user, resident);
    }
    if template.get("content") != Some(&json!({"membership": membership})) {
        return Err(format!(
            "the content must be exactly {{\"membership\": \"{membership}\"}}, got {}",
            template.get("content").cloned().unwrap_or(Value::Null)
        ));
    }
    let mut as_join = template.clone();
    as_join["content"] = json!({"membership": "join"});
    check_join_template(&as_join, room_id, user, resident)
}

impl Inbound {
    /// An invite from `origin` for one of our users (`/invite` v2): checked (the sender's
    /// signature, an invite of a user of `local` by a user of `origin`, the event ID), then
    /// countersigned by `local`. Returns the countersigned event.
    pub async fn countersign_invite(
        &self,
        local: &LocalServer,
        origin: &ServerName,
        room_id: &RoomId,
        event_id: &str,
        version: &RoomVersion,
        event: &Value,
    ) -> Result<(Pdu, CanonicalJsonObject), EventError> {
        let object = canonical_object(event)?;
        let pdu = verify_pdu(&self.key_ring, object.clone(), version, Some(room_id)).await?;
        let content: Value = serde_json::from_str(pdu.content.get()).unwrap_or_default();
        let invitee = pdu.state_key.as_deref().unwrap_or_default();
        if pdu.event_id.as_str() != event_id
            || pdu.kind.to_string() != "m.room.member"
            || content.get("membership").and_then(Value::as_str) != Some("invite")
        {
            return Err(EventError::Format(
                "not the invite named in the path".into(),
            ));
        }
        if pdu.sender.server_name() != origin {
            return Err(EventError::Unauthorized(
                "the inviter is not a user of the requesting server".into(),
            ));
        }
        if invitee.split_once(':').map(|(_, s)| s) != Some(local.name.as_str()) {
            return Err(EventError::Unauthorized(
                "the invitee is not a user of this server".into(),
            ));
        }
        let mut signed = object;
        local
            .key
            .hash_and_sign_event(&local.name, &mut signed, &version.rules().redaction)
            .map_err(|e| EventError::Signature(e.to_string()))?;
        let pdu = Pdu::from_object(signed.clone(), version, Some(room_id))?;
        Ok((pdu, signed))
    }

    /// Sends our invite of a user of `destination` to their server for its signature (`/invite`
    /// v2); the countersigned event, ready to append.
    pub async fn request_invite_signature(
        &self,
        local: &LocalServer,
        destination: &ServerName,
        invite: &Pdu,
        version: &RoomVersion,
        invite_room_state: Vec<Value>,
    ) -> Result<Pdu, String> {
        let local_name = ServerName::parse(&local.name).map_err(|e| e.to_string())?;
        let event: Value =
            serde_json::from_str(invite.federation_json()).map_err(|e| e.to_string())?;
        let body = json!({
            "room_version": version.id().as_str(),
            "event": event,
            "invite_room_state": invite_room_state,
        });
        let answer = self
            .client
            .request(
                &local_name,
                &local.key,
                destination,
                http::Method::PUT,
                &format!(
                    "/_matrix/federation/v2/invite/{}/{}",
                    percent(invite.room_id.as_str()),
                    percent(invite.event_id.as_str())
                ),
                Some(&body),
            )
            .await
            .map_err(|e| format!("invite: {e}"))?;
        let returned = answer
            .get("event")
            .ok_or("the invite answer has no event")?;
        let object = canonical_object(returned).map_err(|e| e.to_string())?;
        let signed = verify_pdu(
            &self.key_ring,
            object.clone(),
            version,
            Some(&invite.room_id),
        )
        .await
        .map_err(|e| e.to_string())?;
        if signed.event_id != invite.event_id {
            return Err("the invitee's server changed the invite".into());
        }
        let theirs = match object.get("signatures") {
            Some(CanonicalJsonValue::Object(s)) => s.contains_key(destination.as_str()),
            _ => false,
        };
        if !theirs {
            return Err("the invitee's server did not sign the invite".into());
        }
        Ok(signed)
    }

    /// Declines an invite into (or leaves) a room this node is not in, through `server`:
    /// make_leave, a strict check of the template, our signed leave, send_leave.
    pub async fn leave_remote(
        &self,
        local: &LocalServer,
        user: &ruma::UserId,
        room_id: &RoomId,
        server: &str,
    ) -> Result<(), String> {
        self.membership_handshake::<Value>(local, user, room_id, server, "leave")
            .await
            .map(|_| ())
    }

    /// Knocks on a room this node is not in, through `server` (make_knock, our signed knock,
    /// send_knock): our knock event and the stripped state the resident server shows knockers.
    pub async fn knock_remote(
        &self,
        local: &LocalServer,
        user: &ruma::UserId,
        room_id: &RoomId,
        server: &str,
    ) -> Result<(Pdu, Vec<Value>), String> {
        let (_, knock, answer) = self
            .membership_handshake::<Value>(local, user, room_id, server, "knock")
            .await?;
        let state = answer
            .get("knock_room_state")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        Ok((knock, state))
    }

    /// `make_<membership>` at `server`, a strict check of the template, our own signed event
    /// built from it, `send_<membership>` (v2): the room version, our event and the answer.
    async fn membership_handshake<T: serde::de::DeserializeOwned>(
        &self,
        local: &LocalServer,
        user: &ruma::UserId,
        room_id: &RoomId,
        server: &str,
        membership: &str,
    ) -> Result<(RoomVersion, Pdu, T), String> {
        let local_name = ServerName::parse(&local.name).map_err(|e| e.to_string())?;
        let resident = ServerName::parse(server).map_err(|e| e.to_string())?;
        let answer = self
            .client
            .request(
                &local_name,
                &local.key,
                &resident,
                http::Method::GET,
                &format!(
                    "/_matrix/federation/v1/make_{membership}/{}/{}?ver=10&ver=11&ver=12",
                    percent(room_id.as_str()),
                    percent(user.as_str())
                ),
                None,
            )
            .await
            .map_err(|e| format!("make_{membership}: {e}"))?;
        let version_id = answer
            .get("room_version")
            .and_then(Value::as_str)
            .unwrap_or("1");
        let version = RoomVersion::parse(version_id)
            .ok_or_else(|| format!("unsupported room version {version_id}"))?;
        let template = answer
            .get("event")
            .ok_or_else(|| format!("make_{membership} answered no event"))?;
        let (prev_events, auth_events, depth, authoriser) =
            check_membership_template(template, room_id, user, membership, server)?;
        let mut content = json!({"membership": membership});
        if let Some(by) = &authoriser {
            content["join_authorised_via_users_server"] = json!(by);
        }
        let event = crate::rooms::build::build_pdu(
            &version,
            &crate::rooms::EventTemplate::state("m.room.member", user.as_str(), content),
            crate::rooms::build::Placement {
                room_id: Some(room_id),
                sender: user,
                prev_events,
                auth_events,
                depth,
                origin_server_ts: ruma::MilliSecondsSinceUnixEpoch::now(),
                origin: &local.name,
                key: &local.key,
            },
        )
        .map_err(|e| e.to_string())?;
        let body: Value =
            serde_json::from_str(event.federation_json()).map_err(|e| e.to_string())?;
        let answer = self
            .client
            .request_as(
                &local_name,
                &local.key,
                &resident,
                http::Method::PUT,
                &format!(
                    "/_matrix/federation/{}/send_{membership}/{}/{}",
                    // send_knock has only a v1; join and leave answer better in v2.
                    if membership == "knock" { "v1" } else { "v2" },
                    percent(room_id.as_str()),
                    percent(event.event_id.as_str())
                ),
                Some(&body),
            )
            .await
            .map_err(|e| format!("send_{membership}: {e}"))?;
        Ok((version, event, answer))
    }
}

impl Inbound {
    /// Verifies events on every core (each stands on its own), keeping their order; the first
    /// failure fails all.
    pub async fn verify_many(
        &self,
        objects: Vec<CanonicalJsonObject>,
        version: &RoomVersion,
        room_id: &RoomId,
    ) -> Result<Vec<Pdu>, EventError> {
        let items = objects
            .into_iter()
            .map(|o| (o, version.clone(), room_id.to_owned()))
            .collect();
        self.verify_each(items).await.into_iter().collect()
    }

    /// Verifies events on every core (each stands on its own): one outcome per event, in order.
    async fn verify_each(
        &self,
        items: Vec<(CanonicalJsonObject, RoomVersion, OwnedRoomId)>,
    ) -> Vec<Result<Pdu, EventError>> {
        let per_task = items.len().div_ceil(cores()).max(1);
        let mut items = items;
        let mut tasks = Vec::new();
        while !items.is_empty() {
            let part: Vec<_> = items.drain(..per_task.min(items.len())).collect();
            let count = part.len();
            let key_ring = self.key_ring.clone();
            // On the blocking pool: a verification task never waits (keys are cached), so as
            // a runtime task it would keep its worker, and the next task spawned from that
            // worker would wait in its non-stealable LIFO slot instead of running on another
            // core (measured: two halves of a 30,000-event join ran one after the other).
            let handle = tokio::runtime::Handle::current();
            let task =
                tokio::task::spawn_blocking(move || handle.block_on(verify_batch(&key_ring, part)));
            tasks.push((count, task));
        }
        let mut all = Vec::new();
        for (count, task) in tasks {
            match task.await {
                Ok(part) => all.extend(part),
                Err(e) => all.extend(
                    (0..count).map(|_| Err(EventError::Format(format!("verification task: {e}")))),
                ),
            }
        }
        all
    }
}

/// The machine's cores, read once (each read opens three cgroup and proc files).
fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Most events asked for in one `/backfill`.
pub const MAX_BACKFILL: usize = 100;
/// Servers asked in turn for one page of history.
const MAX_BACKFILL_SERVERS: usize = 5;
/// Rounds of fetching auth events a backfill answer refers to but does not carry.
const BACKFILL_AUTH_ROUNDS: usize = 4;

impl Inbound {
    /// History of a room before its earliest event here (what a member paging back through
    /// `/messages` reaches after a join or a gap), from `/backfill` on the other servers in the
    /// room, one after the other until one answers. The events go through the one verification
    /// path, auth events they name that we lack come through `/event`, and
    /// [`Rooms::store_backfill`] checks and stores them. Returns how many events were added (0:
    /// the room starts here, or no server had more).
    pub async fn backfill(
        &self,
        local: &LocalServer,
        room_id: &RoomId,
        limit: usize,
    ) -> Result<usize, AppendError> {
        let Some(version) = self.rooms.room_version(room_id).await? else {
            return Err(AppendError::UnknownRoom(room_id.to_owned()));
        };
        let Some(earliest) = self.rooms.earliest_event(room_id).await? else {
            return Ok(0);
        };
        let key = (room_id.to_owned(), earliest.event_id.clone());
        if earliest.prev_events.is_empty()
            || self
                .exhausted
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&key)
        {
            return Ok(0);
        }
        let mut last_error = None;
        let servers = self.rooms.joined_servers(room_id).await?;
        let others = servers.iter().filter(|s| !self.rooms.is_local_server(s));
        for server in others.take(MAX_BACKFILL_SERVERS) {
            let Ok(origin) = ServerName::parse(server) else {
                continue;
            };
            match self
                .backfill_from(
                    local,
                    &origin,
                    room_id,
                    &version,
                    &earliest.prev_events,
                    limit,
                )
                .await
            {
                Ok(added) => {
                    if added == 0 {
                        let mut exhausted =
                            self.exhausted.lock().unwrap_or_else(|e| e.into_inner());
                        if exhausted.len() >= 10_000 {
                            exhausted.clear();
                        }
                        exhausted.insert(key);
                    }
                    return Ok(added);
                }
                Err(err) => {
                    tracing::info!(%room_id, server = %origin, error = %err, "backfill failed");
                    last_error = Some(err);
                }
            }
        }
        match last_error {
            Some(err) => Err(err),
            None => Ok(0),
        }
    }

    /// One server's `/backfill` answer for the history before `from`, checked and stored.
    async fn backfill_from(
        &self,
        local: &LocalServer,
        origin: &ServerName,
        room_id: &RoomId,
        version: &RoomVersion,
        from: &[OwnedEventId],
        limit: usize,
    ) -> Result<usize, AppendError> {
        let local_name = ServerName::parse(&local.name)
            .map_err(|e| EventError::Format(format!("our server name: {e}")))?;
        let mut query = format!("limit={}", limit.clamp(1, MAX_BACKFILL));
        for id in from {
            query.push_str(&format!("&v={}", percent(id.as_str())));
        }
        let answer = self
            .client
            .request(
                &local_name,
                &local.key,
                origin,
                http::Method::GET,
                &format!(
                    "/_matrix/federation/v1/backfill/{}?{query}",
                    percent(room_id.as_str())
                ),
                None,
            )
            .await
            .map_err(|e| EventError::Missing(format!("backfill from {origin}: {e}")))?;
        let pdus = answer
            .get("pdus")
            .and_then(Value::as_array)
            .ok_or_else(|| EventError::Format("backfill answer without pdus".into()))?;
        let mut items = Vec::new();
        for value in pdus.iter().take(MAX_BACKFILL) {
            items.push((
                canonical_object(value)?,
                version.clone(),
                room_id.to_owned(),
            ));
        }
        let mut verified = HashMap::new();
        for outcome in self.verify_each(items).await {
            match outcome {
                Ok(pdu) => {
                    verified.insert(pdu.event_id.clone(), pdu);
                }
                Err(err) => tracing::info!(%origin, error = %err, "backfilled event rejected"),
            }
        }
        let (history, dropped) = asked_history(verified, from);
        if dropped > 0 {
            tracing::info!(%origin, dropped, "backfilled events outside the history asked for");
        }
        // Auth events named but neither in the answer nor stored: fetched, then theirs.
        let mut auth: Vec<Pdu> = Vec::new();
        for _ in 0..BACKFILL_AUTH_ROUNDS {
            let have: HashSet<&OwnedEventId> =
                history.iter().chain(&auth).map(|p| &p.event_id).collect();
            let mut wanted = Vec::new();
            for id in history.iter().chain(&auth).flat_map(|p| &p.auth_events) {
                if !have.contains(id) && !wanted.contains(id) && !self.rooms.has_event(id).await? {
                    wanted.push(id.clone());
                }
            }
            if wanted.is_empty() {
                break;
            }
            let fetched = self
                .fetch_events(&local_name, local, origin, wanted)
                .await?;
            auth.extend(self.verify_many(fetched, version, room_id).await?);
        }
        self.rooms
            .store_backfill(version, room_id, history, auth)
            .await
    }
}

/// The history asked for in a backfill answer: the events named in `from` and their ancestors
/// (through `prev_events`) within the answer; anything else is an event the peer slipped in,
/// however well signed. Returns them and how many were dropped.
fn asked_history(
    mut answer: HashMap<OwnedEventId, Pdu>,
    from: &[OwnedEventId],
) -> (Vec<Pdu>, usize) {
    let mut history = Vec::new();
    let mut walk: Vec<OwnedEventId> = from.to_vec();
    while let Some(id) = walk.pop() {
        if let Some(pdu) = answer.remove(&id) {
            walk.extend(pdu.prev_events.iter().cloned());
            history.push(pdu);
        }
    }
    (history, answer.len())
}

/// Percent-encodes one path segment (room and event IDs carry `!`, `$`, `:`).
pub fn percent(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len() * 3);
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod content_hash_tests {
    use serde_json::json;

    #[test]
    fn the_content_hash_is_rumas() {
        let object = super::canonical_object(&json!({
            "type": "m.room.message", "sender": "@a:x.test", "room_id": "!r:x.test",
            "content": {"body": "h\u{e9}llo \"quoted\" \u{1F600}", "n": 5, "nested": {"z": [1, {"b": null, "a": true}]}},
            "hashes": {"sha256": "abc"}, "signatures": {"x.test": {"ed25519:1": "sig"}},
            "unsigned": {"age": 4}, "depth": 3, "prev_events": ["$p"], "auth_events": [],
            "origin_server_ts": 1
        }))
        .unwrap();
        let ours = super::content_hash(&object).unwrap();
        let rumas = ruma::signatures::content_hash(&object).unwrap();
        assert_eq!(ours.as_slice(), rumas.as_bytes());
    }
}

#[cfg(test)]
mod backfill_tests {
    use std::collections::HashMap;

    use ruma::OwnedEventId;
    use serde_json::json;

    use super::asked_history;
    use crate::rooms::{Pdu, RoomVersion};

    /// A v12 message whose parents are `prev`, sent at `ts` (its ID is the hash of its redacted
    /// form, so the body alone does not tell two apart).
    fn message(ts: u64, prev: &[&OwnedEventId]) -> Pdu {
        let value = json!({
            "type": "m.room.message", "sender": "@a:x.test", "room_id": "!r:x.test",
            "content": {"body": "hi"}, "depth": 5, "origin_server_ts": ts,
            "prev_events": prev, "auth_events": [], "hashes": {"sha256": "x"},
            "signatures": {},
        });
        Pdu::from_json(&value.to_string(), &RoomVersion::parse("12").unwrap(), None).unwrap()
    }

    #[test]
    fn only_the_asked_for_events_and_their_ancestors_are_kept() {
        let root = OwnedEventId::try_from("$root").unwrap();
        let old = message(1, &[&root]);
        let asked = message(2, &[&old.event_id]);
        // Signed by the peer, in the room, but on no path from what we asked for.
        let slipped = message(3, &[&root]);
        let answer: HashMap<OwnedEventId, Pdu> = [old.clone(), asked.clone(), slipped]
            .into_iter()
            .map(|p| (p.event_id.clone(), p))
            .collect();
        let (history, dropped) = asked_history(answer, std::slice::from_ref(&asked.event_id));
        let mut kept: Vec<OwnedEventId> = history.into_iter().map(|p| p.event_id).collect();
        kept.sort();
        let mut expected = vec![old.event_id, asked.event_id];
        expected.sort();
        assert_eq!(kept, expected);
        assert_eq!(dropped, 1);
    }
}

//! Authorization and state resolution, through ruma-state-res with fetch closures over our own
//! event cache and storage (spec: server-server API, "Authorization rules"; room versions'
//! "State resolution", v2.1 in version 12).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ruma::events::{StateEventType, TimelineEventType};
use ruma::state_res::StateMap;
use ruma::state_res::utils::event_id_set::EventIdSet;
use ruma::{EventId, OwnedEventId, UserId};
use serde_json::value::RawValue as RawJsonValue;

use super::pdu::{EventError, Pdu};
use super::version::RoomVersion;

/// Room state as slots `(type, state_key)` -> event ID.
pub type State = HashMap<(String, String), OwnedEventId>;

/// The auth events a new event needs (spec: "Auth events selection"), picked from `state`.
pub fn auth_event_ids(
    version: &RoomVersion,
    kind: &str,
    sender: &UserId,
    state_key: Option<&str>,
    content: &RawJsonValue,
    state: &State,
) -> Result<Vec<OwnedEventId>, EventError> {
    let types = ruma::state_res::auth_types_for_event(
        &TimelineEventType::from(kind),
        sender,
        state_key,
        content,
        &version.rules().authorization,
    )
    .map_err(EventError::Format)?;
    let mut ids: Vec<OwnedEventId> = types
        .iter()
        .filter_map(|(kind, key)| state.get(&(kind.to_string(), key.clone())).cloned())
        .collect();
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// Checks `pdu` against its own auth events (state-independent rules, then the state-dependent
/// rules with the auth events as the state). `fetch` finds events by ID.
pub fn check_against_auth_events(
    version: &RoomVersion,
    pdu: &Pdu,
    fetch: &impl Fn(&EventId) -> Option<Arc<Pdu>>,
) -> Result<(), EventError> {
    let rules = &version.rules().authorization;
    ruma::state_res::check_state_independent_auth_rules(rules, pdu, |id: &EventId| fetch(id))
        .map_err(EventError::Unauthorized)?;
    let mut by_slot: HashMap<(String, String), Arc<Pdu>> = HashMap::new();
    // Version 12: the create event is implied by the room ID, never listed.
    if version.room_id_from_create_event() && pdu.kind.to_string() != "m.room.create" {
        let create_id = create_event_id(&pdu.room_id)?;
        let create = fetch(&create_id)
            .ok_or_else(|| EventError::Missing(format!("create event {create_id}")))?;
        by_slot.insert(("m.room.create".to_owned(), String::new()), create);
    }
    for id in &pdu.auth_events {
        let event = fetch(id).ok_or_else(|| EventError::Missing(format!("auth event {id}")))?;
        if let Some(slot) = event.state_slot() {
            by_slot.insert(slot, event);
        }
    }
    check_against_state_events(version, pdu, &by_slot)
}

/// The ID of a version 12 room's create event: the room ID's reference hash with a `$` sigil.
pub fn create_event_id(room_id: &ruma::RoomId) -> Result<OwnedEventId, EventError> {
    EventId::parse(format!("${}", &room_id.as_str()[1..]))
        .map_err(|e| EventError::WrongRoom(format!("{room_id} is not a version 12 room ID: {e}")))
}

/// Whether the events `state` holds for every slot the auth rules read for `pdu` are exactly
/// `pdu`'s auth events: then checking `pdu` against that state decides the same as checking it
/// against its auth events (the rules read the same events), and one check is enough. (The
/// auth events must have passed the state-independent rules: no slot beyond the selection.)
pub fn auth_events_match_state(
    version: &RoomVersion,
    pdu: &Pdu,
    state: &State,
) -> Result<bool, EventError> {
    let mut selected = auth_event_ids(
        version,
        &pdu.kind.to_string(),
        &pdu.sender,
        pdu.state_key.as_deref(),
        &pdu.content,
        state,
    )?;
    let mut listed = pdu.auth_events.clone();
    if version.room_id_from_create_event() {
        // Version 12 events never list the create event; the rules find it by the room ID,
        // which is the same for both.
        let create = create_event_id(&pdu.room_id)?;
        selected.retain(|id| *id != create);
        listed.retain(|id| *id != create);
        if state.get(&("m.room.create".to_owned(), String::new())) != Some(&create) {
            return Ok(false);
        }
    }
    listed.sort();
    listed.dedup();
    Ok(selected == listed)
}

/// Checks `pdu` against a state given as IDs, fetching the events it needs.
pub fn check_against_state(
    version: &RoomVersion,
    pdu: &Pdu,
    state: &State,
    fetch: &impl Fn(&EventId) -> Option<Arc<Pdu>>,
) -> Result<(), EventError> {
    let rules = &version.rules().authorization;
    ruma::state_res::check_state_dependent_auth_rules(
        rules,
        pdu,
        |kind: &StateEventType, key: &str| {
            state
                .get(&(kind.to_string(), key.to_owned()))
                .and_then(|id| fetch(id))
        },
    )
    .map_err(EventError::Unauthorized)
}

fn check_against_state_events(
    version: &RoomVersion,
    pdu: &Pdu,
    state: &HashMap<(String, String), Arc<Pdu>>,
) -> Result<(), EventError> {
    let rules = &version.rules().authorization;
    ruma::state_res::check_state_dependent_auth_rules(
        rules,
        pdu,
        |kind: &StateEventType, key: &str| state.get(&(kind.to_string(), key.to_owned())).cloned(),
    )
    .map_err(EventError::Unauthorized)
}

/// The full auth chain of `ids` (all auth events, recursively), as far as `fetch` knows them.
pub fn auth_chain(
    ids: impl IntoIterator<Item = OwnedEventId>,
    fetch: &impl Fn(&EventId) -> Option<Arc<Pdu>>,
) -> HashSet<OwnedEventId> {
    let mut seen = HashSet::new();
    let mut todo: Vec<OwnedEventId> = ids.into_iter().collect();
    while let Some(id) = todo.pop() {
        if let Some(event) = fetch(&id) {
            for auth in &event.auth_events {
                if seen.insert(auth.clone()) {
                    todo.push(auth.clone());
                }
            }
        }
    }
    seen
}

/// Resolves forked states into one (state resolution v2, or v2.1 for version 12).
pub fn resolve(
    version: &RoomVersion,
    states: &[State],
    fetch: &impl Fn(&EventId) -> Option<Arc<Pdu>>,
) -> Result<State, EventError> {
    let maps: Vec<StateMap<OwnedEventId>> = states
        .iter()
        .map(|state| {
            state
                .iter()
                .map(|((kind, key), id)| {
                    (
                        (StateEventType::from(kind.as_str()), key.clone()),
                        id.clone(),
                    )
                })
                .collect()
        })
        .collect();
    let auth_chains: Vec<EventIdSet<OwnedEventId>> = states
        .iter()
        .map(|state| {
            auth_chain(state.values().cloned(), fetch)
                .into_iter()
                .collect()
        })
        .collect();
    let resolved = ruma::state_res::resolve(
        &version.rules().authorization,
        &version.state_res_rules(),
        &maps,
        auth_chains,
        |id: &EventId| fetch(id),
        |conflicted: &StateMap<Vec<OwnedEventId>>| Some(conflicted_subgraph(conflicted, fetch)),
    )
    .map_err(|e| EventError::Unauthorized(format!("state resolution failed: {e}")))?;
    Ok(resolved
        .into_iter()
        .map(|((kind, key), id)| ((kind.to_string(), key), id))
        .collect())
}

/// The conflicted state subgraph (state resolution v2.1): every event on an auth-event path from
/// one conflicted event to another, the conflicted events included.
fn conflicted_subgraph(
    conflicted: &StateMap<Vec<OwnedEventId>>,
    fetch: &impl Fn(&EventId) -> Option<Arc<Pdu>>,
) -> EventIdSet<OwnedEventId> {
    let targets: HashSet<OwnedEventId> = conflicted.values().flatten().cloned().collect();
    // reaches[x]: x is conflicted or some auth ancestor of x is.
    let mut reaches: HashMap<OwnedEventId, bool> = HashMap::new();
    fn visit(
        id: &OwnedEventId,
        targets: &HashSet<OwnedEventId>,
        reaches: &mut HashMap<OwnedEventId, bool>,
        fetch: &impl Fn(&EventId) -> Option<Arc<Pdu>>,
    ) -> bool {
        if let Some(known) = reaches.get(id) {
            return *known;
        }
        reaches.insert(id.clone(), false);
        let mut result = false;
        if let Some(event) = fetch(id) {
            for auth in &event.auth_events {
                result |= visit(auth, targets, reaches, fetch) || targets.contains(auth);
            }
        }
        reaches.insert(id.clone(), result);
        result
    }
    let mut subgraph: HashSet<OwnedEventId> = targets.clone();
    for target in &targets {
        // Walk down from each conflicted event; keep the events that lead to another one.
        let mut todo = vec![target.clone()];
        let mut seen = HashSet::new();
        while let Some(id) = todo.pop() {
            if !seen.insert(id.clone()) {
                continue;
            }
            if let Some(event) = fetch(&id) {
                for auth in &event.auth_events {
                    if targets.contains(auth) || visit(auth, &targets, &mut reaches, fetch) {
                        subgraph.insert(auth.clone());
                        todo.push(auth.clone());
                    }
                }
            }
        }
    }
    subgraph.into_iter().collect()
}

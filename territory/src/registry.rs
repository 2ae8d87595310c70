//! What a node knows of the registry: the valid territory record of each territory (the highest
//! version) and the newest node record of each node, each checked on the way in. Records come
//! from files (`[registry] records_dir`) and from the DHT ([`crate::dht`]), which stores a
//! record under [`territory_key`] or [`node_key`] and hands every record it meets to
//! [`Registry::admit`].

use std::collections::BTreeMap;

use crate::TerritoryCode;
use crate::record::{AuthorityKey, NodeRecord, RecordError, TerritoryRecord};

/// Node records of nodes no territory record names that a registry keeps (new nodes not signed
/// for yet, standbys); more are refused.
pub const MAX_UNNAMED_NODES: usize = 64;

/// Largest clock skew allowed on a node record's `updated_at` (ms).
pub const NODE_CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;

/// The DHT key of a territory's record: `/unitas/territory/<code>`.
pub fn territory_key(code: &str) -> String {
    format!("/unitas/territory/{code}")
}

/// The DHT key of a node's record: `/unitas/node/<node_id>`.
pub fn node_key(node_id: &str) -> String {
    format!("/unitas/node/{node_id}")
}

/// What [`Registry::admit`] made of a record it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admitted {
    /// A territory record newer than the one known (`node_id` serves it now).
    NewTerritory {
        /// The node the record names.
        node_id: String,
    },
    /// A node record newer than the one known.
    NewNode(NodeRecord),
    /// The very record already known (a republish): worth storing, nothing learnt.
    Known,
}

/// The registry as this node knows it.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    authorities: Vec<AuthorityKey>,
    territories: BTreeMap<TerritoryCode, TerritoryRecord>,
    nodes: BTreeMap<String, NodeRecord>,
}

/// A territory and, when known, the node that serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route<'a> {
    /// The territory's record.
    pub territory: &'a TerritoryRecord,
    /// The serving node's record, if this node has it.
    pub node: Option<&'a NodeRecord>,
}

impl Registry {
    /// An empty registry trusting `authorities`.
    pub fn new(authorities: Vec<AuthorityKey>) -> Registry {
        Registry {
            authorities,
            ..Registry::default()
        }
    }

    /// Takes a territory record if it is valid at `now_ms` and newer than the one known; the
    /// error says why not.
    pub fn offer_territory(
        &mut self,
        record: TerritoryRecord,
        now_ms: u64,
    ) -> Result<(), RecordError> {
        record.verify(&self.authorities, now_ms)?;
        if let Some(known) = self.territories.get(&record.code) {
            record.replaces(known)?;
        }
        self.territories.insert(record.code.clone(), record);
        Ok(())
    }

    /// Takes a node record if it is valid and newer than the one known.
    pub fn offer_node(&mut self, record: NodeRecord, now_ms: u64) -> Result<(), RecordError> {
        record.verify(now_ms, NODE_CLOCK_SKEW_MS)?;
        if let Some(known) = self.nodes.get(&record.node_id)
            && known.updated_at >= record.updated_at
        {
            return Err(RecordError::Stale {
                have: known.updated_at,
                got: record.updated_at,
            });
        }
        self.nodes.insert(record.node_id.clone(), record);
        Ok(())
    }

    /// Takes a record as the DHT carries it (JSON under its key): the key must name the record
    /// (`/unitas/territory/DK` holds DK's record, `/unitas/node/<id>` that node's), the record
    /// must pass the checks of [`Registry::offer_territory`] / [`Registry::offer_node`], and it
    /// may be the record already known (republished) but not an older one nor another record
    /// with the same version.
    pub fn admit(
        &mut self,
        key: &[u8],
        value: &[u8],
        now_ms: u64,
    ) -> Result<Admitted, RecordError> {
        let key = std::str::from_utf8(key)
            .map_err(|_| RecordError::Invalid("record key is not UTF-8".into()))?;
        let wrong_key = || RecordError::Invalid(format!("record stored under another key ({key})"));
        if key.starts_with("/unitas/territory/") {
            let record: TerritoryRecord = serde_json::from_slice(value)
                .map_err(|e| RecordError::Invalid(format!("territory record: {e}")))?;
            if key != territory_key(record.code.as_str()) {
                return Err(wrong_key());
            }
            if let Some(known) = self.territories.get(&record.code)
                && known.version == record.version
            {
                return if *known == record {
                    Ok(Admitted::Known)
                } else {
                    Err(RecordError::Invalid(format!(
                        "another record of {} with version {}",
                        record.code, record.version
                    )))
                };
            }
            let node_id = record.node_id.clone();
            self.offer_territory(record, now_ms)?;
            Ok(Admitted::NewTerritory { node_id })
        } else if key.starts_with("/unitas/node/") {
            let record: NodeRecord = serde_json::from_slice(value)
                .map_err(|e| RecordError::Invalid(format!("node record: {e}")))?;
            if key != node_key(&record.node_id) {
                return Err(wrong_key());
            }
            if self.nodes.get(&record.node_id) == Some(&record) {
                return Ok(Admitted::Known);
            }
            // Anyone can make node keys: records of nodes no territory names are kept only
            // up to a bound, so they cannot crowd out the others.
            let named = |id: &str| self.territories.values().any(|t| t.node_id == id);
            if !named(&record.node_id)
                && !self.nodes.contains_key(&record.node_id)
                && self.nodes.keys().filter(|id| !named(id)).count() >= MAX_UNNAMED_NODES
            {
                return Err(RecordError::Invalid(
                    "too many records of nodes no territory names".into(),
                ));
            }
            self.offer_node(record.clone(), now_ms)?;
            Ok(Admitted::NewNode(record))
        } else {
            Err(RecordError::Invalid(format!("unknown record key {key}")))
        }
    }

    /// The known node record of `node_id`.
    pub fn node(&self, node_id: &str) -> Option<&NodeRecord> {
        self.nodes.get(node_id)
    }

    /// Every known node record.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes.values()
    }

    /// Territory records naming a node whose record is not known (to look up).
    pub fn nodes_missing(&self) -> Vec<String> {
        self.territories
            .values()
            .filter(|t| !self.nodes.contains_key(&t.node_id))
            .map(|t| t.node_id.clone())
            .collect()
    }

    /// Every known territory, by code, with its node when known. Records whose window closed
    /// since they were taken are left out.
    pub fn routes(&self, now_ms: u64) -> Vec<Route<'_>> {
        self.territories
            .values()
            .filter(|t| now_ms < t.not_after)
            .map(|t| Route {
                territory: t,
                node: self.nodes.get(&t.node_id),
            })
            .collect()
    }

    /// One territory by code (`UK` finds `GB`).
    pub fn route(&self, code: &str, now_ms: u64) -> Option<Route<'_>> {
        let code = crate::catalog::iso_code(code);
        self.routes(now_ms)
            .into_iter()
            .find(|r| r.territory.code.as_str() == code)
    }

    /// The territory whose server name is `server_name` (a user's home).
    pub fn route_server(&self, server_name: &str, now_ms: u64) -> Option<Route<'_>> {
        self.routes(now_ms)
            .into_iter()
            .find(|r| r.territory.server_name == server_name)
    }
}

#[cfg(test)]
mod tests {
    use unitas_federation::SigningKey;

    use super::*;
    use crate::record::Signatures;

    const NOW: u64 = 1_800_000_000_000;
    const DAY: u64 = 86_400_000;

    fn territory(code: &str, server: &str, node: &SigningKey, version: u64) -> TerritoryRecord {
        TerritoryRecord {
            code: TerritoryCode::parse(code).unwrap(),
            name: code.into(),
            server_name: server.into(),
            node_id: node.public_key_base64(),
            region: TerritoryCode::parse("eu").unwrap(),
            version,
            not_before: NOW - DAY,
            not_after: NOW + DAY,
            signatures: Signatures::new(),
        }
    }

    #[test]
    fn the_newest_valid_records_win() {
        let authority = SigningKey::generate().unwrap();
        let forger = SigningKey::generate().unwrap();
        let eu = SigningKey::generate().unwrap();
        let dk_node = SigningKey::generate().unwrap();
        let mut registry = Registry::new(vec![AuthorityKey::of(&authority)]);
        let v1 = territory("DK", "dk.example", &eu, 1)
            .sign(&authority)
            .unwrap();
        registry.offer_territory(v1.clone(), NOW).unwrap();
        // Migrated: version 2 points at another node.
        let v2 = territory("DK", "dk.example", &dk_node, 2)
            .sign(&authority)
            .unwrap();
        registry.offer_territory(v2.clone(), NOW).unwrap();
        // The old record replayed, and a forged newer one: both refused.
        assert_eq!(
            registry.offer_territory(v1, NOW),
            Err(RecordError::Stale { have: 2, got: 1 })
        );
        let forged = territory("DK", "dk.example", &forger, 9)
            .sign(&forger)
            .unwrap();
        assert_eq!(
            registry.offer_territory(forged, NOW),
            Err(RecordError::UnknownAuthority)
        );
        let route = registry.route("DK", NOW).unwrap();
        assert_eq!(route.territory, &v2);
        assert_eq!(route.node, None);
        // The node's own record joins the route.
        let node = NodeRecord {
            node_id: String::new(),
            client_url: "https://dk.example".into(),
            client_urls: Default::default(),
            federation_url: "https://dk.example:8448".into(),
            dht_addrs: vec![],
            region: TerritoryCode::parse("eu").unwrap(),
            territories: vec![TerritoryCode::parse("DK").unwrap()],
            updated_at: NOW,
            signatures: Signatures::new(),
        }
        .sign(&dk_node)
        .unwrap();
        registry.offer_node(node.clone(), NOW).unwrap();
        assert_eq!(
            registry.offer_node(node.clone(), NOW),
            Err(RecordError::Stale {
                have: NOW,
                got: NOW
            })
        );
        let route = registry.route_server("dk.example", NOW).unwrap();
        assert_eq!(
            route.node.map(|n| n.client_url.as_str()),
            Some("https://dk.example")
        );
        // After its window the territory is no longer routed.
        assert!(registry.route("DK", NOW + 2 * DAY).is_none());
    }
}

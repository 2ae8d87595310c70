//! What a node knows of the registry: the valid territory record of each territory (the highest
//! version) and the newest node record of each node, each checked on the way in. The DHT will
//! feed it; today records come from files (`[registry] records_dir`).

use std::collections::BTreeMap;

use crate::TerritoryCode;
use crate::record::{AuthorityKey, NodeRecord, RecordError, TerritoryRecord};

/// Largest clock skew allowed on a node record's `updated_at` (ms).
pub const NODE_CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;

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

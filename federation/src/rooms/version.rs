//! The room versions this server speaks, with ruma's rules for each.

use std::fmt;

use ruma::RoomVersionId;
use ruma::room_version_rules::{RoomVersionRules, StateResolutionV2Rules, StateResolutionVersion};

/// A supported room version (10, 11 or 12) and its rules.
#[derive(Debug, Clone)]
pub struct RoomVersion {
    id: RoomVersionId,
    rules: RoomVersionRules,
}

impl RoomVersion {
    /// The versions new and joined rooms may have.
    pub const SUPPORTED: &'static [&'static str] = &["10", "11", "12"];
    /// The version of new rooms unless configured otherwise (spec v1.16's recommendation).
    pub const DEFAULT: &'static str = "12";

    /// A supported version by its identifier; `None` for unknown or unsupported versions.
    pub fn parse(id: &str) -> Option<RoomVersion> {
        if !Self::SUPPORTED.contains(&id) {
            return None;
        }
        let id = RoomVersionId::try_from(id).ok()?;
        let rules = id.rules()?;
        Some(RoomVersion { id, rules })
    }

    /// The identifier (`"12"`).
    pub fn id(&self) -> &RoomVersionId {
        &self.id
    }

    /// ruma's rules for this version.
    pub fn rules(&self) -> &RoomVersionRules {
        &self.rules
    }

    /// State resolution v2 rules (v2.1 in version 12).
    pub fn state_res_rules(&self) -> StateResolutionV2Rules {
        match &self.rules.state_res {
            StateResolutionVersion::V2(rules) => *rules,
            // Versions 10-12 all use state resolution v2; `parse` admits no other.
            _ => StateResolutionV2Rules::V2_0,
        }
    }

    /// Whether the room ID is the create event's reference hash (version 12).
    pub fn room_id_from_create_event(&self) -> bool {
        self.rules.authorization.room_create_event_id_as_room_id
    }
}

impl fmt::Display for RoomVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id.as_str())
    }
}

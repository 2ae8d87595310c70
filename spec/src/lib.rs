//! Unitas protocol definitions: the leaf crate every other crate may use.
//!
//! Map (grows with each feature issue):
//! - [`prefixes`]: where Unitas' own APIs live and how its own event types are named.
//! - [`errcodes`]: Unitas' own error codes.
//!
//! Unitas' own endpoints are declared here once, ruma-style (one module per endpoint, with
//! method, path and a link to the doc), together with their JSON Schema; the node and the tests
//! use these declarations instead of repeating paths.

/// Path prefixes of Unitas' own APIs and the namespace of its event types.
pub mod prefixes {
    /// Unitas client API (courses, communities, territory routing).
    pub const CLIENT_V1: &str = "/_unitas/client/v1";
    /// Unitas server-to-server API between Unitas nodes.
    pub const FEDERATION_V1: &str = "/_unitas/federation/v1";
    /// Unitas admin API.
    pub const ADMIN_V1: &str = "/_unitas/admin/v1";
    /// Namespace of Unitas event types (`org.unitas.community`, `org.unitas.course.lesson`).
    pub const EVENT_NAMESPACE: &str = "org.unitas";
}

/// Unitas' own error codes (custom codes use the Java package convention the spec asks for).
pub mod errcodes {
    /// The user belongs to a territory this node does not serve (login with another territory's
    /// user ID). HTTP 403, with `territory` (the code), `home_server_name` and `home_client_url`
    /// (the client URL of the node that serves it, from the registry; `null` when unknown):
    ///
    /// ```json
    /// {"errcode": "ORG.UNITAS.WRONG_TERRITORY", "error": "...", "territory": "DK",
    ///  "home_server_name": "dk.unitas.example", "home_client_url": "https://eu.unitas.example"}
    /// ```
    pub const WRONG_TERRITORY: &str = "ORG.UNITAS.WRONG_TERRITORY";
    /// The user's territory is being moved to another node (`unitas territory export` ran):
    /// reads are served, writes are refused until the move completes (the user is then sent
    /// to the new node with [`WRONG_TERRITORY`]) or is rolled back. HTTP 403 to clients; peers'
    /// writes addressed to the territory get HTTP 503 with it (they retry, and reach the new
    /// node once the registry names it).
    pub const TERRITORY_READ_ONLY: &str = "ORG.UNITAS.TERRITORY_READ_ONLY";
}

/// The software name reported to peers (`/_matrix/federation/v1/version`) and clients.
pub const SOFTWARE_NAME: &str = "Unitas";

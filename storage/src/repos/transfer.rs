//! Moving a territory between nodes (`unitas territory export` / `import`): the rows that
//! belong to a territory, table by table, as JSON lines that read the same from SQLite and
//! PostgreSQL, and their import (existing rows are kept, so an import can be repeated).
//!
//! Each table is described once ([`TABLES`]): its columns with their kinds and which rows are the
//! territory's (a `territory` column, or a user ID of the territory's server name). Byte columns
//! travel as hex, booleans as 0/1.

use std::future::Future;

use serde_json::{Map, Value};

use crate::store::on_pool;
use crate::{Result, StorageError, Store};

/// The kind of a column, for carrying it as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    /// Text.
    Text,
    /// Integer (64-bit).
    Int,
    /// Boolean (0/1 in the export).
    Bool,
    /// Bytes (hex in the export).
    Bytes,
}

/// Which rows of a table belong to a territory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// `territory = <code>`.
    Territory,
    /// `code = <code>` (the territories table).
    Code,
    /// The named column is a user ID (or alias) of the territory's server name.
    ServerOf(&'static str),
}

/// A table that moves with its territory.
#[derive(Debug, Clone, Copy)]
pub struct TableSpec {
    /// Table name.
    pub name: &'static str,
    /// Columns and kinds.
    pub columns: &'static [(&'static str, Column)],
    /// Which rows move.
    pub owner: Owner,
}

use Column::{Bool, Bytes, Int, Text};

/// Every table that moves with a territory, parents before children.
pub const TABLES: &[TableSpec] = &[
    TableSpec {
        name: "territories",
        columns: &[("code", Text), ("server_name", Text), ("created_ts", Int)],
        owner: Owner::Code,
    },
    TableSpec {
        name: "accounts",
        columns: &[
            ("user_id", Text),
            ("territory", Text),
            ("localpart", Text),
            ("password_hash", Text),
            ("is_admin", Bool),
            ("is_guest", Bool),
            ("created_ts", Int),
            ("deactivated_ts", Int),
        ],
        owner: Owner::Territory,
    },
    TableSpec {
        name: "devices",
        columns: &[
            ("user_id", Text),
            ("device_id", Text),
            ("territory", Text),
            ("display_name", Text),
            ("created_ts", Int),
            ("last_seen_ts", Int),
            ("last_seen_ip", Text),
        ],
        owner: Owner::Territory,
    },
    TableSpec {
        name: "access_tokens",
        columns: &[
            ("token_hash", Bytes),
            ("territory", Text),
            ("user_id", Text),
            ("device_id", Text),
            ("created_ts", Int),
            ("expires_ts", Int),
        ],
        owner: Owner::Territory,
    },
    TableSpec {
        name: "refresh_tokens",
        columns: &[
            ("token_hash", Bytes),
            ("territory", Text),
            ("user_id", Text),
            ("device_id", Text),
            ("created_ts", Int),
        ],
        owner: Owner::Territory,
    },
    TableSpec {
        name: "signing_keys",
        columns: &[
            ("territory", Text),
            ("key_id", Text),
            ("public_key", Text),
            ("created_ts", Int),
            ("expired_ts", Int),
        ],
        owner: Owner::Territory,
    },
    TableSpec {
        name: "profiles",
        columns: &[
            ("user_id", Text),
            ("displayname", Text),
            ("avatar_url", Text),
        ],
        owner: Owner::ServerOf("user_id"),
    },
    TableSpec {
        name: "filters",
        columns: &[("user_id", Text), ("filter_id", Int), ("json", Text)],
        owner: Owner::ServerOf("user_id"),
    },
    TableSpec {
        name: "account_data",
        columns: &[
            ("user_id", Text),
            ("room_id", Text),
            ("data_type", Text),
            ("content", Text),
            ("aux_position", Int),
        ],
        owner: Owner::ServerOf("user_id"),
    },
    TableSpec {
        name: "receipts",
        columns: &[
            ("room_id", Text),
            ("user_id", Text),
            ("receipt_type", Text),
            ("thread_id", Text),
            ("event_id", Text),
            ("ts", Int),
            ("aux_position", Int),
        ],
        owner: Owner::ServerOf("user_id"),
    },
    TableSpec {
        name: "transaction_ids",
        columns: &[
            ("user_id", Text),
            ("device_id", Text),
            ("txn_id", Text),
            ("event_id", Text),
            ("created_ts", Int),
        ],
        owner: Owner::ServerOf("user_id"),
    },
    TableSpec {
        name: "media",
        columns: &[
            ("media_id", Text),
            ("territory", Text),
            ("uploader", Text),
            ("content_type", Text),
            ("filename", Text),
            ("size", Int),
            ("created_ts", Int),
        ],
        owner: Owner::Territory,
    },
    TableSpec {
        name: "room_aliases",
        columns: &[
            ("alias", Text),
            ("room_id", Text),
            ("creator", Text),
            ("created_ts", Int),
        ],
        owner: Owner::ServerOf("alias"),
    },
    TableSpec {
        name: "device_keys",
        columns: &[("user_id", Text), ("device_id", Text), ("key_json", Text)],
        owner: Owner::ServerOf("user_id"),
    },
    TableSpec {
        name: "one_time_keys",
        columns: &[
            ("user_id", Text),
            ("device_id", Text),
            ("algorithm", Text),
            ("key_id", Text),
            ("key_json", Text),
        ],
        owner: Owner::ServerOf("user_id"),
    },
    TableSpec {
        name: "fallback_keys",
        columns: &[
            ("user_id", Text),
            ("device_id", Text),
            ("algorithm", Text),
            ("key_id", Text),
            ("key_json", Text),
            ("used", Int),
        ],
        owner: Owner::ServerOf("user_id"),
    },
    TableSpec {
        name: "device_list_versions",
        columns: &[("user_id", Text), ("version", Int)],
        owner: Owner::ServerOf("user_id"),
    },
    TableSpec {
        name: "to_device_inbox",
        columns: &[
            ("user_id", Text),
            ("device_id", Text),
            ("position", Int),
            ("sender", Text),
            ("event_type", Text),
            ("content", Text),
            ("message_id", Text),
        ],
        owner: Owner::ServerOf("user_id"),
    },
    TableSpec {
        name: "cross_signing_keys",
        columns: &[("user_id", Text), ("key_type", Text), ("key_json", Text)],
        owner: Owner::ServerOf("user_id"),
    },
    TableSpec {
        name: "key_backup_versions",
        columns: &[
            ("user_id", Text),
            ("version", Int),
            ("algorithm", Text),
            ("auth_data", Text),
            ("etag", Int),
            ("deleted", Int),
        ],
        owner: Owner::ServerOf("user_id"),
    },
    TableSpec {
        name: "key_backup_keys",
        columns: &[
            ("user_id", Text),
            ("version", Int),
            ("room_id", Text),
            ("session_id", Text),
            ("first_message_index", Int),
            ("forwarded_count", Int),
            ("is_verified", Int),
            ("session_data", Text),
        ],
        owner: Owner::ServerOf("user_id"),
    },
    TableSpec {
        name: "pushers",
        columns: &[
            ("user_id", Text),
            ("app_id", Text),
            ("pushkey", Text),
            ("kind", Text),
            ("app_display_name", Text),
            ("device_display_name", Text),
            ("profile_tag", Text),
            ("lang", Text),
            ("data", Text),
            ("device_id", Text),
            ("created_ts", Int),
        ],
        owner: Owner::ServerOf("user_id"),
    },
    TableSpec {
        name: "remote_invites",
        columns: &[
            ("user_id", Text),
            ("room_id", Text),
            ("event_json", Text),
            ("invite_state", Text),
            ("via", Text),
            ("position", Int),
        ],
        owner: Owner::ServerOf("user_id"),
    },
];

/// The public keys of other servers this node knows, which an importing node needs to check
/// the events it takes over.
pub const SERVER_KEYS: TableSpec = TableSpec {
    name: "remote_server_keys",
    columns: &[
        ("server_name", Text),
        ("key_id", Text),
        ("public_key", Text),
        ("valid_until_ts", Int),
        ("expired_ts", Int),
        ("fetched_ts", Int),
    ],
    owner: Owner::ServerOf("server_name"),
};

/// One event of a room as exported.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ExportedEvent {
    /// Event ID.
    pub event_id: String,
    /// Timeline position (`None`: an outlier).
    pub stream_ordering: Option<i64>,
    /// The event as signed.
    pub json: String,
}

/// Reading and writing a territory's rows.
pub trait TerritoryTransfer {
    /// The territory's rows of `table` as JSON lines (ordered, so equal data gives equal lines).
    fn export_rows(
        &self,
        table: &TableSpec,
        code: &str,
        server_name: &str,
    ) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// Every row of `table` (for [`SERVER_KEYS`]).
    fn export_all_rows(
        &self,
        table: &TableSpec,
    ) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// Inserts exported rows, table by table in one transaction; rows already present are
    /// kept. Returns the rows inserted per table.
    fn import_rows(
        &self,
        tables: &[(TableSpec, Vec<String>)],
    ) -> impl Future<Output = Result<Vec<u64>>> + Send;
    /// Rooms where a user of `server_name` has a membership event.
    fn rooms_with_members_of(
        &self,
        server_name: &str,
    ) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// Every event of a room: outliers first, then the timeline in order.
    fn room_events(&self, room_id: &str)
    -> impl Future<Output = Result<Vec<ExportedEvent>>> + Send;
    /// Turns a territory read-only (`Some(ts, record version)`) or back (`None`).
    fn set_territory_read_only(
        &self,
        code: &str,
        since: Option<(i64, i64)>,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Raises the record version that named this node for a territory (never lowers it).
    fn note_named_version(
        &self,
        code: &str,
        version: i64,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The record versions that named this node, by territory code.
    fn list_named_versions(&self) -> impl Future<Output = Result<Vec<(String, i64)>>> + Send;
    /// The read-only territories: (code, since, registry record version at export).
    fn list_read_only_territories(
        &self,
    ) -> impl Future<Output = Result<Vec<(String, i64, i64)>>> + Send;
}

/// `substr(col, length(col) - length(server)) = ':' || server`: the ID ends in `:server`.
fn server_condition(column: &str) -> String {
    format!(
        "substr({column}, length({column}) - length(CAST($1 AS TEXT))) = ':' || CAST($1 AS TEXT)"
    )
}

fn select_sql(table: &TableSpec, postgres: bool, filtered: bool) -> String {
    let fields: Vec<String> = table
        .columns
        .iter()
        .map(|(name, kind)| {
            let value = match (kind, postgres) {
                (Column::Bytes, false) => format!("lower(hex({name}))"),
                (Column::Bytes, true) => format!("encode({name}, 'hex')"),
                (Column::Bool, true) => format!("{name}::int"),
                _ => (*name).to_owned(),
            };
            format!("'{name}', {value}")
        })
        .collect();
    let object = if postgres {
        format!("json_build_object({})::text", fields.join(", "))
    } else {
        format!("json_object({})", fields.join(", "))
    };
    let condition = match (filtered, table.owner) {
        (false, _) => "1 = 1".to_owned(),
        (true, Owner::Territory) => "territory = $1".to_owned(),
        (true, Owner::Code) => "code = $1".to_owned(),
        (true, Owner::ServerOf(column)) => server_condition(column),
    };
    let order: Vec<&str> = table.columns.iter().map(|(name, _)| *name).collect();
    format!(
        "SELECT {object} AS line FROM {} WHERE {condition} ORDER BY {}",
        table.name,
        order.join(", ")
    )
}

fn insert_sql(table: &TableSpec) -> String {
    let names: Vec<&str> = table.columns.iter().map(|(name, _)| *name).collect();
    let params: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
    format!(
        "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT DO NOTHING",
        table.name,
        names.join(", "),
        params.join(", ")
    )
}

fn corrupt(table: &str, reason: impl std::fmt::Display) -> StorageError {
    StorageError::Corrupt(format!("import of {table}: {reason}"))
}

fn int_of(table: &str, name: &str, value: &Value) -> Result<Option<i64>> {
    match value {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| corrupt(table, format!("{name}: {n} is not an integer"))),
        Value::Bool(b) => Ok(Some(i64::from(*b))),
        other => Err(corrupt(table, format!("{name}: {other} is not an integer"))),
    }
}

fn text_of(table: &str, name: &str, value: &Value) -> Result<Option<String>> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        other => Err(corrupt(table, format!("{name}: {other} is not text"))),
    }
}

fn bytes_of(table: &str, name: &str, value: &Value) -> Result<Option<Vec<u8>>> {
    let Some(text) = text_of(table, name, value)? else {
        return Ok(None);
    };
    if text.len() % 2 != 0 {
        return Err(corrupt(table, format!("{name}: odd hex")));
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| corrupt(table, format!("{name}: not hex")))
        })
        .collect::<Result<Vec<u8>>>()
        .map(Some)
}

/// The same JSON text whichever backend wrote it (the backends space their output apart).
fn normalized(table: &TableSpec, lines: Vec<String>) -> Result<Vec<String>> {
    lines
        .into_iter()
        .map(|line| {
            serde_json::from_str::<Value>(&line)
                .map(|value| value.to_string())
                .map_err(|e| StorageError::Corrupt(format!("export of {}: {e}", table.name)))
        })
        .collect()
}

/// One column's value, ready to bind.
enum Bound {
    Text(Option<String>),
    Int(Option<i64>),
    Bool(Option<bool>),
    Bytes(Option<Vec<u8>>),
}

fn bind_values(table: &TableSpec, line: &str) -> Result<Vec<Bound>> {
    let object: Map<String, Value> =
        serde_json::from_str(line).map_err(|e| corrupt(table.name, e))?;
    table
        .columns
        .iter()
        .map(|(name, kind)| {
            let value = object.get(*name).unwrap_or(&Value::Null);
            Ok(match kind {
                Column::Text => Bound::Text(text_of(table.name, name, value)?),
                Column::Int => Bound::Int(int_of(table.name, name, value)?),
                Column::Bool => Bound::Bool(int_of(table.name, name, value)?.map(|v| v != 0)),
                Column::Bytes => Bound::Bytes(bytes_of(table.name, name, value)?),
            })
        })
        .collect()
}

impl TerritoryTransfer for Store {
    async fn export_rows(
        &self,
        table: &TableSpec,
        code: &str,
        server_name: &str,
    ) -> Result<Vec<String>> {
        let postgres = matches!(self.kind(), crate::BackendKind::Postgres);
        let sql = select_sql(table, postgres, true);
        let key = match table.owner {
            Owner::Territory | Owner::Code => code,
            Owner::ServerOf(_) => server_name,
        };
        let lines = on_pool!(self, pool => {
            sqlx::query_scalar::<_, String>(&sql).bind(key).fetch_all(pool).await
        })?;
        normalized(table, lines)
    }

    async fn export_all_rows(&self, table: &TableSpec) -> Result<Vec<String>> {
        let postgres = matches!(self.kind(), crate::BackendKind::Postgres);
        let sql = select_sql(table, postgres, false);
        let lines = on_pool!(self, pool => {
            sqlx::query_scalar::<_, String>(&sql).fetch_all(pool).await
        })?;
        normalized(table, lines)
    }

    async fn import_rows(&self, tables: &[(TableSpec, Vec<String>)]) -> Result<Vec<u64>> {
        let mut prepared = Vec::new();
        for (table, lines) in tables {
            let rows = lines
                .iter()
                .map(|line| bind_values(table, line))
                .collect::<Result<Vec<_>>>()?;
            prepared.push((insert_sql(table), rows));
        }
        let imported = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let mut counts = Vec::new();
            for (sql, rows) in &prepared {
                let mut count = 0;
                for row in rows {
                    let mut query = sqlx::query(sql);
                    for value in row {
                        query = match value {
                            Bound::Text(v) => query.bind(v.clone()),
                            Bound::Int(v) => query.bind(*v),
                            Bound::Bool(v) => query.bind(*v),
                            Bound::Bytes(v) => query.bind(v.clone()),
                        };
                    }
                    count += query.execute(&mut *tx).await?.rows_affected();
                }
                counts.push(count);
            }
            tx.commit().await?;
            Ok::<_, sqlx::Error>(counts)
        });
        // Imported rows may be keys or membership events of anyone.
        self.key_counts.forget_all();
        self.member_rooms.forget_all();
        Ok(imported?)
    }

    async fn rooms_with_members_of(&self, server_name: &str) -> Result<Vec<String>> {
        let sql = format!(
            "SELECT DISTINCT room_id FROM events WHERE event_type = 'm.room.member' AND {} \
             ORDER BY room_id",
            server_condition("state_key")
        );
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar::<_, String>(&sql).bind(server_name).fetch_all(pool).await
        })?)
    }

    async fn room_events(&self, room_id: &str) -> Result<Vec<ExportedEvent>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT event_id, stream_ordering, json FROM events WHERE room_id = $1
                 ORDER BY stream_ordering IS NOT NULL, stream_ordering, depth, event_id",
            )
            .bind(room_id)
            .fetch_all(pool)
            .await
        })?)
    }

    async fn set_territory_read_only(&self, code: &str, since: Option<(i64, i64)>) -> Result<()> {
        let updated = on_pool!(self, pool => {
            sqlx::query(
                "UPDATE territories SET read_only_since = $2, read_only_version = $3
                 WHERE code = $1",
            )
            .bind(code)
            .bind(since.map(|s| s.0))
            .bind(since.map(|s| s.1))
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })?;
        if updated == 0 {
            return Err(StorageError::NotFound {
                what: format!("territory {code}"),
            });
        }
        Ok(())
    }

    async fn note_named_version(&self, code: &str, version: i64) -> Result<()> {
        on_pool!(self, pool => {
            sqlx::query(
                "UPDATE territories SET named_version = $2
                 WHERE code = $1 AND (named_version IS NULL OR named_version < $2)",
            )
            .bind(code)
            .bind(version)
            .execute(pool)
            .await
            .map(|_| ())
        })?;
        Ok(())
    }

    async fn list_named_versions(&self) -> Result<Vec<(String, i64)>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT code, named_version FROM territories WHERE named_version IS NOT NULL",
            )
            .fetch_all(pool)
            .await
        })?)
    }

    async fn list_read_only_territories(&self) -> Result<Vec<(String, i64, i64)>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as(
                "SELECT code, read_only_since, COALESCE(read_only_version, 0) FROM territories
                 WHERE read_only_since IS NOT NULL ORDER BY code",
            )
            .fetch_all(pool)
            .await
        })?)
    }
}

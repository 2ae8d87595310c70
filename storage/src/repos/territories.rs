use std::future::Future;

use crate::store::on_pool;
use crate::{Result, StorageError, Store};

/// A hosted territory as stored: its code and the server name its IDs are minted under.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TerritoryRow {
    /// Territory code (`DK`, `eu`, `local`).
    pub code: String,
    /// Matrix server name of the territory (`dk.unitas.example`).
    pub server_name: String,
    /// When this node first hosted it.
    pub created_ts: i64,
}

/// The territories this node hosts. A territory's server name is fixed once stored, because
/// every user and room ID of the territory contains it.
pub trait Territories {
    /// Records a hosted territory; a no-op when it is stored with the same server name.
    /// [`StorageError::Conflict`] when the code is stored with another server name, or the server
    /// name belongs to another code.
    fn ensure_territory(
        &self,
        code: &str,
        server_name: &str,
        now_ms: i64,
    ) -> impl Future<Output = Result<TerritoryRow>> + Send;
    /// One territory by code.
    fn get_territory(
        &self,
        code: &str,
    ) -> impl Future<Output = Result<Option<TerritoryRow>>> + Send;
    /// Every stored territory, by code.
    fn list_territories(&self) -> impl Future<Output = Result<Vec<TerritoryRow>>> + Send;
}

impl Territories for Store {
    async fn ensure_territory(
        &self,
        code: &str,
        server_name: &str,
        now_ms: i64,
    ) -> Result<TerritoryRow> {
        let inserted = on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO territories (code, server_name, created_ts) VALUES ($1, $2, $3)
                 ON CONFLICT (code) DO NOTHING",
            )
            .bind(code)
            .bind(server_name)
            .bind(now_ms)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })
        .map_err(|e| {
            StorageError::from_sqlx(e, || format!("a territory with server name {server_name}"))
        })?;
        let row = self
            .get_territory(code)
            .await?
            .ok_or_else(|| StorageError::NotFound {
                what: format!("territory {code}"),
            })?;
        if inserted == 0 && row.server_name != server_name {
            return Err(StorageError::Conflict {
                what: format!(
                    "territory {code} with server name {} (cannot become {server_name})",
                    row.server_name
                ),
            });
        }
        Ok(row)
    }

    async fn get_territory(&self, code: &str) -> Result<Option<TerritoryRow>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as("SELECT code, server_name, created_ts FROM territories WHERE code = $1")
                .bind(code)
                .fetch_optional(pool)
                .await
        })?)
    }

    async fn list_territories(&self) -> Result<Vec<TerritoryRow>> {
        Ok(on_pool!(self, pool => {
            sqlx::query_as("SELECT code, server_name, created_ts FROM territories ORDER BY code")
                .fetch_all(pool)
                .await
        })?)
    }
}

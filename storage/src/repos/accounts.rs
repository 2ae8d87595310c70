use std::future::Future;

use crate::store::on_pool;
use crate::{Result, StorageError, Store};

/// A local user account.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Account {
    /// Full Matrix user ID, `@localpart:server_name`.
    pub user_id: String,
    /// The territory the account belongs to.
    pub territory: String,
    /// The localpart of the user ID.
    pub localpart: String,
    /// Password hash in PHC string format; `None` for accounts without a password.
    pub password_hash: Option<String>,
    /// Server admin.
    pub is_admin: bool,
    /// Guest account.
    pub is_guest: bool,
    /// Creation time.
    pub created_ts: i64,
    /// When the account was deactivated; `None` while active.
    pub deactivated_ts: Option<i64>,
}

/// What [`Accounts::create_account`] needs.
#[derive(Debug, Clone)]
pub struct NewAccount<'a> {
    /// Full user ID.
    pub user_id: &'a str,
    /// Territory code.
    pub territory: &'a str,
    /// Localpart.
    pub localpart: &'a str,
    /// Password hash (PHC string), if any.
    pub password_hash: Option<&'a str>,
    /// Server admin.
    pub is_admin: bool,
    /// Guest account.
    pub is_guest: bool,
    /// Creation time.
    pub created_ts: i64,
}

const ACCOUNT_COLUMNS: &str = "user_id, territory, localpart, password_hash, is_admin, is_guest, \
                               created_ts, deactivated_ts";

/// User accounts.
pub trait Accounts {
    /// Creates an account; [`StorageError::Conflict`] if the user ID (or localpart in the
    /// territory) is taken, [`StorageError::NotFound`] if the territory is not stored.
    fn create_account(&self, new: &NewAccount<'_>) -> impl Future<Output = Result<Account>> + Send;
    /// One account by user ID.
    fn get_account(&self, user_id: &str) -> impl Future<Output = Result<Option<Account>>> + Send;
    /// Replaces (or removes) the password hash.
    fn set_password_hash(
        &self,
        user_id: &str,
        password_hash: Option<&str>,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Marks the account deactivated and removes its password. Idempotent.
    fn deactivate_account(
        &self,
        user_id: &str,
        now_ms: i64,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Number of accounts in a territory (deactivated ones included).
    fn count_accounts(&self, territory: &str) -> impl Future<Output = Result<i64>> + Send;
}

impl Accounts for Store {
    async fn create_account(&self, new: &NewAccount<'_>) -> Result<Account> {
        // The column list is a constant; no input reaches the SQL text.
        let sql = format!(
            "INSERT INTO accounts ({ACCOUNT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, NULL)
             RETURNING {ACCOUNT_COLUMNS}"
        );
        on_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(new.user_id)
                .bind(new.territory)
                .bind(new.localpart)
                .bind(new.password_hash)
                .bind(new.is_admin)
                .bind(new.is_guest)
                .bind(new.created_ts)
                .fetch_one(pool)
                .await
        })
        .map_err(|e| StorageError::from_sqlx(e, || format!("account {}", new.user_id)))
    }

    async fn get_account(&self, user_id: &str) -> Result<Option<Account>> {
        let sql = format!("SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE user_id = $1");
        Ok(on_pool!(self, pool => {
            sqlx::query_as(&sql).bind(user_id).fetch_optional(pool).await
        })?)
    }

    async fn set_password_hash(&self, user_id: &str, password_hash: Option<&str>) -> Result<()> {
        let affected = on_pool!(self, pool => {
            sqlx::query("UPDATE accounts SET password_hash = $1 WHERE user_id = $2")
                .bind(password_hash)
                .bind(user_id)
                .execute(pool)
                .await
                .map(|r| r.rows_affected())
        })?;
        if affected == 0 {
            return Err(StorageError::NotFound {
                what: format!("account {user_id}"),
            });
        }
        Ok(())
    }

    async fn deactivate_account(&self, user_id: &str, now_ms: i64) -> Result<()> {
        let affected = on_pool!(self, pool => {
            sqlx::query(
                "UPDATE accounts SET deactivated_ts = COALESCE(deactivated_ts, $1),
                 password_hash = NULL WHERE user_id = $2",
            )
            .bind(now_ms)
            .bind(user_id)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
        })?;
        if affected == 0 {
            return Err(StorageError::NotFound {
                what: format!("account {user_id}"),
            });
        }
        Ok(())
    }

    async fn count_accounts(&self, territory: &str) -> Result<i64> {
        Ok(on_pool!(self, pool => {
            sqlx::query_scalar("SELECT COUNT(*) FROM accounts WHERE territory = $1")
                .bind(territory)
                .fetch_one(pool)
                .await
        })?)
    }
}

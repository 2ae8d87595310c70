//! Full-text search of room events (`/search`): SQLite FTS5 and PostgreSQL full text over the
//! text indexed when events are stored (`event_search`).

use std::future::Future;
use std::sync::atomic::Ordering;

use sqlx::QueryBuilder;

use crate::store::on_pool;
use crate::{BackendKind, Result, Store};

/// One page of results.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchPage {
    /// `(event_id, rank)`, best or newest first.
    pub hits: Vec<(String, f64)>,
    /// How many events match in all.
    pub count: i64,
}

/// What to look for.
#[derive(Debug, Clone, Copy)]
pub struct SearchQuery<'a> {
    /// The user's words (all must match).
    pub term: &'a str,
    /// Rooms to look in.
    pub rooms: &'a [String],
    /// `content.body`, `content.name`, `content.topic`.
    pub keys: &'a [&'a str],
    /// Newest first instead of best first.
    pub recent: bool,
    /// Page size.
    pub limit: i64,
    /// Results to skip.
    pub offset: i64,
}

/// Event search.
pub trait EventSearch {
    /// Events whose text matches every word of the term.
    fn search_events(
        &self,
        query: SearchQuery<'_>,
    ) -> impl Future<Output = Result<SearchPage>> + Send;
}

/// The words of a search term as an FTS5 query: each word quoted (FTS5 syntax in the user's
/// text is taken literally), all required.
fn fts5_query(term: &str) -> String {
    term.split_whitespace()
        .map(|word| format!("\"{}\"", word.replace('"', "")))
        .filter(|word| word != "\"\"")
        .collect::<Vec<_>>()
        .join(" ")
}

impl Store {
    /// Moves the searchable rows that wait into SQLite's full-text index (migrations 0027, 0029), on
    /// the writer's connection; nothing to do on PostgreSQL or when none wait.
    async fn index_pending_search(&self) -> Result<()> {
        let crate::store::Writer::Sqlite(writer) = &self.writer else {
            return Ok(());
        };
        if self.search_pending.swap(0, Ordering::AcqRel) == 0 {
            return Ok(());
        }
        let result = writer
            .run(false, |conn| {
                let tx =
                    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                crate::sqlite_writer::index_pending_search(&tx)?;
                tx.commit()
            })
            .await;
        if result.is_err() {
            // They still wait: the next search tries again.
            self.search_pending.fetch_add(1, Ordering::AcqRel);
        }
        result
    }
}

#[cfg(feature = "testing")]
impl Store {
    /// Tests: checks SQLite's full-text index against its rows (an error when they disagree)
    /// and answers how many rows wait for it (0 on PostgreSQL).
    pub async fn search_index_check(&self) -> Result<i64> {
        let crate::store::Pool::Sqlite(pool) = &self.pool else {
            return Ok(0);
        };
        let check = async {
            sqlx::query(
                "INSERT INTO event_search_fts (event_search_fts) VALUES ('integrity-check')",
            )
            .execute(pool)
            .await?;
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM event_search
                 WHERE stream_ordering > (SELECT upto FROM search_indexed)",
            )
            .fetch_one(pool)
            .await
        };
        check
            .await
            .map_err(|e| crate::StorageError::from_sqlx(e, || "search index check".to_owned()))
    }
}

impl EventSearch for Store {
    async fn search_events(&self, query: SearchQuery<'_>) -> Result<SearchPage> {
        let sqlite = self.kind() == BackendKind::Sqlite;
        // Every message stored before the search is found: the rows that wait are indexed first.
        self.index_pending_search().await?;
        let term = if sqlite {
            fts5_query(query.term)
        } else {
            query.term.to_owned()
        };
        if term.trim().is_empty() || query.rooms.is_empty() || query.keys.is_empty() {
            return Ok(SearchPage {
                hits: Vec::new(),
                count: 0,
            });
        }
        let rank = if sqlite {
            "SELECT s.event_id, -bm25(event_search_fts) AS rank"
        } else {
            "SELECT s.event_id, ts_rank(s.vector, query)::float8 AS rank"
        };
        let (hits, count) = on_pool!(self, pool => {
            // The shared FROM/WHERE part, built twice (hits, count).
            let build = |select: &str| {
                let mut q = QueryBuilder::new(select);
                if sqlite {
                    q.push(
                        " FROM event_search_fts
                          JOIN event_search s ON s.stream_ordering = event_search_fts.rowid
                          JOIN events e ON e.stream_ordering = s.stream_ordering
                          WHERE event_search_fts MATCH ",
                    );
                    q.push_bind(term.clone());
                } else {
                    q.push(" FROM plainto_tsquery('simple', ");
                    q.push_bind(term.clone());
                    q.push(
                        ") query, event_search s JOIN events e ON e.event_id = s.event_id
                          WHERE s.vector @@ query",
                    );
                }
                q.push(" AND e.redacted_by IS NULL AND s.room_id IN (");
                let mut rooms = q.separated(", ");
                for room in query.rooms {
                    rooms.push_bind(room.clone());
                }
                q.push(") AND s.key IN (");
                let mut keys = q.separated(", ");
                for key in query.keys {
                    keys.push_bind((*key).to_owned());
                }
                q.push(")");
                q
            };
            let mut hits = build(rank);
            hits.push(if query.recent {
                " ORDER BY e.stream_ordering DESC"
            } else {
                " ORDER BY rank DESC, e.stream_ordering DESC"
            });
            hits.push(" LIMIT ");
            hits.push_bind(query.limit);
            hits.push(" OFFSET ");
            hits.push_bind(query.offset);
            let mut count = build("SELECT COUNT(*)");
            let hits: Vec<(String, f64)> = hits.build_query_as().fetch_all(pool).await?;
            let count: i64 = count.build_query_scalar().fetch_one(pool).await?;
            Ok::<_, sqlx::Error>((hits, count))
        })?;
        Ok(SearchPage { hits, count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_quoted_for_fts5() {
        assert_eq!(fts5_query("hello world"), "\"hello\" \"world\"");
        assert_eq!(fts5_query("  NEAR(a b) \"x\" "), "\"NEAR(a\" \"b)\" \"x\"");
        assert_eq!(fts5_query("\"\""), "");
    }
}

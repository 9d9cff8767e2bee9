//! Claims and leases: which worker drives which run, and until when.
//! Claims read the partial index of claimable runs in claim order, renewals
//! name runs by primary key, and statements that lock several rows lock
//! them in id order or skip locked ones, so claimers cannot deadlock.
//!
//! On PostgreSQL the store has two pools: the hot one (the writer, claims,
//! a claim's history read, renewals) plans each statement once per
//! connection (`force_generic_plan`) with sequential scans, hash and merge
//! joins priced out, since those statements are small batches by key that
//! index access always serves best and planning them was a quarter of the
//! database's CPU under load; the general pool (API reads, reports) plans
//! every execution (`force_custom_plan`), since a report's best plan
//! depends on its parameters. Either way, a generic plan made while `runs`
//! was small cannot keep scanning it as it grows (a unit test explains the
//! hot statements on a young table). Pooled connections are pinged only
//! after 5 s idle, not before every query. Queries are written to have one
//! good plan whatever the statistics say, since a young or bursty `runs`
//! table has none worth trusting (autovacuum analyzes it a minute late):
//! claims read the partial index `runs_claimable (required_tags, wake_at)`
//! in claim order, limited claims first probe `runs_due_limited`, a claim's
//! histories are read one index lookup per run (a `LATERAL` join on
//! PostgreSQL, not an `IN` list), and renewals name the runs by primary
//! key. Statements that lock several rows lock them in id order, or skip
//! locked ones (`SKIP LOCKED` lease renewals), so they cannot deadlock.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;

use steward_core::run::Recorded;

use crate::params::{bind_padded, numbered};
use crate::runs::row_events;
use crate::{Backend, Store, StoreError, dialect, now_ms, to_time};

/// A run this worker just claimed, with its history, ready to drive.
#[derive(Debug, Clone)]
pub struct ClaimedRun {
    pub id: String,
    pub workflow: String,
    pub version: u32,
    pub created_at: DateTime<Utc>,
    pub history: Vec<Recorded>,
    /// A cancel requested before the claim, read by the claim itself so
    /// the drive need not ask the database again before it starts.
    pub cancel_requested: Option<String>,
}

/// The claim of runs free of a concurrency limit, for `tag_sets` sets of
/// required tags; parameters as [`claim_query`] binds them. Concurrent
/// claimers skip each other's rows where the database locks them.
fn claim_free_sql(backend: Backend, tag_sets: usize) -> String {
    format!(
        "UPDATE runs SET lease_owner = $1, lease_until = $2
         WHERE id IN (
             SELECT id FROM runs
             WHERE wake_at IS NOT NULL AND wake_at <= $3
               AND (lease_until IS NULL OR lease_until < $3)
               AND concurrency_limit IS NULL
               AND required_tags IN ({tags})
             ORDER BY wake_at
             LIMIT $4{lock}
         )
         RETURNING id, workflow, version, created_at, cancel_requested",
        tags = numbered(5, tag_sets),
        lock = dialect::skip_locked(backend),
    )
}

/// A claim statement with its parameters: $1 owner, $2 lease end, $3 now,
/// $4 how many, then the tag sets.
fn claim_query(
    sql: String,
    owner: &str,
    now: i64,
    lease: Duration,
    limit: i64,
    tag_sets: &[String],
) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(owner.to_string())
        .bind(now + lease.as_millis() as i64)
        .bind(now)
        .bind(limit);
    for set in tag_sets {
        query = query.bind(set.clone());
    }
    query
}

fn claimed_run(r: &sqlx::any::AnyRow) -> Result<ClaimedRun, StoreError> {
    Ok(ClaimedRun {
        id: r.try_get("id")?,
        workflow: r.try_get("workflow")?,
        version: r.try_get::<i64, _>("version")? as u32,
        created_at: to_time(r.try_get("created_at")?),
        history: Vec::new(),
        cancel_requested: r.try_get("cancel_requested")?,
    })
}

/// Every subset of `tags` in [`Placement::tags`] form: a run is claimable
/// by a worker when its required tags are one of them.
pub fn tag_subsets(tags: &[String]) -> Vec<String> {
    let mut sorted: Vec<&String> = tags.iter().collect();
    sorted.sort();
    sorted.dedup();
    (0u32..1 << sorted.len())
        .map(|mask| {
            sorted
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, t)| t.as_str())
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect()
}

impl Store {
    /// Claims up to `limit` runs that are due and not leased by a live
    /// worker. On PostgreSQL concurrent claimers skip each other's rows.
    pub async fn claim_due(
        &self,
        owner: &str,
        lease: Duration,
        limit: i64,
        tags: &[String],
    ) -> Result<Vec<String>, StoreError> {
        Ok(self
            .claim(owner, lease, limit, tags)
            .await?
            .into_iter()
            .map(|c| c.id)
            .collect())
    }

    /// Claims like [`Store::claim_due`] and loads what driving the runs
    /// needs (their identity and histories) in one more query for all of
    /// them, instead of two per run.
    pub async fn claim_due_runs(
        &self,
        owner: &str,
        lease: Duration,
        limit: i64,
        tags: &[String],
    ) -> Result<Vec<ClaimedRun>, StoreError> {
        let mut claimed = self.claim(owner, lease, limit, tags).await?;
        if claimed.is_empty() {
            return Ok(claimed);
        }
        // Padded with NULLs to a power of two, so the statement is one of a
        // few and stays prepared.
        let padded = claimed.len().next_power_of_two();
        let sql = dialect::histories_sql(self.backend, padded);
        let ids: Vec<String> = claimed.iter().map(|c| c.id.clone()).collect();
        let rows = bind_padded(sqlx::query(sqlx::AssertSqlSafe(sql)), &ids)
            .fetch_all(&self.hot)
            .await?;
        let index: std::collections::HashMap<String, usize> = claimed
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id.clone(), i))
            .collect();
        for r in rows {
            let run_id: String = r.try_get("run_id")?;
            if let Some(&i) = index.get(&run_id) {
                claimed[i].history.extend(row_events(&r)?);
            }
        }
        Ok(claimed)
    }

    /// Claims runs free of a concurrency limit, then, with what room is
    /// left, runs whose workflow has one; both only runs whose required
    /// tags the worker has.
    async fn claim(
        &self,
        owner: &str,
        lease: Duration,
        limit: i64,
        tags: &[String],
    ) -> Result<Vec<ClaimedRun>, StoreError> {
        let subsets = tag_subsets(tags);
        let mut claimed = self.claim_free(owner, lease, limit, &subsets).await?;
        let room = limit - claimed.len() as i64;
        if room > 0 && self.limited_runs_due().await? {
            claimed.extend(self.claim_limited(owner, lease, room, &subsets).await?);
        }
        Ok(claimed)
    }

    /// Whether any run of a workflow with a concurrency limit is due: one
    /// probe of a mostly empty index, which spares the usual claim the
    /// limited claim's locked transaction.
    async fn limited_runs_due(&self) -> Result<bool, StoreError> {
        let due: Option<String> = sqlx::query_scalar(
            "SELECT id FROM runs
             WHERE concurrency_limit IS NOT NULL
               AND wake_at IS NOT NULL AND wake_at <= $1
             ORDER BY wake_at
             LIMIT 1",
        )
        .bind(now_ms())
        .fetch_optional(&self.hot)
        .await?;
        Ok(due.is_some())
    }

    async fn claim_free(
        &self,
        owner: &str,
        lease: Duration,
        limit: i64,
        tag_sets: &[String],
    ) -> Result<Vec<ClaimedRun>, StoreError> {
        let sql = claim_free_sql(self.backend, tag_sets.len());
        let rows = claim_query(sql, owner, now_ms(), lease, limit, tag_sets)
            .fetch_all(&self.hot)
            .await?;
        rows.iter().map(claimed_run).collect()
    }

    /// Claims runs of workflows with a concurrency limit, each workflow up
    /// to its limit minus the runs of it leased now. Claimers take turns
    /// (an advisory lock on PostgreSQL, the single writer on SQLite), so
    /// two workers cannot both fill the last slot.
    async fn claim_limited(
        &self,
        owner: &str,
        lease: Duration,
        limit: i64,
        tag_sets: &[String],
    ) -> Result<Vec<ClaimedRun>, StoreError> {
        let now = now_ms();
        // `rn`: the run's place in its workflow's queue; `busy`: the runs
        // of its workflow leased now; `cap`: the workflow's limit.
        let sql = format!(
            "UPDATE runs SET lease_owner = $1, lease_until = $2
             WHERE id IN (
                 SELECT id FROM (
                     SELECT c.id,
                            c.concurrency_limit AS cap,
                            ROW_NUMBER() OVER (
                                PARTITION BY c.workflow ORDER BY c.wake_at, c.id
                            ) AS rn,
                            (SELECT COUNT(*) FROM runs o
                             WHERE o.workflow = c.workflow
                               AND o.concurrency_limit IS NOT NULL
                               AND o.lease_until >= $3) AS busy
                     FROM runs c
                     WHERE c.concurrency_limit IS NOT NULL
                       AND c.wake_at IS NOT NULL AND c.wake_at <= $3
                       AND (c.lease_until IS NULL OR c.lease_until < $3)
                       AND c.required_tags IN ({tags})
                 ) ranked
                 WHERE rn + busy <= cap
                 ORDER BY rn
                 LIMIT $4
             )
             RETURNING id, workflow, version, created_at, cancel_requested",
            tags = numbered(5, tag_sets.len())
        );
        let mut tx = self.hot.begin().await?;
        if let Some(take_turn) = dialect::claim_turn(self.backend) {
            sqlx::query(take_turn).execute(&mut *tx).await?;
        }
        let rows = claim_query(sql, owner, now, lease, limit, tag_sets)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter().map(claimed_run).collect()
    }

    /// Extends the leases `owner` holds on `ids` (the runs it drives).
    /// Looked up by primary key, so a renewal costs the runs in flight, not
    /// a scan of the whole history, and holds no lock on other rows.
    pub async fn renew_leases(
        &self,
        owner: &str,
        lease: Duration,
        ids: &[String],
    ) -> Result<(), StoreError> {
        let until = now_ms() + lease.as_millis() as i64;
        for chunk in ids.chunks(512) {
            let ids = numbered(3, chunk.len().next_power_of_two());
            // A row the writer holds (PostgreSQL) is being written by this
            // worker right now: skipped, it is renewed next time, and the
            // two never wait on each other (waiting could deadlock them).
            let sql = format!(
                "UPDATE runs SET lease_until = $1
                 WHERE id IN (
                     SELECT id FROM runs
                     WHERE lease_owner = $2 AND id IN ({ids}){lock}
                 )",
                lock = dialect::skip_locked(self.backend),
            );
            let query = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(until)
                .bind(owner.to_string());
            bind_padded(query, chunk).execute(&self.hot).await?;
        }
        Ok(())
    }

    /// Gives a run back: another claim may take it once it is due, or not
    /// before `retry_in` has passed (after a failure, to avoid a hot loop).
    pub async fn release(
        &self,
        owner: &str,
        id: &str,
        retry_in: Option<Duration>,
    ) -> Result<(), StoreError> {
        let not_before = retry_in.map(|d| now_ms() + d.as_millis() as i64);
        sqlx::query(
            "UPDATE runs SET
                 lease_owner = NULL,
                 lease_until = NULL,
                 wake_at = CASE WHEN $3 IS NULL OR wake_at IS NULL THEN wake_at ELSE $3 END
             WHERE id = $1 AND lease_owner = $2",
        )
        .bind(id)
        .bind(owner)
        .bind(not_before)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Drops every lease (runs and the scheduler's): for SQLite, whose single server process starts
    /// after the previous one died.
    pub async fn release_all_leases(&self) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE runs SET lease_owner = NULL, lease_until = NULL WHERE lease_owner IS NOT NULL",
        )
        .execute(&self.pool)
        .await?;
        sqlx::query("UPDATE scheduler_leader SET owner = NULL, lease_until = 0")
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runs::tests::demo_run;
    use crate::{StoreOptions, open::quote_ident, writer};
    use sqlx::AnyPool;

    /// The plan `pool`'s session makes for `sql`, a statement with
    /// parameters of `types`, given `args` (SQL literals).
    async fn plan(pool: &AnyPool, sql: &str, types: &[&str], args: &[&str]) -> String {
        use sqlx::Executor as _;
        let mut conn = pool.acquire().await.unwrap();
        conn.execute(sqlx::AssertSqlSafe(format!(
            "PREPARE probe ({}) AS {sql}",
            types.join(", ")
        )))
        .await
        .unwrap();
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "EXPLAIN EXECUTE probe ({})",
            args.join(", ")
        )))
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        conn.execute("DEALLOCATE probe").await.unwrap();
        rows.iter()
            .map(|r| r.try_get::<String, _>(0).unwrap())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A young table (a few rows, no statistics yet) is where PostgreSQL
    /// plans a scan of `runs` (the general pool's plan for the append is a
    /// hash join over a sequential scan here); the hot pool's plans, made
    /// once and kept while the table grows, must read it by index all the
    /// same.
    #[tokio::test]
    async fn on_postgresql_the_hot_statements_read_runs_by_index_on_a_young_table() {
        let Some(url) = std::env::var("STEWARD_TEST_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            eprintln!("skipped: STEWARD_TEST_DATABASE_URL is not set");
            return;
        };
        let schema = format!("unit_hot_plans_{}", std::process::id());
        let options = StoreOptions {
            schema: Some(schema.clone()),
            ..StoreOptions::default()
        };
        let store = Store::open(&url, options).await.unwrap();
        let input = serde_json::json!({});
        for id in ["r1", "r2", "r3"] {
            store.create_run(demo_run(id, &input)).await.unwrap();
        }

        let claim = claim_free_sql(Backend::Postgres, 1);
        let claim_types = ["text", "bigint", "bigint", "bigint", "text"];
        let claim_args = ["'w1'", "2", "1", "64", "''"];
        let rows = 64;
        let append = writer::append_sql(Backend::Postgres, rows);
        let append_types: Vec<&str> = (0..rows).flat_map(|_| writer::append_types()).collect();
        let append_args: Vec<&str> = (0..rows)
            .flat_map(|r| {
                let id = if r < 3 { "'r1'" } else { "NULL" };
                [id, "'running'", "NULL", "NULL", "1", "NULL", "NULL", "0"]
                    .into_iter()
                    .chain(["NULL", "NULL", "NULL", "NULL"])
            })
            .collect();

        for (what, sql, types, args) in [
            ("claim", &claim, &claim_types[..], &claim_args[..]),
            ("append", &append, &append_types[..], &append_args[..]),
        ] {
            let hot = plan(&store.hot, sql, types, args).await;
            assert!(
                !hot.contains("Seq Scan on runs") && !hot.contains("Hash Join"),
                "the hot pool's {what} plan scans runs:\n{hot}"
            );
            assert!(hot.contains("Index"), "{what}:\n{hot}");
        }
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA {} CASCADE",
            quote_ident(&schema)
        )))
        .execute(&store.pool)
        .await
        .unwrap();
    }
}

//! Schema migrations, embedded in the binary, one folder per dialect. A
//! database migrated by a newer binary is refused with a clear error instead
//! of being misread.

use sqlx::AnyPool;

use super::{Backend, StoreError};

/// (version, name, SQL) per dialect, in order.
const SQLITE: &[(i64, &str, &str)] = &[
    (
        1,
        "runs",
        include_str!("../../../migrations/sqlite/0001_runs.sql"),
    ),
    (
        2,
        "cancel",
        include_str!("../../../migrations/sqlite/0002_cancel.sql"),
    ),
];
const POSTGRES: &[(i64, &str, &str)] = &[
    (
        1,
        "runs",
        include_str!("../../../migrations/postgres/0001_runs.sql"),
    ),
    (
        2,
        "cancel",
        include_str!("../../../migrations/postgres/0002_cancel.sql"),
    ),
];

/// Applies every migration the database lacks, each in its own transaction.
pub async fn migrate(pool: &AnyPool, backend: Backend) -> Result<(), StoreError> {
    let migrations = match backend {
        Backend::Sqlite => SQLITE,
        Backend::Postgres => POSTGRES,
    };
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS steward_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
    )
    .execute(pool)
    .await?;
    let applied: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM steward_migrations")
        .fetch_one(pool)
        .await?;
    let applied = applied.unwrap_or(0);
    let latest = migrations.last().map_or(0, |m| m.0);
    if applied > latest {
        return Err(StoreError::NewerSchema {
            database: applied,
            binary: latest,
        });
    }
    for (version, name, sql) in migrations.iter().filter(|m| m.0 > applied) {
        let mut tx = pool.begin().await?;
        for statement in statements(sql) {
            sqlx::query(sqlx::AssertSqlSafe(statement))
                .execute(&mut *tx)
                .await
                .map_err(|e| StoreError::Migrate {
                    version: *version,
                    message: e.to_string(),
                })?;
        }
        sqlx::query(
            "INSERT INTO steward_migrations (version, name, applied_at) VALUES ($1, $2, $3)",
        )
        .bind(*version)
        .bind(*name)
        .bind(super::now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
    }
    Ok(())
}

/// The statements of a migration file; comments go first, so a `;` inside
/// one cannot split a statement.
fn statements(sql: &str) -> Vec<String> {
    let code: Vec<&str> = sql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect();
    code.join("\n")
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

//! Schema migrations, embedded in the binary, one folder per dialect. A
//! database migrated by a newer binary is refused with a clear error instead
//! of being misread.

use sqlx::AnyPool;

use crate::{Backend, StoreError, dialect};

/// One migration: version, name, SQL.
pub(crate) type Migration = (i64, &'static str, &'static str);

/// The migrations of one dialect folder, as (version, name, SQL), in order.
macro_rules! migrations {
    ($dialect:literal: $($version:literal $name:literal),* $(,)?) => {
        &[$((
            $version,
            $name,
            include_str!(concat!("../../../migrations/", $dialect, "/", $name, ".sql")),
        )),*]
    };
}

/// (version, name, SQL) per dialect, in order; the file names are the names.
#[rustfmt::skip]
pub(crate) const SQLITE: &[Migration] = migrations!("sqlite": 1 "0001_runs", 2 "0002_cancel", 3 "0003_tokens", 4 "0004_plugins", 5 "0005_approvals", 6 "0006_sla", 7 "0007_delegations", 8 "0008_schedules", 9 "0009_groups", 10 "0010_placement", 11 "0011_open_runs", 12 "0012_claims", 13 "0013_keys", 14 "0014_principals", 15 "0015_four_eyes", 16 "0016_audit", 17 "0017_rerun", 18 "0018_signals");
#[rustfmt::skip]
pub(crate) const POSTGRES: &[Migration] = migrations!("postgres": 1 "0001_runs", 2 "0002_cancel", 3 "0003_tokens", 4 "0004_plugins", 5 "0005_approvals", 6 "0006_sla", 7 "0007_delegations", 8 "0008_schedules", 9 "0009_groups", 10 "0010_placement", 11 "0011_open_runs", 12 "0012_claims", 13 "0013_keys", 14 "0014_principals", 15 "0015_four_eyes", 16 "0016_audit", 17 "0017_rerun", 18 "0018_signals");

/// Applies every migration the database lacks, each in its own transaction.
pub async fn migrate(pool: &AnyPool, backend: Backend) -> Result<(), StoreError> {
    let migrations = dialect::migrations(backend);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file in `migrations/<dialect>` is embedded, in order, in both.
    #[test]
    fn every_migration_file_is_embedded() {
        for (dialect, embedded) in [("sqlite", SQLITE), ("postgres", POSTGRES)] {
            let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../migrations")
                .join(dialect);
            let mut files: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| {
                    e.unwrap()
                        .file_name()
                        .to_string_lossy()
                        .trim_end_matches(".sql")
                        .to_string()
                })
                .collect();
            files.sort();
            let names: Vec<String> = embedded.iter().map(|m| m.1.to_string()).collect();
            assert_eq!(names, files, "{dialect}");
            for (i, m) in embedded.iter().enumerate() {
                assert_eq!(m.0, i as i64 + 1);
            }
        }
    }

    #[test]
    fn comments_cannot_split_statements() {
        let sql = "-- a; b\nCREATE TABLE x (a INT);\n-- c;\nCREATE TABLE y (b INT);\n";
        assert_eq!(
            statements(sql),
            ["CREATE TABLE x (a INT)", "CREATE TABLE y (b INT)"]
        );
    }
}

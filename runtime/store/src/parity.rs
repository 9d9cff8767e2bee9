//! Both dialects' migrations must build the same database: the same
//! tables, columns (with their kind of type and nullability), primary keys
//! and indexes. The SQL exists once per dialect, so this is what keeps the
//! two folders from drifting apart.

use std::collections::BTreeSet;

use sqlx::{AnyPool, Row};

use crate::open::quote_ident;
use crate::{Backend, Store, StoreOptions};

/// One fact about a schema, comparable across dialects.
type Fact = String;

/// Everything the parity check compares, as sorted lines.
async fn describe(pool: &AnyPool, backend: Backend, schema: Option<&str>) -> BTreeSet<Fact> {
    match backend {
        Backend::Sqlite => describe_sqlite(pool).await,
        Backend::Postgres => describe_postgres(pool, schema.expect("a schema")).await,
    }
}

/// The kind of a column type, as both dialects spell it.
fn kind(declared: &str) -> &'static str {
    let t = declared.to_ascii_lowercase();
    if t.contains("int") {
        "integer"
    } else if t.contains("char") || t.contains("text") {
        "text"
    } else if t.contains("bool") {
        "boolean"
    } else if t.contains("real") || t.contains("double") || t.contains("float") {
        "real"
    } else if t.contains("blob") || t.contains("bytea") {
        "bytes"
    } else {
        "other"
    }
}

/// `column T.C KIND null|not null`.
fn column_fact(table: &str, column: &str, declared: &str, not_null: bool) -> Fact {
    let nullable = if not_null { "not null" } else { "null" };
    format!("column {table}.{column} {} {nullable}", kind(declared))
}

/// `[unique ][partial ]index NAME on T (COLUMNS)`; indexes behind a
/// constraint are named by each engine, so they show as `(constraint)`.
fn index_fact(table: &str, name: Option<&str>, unique: bool, partial: bool, columns: &str) -> Fact {
    format!(
        "{}{}index {} on {table} ({columns})",
        if unique { "unique " } else { "" },
        if partial { "partial " } else { "" },
        name.unwrap_or("(constraint)"),
    )
}

/// Tables of ours: not the engine's own, not the migration ledger.
fn ours(table: &str) -> bool {
    !table.starts_with("sqlite_") && table != "steward_migrations"
}

async fn describe_sqlite(pool: &AnyPool) -> BTreeSet<Fact> {
    let mut facts = BTreeSet::new();
    let columns = sqlx::query(
        "SELECT m.name AS tbl, p.name AS col, p.type AS ty, p.\"notnull\" AS nn, p.pk AS pk
           FROM sqlite_master m JOIN pragma_table_info(m.name) p
          WHERE m.type = 'table'
          ORDER BY m.name, p.pk, p.cid",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut keys: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for row in columns {
        let table: String = row.get("tbl");
        if !ours(&table) {
            continue;
        }
        let column: String = row.get("col");
        let declared: String = row.get("ty");
        let not_null: i64 = row.get("nn");
        let pk: i64 = row.get("pk");
        // A primary key column is never NULL on PostgreSQL; on SQLite only
        // when declared so, but Steward never writes NULL into one.
        facts.insert(column_fact(
            &table,
            &column,
            &declared,
            not_null == 1 || pk > 0,
        ));
        if pk > 0 {
            keys.entry(table).or_default().push(column);
        }
    }
    for (table, columns) in keys {
        facts.insert(format!("primary key {table} ({})", columns.join(", ")));
    }
    let indexes = sqlx::query(
        "SELECT m.name AS tbl, il.name AS idx, il.\"unique\" AS uq, il.origin AS origin,
                il.partial AS part, ii.name AS col
           FROM sqlite_master m
           JOIN pragma_index_list(m.name) il
           JOIN pragma_index_info(il.name) ii
          WHERE m.type = 'table' AND il.origin <> 'pk'
          ORDER BY m.name, il.name, ii.seqno",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    // (table, index) -> (name shown, unique, partial, columns in order)
    type Index = (Option<String>, bool, bool, Vec<String>);
    let mut by_index: std::collections::BTreeMap<(String, String), Index> = Default::default();
    for row in indexes {
        let table: String = row.get("tbl");
        if !ours(&table) {
            continue;
        }
        let name: String = row.get("idx");
        let unique: i64 = row.get("uq");
        let origin: String = row.get("origin");
        let partial: i64 = row.get("part");
        let column: Option<String> = row.get("col");
        // Only indexes made by CREATE INDEX ("c") keep their name.
        let shown = (origin == "c").then(|| name.clone());
        let entry = by_index
            .entry((table, name))
            .or_insert_with(|| (shown, unique == 1, partial == 1, Vec::new()));
        entry
            .3
            .push(column.unwrap_or_else(|| "(expression)".into()));
    }
    for ((table, _), (shown, unique, partial, columns)) in by_index {
        facts.insert(index_fact(
            &table,
            shown.as_deref(),
            unique,
            partial,
            &columns.join(", "),
        ));
    }
    facts
}

async fn describe_postgres(pool: &AnyPool, schema: &str) -> BTreeSet<Fact> {
    let mut facts = BTreeSet::new();
    let columns = sqlx::query(
        "SELECT table_name::text AS tbl, column_name::text AS col, data_type::text AS ty,
                is_nullable::text AS nullable
           FROM information_schema.columns
          WHERE table_schema = $1
          ORDER BY table_name, ordinal_position",
    )
    .bind(schema)
    .fetch_all(pool)
    .await
    .unwrap();
    for row in columns {
        let table: String = row.get("tbl");
        if !ours(&table) {
            continue;
        }
        let column: String = row.get("col");
        let declared: String = row.get("ty");
        let nullable: String = row.get("nullable");
        facts.insert(column_fact(&table, &column, &declared, nullable == "NO"));
    }
    let indexes = sqlx::query(
        "SELECT t.relname::text AS tbl, ic.relname::text AS idx, i.indisunique AS uq,
                i.indisprimary AS pk, (i.indpred IS NOT NULL) AS part,
                EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.indexrelid) AS backs,
                array_to_string(ARRAY(
                    SELECT COALESCE(a.attname::text, '(expression)')
                      FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                      LEFT JOIN pg_attribute a
                        ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                     ORDER BY k.ord), ', ') AS cols
           FROM pg_index i
           JOIN pg_class t ON t.oid = i.indrelid
           JOIN pg_class ic ON ic.oid = i.indexrelid
           JOIN pg_namespace n ON n.oid = t.relnamespace
          WHERE n.nspname = $1",
    )
    .bind(schema)
    .fetch_all(pool)
    .await
    .unwrap();
    for row in indexes {
        let table: String = row.get("tbl");
        if !ours(&table) {
            continue;
        }
        let name: String = row.get("idx");
        let unique: bool = row.get("uq");
        let primary: bool = row.get("pk");
        let partial: bool = row.get("part");
        let backs_constraint: bool = row.get("backs");
        let columns: String = row.get("cols");
        if primary {
            facts.insert(format!("primary key {table} ({columns})"));
            continue;
        }
        let shown = (!backs_constraint).then_some(name.as_str());
        facts.insert(index_fact(&table, shown, unique, partial, &columns));
    }
    facts
}

/// What one dialect has and the other lacks, as lines for a failure.
fn differences(sqlite: &BTreeSet<Fact>, postgres: &BTreeSet<Fact>) -> Vec<String> {
    let only = |a: &BTreeSet<Fact>, b: &BTreeSet<Fact>, side: &str| -> Vec<String> {
        a.difference(b)
            .map(|f| format!("only {side}: {f}"))
            .collect()
    };
    let mut out = only(sqlite, postgres, "in sqlite");
    out.extend(only(postgres, sqlite, "in postgres"));
    out
}

/// A migrated SQLite database and a migrated PostgreSQL schema, or `None`
/// when no PostgreSQL is configured for tests.
async fn both(test: &str) -> Option<(Store, Store, String, tempfile::TempDir)> {
    let Some(url) = std::env::var("STEWARD_TEST_DATABASE_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        eprintln!("skipped: STEWARD_TEST_DATABASE_URL is not set");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::open(
        &format!("sqlite://{}/steward.db", dir.path().display()),
        StoreOptions::default(),
    )
    .await
    .unwrap();
    let schema = format!("unit_parity_{test}_{}", std::process::id());
    let postgres = Store::open(
        &url,
        StoreOptions {
            schema: Some(schema.clone()),
            ..StoreOptions::default()
        },
    )
    .await
    .unwrap();
    Some((sqlite, postgres, schema, dir))
}

async fn drop_schema(store: &Store, schema: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP SCHEMA {} CASCADE",
        quote_ident(schema)
    )))
    .execute(&store.pool)
    .await
    .unwrap();
}

#[tokio::test]
async fn both_dialects_migrate_to_the_same_tables_columns_and_indexes() {
    let Some((sqlite, postgres, schema, _dir)) = both("same").await else {
        return;
    };
    let left = describe(&sqlite.pool, Backend::Sqlite, None).await;
    let right = describe(&postgres.pool, Backend::Postgres, Some(&schema)).await;
    drop_schema(&postgres, &schema).await;
    assert!(
        left.iter().any(|f| f.starts_with("column runs.id ")),
        "the description reads columns: {left:#?}"
    );
    assert!(
        left.iter().any(|f| f.contains("index ")),
        "the description reads indexes: {left:#?}"
    );
    let diff = differences(&left, &right);
    assert!(
        diff.is_empty(),
        "the sqlite and postgres migrations disagree; make them build the same schema:\n{}",
        diff.join("\n")
    );
}

/// The check itself: a column or an index added on one side only is found.
#[tokio::test]
async fn a_column_or_index_added_to_one_dialect_only_is_reported() {
    let Some((sqlite, postgres, schema, _dir)) = both("drift").await else {
        return;
    };
    for statement in [
        "ALTER TABLE runs ADD COLUMN only_here TEXT",
        "CREATE INDEX runs_only_here ON runs (only_here)",
    ] {
        sqlx::query(statement).execute(&sqlite.pool).await.unwrap();
    }
    let left = describe(&sqlite.pool, Backend::Sqlite, None).await;
    let right = describe(&postgres.pool, Backend::Postgres, Some(&schema)).await;
    drop_schema(&postgres, &schema).await;
    let diff = differences(&left, &right);
    assert_eq!(
        diff,
        [
            "only in sqlite: column runs.only_here text null",
            "only in sqlite: index runs_only_here on runs (only_here)",
        ],
    );
}

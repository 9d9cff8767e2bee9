//! The store's contract, run against SQLite and (when
//! `STEWARD_TEST_DATABASE_URL` is set) PostgreSQL, each test on a database
//! or schema of its own.

use crate::common;

use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use steward::run::{Event, Recorded, RunState, Status};
use steward::store::{AuditFilter, NewRun, Store, StoreError, StoreOptions};

/// Runs `check` on a fresh SQLite store and, when configured, a fresh
/// PostgreSQL schema.
pub(crate) async fn on_every_backend<F, Fut>(name: &str, check: F)
where
    F: Fn(Store) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}/steward.db", dir.path().display());
    check(
        Store::open(&sqlite, StoreOptions::default())
            .await
            .expect("sqlite opens"),
    )
    .await;
    match common::postgres_url() {
        Some(url) => {
            let schema = common::unique_schema(name);
            let options = StoreOptions {
                schema: Some(schema),
                ..StoreOptions::default()
            };
            check(Store::open(&url, options).await.expect("postgres opens")).await;
        }
        None => eprintln!("{name}: PostgreSQL part skipped: STEWARD_TEST_DATABASE_URL is not set"),
    }
}

fn new_run<'a>(id: &'a str, input: &'a serde_json::Value, key: Option<&'a str>) -> NewRun<'a> {
    NewRun {
        id,
        workflow: "demo",
        version: 1,
        input,
        idempotency_key: key,
        started_by: None,
        rerun_of: None,
        parent: None,
        lease: None,
        placement: Default::default(),
    }
}

#[tokio::test]
async fn a_created_run_has_its_first_event_and_an_idempotency_key_returns_it() {
    on_every_backend("create", |store| async move {
        let input = json!({"user": "ada"});
        let (row, created) = store
            .create_run(new_run("r1", &input, Some("k1")))
            .await
            .unwrap();
        assert!(created);
        assert_eq!(row.status, "pending");
        assert_eq!(row.input, input);
        let events = store.events("r1").await.unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(
            events[0].event,
            Event::RunStarted {
                input: input.clone(),
                parent: None,
            }
        );

        let other = json!({"user": "someone else"});
        let (again, created) = store
            .create_run(new_run("r2", &other, Some("k1")))
            .await
            .unwrap();
        assert!(!created, "the same key gives the same run");
        assert_eq!(again.id, "r1");
        assert!(store.run("r2").await.unwrap().is_none());
    })
    .await;
}

#[tokio::test]
async fn appended_events_and_status_are_durable() {
    on_every_backend("append", |store| async move {
        let input = json!({});
        store.create_run(new_run("r1", &input, None)).await.unwrap();
        let mut state = RunState::new("r1", "demo", 1, Utc::now());
        let mut history = store.events("r1").await.unwrap();
        for r in &history {
            state.apply(r);
        }
        let done = Recorded::at(
            2,
            chrono::Utc::now(),
            Event::RunSucceeded {
                output: json!({"ok": true}),
            },
        );
        state.apply(&done);
        store
            .append(&state, std::slice::from_ref(&done), None, None)
            .await
            .unwrap();
        history.push(done);

        assert_eq!(store.events("r1").await.unwrap(), history);
        let row = store.run("r1").await.unwrap().unwrap();
        assert_eq!(row.status, "succeeded");
        assert_eq!(row.output, Some(json!({"ok": true})));
        assert!(row.finished_at.is_some());
        assert_eq!(store.count_by_status(Status::Succeeded).await.unwrap(), 1);
        // A finished run is never due again.
        assert!(
            store
                .claim_due("w1", Duration::from_secs(30), 10, &[])
                .await
                .unwrap()
                .is_empty()
        );
    })
    .await;
}

#[tokio::test]
async fn a_run_needing_tags_is_claimed_only_by_a_worker_with_them_all() {
    on_every_backend("tags", |store| async move {
        let input = json!({});
        let tagged = NewRun {
            placement: steward::store::Placement {
                tags: "eu,gpu".into(),
                concurrency: None,
            },
            ..new_run("tagged", &input, None)
        };
        store.create_run(tagged).await.unwrap();
        store
            .create_run(new_run("plain", &input, None))
            .await
            .unwrap();
        let tags = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let lease = Duration::from_secs(30);
        let untagged = store.claim_due("w0", lease, 10, &[]).await.unwrap();
        assert_eq!(
            untagged,
            ["plain"],
            "an untagged worker takes only untagged runs"
        );
        assert!(
            store
                .claim_due("w1", lease, 10, &tags(&["gpu"]))
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            store
                .claim_due("w2", lease, 10, &tags(&["eu", "arm"]))
                .await
                .unwrap()
                .is_empty()
        );
        let full = store
            .claim_due("w3", lease, 10, &tags(&["gpu", "arm", "eu"]))
            .await
            .unwrap();
        assert_eq!(full, ["tagged"]);
    })
    .await;
}

#[tokio::test]
async fn a_concurrency_limit_caps_the_runs_leased_at_once() {
    on_every_backend("concurrency", |store| async move {
        let input = json!({});
        let ids: Vec<String> = (0..5).map(|i| format!("limited-{i}")).collect();
        for id in &ids {
            let new = NewRun {
                placement: steward::store::Placement {
                    tags: String::new(),
                    concurrency: Some(2),
                },
                ..new_run(id, &input, None)
            };
            store.create_run(new).await.unwrap();
        }
        store
            .create_run(new_run("free", &input, None))
            .await
            .unwrap();
        let lease = Duration::from_secs(30);
        let mut first = store.claim_due("w1", lease, 10, &[]).await.unwrap();
        first.sort();
        assert_eq!(
            first,
            ["free", "limited-0", "limited-1"],
            "two slots, oldest first"
        );
        assert!(
            store
                .claim_due("w2", lease, 10, &[])
                .await
                .unwrap()
                .is_empty(),
            "no slot left"
        );
        store.release("w1", "limited-0", None).await.unwrap();
        assert_eq!(
            store.claim_due("w2", lease, 10, &[]).await.unwrap().len(),
            1,
            "a freed slot is taken once"
        );
        assert!(
            store
                .claim_due("w3", lease, 10, &[])
                .await
                .unwrap()
                .is_empty()
        );
    })
    .await;
}

#[tokio::test]
async fn a_leased_run_is_claimed_once_until_its_lease_ends() {
    on_every_backend("claim", |store| async move {
        let input = json!({});
        store.create_run(new_run("r1", &input, None)).await.unwrap();
        let first = store
            .claim_due("w1", Duration::from_millis(300), 10, &[])
            .await
            .unwrap();
        assert_eq!(first, vec!["r1".to_string()]);
        assert!(
            store
                .claim_due("w2", Duration::from_secs(30), 10, &[])
                .await
                .unwrap()
                .is_empty()
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        let taken = store
            .claim_due("w2", Duration::from_secs(30), 10, &[])
            .await
            .unwrap();
        assert_eq!(
            taken,
            vec!["r1".to_string()],
            "a dead worker's run is taken over"
        );
        store.release("w2", "r1", None).await.unwrap();
        assert_eq!(
            store
                .claim_due("w3", Duration::from_secs(30), 10, &[])
                .await
                .unwrap(),
            vec!["r1".to_string()]
        );
    })
    .await;
}

#[tokio::test]
async fn a_claim_reads_pending_cancels_and_a_renewal_keeps_only_the_runs_named() {
    on_every_backend("claim_cancel_renew", |store| async move {
        let input = json!({});
        for id in ["r1", "r2", "r3"] {
            store.create_run(new_run(id, &input, None)).await.unwrap();
        }
        store
            .request_cancel("r2", "duplicate ticket", "test")
            .await
            .unwrap();
        let mut claimed = store
            .claim_due_runs("w1", Duration::from_millis(300), 10, &[])
            .await
            .unwrap();
        claimed.sort_by(|a, b| a.id.cmp(&b.id));
        let seen: Vec<(&str, Option<&str>, usize)> = claimed
            .iter()
            .map(|c| {
                (
                    c.id.as_str(),
                    c.cancel_requested.as_deref(),
                    c.history.len(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                ("r1", None, 1),
                ("r2", Some("duplicate ticket"), 1),
                ("r3", None, 1)
            ],
            "each claimed run comes with its history and any cancel asked before the claim"
        );

        // w1 renews r1 and r3 (still driving them) but not r2, and w2's
        // renewal of r1 changes nothing: it does not hold that lease.
        let ids = ["r1".to_string(), "r3".to_string()];
        store
            .renew_leases("w1", Duration::from_secs(30), &ids)
            .await
            .unwrap();
        store
            .renew_leases("w2", Duration::from_millis(1), &ids[..1])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            store
                .claim_due("w2", Duration::from_secs(30), 10, &[])
                .await
                .unwrap(),
            vec!["r2".to_string()],
            "only the run left out of the renewal is taken over"
        );
    })
    .await;
}

#[tokio::test]
async fn workflow_versions_are_immutable_and_kv_is_per_plugin() {
    on_every_backend("versions", |store| async move {
        store
            .deploy_workflow("demo", 1, "name: demo", "test")
            .await
            .unwrap();
        store
            .deploy_workflow("demo", 1, "name: demo", "test")
            .await
            .unwrap();
        let err = store
            .deploy_workflow("demo", 1, "name: demo # changed", "test")
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::VersionConflict { .. }), "{err}");
        assert_eq!(
            store.workflow_source("demo", 1).await.unwrap().as_deref(),
            Some("name: demo")
        );

        store.kv_set("assign", "next", b"3").await.unwrap();
        store.kv_set("assign", "next", b"4").await.unwrap();
        assert_eq!(
            store.kv_get("assign", "next").await.unwrap(),
            Some(b"4".to_vec())
        );
        assert_eq!(store.kv_get("notify", "next").await.unwrap(), None);
        store.kv_delete("assign", "next").await.unwrap();
        assert_eq!(store.kv_get("assign", "next").await.unwrap(), None);
    })
    .await;
}

#[tokio::test]
async fn a_database_from_a_newer_binary_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/steward.db", dir.path().display());
    let store = Store::open(&url, StoreOptions::default()).await.unwrap();
    store.close().await;
    {
        use sqlx::ConnectOptions;
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.path().join("steward.db"))
            .connect()
            .await
            .unwrap();
        sqlx::query(
            "INSERT INTO steward_migrations (version, name, applied_at) VALUES (999, 'future', 0)",
        )
        .execute(&mut conn)
        .await
        .unwrap();
    }
    let err = Store::open(&url, StoreOptions::default())
        .await
        .err()
        .expect("refused");
    assert!(
        matches!(err, StoreError::NewerSchema { database: 999, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("a newer steward migrated it"),
        "{err}"
    );
}

/// A token made before tokens had subjects (migration 14) keeps working as
/// the service named after it.
#[tokio::test]
async fn a_token_from_before_subjects_acts_as_its_service() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "stw_made_before_subjects";
    {
        use sqlx::ConnectOptions;
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(dir.path().join("steward.db"))
            .create_if_missing(true)
            .connect()
            .await
            .unwrap();
        sqlx::raw_sql(
            "CREATE TABLE steward_migrations (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        let folder = common::root().join("migrations/sqlite");
        let mut files: Vec<_> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|f| f.as_str() < "0014")
            .collect();
        files.sort();
        assert_eq!(files.len(), 13);
        for (n, file) in files.iter().enumerate() {
            let sql = std::fs::read_to_string(folder.join(file)).unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await
                .unwrap();
            sqlx::query(
                "INSERT INTO steward_migrations (version, name, applied_at) VALUES ($1, $2, 0)",
            )
            .bind(n as i64 + 1)
            .bind(file.trim_end_matches(".sql"))
            .execute(&mut conn)
            .await
            .unwrap();
        }
        sqlx::query(
            "INSERT INTO api_tokens (id, name, secret_hash, scopes, created_at) VALUES ('t1', 'servicenow', $1, 'approvals:decide', 0)",
        )
        .bind(steward::auth::hash_secret(secret))
        .execute(&mut conn)
        .await
        .unwrap();
    }
    let url = format!("sqlite://{}/steward.db", dir.path().display());
    let store = Store::open(&url, StoreOptions::default()).await.unwrap();
    let auth = steward::auth::Authenticator::new(store.clone(), None);
    let principal = auth.authenticate(secret).await.unwrap();
    assert_eq!(principal.subject, "svc:servicenow");
    assert_eq!(principal.scopes, ["approvals:decide"]);
    let listed = store.live_tokens().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].subject.as_str(), listed[0].expires_at),
        ("svc:servicenow", None)
    );
}

#[tokio::test]
async fn concurrent_writes_commit_together_and_a_bad_one_fails_alone() {
    on_every_backend("batch", |store| async move {
        let input = json!({});
        let ids: Vec<String> = (0..50).map(|i| format!("r{i}")).collect();
        for id in &ids {
            store.create_run(new_run(id, &input, None)).await.unwrap();
        }
        // Fifty appends at once, one of them reusing a sequence number.
        let mut tasks = tokio::task::JoinSet::new();
        for (i, id) in ids.iter().enumerate() {
            let store = store.clone();
            let id = id.clone();
            tasks.spawn(async move {
                let mut state = RunState::new(&id, "demo", 1, Utc::now());
                let seq = if i == 7 { 1 } else { 2 };
                let done = Recorded::at(
                    seq,
                    chrono::Utc::now(),
                    Event::RunSucceeded { output: json!(i) },
                );
                state.apply(&done);
                (i, store.append(&state, &[done], None, None).await)
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let (i, result) = joined.unwrap();
            assert_eq!(result.is_err(), i == 7, "append {i}: {result:?}");
        }
        assert_eq!(store.count_by_status(Status::Succeeded).await.unwrap(), 49);
        assert_eq!(store.run("r7").await.unwrap().unwrap().status, "pending");
    })
    .await;
}

#[tokio::test]
async fn every_write_of_a_mixed_batch_gets_its_own_answer() {
    on_every_backend("mixed", |store| async move {
        let input = json!({"n": 1});
        for id in ["taken", "leased", "cancelled", "a0", "a1", "a2"] {
            store.create_run(new_run(id, &input, None)).await.unwrap();
        }
        assert_eq!(
            store
                .claim_due("w1", Duration::from_secs(30), 10, &[])
                .await
                .unwrap()
                .len(),
            6
        );
        store
            .request_cancel("cancelled", "not needed", "test")
            .await
            .unwrap();

        // All at once, so they share batches: 70 new runs (more than one
        // statement's rows), an id already taken, an append under a lease
        // held by another worker, one to a run with a cancel request, and
        // three plain appends.
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..70 {
            let store = store.clone();
            tasks.spawn(async move {
                let id = format!("new-{n}");
                let input = json!({ "n": n });
                let created = store.create_run(new_run(&id, &input, None)).await;
                (id, created.map(|(_, created)| format!("created {created}")))
            });
        }
        let taken = store.clone();
        tasks.spawn(async move {
            let created = taken.create_run(new_run("taken", &json!({}), None)).await;
            ("taken".to_string(), created.map(|_| "created".to_string()))
        });
        for (id, owner) in [
            ("leased", "w2"),
            ("cancelled", "w1"),
            ("a0", "w1"),
            ("a1", "w1"),
            ("a2", "w1"),
        ] {
            let store = store.clone();
            tasks.spawn(async move {
                let mut state = RunState::new(id, "demo", 1, Utc::now());
                let started = Recorded::at(2, chrono::Utc::now(), Event::RunStarted { input: json!({}), parent: None });
                let done = Recorded::at(3, chrono::Utc::now(), Event::RunSucceeded { output: json!(id) });
                state.apply(&started);
                state.apply(&done);
                let appended = store
                    .append(&state, &[started, done], None, Some(owner))
                    .await;
                (
                    id.to_string(),
                    appended.map(|cancel| format!("cancel {cancel:?}")),
                )
            });
        }
        let mut answers = std::collections::BTreeMap::new();
        while let Some(joined) = tasks.join_next().await {
            let (id, answer) = joined.unwrap();
            answers.insert(id, answer);
        }
        for n in 0..70 {
            let id = format!("new-{n}");
            assert_eq!(answers[&id].as_deref().unwrap(), "created true", "{id}");
            assert_eq!(store.events(&id).await.unwrap().len(), 1, "{id}");
            assert_eq!(store.run(&id).await.unwrap().unwrap().input["n"], n);
        }
        assert!(
            matches!(answers["taken"], Err(StoreError::Corrupt(ref m)) if m == "run taken exists already"),
            "{:?}",
            answers["taken"]
        );
        assert!(
            matches!(answers["leased"], Err(StoreError::LeaseLost(ref id)) if id == "leased"),
            "{:?}",
            answers["leased"]
        );
        assert_eq!(store.events("leased").await.unwrap().len(), 1);
        assert_eq!(
            answers["cancelled"].as_deref().unwrap(),
            "cancel Some(\"not needed\")"
        );
        for id in ["a0", "a1", "a2", "cancelled"] {
            if id != "cancelled" {
                assert_eq!(answers[id].as_deref().unwrap(), "cancel None", "{id}");
            }
            let run = store.run(id).await.unwrap().unwrap();
            assert_eq!(
                (run.status.as_str(), run.output),
                ("succeeded", Some(json!(id)))
            );
            assert_eq!(store.events(id).await.unwrap().len(), 3, "{id}");
        }

        // The batches that failed were rolled back, not left open on the
        // writer's connection: the next batch commits.
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..20 {
            let store = store.clone();
            tasks.spawn(async move {
                let id = format!("after-{n}");
                store.create_run(new_run(&id, &json!({}), None)).await
            });
        }
        while let Some(joined) = tasks.join_next().await {
            assert!(joined.unwrap().unwrap().1);
        }
        for n in 0..20 {
            let id = format!("after-{n}");
            assert_eq!(store.run(&id).await.unwrap().unwrap().status, "pending");
        }
    })
    .await;
}

/// Writes that fail without an error (a lease lost, an idempotency key
/// taken by a neighbour) must not be committed with their batch: its other
/// writes commit, and these get their own answers.
#[tokio::test]
async fn a_write_that_does_not_apply_is_not_committed_with_its_batch() {
    on_every_backend("not_applied", |store| async move {
        let input = json!({});
        for n in 0..20 {
            store
                .create_run(new_run(&format!("b{n}"), &input, None))
                .await
                .unwrap();
        }
        store
            .claim_due("w1", Duration::from_secs(30), 20, &[])
            .await
            .unwrap();

        // Ten rounds, each all at once: appends under the lease, one under
        // a lease another worker holds, and two new runs racing for one key.
        for round in 0..10 {
            let mut tasks = tokio::task::JoinSet::new();
            for n in 0..20 {
                let store = store.clone();
                let owner = if n == round { "w2" } else { "w1" };
                tasks.spawn(async move {
                    let id = format!("b{n}");
                    let mut state = RunState::new(&id, "demo", 1, Utc::now());
                    let step = Recorded::at(
                        round as u64 + 2,
                        chrono::Utc::now(),
                        Event::StepStarted {
                            step: format!("s{round}"),
                            attempt: 1,
                            input: json!({}),
                        },
                    );
                    state.apply(&step);
                    let appended = store.append(&state, &[step], None, Some(owner)).await;
                    (id, appended.map(|_| None))
                });
            }
            for n in 0..2 {
                let store = store.clone();
                tasks.spawn(async move {
                    let id = format!("keyed-{round}-{n}");
                    let key = format!("key-{round}");
                    let created = store
                        .create_run(new_run(&id, &json!({}), Some(&key)))
                        .await
                        .map(|(run, created)| Some((run.id, created)));
                    (id, created)
                });
            }
            let mut winners = Vec::new();
            while let Some(joined) = tasks.join_next().await {
                match joined.unwrap() {
                    (id, Ok(None)) => assert_ne!(id, format!("b{round}"), "a lost lease applied"),
                    (id, Err(StoreError::LeaseLost(lost))) => {
                        assert_eq!(id, format!("b{round}"));
                        assert_eq!(lost, id);
                    }
                    (_, Ok(Some(run))) => winners.push(run),
                    (id, other) => panic!("{id}: {other:?}"),
                }
            }
            winners.sort();
            assert_eq!(winners.len(), 2);
            assert_eq!(winners[0].0, winners[1].0, "one run per key: {winners:?}");
            assert_eq!(
                (winners[0].1, winners[1].1),
                (false, true),
                "one of the two created it: {winners:?}"
            );
            let loser = if winners[0].0.ends_with("-0") { 1 } else { 0 };
            assert!(
                store
                    .run(&format!("keyed-{round}-{loser}"))
                    .await
                    .unwrap()
                    .is_none()
            );
            assert!(
                store
                    .events(&format!("keyed-{round}-{loser}"))
                    .await
                    .unwrap()
                    .is_empty()
            );
        }
        for n in 0..20 {
            // Ten rounds, one of them under another's lease (none for b10..).
            let expected = if n < 10 { 1 + 9 } else { 1 + 10 };
            assert_eq!(
                store.events(&format!("b{n}")).await.unwrap().len(),
                expected,
                "b{n}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn runs_are_listed_newest_first_by_workflow_and_status_in_pages() {
    on_every_backend("list", |store| async move {
        let input = json!({});
        for i in 0..5 {
            let id = format!("0190000{i}");
            let workflow = if i % 2 == 0 { "even" } else { "odd" };
            let new = NewRun {
                id: &id,
                workflow,
                version: 1,
                input: &input,
                idempotency_key: None,
                started_by: None,
                rerun_of: None,
                parent: None,
                lease: None,
                placement: Default::default(),
            };
            store.create_run(new).await.unwrap();
        }
        let ids =
            |rows: Vec<steward::store::RunRow>| rows.into_iter().map(|r| r.id).collect::<Vec<_>>();
        let page = store.list_runs(None, None, None, 2).await.unwrap();
        assert_eq!(ids(page), ["01900004", "01900003"]);
        let page = store
            .list_runs(None, None, Some("01900003"), 2)
            .await
            .unwrap();
        assert_eq!(ids(page), ["01900002", "01900001"]);
        let even = store
            .list_runs(Some("even"), Some(Status::Pending), None, 10)
            .await
            .unwrap();
        assert_eq!(ids(even), ["01900004", "01900002", "01900000"]);
        assert!(
            store
                .list_runs(None, Some(Status::Failed), None, 10)
                .await
                .unwrap()
                .is_empty()
        );
    })
    .await;
}

#[tokio::test]
async fn a_worker_that_lost_the_lease_cannot_write() {
    on_every_backend("lease", |store| async move {
        let input = json!({});
        store.create_run(new_run("r1", &input, None)).await.unwrap();
        assert_eq!(
            store
                .claim_due("w1", Duration::from_secs(30), 10, &[])
                .await
                .unwrap(),
            ["r1"]
        );
        let mut state = RunState::new("r1", "demo", 1, Utc::now());
        let done = Recorded::at(
            2,
            chrono::Utc::now(),
            Event::RunSucceeded { output: json!(1) },
        );
        state.apply(&done);
        let err = store
            .append(&state, std::slice::from_ref(&done), None, Some("w2"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::LeaseLost(ref id) if id == "r1"),
            "{err}"
        );
        assert_eq!(
            store.events("r1").await.unwrap().len(),
            1,
            "nothing was written"
        );
        assert_eq!(store.run("r1").await.unwrap().unwrap().status, "pending");
        store
            .append(&state, std::slice::from_ref(&done), None, Some("w1"))
            .await
            .unwrap();
        assert_eq!(store.run("r1").await.unwrap().unwrap().status, "succeeded");
        // A failed drive's release keeps the run back for a while.
        store.create_run(new_run("r2", &input, None)).await.unwrap();
        assert_eq!(
            store
                .claim_due("w1", Duration::from_secs(30), 10, &[])
                .await
                .unwrap(),
            ["r2"]
        );
        store
            .release("w1", "r2", Some(Duration::from_secs(60)))
            .await
            .unwrap();
        assert!(
            store
                .claim_due("w3", Duration::from_secs(30), 10, &[])
                .await
                .unwrap()
                .is_empty()
        );
    })
    .await;
}

#[tokio::test]
async fn the_sla_report_aggregated_in_the_database_matches_its_definition() {
    use steward::report::{FinishedRun, build};
    on_every_backend("report", |store| async move {
        // (workflow, priority, breached, succeeded, seconds to resolution)
        let fixture: Vec<(&str, &str, bool, bool, i64)> = (1..=10)
            .map(|m| ("incident", "P1", m > 8, true, m * 60))
            .chain([
                ("incident", "P2", false, true, 3600),
                ("incident", "P2", false, false, 100),
                ("incident", "P2", true, false, 9000),
                ("access", "P3", false, true, 7200),
                ("access", "P3", false, true, 60),
            ])
            .collect();
        let mut expected = Vec::new();
        for (i, (workflow, priority, breached, succeeded, secs)) in fixture.iter().enumerate() {
            let id = format!("run-{i}");
            let input = json!({});
            let mut new = new_run(&id, &input, None);
            new.workflow = workflow;
            let (row, _) = store.create_run(new).await.unwrap();
            let end = row.created_at + chrono::Duration::seconds(*secs);
            let mut state = RunState::new(&id, workflow, 1, row.created_at);
            let mut events = vec![Event::SlaStarted {
                priority: priority.to_string(),
                target_ms: Some(3_600_000),
                response_target_ms: None,
            }];
            if *breached {
                events.push(Event::SlaBreached);
            }
            events.push(if *succeeded {
                Event::RunSucceeded { output: json!({}) }
            } else {
                Event::RunFailed {
                    error: steward::run::StepError::fatal("no"),
                }
            });
            let recorded: Vec<Recorded> = events
                .into_iter()
                .enumerate()
                .map(|(n, event)| Recorded {
                    seq: n as u64 + 2,
                    at: end,
                    event,
                })
                .collect();
            for r in &recorded {
                state.apply(r);
            }
            store.append(&state, &recorded, None, None).await.unwrap();
            expected.push(FinishedRun {
                workflow: workflow.to_string(),
                priority: priority.to_string(),
                breached: *breached,
                succeeded: *succeeded,
                resolution_ms: (end - row.created_at).num_milliseconds(),
            });
        }
        let from = (Utc::now() - chrono::Duration::days(1)).timestamp_millis();
        let to = (Utc::now() + chrono::Duration::days(1)).timestamp_millis();
        let report = store.sla_report(from, to).await.unwrap();
        assert_eq!(report, build(&expected, &[]));
        let p1 = report.iter().find(|l| l.priority == "P1").unwrap();
        assert_eq!((p1.runs, p1.met, p1.breached), (10, 8, 2));
        assert_eq!(p1.resolution_median_s, Some(300.0));
        assert_eq!(p1.resolution_p90_s, Some(540.0));
        let p3 = report.iter().find(|l| l.priority == "P3").unwrap();
        assert_eq!(p3.resolution_median_s, Some(60.0));
        assert!(store.sla_report(0, 1).await.unwrap().is_empty());
    })
    .await;
}

/// Whether the server's connections named `app` use TLS, as the server
/// sees them (`pg_stat_ssl`), asked over a connection of its own.
async fn tls_of(url: &str, app: &str) -> Vec<bool> {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar(
        "SELECT s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
         WHERE a.application_name = $1",
    )
    .bind(app)
    .fetch_all(&mut conn)
    .await
    .unwrap()
}

/// `sslmode` in the database URL is honoured: `disable` connects in
/// plaintext, `require` over TLS (or fails when the server has none,
/// rather than falling back to plaintext), `verify-full` checks the
/// server's certificate, and an unreadable `sslrootcert` is an error that
/// names the file.
#[tokio::test]
async fn postgres_sslmode_in_the_url_is_honoured() {
    let missing = std::env::temp_dir().join(format!("no-such-ca-{}.pem", std::process::id()));
    let err = Store::open(
        &format!(
            "postgres://postgres@127.0.0.1:1/x?sslmode=verify-full&sslrootcert={}",
            missing.display()
        ),
        StoreOptions::default(),
    )
    .await
    .err()
    .expect("refused");
    assert!(
        matches!(&err, StoreError::RootCert { path, .. } if *path == missing),
        "{err}"
    );
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );

    let Some(url) = common::postgres_url() else {
        eprintln!(
            "postgres_sslmode: PostgreSQL part skipped: STEWARD_TEST_DATABASE_URL is not set"
        );
        return;
    };
    let with = |params: &str| {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}{params}")
    };
    let options = || StoreOptions {
        schema: Some(common::unique_schema("sslmode")),
        ..StoreOptions::default()
    };
    let plain = with("sslmode=disable");
    let server_tls: String = {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(&plain).await.unwrap();
        sqlx::query_scalar("SHOW ssl")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    };

    let app = format!("steward-plain-{}", std::process::id());
    let store = Store::open(
        &with(&format!("sslmode=disable&application_name={app}")),
        options(),
    )
    .await
    .expect("sslmode=disable connects");
    let seen = tls_of(&plain, &app).await;
    assert!(!seen.is_empty() && seen.iter().all(|tls| !tls), "{seen:?}");
    store.close().await;

    let app = format!("steward-tls-{}", std::process::id());
    let required = Store::open(
        &with(&format!("sslmode=require&application_name={app}")),
        options(),
    )
    .await;
    if server_tls == "on" {
        let store = required.expect("sslmode=require connects over TLS");
        let seen = tls_of(&plain, &app).await;
        assert!(!seen.is_empty() && seen.iter().all(|tls| *tls), "{seen:?}");
        store.close().await;
        // The local server's certificate is signed by no CA we trust.
        let err = Store::open(&with("sslmode=verify-full"), options())
            .await
            .err()
            .expect("an unverifiable certificate is refused");
        assert!(
            err.to_string().to_lowercase().contains("certificate"),
            "{err}"
        );
    } else {
        let err = required.err().expect("no plaintext fallback");
        assert!(
            err.to_string().contains("server does not support TLS"),
            "{err}"
        );
    }
}

/// A run id created at `at`, as the server makes them (UUIDv7).
fn id_at(at: chrono::DateTime<Utc>) -> String {
    let ms = at.timestamp_millis() as u64;
    uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        ms / 1000,
        (ms % 1000) as u32 * 1_000_000,
    ))
    .to_string()
}

/// Finishes run `id` with an outcome recorded at `at`.
async fn finish_at(store: &Store, id: &str, at: chrono::DateTime<Utc>) {
    let mut state = RunState::new(id, "demo", 1, Utc::now());
    for r in store.events(id).await.unwrap() {
        state.apply(&r);
    }
    let done = Recorded {
        seq: 2,
        at,
        event: Event::RunSucceeded { output: json!({}) },
    };
    state.apply(&done);
    store
        .append(&state, std::slice::from_ref(&done), None, None)
        .await
        .unwrap();
}

/// Rows of `table` whose `column` is one of `ids`, read over a connection
/// of the test's own (the store has no reader for every table).
async fn rows_of(
    url: &str,
    schema: Option<&str>,
    table: &str,
    column: &str,
    ids: &[String],
) -> i64 {
    use sqlx::{Connection as _, Executor as _};
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    if let Some(schema) = schema {
        conn.execute(sqlx::AssertSqlSafe(format!(
            "SET search_path TO \"{schema}\""
        )))
        .await
        .unwrap();
    }
    let list = ids
        .iter()
        .map(|id| format!("'{id}'"))
        .collect::<Vec<_>>()
        .join(", ");
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM {table} WHERE {column} IN ({list})"
    )))
    .fetch_one(&mut conn)
    .await
    .unwrap()
}

/// `[retention] runs`: runs that finished before the cutoff go, with their
/// events and approval rows, batch by batch; open runs (however old) and
/// runs finished since stay.
#[tokio::test]
async fn retention_deletes_old_finished_runs_with_their_rows_and_keeps_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let mut backends = vec![(
        format!("sqlite://{}/steward.db", dir.path().display()),
        None,
    )];
    match common::postgres_url() {
        Some(url) => backends.push((url, Some(common::unique_schema("retention")))),
        None => {
            eprintln!("retention: PostgreSQL part skipped: STEWARD_TEST_DATABASE_URL is not set")
        }
    }
    for (url, schema) in backends {
        let options = StoreOptions {
            schema: schema.clone(),
            ..StoreOptions::default()
        };
        let store = Store::open(&url, options).await.unwrap();
        let now = Utc::now();
        let day = chrono::Duration::days(1);
        let old = now - day * 100;
        let cutoff = now - day * 90;
        let input = json!({});

        // Five runs created and finished 100 days ago; one has an approval
        // with a decision.
        let mut gone = Vec::new();
        for i in 0..5 {
            let id = id_at(old + chrono::Duration::milliseconds(i));
            store
                .create_run(new_run(&id, &input, Some(&id)))
                .await
                .unwrap();
            finish_at(&store, &id, old + chrono::Duration::hours(1)).await;
            gone.push(id);
        }
        let approval = steward::store::ApprovalRow {
            id: format!("{}/ask", gone[0]),
            run_id: gone[0].clone(),
            workflow: "demo".into(),
            step: "ask".into(),
            level: 0,
            approvers: vec!["ana".into()],
            eligible: vec!["ana".into()],
            quorum: 1,
            due_at: None,
            status: "pending".into(),
            created_at: old,
            requester: None,
            allow_self_approval: false,
            started_by: None,
        };
        store.open_approval(&approval).await.unwrap();
        store
            .decide(&approval.id, "ana", "approve", None, None, None)
            .await
            .unwrap();

        // Kept: a run as old but still open, one as old that finished
        // yesterday, one of today.
        let open = id_at(old + chrono::Duration::milliseconds(10));
        store
            .create_run(new_run(&open, &input, None))
            .await
            .unwrap();
        let late = id_at(old + chrono::Duration::milliseconds(11));
        store
            .create_run(new_run(&late, &input, None))
            .await
            .unwrap();
        finish_at(&store, &late, now - day).await;
        let recent = id_at(now);
        store
            .create_run(new_run(&recent, &input, None))
            .await
            .unwrap();
        finish_at(&store, &recent, now).await;
        let kept = vec![open.clone(), late.clone(), recent.clone()];

        // Two per transaction: three batches.
        assert_eq!(store.sweep_finished_runs(cutoff, 2).await.unwrap(), 5);
        for id in &gone {
            assert!(store.run(id).await.unwrap().is_none(), "{id}");
            assert!(store.events(id).await.unwrap().is_empty(), "{id}");
        }
        assert!(store.approval(&approval.id).await.unwrap().is_none());
        let schema = schema.as_deref();
        let approvals = std::slice::from_ref(&approval.id);
        for (table, column, ids) in [
            ("runs", "id", &gone),
            ("run_events", "run_id", &gone),
            ("approvals", "run_id", &gone),
            ("approval_approvers", "approval_id", &approvals.to_vec()),
            ("approval_decisions", "approval_id", &approvals.to_vec()),
        ] {
            assert_eq!(
                rows_of(&url, schema, table, column, ids).await,
                0,
                "{table}"
            );
        }
        for id in &kept {
            assert!(store.run(id).await.unwrap().is_some(), "{id}");
            assert!(!store.events(id).await.unwrap().is_empty(), "{id}");
        }
        assert_eq!(store.run(&open).await.unwrap().unwrap().status, "pending");
        // The audit log outlives the runs it speaks of.
        let decided = AuditFilter {
            target: Some(&approval.id),
            ..Default::default()
        };
        assert_eq!(store.audit_entries(&decided, 10).await.unwrap().len(), 1);
        // A second sweep finds nothing more.
        assert_eq!(store.sweep_finished_runs(cutoff, 2).await.unwrap(), 0);
        store.close().await;
    }
}

/// A change that does not happen leaves no audit entry: the entry is
/// written in the change's transaction, so it cannot outlive a refusal.
#[tokio::test]
async fn a_change_that_fails_writes_no_audit_entry() {
    on_every_backend("audit", |store| async move {
        let input = json!({});
        let run = id_at(Utc::now());
        store.create_run(new_run(&run, &input, None)).await.unwrap();
        let approval = steward::store::ApprovalRow {
            id: format!("{run}/ask"),
            run_id: run.clone(),
            workflow: "demo".into(),
            step: "ask".into(),
            level: 0,
            approvers: vec!["ana".into(), "ben".into()],
            eligible: vec!["ana".into(), "ben".into()],
            quorum: 1,
            due_at: None,
            status: "pending".into(),
            created_at: Utc::now(),
            requester: None,
            allow_self_approval: false,
            started_by: None,
        };
        store.open_approval(&approval).await.unwrap();
        let decided = store
            .decide(&approval.id, "ana", "approve", None, None, None)
            .await
            .unwrap();
        assert!(
            matches!(decided, steward::store::Decided::Recorded(_)),
            "{decided:?}"
        );
        let of_approval = AuditFilter {
            target: Some(&approval.id),
            ..Default::default()
        };
        let entries = store.audit_entries(&of_approval, 10).await.unwrap();
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert_eq!(entries[0].actor, "ana");
        assert_eq!(entries[0].action, "approval.decide");
        assert_eq!(
            entries[0].detail,
            json!({"decision": "approve", "by": "ana"})
        );

        // The same person again (the first decision stands), and someone
        // else once the approval is closed: neither is a change.
        let again = store
            .decide(&approval.id, "ana", "reject", None, None, None)
            .await
            .unwrap();
        assert!(
            matches!(again, steward::store::Decided::Already(_)),
            "{again:?}"
        );
        store.close_approval(&approval.id).await.unwrap();
        let late = store
            .decide(&approval.id, "ben", "reject", None, None, None)
            .await
            .unwrap();
        assert!(matches!(late, steward::store::Decided::Closed), "{late:?}");
        assert_eq!(
            store.audit_entries(&of_approval, 10).await.unwrap().len(),
            1
        );

        // Revoking an unknown token or delegation, cancelling an unknown
        // run and redeploying a version with other text are refused, and
        // leave nothing either.
        assert!(!store.revoke_token("no-such-token", "admin").await.unwrap());
        assert!(!store.revoke_delegation("no-such", "admin").await.unwrap());
        assert!(matches!(
            store
                .request_cancel("no-such-run", "why", "admin")
                .await
                .unwrap(),
            steward::store::CancelRequest::NotFound
        ));
        store
            .deploy_workflow("demo", 1, "name: demo", "admin")
            .await
            .unwrap();
        store
            .deploy_workflow("demo", 1, "name: demo", "admin")
            .await
            .unwrap();
        let err = store
            .deploy_workflow("demo", 1, "name: demo # changed", "admin")
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::VersionConflict { .. }), "{err}");
        let all = store
            .audit_entries(&AuditFilter::default(), 100)
            .await
            .unwrap();
        let seen: Vec<(&str, &str)> = all
            .iter()
            .map(|e| (e.action.as_str(), e.target.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                ("workflow.deploy", "demo@1"),
                ("approval.decide", approval.id.as_str())
            ],
            "{all:?}"
        );
        store.close().await;
    })
    .await;
}

/// A retry flips a failed run back to running and due, with its event and
/// audit entry, only while the run is still finished and its history is
/// the one the retry was planned on; of two at once, one wins.
#[tokio::test]
async fn a_retry_makes_a_finished_run_live_once() {
    use steward::store::{RetryOutcome, RetryRun};
    on_every_backend("retry", |store| async move {
        let input = json!({"n": 1});
        store.create_run(new_run("r1", &input, None)).await.unwrap();
        let mut state = RunState::new("r1", "demo", 1, Utc::now());
        state.apply(&Recorded::at(
            1,
            Utc::now(),
            Event::RunStarted {
                input: input.clone(),
                parent: None,
            },
        ));
        let failed = Recorded::at(
            2,
            Utc::now(),
            Event::RunFailed {
                error: steward::run::StepError::fatal("vendor said no"),
            },
        );
        state.apply(&failed);
        store.append(&state, &[failed], None, None).await.unwrap();
        let row = store.run("r1").await.unwrap().unwrap();
        assert_eq!(row.status, "failed");
        assert!(row.finished_at.is_some());

        let retried = |seq: u64, by: &str| {
            Recorded::at(
                seq,
                Utc::now(),
                Event::RunRetried {
                    by: by.into(),
                    from_step: None,
                    reset: vec!["a".into()],
                    input: Some(json!({"n": 2})),
                    version: None,
                    idempotency_key: None,
                },
            )
        };
        let (ana, ben) = (retried(3, "ana"), retried(3, "ben"));
        let corrected = json!({"n": 2});
        fn retry_with<'a>(event: &'a Recorded, input: &'a serde_json::Value) -> RetryRun<'a> {
            RetryRun {
                id: "r1",
                event,
                input: Some(input),
                upgrade: None,
                actor: "ana",
            }
        }
        let (first, second) = tokio::join!(
            store.retry_run(retry_with(&ana, &corrected)),
            store.retry_run(retry_with(&ben, &corrected))
        );
        let mut outcomes = [first.unwrap(), second.unwrap()];
        outcomes.sort_by_key(|o| format!("{o:?}"));
        assert_eq!(
            outcomes,
            [
                RetryOutcome::NotRetryable("running".into()),
                RetryOutcome::Retried
            ]
        );
        let row = store.run("r1").await.unwrap().unwrap();
        assert_eq!((row.status.as_str(), row.finished_at), ("running", None));
        assert_eq!(row.error, None);
        assert_eq!(row.input, corrected);
        let history = store.events("r1").await.unwrap();
        assert_eq!(history.len(), 3);
        assert!(matches!(history[2].event, Event::RunRetried { .. }));
        // Due now: a worker claims it at once.
        let claimed = store
            .claim_due_runs("w1", Duration::from_secs(30), 10, &[])
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(claimed[0].history, history);
        let audit = store
            .audit_entries(
                &AuditFilter {
                    action: Some("run.retry"),
                    ..AuditFilter::default()
                },
                10,
            )
            .await
            .unwrap();
        assert_eq!(audit.len(), 1);
        assert_eq!(audit[0].target, "r1");

        // Failed again, a retry planned on the older history is refused.
        let mut state = RunState::new("r1", "demo", 1, Utc::now());
        for recorded in &history {
            state.apply(recorded);
        }
        let again = Recorded::at(
            4,
            Utc::now(),
            Event::RunFailed {
                error: steward::run::StepError::fatal("still no"),
            },
        );
        state.apply(&again);
        store
            .append(&state, &[again], None, Some("w1"))
            .await
            .unwrap();
        assert_eq!(
            store
                .retry_run(retry_with(&retried(3, "ana"), &corrected))
                .await
                .unwrap(),
            RetryOutcome::Changed
        );
        assert_eq!(store.run("r1").await.unwrap().unwrap().status, "failed");
        assert_eq!(
            store
                .retry_run(retry_with(&retried(5, "ana"), &corrected))
                .await
                .unwrap(),
            RetryOutcome::Retried
        );
        let missing = RetryRun {
            id: "nope",
            ..retry_with(&ana, &corrected)
        };
        assert_eq!(
            store.retry_run(missing).await.unwrap(),
            RetryOutcome::NotFound
        );
    })
    .await;
}

//! The scheduler with an injected clock, against a real store, worker and
//! engine: DST transitions in Europe/Berlin, and two scheduler loops on one
//! database making one run per fire time (on SQLite and, when
//! `STEWARD_TEST_DATABASE_URL` is set, PostgreSQL).

use crate::common;

use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::json;
use steward::catalog::Catalog;
use steward::schedule::{
    Overlap, Schedule, ScheduleSpec, Scheduler, SchedulerOptions, Source, TickReport,
};
use steward::store::{Store, StoreOptions};
use steward::worker::{self, WorkerOptions};

const REPORT: &str = "name: report\nversion: 1\nsteps:\n  - id: t\n    uses: transform\n    with: { week: \"${{ input.week }}\" }\n";

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// A store with the `report` workflow deployed, and a scheduler on it.
struct Rig {
    store: Store,
    catalog: Arc<Catalog>,
    worker: worker::WorkerHandle,
}

impl Rig {
    async fn new(store: Store) -> Rig {
        let (catalog, executor) = common::in_process::deployed(&store, REPORT).await;
        let worker = worker::spawn(
            store.clone(),
            executor,
            catalog.clone(),
            WorkerOptions::default(),
        );
        Rig {
            store,
            catalog,
            worker,
        }
    }

    fn scheduler(&self, lead: bool) -> Scheduler {
        Scheduler::new(
            self.store.clone(),
            self.catalog.clone(),
            self.worker.clone(),
            SchedulerOptions {
                lead,
                ..SchedulerOptions::default()
            },
        )
    }

    /// Stores a schedule whose clock starts after `from`.
    async fn schedule(&self, id: &str, cron: &str, tz: &str, from: DateTime<Utc>) {
        let mut spec = ScheduleSpec::new("report", cron);
        spec.timezone = tz.into();
        spec.overlap = Overlap::Allow;
        spec.input = json!({"week": 48});
        let next = spec.parse_cron().unwrap().next_after(from);
        let schedule = Schedule {
            id: id.into(),
            spec,
            source: Source::Api,
            created_at: from,
            updated_at: from,
            next_fire_at: next,
            last_run_id: None,
            queued_fire_at: None,
        };
        assert!(
            self.store
                .create_schedule(&schedule, "system")
                .await
                .unwrap()
        );
    }

    /// The fire times recorded as fired, oldest first, each with its run.
    async fn fired(&self, id: &str) -> Vec<(DateTime<Utc>, String)> {
        let mut fires: Vec<_> = self
            .store
            .fires(id, 1000)
            .await
            .unwrap()
            .into_iter()
            .filter(|f| f.outcome == "fired")
            .map(|f| (f.fire_at, f.run_id.expect("a fired record names its run")))
            .collect();
        fires.reverse();
        fires
    }
}

async fn sqlite_store(dir: &tempfile::TempDir) -> Store {
    Store::open(
        &format!("sqlite://{}/steward.db", dir.path().display()),
        StoreOptions::default(),
    )
    .await
    .unwrap()
}

/// Ticks at every `step` from `from` to `to`, summing the reports.
async fn tick_through(
    scheduler: &Scheduler,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    step: TimeDelta,
) -> TickReport {
    let mut total = TickReport::default();
    let mut now = from;
    while now <= to {
        let r = scheduler.tick(now).await.unwrap();
        total.fired += r.fired;
        total.missed += r.missed;
        total.skipped += r.skipped;
        now += step;
    }
    total
}

#[tokio::test]
async fn spring_forward_fires_a_skipped_time_once_after_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::new(sqlite_store(&dir).await).await;
    // Europe/Berlin, 2026-03-29: 02:00 CET jumps to 03:00 CEST (01:00 UTC);
    // 02:30 does not exist that night.
    rig.schedule(
        "daily",
        "30 2 * * *",
        "Europe/Berlin",
        at("2026-03-28T12:00:00Z"),
    )
    .await;
    rig.schedule(
        "quarter",
        "*/15 * * * *",
        "Europe/Berlin",
        at("2026-03-29T00:40:00Z"),
    )
    .await;
    let scheduler = rig.scheduler(true);
    let report = tick_through(
        &scheduler,
        at("2026-03-29T00:40:00Z"),
        at("2026-03-30T00:30:00Z"),
        TimeDelta::minutes(5),
    )
    .await;
    assert_eq!(report.missed, 0);
    let daily: Vec<_> = rig.fired("daily").await.into_iter().map(|f| f.0).collect();
    assert_eq!(
        daily,
        [at("2026-03-29T01:00:00Z"), at("2026-03-30T00:30:00Z")],
        "02:30 fires at 03:00 CEST, once, then at 02:30 CEST the next day"
    );
    let quarter: Vec<_> = rig
        .fired("quarter")
        .await
        .into_iter()
        .map(|f| f.0)
        .collect();
    assert_eq!(
        &quarter[..3],
        [
            at("2026-03-29T00:45:00Z"),
            at("2026-03-29T01:00:00Z"),
            at("2026-03-29T01:15:00Z")
        ],
        "the four quarter hours of the gap fire once, at 03:00 CEST"
    );
    let runs = rig
        .store
        .list_runs(Some("report"), None, None, 500)
        .await
        .unwrap();
    assert_eq!(runs.len(), daily.len() + quarter.len(), "one run per fire");
    assert!(runs.iter().all(|r| r.input == json!({"week": 48})));
}

#[tokio::test]
async fn fall_back_fires_a_repeated_time_once() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::new(sqlite_store(&dir).await).await;
    // Europe/Berlin, 2026-10-25: 03:00 CEST falls back to 02:00 CET
    // (01:00 UTC); 02:00-02:59 happens twice.
    rig.schedule(
        "daily",
        "30 2 * * *",
        "Europe/Berlin",
        at("2026-10-24T12:00:00Z"),
    )
    .await;
    rig.schedule(
        "hourly",
        "0 * * * *",
        "Europe/Berlin",
        at("2026-10-24T23:30:00Z"),
    )
    .await;
    let scheduler = rig.scheduler(true);
    tick_through(
        &scheduler,
        at("2026-10-24T23:30:00Z"),
        at("2026-10-26T01:30:00Z"),
        TimeDelta::minutes(10),
    )
    .await;
    let daily: Vec<_> = rig.fired("daily").await.into_iter().map(|f| f.0).collect();
    assert_eq!(
        daily,
        [at("2026-10-25T00:30:00Z"), at("2026-10-26T01:30:00Z")],
        "02:30 fires at its first occurrence (CEST) only"
    );
    let hourly: Vec<_> = rig.fired("hourly").await.into_iter().map(|f| f.0).collect();
    assert_eq!(
        &hourly[..3],
        [
            at("2026-10-25T00:00:00Z"),
            at("2026-10-25T02:00:00Z"),
            at("2026-10-25T03:00:00Z")
        ],
        "02:00 fires once; the next is 03:00 CET"
    );
}

/// Two scheduler loops that do not coordinate (no leader lease), each on
/// its own connection pool, tick the same instants at once: the fire
/// records alone make one run per fire time.
async fn two_loops_one_run_per_fire(first: Store, second: Store) {
    let a = Rig::new(first).await;
    let b = Rig::new(second).await;
    let from = Utc::now();
    a.schedule("every-second", "* * * * * *", "UTC", from).await;
    let (one, two) = (a.scheduler(false), b.scheduler(false));
    let mut now = from;
    for _ in 0..10 {
        now += TimeDelta::seconds(1);
        let (x, y) = tokio::join!(one.tick(now), two.tick(now));
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_eq!(x.fired + y.fired, 1, "at {now}: {x:?} {y:?}");
    }
    let fired = a.fired("every-second").await;
    assert_eq!(fired.len(), 10);
    let runs = a
        .store
        .list_runs(Some("report"), None, None, 500)
        .await
        .unwrap();
    assert_eq!(runs.len(), 10, "one run per fire time");
    let mut ids: Vec<_> = fired.iter().map(|f| f.1.clone()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 10);
}

#[tokio::test]
async fn two_scheduler_loops_on_sqlite_make_one_run_per_fire_time() {
    let dir = tempfile::tempdir().unwrap();
    two_loops_one_run_per_fire(sqlite_store(&dir).await, sqlite_store(&dir).await).await;
}

#[tokio::test]
async fn two_scheduler_loops_on_postgres_make_one_run_per_fire_time() {
    let Some(url) = common::postgres_url() else {
        eprintln!("two_scheduler_loops_on_postgres: skipped: STEWARD_TEST_DATABASE_URL is not set");
        return;
    };
    let schema = common::unique_schema("two_loops");
    let options = || StoreOptions {
        schema: Some(schema.clone()),
        ..StoreOptions::default()
    };
    let first = Store::open(&url, options()).await.unwrap();
    let second = Store::open(&url, options()).await.unwrap();
    two_loops_one_run_per_fire(first, second).await;
}

#[tokio::test]
async fn only_the_leader_fires() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::new(sqlite_store(&dir).await).await;
    let (one, two) = (rig.scheduler(true), rig.scheduler(true));
    let now = Utc::now();
    assert!(one.tick(now).await.unwrap().led);
    assert!(!two.tick(now).await.unwrap().led, "the lease is held");
    assert!(one.tick(now).await.unwrap().led, "the leader renews");
}

#[tokio::test]
async fn misses_after_a_crash_between_recording_a_fire_and_moving_the_clock_are_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let rig = Rig::new(sqlite_store(&dir).await).await;
    let start = at("2026-06-01T10:00:00Z");
    rig.schedule(
        "every-second",
        "* * * * * *",
        "UTC",
        start - TimeDelta::seconds(1),
    )
    .await;
    let mut schedule = rig.store.schedule("every-second").await.unwrap().unwrap();
    schedule.spec.catch_up = steward::schedule::CatchUp::None;
    rig.store
        .update_schedule(&schedule, "system")
        .await
        .unwrap();
    // The fire at 10:00:00 was recorded, then the process died before the
    // schedule's clock moved past it.
    assert!(
        rig.store
            .record_fire(
                "every-second",
                start,
                steward::schedule::Outcome::Skipped,
                Some("before the crash")
            )
            .await
            .unwrap()
    );
    let report = rig
        .scheduler(true)
        .tick(start + TimeDelta::seconds(30))
        .await
        .unwrap();
    assert_eq!(report.missed, 19, "10:00:01 to 10:00:19 missed: {report:?}");
    assert_eq!(
        report.fired, 11,
        "10:00:20 to 10:00:30 are within the 10 s grace"
    );
    let fires = rig.store.fires("every-second", 100).await.unwrap();
    let missed: Vec<_> = fires.iter().filter(|f| f.outcome == "missed").collect();
    assert_eq!(missed.len(), 1, "one record for the span: {fires:#?}");
    assert_eq!(missed[0].fire_at, start + TimeDelta::seconds(1));
    assert!(
        missed[0]
            .reason
            .as_deref()
            .unwrap()
            .starts_with("19 fire times")
    );
}

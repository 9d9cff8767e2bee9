//! The scheduler loop: one process at a time (a leader lease in the
//! database) walks the schedules that are due, decides what each fire time
//! becomes (fired, skipped, queued, missed) and records it. The record's
//! primary key, not a check, makes each fire happen once: a second
//! scheduler that sees the same fire time conflicts on the insert and does
//! nothing.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use tokio::sync::{Notify, watch};

use super::{CatchUp, CronSchedule, Outcome, Overlap, Schedule, fire_key};
use crate::catalog::Catalog;
use crate::run::Status;
use crate::store::{Store, StoreError};
use crate::worker::WorkerHandle;

/// How the scheduler behaves.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    /// This process's name in the leader lease.
    pub owner: String,
    /// A fire noticed later than this after its time counts as late: the
    /// schedule's catch-up policy decides whether it still runs.
    pub grace: Duration,
    /// How long the leader lease lasts without renewal.
    pub leader_ttl: Duration,
    /// The longest sleep between passes (new schedules from other
    /// processes are seen within it).
    pub max_sleep: Duration,
    /// `false` runs every pass without the lease: only for showing that the
    /// fire records alone keep fires unique.
    pub lead: bool,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        SchedulerOptions {
            owner: format!("scheduler-{}", uuid::Uuid::new_v4().simple()),
            grace: Duration::from_secs(10),
            leader_ttl: Duration::from_secs(10),
            max_sleep: Duration::from_secs(1),
            lead: true,
        }
    }
}

/// What one pass did, for tests and logs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TickReport {
    /// Whether this process held the leader lease.
    pub led: bool,
    pub fired: usize,
    pub skipped: usize,
    pub missed: usize,
    pub queued: usize,
    pub failed: usize,
}

/// Fires the schedules in the store.
#[derive(Clone)]
pub struct Scheduler {
    store: Store,
    catalog: Arc<Catalog>,
    worker: WorkerHandle,
    options: SchedulerOptions,
}

/// Most runs one schedule starts in one pass; the rest wait for the next
/// pass, so catching up a long downtime does not stall the others.
const MAX_STARTS_PER_PASS: usize = 500;

/// Most fire times one pass walks through to count misses.
const MAX_WALK: usize = 100_000;

impl Scheduler {
    pub fn new(
        store: Store,
        catalog: Arc<Catalog>,
        worker: WorkerHandle,
        options: SchedulerOptions,
    ) -> Scheduler {
        Scheduler {
            store,
            catalog,
            worker,
            options,
        }
    }

    /// One pass at the instant `now` (the clock is injected so DST and
    /// catch-up can be tested without waiting for them).
    pub async fn tick(&self, now: DateTime<Utc>) -> Result<TickReport, StoreError> {
        let mut report = TickReport::default();
        if self.options.lead
            && !self
                .store
                .lead_scheduler(&self.options.owner, self.options.leader_ttl)
                .await?
        {
            return Ok(report);
        }
        report.led = true;
        self.restart_unstarted(&mut report).await?;
        for schedule in self.store.due_schedules(now).await? {
            let id = schedule.id.clone();
            if let Err(e) = self.pass(schedule, now, &mut report).await {
                tracing::error!(schedule = %id, "scheduler pass failed: {e}");
            }
        }
        Ok(report)
    }

    /// Starts the runs of fires recorded as fired by a process that died
    /// before starting them (same idempotency key, so at most one run).
    async fn restart_unstarted(&self, report: &mut TickReport) -> Result<(), StoreError> {
        let before = Utc::now() - TimeDelta::seconds(5);
        for (schedule_id, at) in self.store.unstarted_fires(before).await? {
            if let Some(mut s) = self.store.schedule(&schedule_id).await? {
                self.start(&mut s, at, None, report).await?;
                self.store.advance_schedule(&s, s.next_fire_at).await?;
            }
        }
        Ok(())
    }

    /// Handles one schedule's queued fire and the fire times due by `now`.
    async fn pass(
        &self,
        mut s: Schedule,
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) -> Result<(), StoreError> {
        let cron = match s.spec.parse_cron() {
            Ok(cron) => cron,
            Err(e) => {
                tracing::error!(schedule = %s.id, "schedule cannot fire: {e}");
                return self.store.advance_schedule(&s, None).await;
            }
        };
        if let Some(queued) = s.queued_fire_at
            && self.running_previous(&s).await?.is_none()
        {
            s.queued_fire_at = None;
            self.start(&mut s, queued, Some("the previous run finished"), report)
                .await?;
        }
        let Some(first) = s.next_fire_at.filter(|t| *t <= now) else {
            return self.store.advance_schedule(&s, s.next_fire_at).await;
        };
        let plan = plan_fires(&cron, &s, first, now, self.options.grace);
        for span in &plan.missed {
            self.record_missed(&s, &cron, span, report).await?;
        }
        for &at in &plan.run {
            self.fire(&mut s, at, report).await?;
        }
        self.store.advance_schedule(&s, plan.next).await
    }

    /// Records a span of missed fire times as one record at its first. A
    /// fire time already recorded (a process died after recording it and
    /// before moving the schedule's clock on) is not a miss: the span
    /// starts after it.
    async fn record_missed(
        &self,
        s: &Schedule,
        cron: &CronSchedule,
        span: &MissedSpan,
        report: &mut TickReport,
    ) -> Result<(), StoreError> {
        let (mut first, mut count) = (span.first, span.count);
        while count > 0 {
            let reason = if count == 1 {
                span.why.to_string()
            } else {
                format!(
                    "{count} fire times from {} to {} were missed: {}",
                    first.to_rfc3339(),
                    span.last.to_rfc3339(),
                    span.why
                )
            };
            if self
                .store
                .record_fire(&s.id, first, Outcome::Missed, Some(&reason))
                .await?
            {
                tracing::warn!(schedule = %s.id, "{reason}");
                report.missed += count;
                crate::metrics::global().schedule_fires(&s.spec.workflow, "missed", count as u64);
                return Ok(());
            }
            match cron.next_after(first) {
                Some(next) if next <= span.last => {
                    first = next;
                    count -= 1;
                }
                _ => return Ok(()),
            }
        }
        Ok(())
    }

    /// One fire time that is to run, under the overlap policy.
    async fn fire(
        &self,
        s: &mut Schedule,
        at: DateTime<Utc>,
        report: &mut TickReport,
    ) -> Result<(), StoreError> {
        let Some(previous) = self.running_previous(s).await? else {
            return self.start_new(s, at, None, report).await;
        };
        match s.spec.overlap {
            Overlap::Allow => self.start_new(s, at, None, report).await,
            Overlap::Skip => {
                let reason =
                    format!("run {previous} of an earlier fire is still going (overlap: skip)");
                self.record_without_run(s, at, Outcome::Skipped, &reason, report)
                    .await
                    .map(drop)
            }
            Overlap::Queue if s.queued_fire_at.is_some() => {
                let reason = format!(
                    "a fire is already queued behind run {previous} (overlap: queue keeps one)"
                );
                self.record_without_run(s, at, Outcome::Skipped, &reason, report)
                    .await
                    .map(drop)
            }
            Overlap::Queue => {
                let reason = format!("waits for run {previous} to finish (overlap: queue)");
                if self
                    .record_without_run(s, at, Outcome::Queued, &reason, report)
                    .await?
                {
                    s.queued_fire_at = Some(at);
                }
                Ok(())
            }
            Overlap::CancelPrevious => {
                let reason = format!(
                    "run {previous} of the previous fire was cancelled (overlap: cancel_previous)"
                );
                if self
                    .store
                    .record_fire(&s.id, at, Outcome::Fired, Some(&reason))
                    .await?
                {
                    self.store
                        .request_cancel(
                            &previous,
                            &format!("schedule {}: {reason}", s.id),
                            &format!("schedule:{}", s.id),
                        )
                        .await?;
                    self.worker.wake();
                    self.start(s, at, Some(&reason), report).await?;
                }
                Ok(())
            }
        }
    }

    async fn record_without_run(
        &self,
        s: &Schedule,
        at: DateTime<Utc>,
        outcome: Outcome,
        reason: &str,
        report: &mut TickReport,
    ) -> Result<bool, StoreError> {
        let recorded = self
            .store
            .record_fire(&s.id, at, outcome, Some(reason))
            .await?;
        if recorded {
            match outcome {
                Outcome::Queued => report.queued += 1,
                _ => report.skipped += 1,
            }
            tracing::info!(schedule = %s.id, fire = %at.to_rfc3339(), "{}: {reason}", outcome.as_str());
            crate::metrics::global().schedule_fires(&s.spec.workflow, outcome.as_str(), 1);
        }
        Ok(recorded)
    }

    /// Records the fire (unless another scheduler did) and starts its run.
    async fn start_new(
        &self,
        s: &mut Schedule,
        at: DateTime<Utc>,
        reason: Option<&str>,
        report: &mut TickReport,
    ) -> Result<(), StoreError> {
        if self
            .store
            .record_fire(&s.id, at, Outcome::Fired, reason)
            .await?
        {
            self.start(s, at, reason, report).await?;
        }
        Ok(())
    }

    /// Starts the run of a recorded fire, under the fire's idempotency key,
    /// and completes the record with the run (or why there is none).
    async fn start(
        &self,
        s: &mut Schedule,
        at: DateTime<Utc>,
        reason: Option<&str>,
        report: &mut TickReport,
    ) -> Result<(), StoreError> {
        let workflow = match self.catalog.current(&s.spec.workflow).await {
            Ok(Some(w)) => Ok(w),
            Ok(None) => Err(format!(
                "workflow {} is not deployed: deploy it or delete the schedule",
                s.spec.workflow
            )),
            Err(e) => Err(format!(
                "workflow {} cannot be loaded: {e}",
                s.spec.workflow
            )),
        };
        let workflow = workflow.and_then(|w| {
            w.check_input_for_client(&s.spec.input)
                .map(|()| w)
                .map_err(|errors| {
                    format!(
                        "the schedule's input does not match the workflow's input schema: {}",
                        errors.join("; ")
                    )
                })
        });
        let workflow = match workflow {
            Ok(w) => w,
            Err(why) => {
                tracing::error!(schedule = %s.id, "fire at {} failed: {why}", at.to_rfc3339());
                self.store
                    .settle_fire(&s.id, at, Outcome::Failed, Some(&why), None)
                    .await?;
                report.failed += 1;
                crate::metrics::global().schedule_fires(&s.spec.workflow, "failed", 1);
                return Ok(());
            }
        };
        let run_id = uuid::Uuid::now_v7().to_string();
        let key = fire_key(&s.id, at);
        let started_by = format!("schedule:{}", s.id);
        let (row, _) = self
            .worker
            .start(workflow, &run_id, &s.spec.input, Some(&key), &started_by)
            .await?;
        self.store
            .settle_fire(&s.id, at, Outcome::Fired, reason, Some(&row.id))
            .await?;
        tracing::info!(schedule = %s.id, fire = %at.to_rfc3339(), run = %row.id, "fired");
        s.last_run_id = Some(row.id);
        report.fired += 1;
        crate::metrics::global().schedule_fires(&s.spec.workflow, "fired", 1);
        Ok(())
    }

    /// The schedule's previous run when it has not finished.
    async fn running_previous(&self, s: &Schedule) -> Result<Option<String>, StoreError> {
        let Some(id) = &s.last_run_id else {
            return Ok(None);
        };
        let running = self.store.run(id).await?.is_some_and(|row| {
            Status::parse(&row.status).is_some_and(|status| !status.is_terminal())
        });
        Ok(running.then(|| id.clone()))
    }

    /// Runs passes until stopped: right after each fire time, and at least
    /// every `max_sleep`.
    pub fn spawn(self) -> SchedulerHandle {
        let wake = Arc::new(Notify::new());
        let (stop, mut stopped) = watch::channel(false);
        let handle = SchedulerHandle {
            wake: wake.clone(),
            stop,
        };
        tokio::spawn(async move {
            loop {
                if let Err(e) = self.tick(Utc::now()).await {
                    tracing::warn!("scheduler pass failed, retrying: {e}");
                }
                let max = self.options.max_sleep;
                let sleep = match self.store.next_fire_time().await {
                    Ok(Some(next)) => (next - Utc::now() + TimeDelta::milliseconds(1))
                        .to_std()
                        .unwrap_or(Duration::ZERO)
                        .min(max),
                    _ => max,
                };
                tokio::select! {
                    _ = tokio::time::sleep(sleep) => {}
                    _ = wake.notified() => {}
                    _ = stopped.changed() => break,
                }
            }
            if let Err(e) = self.store.resign_scheduler(&self.options.owner).await {
                tracing::warn!("giving up the scheduler lease failed: {e}");
            }
        });
        handle
    }
}

/// Wakes or stops a spawned scheduler.
#[derive(Clone)]
pub struct SchedulerHandle {
    wake: Arc<Notify>,
    stop: watch::Sender<bool>,
}

impl SchedulerHandle {
    /// A handle with no scheduler behind it, for a process that does not
    /// fire schedules (`steward serve --no-worker`): the workers' schedulers
    /// see new schedules within a second.
    pub fn detached() -> SchedulerHandle {
        SchedulerHandle {
            wake: Arc::new(Notify::new()),
            stop: watch::channel(false).0,
        }
    }

    /// A schedule was created or changed: look again now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

/// Consecutive fire times that will not run, and why.
#[derive(Debug, PartialEq)]
struct MissedSpan {
    first: DateTime<Utc>,
    last: DateTime<Utc>,
    count: usize,
    why: &'static str,
}

/// What to do with the fire times from `first` to `now`.
#[derive(Debug, PartialEq)]
struct FirePlan {
    missed: Vec<MissedSpan>,
    run: Vec<DateTime<Utc>>,
    /// The first fire time left for a later pass.
    next: Option<DateTime<Utc>>,
}

const MISSED_NONE: &str = "no scheduler was running at the fire time (catch_up: none)";
const MISSED_WINDOW: &str =
    "no scheduler was running at the fire time, which is older than the catch-up window";
const MISSED_LAST: &str =
    "no scheduler was running at the fire time, and a later fire replaced it (catch_up: last)";

/// Sorts the due fire times: on time (within `grace`) they run; late ones
/// follow the catch-up policy.
fn plan_fires(
    cron: &CronSchedule,
    s: &Schedule,
    first: DateTime<Utc>,
    now: DateTime<Utc>,
    grace: Duration,
) -> FirePlan {
    let grace = TimeDelta::from_std(grace).unwrap_or(TimeDelta::MAX);
    let window = TimeDelta::from_std(s.spec.catch_up_window).unwrap_or(TimeDelta::MAX);
    let mut missed: Vec<MissedSpan> = Vec::new();
    let mut late_to_run: Vec<DateTime<Utc>> = Vec::new();
    let mut miss = |at: DateTime<Utc>, why: &'static str| match missed.last_mut() {
        Some(span) if span.why == why => {
            span.last = at;
            span.count += 1;
        }
        _ => missed.push(MissedSpan {
            first: at,
            last: at,
            count: 1,
            why,
        }),
    };
    let mut at = Some(first);
    let mut walked = 0;
    let mut latest_late: Option<DateTime<Utc>> = None;
    let mut run = Vec::new();
    while let Some(t) = at.filter(|t| *t <= now) {
        walked += 1;
        if walked > MAX_WALK || late_to_run.len() + run.len() >= MAX_STARTS_PER_PASS {
            break;
        }
        let late = now - t > grace;
        if !late {
            run.push(t);
        } else if s.spec.catch_up == CatchUp::None {
            miss(t, MISSED_NONE);
        } else if now - t > window {
            miss(t, MISSED_WINDOW);
        } else if s.spec.catch_up == CatchUp::Last {
            if let Some(replaced) = latest_late.replace(t) {
                miss(replaced, MISSED_LAST);
            }
        } else {
            late_to_run.push(t);
        }
        at = cron.next_after(t);
    }
    // With catch_up: last, a fire on time replaces the latest late one too.
    if let Some(late) = latest_late {
        if run.is_empty() {
            late_to_run.push(late);
        } else {
            miss(late, MISSED_LAST);
        }
    }
    missed.sort_by_key(|span| span.first);
    late_to_run.extend(run);
    FirePlan {
        missed,
        run: late_to_run,
        next: at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::{ScheduleSpec, Source};

    fn schedule(cron: &str, catch_up: CatchUp) -> (CronSchedule, Schedule) {
        let mut spec = ScheduleSpec::new("w", cron);
        spec.catch_up = catch_up;
        spec.catch_up_window = Duration::from_secs(90 * 60);
        let s = Schedule {
            id: "s".into(),
            spec,
            source: Source::Api,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            next_fire_at: None,
            last_run_id: None,
            queued_fire_at: None,
        };
        (s.spec.parse_cron().unwrap(), s)
    }

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn on_time_fires_run_and_the_next_is_kept() {
        let (cron, s) = schedule("* * * * * *", CatchUp::None);
        let plan = plan_fires(
            &cron,
            &s,
            at("2026-01-01T00:00:00Z"),
            at("2026-01-01T00:00:02Z"),
            Duration::from_secs(10),
        );
        assert!(plan.missed.is_empty());
        assert_eq!(plan.run.len(), 3);
        assert_eq!(plan.next, Some(at("2026-01-01T00:00:03Z")));
    }

    #[test]
    fn catch_up_policies_after_downtime() {
        // Down from 00:00 to 02:00; hourly; window 90 min; grace 10 s.
        let first = at("2026-01-01T00:00:00Z");
        let now = at("2026-01-01T02:00:05Z");
        let grace = Duration::from_secs(10);

        let (cron, s) = schedule("0 * * * *", CatchUp::None);
        let plan = plan_fires(&cron, &s, first, now, grace);
        assert_eq!(plan.run, [at("2026-01-01T02:00:00Z")]);
        assert_eq!(plan.missed.len(), 1);
        assert_eq!(plan.missed[0].count, 2);
        assert_eq!(plan.missed[0].why, MISSED_NONE);

        // 00:00 is outside the window; 01:00 is late but replaced by 02:00.
        let (cron, s) = schedule("0 * * * *", CatchUp::Last);
        let plan = plan_fires(&cron, &s, first, now, grace);
        assert_eq!(plan.run, [at("2026-01-01T02:00:00Z")]);
        let whys: Vec<_> = plan.missed.iter().map(|m| m.why).collect();
        assert_eq!(whys, [MISSED_WINDOW, MISSED_LAST]);

        let (cron, s) = schedule("0 * * * *", CatchUp::All);
        let plan = plan_fires(&cron, &s, first, now, grace);
        assert_eq!(
            plan.run,
            [at("2026-01-01T01:00:00Z"), at("2026-01-01T02:00:00Z")]
        );
        assert_eq!(plan.missed[0].why, MISSED_WINDOW);

        // Last with only late fires: the newest late one runs.
        let (cron, s) = schedule("0 * * * *", CatchUp::Last);
        let plan = plan_fires(&cron, &s, first, at("2026-01-01T01:30:00Z"), grace);
        assert_eq!(plan.run, [at("2026-01-01T01:00:00Z")]);
    }
}

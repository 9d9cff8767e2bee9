//! Cron schedules: what operators ask for (a workflow, a cron expression in
//! a time zone, an input, and what to do about overlap and downtime). The
//! loop that fires them lives with the server; this is the model it reads.

pub mod cron;

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use cron::CronSchedule;

/// A schedule field that is wrong, and why: answered as a 422 naming the
/// field, or as a validation error at the trigger's line.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidSchedule {
    pub field: String,
    pub message: String,
}

impl InvalidSchedule {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> InvalidSchedule {
        InvalidSchedule {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// What a fire does while the schedule's previous run is still going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// The fire is recorded as skipped (the default, as in Temporal).
    Skip,
    /// The fire waits for the previous run; at most one waits.
    Queue,
    /// Runs overlap.
    Allow,
    /// The previous run is cancelled and the fire starts a new one.
    CancelPrevious,
}

/// What happens to fire times that passed while no scheduler was running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// They are recorded as missed.
    None,
    /// The latest one within the window runs; the others are missed (the
    /// default: a weekly report missed during a restart still comes).
    Last,
    /// Each one within the window runs, in order.
    All,
}

impl Overlap {
    pub const NAMES: &'static str = "skip, queue, allow or cancel_previous";

    pub fn parse(text: &str) -> Result<Overlap, InvalidSchedule> {
        parse_policy(text, "overlap", "an overlap policy", Overlap::NAMES)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Skip => "skip",
            Overlap::Queue => "queue",
            Overlap::Allow => "allow",
            Overlap::CancelPrevious => "cancel_previous",
        }
    }
}

impl CatchUp {
    pub const NAMES: &'static str = "none, last or all";

    pub fn parse(text: &str) -> Result<CatchUp, InvalidSchedule> {
        parse_policy(text, "catch_up", "a catch-up policy", CatchUp::NAMES)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CatchUp::None => "none",
            CatchUp::Last => "last",
            CatchUp::All => "all",
        }
    }
}

/// One of a policy enum's snake_case names, or an error naming `field`.
fn parse_policy<T: serde::de::DeserializeOwned>(
    text: &str,
    field: &str,
    what: &str,
    names: &str,
) -> Result<T, InvalidSchedule> {
    serde_json::from_value(Value::String(text.into()))
        .map_err(|_| InvalidSchedule::new(field, format!("{text:?} is not {what}: use {names}")))
}

/// Parses a catch-up window such as `24h` or `30m`.
pub fn parse_window(text: &str) -> Result<Duration, InvalidSchedule> {
    humantime::parse_duration(text)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            InvalidSchedule::new(
                "catch_up_window",
                format!("{text:?} is not a duration: use e.g. 30m, 6h or 7d"),
            )
        })
}

/// Where a schedule came from: the API, or a workflow's `triggers` (kept in
/// step with the workflow on every deploy, and edited only there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Api,
    Workflow,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Api => "api",
            Source::Workflow => "workflow",
        }
    }
}

/// What a schedule does, as set by its owner.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleSpec {
    pub workflow: String,
    pub cron: String,
    pub timezone: String,
    pub input: Value,
    pub overlap: Overlap,
    pub catch_up: CatchUp,
    pub catch_up_window: Duration,
    pub paused: bool,
}

impl ScheduleSpec {
    /// Defaults for everything but what a schedule cannot do without.
    pub fn new(workflow: &str, cron: &str) -> ScheduleSpec {
        ScheduleSpec {
            workflow: workflow.into(),
            cron: cron.into(),
            timezone: "UTC".into(),
            input: Value::Object(Default::default()),
            overlap: Overlap::Skip,
            catch_up: CatchUp::Last,
            catch_up_window: DEFAULT_CATCH_UP_WINDOW,
            paused: false,
        }
    }

    /// The cron expression in its zone; errors name `cron` or `timezone`.
    pub fn parse_cron(&self) -> Result<CronSchedule, InvalidSchedule> {
        CronSchedule::parse(&self.cron, &self.timezone)
    }
}

/// How far back fires are caught up when nothing else is said.
pub const DEFAULT_CATCH_UP_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// A stored schedule with where its clock stands.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub id: String,
    pub spec: ScheduleSpec,
    pub source: Source,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The first fire time not handled yet.
    pub next_fire_at: Option<DateTime<Utc>>,
    /// The run started by the latest fire, for the overlap policy.
    pub last_run_id: Option<String>,
    /// A fire waiting for the previous run (`overlap: queue`).
    pub queued_fire_at: Option<DateTime<Utc>>,
}

/// What became of one fire time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A run was started.
    Fired,
    /// No run: the overlap policy said so.
    Skipped,
    /// No run: no scheduler was running at the time and the catch-up policy
    /// did not make up for it.
    Missed,
    /// Waiting for the previous run to finish.
    Queued,
    /// The run could not be started (e.g. the workflow is gone).
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Fired => "fired",
            Outcome::Skipped => "skipped",
            Outcome::Missed => "missed",
            Outcome::Queued => "queued",
            Outcome::Failed => "failed",
        }
    }
}

/// One fire time's record.
#[derive(Debug, Clone)]
pub struct Fire {
    pub fire_at: DateTime<Utc>,
    pub outcome: String,
    pub reason: Option<String>,
    pub run_id: Option<String>,
    pub recorded_at: DateTime<Utc>,
}

/// The id of a workflow's `index`th trigger: stable across deploys, so a
/// pause and the fire history survive an edit of the trigger.
pub fn trigger_schedule_id(workflow: &str, index: usize) -> String {
    format!("{workflow}.trigger.{index}")
}

/// The idempotency key of the run a fire starts: a repeated attempt (a
/// crash between recording the fire and starting the run, or two
/// schedulers) finds the same run.
pub fn fire_key(schedule_id: &str, fire_at: DateTime<Utc>) -> String {
    format!(
        "{FIRE_KEY_PREFIX}{schedule_id}:{}",
        fire_at.timestamp_millis()
    )
}

/// Idempotency keys of scheduled runs start with this; clients may not use it.
pub const FIRE_KEY_PREFIX: &str = "schedule:";

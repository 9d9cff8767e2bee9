//! A validated workflow. Built only by [`super::load`], so every value here
//! has passed validation: step ids are unique, expressions compile and refer
//! only to steps that finish before them, plugins exist.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::expr::Template;
use super::yaml::Pos;

#[derive(Debug)]
pub struct Workflow {
    pub name: String,
    pub version: u32,
    pub description: String,
    pub input: Option<InputSchema>,
    pub sla: Option<Sla>,
    pub steps: Vec<Step>,
    pub output: Option<Template>,
    pub triggers: Vec<Trigger>,
    /// Worker tags a process must have to execute this workflow's runs
    /// (`steward worker --tags`), sorted and unique.
    pub tags: Vec<String>,
    /// At most this many runs of the workflow execute at once across all
    /// processes; runs parked on an approval or a timer hold no slot.
    pub concurrency: Option<u32>,
    /// The file it came from, for error messages.
    pub file: String,
    /// The exact YAML, so a deployed version can be shown and re-loaded.
    pub source: String,
}

/// How many tags a workflow may require or a worker may have: claims
/// match a run's tags against every subset of the worker's.
pub const MAX_TAGS: usize = 8;

/// A worker tag: lowercase letters, digits, `-` and `_`, up to 32 bytes.
pub fn check_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 32
        && tag
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{tag:?} is not a tag: use up to 32 lowercase letters, digits, '-' and '_'"
        ))
    }
}

/// The JSON Schema every start's input must match.
pub struct InputSchema {
    pub schema: Value,
    pub validator: Arc<jsonschema::Validator>,
    pub pos: Pos,
}

impl std::fmt::Debug for InputSchema {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InputSchema")
            .field("schema", &self.schema)
            .finish()
    }
}

#[derive(Debug)]
pub struct Step {
    pub id: String,
    pub when: Option<Template>,
    pub kind: StepKind,
    /// As written; `None` when the step sets no `retry:` and the operator's
    /// default applies (see [`Step::retry_policy`]).
    pub retry: Option<RetryPolicy>,
    pub timeout: Option<Duration>,
    pub pos: Pos,
}

#[derive(Debug)]
pub enum StepKind {
    Plugin {
        uses: String,
        with: Template,
    },
    Approval(Approval),
    /// Branches run concurrently; the group finishes when all have.
    Parallel(Vec<Step>),
    Wait(WaitFor),
    /// The body runs once per element of a list.
    ForEach(ForEach),
    /// Another workflow runs as a run of its own (a sub-workflow).
    Workflow(SubWorkflow),
    /// `wait_for:`: the run waits for an outside event (a signal).
    Signal(SignalWait),
}

impl StepKind {
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Plugin { .. } => "plugin",
            StepKind::Approval(_) => "approval",
            StepKind::Parallel(_) => "parallel",
            StepKind::Wait(_) => "wait",
            StepKind::ForEach(_) => "for_each",
            StepKind::Workflow(_) => "workflow",
            StepKind::Signal(_) => "wait_for",
        }
    }
}

impl Step {
    /// The step's own `retry:`, or `default` (the operator's
    /// `[defaults] retry`) when it sets none.
    pub fn retry_policy<'a>(&'a self, default: &'a RetryPolicy) -> &'a RetryPolicy {
        self.retry.as_ref().unwrap_or(default)
    }
}

/// Exponential backoff: attempt `n` (from 1) waits up to
/// `backoff * 2^(n-1)`, capped at `max_backoff`. With `jitter` (the
/// default) the wait is drawn from zero to that bound ("full jitter"), so
/// runs that failed together on a shared outage do not retry in lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub jitter: bool,
}

impl Default for RetryPolicy {
    /// What a step that writes `retry: {}` gets: one attempt.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 1,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(3600),
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// The policy of a step that sets no `retry:` when the operator has not
    /// chosen one: a refused connection or a 503 is retried twice, within
    /// about a few seconds, instead of failing a fulfilment run.
    pub const UNSET_DEFAULT: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(30),
        jitter: true,
    };

    /// The longest delay after failed attempt `attempt` (1-based).
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
        self.backoff.saturating_mul(factor).min(self.max_backoff)
    }

    /// The delay after failed attempt `attempt`: `delay_after`, or with
    /// jitter a share of it chosen by `seed` (uniform over the seeds).
    pub fn delay_with_jitter(&self, attempt: u32, seed: u64) -> Duration {
        let bound = self.delay_after(attempt);
        if !self.jitter {
            return bound;
        }
        // Full jitter: anywhere from zero to the bound, in millionths.
        let share = seed % 1_000_001;
        let micros = bound.as_micros().min(u64::MAX as u128) as u64;
        Duration::from_micros(((micros as u128 * share as u128) / 1_000_000) as u64)
    }
}

/// `for_each`: the body's steps run once per element of `items`, up to
/// `concurrency` elements at a time, started in order. The step's output is
/// the list of each element's last body step output, in input order.
#[derive(Debug)]
pub struct ForEach {
    /// Rendered once, when the loop starts, and recorded in the history.
    pub items: Template,
    /// The element's name in expressions (`as:`, default `item`).
    pub var: String,
    pub concurrency: u32,
    pub on_error: OnError,
    pub steps: Vec<Step>,
}

/// `workflow: NAME`: a child run of that workflow (its `version`, else
/// the latest deployed when the step starts) with `with` as its input; its
/// output is the step's.
#[derive(Debug)]
pub struct SubWorkflow {
    pub name: String,
    pub version: Option<u32>,
    pub with: Template,
}

/// How deep sub-workflows may nest by default: a run's child is at depth
/// 1, its grandchild at 2.
pub const MAX_WORKFLOW_DEPTH: u32 = 8;

/// The id of the child run attempt `attempt` of step `key` starts, in the
/// step's `generation` (a retry of the parent starts it afresh): derived,
/// so a parent that crashed before recording the start creates the same
/// run again, not a second one.
pub fn child_run_id(parent: &str, key: &str, generation: u32, attempt: u32) -> String {
    let key = key.replace('/', ".");
    if generation <= 1 {
        format!("{parent}.{key}.{attempt}")
    } else {
        format!("{parent}.{key}~{generation}.{attempt}")
    }
}

/// What a failed element does to its loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// The loop fails at the first failed element; no new element starts.
    FailFast,
    /// The element's entry in the output is `{"error": ...}` and the loop
    /// goes on.
    Continue,
}

/// The default limit on a loop's elements (`[defaults]
/// for_each_max_items` changes it): a loop's items and outputs are kept in
/// its history, so the list must stay a size a run can carry.
pub const FOR_EACH_MAX_ITEMS: usize = 10_000;

/// The name of an element's position in expressions.
pub const FOR_EACH_INDEX: &str = "index";

/// The key of step `id` inside element `index` of loop `loop_key`: its
/// record in the run's state and, prefixed by the run id, its idempotency
/// key (`RUN/LOOP/INDEX/STEP`).
pub fn element_key(loop_key: &str, index: usize, id: &str) -> String {
    format!("{loop_key}/{index}/{id}")
}

#[derive(Debug)]
pub enum WaitFor {
    Duration(Duration),
    /// An RFC 3339 time, possibly computed by an expression.
    Until(Template),
}

/// A `wait_for:` step: the run waits, parked, until a delivery of signal
/// `signal` it may take arrives (over the API or a webhook), or until
/// `timeout`. The step's output is the delivery's payload.
#[derive(Debug)]
pub struct SignalWait {
    /// The signal's name: a plain identifier (see [`check_signal_name`]).
    pub signal: String,
    /// Rendered when the wait opens: deliveries to `POST /v1/signals/NAME`
    /// with this key are for the run too (without it, only deliveries
    /// addressed to the run are).
    pub key: Option<Template>,
    /// One expression over the candidate (`signal`, its payload, besides
    /// the usual variables): a delivery it does not accept is left for
    /// others.
    pub matches: Option<Template>,
    /// How long the wait stays open; without it, until a signal comes or
    /// the run is cancelled.
    pub timeout: Option<Duration>,
    pub on_timeout: SignalTimeout,
}

/// What a `wait_for` step does when its timeout passes with no signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalTimeout {
    /// The step fails, and with it the run.
    Fail,
    /// The step succeeds with output `null` and the run goes on.
    Continue,
}

/// A signal name is what URLs and hook settings name it by: a letter, then
/// letters, digits, `-` and `_`, at most 100 characters.
pub fn check_signal_name(name: &str) -> Result<(), String> {
    let ok = name.len() <= 100
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a signal name: use a letter, then letters, digits, '-' and '_' (at most 100 characters), e.g. ticket-updated"
        ))
    }
}

#[derive(Debug)]
pub struct Approval {
    pub approvers: Vec<Template>,
    pub quorum: Quorum,
    pub timeout: Option<Duration>,
    pub on_timeout: OnTimeout,
    /// Whose request this is (`requester: ${{ input.employee }}`), rendered
    /// when the approval opens: like the run's starter, they may not
    /// approve it themselves.
    pub requester: Option<Template>,
    /// Lets the starter and the requester decide (four eyes off), for
    /// steps where a second person adds nothing.
    pub allow_self_approval: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quorum {
    Any,
    All,
    Count(u32),
    Percent(u32),
}

#[derive(Debug)]
pub enum OnTimeout {
    Reject,
    Approve,
    Escalate {
        to: Vec<Template>,
        quorum: Quorum,
        timeout: Option<Duration>,
        /// When the escalation times out as well.
        then: Box<OnTimeout>,
    },
}

impl Quorum {
    /// Approvals needed when the approvers include a group the identity
    /// provider fills, whose members nobody can count in advance: a count
    /// is taken as written (two approvals are two people, however few are
    /// known yet); `all` and percentages can only be counted over the
    /// `eligible` people known.
    pub fn required_open(self, eligible: usize) -> u32 {
        match self {
            Quorum::Count(c) => c.max(1),
            _ => self.required(eligible),
        }
    }

    /// Approvals needed out of `eligible` people (at least one, at most all).
    pub fn required(self, eligible: usize) -> u32 {
        let n = eligible.max(1) as u32;
        match self {
            Quorum::Any => 1,
            Quorum::All => n,
            Quorum::Count(c) => c.clamp(1, n),
            Quorum::Percent(p) => ((n * p).div_ceil(100)).clamp(1, n),
        }
    }
}

#[derive(Debug)]
pub struct Sla {
    pub priority: Template,
    pub resolution: BTreeMap<String, Duration>,
    /// Response targets per priority (optional).
    pub response: BTreeMap<String, Duration>,
    /// The step whose end is the response; without it, the first approval
    /// decision is (and the run's end, when neither came first).
    pub responded_when: Option<String>,
    pub calendar: Option<String>,
    pub pause_while: Option<String>,
    pub escalations: Vec<Escalation>,
}

#[derive(Debug)]
pub struct Escalation {
    /// Share of the resolution target, in percent.
    pub at_percent: f64,
    /// The plugin step it runs once, with the id [`sla_escalation_id`].
    pub step: Step,
}

/// The step id of the `index`th SLA escalation: not a valid workflow step
/// id, so it never clashes with one.
pub fn sla_escalation_id(index: usize) -> String {
    format!("sla:escalation:{index}")
}

/// A schedule declared in the workflow, validated like one from the API.
#[derive(Debug, Clone)]
pub struct Trigger {
    pub cron: String,
    pub timezone: String,
    pub input: Value,
    pub overlap: crate::schedule::Overlap,
    pub catch_up: crate::schedule::CatchUp,
    pub catch_up_window: Duration,
}

impl Trigger {
    /// The schedule this trigger keeps for `workflow` (never paused here: a
    /// pause set over the API survives deploys).
    pub fn spec(&self, workflow: &str) -> crate::schedule::ScheduleSpec {
        crate::schedule::ScheduleSpec {
            workflow: workflow.to_string(),
            cron: self.cron.clone(),
            timezone: self.timezone.clone(),
            input: self.input.clone(),
            overlap: self.overlap,
            catch_up: self.catch_up,
            catch_up_window: self.catch_up_window,
            paused: false,
        }
    }
}

impl Workflow {
    /// Every step, parallel branches and loop bodies included, in file
    /// order.
    pub fn all_steps(&self) -> Vec<&Step> {
        fn visit<'a>(steps: &'a [Step], out: &mut Vec<&'a Step>) {
            for step in steps {
                out.push(step);
                match &step.kind {
                    StepKind::Parallel(branches) => visit(branches, out),
                    StepKind::ForEach(each) => visit(&each.steps, out),
                    _ => {}
                }
            }
        }
        let mut out = Vec::new();
        visit(&self.steps, &mut out);
        out
    }

    /// The step a record key names: a step id, or for a step inside a
    /// `for_each` element, its [`element_key`] (the id is its last part).
    pub fn step_by_key(&self, key: &str) -> Option<&Step> {
        self.step(key.rsplit('/').next().unwrap_or(key))
    }

    /// The step with `id`, parallel branches and SLA escalations included.
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.all_steps()
            .into_iter()
            .find(|s| s.id == id)
            .or_else(|| {
                self.sla
                    .as_ref()?
                    .escalations
                    .iter()
                    .map(|e| &e.step)
                    .find(|s| s.id == id)
            })
    }

    /// Checks a start's input against the `input` schema; each error names
    /// the file, the schema's line and the offending field.
    pub fn check_input(&self, input: &Value) -> Result<(), Vec<String>> {
        self.check_input_as(input, &self.file)
    }

    /// [`Workflow::check_input`] for API clients: the file by its name
    /// only, since the server's folders are none of theirs.
    pub fn check_input_for_client(&self, input: &Value) -> Result<(), Vec<String>> {
        let name = std::path::Path::new(&self.file)
            .file_name()
            .map_or(self.file.as_str(), |n| n.to_str().unwrap_or(&self.file));
        self.check_input_as(input, name)
    }

    fn check_input_as(&self, input: &Value, file: &str) -> Result<(), Vec<String>> {
        let Some(schema) = &self.input else {
            return Ok(());
        };
        let errors: Vec<String> = schema
            .validator
            .iter_errors(input)
            .map(|e| {
                let path = e.instance_path().to_string();
                let field = if path.is_empty() {
                    "input".to_string()
                } else {
                    format!("input{}", path.replace('/', "."))
                };
                format!(
                    "{file}:{}:{}: {field}: {e}",
                    schema.pos.line, schema.pos.col
                )
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Quorum;

    #[test]
    fn a_count_over_an_identity_provider_group_is_taken_as_written() {
        assert_eq!(Quorum::Count(2).required_open(0), 2);
        assert_eq!(Quorum::Count(2).required_open(1), 2);
        assert_eq!(Quorum::Count(0).required_open(0), 1);
        assert_eq!(Quorum::Any.required_open(0), 1);
        assert_eq!(Quorum::All.required_open(2), 2);
    }

    #[test]
    fn quorum_counts_approvals_needed() {
        assert_eq!(Quorum::Any.required(3), 1);
        assert_eq!(Quorum::All.required(3), 3);
        assert_eq!(Quorum::Count(2).required(3), 2);
        assert_eq!(
            Quorum::Count(5).required(3),
            3,
            "never more than can decide"
        );
        assert_eq!(Quorum::Percent(60).required(5), 3);
        assert_eq!(Quorum::Percent(50).required(3), 2, "rounded up");
        assert_eq!(Quorum::Percent(1).required(3), 1);
    }
}

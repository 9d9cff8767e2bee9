//! Prometheus metrics (`steward_` prefix), exposed at `/metrics`.
//!
//! One registry per process, reached through [`global`]: runs, steps and
//! requests are counted where they happen (worker, executor, API) without
//! threading a handle through every constructor, as the `metrics` and
//! `prometheus` crates do with their default registries.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkflowLabels {
    workflow: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinishedLabels {
    workflow: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabels {
    plugin: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabels {
    status: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabels {
    hook: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FireLabels {
    workflow: String,
    outcome: String,
}

/// Every metric this process exports.
pub struct Metrics {
    registry: Registry,
    runs_started: Family<WorkflowLabels, Counter>,
    runs_finished: Family<FinishedLabels, Counter>,
    step_duration: Family<StepLabels, Histogram>,
    queue_depth: Family<StatusLabels, Gauge>,
    http_duration: Family<HttpLabels, Histogram>,
    hook_deliveries: Family<HookLabels, Counter>,
    schedule_fires: Family<FireLabels, Counter>,
}

/// Buckets from 100 µs to ~30 s: plugin steps take microseconds, HTTP
/// calls to other systems seconds.
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0001, 3.0, 12)
}

impl Metrics {
    fn new() -> Metrics {
        let mut registry = Registry::with_prefix("steward");
        let runs_started = Family::<WorkflowLabels, Counter>::default();
        registry.register("runs_started", "Runs accepted", runs_started.clone());
        let runs_finished = Family::<FinishedLabels, Counter>::default();
        registry.register(
            "runs_finished",
            "Runs that reached a final status",
            runs_finished.clone(),
        );
        let step_duration = Family::<StepLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        registry.register(
            "step_duration_seconds",
            "Plugin call duration, by plugin and outcome (ok or error)",
            step_duration.clone(),
        );
        let queue_depth = Family::<StatusLabels, Gauge>::default();
        registry.register(
            "queue_depth",
            "Unfinished runs by status, read from the database at scrape time",
            queue_depth.clone(),
        );
        let http_duration = Family::<HttpLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(latency_buckets())
        });
        registry.register(
            "http_request_duration_seconds",
            "API request latency, by method, route template and status",
            http_duration.clone(),
        );
        let hook_deliveries = Family::<HookLabels, Counter>::default();
        registry.register(
            "hook_deliveries",
            "Webhook deliveries by outcome (accepted, invalid, stale, replayed)",
            hook_deliveries.clone(),
        );
        let schedule_fires = Family::<FireLabels, Counter>::default();
        registry.register(
            "schedule_fires",
            "Cron fire times by workflow and outcome (fired, skipped, queued, missed, failed)",
            schedule_fires.clone(),
        );
        Metrics {
            registry,
            runs_started,
            runs_finished,
            step_duration,
            queue_depth,
            http_duration,
            hook_deliveries,
            schedule_fires,
        }
    }

    pub fn run_started(&self, workflow: &str) {
        self.runs_started
            .get_or_create(&WorkflowLabels {
                workflow: workflow.to_string(),
            })
            .inc();
    }

    pub fn run_finished(&self, workflow: &str, status: &str) {
        self.runs_finished
            .get_or_create(&FinishedLabels {
                workflow: workflow.to_string(),
                status: status.to_string(),
            })
            .inc();
    }

    pub fn step_finished(&self, plugin: &str, ok: bool, took: Duration) {
        let labels = StepLabels {
            plugin: plugin.to_string(),
            outcome: if ok { "ok" } else { "error" },
        };
        self.step_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    pub fn set_queue_depth(&self, status: &'static str, runs: i64) {
        self.queue_depth
            .get_or_create(&StatusLabels { status })
            .set(runs);
    }

    pub fn http_request(&self, method: &str, route: &str, status: u16, took: Duration) {
        let labels = HttpLabels {
            method: method.to_string(),
            route: route.to_string(),
            status,
        };
        self.http_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    pub fn hook_delivery(&self, hook: &str, outcome: &'static str) {
        self.hook_deliveries
            .get_or_create(&HookLabels {
                hook: hook.to_string(),
                outcome,
            })
            .inc();
    }

    /// `count` fire times of a schedule of `workflow` ended as `outcome`.
    pub fn schedule_fires(&self, workflow: &str, outcome: &str, count: u64) {
        self.schedule_fires
            .get_or_create(&FireLabels {
                workflow: workflow.to_string(),
                outcome: outcome.to_string(),
            })
            .inc_by(count);
    }

    /// The text exposition format (OpenMetrics, which Prometheus reads).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// This process's metrics.
pub fn global() -> &'static Metrics {
    &METRICS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_carry_the_prefix_and_labels() {
        let m = Metrics::new();
        m.run_started("triage");
        m.run_finished("triage", "succeeded");
        m.step_finished("transform", true, Duration::from_micros(50));
        m.http_request(
            "POST",
            "/v1/workflows/{name}/runs",
            201,
            Duration::from_millis(2),
        );
        let text = m.encode();
        assert!(
            text.contains("steward_runs_started_total{workflow=\"triage\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "steward_runs_finished_total{workflow=\"triage\",status=\"succeeded\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "steward_step_duration_seconds_count{plugin=\"transform\",outcome=\"ok\"} 1"
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}

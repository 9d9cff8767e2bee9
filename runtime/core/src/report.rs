//! The SLA report (`GET /v1/reports/sla`): compliance and resolution times
//! per workflow and priority, the figures a service manager reviews every
//! week. Pure: the store hands over the finished runs, this module counts.

use std::collections::BTreeMap;

use serde::Serialize;

/// One finished run with an SLA target.
#[derive(Debug, Clone)]
pub struct FinishedRun {
    pub workflow: String,
    pub priority: String,
    pub breached: bool,
    pub succeeded: bool,
    /// From acceptance to the end, in milliseconds.
    pub resolution_ms: i64,
}

/// One closed approval of a run in the report's range.
#[derive(Debug, Clone)]
pub struct ApprovalWait {
    pub workflow: String,
    pub priority: String,
    pub wait_ms: i64,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReportLine {
    pub workflow: String,
    pub priority: String,
    /// Finished runs with a target for this priority.
    pub runs: u64,
    /// Succeeded within the target.
    pub met: u64,
    pub breached: u64,
    /// Failed, rejected or cancelled before the target passed.
    pub other: u64,
    /// met ÷ (met + breached), in percent; null with neither.
    pub compliance_percent: Option<f64>,
    /// Nearest-rank median and 90th percentile of the time to resolution
    /// of succeeded runs, in seconds.
    pub resolution_median_s: Option<f64>,
    pub resolution_p90_s: Option<f64>,
    /// Nearest-rank median time approvals waited for their decision.
    pub approval_wait_median_s: Option<f64>,
}

/// The report's lines added up: what a service manager reads first.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Totals {
    pub runs: u64,
    pub met: u64,
    pub breached: u64,
    pub other: u64,
    /// met ÷ (met + breached), in percent; null with neither.
    pub compliance_percent: Option<f64>,
}

/// Sums every line.
pub fn totals(lines: &[ReportLine]) -> Totals {
    let (runs, met, breached, other) = lines.iter().fold((0, 0, 0, 0), |t, l| {
        (t.0 + l.runs, t.1 + l.met, t.2 + l.breached, t.3 + l.other)
    });
    Totals {
        runs,
        met,
        breached,
        other,
        compliance_percent: compliance(met, breached),
    }
}

/// met ÷ (met + breached) in percent, two decimals; `None` with neither.
fn compliance(met: u64, breached: u64) -> Option<f64> {
    let judged = met + breached;
    (judged > 0).then(|| (met as f64 * 10_000.0 / judged as f64).round() / 100.0)
}

/// Up to `n` lines with breaches, most breaches first, then lowest
/// compliance: the worst offenders a weekly review names.
pub fn worst(lines: &[ReportLine], n: usize) -> Vec<ReportLine> {
    let mut breached: Vec<ReportLine> = lines.iter().filter(|l| l.breached > 0).cloned().collect();
    breached.sort_by(|a, b| {
        b.breached.cmp(&a.breached).then(
            a.compliance_percent
                .unwrap_or(100.0)
                .total_cmp(&b.compliance_percent.unwrap_or(100.0)),
        )
    });
    breached.truncate(n);
    breached
}

/// Counts of one (workflow, priority) group, as the store aggregates them.
#[derive(Debug, Clone)]
pub struct GroupCounts {
    pub workflow: String,
    pub priority: String,
    pub runs: u64,
    pub met: u64,
    pub breached: u64,
}

/// Which nearest-rank quantile a value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantile {
    ResolutionMedian,
    ResolutionP90,
    ApprovalWaitMedian,
}

/// Report lines from aggregates computed in the database (the fast path
/// for millions of runs; [`build`] defines the same figures over runs).
pub fn assemble(
    counts: Vec<GroupCounts>,
    quantiles: &[(String, String, Quantile, i64)],
) -> Vec<ReportLine> {
    let mut lines: Vec<ReportLine> = counts
        .into_iter()
        .map(|c| {
            let pick = |which: Quantile| {
                quantiles
                    .iter()
                    .find(|(w, p, q, _)| *w == c.workflow && *p == c.priority && *q == which)
                    .map(|(_, _, _, ms)| *ms as f64 / 1000.0)
            };
            ReportLine {
                runs: c.runs,
                met: c.met,
                breached: c.breached,
                other: c.runs - c.met - c.breached,
                compliance_percent: compliance(c.met, c.breached),
                resolution_median_s: pick(Quantile::ResolutionMedian),
                resolution_p90_s: pick(Quantile::ResolutionP90),
                approval_wait_median_s: pick(Quantile::ApprovalWaitMedian),
                workflow: c.workflow,
                priority: c.priority,
            }
        })
        .collect();
    lines.sort_by(|a, b| (&a.workflow, &a.priority).cmp(&(&b.workflow, &b.priority)));
    lines
}

/// Nearest-rank percentile of sorted values (`p` in 0..=100).
fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

fn seconds(ms: Option<i64>) -> Option<f64> {
    ms.map(|ms| ms as f64 / 1000.0)
}

/// Builds the report lines, sorted by workflow then priority.
pub fn build(runs: &[FinishedRun], waits: &[ApprovalWait]) -> Vec<ReportLine> {
    #[derive(Default)]
    struct Acc {
        runs: u64,
        met: u64,
        breached: u64,
        other: u64,
        resolutions: Vec<i64>,
        waits: Vec<i64>,
    }
    let mut groups: BTreeMap<(String, String), Acc> = BTreeMap::new();
    for run in runs {
        let acc = groups
            .entry((run.workflow.clone(), run.priority.clone()))
            .or_default();
        acc.runs += 1;
        if run.breached {
            acc.breached += 1;
        } else if run.succeeded {
            acc.met += 1;
        } else {
            acc.other += 1;
        }
        if run.succeeded {
            acc.resolutions.push(run.resolution_ms);
        }
    }
    for wait in waits {
        if let Some(acc) = groups.get_mut(&(wait.workflow.clone(), wait.priority.clone())) {
            acc.waits.push(wait.wait_ms);
        }
    }
    groups
        .into_iter()
        .map(|((workflow, priority), mut acc)| {
            acc.resolutions.sort_unstable();
            acc.waits.sort_unstable();
            ReportLine {
                workflow,
                priority,
                runs: acc.runs,
                met: acc.met,
                breached: acc.breached,
                other: acc.other,
                compliance_percent: compliance(acc.met, acc.breached),
                resolution_median_s: seconds(percentile(&acc.resolutions, 50.0)),
                resolution_p90_s: seconds(percentile(&acc.resolutions, 90.0)),
                approval_wait_median_s: seconds(percentile(&acc.waits, 50.0)),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(
        workflow: &str,
        priority: &str,
        breached: bool,
        succeeded: bool,
        secs: i64,
    ) -> FinishedRun {
        FinishedRun {
            workflow: workflow.into(),
            priority: priority.into(),
            breached,
            succeeded,
            resolution_ms: secs * 1000,
        }
    }

    #[test]
    fn the_report_matches_a_hand_computed_fixture() {
        let runs = vec![
            // incident P1: 10 runs, resolved in 1..=10 min, the last two breached.
            run("incident", "P1", false, true, 60),
            run("incident", "P1", false, true, 120),
            run("incident", "P1", false, true, 180),
            run("incident", "P1", false, true, 240),
            run("incident", "P1", false, true, 300),
            run("incident", "P1", false, true, 360),
            run("incident", "P1", false, true, 420),
            run("incident", "P1", false, true, 480),
            run("incident", "P1", true, true, 540),
            run("incident", "P1", true, true, 600),
            // incident P2: one met, one cancelled in time, one failed late.
            run("incident", "P2", false, true, 3600),
            run("incident", "P2", false, false, 100),
            run("incident", "P2", true, false, 9000),
            // access P3: one met.
            run("access", "P3", false, true, 7200),
        ];
        let waits = vec![
            ApprovalWait {
                workflow: "access".into(),
                priority: "P3".into(),
                wait_ms: 5_000,
            },
            ApprovalWait {
                workflow: "access".into(),
                priority: "P3".into(),
                wait_ms: 1_000,
            },
            ApprovalWait {
                workflow: "access".into(),
                priority: "P3".into(),
                wait_ms: 3_000,
            },
            ApprovalWait {
                workflow: "nobody".into(),
                priority: "P1".into(),
                wait_ms: 9,
            },
        ];
        let report = build(&runs, &waits);
        assert_eq!(report.len(), 3);
        assert_eq!(
            report[0],
            ReportLine {
                workflow: "access".into(),
                priority: "P3".into(),
                runs: 1,
                met: 1,
                breached: 0,
                other: 0,
                compliance_percent: Some(100.0),
                resolution_median_s: Some(7200.0),
                resolution_p90_s: Some(7200.0),
                approval_wait_median_s: Some(3.0),
            }
        );
        let p1 = &report[1];
        assert_eq!((p1.runs, p1.met, p1.breached, p1.other), (10, 8, 2, 0));
        assert_eq!(p1.compliance_percent, Some(80.0));
        // Nearest rank: the 5th and the 9th of 10 sorted values.
        assert_eq!(p1.resolution_median_s, Some(300.0));
        assert_eq!(p1.resolution_p90_s, Some(540.0));
        assert_eq!(p1.approval_wait_median_s, None);
        let p2 = &report[2];
        assert_eq!((p2.runs, p2.met, p2.breached, p2.other), (3, 1, 1, 1));
        assert_eq!(p2.compliance_percent, Some(50.0));
        assert_eq!(p2.resolution_median_s, Some(3600.0));

        let total = totals(&report);
        assert_eq!(
            (total.runs, total.met, total.breached, total.other),
            (14, 10, 3, 1)
        );
        assert_eq!(total.compliance_percent, Some(76.92));
        let worst = worst(&report, 5);
        assert_eq!(worst.len(), 2, "lines without breaches are not offenders");
        assert_eq!(
            (worst[0].priority.as_str(), worst[1].priority.as_str()),
            ("P1", "P2")
        );
        assert!(super::worst(&report, 1).len() == 1);
    }
}

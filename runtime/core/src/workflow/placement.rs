//! Where a run may execute: the worker tags and concurrency limit its
//! workflow asks for, copied onto the run when it is created so claims can
//! honour them without reading the workflow.

use super::Workflow;

/// Where a run may execute, from its workflow: claims honour it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// Required worker tags, sorted and comma-separated; empty for any.
    pub tags: String,
    /// At most this many runs of the workflow leased at once.
    pub concurrency: Option<u32>,
}

impl Placement {
    /// The placement `workflow` asks for.
    pub fn of(workflow: &Workflow) -> Placement {
        Placement {
            tags: workflow.tags.join(","),
            concurrency: workflow.concurrency,
        }
    }

    /// True when a worker with `worker_tags` may take the run at creation,
    /// without a claim: it has the tags and no limit needs counting.
    pub fn fits_locally(&self, worker_tags: &[String]) -> bool {
        self.concurrency.is_none()
            && (self.tags.is_empty()
                || self
                    .tags
                    .split(',')
                    .all(|t| worker_tags.iter().any(|w| w == t)))
    }
}

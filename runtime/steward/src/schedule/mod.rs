//! The scheduler: fires the cron schedules of `steward_core::schedule`
//! exactly once per fire time, and keeps a workflow's `triggers` in step
//! with the schedules in the store.

mod scheduler;

use chrono::Utc;

pub use scheduler::{Scheduler, SchedulerHandle, SchedulerOptions, TickReport};
pub use steward_core::schedule::*;

/// Keeps the schedules of a workflow's `triggers` in step with its latest
/// version: new triggers get a schedule, changed ones are updated (keeping
/// a pause set over the API, and the clock unless the cron changed),
/// removed ones are deleted, each audited as done by `actor`.
pub async fn sync_triggers(
    store: &crate::store::Store,
    workflow: &crate::workflow::Workflow,
    actor: &str,
) -> Result<(), crate::store::StoreError> {
    let now = Utc::now();
    let existing: Vec<Schedule> = store
        .list_schedules(Some(&workflow.name))
        .await?
        .into_iter()
        .filter(|s| s.source == Source::Workflow)
        .collect();
    let mut wanted = Vec::new();
    for (index, trigger) in workflow.triggers.iter().enumerate() {
        let id = trigger_schedule_id(&workflow.name, index);
        let mut spec = trigger.spec(&workflow.name);
        let Ok(cron) = spec.parse_cron() else {
            continue; // validated at load; a zone database change is not ours to fix
        };
        match existing.iter().find(|s| s.id == id) {
            None => {
                let schedule = Schedule {
                    id: id.clone(),
                    spec,
                    source: Source::Workflow,
                    created_at: now,
                    updated_at: now,
                    next_fire_at: cron.next_after(now),
                    last_run_id: None,
                    queued_fire_at: None,
                };
                store.create_schedule(&schedule, actor).await?;
            }
            Some(old) => {
                spec.paused = old.spec.paused;
                if old.spec != spec {
                    let clock_changed =
                        old.spec.cron != spec.cron || old.spec.timezone != spec.timezone;
                    let mut schedule = old.clone();
                    schedule.spec = spec;
                    schedule.updated_at = now;
                    if clock_changed {
                        schedule.next_fire_at = cron.next_after(now);
                    }
                    store.update_schedule(&schedule, actor).await?;
                }
            }
        }
        wanted.push(id);
    }
    for old in existing.iter().filter(|s| !wanted.contains(&s.id)) {
        store.delete_schedule(&old.id, actor).await?;
    }
    Ok(())
}

//! The worker: claims due runs from the store under a lease, drives each
//! with the executor, renews its leases while it works, and hands parked
//! runs back. A run whose worker died is claimed again once its lease ends,
//! and its interrupted step re-runs under the same idempotency key.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};

use crate::catalog::{Catalog, CatalogError};
use crate::executor::{DriveEnd, Executor, LiveRun, StoreJournal};
use serde_json::Value;

use crate::run::{Event, JournalError, Recorded, RunState, StepError};
use crate::store::{ClaimedRun, NewRun, Placement, RunRow, Store, StoreError};
use crate::workflow::Workflow;

/// How a worker behaves.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// This process's name in leases.
    pub owner: String,
    /// How long a claim lasts without renewal.
    pub lease: Duration,
    /// Runs driven at once.
    pub capacity: usize,
    /// How often to look for due runs when nothing wakes the worker.
    pub poll: Duration,
    /// What this worker offers (`--tags gpu,eu`): it claims runs of
    /// workflows requiring some or none of these.
    pub tags: Vec<String>,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            owner: format!("{}-{}", hostname(), uuid::Uuid::new_v4().simple()),
            lease: Duration::from_secs(15),
            capacity: 256,
            poll: Duration::from_millis(200),
            tags: Vec::new(),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "steward".into())
}

/// Starts runs, wakes the worker and stops it.
#[derive(Clone)]
pub struct WorkerHandle {
    wake: Arc<Notify>,
    /// Stops claiming.
    stop: watch::Sender<bool>,
    /// Stops renewing leases (last, so runs being drained stay ours).
    halt: watch::Sender<bool>,
    shared: Arc<Shared>,
}

impl WorkerHandle {
    /// A run became due now: look without waiting for the next poll.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Stops at once: runs in flight are left to their leases.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
        let _ = self.halt.send(true);
    }

    /// Stops gracefully: claims nothing more, lets the plugin calls in
    /// flight finish and commit (starting no new step), and after `grace`
    /// hands back whatever is still running so another process (or the next
    /// start) takes it over at once. Returns how many runs were handed back
    /// unfinished after the grace period.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        let _ = self.stop.send(true);
        let shared = &self.shared;
        shared
            .draining
            .store(true, std::sync::atomic::Ordering::SeqCst);
        shared.executor.drain();
        let deadline = tokio::time::Instant::now() + grace;
        while !shared.active.lock().unwrap().is_empty() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left: Vec<String> = shared.active.lock().unwrap().iter().cloned().collect();
        for id in &left {
            if let Err(e) = shared.store.release(&shared.options.owner, id, None).await {
                tracing::error!(run = %id, "handing the run back failed: {e}");
            }
        }
        let _ = self.halt.send(true);
        left.len()
    }

    /// Creates a run and, when this worker has room, drives it right away:
    /// the run is created already leased to this worker, so no claim and no
    /// reload are needed. Answers `false` when the idempotency key returned
    /// an existing run.
    pub async fn start(
        &self,
        workflow: Arc<Workflow>,
        id: &str,
        input: &Value,
        idempotency_key: Option<&str>,
        started_by: &str,
    ) -> Result<(RunRow, bool), StoreError> {
        self.start_rerun(workflow, id, input, idempotency_key, started_by, None)
            .await
    }

    /// As [`WorkerHandle::start`], recording the run this one repeats.
    pub async fn start_rerun(
        &self,
        workflow: Arc<Workflow>,
        id: &str,
        input: &Value,
        idempotency_key: Option<&str>,
        started_by: &str,
        rerun_of: Option<&str>,
    ) -> Result<(RunRow, bool), StoreError> {
        let shared = &self.shared;
        let has_room = shared.active.lock().unwrap().len() < shared.options.capacity
            && !shared.draining.load(std::sync::atomic::Ordering::SeqCst);
        let placement = Placement::of(&workflow);
        // A run this worker may not take, or one a limit must count, is
        // left to the claims.
        let has_room = has_room && placement.fits_locally(&shared.options.tags);
        let lease = has_room.then_some((shared.options.owner.as_str(), shared.options.lease));
        let new = NewRun {
            id,
            workflow: &workflow.name,
            version: workflow.version,
            input,
            idempotency_key,
            started_by: Some(started_by),
            rerun_of,
            parent: None,
            lease,
            placement,
        };
        let (row, created) = shared.store.create_run(new).await?;
        if created {
            crate::metrics::global().run_started(&workflow.name);
        }
        if created && has_room {
            shared.active.lock().unwrap().insert(row.id.clone());
            let started = Recorded {
                seq: 1,
                at: row.created_at,
                event: Event::RunStarted {
                    input: input.clone(),
                    parent: None,
                },
            };
            let state = RunState::new(&row.id, &row.workflow, row.version, row.created_at);
            let run = LiveRun::resume(state, vec![started]);
            tokio::spawn(drive_adopted(shared.clone(), workflow, run));
        } else if created {
            self.wake();
        }
        Ok((row, created))
    }
}

/// Drives a run this process created, then lets it go like a claimed one.
async fn drive_adopted(shared: Arc<Shared>, workflow: Arc<Workflow>, mut run: LiveRun) {
    let id = run.state.id.clone();
    let inner = shared.clone();
    let task = tokio::spawn(async move {
        // Created a moment ago: a cancel sent since is seen by the drive's
        // first write, before any step starts.
        let mut journal = StoreJournal::new(inner.store.clone(), Some(inner.options.owner.clone()))
            .knowing_cancel(None)
            .with_catalog(inner.catalog.clone());
        inner
            .executor
            .drive(&workflow, &mut run, &mut journal, true)
            .await
    });
    finish(&shared, &id, joined(task).await).await;
}

/// A drive's result; a panic becomes an error, so the run is always let go.
async fn joined(
    task: tokio::task::JoinHandle<Result<DriveEnd, JournalError>>,
) -> Result<DriveEnd, JournalError> {
    task.await
        .unwrap_or_else(|e| Err(JournalError::Other(format!("the drive panicked: {e}"))))
}

/// After a failed drive, the run waits this long before it is claimed again.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(5);

struct Shared {
    store: Store,
    executor: Executor,
    catalog: Arc<Catalog>,
    options: WorkerOptions,
    active: Mutex<HashSet<String>>,
    /// Set by a graceful shutdown: new runs are left for others.
    draining: std::sync::atomic::AtomicBool,
    /// The last claim filled every free slot, so more runs are probably
    /// due: a backlog is worked off as fast as slots free up, not one
    /// batch per poll.
    backlog: std::sync::atomic::AtomicBool,
    /// Signalled when a quarter of the capacity is free during a backlog.
    room: Notify,
}

/// Starts a worker on the current tokio runtime.
pub fn spawn(
    store: Store,
    executor: Executor,
    catalog: Arc<Catalog>,
    options: WorkerOptions,
) -> WorkerHandle {
    let wake = Arc::new(Notify::new());
    let (stop, stopped) = watch::channel(false);
    let shared = Arc::new(Shared {
        store,
        executor,
        catalog,
        options,
        active: Mutex::new(HashSet::new()),
        draining: std::sync::atomic::AtomicBool::new(false),
        backlog: std::sync::atomic::AtomicBool::new(false),
        room: Notify::new(),
    });
    if shared.options.capacity > 0 {
        shared.store.listen_for_work(wake.clone());
    }
    let (halt, halted) = watch::channel(false);
    tokio::spawn(heartbeat(shared.clone(), halted));
    tokio::spawn(claim_loop(shared.clone(), wake.clone(), stopped));
    WorkerHandle {
        wake,
        stop,
        halt,
        shared,
    }
}

async fn claim_loop(shared: Arc<Shared>, wake: Arc<Notify>, mut stopped: watch::Receiver<bool>) {
    loop {
        let free = shared
            .options
            .capacity
            .saturating_sub(shared.active.lock().unwrap().len());
        if free > 0 {
            match shared
                .store
                .claim_due_runs(
                    &shared.options.owner,
                    shared.options.lease,
                    free as i64,
                    &shared.options.tags,
                )
                .await
            {
                Ok(claimed) => {
                    shared
                        .backlog
                        .store(claimed.len() >= free, std::sync::atomic::Ordering::Relaxed);
                    for run in claimed {
                        // Never two drives of one run in this process.
                        if shared.active.lock().unwrap().insert(run.id.clone()) {
                            tokio::spawn(drive_one(shared.clone(), run));
                        }
                    }
                }
                Err(e) => tracing::error!("claiming runs failed: {e}"),
            }
        }
        tokio::select! {
            _ = wake.notified() => {}
            _ = shared.room.notified() => {}
            _ = tokio::time::sleep(shared.options.poll) => {}
            _ = stopped.changed() => return,
        }
    }
}

/// Renews the leases of every run this worker drives, well before they end.
async fn heartbeat(shared: Arc<Shared>, mut stopped: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(shared.options.lease / 3) => {}
            _ = stopped.changed() => return,
        }
        let ids: Vec<String> = shared.active.lock().unwrap().iter().cloned().collect();
        if let Err(e) = shared
            .store
            .renew_leases(&shared.options.owner, shared.options.lease, &ids)
            .await
        {
            tracing::error!("renewing leases failed: {e}");
        }
    }
}

async fn drive_one(shared: Arc<Shared>, run: ClaimedRun) {
    let (inner, id) = (shared.clone(), run.id.clone());
    let task = tokio::spawn(async move { drive(&inner, run).await });
    finish(&shared, &id, joined(task).await).await;
}

async fn finish(shared: &Shared, id: &str, result: Result<DriveEnd, JournalError>) {
    // A finished run gave its lease up with its last write; a run another
    // worker took over is not ours to release.
    let (release, retry_in) = match result {
        Ok(end) => (end != DriveEnd::Finished, None),
        Err(e @ JournalError::LeaseLost(_)) => {
            tracing::warn!(run = %id, "{e}; letting it go");
            (false, None)
        }
        Err(e) => {
            tracing::error!(run = %id, "driving the run failed: {e}");
            (true, Some(RETRY_AFTER_ERROR))
        }
    };
    let active = {
        let mut active = shared.active.lock().unwrap();
        active.remove(id);
        active.len()
    };
    if shared.backlog.load(std::sync::atomic::Ordering::Relaxed)
        && active <= shared.options.capacity - shared.options.capacity / 4
    {
        shared.room.notify_one();
    }
    if release
        && let Err(e) = shared
            .store
            .release(&shared.options.owner, id, retry_in)
            .await
    {
        tracing::error!(run = %id, "releasing the run failed: {e}");
    }
}

async fn drive(shared: &Shared, row: ClaimedRun) -> Result<DriveEnd, JournalError> {
    let store = &shared.store;
    let state = RunState::new(&row.id, &row.workflow, row.version, row.created_at);
    let mut run = LiveRun::resume(state, row.history);
    let owner = shared.options.owner.clone();
    let mut journal = StoreJournal::new(store.clone(), Some(owner.clone()))
        .knowing_cancel(row.cancel_requested)
        .with_catalog(shared.catalog.clone());
    let workflow = match shared.catalog.version(&row.workflow, row.version).await {
        Ok(Some(w)) => w,
        // The database may be back soon: try again later.
        Err(CatalogError::Store(e)) => {
            return Err(JournalError::Unavailable(format!(
                "cannot load the run's workflow: {e}"
            )));
        }
        other => {
            let why = match other {
                Ok(_) => format!(
                    "workflow {} version {} is not deployed",
                    row.workflow, row.version
                ),
                Err(e) => e.to_string(),
            };
            // The run cannot continue anywhere: fail it rather than retry forever.
            let error = StepError::fatal(format!("cannot load the run's workflow: {why}"));
            let recorded = crate::run::Recorded::at(
                run.history.len() as u64 + 1,
                chrono::Utc::now(),
                crate::run::Event::RunFailed { error },
            );
            run.state.apply(&recorded);
            store
                .append(&run.state, &[recorded], None, Some(&owner))
                .await?;
            return Ok(DriveEnd::Finished);
        }
    };
    shared
        .executor
        .drive(&workflow, &mut run, &mut journal, true)
        .await
}

//! New work announced across processes: on PostgreSQL, a process that
//! creates a run for others (an API-only server), records a decision or
//! asks for a cancel sends `NOTIFY`; workers `LISTEN` and claim at once
//! instead of at their next poll. Announcements are coalesced (at most one
//! `NOTIFY` per few milliseconds), so a burst of runs costs one.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::AnyPool;
use tokio::sync::Notify;

use crate::Store;

/// The sending side, shared by every clone of the store.
#[derive(Debug)]
pub(super) struct Announcer {
    pending: AtomicBool,
    nudge: Notify,
    pub channel: String,
    pub url: String,
}

impl Announcer {
    /// Starts the task that turns flagged announcements into `NOTIFY`s.
    pub fn spawn(pool: AnyPool, url: String, schema: Option<&str>) -> Arc<Announcer> {
        let channel = format!(
            "steward_work_{}",
            schema
                .unwrap_or("public")
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                })
                .collect::<String>()
        );
        let announcer = Arc::new(Announcer {
            pending: AtomicBool::new(false),
            nudge: Notify::new(),
            channel,
            url,
        });
        let task = announcer.clone();
        tokio::spawn(async move {
            loop {
                task.nudge.notified().await;
                if task.pending.swap(false, Ordering::AcqRel) {
                    let sent = sqlx::query("SELECT pg_notify($1, '')")
                        .bind(&task.channel)
                        .execute(&pool)
                        .await;
                    if let Err(e) = sent {
                        tracing::debug!("announcing new work failed (workers poll anyway): {e}");
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        announcer
    }

    /// Flags new work; the task sends one `NOTIFY` for everything flagged
    /// since the last.
    pub fn announce(&self) {
        self.pending.store(true, Ordering::Release);
        self.nudge.notify_one();
    }
}

/// Wakes `wake` whenever another process announces work, reconnecting
/// after errors, for as long as the process runs. The listening connection
/// is the first to learn that the database dropped its connections (it is
/// always reading): that is recorded (see `health`), so the pools test
/// their idle connections before handing them out.
pub(super) fn listen(url: String, channel: String, wake: Arc<Notify>) {
    tokio::spawn(async move {
        loop {
            match sqlx::postgres::PgListener::connect(&url).await {
                Ok(mut listener) => match listener.listen(&channel).await {
                    Ok(()) => loop {
                        match listener.try_recv().await {
                            Ok(Some(_)) => wake.notify_one(),
                            // Lost and connected again: announcements made
                            // meanwhile were missed, so look now.
                            Ok(None) => {
                                super::health::shared().lost();
                                wake.notify_one();
                            }
                            Err(e) => {
                                super::health::shared().check(&e);
                                tracing::warn!(
                                    "listening for new work failed (polling meanwhile): {e}"
                                );
                                break;
                            }
                        }
                    },
                    Err(e) => tracing::warn!("LISTEN {channel} failed: {e}"),
                },
                Err(e) => tracing::warn!("listening for new work failed (polling meanwhile): {e}"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
}

impl Store {
    /// Tells other processes' workers that work is due now (PostgreSQL;
    /// with SQLite there is one process, which wakes its own worker).
    pub(crate) fn announce(&self) {
        if let Some(announcer) = &self.announcer {
            announcer.announce();
        }
    }

    /// Wakes `wake` when another process announces work (PostgreSQL).
    pub fn listen_for_work(&self, wake: std::sync::Arc<tokio::sync::Notify>) {
        if let Some(announcer) = &self.announcer {
            listen(announcer.url.clone(), announcer.channel.clone(), wake);
        }
    }
}

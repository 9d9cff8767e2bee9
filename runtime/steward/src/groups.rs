//! Approver groups: `[groups]` from `steward.toml` (the operator's, read
//! only) and groups set over the API (kept in the database, so every
//! process sees them). A group is expanded when an approval opens; changing
//! it later does not change who may decide approvals already open.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

pub use steward_core::groups::GroupSnapshot;

use crate::store::{Store, StoreError};

/// Where a group is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupSource {
    Config,
    Api,
}

impl GroupSource {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupSource::Config => "config",
            GroupSource::Api => "api",
        }
    }
}

/// A shared, refreshable view of every group; cheap to clone. The
/// planner gets a [`GroupSnapshot`] of it, never the lock.
#[derive(Debug, Clone, Default)]
pub struct Groups {
    inner: Arc<RwLock<Arc<GroupSnapshot>>>,
}

impl Groups {
    /// The groups of `steward.toml`; stored ones arrive with `refresh`.
    pub fn new(configured: BTreeMap<String, Vec<String>>) -> Groups {
        Groups {
            inner: Arc::new(RwLock::new(Arc::new(GroupSnapshot {
                configured,
                stored: BTreeMap::new(),
                identity_provider: BTreeSet::new(),
            }))),
        }
    }

    /// Also knows the approver groups `[auth.roles]` names, so an approval
    /// for `group:cab` opens even when `cab` has members only in the
    /// identity provider.
    pub fn with_identity_provider_groups(self, names: impl IntoIterator<Item = String>) -> Groups {
        {
            let mut current = self.inner.write().unwrap();
            Arc::make_mut(&mut current).identity_provider.extend(names);
        }
        self
    }

    /// Every group as it is now, for one plan or one request.
    pub fn snapshot(&self) -> Arc<GroupSnapshot> {
        self.inner.read().unwrap().clone()
    }

    /// Whether members of `name` may also come from the identity provider.
    pub fn from_identity_provider(&self, name: &str) -> bool {
        self.snapshot().from_identity_provider(name)
    }

    /// The members of `name` (see [`GroupSnapshot::members`]).
    pub fn members(&self, name: &str) -> Option<Vec<String>> {
        self.snapshot().members(name)
    }

    pub fn source(&self, name: &str) -> Option<GroupSource> {
        let dir = self.snapshot();
        if dir.configured.contains_key(name) {
            Some(GroupSource::Config)
        } else if dir.stored.contains_key(name) {
            Some(GroupSource::Api)
        } else {
            None
        }
    }

    /// Every group by name, with its members and origin.
    pub fn all(&self) -> Vec<(String, Vec<String>, GroupSource)> {
        let dir = self.snapshot();
        let mut out: BTreeMap<&String, (Vec<String>, GroupSource)> = BTreeMap::new();
        for (name, members) in &dir.stored {
            out.insert(name, (members.clone(), GroupSource::Api));
        }
        for (name, members) in &dir.configured {
            out.insert(name, (members.clone(), GroupSource::Config));
        }
        out.into_iter()
            .map(|(name, (members, source))| (name.clone(), members, source))
            .collect()
    }

    /// Reads the stored groups again (after an API change here, and
    /// periodically for changes made by other processes).
    pub async fn refresh(&self, store: &Store) -> Result<(), StoreError> {
        let stored = store.stored_groups().await?;
        let mut current = self.inner.write().unwrap();
        Arc::make_mut(&mut current).stored = stored;
        Ok(())
    }

    /// Refreshes every `every`, for as long as the process runs.
    pub fn spawn_refresh(&self, store: Store, every: Duration) {
        let groups = self.clone();
        tokio::spawn(async move {
            loop {
                if let Err(e) = groups.refresh(&store).await {
                    tracing::warn!("reading approver groups failed: {e}");
                }
                tokio::time::sleep(every).await;
            }
        });
    }
}

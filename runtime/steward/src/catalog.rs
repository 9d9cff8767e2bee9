//! The workflows a server knows: every deployed version, so a run keeps the
//! version it started on even after a newer one is deployed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use crate::store::{Store, StoreError};
use crate::workflow::{ValidationErrors, Workflow, load_str};

/// Why a workflow could not be found or deployed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Deployed workflows by name and version.
pub struct Catalog {
    store: Store,
    plugins: RwLock<BTreeSet<String>>,
    versions: RwLock<BTreeMap<(String, u32), Arc<Workflow>>>,
}

impl Catalog {
    pub fn new(store: Store, plugins: BTreeSet<String>) -> Catalog {
        Catalog {
            store,
            plugins: RwLock::new(plugins),
            versions: RwLock::new(BTreeMap::new()),
        }
    }

    /// The plugin names workflows may use.
    pub fn plugins(&self) -> BTreeSet<String> {
        self.plugins.read().unwrap().clone()
    }

    /// Lets workflows use a plugin added while serving.
    pub fn add_plugin(&self, name: &str) {
        self.plugins.write().unwrap().insert(name.to_string());
    }

    /// Records a validated workflow in the store and makes it the latest of
    /// its name when its version is the highest. `true` when this version
    /// is new; deploying the same text again changes nothing.
    /// `actor` is who deploys it, for the audit log.
    pub async fn deploy(
        &self,
        workflow: impl Into<Arc<Workflow>>,
        actor: &str,
    ) -> Result<(Arc<Workflow>, bool), CatalogError> {
        let workflow: Arc<Workflow> = workflow.into();
        let created = self
            .store
            .deploy_workflow(&workflow.name, workflow.version, &workflow.source, actor)
            .await?;
        self.versions
            .write()
            .unwrap()
            .insert((workflow.name.clone(), workflow.version), workflow.clone());
        if self
            .latest(&workflow.name)
            .is_some_and(|w| w.version == workflow.version)
        {
            crate::schedule::sync_triggers(&self.store, &workflow, actor).await?;
        }
        Ok((workflow, created))
    }

    /// The problems of `workflow`'s sub-workflow steps (unknown workflows,
    /// literal inputs their schema refuses, cycles), looking the workflows
    /// up first in `alongside` (the others being loaded with it, by name and
    /// version) and then among the deployed ones.
    pub async fn link_errors(
        &self,
        workflow: &Arc<Workflow>,
        alongside: &[Arc<Workflow>],
    ) -> Result<Vec<crate::workflow::ValidationError>, CatalogError> {
        // Versions named explicitly may be older than what is in memory.
        let mut pinned = BTreeMap::new();
        let mut queue: Vec<Arc<Workflow>> = vec![workflow.clone()];
        let mut seen = BTreeSet::new();
        while let Some(next) = queue.pop() {
            if !seen.insert((next.name.clone(), next.version)) {
                continue;
            }
            for step in next.all_steps() {
                let crate::workflow::StepKind::Workflow(child) = &step.kind else {
                    continue;
                };
                let found = match child.version {
                    Some(v) => match alongside
                        .iter()
                        .find(|w| w.name == child.name && w.version == v)
                    {
                        Some(w) => Some(w.clone()),
                        None => self.version(&child.name, v).await?,
                    },
                    None => alongside
                        .iter()
                        .filter(|w| w.name == child.name)
                        .max_by_key(|w| w.version)
                        .cloned()
                        .or_else(|| self.latest(&child.name)),
                };
                if let Some(found) = found {
                    pinned.insert((child.name.clone(), child.version), found.clone());
                    queue.push(found);
                }
            }
        }
        let find = |name: &str, version: Option<u32>| {
            if name == workflow.name && version.is_none_or(|v| v == workflow.version) {
                return Some(workflow.clone());
            }
            pinned.get(&(name.to_string(), version)).cloned()
        };
        Ok(crate::workflow::check_links(workflow, &find))
    }

    /// Loads the latest deployed version of every workflow in the store
    /// (deployed through the API or an earlier start). Returns the ones that
    /// no longer validate (e.g. a plugin they use was removed), with why.
    pub async fn restore(&self) -> Result<Vec<String>, CatalogError> {
        let mut problems = Vec::new();
        for (name, version, source) in self.store.latest_workflows().await? {
            match load_str(&source, &format!("{name}@{version}"), &self.plugins()) {
                Ok(w) => {
                    crate::schedule::sync_triggers(&self.store, &w, crate::auth::SYSTEM_ACTOR)
                        .await?;
                    self.versions
                        .write()
                        .unwrap()
                        .insert((name, version), Arc::new(w));
                }
                Err(e) => problems.push(format!("{name} version {version} is not served: {e}")),
            }
        }
        Ok(problems)
    }

    /// The highest deployed version of `name`.
    pub fn latest(&self, name: &str) -> Option<Arc<Workflow>> {
        let versions = self.versions.read().unwrap();
        versions
            .range((name.to_string(), 0)..=(name.to_string(), u32::MAX))
            .next_back()
            .map(|(_, w)| w.clone())
    }

    /// A specific version, loaded from the store when this process has not
    /// seen it (a run started by another process or before a restart).
    pub async fn version(
        &self,
        name: &str,
        version: u32,
    ) -> Result<Option<Arc<Workflow>>, CatalogError> {
        if let Some(w) = self
            .versions
            .read()
            .unwrap()
            .get(&(name.to_string(), version))
        {
            return Ok(Some(w.clone()));
        }
        let Some(source) = self.store.workflow_source(name, version).await? else {
            return Ok(None);
        };
        let workflow = Arc::new(load_str(
            &source,
            &format!("{name}@{version}"),
            &self.plugins(),
        )?);
        self.versions
            .write()
            .unwrap()
            .insert((name.to_string(), version), workflow.clone());
        Ok(Some(workflow))
    }

    /// The highest deployed version of `name` as the database knows it:
    /// also one deployed by another process since this one started.
    pub async fn current(&self, name: &str) -> Result<Option<Arc<Workflow>>, CatalogError> {
        match self.store.latest_version(name).await? {
            Some(version) => self.version(name, version).await,
            None => Ok(None),
        }
    }

    /// Every name with its latest version.
    pub fn list(&self) -> Vec<Arc<Workflow>> {
        let versions = self.versions.read().unwrap();
        let mut latest: BTreeMap<&str, Arc<Workflow>> = BTreeMap::new();
        for ((name, _), w) in versions.iter() {
            latest.insert(name, w.clone());
        }
        latest.into_values().collect()
    }
}

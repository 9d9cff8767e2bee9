//! Approver groups as the planner sees them: who is in each group at one
//! moment. The server keeps the live directory (configured groups, groups
//! set over the API, groups the identity provider fills) and hands the
//! planner a snapshot, so a plan is a function of its inputs.

use std::collections::{BTreeMap, BTreeSet};

/// Every approver group at one moment; cheap to share behind an `Arc`.
#[derive(Debug, Clone, Default)]
pub struct GroupSnapshot {
    /// `[groups]` of the operator's configuration: these win over stored ones.
    pub configured: BTreeMap<String, Vec<String>>,
    /// Groups set over the API.
    pub stored: BTreeMap<String, Vec<String>>,
    /// Groups `[auth.roles]` grants through the identity provider: their
    /// members are only known from each caller's token, so they exist even
    /// when nobody is listed here.
    pub identity_provider: BTreeSet<String>,
}

impl GroupSnapshot {
    /// The members of `name`; a configured group wins over a stored one of
    /// the same name. A group only the identity provider fills has no
    /// members listed here.
    pub fn members(&self, name: &str) -> Option<Vec<String>> {
        self.configured
            .get(name)
            .or_else(|| self.stored.get(name))
            .cloned()
            .or_else(|| self.identity_provider.contains(name).then(Vec::new))
    }

    /// Whether members of `name` may also come from the identity provider.
    pub fn from_identity_provider(&self, name: &str) -> bool {
        self.identity_provider.contains(name)
    }
}

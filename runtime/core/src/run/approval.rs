//! Approvals as data: the approval a step opens, the decisions people
//! make on it, and the four-eyes rule that bars whoever asked from
//! deciding. The store keeps them; the API and the executor reason with
//! them.

use chrono::{DateTime, Utc};

/// An approval waiting for (or done with) decisions.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ApprovalRow {
    pub id: String,
    pub run_id: String,
    pub workflow: String,
    pub step: String,
    /// 0 for the step's approval, 1 and up for its escalations.
    pub level: u32,
    /// As written in the workflow, after expressions (`group:NAME` kept).
    pub approvers: Vec<String>,
    /// The people who may decide: approvers with groups expanded.
    pub eligible: Vec<String>,
    /// Approvals needed.
    pub quorum: u32,
    pub due_at: Option<DateTime<Utc>>,
    /// `pending` or `closed`.
    pub status: String,
    pub created_at: DateTime<Utc>,
    /// Whose request it is (the step's `requester`, rendered when it
    /// opened): with the run's starter, barred from deciding.
    pub requester: Option<String>,
    /// The step lets the starter and the requester decide.
    pub allow_self_approval: bool,
    /// Who started the run, read from it with the approval (opening one
    /// ignores it): the four-eyes rule bars them too.
    pub started_by: Option<String>,
}

/// A decision refused by the four-eyes rule: whoever asked for something
/// (started the run, or is its requester) may not approve it, neither in
/// person nor as someone's delegate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{person:?} {role} and may not decide approval {approval}: another approver must (the step may set allow_self_approval: true)"
)]
pub struct SelfApproval {
    pub approval: String,
    pub person: String,
    /// What makes them the asker: "started run ID" or "is its requester".
    pub role: String,
}

impl ApprovalRow {
    /// Those who may not decide this approval: the run's starter and the
    /// requester, unless the step allows self-approval.
    pub fn barred(&self) -> Vec<String> {
        if self.allow_self_approval {
            return Vec::new();
        }
        let mut barred: Vec<String> = Vec::new();
        for name in self.started_by.iter().chain(&self.requester) {
            if !barred.iter().any(|b| b == name) {
                barred.push(name.to_string());
            }
        }
        barred
    }

    /// The four-eyes rule for a decision in which `people` take part: the
    /// approver whose eligibility is used and whoever actually decides for
    /// them (a delegate). Checking both keeps a starter from approving
    /// through someone else's eligibility, or someone else's through theirs.
    pub fn check_four_eyes(&self, people: &[&str]) -> Result<(), SelfApproval> {
        if self.allow_self_approval {
            return Ok(());
        }
        for person in people {
            let role = if self.started_by.as_deref() == Some(person) {
                format!("started run {}", self.run_id)
            } else if self.requester.as_deref() == Some(person) {
                "is its requester".to_string()
            } else {
                continue;
            };
            return Err(SelfApproval {
                approval: self.id.clone(),
                person: person.to_string(),
                role,
            });
        }
        Ok(())
    }
}

/// One person's decision.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Decision {
    pub by: String,
    /// `approve` or `reject`.
    pub decision: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    pub at: DateTime<Utc>,
    /// Who decided in `by`'s place, through a delegation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delegate: Option<String>,
    /// The admin who entered this decision on `by`'s behalf (`on_behalf_of`),
    /// when `by` did not send it with their own token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entered_by: Option<String>,
}

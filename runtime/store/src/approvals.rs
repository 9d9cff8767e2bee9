//! Approvals as the API sees them: opened and closed by the worker driving
//! the run, decided by people through the API. A decision is written only
//! while its approval is pending, under the approval row's lock, so the
//! worker that closes an approval reads every decision that was accepted.

use chrono::{DateTime, Utc};
use sqlx::Row;

pub use steward_core::run::approval::{ApprovalRow, Decision, SelfApproval};

use super::{Store, StoreError, now_ms, to_time};

/// What recording a decision found.
#[derive(Debug, PartialEq, Eq)]
pub enum Decided {
    /// Recorded now.
    Recorded(Decision),
    /// This person had already decided: their first decision stands.
    Already(Decision),
    /// The approval was closed before the decision arrived.
    Closed,
    NotFound,
}

impl Store {
    /// Opens an approval (idempotent: a worker re-driving the run after a
    /// crash opens the same one again).
    pub async fn open_approval(&self, a: &ApprovalRow) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        let inserted = sqlx::query(
            "INSERT INTO approvals (id, run_id, workflow, step, level, approvers, eligible, quorum, due_at, status, created_at, \
             requester, allow_self_approval) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', $10, $11, $12) ON CONFLICT (id) DO NOTHING",
        )
        .bind(&a.id)
        .bind(&a.run_id)
        .bind(&a.workflow)
        .bind(&a.step)
        .bind(a.level as i64)
        .bind(serde_json::to_string(&a.approvers).expect("strings serialise"))
        .bind(serde_json::to_string(&a.eligible).expect("strings serialise"))
        .bind(a.quorum as i64)
        .bind(a.due_at.map(|t| t.timestamp_millis()))
        .bind(a.created_at.timestamp_millis())
        .bind(&a.requester)
        .bind(a.allow_self_approval as i64)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 1 {
            for name in &a.eligible {
                sqlx::query(
                    "INSERT INTO approval_approvers (approval_id, name) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                )
                .bind(&a.id)
                .bind(name)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Closes an approval: from now on decisions are refused (409), so the
    /// decisions read after this are all there will be.
    pub async fn close_approval(&self, id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE approvals SET status = 'closed', closed_at = $2 WHERE id = $1 AND status = 'pending'",
        )
        .bind(id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Closes every open approval of a finished run.
    pub async fn close_run_approvals(&self, run_id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE approvals SET status = 'closed', closed_at = $2 WHERE run_id = $1 AND status = 'pending'",
        )
        .bind(run_id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records `by`'s decision while the approval is pending, and makes the
    /// run look at it. The approval row is updated first, which locks it:
    /// a concurrent close waits for this transaction or makes it see
    /// `closed`.
    pub async fn decide(
        &self,
        id: &str,
        by: &str,
        decision: &str,
        comment: Option<&str>,
        delegate: Option<&str>,
        entered_by: Option<&str>,
    ) -> Result<Decided, StoreError> {
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        let run_id: Option<String> = sqlx::query_scalar(
            "UPDATE approvals SET status = status WHERE id = $1 AND status = 'pending' RETURNING run_id",
        )
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(run_id) = run_id else {
            tx.rollback().await?;
            return Ok(match self.approval(id).await? {
                Some(_) => Decided::Closed,
                None => Decided::NotFound,
            });
        };
        let inserted = sqlx::query(
            "INSERT INTO approval_decisions (approval_id, decided_by, decision, comment, decided_at, delegate, entered_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(id)
        .bind(by)
        .bind(decision)
        .bind(comment)
        .bind(now)
        .bind(delegate)
        .bind(entered_by)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            tx.rollback().await?;
            let first = self
                .approval_decisions(id)
                .await?
                .into_iter()
                .find(|d| d.by == by)
                .ok_or_else(|| StoreError::Corrupt(format!("decision of {by} on {id} vanished")))?;
            return Ok(Decided::Already(first));
        }
        sqlx::query(
            "UPDATE runs SET attention = 1, wake_at = $2 \
             WHERE id = $1 AND status NOT IN ('succeeded', 'failed', 'rejected', 'cancelled')",
        )
        .bind(&run_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        // Whoever called: an admin entering it, else a delegate, else the
        // approver in person.
        let actor = entered_by.or(delegate).unwrap_or(by);
        let mut detail = serde_json::json!({"decision": decision, "by": by});
        if let Some(entered_by) = entered_by {
            detail["entered_by"] = entered_by.into();
        }
        if let Some(delegate) = delegate {
            detail["delegate"] = delegate.into();
        }
        super::audit::record(&mut tx, actor, "approval.decide", id, &detail).await?;
        tx.commit().await?;
        self.announce();
        Ok(Decided::Recorded(Decision {
            by: by.to_string(),
            decision: decision.to_string(),
            comment: comment.map(str::to_string),
            at: to_time(now),
            delegate: delegate.map(str::to_string),
            entered_by: entered_by.map(str::to_string),
        }))
    }

    /// Decisions on `id`, oldest first.
    pub async fn approval_decisions(&self, id: &str) -> Result<Vec<Decision>, StoreError> {
        let rows = sqlx::query(
            "SELECT decided_by, decision, comment, decided_at, delegate, entered_by FROM approval_decisions \
             WHERE approval_id = $1 ORDER BY decided_at, decided_by",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Decision {
                    by: r.try_get("decided_by")?,
                    decision: r.try_get("decision")?,
                    comment: r.try_get("comment")?,
                    at: to_time(r.try_get("decided_at")?),
                    delegate: r.try_get("delegate")?,
                    entered_by: r.try_get("entered_by")?,
                })
            })
            .collect()
    }

    pub async fn approval(&self, id: &str) -> Result<Option<ApprovalRow>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SELECT_APPROVAL} WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(approval_row).transpose()
    }

    /// Pending approvals, oldest first, optionally only those `approver`
    /// may decide.
    pub async fn pending_approvals(
        &self,
        approver: Option<&str>,
        limit: i64,
    ) -> Result<Vec<ApprovalRow>, StoreError> {
        let rows = match approver {
            Some(name) => {
                // Their own, and those of whoever delegated to them now.
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "{SELECT_APPROVAL} WHERE status = 'pending' AND id IN \
                     (SELECT approval_id FROM approval_approvers WHERE name = $1 OR name IN \
                       (SELECT from_name FROM delegations WHERE to_name = $1 AND revoked_at IS NULL \
                        AND starts_at <= $3 AND (ends_at IS NULL OR ends_at > $3))) \
                     ORDER BY created_at, id LIMIT $2"
                )))
                .bind(name)
                .bind(limit)
                .bind(now_ms())
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "{SELECT_APPROVAL} WHERE status = 'pending' ORDER BY created_at, id LIMIT $1"
                )))
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(approval_row).collect()
    }
}

/// The run's starter comes along in a subquery (a primary-key lookup), so
/// a page of approvals costs no query per row.
const SELECT_APPROVAL: &str = "SELECT id, run_id, workflow, step, level, approvers, eligible, quorum, \
                               due_at, status, created_at, requester, allow_self_approval, \
                               (SELECT r.started_by FROM runs r WHERE r.id = approvals.run_id) AS started_by \
                               FROM approvals";

fn approval_row(r: &sqlx::any::AnyRow) -> Result<ApprovalRow, StoreError> {
    let list = |column: &str| -> Result<Vec<String>, StoreError> {
        let text: String = r.try_get(column)?;
        serde_json::from_str(&text)
            .map_err(|e| StoreError::Corrupt(format!("approvals.{column}: {e}")))
    };
    let level: i64 = r.try_get("level")?;
    let quorum: i64 = r.try_get("quorum")?;
    let due_at: Option<i64> = r.try_get("due_at")?;
    Ok(ApprovalRow {
        id: r.try_get("id")?,
        run_id: r.try_get("run_id")?,
        workflow: r.try_get("workflow")?,
        step: r.try_get("step")?,
        level: level as u32,
        approvers: list("approvers")?,
        eligible: list("eligible")?,
        quorum: quorum as u32,
        due_at: due_at.map(to_time),
        status: r.try_get("status")?,
        created_at: to_time(r.try_get("created_at")?),
        requester: r.try_get("requester")?,
        allow_self_approval: r.try_get::<i64, _>("allow_self_approval")? != 0,
        started_by: r.try_get("started_by")?,
    })
}

impl Store {
    /// The SLA report over runs with a target that finished in
    /// `[from, to)` (Unix ms), computed in the database: counts grouped in
    /// index order, each resolution quantile an index walk to its rank, and
    /// approval waits (few) with a window function. A million runs never
    /// leave the database.
    pub async fn sla_report(
        &self,
        from: i64,
        to: i64,
    ) -> Result<Vec<steward_core::report::ReportLine>, StoreError> {
        use steward_core::report::{GroupCounts, Quantile, assemble};
        let rows = sqlx::query(
            "SELECT workflow, sla_priority, COUNT(*) AS runs, \
               SUM(CASE WHEN sla_breached = 0 AND status = 'succeeded' THEN 1 ELSE 0 END) AS met, \
               SUM(CASE WHEN sla_breached = 1 THEN 1 ELSE 0 END) AS breached, \
               SUM(CASE WHEN status = 'succeeded' THEN 1 ELSE 0 END) AS succeeded \
             FROM runs WHERE sla_priority IS NOT NULL AND sla_target_ms IS NOT NULL \
             AND finished_at >= $1 AND finished_at < $2 GROUP BY workflow, sla_priority",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&self.pool)
        .await?;
        let mut counts = Vec::with_capacity(rows.len());
        let mut quantiles = Vec::new();
        let mut walks = tokio::task::JoinSet::new();
        // Without statistics SQLite would rather sort the group's time
        // range than walk the resolution index; PostgreSQL has statistics.
        let resolution_index = super::dialect::indexed_by(self.backend, "runs_sla_resolution");
        for r in &rows {
            let (runs, met, breached, succeeded): (i64, i64, i64, i64) = (
                r.try_get("runs")?,
                r.try_get("met")?,
                r.try_get("breached")?,
                r.try_get("succeeded")?,
            );
            let (workflow, priority): (String, String) =
                (r.try_get("workflow")?, r.try_get("sla_priority")?);
            // Nearest rank: the ceil(p * n / 100)th fastest resolution, read
            // by walking the group's resolution index.
            for (percent, which) in [
                (50, Quantile::ResolutionMedian),
                (90, Quantile::ResolutionP90),
            ] {
                if succeeded == 0 {
                    break;
                }
                let rank = (succeeded * percent + 99) / 100;
                let sql = format!(
                    "SELECT sla_resolution_ms FROM runs{resolution_index} WHERE workflow = $1 AND sla_priority = $2 \
                     AND sla_resolution_ms IS NOT NULL AND sla_target_ms IS NOT NULL \
                     AND finished_at >= $3 AND finished_at < $4 \
                     ORDER BY sla_resolution_ms LIMIT 1 OFFSET $5"
                );
                let (pool, workflow, priority) =
                    (self.pool.clone(), workflow.clone(), priority.clone());
                // The walks are independent reads: run them side by side.
                walks.spawn(async move {
                    let took: Option<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                        .bind(&workflow)
                        .bind(&priority)
                        .bind(from)
                        .bind(to)
                        .bind(rank - 1)
                        .fetch_optional(&pool)
                        .await?;
                    Ok::<_, StoreError>(took.map(|t| (workflow, priority, which, t)))
                });
            }
            counts.push(GroupCounts {
                workflow,
                priority,
                runs: runs as u64,
                met: met as u64,
                breached: breached as u64,
            });
        }
        while let Some(walk) = walks.join_next().await {
            let walked =
                walk.map_err(|e| StoreError::Corrupt(format!("a report query panicked: {e}")))?;
            quantiles.extend(walked?);
        }
        // Closed approvals first, each joined to its run by key: SQLite
        // keeps a CROSS JOIN's order (scanning a month of runs for their
        // approvals cost a second over 1M runs); an approval closes before
        // its run finishes (the close may be written just after), so
        // closed_at < to + 1 day bounds the scan.
        let waits = sqlx::query(
            "SELECT workflow, sla_priority, rn, cnt, took FROM ( \
               SELECT r.workflow, r.sla_priority, a.closed_at - a.created_at AS took, \
                 ROW_NUMBER() OVER (PARTITION BY r.workflow, r.sla_priority ORDER BY a.closed_at - a.created_at) AS rn, \
                 COUNT(*) OVER (PARTITION BY r.workflow, r.sla_priority) AS cnt \
               FROM approvals a CROSS JOIN runs r \
               WHERE r.id = a.run_id AND r.sla_priority IS NOT NULL AND r.sla_target_ms IS NOT NULL \
               AND r.finished_at >= $1 AND r.finished_at < $2 \
               AND a.closed_at IS NOT NULL AND a.closed_at < $3) q \
             WHERE rn = (cnt * 50 + 99) / 100",
        )
        .bind(from)
        .bind(to)
        .bind(to.saturating_add(86_400_000))
        .fetch_all(&self.pool)
        .await?;
        for r in waits.iter() {
            quantiles.push((
                r.try_get("workflow")?,
                r.try_get("sla_priority")?,
                Quantile::ApprovalWaitMedian,
                r.try_get("took")?,
            ));
        }
        Ok(assemble(counts, &quantiles))
    }
}

/// One approver's approvals handed to a delegate for a period.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Delegation {
    pub id: String,
    pub from: String,
    pub to: String,
    pub starts_at: DateTime<Utc>,
    pub ends_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl Store {
    /// Records a delegation, and `actor` setting it in the audit log.
    pub async fn create_delegation(&self, d: &Delegation, actor: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO delegations (id, from_name, to_name, starts_at, ends_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&d.id)
        .bind(&d.from)
        .bind(&d.to)
        .bind(d.starts_at.timestamp_millis())
        .bind(d.ends_at.map(|t| t.timestamp_millis()))
        .bind(d.created_at.timestamp_millis())
        .execute(&mut *tx)
        .await?;
        let detail = serde_json::json!({
            "from": d.from,
            "to": d.to,
            "starts_at": d.starts_at,
            "ends_at": d.ends_at,
        });
        super::audit::record(&mut tx, actor, "delegation.set", &d.id, &detail).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Delegations not revoked and not over, oldest first.
    pub async fn delegations(&self) -> Result<Vec<Delegation>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, from_name, to_name, starts_at, ends_at, created_at FROM delegations \
             WHERE revoked_at IS NULL AND (ends_at IS NULL OR ends_at > $1) ORDER BY created_at, id",
        )
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let ends_at: Option<i64> = r.try_get("ends_at")?;
                Ok(Delegation {
                    id: r.try_get("id")?,
                    from: r.try_get("from_name")?,
                    to: r.try_get("to_name")?,
                    starts_at: to_time(r.try_get("starts_at")?),
                    ends_at: ends_at.map(to_time),
                    created_at: to_time(r.try_get("created_at")?),
                })
            })
            .collect()
    }

    /// `true` when a live delegation with this id was revoked, which is
    /// logged as `actor` ending it; nothing is logged otherwise.
    pub async fn revoke_delegation(&self, id: &str, actor: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let revoked = sqlx::query(
            "UPDATE delegations SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL \
             RETURNING from_name, to_name",
        )
        .bind(id)
        .bind(now_ms())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = revoked else {
            tx.rollback().await?;
            return Ok(false);
        };
        let from: String = row.try_get("from_name")?;
        let to: String = row.try_get("to_name")?;
        let detail = serde_json::json!({"from": from, "to": to});
        super::audit::record(&mut tx, actor, "delegation.end", id, &detail).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Who has delegated to `name` at this moment.
    pub async fn delegators_of(&self, name: &str) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT from_name FROM delegations WHERE to_name = $1 AND revoked_at IS NULL \
             AND starts_at <= $2 AND (ends_at IS NULL OR ends_at > $2) ORDER BY created_at",
        )
        .bind(name)
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approval(started_by: Option<&str>, requester: Option<&str>, allow: bool) -> ApprovalRow {
        ApprovalRow {
            id: "r1/ok/0".into(),
            run_id: "r1".into(),
            workflow: "leave".into(),
            step: "ok".into(),
            level: 0,
            approvers: vec!["max".into(), "ann".into()],
            eligible: vec!["max".into(), "ann".into()],
            quorum: 1,
            due_at: None,
            status: "pending".into(),
            created_at: Utc::now(),
            requester: requester.map(str::to_string),
            allow_self_approval: allow,
            started_by: started_by.map(str::to_string),
        }
    }

    #[test]
    fn the_starter_and_the_requester_are_barred_once_each_unless_allowed() {
        assert_eq!(
            approval(Some("max"), Some("max"), false).barred(),
            vec!["max"]
        );
        assert_eq!(
            approval(Some("svc:desk"), Some("max"), false).barred(),
            vec!["svc:desk", "max"]
        );
        assert!(approval(Some("max"), Some("ann"), true).barred().is_empty());
        assert!(approval(None, None, false).barred().is_empty());
    }

    #[test]
    fn any_person_taking_part_who_asked_is_refused_and_says_why() {
        let a = approval(Some("max"), Some("eve"), false);
        assert_eq!(a.check_four_eyes(&["ann"]), Ok(()));
        let starter = a.check_four_eyes(&["ann", "max"]).unwrap_err();
        assert_eq!(starter.person, "max");
        assert!(starter.to_string().contains("started run r1"), "{starter}");
        let requester = a.check_four_eyes(&["ann", "eve"]).unwrap_err();
        assert!(
            requester.to_string().contains("\"eve\" is its requester"),
            "{requester}"
        );
        let allowed = approval(Some("max"), Some("eve"), true);
        assert_eq!(allowed.check_four_eyes(&["max", "eve"]), Ok(()));
    }
}

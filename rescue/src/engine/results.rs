//! What the engine found and did, per playbook, condition and action: the
//! part of the report schema the engine fills in. Not the report itself
//! (`crate::report`), which wraps these per Windows volume.

use serde::{Deserialize, Serialize};

/// The outcome for one playbook on one installation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Not for this Windows version or architecture.
    NotApplicable,
    /// Applies, but its conditions do not all hold: no damage of this kind.
    Clean,
    /// Damage found; in scan mode, the actions that would repair it.
    Found,
    /// Every action done and verified.
    Repaired,
    /// Something needs a person (see the actions and conditions).
    NeedsAttention,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConditionResult {
    pub id: String,
    pub kind: String,
    pub held: bool,
    /// What was seen: the value read, the files matched, the error.
    pub detail: String,
    /// Files matched (volume-relative), for `files` conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matched: Vec<String>,
    /// The condition could not be evaluated (unreadable hive or file).
    #[serde(default)]
    pub error: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ActionStatus {
    /// Carried out and verified.
    Done,
    /// Scan mode: what would be done.
    Planned,
    /// Nothing to do (already fine, `unless` satisfied, optional input absent).
    Skipped,
    /// Could not be done safely; nothing was changed by this action.
    Refused,
    /// Started and failed; the journal says where.
    Failed,
    /// Done, then put back because a later action of the same playbook
    /// failed.
    RolledBack,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionResult {
    pub kind: String,
    pub path: String,
    pub status: ActionStatus,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256_before: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256_after: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vault: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlaybookResult {
    pub id: String,
    pub title: String,
    pub status: Status,
    pub reason: String,
    pub conditions: Vec<ConditionResult>,
    pub actions: Vec<ActionResult>,
}

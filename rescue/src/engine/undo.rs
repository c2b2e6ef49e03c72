//! `rescue undo`: a run put back from its journal and vault.

use super::*;
use crate::journal::{self, Op, RunDir, Step, StepState};
use anyhow::{bail, Result};
use serde::Serialize;
use std::path::Path;

/// What undo did.
#[derive(Debug, Clone, Serialize)]
pub struct UndoResult {
    pub run_id: String,
    pub restored: Vec<String>,
    pub problems: Vec<String>,
}

/// The run ids on a volume, oldest first.
pub fn runs(root: &Path) -> Result<Vec<String>> {
    let top = root.join(journal::TOP);
    let mut v = Vec::new();
    if let Ok(rd) = std::fs::read_dir(&top) {
        for e in rd.flatten() {
            if e.path().join(journal::JOURNAL).is_file() {
                v.push(e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    v.sort();
    Ok(v)
}

/// Puts the volume back as it was before run `run_id`, from its journal and
/// vault. Files the run created are moved into `\defib\<run>\undone\`, not
/// deleted. A file changed since the run is left alone and reported.
pub fn undo(root: &Path, run_id: &str) -> Result<UndoResult> {
    let mut rd = RunDir::open(root, run_id)?;
    let steps = journal::read_journal(&rd.dir.join(journal::JOURNAL))?;
    if steps.iter().any(|s| s.op == Op::Undo) {
        bail!("run {run_id} was already undone");
    }
    let mut res = UndoResult {
        run_id: run_id.into(),
        restored: Vec::new(),
        problems: Vec::new(),
    };
    let done: Vec<&Step> = steps
        .iter()
        .filter(|s| s.state == StepState::Done)
        .collect();
    for s in &steps {
        if s.state == StepState::Intent
            && !steps
                .iter()
                .any(|d| d.seq == s.seq && d.state != StepState::Intent)
        {
            res.problems.push(format!(
                "step {} ({:?} {}) was interrupted: check {} by hand",
                s.seq, s.op, s.path, s.path
            ));
        }
    }
    for s in done.iter().rev() {
        let target = root.join(s.path.replace('\\', "/"));
        let vault = s.vault.as_ref().map(|v| rd.dir.join(v.replace('\\', "/")));
        let r = (|| -> Result<()> {
            if matches!(s.op, Op::Restore | Op::DropIn) {
                // Take away what the run wrote, if it is still what it wrote.
                let now = journal::sha256_file(&target).ok();
                if now.as_deref() != s.sha256_after.as_deref() {
                    bail!("{} changed since the run; left alone", s.path);
                }
                let undone = rd.dir.join("undone").join(s.path.replace('\\', "/"));
                journal::move_noreplace(&target, &undone)?;
            }
            if let Some(v) = &vault {
                if target.exists() {
                    bail!(
                        "{} exists again; the vault copy stays in {}",
                        s.path,
                        v.display()
                    );
                }
                journal::move_noreplace(v, &target)?;
                let h = journal::sha256_file(&target)?;
                if Some(&h) != s.sha256_before.as_ref() {
                    bail!("{} put back but reads as {h}", s.path);
                }
            }
            Ok(())
        })();
        let seq = rd.next_seq();
        let mut step = Step {
            seq,
            state: StepState::Done,
            op: Op::Undo,
            playbook: s.playbook.clone(),
            path: s.path.clone(),
            vault: s.vault.clone(),
            sha256_before: s.sha256_after.clone(),
            sha256_after: s.sha256_before.clone(),
            source: Some(format!("undo of step {}", s.seq)),
            error: None,
            time: utc_now(),
        };
        match r {
            Ok(()) => res.restored.push(s.path.clone()),
            Err(e) => {
                step.state = StepState::Failed;
                step.error = Some(format!("{e:#}"));
                res.problems.push(format!("{e:#}"));
            }
        }
        rd.record(&step)?;
    }
    Ok(res)
}

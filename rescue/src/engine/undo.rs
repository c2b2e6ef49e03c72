//! Putting a volume back: `rescue undo` of a whole run, the rollback of one
//! playbook's steps when a later step of it failed, and the recovery of a
//! run that was interrupted (no `end` line) before anything else is read.
//!
//! Every step is undone the same way, whether it finished or was cut off
//! halfway: look at what is on the disk now and bring it back to the state
//! before the step. A vault copy is hash-checked before it is moved; a file
//! that changed since the run is left alone and reported; paths read from
//! a journal are checked to stay on the volume and to cross no link.

use super::*;
use crate::journal::{self, Op, RunDir, Step, StepState};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// What undo did.
#[derive(Debug, Clone, Serialize)]
pub struct UndoResult {
    pub run_id: String,
    pub restored: Vec<String>,
    pub problems: Vec<String>,
}

/// The run ids on a volume, oldest first (by their number on the volume,
/// then by id).
pub fn runs(root: &Path) -> Result<Vec<String>> {
    Ok(journal::run_numbers(root)?
        .into_iter()
        .map(|(_, id)| id)
        .collect())
}

/// The run `rescue undo` takes by default: the newest one that changed
/// something still not put back. A run that never got to change anything
/// (killed right after it started) is not a candidate.
pub fn latest_undoable(root: &Path) -> Result<Option<String>> {
    for id in runs(root)?.into_iter().rev() {
        let steps = journal::read_journal(&run_dir(root, &id).join(journal::JOURNAL))?;
        if !pending(&steps).is_empty() {
            return Ok(Some(id));
        }
    }
    Ok(None)
}

/// Runs that were interrupted: no `end` line, and steps not yet put back.
pub fn interrupted(root: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for id in runs(root)? {
        let steps = journal::read_journal(&run_dir(root, &id).join(journal::JOURNAL))?;
        if !steps.iter().any(|s| s.op == Op::End) && !pending(&steps).is_empty() {
            out.push(id);
        }
    }
    Ok(out)
}

/// Rolls back every interrupted run on the volume, newest first, so that
/// what the playbooks see is the volume as it was before that run. Each
/// rolled-back run gets its `end` line. Returns one line per run.
/// `system` is the mounted system partition, for steps that changed the
/// BCD store on it.
pub fn recover(root: &Path, system: Option<&Path>) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    for id in interrupted(root)?.into_iter().rev() {
        let mut rd = RunDir::open(root, &id)?;
        let steps = journal::read_journal(&rd.dir.join(journal::JOURNAL))?;
        let todo = pending(&steps);
        let r = undo_steps(root, system, &mut rd, &todo, "rollback of interrupted run")?;
        rd.finish(Some("rolled back after an interruption".into()))?;
        if r.problems.is_empty() {
            lines.push(format!(
                "run {id} was interrupted; its {} change(s) were rolled back first",
                r.restored.len()
            ));
        } else {
            lines.push(format!(
                "run {id} was interrupted; rolling it back left problems: {}",
                r.problems.join("; ")
            ));
        }
    }
    Ok(lines)
}

/// Puts the volume back as it was before run `run_id`, from its journal and
/// vault. Files the run created are moved into `\defib\<run>\undone\`, not
/// deleted. A file changed since the run is left alone and reported.
/// A BCD store the run edited on the system partition is put back only
/// when `system` is given (`--esp DIR`); otherwise that step is reported.
pub fn undo(root: &Path, system: Option<&Path>, run_id: &str) -> Result<UndoResult> {
    let mut rd = RunDir::open(root, run_id)?;
    let steps = journal::read_journal(&rd.dir.join(journal::JOURNAL))?;
    let todo = pending(&steps);
    if todo.is_empty() {
        bail!("run {run_id} has nothing to undo (already undone, or it changed nothing)");
    }
    let res = undo_steps(root, system, &mut rd, &todo, "undo")?;
    if !steps.iter().any(|s| s.op == Op::End) {
        rd.finish(Some("undone".into()))?;
    }
    Ok(res)
}

/// The steps of a journal that changed (or may have changed) the volume and
/// are not yet put back, in the order they ran: finished steps and steps
/// cut off after their `intent`; not `failed` ones whose action reported
/// that it changed nothing... a failed step may still have moved a file
/// before it failed, so it is included too and undone by what the disk
/// shows.
fn pending(steps: &[Step]) -> Vec<Step> {
    let undone: std::collections::BTreeSet<u32> = steps
        .iter()
        .filter(|s| s.op == Op::Undo && s.state == StepState::Done)
        .filter_map(|s| s.source.as_deref().and_then(undone_seq))
        .collect();
    let mut out: Vec<Step> = Vec::new();
    for s in steps {
        if matches!(s.op, Op::Undo | Op::Begin | Op::End) || undone.contains(&s.seq) {
            continue;
        }
        // One entry per step: the last line written for it wins.
        match out.iter_mut().find(|x| x.seq == s.seq) {
            Some(x) => *x = s.clone(),
            None => out.push(s.clone()),
        }
    }
    out
}

/// `… of step 7` -> 7.
fn undone_seq(source: &str) -> Option<u32> {
    source.rsplit("step ").next()?.trim().parse().ok()
}

/// Undoes `steps` newest first into `rd`'s journal, one `undo` line each.
pub(super) fn undo_steps(
    root: &Path,
    system: Option<&Path>,
    rd: &mut RunDir,
    steps: &[Step],
    why: &str,
) -> Result<UndoResult> {
    let mut res = UndoResult {
        run_id: rd.id(),
        restored: Vec::new(),
        problems: Vec::new(),
    };
    for s in steps.iter().rev() {
        let r = if s.op == Op::Bcd {
            undo_bcd(root, system, &rd.dir, s)
        } else {
            undo_one(root, &rd.dir, s)
        };
        let seq = rd.next_seq();
        let mut line = Step::new(Op::Undo, &s.playbook, &s.path);
        line.seq = seq;
        line.state = StepState::Done;
        line.volume = s.volume;
        line.vault = s.vault.clone();
        line.sha256_before = s.sha256_after.clone();
        line.sha256_after = s.sha256_before.clone();
        line.source = Some(format!("{why} of step {}", s.seq));
        match r {
            Ok(()) => res.restored.push(s.path.clone()),
            Err(e) => {
                line.state = StepState::Failed;
                line.error = Some(format!("{e:#}"));
                res.problems.push(format!("{e:#}"));
            }
        }
        rd.record(&line)?;
    }
    Ok(res)
}

/// A path from a journal, checked: a relative Windows path that stays
/// below `base` and crosses no link on the way. The journal is on the
/// victim's disk, so it is as untrusted as anything else there.
fn confined(base: &Path, windows_path: &str) -> Result<PathBuf> {
    let parts = crate::playbook::split_path(windows_path)
        .with_context(|| format!("journal path {windows_path:?} is not a volume path"))?;
    let mut p = base.to_path_buf();
    for c in &parts {
        if c.contains('\0') {
            bail!("journal path {windows_path:?} is not a volume path");
        }
        p.push(c);
        journal::no_link(&p)?;
    }
    Ok(p)
}

fn hash_if_present(p: &Path) -> Result<Option<String>> {
    match p.symlink_metadata() {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        Ok(_) => journal::sha256_file(p).map(Some),
    }
}

/// Puts a BCD store back from its vault copy (a copy: the vault keeps it)
/// when it is what the step wrote, or gone. A store changed since the run
/// is left alone and reported.
fn undo_bcd(root: &Path, system: Option<&Path>, run: &Path, s: &Step) -> Result<()> {
    let base = match s.volume {
        Some(journal::Volume::System) => system.with_context(|| {
            format!(
                "{} is on the system partition; mount it and pass --esp DIR to put it back (the original is in the vault)",
                s.path
            )
        })?,
        _ => root,
    };
    let target = confined(base, &s.path)?;
    if let Some(t) = journal::tmp_path(&target) {
        if t.symlink_metadata().is_ok_and(|m| m.file_type().is_file()) {
            std::fs::remove_file(&t).with_context(|| format!("removing {}", t.display()))?;
        }
    }
    let now = hash_if_present(&target)?;
    if now.is_some() && now == s.sha256_before {
        // Never replaced, or put back already.
        return Ok(());
    }
    if now.is_some() && now != s.sha256_after {
        bail!(
            "{} changed since the run (now {}); left alone, the original stays in the vault",
            s.path,
            now.unwrap_or_default()
        );
    }
    let v = confined(
        run,
        s.vault.as_deref().context("the step names no vault copy")?,
    )?;
    let data = std::fs::read(&v).with_context(|| format!("reading {}", v.display()))?;
    let vh = journal::sha256_bytes(&data);
    if Some(&vh) != s.sha256_before.as_ref() {
        bail!(
            "the vault copy of {} reads as {vh}, not the {} it had; left where it is",
            s.path,
            s.sha256_before.as_deref().unwrap_or("?")
        );
    }
    journal::replace_verified(&target, &data)?;
    Ok(())
}

/// Brings one step's file back to how it was before the step, from what
/// the disk shows now; safe to run again after a crash in the middle.
fn undo_one(root: &Path, run: &Path, s: &Step) -> Result<()> {
    let target = confined(root, &s.path)?;
    let vault = match &s.vault {
        Some(v) => Some(confined(run, v)?),
        None => None,
    };
    // A temp file of an interrupted write is ours: remove it. (Anything
    // else under that name, a folder or a link, is not ours: left alone.)
    if let Some(t) = journal::tmp_path(&target) {
        if t.symlink_metadata().is_ok_and(|m| m.file_type().is_file()) {
            std::fs::remove_file(&t).with_context(|| format!("removing {}", t.display()))?;
        }
    }
    let now = hash_if_present(&target)?;
    if matches!(s.op, Op::Restore | Op::DropIn) {
        match (&now, &s.sha256_after) {
            // What the step wrote is there: take it away (kept, not deleted).
            (Some(h), Some(after)) if h == after && s.sha256_before.as_ref() != Some(h) => {
                let undone = confined(run, &format!("undone\\{}", s.path))?;
                journal::move_noreplace(&target, &undone)?;
            }
            // Already as it was before the step (the step never got that far).
            (Some(h), _) if s.sha256_before.as_ref() == Some(h) => return Ok(()),
            (None, _) => {}
            (Some(h), _) => bail!("{} changed since the run (now {h}); left alone", s.path),
        }
    } else if s.op == Op::Neutralize {
        if let (Some(h), Some(before)) = (&now, &s.sha256_before) {
            if h == before {
                // The move never happened, or was put back already.
                return Ok(());
            }
            bail!(
                "{} exists again with other content; the vault copy stays",
                s.path
            );
        }
    }
    let Some(v) = vault else {
        return Ok(());
    };
    if v.symlink_metadata().is_err() {
        // No vault copy: the step stopped before it moved anything, unless
        // the file is gone too.
        if hash_if_present(&target)?.is_none() && s.sha256_before.is_some() {
            bail!(
                "{} and its vault copy are both missing; restore it by hand",
                s.path
            );
        }
        return Ok(());
    }
    // Check the vault copy before anything moves.
    let vh = journal::sha256_file(&v)?;
    if Some(&vh) != s.sha256_before.as_ref() {
        bail!(
            "the vault copy of {} reads as {vh}, not the {} it had; left where it is",
            s.path,
            s.sha256_before.as_deref().unwrap_or("?")
        );
    }
    if target.symlink_metadata().is_ok() {
        bail!(
            "{} exists again; the vault copy stays in {}",
            s.path,
            v.display()
        );
    }
    journal::move_noreplace(&v, &target)?;
    let h = journal::sha256_from_disk(&target)?;
    if Some(&h) != s.sha256_before.as_ref() {
        bail!("{} put back but reads as {h}", s.path);
    }
    Ok(())
}

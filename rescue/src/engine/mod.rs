//! The repair engine: playbooks evaluated against one Windows installation
//! on a mounted volume (or any directory shaped like one).
//!
//! Order of work for each playbook: does it apply to this Windows build and
//! architecture; do all its conditions hold; then its actions, each one
//! journalled before it runs, backed up into the vault, verified after.
//! In scan mode (and `--dry-run`) nothing is written: the actions are
//! planned and reported.
//!
//! Rules kept here: a restore happens only from a copy whose hash is known
//! good for this build and architecture (the store), or from the victim's
//! own copy (quarantine, dllcache, service pack files, WinSxS) whose PE
//! architecture and file-version build match the installation. Anything
//! else is reported, never guessed.
//!
//! Not here: mounting, volume state (dirty, hibernated, BitLocker) — the
//! caller decides whether writing is allowed and passes the mode.

use crate::journal::{self, RunDir};
use crate::playbook::Playbook;
use crate::store::Store;
use crate::windows::WindowsInstall;
use crate::winpath;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

mod actions;
mod conditions;
mod results;
mod sources;
mod undo;

pub use conditions::file_test;
pub use results::{ActionResult, ActionStatus, ConditionResult, PlaybookResult, Status};
pub use undo::{interrupted, latest_undoable, recover, runs, undo, UndoResult};

/// Whether the engine may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Evaluate and plan; write nothing.
    Scan,
    /// Carry the actions out.
    Fix,
}

/// Everything the engine needs for one installation.
pub struct Target<'a> {
    /// The volume root (mount point).
    pub root: &'a Path,
    pub install: &'a WindowsInstall,
    pub store: &'a Store,
    pub mode: Mode,
    pub run_id: &'a str,
    /// The mounted system partition (ESP) of the volume's disk, where the
    /// BCD store is; `None` when there is none (then `\Boot\BCD` on the
    /// volume itself is used, if it exists).
    pub system: Option<&'a Path>,
}

/// Runs every playbook against one installation. The run folder on the
/// victim is created only when a fix actually writes.
pub fn run(t: &Target, playbooks: &[Playbook]) -> Result<Vec<PlaybookResult>> {
    let mut ctx = Ctx {
        t,
        run_dir: None,
        writing: false,
        hives: BTreeMap::new(),
        rolled_back: None,
    };
    let mut out = Vec::new();
    for pb in playbooks {
        out.push(ctx.playbook(pb));
    }
    if let Some(rd) = ctx.run_dir.as_mut() {
        rd.finish(None)?;
    }
    Ok(out)
}

/// The run folder a fix wrote, if any (`\defib\<run-id>\`).
pub fn run_dir(root: &Path, run_id: &str) -> PathBuf {
    root.join(journal::TOP).join(run_id)
}

struct Ctx<'a> {
    t: &'a Target<'a>,
    run_dir: Option<RunDir>,
    /// False while planning: actions report what they would do.
    writing: bool,
    hives: BTreeMap<&'static str, std::result::Result<crate::winreg::Hive, String>>,
    /// What the last rollback did, for the playbook's reason.
    rolled_back: Option<String>,
}

/// Why the installation is outside the playbook's range, if it is.
pub fn applies(pb: &Playbook, w: &WindowsInstall) -> std::result::Result<(), String> {
    let a = &pb.applies;
    if a.min_build.is_some() || a.max_build.is_some() {
        let Some(b) = w.build else {
            return Err("the Windows build is unknown; not guessing".into());
        };
        if a.min_build.is_some_and(|m| b < m) || a.max_build.is_some_and(|m| b > m) {
            return Err(format!(
                "build {b} is outside {}..={}",
                a.min_build.map(|x| x.to_string()).unwrap_or_default(),
                a.max_build.map(|x| x.to_string()).unwrap_or_default()
            ));
        }
    }
    if !a.arch.is_empty() {
        match w.arch {
            None => return Err("the architecture is unknown; not guessing".into()),
            Some(x) if !a.arch.contains(&x) => {
                return Err(format!("architecture {} is not listed", x.as_str()))
            }
            _ => {}
        }
    }
    if !a.service_pack.is_empty() {
        let sp = w.service_pack.clone().unwrap_or_default();
        if !a
            .service_pack
            .iter()
            .any(|s| s.eq_ignore_ascii_case(sp.trim()))
        {
            return Err(format!(
                "service pack {:?} is not listed",
                if sp.is_empty() { "none" } else { &sp }
            ));
        }
    }
    Ok(())
}

fn utc_now() -> String {
    crate::runid::rfc3339(std::time::SystemTime::now())
}

impl Ctx<'_> {
    fn root(&self) -> &Path {
        self.t.root
    }

    fn playbook(&mut self, pb: &Playbook) -> PlaybookResult {
        let mut r = PlaybookResult {
            id: pb.id.clone(),
            title: pb.title.clone(),
            status: Status::NotApplicable,
            reason: String::new(),
            conditions: Vec::new(),
            actions: Vec::new(),
        };
        if let Err(why) = applies(pb, self.t.install) {
            r.reason = why;
            return r;
        }
        let mut matched: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
        let mut all = true;
        let mut errors = false;
        for c in &pb.conditions {
            let (cr, files) = self.condition(c);
            all &= cr.held;
            errors |= cr.error;
            if let Some(f) = files {
                matched.insert(c.id().to_string(), f);
            }
            r.conditions.push(cr);
        }
        if errors {
            r.status = Status::NeedsAttention;
            r.reason = "a condition could not be evaluated; nothing was changed".into();
            return r;
        }
        if !all {
            r.status = Status::Clean;
            let failed: Vec<&str> = r
                .conditions
                .iter()
                .filter(|c| !c.held)
                .map(|c| c.id.as_str())
                .collect();
            r.reason = format!("not affected: {} did not hold", failed.join(", "));
            return r;
        }
        if pb.detect_only {
            // Recognised, and by the playbook's own word not repairable
            // here: a person has to act, so say what the playbook says.
            r.status = Status::NeedsAttention;
            r.reason = format!(
                "detected; this playbook only recognises the damage, defib does not repair it: {}",
                pb.summary.split_whitespace().collect::<Vec<_>>().join(" ")
            );
            return r;
        }
        // Plan first, writing nothing: when any action would be refused
        // (no verified copy, unreadable file), nothing is changed at all.
        self.writing = false;
        let (planned, ok) = self.actions(pb, &matched);
        r.actions = planned;
        if ok && self.t.mode == Mode::Fix {
            self.writing = true;
            let (done, all_done) = self.actions(pb, &matched);
            self.writing = false;
            r.actions = done;
            r.status = if all_done {
                Status::Repaired
            } else {
                Status::NeedsAttention
            };
            if !all_done {
                // A playbook is all or nothing: a half-done repair would
                // hide its own damage from the next run (the bad files
                // gone, the good one still missing). Put back what it did.
                self.roll_back(pb, &mut r);
            }
        } else {
            r.status = if ok {
                Status::Found
            } else {
                Status::NeedsAttention
            };
        }
        r.reason = match r.status {
            Status::NeedsAttention => match self.rolled_back.take() {
                Some(rb) => format!("an action failed; {rb}"),
                None => "an action could not be carried out safely; see actions".into(),
            },
            Status::Found => {
                "affected: boot 'Repair automatically' (or run rescue fix) to repair".into()
            }
            _ => "repaired and verified".into(),
        };
        r
    }

    /// Undoes the steps `pb` made in this run and says so in `r`.
    fn roll_back(&mut self, pb: &Playbook, r: &mut PlaybookResult) {
        let root = self.t.root.to_path_buf();
        let system = self.t.system;
        let Some(rd) = self.run_dir.as_mut() else {
            return;
        };
        let outcome = journal::read_journal(&rd.dir.join(journal::JOURNAL)).and_then(|steps| {
            let mine: Vec<journal::Step> = steps
                .into_iter()
                .filter(|s| s.playbook == pb.id && s.op != journal::Op::Undo)
                .collect();
            undo::undo_steps(&root, system, rd, &mine, "rollback")
        });
        self.rolled_back = match outcome {
            Ok(u) if u.problems.is_empty() => Some(format!(
                "rolled back: {} change(s) put back, the volume is as it was before this playbook",
                u.restored.len()
            )),
            Ok(u) => Some(format!(
                "rolling back left problems: {}",
                u.problems.join("; ")
            )),
            Err(e) => Some(format!("rolling back failed: {e:#}")),
        };
        for a in &mut r.actions {
            if a.status == ActionStatus::Done {
                a.status = ActionStatus::RolledBack;
            }
        }
    }

    /// Runs (or, when not writing, plans) a playbook's actions in order.
    /// Returns the results and whether none was refused or failed.
    fn actions(
        &mut self,
        pb: &Playbook,
        matched: &BTreeMap<String, Vec<PathBuf>>,
    ) -> (Vec<ActionResult>, bool) {
        let mut out = Vec::new();
        let mut changed_by: BTreeSet<String> = BTreeSet::new();
        let mut ok = true;
        for a in &pb.actions {
            if let Some(u) = a.unless() {
                if changed_by.contains(u) {
                    out.push(ActionResult {
                        kind: a.kind().into(),
                        path: String::new(),
                        status: ActionStatus::Skipped,
                        detail: format!("not needed: {u} was done"),
                        source: None,
                        sha256_before: None,
                        sha256_after: None,
                        vault: None,
                    });
                    continue;
                }
            }
            let results = self.action(pb, a, matched);
            let mut did = false;
            for ar in results {
                match ar.status {
                    ActionStatus::Done | ActionStatus::Planned => did = true,
                    ActionStatus::Skipped => {}
                    ActionStatus::Refused | ActionStatus::Failed | ActionStatus::RolledBack => {
                        ok = false
                    }
                }
                out.push(ar);
            }
            if did {
                if let Some(id) = a.id() {
                    changed_by.insert(id.to_string());
                }
            }
        }
        (out, ok)
    }

    fn windows_dir_parts(&self, parts: &[String]) -> Vec<String> {
        // A path starting with "Windows" means this install's Windows folder,
        // whatever it is called on disk (WINDOWS, Windows, WINNT).
        let wd = &self.t.install.windows_dir;
        if parts
            .first()
            .is_some_and(|p| winpath::name_eq(p, "windows") || winpath::name_eq(p, "winnt"))
        {
            let mut v = vec![wd.clone()];
            v.extend_from_slice(&parts[1..]);
            v
        } else {
            parts.to_vec()
        }
    }

    fn split(&self, p: &str) -> Result<Vec<String>> {
        Ok(self.windows_dir_parts(&crate::playbook::split_path(p)?))
    }
}

/// Whether a file built for `file_build` belongs to an installation that
/// reports `build`. Windows 10 20H2–22H2 (19042–19045) are enablement
/// packages over 19041 and keep 19041 in their files' versions; likewise
/// Windows 11 23H2 (22631) over 22621 and 25H2 (26200) over 24H2 (26100).
pub fn same_servicing(file_build: u32, build: u32) -> bool {
    let base = |b: u32| match b {
        19041..=19045 => 19041,
        22621 | 22631 => 22621,
        26100 | 26200 => 26100,
        other => other,
    };
    base(file_build) == base(build)
}

/// `C:\WINDOWS\x` -> `WINDOWS\x`; also strips `\\?\` prefixes.
fn strip_drive(p: &str) -> String {
    let p = p.trim().trim_start_matches(r"\\?\");
    let p = if p.len() >= 2 && p.as_bytes()[1] == b':' {
        &p[2..]
    } else {
        p
    };
    p.trim_start_matches(['\\', '/']).to_string()
}

/// Glob over a full Windows path: `*` spans any characters including `\`.
fn glob_windows(pattern: &str, path: &str) -> bool {
    winpath::glob_match(&pattern.replace('/', "\\"), &path.replace('/', "\\"))
}

#[cfg(test)]
pub(crate) mod tests;

//! Actions: neutralize (move into the vault), restore (from the first
//! source that passes its checks) and drop-in files, each journalled
//! before it runs and verified after. In scan mode they are planned only.

use super::*;
use crate::journal::{self, Op, RunDir, Step, StepState};
use crate::playbook::{Action, BcdClear, Playbook, Source};
use crate::winpath;
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

impl Ctx<'_> {
    pub(super) fn run_dir(&mut self) -> Result<&mut RunDir> {
        if self.run_dir.is_none() {
            self.run_dir = Some(RunDir::create(self.t.root, self.t.run_id)?);
        }
        Ok(self.run_dir.as_mut().expect("just created"))
    }

    pub(super) fn action(
        &mut self,
        pb: &Playbook,
        a: &Action,
        matched: &BTreeMap<String, Vec<PathBuf>>,
    ) -> Vec<ActionResult> {
        match a {
            Action::Neutralize { files, .. } => matched
                .get(files)
                .cloned()
                .unwrap_or_default()
                .iter()
                .map(|p| self.neutralize(pb, p))
                .collect(),
            Action::Restore { path, sources, .. } => vec![self.restore(pb, path, sources, matched)],
            Action::DropIn {
                path,
                name,
                optional,
                ..
            } => vec![self.drop_in(pb, path, name, *optional)],
            Action::Bcd { clear, .. } => vec![self.bcd(pb, *clear)],
        }
    }

    /// Edits the BCD store in place (`clear = "safeboot"`): the original is
    /// copied into the vault first, the edited store written under a temp
    /// name, fsynced, renamed over, read back and parsed again. A dirty
    /// store, or one whose logs hold data, is refused with nothing written.
    pub(super) fn bcd(&mut self, pb: &Playbook, clear: BcdClear) -> ActionResult {
        let BcdClear::Safeboot = clear;
        let f = match crate::boothealth::find_bcd(self.root(), self.t.system) {
            Ok(Some(f)) => f,
            Ok(None) => {
                return self.result(
                    "bcd",
                    "BCD",
                    ActionStatus::Refused,
                    "no BCD store found on the system partition or the Windows volume (in host mode pass --esp DIR); nothing was changed",
                )
            }
            Err(e) => return self.result("bcd", "BCD", ActionStatus::Refused, format!("{e:#}")),
        };
        let rel = f.describe();
        let read = crate::boothealth::read_store(&f)
            .and_then(|(bytes, _)| Ok((bytes, crate::boothealth::read_logs(&f.path)?)));
        let (bytes, logs) = match read {
            Ok(r) => r,
            Err(e) => {
                return self.result(
                    "bcd",
                    &rel,
                    ActionStatus::Refused,
                    format!("{e:#}; nothing was changed"),
                )
            }
        };
        let log_files: Vec<crate::hivelog::LogFile> = logs
            .iter()
            .map(|(n, d)| crate::hivelog::LogFile { name: n, data: d })
            .collect();
        let edited =
            match crate::guard::contain("BCD", || crate::bcd::clear_safeboot(&bytes, &log_files)) {
                Ok(Ok(b)) => b,
                Ok(Err(crate::bcd::BcdError::SafebootNotSet(id))) => {
                    return self.result(
                        "bcd",
                        &rel,
                        ActionStatus::Skipped,
                        format!("the default entry {id} is not in safe mode; left as it is"),
                    )
                }
                Ok(Err(e)) => {
                    return self.result(
                        "bcd",
                        &rel,
                        ActionStatus::Refused,
                        format!("{e}; nothing was changed"),
                    )
                }
                Err(e) => {
                    return self.result(
                        "bcd",
                        &rel,
                        ActionStatus::Refused,
                        format!("{e}; nothing was changed"),
                    )
                }
            };
        let before = journal::sha256_bytes(&bytes);
        let after = journal::sha256_bytes(&edited);
        let mut r = self.result(
            "bcd",
            &rel,
            ActionStatus::Planned,
            "would remove the default entry's safeboot element (25000080), the store copied into the vault first",
        );
        r.sha256_before = Some(before.clone());
        r.sha256_after = Some(after.clone());
        if !self.writing {
            return r;
        }
        let mut vault_rel = PathBuf::new();
        if f.volume == crate::journal::Volume::System {
            vault_rel.push("system-partition");
        }
        for c in f.rel.split('\\') {
            vault_rel.push(c);
        }
        let outcome = (|| -> Result<String> {
            let rd = self.run_dir()?;
            let vault = rd.vault_path(&vault_rel);
            let vrel = rd.rel_to_run(&vault);
            let mut step = Step::new(Op::Bcd, &pb.id, &f.rel);
            step.volume = (f.volume == crate::journal::Volume::System).then_some(f.volume);
            step.vault = Some(vrel.clone());
            step.sha256_before = Some(before.clone());
            step.sha256_after = Some(after.clone());
            step.source = Some("default entry: safeboot element removed".into());
            rd.step(step, || {
                journal::create_verified(&vault, &bytes)?;
                // The store must still be what was planned on.
                let now = journal::sha256_file(&f.path)?;
                if now != before {
                    bail!("{} changed while defib ran (now {now}); not edited", rel);
                }
                journal::replace_verified(&f.path, &edited)?;
                let back = std::fs::read(&f.path)?;
                let rep = crate::bcd::read(&back)
                    .map_err(|e| anyhow::anyhow!("the written store does not parse: {e}"))?;
                if rep.default_entry.and_then(|e| e.safeboot).is_some() {
                    bail!("the written store still has safeboot set");
                }
                Ok(())
            })?;
            Ok(vrel)
        })();
        match outcome {
            Ok(v) => {
                r.status = ActionStatus::Done;
                r.detail = "safeboot removed from the default entry; written, read back and parsed again; the original is in the vault".into();
                r.vault = Some(v);
            }
            Err(e) => {
                r.status = ActionStatus::Failed;
                r.detail = format!("{e:#}");
            }
        }
        r
    }

    pub(super) fn result(
        &self,
        kind: &str,
        path: &str,
        status: ActionStatus,
        detail: impl Into<String>,
    ) -> ActionResult {
        ActionResult {
            kind: kind.into(),
            path: path.into(),
            status,
            detail: detail.into(),
            source: None,
            sha256_before: None,
            sha256_after: None,
            vault: None,
        }
    }

    /// Moves one file into the vault.
    pub(super) fn neutralize(&mut self, pb: &Playbook, p: &Path) -> ActionResult {
        let rel = winpath::display_rel(self.root(), p);
        let before = match journal::sha256_file(p) {
            Ok(h) => h,
            Err(e) => {
                return self.result(
                    "neutralize",
                    &rel,
                    ActionStatus::Refused,
                    format!("cannot read it to back it up ({e:#}); left in place"),
                )
            }
        };
        let mut r = self.result(
            "neutralize",
            &rel,
            ActionStatus::Planned,
            "would move into the vault",
        );
        r.sha256_before = Some(before.clone());
        if !self.writing {
            return r;
        }
        let relpath = p.strip_prefix(self.root()).unwrap_or(p).to_path_buf();
        let outcome = (|| -> Result<String> {
            let rd = self.run_dir()?;
            let vault = rd.vault_path(&relpath);
            let vrel = rd.rel_to_run(&vault);
            let step = Step {
                seq: 0,
                state: StepState::Intent,
                op: Op::Neutralize,
                playbook: pb.id.clone(),
                path: rel.clone(),
                volume: None,
                vault: Some(vrel.clone()),
                sha256_before: Some(before.clone()),
                sha256_after: None,
                source: None,
                error: None,
                time: utc_now(),
                run: None,
            };
            rd.step(step, || {
                journal::move_noreplace(p, &vault)?;
                let h = journal::sha256_file(&vault)?;
                if h != before {
                    bail!("the vault copy reads back as {h}, expected {before}");
                }
                Ok(())
            })?;
            Ok(vrel)
        })();
        match outcome {
            Ok(v) => {
                r.status = ActionStatus::Done;
                r.detail = "moved into the vault".into();
                r.vault = Some(v);
            }
            Err(e) => {
                r.status = ActionStatus::Failed;
                r.detail = format!("{e:#}");
            }
        }
        r
    }

    pub(super) fn restore(
        &mut self,
        pb: &Playbook,
        path: &str,
        sources: &[Source],
        matched: &BTreeMap<String, Vec<PathBuf>>,
    ) -> ActionResult {
        let parts = match self.split(path) {
            Ok(p) => p,
            Err(e) => return self.result("restore", path, ActionStatus::Refused, format!("{e:#}")),
        };
        let existing = match winpath::resolve(self.root(), &parts) {
            Ok(e) => e,
            Err(e) => return self.result("restore", path, ActionStatus::Refused, format!("{e:#}")),
        };
        // A file present and not matched as bad by a condition is left alone.
        if let Some(p) = &existing {
            let bad = matched.values().any(|v| v.contains(p));
            if !bad {
                let mut r = self.result(
                    "restore",
                    &winpath::display_rel(self.root(), p),
                    ActionStatus::Skipped,
                    "present; left as it is",
                );
                r.sha256_before = journal::sha256_file(p).ok();
                return r;
            }
        }
        let (copy, tried) = self.find_copy(&parts, sources);
        let Some((data, source)) = copy else {
            return self.result(
                "restore",
                &parts.join("\\"),
                ActionStatus::Refused,
                format!(
                    "no verified good copy for this build and architecture: {}",
                    tried.join("; ")
                ),
            );
        };
        let mut r = self.place(pb, Op::Restore, "restore", &parts, existing, data, source);
        // The audit trail keeps the copies passed over on the way (a
        // quarantined file for another build, an unreadable record), not
        // only the one used.
        if !tried.is_empty() {
            r.detail = format!("{}; passed over first: {}", r.detail, tried.join("; "));
        }
        r
    }

    pub(super) fn drop_in(
        &mut self,
        pb: &Playbook,
        path: &str,
        name: &str,
        optional: bool,
    ) -> ActionResult {
        let parts = match self.split(path) {
            Ok(p) => p,
            Err(e) => return self.result("drop-in", path, ActionStatus::Refused, format!("{e:#}")),
        };
        let entries = self.t.store.by_name(name);
        let Some(e) = entries.first() else {
            let status = if optional {
                ActionStatus::Skipped
            } else {
                ActionStatus::Refused
            };
            return self.result(
                "drop-in",
                path,
                status,
                format!("the store has no entry named {name:?}"),
            );
        };
        let data = match self.t.store.read_verified(e) {
            Ok(d) => d,
            Err(err) => {
                return self.result("drop-in", path, ActionStatus::Refused, format!("{err:#}"))
            }
        };
        let existing = match winpath::resolve(self.root(), &parts) {
            Ok(e) => e,
            Err(e) => return self.result("drop-in", path, ActionStatus::Refused, format!("{e:#}")),
        };
        if let Some(p) = &existing {
            if journal::sha256_file(p).ok().as_deref() == Some(e.sha256.as_str()) {
                return self.result(
                    "drop-in",
                    &winpath::display_rel(self.root(), p),
                    ActionStatus::Skipped,
                    "already in place",
                );
            }
        }
        let source = format!(
            "known-good store {name} ({})",
            &e.sha256[..12.min(e.sha256.len())]
        );
        self.place(pb, Op::DropIn, "drop-in", &parts, existing, data, source)
    }

    /// Writes `data` at `parts`, backing up what was there into the vault.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn place(
        &mut self,
        pb: &Playbook,
        op: Op,
        kind: &str,
        parts: &[String],
        existing: Option<PathBuf>,
        data: Vec<u8>,
        source: String,
    ) -> ActionResult {
        let target = match &existing {
            Some(p) => p.clone(),
            None => match winpath::resolve_for_create(self.root(), parts) {
                Ok(p) => p,
                Err(e) => {
                    return self.result(
                        kind,
                        &parts.join("\\"),
                        ActionStatus::Refused,
                        format!("{e:#}"),
                    )
                }
            },
        };
        let rel = winpath::display_rel(self.root(), &target);
        let want = journal::sha256_bytes(&data);
        let before = match &existing {
            Some(p) => match journal::sha256_file(p) {
                Ok(h) => Some(h),
                Err(e) => {
                    return self.result(
                        kind,
                        &rel,
                        ActionStatus::Refused,
                        format!("cannot read the file there to back it up ({e:#})"),
                    )
                }
            },
            None => None,
        };
        let mut r = self.result(
            kind,
            &rel,
            ActionStatus::Planned,
            format!("would write from {source}"),
        );
        r.source = Some(source.clone());
        r.sha256_before = before.clone();
        r.sha256_after = Some(want.clone());
        if !self.writing {
            return r;
        }
        let relpath = target
            .strip_prefix(self.root())
            .unwrap_or(&target)
            .to_path_buf();
        let outcome = (|| -> Result<Option<String>> {
            let rd = self.run_dir()?;
            let vault = existing.as_ref().map(|_| rd.vault_path(&relpath));
            let vrel = vault.as_ref().map(|v| rd.rel_to_run(v));
            let step = Step {
                seq: 0,
                state: StepState::Intent,
                op,
                playbook: pb.id.clone(),
                path: rel.clone(),
                volume: None,
                vault: vrel.clone(),
                sha256_before: before.clone(),
                sha256_after: Some(want.clone()),
                source: Some(source.clone()),
                error: None,
                time: utc_now(),
                run: None,
            };
            rd.step(step, || {
                if let (Some(p), Some(v)) = (&existing, &vault) {
                    journal::move_noreplace(p, v)?;
                }
                journal::create_verified(&target, &data)?;
                Ok(())
            })?;
            Ok(vrel)
        })();
        match outcome {
            Ok(v) => {
                r.status = ActionStatus::Done;
                r.detail = format!("written from {source} and verified");
                r.vault = v;
            }
            Err(e) => {
                r.status = ActionStatus::Failed;
                r.detail = format!("{e:#}");
            }
        }
        r
    }
}

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

use crate::journal::{self, Op, RunDir, Step, StepState};
use crate::playbook::{Action, Arch, Condition, FileTest, Hive, Playbook, RegValue, Source};
use crate::store::Store;
use crate::windows::WindowsInstall;
use crate::winpath;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Whether the engine may write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Evaluate and plan; write nothing.
    Scan,
    /// Carry the actions out.
    Fix,
}

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

/// Everything the engine needs for one installation.
pub struct Target<'a> {
    /// The volume root (mount point).
    pub root: &'a Path,
    pub install: &'a WindowsInstall,
    pub store: &'a Store,
    pub mode: Mode,
    pub run_id: &'a str,
}

/// Runs every playbook against one installation. The run folder on the
/// victim is created only when a fix actually writes.
pub fn run(t: &Target, playbooks: &[Playbook]) -> Result<Vec<PlaybookResult>> {
    let mut ctx = Ctx {
        t,
        run_dir: None,
        writing: false,
        hives: BTreeMap::new(),
    };
    let mut out = Vec::new();
    for pb in playbooks {
        out.push(ctx.playbook(pb));
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

/// mtime of a file in seconds since the epoch.
fn mtime(p: &Path) -> Result<i64> {
    let m = std::fs::metadata(p).with_context(|| format!("reading {}", p.display()))?;
    let t = m
        .modified()
        .with_context(|| format!("reading the time of {}", p.display()))?;
    Ok(match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    })
}

fn leading(p: &Path, n: usize) -> Result<Vec<u8>> {
    use std::io::Read;
    let mut f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        let k = f
            .read(&mut buf[got..])
            .with_context(|| format!("reading {}", p.display()))?;
        if k == 0 {
            break;
        }
        got += k;
    }
    buf.truncate(got);
    Ok(buf)
}

/// Does the file pass every field of the test? Errors (unreadable file,
/// e.g. WOF-compressed under ntfs3: EOPNOTSUPP) propagate.
pub fn file_test(p: &Path, t: &FileTest) -> Result<bool> {
    if let Some(size) = t.size {
        if std::fs::metadata(p)
            .with_context(|| format!("reading {}", p.display()))?
            .len()
            != size
        {
            return Ok(false);
        }
    }
    if t.mtime_from.is_some() || t.mtime_before.is_some() {
        let m = mtime(p)?;
        if let Some(from) = &t.mtime_from {
            if m < crate::playbook::parse_instant(from)? {
                return Ok(false);
            }
        }
        if let Some(before) = &t.mtime_before {
            if m >= crate::playbook::parse_instant(before)? {
                return Ok(false);
            }
        }
    }
    if let Some(lb) = &t.leading_bytes {
        let want = crate::playbook::parse_hex(lb)?;
        if leading(p, want.len())? != want {
            return Ok(false);
        }
    }
    if !t.sha256.is_empty() {
        let h = journal::sha256_file(p)?;
        if !t.sha256.contains(&h) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn utc_now() -> String {
    crate::report::rfc3339(std::time::SystemTime::now())
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
        } else {
            r.status = if ok {
                Status::Found
            } else {
                Status::NeedsAttention
            };
        }
        r.reason = match r.status {
            Status::NeedsAttention => {
                "an action could not be carried out safely; see actions".into()
            }
            Status::Found => {
                "affected: boot 'Repair automatically' (or run rescue fix) to repair".into()
            }
            _ => "repaired and verified".into(),
        };
        r
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
                    ActionStatus::Refused | ActionStatus::Failed => ok = false,
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

    fn condition(&mut self, c: &Condition) -> (ConditionResult, Option<Vec<PathBuf>>) {
        let mut cr = ConditionResult {
            id: c.id().to_string(),
            kind: match c {
                Condition::Files { .. } => "files",
                Condition::Missing { .. } => "missing",
                Condition::Registry { .. } => "registry",
                Condition::Quarantine { .. } => "quarantine",
            }
            .into(),
            held: false,
            detail: String::new(),
            matched: Vec::new(),
            error: false,
        };
        let res: Result<Option<Vec<PathBuf>>> = (|| match c {
            Condition::Files {
                glob,
                match_any,
                except_any,
                ..
            } => {
                let parts = self.split(glob)?;
                let mut hits = Vec::new();
                for p in winpath::glob(self.root(), &parts)? {
                    if !p.is_file() {
                        continue;
                    }
                    let mut any = match_any.is_empty();
                    for t in match_any {
                        if file_test(&p, t)? {
                            any = true;
                            break;
                        }
                    }
                    let mut except = false;
                    for t in except_any {
                        if file_test(&p, t)? {
                            except = true;
                            break;
                        }
                    }
                    if any && !except {
                        hits.push(p);
                    }
                }
                cr.matched = hits
                    .iter()
                    .map(|p| winpath::display_rel(self.root(), p))
                    .collect();
                cr.held = !hits.is_empty();
                cr.detail = if hits.is_empty() {
                    format!("no file matches {glob}")
                } else {
                    format!("{} file(s) match", hits.len())
                };
                Ok(Some(hits))
            }
            Condition::Missing { path, .. } => {
                let found = winpath::resolve(self.root(), &self.split(path)?)?;
                cr.held = found.is_none();
                cr.detail = match found {
                    Some(p) => format!("{} is present", winpath::display_rel(self.root(), &p)),
                    None => format!("{path} is missing"),
                };
                Ok(None)
            }
            Condition::Registry {
                hive,
                key,
                value,
                equals,
                min,
                max,
                ..
            } => {
                let data = self.reg_value(*hive, key, value)?;
                let Some(data) = data else {
                    cr.detail = format!("{key}\\{value} is not set");
                    return Ok(None);
                };
                let text = data.as_string();
                let num = data.as_u64();
                let mut ok = equals.is_empty()
                    || equals.iter().any(|e| match e {
                        RegValue::Number(n) => num == Some(*n),
                        RegValue::Text(t) => text
                            .as_deref()
                            .is_some_and(|s| s.trim().eq_ignore_ascii_case(t.trim())),
                    });
                if let Some(m) = min {
                    ok &= num.is_some_and(|n| n >= *m);
                }
                if let Some(m) = max {
                    ok &= num.is_some_and(|n| n <= *m);
                }
                cr.held = ok;
                cr.detail = format!(
                    "{key}\\{value} = {}",
                    text.or(num.map(|n| n.to_string()))
                        .unwrap_or_else(|| "(binary)".into())
                );
                Ok(None)
            }
            Condition::Quarantine { original, .. } => {
                let root = self.root().to_path_buf();
                let (found, errs) = crate::bup::scan_quarantine(&root);
                let mut hits: Vec<String> = Vec::new();
                for (p, b) in &found {
                    for e in b
                        .entries
                        .iter()
                        .filter(|e| glob_windows(original, &e.original_name))
                    {
                        hits.push(format!(
                            "{} ({})",
                            winpath::display_rel(&root, p),
                            e.original_name
                        ));
                    }
                }
                cr.held = !hits.is_empty();
                cr.detail = if hits.is_empty() {
                    format!(
                        "no quarantined file matches {original}{}",
                        if errs.is_empty() {
                            String::new()
                        } else {
                            format!(" ({} unreadable quarantine files)", errs.len())
                        }
                    )
                } else {
                    hits.join("; ")
                };
                Ok(None)
            }
        })();
        match res {
            Ok(files) => (cr, files),
            Err(e) => {
                cr.error = true;
                cr.held = false;
                cr.detail = format!("could not evaluate: {e:#}");
                (cr, None)
            }
        }
    }

    fn reg_value(
        &mut self,
        hive: Hive,
        key: &str,
        value: &str,
    ) -> Result<Option<crate::winreg::RegData>> {
        let name = match hive {
            Hive::Software => "SOFTWARE",
            Hive::System => "SYSTEM",
        };
        if !self.hives.contains_key(name) {
            let parts = self.split(&format!("Windows\\System32\\config\\{name}"))?;
            let h = match winpath::resolve(self.root(), &parts)? {
                Some(p) => crate::winreg::Hive::open(&p).map_err(|e| format!("{e:#}")),
                None => Err(format!("no {name} hive")),
            };
            self.hives.insert(name, h);
        }
        match &self.hives[name] {
            Ok(h) => h.value(key, value),
            Err(e) => bail!("{e}"),
        }
    }

    fn run_dir(&mut self) -> Result<&mut RunDir> {
        if self.run_dir.is_none() {
            self.run_dir = Some(RunDir::create(self.t.root, self.t.run_id)?);
        }
        Ok(self.run_dir.as_mut().expect("just created"))
    }

    fn action(
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
        }
    }

    fn result(
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
    fn neutralize(&mut self, pb: &Playbook, p: &Path) -> ActionResult {
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
                vault: Some(vrel.clone()),
                sha256_before: Some(before.clone()),
                sha256_after: None,
                source: None,
                error: None,
                time: utc_now(),
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

    /// Checks a candidate copy of a system file taken from the victim
    /// itself: PE architecture and file-version build must match.
    fn own_copy_ok(&self, data: &[u8]) -> std::result::Result<String, String> {
        let w = self.t.install;
        let info = crate::pe::pe_info(data).map_err(|e| format!("not a PE file: {e:#}"))?;
        let (Some(arch), Some(build)) = (w.arch, w.build) else {
            return Err("the installation's build or architecture is unknown".into());
        };
        if info.arch != arch {
            return Err(format!(
                "it is {}, Windows is {}",
                info.arch.as_str(),
                arch.as_str()
            ));
        }
        let Some(v) = info.file_version else {
            return Err("it has no file version".into());
        };
        if !same_servicing(u32::from(v[2]), build) {
            return Err(format!(
                "its version {} is not for build {build}",
                crate::pe::version_string(v)
            ));
        }
        Ok(crate::pe::version_string(v))
    }

    /// Finds a verified good copy for `parts` from the sources, in order.
    fn find_copy(
        &self,
        parts: &[String],
        sources: &[Source],
    ) -> (Option<(Vec<u8>, String)>, Vec<String>) {
        let mut tried = Vec::new();
        let w = self.t.install;
        let file_name = parts.last().cloned().unwrap_or_default();
        let wanted_path = parts.join("\\");
        for s in sources {
            match s {
                Source::McafeeQuarantine => {
                    let (found, errs) = crate::bup::scan_quarantine(self.root());
                    for (p, e) in &errs {
                        tried.push(format!(
                            "quarantine {}: unreadable ({e})",
                            winpath::display_rel(self.root(), p)
                        ));
                    }
                    for (p, b) in &found {
                        for e in &b.entries {
                            let orig = strip_drive(&e.original_name);
                            let oparts = self.windows_dir_parts(
                                &crate::playbook::split_path(&orig).unwrap_or_default(),
                            );
                            if oparts.len() != parts.len()
                                || !oparts
                                    .iter()
                                    .zip(parts)
                                    .all(|(a, b)| winpath::name_eq(a, b))
                            {
                                continue;
                            }
                            let at = format!(
                                "McAfee quarantine {}",
                                winpath::display_rel(self.root(), p)
                            );
                            let data = std::fs::read(p)
                                .map_err(anyhow::Error::from)
                                .and_then(|bytes| crate::bup::extract(&bytes, e));
                            match data {
                                Ok(d) => match self.own_copy_ok(&d) {
                                    Ok(v) => {
                                        return (Some((d, format!("{at} (version {v})"))), tried)
                                    }
                                    Err(why) => tried.push(format!("{at}: {why}")),
                                },
                                Err(err) => tried.push(format!("{at}: {err:#}")),
                            }
                        }
                    }
                    if found.is_empty() && errs.is_empty() {
                        tried.push("McAfee quarantine: none found".into());
                    }
                }
                Source::Dllcache | Source::ServicePackFiles => {
                    let sub: &[&str] = if *s == Source::Dllcache {
                        &["system32", "dllcache"]
                    } else {
                        &["ServicePackFiles", "i386"]
                    };
                    let mut cp = vec![w.windows_dir.clone()];
                    cp.extend(sub.iter().map(|x| x.to_string()));
                    cp.push(file_name.clone());
                    let label = cp.join("\\");
                    match winpath::resolve(self.root(), &cp) {
                        Ok(Some(p)) => match std::fs::read(&p) {
                            Ok(d) => match self.own_copy_ok(&d) {
                                Ok(v) => {
                                    return (
                                        Some((
                                            d,
                                            format!(
                                                "{} (version {v})",
                                                winpath::display_rel(self.root(), &p)
                                            ),
                                        )),
                                        tried,
                                    )
                                }
                                Err(why) => tried.push(format!("{label}: {why}")),
                            },
                            Err(e) => tried.push(format!("{label}: unreadable ({e})")),
                        },
                        Ok(None) => tried.push(format!("{label}: absent")),
                        Err(e) => tried.push(format!("{label}: {e:#}")),
                    }
                }
                Source::Winsxs => match self.winsxs_copy(&file_name) {
                    Ok(Some(found)) => return (Some(found), tried),
                    Ok(None) => tried.push(
                        "WinSxS: no component with this file for this build and architecture"
                            .into(),
                    ),
                    Err(e) => tried.push(format!("WinSxS: {e:#}")),
                },
                Source::Store => {
                    let (Some(build), Some(arch)) = (w.build, w.arch) else {
                        tried.push("store: build or architecture unknown".into());
                        continue;
                    };
                    let cands = self.t.store.candidates(
                        build,
                        w.ubr,
                        arch,
                        w.service_pack.as_deref(),
                        &wanted_path,
                    );
                    if cands.is_empty() {
                        tried.push(format!(
                            "store: no entry for {wanted_path} on build {build} {}",
                            arch.as_str()
                        ));
                    }
                    // Two different files claiming the same Windows and path
                    // (another language, another hotfix level): not guessing.
                    let hashes: BTreeSet<&str> = cands.iter().map(|e| e.sha256.as_str()).collect();
                    if hashes.len() > 1 {
                        tried.push(format!(
                            "store: {} different files claim {wanted_path} for this build ({}); not choosing",
                            hashes.len(),
                            hashes.iter().map(|h| &h[..12.min(h.len())]).collect::<Vec<_>>().join(", ")
                        ));
                        continue;
                    }
                    for e in cands {
                        match self.t.store.read_verified(e) {
                            Ok(d) => {
                                return (
                                    Some((
                                        d,
                                        format!(
                                            "known-good store {} ({})",
                                            &e.sha256[..12],
                                            e.source
                                        ),
                                    )),
                                    tried,
                                )
                            }
                            Err(err) => tried.push(format!(
                                "store {}: {err:#}",
                                &e.sha256[..12.min(e.sha256.len())]
                            )),
                        }
                    }
                }
            }
        }
        (None, tried)
    }

    /// Vista and later: the file's hard link in the component store,
    /// `WinSxS\<arch>_<name>_<token>_<version>_<lang>_<hash>\<file>`, for
    /// this architecture and build; the highest revision not above UBR wins.
    fn winsxs_copy(&self, file_name: &str) -> Result<Option<(Vec<u8>, String)>> {
        let w = self.t.install;
        let (Some(arch), Some(build)) = (w.arch, w.build) else {
            return Ok(None);
        };
        let prefix = match arch {
            Arch::X86 => "x86_",
            Arch::X64 => "amd64_",
            Arch::Arm64 => "arm64_",
        };
        let Some(sxs) = winpath::resolve(self.root(), &[w.windows_dir.clone(), "WinSxS".into()])?
        else {
            return Ok(None);
        };
        let mut best: Option<(u16, PathBuf)> = None;
        for e in std::fs::read_dir(&sxs).with_context(|| format!("listing {}", sxs.display()))? {
            let e = e?;
            let name = e.file_name().to_string_lossy().to_lowercase();
            if !name.starts_with(prefix) {
                continue;
            }
            // The version is the fourth '_' field: a.b.build.rev
            let Some(ver) = name.split('_').nth(3) else {
                continue;
            };
            let v: Vec<u32> = ver.split('.').filter_map(|x| x.parse().ok()).collect();
            if v.len() != 4 || !same_servicing(v[2], build) {
                continue;
            }
            if w.ubr.is_some_and(|u| v[3] > u) {
                continue;
            }
            let Some(f) = winpath::child(&e.path(), file_name)? else {
                continue;
            };
            if best.as_ref().is_none_or(|(r, _)| (v[3] as u16) > *r) {
                best = Some((v[3] as u16, f));
            }
        }
        let Some((_, p)) = best else { return Ok(None) };
        let d = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        match self.own_copy_ok(&d) {
            Ok(v) => Ok(Some((
                d,
                format!("{} (version {v})", winpath::display_rel(self.root(), &p)),
            ))),
            Err(why) => bail!("{}: {why}", winpath::display_rel(self.root(), &p)),
        }
    }

    fn restore(
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
        self.place(pb, Op::Restore, "restore", &parts, existing, data, source)
    }

    fn drop_in(&mut self, pb: &Playbook, path: &str, name: &str, optional: bool) -> ActionResult {
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
    fn place(
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
                vault: vrel.clone(),
                sha256_before: before.clone(),
                sha256_after: Some(want.clone()),
                source: Some(source.clone()),
                error: None,
                time: utc_now(),
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

#[cfg(test)]
#[path = "engine_tests.rs"]
pub(crate) mod tests;

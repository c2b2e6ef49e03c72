//! Conditions: does the damage a playbook describes exist on this
//! installation (files by glob and test, registry values, quarantine
//! records)? Reading only; nothing here writes.

use super::*;
use crate::journal::{self};
use crate::playbook::{Condition, FileTest, Hive, RegValue};
use crate::winpath;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

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

impl Ctx<'_> {
    pub(super) fn condition(&mut self, c: &Condition) -> (ConditionResult, Option<Vec<PathBuf>>) {
        let mut cr = ConditionResult {
            id: c.id().to_string(),
            kind: match c {
                Condition::Files { .. } => "files",
                Condition::Missing { .. } => "missing",
                Condition::NoFiles { .. } => "no-files",
                Condition::Bcd { .. } => "bcd",
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
                let hits = self.matching_files(glob, match_any, except_any)?;
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
            Condition::NoFiles {
                glob,
                match_any,
                except_any,
                ..
            } => {
                let hits = self.matching_files(glob, match_any, except_any)?;
                cr.matched = hits
                    .iter()
                    .map(|p| winpath::display_rel(self.root(), p))
                    .collect();
                cr.held = hits.is_empty();
                cr.detail = if hits.is_empty() {
                    format!("no file matches {glob}")
                } else {
                    format!("{} file(s) still match", hits.len())
                };
                Ok(None)
            }
            Condition::Bcd { safeboot, .. } => {
                // No store at all is an answer (a pre-Vista Windows, or a
                // host run without --esp), not an error: the condition
                // does not hold. A store that cannot be read is an error.
                let Some(f) = crate::boothealth::find_bcd(self.root(), self.t.system)? else {
                    cr.detail = match self.t.system {
                        Some(_) => "no BCD store on the system partition or the Windows volume".into(),
                        None => "no BCD store on the Windows volume and no system partition (in host mode pass --esp DIR)".into(),
                    };
                    return Ok(None);
                };
                let (bytes, _) = crate::boothealth::read_store(&f)?;
                let rep = crate::guard::contain("BCD", || crate::bcd::read(&bytes))
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .with_context(|| format!("reading {}", f.describe()))?;
                let set = rep.default_entry.as_ref().and_then(|e| e.safeboot);
                cr.held = set.is_some() == *safeboot;
                cr.detail = match (&rep.default_id, set) {
                    (None, _) => format!("{} names no default boot entry", f.describe()),
                    (Some(id), Some(s)) => format!("default entry {id} has safeboot {s:?}"),
                    (Some(id), None) => format!("default entry {id} has no safeboot"),
                };
                Ok(None)
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
            Condition::Quarantine {
                vendor,
                original,
                detection,
                ..
            } => {
                let root = self.root().to_path_buf();
                let vendor = *vendor;
                // Every reader is hostile-input safe and never panics by
                // promise; the guard is for when one still does (PID 1
                // reboots on a panic) — then the condition is an error.
                let scan = crate::guard::contain("scanning quarantines", || {
                    if vendor == crate::quarantine::Vendor::Any {
                        crate::quarantine::scan_all(&root)
                    } else {
                        crate::quarantine::reader_for(vendor)
                            .map(|r| r.scan(&root))
                            .unwrap_or_default()
                    }
                })
                .map_err(|e| anyhow::anyhow!("{e}"))?;
                let hits: Vec<String> = scan
                    .entries
                    .iter()
                    .filter(|e| e.vendor.matches(vendor))
                    .filter(|e| glob_windows(original, &e.original_path))
                    .filter(|e| match detection {
                        None => true,
                        Some(g) => e
                            .detection
                            .as_deref()
                            .is_some_and(|d| winpath::glob_match(g, d)),
                    })
                    .map(|e| {
                        let det = e
                            .detection
                            .as_deref()
                            .map(|d| format!(", {d}"))
                            .unwrap_or_default();
                        format!(
                            "{} {} ({}{det})",
                            e.vendor,
                            e.record.display(),
                            e.original_path
                        )
                    })
                    .collect();
                let unreadable = scan.unreadable.len();
                cr.held = !hits.is_empty();
                cr.detail = if hits.is_empty() {
                    format!(
                        "no {vendor} quarantine entry matches {original}{}{}",
                        detection
                            .as_deref()
                            .map(|d| format!(" with detection {d}"))
                            .unwrap_or_default(),
                        if unreadable == 0 {
                            String::new()
                        } else {
                            format!(" ({unreadable} unreadable quarantine records)")
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

    /// Files matching `glob` that pass any of `match_any` (any file when
    /// empty) and none of `except_any`.
    fn matching_files(
        &self,
        glob: &str,
        match_any: &[FileTest],
        except_any: &[FileTest],
    ) -> Result<Vec<PathBuf>> {
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
        Ok(hits)
    }

    pub(super) fn reg_value(
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
                // Logs replayed in memory: a condition decided on the base
                // file alone could read a value the crash loop superseded.
                Some(p) => crate::guard::contain(name, || crate::hivelog::open_hive(&p))
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map(|(h, _)| h).map_err(|e| format!("{e:#}"))),
                None => Err(format!("no {name} hive")),
            };
            self.hives.insert(name, h);
        }
        match &self.hives[name] {
            Ok(h) => h.value(key, value),
            Err(e) => bail!("{e}"),
        }
    }
}

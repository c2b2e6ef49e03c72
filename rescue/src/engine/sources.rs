//! Where a good copy of a system file comes from: the known-good store,
//! the victim's own copies (vendor quarantines, dllcache, service pack
//! files, WinSxS), each checked against the installation's architecture
//! and build. Every copy passed over is named, with why, for the report.
//!
//! Finding only; placing the copy is `actions`. Not a quarantine reader
//! either: the formats are `crate::quarantine`'s, reached only through
//! `scan`/`extract` under the panic guard; this module never writes to a
//! quarantine.

use super::*;
use crate::playbook::{Arch, Source};
use crate::quarantine::{QuarantineEntry, Scan, Vendor};
use crate::winpath;
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::path::PathBuf;

impl Ctx<'_> {
    /// Checks a candidate copy of a system file taken from the victim
    /// itself: PE architecture and file-version build must match.
    pub(super) fn own_copy_ok(&self, data: &[u8]) -> std::result::Result<String, String> {
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
    pub(super) fn find_copy(
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
                // `mcafee-quarantine` now goes through the quarantine
                // module's VSE adapter, the same path as every vendor:
                // the adapter reads the same folders with bup's own parser,
                // but adds what the old direct call lacked (a size cap on
                // the record, refusal of records reached through a link,
                // the panic guard). The label stays "McAfee quarantine" so
                // reports read as before.
                Source::McafeeQuarantine => {
                    if let Some(found) =
                        self.quarantine_copy(parts, Vendor::McafeeVse, None, &mut tried)
                    {
                        return (Some(found), tried);
                    }
                }
                Source::Quarantine { vendor, detection } => {
                    if let Some(found) =
                        self.quarantine_copy(parts, *vendor, detection.as_deref(), &mut tried)
                    {
                        return (Some(found), tried);
                    }
                }
                // Refused by Playbook::validate; a playbook built in code
                // could still carry one.
                Source::Invalid { msg, .. } => tried.push(format!("invalid source: {msg}")),
                Source::Dllcache | Source::ServicePackFiles => {
                    let sub: &[&str] = if matches!(s, Source::Dllcache) {
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

    /// A copy of `parts` from a vendor's quarantine (every readable
    /// vendor for [`Vendor::Any`]): entries whose recorded original path,
    /// drive and `\\?\` prefixes stripped and the Windows folder mapped to
    /// this installation's, names the file (without case), and whose
    /// detection name matches `detection` when one is given. Each is
    /// extracted under the panic guard and accepted only if it passes
    /// [`Self::own_copy_ok`], like any copy taken from the victim. Every
    /// refusal, skip and unreadable record goes into `tried`, naming the
    /// vendor and the record.
    pub(super) fn quarantine_copy(
        &self,
        parts: &[String],
        vendor: Vendor,
        detection: Option<&str>,
        tried: &mut Vec<String>,
    ) -> Option<(Vec<u8>, String)> {
        let root = self.root();
        let name = |v: Vendor| match v {
            // Reports have always said "McAfee quarantine" for .bup files.
            Vendor::McafeeVse => "McAfee quarantine".to_string(),
            v => format!("{v} quarantine"),
        };
        // The readers promise not to panic; the guard is for when one
        // still does on a hostile record (PID 1 reboots on a panic).
        let scan = crate::guard::contain("scanning quarantines", || {
            if vendor == Vendor::Any {
                crate::quarantine::scan_all(root)
            } else {
                crate::quarantine::reader_for(vendor)
                    .map(|r| r.scan(root))
                    .unwrap_or_default()
            }
        });
        let scan: Scan = match scan {
            Ok(s) => s,
            Err(e) => {
                tried.push(format!("{}: {e}", name(vendor)));
                return None;
            }
        };
        for u in &scan.unreadable {
            tried.push(format!(
                "{} {}: unreadable ({})",
                name(u.vendor),
                u.path.display(),
                u.reason
            ));
        }
        let mut considered = 0;
        for e in scan.entries.iter().filter(|e| e.vendor.matches(vendor)) {
            if !self.names_file(e, parts) {
                continue;
            }
            considered += 1;
            let at = format!("{} {}", name(e.vendor), e.record.display());
            if let Some(glob) = detection {
                match e.detection.as_deref() {
                    Some(d) if winpath::glob_match(glob, d) => {}
                    Some(d) => {
                        tried.push(format!(
                            "{at}: detection {d:?} does not match {glob:?}; skipped"
                        ));
                        continue;
                    }
                    None => {
                        tried.push(format!(
                            "{at}: no detection name recorded, {glob:?} cannot be checked; skipped"
                        ));
                        continue;
                    }
                }
            }
            let what = format!("extracting {at}");
            let data = crate::guard::contain(&what, || crate::quarantine::extract(root, e));
            match data {
                Ok(Ok(d)) => match self.own_copy_ok(&d) {
                    Ok(v) => return Some((d, format!("{at} (version {v})"))),
                    Err(why) => tried.push(format!("{at}: {why}")),
                },
                Ok(Err(err)) => tried.push(format!("{at}: {err:#}")),
                Err(contained) => tried.push(contained.to_string()),
            }
        }
        if considered == 0 {
            tried.push(format!(
                "{}: no entry for {}",
                name(vendor),
                parts.join("\\")
            ));
        }
        None
    }

    /// Whether a quarantine entry's recorded original path is `parts`.
    fn names_file(&self, e: &QuarantineEntry, parts: &[String]) -> bool {
        let orig = strip_drive(e.original_path.trim_start_matches(r"\??\"));
        let Ok(split) = crate::playbook::split_path(&orig) else {
            return false;
        };
        let oparts = self.windows_dir_parts(&split);
        oparts.len() == parts.len()
            && oparts
                .iter()
                .zip(parts)
                .all(|(a, b)| winpath::name_eq(a, b))
    }

    /// Vista and later: the file's hard link in the component store,
    /// `WinSxS\<arch>_<name>_<token>_<version>_<lang>_<hash>\<file>`, for
    /// this architecture and build; the highest revision not above UBR wins.
    pub(super) fn winsxs_copy(&self, file_name: &str) -> Result<Option<(Vec<u8>, String)>> {
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
}

//! Where a good copy of a system file comes from: the known-good store,
//! the victim's own copies (quarantine, dllcache, service pack files,
//! WinSxS), each checked against the installation's architecture and build.
//! Finding only; placing the copy is `actions`.

use super::*;
use crate::playbook::{Arch, Source};
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

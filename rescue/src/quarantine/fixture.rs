//! Test support: put quarantine records into a Windows volume tree the way
//! each vendor lays them out, for victim disks and tests (a Windows XP
//! victim whose `user32.dll` sits only in AVG's chest, a Windows 10 victim
//! whose file sits in Defender's quarantine). The records come from the
//! vendor modules' writers ([`super::defender::write_record`],
//! [`super::avast::write_chest`] …), which the corpus tests check against
//! real records.
//!
//! This is NOT used by the rescue at run time: it writes to the volume,
//! which a rescue never does to a quarantine.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

use super::{avast, defender, util};

/// Which product's chest folder to fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chest {
    /// AVG on Windows XP: `Documents and Settings\All Users\Application Data\AVG\Antivirus\chest`.
    AvgXp,
    /// AVG on Vista and later: `ProgramData\AVG\Antivirus\chest`.
    Avg,
    /// Avast on Windows XP.
    AvastXp,
    /// Avast on Vista and later: `ProgramData\Avast Software\Avast\chest`.
    Avast,
}

impl Chest {
    fn folder(self) -> &'static str {
        match self {
            Chest::AvgXp => "Documents and Settings/All Users/Application Data/AVG/Antivirus/chest",
            Chest::Avg => "ProgramData/AVG/Antivirus/chest",
            Chest::AvastXp => {
                "Documents and Settings/All Users/Application Data/Avast Software/Avast/chest"
            }
            Chest::Avast => "ProgramData/Avast Software/Avast/chest",
        }
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

/// Writes `items` — `(original Windows path, detection name, bytes)` — as
/// chest files with ids `00000001`, `00000002` … and their `index.xml`
/// (replacing any index there). Returns the chest folder.
pub fn install_chest(
    root: &Path,
    chest: Chest,
    items: &[(&str, &str, &[u8])],
    unix_time: i64,
) -> Result<PathBuf> {
    let ids: Vec<String> = (1..=items.len()).map(|i| format!("{i:08X}")).collect();
    let with_ids: Vec<(&str, &str, &str, &[u8])> = items
        .iter()
        .zip(&ids)
        .map(|((p, d, b), id)| (id.as_str(), *p, *d, *b))
        .collect();
    let w = avast::write_chest(&with_ids, unix_time)?;
    let dir = root.join(chest.folder());
    write(&dir.join("index.xml"), w.index_xml.as_bytes())?;
    for (id, bytes) in &w.files {
        write(&dir.join(id), bytes)?;
    }
    Ok(dir)
}

/// Writes one Defender record (Entries + ResourceData) under
/// `ProgramData\Microsoft\Windows Defender\Quarantine`. Returns the
/// ResourceData file, relative to `root`.
pub fn install_defender(
    root: &Path,
    original_path: &str,
    detection: &str,
    content: &[u8],
    filetime: u64,
) -> Result<PathBuf> {
    let q = root.join("ProgramData/Microsoft/Windows Defender/Quarantine");
    let w = defender::write_record(original_path, detection, content, filetime)?;
    write(&q.join(&w.entry_path), &w.entry)?;
    let res = q.join(&w.resource_path);
    write(&res, &w.resource)?;
    Ok(util::rel(root, &res))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quarantine::{scan_all, Vendor};

    const USER32: &str = r"C:\WINDOWS\system32\user32.dll";

    #[test]
    fn xp_victim_with_user32_only_in_avg_chest() {
        let t = tempfile::tempdir().expect("tempdir");
        let dll = b"MZ\x90\x00 user32 from XP SP3".to_vec();
        install_chest(
            t.path(),
            Chest::AvgXp,
            &[(USER32, "Win32:Trojan-gen", &dll)],
            1_272_000_000,
        )
        .expect("install");
        let s = scan_all(t.path());
        assert!(s.unreadable.is_empty(), "{:?}", s.unreadable);
        assert_eq!(s.entries.len(), 1);
        let e = &s.entries[0];
        assert_eq!(
            (e.vendor, e.original_path.as_str()),
            (Vendor::Avast, USER32)
        );
        assert_eq!(
            crate::quarantine::extract(t.path(), e).expect("extract"),
            dll
        );
    }

    #[test]
    fn win10_victim_with_a_file_in_defender() {
        let t = tempfile::tempdir().expect("tempdir");
        let path = r"C:\Windows\System32\drivers\CrowdStrike\C-00000291.sys";
        let rel = install_defender(
            t.path(),
            path,
            "Trojan:Win32/Wacatac.B!ml",
            b"sys",
            0x01da_d7a0_0000_0000,
        )
        .expect("install");
        let s = scan_all(t.path());
        assert!(s.unreadable.is_empty(), "{:?}", s.unreadable);
        assert_eq!(s.entries.len(), 1);
        assert_eq!(s.entries[0].record, rel);
        assert_eq!(s.entries[0].original_path, path);
        assert_eq!(
            crate::quarantine::extract(t.path(), &s.entries[0]).expect("extract"),
            b"sys"
        );
    }
}

//! Where reports go: the name a report takes on the medium, and the copy
//! in the victim's run folder (`report.json` and `report.txt`).

use super::{render_text, Report};
use anyhow::Result;
use std::path::{Path, PathBuf};

/// Reduces a machine name to `[A-Za-z0-9._-]` so it is safe as a FAT file
/// name: other characters become `_`, leading dots go, at most 64 chars.
pub fn sanitize_name(raw: &str) -> String {
    let s: String = raw
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    let s = s.trim_start_matches('.');
    if s.is_empty() {
        "unknown".to_string()
    } else {
        s.to_string()
    }
}

impl Report {
    /// The name a report takes under `reports/`: the DMI serial, else the
    /// Windows computer name the victim's registry gave, else the UUID,
    /// else `unknown`; then the run id.
    pub fn file_name(&self) -> String {
        let computer = self
            .windows
            .iter()
            .filter_map(|w| w.identity.as_ref()?.computer_name.as_deref())
            .find(|n| !n.trim().is_empty());
        let who = self
            .machine
            .product_serial
            .as_deref()
            .or(computer)
            .or(self.machine.product_uuid.as_deref())
            .unwrap_or("unknown");
        format!("{}-{}.json", sanitize_name(who), self.run_id)
    }
}

/// Writes `report.json` and `report.txt` into the victim's run folder, if
/// the run made one there.
pub fn write_victim_reports(root: &Path, run_id: &str, r: &Report) -> Result<Option<PathBuf>> {
    let dir = crate::engine::run_dir(root, run_id);
    if !dir.is_dir() {
        return Ok(None);
    }
    crate::durable::write_atomic(&dir, "report.json", &r.to_json()?)?;
    crate::durable::write_atomic(&dir, "report.txt", render_text(r).as_bytes())?;
    Ok(Some(dir))
}

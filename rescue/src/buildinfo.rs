//! The two small JSON files that tie a run to an image build:
//! `/etc/defib/build.json` inside the initramfs and `defib/manifest.json` on
//! the boot medium. The builder writes both; the rescue only reads them.
//!
//! Only the fields the rescue needs are modelled; unknown fields are ignored
//! so the builder can add to either file without breaking older rescues.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::layout::{BUILD_INFO, MANIFEST};

/// `/etc/defib/build.json`: which build this initramfs is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildInfo {
    /// Hex id shared with the medium's manifest.
    pub build_id: String,
    /// Version of the builder that made the image.
    pub defib_version: String,
    /// Kernel release the modules belong to, e.g. `6.12.57+deb13-amd64`.
    pub kernel: String,
    /// SOURCE_DATE_EPOCH the image was built with.
    pub source_date_epoch: u64,
}

/// The part of `defib/manifest.json` the rescue reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Manifest {
    pub build_id: String,
}

/// Reads `<root>/etc/defib/build.json`.
pub fn read_build_info(root: &Path) -> Result<BuildInfo> {
    let p = root.join(BUILD_INFO);
    let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", p.display()))
}

/// Reads `<medium>/defib/manifest.json`.
pub fn read_manifest(medium: &Path) -> Result<Manifest> {
    let p = medium.join(MANIFEST);
    let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", p.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_build_json_and_ignores_extra_fields() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc/defib")).unwrap();
        std::fs::write(
            dir.path().join(BUILD_INFO),
            r#"{"build_id":"ab12","defib_version":"0.1.0","kernel":"6.12.57+deb13-amd64","source_date_epoch":1700000000,"extra":1}"#,
        )
        .unwrap();
        let b = read_build_info(dir.path()).unwrap();
        assert_eq!(b.build_id, "ab12");
        assert_eq!(b.source_date_epoch, 1_700_000_000);
    }

    #[test]
    fn missing_and_bad_files_name_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let e = read_build_info(dir.path()).unwrap_err();
        assert!(format!("{e:#}").contains("build.json"));
        std::fs::create_dir_all(dir.path().join("defib")).unwrap();
        std::fs::write(dir.path().join(MANIFEST), "{").unwrap();
        let e = read_manifest(dir.path()).unwrap_err();
        assert!(format!("{e:#}").starts_with("parsing"));
        std::fs::write(dir.path().join(MANIFEST), r#"{"build_id":"x","files":[]}"#).unwrap();
        assert_eq!(read_manifest(dir.path()).unwrap().build_id, "x");
    }
}

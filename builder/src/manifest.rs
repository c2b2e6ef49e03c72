//! `\defib\manifest.json`: what is in an image and where it came from.
//!
//! Written by `defib build`, read back by `defib inspect` and by the rescue
//! (which matches `build_id` against its initramfs to find its own stick).
//! Readers ignore fields they do not know, so later schema additions stay
//! readable by older tools.

use serde::{Deserialize, Serialize};

pub const SCHEMA: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub schema: u32,
    pub defib_version: String,
    /// Hex digest over every input and option; also in the initramfs.
    pub build_id: String,
    pub source_date_epoch: u64,
    pub kernel_release: String,
    /// Debian packages the boot parts came from.
    pub parts: Vec<Part>,
    /// Files placed on the boot partition, with hashes.
    pub files: Vec<FileEntry>,
    pub modules: Modules,
    pub rescue: FileEntry,
    pub boot_entries: Vec<BootEntry>,
    /// What the rescue does when done: `reboot` or `poweroff`.
    pub after: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Part {
    pub package: String,
    pub version: String,
    /// SHA-256 of the `.deb` file.
    pub deb_sha256: String,
    /// Files taken from it: package path -> where it went.
    pub taken: Vec<Taken>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Taken {
    pub from: String,
    pub to: String,
}

/// The manifest's `files`: every file placed on the medium, with its size
/// and SHA-256, in path order.
pub fn file_entries(files: &std::collections::BTreeMap<String, Vec<u8>>) -> Vec<FileEntry> {
    files
        .iter()
        .map(|(p, d)| FileEntry {
            path: p.clone(),
            size: d.len() as u64,
            sha256: crate::sha256_hex(d),
        })
        .collect()
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Modules {
    /// `version` of the module list used.
    pub list_version: u32,
    /// Module names in load order.
    pub loaded: Vec<String>,
    /// Listed modules built into the kernel.
    pub builtin: Vec<String>,
    /// Optional modules the kernel lacked.
    #[serde(default)]
    pub absent_optional: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BootEntry {
    pub id: String,
    pub title: String,
    pub cmdline: String,
}

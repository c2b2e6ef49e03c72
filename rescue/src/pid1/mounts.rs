//! The pseudo-filesystems PID 1 mounts, as a table of data.
//!
//! Each entry is one mount that is logged on its own; `plan` picks the
//! entries that apply under a root (efivarfs only on UEFI machines) and is
//! tested on plain directories. This module does not mount the boot medium
//! (see `medium`) or any victim volume.

use anyhow::{Context, Result};
use rustix::mount::MountFlags;
use std::path::Path;

/// When an entry applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    Always,
    /// Only if `<root>/sys/firmware/efi` exists (the kernel booted via UEFI).
    Uefi,
}

/// One mount in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountStep {
    pub source: &'static str,
    /// Relative to the root.
    pub target: &'static str,
    pub fstype: &'static str,
    pub flags: MountFlags,
    pub data: Option<&'static std::ffi::CStr>,
    /// Without this mount PID 1 cannot do its job: failure is fatal.
    pub required: bool,
    pub when: When,
}

const NOSUID_NODEV_NOEXEC: MountFlags = MountFlags::NOSUID
    .union(MountFlags::NODEV)
    .union(MountFlags::NOEXEC);

/// Mounted first, before the banner: the kernel interfaces everything else
/// reads, and RAM-backed scratch space.
pub const EARLY: &[MountStep] = &[
    MountStep {
        source: "proc",
        target: "proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
        required: true,
        when: When::Always,
    },
    MountStep {
        source: "sysfs",
        target: "sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: None,
        required: true,
        when: When::Always,
    },
    // devtmpfs: the kernel creates device nodes itself, so no udev is needed.
    MountStep {
        source: "devtmpfs",
        target: "dev",
        fstype: "devtmpfs",
        flags: MountFlags::NOSUID,
        data: Some(c"mode=0755"),
        required: true,
        when: When::Always,
    },
    MountStep {
        source: "tmpfs",
        target: "run",
        fstype: "tmpfs",
        flags: MountFlags::NOSUID.union(MountFlags::NODEV),
        data: Some(c"mode=0755"),
        required: false,
        when: When::Always,
    },
    MountStep {
        source: "tmpfs",
        target: "tmp",
        fstype: "tmpfs",
        flags: MountFlags::NOSUID.union(MountFlags::NODEV),
        data: Some(c"mode=1777"),
        required: false,
        when: When::Always,
    },
    // gid 5 is "tty" in Debian's base-passwd; the shell's ptys want it.
    MountStep {
        source: "devpts",
        target: "dev/pts",
        fstype: "devpts",
        flags: MountFlags::NOSUID.union(MountFlags::NOEXEC),
        data: Some(c"gid=5,mode=620,ptmxmode=666"),
        required: false,
        when: When::Always,
    },
];

/// Mounted after kernel modules load: Debian builds efivarfs as a module.
pub const AFTER_MODULES: &[MountStep] = &[MountStep {
    source: "efivarfs",
    target: "sys/firmware/efi/efivars",
    fstype: "efivarfs",
    flags: NOSUID_NODEV_NOEXEC,
    data: None,
    required: false,
    when: When::Uefi,
}];

/// The entries of `table` that apply under `root`.
pub fn plan(root: &Path, table: &[MountStep]) -> Vec<MountStep> {
    table
        .iter()
        .filter(|s| match s.when {
            When::Always => true,
            When::Uefi => root.join("sys/firmware/efi").is_dir(),
        })
        .copied()
        .collect()
}

/// The filesystem modules no late mount needs under `root`: those of the
/// [`AFTER_MODULES`] entries that do not apply (efivarfs on a machine not
/// booted through UEFI). The always-loaded set skips them.
pub fn unneeded_modules(root: &Path) -> Vec<&'static str> {
    let planned = plan(root, AFTER_MODULES);
    AFTER_MODULES
        .iter()
        .filter(|s| !planned.contains(s))
        .map(|s| s.fstype)
        .collect()
}

/// Creates the target directory and mounts one entry.
pub fn apply(root: &Path, step: &MountStep) -> Result<()> {
    let target = root.join(step.target);
    std::fs::create_dir_all(&target).with_context(|| format!("creating {}", target.display()))?;
    rustix::mount::mount(step.source, &target, step.fstype, step.flags, step.data)
        .with_context(|| format!("mounting {} on {}", step.fstype, target.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_are_proc_sys_dev_only() {
        let req: Vec<_> = EARLY
            .iter()
            .filter(|s| s.required)
            .map(|s| s.target)
            .collect();
        assert_eq!(req, ["proc", "sys", "dev"]);
        // /dev/pts needs /dev first.
        let pos = |t| EARLY.iter().position(|s| s.target == t).unwrap();
        assert!(pos("dev") < pos("dev/pts"));
    }

    #[test]
    fn efivarfs_only_on_uefi() {
        let dir = tempfile::tempdir().unwrap();
        assert!(plan(dir.path(), AFTER_MODULES).is_empty());
        assert_eq!(
            unneeded_modules(dir.path()),
            ["efivarfs"],
            "no module for a mount that does not happen"
        );
        std::fs::create_dir_all(dir.path().join("sys/firmware/efi")).unwrap();
        assert!(unneeded_modules(dir.path()).is_empty());
        let p = plan(dir.path(), AFTER_MODULES);
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].fstype, "efivarfs");
        assert_eq!(plan(dir.path(), EARLY).len(), EARLY.len());
    }
}

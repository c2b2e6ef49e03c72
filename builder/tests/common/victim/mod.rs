//! Victim disks for the end-to-end tests: raw disk images with a partition
//! table and one NTFS volume laid out like a broken Windows install, plus
//! host-side readers to check the volume after the rescue ran on it.
//!
//! Four incidents:
//! - [`make_xp_mcafee`]: Windows XP SP3 x86 after McAfee DAT 5958 took
//!   `svchost.exe` away (MBR, NTFS at LBA 63); the good copy sits in a `.bup`,
//!   in `dllcache`, only in a payload store ([`store_payloads`]), or nowhere.
//! - [`make_win10_crowdstrike`]: Windows 10 22H2 x64 with the bad
//!   CrowdStrike channel file 291 (GPT: ESP, MSR, basic data).
//! - [`make_xp_avg`]: Windows XP SP3 after AVG's 2008 update took
//!   `user32.dll`; the good copy is only in AVG's chest.
//! - [`make_win10_defender`]: Windows 10 whose `lsass.exe` is only in
//!   Defender's quarantine (with a test playbook, [`DEFENDER_TEST_PLAYBOOK`]).
//!
//! Quarantine records come from the rescue's own writers
//! (`defib_rescue::quarantine::fixture`), the ones its readers are tested
//! against.
//!
//! The volume is made with `mkntfs` on a partition-sized image, filled
//! through an `ntfs-3g` FUSE mount (names keep their case, times are set
//! like Windows would have them), and copied into the disk at the partition
//! offset. Reading back copies the partition out again and mounts it
//! read-only, so the disk itself is never touched by a check.
//!
//! Tools (a missing one is an error that names its Debian package; nothing
//! skips): ntfs-3g (`mkntfs`, `ntfs-3g`), fuse3 (`fusermount`),
//! libwin-hivex-perl (`hivexregedit`), gcc-mingw-w64-i686-win32 and
//! gcc-mingw-w64-x86-64-win32 (they pull in binutils-mingw-w64-* for
//! `windres` and mingw-w64-*-dev for `winver.h`), coreutils (`sha256sum`,
//! for [`disk_sha256`]). FUSE needs
//! `/dev/fuse`, and mounting as we do needs root (the test machines and CI
//! run as root).
//!
//! Paths given to and returned by this module are Windows paths relative to
//! the volume root, with backslashes and no drive letter:
//! `WINDOWS\system32\svchost.exe`.

mod check;
mod disk;
mod esp;
mod hives;
mod makers;
mod pe;
mod states;
mod tree;

pub use check::*;
pub use disk::*;
#[allow(unused_imports)]
pub use esp::*;
pub use hives::*;
pub use makers::*;
#[allow(unused_imports)]
pub use pe::*;
#[allow(unused_imports)]
pub use states::*;
pub use tree::*;

use anyhow::{anyhow, bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant, UNIX_EPOCH};

/// Where the good `svchost.exe` is on an XP victim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum McafeeSvchost {
    /// In a McAfee quarantine file `Quarantine\<id>.bup` at the volume root.
    InBup,
    /// In `WINDOWS\system32\dllcache\svchost.exe` (Windows File Protection).
    InDllcache,
    /// Not on the disk: only in the store [`store_payloads`] writes.
    InStore,
    /// Nowhere: the rescue must report needs-attention, not guess.
    Nowhere,
}

/// A victim disk image and what a test should find on it.
#[derive(Debug, Clone)]
pub struct Victim {
    /// The raw disk image (sparse).
    pub disk: PathBuf,
    /// Byte offset of the NTFS partition in `disk`.
    pub ntfs_offset: u64,
    /// Byte length of the NTFS partition.
    pub ntfs_len: u64,
    pub expect: Expect,
    /// The partition is BitLocker-encrypted; host checks decrypt it in
    /// software with this recovery password.
    pub bitlocker: Option<String>,
}

/// What the maker put on the volume, for the tests to assert on.
#[derive(Debug, Clone, Default)]
pub struct Expect {
    /// `WINDOWS` (XP) or `Windows` (10), as cased on the volume.
    pub windows_dir: String,
    /// SOFTWARE `ProductName`.
    pub product_name: String,
    /// The Windows build (2600, 19045).
    pub build: u32,
    /// `x86` or `x64`, as the store index spells it.
    pub arch: String,
    /// SYSTEM `ComputerName` of the current control set.
    pub computer_name: String,
    /// The sha256 of the good `svchost.exe` a correct repair restores to
    /// `WINDOWS\system32\svchost.exe`: `Some` for InBup, InDllcache and
    /// InStore; `None` for Nowhere and for the Windows 10 victim.
    pub svchost_sha256: Option<String>,
    /// Every file the maker wrote (Windows path → sha256), the ones below
    /// included. On a fresh victim each reads back with exactly this hash.
    pub files: BTreeMap<String, String>,
    /// Files a correct repair must move away (into the vault): CrowdStrike
    /// C-00000291 bad by content or by time. Subset of `files`.
    pub bad: BTreeMap<String, String>,
    /// McAfee DAT 5958 files: a playbook may neutralise these or leave
    /// them. Subset of `files`.
    pub dats: BTreeMap<String, String>,
    /// Files that must be absent on the fresh victim (svchost.exe).
    pub absent: Vec<String>,
    /// Last-write time (unix seconds, UTC) the maker gave each file in
    /// `files`; creation and access times are set to the same instant.
    pub mtimes: BTreeMap<String, i64>,
    /// The quarantine file (InBup only).
    pub bup: Option<String>,
    /// Files a correct repair puts back (Windows path → sha256): the
    /// AVG victim's user32.dll, the Defender victim's lsass.exe. Absent on
    /// the fresh victim; the quarantine records that hold them are in
    /// `files` and must stay.
    pub restored: BTreeMap<String, String>,
}

impl Expect {
    /// Files no repair may change: `files` minus `bad` and `dats`.
    pub fn must_stay(&self) -> BTreeMap<String, String> {
        self.files
            .iter()
            .filter(|(p, _)| !self.bad.contains_key(*p) && !self.dats.contains_key(*p))
            .map(|(p, h)| (p.clone(), h.clone()))
            .collect()
    }
}

//! Victim disks for the end-to-end tests: raw disk images with a partition
//! table and one NTFS volume laid out like a broken Windows install, plus
//! host-side readers to check the volume after the rescue ran on it.
//!
//! Two incidents:
//! - [`make_xp_mcafee`]: Windows XP SP3 x86 after McAfee DAT 5958 took
//!   `svchost.exe` away (MBR, NTFS at LBA 63); the good copy sits in a `.bup`,
//!   in `dllcache`, only in a payload store ([`store_payloads`]), or nowhere.
//! - [`make_win10_crowdstrike`]: Windows 10 22H2 x64 with the bad
//!   CrowdStrike channel file 291 (GPT: ESP, MSR, basic data).
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

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};
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

// ---------------------------------------------------------------------------
// The two makers
// ---------------------------------------------------------------------------

const MIB: u64 = 1 << 20;
const SECTOR: u64 = 512;
/// The Windows path of svchost.exe on XP (and where a repair puts it back).
pub const XP_SVCHOST: &str = r"WINDOWS\system32\svchost.exe";
/// The CrowdStrike channel-file folder on Windows 10.
pub const CS_DIR: &str = r"Windows\System32\drivers\CrowdStrike";
/// Leading bytes of the bad channel file 291 (DESIGN.md).
pub const CS_BAD_MAGIC: [u8; 8] = [0xAA, 0xAA, 0xAA, 0xAA, 0x01, 0x00, 0x23, 0x01];

/// Windows XP SP3 x86 after McAfee DAT 5958: MBR, one NTFS partition
/// (type 0x07, active) at LBA 63 ending on a cylinder boundary; 64 MiB disk.
pub fn make_xp_mcafee(dir: &Path, svchost: McafeeSvchost) -> Result<Victim> {
    let scenario = format!("{svchost:?}").to_lowercase();
    let disk = dir.join(format!("xp-mcafee-{scenario}.img"));
    let total = 64 * MIB / SECTOR; // 131072 sectors
    let cyl = 255 * 63;
    let start = 63u64;
    let end = (total / cyl) * cyl; // exclusive: last whole cylinder
    let (ntfs_offset, ntfs_len) = (start * SECTOR, (end - start) * SECTOR);

    let good = xp_svchost()?;
    let ntoskrnl = pe(&PeSpec {
        arch: Arch::I686,
        version: [5, 1, 2600, 5512],
        build_tag: "xpsp.080413-2111",
        name: "ntoskrnl.exe",
        desc: "NT Kernel & System",
    })?;
    let sp3 = ts("2008-04-14 12:00:00")?;
    let dat = ts("2010-04-21 13:58:02")?;
    let user = ts("2010-04-20 17:45:10")?;
    let mut tree = Tree::default();
    tree.file("boot.ini", XP_BOOT_INI.as_bytes().to_vec(), sp3);
    tree.file(
        r"WINDOWS\system32\config\SOFTWARE",
        hive("SOFTWARE", &xp_software())?,
        user,
    );
    tree.file(
        r"WINDOWS\system32\config\SYSTEM",
        hive("SYSTEM", &system_hive("WARD3-PC07", "x86"))?,
        user,
    );
    tree.file(r"WINDOWS\system32\ntoskrnl.exe", ntoskrnl.clone(), sp3);
    // XP's dllcache always holds a copy of the kernel; svchost only in the
    // InDllcache scenario.
    tree.file(r"WINDOWS\system32\dllcache\ntoskrnl.exe", ntoskrnl, sp3);
    tree.file(
        r"WINDOWS\system32\drivers\etc\hosts",
        b"# Copyright (c) 1993-1999 Microsoft Corp.\r\n127.0.0.1       localhost\r\n".to_vec(),
        sp3,
    );
    let engine = r"Program Files\Common Files\McAfee\Engine";
    for name in ["avvscan.dat", "avvnames.dat", "avvclean.dat"] {
        let mut data = format!("McAfee DAT 5958 fixture: {name}\r\n").into_bytes();
        data.extend(noise(name, 48 * 1024));
        tree.dat(&format!(r"{engine}\{name}"), data, dat);
    }
    tree.file(
        r"Documents and Settings\nurse\My Documents\chart.doc",
        noise("chart.doc", MIB as usize),
        user,
    );
    tree.file(
        r"Documents and Settings\nurse\Desktop\handover.txt",
        b"Bed 4: obs every 2h. Bed 7: NBM after midnight.\r\n".to_vec(),
        user,
    );
    tree.file(
        r"Documents and Settings\All Users\Application Data\McAfee\DesktopProtection\OnAccessScanLog.txt",
        b"4/21/2010\t2:02PM\tDeleted\tNT AUTHORITY\\SYSTEM\tC:\\WINDOWS\\system32\\svchost.exe\tW32/Wecorl.a (Virus)\r\n"
            .to_vec(),
        dat,
    );

    let svchost_sha = Some(sha256_hex(&good));
    let mut bup = None;
    match svchost {
        McafeeSvchost::InBup => {
            let path = r"Quarantine\5bd11f8e.bup".to_string();
            let bytes = make_bup(r"C:\WINDOWS\system32\svchost.exe", "W32/Wecorl.a", &good)?;
            tree.file(&path, bytes, dat);
            bup = Some(path);
        }
        McafeeSvchost::InDllcache => {
            tree.file(r"WINDOWS\system32\dllcache\svchost.exe", good.clone(), sp3);
        }
        McafeeSvchost::InStore | McafeeSvchost::Nowhere => {}
    }

    build_disk(
        dir,
        &disk,
        &Layout::Mbr { total, start, end },
        ntfs_offset,
        ntfs_len,
        &tree,
    )?;
    let mut expect = tree.expect();
    expect.windows_dir = "WINDOWS".into();
    expect.product_name = "Microsoft Windows XP".into();
    expect.build = 2600;
    expect.arch = "x86".into();
    expect.computer_name = "WARD3-PC07".into();
    expect.svchost_sha256 = match svchost {
        McafeeSvchost::Nowhere => None,
        _ => svchost_sha,
    };
    expect.absent = vec![XP_SVCHOST.to_string()];
    expect.bup = bup;
    Ok(Victim {
        disk,
        ntfs_offset,
        ntfs_len,
        expect,
    })
}

/// Windows 10 22H2 x64 with CrowdStrike channel file 291: GPT with an
/// (unformatted) ESP, an MSR and the NTFS basic data partition; 128 MiB.
pub fn make_win10_crowdstrike(dir: &Path) -> Result<Victim> {
    let disk = dir.join("win10-crowdstrike.img");
    let total = 128 * MIB / SECTOR; // 262144 sectors
    let esp = (2048u64, 2048 + 16 * MIB / SECTOR); // [start, end)
    let msr = (esp.1, esp.1 + 16 * MIB / SECTOR);
    let last_usable = total - 34;
    // Basic data from the MSR's end to the last whole MiB before the backup GPT.
    let data = (msr.1, msr.1 + (last_usable + 1 - msr.1) / 2048 * 2048);
    let (ntfs_offset, ntfs_len) = (data.0 * SECTOR, (data.1 - data.0) * SECTOR);

    let ntoskrnl = pe(&PeSpec {
        arch: Arch::X86_64,
        version: [10, 0, 19045, 4651],
        build_tag: "WinBuild.160101.0800",
        name: "ntoskrnl.exe",
        desc: "NT Kernel & System",
    })?;
    let july = ts("2024-07-09 18:22:41")?;
    let user = ts("2024-07-18 22:51:06")?;
    let mut tree = Tree::default();
    tree.file(
        r"Windows\System32\config\SOFTWARE",
        hive("SOFTWARE", &win10_software())?,
        user,
    );
    tree.file(
        r"Windows\System32\config\SYSTEM",
        hive("SYSTEM", &system_hive("ICU-STATION-12", "AMD64"))?,
        user,
    );
    tree.file(r"Windows\System32\ntoskrnl.exe", ntoskrnl, july);
    tree.file(
        r"Windows\System32\drivers\etc\hosts",
        b"# Copyright (c) 1993-2009 Microsoft Corp.\r\n".to_vec(),
        july,
    );
    let ch = |n: &str| format!(r"{CS_DIR}\C-{n}.sys");
    let mut bad32 = CS_BAD_MAGIC.to_vec();
    bad32.extend(noise("C-00000291-32", 40 * 1024));
    tree.bad(
        &ch("00000291-00000000-00000032"),
        bad32,
        ts("2024-07-19 04:09:13")?,
    );
    // Bad by time only: the zero-filled variant seen on many hosts.
    tree.bad(
        &ch("00000291-00000000-00000031"),
        vec![0u8; 40 * 1024],
        ts("2024-07-19 04:09:40")?,
    );
    let mut good33 = noise("C-00000291-33", 40 * 1024);
    good33[0] = 0x9E; // never the bad magic
    tree.file(
        &ch("00000291-00000000-00000033"),
        good33,
        ts("2024-07-19 05:27:55")?,
    );
    tree.file(
        &ch("00000285-00000000-00000001"),
        noise("C-00000285-01", 12 * 1024),
        ts("2024-07-16 09:14:27")?,
    );
    tree.file(
        r"Users\icu\Documents\vitals-2024-07-18.xlsx",
        noise("vitals.xlsx", MIB as usize),
        user,
    );
    tree.file(
        r"Users\Public\Desktop\downtime procedures.txt",
        b"If the EHR is down: paper charts are in the blue binder.\r\n".to_vec(),
        july,
    );

    build_disk(
        dir,
        &disk,
        &Layout::Gpt {
            total,
            parts: vec![
                GptPart {
                    ty: GUID_ESP,
                    id: "6a8c3f1e-52b0-4d6e-9a41-1f0c2b7d3e01",
                    range: esp,
                    name: "EFI system partition",
                },
                GptPart {
                    ty: GUID_MSR,
                    id: "6a8c3f1e-52b0-4d6e-9a41-1f0c2b7d3e02",
                    range: msr,
                    name: "Microsoft reserved partition",
                },
                GptPart {
                    ty: GUID_BASIC_DATA,
                    id: "6a8c3f1e-52b0-4d6e-9a41-1f0c2b7d3e03",
                    range: data,
                    name: "Basic data partition",
                },
            ],
        },
        ntfs_offset,
        ntfs_len,
        &tree,
    )?;
    let mut expect = tree.expect();
    expect.windows_dir = "Windows".into();
    expect.product_name = "Windows 10 Pro".into();
    expect.build = 19045;
    expect.arch = "x64".into();
    expect.computer_name = "ICU-STATION-12".into();
    Ok(Victim {
        disk,
        ntfs_offset,
        ntfs_len,
        expect,
    })
}

/// Writes a payloads folder `dir` holding the store with the good XP
/// `svchost.exe` (`dir/store/objects/<sha256>`, `dir/store/index.json`).
/// Returns its sha256, which equals `expect.svchost_sha256` of every XP
/// victim (the PE is built deterministically).
pub fn store_payloads(dir: &Path) -> Result<String> {
    let good = xp_svchost()?;
    let sha = sha256_hex(&good);
    let objects = dir.join("store").join("objects");
    fs::create_dir_all(&objects).with_context(|| format!("creating {}", objects.display()))?;
    fs::write(objects.join(&sha), &good).context("writing the store object")?;
    let index = serde_json::json!({
        "schema": 1,
        "entries": [{
            "name": null,
            "product": "Microsoft Windows XP",
            "build": 2600,
            "service_pack": "Service Pack 3",
            "arch": "x86",
            "path": XP_SVCHOST,
            "file_version": "5.1.2600.5512",
            "sha256": sha,
            "size": good.len(),
            "source": "fixture",
        }]
    });
    fs::write(
        dir.join("store").join("index.json"),
        serde_json::to_vec_pretty(&index)?,
    )
    .context("writing store/index.json")?;
    Ok(sha)
}

/// The good XP SP3 svchost.exe every XP scenario uses (built once per
/// test process; deterministic bytes).
pub fn xp_svchost() -> Result<Vec<u8>> {
    pe(&PeSpec {
        arch: Arch::I686,
        version: [5, 1, 2600, 5512],
        build_tag: "xpsp.080413-2111",
        name: "svchost.exe",
        desc: "Generic Host Process for Win32 Services",
    })
}

/// The one place the maker calls the rescue's `.bup` writer.
fn make_bup(original_name: &str, detection: &str, content: &[u8]) -> Result<Vec<u8>> {
    defib_rescue::bup::write_bup(original_name, detection, content)
}

// ---------------------------------------------------------------------------
// Host-side checks
// ---------------------------------------------------------------------------

/// The file at `windows_path` (case-insensitive), or None if absent.
pub fn read_file(v: &Victim, windows_path: &str) -> Result<Option<Vec<u8>>> {
    with_volume(v, |root| match resolve(root, windows_path)? {
        Some(p) if p.is_file() => Ok(Some(
            fs::read(&p).with_context(|| format!("reading {windows_path}"))?,
        )),
        _ => Ok(None),
    })
}

/// The names (as cased on the volume, sorted) in the directory at
/// `windows_path` (case-insensitive; "" is the root). Error if absent.
pub fn list_dir(v: &Victim, windows_path: &str) -> Result<Vec<String>> {
    with_volume(v, |root| {
        let p = resolve(root, windows_path)?
            .filter(|p| p.is_dir())
            .ok_or_else(|| anyhow!("no directory {windows_path:?} on {}", v.disk.display()))?;
        let mut names = Vec::new();
        for e in fs::read_dir(&p).with_context(|| format!("listing {windows_path}"))? {
            names.push(e?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    })
}

/// The sha256 (lowercase hex) of the file at `windows_path`, None if absent.
pub fn sha256_of(v: &Victim, windows_path: &str) -> Result<Option<String>> {
    Ok(read_file(v, windows_path)?.map(|d| sha256_hex(&d)))
}

/// The last-write time (unix seconds) of `windows_path`, None if absent.
pub fn mtime_of(v: &Victim, windows_path: &str) -> Result<Option<i64>> {
    with_volume(v, |root| {
        Ok(match resolve(root, windows_path)? {
            Some(p) => Some(fs::metadata(&p)?.mtime()),
            None => None,
        })
    })
}

/// The path of `windows_path` as cased on the volume, None if absent.
pub fn real_path(v: &Victim, windows_path: &str) -> Result<Option<String>> {
    with_volume(v, |root| {
        Ok(resolve(root, windows_path)?.map(|p| {
            let rel = p.strip_prefix(root).unwrap_or(&p);
            rel.components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("\\")
        }))
    })
}

/// Runs `f` on a read-only mount of the victim's NTFS volume (one mount for
/// many reads). The partition is copied out first: the disk is not opened
/// for writing.
pub fn with_volume<T>(v: &Victim, f: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let parent = v.disk.parent().unwrap_or(Path::new("."));
    let work = tempfile::Builder::new()
        .prefix(".victim-read-")
        .tempdir_in(parent)
        .context("creating a scratch folder beside the disk")?;
    let vol = work.path().join("volume.img");
    sparse_copy(&v.disk, v.ntfs_offset, v.ntfs_len, &vol, 0, true)
        .context("copying the NTFS partition out of the disk")?;
    let mnt = work.path().join("mnt");
    fs::create_dir(&mnt)?;
    let m = Mount::new(&vol, &mnt, true)?;
    let out = f(&mnt);
    m.unmount()?;
    out
}

/// sha256 of the whole disk file (byte-identical checks). Uses coreutils'
/// `sha256sum`: the sha2 crate in a test (debug) build hashes ~30 MB/s, ten
/// times slower.
pub fn disk_sha256(v: &Victim) -> Result<String> {
    let out = run(Command::new(tool("sha256sum", "coreutils")?)
        .arg("--binary")
        .arg(&v.disk))
    .with_context(|| format!("hashing {}", v.disk.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let hex = text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_lowercase();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("sha256sum printed {text:?}");
    }
    Ok(hex)
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The path below `root` naming `windows_path`, matching each component
/// without case (an exact match wins). None if any component is missing.
fn resolve(root: &Path, windows_path: &str) -> Result<Option<PathBuf>> {
    let mut cur = root.to_path_buf();
    for part in windows_path.split(['\\', '/']).filter(|p| !p.is_empty()) {
        if part == "." || part == ".." {
            bail!("{windows_path:?}: relative components are not allowed");
        }
        if !cur.is_dir() {
            return Ok(None);
        }
        if cur.join(part).symlink_metadata().is_ok() {
            cur.push(part);
            continue;
        }
        let want = part.to_lowercase();
        let mut found = None;
        for e in fs::read_dir(&cur).with_context(|| format!("listing {}", cur.display()))? {
            let name = e?.file_name();
            if name.to_string_lossy().to_lowercase() == want {
                if found.is_some() {
                    bail!("{windows_path:?} is ambiguous: two names differ only in case");
                }
                found = Some(name);
            }
        }
        match found {
            Some(n) => cur.push(n),
            None => return Ok(None),
        }
    }
    Ok(Some(cur))
}

// ---------------------------------------------------------------------------
// The volume tree
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Tree {
    files: Vec<(String, Vec<u8>, i64)>,
    bad: Vec<String>,
    dats: Vec<String>,
}

impl Tree {
    fn file(&mut self, path: &str, data: Vec<u8>, mtime: i64) {
        self.files.push((path.to_string(), data, mtime));
    }
    fn bad(&mut self, path: &str, data: Vec<u8>, mtime: i64) {
        self.bad.push(path.to_string());
        self.file(path, data, mtime);
    }
    fn dat(&mut self, path: &str, data: Vec<u8>, mtime: i64) {
        self.dats.push(path.to_string());
        self.file(path, data, mtime);
    }
    fn expect(&self) -> Expect {
        let mut e = Expect::default();
        for (p, d, t) in &self.files {
            let h = sha256_hex(d);
            if self.bad.contains(p) {
                e.bad.insert(p.clone(), h.clone());
            }
            if self.dats.contains(p) {
                e.dats.insert(p.clone(), h.clone());
            }
            e.files.insert(p.clone(), h);
            e.mtimes.insert(p.clone(), *t);
        }
        e
    }
    /// Writes every file below the mounted volume `root` and stamps it.
    fn write(&self, root: &Path) -> Result<()> {
        for (p, data, t) in &self.files {
            let host = p.split('\\').fold(root.to_path_buf(), |a, c| a.join(c));
            if let Some(parent) = host.parent() {
                fs::create_dir_all(parent)
                    .with_context(|| format!("creating the folder of {p}"))?;
            }
            fs::write(&host, data).with_context(|| format!("writing {p}"))?;
            set_times(&host, *t).with_context(|| format!("stamping {p}"))?;
        }
        Ok(())
    }
}

/// Sets last-write and access time (utimensat: ntfs-3g maps mtime to the
/// NTFS last data change time) and the NTFS creation time (ntfs-3g's
/// `system.ntfs_crtime` extended attribute, a little-endian FILETIME).
fn set_times(path: &Path, unix: i64) -> Result<()> {
    let t = UNIX_EPOCH + Duration::from_secs(u64::try_from(unix)?);
    let f = OpenOptions::new().write(true).open(path)?;
    f.set_times(fs::FileTimes::new().set_accessed(t).set_modified(t))?;
    drop(f);
    let filetime = (unix as u64 + 11_644_473_600) * 10_000_000;
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let bytes = filetime.to_le_bytes();
    // SAFETY: both pointers are valid for the lengths given for the call.
    let rc = unsafe {
        libc::setxattr(
            c_path.as_ptr(),
            c"system.ntfs_crtime".as_ptr(),
            bytes.as_ptr().cast(),
            bytes.len(),
            0,
        )
    };
    if rc != 0 {
        bail!(
            "setting the NTFS creation time: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// "YYYY-MM-DD hh:mm:ss" UTC → unix seconds.
pub fn ts(s: &str) -> Result<i64> {
    let n: Vec<i64> = s
        .split(['-', ' ', ':'])
        .map(|x| x.parse::<i64>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("bad timestamp {s:?}"))?;
    let [y, mo, d, h, mi, se] = n[..] else {
        bail!("bad timestamp {s:?}");
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(days * 86_400 + h * 3600 + mi * 60 + se)
}

/// Deterministic pseudo-random bytes (xorshift64*, seeded from `seed`):
/// distinct, incompressible file contents without storing any.
fn noise(seed: &str, len: usize) -> Vec<u8> {
    let mut x = seed.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

const XP_BOOT_INI: &str = "[boot loader]\r\ntimeout=30\r\ndefault=multi(0)disk(0)rdisk(0)partition(1)\\WINDOWS\r\n[operating systems]\r\nmulti(0)disk(0)rdisk(0)partition(1)\\WINDOWS=\"Microsoft Windows XP Professional\" /noexecute=optin /fastdetect\r\n";

// ---------------------------------------------------------------------------
// Registry hives
// ---------------------------------------------------------------------------

/// A registry value in a fixture hive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegVal {
    Sz(String),
    Dword(u32),
}

/// Keys (relative to the hive root) with their values.
pub type HiveSpec = Vec<(String, Vec<(String, RegVal)>)>;

fn key(path: &str, vals: &[(&str, RegVal)]) -> (String, Vec<(String, RegVal)>) {
    (
        path.to_string(),
        vals.iter()
            .map(|(n, v)| (n.to_string(), v.clone()))
            .collect(),
    )
}
fn sz(s: &str) -> RegVal {
    RegVal::Sz(s.to_string())
}

/// The XP SOFTWARE hive's values. Like a real XP, `CurrentBuild` holds
/// the obsolete "1.511.1 ..." string: the build is `CurrentBuildNumber`.
pub fn xp_software() -> HiveSpec {
    vec![
        key(
            r"Microsoft\Windows NT\CurrentVersion",
            &[
                ("ProductName", sz("Microsoft Windows XP")),
                ("CurrentVersion", sz("5.1")),
                ("CurrentBuildNumber", sz("2600")),
                (
                    "CurrentBuild",
                    sz("1.511.1 () (Obsolete data - do not use)"),
                ),
                ("CSDVersion", sz("Service Pack 3")),
                ("BuildLab", sz("2600.xpsp.080413-2111")),
                ("CurrentType", sz("Uniprocessor Free")),
                ("SystemRoot", sz(r"C:\WINDOWS")),
                ("RegisteredOrganization", sz("St. Example Hospital")),
                ("InstallDate", RegVal::Dword(1_215_000_000)),
            ],
        ),
        key(
            r"McAfee\AVEngine",
            &[
                ("AVDatVersion", RegVal::Dword(5958)),
                ("AVDatDate", sz("2010/04/21")),
                ("EngineVersionMajor", RegVal::Dword(5400)),
                ("EngineVersionMinor", RegVal::Dword(1158)),
                ("DAT", sz(r"C:\Program Files\Common Files\McAfee\Engine")),
            ],
        ),
    ]
}

/// The Windows 10 22H2 SOFTWARE hive's values.
pub fn win10_software() -> HiveSpec {
    vec![key(
        r"Microsoft\Windows NT\CurrentVersion",
        &[
            ("ProductName", sz("Windows 10 Pro")),
            ("EditionID", sz("Professional")),
            ("InstallationType", sz("Client")),
            ("CurrentVersion", sz("6.3")),
            ("CurrentMajorVersionNumber", RegVal::Dword(10)),
            ("CurrentMinorVersionNumber", RegVal::Dword(0)),
            ("CurrentBuild", sz("19045")),
            ("CurrentBuildNumber", sz("19045")),
            ("UBR", RegVal::Dword(4651)),
            ("DisplayVersion", sz("22H2")),
            ("ReleaseId", sz("2009")),
            ("BuildLab", sz("19041.vb_release.191206-1406")),
            ("SystemRoot", sz(r"C:\Windows")),
        ],
    )]
}

/// A SYSTEM hive: Select (current = 1, last known good = 2) and two
/// control sets naming the same computer.
pub fn system_hive(computer: &str, processor_arch: &str) -> HiveSpec {
    let mut v = vec![key(
        "Select",
        &[
            ("Current", RegVal::Dword(1)),
            ("Default", RegVal::Dword(1)),
            ("Failed", RegVal::Dword(0)),
            ("LastKnownGood", RegVal::Dword(2)),
        ],
    )];
    for set in ["ControlSet001", "ControlSet002"] {
        v.push(key(
            &format!(r"{set}\Control\ComputerName\ComputerName"),
            &[("ComputerName", sz(computer))],
        ));
        v.push(key(
            &format!(r"{set}\Control\Session Manager\Environment"),
            &[("PROCESSOR_ARCHITECTURE", sz(processor_arch))],
        ));
    }
    v
}

/// The path of the empty hive written by Windows (shared corpora).
pub fn empty_hive() -> Result<PathBuf> {
    let p =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpora/registry/yarp-EmptyHive");
    if !p.is_file() {
        bail!(
            "{} is missing: the shared corpora must sit beside the project (../shared/corpora)",
            p.display()
        );
    }
    Ok(p)
}

/// Builds a hive: a copy of the empty Windows hive with `spec` merged in by
/// hivexregedit under `HKEY_LOCAL_MACHINE\<name>`.
fn hive(name: &str, spec: &HiveSpec) -> Result<Vec<u8>> {
    let tool = tool("hivexregedit", "libwin-hivex-perl")?;
    let work = tempfile::tempdir().context("scratch folder for a hive")?;
    let h = work.path().join(name);
    fs::copy(empty_hive()?, &h).context("copying the empty hive")?;
    let mut perm = fs::metadata(&h)?.permissions();
    #[allow(clippy::permissions_set_readonly_false)]
    perm.set_readonly(false);
    fs::set_permissions(&h, perm)?;
    let prefix = format!(r"HKEY_LOCAL_MACHINE\{name}");
    let reg = work.path().join(format!("{name}.reg"));
    fs::write(&reg, reg_text(&prefix, spec))?;
    run(Command::new(tool)
        .arg("--merge")
        .arg("--prefix")
        .arg(&prefix)
        .arg(&h)
        .arg(&reg))
    .with_context(|| format!("merging the {name} hive"))?;
    Ok(fs::read(&h)?)
}

/// A .reg file (UTF-8, LF: what hivexregedit reads) creating every parent
/// key before its children.
fn reg_text(prefix: &str, spec: &HiveSpec) -> String {
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let mut out = String::from("Windows Registry Editor Version 5.00\n\n");
    let mut made: Vec<String> = Vec::new();
    for (k, vals) in spec {
        let parts: Vec<&str> = k.split('\\').collect();
        for i in 1..=parts.len() {
            let p = parts[..i].join("\\");
            if !made.contains(&p) {
                out.push_str(&format!("[{prefix}\\{p}]\n"));
                if i == parts.len() {
                    for (n, v) in vals {
                        match v {
                            RegVal::Sz(s) => {
                                out.push_str(&format!("\"{}\"=\"{}\"\n", esc(n), esc(s)))
                            }
                            RegVal::Dword(d) => {
                                out.push_str(&format!("\"{}\"=dword:{d:08x}\n", esc(n)))
                            }
                        }
                    }
                }
                out.push('\n');
                made.push(p);
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------
// PE files
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Arch {
    I686,
    X86_64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PeSpec {
    arch: Arch,
    version: [u16; 4],
    build_tag: &'static str,
    name: &'static str,
    desc: &'static str,
}

static PE_CACHE: Mutex<Option<HashMap<PeSpec, Vec<u8>>>> = Mutex::new(None);

/// A tiny real PE (scripts/fixtures/tinype.c + tinype.rc) with a
/// VERSIONINFO of `spec.version`, built with mingw-w64 (once per process).
fn pe(spec: &PeSpec) -> Result<Vec<u8>> {
    let mut cache = PE_CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(b) = cache.get_or_insert_with(HashMap::new).get(spec) {
        return Ok(b.clone());
    }
    let (triple, pkg, entry) = match spec.arch {
        Arch::I686 => ("i686-w64-mingw32", "gcc-mingw-w64-i686-win32", "_entry"),
        Arch::X86_64 => ("x86_64-w64-mingw32", "gcc-mingw-w64-x86-64-win32", "entry"),
    };
    let gcc = tool(&format!("{triple}-gcc"), pkg)?;
    let windres = tool(
        &format!("{triple}-windres"),
        &format!(
            "binutils-mingw-w64-{}",
            if spec.arch == Arch::I686 {
                "i686"
            } else {
                "x86-64"
            }
        ),
    )?;
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fixtures");
    let work = tempfile::tempdir().context("scratch folder for a PE")?;
    let [a, b, c, d] = spec.version;
    let q = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    fs::write(
        work.path().join("tinype-spec.h"),
        format!(
            "#define V1 {a}\n#define V2 {b}\n#define V3 {c}\n#define V4 {d}\n\
             #define VSTR {}\n#define PVSTR {}\n#define ORIGNAME {}\n#define DESC {}\n\
             #define PRODNAME {}\n#define TINYPE_TAG {}\n",
            q(&format!("{a}.{b}.{c}.{d} ({})", spec.build_tag)),
            q(&format!("{a}.{b}.{c}.{d}")),
            q(spec.name),
            q(spec.desc),
            q("Microsoft Windows Operating System"),
            q(spec.name),
        ),
    )?;
    let res = work.path().join("res.o");
    run(Command::new(&windres)
        .arg("-I")
        .arg(work.path())
        .arg("-O")
        .arg("coff")
        .arg("-o")
        .arg(&res)
        .arg(src.join("tinype.rc")))
    .context("compiling the version resource")?;
    let out = work.path().join(spec.name);
    run(Command::new(&gcc)
        .args(["-Os", "-ffreestanding", "-nostdlib", "-s"])
        .arg(format!("-Wl,-e,{entry}"))
        .arg("-Wl,--no-insert-timestamp")
        .arg("-I")
        .arg(work.path())
        .arg("-o")
        .arg(&out)
        .arg(src.join("tinype.c"))
        .arg(&res))
    .context("linking the PE")?;
    let bytes = fs::read(&out)?;
    cache
        .get_or_insert_with(HashMap::new)
        .insert(spec.clone(), bytes.clone());
    Ok(bytes)
}

// ---------------------------------------------------------------------------
// Disk assembly: partition tables, mkntfs, FUSE
// ---------------------------------------------------------------------------

pub const GUID_ESP: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
pub const GUID_MSR: &str = "E3C9E316-0B5C-4DB8-817D-F92DF00215AE";
pub const GUID_BASIC_DATA: &str = "EBD0A0A2-B9E5-4433-87C0-68B6B7268E99";

struct GptPart {
    ty: &'static str,
    id: &'static str,
    /// [start, end) in sectors.
    range: (u64, u64),
    name: &'static str,
}

enum Layout {
    /// One active NTFS partition over sectors [start, end).
    Mbr {
        total: u64,
        start: u64,
        end: u64,
    },
    Gpt {
        total: u64,
        parts: Vec<GptPart>,
    },
}

fn build_disk(
    dir: &Path,
    disk: &Path,
    layout: &Layout,
    ntfs_offset: u64,
    ntfs_len: u64,
    tree: &Tree,
) -> Result<()> {
    let mkntfs = tool("mkntfs", "ntfs-3g")?;
    let work = tempfile::Builder::new()
        .prefix(".victim-make-")
        .tempdir_in(dir)
        .context("scratch folder")?;
    let vol = work.path().join("volume.img");
    File::create(&vol)?.set_len(ntfs_len)?;
    run(Command::new(mkntfs)
        .args([
            "-F", "-Q", "-s", "512", "-c", "4096", "-H", "255", "-S", "63", "-p",
        ])
        .arg((ntfs_offset / SECTOR).to_string())
        .arg(&vol))
    .context("formatting the NTFS volume")?;
    let mnt = work.path().join("mnt");
    fs::create_dir(&mnt)?;
    let m = Mount::new(&vol, &mnt, false)?;
    let filled = tree.write(&mnt);
    m.unmount()?;
    filled?;

    let (total, table) = match layout {
        Layout::Mbr { total, start, end } => (*total, mbr(*total, *start, *end)),
        Layout::Gpt { total, parts } => (*total, gpt(*total, parts)?),
    };
    let _ = fs::remove_file(disk);
    let mut f = File::create(disk).with_context(|| format!("creating {}", disk.display()))?;
    f.set_len(total * SECTOR)?;
    for (lba, bytes) in table {
        f.seek(SeekFrom::Start(lba * SECTOR))?;
        f.write_all(&bytes)?;
    }
    drop(f);
    sparse_copy(&vol, 0, ntfs_len, disk, ntfs_offset, false)
}

/// Copies `len` bytes from `src`@`src_off` to `dst`@`dst_off`, skipping
/// all-zero MiB blocks (so the result stays sparse). `create` makes `dst`
/// afresh with length `len`; else `dst` must exist (and is zero there).
fn sparse_copy(
    src: &Path,
    src_off: u64,
    len: u64,
    dst: &Path,
    dst_off: u64,
    create: bool,
) -> Result<()> {
    let mut s = File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let mut d = if create {
        let f = File::create(dst)?;
        f.set_len(len)?;
        f
    } else {
        OpenOptions::new().write(true).open(dst)?
    };
    s.seek(SeekFrom::Start(src_off))?;
    let mut buf = vec![0u8; MIB as usize];
    let zero = vec![0u8; MIB as usize];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(MIB) as usize;
        s.read_exact(&mut buf[..n]).with_context(|| {
            format!("{} is shorter than its partition table says", src.display())
        })?;
        // Slice equality is a memcmp even in a debug build; iterating
        // byte by byte is not.
        if buf[..n] != zero[..n] {
            d.seek(SeekFrom::Start(dst_off + done))?;
            d.write_all(&buf[..n])?;
        }
        done += n as u64;
    }
    d.sync_all()?;
    Ok(())
}

/// CHS bytes of an MBR entry for `lba` on a 255-head, 63-sector geometry.
fn chs(lba: u64) -> [u8; 3] {
    let (c, h, s) = (lba / (255 * 63), (lba / 63) % 255, lba % 63 + 1);
    if c > 1023 {
        return [0xFE, 0xFF, 0xFF];
    }
    [
        h as u8,
        (s as u8) | (((c >> 2) & 0xC0) as u8),
        (c & 0xFF) as u8,
    ]
}

fn mbr(_total: u64, start: u64, end: u64) -> Vec<(u64, Vec<u8>)> {
    let mut s = vec![0u8; 512];
    s[0x1B8..0x1BC].copy_from_slice(&0x5EED_0A11u32.to_le_bytes()); // disk signature
    let e = &mut s[0x1BE..0x1CE];
    e[0] = 0x80; // active: XP booted from it
    e[1..4].copy_from_slice(&chs(start));
    e[4] = 0x07; // NTFS
    e[5..8].copy_from_slice(&chs(end - 1));
    e[8..12].copy_from_slice(&(start as u32).to_le_bytes());
    e[12..16].copy_from_slice(&((end - start) as u32).to_le_bytes());
    s[510] = 0x55;
    s[511] = 0xAA;
    vec![(0, s)]
}

/// A GUID string → its on-disk bytes (first three fields little-endian).
pub fn guid_bytes(g: &str) -> Result<[u8; 16]> {
    let h: String = g.chars().filter(|c| *c != '-').collect();
    let raw = hex::decode(&h).with_context(|| format!("bad GUID {g}"))?;
    if raw.len() != 16 {
        bail!("bad GUID {g}");
    }
    let mut o = [0u8; 16];
    o[0..4].copy_from_slice(&[raw[3], raw[2], raw[1], raw[0]]);
    o[4..6].copy_from_slice(&[raw[5], raw[4]]);
    o[6..8].copy_from_slice(&[raw[7], raw[6]]);
    o[8..].copy_from_slice(&raw[8..]);
    Ok(o)
}

/// CRC-32 (IEEE, reflected) as the GPT header and entry array use.
pub fn crc32(data: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn gpt(total: u64, parts: &[GptPart]) -> Result<Vec<(u64, Vec<u8>)>> {
    // Protective MBR.
    let mut pmbr = vec![0u8; 512];
    let e = &mut pmbr[0x1BE..0x1CE];
    e[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
    e[4] = 0xEE;
    e[5..8].copy_from_slice(&[0xFF, 0xFF, 0xFF]);
    e[8..12].copy_from_slice(&1u32.to_le_bytes());
    e[12..16].copy_from_slice(&((total - 1).min(0xFFFF_FFFF) as u32).to_le_bytes());
    pmbr[510] = 0x55;
    pmbr[511] = 0xAA;

    let mut entries = vec![0u8; 128 * 128];
    for (i, p) in parts.iter().enumerate() {
        let e = &mut entries[i * 128..(i + 1) * 128];
        e[0..16].copy_from_slice(&guid_bytes(p.ty)?);
        e[16..32].copy_from_slice(&guid_bytes(p.id)?);
        e[32..40].copy_from_slice(&p.range.0.to_le_bytes());
        e[40..48].copy_from_slice(&(p.range.1 - 1).to_le_bytes());
        for (j, u) in p.name.encode_utf16().take(36).enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&u.to_le_bytes());
        }
    }
    let entries_crc = crc32(&entries);
    let header = |me: u64, other: u64, entries_lba: u64| -> Result<Vec<u8>> {
        let mut h = vec![0u8; 512];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&me.to_le_bytes());
        h[32..40].copy_from_slice(&other.to_le_bytes());
        h[40..48].copy_from_slice(&34u64.to_le_bytes());
        h[48..56].copy_from_slice(&(total - 34).to_le_bytes());
        h[56..72].copy_from_slice(&guid_bytes("1c0e5d2a-9b7f-4e3c-8d1a-defb1c710a10")?);
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32(&h[..92]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        Ok(h)
    };
    Ok(vec![
        (0, pmbr),
        (1, header(1, total - 1, 2)?),
        (2, entries.clone()),
        (total - 33, entries),
        (total - 1, header(total - 1, 1, total - 33)?),
    ])
}

/// An ntfs-3g FUSE mount, run in the foreground as our child so that
/// unmounting can wait for it to have flushed and closed the image.
/// Dropping it unmounts (best effort); call [`Mount::unmount`] to see errors.
struct Mount {
    dir: PathBuf,
    fusermount: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl Mount {
    fn new(image: &Path, dir: &Path, read_only: bool) -> Result<Mount> {
        let ntfs3g = tool("ntfs-3g", "ntfs-3g")?;
        let fusermount = tool("fusermount", "fuse3")?;
        if !Path::new("/dev/fuse").exists() {
            bail!("/dev/fuse is missing: FUSE is needed to mount NTFS images (ntfs-3g)");
        }
        let log = dir.with_extension("ntfs-3g.log");
        let opts = if read_only {
            "ro,no_detach"
        } else {
            "no_detach"
        };
        let parent_dev = fs::metadata(dir.parent().unwrap_or(Path::new("/")))?.dev();
        let child = Command::new(ntfs3g)
            .arg("-o")
            .arg(opts)
            .arg(image)
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(File::create(&log)?)
            .stderr(File::create(&log)?)
            .spawn()
            .context("starting ntfs-3g")?;
        let mut m = Mount {
            dir: dir.to_path_buf(),
            fusermount,
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if fs::metadata(dir)
                .map(|md| md.dev() != parent_dev)
                .unwrap_or(false)
            {
                return Ok(m);
            }
            if let Some(st) = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                m.child = None;
                bail!(
                    "ntfs-3g exited ({st}) without mounting {}: {}",
                    image.display(),
                    fs::read_to_string(&m.log).unwrap_or_default().trim()
                );
            }
            if Instant::now() > deadline {
                bail!("ntfs-3g did not mount {} within 20 s", image.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn unmount(mut self) -> Result<()> {
        self.unmount_inner()
    }

    fn is_mounted(&self) -> bool {
        let mi = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let want = self.dir.to_string_lossy().replace(' ', "\\040");
        mi.lines()
            .any(|l| l.split(' ').nth(4).is_some_and(|mp| mp == want))
    }

    fn unmount_inner(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let mut last = String::new();
        for attempt in 0..10 {
            if !self.is_mounted() {
                break;
            }
            match Command::new(&self.fusermount)
                .arg("-u")
                .arg(&self.dir)
                .stdin(Stdio::null())
                .output()
            {
                Ok(o) if o.status.success() => break,
                Ok(o) => last = String::from_utf8_lossy(&o.stderr).trim().to_string(),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100 * (attempt + 1)));
        }
        // ntfs-3g flushes and closes the image after the unmount: wait for
        // it, so the image is complete before anyone copies it.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match child.try_wait() {
                Ok(Some(st)) if st.success() => break,
                Ok(Some(st)) => bail!(
                    "ntfs-3g exited with {st}: {}",
                    fs::read_to_string(&self.log).unwrap_or_default().trim()
                ),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = Command::new(&self.fusermount)
                        .arg("-u")
                        .arg("-z")
                        .arg(&self.dir)
                        .status();
                    let _ = child.kill();
                    let _ = child.wait();
                    bail!(
                        "could not unmount {} ({last}); ntfs-3g killed",
                        self.dir.display()
                    );
                }
            }
        }
        if self.is_mounted() {
            bail!("{} is still mounted after unmounting", self.dir.display());
        }
        Ok(())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = self.unmount_inner();
    }
}

/// Finds `name` on PATH (and the sbin folders, where mkntfs lives), or an
/// error naming the Debian package that ships it.
pub fn tool(name: &str, package: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from));
    for d in dirs {
        let p = d.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    Err(anyhow!(
        "{name} not found: install the Debian package {package} (apt-get install {package}, or scripts/setup --test)"
    ))
}

/// Runs a command; a failure carries its stderr.
fn run(cmd: &mut Command) -> Result<std::process::Output> {
    let prog = cmd.get_program().to_owned();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", Path::new(&prog).display()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            Path::new(OsStr::new(&prog)).display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

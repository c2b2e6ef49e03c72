//! The makers: a Windows XP McAfee victim, a Windows 10 CrowdStrike
//! victim, a Windows XP AVG victim (user32.dll only in AVG's chest), a
//! Windows 10 victim with a system file only in Defender's quarantine, and
//! the payload store an XP victim may need.

#![allow(unused_imports)]

use super::*;

pub(super) const MIB: u64 = 1 << 20;
pub(super) const SECTOR: u64 = 512;
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
        bitlocker: None,
    })
}

/// Windows 10 22H2 x64 with CrowdStrike channel file 291: GPT with an
/// (unformatted) ESP, an MSR and the NTFS basic data partition; 128 MiB.
pub fn make_win10_crowdstrike(dir: &Path) -> Result<Victim> {
    make_win10_crowdstrike_with(dir, 128 * MIB, None)
}

/// [`make_win10_crowdstrike`] on a disk of `disk_len` bytes, the data
/// partition `data_len` bytes long when given (else all the rest).
fn make_win10_crowdstrike_with(dir: &Path, disk_len: u64, data_len: Option<u64>) -> Result<Victim> {
    let disk = dir.join("win10-crowdstrike.img");
    let july = ts("2024-07-09 18:22:41")?;
    let user = ts("2024-07-18 22:51:06")?;
    let mut tree = win10_base("ICU-STATION-12", july, user)?;
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

    let (ntfs_offset, ntfs_len) = build_win10_disk(dir, &disk, &tree, disk_len, data_len)?;
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
        bitlocker: None,
    })
}

/// The files every Windows 10 22H2 x64 victim has: hives naming
/// `computer`, the kernel and a hosts file.
fn win10_base(computer: &str, installed: i64, user: i64) -> Result<Tree> {
    let ntoskrnl = pe(&PeSpec {
        arch: Arch::X86_64,
        version: [10, 0, 19045, 4651],
        build_tag: "WinBuild.160101.0800",
        name: "ntoskrnl.exe",
        desc: "NT Kernel & System",
    })?;
    let mut tree = Tree::default();
    tree.file(
        r"Windows\System32\config\SOFTWARE",
        hive("SOFTWARE", &win10_software())?,
        user,
    );
    tree.file(
        r"Windows\System32\config\SYSTEM",
        hive("SYSTEM", &system_hive(computer, "AMD64"))?,
        user,
    );
    tree.file(r"Windows\System32\ntoskrnl.exe", ntoskrnl, installed);
    tree.file(
        r"Windows\System32\drivers\etc\hosts",
        b"# Copyright (c) 1993-2009 Microsoft Corp.\r\n".to_vec(),
        installed,
    );
    Ok(tree)
}

/// A GPT disk of `disk_len` bytes as Windows 10 sets one up: an
/// (unformatted) ESP, an MSR and the NTFS basic data partition holding
/// `tree`, `data_len` bytes long when given (else all the rest). Returns
/// the NTFS partition's offset and length in bytes.
fn build_win10_disk(
    dir: &Path,
    disk: &Path,
    tree: &Tree,
    disk_len: u64,
    data_len: Option<u64>,
) -> Result<(u64, u64)> {
    let total = disk_len / SECTOR;
    let esp = (2048u64, 2048 + 16 * MIB / SECTOR); // [start, end)
    let msr = (esp.1, esp.1 + 16 * MIB / SECTOR);
    let last_usable = total - 34;
    // Basic data from the MSR's end to the last whole MiB before the backup GPT.
    let rest = (last_usable + 1 - msr.1) / 2048 * 2048;
    let data = (
        msr.1,
        msr.1 + data_len.map_or(rest, |l| (l / SECTOR).min(rest)),
    );
    let (ntfs_offset, ntfs_len) = (data.0 * SECTOR, (data.1 - data.0) * SECTOR);
    build_disk(
        dir,
        disk,
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
        tree,
    )?;
    Ok((ntfs_offset, ntfs_len))
}

/// Lays quarantine records out with `lay` (one of the rescue's
/// `quarantine::fixture` writers) in a scratch folder shaped like the
/// volume, then adds every file it wrote to `tree`, stamped `mtime`. The
/// writers work on a directory, the tree is in memory until the disk is
/// assembled: this is the bridge. Returns the Windows paths added.
fn add_quarantine(
    tree: &mut Tree,
    mtime: i64,
    lay: impl FnOnce(&Path) -> Result<()>,
) -> Result<Vec<String>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) -> Result<()> {
        for e in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
            let p = e?.path();
            if p.is_dir() {
                walk(root, &p, out)?;
            } else {
                let rel: Vec<String> = p
                    .strip_prefix(root)?
                    .components()
                    .map(|c| c.as_os_str().to_string_lossy().into_owned())
                    .collect();
                out.push((rel.join("\\"), fs::read(&p)?));
            }
        }
        Ok(())
    }
    let scratch = tempfile::tempdir().context("a scratch folder for the quarantine")?;
    lay(scratch.path())?;
    let mut files = Vec::new();
    walk(scratch.path(), scratch.path(), &mut files)?;
    files.sort();
    let mut paths = Vec::new();
    for (p, data) in files {
        tree.file(&p, data, mtime);
        paths.push(p);
    }
    Ok(paths)
}

/// The Windows path of user32.dll on XP (what the AVG repair puts back).
pub const XP_USER32: &str = r"WINDOWS\system32\user32.dll";

/// The good XP SP3 user32.dll (a tiny real PE, version 5.1.2600.5512).
pub fn xp_user32() -> Result<Vec<u8>> {
    pe(&PeSpec {
        arch: Arch::I686,
        version: [5, 1, 2600, 5512],
        build_tag: "xpsp.080413-2111",
        name: "user32.dll",
        desc: "Windows XP USER API Client DLL",
    })
}

/// Windows XP SP3 x86 after AVG's update of 9 November 2008
/// (playbook `avg-user32-2008`): AVG 8 installed, `user32.dll` gone from
/// system32 and held only in AVG's chest as "Trojan horse
/// PSW.Banker4.APSA". MBR, NTFS at LBA 63, 64 MiB, like the McAfee victim.
/// `expect.restored` holds user32.dll's path and hash.
pub fn make_xp_avg(dir: &Path) -> Result<Victim> {
    let disk = dir.join("xp-avg.img");
    let total = 64 * MIB / SECTOR;
    let cyl = 255 * 63;
    let start = 63u64;
    let end = (total / cyl) * cyl;
    let (ntfs_offset, ntfs_len) = (start * SECTOR, (end - start) * SECTOR);

    let user32 = xp_user32()?;
    let ntoskrnl = pe(&PeSpec {
        arch: Arch::I686,
        version: [5, 1, 2600, 5512],
        build_tag: "xpsp.080413-2111",
        name: "ntoskrnl.exe",
        desc: "NT Kernel & System",
    })?;
    let sp3 = ts("2008-04-14 12:00:00")?;
    let avg_install = ts("2008-06-02 10:12:40")?;
    let quarantined = ts("2008-11-09 15:31:07")?;
    let user = ts("2008-11-09 09:02:55")?;
    // The XP SOFTWARE hive without McAfee: this PC ran AVG.
    let software: HiveSpec = xp_software()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("McAfee"))
        .collect();
    let mut tree = Tree::default();
    tree.file("boot.ini", XP_BOOT_INI.as_bytes().to_vec(), sp3);
    tree.file(
        r"WINDOWS\system32\config\SOFTWARE",
        hive("SOFTWARE", &software)?,
        user,
    );
    tree.file(
        r"WINDOWS\system32\config\SYSTEM",
        hive("SYSTEM", &system_hive("RECEPTION-02", "x86"))?,
        user,
    );
    tree.file(r"WINDOWS\system32\ntoskrnl.exe", ntoskrnl.clone(), sp3);
    tree.file(r"WINDOWS\system32\dllcache\ntoskrnl.exe", ntoskrnl, sp3);
    // svchost.exe is where it belongs: only user32.dll was taken.
    tree.file(XP_SVCHOST, xp_svchost()?, sp3);
    // AVG 8.0's program folder, as the playbook recognises it.
    tree.file(
        r"Program Files\AVG\AVG8\avgtray.exe",
        noise("avgtray.exe", 64 * 1024),
        avg_install,
    );
    tree.file(
        r"Documents and Settings\reception\My Documents\appointments.xls",
        noise("appointments.xls", 256 * 1024),
        user,
    );
    add_quarantine(&mut tree, quarantined, |root| {
        defib_rescue::quarantine::fixture::install_chest(
            root,
            defib_rescue::quarantine::fixture::Chest::AvgXp,
            &[(
                r"C:\WINDOWS\system32\user32.dll",
                "Trojan horse PSW.Banker4.APSA",
                &user32,
            )],
            quarantined,
        )
        .map(|_| ())
    })?;

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
    expect.computer_name = "RECEPTION-02".into();
    expect.absent = vec![XP_USER32.to_string()];
    expect
        .restored
        .insert(XP_USER32.to_string(), sha256_hex(&user32));
    Ok(Victim {
        disk,
        ntfs_offset,
        ntfs_len,
        expect,
        bitlocker: None,
    })
}

/// The file the Windows 10 Defender victim lost.
pub const WIN10_LSASS: &str = r"Windows\System32\lsass.exe";

/// A playbook for the Windows 10 Defender victim. Not shipped: no public
/// incident had Defender quarantine lsass.exe; the test needs a playbook
/// that restores from `{ quarantine = "defender" }`, and writing it the
/// way an operator would for a new incident is the point.
pub const DEFENDER_TEST_PLAYBOOK: &str = r#"
schema = 1
id = "test-defender-lsass"
title = "Test: Defender quarantined lsass.exe"
date = "2024-07-19"
references = ["defib test fixture: builder/tests/common/victim/makers.rs"]
summary = "A test incident: restore lsass.exe from Defender's quarantine."

[applies]
min_build = 19041
arch = ["x64"]

[[when]]
kind = "missing"
id = "lsass-missing"
path = 'Windows\System32\lsass.exe'

[[action]]
kind = "restore"
path = 'Windows\System32\lsass.exe'
sources = [{ quarantine = "defender", detection = "Trojan:Win32/*" }, "winsxs", "store"]
"#;

/// Windows 10 22H2 x64 whose `lsass.exe` sits only in Microsoft
/// Defender's quarantine (as `Trojan:Win32/Wacatac.B!ml`), for
/// [`DEFENDER_TEST_PLAYBOOK`]. Same GPT layout as the CrowdStrike victim.
/// `expect.restored` holds lsass.exe's path and hash.
pub fn make_win10_defender(dir: &Path) -> Result<Victim> {
    let disk = dir.join("win10-defender.img");
    let installed = ts("2024-06-11 08:00:00")?;
    let user = ts("2024-07-18 22:51:06")?;
    let quarantined = ts("2024-07-18 23:14:09")?;
    let lsass = pe(&PeSpec {
        arch: Arch::X86_64,
        version: [10, 0, 19041, 4648],
        build_tag: "WinBuild.160101.0800",
        name: "lsass.exe",
        desc: "Local Security Authority Process",
    })?;
    let mut tree = win10_base("PHARMACY-03", installed, user)?;
    tree.file(
        r"Users\pharmacy\Documents\stock-2024-07.xlsx",
        noise("stock.xlsx", 256 * 1024),
        user,
    );
    // FILETIME of the quarantine time, as Defender records it.
    let filetime = (quarantined as u64 + 11_644_473_600) * 10_000_000;
    add_quarantine(&mut tree, quarantined, |root| {
        defib_rescue::quarantine::fixture::install_defender(
            root,
            r"C:\Windows\System32\lsass.exe",
            "Trojan:Win32/Wacatac.B!ml",
            &lsass,
            filetime,
        )
        .map(|_| ())
    })?;
    let (ntfs_offset, ntfs_len) = build_win10_disk(dir, &disk, &tree, 128 * MIB, None)?;
    let mut expect = tree.expect();
    expect.windows_dir = "Windows".into();
    expect.product_name = "Windows 10 Pro".into();
    expect.build = 19045;
    expect.arch = "x64".into();
    expect.computer_name = "PHARMACY-03".into();
    expect.absent = vec![WIN10_LSASS.to_string()];
    expect
        .restored
        .insert(WIN10_LSASS.to_string(), sha256_hex(&lsass));
    Ok(Victim {
        disk,
        ntfs_offset,
        ntfs_len,
        expect,
        bitlocker: None,
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
pub(super) fn make_bup(original_name: &str, detection: &str, content: &[u8]) -> Result<Vec<u8>> {
    defib_rescue::bup::write_bup(original_name, detection, content)
}

/// A BitLocker recovery password and its protector GUID, as the fleet's
/// key escrow would hold them.
pub struct BitlockerKey {
    pub recovery_password: String,
    pub protector: String,
}

/// [`make_win10_crowdstrike`]'s volume, BitLocker-encrypted (XTS-AES-128,
/// as Windows 10 does by default): the FVE metadata is Windows' own (the
/// corpus image `bitlk-aes-xts-128`, made by Windows 10), re-keyed data
/// carries the victim's NTFS. cryptsetup and our software reader vouch for
/// it at creation. The NTFS fills the first 32 MiB of the 100 MiB volume,
/// well before BitLocker's metadata areas (from 35 MiB on).
pub fn make_win10_crowdstrike_bitlocker(dir: &Path) -> Result<(Victim, BitlockerKey)> {
    use anyhow::ensure;
    use defib_rescue::bitlocker::{dm, read_metadata, soft, unlock, Credential, RecoveryPassword};
    // The partition is exactly the BitLocker volume's size (100 MiB), as
    // Windows makes them: a shorter volume reads as partially encrypted.
    let plain_victim = make_win10_crowdstrike_with(dir, 160 * MIB, Some(100 * MIB))?;
    let corpora = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpora/bitlocker");
    let name = "bitlk-aes-xts-128";
    let st = Command::new("tar")
        .arg("xJSf")
        .arg(corpora.join("bitlk-images.tar.xz"))
        .arg("-C")
        .arg(dir)
        .arg(format!("{name}.img"))
        .status()?;
    ensure!(
        st.success(),
        "extracting {name}.img from the BitLocker corpus"
    );
    let conf = fs::read_to_string(corpora.join("images.conf"))?;
    let section = conf
        .split(&format!("[{name}]"))
        .nth(1)
        .and_then(|s| s.split("\n[").next())
        .context("images.conf section")?;
    let get = |k: &str| {
        section
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(|v| v.trim().to_string())
            .context(k.to_string())
    };
    let rp = get("RP")?;
    let protector = get("RP_VMK_GUID")?;
    let corpus_img = dir.join(format!("{name}.img"));
    let vol_len = fs::metadata(&corpus_img)?.len();

    // The plain volume: the victim's NTFS in its first 32 MiB, zeros after.
    let ntfs_len = 32 * MIB;
    let plain = dir.join("bitlocker-plain.img");
    File::create(&plain)?.set_len(vol_len)?;
    // The victim's tree on a 32 MiB NTFS (mkntfs sizes it to its file).
    let small = make_small_ntfs(dir, &plain_victim, ntfs_len)?;
    sparse_copy(&small, 0, ntfs_len, &plain, 0, false)?;

    let mut f = File::open(&corpus_img)?;
    let meta = read_metadata(&mut f, 0)?;
    let key = unlock(
        &meta,
        &Credential::RecoveryPassword(RecoveryPassword::parse(&rp)?),
    )?
    .key;
    let encrypted = dir.join("bitlocker-volume.img");
    soft::reencrypt_with_plain(&corpus_img, &key, &plain, &encrypted)?;
    // Vouch for it: cryptsetup reads Windows' metadata and opens it with
    // the recovery password (no device-mapper needed), and our reader gives
    // back the plain volume byte for byte.
    let cs = Command::new("cryptsetup")
        .args([
            "open",
            "--test-passphrase",
            "--type",
            "bitlk",
            "--key-file",
            "-",
        ])
        .arg(&encrypted)
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            c.stdin.take().unwrap().write_all(rp.as_bytes())?;
            c.wait()
        })
        .context("running cryptsetup (Debian package cryptsetup-bin)")?;
    ensure!(
        cs.success(),
        "cryptsetup does not open the BitLocker victim with its recovery password"
    );
    let plan = dm::plan(&meta, vol_len)?;
    let mut reader = soft::PlainReader::new(File::open(&encrypted)?, 0, plan, &key)?;
    let mut back = vec![0u8; ntfs_len as usize];
    reader.read_exact(&mut back)?;
    let mut want = vec![0u8; ntfs_len as usize];
    File::open(&plain)?.read_exact(&mut want)?;
    ensure!(
        back == want,
        "the encrypted victim does not decrypt to its plain volume"
    );

    // The disk: the same GPT as the plain victim, the data partition now
    // the BitLocker volume.
    let disk = dir.join("win10-crowdstrike-bitlocker.img");
    fs::copy(&plain_victim.disk, &disk)?;
    ensure!(
        vol_len <= plain_victim.ntfs_len,
        "partition too small for the volume"
    );
    // Clear the old NTFS, then put the encrypted volume in its place.
    let f = OpenOptions::new().write(true).open(&disk)?;
    let zero = vec![0u8; MIB as usize];
    let mut off = 0;
    while off < plain_victim.ntfs_len {
        let n = (plain_victim.ntfs_len - off).min(MIB);
        std::os::unix::fs::FileExt::write_all_at(
            &f,
            &zero[..n as usize],
            plain_victim.ntfs_offset + off,
        )?;
        off += n;
    }
    drop(f);
    sparse_copy(
        &encrypted,
        0,
        vol_len,
        &disk,
        plain_victim.ntfs_offset,
        false,
    )?;
    let _ = fs::remove_file(&plain_victim.disk);
    let _ = fs::remove_file(&corpus_img);
    Ok((
        Victim {
            disk,
            ntfs_offset: plain_victim.ntfs_offset,
            ntfs_len: vol_len,
            expect: plain_victim.expect,
            bitlocker: Some(rp.clone()),
        },
        BitlockerKey {
            recovery_password: rp,
            protector: protector.to_lowercase(),
        },
    ))
}

/// The victim's tree again, on a fresh NTFS of `len` bytes (mkntfs for a
/// smaller partition), copied file by file from the plain victim.
fn make_small_ntfs(dir: &Path, v: &Victim, len: u64) -> Result<PathBuf> {
    use anyhow::ensure;
    let mkntfs = tool("mkntfs", "ntfs-3g")?;
    let out = dir.join("bitlocker-ntfs.img");
    File::create(&out)?.set_len(len)?;
    run(Command::new(mkntfs)
        .args([
            "-F", "-Q", "-s", "512", "-c", "4096", "-H", "255", "-S", "63", "-p",
        ])
        .arg((v.ntfs_offset / SECTOR).to_string())
        .arg(&out))
    .context("formatting the small NTFS volume")?;
    let mnt = dir.join("bitlocker-ntfs-mnt");
    fs::create_dir_all(&mnt)?;
    let m = Mount::new(&out, &mnt, false)?;
    // cp -a over the FUSE mounts keeps names and times (ntfs-3g maps
    // them), which is all the checks look at.
    let copied = with_volume(v, |src| {
        let st = Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", src.display()))
            .arg(&mnt)
            .status()?;
        ensure!(st.success(), "copying the victim's tree");
        Ok(())
    });
    m.unmount()?;
    copied?;
    Ok(out)
}

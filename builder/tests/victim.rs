//! The victim-disk maker (tests/common/victim.rs) checked against the disks
//! it writes: partition tables parsed here from raw bytes, files read back
//! through the readers and through ntfs-3g's own tools (ntfsls, ntfsinfo),
//! hive values read back with hivexregedit, PE versions parsed here, and
//! the CrowdStrike times as NTFS stores them. Expected values are written
//! out literally, not taken from the maker, so a wrong maker fails.

mod common;

use common::victim::{self, McafeeSvchost, Victim};
use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

fn disk_bytes(v: &Victim, offset: u64, len: usize) -> Vec<u8> {
    let mut f = fs::File::open(&v.disk).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut b = vec![0u8; len];
    f.read_exact(&mut b).unwrap();
    b
}

fn u16le(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn u32le(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64le(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// The NTFS partition copied out to a plain volume image, for ntfs-3g's
/// command-line tools (which do not take an offset).
fn volume_image(v: &Victim, dir: &Path) -> std::path::PathBuf {
    let out = dir.join("volume-for-tools.img");
    let data = disk_bytes(v, v.ntfs_offset, v.ntfs_len as usize);
    fs::write(&out, data).unwrap();
    out
}

/// `ntfsls` of a directory (names as stored on the volume).
fn ntfsls(vol: &Path, dir: &str) -> Vec<String> {
    let o = Command::new(victim::tool("ntfsls", "ntfs-3g").unwrap())
        .arg("-p")
        .arg(dir)
        .arg(vol)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "ntfsls {dir}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The "File Altered Time" (last write) ntfsinfo prints for a file.
fn ntfsinfo_altered(vol: &Path, path: &str) -> String {
    let o = Command::new(victim::tool("ntfsinfo", "ntfs-3g").unwrap())
        .arg("-F")
        .arg(path)
        .arg(vol)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "ntfsinfo {path}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    // The first one is $STANDARD_INFORMATION's, the one Windows shows.
    text.lines()
        .find(|l| l.contains("File Altered Time:"))
        .unwrap_or_else(|| panic!("no altered time for {path}: {text}"))
        .split_once(':')
        .unwrap()
        .1
        .trim()
        .to_string()
}

/// Values of one key, read with hivexregedit --export: name → string
/// (REG_SZ decoded from UTF-16LE) or "dword:N" (decimal).
fn hive_values(hive: &[u8], dir: &Path, root: &str, key: &str) -> BTreeMap<String, String> {
    let f = dir.join("hive-under-test");
    fs::write(&f, hive).unwrap();
    let o = Command::new(victim::tool("hivexregedit", "libwin-hivex-perl").unwrap())
        .arg("--export")
        .arg("--prefix")
        .arg(root)
        .arg(&f)
        .arg(key)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "hivexregedit --export {key}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = String::from_utf8(o.stdout).unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix('"') else {
            continue;
        };
        let (name, val) = rest.split_once("\"=").unwrap();
        let v = if let Some(h) = val.strip_prefix("hex(1):") {
            let bytes: Vec<u8> = h
                .split(',')
                .map(|x| u8::from_str_radix(x.trim(), 16).unwrap())
                .collect();
            let units: Vec<u16> = bytes
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units)
                .unwrap()
                .trim_end_matches('\0')
                .to_string()
        } else if let Some(d) = val.strip_prefix("dword:") {
            format!("dword:{}", u32::from_str_radix(d, 16).unwrap())
        } else if let Some(s) = val.strip_prefix('"') {
            s.trim_end_matches('"').to_string()
        } else {
            panic!("unexpected value type in {line}")
        };
        out.insert(name.to_string(), v);
    }
    out
}

/// (machine, file version) of a PE, parsed here: the COFF machine field
/// and VS_FIXEDFILEINFO (signature 0xFEEF04BD) of the version resource.
fn pe_version(b: &[u8]) -> (u16, [u16; 4]) {
    assert_eq!(&b[..2], b"MZ");
    let pe = u32le(b, 0x3C) as usize;
    assert_eq!(&b[pe..pe + 4], b"PE\0\0");
    let machine = u16le(b, pe + 4);
    let sig = 0xFEEF04BDu32.to_le_bytes();
    let at = b
        .windows(4)
        .position(|w| w == sig)
        .expect("no VS_FIXEDFILEINFO in the PE");
    let ms = u32le(b, at + 8);
    let ls = u32le(b, at + 12);
    (
        machine,
        [(ms >> 16) as u16, ms as u16, (ls >> 16) as u16, ls as u16],
    )
}

fn utf16_contains(b: &[u8], s: &str) -> bool {
    let needle: Vec<u8> = s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
    b.windows(needle.len()).any(|w| w == needle)
}

/// Every file on the mounted volume: Windows path → sha256.
fn walk(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .replace('/', "\\");
                out.insert(rel, victim::sha256_hex(&fs::read(&p).unwrap()));
            }
        }
    }
    out
}

/// What every victim must satisfy: each file reads back with its hash,
/// case and time, and nothing else (apart from NTFS's own) is on it.
fn check_files(v: &Victim) {
    victim::with_volume(v, |root| {
        let all = walk(root);
        let ours: BTreeMap<_, _> = all
            .into_iter()
            .filter(|(p, _)| !p.starts_with('$') && !p.starts_with("System Volume Information"))
            .collect();
        assert_eq!(
            ours, v.expect.files,
            "the volume holds exactly the expected files"
        );
        for (p, t) in &v.expect.mtimes {
            let host = p.split('\\').fold(root.to_path_buf(), |a, c| a.join(c));
            let md = fs::metadata(&host).unwrap();
            use std::os::unix::fs::MetadataExt;
            assert_eq!(md.mtime(), *t, "mtime of {p}");
        }
        Ok(())
    })
    .unwrap();
}

// ---------------------------------------------------------------------------

#[test]
fn crc32_and_timestamps_helpers() {
    assert_eq!(victim::crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(victim::ts("2024-07-19 04:09:13").unwrap(), 1_721_362_153);
    assert_eq!(victim::ts("2010-04-21 00:00:00").unwrap(), 1_271_808_000);
    assert_eq!(victim::ts("1970-01-01 00:00:00").unwrap(), 0);
    let t = tempfile::tempdir().unwrap();
    let disk = t.path().join("d.img");
    fs::write(&disk, b"abc").unwrap();
    let v = Victim {
        disk,
        ntfs_offset: 0,
        ntfs_len: 0,
        expect: Default::default(),
        bitlocker: None,
    };
    assert_eq!(
        victim::disk_sha256(&v).unwrap(),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn a_missing_tool_names_its_debian_package() {
    let e = victim::tool("defib-no-such-tool", "some-debian-pkg").unwrap_err();
    assert!(e.to_string().contains("some-debian-pkg"), "{e}");
}

fn check_xp(scenario: McafeeSvchost) {
    let t = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let v = victim::make_xp_mcafee(t.path(), scenario).unwrap();
    eprintln!("make_xp_mcafee({scenario:?}) took {:?}", t0.elapsed());

    // The disk: 64 MiB, MBR with one active NTFS partition at LBA 63.
    assert_eq!(fs::metadata(&v.disk).unwrap().len(), 64 << 20);
    let mbr = disk_bytes(&v, 0, 512);
    assert_eq!(&mbr[510..], &[0x55, 0xAA]);
    let e = &mbr[0x1BE..0x1CE];
    assert_eq!(e[0], 0x80, "partition 1 is active");
    assert_eq!(e[4], 0x07, "partition 1 is NTFS");
    assert_eq!(u32le(e, 8), 63);
    assert_eq!(u64::from(u32le(e, 8)) * 512, v.ntfs_offset);
    assert_eq!(u64::from(u32le(e, 12)) * 512, v.ntfs_len);
    assert_eq!(
        u32le(e, 12) % (255 * 63) + 63,
        255 * 63,
        "ends on a cylinder"
    );
    assert_eq!(e[1..4], [1, 1, 0], "CHS start 0/1/1");
    assert!(
        mbr[0x1CE..0x1FE].iter().all(|&b| b == 0),
        "one partition only"
    );
    let boot = disk_bytes(&v, v.ntfs_offset, 512);
    assert_eq!(&boot[3..11], b"NTFS    ");
    assert_eq!(u16le(&boot, 0x0B), 512);
    assert_eq!(
        u32le(&boot, 0x1C),
        63,
        "NTFS hidden sectors = partition start"
    );
    assert_eq!(
        (u16le(&boot, 0x18), u16le(&boot, 0x1A)),
        (63, 255),
        "geometry"
    );

    // The files, through the readers.
    let x = &v.expect;
    assert_eq!(x.windows_dir, "WINDOWS");
    assert_eq!((x.build, x.arch.as_str()), (2600, "x86"));
    assert_eq!(x.computer_name, "WARD3-PC07");
    check_files(&v);
    assert_eq!(
        victim::read_file(&v, r"WINDOWS\system32\svchost.exe").unwrap(),
        None
    );
    assert_eq!(
        victim::sha256_of(&v, r"windows\SYSTEM32\SvcHost.exe").unwrap(),
        None
    );
    let sys32 = victim::list_dir(&v, r"windows\system32").unwrap();
    assert!(
        !sys32.iter().any(|n| n.eq_ignore_ascii_case("svchost.exe")),
        "{sys32:?}"
    );
    for want in ["config", "dllcache", "drivers", "ntoskrnl.exe"] {
        assert!(sys32.iter().any(|n| n == want), "{want} in {sys32:?}");
    }
    assert_eq!(
        victim::real_path(&v, r"documents and settings\NURSE\my documents\CHART.DOC")
            .unwrap()
            .as_deref(),
        Some(r"Documents and Settings\nurse\My Documents\chart.doc")
    );
    let chart = victim::read_file(&v, r"Documents and Settings\nurse\My Documents\chart.doc")
        .unwrap()
        .unwrap();
    assert_eq!(chart.len(), 1 << 20);
    assert_eq!(
        Some(victim::sha256_hex(&chart)),
        x.files
            .get(r"Documents and Settings\nurse\My Documents\chart.doc")
            .cloned()
    );
    let engine = r"Program Files\Common Files\McAfee\Engine";
    let mut dat_hashes = Vec::new();
    for dat in ["avvscan.dat", "avvnames.dat", "avvclean.dat"] {
        let p = format!(r"{engine}\{dat}");
        let h = victim::sha256_of(&v, &p)
            .unwrap()
            .unwrap_or_else(|| panic!("{p} missing"));
        assert_eq!(x.files.get(&p), Some(&h));
        assert_eq!(x.dats.get(&p), Some(&h));
        dat_hashes.push(h);
    }
    dat_hashes.dedup();
    assert_eq!(dat_hashes.len(), 3, "the DAT files differ");

    // The same names and case through ntfs-3g's own tools (no FUSE).
    let vol = volume_image(&v, t.path());
    let root = ntfsls(&vol, "/");
    for want in [
        "WINDOWS",
        "Program Files",
        "Documents and Settings",
        "boot.ini",
    ] {
        assert!(root.iter().any(|n| n == want), "{want} in {root:?}");
    }
    let s32 = ntfsls(&vol, "/WINDOWS/system32");
    assert!(s32.iter().any(|n| n == "ntoskrnl.exe"), "{s32:?}");
    assert!(
        !s32.iter().any(|n| n.eq_ignore_ascii_case("svchost.exe")),
        "{s32:?}"
    );
    assert_eq!(
        ntfsinfo_altered(&vol, &format!("/{}/avvscan.dat", engine.replace('\\', "/"))),
        "Wed Apr 21 13:58:02 2010 UTC"
    );

    // Hives.
    let sw = victim::read_file(&v, r"WINDOWS\system32\config\SOFTWARE")
        .unwrap()
        .unwrap();
    let cv = hive_values(
        &sw,
        t.path(),
        r"HKEY_LOCAL_MACHINE\SOFTWARE",
        r"Microsoft\Windows NT\CurrentVersion",
    );
    assert_eq!(cv["ProductName"], "Microsoft Windows XP");
    assert_eq!(cv["CurrentVersion"], "5.1");
    assert_eq!(cv["CurrentBuildNumber"], "2600");
    assert_eq!(cv["CSDVersion"], "Service Pack 3");
    let av = hive_values(
        &sw,
        t.path(),
        r"HKEY_LOCAL_MACHINE\SOFTWARE",
        r"McAfee\AVEngine",
    );
    assert_eq!(av["AVDatVersion"], "dword:5958");
    assert_eq!(av["AVDatDate"], "2010/04/21");
    let sy = victim::read_file(&v, r"WINDOWS\system32\config\SYSTEM")
        .unwrap()
        .unwrap();
    let sel = hive_values(&sy, t.path(), r"HKEY_LOCAL_MACHINE\SYSTEM", "Select");
    assert_eq!(sel["Current"], "dword:1");
    let cn = hive_values(
        &sy,
        t.path(),
        r"HKEY_LOCAL_MACHINE\SYSTEM",
        r"ControlSet001\Control\ComputerName\ComputerName",
    );
    assert_eq!(cn["ComputerName"], "WARD3-PC07");

    // PE files.
    let nt = victim::read_file(&v, r"WINDOWS\system32\ntoskrnl.exe")
        .unwrap()
        .unwrap();
    assert_eq!(
        pe_version(&nt),
        (0x014C, [5, 1, 2600, 5512]),
        "ntoskrnl: i386, 5.1.2600.5512"
    );
    assert!(utf16_contains(&nt, "5.1.2600.5512 (xpsp.080413-2111)"));
    let good = victim::xp_svchost().unwrap();
    assert_eq!(
        pe_version(&good),
        (0x014C, [5, 1, 2600, 5512]),
        "svchost: i386, 5.1.2600.5512"
    );
    assert!(utf16_contains(&good, "svchost.exe"));
    assert_ne!(good, nt, "svchost and ntoskrnl differ in content");
    let good_sha = victim::sha256_hex(&good);

    // Where the good svchost is.
    let everything = victim::with_volume(&v, |r| Ok(walk(r))).unwrap();
    let copies: Vec<&String> = everything
        .iter()
        .filter(|(_, h)| **h == good_sha)
        .map(|(p, _)| p)
        .collect();
    match scenario {
        McafeeSvchost::InBup => {
            assert_eq!(x.svchost_sha256.as_deref(), Some(good_sha.as_str()));
            assert!(
                copies.is_empty(),
                "svchost only inside the .bup: {copies:?}"
            );
            let p = x.bup.clone().expect("bup path");
            assert!(p.starts_with(r"Quarantine\") && p.ends_with(".bup"), "{p}");
            let bytes = victim::read_file(&v, &p).unwrap().unwrap();
            assert_eq!(
                &bytes[..8],
                &[0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1],
                "OLE2"
            );
            let enc: Vec<u8> = good[..64].iter().map(|b| b ^ 0x6A).collect();
            assert!(
                bytes.windows(64).any(|w| w == enc),
                "File_0 holds svchost XOR 0x6A"
            );
            let bup = defib_rescue::bup::read_bup(&bytes).unwrap();
            assert_eq!(bup.entries.len(), 1);
            assert_eq!(
                bup.entries[0].original_name,
                r"C:\WINDOWS\system32\svchost.exe"
            );
            assert_eq!(bup.detection.as_deref(), Some("W32/Wecorl.a"));
            let out = defib_rescue::bup::extract(&bytes, &bup.entries[0]).unwrap();
            assert_eq!(out, good);
        }
        McafeeSvchost::InDllcache => {
            assert_eq!(x.svchost_sha256.as_deref(), Some(good_sha.as_str()));
            assert_eq!(copies, [r"WINDOWS\system32\dllcache\svchost.exe"]);
            assert_eq!(x.bup, None);
        }
        McafeeSvchost::InStore | McafeeSvchost::Nowhere => {
            assert!(copies.is_empty(), "{copies:?}");
            assert!(
                !everything
                    .keys()
                    .any(|p| p.to_lowercase().contains("svchost")
                        || p.to_lowercase().ends_with(".bup")),
                "{everything:?}"
            );
            let want = (scenario == McafeeSvchost::InStore).then_some(good_sha.as_str());
            assert_eq!(x.svchost_sha256.as_deref(), want);
        }
    }

    // Reading does not change the disk.
    let before = victim::disk_sha256(&v).unwrap();
    victim::read_file(&v, "boot.ini").unwrap().unwrap();
    assert_eq!(victim::disk_sha256(&v).unwrap(), before);
    assert!(
        !fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&*t.path().to_string_lossy()),
        "nothing left mounted"
    );
}

#[test]
fn xp_mcafee_svchost_in_bup() {
    check_xp(McafeeSvchost::InBup);
}

#[test]
fn xp_mcafee_svchost_in_dllcache() {
    check_xp(McafeeSvchost::InDllcache);
}

#[test]
fn xp_mcafee_svchost_in_store() {
    check_xp(McafeeSvchost::InStore);
}

#[test]
fn xp_mcafee_svchost_nowhere() {
    check_xp(McafeeSvchost::Nowhere);
}

#[test]
fn store_payloads_hold_the_xp_svchost() {
    let t = tempfile::tempdir().unwrap();
    let sha = victim::store_payloads(t.path()).unwrap();
    let obj = fs::read(t.path().join("store/objects").join(&sha)).unwrap();
    assert_eq!(victim::sha256_hex(&obj), sha);
    assert_eq!(pe_version(&obj), (0x014C, [5, 1, 2600, 5512]));
    let idx: serde_json::Value =
        serde_json::from_slice(&fs::read(t.path().join("store/index.json")).unwrap()).unwrap();
    assert_eq!(
        idx,
        serde_json::json!({"schema": 1, "entries": [{
            "name": null, "product": "Microsoft Windows XP", "build": 2600,
            "service_pack": "Service Pack 3", "arch": "x86",
            "path": "WINDOWS\\system32\\svchost.exe", "file_version": "5.1.2600.5512",
            "sha256": sha, "size": obj.len(), "source": "fixture"
        }]})
    );
    // The same svchost the InStore victim expects back (deterministic build).
    let v = victim::make_xp_mcafee(t.path(), McafeeSvchost::InStore).unwrap();
    assert_eq!(v.expect.svchost_sha256.as_deref(), Some(sha.as_str()));
}

#[test]
fn win10_crowdstrike() {
    let t = tempfile::tempdir().unwrap();
    let t0 = Instant::now();
    let v = victim::make_win10_crowdstrike(t.path()).unwrap();
    eprintln!("make_win10_crowdstrike took {:?}", t0.elapsed());
    let total = fs::metadata(&v.disk).unwrap().len();
    assert_eq!(total, 128 << 20);
    let sectors = total / 512;

    // Protective MBR, GPT header + entries (CRCs checked), backup header.
    let pmbr = disk_bytes(&v, 0, 512);
    assert_eq!(&pmbr[510..], &[0x55, 0xAA]);
    assert_eq!(pmbr[0x1BE + 4], 0xEE);
    assert_eq!(u32le(&pmbr, 0x1BE + 8), 1);
    let hdr = disk_bytes(&v, 512, 512);
    assert_eq!(&hdr[..8], b"EFI PART");
    let hsize = u32le(&hdr, 12) as usize;
    assert_eq!(hsize, 92);
    let mut h = hdr[..hsize].to_vec();
    h[16..20].fill(0);
    assert_eq!(victim::crc32(&h), u32le(&hdr, 16), "header CRC");
    assert_eq!(u64le(&hdr, 24), 1);
    assert_eq!(u64le(&hdr, 32), sectors - 1);
    let (n, esz) = (u32le(&hdr, 80) as usize, u32le(&hdr, 84) as usize);
    let ents = disk_bytes(&v, u64le(&hdr, 72) * 512, n * esz);
    assert_eq!(victim::crc32(&ents), u32le(&hdr, 88), "entries CRC");
    let backup = disk_bytes(&v, (sectors - 1) * 512, 512);
    assert_eq!(&backup[..8], b"EFI PART");
    assert_eq!(u64le(&backup, 24), sectors - 1);
    let bents = disk_bytes(&v, u64le(&backup, 72) * 512, n * esz);
    assert_eq!(bents, ents, "backup entries");
    // Type GUIDs as stored on disk (mixed endian), written out by hand.
    const ESP: [u8; 16] = [
        0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E, 0xC9,
        0x3B,
    ];
    const MSR: [u8; 16] = [
        0x16, 0xE3, 0xC9, 0xE3, 0x5C, 0x0B, 0xB8, 0x4D, 0x81, 0x7D, 0xF9, 0x2D, 0xF0, 0x02, 0x15,
        0xAE,
    ];
    const BASIC: [u8; 16] = [
        0xA2, 0xA0, 0xD0, 0xEB, 0xE5, 0xB9, 0x33, 0x44, 0x87, 0xC0, 0x68, 0xB6, 0xB7, 0x26, 0x8E,
        0x99,
    ];
    let used: Vec<&[u8]> = ents
        .chunks(esz)
        .filter(|e| e[..16].iter().any(|&b| b != 0))
        .collect();
    let types: Vec<[u8; 16]> = used.iter().map(|e| e[..16].try_into().unwrap()).collect();
    assert_eq!(types, [ESP, MSR, BASIC]);
    let data = used[2];
    let (first, last) = (u64le(data, 32), u64le(data, 40));
    assert_eq!(first * 512, v.ntfs_offset);
    assert_eq!((last - first + 1) * 512, v.ntfs_len);
    assert!(last <= u64le(&hdr, 48), "inside the usable range");
    assert_eq!(first % 2048, 0, "1 MiB aligned");
    let boot = disk_bytes(&v, v.ntfs_offset, 512);
    assert_eq!(&boot[3..11], b"NTFS    ");
    assert_eq!(u64::from(u32le(&boot, 0x1C)), first);

    let x = &v.expect;
    assert_eq!(
        (x.windows_dir.as_str(), x.build, x.arch.as_str()),
        ("Windows", 19045, "x64")
    );
    assert_eq!(x.computer_name, "ICU-STATION-12");
    assert_eq!(x.svchost_sha256, None);
    check_files(&v);

    // Channel files: content, times (unix seconds, and as NTFS stores them).
    let cs = r"Windows\System32\drivers\CrowdStrike";
    let mut names = victim::list_dir(&v, r"WINDOWS\system32\DRIVERS\crowdstrike").unwrap();
    names.sort();
    assert_eq!(
        names,
        [
            "C-00000285-00000000-00000001.sys",
            "C-00000291-00000000-00000031.sys",
            "C-00000291-00000000-00000032.sys",
            "C-00000291-00000000-00000033.sys"
        ]
    );
    let bad_magic = [0xAA, 0xAA, 0xAA, 0xAA, 0x01, 0x00, 0x23, 0x01];
    let f = |n: &str| format!(r"{cs}\C-{n}.sys");
    let c32 = victim::read_file(&v, &f("00000291-00000000-00000032"))
        .unwrap()
        .unwrap();
    assert_eq!(c32[..8], bad_magic);
    for n in [
        "00000291-00000000-00000031",
        "00000291-00000000-00000033",
        "00000285-00000000-00000001",
    ] {
        let c = victim::read_file(&v, &f(n)).unwrap().unwrap();
        assert!(c.len() > 1000 && c[0] != 0xAA, "{n}");
    }
    let times = [
        (
            "00000291-00000000-00000032",
            1_721_362_153,
            "Fri Jul 19 04:09:13 2024 UTC",
        ),
        (
            "00000291-00000000-00000031",
            1_721_362_180,
            "Fri Jul 19 04:09:40 2024 UTC",
        ),
        (
            "00000291-00000000-00000033",
            1_721_366_875,
            "Fri Jul 19 05:27:55 2024 UTC",
        ),
    ];
    let vol = volume_image(&v, t.path());
    for (n, unix, text) in times {
        assert_eq!(victim::mtime_of(&v, &f(n)).unwrap(), Some(unix), "{n}");
        let p = format!("/{}", f(n).replace('\\', "/"));
        assert_eq!(ntfsinfo_altered(&vol, &p), text, "{n}");
    }
    let bad: Vec<&str> = x.bad.keys().map(String::as_str).collect();
    assert_eq!(
        bad,
        [
            f("00000291-00000000-00000031"),
            f("00000291-00000000-00000032")
        ]
    );
    assert!(x.must_stay().contains_key(&f("00000291-00000000-00000033")));
    assert!(x.must_stay().contains_key(&f("00000285-00000000-00000001")));
    let cs_ls = ntfsls(&vol, "/Windows/System32/drivers");
    assert!(cs_ls.iter().any(|n| n == "CrowdStrike"), "{cs_ls:?}");

    // Hives.
    let sw = victim::read_file(&v, r"Windows\System32\config\SOFTWARE")
        .unwrap()
        .unwrap();
    let cv = hive_values(
        &sw,
        t.path(),
        r"HKEY_LOCAL_MACHINE\SOFTWARE",
        r"Microsoft\Windows NT\CurrentVersion",
    );
    assert_eq!(cv["ProductName"], "Windows 10 Pro");
    assert_eq!(cv["CurrentVersion"], "6.3");
    assert_eq!(cv["CurrentBuild"], "19045");
    assert_eq!(cv["UBR"], "dword:4651");
    assert_eq!(cv["DisplayVersion"], "22H2");
    let sy = victim::read_file(&v, r"Windows\System32\config\SYSTEM")
        .unwrap()
        .unwrap();
    assert_eq!(
        hive_values(&sy, t.path(), r"HKEY_LOCAL_MACHINE\SYSTEM", "Select")["Current"],
        "dword:1"
    );
    let cn = hive_values(
        &sy,
        t.path(),
        r"HKEY_LOCAL_MACHINE\SYSTEM",
        r"ControlSet001\Control\ComputerName\ComputerName",
    );
    assert_eq!(cn["ComputerName"], "ICU-STATION-12");

    // ntoskrnl: x86-64, 10.0.19045.4651.
    let nt = victim::read_file(&v, r"Windows\System32\ntoskrnl.exe")
        .unwrap()
        .unwrap();
    assert_eq!(pe_version(&nt), (0x8664, [10, 0, 19045, 4651]));
    assert!(utf16_contains(&nt, "10.0.19045.4651"));

    assert!(
        !fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&*t.path().to_string_lossy()),
        "nothing left mounted"
    );
}

/// The BitLocker victim is a real BitLocker volume (cryptsetup opens it at
/// creation) holding the CrowdStrike tree, readable on the host.
#[test]
fn win10_crowdstrike_on_bitlocker_reads_back_through_the_software_reader() {
    let t = tempfile::tempdir().unwrap();
    let (v, key) = victim::make_win10_crowdstrike_bitlocker(t.path()).unwrap();
    assert_eq!(key.recovery_password.len(), 55);
    let head = std::fs::read(&v.disk).unwrap();
    let at = v.ntfs_offset as usize;
    assert_eq!(
        &head[at + 3..at + 11],
        b"-FVE-FS-",
        "the partition is BitLocker"
    );
    for (path, sha) in v.expect.bad.iter().chain(v.expect.must_stay().iter()) {
        assert_eq!(
            victim::sha256_of(&v, path).unwrap().as_deref(),
            Some(sha.as_str()),
            "{path}"
        );
    }
}

/// Scans a fresh victim's mounted volume with the rescue itself (scan
/// mode: the mount is read-only) using `playbooks` (file name, text) and
/// returns the playbook result named `id`, as JSON.
fn scan_with(v: &Victim, playbooks: &[(&str, &str)], id: &str) -> serde_json::Value {
    let t = tempfile::tempdir().unwrap();
    fs::create_dir_all(t.path().join("playbooks")).unwrap();
    for (name, text) in playbooks {
        fs::write(t.path().join("playbooks").join(name), text).unwrap();
    }
    let payloads = defib_rescue::repair::Payloads::load(t.path()).unwrap();
    victim::with_volume(v, |root| {
        let w = defib_rescue::repair::evaluate_root(
            root,
            None,
            "test",
            &payloads,
            defib_rescue::engine::Mode::Scan,
            "scan",
            None,
        )?;
        let json = serde_json::to_value(&w)?;
        Ok(json[0]["playbooks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no {id} in {json:#}")))
    })
    .unwrap()
}

/// The quarantine entries the rescue's readers find on the victim, with
/// the sha256 of what each extracts to.
fn quarantined(v: &Victim) -> Vec<(String, String, Option<String>, String)> {
    victim::with_volume(v, |root| {
        let s = defib_rescue::quarantine::scan_all(root);
        assert!(s.unreadable.is_empty(), "{:?}", s.unreadable);
        Ok(s.entries
            .iter()
            .map(|e| {
                let bytes = defib_rescue::quarantine::extract(root, e).unwrap();
                (
                    e.vendor.to_string(),
                    e.original_path.clone(),
                    e.detection.clone(),
                    defib_rescue::hash::sha256_hex(&bytes),
                )
            })
            .collect())
    })
    .unwrap()
}

#[test]
fn xp_avg_user32_only_in_the_chest() {
    let t = tempfile::tempdir().unwrap();
    let v = victim::make_xp_avg(t.path()).unwrap();
    check_files(&v);
    let user32 = v.expect.restored[victim::XP_USER32].clone();
    assert_eq!(victim::sha256_of(&v, victim::XP_USER32).unwrap(), None);
    assert_eq!(
        quarantined(&v),
        [(
            "avast".to_string(),
            r"C:\WINDOWS\system32\user32.dll".to_string(),
            Some("Trojan horse PSW.Banker4.APSA".to_string()),
            user32.clone(),
        )]
    );
    // The shipped playbook, run by the rescue on the fresh disk, finds the
    // damage and would restore from AVG's chest.
    let text = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../payloads/playbooks/avg-user32-2008.toml"),
    )
    .unwrap();
    let pb = scan_with(&v, &[("avg.toml", &text)], "avg-user32-2008");
    assert_eq!(pb["status"], "found", "{pb:#}");
    let restore = &pb["actions"][0];
    assert!(
        restore["source"]
            .as_str()
            .unwrap()
            .starts_with("avast quarantine Documents and Settings/All Users/Application Data/AVG/Antivirus/chest/"),
        "{restore:#}"
    );
    assert_eq!(restore["sha256_after"], user32.as_str());
}

#[test]
fn win10_lsass_only_in_defender() {
    let t = tempfile::tempdir().unwrap();
    let v = victim::make_win10_defender(t.path()).unwrap();
    check_files(&v);
    let lsass = v.expect.restored[victim::WIN10_LSASS].clone();
    assert_eq!(victim::sha256_of(&v, victim::WIN10_LSASS).unwrap(), None);
    assert_eq!(
        quarantined(&v),
        [(
            "defender".to_string(),
            r"C:\Windows\System32\lsass.exe".to_string(),
            Some("Trojan:Win32/Wacatac.B!ml".to_string()),
            lsass.clone(),
        )]
    );
    let pb = scan_with(
        &v,
        &[("t.toml", victim::DEFENDER_TEST_PLAYBOOK)],
        "test-defender-lsass",
    );
    assert_eq!(pb["status"], "found", "{pb:#}");
    assert!(
        pb["actions"][0]["source"]
            .as_str()
            .unwrap()
            .starts_with("defender quarantine "),
        "{pb:#}"
    );
    assert_eq!(pb["actions"][0]["sha256_after"], lsass.as_str());
}

/// Host mode on the mount a Linux technician gets: ntfs-3g through FUSE,
/// which cannot refuse a replacing rename by itself (EINVAL for
/// RENAME_NOREPLACE). `rescue fix` repairs the McAfee victim there, and
/// `rescue undo` puts every byte back, through the hard-link fallback.
#[test]
fn host_fix_and_undo_on_an_ntfs3g_mount() {
    let t = tempfile::tempdir().unwrap();
    let v = victim::make_xp_mcafee(t.path(), McafeeSvchost::InDllcache).unwrap();
    let pay = t.path().join("payloads");
    fs::create_dir_all(pay.join("playbooks")).unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../payloads/playbooks");
    fs::copy(
        repo.join("mcafee-dat-5958.toml"),
        pay.join("playbooks/mcafee-dat-5958.toml"),
    )
    .unwrap();
    let payloads = defib_rescue::repair::Payloads::load(&pay).unwrap();
    let good = v.expect.svchost_sha256.clone().unwrap();
    victim::with_volume_copy_rw(&v, |root| {
        let before = walk(root);
        let w = defib_rescue::repair::evaluate_root(
            root,
            None,
            "ntfs-3g",
            &payloads,
            defib_rescue::engine::Mode::Fix,
            "20260101T000000Z-ntfs3g",
            None,
        )?;
        assert_eq!(
            w[0].verdict,
            defib_rescue::report::Verdict::Repaired,
            "{:#?}",
            w[0]
        );
        let after_fix = walk(root);
        assert_eq!(
            after_fix
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(r"WINDOWS\system32\svchost.exe"))
                .map(|(_, h)| h.as_str()),
            Some(good.as_str())
        );
        defib_rescue::host::undo(root, None, None)?;
        // Everything the victim had is back with its bytes; what the run
        // added is only its own folder (journal, vault, report).
        let after_undo: BTreeMap<String, String> = walk(root)
            .into_iter()
            .filter(|(k, _)| !k.to_ascii_lowercase().starts_with("defib\\"))
            .collect();
        assert_eq!(after_undo, before, "undo did not restore the volume");
        Ok(())
    })
    .unwrap();
}

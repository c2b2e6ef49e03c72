//! Tests for the USB image writer and reader: build an image in a temp
//! directory, then read it back through our reader, the raw bytes, and
//! (when installed, which scripts/test ensures) dosfstools' fsck.fat.

use super::*;

/// Deterministic filler (xorshift64) so big files are not all one byte,
/// which would hide offset mistakes.
fn noise(len: usize, mut state: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn spec() -> EspSpec {
    let mut files = BTreeMap::new();
    files.insert("EFI/BOOT/BOOTX64.EFI".to_string(), noise(900_000, 1));
    files.insert("EFI/BOOT/grubx64.efi".to_string(), noise(2_000_000, 2));
    files.insert(
        "EFI/debian/grub.cfg".to_string(),
        b"set timeout=3\n".to_vec(),
    );
    files.insert("boot/initrd.img".to_string(), noise(3_000_001, 3));
    files.insert("defib/manifest.json".to_string(), b"{}".to_vec());
    files.insert("a/b/c/deep file name.txt".to_string(), b"nested".to_vec());
    files.insert("empty".to_string(), Vec::new());
    EspSpec {
        from_disk: BTreeMap::new(),
        files,
        dirs: vec!["reports".to_string()],
        label: "DEFIB".to_string(),
        free_space: 8 * MIB,
        seed: [7; 32],
        mtime: 1_721_347_200, // 2024-07-19T00:00:00Z
        legacy_bios_bootable: true,
    }
}

fn build(spec: &EspSpec) -> (tempfile::TempDir, PathBuf, ImageSummary) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("defib.img");
    let summary = write_usb_image(spec, &out).unwrap();
    (dir, out, summary)
}

#[test]
fn every_file_reads_back() {
    let s = spec();
    let (_d, out, _) = build(&s);
    let img = UsbImage::open(&out).unwrap();
    for (path, data) in &s.files {
        assert_eq!(&img.read_file(path).unwrap(), data, "{path}");
    }
    assert_eq!(img.list_dir("reports").unwrap(), []);
    let root: Vec<String> = img
        .list_dir("")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(root, ["EFI", "a", "boot", "defib", "empty", "reports"]);
    let boot = img.list_dir("/EFI/BOOT").unwrap();
    assert_eq!(
        boot,
        [
            DirEntryInfo {
                name: "BOOTX64.EFI".into(),
                is_dir: false,
                size: 900_000
            },
            DirEntryInfo {
                name: "grubx64.efi".into(),
                is_dir: false,
                size: 2_000_000
            },
        ]
    );
    assert!(img.read_file("EFI/BOOT/missing").is_err());
}

#[test]
fn is_real_fat32() {
    let (_d, out, summary) = build(&spec());
    let img = UsbImage::open(&out).unwrap();
    assert_eq!(img.fat_type().unwrap(), FatType::Fat32);
    assert!(img.cluster_count().unwrap() >= 65525);
    assert_eq!(img.cluster_size().unwrap(), summary.cluster_size);
    assert_eq!(img.volume_id().unwrap(), summary.fat_volume_id);
}

#[test]
fn tiny_spec_is_still_fat32() {
    let mut s = spec();
    s.files.clear();
    s.free_space = 0;
    let (_d, out, summary) = build(&s);
    let img = UsbImage::open(&out).unwrap();
    assert_eq!(img.fat_type().unwrap(), FatType::Fat32);
    assert!(img.cluster_count().unwrap() >= 65525);
    assert_eq!(summary.cluster_size, 512);
}

#[test]
fn big_volume_gets_4k_clusters() {
    let mut s = spec();
    s.free_space = 400 * MIB; // the file is sparse, so this stays cheap
    let (_d, out, summary) = build(&s);
    assert_eq!(summary.cluster_size, 4096);
    let img = UsbImage::open(&out).unwrap();
    assert_eq!(img.fat_type().unwrap(), FatType::Fat32);
    assert!(img.cluster_count().unwrap() >= 65525);
    assert!(img.free_bytes().unwrap() >= s.free_space);
}

#[test]
fn label_and_partition_name() {
    let (_d, out, _) = build(&spec());
    let img = UsbImage::open(&out).unwrap();
    assert_eq!(img.volume_label().unwrap(), "DEFIB");
    assert_eq!(img.partition_name(), "DEFIB");
}

#[test]
fn layout_is_aligned() {
    let (_d, out, summary) = build(&spec());
    assert_eq!(summary.esp_offset, 2048 * 512);
    assert_eq!(summary.esp_size % MIB, 0);
    assert_eq!(summary.size, MIB + summary.esp_size + MIB);
    assert_eq!(std::fs::metadata(&out).unwrap().len(), summary.size);
    let img = UsbImage::open(&out).unwrap();
    assert_eq!(img.esp_offset(), 2048 * 512);
    assert_eq!(img.esp_size(), summary.esp_size);
    assert_eq!(img.disk_guid(), summary.disk_guid);
    assert_eq!(img.esp_guid(), summary.esp_guid);
}

#[test]
fn raw_mbr_and_gpt_bytes() {
    let (_d, out, summary) = build(&spec());
    let bytes = std::fs::read(&out).unwrap();
    // UEFI 2.10 §5.2.3: boot signature at 510, one 0xEE record at 446.
    assert_eq!(&bytes[510..512], &[0x55, 0xAA]);
    assert_eq!(bytes[446 + 4], 0xEE);
    assert_eq!(&bytes[446 + 8..446 + 12], &1u32.to_le_bytes());
    // UEFI 2.10 §5.3.2: "EFI PART" in LBA 1 and in the last LBA.
    assert_eq!(&bytes[512..520], b"EFI PART");
    let last = bytes.len() - 512;
    assert_eq!(&bytes[last..last + 8], b"EFI PART");
    // UEFI 2.10 §5.3.3: first entry at LBA 2; type GUID (mixed-endian
    // C12A7328-F81F-11D2-BA4B-00A0C93EC93B), StartingLBA at 32,
    // Attributes at 48, name (UTF-16LE) at 56.
    let e = &bytes[1024..1024 + 128];
    assert_eq!(
        &e[..16],
        &[
            0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E,
            0xC9, 0x3B
        ]
    );
    assert_eq!(u64::from_le_bytes(e[32..40].try_into().unwrap()), 2048);
    assert_eq!(
        u64::from_le_bytes(e[40..48].try_into().unwrap()),
        2048 + summary.esp_size / 512 - 1
    );
    assert_eq!(u64::from_le_bytes(e[48..56].try_into().unwrap()), 1 << 2);
    assert_eq!(&e[56..66], b"D\0E\0F\0I\0B\0");
    // BPB_HiddSec (fatgen103 §3.1) points at the partition start.
    let esp = summary.esp_offset as usize;
    assert_eq!(&bytes[esp + 28..esp + 32], &2048u32.to_le_bytes());
    assert_eq!(&bytes[esp + 82..esp + 90], b"FAT32   ");
}

#[test]
fn no_legacy_attribute_when_not_asked() {
    let mut s = spec();
    s.legacy_bios_bootable = false;
    let (_d, out, _) = build(&s);
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(&bytes[1024 + 48..1024 + 56], &[0; 8]);
}

#[test]
fn same_spec_same_bytes() {
    let (_d1, a, sa) = build(&spec());
    let (_d2, b, sb) = build(&spec());
    assert_eq!(sa, sb);
    assert!(
        std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap(),
        "images differ"
    );

    let mut other = spec();
    other.seed[0] ^= 1;
    let (_d3, c, sc) = build(&other);
    assert_ne!(sc.disk_guid, sa.disk_guid);
    assert_ne!(sc.esp_guid, sa.esp_guid);
    assert_ne!(sc.fat_volume_id, sa.fat_volume_id);
    assert_eq!(UsbImage::open(&c).unwrap().disk_guid(), sc.disk_guid);
    // GUIDs carry version 4 / RFC 9562 variant bits.
    let g = uuid::Uuid::parse_str(&sa.disk_guid).unwrap();
    assert_eq!(g.get_version_num(), 4);
}

#[test]
fn free_space_is_honoured() {
    let s = spec();
    let (_d, out, _) = build(&s);
    let img = UsbImage::open(&out).unwrap();
    assert!(img.free_bytes().unwrap() >= s.free_space);
}

#[test]
fn timestamps_are_fixed() {
    let s = spec();
    let (_d, out, summary) = build(&s);
    let bytes = std::fs::read(&out).unwrap();
    let esp = &bytes[summary.esp_offset as usize..(summary.esp_offset + summary.esp_size) as usize];
    let fs = FileSystem::new(io::Cursor::new(esp.to_vec()), FsOptions::new()).unwrap();
    let want = fixed_date_time(s.mtime);
    assert_eq!(
        want.date,
        Date {
            year: 2024,
            month: 7,
            day: 19
        }
    );
    fn walk<T: fatfs::ReadWriteSeek>(dir: fatfs::Dir<T>, want: DateTime, n: &mut usize) {
        for e in dir.iter() {
            let e = e.unwrap();
            let name = e.file_name();
            if name == "." || name == ".." {
                continue;
            }
            assert_eq!(e.modified(), want, "{name}");
            assert_eq!(e.created(), want, "{name}");
            assert_eq!(e.accessed(), want.date, "{name}");
            *n += 1;
            if e.is_dir() {
                walk(e.to_dir(), want, n);
            }
        }
    }
    let mut n = 0;
    walk(fs.root_dir(), want, &mut n);
    assert!(n >= 15, "only {n} entries walked");
}

#[test]
fn dos_dates() {
    let d = |e| {
        let t = fixed_date_time(e);
        (
            t.date.year,
            t.date.month,
            t.date.day,
            t.time.hour,
            t.time.min,
            t.time.sec,
        )
    };
    assert_eq!(d(0), (1980, 1, 1, 0, 0, 0));
    assert_eq!(d(951_782_400), (2000, 2, 29, 0, 0, 0));
    // CrowdStrike's bad channel file: 2024-07-19 04:09 UTC.
    assert_eq!(d(1_721_362_140 + 1), (2024, 7, 19, 4, 9, 0));
    assert_eq!(d(u64::MAX / 2), (2107, 12, 31, 23, 59, 58));
}

#[test]
fn no_temp_file_left_behind() {
    let (d, _out, _) = build(&spec());
    let names: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["defib.img"]);
}

#[test]
fn failed_build_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("defib.img");
    let mut s = spec();
    // A file where a directory must go: fatfs refuses, after the GPT and
    // the format already happened.
    s.files.insert("EFI".to_string(), b"not a dir".to_vec());
    let err = write_usb_image(&s, &out).unwrap_err();
    assert!(format!("{err:#}").contains("EFI"), "{err:#}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn bad_inputs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.img");
    for label in ["", "defib", "TWELVE_CHARS", "DE FIB"] {
        let mut s = spec();
        s.label = label.to_string();
        assert!(
            write_usb_image(&s, &out).is_err(),
            "label {label:?} accepted"
        );
    }
    for path in ["../x", "a//b", "a/./b", "a:b", "a\\b", ""] {
        let mut s = spec();
        s.files.insert(path.to_string(), b"x".to_vec());
        assert!(write_usb_image(&s, &out).is_err(), "path {path:?} accepted");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn non_gpt_file_gives_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("random.bin");
    std::fs::write(&p, noise(3 * 1024 * 1024, 9)).unwrap();
    let err = format!("{:#}", UsbImage::open(&p).unwrap_err());
    assert!(
        err.contains("no GPT found — is this a defib image?"),
        "{err}"
    );
    assert!(err.contains("random.bin"), "{err}");
    let tiny = dir.path().join("tiny.bin");
    std::fs::write(&tiny, b"hello").unwrap();
    let err = format!("{:#}", UsbImage::open(&tiny).unwrap_err());
    assert!(err.contains("no GPT found"), "{err}");
}

#[test]
fn truncated_image_is_refused() {
    let (_d, out, _) = build(&spec());
    // Keep the primary GPT but cut into the ESP: the entry now points past
    // the end of the "disk".
    let f = OpenOptions::new().write(true).open(&out).unwrap();
    f.set_len(4 * MIB).unwrap();
    drop(f);
    let err = format!("{:#}", UsbImage::open(&out).unwrap_err());
    assert!(err.contains("outside"), "{err}");
}

#[test]
fn add_file_replaces_and_creates() {
    let s = spec();
    let (_d, out, _) = build(&s);
    let unsigned = noise(123_457, 11);
    add_file_to_image(&out, "EFI/BOOT/BOOTX64.EFI", &unsigned).unwrap();
    add_file_to_image(&out, "/new/dir/file.txt", b"hi").unwrap();
    let img = UsbImage::open(&out).unwrap();
    assert_eq!(img.read_file("EFI/BOOT/BOOTX64.EFI").unwrap(), unsigned);
    assert_eq!(img.read_file("new/dir/file.txt").unwrap(), b"hi");
    assert_eq!(
        img.read_file("EFI/BOOT/grubx64.efi").unwrap(),
        s.files["EFI/BOOT/grubx64.efi"]
    );
    let names: Vec<String> = img
        .list_dir("EFI/BOOT")
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(
        names,
        ["BOOTX64.EFI", "grubx64.efi"],
        "temp name left behind"
    );
    fsck(&out);
}

/// Copies the ESP out and runs `fsck.fat -n` (dosfstools) on it. A missing
/// fsck.fat is a failure, not a skip: scripts/test installs dosfstools and
/// this is our only independent check of the FAT32 structures.
fn fsck(image: &Path) {
    let img = UsbImage::open(image).unwrap();
    let mut f = File::open(image).unwrap();
    f.seek(SeekFrom::Start(img.esp_offset())).unwrap();
    let mut esp = vec![0u8; img.esp_size() as usize];
    f.read_exact(&mut esp).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let part = dir.path().join("esp.fat");
    std::fs::write(&part, &esp).unwrap();
    let output = match std::process::Command::new("fsck.fat")
        .arg("-n")
        .arg(&part)
        .output()
    {
        Ok(o) => o,
        Err(e) => panic!(
            "fsck.fat could not be run ({e}); install dosfstools \
             (apt-get install -y dosfstools) — scripts/test does this"
        ),
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "fsck.fat -n found problems:\n{stdout}\n{stderr}"
    );
    // dosfstools exits 0 but prints fixes it would make for minor issues.
    for bad in [
        "differ",
        "Free cluster summary",
        "Dirty bit",
        "will be",
        "corrected",
    ] {
        assert!(
            !stdout.contains(bad),
            "fsck.fat -n reported {bad:?}:\n{stdout}"
        );
    }
}

#[test]
fn fsck_fat_finds_no_errors() {
    let (_d, out, _) = build(&spec());
    fsck(&out);
    let mut big = spec();
    big.free_space = 400 * MIB;
    let (_d2, out2, _) = build(&big);
    fsck(&out2);
}

/// Files streamed from the build host (the store's objects) land exactly
/// as the same bytes given in memory would: same image bytes, every time.
#[test]
fn files_from_disk_give_the_same_bytes_as_in_memory() {
    let host = tempfile::tempdir().unwrap();
    let mut streamed = spec();
    let mut inline = spec();
    for i in 0..5u64 {
        let data = noise(300_000 + i as usize * 4099, 100 + i);
        let sha = crate::sha256_hex(&data);
        let src = host.path().join(&sha);
        std::fs::write(&src, &data).unwrap();
        let fat = format!("defib/store/objects/{sha}");
        streamed.from_disk.insert(fat.clone(), src);
        inline.files.insert(fat, data);
    }
    let (_a, out_a, _) = build(&streamed);
    let (_b, out_b, _) = build(&streamed);
    let (_c, out_c, _) = build(&inline);
    let a = std::fs::read(&out_a).unwrap();
    assert_eq!(a, std::fs::read(&out_b).unwrap(), "same inputs, same bytes");
    assert_eq!(a, std::fs::read(&out_c).unwrap(), "streamed = in memory");
    let img = UsbImage::open(&out_a).unwrap();
    for (fat, src) in &streamed.from_disk {
        assert_eq!(img.read_file(fat).unwrap(), std::fs::read(src).unwrap());
    }
    assert!(img.free_bytes().unwrap() >= streamed.free_space);
}

/// A file's FAT chain damaged on a used stick: cut short (its cluster
/// marked free) or looping back to its own first cluster. Either way the
/// read is an error naming the file, never bytes that are not the file's;
/// the other files still read.
#[test]
fn broken_cluster_chains_are_errors_naming_the_file() {
    let mut s = spec();
    let victim = noise(40_000, 9);
    s.files
        .insert("reports/pc.json".to_string(), victim.clone());
    let (_d, out, _) = build(&s);
    let clean = std::fs::read(&out).unwrap();
    let esp = UsbImage::open(&out).unwrap().esp_offset() as usize;
    let b = &clean[esp..];
    let le16 = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as usize;
    let le32 = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) as usize;
    let (bps, spc, reserved, nfats, fatsz) =
        (le16(11), b[13] as usize, le16(14), b[16] as usize, le32(36));
    let data = (reserved + nfats * fatsz) * bps;
    let at = (data..b.len() - 64)
        .step_by(bps)
        .find(|&i| b[i..i + 64] == victim[..64])
        .expect("the file's first cluster");
    let cluster = (at - data) / (bps * spc) + 2;
    for (next, want) in [(0u32, "ends after"), (cluster as u32, "loops")] {
        let mut bytes = clean.clone();
        for n in 0..nfats {
            let e = esp + (reserved + n * fatsz) * bps + cluster * 4;
            bytes[e..e + 4].copy_from_slice(&next.to_le_bytes());
        }
        std::fs::write(&out, &bytes).unwrap();
        let img = UsbImage::open(&out).unwrap();
        let err = format!("{:#}", img.read_file("reports/pc.json").unwrap_err());
        assert!(
            err.contains("reports/pc.json") && err.contains(want) && err.contains("damaged"),
            "{next:#x}: {err}"
        );
        assert_eq!(
            img.read_file("EFI/debian/grub.cfg").unwrap(),
            b"set timeout=3\n"
        );
    }
    std::fs::write(&out, &clean).unwrap();
    let img = UsbImage::open(&out).unwrap();
    assert_eq!(img.read_file("reports/pc.json").unwrap(), victim);
    assert_eq!(img.read_file("REPORTS/PC.JSON").unwrap(), victim);
}

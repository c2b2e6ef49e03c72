//! The quarantine readers on real records of the EICAR test file made by
//! each vendor (shared/corpora/quarantine: the maldump test root and a
//! defender-dump entry). Each test proves the original path and detection
//! name as recorded, and that the extracted bytes are EICAR (bytes and
//! SHA-256). The corpus is read in place, never copied.

use defib_rescue::quarantine::{self, QuarantineEntry, Vendor};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

const EICAR: &[u8] = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
const EICAR_SHA256: &str = "275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f";

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpora/quarantine")
}

fn maldump() -> PathBuf {
    corpus().join("maldump/root")
}

fn sha256(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// The one entry `vendor` finds in the maldump root, extracted and checked.
fn only_entry(vendor: Vendor) -> QuarantineEntry {
    let r = quarantine::reader_for(vendor).expect("reader");
    let s = r.scan(&maldump());
    assert!(s.unreadable.is_empty(), "{vendor}: {:?}", s.unreadable);
    assert_eq!(s.entries.len(), 1, "{vendor}: {:?}", s.entries);
    let e = s.entries.into_iter().next().expect("one");
    let bytes = r.extract(&maldump(), &e).expect("extract");
    assert_eq!(bytes, EICAR, "{vendor}");
    assert_eq!(sha256(&bytes), EICAR_SHA256, "{vendor}");
    if let Some(h) = &e.sha256 {
        assert_eq!(h, EICAR_SHA256, "{vendor}: recorded hash");
    }
    if let Some(n) = e.size {
        assert_eq!(n, 68, "{vendor}: recorded size");
    }
    assert_eq!(e.vendor, vendor);
    e
}

#[test]
fn quarantine_corpus_defender() {
    let e = only_entry(Vendor::Defender);
    assert_eq!(e.original_path, r"C:\Windows\Temp\eicar.com");
    assert_eq!(e.detection.as_deref(), Some("Virus:DOS/EICAR_Test_File"));
    assert_eq!(e.quarantined_at.as_deref(), Some("2022-01-18T13:44:00Z"));
    assert_eq!(
        e.record,
        Path::new("ProgramData/Microsoft/Windows Defender/Quarantine/ResourceData/F7/F7054EAE579A87B7DE9B39B7E0C7ACBDF0C8FBC8")
    );
}

#[test]
fn quarantine_corpus_defender_dump_entry_and_orphan() {
    // defender-dump keeps the files flat: lay them out as Defender does
    // in a temporary volume (copies of 1 KiB in a temp dir, never in the
    // repository).
    let t = tempfile::tempdir().expect("tempdir");
    let q = t
        .path()
        .join("ProgramData/Microsoft/Windows Defender/Quarantine");
    let src = corpus().join("defender-dump/SampleFiles");
    std::fs::create_dir_all(q.join("Entries")).expect("mkdir");
    std::fs::create_dir_all(q.join("ResourceData/DE")).expect("mkdir");
    let guid = "{80008A1B-0000-0000-AED4-A2025AF7BEB3}";
    std::fs::copy(src.join(guid), q.join("Entries").join(guid)).expect("copy");
    for n in [
        "DE32468B6B0FDC7B22982F7D42FF4169D3B847B3",
        "DE32468B6B0FDC7B22982F7D42FF4169D3B847B4",
    ] {
        std::fs::copy(src.join(n), q.join("ResourceData/DE").join(n)).expect("copy");
    }
    let r = quarantine::reader_for(Vendor::Defender).expect("reader");
    let s = r.scan(t.path());
    assert_eq!(s.entries.len(), 1, "{s:?}");
    let e = &s.entries[0];
    assert_eq!(e.original_path, r"C:\Users\Buddy\Downloads\eicarcom2.zip");
    assert_eq!(e.detection.as_deref(), Some("Virus:DOS/EICAR_Test_File"));
    // The entry names the ...B4 copy; the B3 copy has no entry.
    assert!(e
        .record
        .ends_with("DE32468B6B0FDC7B22982F7D42FF4169D3B847B4"));
    assert_eq!(s.unreadable.len(), 1);
    assert!(s.unreadable[0].reason.contains("original path unknown"));
    // The original is eicarcom2.zip (308 bytes): a zip holding a zip
    // holding EICAR.
    let bytes = r.extract(t.path(), e).expect("extract");
    assert_eq!(bytes.len(), 308);
    assert_eq!(e.size, Some(308));
    let inner = unzip_one(&bytes, "eicar_com.zip");
    assert_eq!(unzip_one(&inner, "eicar.com"), EICAR);
}

/// A stored (method 0) member of a zip, by its local header: enough for
/// the EICAR sample zips, which store without compression.
fn unzip_one(zip: &[u8], name: &str) -> Vec<u8> {
    let mut at = 0;
    while at + 30 <= zip.len() && zip[at..at + 4] == *b"PK\x03\x04" {
        let u16at = |o: usize| u16::from_le_bytes([zip[at + o], zip[at + o + 1]]) as usize;
        let size = u32::from_le_bytes(zip[at + 18..at + 22].try_into().expect("4")) as usize;
        let (nlen, xlen) = (u16at(26), u16at(28));
        let n = &zip[at + 30..at + 30 + nlen];
        let data = at + 30 + nlen + xlen;
        assert_eq!(u16at(8), 0, "stored");
        if n == name.as_bytes() {
            return zip[data..data + size].to_vec();
        }
        at = data + size;
    }
    panic!("no member {name}");
}

#[test]
fn quarantine_corpus_defender_writer_rederives_the_real_entry() {
    use defib_rescue::quarantine::defender;
    let q = maldump().join("ProgramData/Microsoft/Windows Defender/Quarantine");
    let entry =
        std::fs::read(q.join("Entries/{80008A1B-0000-0000-7065-3EA2B161B275}")).expect("read");
    let parsed = defender::parse_entry(&entry).expect("parse");
    assert_eq!(defender::encode_entry(&parsed).expect("encode"), entry);
    let res = std::fs::read(q.join("ResourceData/F7/F7054EAE579A87B7DE9B39B7E0C7ACBDF0C8FBC8"))
        .expect("read");
    let parsed_res = defender::parse_resource(&res).expect("parse");
    assert_eq!(parsed_res.data, EICAR);
    assert_eq!(defender::encode_resource(&parsed_res).expect("encode"), res);
    // Our writer, given the real record's values, lays the item out as
    // Defender did: same field ids, kinds and order, same path encodings.
    let w = defender::write_record(
        r"C:\Windows\Temp\eicar.com",
        "Virus:DOS/EICAR_Test_File",
        EICAR,
        parsed.filetime,
    )
    .expect("write");
    let ours = defender::parse_entry(&w.entry).expect("parse ours");
    let (a, b) = (&ours.items[0], &parsed.items[0]);
    assert_eq!(a.path, b.path);
    assert_eq!(a.kind, b.kind);
    let shape = |i: &defender::Item| {
        i.fields
            .iter()
            .map(|f| (f.id, f.kind, f.value.len()))
            .collect::<Vec<_>>()
    };
    let real_shape = shape(b);
    let our_shape = shape(a);
    assert_eq!(
        our_shape[..],
        real_shape[..our_shape.len()],
        "ours {our_shape:x?} real {real_shape:x?}"
    );
    assert_eq!(ours.strings, parsed.strings);
    assert_eq!(a.size(), Some(68));
}

#[test]
fn quarantine_corpus_mcafee_ens() {
    let e = only_entry(Vendor::McafeeEns);
    assert_eq!(e.original_path, r"C:\Users\analyst\Desktop\eicar.com");
    assert_eq!(e.detection.as_deref(), Some("EICAR test file"));
    assert_eq!(
        e.quarantined_at.as_deref(),
        Some("2023-07-19T04:39:10-00:00")
    );
}

#[test]
fn quarantine_corpus_avast_and_avg() {
    let r = quarantine::reader_for(Vendor::Avast).expect("reader");
    let s = r.scan(&maldump());
    assert!(s.unreadable.is_empty(), "{:?}", s.unreadable);
    assert_eq!(s.entries.len(), 2, "{:?}", s.entries);
    let mut paths = Vec::new();
    for e in &s.entries {
        assert_eq!(e.detection.as_deref(), Some("EICAR Test-NOT virus!!!"));
        assert_eq!(e.sha256.as_deref(), Some(EICAR_SHA256));
        let bytes = r.extract(&maldump(), e).expect("extract");
        assert_eq!(bytes, EICAR);
        assert_eq!(sha256(&bytes), EICAR_SHA256);
        paths.push((e.record.clone(), e.original_path.clone()));
    }
    paths.sort();
    assert_eq!(
        paths,
        [
            (
                PathBuf::from("$AV_ASW/$VAULT/vault.db"),
                r"C:\Users\IEUser\AppData\Local\Temp\eicar.com".to_string()
            ),
            (
                PathBuf::from("$AV_AVG/$VAULT/vault.db"),
                r"C:\Users\analyst\Desktop\eicar.com".to_string()
            ),
        ]
    );
}

#[test]
fn quarantine_corpus_avira() {
    let e = only_entry(Vendor::Avira);
    assert_eq!(
        e.original_path,
        r"C:\Users\IEUser\Desktop\Threats\eicar.com"
    );
    assert_eq!(e.detection.as_deref(), Some("Eicar-Test-Signature"));
}

#[test]
fn quarantine_corpus_eset() {
    let e = only_entry(Vendor::Eset);
    assert_eq!(e.original_path, r"C:\Windows\Temp\eicar.com");
    assert_eq!(e.detection.as_deref(), Some("@Teststring.Eicar"));
    // The .NQF coding, applied by our encoder, gives the real file.
    let real = std::fs::read(maldump().join(&e.record)).expect("read");
    assert_eq!(quarantine::eset::encode(EICAR), real);
    assert_eq!(
        quarantine::eset::nqf_name(EICAR),
        "3395856CE81F2B7382DEE72602F798B642F14140.NQF"
    );
}

#[test]
fn quarantine_corpus_forticlient() {
    let e = only_entry(Vendor::Forticlient);
    assert_eq!(e.original_path, r"C:\Users\IEUser\Downloads\eicar.com");
    assert_eq!(e.detection.as_deref(), Some("EICAR_TEST_FILE"));
    assert_eq!(
        e.quarantined_at.as_deref(),
        Some("2021-08-25T07:27:53-00:00")
    );
}

#[test]
fn quarantine_corpus_gdata() {
    let e = only_entry(Vendor::Gdata);
    assert_eq!(e.original_path, r"C:\Users\IEUser\Desktop\eicar.com");
    assert_eq!(
        e.detection.as_deref(),
        Some("EICAR-Test-File (not a virus)")
    );
}

#[test]
fn quarantine_corpus_kaspersky() {
    let e = only_entry(Vendor::Kaspersky);
    assert_eq!(e.original_path, r"C:\Users\IEUser\Desktop\eicar.com");
    assert_eq!(e.detection.as_deref(), Some("Virus EICAR-Test-File"));
    assert_eq!(
        e.quarantined_at.as_deref(),
        Some("2021-08-30T04:48:51-00:00")
    );
}

#[test]
fn quarantine_corpus_malwarebytes() {
    let e = only_entry(Vendor::Malwarebytes);
    assert_eq!(e.original_path, r"C:\Users\IEUser\Downloads\eicar.com");
    assert_eq!(e.detection.as_deref(), Some("EICAR-AV-Test"));
    assert_eq!(e.quarantined_at.as_deref(), Some("2021-08-24T11:52:20Z"));
    // Our writer's .quar for EICAR is the real one, byte for byte.
    let (_, quar) =
        quarantine::malwarebytes::write(&e.original_path, "EICAR-AV-Test", EICAR, &e.locator)
            .expect("write");
    assert_eq!(
        quar,
        std::fs::read(maldump().join(&e.record)).expect("read")
    );
}

#[test]
fn quarantine_corpus_scan_all_finds_every_vendor() {
    let s = quarantine::scan_all(&maldump());
    assert!(s.unreadable.is_empty(), "{:?}", s.unreadable);
    let mut vendors: Vec<Vendor> = s.entries.iter().map(|e| e.vendor).collect();
    vendors.dedup();
    assert_eq!(
        vendors,
        [
            Vendor::Defender,
            Vendor::McafeeEns,
            Vendor::Kaspersky,
            Vendor::Eset,
            Vendor::Avast,
            Vendor::Avira,
            Vendor::Malwarebytes,
            Vendor::Gdata,
            Vendor::Forticlient,
        ]
    );
    for e in &s.entries {
        let b = quarantine::extract(&maldump(), e).expect("extract");
        assert_eq!(sha256(&b), EICAR_SHA256, "{e:?}");
        assert!(
            e.original_path.to_lowercase().ends_with("eicar.com"),
            "{e:?}"
        );
    }
}

/// Copies the maldump root into a writable temp volume.
fn copy_tree(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let dst = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            std::fs::create_dir_all(&dst).expect("mkdir");
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::write(&dst, std::fs::read(e.path()).expect("read")).expect("write");
        }
    }
}

fn files_below(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).expect("read_dir") {
        let e = e.expect("entry");
        if e.file_type().expect("type").is_dir() {
            files_below(&e.path(), out);
        } else {
            out.push(e.path());
        }
    }
}

/// Every real record, damaged every way we can think of (truncated,
/// bytes flipped in headers and lengths, garbage appended): no reader
/// panics, nothing that disagrees with a recorded hash is ever returned,
/// and a record cut in half is refused by name — listed as unreadable, or
/// its extraction fails naming it.
#[test]
fn quarantine_corpus_damaged_records_are_refused_never_panic() {
    let t = tempfile::tempdir().expect("tempdir");
    copy_tree(&maldump(), t.path());
    let root = t.path();
    let mut files = Vec::new();
    files_below(root, &mut files);
    files.sort();
    assert!(files.len() >= 15, "{files:?}");
    for f in &files {
        let good = std::fs::read(f).expect("read");
        let rel = f.strip_prefix(root).expect("rel").to_path_buf();
        let n = good.len();
        let mut variants: Vec<(String, Vec<u8>)> = Vec::new();
        for cut in [0, 1, 7, n / 2, n.saturating_sub(1)] {
            variants.push((format!("cut to {cut}"), good[..cut.min(n)].to_vec()));
        }
        for at in [
            0,
            4,
            8,
            0x10,
            0x14,
            0x28,
            0x3C,
            0x58,
            n / 3,
            n / 2,
            n.saturating_sub(1),
        ] {
            if at < n {
                let mut v = good.clone();
                v[at] ^= 0xFF;
                variants.push((format!("byte {at} flipped"), v));
                let mut v = good.clone();
                let end = (at + 4).min(n);
                v[at..end].fill(0xFF);
                variants.push((format!("0xFF at {at}"), v));
            }
        }
        let mut longer = good.clone();
        longer.extend_from_slice(&[0x41; 16]);
        variants.push(("16 bytes appended".into(), longer));

        for (what, bytes) in variants {
            std::fs::write(f, &bytes).expect("write");
            let s = quarantine::scan_all(root);
            for u in &s.unreadable {
                assert!(u.path.is_relative() && !u.reason.is_empty(), "{u:?}");
            }
            let mut refused_by_name = s.unreadable.iter().any(|u| u.path == rel);
            for e in &s.entries {
                match quarantine::extract(root, e) {
                    Ok(b) => {
                        if e.sha256.is_some() {
                            assert_eq!(sha256(&b), EICAR_SHA256, "{} {what}: {e:?}", rel.display());
                        }
                    }
                    Err(err) => {
                        let msg = format!("{err:#}");
                        if e.record == rel && msg.contains(&*rel.to_string_lossy()) {
                            refused_by_name = true;
                        }
                    }
                }
            }
            if what == format!("cut to {}", n / 2) && n > 1 {
                assert!(
                    refused_by_name,
                    "{} {what}: not refused by name\n{:?}\n{:?}",
                    rel.display(),
                    s.unreadable,
                    s.entries
                );
            }
        }
        std::fs::write(f, &good).expect("restore");
    }
}

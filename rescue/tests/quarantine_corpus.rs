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

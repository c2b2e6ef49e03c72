use super::*;

/// A GUID's on-disk bytes (the mixed-endian form EFI stores).
fn guid_bytes(s: &str) -> Vec<u8> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    let b: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).unwrap())
        .collect();
    let mut out = Vec::new();
    out.extend(b[0..4].iter().rev());
    out.extend(b[4..6].iter().rev());
    out.extend(b[6..8].iter().rev());
    out.extend(&b[8..16]);
    out
}

/// One EFI_SIGNATURE_LIST of `kind` holding `payloads` (all one size).
fn list(kind: &str, payloads: &[Vec<u8>]) -> Vec<u8> {
    let sig_size = 16 + payloads.first().map_or(0, Vec::len);
    let size = 28 + sig_size * payloads.len();
    let mut out = guid_bytes(kind);
    out.extend((size as u32).to_le_bytes());
    out.extend(0u32.to_le_bytes());
    out.extend((sig_size as u32).to_le_bytes());
    for p in payloads {
        out.extend(guid_bytes("77fa9abd-0359-4d32-bd60-28f4e78f784b"));
        out.extend(p);
    }
    out
}

/// A self-signed certificate with subject CN `cn`, in DER, made by the
/// openssl command (an independent encoder).
fn cert(cn: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("c.der");
    let st = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-outform", "DER", "-subj"])
        .arg(format!("/O=Test/CN={cn}"))
        .arg("-keyout")
        .arg(dir.path().join("k.pem"))
        .arg("-out")
        .arg(&out)
        .output()
        .expect("openssl is needed (scripts/setup --test installs it)");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    std::fs::read(out).unwrap()
}

fn var(efivars: &Path, name: &str, vendor: &str, data: &[u8]) {
    let mut bytes = vec![0x27, 0, 0, 0];
    bytes.extend(data);
    std::fs::write(efivars.join(format!("{name}-{vendor}")), bytes).unwrap();
}

#[test]
fn certificates_hashes_and_other_types_are_counted() {
    let a = cert(WINDOWS_CA_2023);
    let b = cert(UEFI_CA_2011);
    let mut data = list(CERT_X509, std::slice::from_ref(&a));
    data.extend(list(CERT_X509, std::slice::from_ref(&b)));
    data.extend(list(CERT_SHA256, &[vec![1; 32], vec![2; 32], vec![3; 32]]));
    data.extend(list(
        "3c5766e8-269c-4e34-aa14-ed776e85b3b6",
        &[vec![0; 256]],
    ));
    let db = parse_database(&data);
    assert_eq!(db.problem, None);
    assert_eq!(db.subjects(), vec![WINDOWS_CA_2023, UEFI_CA_2011]);
    assert_eq!(
        db.signatures
            .iter()
            .filter(|s| **s == Signature::Sha256)
            .count(),
        3
    );
    assert!(matches!(db.signatures.last(), Some(Signature::Other(_))));
    let Signature::X509 { sha256, .. } = &db.signatures[0] else {
        panic!()
    };
    assert_eq!(sha256, &hex(&Sha256::digest(&a)));
}

#[test]
fn a_bad_list_stops_the_parse_and_keeps_what_came_before() {
    let good = list(CERT_SHA256, &[vec![1; 32]]);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![0; 10], "shorter than a list header"),
        (
            {
                let mut l = list(CERT_SHA256, &[vec![1; 32]]);
                l[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
                l
            },
            "claims",
        ),
        (
            {
                let mut l = list(CERT_SHA256, &[vec![1; 32]]);
                l[20..24].copy_from_slice(&1000u32.to_le_bytes());
                l
            },
            "header of 1000 bytes",
        ),
        (
            {
                let mut l = list(CERT_SHA256, &[vec![1; 32]]);
                l[24..28].copy_from_slice(&0u32.to_le_bytes());
                l
            },
            "owner GUID is 16",
        ),
        (
            {
                let mut l = list(CERT_SHA256, &[vec![1; 32]]);
                l[24..28].copy_from_slice(&47u32.to_le_bytes());
                l
            },
            "not a multiple of 47",
        ),
    ];
    for (bad, why) in cases {
        let mut data = good.clone();
        data.extend(&bad);
        let db = parse_database(&data);
        assert_eq!(db.signatures, vec![Signature::Sha256], "{why}");
        let p = db.problem.unwrap_or_default();
        assert!(p.contains(why) && p.contains("byte 76"), "{why}: {p}");
    }
    // Garbage in a certificate slot is named, not fatal.
    let db = parse_database(&list(CERT_X509, &[vec![0x30, 0x03, 1, 2, 3]]));
    assert_eq!(db.subjects(), vec!["(unreadable certificate)"]);
}

#[test]
fn inventory_from_a_fake_efivarfs_and_the_2023_judgement() {
    let d = tempfile::tempdir().unwrap();
    assert!(read(d.path()).is_none(), "no efivarfs: a BIOS boot");
    let ev = d.path().join("sys/firmware/efi/efivars");
    std::fs::create_dir_all(&ev).unwrap();
    var(&ev, "SecureBoot", GLOBAL, &[1]);
    var(&ev, "SetupMode", GLOBAL, &[0]);
    var(&ev, "PK", GLOBAL, &list(CERT_X509, &[cert("ACME PK")]));
    var(
        &ev,
        "KEK",
        GLOBAL,
        &list(CERT_X509, &[cert("Microsoft Corporation KEK CA 2011")]),
    );
    var(
        &ev,
        "db",
        IMAGE_SECURITY,
        &[
            list(CERT_X509, &[cert(WINDOWS_CA_2023)]),
            list(CERT_X509, &[cert(UEFI_CA_2011)]),
        ]
        .concat(),
    );
    var(
        &ev,
        "dbx",
        IMAGE_SECURITY,
        &list(CERT_SHA256, &[vec![9; 32], vec![8; 32]]),
    );
    var(
        &ev,
        "SbatLevelRT",
        SHIM_LOCK,
        b"sbat,1,2024010900\nshim,4\ngrub,3\ngrub.debian,4\n\0",
    );
    let inv = read(d.path()).unwrap();
    assert_eq!(inv.enabled, Some(true));
    assert_eq!(inv.setup_mode, Some(false));
    assert_eq!(inv.pk, vec!["ACME PK"]);
    assert_eq!(inv.db, vec![WINDOWS_CA_2023, UEFI_CA_2011]);
    assert_eq!(inv.db_sha256.len(), 2);
    assert_eq!(inv.pk_sha256.len(), 1);
    assert_eq!(inv.kek_sha256.len(), 1);
    assert_ne!(inv.db_sha256[0], inv.db_sha256[1]);
    assert_eq!(inv.dbx_entries, 2);
    assert_eq!(
        inv.sbat_level.as_deref(),
        Some("sbat,1,2024010900\nshim,4\ngrub,3\ngrub.debian,4")
    );
    assert_eq!(inv.ca_2023_ready.verdict, "needs-update");
    assert!(
        inv.ca_2023_ready.why.contains(KEK_CA_2023),
        "{:?}",
        inv.ca_2023_ready
    );
    assert!(!inv.ca_2023_ready.why.contains(WINDOWS_CA_2023));
    assert!(inv.notes.is_empty(), "{:?}", inv.notes);

    var(&ev, "KEK", GLOBAL, &list(CERT_X509, &[cert(KEK_CA_2023)]));
    assert_eq!(read(d.path()).unwrap().ca_2023_ready.verdict, "ready");

    // Setup mode: nothing enrolled, nothing to judge.
    std::fs::remove_file(ev.join(format!("PK-{GLOBAL}"))).unwrap();
    var(&ev, "SetupMode", GLOBAL, &[1]);
    var(&ev, "SecureBoot", GLOBAL, &[0]);
    let inv = read(d.path()).unwrap();
    assert_eq!(inv.ca_2023_ready.verdict, "unknown");
    assert!(summary(&inv).contains("Secure Boot setup mode"));

    // A truncated variable is a note, not a failure.
    std::fs::write(ev.join(format!("db-{IMAGE_SECURITY}")), [7, 0]).unwrap();
    let inv = read(d.path()).unwrap();
    assert!(
        inv.notes.iter().any(|n| n.contains("db: 2 bytes")),
        "{:?}",
        inv.notes
    );
}

#[test]
fn control_characters_in_a_subject_are_dropped() {
    let c = cert("Evil\u{1b}[2J CA");
    let db = parse_database(&list(CERT_X509, &[c]));
    assert_eq!(db.subjects(), vec!["Evil[2J CA"]);
}

use super::*;
use crate::bitlocker::keyfile::unlock_from_store;
use crate::bitlocker::{read_metadata, Guid};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A key server on 127.0.0.1: `files` by path, 404 otherwise; records
/// every request line.
struct Server {
    url: String,
    asked: Arc<Mutex<Vec<String>>>,
}

fn serve(files: BTreeMap<String, (u16, Vec<u8>)>) -> Server {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let a = asked.clone();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            let mut data = Vec::new();
            let mut buf = [0u8; 1024];
            while !data.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => data.extend_from_slice(&buf[..n]),
                }
            }
            let head = String::from_utf8_lossy(&data).to_string();
            let line = head.lines().next().unwrap_or("").to_string();
            let path = line.split(' ').nth(1).unwrap_or("").to_string();
            a.lock().unwrap().push(line);
            let (code, body) = files.get(&path).cloned().unwrap_or((404, Vec::new()));
            let _ = write!(
                c,
                "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = c.write_all(&body);
        }
    });
    Server {
        url: format!("http://127.0.0.1:{port}"),
        asked,
    }
}

impl Server {
    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/corpora/bitlocker")
}

/// The Windows 10 XTS image of the corpus: its metadata, recovery
/// password and that protector's GUID.
fn xts_volume(dir: &Path) -> (Metadata, String, Guid) {
    let tarball = corpus().join("bitlk-images.tar.xz");
    assert!(
        tarball.is_file(),
        "{} missing: the shared corpora must sit beside the repo",
        tarball.display()
    );
    let st = std::process::Command::new("tar")
        .arg("xJSf")
        .arg(&tarball)
        .arg("-C")
        .arg(dir)
        .arg("bitlk-aes-xts-128.img")
        .status()
        .unwrap();
    assert!(st.success());
    let mut f = std::fs::File::open(dir.join("bitlk-aes-xts-128.img")).unwrap();
    let meta = read_metadata(&mut f, 0).unwrap();
    let conf = std::fs::read_to_string(corpus().join("images.conf")).unwrap();
    let section = conf
        .split("[bitlk-aes-xts-128]")
        .nth(1)
        .unwrap()
        .split("\n[")
        .next()
        .unwrap()
        .to_string();
    let get = |k: &str| {
        section
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap()
            .trim()
            .to_string()
    };
    let guid = Guid::parse(&get("RP_VMK_GUID")).unwrap();
    (meta, get("RP"), guid)
}

fn up() -> Link {
    Box::new(|_| Ok(()))
}

fn fast() -> Limits {
    Limits {
        connect: Duration::from_secs(2),
        io: Duration::from_secs(2),
        max_body: 4096,
    }
}

#[test]
fn answers_are_read_with_their_bounds() {
    let lim = fast();
    let ok = parse_answer(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", &lim).unwrap();
    assert!(matches!(ok, Got::Body(b) if b.as_slice() == b"abc"));
    // Without a length the body runs to the end (HTTP/1.0).
    let ok = parse_answer(b"HTTP/1.0 200 OK\r\n\r\nabc", &lim).unwrap();
    assert!(matches!(ok, Got::Body(b) if b.as_slice() == b"abc"));
    for nf in [
        &b"HTTP/1.1 404 Not Found\r\n\r\n"[..],
        b"HTTP/1.1 410 Gone\r\n\r\n",
    ] {
        assert!(matches!(parse_answer(nf, &lim), Ok(Got::NotFound)));
    }
    let err = |d: &[u8]| match parse_answer(d, &lim) {
        Err(GetError::Answer(m)) => m,
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("accepted {:?}", String::from_utf8_lossy(d)),
    };
    assert!(err(b"HTTP/1.1 403 Forbidden\r\n\r\n").contains("403 Forbidden"));
    assert!(err(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc").contains("cut off"));
    assert!(
        err(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc").contains("chunked")
    );
    assert!(err(b"HTTP/1.1 200 OK\r\n").contains("no complete"));
    assert!(err(b"SSH-2.0-OpenSSH\r\n\r\n").contains("no HTTP status"));
    let mut big = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
    big.extend(vec![b'1'; 4097]);
    assert!(err(&big).contains("larger than 4 KiB"));
}

#[test]
fn a_bare_key_a_csv_and_a_bek_are_read_by_content() {
    let rp = "235818-357951-253979-013365-241120-245575-342914-591910";
    let guid = "64311dea-4587-4029-924a-ba299647998e";
    let mut s = KeyStore::new();
    // A bare key: its ID is the GUID in the URL it came from.
    let n = add_body(
        &mut s,
        format!("{rp}\n").as_bytes(),
        &format!("network:http://10.0.0.1/k/{guid}"),
    );
    assert_eq!(n, 1);
    let g = Guid::parse(guid).unwrap();
    assert_eq!(s.candidates(&g).len(), 1);
    assert!(s.records[0].source.starts_with("network:"));
    // A CrowdStrike CSV for two volumes.
    let csv = format!(
        "KeyID,RecoveryKey\r\n{{{}}},{rp}\r\n{{3FD763F9-74C7-4E90-8FA2-1F6A2E2B4E0C}},{rp}\r\n",
        guid.to_uppercase()
    );
    assert_eq!(
        add_body(&mut s, csv.as_bytes(), "network:http://10.0.0.1/all.csv"),
        2
    );
    assert_eq!(s.candidates(&g).len(), 2);
    // Nothing usable: said, without the body.
    let before = s.rejected.len();
    assert_eq!(
        add_body(&mut s, b"<html>hello</html>", "network:http://10.0.0.1/k/x"),
        0
    );
    assert_eq!(s.rejected.len(), before + 1);
    // A .BEK from the corpus.
    let dir = tempfile::tempdir().unwrap();
    let bek = "4381F759-C4F8-4DE0-BB61-FC33A831BDA5.BEK";
    let st = std::process::Command::new("tar")
        .arg("xJSf")
        .arg(corpus().join("bitlk-images.tar.xz"))
        .arg("-C")
        .arg(dir.path())
        .arg(bek)
        .status()
        .unwrap();
    assert!(st.success());
    let bytes = std::fs::read(dir.path().join(bek)).unwrap();
    let mut s = KeyStore::new();
    assert_eq!(add_body(&mut s, &bytes, "network:http://10.0.0.1/k/x"), 1);
    assert!(matches!(
        s.records[0].material,
        crate::bitlocker::keyfile::KeyMaterial::StartupKey(_)
    ));
}

#[test]
fn each_protector_is_asked_for_lowercase_then_uppercase_and_opens_the_volume() {
    let dir = tempfile::tempdir().unwrap();
    let (meta, rp, guid) = xts_volume(dir.path());
    let upper = guid.to_string().to_ascii_uppercase();
    let srv = serve(BTreeMap::from([(
        format!("/keys/{upper}"),
        (200, format!("{rp}\r\n").into_bytes()),
    )]));
    let url = KeysUrl::parse(&format!("{}/keys/", srv.url)).unwrap();
    let mut nk = NetKeys::new(url, fast(), up());
    let mut store = KeyStore::new();
    let f = nk.fetch("vda", &meta, &mut store);
    assert!(f.problems.is_empty(), "{:?}", f.problems);
    assert_eq!(f.added, 1, "{:?}", f.lines);
    let asked = srv.asked();
    // The volume has a password and a recovery password protector: only
    // the recovery password's GUID is asked for, in two spellings at most.
    assert_eq!(
        asked,
        vec![
            format!("GET /keys/{guid} HTTP/1.0"),
            format!("GET /keys/{upper} HTTP/1.0")
        ]
    );
    assert!(
        f.lines.iter().any(|l| l.contains("no key at")),
        "{:?}",
        f.lines
    );
    for l in &f.lines {
        assert!(!l.contains(&rp), "a key reached a line: {l}");
    }
    let u = unlock_from_store(&meta, &store).expect("the fetched key opens the volume");
    assert_eq!(u.protector, guid);
    // A second volume with the same protector costs no request.
    let f = nk.fetch("vdb", &meta, &mut store);
    assert_eq!(f.added, 0);
    assert_eq!(srv.asked().len(), 2);
}

#[test]
fn a_missing_key_is_quiet_and_a_refusal_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let (meta, _, guid) = xts_volume(dir.path());
    let srv = serve(BTreeMap::from([(
        format!("/denied/{guid}"),
        (403, Vec::new()),
    )]));
    let mut store = KeyStore::new();
    let url = KeysUrl::parse(&format!("{}/keys/", srv.url)).unwrap();
    let f = NetKeys::new(url, fast(), up()).fetch("vda", &meta, &mut store);
    assert!(
        f.problems.is_empty(),
        "404 is not a problem: {:?}",
        f.problems
    );
    assert_eq!(f.added, 0);
    let url = KeysUrl::parse(&format!("{}/denied/", srv.url)).unwrap();
    let f = NetKeys::new(url, fast(), up()).fetch("vda", &meta, &mut store);
    assert_eq!(f.problems.len(), 1, "{:?}", f.problems);
    assert!(f.problems[0].contains(&format!("/denied/{guid}")) && f.problems[0].contains("403"));
    // A file URL that is not there is a mistake worth saying.
    let url = KeysUrl::parse(&format!("{}/fleet.csv", srv.url)).unwrap();
    let f = NetKeys::new(url, fast(), up()).fetch("vda", &meta, &mut store);
    assert!(
        f.problems.iter().any(|p| p.contains("no key file there")),
        "{:?}",
        f.problems
    );
}

#[test]
fn a_key_file_url_is_fetched_once_for_every_volume() {
    let dir = tempfile::tempdir().unwrap();
    let (meta, rp, guid) = xts_volume(dir.path());
    let csv = format!("KeyID,RecoveryKey\n{guid},{rp}\n");
    let srv = serve(BTreeMap::from([(
        "/fleet.csv".to_string(),
        (200, csv.into_bytes()),
    )]));
    let url = KeysUrl::parse(&format!("{}/fleet.csv", srv.url)).unwrap();
    let mut nk = NetKeys::new(url, fast(), up());
    let mut store = KeyStore::new();
    assert_eq!(nk.fetch("vda", &meta, &mut store).added, 1);
    assert_eq!(nk.fetch("vdb", &meta, &mut store).added, 0);
    assert_eq!(srv.asked(), vec!["GET /fleet.csv HTTP/1.0".to_string()]);
    assert!(unlock_from_store(&meta, &store).is_ok());
}

#[test]
fn an_unreachable_server_or_network_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let (meta, _, _) = xts_volume(dir.path());
    // A port nobody listens on.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = KeysUrl::parse(&format!("http://127.0.0.1:{port}/keys/")).unwrap();
    let mut nk = NetKeys::new(url.clone(), fast(), up());
    let mut store = KeyStore::new();
    let f = nk.fetch("vda", &meta, &mut store);
    assert_eq!(f.problems.len(), 1, "{:?}", f.problems);
    assert!(f.problems[0].contains("connecting to"), "{:?}", f.problems);
    let f = nk.fetch("vdb", &meta, &mut store);
    assert!(f.problems.is_empty());
    assert!(f.lines[0].contains("not asking"), "{:?}", f.lines);
    // No network at all: the link is tried once.
    let mut tries = 0;
    let mut nk = NetKeys::new(
        url,
        fast(),
        Box::new(move |_| {
            tries += 1;
            assert_eq!(tries, 1, "the link is brought up once");
            Err("no network interface".into())
        }),
    );
    for dev in ["vda", "vdb"] {
        let f = nk.fetch(dev, &meta, &mut store);
        assert!(
            f.problems[0].contains("no network interface"),
            "{:?}",
            f.problems
        );
    }
}

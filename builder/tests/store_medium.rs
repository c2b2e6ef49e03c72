//! The known-good store on the medium, end to end: an image whose store is
//! over 400 MB (synthetic objects plus XP SP3's svchost.exe) boots under
//! OVMF with Secure Boot enforcing in a 256 MiB machine and repairs a
//! McAfee DAT 5958 victim whose svchost.exe exists only in that store,
//! reading the one object it needs from the stick. Then one byte of that
//! object is flipped on the stick: the next run refuses it, says so, and
//! leaves the second victim as it was. And the same repair through PXE,
//! the object fetched from the test's HTTP server.

mod common;

use common::victim::{self, McafeeSvchost};
use common::*;
use defib_builder::image::{add_file_to_image, UsbImage};
use defib_builder::inspect;
use defib_builder::qemu::{self, Boot, Bus, Firmware, Net, Outcome};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Generous: 256 MiB under TCG on a loaded two-core machine.
const TIMEOUT: Duration = Duration::from_secs(900);
/// Synthetic objects of 1 MiB each.
const SYNTHETIC: usize = 400;
const MIB: usize = bigstore::OBJECT_SIZE;

/// The repo's playbooks and a store of XP's svchost.exe plus `SYNTHETIC`
/// named objects (named entries are never restore candidates, so they
/// only weigh). Returns the payloads folder and svchost's SHA-256.
fn big_payloads(dir: &Path) -> (PathBuf, String) {
    let payloads = dir.join("payloads");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../payloads/playbooks");
    std::fs::create_dir_all(payloads.join("playbooks")).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, payloads.join("playbooks").join(p.file_name().unwrap())).unwrap();
    }
    let svchost = victim::store_payloads(&payloads).unwrap();
    bigstore::add_synthetic(&payloads.join("store"), SYNTHETIC).unwrap();
    (payloads, svchost)
}

fn build(payloads: &Path, out: &Path) {
    let t = Instant::now();
    let o = Command::new(env_file("DEFIB_DEFIB"))
        .args(["build", "--offline", "--out"])
        .arg(out)
        .arg("--payloads")
        .arg(payloads)
        .arg("--rescue")
        .arg(env_file("DEFIB_RESCUE"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "defib build: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    eprintln!(
        "built {} in {:.1} s: {} MiB",
        out.display(),
        t.elapsed().as_secs_f64(),
        std::fs::metadata(out).unwrap().len() >> 20
    );
}

fn boot(stick: &Path, disk: &Path, scratch: &Path) -> Outcome {
    let mut b = Boot::new(Firmware::UefiSb, scratch);
    b.stick = Some(stick.to_path_buf());
    b.disks = vec![(disk.to_path_buf(), Bus::Ahci)];
    b.uuid = Some(UUID.to_string());
    b.timeout = TIMEOUT;
    b.memory_mib = 256;
    let out = qemu::run(&b).expect("running qemu");
    assert!(out.exited, "QEMU did not end by itself:\n{}", out.text());
    out
}

/// The stick's reports, by run id.
fn report_of_run_other_than(stick: &Path, other: Option<&str>) -> serde_json::Value {
    let img = UsbImage::open(stick).unwrap();
    let rs: Vec<_> = inspect::reports(&img)
        .unwrap()
        .into_iter()
        .map(|r| r.report)
        .filter(|r| other.is_none_or(|o| r["run_id"] != o))
        .collect();
    assert_eq!(rs.len(), 1, "{rs:#?}");
    rs.into_iter().next().unwrap()
}

fn restore_action(r: &serde_json::Value) -> serde_json::Value {
    r["windows"][0]["playbooks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "mcafee-dat-5958")
        .unwrap()["actions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["kind"] == "restore")
        .cloned()
        .unwrap_or(serde_json::Value::Null)
}

#[test]
#[ignore = "boots QEMU: run through scripts/test"]
fn a_400_mb_store_on_the_stick_repairs_in_256_mib() {
    let dir = tempfile::tempdir().unwrap();
    let (payloads, svchost) = big_payloads(dir.path());
    let stick = dir.path().join("stick.img");
    build(&payloads, &stick);

    // The payload segment keeps the index only; the objects are on the ESP.
    let img = UsbImage::open(&stick).unwrap();
    let seg = img.read_file(defib_builder::bootmenu::PAYLOADS).unwrap();
    assert!(seg.len() < MIB, "payloads.img is {} bytes", seg.len());
    let object = format!("defib/store/objects/{svchost}");
    assert_eq!(
        defib_builder::sha256_hex(&img.read_file(&object).unwrap()),
        svchost
    );
    let on_stick = defib_builder::storesync::medium_store(&img, false);
    assert_eq!(on_stick.entries, SYNTHETIC + 1, "{on_stick:?}");
    assert!(on_stick.bytes >= (SYNTHETIC * MIB) as u64);

    let v = victim::make_xp_mcafee(dir.path(), McafeeSvchost::InStore).unwrap();
    let out = boot(&stick, &v.disk, dir.path());
    assert!(
        out.contains("defib: verdict repaired"),
        "not repaired:\n{}",
        out.text()
    );
    let r = report_of_run_other_than(&stick, None);
    assert_eq!(r["verdict"], "repaired", "{r:#}");
    let restore = restore_action(&r);
    assert!(
        restore["source"]
            .as_str()
            .unwrap()
            .contains("known-good store"),
        "{restore:#}"
    );
    assert_eq!(restore["sha256_after"], svchost.as_str());
    // The index in force is the stick's, and the report says so.
    let store = &r["store"];
    assert!(
        store["index"]
            .as_str()
            .unwrap()
            .ends_with("defib/store/index.json"),
        "{store:#}"
    );
    assert_eq!(store["entries"], SYNTHETIC + 1);
    // From the host: svchost.exe is back, byte for byte.
    assert_eq!(
        victim::sha256_of(&v, victim::XP_SVCHOST)
            .unwrap()
            .as_deref(),
        Some(svchost.as_str())
    );
    for l in out
        .text()
        .lines()
        .filter(|l| l.contains("memory: rescue peak"))
    {
        eprintln!("{l}");
    }

    // One byte of the object flipped on the stick: refused, reported, and
    // a second victim left exactly as it was.
    let mut bad = img.read_file(&object).unwrap();
    let mid = bad.len() / 2;
    bad[mid] ^= 0x01;
    add_file_to_image(&stick, &object, &bad).unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let v2 = victim::make_xp_mcafee(dir2.path(), McafeeSvchost::InStore).unwrap();
    let before = victim::disk_sha256(&v2).unwrap();
    let out = boot(&stick, &v2.disk, dir2.path());
    assert!(
        out.contains("defib: verdict needs-attention"),
        "{}",
        out.text()
    );
    let r2 = report_of_run_other_than(&stick, r["run_id"].as_str());
    assert_eq!(r2["verdict"], "needs-attention", "{r2:#}");
    let text = serde_json::to_string(&r2).unwrap();
    assert!(
        text.contains(&format!("{object} is corrupt")),
        "the report names the corrupt object: {r2:#}"
    );
    assert_eq!(
        victim::disk_sha256(&v2).unwrap(),
        before,
        "a refused restore must not touch the disk"
    );
    assert_eq!(victim::sha256_of(&v2, victim::XP_SVCHOST).unwrap(), None);
}

/// A small HTTP/1.1 server on 127.0.0.1 for the PXE boot: GET serves the
/// tree, PUT under /reports/ keeps the body; one connection at a time.
struct Server {
    port: u16,
    gets: Arc<Mutex<Vec<String>>>,
    puts: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Server {
    fn start(root: PathBuf) -> Server {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let (gets, puts) = (Arc::default(), Arc::default());
        let (g, p) = (Arc::clone(&gets), Arc::clone(&puts));
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let _ = serve(c, &root, &g, &p);
            }
        });
        Server { port, gets, puts }
    }
}

fn serve(
    mut c: TcpStream,
    root: &Path,
    gets: &Mutex<Vec<String>>,
    puts: &Mutex<Vec<Vec<u8>>>,
) -> std::io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut data = Vec::new();
    let mut buf = [0u8; 65536];
    let end = loop {
        let n = c.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        data.extend_from_slice(&buf[..n]);
        if let Some(p) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
    };
    let head = String::from_utf8_lossy(&data[..end]).to_string();
    let mut words = head.lines().next().unwrap_or("").split(' ');
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = data[end + 4..].to_vec();
    while body.len() < len {
        let n = c.read(&mut buf)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    let not_found = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    match method {
        "PUT" if path.starts_with("/reports/") => {
            puts.lock().unwrap().push(body);
            c.write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        }
        "GET" if !path.contains("..") => {
            gets.lock().unwrap().push(path.to_string());
            match std::fs::read(root.join(path.trim_start_matches('/'))) {
                Ok(d) => {
                    write!(
                        c,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        d.len()
                    )?;
                    c.write_all(&d)?;
                }
                Err(_) => c.write_all(not_found)?,
            }
        }
        _ => c.write_all(not_found)?,
    }
    c.flush()
}

/// Through PXE (OVMF Secure Boot: shim, netboot GRUB) in 256 MiB: the
/// payload segment holds the store's index only, and the rescue GETs the
/// one object it needs from the server it booted from (`defib.store=`,
/// which `defib pxe` sets from an IP `--http-base`).
#[test]
#[ignore = "boots QEMU: run through scripts/test"]
fn pxe_fetches_the_store_object_over_http() {
    let dir = tempfile::tempdir().unwrap();
    let payloads = dir.path().join("payloads");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../payloads/playbooks");
    std::fs::create_dir_all(payloads.join("playbooks")).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, payloads.join("playbooks").join(p.file_name().unwrap())).unwrap();
    }
    let svchost = victim::store_payloads(&payloads).unwrap();
    let tree = dir.path().join("pxe");
    let server = Server::start(tree.clone());
    let o = Command::new(env_file("DEFIB_DEFIB"))
        .args(["pxe", "--offline", "--after", "poweroff", "--out"])
        .arg(&tree)
        .arg("--rescue")
        .arg(env_file("DEFIB_RESCUE"))
        .arg("--payloads")
        .arg(&payloads)
        .arg("--append")
        .arg(format!(
            "defib.report=http://10.0.2.2:{}/reports/",
            server.port
        ))
        .arg("--http-base")
        .arg(format!("http://10.0.2.2:{}/", server.port))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "defib pxe: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let object = format!("store/objects/{svchost}");
    assert!(tree.join(&object).is_file());
    let grub = std::fs::read_to_string(tree.join("grub/grub.cfg")).unwrap();
    assert!(
        grub.contains(&format!(
            "defib.store=http://10.0.2.2:{}/store/",
            server.port
        )),
        "{grub}"
    );

    let v = victim::make_xp_mcafee(dir.path(), McafeeSvchost::InStore).unwrap();
    let mut b = Boot::new(Firmware::UefiSb, dir.path());
    b.uuid = Some(UUID.to_string());
    b.timeout = TIMEOUT;
    b.memory_mib = 256;
    b.net = Some(Net {
        tftp: tree.clone(),
        bootfile: "shimx64.efi".into(),
        model: "virtio-net-pci".into(),
        romfile: Some(String::new()),
        boot_first: true,
    });
    b.disks = vec![(v.disk.clone(), Bus::Ahci)];
    let out = qemu::run(&b).expect("running qemu");
    assert!(out.exited, "QEMU did not end by itself:\n{}", out.text());
    assert!(
        out.contains("defib: verdict repaired"),
        "not repaired:\n{}",
        out.text()
    );
    assert!(
        server.gets.lock().unwrap().contains(&format!("/{object}")),
        "the object was fetched over HTTP"
    );
    let puts = server.puts.lock().unwrap().clone();
    assert_eq!(puts.len(), 1, "{}", out.text());
    let r: serde_json::Value = serde_json::from_slice(&puts[0]).unwrap();
    assert_eq!(r["verdict"], "repaired", "{r:#}");
    let restore = restore_action(&r);
    assert!(
        restore["source"]
            .as_str()
            .unwrap()
            .contains("known-good store"),
        "{restore:#}"
    );
    assert!(
        r["store"]["locations"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l.as_str().unwrap().ends_with("/store/objects/")),
        "{:#}",
        r["store"]
    );
    assert_eq!(
        victim::sha256_of(&v, victim::XP_SVCHOST)
            .unwrap()
            .as_deref(),
        Some(svchost.as_str())
    );
}

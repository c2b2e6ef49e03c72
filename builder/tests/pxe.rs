//! Network boots of the tree `defib pxe` writes, through QEMU's user-mode
//! network (its DHCP and TFTP server, the host as 10.0.2.2): iPXE under
//! SeaBIOS, shim + netboot GRUB under OVMF with Secure Boot, the big files
//! over HTTP, and a McAfee victim repaired. There is no stick: each rescue
//! PUTs its report to a small HTTP server this test runs on 127.0.0.1.

mod common;

use common::victim::{self, McafeeSvchost};
use common::*;
use defib_builder::qemu::{self, Boot, Bus, Firmware, Net, Outcome};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(480);

/// What the server saw.
#[derive(Default)]
struct Seen {
    gets: Vec<String>,
    puts: Vec<(String, Vec<u8>)>,
}

/// A minimal HTTP/1.1 server on 127.0.0.1: GET serves files under `root`,
/// PUT under /reports/ stores the body. One connection at a time, each
/// closed after its answer.
struct Server {
    port: u16,
    seen: Arc<Mutex<Seen>>,
}

impl Server {
    fn start(root: Option<PathBuf>) -> Server {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let _ = handle(c, root.as_deref(), &s);
            }
        });
        Server { port, seen }
    }

    fn puts(&self) -> Vec<(String, Vec<u8>)> {
        self.seen.lock().unwrap().puts.clone()
    }

    fn gets(&self) -> Vec<String> {
        self.seen.lock().unwrap().gets.clone()
    }
}

fn handle(mut c: TcpStream, root: Option<&Path>, seen: &Mutex<Seen>) -> std::io::Result<()> {
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
    let mut body = data[end + 4..].to_vec();
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
    while body.len() < len {
        let n = c.read(&mut buf)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    match method {
        "PUT" if path.starts_with("/reports/") && !path.contains("..") => {
            seen.lock().unwrap().puts.push((path.to_string(), body));
            c.write_all(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        }
        "GET" if root.is_some() && !path.contains("..") => {
            seen.lock().unwrap().gets.push(path.to_string());
            match std::fs::read(root.unwrap().join(path.trim_start_matches('/'))) {
                Ok(d) => {
                    write!(
                        c,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        d.len()
                    )?;
                    c.write_all(&d)?;
                }
                Err(_) => c.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )?,
            }
        }
        _ => c.write_all(
            b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?,
    }
    c.flush()
}

/// `defib pxe --out DIR` with the report URL of `port` appended.
fn pxe_tree(dir: &Path, port: u16, http_base: bool) -> PathBuf {
    pxe_tree_with(dir, port, http_base, &[])
}

/// The same, with more `defib pxe` options.
fn pxe_tree_with(dir: &Path, port: u16, http_base: bool, extra: &[String]) -> PathBuf {
    let out = dir.join("pxe");
    let mut c = Command::new(env_file("DEFIB_DEFIB"));
    c.args(["pxe", "--offline", "--after", "poweroff", "--out"])
        .arg(&out)
        .arg("--rescue")
        .arg(env_file("DEFIB_RESCUE"))
        .arg("--payloads")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../payloads"))
        .arg("--append")
        .arg(format!("defib.report=http://10.0.2.2:{port}/reports/"))
        .args(extra);
    if http_base {
        c.arg("--http-base").arg(format!("http://10.0.2.2:{port}/"));
    }
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "defib pxe: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

fn boot(
    firmware: Firmware,
    tree: &Path,
    bootfile: &str,
    disk: Option<&Path>,
    scratch: &Path,
) -> Outcome {
    let mut b = Boot::new(firmware, scratch);
    b.uuid = Some(UUID.to_string());
    b.timeout = TIMEOUT;
    b.net = Some(match firmware {
        // SeaBIOS's NIC ROM is iPXE: it runs the script directly.
        Firmware::Bios => Net {
            tftp: tree.to_path_buf(),
            bootfile: bootfile.into(),
            model: "e1000".into(),
            romfile: None,
            boot_first: true,
        },
        // Without the iPXE ROM, OVMF's own PXE loads shim (QEMU.md).
        _ => Net {
            tftp: tree.to_path_buf(),
            bootfile: bootfile.into(),
            model: "virtio-net-pci".into(),
            romfile: Some(String::new()),
            boot_first: true,
        },
    });
    if let Some(d) = disk {
        b.disks = vec![(d.to_path_buf(), Bus::Ahci)];
    }
    let out = qemu::run(&b).expect("running qemu");
    assert!(out.exited, "QEMU did not end by itself:\n{}", out.text());
    eprintln!(
        "{firmware:?} {bootfile}: rescue banner at {:?}, ended after {:.1} s",
        out.first("defib rescue"),
        out.elapsed.as_secs_f64()
    );
    out
}

/// The one report PUT to the server, parsed.
fn put_report(s: &Server, out: &Outcome) -> serde_json::Value {
    let puts = s.puts();
    assert_eq!(
        puts.len(),
        1,
        "expected one PUT, got {:?}:\n{}",
        puts.iter().map(|p| &p.0).collect::<Vec<_>>(),
        out.text()
    );
    let (path, body) = &puts[0];
    let r: serde_json::Value = serde_json::from_slice(body).expect("the PUT body is JSON");
    let name = path.trim_start_matches("/reports/");
    assert!(name.ends_with(".json") && name.contains(r["run_id"].as_str().unwrap()));
    // Plain HTTP still works for an existing server, and says so.
    assert!(
        out.text()
            .lines()
            .any(|l| l.contains("report: delivered to http://10.0.2.2:")
                && l.contains("(plain HTTP: not encrypted)")),
        "{}",
        out.text()
    );
    assert_eq!(r["network"]["transport"], "http", "{r:#}");
    assert!(r["network"].get("tls_pin").is_none(), "{r:#}");
    assert_eq!(r["boot"]["medium"], "pxe", "{r:#}");
    assert_eq!(r["network"]["delivered"], true, "{r:#}");
    assert_eq!(r["machine"]["product_uuid"], UUID, "{r:#}");
    r
}

#[test]
#[ignore = "boots QEMU: run through scripts/test"]
fn pxe_seabios_ipxe_reports_by_put() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(None);
    let tree = pxe_tree(dir.path(), s.port, false);
    let out = boot(Firmware::Bios, &tree, "boot.ipxe", None, dir.path());
    assert!(
        out.contains("defib: verdict no-windows-found"),
        "{}",
        out.text()
    );
    let r = put_report(&s, &out);
    assert_eq!(r["boot"]["firmware"], "bios", "{r:#}");
    assert_eq!(r["verdict"], "no-windows-found", "{r:#}");
    // iPXE passed its lease on the command line: no DHCP in the rescue.
    assert_eq!(r["network"]["config"], "cmdline", "{r:#}");
    assert_eq!(r["network"]["address"], "10.0.2.15/24", "{r:#}");
}

#[test]
#[ignore = "boots QEMU: run through scripts/test"]
fn pxe_ovmf_secure_boot_shim_grub_reports_by_put() {
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(None);
    let tree = pxe_tree(dir.path(), s.port, false);
    let out = boot(Firmware::UefiSb, &tree, "shimx64.efi", None, dir.path());
    assert!(
        out.contains("defib: verdict no-windows-found"),
        "{}",
        out.text()
    );
    let r = put_report(&s, &out);
    assert_eq!(r["boot"]["firmware"], "uefi", "{r:#}");
    assert_eq!(r["boot"]["secure_boot"], true, "{r:#}");
    // GRUB passes no netmask: the rescue ran DHCP itself.
    assert_eq!(r["network"]["config"], "dhcp", "{r:#}");
    assert_eq!(r["verdict"], "no-windows-found", "{r:#}");
}

#[test]
#[ignore = "boots QEMU: run through scripts/test"]
fn http_boot_of_the_big_files() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pxe");
    let s = Server::start(Some(root.clone()));
    let tree = pxe_tree(dir.path(), s.port, true);
    assert_eq!(tree, root);
    let out = boot(Firmware::Bios, &tree, "boot-http.ipxe", None, dir.path());
    assert!(
        out.contains("defib: verdict no-windows-found"),
        "{}",
        out.text()
    );
    let gets = s.gets();
    for f in ["/vmlinuz", "/initrd.img", "/payloads.img"] {
        assert!(gets.iter().any(|g| g == f), "no GET {f}: {gets:?}");
    }
    let r = put_report(&s, &out);
    assert_eq!(r["boot"]["firmware"], "bios", "{r:#}");
}

#[test]
#[ignore = "boots QEMU: run through scripts/test"]
fn mcafee_victim_repaired_through_pxe() {
    let dir = tempfile::tempdir().unwrap();
    let v = victim::make_xp_mcafee(dir.path(), McafeeSvchost::InDllcache).unwrap();
    let s = Server::start(None);
    let tree = pxe_tree(dir.path(), s.port, false);
    let out = boot(
        Firmware::Bios,
        &tree,
        "boot.ipxe",
        Some(&v.disk),
        dir.path(),
    );
    assert!(out.contains("defib: verdict repaired"), "{}", out.text());
    let r = put_report(&s, &out);
    assert_eq!(r["verdict"], "repaired", "{r:#}");
    let w = &r["windows"][0];
    assert_eq!(w["identity"]["computer_name"], "WARD3-PC07", "{w:#}");
    // From the host: svchost.exe is back, the DATs are in the vault, and
    // the victim holds the same run's journal and report.
    let want = v.expect.svchost_sha256.clone().unwrap();
    assert_eq!(
        victim::sha256_of(&v, victim::XP_SVCHOST)
            .unwrap()
            .as_deref(),
        Some(want.as_str())
    );
    let run = r["run_id"].as_str().unwrap();
    for (path, sha) in &v.expect.dats {
        assert_eq!(victim::sha256_of(&v, path).unwrap(), None, "{path}");
        let vaulted = format!(r"defib\{run}\vault\{path}");
        assert_eq!(
            victim::sha256_of(&v, &vaulted).unwrap().as_deref(),
            Some(sha.as_str())
        );
    }
    let on_victim: serde_json::Value = serde_json::from_slice(
        &victim::read_file(&v, &format!(r"defib\{run}\report.json"))
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(on_victim["run_id"], r["run_id"]);
    assert_eq!(on_victim["verdict"], "repaired");
    for (path, sha) in v.expect.must_stay() {
        assert_eq!(victim::sha256_of(&v, &path).unwrap(), Some(sha), "{path}");
    }
}

/// A BitLocker-encrypted CrowdStrike victim booted over the network, with
/// no stick and so no key file: the admin serves a folder of per-protector
/// key files and builds the tree with `--keys-url`. The rescue GETs
/// `/keys/<protector GUID>`, unlocks, repairs and reports `key_source:
/// network`; the key is never on the screen or in the report.
#[test]
#[ignore = "boots QEMU: run through scripts/test"]
fn crowdstrike_on_bitlocker_repaired_with_a_key_from_the_network() {
    let dir = tempfile::tempdir().unwrap();
    let (v, key) = victim::make_win10_crowdstrike_bitlocker(dir.path()).unwrap();
    let served = dir.path().join("served");
    std::fs::create_dir_all(served.join("keys")).unwrap();
    // One file per protector, named by its GUID, holding the bare key.
    std::fs::write(
        served.join("keys").join(&key.protector),
        format!("{}\n", key.recovery_password),
    )
    .unwrap();
    let s = Server::start(Some(served));
    let keys_url = format!("http://10.0.2.2:{}/keys/", s.port);
    let tree = pxe_tree_with(
        dir.path(),
        s.port,
        false,
        &["--keys-url".into(), keys_url.clone()],
    );
    let out = boot(
        Firmware::Bios,
        &tree,
        "boot.ipxe",
        Some(&v.disk),
        dir.path(),
    );
    assert!(out.contains("defib: verdict repaired"), "{}", out.text());
    assert!(
        !out.text().contains(&key.recovery_password),
        "the recovery key reached the screen"
    );
    let gets = s.gets();
    assert_eq!(
        gets,
        vec![format!("/keys/{}", key.protector)],
        "one GET, for the volume's recovery-password protector"
    );
    assert!(
        out.text()
            .lines()
            .any(|l| l.contains("keys: 1 key(s) for /dev/sda3")
                && l.contains(&format!("from {keys_url}{}", key.protector))),
        "{}",
        out.text()
    );
    // The unlock's timing line, which scripts/bench reads.
    assert!(
        out.text()
            .lines()
            .any(|l| l.contains("bitlocker: sda3 unlocked in") && l.contains("key from network")),
        "{}",
        out.text()
    );
    let r = put_report(&s, &out);
    assert!(
        !r.to_string().contains(&key.recovery_password),
        "the recovery key reached the report"
    );
    assert!(
        r["boot"]["cmdline"]
            .as_str()
            .unwrap()
            .contains(&format!("defib.keys={keys_url}")),
        "{r:#}"
    );
    let w = &r["windows"][0];
    assert_eq!(w["identity"]["computer_name"], "ICU-STATION-12", "{w:#}");
    let bl = &w["state"]["bitlocker"];
    assert_eq!(bl["unlocked"], true, "{w:#}");
    assert_eq!(bl["key_source"], "network", "{w:#}");
    assert_eq!(bl["unlocked_with"], key.protector.as_str(), "{w:#}");
    // From the host, decrypting the disk: the bad channel file is in the
    // vault, everything else as it was.
    let run = r["run_id"].as_str().unwrap();
    for (path, sha) in &v.expect.bad {
        assert_eq!(victim::sha256_of(&v, path).unwrap(), None, "{path}");
        let vaulted = format!(r"defib\{run}\vault\{path}");
        assert_eq!(
            victim::sha256_of(&v, &vaulted).unwrap().as_deref(),
            Some(sha.as_str()),
            "{vaulted}"
        );
    }
    for (path, sha) in v.expect.must_stay() {
        assert_eq!(victim::sha256_of(&v, &path).unwrap(), Some(sha), "{path}");
    }
}

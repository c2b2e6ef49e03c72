//! `defib serve` on a real network: a network namespace with a bridge and
//! one tap device per PC, the real dnsmasq and nginx that `defib serve`
//! starts on the bridge, and three QEMU machines booting by PXE at the
//! same time (SeaBIOS through iPXE, OVMF with Secure Boot through shim and
//! GRUB), each with its own victim disk. All are repaired, every report
//! reaches `--reports DIR` and the live ledger, and `defib reports` lists
//! them. Nothing is added to the host's own network: the bridge, the taps
//! and every server live in the namespace, which a guard deletes even
//! when the test fails.

mod common;

use common::victim::{self, McafeeSvchost, Victim};
use common::*;
use defib_builder::qemu::{self, Boot, Bus, Firmware, Outcome, Tap};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Three TCG machines share two cores with each other and with the
/// servers: generous.
const BOOT_TIMEOUT: Duration = Duration::from_secs(2400);

/// A program the test needs, or a failure that says what to install.
fn need(program: &str, package: &str) {
    let found = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .any(|d| Path::new(d).join(program).is_file());
    assert!(
        found,
        "{program} is missing: install Debian's {package} (scripts/setup --test does)"
    );
}

fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        o.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// A network namespace with a bridge `br0` (10.77.0.1/24) and tap devices,
/// deleted on drop (after `defib serve`, if running, is stopped).
struct Netns {
    name: String,
    serve: Option<Child>,
    /// More namespaces cabled to the bridge, and processes in them.
    others: Vec<String>,
    children: Vec<Child>,
}

impl Netns {
    fn new(taps: usize) -> Netns {
        // The tests of this file run at once in one process: each gets its
        // own namespace (and bridge, and addresses).
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("defib-serve-{}-{k}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = Netns {
            name,
            serve: None,
            others: Vec::new(),
            children: Vec::new(),
        };
        let n = ns.name.as_str();
        ip(&["-n", n, "link", "set", "lo", "up"]);
        ip(&["-n", n, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", n, "addr", "add", "10.77.0.1/24", "dev", "br0"]);
        ip(&["-n", n, "link", "set", "br0", "up"]);
        for i in 1..=taps {
            let t = format!("tap{i}");
            ip(&["-n", n, "tuntap", "add", &t, "mode", "tap"]);
            ip(&["-n", n, "link", "set", &t, "master", "br0"]);
            ip(&["-n", n, "link", "set", &t, "up"]);
        }
        ns
    }

    fn stop_serve(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.serve.take()?;
        // SAFETY: our own child, not yet reaped.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        c.wait().ok()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Some(mut c) = self.serve.take() {
            // SAFETY: as in stop_serve.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let _ = c.wait();
        }
        for c in self.children.iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for n in self.others.iter().chain([&self.name]) {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// `defib serve`'s output so far, line by line.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
    fn text(&self) -> String {
        self.all().join("\n")
    }
    /// Waits until `pred` holds over the lines, or `child` ends, or the
    /// deadline passes; false then.
    fn wait_for(
        &self,
        child: &mut Child,
        within: Duration,
        pred: impl Fn(&[String]) -> bool,
    ) -> bool {
        let t = Instant::now();
        while t.elapsed() < within {
            if pred(&self.all()) {
                return true;
            }
            if let Ok(Some(_)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(300));
                return pred(&self.all());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }
}

/// `defib serve` in the namespace with `args` after the common ones.
fn serve_command(ns: &Netns, dir: &Path, reports: &Path, dhcp: &[&str]) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", &ns.name])
        .arg(env_file("DEFIB_DEFIB"))
        .args([
            "serve",
            "--interface",
            "br0",
            "--offline",
            "--after",
            "poweroff",
        ])
        .arg("--reports")
        .arg(reports)
        .arg("--run-dir")
        .arg(dir.join("run"))
        .arg("--tls-dir")
        .arg(dir.join("tls"))
        .arg("--rescue")
        .arg(env_file("DEFIB_RESCUE"))
        .arg("--payloads")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../payloads"))
        .args(dhcp)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn start_serve(ns: &mut Netns, dir: &Path, reports: &Path, dhcp: &[&str]) -> Lines {
    let mut child = serve_command(ns, dir, reports, dhcp)
        .spawn()
        .expect("starting defib serve");
    let lines = Lines::default();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let l = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(|x| x.ok()) {
                eprintln!("serve| {line}");
                l.0.lock().unwrap().push(line);
            }
        });
    }
    let up = lines.wait_for(&mut child, Duration::from_secs(600), |ls| {
        ls.iter().any(|l| l.contains("defib serve: ready after"))
    });
    ns.serve = Some(child);
    assert!(up, "defib serve did not come up:\n{}", lines.text());
    lines
}

/// One PC on tap `i`.
struct Pc {
    firmware: Firmware,
    victim: Victim,
    bus: Bus,
    uuid: String,
    computer: &'static str,
}

fn boot_pc(ns: &str, i: usize, pc: &Pc, scratch: &Path) -> Outcome {
    let mut b = Boot::new(pc.firmware, scratch);
    b.uuid = Some(pc.uuid.clone());
    b.timeout = BOOT_TIMEOUT;
    b.disks = vec![(pc.victim.disk.clone(), pc.bus)];
    b.tap = Some(Tap {
        ifname: format!("tap{i}"),
        netns: Some(ns.to_string()),
        mac: format!("52:54:00:77:00:{i:02x}"),
        model: match pc.firmware {
            // SeaBIOS's e1000 ROM is iPXE; OVMF's own PXE needs the ROM off.
            Firmware::Bios => "e1000".into(),
            _ => "virtio-net-pci".into(),
        },
        romfile: (pc.firmware != Firmware::Bios).then(String::new),
    });
    qemu::run(&b).expect("running qemu")
}

#[test]
#[ignore = "boots QEMU: run through scripts/test"]
fn three_pcs_repaired_at_once_through_defib_serve() {
    need("ip", "iproute2");
    need("dnsmasq", "dnsmasq-base");
    need("nginx", "nginx");
    let dir = tempfile::tempdir().unwrap();
    let sub = |n: &str| {
        let p = dir.path().join(n);
        std::fs::create_dir_all(&p).unwrap();
        p
    };
    // The Secure Boot PC's Windows is behind BitLocker; its recovery key is
    // served by `defib serve --serve-keys` (HTTPS only), in a file named after
    // the protector's GUID.
    let (bitlocker_victim, key) = victim::make_win10_crowdstrike_bitlocker(&sub("pc2")).unwrap();
    let keys = sub("keys");
    std::fs::write(
        keys.join(&key.protector),
        format!("{}\n", key.recovery_password),
    )
    .unwrap();
    let pcs = vec![
        Pc {
            firmware: Firmware::Bios,
            victim: victim::make_xp_mcafee(&sub("pc1"), McafeeSvchost::InDllcache).unwrap(),
            bus: Bus::Ahci,
            uuid: "5eed0000-defb-4000-8000-000000000001".into(),
            computer: "WARD3-PC07",
        },
        Pc {
            firmware: Firmware::UefiSb,
            victim: bitlocker_victim,
            bus: Bus::Nvme,
            uuid: "5eed0000-defb-4000-8000-000000000002".into(),
            computer: "ICU-STATION-12",
        },
        Pc {
            firmware: Firmware::Bios,
            victim: victim::make_xp_avg(&sub("pc3")).unwrap(),
            bus: Bus::Ahci,
            uuid: "5eed0000-defb-4000-8000-000000000003".into(),
            computer: "RECEPTION-02",
        },
    ];
    let mut ns = Netns::new(pcs.len());
    let reports = dir.path().join("reports");
    let lines = start_serve(
        &mut ns,
        dir.path(),
        &reports,
        &[
            "--dhcp-range",
            "10.77.0.100,10.77.0.150",
            "--serve-keys",
            keys.to_str().unwrap(),
        ],
    );
    // The pin every PC must see: the kept certificate's SHA-256, shown in
    // the banner.
    let cert = defib_builder::servetls::load_or_create(
        &dir.path().join("tls"),
        "10.77.0.1".parse().unwrap(),
    )
    .unwrap();
    assert!(!cert.created, "defib serve made the certificate");
    let pin = cert.pin();
    assert!(
        lines
            .text()
            .contains(&format!("https:   certificate {pin}")),
        "{}",
        lines.text()
    );
    let short = &pin[..7 + 16];
    // The taps and the bridge are in the namespace, not on the host.
    for i in 1..=pcs.len() {
        assert!(!Path::new(&format!("/sys/class/net/tap{i}")).exists());
    }

    let start = Instant::now();
    let outs: Vec<Outcome> = std::thread::scope(|s| {
        let handles: Vec<_> = pcs
            .iter()
            .enumerate()
            .map(|(i, pc)| {
                let scratch = sub(&format!("scratch{}", i + 1));
                let ns = ns.name.clone();
                s.spawn(move || boot_pc(&ns, i + 1, pc, &scratch))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    eprintln!(
        "three PCs booted at once, all ended after {:.1} s",
        start.elapsed().as_secs_f64()
    );
    for (pc, out) in pcs.iter().zip(&outs) {
        eprintln!(
            "{:?} {}: verdict at {:?}, ended after {:.1} s",
            pc.firmware,
            pc.computer,
            out.first("defib: verdict"),
            out.elapsed.as_secs_f64()
        );
        assert!(
            out.exited,
            "{} did not power off:\n{}",
            pc.computer,
            out.text()
        );
        assert!(
            out.contains("defib: verdict repaired"),
            "{} not repaired:\n{}",
            pc.computer,
            out.text()
        );
        assert!(
            out.text().lines().any(|l| l
                .contains("report: delivered to https://10.77.0.1/defib-reports/")
                && l.contains(&format!("(HTTPS, certificate {short})"))),
            "{}:\n{}",
            pc.computer,
            out.text()
        );
        assert!(
            !out.text().contains(&key.recovery_password),
            "the recovery key reached {}'s screen",
            pc.computer
        );
    }
    // The BitLocker PC took its key from defib serve, over HTTPS.
    let keys_url = "https://10.77.0.1/defib-keys/";
    assert!(
        outs[1]
            .text()
            .lines()
            .any(|l| l.contains("keys: 1 key(s) for /dev/")
                && l.contains(&format!("from {keys_url}{}", key.protector))),
        "{}",
        outs[1].text()
    );

    // The ledger shows each machine as its report arrives.
    let mut serve = ns.serve.take().unwrap();
    let all_in = lines.wait_for(&mut serve, Duration::from_secs(120), |ls| {
        pcs.iter().all(|pc| {
            ls.iter().any(|l| {
                l.contains(" repaired ") && l.contains(pc.computer) && l.contains(&pc.uuid)
            })
        })
    });
    ns.serve = Some(serve);
    assert!(
        all_in,
        "not every report reached the ledger:\n{}",
        lines.text()
    );
    assert!(
        lines
            .all()
            .iter()
            .any(|l| l.contains("3 report(s): 3 repaired")),
        "{}",
        lines.text()
    );
    assert!(
        lines
            .all()
            .iter()
            .any(|l| l.contains("lease ") && l.contains("52:54:00:77:00:02")),
        "{}",
        lines.text()
    );
    let status = ns.stop_serve().expect("defib serve was running");
    assert!(
        status.success(),
        "defib serve ended {status}:\n{}",
        lines.text()
    );
    assert!(
        lines
            .text()
            .contains("SIGTERM received; stopping nginx and dnsmasq"),
        "{}",
        lines.text()
    );
    // Both stopped on SIGTERM, none had to be killed.
    assert!(!lines.text().contains("killed"), "{}", lines.text());

    // Every report in --reports DIR, and `defib reports` lists them.
    let mut names: Vec<String> = std::fs::read_dir(&reports)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names.iter().all(|n| n.ends_with(".json")), "{names:?}");
    let o = Command::new(env_file("DEFIB_DEFIB"))
        .args(["reports", "--json"])
        .arg(&reports)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(rows.len(), 3, "{rows:#?}");
    for pc in &pcs {
        let r = rows
            .iter()
            .find(|r| r["uuid"] == pc.uuid.as_str())
            .unwrap_or_else(|| panic!("no row for {}: {rows:#?}", pc.computer));
        assert_eq!(r["verdict"], "repaired", "{r:#}");
        assert_eq!(r["computer"], pc.computer, "{r:#}");
    }
    // The Secure Boot PC reports Secure Boot, and each its own address.
    for name in &names {
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(reports.join(name)).unwrap()).unwrap();
        let addr = r["network"]["address"].as_str().unwrap_or("").to_string();
        assert!(addr.starts_with("10.77.0.1"), "{r:#}");
        let uefi = r["machine"]["product_uuid"] == pcs[1].uuid.as_str();
        assert_eq!(r["boot"]["secure_boot"], uefi, "{r:#}");
        assert_eq!(r["boot"]["medium"], "pxe", "{r:#}");
        assert_eq!(r["network"]["transport"], "https", "{r:#}");
        assert_eq!(r["network"]["tls_pin"], pin.as_str(), "{r:#}");
        assert!(
            !r.to_string().contains(&key.recovery_password),
            "the recovery key reached a report"
        );
        if uefi {
            let bl = &r["windows"][0]["state"]["bitlocker"];
            assert_eq!(bl["key_source"], "network", "{r:#}");
            assert_eq!(bl["unlocked_with"], key.protector.as_str(), "{r:#}");
        }
    }
    // nginx took the reports and handed out the key on the HTTPS port only.
    let access = std::fs::read_to_string(dir.path().join("run/nginx-access.log")).unwrap();
    assert!(
        access.lines().any(
            |l| l.contains(&format!("GET /defib-keys/{} ", key.protector)) && l.contains(" 200 ")
        ),
        "{access}"
    );
    assert_eq!(
        access
            .lines()
            .filter(|l| l.contains("PUT /defib-reports/") && l.contains(" 201 "))
            .count(),
        3,
        "{access}"
    );

    // From the host: the bad files are gone on each disk.
    let mcafee = &pcs[0].victim;
    assert_eq!(
        victim::sha256_of(mcafee, victim::XP_SVCHOST).unwrap(),
        mcafee.expect.svchost_sha256.clone()
    );
    for path in mcafee.expect.dats.keys() {
        assert_eq!(victim::sha256_of(mcafee, path).unwrap(), None, "{path}");
    }
    let cs = &pcs[1].victim;
    for path in cs.expect.bad.keys() {
        assert_eq!(victim::sha256_of(cs, path).unwrap(), None, "{path}");
    }
    for pc in &pcs {
        for (path, sha) in pc.victim.expect.must_stay() {
            assert_eq!(
                victim::sha256_of(&pc.victim, &path).unwrap(),
                Some(sha),
                "{}: {path}",
                pc.computer
            );
        }
    }
}

/// Another DHCP server on the network (the site's, in a second namespace
/// cabled to the bridge): `--dhcp-range` is refused, naming it, before
/// anything starts; `--proxy-dhcp` beside it comes up, and a PC boots
/// through it: its address from the site's server, its boot from defib
/// serve's proxy answer, and it is repaired.
#[test]
#[ignore = "boots QEMU in a network namespace: run through scripts/test"]
fn a_second_dhcp_server_is_refused_and_a_pc_boots_through_proxy_dhcp_beside_it() {
    need("ip", "iproute2");
    need("dnsmasq", "dnsmasq-base");
    need("nginx", "nginx");
    let dir = tempfile::tempdir().unwrap();
    let mut ns = Netns::new(1);
    let site = format!("{}-site", ns.name);
    ip(&["netns", "add", &site]);
    ns.others.push(site.clone());
    let n = ns.name.clone();
    ip(&[
        "-n", &n, "link", "add", "v0", "type", "veth", "peer", "name", "v1", "netns", &site,
    ]);
    ip(&["-n", &n, "link", "set", "v0", "master", "br0"]);
    ip(&["-n", &n, "link", "set", "v0", "up"]);
    ip(&["-n", &site, "link", "set", "lo", "up"]);
    ip(&["-n", &site, "addr", "add", "10.77.0.2/24", "dev", "v1"]);
    ip(&["-n", &site, "link", "set", "v1", "up"]);
    let mut dnsmasq = Command::new("ip")
        .args([
            "netns",
            "exec",
            &site,
            "dnsmasq",
            "-k",
            "--conf-file=/dev/null",
        ])
        .args([
            "--port=0",
            "--interface=v1",
            "--bind-interfaces",
            "--dhcp-range=10.77.0.200,10.77.0.210,1h",
            "--log-facility=-",
        ])
        .arg(format!(
            "--dhcp-leasefile={}",
            dir.path().join("site.leases").display()
        ))
        .arg(format!(
            "--pid-file={}",
            dir.path().join("site.pid").display()
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the site's dnsmasq");
    let site_log = Lines::default();
    let err = dnsmasq.stderr.take().unwrap();
    let l = site_log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(|x| x.ok()) {
            l.0.lock().unwrap().push(line);
        }
    });
    let up = site_log.wait_for(&mut dnsmasq, Duration::from_secs(30), |ls| {
        ls.iter().any(|l| l.contains("DHCP, IP range"))
    });
    ns.children.push(dnsmasq);
    assert!(up, "the site's dnsmasq did not start:\n{}", site_log.text());

    let reports = dir.path().join("reports");
    let o = serve_command(
        &ns,
        dir.path(),
        &reports,
        &["--dhcp-range", "10.77.0.100,10.77.0.150"],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("another DHCP server answers on br0: 10.77.0.2"),
        "{err}"
    );
    assert!(err.contains("--proxy-dhcp"), "{err}");
    assert!(
        !reports.exists() && !dir.path().join("tls").exists(),
        "nothing may start or be made before the checks pass"
    );

    let lines = start_serve(&mut ns, dir.path(), &reports, &["--proxy-dhcp"]);
    assert!(
        lines
            .text()
            .contains("proxy-DHCP beside the site's DHCP server on 10.77.0.0/24"),
        "{}",
        lines.text()
    );
    let pc_dir = dir.path().join("pc");
    std::fs::create_dir_all(&pc_dir).unwrap();
    let pc = Pc {
        firmware: Firmware::Bios,
        victim: victim::make_xp_mcafee(&pc_dir, McafeeSvchost::InDllcache).unwrap(),
        bus: Bus::Ahci,
        uuid: "5eed0000-defb-4000-8000-000000000011".into(),
        computer: "WARD3-PC07",
    };
    let scratch = dir.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let out = boot_pc(&ns.name, 1, &pc, &scratch);
    assert!(out.exited, "the PC did not power off:\n{}", out.text());
    assert!(
        out.contains("defib: verdict repaired"),
        "not repaired through proxy-DHCP:\n{}",
        out.text()
    );
    // Its address is the site's (10.77.0.200-210), not one defib serve leased.
    let mut serve = ns.serve.take().unwrap();
    let arrived = lines.wait_for(&mut serve, Duration::from_secs(60), |ls| {
        ls.iter()
            .any(|l| l.contains(" repaired ") && l.contains(pc.computer))
    });
    ns.serve = Some(serve);
    assert!(
        arrived,
        "the report did not reach the ledger:\n{}",
        lines.text()
    );
    let name = std::fs::read_dir(&reports)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "json"))
        .expect("a report in --reports");
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(name).unwrap()).unwrap();
    let addr = r["network"]["address"].as_str().unwrap_or("");
    let last: u8 = addr
        .split('/')
        .next()
        .and_then(|a| a.rsplit('.').next())
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    assert!((200..=210).contains(&last), "not the site's lease: {r:#}");
    assert_eq!(r["network"]["transport"], "https", "{r:#}");
    assert!(
        site_log.text().contains("DHCPACK"),
        "the site's server leased nothing:\n{}",
        site_log.text()
    );
    assert_eq!(
        victim::sha256_of(&pc.victim, victim::XP_SVCHOST).unwrap(),
        pc.victim.expect.svchost_sha256.clone()
    );

    let status = ns.stop_serve().unwrap();
    assert!(status.success(), "{}", lines.text());
    assert!(
        lines.text().contains("defib serve: stopped;") && !lines.text().contains("killed"),
        "{}",
        lines.text()
    );
}

//! `defib try`: boot an image in QEMU before writing it to a hundred
//! sticks — and the harness the tests and benchmarks boot through.
//!
//! Runs `qemu-system-x86_64` under software emulation (TCG; KVM is used only
//! when asked for) with the serial console on a pipe, timestamps every line
//! it prints and stops at a deadline. Firmware files are Debian's `ovmf`
//! package; the machine is q35 for UEFI and the default i440fx for BIOS.
//!
//! Not a VM manager: one boot, one result.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Debian `ovmf` paths (4 MiB flash layout).
pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";
/// Secure Boot enforcing, Microsoft keys enrolled.
pub const OVMF_CODE_MS: &str = "/usr/share/OVMF/OVMF_CODE_4M.ms.fd";
pub const OVMF_VARS_MS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Firmware {
    /// SeaBIOS, legacy BIOS
    Bios,
    /// OVMF, Secure Boot off
    Uefi,
    /// OVMF, Secure Boot enforcing with Microsoft keys
    UefiSb,
}

/// How to attach a victim disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Bus {
    Ahci,
    Nvme,
    /// virtio-blk on PCI
    Virtio,
    /// A SCSI disk behind a virtio-scsi controller
    VirtioScsi,
}

/// The USB host controller the stick hangs off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UsbHost {
    /// USB 3 (qemu-xhci), as on any PC since about 2012.
    #[default]
    Xhci,
    /// USB 2 (usb-ehci), as on the PCs before.
    Ehci,
}

/// A disk plugged in while the machine runs (`drive_add` + `device_add` on
/// QEMU's monitor): `delay` after the first serial line containing `after`.
/// On the BIOS machine (i440fx) a PCI device is hot-plugged through ACPI.
#[derive(Debug, Clone)]
pub struct LateDisk {
    pub disk: PathBuf,
    /// `Virtio` or `Nvme` (PCI devices), or `VirtioScsi`.
    pub bus: Bus,
    pub after: String,
    pub delay: Duration,
}

/// An I/O error a disk returns to the guest, injected by QEMU's `blkdebug`
/// driver between the virtual disk and its image file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoError {
    pub on: IoEvent,
    /// Only requests that touch this 512-byte sector of the disk; `None`:
    /// every request.
    pub sector: Option<u64>,
    /// The errno the request fails with (5 = EIO).
    pub errno: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoEvent {
    Read,
    Write,
}

impl IoEvent {
    /// blkdebug's event name.
    fn blkdebug(self) -> &'static str {
        match self {
            IoEvent::Read => "read_aio",
            IoEvent::Write => "write_aio",
        }
    }
}

/// blkdebug's configuration for `errors`: one `[inject-error]` rule each,
/// failing every time (not once).
pub fn blkdebug_config(errors: &[IoError]) -> String {
    let mut s = String::new();
    for e in errors {
        s.push_str(&format!(
            "[inject-error]\nevent = \"{}\"\nerrno = \"{}\"\nonce = \"off\"\n",
            e.on.blkdebug(),
            e.errno
        ));
        if let Some(n) = e.sector {
            s.push_str(&format!("sector = \"{n}\"\n"));
        }
        s.push('\n');
    }
    s
}

/// One boot.
#[derive(Debug, Clone)]
pub struct Boot {
    pub firmware: Firmware,
    /// Image attached as a USB stick on xHCI (boot device).
    pub stick: Option<PathBuf>,
    /// The stick's host controller.
    pub stick_host: UsbHost,
    /// ISO attached as an IDE/SATA CD-ROM drive (boot device).
    pub cdrom: Option<PathBuf>,
    /// Disks attached as internal drives.
    pub disks: Vec<(PathBuf, Bus)>,
    /// Disks plugged in after the boot started (through a monitor socket
    /// in `scratch`).
    pub late: Vec<LateDisk>,
    /// I/O errors the disk at an index of `disks` returns (through
    /// blkdebug); disks without an entry are attached directly.
    pub io_errors: Vec<(usize, IoError)>,
    /// Direct kernel boot instead of firmware boot: kernel, initrds, cmdline.
    pub kernel: Option<(PathBuf, Vec<PathBuf>, String)>,
    /// SMBIOS system UUID (`-uuid`).
    pub uuid: Option<String>,
    /// Stop when a serial line contains this.
    pub stop_on: Option<String>,
    /// Keys to type on the serial console (e.g. a GRUB menu hotkey).
    pub keys: Vec<Keys>,
    pub timeout: Duration,
    /// Folder for the writable UEFI variable store copy.
    pub scratch: PathBuf,
    pub memory_mib: u32,
    pub extra: Vec<String>,
    /// A NIC on QEMU's user-mode network (its TFTP server serves a folder);
    /// without one the machine has no network (`-nic none`).
    pub net: Option<Net>,
    /// A NIC on a tap device instead (a real network, e.g. a bridge in a
    /// network namespace); `net` must then be `None`.
    pub tap: Option<Tap>,
    /// With `UefiSb`: this UEFI variable store template (its PK, KEK, db
    /// and dbx) instead of OVMF's Microsoft one; copied, never written.
    pub vars: Option<PathBuf>,
}

/// A NIC on QEMU's user-mode network: the guest sees a DHCP server, the
/// host as 10.0.2.2, and TFTP serving `tftp`.
#[derive(Debug, Clone)]
pub struct Net {
    /// Folder served over TFTP.
    pub tftp: PathBuf,
    /// DHCP boot file name, relative to `tftp`.
    pub bootfile: String,
    /// `e1000`, `virtio-net-pci`…
    pub model: String,
    /// `Some("")` disables the NIC's iPXE option ROM (`romfile=`), so
    /// OVMF's own PXE runs; `None` keeps QEMU's default ROM.
    pub romfile: Option<String>,
    /// Boot from the network first.
    pub boot_first: bool,
}

/// A NIC on an existing tap device; with `netns`, QEMU runs inside that
/// network namespace (`ip netns exec`), where the tap lives.
#[derive(Debug, Clone)]
pub struct Tap {
    pub ifname: String,
    pub netns: Option<String>,
    pub mac: String,
    /// `e1000`, `virtio-net-pci`…
    pub model: String,
    /// As [`Net::romfile`].
    pub romfile: Option<String>,
}

impl Boot {
    pub fn new(firmware: Firmware, scratch: &Path) -> Boot {
        Boot {
            firmware,
            stick: None,
            stick_host: UsbHost::Xhci,
            cdrom: None,
            disks: Vec::new(),
            late: Vec::new(),
            io_errors: Vec::new(),
            kernel: None,
            uuid: None,
            stop_on: None,
            keys: Vec::new(),
            timeout: Duration::from_secs(240),
            scratch: scratch.to_path_buf(),
            memory_mib: 1024,
            extra: Vec::new(),
            net: None,
            tap: None,
            vars: None,
        }
    }
}

/// Bytes typed on the serial console: from the first line containing
/// `after`, every half second (firmware and GRUB drop input that arrives
/// before they poll for it), until a line contains `until`.
#[derive(Debug, Clone)]
pub struct Keys {
    pub after: String,
    pub bytes: Vec<u8>,
    pub until: String,
}

/// What the serial console said, and how the boot ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Lines with their time since QEMU started.
    pub lines: Vec<(Duration, String)>,
    /// QEMU exited by itself (power off, or reboot with -no-reboot).
    pub exited: bool,
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl Outcome {
    /// Time of the first line containing `needle`.
    pub fn first(&self, needle: &str) -> Option<Duration> {
        self.lines
            .iter()
            .find(|(_, l)| l.contains(needle))
            .map(|(t, _)| *t)
    }

    pub fn contains(&self, needle: &str) -> bool {
        self.first(needle).is_some()
    }

    /// The whole console text, for error messages.
    pub fn text(&self) -> String {
        let mut s = String::new();
        for (t, l) in &self.lines {
            s.push_str(&format!("[{:7.2}] {l}\n", t.as_secs_f64()));
        }
        s
    }
}

fn require(path: &str, package: &str) -> Result<()> {
    if !Path::new(path).exists() {
        bail!("{path} is missing: install Debian's {package} package (scripts/setup does)");
    }
    Ok(())
}

/// The qemu command line for a boot.
pub fn command(b: &Boot) -> Result<Command> {
    require("/usr/bin/qemu-system-x86_64", "qemu-system-x86")?;
    let mut c = match b.tap.as_ref().and_then(|t| t.netns.as_deref()) {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "qemu-system-x86_64"]);
            c
        }
        None => Command::new("qemu-system-x86_64"),
    };
    c.args([
        "-nodefaults",
        "-display",
        "none",
        "-serial",
        "stdio",
        "-no-reboot",
    ]);
    match (&b.net, &b.tap) {
        (None, Some(t)) => {
            c.arg("-netdev").arg(format!(
                "tap,id=n0,ifname={},script=no,downscript=no",
                t.ifname
            ));
            let mut dev = format!("{},netdev=n0,mac={},bootindex=0", t.model, t.mac);
            if let Some(rom) = &t.romfile {
                dev.push_str(&format!(",romfile={rom}"));
            }
            c.args(["-device", &dev]);
            if b.firmware == Firmware::Bios {
                c.args(["-boot", "n"]);
            }
        }
        (None, None) => {
            c.args(["-nic", "none"]);
        }
        (Some(n), _) => {
            c.arg("-netdev").arg(format!(
                "user,id=n0,tftp={},bootfile={}",
                n.tftp.display(),
                n.bootfile
            ));
            let mut dev = format!("{},netdev=n0", n.model);
            if n.boot_first {
                dev.push_str(",bootindex=0");
            }
            if let Some(rom) = &n.romfile {
                dev.push_str(&format!(",romfile={rom}"));
            }
            c.args(["-device", &dev]);
            if n.boot_first && b.firmware == Firmware::Bios {
                c.args(["-boot", "n"]);
            }
        }
    }
    c.args([
        "-m",
        &b.memory_mib.to_string(),
        "-smp",
        "1",
        "-accel",
        "tcg",
        "-cpu",
        "max",
    ]);
    match b.firmware {
        Firmware::Bios => {
            c.args(["-machine", "pc"]);
        }
        Firmware::Uefi | Firmware::UefiSb => {
            let (code, vars) = match (b.firmware, &b.vars) {
                (Firmware::UefiSb, Some(v)) => (OVMF_CODE_MS, v.to_string_lossy().into_owned()),
                (Firmware::UefiSb, None) => (OVMF_CODE_MS, OVMF_VARS_MS.to_string()),
                _ => (OVMF_CODE, OVMF_VARS.to_string()),
            };
            require(code, "ovmf")?;
            require(&vars, "ovmf")?;
            std::fs::create_dir_all(&b.scratch)
                .with_context(|| format!("creating {}", b.scratch.display()))?;
            let vars_copy = b
                .scratch
                .join(format!("ovmf-vars-{}.fd", std::process::id()));
            std::fs::copy(&vars, &vars_copy).with_context(|| format!("copying {vars}"))?;
            c.args(["-machine", "q35,smm=on"]);
            c.args(["-global", "driver=cfi.pflash01,property=secure,value=on"]);
            c.arg("-drive").arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={code}"
            ));
            c.arg("-drive").arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars_copy.display()
            ));
        }
    }
    c.args(["-vga", "std"]);
    if let Some(stick) = &b.stick {
        c.arg("-drive").arg(format!(
            "if=none,id=stick,format=raw,file={}",
            stick.display()
        ));
        // With -kernel, QEMU's own linuxboot ROM holds boot index 0; the
        // stick is then only a medium for the report.
        let (host, bus) = match b.stick_host {
            UsbHost::Xhci => ("qemu-xhci,id=xhci", "xhci.0"),
            UsbHost::Ehci => ("usb-ehci,id=ehci", "ehci.0"),
        };
        let dev = if b.kernel.is_some() {
            format!("usb-storage,bus={bus},drive=stick")
        } else {
            format!("usb-storage,bus={bus},drive=stick,bootindex=0")
        };
        c.args(["-device", host, "-device", &dev]);
    }
    if let Some(iso) = &b.cdrom {
        // ide-cd lands on the PIIX IDE bus (pc) or the ICH9 AHCI (q35).
        c.arg("-drive").arg(format!(
            "if=none,id=cd,media=cdrom,format=raw,readonly=on,file={}",
            iso.display()
        ));
        c.args(["-device", "ide-cd,drive=cd,bootindex=0"]);
    }
    for (i, (disk, bus)) in b.disks.iter().enumerate() {
        let id = format!("victim{i}");
        let errors: Vec<IoError> = b
            .io_errors
            .iter()
            .filter(|(d, _)| *d == i)
            .map(|(_, e)| e.clone())
            .collect();
        if errors.is_empty() {
            c.arg("-drive").arg(format!(
                "if=none,id={id},format=raw,file={}",
                disk.display()
            ));
        } else {
            // raw over blkdebug over the file: sectors in the rules are the
            // disk's own. The guest sees the errors (rerror/werror=report),
            // the VM does not pause on them.
            std::fs::create_dir_all(&b.scratch)
                .with_context(|| format!("creating {}", b.scratch.display()))?;
            let conf = b
                .scratch
                .join(format!("blkdebug-{}-{i}.conf", std::process::id()));
            std::fs::write(&conf, blkdebug_config(&errors))
                .with_context(|| format!("writing {}", conf.display()))?;
            for p in [&conf, disk] {
                if p.to_string_lossy().contains(',') {
                    bail!(
                        "{}: a comma in the path cannot be passed to QEMU's -drive",
                        p.display()
                    );
                }
            }
            c.arg("-drive").arg(format!(
                "if=none,id={id},driver=raw,rerror=report,werror=report,file.driver=blkdebug,file.config={},file.image.driver=file,file.image.filename={}",
                conf.display(),
                disk.display()
            ));
        }
        for d in disk_devices(&id, *bus, &format!("{i}"), None) {
            c.args(["-device", &d]);
        }
    }
    if !b.late.is_empty() {
        let sock = monitor_socket(b);
        c.arg("-monitor")
            .arg(format!("unix:{},server=on,wait=off", sock.display()));
        if b.firmware != Firmware::Bios {
            // q35's root complex takes no hot-plugged device: a root port
            // per late disk does.
            for i in 0..b.late.len() {
                c.args([
                    "-device",
                    &format!("pcie-root-port,id=hp{i},chassis={},slot={}", 10 + i, 10 + i),
                ]);
            }
        }
    }
    if let Some((kernel, initrds, cmdline)) = &b.kernel {
        c.arg("-kernel").arg(kernel);
        if !initrds.is_empty() {
            let list: Vec<String> = initrds.iter().map(|p| p.display().to_string()).collect();
            c.arg("-initrd").arg(list.join(","));
        }
        c.arg("-append").arg(cmdline);
    }
    if let Some(u) = &b.uuid {
        c.args(["-uuid", u]);
    }
    c.args(&b.extra);
    Ok(c)
}

/// The `-device` values that attach drive `id` on `bus`; `n` makes the
/// controller's id unique, `pci_bus` places a hot-plugged PCI device.
fn disk_devices(id: &str, bus: Bus, n: &str, pci_bus: Option<&str>) -> Vec<String> {
    let at = pci_bus.map(|b| format!(",bus={b}")).unwrap_or_default();
    match bus {
        Bus::Ahci => vec![
            format!("ahci,id=ahci{n}{at}"),
            format!("ide-hd,drive={id},bus=ahci{n}.0"),
        ],
        Bus::Nvme => vec![format!("nvme,drive={id},serial=defib{n}{at}")],
        Bus::Virtio => vec![format!("virtio-blk-pci,drive={id}{at}")],
        Bus::VirtioScsi => vec![
            format!("virtio-scsi-pci,id=vscsi{n}{at}"),
            format!("scsi-hd,drive={id},bus=vscsi{n}.0"),
        ],
    }
}

/// The monitor socket of a boot with late disks, in its scratch folder
/// (one boot at a time per folder; QEMU replaces a stale socket).
fn monitor_socket(b: &Boot) -> PathBuf {
    b.scratch.join(format!("mon-{}.sock", std::process::id()))
}

/// Sends HMP commands to the monitor at `sock` one after another and
/// returns what it answered.
fn monitor(sock: &Path, cmds: &[String]) -> Result<String> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(sock)
        .with_context(|| format!("connecting to QEMU's monitor {}", sock.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut out = String::new();
    let mut buf = [0u8; 4096];
    let mut prompt = |s: &mut std::os::unix::net::UnixStream, out: &mut String| -> Result<()> {
        let want = out.matches("(qemu)").count() + 1;
        while out.matches("(qemu)").count() < want {
            let n = s.read(&mut buf).context("reading QEMU's monitor")?;
            if n == 0 {
                bail!("QEMU's monitor closed: {out}");
            }
            out.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        Ok(())
    };
    prompt(&mut s, &mut out)?;
    for c in cmds {
        s.write_all(format!("{c}\n").as_bytes())?;
        prompt(&mut s, &mut out)?;
    }
    Ok(strip_ansi(&out))
}

/// The monitor commands that plug in late disk `i`.
fn late_commands(b: &Boot, i: usize) -> Result<Vec<String>> {
    let l = &b.late[i];
    if !matches!(l.bus, Bus::Virtio | Bus::Nvme | Bus::VirtioScsi) {
        bail!(
            "{:?} cannot be hot-plugged: use Virtio, Nvme or VirtioScsi",
            l.bus
        );
    }
    let id = format!("late{i}");
    let pci_bus = (b.firmware != Firmware::Bios).then(|| format!("hp{i}"));
    let mut cmds = vec![format!(
        "drive_add 0 if=none,id={id},format=raw,file={}",
        l.disk.display()
    )];
    for d in disk_devices(&id, l.bus, &format!("late{i}"), pci_bus.as_deref()) {
        cmds.push(format!("device_add {d}"));
    }
    Ok(cmds)
}

/// Boots and waits for power-off, the stop line, or the timeout.
pub fn run(b: &Boot) -> Result<Outcome> {
    // Late disks are checked before QEMU starts, not when they are due.
    for i in 0..b.late.len() {
        late_commands(b, i)?;
    }
    let mut cmd = command(b)?;
    // Piped, not null: keys are typed there, and QEMU keeps the serial
    // console's input open rather than seeing end-of-file.
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let stderr = child.stderr.take().context("qemu stderr")?;
    let mut stdin = child.stdin.take();
    let mut keys = b.keys.clone();
    // (index into keys, last time typed) for keys being typed now.
    let mut typing: Option<(usize, Instant)> = None;
    let (tx, rx) = mpsc::channel::<(Duration, String)>();
    let reader = std::thread::spawn(move || {
        // Serial output may carry ANSI colours and stray bytes: read bytes,
        // split on newlines, decode lossily.
        let mut r = BufReader::new(stdout);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = strip_ansi(&String::from_utf8_lossy(&buf));
                    if tx
                        .send((start.elapsed(), line.trim_end().to_string()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut s);
        s
    });
    let mut lines = Vec::new();
    let mut timed_out = false;
    let mut stopped = false;
    // When each late disk is due, once its trigger line was seen.
    let mut late_due: Vec<Option<Instant>> = vec![None; b.late.len()];
    let mut late_done = vec![false; b.late.len()];
    loop {
        for (i, due) in late_due.iter().enumerate() {
            if late_done[i] || !due.is_some_and(|d| Instant::now() >= d) {
                continue;
            }
            late_done[i] = true;
            let said = late_commands(b, i).and_then(|c| monitor(&monitor_socket(b), &c));
            let text = match said {
                Ok(t) => t,
                Err(e) => format!("{e:#}"),
            };
            for l in text.lines().filter(|l| !l.trim().is_empty()) {
                lines.push((start.elapsed(), format!("[monitor] {}", l.trim_end())));
            }
        }
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(l) => {
                for (i, late) in b.late.iter().enumerate() {
                    if late_due[i].is_none() && l.1.contains(late.after.as_str()) {
                        late_due[i] = Some(Instant::now() + late.delay);
                    }
                }
                let hit = b.stop_on.as_deref().is_some_and(|s| l.1.contains(s));
                if let Some((i, _)) = typing {
                    if l.1.contains(keys[i].until.as_str()) {
                        keys.remove(i);
                        typing = None;
                    }
                }
                if typing.is_none() {
                    if let Some(i) = keys.iter().position(|k| l.1.contains(k.after.as_str())) {
                        typing = Some((i, start - Duration::from_secs(1)));
                    }
                }
                lines.push(l);
                if hit {
                    stopped = true;
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if let Some((i, last)) = typing {
            if last.elapsed() >= Duration::from_millis(500) {
                if let Some(w) = stdin.as_mut() {
                    use std::io::Write;
                    let _ = w.write_all(&keys[i].bytes).and_then(|_| w.flush());
                }
                typing = Some((i, Instant::now()));
            }
        }
        if start.elapsed() > b.timeout {
            timed_out = true;
            break;
        }
    }
    let exited = if stopped || timed_out {
        let _ = child.kill();
        let _ = child.wait();
        false
    } else {
        let status = child.wait().context("waiting for qemu")?;
        let err = err_reader.join().unwrap_or_default();
        if !status.success() {
            bail!("qemu failed ({status}): {}", err.trim());
        }
        true
    };
    let _ = reader.join();
    // Drain what arrived after the stop.
    lines.extend(rx.try_iter());
    Ok(Outcome {
        lines,
        exited,
        timed_out,
        elapsed: start.elapsed(),
    })
}

/// Removes ANSI escape sequences (CSI … letter) from a serial line.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut it = s.chars().peekable();
    while let Some(c) = it.next() {
        if c == '\u{1b}' {
            if it.peek() == Some(&'[') {
                it.next();
                for d in it.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        if c == '\r' {
            continue;
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ansi_is_stripped() {
        assert_eq!(strip_ansi("\u{1b}[1;32mREPAIRED\u{1b}[0m\r"), "REPAIRED");
    }

    #[test]
    fn network_boot_arguments() {
        let d = tempfile::tempdir().unwrap();
        let args = |b: &Boot| -> String {
            command(b)
                .unwrap()
                .get_args()
                .map(|a| a.to_string_lossy().to_string())
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut b = Boot::new(Firmware::Bios, d.path());
        assert!(args(&b).contains("-nic none"));
        b.net = Some(Net {
            tftp: PathBuf::from("/srv/t"),
            bootfile: "boot.ipxe".into(),
            model: "e1000".into(),
            romfile: None,
            boot_first: true,
        });
        let a = args(&b);
        assert!(!a.contains("-nic none"));
        assert!(a.contains("-netdev user,id=n0,tftp=/srv/t,bootfile=boot.ipxe"));
        assert!(a.contains("-device e1000,netdev=n0,bootindex=0 -boot n"));
        let mut b = Boot::new(Firmware::UefiSb, d.path());
        b.net = Some(Net {
            tftp: PathBuf::from("/srv/t"),
            bootfile: "shimx64.efi".into(),
            model: "virtio-net-pci".into(),
            romfile: Some(String::new()),
            boot_first: true,
        });
        let a = args(&b);
        assert!(a.contains("-device virtio-net-pci,netdev=n0,bootindex=0,romfile= "));
        assert!(!a.contains("-boot n"));
    }

    #[test]
    fn a_tap_nic_in_a_network_namespace() {
        let d = tempfile::tempdir().unwrap();
        let mut b = Boot::new(Firmware::UefiSb, d.path());
        b.tap = Some(Tap {
            ifname: "tap2".into(),
            netns: Some("ns1".into()),
            mac: "52:54:00:77:00:02".into(),
            model: "virtio-net-pci".into(),
            romfile: Some(String::new()),
        });
        let c = command(&b).unwrap();
        assert_eq!(c.get_program(), "ip");
        let a: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().to_string())
            .collect();
        assert_eq!(a[..4], ["netns", "exec", "ns1", "qemu-system-x86_64"]);
        let all = a.join(" ");
        assert!(all.contains("-netdev tap,id=n0,ifname=tap2,script=no,downscript=no"));
        assert!(all.contains(
            "-device virtio-net-pci,netdev=n0,mac=52:54:00:77:00:02,bootindex=0,romfile= "
        ));
        assert!(!all.contains("-nic none") && !all.contains("-boot n"));
        b.firmware = Firmware::Bios;
        b.tap.as_mut().unwrap().netns = None;
        let c = command(&b).unwrap();
        assert_eq!(c.get_program(), "qemu-system-x86_64");
        let all: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().to_string())
            .collect();
        assert!(all.join(" ").contains("-boot n"));
    }

    #[test]
    fn io_errors_go_through_blkdebug_on_their_disk_only() {
        let d = tempfile::tempdir().unwrap();
        let mut b = Boot::new(Firmware::UefiSb, d.path());
        b.disks = vec![
            (PathBuf::from("/v/a.img"), Bus::Virtio),
            (PathBuf::from("/v/b.img"), Bus::Ahci),
        ];
        b.io_errors = vec![
            (
                1,
                IoError {
                    on: IoEvent::Read,
                    sector: Some(4096),
                    errno: 5,
                },
            ),
            (
                1,
                IoError {
                    on: IoEvent::Write,
                    sector: None,
                    errno: 28,
                },
            ),
        ];
        let args: Vec<String> = command(&b)
            .unwrap()
            .get_args()
            .map(|a| a.to_string_lossy().to_string())
            .collect();
        assert!(args.contains(&"if=none,id=victim0,format=raw,file=/v/a.img".to_string()));
        let drive = args
            .iter()
            .find(|a| a.starts_with("if=none,id=victim1,"))
            .unwrap();
        assert!(drive.contains(",driver=raw,rerror=report,werror=report,file.driver=blkdebug,"));
        assert!(drive.ends_with(",file.image.driver=file,file.image.filename=/v/b.img"));
        let conf = drive
            .split(',')
            .find_map(|kv| kv.strip_prefix("file.config="))
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(conf).unwrap(),
            "[inject-error]\nevent = \"read_aio\"\nerrno = \"5\"\nonce = \"off\"\nsector = \"4096\"\n\n\
             [inject-error]\nevent = \"write_aio\"\nerrno = \"28\"\nonce = \"off\"\n\n"
        );
    }

    #[test]
    fn secure_boot_uses_ms_vars_and_smm() {
        let d = tempfile::tempdir().unwrap();
        let mut b = Boot::new(Firmware::UefiSb, d.path());
        b.stick = Some(PathBuf::from("/x.img"));
        let c = command(&b).unwrap();
        let args: Vec<String> = c
            .get_args()
            .map(|a| a.to_string_lossy().to_string())
            .collect();
        let all = args.join(" ");
        assert!(all.contains("OVMF_CODE_4M.ms.fd"));
        assert!(all.contains("q35,smm=on"));
        assert!(all.contains("usb-storage,bus=xhci.0,drive=stick,bootindex=0"));
    }
}

//! `defib serve`: a whole fleet from one command. Writes the PXE tree of
//! the current build into a private run folder, starts the real dnsmasq
//! (DHCP or proxy-DHCP, and TFTP) and nginx (the tree over HTTP, reports
//! by WebDAV PUT) as child processes with generated configs, and prints a
//! ledger line for every report that arrives, until Ctrl-C or SIGTERM.
//!
//! Not a DHCP, TFTP or HTTP server: dnsmasq and nginx do all of that, so
//! the code that faces the network is code users already trust. What this
//! module owns is the plan (addresses, ports, the two configs), the checks
//! before anything starts (programs, root, interface, ports), the
//! children's lifetime, and moving each arrived report into `--reports
//! DIR` only after it validated like `defib reports` reads it.
//!
//! The tree (kernel, initramfs, boot loaders) goes over plain HTTP and
//! TFTP, the only ways firmware and iPXE fetch it (Secure Boot checks the
//! loaders and kernel). Reports and BitLocker keys go over HTTPS only:
//! nginx serves them with a certificate kept in `--tls-dir`
//! ([`crate::servetls`]) whose SHA-256 every kernel command line pins, so
//! the rescue talks to this server and no other.

use crate::fleet;
use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The URL path the tree is served under.
pub const TREE_PATH: &str = "/defib/";
/// The URL path reports are PUT to.
pub const REPORTS_PATH: &str = "/defib-reports/";
/// The URL path BitLocker keys are served under (HTTPS only).
pub const KEYS_PATH: &str = "/defib-keys/";

/// How addresses are handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dhcp {
    /// dnsmasq is the network's DHCP server, leasing FIRST..=LAST.
    Range(Ipv4Addr, Ipv4Addr),
    /// dnsmasq answers only PXE clients, beside the site's DHCP server.
    Proxy,
}

/// What `defib serve` was asked for.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub interface: String,
    /// The address on `interface` to serve from (with its prefix length);
    /// `None`: the interface's first IPv4 address.
    pub address: Option<(Ipv4Addr, u8)>,
    pub dhcp: Dhcp,
    pub port: u16,
    /// Scan only: every entry gets `defib.mode=scan`.
    pub scan_only: bool,
    /// Extra kernel arguments (checked like `defib pxe --append`).
    pub append: Option<String>,
    pub reports: PathBuf,
    /// Keep configs, logs and the tree here instead of a temporary folder.
    pub run_dir: Option<PathBuf>,
    /// HTTPS port for reports and keys.
    pub tls_port: u16,
    /// Where the certificate is kept (made on first use).
    pub tls_dir: PathBuf,
    /// BitLocker keys to serve over HTTPS: a key file, or a folder of them.
    pub keys: Option<PathBuf>,
}

/// HTTPS: nginx's second server, for reports and keys.
#[derive(Debug, Clone)]
pub struct TlsPlan {
    pub port: u16,
    pub cert: crate::servetls::ServerCert,
}

/// What `--serve-keys` serves: one file, or every regular file of a folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeysServed {
    File(PathBuf),
    Folder(PathBuf),
}

/// Everything the two configs follow from.
#[derive(Debug, Clone)]
pub struct Plan {
    pub interface: String,
    pub address: Ipv4Addr,
    pub prefix: u8,
    pub dhcp: Dhcp,
    pub port: u16,
    /// The run folder (absolute): `tree/`, `incoming/`, configs, logs.
    pub run: PathBuf,
    /// nginx's worker user and group when serving as root.
    pub worker_user: Option<(String, String)>,
    /// HTTPS for reports and keys; `None`: reports over plain HTTP (the
    /// benchmark's bare nginx, unit tests).
    pub tls: Option<TlsPlan>,
    /// Keys copied into the run folder and served under [`KEYS_PATH`].
    pub keys: Option<KeysServed>,
}

impl Plan {
    pub fn tree(&self) -> PathBuf {
        self.run.join("tree")
    }
    /// Where nginx writes PUT reports before they are checked.
    pub fn incoming(&self) -> PathBuf {
        self.run.join("incoming")
    }
    /// Arrived files that were not defib reports.
    pub fn rejected(&self) -> PathBuf {
        self.run.join("rejected")
    }
    /// Served keys, copied here (readable by nginx's worker only).
    pub fn keys_dir(&self) -> PathBuf {
        self.run.join("keys")
    }
    fn host(&self) -> String {
        if self.port == 80 {
            self.address.to_string()
        } else {
            format!("{}:{}", self.address, self.port)
        }
    }
    fn tls_host(&self, t: &TlsPlan) -> String {
        if t.port == 443 {
            self.address.to_string()
        } else {
            format!("{}:{}", self.address, t.port)
        }
    }
    /// `http://ADDR[:PORT]/defib/`: `--http-base` of the tree.
    pub fn http_base(&self) -> String {
        format!("http://{}{TREE_PATH}", self.host())
    }
    /// `https://ADDR[:TLSPORT]/defib-reports/` (or `http://` without
    /// TLS): `defib.report=`.
    pub fn report_url(&self) -> String {
        match &self.tls {
            Some(t) => format!("https://{}{REPORTS_PATH}", self.tls_host(t)),
            None => format!("http://{}{REPORTS_PATH}", self.host()),
        }
    }
    /// `defib.keys=` for `--serve-keys`: the folder, or the one file in it.
    pub fn keys_url(&self) -> Option<String> {
        let t = self.tls.as_ref()?;
        let base = format!("https://{}{KEYS_PATH}", self.tls_host(t));
        match self.keys.as_ref()? {
            KeysServed::Folder(_) => Some(base),
            KeysServed::File(f) => Some(format!("{base}{}", f.file_name()?.to_str()?)),
        }
    }
    /// The words every kernel command line gets: where reports go, the
    /// certificate pin, where keys come from.
    pub fn kernel_words(&self) -> Vec<String> {
        let mut w = vec![format!(
            "{}={}",
            defib_rescue::layout::keys::REPORT,
            self.report_url()
        )];
        if let Some(t) = &self.tls {
            w.push(format!(
                "{}={}",
                defib_rescue::layout::keys::TLS,
                t.cert.pin()
            ));
        }
        if let Some(k) = self.keys_url() {
            w.push(format!("{}={k}", defib_rescue::layout::keys::KEYS_URL));
        }
        w
    }
    pub fn netmask(&self) -> Ipv4Addr {
        prefix_mask(self.prefix)
    }
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.address) & u32::from(self.netmask()))
    }
}

fn prefix_mask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0))
}

/// `10.77.0.1/24`.
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8)> {
    let (a, p) = s
        .split_once('/')
        .with_context(|| format!("--address {s:?}: give ADDRESS/PREFIX, e.g. 10.77.0.1/24"))?;
    let a: Ipv4Addr = a
        .parse()
        .with_context(|| format!("--address {s:?}: {a:?} is not an IPv4 address"))?;
    let p: u8 = p
        .parse()
        .ok()
        .filter(|p| (8..=30).contains(p))
        .with_context(|| format!("--address {s:?}: the prefix must be 8 to 30"))?;
    Ok((a, p))
}

/// `FIRST,LAST`.
pub fn parse_range(s: &str) -> Result<(Ipv4Addr, Ipv4Addr)> {
    let bad = || format!("--dhcp-range {s:?}: give FIRST,LAST, e.g. 10.77.0.100,10.77.0.199");
    let (a, b) = s.split_once(',').with_context(bad)?;
    let a: Ipv4Addr = a.trim().parse().with_context(bad)?;
    let b: Ipv4Addr = b.trim().parse().with_context(bad)?;
    if u32::from(a) > u32::from(b) {
        bail!("--dhcp-range {s:?}: FIRST comes after LAST");
    }
    Ok((a, b))
}

/// The range must lie in the served subnet and leave the server's own
/// address out.
pub fn check_range(plan: &Plan) -> Result<()> {
    if let Dhcp::Range(a, b) = plan.dhcp {
        let net = |x: Ipv4Addr| u32::from(x) & u32::from(plan.netmask());
        if net(a) != u32::from(plan.network()) || net(b) != u32::from(plan.network()) {
            bail!(
                "--dhcp-range {a},{b} is not inside {}/{} (the subnet of {} on {})",
                plan.network(),
                plan.prefix,
                plan.address,
                plan.interface
            );
        }
        if (u32::from(a)..=u32::from(b)).contains(&u32::from(plan.address)) {
            bail!(
                "--dhcp-range {a},{b} holds this server's own address {}",
                plan.address
            );
        }
    }
    Ok(())
}

/// A program `defib serve` runs, found on `PATH` or in the sbin folders
/// (where Debian puts both and where a user's `PATH` may not look).
pub fn find_program(name: &str, install: &str) -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} is not installed: {install}"))
}

/// The two servers, found and fit for the job.
#[derive(Debug, Clone)]
pub struct Programs {
    pub dnsmasq: PathBuf,
    pub nginx: PathBuf,
}

pub const DNSMASQ_ADVICE: &str = "on Debian or Ubuntu `sudo apt-get install dnsmasq-base` \
     (the program only, no system service); elsewhere your distribution's dnsmasq";
pub const NGINX_ADVICE: &str = "on Debian or Ubuntu `sudo apt-get install nginx` \
     (with its WebDAV module, for the report PUTs); elsewhere your distribution's nginx";

/// Finds dnsmasq and nginx, and checks nginx has the WebDAV module the
/// report PUTs need.
pub fn check_programs() -> Result<Programs> {
    let dnsmasq = find_program("dnsmasq", DNSMASQ_ADVICE)?;
    let nginx = find_program("nginx", NGINX_ADVICE)?;
    let v = Command::new(&nginx)
        .arg("-V")
        .output()
        .with_context(|| format!("running {} -V", nginx.display()))?;
    let text = String::from_utf8_lossy(&v.stderr).to_string() + &String::from_utf8_lossy(&v.stdout);
    if !text.contains("--with-http_dav_module") {
        bail!(
            "{} has no WebDAV module (--with-http_dav_module), which receives the reports: {NGINX_ADVICE}",
            nginx.display()
        );
    }
    Ok(Programs { dnsmasq, nginx })
}

/// The IPv4 addresses (with prefix lengths) of `iface`; an error naming
/// the interfaces there are when it does not exist.
pub fn interface_addresses(iface: &str) -> Result<Vec<(Ipv4Addr, u8)>> {
    let sys = Path::new("/sys/class/net");
    if iface.is_empty() || iface.contains('/') || !sys.join(iface).exists() {
        let mut have: Vec<String> = std::fs::read_dir(sys)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        have.sort();
        bail!(
            "no network interface {iface:?} here (there are: {}); give --interface one of them",
            have.join(", ")
        );
    }
    let mut out = Vec::new();
    // SAFETY: getifaddrs fills a list we only read and then free; each
    // ifa_addr/ifa_netmask is checked for null and for AF_INET before it
    // is read as a sockaddr_in.
    unsafe {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut list) != 0 {
            bail!(
                "listing network addresses: {}",
                std::io::Error::last_os_error()
            );
        }
        let mut p = list;
        while !p.is_null() {
            let a = &*p;
            p = a.ifa_next;
            if a.ifa_addr.is_null() || a.ifa_netmask.is_null() || a.ifa_name.is_null() {
                continue;
            }
            if i32::from((*a.ifa_addr).sa_family) != libc::AF_INET {
                continue;
            }
            if std::ffi::CStr::from_ptr(a.ifa_name).to_bytes() != iface.as_bytes() {
                continue;
            }
            let addr = &*(a.ifa_addr as *const libc::sockaddr_in);
            let mask = &*(a.ifa_netmask as *const libc::sockaddr_in);
            let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
            let prefix = u32::from_be(mask.sin_addr.s_addr).count_ones() as u8;
            out.push((ip, prefix));
        }
        libc::freeifaddrs(list);
    }
    Ok(out)
}

/// The address to serve from: `want` if `iface` has it, else its first.
pub fn pick_address(iface: &str, want: Option<(Ipv4Addr, u8)>) -> Result<(Ipv4Addr, u8)> {
    let have = interface_addresses(iface)?;
    let list = || {
        have.iter()
            .map(|(a, p)| format!("{a}/{p}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match want {
        Some((a, p)) => have
            .iter()
            .copied()
            .find(|h| *h == (a, p))
            .with_context(|| {
                format!(
                    "{iface} does not have {a}/{p} (it has: {}); add it first, e.g. \
                 `sudo ip addr add {a}/{p} dev {iface}`",
                    if have.is_empty() {
                        "none".into()
                    } else {
                        list()
                    }
                )
            }),
        None => have.first().copied().with_context(|| {
            format!(
                "{iface} has no IPv4 address; give it one first, e.g. \
                 `sudo ip addr add 192.168.77.1/24 dev {iface}`, or serve on another interface"
            )
        }),
    }
}

/// Binds each port dnsmasq and nginx will need, briefly, so a port in use
/// is an error that says which one and what probably holds it, before any
/// child starts.
/// `tls_port`: the HTTPS port when it is not in `plan` yet (`prepare`
/// checks before it makes or reads the certificate).
pub fn check_ports(plan: &Plan, tls_port: Option<u16>) -> Result<()> {
    let busy = |e: std::io::Error, what: &str| -> anyhow::Error {
        anyhow::anyhow!(
            "{what} is in use ({e}): another server holds it; stop it (e.g. a system dnsmasq or \
             web server: `sudo ss -lunpt` shows which) or serve on another address"
        )
    };
    std::net::TcpListener::bind((plan.address, plan.port)).map_err(|e| {
        busy(
            e,
            &format!("TCP port {} on {} (HTTP, --port)", plan.port, plan.address),
        )
    })?;
    if let Some(port) = tls_port.or(plan.tls.as_ref().map(|t| t.port)) {
        std::net::TcpListener::bind((plan.address, port)).map_err(|e| {
            busy(
                e,
                &format!("TCP port {port} on {} (HTTPS, --tls-port)", plan.address),
            )
        })?;
    }
    std::net::UdpSocket::bind((plan.address, 69))
        .map_err(|e| busy(e, &format!("UDP port 69 on {} (TFTP)", plan.address)))?;
    std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 67))
        .map_err(|e| busy(e, "UDP port 67 (DHCP)"))?;
    if plan.dhcp == Dhcp::Proxy {
        std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 4011))
            .map_err(|e| busy(e, "UDP port 4011 (proxy-DHCP)"))?;
    }
    Ok(())
}

/// A DHCPDISCOVER (RFC 2131 §4.1, options RFC 2132) from `mac`, asking
/// for a broadcast answer: the probe for another DHCP server.
pub fn dhcp_discover(xid: u32, mac: [u8; 6]) -> Vec<u8> {
    let mut p = vec![0u8; 240];
    p[0] = 1; // BOOTREQUEST
    p[1] = 1; // Ethernet
    p[2] = 6; // hardware address length
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[10] = 0x80; // flags: broadcast
    p[28..34].copy_from_slice(&mac);
    p[236..240].copy_from_slice(&[99, 130, 83, 99]); // magic cookie
    p.extend_from_slice(&[53, 1, 1]); // DHCPDISCOVER
    p.extend_from_slice(&[55, 2, 1, 3]); // ask for netmask, router
    p.push(255);
    p
}

/// The server identifier (option 54) of a DHCPOFFER answering `xid`, or
/// the packet's `siaddr` when the option is missing; `None` for anything
/// else. Bounds-checked: the bytes come from the network.
pub fn dhcp_offer_server(pkt: &[u8], xid: u32) -> Option<Ipv4Addr> {
    if pkt.len() < 240 || pkt[0] != 2 || pkt[4..8] != xid.to_be_bytes() {
        return None;
    }
    if pkt[236..240] != [99, 130, 83, 99] {
        return None;
    }
    let (mut i, mut offer, mut server) = (240, false, None);
    while i < pkt.len() {
        match pkt[i] {
            0 => i += 1,
            255 => break,
            code => {
                let len = *pkt.get(i + 1)? as usize;
                let v = pkt.get(i + 2..i + 2 + len)?;
                if code == 53 && v == [2] {
                    offer = true;
                }
                if code == 54 && len == 4 {
                    server = Some(Ipv4Addr::new(v[0], v[1], v[2], v[3]));
                }
                i += 2 + len;
            }
        }
    }
    offer.then(|| server.unwrap_or(Ipv4Addr::new(pkt[20], pkt[21], pkt[22], pkt[23])))
}

/// Before `--dhcp-range` makes dnsmasq a DHCP server: asks the network
/// whether one answers already (a DHCPDISCOVER on `iface`, answers
/// awaited for `wait`). Two DHCP servers on one network hand out
/// conflicting leases, so one answering is an error naming it.
pub fn check_no_other_dhcp(iface: &str, wait: Duration) -> Result<()> {
    use std::os::fd::AsRawFd;
    let sock = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 68))
        .context("UDP port 68 (to ask for another DHCP server) is in use")?;
    let name = std::ffi::CString::new(iface).context("interface name")?;
    // SAFETY: setsockopt on our own socket with a valid, NUL-terminated
    // buffer and its length.
    let r = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_ptr().cast(),
            name.as_bytes_with_nul().len() as libc::socklen_t,
        )
    };
    if r != 0 {
        bail!(
            "binding the DHCP probe to {iface}: {}",
            std::io::Error::last_os_error()
        );
    }
    sock.set_broadcast(true)?;
    let xid = std::process::id() ^ 0x6465_6662;
    let mac = [0x02, 0xde, 0xf1, 0xb0, 0x00, 0x01];
    sock.send_to(&dhcp_discover(xid, mac), (Ipv4Addr::BROADCAST, 67))
        .with_context(|| format!("sending a DHCP probe on {iface}"))?;
    let start = Instant::now();
    let mut buf = [0u8; 1500];
    while let Some(left) = wait.checked_sub(start.elapsed()) {
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                if let Some(server) = dhcp_offer_server(&buf[..n], xid) {
                    bail!(
                        "another DHCP server answers on {iface}: {server} (offer sent from {from}); \
                         two DHCP servers on one network hand out conflicting leases. Use \
                         --proxy-dhcp beside it, or serve on a network without one"
                    );
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break
            }
            Err(e) => bail!("listening for DHCP answers on {iface}: {e}"),
        }
    }
    Ok(())
}

/// dnsmasq's config: DHCP (or proxy-DHCP) and TFTP on one interface,
/// no DNS. iPXE clients are sent to `boot-http.ipxe` (the big files over
/// HTTP from nginx); BIOS PXE ROMs to `undionly.kpxe`; UEFI to shim
/// (Secure Boot on or off), whose GRUB loads over TFTP.
pub fn dnsmasq_conf(plan: &Plan) -> String {
    let run = plan.run.display();
    let mut s = format!(
        "# Written by `defib serve`; regenerated on every start.\n\
         port=0\n\
         interface={iface}\n\
         bind-interfaces\n\
         pid-file={run}/dnsmasq.pid\n\
         dhcp-leasefile={run}/dnsmasq.leases\n\
         log-facility=-\n\
         log-dhcp\n\
         enable-tftp\n\
         tftp-root={tree}\n\
         dhcp-match=set:ipxe,175\n\
         dhcp-userclass=set:ipxe,iPXE\n",
        iface = plan.interface,
        tree = plan.tree().display(),
    );
    match plan.dhcp {
        Dhcp::Range(a, b) => {
            s.push_str(&format!(
                "dhcp-range={a},{b},{},1h\n\
                 dhcp-match=set:efi64,option:client-arch,7\n\
                 dhcp-match=set:efi64,option:client-arch,9\n\
                 dhcp-boot=tag:ipxe,boot-http.ipxe\n\
                 dhcp-boot=tag:!ipxe,tag:efi64,shimx64.efi\n\
                 dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe\n",
                plan.netmask()
            ));
        }
        Dhcp::Proxy => {
            s.push_str(&format!(
                "dhcp-range={},proxy,{}\n\
                 pxe-prompt=\"defib network rescue\",1\n\
                 pxe-service=tag:!ipxe,x86PC,\"defib rescue (BIOS)\",undionly.kpxe\n\
                 pxe-service=tag:ipxe,x86PC,\"defib rescue\",boot-http.ipxe\n\
                 pxe-service=tag:!ipxe,X86-64_EFI,\"defib rescue (UEFI)\",shimx64.efi\n\
                 pxe-service=tag:ipxe,X86-64_EFI,\"defib rescue\",boot-http.ipxe\n",
                plan.network(),
                plan.netmask()
            ));
        }
    }
    s
}

/// nginx's config: the tree read-only under [`TREE_PATH`], reports by
/// PUT (and nothing else) under [`REPORTS_PATH`] into `incoming/`, each at
/// most [`fleet::MAX_REPORT`] bytes; every path nginx writes is in the
/// run folder.
pub fn nginx_conf(plan: &Plan) -> String {
    let run = plan.run.display();
    let user = match &plan.worker_user {
        Some((u, g)) => format!("user {u} {g};\n"),
        None => String::new(),
    };
    let reports = format!(
        "\x20       location {REPORTS_PATH} {{\n\
         \x20           alias {incoming}/;\n\
         \x20           dav_methods PUT;\n\
         \x20           create_full_put_path off;\n\
         \x20           dav_access user:rw;\n\
         \x20           client_max_body_size {max};\n\
         \x20           limit_except PUT {{ deny all; }}\n\
         \x20       }}\n",
        incoming = plan.incoming().display(),
        max = fleet::MAX_REPORT,
    );
    let (plain_reports, tls_server) = match &plan.tls {
        None => (reports, String::new()),
        Some(t) => {
            let keys = if plan.keys.is_some() {
                format!(
                    "\x20       location {KEYS_PATH} {{\n\
                     \x20           alias {}/;\n\
                     \x20           autoindex off;\n\
                     \x20           limit_except GET {{ deny all; }}\n\
                     \x20       }}\n",
                    plan.keys_dir().display()
                )
            } else {
                String::new()
            };
            (
                String::new(),
                format!(
                    "\x20   server {{\n\
                     \x20       listen {addr}:{port} ssl;\n\
                     \x20       ssl_certificate {cert};\n\
                     \x20       ssl_certificate_key {key};\n\
                     \x20       ssl_protocols TLSv1.2 TLSv1.3;\n\
                     {reports}\
                     {keys}\
                     \x20       location / {{ return 404; }}\n\
                     \x20   }}\n",
                    addr = plan.address,
                    port = t.port,
                    cert = t.cert.cert.display(),
                    key = t.cert.key.display(),
                ),
            )
        }
    };
    format!(
        "# Written by `defib serve`; regenerated on every start.\n\
         daemon off;\n\
         master_process on;\n\
         worker_processes 1;\n\
         {user}\
         pid {run}/nginx.pid;\n\
         error_log stderr notice;\n\
         worker_rlimit_nofile 8192;\n\
         events {{ worker_connections 4096; }}\n\
         http {{\n\
         \x20   access_log {run}/nginx-access.log;\n\
         \x20   client_body_temp_path {run}/nginx/body;\n\
         \x20   proxy_temp_path {run}/nginx/proxy;\n\
         \x20   fastcgi_temp_path {run}/nginx/fastcgi;\n\
         \x20   uwsgi_temp_path {run}/nginx/uwsgi;\n\
         \x20   scgi_temp_path {run}/nginx/scgi;\n\
         \x20   default_type application/octet-stream;\n\
         \x20   sendfile on;\n\
         \x20   server_tokens off;\n\
         \x20   server {{\n\
         \x20       listen {addr}:{port};\n\
         \x20       location {TREE_PATH} {{\n\
         \x20           alias {tree}/;\n\
         \x20           autoindex off;\n\
         \x20           limit_except GET {{ deny all; }}\n\
         \x20       }}\n\
         {plain_reports}\
         \x20       location / {{ return 404; }}\n\
         \x20   }}\n\
         {tls_server}\
         }}\n",
        addr = plan.address,
        port = plan.port,
        tree = plan.tree().display(),
    )
}

/// A report that arrived and joined `--reports DIR`, or a file that did not.
#[derive(Debug, Clone, PartialEq)]
pub enum Arrival {
    Report(fleet::Row),
    Rejected { name: String, why: String },
}

/// Moves every file nginx finished writing into `incoming` on: a valid
/// report (read as `defib reports` reads one) is written into `reports`
/// under its own name (temp file, then rename) and removed from
/// `incoming`; anything else goes to `rejected` with the reason returned.
/// nginx renames a PUT body into place when it is complete, so a file
/// seen here is whole.
pub fn ingest(incoming: &Path, reports: &Path, rejected: &Path) -> Result<Vec<Arrival>> {
    let mut names: Vec<std::ffi::OsString> = std::fs::read_dir(incoming)
        .with_context(|| format!("reading {}", incoming.display()))?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    names.sort();
    let mut out = Vec::new();
    for n in names {
        let name = n.to_string_lossy().into_owned();
        let src = incoming.join(&n);
        let checked = if name.ends_with(".json") && !name.starts_with('.') {
            fleet::read_report(&src)
        } else {
            Err("not a .json report name".into())
        };
        match checked {
            Ok((bytes, v)) => {
                let dest = reports.join(&n);
                let tmp = reports.join(format!(".{name}.partial"));
                std::fs::write(&tmp, &bytes)
                    .with_context(|| format!("writing {}", tmp.display()))?;
                std::fs::rename(&tmp, &dest)
                    .with_context(|| format!("writing {}", dest.display()))?;
                std::fs::remove_file(&src)
                    .with_context(|| format!("removing {}", src.display()))?;
                out.push(Arrival::Report(fleet::row(name, &v)));
            }
            Err(why) => {
                std::fs::create_dir_all(rejected)
                    .with_context(|| format!("creating {}", rejected.display()))?;
                let _ = std::fs::rename(&src, rejected.join(&n));
                out.push(Arrival::Rejected { name, why });
            }
        }
    }
    Ok(out)
}

/// One ledger line: time, verdict, machine, serial, UUID, why; every
/// field from the report escaped for the terminal.
pub fn ledger_line(time: &str, r: &fleet::Row) -> String {
    let t = |s: &str| {
        let s = fleet::term(s);
        if s.is_empty() {
            "-".to_string()
        } else {
            s
        }
    };
    format!(
        "{time}  {:<16} {:<16} serial={} uuid={} changes={} why={}",
        t(&r.verdict),
        t(&r.computer),
        t(&r.serial),
        t(&r.uuid),
        r.changes,
        t(&r.reason)
    )
}

/// The UTC time of day, for ledger lines.
fn now_hms() -> String {
    let s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

/// A DHCP lease line from dnsmasq's log, as `(address, mac)`:
/// `dnsmasq-dhcp: DHCPACK(br0) 10.77.0.123 52:54:00:77:00:01`.
pub fn lease_of(line: &str) -> Option<(String, String)> {
    let rest = &line[line.find("DHCPACK(")?..];
    let mut w = rest.split_whitespace().skip(1);
    let ip = w.next()?;
    let mac = w.next()?;
    ip.parse::<Ipv4Addr>().ok()?;
    Some((ip.to_string(), fleet::term(mac)))
}

/// A running child and the thread copying its stderr into a log file.
struct Server {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Server {
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }
}

fn spawn(
    name: &'static str,
    mut cmd: Command,
    log: PathBuf,
    lines: mpsc::Sender<(&'static str, String)>,
) -> Result<Server> {
    use std::os::unix::process::CommandExt;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a terminal's Ctrl-C reaches defib, which
        // stops the children in order.
        .process_group(0);
    // SAFETY: sigemptyset, sigaddset, sigprocmask and prctl are
    // async-signal-safe. The child must not inherit defib's blocked
    // SIGINT/SIGTERM (std leaves the mask as it is, and dnsmasq does not
    // reset it), and if defib dies without stopping its children
    // (SIGKILL), the kernel sends them SIGTERM.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGINT);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGHUP);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = cmd.spawn().with_context(|| format!("starting {name}"))?;
    let mut file =
        std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let out = child.stdout.take();
    let err = child.stderr.take();
    let lines2 = lines.clone();
    let mut file2 = file.try_clone()?;
    if let Some(o) = out {
        std::thread::spawn(move || {
            for l in BufReader::new(o).lines().map_while(|l| l.ok()) {
                let _ = writeln!(file2, "{l}");
                let _ = lines2.send((name, l));
            }
        });
    }
    if let Some(e) = err {
        std::thread::spawn(move || {
            for l in BufReader::new(e).lines().map_while(|l| l.ok()) {
                let _ = writeln!(file, "{l}");
                let _ = lines.send((name, l));
            }
        });
    }
    Ok(Server { name, child, log })
}

fn stop(s: &mut Server) {
    if let Ok(None) = s.child.try_wait() {
        // SAFETY: a signal to our own child's pid, which we have not
        // reaped yet (try_wait said it is running), so the pid is its.
        unsafe {
            libc::kill(s.child.id() as i32, libc::SIGTERM);
        }
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = s.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        println!(
            "defib serve: {} did not stop within 5 s of SIGTERM; killed",
            s.name
        );
        let _ = s.child.kill();
    }
    let _ = s.child.wait();
}

/// SIGINT and SIGTERM, blocked in this thread (and the threads it starts)
/// so [`next_signal`] can take them; children get an empty mask from std.
fn block_stop_signals() -> libc::sigset_t {
    // SAFETY: plain signal-set calls on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        // The terminal closing (an SSH session dropped) stops the servers
        // the same orderly way, with the last reports taken in.
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// A pending SIGINT, SIGTERM or SIGHUP, waiting at most `wait`.
fn next_signal(set: &libc::sigset_t, wait: Duration) -> Option<i32> {
    let ts = libc::timespec {
        tv_sec: wait.as_secs() as libc::time_t,
        tv_nsec: wait.subsec_nanos() as libc::c_long,
    };
    // SAFETY: the set is initialised; info may be null.
    let r = unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) };
    (r > 0).then_some(r)
}

fn uid_gid_of(user: &str) -> Option<(u32, u32)> {
    let c = std::ffi::CString::new(user).ok()?;
    // SAFETY: getpwnam returns null or a pointer to a static record we
    // read at once.
    unsafe {
        let p = libc::getpwnam(c.as_ptr());
        (!p.is_null()).then(|| ((*p).pw_uid, (*p).pw_gid))
    }
}

fn group_exists(g: &str) -> bool {
    let Ok(c) = std::ffi::CString::new(g) else {
        return false;
    };
    // SAFETY: as in uid_gid_of.
    unsafe { !libc::getgrnam(c.as_ptr()).is_null() }
}

/// The checks that need no child: root, programs, interface and address,
/// range, ports. Returns the plan (run folder still to be filled).
pub fn prepare(opts: &ServeOptions, run: &Path) -> Result<(Plan, Programs)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "defib serve needs root: dnsmasq binds the DHCP (67) and TFTP (69) ports; \
             run it with sudo"
        );
    }
    let programs = check_programs()?;
    let (address, prefix) = pick_address(&opts.interface, opts.address)?;
    let worker_user = uid_gid_of("nobody").map(|_| {
        let g = if group_exists("nogroup") {
            "nogroup"
        } else {
            "nobody"
        };
        ("nobody".to_string(), g.to_string())
    });
    if opts.tls_port == opts.port {
        bail!(
            "--tls-port {} is also --port: HTTP (the tree) and HTTPS (reports, keys) need \
             two ports",
            opts.port
        );
    }
    let keys = opts.keys.as_deref().map(check_keys).transpose()?;
    let mut plan = Plan {
        interface: opts.interface.clone(),
        address,
        prefix,
        dhcp: opts.dhcp.clone(),
        port: opts.port,
        run: std::path::absolute(run).context("the run folder")?,
        worker_user,
        tls: None,
        keys,
    };
    check_range(&plan)?;
    check_ports(&plan, Some(opts.tls_port))?;
    if let Dhcp::Range(..) = plan.dhcp {
        check_no_other_dhcp(&plan.interface, Duration::from_secs(3))?;
    }
    // Only now, with every check passed: a refused start makes nothing.
    plan.tls = Some(TlsPlan {
        port: opts.tls_port,
        cert: crate::servetls::load_or_create(&opts.tls_dir, address)?,
    });
    Ok((plan, programs))
}

/// A key file served alone, or one in a `--serve-keys` folder, is at most this.
pub const MAX_KEY_FILE: u64 = 1 << 20;

/// Checks `--serve-keys`: a regular file, or a folder with at least one regular
/// file (links and sub-folders are not served), each at most
/// [`MAX_KEY_FILE`]. Contents are the rescue's to read (CSV, the .TXT
/// Windows saves, .BEK, files named after protector GUIDs).
pub fn check_keys(path: &Path) -> Result<KeysServed> {
    let meta = std::fs::symlink_metadata(path)
        .with_context(|| format!("--serve-keys {}", path.display()))?;
    let size_ok = |p: &Path, m: &std::fs::Metadata| -> Result<()> {
        if m.len() > MAX_KEY_FILE {
            bail!(
                "--serve-keys: {} is {} bytes, more than a key file holds ({MAX_KEY_FILE})",
                p.display(),
                m.len()
            );
        }
        Ok(())
    };
    if meta.is_file() {
        size_ok(path, &meta)?;
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_graphic() && c != '%') {
            bail!(
                "--serve-keys {}: the file name goes into a URL; use one of letters, digits and \
                 punctuation only",
                path.display()
            );
        }
        return Ok(KeysServed::File(path.to_path_buf()));
    }
    if !meta.is_dir() {
        bail!(
            "--serve-keys {}: not a file or a folder (a link is not followed)",
            path.display()
        );
    }
    let mut n = 0;
    for e in std::fs::read_dir(path).with_context(|| format!("--serve-keys {}", path.display()))? {
        let e = e?;
        let m = e.metadata()?;
        if m.is_file() {
            size_ok(&e.path(), &m)?;
            n += 1;
        }
    }
    if n == 0 {
        bail!(
            "--serve-keys {}: no key files in it (exports from AD or Intune, .BEK files, or \
             files named after protector GUIDs)",
            path.display()
        );
    }
    Ok(KeysServed::Folder(path.to_path_buf()))
}

/// Copies the served keys into the run folder, readable by nginx's worker
/// only (the originals stay as they are; the copies go with the run
/// folder).
fn copy_keys(plan: &Plan, owner: Option<(u32, u32)>) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let Some(k) = &plan.keys else { return Ok(()) };
    let dir = plan.keys_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let files: Vec<PathBuf> = match k {
        KeysServed::File(f) => vec![f.clone()],
        KeysServed::Folder(d) => {
            let mut v = Vec::new();
            for e in
                std::fs::read_dir(d).with_context(|| format!("--serve-keys {}", d.display()))?
            {
                let e = e?;
                if e.file_type()?.is_file() {
                    v.push(e.path());
                }
            }
            v
        }
    };
    for f in &files {
        let to = dir.join(f.file_name().context("a key file without a name")?);
        std::fs::copy(f, &to)
            .with_context(|| format!("copying {} to {}", f.display(), to.display()))?;
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o400))?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&to, Some(uid), Some(gid))?;
        }
    }
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o500))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// Writes the configs, makes the folders nginx and dnsmasq use readable
/// (or, for `incoming/`, writable) by their unprivileged users.
pub fn write_run_folder(plan: &Plan) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m))
            .with_context(|| format!("setting the mode of {}", p.display()))
    };
    std::fs::create_dir_all(plan.run.join("nginx"))
        .with_context(|| format!("creating {}", plan.run.display()))?;
    mode(&plan.run, 0o755)?;
    std::fs::create_dir_all(plan.incoming())
        .with_context(|| format!("creating {}", plan.incoming().display()))?;
    mode(&plan.incoming(), 0o700)?;
    let owner = plan.worker_user.as_ref().and_then(|(u, _)| uid_gid_of(u));
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(plan.incoming(), Some(uid), Some(gid))
            .with_context(|| format!("giving {} to nginx's worker", plan.incoming().display()))?;
    }
    copy_keys(plan, owner)?;
    std::fs::write(plan.run.join("dnsmasq.conf"), dnsmasq_conf(plan))
        .context("writing dnsmasq.conf")?;
    std::fs::write(plan.run.join("nginx.conf"), nginx_conf(plan)).context("writing nginx.conf")?;
    Ok(())
}

/// Serves until SIGINT/SIGTERM or a child dies; the tree must already be
/// in `plan.tree()`. Ledger lines go to `out`.
pub fn run(plan: &Plan, programs: &Programs, reports: &Path) -> Result<()> {
    use std::io::IsTerminal;
    std::fs::create_dir_all(reports)
        .with_context(|| format!("creating the reports folder {}", reports.display()))?;
    write_run_folder(plan)?;
    let signals = block_stop_signals();
    let (tx, rx) = mpsc::channel();
    let mut nginx_cmd = Command::new(&programs.nginx);
    nginx_cmd
        .arg("-p")
        .arg(&plan.run)
        .arg("-c")
        .arg(plan.run.join("nginx.conf"))
        .args(["-e", "stderr"]);
    let mut dnsmasq_cmd = Command::new(&programs.dnsmasq);
    dnsmasq_cmd
        .arg(format!(
            "--conf-file={}",
            plan.run.join("dnsmasq.conf").display()
        ))
        .arg("--keep-in-foreground");
    let mut servers = vec![spawn(
        "nginx",
        nginx_cmd,
        plan.run.join("nginx.log"),
        tx.clone(),
    )?];
    let started = spawn(
        "dnsmasq",
        dnsmasq_cmd,
        plan.run.join("dnsmasq.log"),
        tx.clone(),
    );
    match started {
        Ok(s) => servers.push(s),
        Err(e) => {
            servers.iter_mut().for_each(stop);
            return Err(e);
        }
    }
    let out = Ledger::new(std::io::stdout().is_terminal());
    let r = serve_loop(plan, reports, &mut servers, &rx, &signals, &out);
    for s in servers.iter_mut().rev() {
        stop(s);
    }
    // Reports that landed while the servers stopped.
    let last = ingest(&plan.incoming(), reports, &plan.rejected());
    if let Ok(a) = &last {
        print_arrivals(a, &out);
    }
    out.finish();
    r?;
    last?;
    println!(
        "defib serve: stopped; the reports are in {}: `defib reports {}`",
        reports.display(),
        reports.display()
    );
    Ok(())
}

/// The ledger's output: one line per event, the same on a terminal and
/// in a pipe; on a terminal, a status line under them too (indicatif),
/// with the running counts and the time since the start.
struct Ledger {
    bar: Option<indicatif::ProgressBar>,
}

impl Ledger {
    fn new(tty: bool) -> Ledger {
        let bar = tty.then(|| {
            let b = indicatif::ProgressBar::with_draw_target(
                None,
                indicatif::ProgressDrawTarget::stdout(),
            );
            b.set_style(
                indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            b.enable_steady_tick(Duration::from_millis(250));
            b
        });
        Ledger { bar }
    }

    fn line(&self, l: String) {
        match &self.bar {
            Some(b) => b.println(l),
            // A closed terminal or pipe must not stop the serving.
            None => {
                let mut o = std::io::stdout().lock();
                let _ = writeln!(o, "{l}").and_then(|_| o.flush());
            }
        }
    }

    fn status(&self, s: String) {
        if let Some(b) = &self.bar {
            b.set_message(s);
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// The status line: leases, reports by verdict, what it is doing.
pub fn status_line(leases: usize, reported: usize, counts: &[(String, usize)]) -> String {
    let c: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    format!(
        "{leases} lease(s), {reported} report(s){}{}; waiting for machines (Ctrl-C stops)",
        if c.is_empty() { "" } else { ": " },
        c.join(", ")
    )
}

fn print_arrivals(arrivals: &[Arrival], out: &Ledger) {
    let t = now_hms();
    for a in arrivals {
        match a {
            Arrival::Report(r) => out.line(ledger_line(&t, r)),
            Arrival::Rejected { name, why } => out.line(format!(
                "{t}  rejected         {}: {} (kept out of the reports folder)",
                fleet::term(name),
                fleet::term(why)
            )),
        }
    }
}

fn serve_loop(
    plan: &Plan,
    reports: &Path,
    servers: &mut [Server],
    rx: &mpsc::Receiver<(&'static str, String)>,
    signals: &libc::sigset_t,
    out: &Ledger,
) -> Result<()> {
    let start = Instant::now();
    let mut ready: BTreeSet<&str> = BTreeSet::new();
    let mut leased: BTreeSet<(String, String)> = BTreeSet::new();
    let (mut reported, mut counts) = (0usize, std::collections::BTreeMap::<String, usize>::new());
    loop {
        if let Some(sig) = next_signal(signals, Duration::from_millis(300)) {
            out.line(format!(
                "defib serve: {} received; stopping nginx and dnsmasq",
                match sig {
                    libc::SIGINT => "Ctrl-C",
                    libc::SIGHUP => "SIGHUP (the terminal closed)",
                    _ => "SIGTERM",
                }
            ));
            return Ok(());
        }
        for s in servers.iter_mut() {
            if let Ok(Some(st)) = s.child.try_wait() {
                // Give its reader a moment to write the last lines.
                std::thread::sleep(Duration::from_millis(200));
                bail!(
                    "{} stopped ({st}); its last lines ({}):\n{}",
                    s.name,
                    s.log.display(),
                    s.tail()
                );
            }
        }
        for (name, line) in rx.try_iter() {
            if name == "dnsmasq" && line.contains("TFTP root is") {
                ready.insert("dnsmasq");
            }
            if name == "dnsmasq" {
                if let Some(l) = lease_of(&line) {
                    if leased.insert(l.clone()) {
                        out.line(format!("{}  lease            {} {}", now_hms(), l.0, l.1));
                    }
                }
            }
        }
        if !ready.contains("nginx")
            && std::net::TcpStream::connect_timeout(
                &(plan.address, plan.port).into(),
                Duration::from_millis(200),
            )
            .is_ok()
        {
            ready.insert("nginx");
        }
        if ready.len() == 2 && !ready.contains("announced") {
            ready.insert("announced");
            out.line(format!(
                "defib serve: ready after {:.1} s: waiting for machines (Ctrl-C stops)",
                start.elapsed().as_secs_f64()
            ));
        }
        if !ready.contains("announced") && start.elapsed() > Duration::from_secs(30) {
            bail!(
                "the servers did not come up within 30 s (dnsmasq {}, nginx {}); see {}",
                if ready.contains("dnsmasq") {
                    "ready"
                } else {
                    "not ready"
                },
                if ready.contains("nginx") {
                    "ready"
                } else {
                    "not listening"
                },
                plan.run.display()
            );
        }
        let arrivals = ingest(&plan.incoming(), reports, &plan.rejected())?;
        for a in &arrivals {
            if let Arrival::Report(r) = a {
                reported += 1;
                *counts.entry(r.verdict.clone()).or_default() += 1;
            }
        }
        if !arrivals.is_empty() {
            print_arrivals(&arrivals, out);
        }
        if arrivals.iter().any(|a| matches!(a, Arrival::Report(_))) {
            let c: Vec<String> = counts.iter().map(|(k, v)| format!("{v} {k}")).collect();
            out.line(format!(
                "{}  total            {reported} report(s): {}",
                now_hms(),
                c.join(", ")
            ));
        }
        if ready.contains("announced") {
            let c: Vec<(String, usize)> = counts.iter().map(|(k, v)| (k.clone(), *v)).collect();
            out.status(status_line(leased.len(), reported, &c));
        }
    }
}

/// The banner: where, how, and that HTTP is plain.
pub fn banner(plan: &Plan, build_id: &str, reports: &Path) -> String {
    let dhcp = match &plan.dhcp {
        Dhcp::Range(a, b) => format!("DHCP server for {a}-{b}"),
        Dhcp::Proxy => format!(
            "proxy-DHCP beside the site's DHCP server on {}/{}",
            plan.network(),
            plan.prefix
        ),
    };
    let https = match &plan.tls {
        Some(t) => format!(
            "\x20 https:   certificate {} ({}{}), pinned on every kernel command line\n",
            t.cert.pin(),
            t.cert.cert.display(),
            if t.cert.created { ", new" } else { "" }
        ),
        None => "\x20 warning: plain HTTP: reports (serial numbers, computer names) cross the \
                 network unencrypted\n"
            .to_string(),
    };
    let keys = match (&plan.keys, plan.keys_url()) {
        (Some(KeysServed::File(f)), Some(u)) => {
            format!("\x20 keys:    {} at {u}\n", f.display())
        }
        (Some(KeysServed::Folder(d)), Some(u)) => {
            format!("\x20 keys:    the files of {} at {u}\n", d.display())
        }
        _ => String::new(),
    };
    format!(
        "defib serve: build {build_id} on {} {}/{}\n\
         \x20 dnsmasq: {dhcp}; TFTP: BIOS -> undionly.kpxe, UEFI (Secure Boot) -> shimx64.efi\n\
         \x20 nginx:   {}boot-http.ipxe for iPXE; reports PUT to {} (at most {} bytes each)\n\
         {https}{keys}\
         \x20 reports: {}\n\
         \x20 run folder (configs, logs): {}",
        plan.interface,
        plan.address,
        plan.prefix,
        plan.http_base(),
        plan.report_url(),
        fleet::MAX_REPORT,
        reports.display(),
        plan.run.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(dhcp: Dhcp) -> Plan {
        Plan {
            interface: "br0".into(),
            address: "10.77.0.1".parse().unwrap(),
            prefix: 24,
            dhcp,
            port: 8080,
            run: PathBuf::from("/run/defib-serve"),
            worker_user: Some(("nobody".into(), "nogroup".into())),
            tls: None,
            keys: None,
        }
    }

    fn tls_plan(keys: Option<KeysServed>) -> Plan {
        let mut p = plan(Dhcp::Proxy);
        p.tls = Some(TlsPlan {
            port: 8443,
            cert: crate::servetls::ServerCert {
                cert: PathBuf::from("/var/lib/defib/serve-tls/cert.pem"),
                key: PathBuf::from("/var/lib/defib/serve-tls/key.pem"),
                sha256: [0xab; 32],
                created: false,
            },
        });
        p.keys = keys;
        p
    }

    #[test]
    fn with_tls_reports_and_keys_go_over_https_only_and_the_pin_is_on_the_command_line() {
        let p = tls_plan(Some(KeysServed::File(PathBuf::from(
            "/x/BitLockerKeys.csv",
        ))));
        let n = nginx_conf(&p);
        let (plain, tls) = n.split_once("ssl;").unwrap();
        assert!(plain.contains("listen 10.77.0.1:8080;"));
        assert!(plain.contains("location /defib/"));
        assert!(!plain.contains(REPORTS_PATH) && !plain.contains(KEYS_PATH));
        assert!(tls.contains("location /defib-reports/") && tls.contains("location /defib-keys/"));
        assert!(tls.contains("ssl_certificate /var/lib/defib/serve-tls/cert.pem;"));
        assert!(tls.contains("alias /run/defib-serve/keys/;"));
        assert!(n.contains("listen 10.77.0.1:8443 ssl;"));
        let pin = format!("defib.tls=sha256:{}", "ab".repeat(32));
        assert_eq!(
            p.kernel_words(),
            vec![
                "defib.report=https://10.77.0.1:8443/defib-reports/".to_string(),
                pin,
                "defib.keys=https://10.77.0.1:8443/defib-keys/BitLockerKeys.csv".to_string(),
            ]
        );
        // What the rescue will make of them.
        let a = defib_rescue::bootargs::BootArgs::parse(&p.kernel_words().join(" "));
        assert!(a.warnings.is_empty(), "{:?}", a.warnings);
        assert_eq!(a.tls_pin, Some([0xab; 32]));
        assert!(a.keys_url.unwrap().tls);
        let folder = tls_plan(Some(KeysServed::Folder(PathBuf::from("/x/keys"))));
        assert_eq!(
            folder.keys_url().unwrap(),
            "https://10.77.0.1:8443/defib-keys/"
        );
        assert!(tls_plan(None).keys_url().is_none());
        assert!(!nginx_conf(&tls_plan(None)).contains(KEYS_PATH));
        let b = banner(&p, "b1", Path::new("/r"));
        assert!(
            b.contains(&format!("certificate sha256:{}", "ab".repeat(32))),
            "{b}"
        );
        assert!(!b.contains("plain HTTP"), "{b}");
        assert!(banner(&plan(Dhcp::Proxy), "b1", Path::new("/r")).contains("plain HTTP"));
    }

    #[test]
    fn the_status_line_counts_leases_and_verdicts() {
        assert_eq!(
            status_line(0, 0, &[]),
            "0 lease(s), 0 report(s); waiting for machines (Ctrl-C stops)"
        );
        assert_eq!(
            status_line(
                3,
                2,
                &[("needs-attention".into(), 1), ("repaired".into(), 1)]
            ),
            "3 lease(s), 2 report(s): 1 needs-attention, 1 repaired; waiting for machines \
             (Ctrl-C stops)"
        );
    }

    #[test]
    fn keys_to_serve_are_checked() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("BitLockerKeys.csv");
        std::fs::write(&f, "x").unwrap();
        assert_eq!(check_keys(&f).unwrap(), KeysServed::File(f.clone()));
        let empty = t.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let e = check_keys(&empty).unwrap_err();
        assert!(e.to_string().contains("no key files"), "{e:#}");
        std::fs::write(empty.join("big.csv"), vec![b'a'; MAX_KEY_FILE as usize + 1]).unwrap();
        let e = check_keys(&empty).unwrap_err();
        assert!(
            e.to_string().contains("more than a key file holds"),
            "{e:#}"
        );
        let e = check_keys(&t.path().join("missing")).unwrap_err();
        assert!(format!("{e:#}").contains("missing"), "{e:#}");
        let l = t.path().join("link");
        std::os::unix::fs::symlink(&f, &l).unwrap();
        let e = check_keys(&l).unwrap_err();
        assert!(e.to_string().contains("a link is not followed"), "{e:#}");
    }

    #[test]
    fn addresses_and_ranges_are_checked() {
        assert_eq!(
            parse_cidr("10.77.0.1/24").unwrap(),
            ("10.77.0.1".parse().unwrap(), 24)
        );
        assert!(parse_cidr("10.77.0.1").is_err());
        assert!(parse_cidr("10.77.0.1/33").is_err());
        let (a, b) = parse_range("10.77.0.100,10.77.0.150").unwrap();
        assert!(parse_range("10.77.0.150,10.77.0.100").is_err());
        let p = plan(Dhcp::Range(a, b));
        check_range(&p).unwrap();
        assert_eq!(p.netmask().to_string(), "255.255.255.0");
        assert_eq!(p.network().to_string(), "10.77.0.0");
        let e = check_range(&plan(Dhcp::Range(
            "10.78.0.100".parse().unwrap(),
            "10.78.0.150".parse().unwrap(),
        )))
        .unwrap_err();
        assert!(format!("{e}").contains("is not inside 10.77.0.0/24"), "{e}");
        let e = check_range(&plan(Dhcp::Range(
            "10.77.0.1".parse().unwrap(),
            "10.77.0.9".parse().unwrap(),
        )))
        .unwrap_err();
        assert!(format!("{e}").contains("own address 10.77.0.1"), "{e}");
        assert_eq!(p.report_url(), "http://10.77.0.1:8080/defib-reports/");
        let mut p80 = p.clone();
        p80.port = 80;
        assert_eq!(p80.http_base(), "http://10.77.0.1/defib/");
    }

    #[test]
    fn a_missing_interface_names_the_ones_there() {
        let e = interface_addresses("no-such-if0").unwrap_err();
        let e = format!("{e}");
        assert!(e.contains("no network interface \"no-such-if0\""), "{e}");
        assert!(e.contains("lo"), "{e}");
        let lo = interface_addresses("lo").unwrap();
        assert!(lo.contains(&("127.0.0.1".parse().unwrap(), 8)), "{lo:?}");
        let e = pick_address("lo", Some(("10.9.9.9".parse().unwrap(), 24))).unwrap_err();
        assert!(format!("{e}").contains("sudo ip addr add 10.9.9.9/24 dev lo"));
    }

    #[test]
    fn a_port_in_use_is_named() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut p = plan(Dhcp::Proxy);
        p.address = "127.0.0.1".parse().unwrap();
        p.port = l.local_addr().unwrap().port();
        let e = format!("{}", check_ports(&p, None).unwrap_err());
        assert!(
            e.contains(&format!(
                "TCP port {} on 127.0.0.1 (HTTP, --port) is in use",
                p.port
            )),
            "{e}"
        );
    }

    #[test]
    fn a_missing_program_says_what_to_install() {
        let e = find_program("no-such-dnsmasq", DNSMASQ_ADVICE).unwrap_err();
        assert!(format!("{e}").contains("sudo apt-get install dnsmasq-base"));
    }

    #[test]
    fn dnsmasq_config_for_a_range_and_for_proxy() {
        let d = dnsmasq_conf(&plan(Dhcp::Range(
            "10.77.0.100".parse().unwrap(),
            "10.77.0.150".parse().unwrap(),
        )));
        for l in [
            "port=0",
            "interface=br0",
            "bind-interfaces",
            "tftp-root=/run/defib-serve/tree",
            "dhcp-leasefile=/run/defib-serve/dnsmasq.leases",
            "dhcp-range=10.77.0.100,10.77.0.150,255.255.255.0,1h",
            "dhcp-boot=tag:ipxe,boot-http.ipxe",
            "dhcp-boot=tag:!ipxe,tag:efi64,shimx64.efi",
            "dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe",
        ] {
            assert!(d.lines().any(|x| x == l), "{l} missing:\n{d}");
        }
        let p = dnsmasq_conf(&plan(Dhcp::Proxy));
        assert!(
            p.contains("dhcp-range=10.77.0.0,proxy,255.255.255.0\n"),
            "{p}"
        );
        assert!(p.contains("X86-64_EFI,\"defib rescue (UEFI)\",shimx64.efi\n"));
        assert!(!p.contains("dhcp-boot="));
    }

    #[test]
    fn nginx_config_bounds_puts_and_stays_in_the_run_folder() {
        let n = nginx_conf(&plan(Dhcp::Proxy));
        assert!(n.contains("listen 10.77.0.1:8080;"));
        assert!(n.contains(&format!("client_max_body_size {};", fleet::MAX_REPORT)));
        assert!(n.contains("alias /run/defib-serve/incoming/;"));
        assert!(n.contains("limit_except PUT { deny all; }"));
        assert!(n.contains("user nobody nogroup;"));
        // A fleet of a thousand must not depend on the shell's open-file limit.
        assert!(n.contains("worker_rlimit_nofile 8192;") && n.contains("worker_connections 4096;"));
        // Every absolute path nginx is given lies in the run folder.
        let t = nginx_conf(&tls_plan(Some(KeysServed::Folder("/k".into()))));
        for w in n
            .split_whitespace()
            .chain(t.split_whitespace())
            .filter(|w| w.starts_with('/'))
        {
            let w = w.trim_end_matches(';');
            if w == "/" || w.starts_with("/defib") {
                continue; // URL paths
            }
            if w.starts_with("/var/lib/defib/serve-tls/") {
                continue; // the kept certificate (read by the root master)
            }
            assert!(w.starts_with("/run/defib-serve/"), "{w}");
        }
    }

    #[test]
    fn dhcp_probe_packets() {
        let d = dhcp_discover(7, [2, 0, 0, 0, 0, 1]);
        assert_eq!((d[0], d[10], &d[4..8]), (1, 0x80, &7u32.to_be_bytes()[..]));
        assert_eq!(&d[240..243], &[53, 1, 1]);
        // An offer built from the discover: op 2, type 2, server id.
        let mut o = d.clone();
        o[0] = 2;
        o.truncate(240);
        o.extend_from_slice(&[53, 1, 2, 54, 4, 10, 77, 0, 2, 255]);
        assert_eq!(dhcp_offer_server(&o, 7), Some("10.77.0.2".parse().unwrap()));
        assert_eq!(dhcp_offer_server(&o, 8), None, "another xid");
        assert_eq!(dhcp_offer_server(&d, 7), None, "a request, not a reply");
        // Truncated options never read past the end.
        let mut t = o[..240].to_vec();
        t.extend_from_slice(&[53, 1, 2, 54, 4, 10]);
        assert_eq!(dhcp_offer_server(&t, 7), None);
        assert_eq!(dhcp_offer_server(&o[..100], 7), None);
    }

    #[test]
    fn leases_are_read_from_dnsmasq_lines() {
        assert_eq!(
            lease_of("dnsmasq-dhcp[12]: 123 DHCPACK(br0) 10.77.0.123 52:54:00:77:00:01 pc1"),
            Some(("10.77.0.123".into(), "52:54:00:77:00:01".into()))
        );
        assert_eq!(
            lease_of("dnsmasq-dhcp: DHCPDISCOVER(br0) 52:54:00:77:00:01"),
            None
        );
    }

    #[test]
    fn ingest_takes_reports_and_rejects_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let (inc, rep, rej) = (d.path().join("i"), d.path().join("r"), d.path().join("x"));
        std::fs::create_dir_all(&inc).unwrap();
        std::fs::create_dir_all(&rep).unwrap();
        let good = serde_json::json!({
            "schema": defib_rescue::report::SCHEMA,
            "run_id": "20260101T000000Z-abcd",
            "finished": "2026-01-01T00:00:00Z",
            "machine": {"product_serial": "SN1", "product_uuid": "u-1"},
            "windows": [],
            "verdict": "repaired",
        });
        std::fs::write(inc.join("pc1-x.json"), good.to_string()).unwrap();
        std::fs::write(inc.join("evil.json"), b"{\"schema\": 1").unwrap();
        std::fs::write(inc.join("notes.txt"), b"hi").unwrap();
        let a = ingest(&inc, &rep, &rej).unwrap();
        assert_eq!(a.len(), 3, "{a:?}");
        // In name order: evil.json, notes.txt, pc1-x.json.
        let Arrival::Report(r) = &a[2] else {
            panic!("{a:?}")
        };
        assert_eq!(r.verdict, "repaired");
        assert!(matches!(&a[0], Arrival::Rejected { name, .. } if name == "evil.json"));
        assert!(
            matches!(&a[1], Arrival::Rejected { name, why } if name == "notes.txt" && why.contains(".json"))
        );
        let names = |p: &Path| {
            let mut v: Vec<String> = std::fs::read_dir(p)
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(&rep), ["pc1-x.json"]);
        assert_eq!(names(&rej), ["evil.json", "notes.txt"]);
        assert!(names(&inc).is_empty());
        let line = ledger_line("06:00:00", r);
        assert!(line.contains("repaired"), "{line}");
        assert!(ingest(&inc, &rep, &rej).unwrap().is_empty());
    }
}

//! The network of a PXE-booted rescue: bring up the NIC the machine booted
//! from and deliver the report by HTTP PUT (`defib.report=http://IP/path/`).
//!
//! Debian's kernel has no `ip=` autoconfiguration, so the rescue reads the
//! address the boot loader already leased (iPXE passes
//! `ip=${ip}::${gateway}:${netmask}` and `BOOTIF=01-${mac:hexhyp}`), or runs
//! busybox `udhcpc` with this very binary as its script. The logic (parsing,
//! the HTTP request, retries) is plain code tested on the host; the
//! kernel-facing part is a handful of ioctls in [`kernel`].
//!
//! Not a network stack or an HTTP library: one interface, IPv4, one PUT,
//! no TLS, no name resolution (a static glibc binary cannot resolve names).

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The name the rescue binary is started under by udhcpc (a symlink to
/// `/init`); `main` checks `argv[0]` for it.
pub const HOOK_NAME: &str = "defib-udhcpc-hook";
/// Where the symlink lives in the running rescue.
pub const HOOK_PATH: &str = "run/defib/defib-udhcpc-hook";
/// Where the hook records the lease for PID 1.
pub const LEASE_PATH: &str = "run/defib/dhcp.lease";

/// What `ip=` on the kernel command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpArg {
    /// A complete static configuration.
    Static(StaticIp),
    /// No usable address (absent, `dhcp`, or no netmask): ask DHCP.
    Dhcp,
    /// `ip=off` / `ip=none`: the admin wants no network.
    Off,
}

/// An address, its netmask, and an optional default gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticIp {
    pub address: Ipv4Addr,
    pub netmask: Ipv4Addr,
    pub gateway: Option<Ipv4Addr>,
    /// The `<device>` field, if given.
    pub device: Option<String>,
}

/// Parses the value of the kernel's `ip=` parameter
/// (Documentation/admin-guide/nfs/nfsroot.rst):
/// `<client-ip>:<server-ip>:<gw-ip>:<netmask>:<hostname>:<device>:<autoconf>:…`
/// or a lone `dhcp`, `off`, `none`… Empty fields are allowed (iPXE leaves
/// `${gateway}` empty on a network without a router). A client address
/// without a netmask (GRUB knows no netmask) is not enough: DHCP then.
pub fn parse_ip(value: &str) -> Result<IpArg, String> {
    let v = value.trim();
    match v {
        "" | "dhcp" | "on" | "any" | "bootp" | "rarp" | "both" => return Ok(IpArg::Dhcp),
        "off" | "none" => return Ok(IpArg::Off),
        _ => {}
    }
    let f: Vec<&str> = v.split(':').collect();
    let get = |i: usize| f.get(i).map(|s| s.trim()).filter(|s| !s.is_empty());
    let addr = |i: usize, what: &str| -> Result<Option<Ipv4Addr>, String> {
        get(i)
            .map(|s| {
                s.parse::<Ipv4Addr>()
                    .map_err(|_| format!("ip=: {what} {s:?} is not an IPv4 address"))
            })
            .transpose()
    };
    let Some(address) = addr(0, "client address")? else {
        return Ok(IpArg::Dhcp);
    };
    let gateway = addr(2, "gateway")?.filter(|g| !g.is_unspecified());
    let Some(netmask) = addr(3, "netmask")? else {
        return Ok(IpArg::Dhcp);
    };
    if u32::from(netmask).leading_ones() != u32::from(netmask).count_ones() {
        return Err(format!("ip=: netmask {netmask} is not contiguous"));
    }
    Ok(IpArg::Static(StaticIp {
        address,
        netmask,
        gateway,
        device: get(5).map(str::to_string),
    }))
}

/// A MAC address from `BOOTIF=01-52-54-00-12-34-56` (pxelinux/iPXE style,
/// the leading `01` is the ARP hardware type) or a plain
/// `52:54:00:12:34:56` (GRUB's `${net_default_mac}`), lower case with
/// colons as sysfs writes it.
pub fn parse_mac(value: &str) -> Option<String> {
    let groups: Vec<&str> = value.trim().split(['-', ':']).collect();
    let groups = match groups.len() {
        7 if groups[0] == "01" => &groups[1..],
        6 => &groups[..],
        _ => return None,
    };
    if groups
        .iter()
        .all(|g| g.len() == 2 && g.chars().all(|c| c.is_ascii_hexdigit()))
    {
        Some(groups.join(":").to_ascii_lowercase())
    } else {
        None
    }
}

/// Where reports go: `http://IP[:PORT]/folder/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportUrl {
    pub addr: SocketAddr,
    /// The `Host:` header value, as written in the URL.
    pub host: String,
    /// The folder, starting and ending with `/`.
    pub path: String,
}

impl ReportUrl {
    /// Parses `defib.report=`. Only `http://` with an IP literal: the rescue
    /// has no TLS and, as a static glibc binary, cannot resolve host names.
    pub fn parse(url: &str) -> Result<ReportUrl, String> {
        let url = url.trim();
        let Some(rest) = url.strip_prefix("http://") else {
            if url.starts_with("https://") {
                return Err(format!(
                    "{url}: https is not supported (the rescue has no TLS); \
                     use http:// on the deployment network"
                ));
            }
            return Err(format!("{url}: not an http:// URL"));
        };
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if hostport.contains('@') {
            return Err(format!("{url}: user names in the URL are not supported"));
        }
        if path.contains(['?', '#', ' ', '\r', '\n']) {
            return Err(format!(
                "{url}: the path may not carry a query, fragment or spaces"
            ));
        }
        let (host, port) = if let Some(r) = hostport.strip_prefix('[') {
            let (h, tail) = r
                .split_once(']')
                .ok_or_else(|| format!("{url}: unclosed [ in the host"))?;
            (h, tail.strip_prefix(':'))
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        let port: u16 = match port {
            None => 80,
            Some(p) => p
                .parse()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{url}: bad port {p:?}"))?,
        };
        let ip: IpAddr = host.parse().map_err(|_| {
            format!(
                "{url}: the host must be an IP address, not the name {host:?}: \
                 the rescue is a static binary and cannot resolve names"
            )
        })?;
        let mut path = path.to_string();
        if !path.ends_with('/') {
            path.push('/');
        }
        Ok(ReportUrl {
            addr: SocketAddr::new(ip, port),
            host: hostport.to_string(),
            path,
        })
    }

    /// The full URL of a file in the folder.
    pub fn url_of(&self, name: &str) -> String {
        format!("http://{}{}{}", self.host, self.path, name)
    }
}

/// The bytes of one `PUT` request.
pub fn put_request(url: &ReportUrl, name: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "PUT {}{} HTTP/1.1\r\n\
         Host: {}\r\n\
         User-Agent: defib-rescue/{}\r\n\
         Content-Type: application/json\r\n\
         Content-Length: {}\r\n\
         Connection: close\r\n\r\n",
        url.path,
        name,
        url.host,
        crate::VERSION,
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// The status code of an HTTP/1.x response's status line.
pub fn status_code(head: &[u8]) -> Option<u16> {
    let line = head.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end();
    let mut words = line.split(' ');
    let proto = words.next()?;
    if !proto.starts_with("HTTP/1.") {
        return None;
    }
    words
        .next()?
        .parse()
        .ok()
        .filter(|c| (100..600).contains(c))
}

/// Bounds on delivery.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub tries: u32,
    /// Wait before the second try; doubled after each failure.
    pub first_backoff: Duration,
    /// Nothing starts after this much time has passed.
    pub overall: Duration,
    pub connect_timeout: Duration,
    pub io_timeout: Duration,
}

/// What the rescue uses: 5 tries, 1-2-4-8 s apart, within 30 s.
pub const RETRY: Retry = Retry {
    tries: 5,
    first_backoff: Duration::from_secs(1),
    overall: Duration::from_secs(30),
    connect_timeout: Duration::from_secs(5),
    io_timeout: Duration::from_secs(10),
};

/// One PUT; `Ok(status)` for a 2xx answer.
pub fn put_once(
    url: &ReportUrl,
    name: &str,
    body: &[u8],
    connect_timeout: Duration,
    io_timeout: Duration,
) -> Result<u16, String> {
    let mut s = TcpStream::connect_timeout(&url.addr, connect_timeout)
        .map_err(|e| format!("connecting to {}: {e}", url.addr))?;
    let io = Some(io_timeout.max(Duration::from_millis(1)));
    s.set_read_timeout(io).map_err(|e| e.to_string())?;
    s.set_write_timeout(io).map_err(|e| e.to_string())?;
    s.write_all(&put_request(url, name, body))
        .and_then(|_| s.flush())
        .map_err(|e| format!("sending to {}: {e}", url.addr))?;
    // Read up to the end of the status line (the server closes after the
    // answer; we need no more than its first line).
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.contains(&b'\n') && head.len() < 8192 {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => return Err(format!("reading the answer from {}: {e}", url.addr)),
        }
    }
    match status_code(&head) {
        Some(c) if (200..300).contains(&c) => Ok(c),
        Some(_) => {
            let line = head.split(|b| *b == b'\n').next().unwrap_or(&[]);
            let line: String = String::from_utf8_lossy(line)
                .trim_end()
                .chars()
                .take(80)
                .collect();
            Err(format!("{} answered {line:?}", url.addr))
        }
        None => Err(format!("no HTTP answer from {}", url.addr)),
    }
}

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub delivered: bool,
    pub attempts: u32,
    /// The last error when not delivered.
    pub error: Option<String>,
}

/// PUTs with bounded retries. `sleep` is passed in so tests need not wait.
pub fn deliver(
    url: &ReportUrl,
    name: &str,
    body: &[u8],
    r: Retry,
    sleep: &mut dyn FnMut(Duration),
) -> Delivery {
    let start = Instant::now();
    let mut backoff = r.first_backoff;
    let mut last = String::from("not tried");
    for attempt in 1..=r.tries.max(1) {
        let left = r.overall.saturating_sub(start.elapsed());
        if left.is_zero() {
            break;
        }
        match put_once(
            url,
            name,
            body,
            r.connect_timeout.min(left),
            r.io_timeout.min(left),
        ) {
            Ok(_) => {
                return Delivery {
                    delivered: true,
                    attempts: attempt,
                    error: None,
                }
            }
            Err(e) => last = e,
        }
        if attempt == r.tries {
            return Delivery {
                delivered: false,
                attempts: attempt,
                error: Some(format!("{last} (after {attempt} tries)")),
            };
        }
        let left = r.overall.saturating_sub(start.elapsed());
        if backoff >= left {
            return Delivery {
                delivered: false,
                attempts: attempt,
                error: Some(format!("{last} (gave up after {attempt} tries)")),
            };
        }
        sleep(backoff);
        backoff *= 2;
    }
    Delivery {
        delivered: false,
        attempts: 0,
        error: Some(format!("{last} (out of time)")),
    }
}

/// A DHCP lease as udhcpc hands it to its script in the environment
/// (`ip`, `subnet`, `router`, `interface`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub interface: String,
    pub config: StaticIp,
}

impl Lease {
    /// From udhcpc's variables; `router` may list several, the first wins.
    pub fn from_env(get: &dyn Fn(&str) -> Option<String>) -> Result<Lease, String> {
        let interface = get("interface").ok_or("udhcpc gave no interface")?;
        let ip = get("ip").ok_or("udhcpc gave no ip")?;
        let address = ip
            .parse()
            .map_err(|_| format!("udhcpc ip {ip:?} is not an address"))?;
        let netmask = match get("subnet") {
            Some(s) => s
                .parse()
                .map_err(|_| format!("udhcpc subnet {s:?} is not a netmask"))?,
            None => Ipv4Addr::new(255, 255, 255, 0),
        };
        let gateway =
            get("router").and_then(|r| r.split_whitespace().next().and_then(|g| g.parse().ok()));
        Ok(Lease {
            interface: interface.clone(),
            config: StaticIp {
                address,
                netmask,
                gateway,
                device: Some(interface),
            },
        })
    }

    /// `key=value` lines, read back by [`Lease::parse`].
    pub fn to_text(&self) -> String {
        let c = &self.config;
        format!(
            "interface={}\nip={}\nsubnet={}\nrouter={}\n",
            self.interface,
            c.address,
            c.netmask,
            c.gateway.map(|g| g.to_string()).unwrap_or_default()
        )
    }

    pub fn parse(text: &str) -> Result<Lease, String> {
        let map: std::collections::BTreeMap<&str, &str> = text
            .lines()
            .filter_map(|l| l.split_once('='))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        Lease::from_env(&|k| map.get(k).map(|v| v.to_string()))
    }
}

/// The network section of a report.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// The interface used (`eth0`, `ens3`…), null if none came up.
    pub interface: Option<String>,
    /// Its MAC address.
    pub mac: Option<String>,
    /// `address/prefix`, e.g. `10.0.2.15/24`.
    pub address: Option<String>,
    /// How the address was obtained: `cmdline` (ip= from the boot loader) or `dhcp`.
    pub config: Option<String>,
    /// The URL the report was PUT to.
    pub report_url: Option<String>,
    /// The server answered 2xx. In the copy the server received, true.
    pub delivered: bool,
    /// Why not, when not.
    pub error: Option<String>,
}

/// A prefix length from a netmask.
pub fn prefix_len(mask: Ipv4Addr) -> u32 {
    u32::from(mask).count_ones()
}

/// One interface in `/sys/class/net`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    pub mac: String,
    /// `carrier` read 1 (only meaningful once the interface is up).
    pub carrier: bool,
}

/// Interfaces other than loopback, by name.
pub fn list_ifaces(root: &Path) -> Vec<Iface> {
    let dir = root.join("sys/class/net");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut v: Vec<Iface> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lo")
        .map(|name| {
            let read = |f: &str| {
                std::fs::read_to_string(dir.join(&name).join(f))
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default()
            };
            Iface {
                mac: read("address").to_ascii_lowercase(),
                carrier: read("carrier") == "1",
                name,
            }
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// The interface to use: the one with the boot MAC; without one, the
/// first with carrier, else the first.
pub fn choose_iface<'a>(ifaces: &'a [Iface], mac: Option<&str>) -> Option<&'a Iface> {
    match mac {
        Some(m) => ifaces.iter().find(|i| i.mac == m),
        None => ifaces.iter().find(|i| i.carrier).or_else(|| ifaces.first()),
    }
}

/// Runs as udhcpc's script (`argv[0]` is [`HOOK_NAME`]): on `bound` or
/// `renew`, configures the interface from the environment and records the
/// lease for PID 1. Returns the exit status.
pub fn udhcpc_hook(event: &str, root: &Path) -> i32 {
    let get = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    match event {
        "deconfig" => {
            if let Some(i) = get("interface") {
                let _ = kernel::set_up(&i);
            }
            0
        }
        "bound" | "renew" => {
            let lease = match Lease::from_env(&get) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("defib: dhcp: {e}");
                    return 1;
                }
            };
            if let Err(e) = kernel::configure(&lease.interface, &lease.config) {
                eprintln!("defib: dhcp: configuring {}: {e}", lease.interface);
                return 1;
            }
            match std::fs::write(root.join(LEASE_PATH), lease.to_text()) {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("defib: dhcp: recording the lease: {e}");
                    1
                }
            }
        }
        _ => 0,
    }
}

/// What [`bring_up`] achieved.
#[derive(Debug, Clone)]
pub struct Up {
    pub iface: Iface,
    pub config: StaticIp,
    pub how: &'static str,
}

/// Brings up the boot NIC: waits up to `wait` for it to appear, sets it
/// up, then applies `ip=` or runs DHCP. `say` gets progress lines.
pub fn bring_up(
    root: &Path,
    ip: &IpArg,
    mac: Option<&str>,
    wait: Duration,
    say: &mut dyn FnMut(String),
) -> Result<Up, String> {
    let t = Instant::now();
    // NIC drivers probe asynchronously after their module loads.
    let names = loop {
        let l = list_ifaces(root);
        let ready = match mac {
            Some(m) => l.iter().any(|i| i.mac == m),
            None => !l.is_empty(),
        };
        if ready || t.elapsed() >= wait {
            break l;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    if names.is_empty() {
        return Err("no network interface (is the NIC's driver in the image?)".into());
    }
    for i in &names {
        if mac.is_none() || Some(i.mac.as_str()) == mac {
            kernel::set_up(&i.name).map_err(|e| format!("setting {} up: {e}", i.name))?;
        }
    }
    // Carrier takes a moment after the link goes up.
    let carrier_wait = Duration::from_secs(5);
    let t = Instant::now();
    let ifaces = loop {
        let l = list_ifaces(root);
        let ok = match mac {
            Some(m) => l.iter().any(|i| i.mac == m && i.carrier),
            None => l.iter().any(|i| i.carrier),
        };
        if ok || t.elapsed() >= carrier_wait {
            break l;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let iface = choose_iface(&ifaces, mac)
        .cloned()
        .ok_or_else(|| match mac {
            Some(m) => format!(
                "no interface has the boot MAC {m} (found {})",
                names
                    .iter()
                    .map(|i| format!("{} {}", i.name, i.mac))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => "no network interface".into(),
        })?;
    if !iface.carrier {
        say(format!("network: {} has no carrier (cable?)", iface.name));
    }
    match ip {
        IpArg::Static(c) => {
            kernel::configure(&iface.name, c)
                .map_err(|e| format!("configuring {}: {e}", iface.name))?;
            Ok(Up {
                iface,
                config: c.clone(),
                how: "cmdline",
            })
        }
        IpArg::Off => Err("ip=off on the kernel command line".into()),
        IpArg::Dhcp => {
            say(format!("network: asking DHCP on {}", iface.name));
            let lease = dhcp(root, &iface.name)?;
            Ok(Up {
                iface,
                config: lease.config,
                how: "dhcp",
            })
        }
    }
}

/// Runs busybox udhcpc on `ifname` with the rescue as its script.
fn dhcp(root: &Path, ifname: &str) -> Result<Lease, String> {
    let hook = root.join(HOOK_PATH);
    let lease_file = root.join(LEASE_PATH);
    if let Some(d) = hook.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    let _ = std::fs::remove_file(&hook);
    let _ = std::fs::remove_file(&lease_file);
    let me = std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/init"));
    std::os::unix::fs::symlink(&me, &hook)
        .map_err(|e| format!("linking {}: {e}", hook.display()))?;
    let out = std::process::Command::new(root.join("bin/busybox"))
        .args([
            "udhcpc", "-i", ifname, "-n", "-q", "-t", "5", "-T", "2", "-s",
        ])
        .arg(&hook)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("running busybox udhcpc: {e}"))?;
    let text = std::fs::read_to_string(&lease_file).map_err(|_| {
        format!(
            "no DHCP lease on {ifname} ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        )
    })?;
    Lease::parse(&text)
}

/// The kernel-facing part: classic ioctls on an AF_INET socket, the same
/// calls `ifconfig` and `route` make.
pub mod kernel {
    use super::StaticIp;
    use std::io;
    use std::net::Ipv4Addr;

    #[repr(C)]
    struct IfreqAddr {
        name: [libc::c_char; libc::IFNAMSIZ],
        addr: libc::sockaddr_in,
        _pad: [u8; 8],
    }

    #[repr(C)]
    struct IfreqFlags {
        name: [libc::c_char; libc::IFNAMSIZ],
        flags: libc::c_short,
        _pad: [u8; 22],
    }

    /// `struct rtentry` (include/uapi/linux/route.h).
    #[repr(C)]
    struct RtEntry {
        rt_pad1: libc::c_ulong,
        rt_dst: libc::sockaddr_in,
        rt_gateway: libc::sockaddr_in,
        rt_genmask: libc::sockaddr_in,
        rt_flags: libc::c_ushort,
        rt_pad2: libc::c_short,
        rt_pad3: libc::c_ulong,
        rt_pad4: *mut libc::c_void,
        rt_metric: libc::c_short,
        rt_dev: *mut libc::c_char,
        rt_mtu: libc::c_ulong,
        rt_window: libc::c_ulong,
        rt_irtt: libc::c_ushort,
    }

    const RTF_UP: libc::c_ushort = 0x0001;
    const RTF_GATEWAY: libc::c_ushort = 0x0002;

    fn sin(a: Ipv4Addr) -> libc::sockaddr_in {
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(a.octets()),
            },
            sin_zero: [0; 8],
        }
    }

    fn name(ifname: &str) -> io::Result<[libc::c_char; libc::IFNAMSIZ]> {
        let b = ifname.as_bytes();
        if b.is_empty() || b.len() >= libc::IFNAMSIZ || b.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("bad interface name {ifname:?}"),
            ));
        }
        let mut n = [0 as libc::c_char; libc::IFNAMSIZ];
        for (d, s) in n.iter_mut().zip(b) {
            *d = *s as libc::c_char;
        }
        Ok(n)
    }

    struct Sock(libc::c_int);
    impl Drop for Sock {
        fn drop(&mut self) {
            // SAFETY: closing a descriptor we own.
            unsafe { libc::close(self.0) };
        }
    }

    fn sock() -> io::Result<Sock> {
        // SAFETY: plain socket(2) call.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Sock(fd))
    }

    fn ioctl<T>(s: &Sock, req: libc::c_ulong, arg: &mut T) -> io::Result<()> {
        // SAFETY: `arg` is a repr(C) struct of the layout `req` expects and
        // lives across the call.
        let r = unsafe { libc::ioctl(s.0, req as _, arg as *mut T) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Sets IFF_UP.
    pub fn set_up(ifname: &str) -> io::Result<()> {
        let s = sock()?;
        let mut f = IfreqFlags {
            name: name(ifname)?,
            flags: 0,
            _pad: [0; 22],
        };
        ioctl(&s, libc::SIOCGIFFLAGS, &mut f)?;
        f.flags |= libc::IFF_UP as libc::c_short;
        ioctl(&s, libc::SIOCSIFFLAGS, &mut f)
    }

    /// Address, netmask, up, and the default route.
    pub fn configure(ifname: &str, c: &StaticIp) -> io::Result<()> {
        let s = sock()?;
        let n = name(ifname)?;
        let mut r = IfreqAddr {
            name: n,
            addr: sin(c.address),
            _pad: [0; 8],
        };
        ioctl(&s, libc::SIOCSIFADDR, &mut r)?;
        r.addr = sin(c.netmask);
        ioctl(&s, libc::SIOCSIFNETMASK, &mut r)?;
        set_up(ifname)?;
        if let Some(gw) = c.gateway {
            let mut dev = n;
            let mut rt = RtEntry {
                rt_pad1: 0,
                rt_dst: sin(Ipv4Addr::UNSPECIFIED),
                rt_gateway: sin(gw),
                rt_genmask: sin(Ipv4Addr::UNSPECIFIED),
                rt_flags: RTF_UP | RTF_GATEWAY,
                rt_pad2: 0,
                rt_pad3: 0,
                rt_pad4: std::ptr::null_mut(),
                rt_metric: 0,
                rt_dev: dev.as_mut_ptr(),
                rt_mtu: 0,
                rt_window: 0,
                rt_irtt: 0,
            };
            match ioctl(&s, libc::SIOCADDRT, &mut rt) {
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                other => other?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    #[test]
    fn ip_forms() {
        assert_eq!(
            parse_ip("10.0.2.15::10.0.2.2:255.255.255.0").unwrap(),
            IpArg::Static(StaticIp {
                address: "10.0.2.15".parse().unwrap(),
                netmask: "255.255.255.0".parse().unwrap(),
                gateway: Some("10.0.2.2".parse().unwrap()),
                device: None,
            })
        );
        // No router on an isolated bench; device and autoconf given.
        let IpArg::Static(s) = parse_ip("192.168.7.20:::255.255.0.0:pc7:eth1:off").unwrap() else {
            panic!()
        };
        assert_eq!(s.gateway, None);
        assert_eq!(s.device.as_deref(), Some("eth1"));
        assert_eq!(prefix_len(s.netmask), 16);
        // GRUB knows no netmask: DHCP.
        assert_eq!(parse_ip("10.0.2.15").unwrap(), IpArg::Dhcp);
        assert_eq!(parse_ip("10.0.2.15::").unwrap(), IpArg::Dhcp);
        // iPXE with no lease expands to empty fields.
        assert_eq!(parse_ip(":::").unwrap(), IpArg::Dhcp);
        assert_eq!(parse_ip("dhcp").unwrap(), IpArg::Dhcp);
        assert_eq!(parse_ip("off").unwrap(), IpArg::Off);
        assert!(parse_ip("10.0.2.x::10.0.2.2:255.255.255.0").is_err());
        assert!(parse_ip("10.0.2.15::10.0.2.2:255.0.255.0").is_err());
        // 0.0.0.0 as gateway means none.
        let IpArg::Static(s) = parse_ip("10.1.1.1::0.0.0.0:255.255.255.0").unwrap() else {
            panic!()
        };
        assert_eq!(s.gateway, None);
    }

    #[test]
    fn mac_forms() {
        assert_eq!(
            parse_mac("01-52-54-00-12-34-56").as_deref(),
            Some("52:54:00:12:34:56")
        );
        assert_eq!(
            parse_mac("52:54:00:AB:34:56").as_deref(),
            Some("52:54:00:ab:34:56")
        );
        assert_eq!(parse_mac("01-52-54-00-12"), None);
        assert_eq!(parse_mac("02-52-54-00-12-34-56"), None);
        assert_eq!(parse_mac("zz:54:00:12:34:56"), None);
        assert_eq!(parse_mac(""), None);
    }

    #[test]
    fn urls() {
        let u = ReportUrl::parse("http://10.0.2.2:8080/reports/").unwrap();
        assert_eq!(u.addr, "10.0.2.2:8080".parse().unwrap());
        assert_eq!(u.path, "/reports/");
        assert_eq!(u.url_of("a.json"), "http://10.0.2.2:8080/reports/a.json");
        let u = ReportUrl::parse("http://192.168.1.5/defib").unwrap();
        assert_eq!(u.addr.port(), 80);
        assert_eq!(u.path, "/defib/");
        let u = ReportUrl::parse("http://[fd00::5]:81/r/").unwrap();
        assert_eq!(u.addr, "[fd00::5]:81".parse().unwrap());
        assert_eq!(ReportUrl::parse("http://10.0.0.1").unwrap().path, "/");
        let e = ReportUrl::parse("http://reports.example.org/r/").unwrap_err();
        assert!(e.contains("cannot resolve names"), "{e}");
        let e = ReportUrl::parse("https://10.0.0.1/r/").unwrap_err();
        assert!(e.contains("https is not supported"), "{e}");
        assert!(ReportUrl::parse("ftp://10.0.0.1/").is_err());
        assert!(ReportUrl::parse("http://10.0.0.1:0/").is_err());
        assert!(ReportUrl::parse("http://10.0.0.1:99999/").is_err());
        assert!(ReportUrl::parse("http://u@10.0.0.1/").is_err());
        assert!(ReportUrl::parse("http://10.0.0.1/a?b").is_err());
    }

    #[test]
    fn request_bytes() {
        let u = ReportUrl::parse("http://10.0.2.2:8080/reports/").unwrap();
        let r = put_request(&u, "pc-1.json", b"{}\n");
        let want = format!(
            "PUT /reports/pc-1.json HTTP/1.1\r\nHost: 10.0.2.2:8080\r\n\
             User-Agent: defib-rescue/{}\r\nContent-Type: application/json\r\n\
             Content-Length: 3\r\nConnection: close\r\n\r\n{{}}\n",
            crate::VERSION
        );
        assert_eq!(String::from_utf8(r).unwrap(), want);
        assert_eq!(status_code(b"HTTP/1.1 201 Created\r\n"), Some(201));
        assert_eq!(status_code(b"HTTP/1.0 500 Oops\r\n"), Some(500));
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_code(b""), None);
    }

    #[test]
    fn leases_round_trip() {
        let env = |k: &str| {
            match k {
                "interface" => Some("ens3"),
                "ip" => Some("10.0.2.15"),
                "subnet" => Some("255.255.255.0"),
                "router" => Some("10.0.2.2 10.0.2.3"),
                _ => None,
            }
            .map(str::to_string)
        };
        let l = Lease::from_env(&env).unwrap();
        assert_eq!(l.config.gateway, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(Lease::parse(&l.to_text()).unwrap(), l);
        assert!(Lease::from_env(&|_| None).is_err());
    }

    #[test]
    fn chooses_the_boot_nic() {
        let i = |n: &str, m: &str, c| Iface {
            name: n.into(),
            mac: m.into(),
            carrier: c,
        };
        let l = vec![
            i("eth0", "52:54:00:00:00:01", false),
            i("eth1", "52:54:00:00:00:02", true),
        ];
        assert_eq!(
            choose_iface(&l, Some("52:54:00:00:00:01")).unwrap().name,
            "eth0"
        );
        assert_eq!(choose_iface(&l, None).unwrap().name, "eth1");
        assert!(choose_iface(&l, Some("52:54:00:00:00:09")).is_none());
        let d = tempfile::tempdir().unwrap();
        for (n, m, c) in [
            ("lo", "00:00:00:00:00:00", "1"),
            ("ens4", "52:54:00:AA:00:02", "1"),
        ] {
            let p = d.path().join("sys/class/net").join(n);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("address"), format!("{m}\n")).unwrap();
            std::fs::write(p.join("carrier"), format!("{c}\n")).unwrap();
        }
        assert_eq!(
            list_ifaces(d.path()),
            vec![i("ens4", "52:54:00:aa:00:02", true)]
        );
    }

    /// A one-thread HTTP server answering each connection with the next
    /// status from `codes` (the last repeats); it records the bodies.
    /// (request line, body) of each request.
    type Got = Arc<Mutex<Vec<(String, Vec<u8>)>>>;

    fn server(codes: Vec<u16>) -> (ReportUrl, Got) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let g = got.clone();
        std::thread::spawn(move || {
            for (n, s) in l.incoming().enumerate() {
                let Ok(mut s) = s else { continue };
                let mut data = Vec::new();
                let mut buf = [0u8; 4096];
                // Read the head, then Content-Length bytes.
                let (head, len) = loop {
                    let k = s.read(&mut buf).unwrap();
                    data.extend_from_slice(&buf[..k]);
                    if let Some(p) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&data[..p]).to_string();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("Content-Length: "))
                            .unwrap()
                            .parse()
                            .unwrap();
                        data.drain(..p + 4);
                        break (head, len);
                    }
                };
                while data.len() < len {
                    let k = s.read(&mut buf).unwrap();
                    data.extend_from_slice(&buf[..k]);
                }
                let code = codes[n.min(codes.len() - 1)];
                g.lock()
                    .unwrap()
                    .push((head.lines().next().unwrap().to_string(), data));
                let _ = write!(s, "HTTP/1.1 {code} X\r\nContent-Length: 0\r\n\r\n");
            }
        });
        (
            ReportUrl::parse(&format!("http://127.0.0.1:{port}/reports/")).unwrap(),
            got,
        )
    }

    fn fast() -> Retry {
        Retry {
            tries: 5,
            first_backoff: Duration::from_millis(10),
            overall: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            io_timeout: Duration::from_secs(2),
        }
    }

    #[test]
    fn put_succeeds() {
        let (u, got) = server(vec![201]);
        let d = deliver(&u, "m.json", b"{\"a\":1}", fast(), &mut |_| {});
        assert_eq!(
            d,
            Delivery {
                delivered: true,
                attempts: 1,
                error: None
            }
        );
        let got = got.lock().unwrap();
        assert_eq!(got[0].0, "PUT /reports/m.json HTTP/1.1");
        assert_eq!(got[0].1, b"{\"a\":1}");
    }

    #[test]
    fn retries_after_a_server_error() {
        let (u, got) = server(vec![500, 503, 204]);
        let mut slept = Vec::new();
        let d = deliver(&u, "m.json", b"x", fast(), &mut |t| slept.push(t));
        assert!(d.delivered, "{d:?}");
        assert_eq!(d.attempts, 3);
        assert_eq!(
            slept,
            vec![Duration::from_millis(10), Duration::from_millis(20)]
        );
        assert_eq!(got.lock().unwrap().len(), 3);
    }

    #[test]
    fn gives_up_on_persistent_errors() {
        let (u, _) = server(vec![500]);
        let d = deliver(&u, "m.json", b"x", fast(), &mut |_| {});
        assert!(!d.delivered);
        assert_eq!(d.attempts, 5);
        assert!(d.error.unwrap().contains("500"));
    }

    #[test]
    fn refused_connection_fails_within_the_bound() {
        // A port nobody listens on: bind, learn it, close.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let u = ReportUrl::parse(&format!("http://127.0.0.1:{port}/r/")).unwrap();
        let t = Instant::now();
        let r = Retry {
            overall: Duration::from_millis(300),
            first_backoff: Duration::from_millis(100),
            ..fast()
        };
        let d = deliver(&u, "m.json", b"x", r, &mut std::thread::sleep);
        assert!(!d.delivered);
        assert!(d.error.as_deref().unwrap().contains("connecting"), "{d:?}");
        assert!(t.elapsed() < Duration::from_secs(2));
        assert!(d.attempts >= 2, "{d:?}");
    }
}

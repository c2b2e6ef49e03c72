//! The link: which NIC, which address (from `ip=` or a DHCP lease got by
//! busybox udhcpc with this binary as its hook), and the ioctls that set it.

use super::{IpArg, NetError, StaticIp, HOOK_PATH, LEASE_PATH};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

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
) -> Result<Up, NetError> {
    bring_up_str(root, ip, mac, wait, say).map_err(NetError::Link)
}

fn bring_up_str(
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

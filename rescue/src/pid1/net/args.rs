//! The network values on the kernel command line: `ip=`, `BOOTIF=` and
//! `defib.report=`. Parsing only; nothing here touches a socket.

use super::NetError;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

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
pub fn parse_ip(value: &str) -> Result<IpArg, NetError> {
    parse_ip_str(value).map_err(NetError::BadArg)
}

fn parse_ip_str(value: &str) -> Result<IpArg, String> {
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

/// Where reports go: `http://IP[:PORT]/folder/`, or `https://` to a server
/// whose certificate `defib.tls=` pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportUrl {
    pub addr: SocketAddr,
    /// `https://`: TLS to the pinned certificate.
    pub tls: bool,
    /// The `Host:` header value, as written in the URL.
    pub host: String,
    /// The folder, starting and ending with `/`.
    pub path: String,
}

impl ReportUrl {
    /// Parses `defib.report=`. `http://` or `https://` with an IP literal:
    /// as a static glibc binary the rescue cannot resolve host names.
    pub fn parse(url: &str) -> Result<ReportUrl, NetError> {
        Self::parse_str(url).map_err(NetError::BadArg)
    }

    fn parse_str(url: &str) -> Result<ReportUrl, String> {
        let url = url.trim();
        let (tls, rest) = match (url.strip_prefix("http://"), url.strip_prefix("https://")) {
            (Some(rest), _) => (false, rest),
            (_, Some(rest)) => (true, rest),
            _ => return Err(format!("{url}: not an http:// or https:// URL")),
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
            None if tls => 443,
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
            tls,
            host: hostport.to_string(),
            path,
        })
    }

    /// The full URL of a file in the folder.
    pub fn url_of(&self, name: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}{}{}", self.host, self.path, name)
    }
}

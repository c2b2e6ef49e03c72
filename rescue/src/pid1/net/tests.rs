//! Tests for the network: parsing, the PUT against a local server,
//! retries with an injected sleep.

use super::*;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    assert!(e.to_string().contains("cannot resolve names"), "{e}");
    let t = ReportUrl::parse("https://10.0.0.1/r/").unwrap();
    assert!(t.tls && !u.tls);
    assert_eq!(t.addr.port(), 443);
    assert_eq!(t.url_of("a.json"), "https://10.0.0.1/r/a.json");
    assert_eq!(
        ReportUrl::parse("https://10.0.0.1:8443/r/")
            .unwrap()
            .addr
            .port(),
        8443
    );
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
fn a_refusal_is_not_retried() {
    // 403: the server will not take it however often we ask.
    let (u, got) = server(vec![403, 201]);
    let d = deliver(&u, "m.json", b"x", fast(), &mut |_| {});
    assert!(!d.delivered);
    assert_eq!(d.attempts, 1, "{d:?}");
    assert!(d.error.unwrap().contains("403"));
    assert_eq!(got.lock().unwrap().len(), 1);
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

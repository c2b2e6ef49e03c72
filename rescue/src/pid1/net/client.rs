//! The rescue's one HTTP exchange: connect with a timeout, send a request,
//! read the answer into a wiped buffer with a cap. Every network request
//! of the rescue (the report's PUT, store objects, BitLocker keys) goes
//! through here; each caller parses the answer its own way, so timeouts,
//! caps and error wording are the same everywhere (and TLS has one place).
//!
//! Not an HTTP library: one request per connection (`Connection: close`),
//! IP literals only (static glibc cannot resolve names), no redirects.
//! HTTPS is [`super::tls`]'s: one pinned certificate, nothing else trusted.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use zeroize::Zeroizing;

/// Why an exchange failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExchangeError {
    /// Connecting or sending failed: the server is not reachable.
    Unreachable(String),
    /// It was reached, but reading its answer failed.
    Reading(String),
    /// Not talked to: an https:// URL without a pin, or a server whose
    /// certificate is not the pinned one. Trying again changes nothing.
    Refused(String),
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExchangeError::Unreachable(s)
            | ExchangeError::Reading(s)
            | ExchangeError::Refused(s) => f.write_str(s),
        }
    }
}

/// Bounds on one exchange.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub connect: Duration,
    pub io: Duration,
    /// At most this many bytes of the answer are read (head and body).
    pub cap: usize,
}

/// The raw answer, and whether the cap cut it (more was coming).
pub struct Answer {
    pub data: Zeroizing<Vec<u8>>,
    pub capped: bool,
}

/// How an exchange travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport<'a> {
    /// Plain HTTP: anyone on the wire reads it.
    Plain,
    /// HTTPS to the server whose certificate has this SHA-256.
    Pinned(&'a super::tls::Pin),
}

impl Transport<'static> {
    /// For a URL's scheme: plain for `http://`; for `https://`, pinned to
    /// the kernel command line's `defib.tls=`, or an error saying it is
    /// missing (nothing is sent in the clear to an https:// URL).
    pub fn for_scheme(tls: bool, addr: SocketAddr) -> Result<Self, ExchangeError> {
        if !tls {
            return Ok(Transport::Plain);
        }
        super::tls::boot_pin()
            .map(Transport::Pinned)
            .ok_or_else(|| ExchangeError::Refused(no_pin(addr)))
    }
}

/// The line for an https:// URL without `defib.tls=`.
pub fn no_pin(addr: SocketAddr) -> String {
    format!(
        "https://{addr} needs {}=sha256:<the SHA-256 of its certificate> on the kernel \
         command line (defib serve writes it): without it no server can be trusted",
        super::tls::PIN_ARG
    )
}

/// Sends `request` to `addr` and reads the answer until the server closes
/// the connection, `enough` says the answer is complete, or `cap` bytes
/// were read. `tls` is the URL's scheme (see [`Transport::for_scheme`]).
pub fn exchange(
    addr: SocketAddr,
    tls: bool,
    request: &[u8],
    b: &Bounds,
    enough: &dyn Fn(&[u8]) -> bool,
) -> Result<Answer, ExchangeError> {
    exchange_with(addr, Transport::for_scheme(tls, addr)?, request, b, enough)
}

/// [`exchange`] over a given transport.
pub fn exchange_with(
    addr: SocketAddr,
    transport: Transport<'_>,
    request: &[u8],
    b: &Bounds,
    enough: &dyn Fn(&[u8]) -> bool,
) -> Result<Answer, ExchangeError> {
    let unreachable =
        |what: &str, e: std::io::Error| ExchangeError::Unreachable(format!("{what} {addr}: {e}"));
    let s = TcpStream::connect_timeout(&addr, b.connect)
        .map_err(|e| unreachable("connecting to", e))?;
    let io = Some(b.io.max(Duration::from_millis(1)));
    s.set_read_timeout(io)
        .and_then(|_| s.set_write_timeout(io))
        .map_err(|e| unreachable("setting timeouts on", e))?;
    match transport {
        Transport::Plain => talk(s, addr, false, request, b, enough),
        Transport::Pinned(pin) => {
            let t = super::tls::connect(s, addr, pin).map_err(ExchangeError::Refused)?;
            talk(t, addr, true, request, b, enough)
        }
    }
}

fn talk<S: Read + Write>(
    mut s: S,
    addr: SocketAddr,
    tls: bool,
    request: &[u8],
    b: &Bounds,
    enough: &dyn Fn(&[u8]) -> bool,
) -> Result<Answer, ExchangeError> {
    s.write_all(request)
        .and_then(|_| s.flush())
        .map_err(|e| ExchangeError::Unreachable(format!("sending to {addr}: {e}")))?;
    let mut data = Zeroizing::new(Vec::new());
    let mut buf = Zeroizing::new([0u8; 8192]);
    loop {
        if enough(&data) {
            return Ok(Answer {
                data,
                capped: false,
            });
        }
        let room = (b.cap + 1).saturating_sub(data.len()).min(buf.len());
        match s.read(&mut buf[..room]) {
            Ok(0) => {
                return Ok(Answer {
                    data,
                    capped: false,
                })
            }
            Ok(n) => {
                data.extend_from_slice(&buf[..n]);
                if data.len() > b.cap {
                    data.truncate(b.cap);
                    return Ok(Answer { data, capped: true });
                }
            }
            // A TLS server that closes without close_notify (many do after
            // `Connection: close`) ends the answer like a TCP close would;
            // the callers check lengths against the head's.
            Err(e) if tls && e.kind() == std::io::ErrorKind::UnexpectedEof && !data.is_empty() => {
                return Ok(Answer {
                    data,
                    capped: false,
                })
            }
            Err(e) => {
                return Err(ExchangeError::Reading(format!(
                    "reading the answer from {addr}: {e}"
                )))
            }
        }
    }
}

/// Where the head ends (after its blank line), if it has.
pub fn head_end(data: &[u8]) -> Option<usize> {
    data.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// A header's value from a head (case-insensitive name).
pub fn header(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// `enough` for a status-only caller: the status line is in.
pub fn status_line_in(data: &[u8]) -> bool {
    data.contains(&b'\n')
}

/// `enough` for a caller that wants the body: the head is in and, when it
/// declares a length, that many body bytes are too.
pub fn whole_answer_in(data: &[u8]) -> bool {
    let Some(end) = head_end(data) else {
        return false;
    };
    let head = String::from_utf8_lossy(&data[..end]);
    match header(&head, "content-length").and_then(|v| v.parse::<usize>().ok()) {
        Some(n) => data.len() - end >= n,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn bounds(cap: usize) -> Bounds {
        Bounds {
            connect: Duration::from_secs(2),
            io: Duration::from_secs(2),
            cap,
        }
    }

    /// Answers one connection with `answer`, then keeps it open for a
    /// while (a server that ignores `Connection: close`).
    fn server(answer: Vec<u8>, linger: Duration) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut b = [0u8; 1024];
            let _ = c.read(&mut b);
            let _ = c.write_all(&answer);
            std::thread::sleep(linger);
        });
        addr
    }

    #[test]
    fn a_complete_answer_ends_the_read_without_waiting_for_close() {
        let addr = server(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc".to_vec(),
            Duration::from_secs(30),
        );
        let a = exchange(
            addr,
            false,
            b"GET / HTTP/1.1\r\n\r\n",
            &bounds(1000),
            &whole_answer_in,
        )
        .unwrap();
        assert!(a.data.ends_with(b"abc") && !a.capped);
        let addr = server(
            b"HTTP/1.1 201 Created\r\n".to_vec(),
            Duration::from_secs(30),
        );
        let a = exchange(
            addr,
            false,
            b"PUT / HTTP/1.1\r\n\r\n",
            &bounds(1000),
            &status_line_in,
        )
        .unwrap();
        assert_eq!(&a.data[..], b"HTTP/1.1 201 Created\r\n");
    }

    #[test]
    fn the_cap_cuts_and_says_so() {
        let mut big = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        big.extend(vec![b'x'; 50_000]);
        let addr = server(big, Duration::ZERO);
        let a = exchange(
            addr,
            false,
            b"GET / HTTP/1.1\r\n\r\n",
            &bounds(100),
            &|_| false,
        )
        .unwrap();
        assert_eq!(a.data.len(), 100);
        assert!(a.capped);
    }

    #[test]
    fn nobody_listening_is_unreachable() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let e = exchange(addr, false, b"GET /", &bounds(10), &|_| false)
            .err()
            .unwrap();
        assert!(matches!(e, ExchangeError::Unreachable(_)), "{e}");
        assert!(e.to_string().contains("connecting to 127.0.0.1"), "{e}");
    }

    /// A TLS server with a fresh self-made certificate for 127.0.0.1 that
    /// answers one request with `answer`; returns its address and the
    /// SHA-256 of its certificate.
    fn tls_server(answer: Vec<u8>, close_notify: bool) -> (SocketAddr, super::super::tls::Pin) {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        use sha2::Digest;
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
        let der = ck.cert.der().clone();
        let pin: [u8; 32] = sha2::Sha256::digest(der.as_ref()).into();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der], key)
            .unwrap();
        let config = std::sync::Arc::new(config);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (c, _) = l.accept().unwrap();
            let conn = rustls::ServerConnection::new(config).unwrap();
            let mut t = rustls::StreamOwned::new(conn, c);
            let mut b = [0u8; 1024];
            let _ = t.read(&mut b);
            let _ = t.write_all(&answer);
            if close_notify {
                t.conn.send_close_notify();
            }
            let _ = t.flush();
        });
        (addr, pin)
    }

    #[test]
    fn https_talks_to_the_pinned_server_only() {
        let body = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec();
        for close_notify in [true, false] {
            let (addr, pin) = tls_server(body.clone(), close_notify);
            let a = exchange_with(
                addr,
                Transport::Pinned(&pin),
                b"GET /k HTTP/1.1\r\n\r\n",
                &bounds(1000),
                &|_| false,
            )
            .unwrap();
            assert!(a.data.ends_with(b"hello"), "close_notify {close_notify}");
        }
        // Another certificate (the same names, a different key): refused,
        // both fingerprints named, nothing sent.
        let (addr, pin) = tls_server(body, true);
        let mut other = pin;
        other[0] ^= 1;
        let e = exchange_with(
            addr,
            Transport::Pinned(&other),
            b"PUT /secret HTTP/1.1\r\n\r\n",
            &bounds(1000),
            &|_| false,
        )
        .err()
        .unwrap();
        assert!(matches!(e, ExchangeError::Refused(_)), "{e}");
        let m = e.to_string();
        assert!(m.contains(&super::super::tls::pin_short(&pin)), "{m}");
        assert!(m.contains(&super::super::tls::pin_short(&other)), "{m}");
        assert!(m.contains("not the pinned"), "{m}");
    }

    #[test]
    fn a_plain_server_behind_an_https_url_is_not_talked_to_in_clear() {
        let addr = server(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc".to_vec(),
            Duration::ZERO,
        );
        let e = exchange_with(
            addr,
            Transport::Pinned(&[7u8; 32]),
            b"GET / HTTP/1.1\r\n\r\n",
            &bounds(1000),
            &|_| false,
        )
        .err()
        .unwrap();
        assert!(matches!(e, ExchangeError::Refused(_)), "{e}");
        assert!(e.to_string().contains("TLS handshake"), "{e}");
    }

    #[test]
    fn an_https_url_without_a_pin_says_what_is_missing() {
        // No test sets the process's boot pin.
        let addr: SocketAddr = "10.0.0.1:443".parse().unwrap();
        let e = Transport::for_scheme(true, addr).err().unwrap();
        assert!(e.to_string().contains("defib.tls=sha256:"), "{e}");
        assert_eq!(
            Transport::for_scheme(false, addr).unwrap(),
            Transport::Plain
        );
    }
}

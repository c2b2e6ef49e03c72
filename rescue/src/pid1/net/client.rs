//! The rescue's one HTTP exchange: connect with a timeout, send a request,
//! read the answer into a wiped buffer with a cap. Every network request
//! of the rescue (the report's PUT, store objects, BitLocker keys) goes
//! through here; each caller parses the answer its own way, so timeouts,
//! caps and error wording are the same everywhere (and TLS, when it comes,
//! has one place to go).
//!
//! Not an HTTP library: one request per connection (`Connection: close`),
//! IP literals only (static glibc cannot resolve names), no redirects.

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
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExchangeError::Unreachable(s) | ExchangeError::Reading(s) => f.write_str(s),
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

/// Sends `request` to `addr` and reads the answer until the server closes
/// the connection, `enough` says the answer is complete, or `cap` bytes
/// were read.
pub fn exchange(
    addr: SocketAddr,
    request: &[u8],
    b: &Bounds,
    enough: &dyn Fn(&[u8]) -> bool,
) -> Result<Answer, ExchangeError> {
    let unreachable =
        |what: &str, e: std::io::Error| ExchangeError::Unreachable(format!("{what} {addr}: {e}"));
    let mut s = TcpStream::connect_timeout(&addr, b.connect)
        .map_err(|e| unreachable("connecting to", e))?;
    let io = Some(b.io.max(Duration::from_millis(1)));
    s.set_read_timeout(io)
        .and_then(|_| s.set_write_timeout(io))
        .map_err(|e| unreachable("setting timeouts on", e))?;
    s.write_all(request)
        .and_then(|_| s.flush())
        .map_err(|e| unreachable("sending to", e))?;
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
        let a = exchange(addr, b"GET / HTTP/1.1\r\n\r\n", &bounds(100), &|_| false).unwrap();
        assert_eq!(a.data.len(), 100);
        assert!(a.capped);
    }

    #[test]
    fn nobody_listening_is_unreachable() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let e = exchange(addr, b"GET /", &bounds(10), &|_| false)
            .err()
            .unwrap();
        assert!(matches!(e, ExchangeError::Unreachable(_)), "{e}");
        assert!(e.to_string().contains("connecting to 127.0.0.1"), "{e}");
    }
}

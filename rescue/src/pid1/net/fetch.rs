//! One HTTP GET with a cap on the body: how a network-booted rescue takes a
//! store object from the server it booted from (`defib.store=`). The caller
//! checks what it gets (the store compares size and SHA-256 with its index).
//! The exchange itself is [`super::client`]'s, shared with the report's
//! PUT and the key fetches; this reads the answer: no redirects, no
//! chunked bodies.

use super::{client, status_code, NetError, ReportUrl};
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const IO_TIMEOUT: Duration = Duration::from_secs(20);
/// A response head longer than this is not from a web server we expect.
const MAX_HEAD: usize = 16 * 1024;

/// GETs `url` (`http[s]://IP[:PORT]/path/name`) and returns at most `max_len`
/// bytes of its body: `Ok(None)` when the server answers 404, an error for
/// any other non-2xx answer or a broken connection. A body longer than
/// `max_len` is cut there (the caller sees it is too long by its length,
/// having read no more than it allowed).
pub fn get(url: &str, max_len: u64) -> Result<Option<Vec<u8>>, NetError> {
    let (folder, name) = url
        .rsplit_once('/')
        .filter(|(_, n)| !n.is_empty())
        .ok_or_else(|| NetError::BadArg(format!("{url}: no file name at the end")))?;
    let base = ReportUrl::parse(&format!("{folder}/"))?;
    let req = format!(
        "GET {}{name} HTTP/1.1\r\nHost: {}\r\nUser-Agent: defib-rescue/{}\r\n\
         Connection: close\r\n\r\n",
        base.path,
        base.host,
        crate::VERSION
    );
    let bounds = client::Bounds {
        connect: CONNECT_TIMEOUT,
        io: IO_TIMEOUT,
        cap: MAX_HEAD.saturating_add(usize::try_from(max_len).unwrap_or(usize::MAX)),
    };
    let answer = client::exchange(
        base.addr,
        base.tls,
        req.as_bytes(),
        &bounds,
        &client::whole_answer_in,
    )
    .map_err(|e| match e {
        client::ExchangeError::Refused(m) => NetError::Refused(format!("{url}: {m}")),
        e => NetError::Io(format!("{url}: {e}")),
    })?;
    let buf = &answer.data[..];
    let Some(head_end) = client::head_end(buf) else {
        return Err(NetError::Io(if buf.len() > MAX_HEAD {
            format!("{url}: response head over {MAX_HEAD} bytes")
        } else {
            format!("{url}: connection closed before the answer")
        }));
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let code = status_code(head.as_bytes())
        .ok_or_else(|| NetError::Io(format!("no HTTP answer from {}", base.addr)))?;
    if code == 404 {
        return Ok(None);
    }
    if !(200..300).contains(&code) {
        return Err(NetError::Status {
            addr: base.addr.to_string(),
            code,
            line: head.lines().next().unwrap_or("").chars().take(80).collect(),
        });
    }
    let header = |name: &str| client::header(&head, name);
    if header("transfer-encoding").is_some_and(|v| !v.eq_ignore_ascii_case("identity")) {
        return Err(NetError::Io(format!(
            "{url}: chunked answers are not supported; serve the store as plain files"
        )));
    }
    let declared = match header("content-length") {
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| NetError::Io(format!("{url}: bad Content-Length {v:?}")))?,
        ),
        None => None,
    };
    let want = declared.map_or(max_len, |d| d.min(max_len));
    let mut body = buf[head_end..].to_vec();
    body.truncate(usize::try_from(want).unwrap_or(usize::MAX));
    if declared.is_some_and(|d| (body.len() as u64) < d.min(max_len)) {
        return Err(NetError::Io(format!(
            "{url}: connection closed after {} of {} bytes",
            body.len(),
            declared.unwrap_or(0)
        )));
    }
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// Serves one connection with `answer` and returns the request line.
    fn serve_once(answer: Vec<u8>) -> (u16, std::thread::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let h = std::thread::spawn(move || {
            let (mut c, _) = l.accept().unwrap();
            let mut req = Vec::new();
            let mut b = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = c.read(&mut b).unwrap();
                if n == 0 {
                    break;
                }
                req.extend_from_slice(&b[..n]);
            }
            let _ = c.write_all(&answer);
            String::from_utf8_lossy(&req)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        });
        (port, h)
    }

    fn ok(body: &[u8]) -> Vec<u8> {
        let mut a =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        a.extend_from_slice(body);
        a
    }

    #[test]
    fn gets_the_body_by_path() {
        let (port, h) = serve_once(ok(b"object bytes"));
        let got = get(
            &format!("http://127.0.0.1:{port}/defib/store/objects/ab12"),
            100,
        )
        .unwrap();
        assert_eq!(got.as_deref(), Some(&b"object bytes"[..]));
        assert_eq!(h.join().unwrap(), "GET /defib/store/objects/ab12 HTTP/1.1");
    }

    #[test]
    fn a_long_body_is_cut_at_the_cap() {
        let big = vec![7u8; 100_000];
        let (port, h) = serve_once(ok(&big));
        let got = get(&format!("http://127.0.0.1:{port}/o/x"), 1001)
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), 1001);
        h.join().unwrap();
        // Without a Content-Length too.
        let mut a = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
        a.extend_from_slice(&big);
        let (port, h) = serve_once(a);
        let got = get(&format!("http://127.0.0.1:{port}/o/x"), 11)
            .unwrap()
            .unwrap();
        assert_eq!(got.len(), 11);
        h.join().unwrap();
    }

    #[test]
    fn not_found_errors_and_bad_urls() {
        let (port, h) = serve_once(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec());
        assert_eq!(
            get(&format!("http://127.0.0.1:{port}/o/x"), 10).unwrap(),
            None
        );
        h.join().unwrap();
        let (port, h) = serve_once(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n".to_vec());
        let e = get(&format!("http://127.0.0.1:{port}/o/x"), 10).unwrap_err();
        assert!(matches!(e, NetError::Status { code: 500, .. }), "{e}");
        h.join().unwrap();
        let (port, h) = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort".to_vec());
        let e = get(&format!("http://127.0.0.1:{port}/o/x"), 100).unwrap_err();
        assert!(e.to_string().contains("after 5 of 50 bytes"), "{e}");
        h.join().unwrap();
        assert!(get("http://pxe.example/o/x", 10)
            .unwrap_err()
            .to_string()
            .contains("cannot resolve"));
        assert!(get("http://10.0.0.1/o/", 10).is_err());
    }
}

//! One HTTP PUT with bounded retries: the report's way to the server,
//! sent through [`super::client`] (shared with every other request).

use super::{NetError, ReportUrl};
use std::time::{Duration, Instant};

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
) -> Result<u16, NetError> {
    // The status line is all we need; the server closes after it anyway.
    let bounds = super::client::Bounds {
        connect: connect_timeout,
        io: io_timeout,
        cap: 8192,
    };
    let answer = super::client::exchange(
        url.addr,
        url.tls,
        &put_request(url, name, body),
        &bounds,
        &super::client::status_line_in,
    )
    .map_err(|e| match e {
        super::client::ExchangeError::Refused(m) => NetError::Refused(m),
        e => NetError::Io(e.to_string()),
    })?;
    let head = &answer.data[..];
    match status_code(head) {
        Some(c) if (200..300).contains(&c) => Ok(c),
        Some(code) => {
            let line = head.split(|b| *b == b'\n').next().unwrap_or(&[]);
            let line: String = String::from_utf8_lossy(line)
                .trim_end()
                .chars()
                .take(80)
                .collect();
            Err(NetError::Status {
                addr: url.addr.to_string(),
                code,
                line,
            })
        }
        None => Err(NetError::Io(format!("no HTTP answer from {}", url.addr))),
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
            // A server that answered 4xx (forbidden, too large, no such
            // folder) will answer the same again: stop here.
            Err(
                e @ NetError::Status {
                    code: 400..=499, ..
                },
            ) => {
                return Delivery {
                    delivered: false,
                    attempts: attempt,
                    error: Some(format!("{e} (not retried)")),
                }
            }
            // No pin, or not the pinned certificate: the same next time.
            Err(e @ NetError::Refused(_)) => {
                return Delivery {
                    delivered: false,
                    attempts: attempt,
                    error: Some(format!("{e} (not retried)")),
                }
            }
            Err(e) => last = e.to_string(),
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

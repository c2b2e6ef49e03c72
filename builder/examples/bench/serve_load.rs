//! A load test of nginx exactly as `defib serve` configures it: the config
//! is `serve::nginx_conf(&plan)` for a plan made by `serve::prepare`, the
//! tree is `defib pxe`'s for that plan (what `defib serve` writes), and
//! nginx runs in a network namespace of its own. N clients in a second
//! namespace, across a veth pair, each fetch what an iPXE machine fetches
//! over HTTP (`boot-http.ipxe`, `vmlinuz`, `initrd.img`, `payloads.img`)
//! and PUT one report, all at once.
//!
//! Two processes: this one makes the namespaces (and deletes them on
//! drop), then runs itself again under `ip netns exec` in the server's
//! namespace (`--serve-inner`), because `serve::prepare` looks the
//! interface up in the namespace and in `/sys/class/net` the way `defib
//! serve` does, and only `ip netns exec` gives a process both. That inner
//! run starts nginx, and its client threads join the client namespace with
//! setns(2) (a thread's own network namespace).

use anyhow::{bail, Context, Result};
use defib_builder::serve;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};

/// Everything one client is allowed, connect to last byte.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(300);
/// The whole round: the clients' limit and a margin to collect them.
pub const ROUND_TIMEOUT: Duration = Duration::from_secs(330);
/// One connect, or one read or write that makes no progress.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Ethernet, IP and TCP headers, ACKs and HTTP heads on top of the bytes
/// served: about 5 % with 1500-byte frames (78 bytes of headers, preamble
/// and gap per 1448 bytes of payload), rounded up.
pub const PROTOCOL_OVERHEAD: f64 = 0.05;
/// The files an iPXE machine GETs, in order (`boot-http.ipxe` is its
/// script; the other three its `kernel` and `initrd` lines, pxe.rs).
pub const FETCHED: [&str; 4] = ["boot-http.ipxe", "vmlinuz", "initrd.img", "payloads.img"];

/// The namespaces, their veth pair and addresses: the server's end is
/// `srv0` 10.79.0.1/24, the clients' `cli0` 10.79.0.2/24. Deleting a
/// namespace deletes its end of the pair, and with it the other.
struct Namespaces {
    server: String,
    client: String,
    made: Vec<String>,
}

const SERVER_IF: &str = "srv0";

fn ip(args: &[&str]) -> Result<()> {
    let o = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2)")?;
    if !o.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(())
}

impl Namespaces {
    fn new() -> Result<Namespaces> {
        let pid = std::process::id();
        let mut ns = Namespaces {
            server: format!("defib-bench-{pid}-srv"),
            client: format!("defib-bench-{pid}-cli"),
            made: Vec::new(),
        };
        for n in [ns.server.clone(), ns.client.clone()] {
            ip(&["netns", "add", &n])?;
            ns.made.push(n.clone());
            ip(&["-n", &n, "link", "set", "lo", "up"])?;
        }
        let (s, c) = (ns.server.as_str(), ns.client.as_str());
        ip(&[
            "-n", s, "link", "add", SERVER_IF, "type", "veth", "peer", "name", "cli0", "netns", c,
        ])?;
        ip(&["-n", s, "addr", "add", "10.79.0.1/24", "dev", SERVER_IF])?;
        ip(&["-n", c, "addr", "add", "10.79.0.2/24", "dev", "cli0"])?;
        ip(&["-n", s, "link", "set", SERVER_IF, "up"])?;
        ip(&["-n", c, "link", "set", "cli0", "up"])?;
        Ok(ns)
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in self.made.iter().rev() {
            if let Err(e) = ip(&["netns", "del", n]) {
                eprintln!("bench: could not delete network namespace {n}: {e}");
            }
        }
    }
}

/// The outer half: namespaces, then this program again inside the
/// server's, which prints the figures.
pub fn run() -> Result<()> {
    let ns = Namespaces::new()?;
    let exe = std::env::current_exe().context("this program's path")?;
    let st = Command::new("ip")
        .args(["netns", "exec", &ns.server])
        .arg(exe)
        .args(std::env::args_os().skip(1))
        .arg("--serve-inner")
        .arg(&ns.client)
        .status()
        .context("running the load test in the server's namespace")?;
    if !st.success() {
        bail!("the nginx load test failed ({st})");
    }
    Ok(())
}

/// nginx as `defib serve` starts it, and the run folder; stopped and
/// removed on drop.
struct Server {
    nginx: Option<Child>,
    // Dropped after nginx stopped (fields drop after `drop`).
    _run: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.nginx.take() {
            // SAFETY: a signal to our own child, not yet reaped.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The inner half, in the server's namespace: plan, tree, nginx, rounds.
pub fn inner(defib: &Path, rescue: &Path, client_ns: &str, rounds: &[usize]) -> Result<()> {
    let run = tempfile::Builder::new()
        .prefix("defib-bench-serve.")
        .tempdir()
        .context("creating the run folder")?;
    let opts = serve::ServeOptions {
        interface: SERVER_IF.into(),
        address: None,
        dhcp: serve::Dhcp::Proxy,
        port: 80,
        scan_only: false,
        append: None,
        reports: run.path().join("reports"),
        run_dir: Some(run.path().to_path_buf()),
        tls_port: 443,
        tls_dir: run.path().join("tls"),
        keys: None,
    };
    let (plan, programs) = serve::prepare(&opts, run.path())?;
    // The tree `defib serve` writes: `defib pxe` with its --http-base and
    // defib.report= (main.rs, cmd_serve).
    let st = Command::new(defib)
        .args(["pxe", "--offline", "--json", "--out"])
        .arg(plan.tree())
        .arg("--rescue")
        .arg(rescue)
        .arg("--http-base")
        .arg(plan.http_base())
        .arg("--append")
        .arg(plan.kernel_words().join(" "))
        .stdout(Stdio::null())
        .status()
        .context("running defib pxe")?;
    if !st.success() {
        bail!("defib pxe failed");
    }
    serve::write_run_folder(&plan)?;
    let log = std::fs::File::create(plan.run.join("nginx.log"))?;
    let mut cmd = Command::new(&programs.nginx);
    cmd.arg("-p")
        .arg(&plan.run)
        .arg("-c")
        .arg(plan.run.join("nginx.conf"))
        .args(["-e", "stderr"])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe; nginx gets SIGTERM if this
        // process dies without stopping it.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
    }
    let mut server = Server {
        nginx: Some(cmd.spawn().context("starting nginx")?),
        _run: run,
    };
    let master = server.nginx.as_ref().map(|c| c.id()).unwrap_or(0);
    let addr = SocketAddr::from((plan.address, plan.port));
    let t = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Some(c) = server.nginx.as_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                bail!(
                    "nginx stopped ({st}): {}",
                    std::fs::read_to_string(plan.run.join("nginx.log")).unwrap_or_default()
                );
            }
        }
        if t.elapsed() > Duration::from_secs(10) {
            bail!("nginx did not listen on {addr} within 10 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // nginx keeps the open-file limit it started with (what `defib serve`
    // would give it); the clients, one socket each, get the hard limit.
    let nginx_nofile = open_file_limit(master);
    raise_open_file_limit();

    let sizes: Vec<(String, u64)> = FETCHED
        .iter()
        .map(|f| {
            let len = std::fs::metadata(plan.tree().join(f))
                .with_context(|| format!("{f} is not in the tree"))?
                .len();
            Ok((f.to_string(), len))
        })
        .collect::<Result<_>>()?;
    let report_len = report_body("SIZE-PROBE", 0).len() as u64;
    let per_machine: u64 = sizes.iter().map(|(_, n)| n).sum::<u64>() + report_len;
    let (tree_host, tree_path) = split_url(&plan.http_base()).context("the tree URL")?;
    let report = defib_rescue::pid1::net::ReportUrl::parse(&plan.report_url())
        .map_err(|e| anyhow::anyhow!("the report URL: {e}"))?;
    let pin = plan.tls.as_ref().map(|t| t.cert.sha256);
    let job = Arc::new(Job {
        addr,
        host: tree_host,
        tree_path,
        report,
        pin,
        files: sizes.clone(),
        netns: PathBuf::from("/run/netns").join(client_ns),
    });

    let workers = children_of(master);
    println!(
        "  nginx as `defib serve` configures it (nginx_conf of its plan, the tree of this build), \
         in a network namespace; clients in another, across a veth pair:"
    );
    println!(
        "    each client: GET {} ({}) over HTTP, PUT a {} report over HTTPS (the rescue's TLS \
         client, certificate pinned): {} per machine",
        FETCHED.join(", "),
        sizes
            .iter()
            .map(|(_, n)| human_bytes(*n))
            .collect::<Vec<_>>()
            .join(", "),
        human_bytes(report_len),
        human_bytes(per_machine)
    );
    println!(
        "    nginx: master and {} worker(s), open-file limit {}; {} CPU core(s) shared by nginx \
         and the clients; client timeout {} s, round {} s",
        workers.len(),
        nginx_nofile.map_or("unknown".into(), |n| n.to_string()),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        CLIENT_TIMEOUT.as_secs(),
        ROUND_TIMEOUT.as_secs()
    );
    println!(
        "    {:>5}  {:>10}  {:>8}  {:>8}  {:>6}  {:>12}  {:>8}  {:>6}  {:>8}",
        "N", "served", "wall", "MB/s", "Gbit/s", "nginx CPU/N", "slowest", "failed", "ingested"
    );
    let reports = plan.run.join("bench-reports");
    std::fs::create_dir_all(&reports)?;
    let mut last: Option<Round> = None;
    for &n in rounds {
        let before = cpu_ticks(master);
        let r = round(&job, n);
        let after = cpu_ticks(master);
        // What `defib serve` would do with the arrivals: every PUT body
        // must come out as a report.
        let arrivals = serve::ingest(&plan.incoming(), &reports, &plan.rejected())?;
        let ingested = arrivals
            .iter()
            .filter(|a| matches!(a, serve::Arrival::Report(_)))
            .count();
        let cpu = match (before, after) {
            (Some(b), Some(a)) => Some(a.saturating_sub(b) as f64 / clock_ticks() / n as f64),
            _ => None,
        };
        let wall = r.wall.as_secs_f64();
        let rate = r.bytes as f64 / wall;
        println!(
            "    {:>5}  {:>10}  {:>6.2} s  {:>8.1}  {:>6.2}  {:>12}  {:>6.2} s  {:>6}  {:>8}",
            n,
            human_bytes(r.bytes),
            wall,
            rate / 1e6,
            rate * 8.0 / 1e9,
            cpu.map_or("?".into(), |c| format!("{:.1} ms", c * 1000.0)),
            r.slowest.as_secs_f64(),
            r.failed,
            format!("{ingested}/{n}"),
        );
        for (why, count) in &r.errors {
            println!("           failed: {count} x {why}");
        }
        let rejected = arrivals.len() - ingested;
        if rejected > 0 {
            println!("           {rejected} PUT file(s) were not read as reports");
        }
        last = Some(r);
    }
    if let Some(r) = &last {
        let rate = r.bytes as f64 / r.wall.as_secs_f64();
        println!(
            "  1,000 machines at once, {} each, {:.0} % protocol overhead on the wire; \
             server at the measured {:.0} MB/s (N={}):",
            human_bytes(per_machine),
            PROTOCOL_OVERHEAD * 100.0,
            rate / 1e6,
            rounds.last().copied().unwrap_or(0)
        );
        let server_s = per_machine as f64 * 1000.0 / rate;
        for (name, bps) in [("1 GbE", 1e9), ("10 GbE", 10e9)] {
            let wire_s = wire_seconds(per_machine, 1000, bps, PROTOCOL_OVERHEAD);
            println!(
                "    {name:<7} wire {:>8}, server {:>8}: the bottleneck is {}",
                minutes(wire_s),
                minutes(server_s),
                bottleneck(wire_s, server_s)
            );
        }
    }
    drop(server);
    Ok(())
}

/// What every client of a round shares.
struct Job {
    addr: SocketAddr,
    host: String,
    tree_path: String,
    /// Where reports go: HTTPS to the pinned certificate, as the rescue
    /// sends them (`defib serve`'s plan).
    report: defib_rescue::pid1::net::ReportUrl,
    pin: Option<defib_rescue::pid1::net::tls::Pin>,
    files: Vec<(String, u64)>,
    netns: PathBuf,
}

/// One round's figures.
struct Round {
    bytes: u64,
    wall: Duration,
    slowest: Duration,
    failed: usize,
    /// Failure reasons and how often each came.
    errors: BTreeMap<String, usize>,
}

/// One client's end: bytes received (bodies), when it started and ended,
/// and what failed.
struct Outcome {
    bytes: u64,
    started: Instant,
    ended: Instant,
    error: Option<String>,
}

/// N clients at once (released together by a barrier); each bounded by
/// [`CLIENT_TIMEOUT`], the round by [`ROUND_TIMEOUT`]: a client that has
/// not answered by then counts as failed.
fn round(job: &Arc<Job>, n: usize) -> Round {
    let (tx, rx) = mpsc::channel();
    let go = Arc::new(Barrier::new(n + 1));
    let mut spawn_failed = 0;
    for i in 0..n {
        let (job, tx, go) = (job.clone(), tx.clone(), go.clone());
        let spawned = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                let joined = join_netns(&job.netns);
                go.wait();
                let start = Instant::now();
                let mut bytes = 0;
                let error = match joined {
                    Ok(()) => client(&job, n, i, start, &mut bytes).err(),
                    Err(e) => Some(e),
                };
                let _ = tx.send(Outcome {
                    bytes,
                    started: start,
                    ended: Instant::now(),
                    error,
                });
            });
        if spawned.is_err() {
            spawn_failed += 1;
        }
    }
    drop(tx);
    // The threads that did not start never reach the barrier: stand in
    // for them.
    if spawn_failed > 0 {
        for _ in 0..spawn_failed {
            let go = go.clone();
            std::thread::spawn(move || go.wait());
        }
    }
    go.wait();
    let start = Instant::now();
    // The round's wall time: from the first client's start to the last
    // one's end.
    let (mut first, mut end) = (None::<Instant>, None::<Instant>);
    let mut r = Round {
        bytes: 0,
        wall: Duration::ZERO,
        slowest: Duration::ZERO,
        failed: spawn_failed,
        errors: BTreeMap::new(),
    };
    if spawn_failed > 0 {
        r.errors
            .insert("client thread did not start".into(), spawn_failed);
    }
    let mut answered = spawn_failed;
    while answered < n {
        let Some(left) = ROUND_TIMEOUT.checked_sub(start.elapsed()) else {
            break;
        };
        let Ok(o) = rx.recv_timeout(left) else {
            break;
        };
        answered += 1;
        r.bytes += o.bytes;
        r.slowest = r.slowest.max(o.ended - o.started);
        first = Some(first.map_or(o.started, |f| f.min(o.started)));
        end = Some(end.map_or(o.ended, |e| e.max(o.ended)));
        if let Some(e) = o.error {
            r.failed += 1;
            *r.errors.entry(e).or_default() += 1;
        }
    }
    r.wall = match (first, end) {
        (Some(f), Some(e)) if answered == n => e - f,
        _ => start.elapsed(),
    };
    if answered < n {
        r.failed += n - answered;
        r.errors.insert(
            format!("no answer within the round's {} s", ROUND_TIMEOUT.as_secs()),
            n - answered,
        );
    }
    r
}

/// This thread into the clients' network namespace (the process stays
/// where it is).
fn join_netns(path: &Path) -> std::result::Result<(), String> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    // SAFETY: setns on a namespace file we hold open; it changes only the
    // calling thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!("setns: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// One machine: the iPXE fetches, then its report, like the rescue PUTs
/// it (`<machine>-<run-id>.json`). `bytes` counts body bytes received.
fn client(
    job: &Job,
    round: usize,
    i: usize,
    start: Instant,
    bytes: &mut u64,
) -> std::result::Result<(), String> {
    let mut buf = vec![0u8; 64 * 1024];
    for (name, size) in &job.files {
        let path = format!("{}{name}", job.tree_path);
        let to = (job.addr, job.host.as_str(), None);
        let (status, got) = exchange(to, "GET", &path, &[], start, &mut buf, bytes)
            .map_err(|e| format!("GET {name}: {e}"))?;
        if status != 200 {
            return Err(format!("GET {name}: HTTP {status}"));
        }
        if got != *size {
            return Err(format!("GET {name}: {got} bytes, the file has {size}"));
        }
    }
    let machine = format!("LOAD{round:04}-PC{i:04}");
    let run_id = format!("20261129T060000Z-{:08x}", round * 100_000 + i);
    let body = report_body(&machine, i);
    let path = format!("{}{machine}-{run_id}.json", job.report.path);
    let mut ignored = 0;
    let pin = job.report.tls.then_some(job.pin.as_ref()).flatten();
    let to = (job.report.addr, job.report.host.as_str(), pin);
    let (status, _) = exchange(to, "PUT", &path, &body, start, &mut buf, &mut ignored)
        .map_err(|e| format!("PUT report: {e}"))?;
    if status != 201 && status != 204 {
        return Err(format!("PUT report: HTTP {status}"));
    }
    Ok(())
}

/// What a client talks through: plain TCP for the tree (as firmware and
/// iPXE fetch it), the rescue's own TLS client for the reports.
trait Conn: Read + Write {}
impl<T: Read + Write> Conn for T {}

/// Where a request goes: address, `Host:` value, and the pinned
/// certificate for HTTPS.
type To<'a> = (
    SocketAddr,
    &'a str,
    Option<&'a defib_rescue::pid1::net::tls::Pin>,
);

/// The client's transport: one connection to the server, with bounded
/// connect, reads and writes; with a pin, the handshake of the rescue's
/// TLS client (`pid1::net::tls::connect`), so its cost is in the figures.
fn connect(
    addr: SocketAddr,
    pin: Option<&defib_rescue::pid1::net::tls::Pin>,
) -> std::io::Result<Box<dyn Conn>> {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    match pin {
        None => Ok(Box::new(s)),
        Some(p) => defib_rescue::pid1::net::tls::connect(s, addr, p)
            .map(|t| Box::new(t) as Box<dyn Conn>)
            .map_err(std::io::Error::other),
    }
}

/// One HTTP/1.1 request on its own connection (`Connection: close`);
/// the answer's body is read into a sink. Returns the status and the body
/// bytes, which are also added to `bytes` as they come. Fails past the
/// client's deadline, on a short body, or on a head that is not HTTP.
fn exchange(
    (addr, host, pin): To<'_>,
    method: &str,
    path: &str,
    body: &[u8],
    start: Instant,
    buf: &mut [u8],
    bytes: &mut u64,
) -> std::result::Result<(u16, u64), String> {
    let late = || format!("over the client's {} s", CLIENT_TIMEOUT.as_secs());
    let mut c = connect(addr, pin).map_err(|e| format!("connect: {e}"))?;
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: defib-bench\r\n");
    if method == "PUT" {
        req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    req.push_str("Connection: close\r\n\r\n");
    let mut out = req.into_bytes();
    out.extend_from_slice(body);
    c.write_all(&out).map_err(|e| format!("sending: {e}"))?;
    // The head, then whatever of the body came with it.
    let mut head = Vec::new();
    let (status, length, rest) = loop {
        if start.elapsed() > CLIENT_TIMEOUT {
            return Err(late());
        }
        let n = c.read(buf).map_err(|e| format!("reading: {e}"))?;
        if n == 0 {
            return Err("closed before a whole HTTP head".into());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            let (status, length) =
                parse_head(&head[..end + 4]).ok_or("an answer that is not HTTP/1.x")?;
            break (status, length, (head.len() - end - 4) as u64);
        }
        if head.len() > 16 * 1024 {
            return Err("an HTTP head over 16 KiB".into());
        }
    };
    let mut got = rest;
    *bytes += rest;
    loop {
        if length.is_some_and(|l| got >= l) {
            break;
        }
        if start.elapsed() > CLIENT_TIMEOUT {
            return Err(late());
        }
        let n = c.read(buf).map_err(|e| format!("reading: {e}"))?;
        if n == 0 {
            break;
        }
        got += n as u64;
        *bytes += n as u64;
    }
    if let Some(l) = length {
        if got != l {
            return Err(format!("{got} body bytes, Content-Length said {l}"));
        }
    }
    Ok((status, got))
}

/// Status code and Content-Length of an HTTP/1.x response head.
pub fn parse_head(head: &[u8]) -> Option<(u16, Option<u64>)> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut status = lines.next()?.split(' ');
    if !status.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code: u16 = status.next()?.parse().ok()?;
    let length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok());
    Some((code, length))
}

/// `http://HOST[:PORT]/PATH` as (`HOST[:PORT]`, `/PATH`).
pub fn split_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("http://")?;
    let slash = rest.find('/')?;
    Some((rest[..slash].to_string(), rest[slash..].to_string()))
}

/// A report as the rescue writes one (docs/report-format.md), a few KiB:
/// one Windows installation repaired by the McAfee playbook, with boot
/// timings, modules and the network section. `machine` is its computer
/// name, unique per client, so each arrives as its own report.
pub fn report_body(machine: &str, i: usize) -> Vec<u8> {
    let modules: Vec<String> = (0..40).map(|k| format!("module_{k:02}")).collect();
    let steps = [
        "mount", "banner", "modules", "devices", "efivarfs", "medium", "probe", "evaluate",
    ];
    let v = serde_json::json!({
        "schema": defib_rescue::report::SCHEMA,
        "defib_version": "0.1.0",
        "run_id": format!("20261129T060000Z-{i:08x}"),
        "started": "2026-11-29T06:00:00Z",
        "finished": "2026-11-29T06:00:41Z",
        "build_id": "f7083133956ea91b",
        "machine": {
            "product_uuid": format!("5eed0000-defb-4000-8000-{i:012x}"),
            "product_serial": format!("SN-{machine}"),
            "sys_vendor": "LENOVO",
            "product_name": "ThinkCentre M720q"
        },
        "boot": {
            "firmware": "bios",
            "secure_boot": false,
            "mode": "auto",
            "medium": "pxe",
            "kernel": "6.12.118+deb13-amd64",
            "cmdline": "console=tty0 quiet panic=10 defib.mode=auto defib.medium=pxe \
                        ip=10.79.0.2::10.79.0.1:255.255.255.0 BOOTIF=01-52-54-00-12-34-56 \
                        defib.report=http://10.79.0.1/defib-reports/",
            "timings": steps.iter().map(|s| serde_json::json!({"step": s, "seconds": 0.125}))
                .collect::<Vec<_>>()
        },
        "modules": {"loaded": 40, "carried": 80, "names": modules, "failed": [],
                    "not_applicable": ["kernel/drivers/hv/hv_vmbus.ko.xz"]},
        "volumes": [
            {"device": "sda1", "size_bytes": 104857600u64, "fs": "fat", "bus": "ata",
             "removable": false, "partition": true, "boot_medium": false},
            {"device": "sda2", "size_bytes": 255_060_000_000u64, "fs": "ntfs", "bus": "ata",
             "removable": false, "partition": true, "boot_medium": false}
        ],
        "windows": [{
            "volume": "sda2",
            "identity": {"windows_dir": "WINDOWS", "product_name": "Microsoft Windows XP",
                         "version": "5.1", "build": 2600, "ubr": null,
                         "service_pack": "Service Pack 3", "display_version": null,
                         "arch": "x86", "computer_name": machine, "notes": []},
            "state": {"dirty": false, "hibernation": "none", "written": true,
                      "ntfs_serial": "7A3C11D2E0F1A9B4"},
            "playbooks": [{
                "id": "mcafee-dat-5958",
                "title": "McAfee DAT 5958 quarantined svchost.exe",
                "status": "repaired",
                "reason": "repaired and verified",
                "conditions": [{"id": "svchost-missing", "kind": "missing", "held": true,
                                "detail": "WINDOWS\\system32\\svchost.exe is missing",
                                "error": false}],
                "actions": [{"kind": "restore", "path": "WINDOWS\\system32\\svchost.exe",
                             "status": "done",
                             "detail": "written from the dllcache copy and verified",
                             "source": "WINDOWS\\system32\\dllcache\\svchost.exe \
                                        (version 5.1.2600.5512)",
                             "sha256_after": "8d3a0cbd9c5e06a7c5fbcd7b1a1e3bb7\
                                              a4f2d1e0c3b5a6978f0e1d2c3b4a5968"}]
            }],
            "run_dir": format!("\\defib\\20261129T060000Z-{i:08x}"),
            "verdict": "repaired",
            "reason": "repaired: mcafee-dat-5958",
            "next_step": "Windows should start normally",
            "boot_health": {"bcd": {"status": "pre-vista", "dirty": false},
                            "pending": {"pending_xml": false, "file_rename_operations": 0},
                            "power": {"hiberfil": "none", "hiberboot_enabled": null},
                            "findings": []}
        }],
        "messages": [],
        "network": {"interface": "eth0", "mac": "52:54:00:12:34:56",
                    "address": "10.79.0.2/24", "url": "http://10.79.0.1/defib-reports/"},
        "verdict": "repaired"
    });
    serde_json::to_vec_pretty(&v).unwrap_or_default()
}

/// `(ppid, utime + stime)` from a /proc/PID/stat line (proc(5): the
/// command name is in parentheses and may hold spaces and parentheses, so
/// the fields are counted from the last `)`).
pub fn parse_stat(line: &str) -> Option<(u32, u64)> {
    let rest = &line[line.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): ppid is field 4, utime 14, stime 15.
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// The processes whose parent is `pid` (nginx's workers).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(d) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    d.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|l| parse_stat(&l))
                .is_some_and(|(ppid, _)| ppid == pid)
        })
        .collect()
}

/// CPU time (clock ticks, user + system) of nginx's master and workers.
fn cpu_ticks(master: u32) -> Option<u64> {
    let mut all = vec![master];
    all.extend(children_of(master));
    all.iter()
        .map(|p| {
            let l = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            Some(parse_stat(&l)?.1)
        })
        .sum()
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// The soft "Max open files" of a process, from /proc/PID/limits.
fn open_file_limit(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The clients' one socket each must not hit this process's soft limit.
fn raise_open_file_limit() {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut l: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) == 0 && l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
}

/// Seconds to move `machines` × `bytes_per_machine` over a link of
/// `bits_per_s`, with `overhead` (0.05 = 5 %) on top for the protocols.
pub fn wire_seconds(bytes_per_machine: u64, machines: u64, bits_per_s: f64, overhead: f64) -> f64 {
    bytes_per_machine as f64 * machines as f64 * 8.0 * (1.0 + overhead) / bits_per_s
}

/// Which limits the fleet: the slower of the wire and the server.
pub fn bottleneck(wire_s: f64, server_s: f64) -> &'static str {
    if wire_s >= server_s {
        "the wire"
    } else {
        "the server"
    }
}

/// `3 min 22 s`, `41.5 s`.
pub fn minutes(s: f64) -> String {
    if s < 60.0 {
        format!("{s:.1} s")
    } else {
        let whole = s.round() as u64;
        format!("{} min {:02} s", whole / 60, whole % 60)
    }
}

/// `24.1 MiB`, `3.9 KiB`, `1.52 GiB`.
pub fn human_bytes(n: u64) -> String {
    let f = n as f64;
    if f >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.2} GiB", f / (1024.0 * 1024.0 * 1024.0))
    } else if f >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", f / (1024.0 * 1024.0))
    } else if f >= 1024.0 {
        format!("{:.1} KiB", f / 1024.0)
    } else {
        format!("{n} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_fields_are_counted_from_the_last_parenthesis() {
        // A real line's shape (proc(5)), with a name holding ") (".
        let line = "4242 (nginx: a) (b) S 4241 4242 4242 0 -1 4194560 1049 0 0 0 \
                    37 12 0 0 20 0 1 0 123456 11206656 1394 18446744073709551615";
        assert_eq!(parse_stat(line), Some((4241, 49)));
        assert_eq!(parse_stat("17 (x) S 1 2"), None, "too few fields");
        assert_eq!(parse_stat("no parenthesis"), None);
        let own = std::fs::read_to_string("/proc/self/stat").unwrap();
        let (ppid, _) = parse_stat(&own).unwrap();
        assert_eq!(ppid, std::os::unix::process::parent_id());
    }

    #[test]
    fn wire_time_and_bottleneck() {
        // 25,000,000 bytes × 1000 × 8 = 2e11 bits; +5 % = 2.1e11 bits.
        let w1 = wire_seconds(25_000_000, 1000, 1e9, 0.05);
        assert!((w1 - 210.0).abs() < 1e-9, "{w1}");
        let w10 = wire_seconds(25_000_000, 1000, 10e9, 0.05);
        assert!((w10 - 21.0).abs() < 1e-9, "{w10}");
        assert_eq!(wire_seconds(0, 1000, 1e9, 0.05), 0.0);
        // A server moving 1 GB/s takes 25 s for the same bytes.
        assert_eq!(bottleneck(w1, 25.0), "the wire");
        assert_eq!(bottleneck(w10, 25.0), "the server");
        assert_eq!(minutes(210.0), "3 min 30 s");
        assert_eq!(minutes(21.04), "21.0 s");
        assert_eq!(minutes(59.96), "60.0 s");
    }

    #[test]
    fn http_heads_and_urls() {
        let h = b"HTTP/1.1 200 OK\r\nServer: nginx\r\ncontent-length: 1234\r\n\r\n";
        assert_eq!(parse_head(h), Some((200, Some(1234))));
        assert_eq!(
            parse_head(b"HTTP/1.1 201 Created\r\nLocation: x\r\n\r\n"),
            Some((201, None))
        );
        assert_eq!(parse_head(b"SSH-2.0-OpenSSH\r\n\r\n"), None);
        assert_eq!(parse_head(b"HTTP/1.1 abc\r\n\r\n"), None);
        assert_eq!(
            split_url("http://10.79.0.1/defib-reports/"),
            Some(("10.79.0.1".into(), "/defib-reports/".into()))
        );
        assert_eq!(
            split_url("http://10.79.0.1:8080/defib/"),
            Some(("10.79.0.1:8080".into(), "/defib/".into()))
        );
        assert_eq!(split_url("https://x/"), None);
    }

    #[test]
    fn the_report_body_is_a_report_defib_serve_takes() {
        let b = report_body("LOAD0100-PC0042", 42);
        assert!((2048..16384).contains(&b.len()), "{} bytes", b.len());
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        defib_builder::fleet::check_report(&v).unwrap();
        assert_eq!(
            v["windows"][0]["identity"]["computer_name"],
            "LOAD0100-PC0042"
        );
        assert_eq!(human_bytes(b.len() as u64).split(' ').nth(1), Some("KiB"));
        assert_eq!(human_bytes(25 * 1024 * 1024 + 100), "25.0 MiB");
        assert_eq!(human_bytes(512), "512 B");
    }
}

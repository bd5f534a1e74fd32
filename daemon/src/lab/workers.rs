//! The processes that live inside the lab, all the `flowpol` binary under hidden subcommands:
//! a server per container (answers on every declared port), the cluster DNS (kube-dns), the
//! kubelet stand-in (probes) and the client that plays `traffic.yaml`.
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use serde::{Deserialize, Serialize};

use super::plan::CLUSTER_DOMAIN;
use super::scenario::{IpFamily, Proto};

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("{what}: {err}")]
    Io { what: String, err: std::io::Error },
    #[error("{0}: {1}")]
    Parse(PathBuf, String),
    #[error("listen spec {0:?}: write PORT/TCP or PORT/UDP")]
    ListenSpec(String),
    #[error("probes did not pass: {0}")]
    Probes(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> WorkerError {
    let what = what.into();
    move |err| WorkerError::Io { what, err }
}

const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// `8080/TCP` → (8080, TCP).
pub fn parse_listen(spec: &str) -> Result<(u16, Proto), WorkerError> {
    let bad = || WorkerError::ListenSpec(spec.to_string());
    let (port, proto) = spec.split_once('/').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let proto = match proto {
        "TCP" | "tcp" => Proto::Tcp,
        "UDP" | "udp" => Proto::Udp,
        _ => return Err(bad()),
    };
    Ok((port, proto))
}

fn bind_tcp(port: u16) -> std::io::Result<TcpListener> {
    // [::] is dual-stack (bindv6only=0); fall back to IPv4 where IPv6 is off.
    TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))
        .or_else(|_| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
}

fn bind_udp(port: u16) -> std::io::Result<UdpSocket> {
    UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port))
        .or_else(|_| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)))
}

fn touch(path: &Path) -> Result<(), WorkerError> {
    std::fs::write(path, b"ready\n").map_err(io(format!("ready file {}", path.display())))
}

/// Reads the request to its end (the lab's clients and probes half-close after writing), then
/// answers. Reading everything first matters: closing a socket with unread data makes the kernel
/// drop it (and a capture would report that as a drop). A peer that sent nothing (a tcpSocket
/// probe) gets no answer, as most servers give none.
fn answer_tcp(mut stream: TcpStream, name: &str, port: u16) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                request.extend_from_slice(&buf[..n]);
                if request.len() > 64 * 1024 {
                    break;
                }
            }
        }
    }
    if request.is_empty() {
        return;
    }
    let body = format!("flowpol-lab {name} port {port}\n");
    let reply = if request.starts_with(b"GET ") || request.starts_with(b"HEAD ") {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    } else {
        body
    };
    let _ = stream.write_all(reply.as_bytes());
    let _ = stream.shutdown(std::net::Shutdown::Write);
}

/// Listens on every port and answers each connection/datagram with one line; never returns
/// unless a port cannot be bound.
pub fn serve(
    name: &str,
    listen: &[(u16, Proto)],
    ready_file: Option<&Path>,
) -> Result<(), WorkerError> {
    let mut handles = Vec::new();
    for &(port, proto) in listen {
        let name = name.to_string();
        match proto {
            Proto::Tcp => {
                let l = bind_tcp(port).map_err(io(format!("listen on {port}/TCP")))?;
                handles.push(std::thread::spawn(move || {
                    for stream in l.incoming().flatten() {
                        let name = name.clone();
                        std::thread::spawn(move || answer_tcp(stream, &name, port));
                    }
                }));
            }
            Proto::Udp => {
                let sock = bind_udp(port).map_err(io(format!("listen on {port}/UDP")))?;
                handles.push(std::thread::spawn(move || {
                    let mut buf = [0u8; 2048];
                    let reply = format!("flowpol-lab {name} port {port}\n");
                    while let Ok((_, from)) = sock.recv_from(&mut buf) {
                        let _ = sock.send_to(reply.as_bytes(), from);
                    }
                }));
            }
        }
    }
    if let Some(p) = ready_file {
        touch(p)?;
    }
    if handles.is_empty() {
        // A container without ports still lives, as its pod does.
        loop {
            std::thread::park();
        }
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

/// DNS records: lower-case FQDN without the trailing dot → addresses.
pub type Records = BTreeMap<String, Vec<IpAddr>>;

/// Answers one DNS query message from the lab's records (authoritative for cluster.local).
pub fn dns_answer(records: &Records, request: &[u8]) -> Option<Vec<u8>> {
    let req = Message::from_vec(request).ok()?;
    let mut resp = Message::new();
    resp.set_id(req.id())
        .set_message_type(MessageType::Response)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(req.recursion_desired())
        .set_authoritative(true);
    let Some(q) = req.queries().first().cloned() else {
        resp.set_response_code(ResponseCode::FormErr);
        return resp.to_vec().ok();
    };
    resp.add_query(q.clone());
    let name = q.name().to_lowercase().to_ascii();
    let name = name.trim_end_matches('.');
    match records.get(name) {
        Some(ips) => {
            for ip in ips {
                let rdata = match (ip, q.query_type()) {
                    (IpAddr::V4(a), RecordType::A) => RData::A(A(*a)),
                    (IpAddr::V6(a), RecordType::AAAA) => RData::AAAA(AAAA(*a)),
                    _ => continue,
                };
                resp.add_answer(Record::from_rdata(q.name().clone(), 5, rdata));
            }
            resp.set_response_code(ResponseCode::NoError);
        }
        None if name == CLUSTER_DOMAIN || name.ends_with(&format!(".{CLUSTER_DOMAIN}")) => {
            resp.set_response_code(ResponseCode::NXDomain);
        }
        // No upstream: the lab never leaves the machine.
        None => {
            resp.set_response_code(ResponseCode::Refused);
        }
    }
    resp.to_vec().ok()
}

pub fn load_records(path: &Path) -> Result<Records, WorkerError> {
    let text = std::fs::read_to_string(path).map_err(io(format!("records {}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| WorkerError::Parse(path.to_path_buf(), e.to_string()))
}

/// The cluster DNS: UDP and TCP 53 (or `port`).
pub fn dns(records: Records, port: u16, ready_file: Option<&Path>) -> Result<(), WorkerError> {
    let records = std::sync::Arc::new(records);
    let udp = bind_udp(port).map_err(io(format!("listen on {port}/UDP")))?;
    let tcp = bind_tcp(port).map_err(io(format!("listen on {port}/TCP")))?;
    let r = records.clone();
    let udp_thread = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            if let Some(out) = dns_answer(&r, &buf[..n]) {
                let _ = udp.send_to(&out, from);
            }
        }
    });
    if let Some(p) = ready_file {
        touch(p)?;
    }
    for stream in tcp.incoming().flatten() {
        let r = records.clone();
        std::thread::spawn(move || {
            let mut stream = stream;
            let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
            loop {
                let mut len = [0u8; 2];
                if stream.read_exact(&mut len).is_err() {
                    break;
                }
                let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
                if stream.read_exact(&mut msg).is_err() {
                    break;
                }
                let Some(out) = dns_answer(&r, &msg) else {
                    break;
                };
                let Ok(out_len) = u16::try_from(out.len()) else {
                    break;
                };
                if stream.write_all(&out_len.to_be_bytes()).is_err()
                    || stream.write_all(&out).is_err()
                {
                    break;
                }
            }
        });
    }
    let _ = udp_thread.join();
    Ok(())
}

/// Resolves `name` through a DNS server the way glibc does for a pod (ndots:5 + search list).
pub fn resolve(
    server: SocketAddr,
    name: &str,
    search: &[String],
    family: IpFamily,
    tcp: bool,
) -> Result<Vec<IpAddr>, String> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let rtype = match family {
        IpFamily::IPv4 => RecordType::A,
        IpFamily::IPv6 => RecordType::AAAA,
    };
    let absolute = name.ends_with('.');
    let mut candidates = Vec::new();
    if !absolute && name.matches('.').count() < 5 {
        candidates.extend(search.iter().map(|s| format!("{name}.{s}.")));
    }
    candidates.push(if absolute {
        name.to_string()
    } else {
        format!("{name}.")
    });
    let mut last = String::new();
    for (i, fqdn) in candidates.iter().enumerate() {
        let qname = Name::from_ascii(fqdn).map_err(|e| format!("name {fqdn:?}: {e}"))?;
        let mut msg = Message::new();
        msg.set_id(0x4000 + i as u16)
            .set_recursion_desired(true)
            .add_query(Query::query(qname, rtype));
        let bytes = msg.to_vec().map_err(|e| e.to_string())?;
        let answer = if tcp {
            dns_tcp_exchange(server, &bytes)
        } else {
            dns_udp_exchange(server, &bytes)
        }
        .map_err(|e| format!("DNS query {fqdn} to {server}: {e}"))?;
        let resp = Message::from_vec(&answer).map_err(|e| format!("DNS answer: {e}"))?;
        if resp.response_code() == ResponseCode::NoError {
            let ips: Vec<IpAddr> = resp
                .answers()
                .iter()
                .filter_map(|r| r.data().ip_addr())
                .collect();
            if !ips.is_empty() {
                return Ok(ips);
            }
        }
        last = format!("{fqdn}: {}", resp.response_code());
    }
    Err(format!("could not resolve {name} ({last})"))
}

fn dns_udp_exchange(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let bind: SocketAddr = if server.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(bind)?;
    sock.connect(server)?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut buf = [0u8; 4096];
    let mut last = None;
    for _ in 0..3 {
        sock.send(query)?;
        match sock.recv(&mut buf) {
            Ok(n) => return Ok(buf[..n].to_vec()),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no answer")))
}

fn dns_tcp_exchange(server: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&server, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    let len = u16::try_from(query.len()).map_err(std::io::Error::other)?;
    s.write_all(&len.to_be_bytes())?;
    s.write_all(query)?;
    let mut l = [0u8; 2];
    s.read_exact(&mut l)?;
    let mut out = vec![0u8; usize::from(u16::from_be_bytes(l))];
    s.read_exact(&mut out)?;
    Ok(out)
}

/// One connection a client made, as it reports it (one JSON line each).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    /// Index of the connection in traffic.yaml.
    pub connection: usize,
    pub client: String,
    pub target: String,
    pub address: Option<IpAddr>,
    pub port: u16,
    pub protocol: Proto,
    pub ok: bool,
    pub reply: Option<String>,
    pub error: Option<String>,
    pub millis: u64,
}

pub struct ClientSpec {
    pub connection: usize,
    pub client: String,
    pub targets: Vec<String>,
    pub port: u16,
    pub protocol: Proto,
    pub count: u32,
    pub dns: Option<IpAddr>,
    pub search: Vec<String>,
    pub family: IpFamily,
    pub dns_tcp: bool,
}

/// Dials one address and returns the server's answer.
pub fn dial(addr: SocketAddr, protocol: Proto, hello: &str) -> Result<String, String> {
    match protocol {
        Proto::Tcp => {
            let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(IO_TIMEOUT))
                .map_err(|e| e.to_string())?;
            s.write_all(hello.as_bytes()).map_err(|e| e.to_string())?;
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut out = String::new();
            s.read_to_string(&mut out).map_err(|e| e.to_string())?;
            if out.is_empty() {
                return Err("connection closed without an answer".into());
            }
            Ok(out)
        }
        Proto::Udp => {
            let bind: SocketAddr = if addr.is_ipv4() {
                (Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let s = UdpSocket::bind(bind).map_err(|e| e.to_string())?;
            s.connect(addr).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(2)))
                .map_err(|e| e.to_string())?;
            let mut buf = [0u8; 2048];
            s.send(hello.as_bytes()).map_err(|e| e.to_string())?;
            let n = s.recv(&mut buf).map_err(|e| e.to_string())?;
            Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
        }
    }
}

/// Makes `count` connections to every target, printing one JSON [`Attempt`] per line.
pub fn client(spec: &ClientSpec, out: &mut dyn Write) -> Result<usize, WorkerError> {
    let mut failures = 0;
    for target in &spec.targets {
        for _ in 0..spec.count {
            let start = Instant::now();
            let resolved = match spec.dns {
                Some(dns) => resolve(
                    SocketAddr::new(dns, 53),
                    target,
                    &spec.search,
                    spec.family,
                    spec.dns_tcp,
                ),
                None => target
                    .parse::<IpAddr>()
                    .map(|ip| vec![ip])
                    .map_err(|e| format!("{target}: {e}")),
            };
            let (address, result) = match resolved {
                Ok(ips) => {
                    let ip = ips[0];
                    (
                        Some(ip),
                        dial(
                            SocketAddr::new(ip, spec.port),
                            spec.protocol,
                            &format!("hello from {}\n", spec.client),
                        ),
                    )
                }
                Err(e) => (None, Err(e)),
            };
            let attempt = Attempt {
                connection: spec.connection,
                client: spec.client.clone(),
                target: target.clone(),
                address,
                port: spec.port,
                protocol: spec.protocol,
                ok: result.is_ok(),
                reply: result.as_ref().ok().map(|s| s.trim().to_string()),
                error: result.err(),
                millis: start.elapsed().as_millis() as u64,
            };
            if !attempt.ok {
                failures += 1;
            }
            let line = serde_json::to_string(&attempt).map_err(|e| WorkerError::Io {
                what: "client output".into(),
                err: std::io::Error::other(e),
            })?;
            writeln!(out, "{line}").map_err(io("client output"))?;
        }
    }
    Ok(failures)
}

/// One probe the kubelet stand-in runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbeJob {
    pub pod: String,
    pub kind: String,
    pub address: IpAddr,
    pub port: u16,
    pub http_path: Option<String>,
}

fn probe_once(p: &ProbeJob) -> Result<(), String> {
    let addr = SocketAddr::new(p.address, p.port);
    match &p.http_path {
        Some(path) => {
            let reply = dial(
                addr,
                Proto::Tcp,
                &format!(
                    "GET {path} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: kube-probe/1.33\r\nConnection: close\r\n\r\n",
                    p.address, p.port
                ),
            )?;
            let status = reply.split_whitespace().nth(1).unwrap_or("");
            if status.starts_with('2') || status.starts_with('3') {
                Ok(())
            } else {
                Err(format!("HTTP status {status:?}"))
            }
        }
        // Connect, then close politely (half-close, wait for the server's close), so no
        // segment arrives at an already closed socket.
        None => {
            let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).map_err(|e| e.to_string())?;
            let _ = s.set_read_timeout(Some(IO_TIMEOUT));
            let _ = s.shutdown(std::net::Shutdown::Write);
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
            Ok(())
        }
    }
}

/// Probes every job until each has passed once (or `deadline`), writes the ready file, then
/// probes again every `period` until killed.
pub fn kubelet(
    jobs: &[ProbeJob],
    period: Duration,
    deadline: Duration,
    ready_file: Option<&Path>,
) -> Result<(), WorkerError> {
    let start = Instant::now();
    let mut pending: Vec<&ProbeJob> = jobs.iter().collect();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for p in pending {
            match probe_once(p) {
                Ok(()) => eprintln!("probe ok: {} {} {}:{}", p.pod, p.kind, p.address, p.port),
                Err(e) => {
                    if start.elapsed() > deadline {
                        return Err(WorkerError::Probes(format!(
                            "{} {} {}:{}: {e}",
                            p.pod, p.kind, p.address, p.port
                        )));
                    }
                    still.push(p);
                }
            }
        }
        pending = still;
        if !pending.is_empty() {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    if let Some(f) = ready_file {
        touch(f)?;
    }
    loop {
        std::thread::sleep(period);
        for p in jobs {
            if let Err(e) = probe_once(p) {
                eprintln!(
                    "probe failed: {} {} {}:{}: {e}",
                    p.pod, p.kind, p.address, p.port
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records() -> Records {
        [(
            "web.shop.svc.cluster.local".to_string(),
            vec![
                "10.96.0.100".parse().unwrap(),
                "fd00:10:96::64".parse().unwrap(),
            ],
        )]
        .into()
    }

    fn query(name: &str, t: RecordType) -> Vec<u8> {
        let mut m = Message::new();
        m.set_id(7)
            .add_query(Query::query(Name::from_ascii(name).unwrap(), t));
        m.to_vec().unwrap()
    }

    #[test]
    fn dns_answers_a_and_aaaa_and_nxdomain() {
        let r = records();
        let a = Message::from_vec(
            &dns_answer(&r, &query("web.shop.svc.cluster.local.", RecordType::A)).unwrap(),
        )
        .unwrap();
        assert_eq!(a.id(), 7);
        assert_eq!(a.answers().len(), 1);
        assert_eq!(
            a.answers()[0].data().ip_addr(),
            Some("10.96.0.100".parse().unwrap())
        );
        let aaaa = Message::from_vec(
            &dns_answer(&r, &query("WEB.shop.svc.cluster.local.", RecordType::AAAA)).unwrap(),
        )
        .unwrap();
        assert_eq!(
            aaaa.answers()[0].data().ip_addr(),
            Some("fd00:10:96::64".parse().unwrap())
        );
        let nx = Message::from_vec(
            &dns_answer(&r, &query("nope.shop.svc.cluster.local.", RecordType::A)).unwrap(),
        )
        .unwrap();
        assert_eq!(nx.response_code(), ResponseCode::NXDomain);
        let out =
            Message::from_vec(&dns_answer(&r, &query("example.com.", RecordType::A)).unwrap())
                .unwrap();
        assert_eq!(out.response_code(), ResponseCode::Refused);
    }

    #[test]
    fn resolver_walks_the_search_list_over_udp_and_tcp() {
        // A real DNS server on loopback, an ephemeral port.
        let r = std::sync::Arc::new(records());
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        let tcp = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let r2 = r.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok((n, from)) = udp.recv_from(&mut buf) {
                let out = dns_answer(&r2, &buf[..n]).unwrap();
                udp.send_to(&out, from).unwrap();
            }
        });
        std::thread::spawn(move || {
            for s in tcp.incoming().flatten() {
                let mut s = s;
                let mut l = [0u8; 2];
                s.read_exact(&mut l).unwrap();
                let mut m = vec![0u8; usize::from(u16::from_be_bytes(l))];
                s.read_exact(&mut m).unwrap();
                let out = dns_answer(&r, &m).unwrap();
                s.write_all(&(out.len() as u16).to_be_bytes()).unwrap();
                s.write_all(&out).unwrap();
            }
        });
        let server: SocketAddr = ([127, 0, 0, 1], port).into();
        let search = vec![
            "other.svc.cluster.local".to_string(),
            "svc.cluster.local".to_string(),
            "cluster.local".to_string(),
        ];
        let ips = resolve(server, "web.shop", &search, IpFamily::IPv4, false).unwrap();
        assert_eq!(ips, vec!["10.96.0.100".parse::<IpAddr>().unwrap()]);
        let ips = resolve(server, "web.shop", &search, IpFamily::IPv4, true).unwrap();
        assert_eq!(ips.len(), 1);
        let err = resolve(server, "nothing", &search, IpFamily::IPv4, false).unwrap_err();
        assert!(err.contains("could not resolve nothing"), "{err}");
    }

    #[test]
    fn listen_specs_parse() {
        assert_eq!(parse_listen("53/UDP").unwrap(), (53, Proto::Udp));
        assert!(parse_listen("53").is_err());
        assert!(parse_listen("x/TCP").is_err());
    }
}

//! TCP connection load for the lab benchmarks (`scripts/bench-pods.sh`, `scripts/soak.sh`):
//! a server that answers short connections and a client that opens them flat-out.
//!
//!     bench_conn server --listen 10.0.0.2 --ports 9000-9003 [--threads 4]
//!     bench_conn client --server 10.0.0.2 --ports 9000-9003 --seconds 30 [--threads 8]
//!                       [--bind 10.0.0.3 --unique] [--rate N] [--warmup 5]
//!                       [--timeline FILE] [--stop-file FILE]
//!
//! One connection: connect, send one byte, the server reads it and closes first (so TIME_WAIT
//! sits on the server side and the client's ports stay free), the client reads EOF and closes.
//! `--unique` binds each connection to its own (source port, destination port) pair, so every
//! connection of a run is a distinct 5-tuple (what a flow recorder must tell apart). The client
//! prints one line of `key=value` figures: completed, failed, seconds, rate (connections/s),
//! min_1s and max_1s (slowest and fastest whole second). With `--warmup S` the client connects
//! for S seconds first and counts only the `--seconds` after them (`warmup_connections` says how
//! many came before). `--timeline FILE` records the running count every 100 ms, so that a
//! script can read the rate of any window of one long run (`scripts/bench-pods.sh` switches the
//! agent on and off inside one run); `--stop-file FILE` ends the run once FILE exists.
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::FromRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Accept on every port, read one byte, close.
    Server {
        #[arg(long)]
        listen: IpAddr,
        /// A port or a range `FROM-TO`.
        #[arg(long)]
        ports: String,
        /// Accepting threads per port.
        #[arg(long, default_value_t = 4)]
        threads: usize,
    },
    /// Open connections for `--seconds` and print the achieved rate.
    Client {
        #[arg(long)]
        server: IpAddr,
        #[arg(long)]
        ports: String,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 8)]
        threads: usize,
        /// Source address (with --unique: required).
        #[arg(long)]
        bind: Option<IpAddr>,
        /// Every connection on its own (source port, destination port) pair.
        #[arg(long, requires = "bind")]
        unique: bool,
        /// With --unique: start over at the first pair once all are used (long runs; pick
        /// enough ports that a pair comes back only after TIME_WAIT, 60 s).
        #[arg(long, requires = "unique")]
        wrap: bool,
        /// Lowest source port used with --unique.
        #[arg(long, default_value_t = 1024)]
        sport_from: u16,
        /// Offered rate in connections/s across all threads (0: as fast as they go).
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Rewrite this file every second with `completed failed` so far (long runs).
        #[arg(long)]
        progress: Option<std::path::PathBuf>,
        /// Connect for this many seconds before the measured `--seconds`, uncounted: lets
        /// whatever runs beside the load (an agent's periodic drains) reach its steady state.
        #[arg(long, default_value_t = 0)]
        warmup: u64,
        /// Append `UNIX_SECONDS COMPLETED` to this file every 100 ms, from the start (warm-up
        /// included): the rate over any window is read from it afterwards, e.g. while another
        /// process switches the capture on and off during one run.
        #[arg(long)]
        timeline: Option<std::path::PathBuf>,
        /// End the run early once this file exists (checked every second): a script that
        /// drives a long `--timeline` run stops it when its last window is done.
        #[arg(long)]
        stop_file: Option<std::path::PathBuf>,
    },
}

fn port_range(s: &str) -> anyhow::Result<Vec<u16>> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let a: u16 = a
        .parse()
        .with_context(|| format!("--ports {s:?}: not a port"))?;
    let b: u16 = b
        .parse()
        .with_context(|| format!("--ports {s:?}: not a port"))?;
    if a == 0 || b < a {
        bail!("--ports {s:?}: want PORT or FROM-TO with 0 < FROM <= TO");
    }
    Ok((a..=b).collect())
}

fn serve(listen: IpAddr, ports: &[u16], threads: usize) -> anyhow::Result<()> {
    let mut handles = Vec::new();
    for &p in ports {
        let l = Arc::new(
            TcpListener::bind(SocketAddr::new(listen, p)).with_context(|| format!("bind {p}"))?,
        );
        for _ in 0..threads {
            let l = Arc::clone(&l);
            handles.push(std::thread::spawn(move || {
                let mut b = [0u8; 1];
                loop {
                    if let Ok((mut s, _)) = l.accept() {
                        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                        let _ = s.read(&mut b);
                    }
                }
            }));
        }
    }
    println!("listening on {listen} ports {ports:?}");
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

/// A TCP socket bound to `src` (port included), connected to `dst`.
fn connect_from(src: SocketAddr, dst: SocketAddr) -> std::io::Result<TcpStream> {
    fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
        // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let len = match a {
            SocketAddr::V4(v4) => {
                // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
                let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = v4.port().to_be();
                sin.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
                std::mem::size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(v6) => {
                // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
                let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = v6.port().to_be();
                sin6.sin6_addr.s6_addr = v6.ip().octets();
                std::mem::size_of::<libc::sockaddr_in6>()
            }
        };
        (ss, len as libc::socklen_t)
    }
    let family = if src.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket syscalls on a descriptor this function owns; on error it is closed.
    unsafe {
        let fd = libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let stream = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let (s, sl) = sockaddr(src);
        if libc::bind(fd, &s as *const _ as *const libc::sockaddr, sl) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (d, dl) = sockaddr(dst);
        if libc::connect(fd, &d as *const _ as *const libc::sockaddr, dl) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(stream)
    }
}

fn one_connection(stream: std::io::Result<TcpStream>) -> bool {
    let Ok(mut s) = stream else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"x").is_err() {
        return false;
    }
    let mut b = [0u8; 1];
    // The server closes after reading the byte: EOF means the exchange completed.
    matches!(s.read(&mut b), Ok(0))
}

#[allow(clippy::too_many_arguments)]
fn client(
    server: IpAddr,
    ports: &[u16],
    seconds: u64,
    threads: usize,
    bind: Option<IpAddr>,
    unique: bool,
    wrap: bool,
    sport_from: u16,
    rate: u64,
    progress: Option<&std::path::Path>,
    warmup: u64,
    timeline: Option<&std::path::Path>,
    stop_file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let threads = threads.max(1);
    let completed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let exhausted = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let sports: u64 = 65536 - sport_from as u64;
    let tuples = sports * ports.len() as u64;
    let started = Instant::now();
    let mut handles = Vec::new();
    for t in 0..threads {
        let (completed, failed, exhausted, stop) = (
            Arc::clone(&completed),
            Arc::clone(&failed),
            Arc::clone(&exhausted),
            Arc::clone(&stop),
        );
        let ports = ports.to_vec();
        handles.push(std::thread::spawn(move || {
            let mut k = t as u64;
            let mut n = 0u64;
            // Offered rate: each thread keeps its share on a fixed schedule.
            let gap = (rate > 0).then(|| Duration::from_secs_f64(threads as f64 / rate as f64));
            while !stop.load(Ordering::Relaxed) {
                if let Some(gap) = gap {
                    let due = started + gap * n as u32;
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                }
                n += 1;
                let stream = if unique {
                    if k >= tuples && wrap {
                        k %= tuples;
                    }
                    if k >= tuples {
                        exhausted.store(true, Ordering::Relaxed);
                        break;
                    }
                    let port = ports[(k % ports.len() as u64) as usize];
                    let sport = sport_from as u64 + k / ports.len() as u64;
                    k += threads as u64;
                    connect_from(
                        SocketAddr::new(bind.expect("clap requires --bind"), sport as u16),
                        SocketAddr::new(server, port),
                    )
                } else {
                    let port = ports[(k % ports.len() as u64) as usize];
                    k += threads as u64;
                    match bind {
                        Some(b) => {
                            connect_from(SocketAddr::new(b, 0), SocketAddr::new(server, port))
                        }
                        None => TcpStream::connect_timeout(
                            &SocketAddr::new(server, port),
                            Duration::from_secs(5),
                        ),
                    }
                };
                if one_connection(stream) {
                    completed.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let timeline = timeline
        .map(|path| {
            let file = std::fs::File::create(path)
                .with_context(|| format!("--timeline {}", path.display()))?;
            let (completed, stop) = (Arc::clone(&completed), Arc::clone(&stop));
            let path = path.to_path_buf();
            Ok::<_, anyhow::Error>(std::thread::spawn(move || {
                record_timeline(file, &completed, &stop)
                    .with_context(|| format!("--timeline {}", path.display()))
            }))
        })
        .transpose()?;
    // The measured window starts after the warm-up: its counts are differences from there.
    // Without one it is the whole run, so every connection made is counted (the storm
    // compares them with the flows stored).
    let (window_started, warm_done, warm_failed) = if warmup == 0 {
        (started, 0, 0)
    } else {
        if let Some(left) = Duration::from_secs(warmup).checked_sub(started.elapsed()) {
            std::thread::sleep(left);
        }
        (
            Instant::now(),
            completed.load(Ordering::Relaxed),
            failed.load(Ordering::Relaxed),
        )
    };
    let mut per_second = Vec::new();
    let mut last = warm_done;
    for s in 1..=seconds {
        let due = window_started + Duration::from_secs(s);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let c = completed.load(Ordering::Relaxed);
        per_second.push(c - last);
        last = c;
        if let Some(p) = progress {
            let f = failed.load(Ordering::Relaxed);
            let tmp = p.with_extension("tmp");
            // Written then renamed, so a reader never sees half a line.
            std::fs::write(&tmp, format!("{c} {f}\n"))
                .and_then(|()| std::fs::rename(&tmp, p))
                .with_context(|| format!("--progress {}", p.display()))?;
        }
        if exhausted.load(Ordering::Relaxed) || stop_file.is_some_and(|p| p.exists()) {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    if let Some(t) = timeline {
        t.join()
            .map_err(|_| anyhow::anyhow!("--timeline: writer panicked"))??;
    }
    let secs = window_started.elapsed().as_secs_f64();
    let done = completed.load(Ordering::Relaxed) - warm_done;
    println!(
        "completed={done} failed={} seconds={secs:.2} rate={:.0} min_1s={} max_1s={} tuples_exhausted={} warmup_connections={warm_done}",
        failed.load(Ordering::Relaxed) - warm_failed,
        done as f64 / secs,
        per_second.iter().min().copied().unwrap_or(0),
        per_second.iter().max().copied().unwrap_or(0),
        exhausted.load(Ordering::Relaxed)
    );
    Ok(())
}

/// Every 100 ms until `stop`: one line `UNIX_SECONDS COMPLETED`, wall-clock time so that a
/// script can place its own `date +%s.%N` marks on the same axis.
fn record_timeline(
    file: std::fs::File,
    completed: &AtomicU64,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(file);
    let tick = Duration::from_millis(100);
    let mut next = Instant::now();
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let c = completed.load(Ordering::Relaxed);
        writeln!(out, "{}.{:09} {c}", now.as_secs(), now.subsec_nanos())?;
        out.flush()?;
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        next += tick;
        if let Some(left) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(left);
        }
    }
}

fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Server {
            listen,
            ports,
            threads,
        } => serve(listen, &port_range(&ports)?, threads),
        Command::Client {
            server,
            ports,
            seconds,
            threads,
            bind,
            unique,
            wrap,
            sport_from,
            rate,
            progress,
            warmup,
            timeline,
            stop_file,
        } => client(
            server,
            &port_range(&ports)?,
            seconds,
            threads,
            bind,
            unique,
            wrap,
            sport_from,
            rate,
            progress.as_deref(),
            warmup,
            timeline.as_deref(),
            stop_file.as_deref(),
        ),
    }
}

//! Test helpers for capture tests: network namespaces on a bridge (the bridge lives
//! in its own namespace, so the host's root namespace is never touched), threads
//! that run inside a namespace, nftables rules, and the agent process. Everything
//! is removed in `Drop`, also when a test fails.
#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Fails the test (never skips) when not root.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc_geteuid() };
    assert_eq!(
        euid, 0,
        "this privileged test needs root (eBPF, network namespaces, nftables): run `sudo make test`"
    );
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
    fn setns(fd: i32, nstype: i32) -> i32;
}
const CLONE_NEWNET: i32 = 0x4000_0000;

pub fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A unique id for this process and test: `fpc<pid>x<n>`.
pub fn unique(prefix: &str) -> (String, u32) {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    (format!("{prefix}{}x{n}", std::process::id()), n)
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Self {
        run("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.exec("ip", &["link", "set", "lo", "up"]);
        ns
    }

    pub fn exec(&self, cmd: &str, args: &[&str]) {
        let mut full = vec!["netns", "exec", &self.name, cmd];
        full.extend_from_slice(args);
        run("ip", &full);
    }

    /// Runs `f` on a thread that has entered this namespace; sockets it opens live there.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
            // SAFETY: valid fd of a network namespace; only this thread switches.
            let rc = unsafe { setns(file.as_raw_fd(), CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns({path}) failed");
            f()
        })
    }

    /// Runs `f` inside the namespace and waits for it.
    pub fn within<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f).join().expect("namespace thread panicked")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// One host on the lab bridge.
pub struct Host {
    pub ns: Netns,
    pub v4: IpAddr,
    pub v6: IpAddr,
}

/// A bridge in its own namespace and `n` hosts attached by veth pairs, with
/// addresses unique to this process and test (the agent sees every namespace).
pub struct Lab {
    pub hosts: Vec<Host>,
    pub hub: Netns,
    /// An address in the hosts' subnet that nobody owns.
    pub silent_v4: IpAddr,
}

impl Lab {
    pub fn new(n: usize) -> Self {
        assert!(n <= 5);
        let (base, idx) = unique("fpc");
        let pid = std::process::id();
        let (o2, o3) = (200 + (pid % 50) as u8, ((pid / 50) % 256) as u8);
        let sub = (idx % 30) as u8 * 8;
        let hub = Netns::new(format!("{base}h"));
        hub.exec("ip", &["link", "add", "br0", "type", "bridge"]);
        hub.exec("ip", &["link", "set", "br0", "up"]);
        let mut hosts = Vec::new();
        for i in 0..n {
            let ns = Netns::new(format!("{base}n{i}"));
            let port = format!("p{i}");
            hub.exec(
                "ip",
                &[
                    "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns.name,
                ],
            );
            hub.exec("ip", &["link", "set", &port, "master", "br0", "up"]);
            let v4 = format!("10.{o2}.{o3}.{}", sub + 1 + i as u8);
            let v6 = format!("fd70:{:x}:{:x}:{idx:x}::{}", pid >> 16, pid & 0xffff, i + 1);
            // No DAD: addresses are usable at once.
            ns.exec("sysctl", &["-qw", "net.ipv6.conf.all.accept_dad=0"]);
            ns.exec("sysctl", &["-qw", "net.ipv6.conf.default.accept_dad=0"]);
            ns.exec("sysctl", &["-qw", "net.ipv6.conf.eth0.accept_dad=0"]);
            ns.exec("ip", &["addr", "add", &format!("{v4}/29"), "dev", "eth0"]);
            ns.exec(
                "ip",
                &["addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"],
            );
            ns.exec("ip", &["link", "set", "eth0", "up"]);
            hosts.push(Host {
                ns,
                v4: v4.parse().unwrap(),
                v6: v6.parse().unwrap(),
            });
        }
        let silent_v4 = format!("10.{o2}.{o3}.{}", sub + 6).parse().unwrap();
        Self {
            hosts,
            hub,
            silent_v4,
        }
    }
}

/// An nftables table in a namespace: `nft -f` of the given ruleset body. The
/// namespace's deletion removes it; `Drop` deletes it earlier.
pub struct NftTable {
    ns: String,
    table: String,
}

impl NftTable {
    pub fn new(ns: &Netns, table: &str, body: &str) -> Self {
        let rules = format!("table inet {table} {{\n{body}\n}}\n");
        let path = std::env::temp_dir().join(format!("{table}-{}.nft", std::process::id()));
        std::fs::write(&path, rules).unwrap();
        ns.exec("nft", &["-f", path.to_str().unwrap()]);
        let _ = std::fs::remove_file(&path);
        Self {
            ns: ns.name.clone(),
            table: table.to_string(),
        }
    }
}

impl Drop for NftTable {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                "nft",
                "delete",
                "table",
                "inet",
                &self.table,
            ])
            .stderr(Stdio::null())
            .status();
    }
}

/// A running `flowpol agent` writing to its own database, killed on drop if a
/// test did not stop it.
pub struct Agent {
    child: Option<Child>,
    pub db: PathBuf,
    stderr_lines: mpsc::Receiver<String>,
    pub log: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Agent {
    /// Starts the agent with a fresh database and waits until its programs are attached.
    pub fn start(extra: &[&str]) -> Self {
        Self::start_in(None, extra)
    }

    /// Like [`Agent::start`], with the agent inside network namespace `netns`
    /// (entered with setns only: its mounts, /proc/mounts and the cgroup v2
    /// root stay the host's, unlike with `ip netns exec`).
    pub fn start_in(netns: Option<&Netns>, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("flows.db");
        Self::start_with_db(netns, db, dir, extra)
    }

    /// Like [`Agent::start_in`], writing to `db` (`dir` is kept until drop).
    pub fn start_with_db(
        netns: Option<&Netns>,
        db: PathBuf,
        dir: tempfile::TempDir,
        extra: &[&str],
    ) -> Self {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flowpol"));
        // Kept open until the child has been spawned.
        let ns_file = netns.map(|ns| File::open(format!("/var/run/netns/{}", ns.name)).unwrap());
        if let Some(file) = &ns_file {
            let fd = file.as_raw_fd();
            // SAFETY: setns is async-signal-safe and `fd` is open during spawn.
            unsafe {
                cmd.pre_exec(move || {
                    if setns(fd, CLONE_NEWNET) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = cmd
            .arg("agent")
            .arg("--db")
            .arg(&db)
            .args(extra)
            .env("FLOWPOL_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting flowpol agent");
        drop(ns_file);
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut agent = Self {
            child: Some(child),
            db,
            stderr_lines: rx,
            log: Vec::new(),
            _dir: dir,
        };
        agent.wait_for_log("capture attached", Duration::from_secs(20));
        agent
    }

    /// Waits until the agent logs a line containing `needle` (panics with the log after `timeout`).
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.stderr_lines.recv_timeout(left) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    self.log.push(line);
                    if hit {
                        return;
                    }
                }
                Err(_) => panic!(
                    "agent did not log {needle:?} within {timeout:?}; log:\n{}",
                    self.log.join("\n")
                ),
            }
        }
    }

    /// Everything the agent has logged so far (takes what is waiting, never blocks).
    #[allow(dead_code)]
    pub fn log_so_far(&mut self) -> String {
        while let Ok(line) = self.stderr_lines.try_recv() {
            self.log.push(line);
        }
        self.log.join("\n")
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Sends SIGKILL (no final drain, no cleanup) and reaps the agent.
    #[allow(dead_code)]
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("agent already stopped");
        run("kill", &["-KILL", &child.id().to_string()]);
        let _ = child.wait();
        while let Ok(line) = self.stderr_lines.recv_timeout(Duration::from_millis(100)) {
            self.log.push(line);
        }
    }

    /// Sends SIGTERM, waits for a clean exit (status 0) and returns the stored
    /// flows as `flowpol flows --db ... -o json` prints them.
    pub fn stop(&mut self) -> Vec<serde_json::Value> {
        let mut child = self.child.take().expect("agent already stopped");
        run("kill", &["-TERM", &child.id().to_string()]);
        let status = child.wait().unwrap();
        while let Ok(line) = self.stderr_lines.recv_timeout(Duration::from_millis(200)) {
            self.log.push(line);
        }
        assert!(
            status.success(),
            "agent exited with {status}; log:\n{}",
            self.log.join("\n")
        );
        stored_flows(&self.db)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `flowpol flows --db PATH -o json`, parsed.
pub fn stored_flows(db: &Path) -> Vec<serde_json::Value> {
    stored_flows_and_losses(db).0
}

/// `flowpol flows --db PATH -o json`: the records (stdout, parsed) and the capture losses
/// its warning reports on stderr, by counter (empty when it reports none).
#[allow(dead_code)]
pub fn stored_flows_and_losses(
    db: &Path,
) -> (
    Vec<serde_json::Value>,
    std::collections::BTreeMap<String, u64>,
) {
    let out = Command::new(env!("CARGO_BIN_EXE_flowpol"))
        .args(["flows", "-o", "json", "--db"])
        .arg(db)
        .output()
        .expect("running flowpol flows");
    assert!(
        out.status.success(),
        "flowpol flows failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let records = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let losses = stderr
        .lines()
        .find_map(|l| l.split_once("undercounted: ").map(|(_, list)| list))
        .into_iter()
        .flat_map(|list| list.split(", "))
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k.to_string(), v.trim().parse().unwrap())
        })
        .collect();
    (records, losses)
}

/// Sum of the records of one flow (a flow spanning several drains has several).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FlowSum {
    pub records: usize,
    pub packets: u64,
    pub bytes: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
    /// TCP connections the records count (SYNs their source sent).
    pub connections: u64,
    /// The source ports of the records (0: a client's ports, aggregated).
    pub src_ports: Vec<u64>,
    pub verdicts: Vec<String>,
    pub drop_reasons: Vec<String>,
}

/// Records from `src` to `dst` (ip, optional port) with the given protocol that
/// were delivered or unanswered (`dropped` records count the dropped packets
/// again: look at them separately).
pub fn flow_sum(
    records: &[serde_json::Value],
    protocol: &str,
    src: (IpAddr, Option<u16>),
    dst: (IpAddr, Option<u16>),
) -> FlowSum {
    let mut s = FlowSum::default();
    for r in records {
        let ip_is = |side: &str, want: IpAddr| {
            r[side]["ip"]
                .as_str()
                .and_then(|t| t.parse::<IpAddr>().ok())
                == Some(want)
        };
        let port_ok =
            |side: &str, want: Option<u16>| want.is_none_or(|p| r[side]["port"] == p as u64);
        if r["protocol"] == protocol
            && r["verdict"] != "dropped"
            && ip_is("src", src.0)
            && ip_is("dst", dst.0)
            && port_ok("src", src.1)
            && port_ok("dst", dst.1)
        {
            s.records += 1;
            s.packets += r["packets"].as_u64().unwrap();
            s.bytes += r["bytes"].as_u64().unwrap();
            s.reply_packets += r["reply_packets"].as_u64().unwrap_or(0);
            s.reply_bytes += r["reply_bytes"].as_u64().unwrap_or(0);
            s.connections += r["connections"].as_u64().unwrap_or(0);
            s.src_ports.push(r["src"]["port"].as_u64().unwrap_or(0));
            s.verdicts.push(r["verdict"].as_str().unwrap().to_string());
            if let Some(d) = r["drop_reason"].as_str() {
                s.drop_reasons.push(d.to_string());
            }
        }
    }
    s
}

/// A counter from the calling thread's namespace: `/proc/thread-self/net/<file>`
/// (`snmp`: "Tcp" "OutSegs"; `netstat`: "IpExt" "OutOctets"; `snmp6`: "Udp6OutDatagrams").
/// Every counter of /proc/net/snmp and /proc/net/netstat of the calling
/// thread's namespace, as `Group.Name` → value (for failure messages).
#[allow(dead_code)]
pub fn all_net_counters() -> std::collections::BTreeMap<String, u64> {
    let mut all = std::collections::BTreeMap::new();
    for file in ["snmp", "netstat"] {
        let text = std::fs::read_to_string(format!("/proc/thread-self/net/{file}")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.chunks(2) {
            let [names, values] = pair else { continue };
            let mut names = names.split_whitespace();
            let group = names.next().unwrap_or("").trim_end_matches(':');
            for (n, v) in names.zip(values.split_whitespace().skip(1)) {
                if let Ok(v) = v.parse() {
                    all.insert(format!("{group}.{n}"), v);
                }
            }
        }
    }
    all
}

/// The counters that differ between two [`all_net_counters`] snapshots.
#[allow(dead_code)]
pub fn changed_counters(
    before: &std::collections::BTreeMap<String, u64>,
    after: &std::collections::BTreeMap<String, u64>,
) -> String {
    after
        .iter()
        .filter_map(|(k, v)| {
            let b = before.get(k).copied().unwrap_or(0);
            (*v != b).then(|| format!("{k}+{}", v.wrapping_sub(b)))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn net_counter(file: &str, group: &str, name: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/thread-self/net/{file}")).unwrap();
    if file == "snmp6" {
        return text
            .lines()
            .find_map(|l| {
                let mut it = l.split_whitespace();
                (it.next()? == name).then(|| it.next()?.parse().ok())?
            })
            .unwrap_or_else(|| panic!("{name} not in {file}"));
    }
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{group}:")))
        .collect();
    assert!(lines.len() >= 2, "{group} not in {file}");
    let names: Vec<&str> = lines[0].split_whitespace().collect();
    let values: Vec<&str> = lines[1].split_whitespace().collect();
    let i = names
        .iter()
        .position(|n| *n == name)
        .unwrap_or_else(|| panic!("{group} {name} not in {file}"));
    values[i].parse().unwrap()
}

/// An empty cgroup v2 directory (under the cgroup2 mount found in /proc/mounts),
/// removed on drop. Attaching the agent there keeps every socket outside it unseen.
pub struct CgroupDir {
    pub path: PathBuf,
}

impl CgroupDir {
    pub fn new() -> Self {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        let root = mounts
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(2) == Some(&"cgroup2")).then(|| f[1].to_string())
            })
            .expect("cgroup2 is not mounted");
        let (name, _) = unique("fpc");
        let path = Path::new(&root).join(name);
        std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        Self { path }
    }
}

impl Drop for CgroupDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.path);
    }
}

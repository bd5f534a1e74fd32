//! The lab: a mini-cluster of network namespaces built from a scenario folder.
//!
//! One node netns per lab (`fpl-<id>-node`) routes between pod netns (`fpl-<id>-<n>`) over
//! point-to-point veths with host routes (no bridge), holds kube-proxy-style nftables DNAT for
//! Services, and the kubelet stand-in's node address. Pod processes run in kubelet-shaped
//! cgroups under `<cgroup2>/flowpol-lab-<id>.slice`. Nothing is created in the root netns, so
//! teardown is: kill the cgroup, delete the netns, remove the cgroups and the state folder.
pub mod cluster;
pub mod enforce;
pub mod net;
pub mod plan;
pub mod report;
pub mod scenario;
pub mod sys;
pub mod workers;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use plan::{Plan, Role};
use scenario::{IpFamily, Proto, Scenario};
use sys::{Placement, RealSys, Sys, SysError};

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error(transparent)]
    Scenario(#[from] scenario::ScenarioError),
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error(transparent)]
    Sys(#[from] SysError),
    #[error(transparent)]
    Enforce(#[from] enforce::EnforceError),
    #[error("the lab needs root (network namespaces, nftables, cgroups); run it with sudo")]
    NotRoot,
    #[error("lab {0:?} is already up (or left over): run `flowpol lab down --lab {0}` first")]
    AlreadyUp(String),
    #[error("lab {0:?} is not up (no {1})")]
    NotUp(String, PathBuf),
    #[error("{0}: {1}")]
    State(PathBuf, String),
    #[error("interrupted during {0}; everything the lab created was removed")]
    Interrupted(String),
    #[error("injected failure at step {0} (FLOWPOL_LAB_FAIL_AT)")]
    Injected(String),
    #[error("{what} did not become ready within {secs}s; its log: {log}")]
    NotReady {
        what: String,
        secs: u64,
        log: String,
    },
    #[error("{0} exited early: {1}")]
    Exited(String, String),
    #[error(
        "traffic.yaml names {0}, which the running lab {1:?} does not have: was it brought up from another scenario?"
    )]
    Mismatch(String, String),
}

type Result<T> = std::result::Result<T, LabError>;

/// Where lab state folders live (`FLOWPOL_LAB_DIR` overrides, for tests).
pub fn state_root() -> PathBuf {
    std::env::var_os("FLOWPOL_LAB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/flowpol/lab"))
}

pub fn state_dir(lab_id: &str) -> PathBuf {
    state_root().join(lab_id)
}

pub const PLAN_FILE: &str = "plan.json";
pub const CLUSTER_FILE: &str = "cluster.yaml";
const DNS_FILE: &str = "dns.json";
const PROBES_FILE: &str = "probes.json";

/// Concurrent `ip` commands and process spawns while building a lab.
const PARALLEL: usize = 8;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// SIGINT/SIGTERM set a flag the lab checks between steps, so it can tear down cleanly.
pub fn install_interrupt_handler() {
    // SAFETY: the handler only stores to an atomic (async-signal-safe).
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Test hooks: `FLOWPOL_LAB_FAIL_AT=<step>` fails that step, `FLOWPOL_LAB_PAUSE_AT=<step>`
/// announces it on stderr and waits (for a signal) before it.
fn step(name: &str) -> Result<()> {
    if interrupted() {
        return Err(LabError::Interrupted(name.into()));
    }
    if std::env::var("FLOWPOL_LAB_PAUSE_AT").as_deref() == Ok(name) {
        eprintln!("lab: paused before step {name}");
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until && !interrupted() {
            std::thread::sleep(Duration::from_millis(20));
        }
        if interrupted() {
            return Err(LabError::Interrupted(name.into()));
        }
    }
    if std::env::var("FLOWPOL_LAB_FAIL_AT").as_deref() == Ok(name) {
        return Err(LabError::Injected(name.into()));
    }
    tracing::debug!(step = name, "lab step");
    Ok(())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A lab that is up, with the processes this process spawned (reaped on teardown).
pub struct Lab {
    pub plan: Plan,
    pub scenario: Scenario,
    pub dir: PathBuf,
    children: Vec<Child>,
}

impl Lab {
    pub fn cluster_file(&self) -> PathBuf {
        self.dir.join(CLUSTER_FILE)
    }
    /// Tears everything down and reaps this process's children.
    pub fn down(mut self) -> Result<()> {
        let r = down(&RealSys, &self.plan.lab_id);
        reap(&mut self.children);
        r
    }
}

fn reap(children: &mut Vec<Child>) {
    for c in children.iter_mut() {
        let _ = c.kill();
        let _ = c.wait();
    }
    children.clear();
}

pub struct UpOptions<'a> {
    pub lab_id: &'a str,
    pub scenario_dir: &'a Path,
    pub binary: PathBuf,
    /// Enforce NetworkPolicies in the node's forward path.
    pub enforce: bool,
    /// NetworkPolicies to use instead of the scenario's.
    pub policies: Vec<PathBuf>,
}

/// Validates the scenario, then builds the lab. On any failure or interrupt everything created
/// so far is removed before the error is returned.
pub fn up(opts: &UpOptions<'_>) -> Result<Lab> {
    let mut scenario = scenario::load(opts.scenario_dir)?;
    if !opts.policies.is_empty() {
        scenario.policies = scenario::load_policies(&opts.policies)?;
    }
    let mut plan = plan::build(opts.lab_id, &scenario)?;
    plan.enforced = opts.enforce;
    let cluster_list = cluster::cluster_list(&plan, &scenario, chrono::Utc::now());
    let cluster_yaml = serde_saphyr::to_string(&cluster_list).expect("a JSON value serializes");
    // Policies are compiled before anything exists, so a bad one creates nothing.
    let policy_rules = if opts.enforce {
        Some(enforce::compile(
            &plan,
            &cluster_list,
            &state_dir(opts.lab_id).join(CLUSTER_FILE),
        )?)
    } else {
        None
    };
    if !is_root() {
        return Err(LabError::NotRoot);
    }
    let cg2 = sys::cgroup2_mount()?;
    let dir = state_dir(opts.lab_id);
    if dir.exists()
        || !net::lab_netns(opts.lab_id).is_empty()
        || cg2.join(&plan.cgroup_root).exists()
    {
        return Err(LabError::AlreadyUp(opts.lab_id.into()));
    }
    let mut children = Vec::new();
    let outputs = Outputs {
        cluster_yaml: &cluster_yaml,
        policy_rules: policy_rules.as_deref(),
    };
    match build(
        &RealSys,
        &plan,
        &outputs,
        &dir,
        &cg2,
        &opts.binary,
        &mut children,
    ) {
        Ok(()) => Ok(Lab {
            plan,
            scenario,
            dir,
            children,
        }),
        Err(e) => {
            tracing::warn!(error = %e, "lab up failed; tearing down");
            let cleanup = down(&RealSys, opts.lab_id);
            reap(&mut children);
            if let Err(c) = cleanup {
                tracing::error!(error = %c, "teardown after failure was incomplete");
            }
            Err(e)
        }
    }
}

fn write_state(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| LabError::State(path.to_path_buf(), e.to_string()))
}

/// Text computed before the lab is built.
struct Outputs<'a> {
    cluster_yaml: &'a str,
    policy_rules: Option<&'a str>,
}

fn build(
    sys: &dyn Sys,
    plan: &Plan,
    out: &Outputs<'_>,
    dir: &Path,
    cg2: &Path,
    binary: &Path,
    children: &mut Vec<Child>,
) -> Result<()> {
    step("state")?;
    sys::mkdir_all(&dir.join("logs"))?;
    sys::mkdir_all(&dir.join("ready"))?;
    let plan_json = serde_json::to_string_pretty(plan).expect("plan serializes");
    write_state(&dir.join(PLAN_FILE), &plan_json)?;
    write_state(&dir.join(CLUSTER_FILE), out.cluster_yaml)?;

    step("netns")?;
    net::netns_add(sys, &plan.netns_names())?;

    step("node")?;
    net::sysctl(sys, &plan.node_netns, &net::NODE_SYSCTLS)?;
    net::ip_batch(sys, &plan.node_netns, &net::node_script(plan))?;

    step("links")?;
    net::ip_batch(sys, &plan.node_netns, &net::node_links_script(plan))?;
    let mut inside: Vec<(&str, String)> = plan
        .pods
        .iter()
        .map(|p| (p.netns.as_str(), net::pod_script(p)))
        .collect();
    inside.extend(
        plan.externals
            .iter()
            .map(|e| (e.netns.as_str(), net::external_script(e))),
    );
    sys::parallel(&inside, PARALLEL, |(netns, script)| {
        net::ip_batch(sys, netns, script)
    })?;

    step("nat")?;
    net::nft_apply(sys, &plan.node_netns, &net::nat_ruleset(plan))?;

    if let Some(rules) = out.policy_rules {
        step("enforce")?;
        net::nft_apply(sys, &plan.node_netns, rules)?;
    }

    step("cgroups")?;
    for pod in &plan.pods {
        for c in &pod.containers {
            sys::mkdir_all(&cg2.join(&c.cgroup))?;
        }
    }
    for e in &plan.externals {
        sys::mkdir_all(&cg2.join(&e.cgroup))?;
    }
    sys::mkdir_all(&cg2.join(&plan.kubelet_cgroup))?;

    step("processes")?;
    let dns_file = dir.join(DNS_FILE);
    write_state(
        &dns_file,
        &serde_json::to_string_pretty(&plan.dns_records()).expect("records serialize"),
    )?;
    // Every container's process, then the externals' servers.
    let mut launches: Vec<Launch> = Vec::new();
    for pod in &plan.pods {
        for c in &pod.containers {
            let tag = format!("{}-{}-{}", pod.namespace, pod.name, c.name);
            let mut args: Vec<OsString> = vec!["lab".into()];
            match c.role {
                Role::Dns => {
                    args.extend(["dns".into(), "--records".into(), dns_file.clone().into()]);
                }
                Role::Server => {
                    args.extend([
                        "serve".into(),
                        "--name".into(),
                        format!("{}/{}", pod.namespace, pod.name).into(),
                    ]);
                    for p in &c.ports {
                        args.push("--listen".into());
                        args.push(format!("{}/{}", p.port, p.protocol.as_str()).into());
                    }
                }
            }
            launches.push(Launch::new(dir, tag, args, &pod.netns, cg2.join(&c.cgroup)));
        }
    }
    for e in &plan.externals {
        let mut args: Vec<OsString> = vec![
            "lab".into(),
            "serve".into(),
            "--name".into(),
            format!("external/{}", e.name).into(),
        ];
        for p in &e.ports {
            args.push("--listen".into());
            args.push(format!("{p}/TCP").into());
            args.push("--listen".into());
            args.push(format!("{p}/UDP").into());
        }
        let tag = format!("external-{}", e.name);
        launches.push(Launch::new(dir, tag, args, &e.netns, cg2.join(&e.cgroup)));
    }
    let spawned = std::sync::Mutex::new(Vec::new());
    let result = sys::parallel(&launches, PARALLEL, |l| {
        let child = l.spawn(binary)?;
        spawned
            .lock()
            .expect("no panics while holding it")
            .push(child);
        Ok::<(), SysError>(())
    });
    children.extend(spawned.into_inner().expect("no panics while holding it"));
    result?;
    let ready_files: Vec<(String, PathBuf, PathBuf)> = launches
        .iter()
        .map(|l| (l.tag.clone(), l.ready.clone(), l.log.clone()))
        .collect();

    step("ready")?;
    wait_ready(&ready_files, children, Duration::from_secs(20))?;

    step("probes")?;
    let jobs: Vec<workers::ProbeJob> = plan
        .pods
        .iter()
        .flat_map(|pod| {
            pod.probes.iter().map(move |p| workers::ProbeJob {
                pod: format!("{}/{}", pod.namespace, pod.name),
                kind: p.kind.clone(),
                address: pod.ips[0],
                port: p.port,
                http_path: p.http_path.clone(),
            })
        })
        .collect();
    let probes_file = dir.join(PROBES_FILE);
    write_state(
        &probes_file,
        &serde_json::to_string_pretty(&jobs).expect("probes serialize"),
    )?;
    let ready = dir.join("ready").join("kubelet");
    let log = dir.join("logs").join("kubelet.log");
    let args: Vec<OsString> = vec![
        "lab".into(),
        "kubelet".into(),
        "--probes".into(),
        probes_file.into(),
        "--ready-file".into(),
        ready.clone().into(),
    ];
    let cgroup = cg2.join(&plan.kubelet_cgroup);
    children.push(sys::spawn_in(
        binary,
        &args,
        &Placement {
            netns: &plan.node_netns,
            cgroup: &cgroup,
            log: &log,
        },
        &[],
    )?);
    wait_ready(
        &[("kubelet probes".into(), ready, log)],
        children,
        Duration::from_secs(20),
    )?;

    Ok(())
}

/// One long-running lab process to start.
struct Launch {
    tag: String,
    args: Vec<OsString>,
    netns: String,
    cgroup: PathBuf,
    ready: PathBuf,
    log: PathBuf,
}

impl Launch {
    fn new(dir: &Path, tag: String, mut args: Vec<OsString>, netns: &str, cgroup: PathBuf) -> Self {
        let ready = dir.join("ready").join(&tag);
        let log = dir.join("logs").join(format!("{tag}.log"));
        args.push("--ready-file".into());
        args.push(ready.clone().into());
        Launch {
            tag,
            args,
            netns: netns.to_string(),
            cgroup,
            ready,
            log,
        }
    }

    fn spawn(&self, binary: &Path) -> std::result::Result<Child, SysError> {
        sys::spawn_in(
            binary,
            &self.args,
            &Placement {
                netns: &self.netns,
                cgroup: &self.cgroup,
                log: &self.log,
            },
            &[],
        )
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(5);
    format!("{} [{}]", path.display(), lines[from..].join(" | "))
}

fn wait_ready(
    files: &[(String, PathBuf, PathBuf)],
    children: &mut [Child],
    timeout: Duration,
) -> Result<()> {
    let until = Instant::now() + timeout;
    for (what, ready, log) in files {
        while !ready.exists() {
            if interrupted() {
                return Err(LabError::Interrupted(format!("waiting for {what}")));
            }
            for c in children.iter_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Err(LabError::Exited(
                        format!("a lab process (pid {})", c.id()),
                        format!(
                            "{status}; see the logs in {}",
                            log.parent()
                                .map(|p| p.display().to_string())
                                .unwrap_or_default()
                        ),
                    ));
                }
            }
            if Instant::now() > until {
                return Err(LabError::NotReady {
                    what: what.clone(),
                    secs: timeout.as_secs(),
                    log: tail(log),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(())
}

/// Removes everything of lab `lab_id`, whether it came up fully, partly or not at all:
/// processes (cgroup.kill), network namespaces (with their links and nftables), cgroups and the
/// state folder. Safe to run twice.
pub fn down(sys: &dyn Sys, lab_id: &str) -> Result<()> {
    plan::check_lab_id(lab_id)?;
    let mut first_err: Option<LabError> = None;
    let cg2 = sys::cgroup2_mount()?;
    // Processes first: a process holding a netns would keep it alive after `netns del`.
    if let Err(e) = sys::remove_cgroup_tree(&cg2.join(Plan::cgroup_root_of(lab_id))) {
        first_err.get_or_insert(e.into());
    }
    let names = net::lab_netns(lab_id);
    if let Err(e) = net::netns_del(sys, &names) {
        first_err.get_or_insert(e.into());
    }
    let dir = state_dir(lab_id);
    if dir.exists()
        && let Err(e) = std::fs::remove_dir_all(&dir)
    {
        first_err.get_or_insert(LabError::State(dir, e.to_string()));
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Lab ids with a state folder or left-over network namespaces.
pub fn list_labs() -> Vec<String> {
    let mut ids: std::collections::BTreeSet<String> = std::fs::read_dir(state_root())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    for ns in net::netns_with_prefix("fpl-") {
        if let Some(rest) = ns.strip_prefix("fpl-")
            && let Some((id, _)) = rest.rsplit_once('-')
        {
            ids.insert(id.to_string());
        }
    }
    ids.into_iter()
        .filter(|i| plan::check_lab_id(i).is_ok())
        .collect()
}

/// Loads the plan of a running lab.
pub fn load_plan(lab_id: &str) -> Result<Plan> {
    let path = state_dir(lab_id).join(PLAN_FILE);
    if !path.exists() {
        return Err(LabError::NotUp(lab_id.into(), path));
    }
    let text =
        std::fs::read_to_string(&path).map_err(|e| LabError::State(path.clone(), e.to_string()))?;
    serde_json::from_str(&text).map_err(|e| LabError::State(path, e.to_string()))
}

/// One client process: who runs it and what it does.
#[derive(Debug, Clone)]
pub struct ClientRun {
    pub connection: usize,
    pub pod: usize,
    pub targets: Vec<String>,
    pub port: u16,
    pub protocol: Proto,
    pub count: u32,
    pub family: IpFamily,
    pub use_dns: bool,
}

/// Expands `traffic.yaml` into client processes against a plan.
pub fn client_runs(plan: &Plan, scenario: &Scenario) -> Result<Vec<ClientRun>> {
    let mut runs = Vec::new();
    for (i, c) in scenario.traffic.connections.iter().enumerate() {
        let clients = plan.pods_of(&c.from);
        if clients.is_empty() {
            return Err(LabError::Mismatch(
                format!("workload {}", c.from),
                plan.lab_id.clone(),
            ));
        }
        let family = c.ip_family.unwrap_or(IpFamily::IPv4);
        let protocol = match c.protocol.as_deref() {
            Some("UDP") => Proto::Udp,
            _ => Proto::Tcp,
        };
        for pod in clients {
            if c.replica.is_some_and(|r| r != pod.replica) {
                continue;
            }
            let (targets, use_dns) = if let Some(key) = &c.to.service {
                let svc = plan.service(key).ok_or_else(|| {
                    LabError::Mismatch(format!("Service {key}"), plan.lab_id.clone())
                })?;
                // As an application would write it: short within its namespace.
                let name = if svc.namespace == pod.namespace {
                    svc.name.clone()
                } else {
                    format!("{}.{}", svc.name, svc.namespace)
                };
                (vec![name], true)
            } else if let Some(key) = &c.to.workload {
                let targets: Vec<String> = plan
                    .pods_of(key)
                    .into_iter()
                    .filter(|t| t.index != pod.index)
                    .filter_map(|t| t.ip(family).map(|ip| ip.to_string()))
                    .collect();
                (targets, false)
            } else {
                let name = c.to.external.as_deref().unwrap_or_default();
                let ext = plan.external(name).ok_or_else(|| {
                    LabError::Mismatch(format!("external {name}"), plan.lab_id.clone())
                })?;
                (vec![ext.address.to_string()], false)
            };
            if targets.is_empty() {
                continue;
            }
            runs.push(ClientRun {
                connection: i,
                pod: pod.index,
                targets,
                port: c.port,
                protocol,
                count: c.count.unwrap_or(1),
                family,
                use_dns,
            });
        }
    }
    Ok(runs)
}

/// Plays `traffic.yaml` in a running lab: every client at once, each in its pod's netns and
/// first container's cgroup (as `kubectl exec` would run it). Returns every attempt.
pub fn traffic(lab_id: &str, scenario: &Scenario, binary: &Path) -> Result<Vec<workers::Attempt>> {
    let plan = load_plan(lab_id)?;
    let runs = client_runs(&plan, scenario)?;
    let cg2 = sys::cgroup2_mount()?;
    let dir = state_dir(lab_id);
    let mut running = Vec::new();
    for run in &runs {
        let pod = &plan.pods[run.pod];
        let mut args: Vec<OsString> = vec![
            "lab".into(),
            "client".into(),
            "--connection".into(),
            run.connection.to_string().into(),
            "--client".into(),
            format!("{}/{}", pod.namespace, pod.name).into(),
            "--port".into(),
            run.port.to_string().into(),
            "--protocol".into(),
            run.protocol.as_str().into(),
            "--count".into(),
            run.count.to_string().into(),
        ];
        if run.family == IpFamily::IPv6 {
            args.extend(["--ipv6".into()]);
        }
        for t in &run.targets {
            args.extend(["--target".into(), t.into()]);
        }
        if run.use_dns {
            let dns = plan
                .dns_ips
                .iter()
                .find(|ip| ip.is_ipv4())
                .ok_or_else(|| LabError::Mismatch("kube-dns".into(), lab_id.into()))?;
            args.extend(["--dns".into(), dns.to_string().into()]);
            for s in pod.search_list() {
                args.extend(["--search".into(), s.into()]);
            }
        }
        let cgroup = cg2.join(&pod.containers[0].cgroup);
        let log = dir
            .join("logs")
            .join(format!("client-{}-{}.log", pod.name, run.connection));
        let child = spawn_client(binary, &args, &pod.netns, &cgroup, &log)?;
        running.push(child);
    }
    let mut attempts = Vec::new();
    for child in running {
        let out = child.wait_with_output().map_err(|e| {
            LabError::Sys(SysError::Io {
                path: "client".into(),
                err: e,
            })
        })?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Ok(a) = serde_json::from_str::<workers::Attempt>(line) {
                attempts.push(a);
            }
        }
    }
    Ok(attempts)
}

fn spawn_client(
    binary: &Path,
    args: &[OsString],
    netns: &str,
    cgroup: &Path,
    log: &Path,
) -> Result<Child> {
    // Like spawn_in, but stdout is piped back to us (stderr goes to the log).
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let netns_path = sys::netns_path(netns);
    let nsf = std::fs::File::open(&netns_path).map_err(|err| SysError::Io {
        path: netns_path.clone(),
        err,
    })?;
    let procs_path = cgroup.join("cgroup.procs");
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(&procs_path)
        .map_err(|err| SysError::Io {
            path: procs_path.clone(),
            err,
        })?;
    let logf = std::fs::File::create(log).map_err(|err| SysError::Io {
        path: log.to_path_buf(),
        err,
    })?;
    let (nfd, pfd) = (nsf.as_raw_fd(), procs.as_raw_fd());
    let mut cmd = std::process::Command::new(binary);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(logf);
    // SAFETY: only async-signal-safe syscalls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(nfd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::write(pfd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn().map_err(|err| {
        LabError::Sys(SysError::Spawn {
            cmd: format!("{} lab client in {netns}", binary.display()),
            err,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(name: &str) -> (Plan, Scenario) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/examples")
            .join(name);
        let s = scenario::load(&dir).unwrap();
        (plan::build("m1", &s).unwrap(), s)
    }

    #[test]
    fn service_connections_dial_names_through_dns_short_in_the_same_namespace() {
        let (p, s) = example("task-api");
        let runs = client_runs(&p, &s).unwrap();
        // gateway (1 replica) + task-api (2 replicas) x 2 connections
        assert_eq!(runs.len(), 5);
        assert_eq!(runs[0].targets, ["task-api.taskapi"]);
        assert!(runs[0].use_dns);
        assert_eq!(runs[0].count, 4);
        let (p, s) = example("port-mismatch");
        let runs = client_runs(&p, &s).unwrap();
        assert_eq!(runs[0].targets, ["webapp"]);
    }

    #[test]
    fn workload_connections_reach_every_other_replica_at_pod_ips() {
        let (p, s) = example("statefulset-peers");
        let runs = client_runs(&p, &s).unwrap();
        let peers: Vec<_> = runs.iter().filter(|r| r.connection == 0).collect();
        assert_eq!(peers.len(), 3);
        for r in peers {
            assert_eq!(r.targets.len(), 2);
            assert!(!r.targets.contains(&p.pods[r.pod].ips[0].to_string()));
            assert!(!r.use_dns);
        }
    }
}

//! `flowpol lab`: a mini-cluster of network namespaces built from a scenario folder.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

#[derive(Debug, Args)]
pub struct LabArgs {
    #[command(subcommand)]
    pub command: LabCommand,
}

#[derive(Debug, Args)]
pub struct LabId {
    /// Lab id (a-z, 0-9, '-'): names its netns `fpl-<id>-*` and its state folder.
    #[arg(long = "lab", default_value = "default")]
    pub id: String,
}

#[derive(Debug, Args)]
pub struct EnforceArgs {
    /// Enforce NetworkPolicies in the node's forward path (nftables, from the engine's
    /// verdicts), as an iptables-mode CNI does.
    #[arg(long)]
    pub enforce: bool,
    /// NetworkPolicy files or folders to use instead of the scenario's.
    #[arg(long, num_args = 1.., requires = "enforce")]
    pub policies: Vec<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build the lab from a scenario folder: pod netns, Services, DNS, servers, probes.
    Up {
        #[arg(long)]
        scenario: PathBuf,
        #[command(flatten)]
        lab: LabId,
        #[command(flatten)]
        policy: EnforceArgs,
    },
    /// Play the scenario's traffic.yaml in a running lab and print what the clients saw.
    Traffic {
        #[arg(long)]
        scenario: PathBuf,
        #[command(flatten)]
        lab: LabId,
    },
    /// Remove everything of a lab: processes, netns, nftables, cgroups, state.
    Down {
        #[command(flatten)]
        lab: LabId,
        /// Remove every lab on this machine.
        #[arg(long, conflicts_with = "id")]
        all: bool,
    },
    /// Labs that are up (or left over).
    List,
    /// up, start `flowpol agent`, traffic, stop the agent, print the report, down.
    Run {
        #[arg(long)]
        scenario: PathBuf,
        #[command(flatten)]
        lab: LabId,
        #[command(flatten)]
        policy: EnforceArgs,
        /// Flow database the agent writes (kept after the run).
        #[arg(long)]
        db: Option<PathBuf>,
        /// Fail unless the agent recorded every traffic.yaml connection with both ends named
        /// at the pod port, and nothing else between pods (DNS to kube-dns aside).
        #[arg(long)]
        check: bool,
    },
    /// (inside the lab) a container: answer on every port.
    #[command(hide = true)]
    Serve {
        #[arg(long)]
        name: String,
        /// PORT/TCP or PORT/UDP, repeated.
        #[arg(long)]
        listen: Vec<String>,
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// (inside the lab) kube-dns.
    #[command(hide = true)]
    Dns {
        #[arg(long)]
        records: PathBuf,
        #[arg(long, default_value_t = 53)]
        port: u16,
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// (inside the lab) the kubelet stand-in's probes.
    #[command(hide = true)]
    Kubelet {
        #[arg(long)]
        probes: PathBuf,
        /// Seconds between probe rounds once every probe passed.
        #[arg(long, default_value_t = 3)]
        period: u64,
        #[arg(long)]
        ready_file: Option<PathBuf>,
    },
    /// (inside the lab) a client dialing targets; one JSON line per connection.
    #[command(hide = true)]
    Client {
        #[arg(long, default_value_t = 0)]
        connection: usize,
        #[arg(long)]
        client: String,
        #[arg(long, required = true)]
        target: Vec<String>,
        #[arg(long)]
        port: u16,
        #[arg(long, default_value = "TCP")]
        protocol: String,
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// DNS server to resolve names with (kube-dns's ClusterIP).
        #[arg(long)]
        dns: Option<std::net::IpAddr>,
        #[arg(long)]
        search: Vec<String>,
        #[arg(long)]
        ipv6: bool,
        /// Query DNS over TCP instead of UDP.
        #[arg(long)]
        dns_tcp: bool,
    },
}

#[cfg(target_os = "linux")]
pub fn run(args: LabArgs) -> anyhow::Result<ExitCode> {
    linux::run(args)
}

#[cfg(not(target_os = "linux"))]
pub fn run(_args: LabArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`flowpol lab` needs Linux (network namespaces, nftables, cgroup v2)")
}

#[cfg(target_os = "linux")]
mod linux {
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::process::ExitCode;
    use std::time::{Duration, Instant};

    use anyhow::Context;

    use super::{LabArgs, LabCommand};
    use crate::lab::{self, report, scenario, sys::RealSys, workers};

    fn binary() -> anyhow::Result<PathBuf> {
        std::env::current_exe().context("cannot find the flowpol binary (current_exe)")
    }

    pub fn run(args: LabArgs) -> anyhow::Result<ExitCode> {
        match args.command {
            LabCommand::Up {
                scenario,
                lab,
                policy,
            } => {
                lab::install_interrupt_handler();
                let started = Instant::now();
                let up = lab::up(&lab::UpOptions {
                    lab_id: &lab.id,
                    scenario_dir: &scenario,
                    binary: binary()?,
                    enforce: policy.enforce,
                    policies: policy.policies,
                })?;
                print_up(&up, started.elapsed());
                Ok(ExitCode::SUCCESS)
            }
            LabCommand::Traffic { scenario, lab } => {
                let s = scenario::load(&scenario)?;
                let plan = lab::load_plan(&lab.id)?;
                let attempts = lab::traffic(&lab.id, &s, &binary()?)?;
                let (text, unmet) = report::clients(&plan, &s, &attempts);
                print!("{text}");
                Ok(if unmet.is_empty() {
                    ExitCode::SUCCESS
                } else {
                    eprintln!(
                        "{} connection(s) did not go as traffic.yaml expects",
                        unmet.len()
                    );
                    ExitCode::from(1)
                })
            }
            LabCommand::Down { lab, all } => {
                let ids = if all { lab::list_labs() } else { vec![lab.id] };
                let started = Instant::now();
                for id in &ids {
                    lab::down(&RealSys, id).with_context(|| format!("lab {id}: teardown"))?;
                    println!("lab {id}: down");
                }
                eprintln!("down in {:.2}s", started.elapsed().as_secs_f64());
                Ok(ExitCode::SUCCESS)
            }
            LabCommand::List => {
                for id in lab::list_labs() {
                    let state = if lab::load_plan(&id).is_ok() {
                        "up"
                    } else {
                        "left over (run `flowpol lab down --lab <id>`)"
                    };
                    println!("{id}\t{state}");
                }
                Ok(ExitCode::SUCCESS)
            }
            LabCommand::Run {
                scenario,
                lab,
                policy,
                db,
                check,
            } => run_all(&scenario, &lab.id, policy, db, check),
            LabCommand::Serve {
                name,
                listen,
                ready_file,
            } => {
                let ports = listen
                    .iter()
                    .map(|l| workers::parse_listen(l))
                    .collect::<Result<Vec<_>, _>>()?;
                workers::serve(&name, &ports, ready_file.as_deref())?;
                Ok(ExitCode::SUCCESS)
            }
            LabCommand::Dns {
                records,
                port,
                ready_file,
            } => {
                workers::dns(
                    workers::load_records(&records)?,
                    port,
                    ready_file.as_deref(),
                )?;
                Ok(ExitCode::SUCCESS)
            }
            LabCommand::Kubelet {
                probes,
                period,
                ready_file,
            } => {
                let text = std::fs::read_to_string(&probes)
                    .with_context(|| format!("{}", probes.display()))?;
                let jobs: Vec<workers::ProbeJob> =
                    serde_json::from_str(&text).with_context(|| format!("{}", probes.display()))?;
                workers::kubelet(
                    &jobs,
                    Duration::from_secs(period.max(1)),
                    Duration::from_secs(15),
                    ready_file.as_deref(),
                )?;
                Ok(ExitCode::SUCCESS)
            }
            LabCommand::Client {
                connection,
                client,
                target,
                port,
                protocol,
                count,
                dns,
                search,
                ipv6,
                dns_tcp,
            } => {
                let (_, protocol) = workers::parse_listen(&format!("{port}/{protocol}"))?;
                let spec = workers::ClientSpec {
                    connection,
                    client,
                    targets: target,
                    port,
                    protocol,
                    count,
                    dns,
                    search,
                    family: if ipv6 {
                        scenario::IpFamily::IPv6
                    } else {
                        scenario::IpFamily::IPv4
                    },
                    dns_tcp,
                };
                let stdout = std::io::stdout();
                let mut out = stdout.lock();
                let failed = workers::client(&spec, &mut out)?;
                out.flush().ok();
                Ok(if failed == 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::from(1)
                })
            }
        }
    }

    fn print_up(up: &lab::Lab, took: Duration) {
        let p = &up.plan;
        println!(
            "lab {} up in {:.2}s: {} pods, {} Services, node {} ({}), DNS {}",
            p.lab_id,
            took.as_secs_f64(),
            p.pods.len(),
            p.services.len(),
            p.node_name,
            p.node_addresses
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            p.dns_ips.first().map(|a| a.to_string()).unwrap_or_default()
        );
        for pod in &p.pods {
            println!(
                "  pod {}/{} {} netns {}",
                pod.namespace,
                pod.name,
                pod.ips
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(","),
                pod.netns
            );
        }
        for svc in &p.services {
            let ips = if svc.headless {
                "None (headless)".to_string()
            } else {
                svc.cluster_ips
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            println!("  service {} {ips}", svc.key());
        }
        println!("  cluster state: {}", up.cluster_file().display());
    }

    /// The agent, started against the lab's cluster state.
    struct Agent {
        child: std::process::Child,
        log: PathBuf,
    }

    /// Starts `flowpol agent` on the lab: flows into `db`, identities from the lab's
    /// `cluster.yaml`, only the lab's own sockets; waits until it has attached.
    fn start_agent(bin: &Path, db: &Path, lab: &lab::Lab, log: &Path) -> Result<Agent, String> {
        let logf = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let logf2 = logf.try_clone().map_err(|e| e.to_string())?;
        let cg2 = lab::sys::cgroup2_mount().map_err(|e| e.to_string())?;
        let mut cmd = std::process::Command::new(bin);
        // Info level: its "capture attached" line tells us when to start the traffic.
        cmd.args(["--log", "info", "agent", "--interval", "1s", "--db"])
            .arg(db)
            .arg("--manifests")
            .arg(lab.cluster_file())
            // Only this lab's sockets: other labs (same addresses, other netns) and the
            // host's own traffic stay out of the report.
            .arg("--cgroup")
            .arg(cg2.join(&lab.plan.cgroup_root))
            // Drops too: the kfree_skb tracepoint sees every namespace's.
            .arg("--drop-netns")
            .arg(
                lab.plan
                    .netns_names()
                    .iter()
                    .map(|n| lab::sys::netns_path(n).display().to_string())
                    .collect::<Vec<_>>()
                    .join(","),
            );
        let mut child = cmd
            .stdin(std::process::Stdio::null())
            .stdout(logf)
            .stderr(logf2)
            .spawn()
            .map_err(|e| format!("cannot start `flowpol agent`: {e}"))?;
        // Wait until it says it attached; an agent that cannot run exits at once.
        let until = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "`flowpol agent` exited ({status}): {}",
                    text.lines()
                        .find(|l| l.contains("error"))
                        .or_else(|| text.lines().next())
                        .unwrap_or("")
                ));
            }
            if text.contains("attached") {
                break;
            }
            if Instant::now() > until {
                eprintln!(
                    "warning: `flowpol agent` did not report `attached` within 60s; going on"
                );
                break;
            }
            if lab::interrupted() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Agent {
            child,
            log: log.to_path_buf(),
        })
    }

    fn stop_agent(agent: &mut Agent) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(agent.child.id() as i32, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(_)) = agent.child.try_wait() {
                return;
            }
            if Instant::now() > until {
                let _ = agent.child.kill();
                let _ = agent.child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn run_all(
        scenario_dir: &Path,
        lab_id: &str,
        policy: super::EnforceArgs,
        db: Option<PathBuf>,
        check: bool,
    ) -> anyhow::Result<ExitCode> {
        lab::install_interrupt_handler();
        let bin = binary()?;
        let started = Instant::now();
        let up = lab::up(&lab::UpOptions {
            lab_id,
            scenario_dir,
            binary: bin.clone(),
            enforce: policy.enforce,
            policies: policy.policies,
        })?;
        print_up(&up, started.elapsed());
        let result = run_inside(&up, lab_id, &bin, db, check);
        let down = up.down();
        let code = result?;
        down.context("teardown")?;
        println!("lab {lab_id}: down");
        Ok(code)
    }

    fn read_flows(
        bin: &Path,
        db: &Path,
    ) -> Result<Vec<flowpol_recommender::flow::FlowRecord>, String> {
        // `flowpol flows` merges each flow across drain intervals.
        let out = std::process::Command::new(bin)
            .args(["flows", "--db"])
            .arg(db)
            .args(["-o", "json"])
            .output()
            .map_err(|e| format!("running `flowpol flows`: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "`flowpol flows` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        report::parse_flows(&String::from_utf8_lossy(&out.stdout))
            .map_err(|e| format!("parsing `flowpol flows -o json`: {e}"))
    }

    fn run_inside(
        up: &lab::Lab,
        lab_id: &str,
        bin: &Path,
        db: Option<PathBuf>,
        check: bool,
    ) -> anyhow::Result<ExitCode> {
        let db = db.unwrap_or_else(|| {
            std::env::temp_dir().join(format!("flowpol-lab-{lab_id}-{}.db", std::process::id()))
        });
        let agent_log = std::env::temp_dir().join(format!(
            "flowpol-lab-{lab_id}-{}-agent.log",
            std::process::id()
        ));
        let mut agent = match start_agent(bin, &db, up, &agent_log) {
            Ok(a) => Some(a),
            Err(e) => {
                println!("agent: not available, so only the clients' view is shown: {e}");
                None
            }
        };
        if lab::interrupted() {
            if let Some(a) = agent.as_mut() {
                stop_agent(a);
            }
            anyhow::bail!("interrupted");
        }
        let attempts = lab::traffic(lab_id, &up.scenario, bin);
        if let Some(a) = agent.as_mut() {
            // One more drain interval so the last flows are written.
            // A drain interval plus the SYN timeout, so unanswered flows are written too.
            std::thread::sleep(Duration::from_secs(4));
            stop_agent(a);
        }
        let attempts = attempts?;
        println!("\nclients (traffic.yaml):");
        let (text, unmet) = report::clients(&up.plan, &up.scenario, &attempts);
        print!("{text}");
        let mut problems = Vec::new();
        if let Some(a) = &agent {
            match read_flows(bin, &db) {
                Ok(flows) => {
                    println!(
                        "\nobserved by the agent ({} flows, database {}):",
                        flows.len(),
                        db.display()
                    );
                    print!("{}", report::flows(&up.plan, &flows));
                    if check {
                        problems = report::check(&up.plan, &up.scenario, &flows);
                        if problems.is_empty() {
                            println!(
                                "\ncheck: every traffic.yaml connection recorded with both ends named at the pod port; nothing else between pods"
                            );
                        } else {
                            println!("\ncheck FAILED:");
                            for p in &problems {
                                println!("  {p}");
                            }
                        }
                    }
                }
                Err(e) => {
                    println!("\nagent: {e} (agent log {})", a.log.display());
                    if check {
                        problems.push(e);
                    }
                }
            }
        } else if check {
            problems.push("--check needs the agent, which is not available".into());
        }
        if !problems.is_empty() {
            return Ok(ExitCode::from(1));
        }
        Ok(if unmet.is_empty() {
            ExitCode::SUCCESS
        } else {
            println!(
                "{} connection(s) did not go as traffic.yaml expects",
                unmet.len()
            );
            ExitCode::from(1)
        })
    }
}

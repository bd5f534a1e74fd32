//! `flowpol agent`: capture flows and drops with eBPF into SQLite.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// SQLite database to write flows to (created if missing).
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present = "json_out",
        env = "FLOWPOL_DB"
    )]
    pub db: Option<PathBuf>,
    /// How often the kernel maps are drained and written (one transaction each).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, env = "FLOWPOL_INTERVAL")]
    pub interval: Duration,
    /// cgroup v2 directory to attach the socket hooks to [default: the cgroup v2 root,
    /// found in /proc/mounts]. A sub-cgroup limits capture to the processes inside it.
    #[arg(long, value_name = "PATH", env = "FLOWPOL_CGROUP")]
    pub cgroup: Option<PathBuf>,
    /// Also count forwarded traffic with tc ingress on interfaces matching this
    /// pattern (`*`, `?`, comma-separated alternatives), e.g. `cali*,eth0`.
    #[arg(long, value_name = "PATTERN", env = "FLOWPOL_TC_INTERFACES")]
    pub tc_interfaces: Option<String>,
    /// How long a TCP SYN waits for a SYN-ACK before its flow is `unanswered`.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration, env = "FLOWPOL_SYN_TIMEOUT")]
    pub syn_timeout: Duration,
    /// Entries in each kernel flow map (two copies are kept for draining).
    #[arg(long, default_value_t = 65536, value_parser = clap::value_parser!(u32).range(64..), env = "FLOWPOL_FLOW_MAP_ENTRIES")]
    pub flow_map_entries: u32,
    /// Record every TCP connection on its own, client port included. By default a
    /// client's connections to one server port are one record per interval, its
    /// ephemeral port shown as 0 and the number of connections in `connections`.
    #[arg(long, env = "FLOWPOL_PER_CONNECTION")]
    pub per_connection: bool,
    /// Kernel drop reasons that are only counted (`drops_routine`), not recorded as
    /// drops: comma-separated names as the kernel spells them, or `none`.
    #[arg(
        long,
        value_name = "REASONS",
        value_delimiter = ',',
        default_values = flowpol_common::DEFAULT_ROUTINE_DROP_REASONS,
        env = "FLOWPOL_ROUTINE_DROP_REASONS"
    )]
    pub routine_drop_reasons: Vec<String>,
    /// Record only the drops in these network namespaces (files such as
    /// /run/netns/NAME or /proc/PID/ns/net; repeat or comma-separate); drops
    /// elsewhere are counted (`drops_other_netns`). Default: every drop on the machine.
    #[arg(
        long,
        value_name = "PATH",
        value_delimiter = ',',
        env = "FLOWPOL_DROP_NETNS"
    )]
    pub drop_netns: Vec<PathBuf>,
    /// Name of the node the agent runs on, stored with every flow, drain and
    /// capture loss it records (the DaemonSet sets NODE_NAME from spec.nodeName).
    #[arg(long, value_name = "NAME", env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Also (or, without --db, only) write each drained record as a JSON line to
    /// this file (`-` for stdout).
    #[arg(long, value_name = "PATH", env = "FLOWPOL_JSON_OUT")]
    pub json_out: Option<PathBuf>,
    #[command(flatten)]
    pub retention: crate::store::RetentionArgs,
    // --- identity: --kube / --manifests ---
    #[command(flatten)]
    pub identity: crate::enrich::agent::IdentityArgs,
    // --- serve: --listen / --token-file ---
    #[command(flatten)]
    pub serve: crate::serve::ServeArgs,
}

#[cfg(feature = "agent")]
pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    use anyhow::Context;

    use crate::agent::{AgentConfig, Fanout, FlowSink, JsonLinesSink};
    use crate::capture::CaptureOptions;

    if args.interval.is_zero() {
        anyhow::bail!("--interval must be greater than zero");
    }
    let mut config = AgentConfig {
        capture: CaptureOptions {
            cgroup: args.cgroup.clone(),
            tc_interfaces: args.tc_interfaces.clone(),
            syn_timeout: args.syn_timeout,
            flow_map_entries: args.flow_map_entries,
            per_connection: args.per_connection,
            routine_drop_reasons: args
                .routine_drop_reasons
                .iter()
                .filter(|r| !r.eq_ignore_ascii_case("none") && !r.is_empty())
                .cloned()
                .collect(),
            drop_netns: args.drop_netns.clone(),
        },
        interval: args.interval,
        node: args.node_name.clone().filter(|n| !n.is_empty()),
        node_addresses: None,
    };
    let retention = args.retention.retention();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let mut fanout = Fanout::default();
        let mut identity_pool = None;
        if let Some(db) = &args.db {
            // Open (and validate) the database before loading anything into the kernel.
            // A small page cache: a drain's transaction spills to the WAL
            // rather than growing the agent's memory (8 MiB per connection by default).
            let options = crate::store::StoreOptions {
                cache_kib: 2 * 1024,
                ..crate::store::StoreOptions::default()
            };
            let store = crate::store::Store::open_with(db, &options).await?;
            // identity: the ownership time line lives in the same database.
            identity_pool = Some(store.pool().clone());
            fanout.writer = Some(Box::new(crate::agent::StoreSink::new(store, retention)));
        }
        // --- serve: the HTTP API starts before capture so /healthz answers at once ---
        let serve = crate::cli::agent_serve::start(&args).await?;
        let json: Option<Box<dyn FlowSink>> = match args.json_out.as_deref() {
            Some(p) if p.as_os_str() == "-" => {
                Some(Box::new(JsonLinesSink::new(std::io::stdout())))
            }
            Some(p) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("opening --json-out {}", p.display()))?;
                Some(Box::new(JsonLinesSink::new(file)))
            }
            None => None,
        };
        match json {
            Some(j) if fanout.writer.is_some() => fanout.copies.push(j),
            Some(j) => fanout.writer = Some(j),
            None => {}
        }
        if let Some(s) = &serve {
            fanout.staged.push(Box::new(s.sink()));
        }
        // --- identity: resolve both ends of every record before it is written ---
        let identity =
            crate::enrich::agent::IdentityRuntime::start(&args.identity, identity_pool).await?;
        if let Some(s) = &serve {
            s.readiness
                .set_identity(identity.as_ref().map(|i| i.enricher.identity().clone()));
        }
        if let Some(i) = &identity {
            let identity = i.enricher.identity().clone();
            config.node_addresses = Some(crate::agent::NodeAddresses(std::sync::Arc::new(
                move || identity.node_addresses(),
            )));
        }
        let observer = crate::cli::agent_serve::observer(serve.as_ref());
        let result = match identity {
            Some(identity) => {
                let mut sink = crate::enrich::agent::EnrichingSink {
                    enricher: identity.enricher.clone(),
                    inner: fanout,
                };
                let r = crate::agent::run_observed(config, &mut sink, observer).await;
                identity.shutdown().await?;
                r
            }
            None => {
                let mut fanout = fanout;
                crate::agent::run_observed(config, &mut fanout, observer).await
            }
        };
        // The last drain is written (or failed) above; now close the API.
        if let Some(s) = serve {
            s.server.shutdown().await;
        }
        result?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(not(feature = "agent"))]
pub fn run(_args: AgentArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!(
        "this flowpol was built without the `agent` feature (no eBPF): rebuild with default features to run the agent"
    )
}

/// The agent's HTTP API (`--listen`), wired to the drain loop.
#[cfg(feature = "agent")]
pub(crate) mod agent_serve_impl {
    use std::sync::Arc;

    use anyhow::Context;

    use crate::serve::metrics::{ServeObserver, ServeSink};
    use crate::serve::{ApiState, Metrics, Readiness, Server};

    pub struct AgentServe {
        pub server: Server,
        pub readiness: Arc<Readiness>,
        metrics: Arc<Metrics>,
        live: crate::serve::LiveFlows,
    }

    impl AgentServe {
        pub fn sink(&self) -> ServeSink {
            ServeSink {
                metrics: self.metrics.clone(),
                live: self.live.clone(),
                tally: Default::default(),
            }
        }
    }

    /// Starts the server when `--listen` is given.
    pub async fn start(args: &super::AgentArgs) -> anyhow::Result<Option<AgentServe>> {
        let Some(addr) = args.serve.listen else {
            return Ok(None);
        };
        let token_file = args
            .serve
            .token_file
            .as_deref()
            .context("--listen needs --token-file")?;
        let token = crate::serve::read_token(token_file)?;
        let store = match &args.db {
            // A second, read-only handle: the API can never write.
            Some(db) => Some(crate::store::Store::open_read_only(db).await?),
            None => None,
        };
        let readiness = Arc::new(Readiness::default());
        let metrics = Arc::new(Metrics::new());
        let (live, _) = tokio::sync::broadcast::channel(crate::serve::LIVE_BATCHES);
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let state = ApiState {
            store,
            token: token.into(),
            readiness: readiness.clone(),
            metrics: metrics.clone(),
            live: live.clone(),
            shutdown,
        };
        let server = Server::start(addr, state, stop).await?;
        Ok(Some(AgentServe {
            server,
            readiness,
            metrics,
            live,
        }))
    }

    pub fn observer(serve: Option<&AgentServe>) -> Arc<dyn crate::agent::AgentObserver> {
        match serve {
            Some(s) => Arc::new(ServeObserver {
                metrics: s.metrics.clone(),
                readiness: s.readiness.clone(),
            }),
            None => Arc::new(NoObserver),
        }
    }

    struct NoObserver;
    impl crate::agent::AgentObserver for NoObserver {}
}

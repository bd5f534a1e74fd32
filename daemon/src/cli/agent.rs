//! `flowpol agent`: capture flows and drops with eBPF into SQLite.
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// SQLite database to write flows to (created if missing).
    #[arg(long, value_name = "PATH", required_unless_present = "json_out")]
    pub db: Option<PathBuf>,
    /// How often the kernel maps are drained and written (one transaction each).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// cgroup v2 directory to attach the socket hooks to [default: the cgroup v2 root,
    /// found in /proc/mounts]. A sub-cgroup limits capture to the processes inside it.
    #[arg(long, value_name = "PATH")]
    pub cgroup: Option<PathBuf>,
    /// Also count forwarded traffic with tc ingress on interfaces matching this
    /// pattern (`*`, `?`, comma-separated alternatives), e.g. `cali*,eth0`.
    #[arg(long, value_name = "PATTERN")]
    pub tc_interfaces: Option<String>,
    /// How long a TCP SYN waits for a SYN-ACK before its flow is `unanswered`.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub syn_timeout: Duration,
    /// Entries in each kernel flow map (two copies are kept for draining).
    #[arg(long, default_value_t = 65536, value_parser = clap::value_parser!(u32).range(64..))]
    pub flow_map_entries: u32,
    /// Kernel drop reasons that are only counted (`drops_routine`), not recorded as
    /// drops: comma-separated names as the kernel spells them, or `none`.
    #[arg(
        long,
        value_name = "REASONS",
        value_delimiter = ',',
        default_values = flowpol_common::DEFAULT_ROUTINE_DROP_REASONS
    )]
    pub routine_drop_reasons: Vec<String>,
    /// Also (or, without --db, only) write each drained record as a JSON line to
    /// this file (`-` for stdout).
    #[arg(long, value_name = "PATH")]
    pub json_out: Option<PathBuf>,
    #[command(flatten)]
    pub retention: crate::store::RetentionArgs,
    // --- identity: --kube / --manifests ---
    #[command(flatten)]
    pub identity: crate::enrich::agent::IdentityArgs,
}

#[cfg(feature = "agent")]
pub fn run(args: AgentArgs) -> anyhow::Result<ExitCode> {
    use anyhow::Context;

    use crate::agent::{AgentConfig, FlowSink, JsonLinesSink};
    use crate::capture::CaptureOptions;

    if args.interval.is_zero() {
        anyhow::bail!("--interval must be greater than zero");
    }
    let config = AgentConfig {
        capture: CaptureOptions {
            cgroup: args.cgroup.clone(),
            tc_interfaces: args.tc_interfaces.clone(),
            syn_timeout: args.syn_timeout,
            flow_map_entries: args.flow_map_entries,
            routine_drop_reasons: args
                .routine_drop_reasons
                .iter()
                .filter(|r| !r.eq_ignore_ascii_case("none") && !r.is_empty())
                .cloned()
                .collect(),
        },
        interval: args.interval,
    };
    let retention = args.retention.retention();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let mut sinks: Vec<Box<dyn FlowSink + Send>> = Vec::new();
        let mut identity_pool = None;
        if let Some(db) = &args.db {
            // Open (and validate) the database before loading anything into the kernel.
            let store = crate::store::Store::open(db).await?;
            // identity: the ownership time line lives in the same database.
            identity_pool = Some(store.pool().clone());
            sinks.push(Box::new(crate::agent::StoreSink::new(store, retention)));
        }
        match args.json_out.as_deref() {
            Some(p) if p.as_os_str() == "-" => {
                sinks.push(Box::new(JsonLinesSink::new(std::io::stdout())));
            }
            Some(p) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("opening --json-out {}", p.display()))?;
                sinks.push(Box::new(JsonLinesSink::new(file)));
            }
            None => {}
        }
        let fanout = Fanout(sinks);
        // --- identity: resolve both ends of every record before it is written ---
        let identity =
            crate::enrich::agent::IdentityRuntime::start(&args.identity, identity_pool).await?;
        match identity {
            Some(identity) => {
                let mut sink = crate::enrich::agent::EnrichingSink {
                    enricher: identity.enricher.clone(),
                    inner: fanout,
                };
                crate::agent::run(config, &mut sink).await?;
                identity.shutdown().await?;
            }
            None => {
                let mut fanout = fanout;
                crate::agent::run(config, &mut fanout).await?;
            }
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(feature = "agent")]
struct Fanout(Vec<Box<dyn crate::agent::FlowSink + Send>>);

#[cfg(feature = "agent")]
impl crate::agent::FlowSink for Fanout {
    fn write<'a>(
        &'a mut self,
        batch: &'a crate::agent::DrainBatch,
    ) -> futures::future::BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            // The first sink (the database when there is one) decides whether the
            // batch is retried; the JSON copy is best effort, so a retry never
            // writes the same rows to the database twice.
            let mut sinks = self.0.iter_mut();
            if let Some(first) = sinks.next() {
                first.write(batch).await?;
            }
            for sink in sinks {
                if let Err(e) = sink.write(batch).await {
                    tracing::warn!(error = format!("{e:#}"), "--json-out write failed");
                }
            }
            Ok(())
        })
    }
}

#[cfg(not(feature = "agent"))]
pub fn run(_args: AgentArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!(
        "this flowpol was built without the `agent` feature (no eBPF): rebuild with default features to run the agent"
    )
}

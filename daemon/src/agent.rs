//! The node agent's run loop: attach, drain every interval into a sink (one
//! write per interval), and on SIGINT/SIGTERM drain once more, detach and return.
use std::time::Duration;

use flowpol_recommender::flow::FlowRecord;
use futures::future::BoxFuture;
use tokio::signal::unix::{SignalKind, signal};

use crate::capture::{Capture, CaptureError, CaptureOptions};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error("installing the {0} handler: {1}")]
    Signal(&'static str, std::io::Error),
    #[error("writing {count} flow records: {source:#}")]
    Sink { count: usize, source: anyhow::Error },
}

/// Where drained records go. One call per drain interval; implementations write
/// the batch atomically (the SQLite store: one transaction).
pub trait FlowSink {
    fn write<'a>(&'a mut self, records: &'a [FlowRecord]) -> BoxFuture<'a, anyhow::Result<()>>;
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub capture: CaptureOptions,
    pub interval: Duration,
}

/// Totals of one agent run, for the exit log line and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RunSummary {
    pub drains: u64,
    pub records: u64,
    pub counters: Vec<(&'static str, u64)>,
}

/// Loss counters worth a warning when they move.
const LOSS_COUNTERS: [&str; 6] = [
    "flow_map_full",
    "ringbuf_full",
    "drop_map_full",
    "unparsable",
    "drop_unparsable",
    "ipv6_ext_limit",
];

pub async fn run(config: AgentConfig, sink: &mut dyn FlowSink) -> Result<RunSummary, AgentError> {
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| AgentError::Signal("SIGTERM", e))?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| AgentError::Signal("SIGINT", e))?;

    let mut capture = Capture::load(config.capture.clone())?;
    let attached = capture.attach()?.join(", ");
    tracing::info!(%attached, interval = ?config.interval, "capture attached");

    let mut summary = RunSummary::default();
    let mut last_losses: Vec<(&'static str, u64)> = Vec::new();
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick fires at once
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                drain_once(&mut capture, sink, false, &mut summary).await?;
                last_losses = report_losses(&capture, last_losses)?;
            }
            _ = sigterm.recv() => { tracing::info!("SIGTERM: final drain"); break; }
            _ = sigint.recv() => { tracing::info!("SIGINT: final drain"); break; }
        }
    }
    drain_once(&mut capture, sink, true, &mut summary).await?;
    summary.counters = capture.counters()?;
    drop(capture); // detaches every program
    let counters = summary
        .counters
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    tracing::info!(
        drains = summary.drains,
        records = summary.records,
        %counters,
        "capture detached"
    );
    Ok(summary)
}

async fn drain_once(
    capture: &mut Capture,
    sink: &mut dyn FlowSink,
    final_drain: bool,
    summary: &mut RunSummary,
) -> Result<(), AgentError> {
    let records = capture.drain(final_drain)?;
    summary.drains += 1;
    summary.records += records.len() as u64;
    tracing::debug!(records = records.len(), final_drain, "drained");
    if !records.is_empty() {
        sink.write(&records)
            .await
            .map_err(|source| AgentError::Sink {
                count: records.len(),
                source,
            })?;
    }
    Ok(())
}

fn report_losses(
    capture: &Capture,
    before: Vec<(&'static str, u64)>,
) -> Result<Vec<(&'static str, u64)>, AgentError> {
    let now: Vec<(&'static str, u64)> = capture
        .counters()?
        .into_iter()
        .filter(|(n, _)| LOSS_COUNTERS.contains(n))
        .collect();
    for (name, value) in &now {
        let old = before
            .iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| *v);
        if *value > old {
            tracing::warn!(
                counter = name,
                total = value,
                new = value - old,
                "capture loss"
            );
        }
    }
    Ok(now)
}

/// Writes each record as one JSON line (the `flowpol flows -o json` form).
pub struct JsonLinesSink<W: std::io::Write + Send> {
    out: W,
}

impl<W: std::io::Write + Send> JsonLinesSink<W> {
    pub fn new(out: W) -> Self {
        Self { out }
    }
}

impl<W: std::io::Write + Send> FlowSink for JsonLinesSink<W> {
    fn write<'a>(&'a mut self, records: &'a [FlowRecord]) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let mut buf = Vec::new();
            for r in records {
                serde_json::to_writer(&mut buf, r)?;
                buf.push(b'\n');
            }
            self.out.write_all(&buf)?;
            self.out.flush()?;
            Ok(())
        })
    }
}

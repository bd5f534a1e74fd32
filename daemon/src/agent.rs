//! The node agent's run loop: attach, drain every interval into a sink (one
//! write per interval), and on SIGINT/SIGTERM drain once more, detach and return.
//!
//! Memory: a drain reads the kernel maps a chunk at a time into compact records
//! (no heap per record); sinks make full records (and add identity) a chunk of
//! [`WRITE_CHUNK`] at a time, so only the compact form of a whole interval is
//! ever held, and the allocator gives the drain's peak back after each write.
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use flowpol_recommender::flow::FlowRecord;
use futures::future::BoxFuture;
use tokio::signal::unix::{SignalKind, signal};

use crate::capture::assemble::CompactFlow;
use crate::capture::{Capture, CaptureError, CaptureOptions};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error("installing the {0} handler: {1}")]
    Signal(&'static str, std::io::Error),
    #[error("the drain thread: {0}")]
    DrainThread(std::io::Error),
    #[error("writing {count} flow records: {source:#}")]
    Sink { count: usize, source: anyhow::Error },
}

/// Adds identity to records before they are written (the identity enricher).
pub trait EnrichRecords: Send + Sync {
    fn enrich_records(&self, records: &mut [FlowRecord]);
}

/// Records a sink makes (and enriches) from compact ones at a time.
pub const WRITE_CHUNK: usize = 4096;

/// One drain interval: its flows and how much capture lost in it.
#[derive(Clone)]
pub struct DrainBatch {
    /// The interval's flows, compact (shared: sinks and retries read the same).
    pub flows: Arc<Vec<CompactFlow>>,
    /// Loss counters that moved in this interval: (name, increase).
    pub losses: Vec<(&'static str, u64)>,
    pub recorded_at: DateTime<Utc>,
    /// Adds identity to each chunk of full records (set by the enriching sink).
    pub enrich: Option<Arc<dyn EnrichRecords>>,
    /// The node that recorded the interval (`--node-name`), on every record.
    pub node: Option<Arc<str>>,
}

impl std::fmt::Debug for DrainBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DrainBatch")
            .field("flows", &self.flows.len())
            .field("losses", &self.losses)
            .field("recorded_at", &self.recorded_at)
            .field("enrich", &self.enrich.is_some())
            .field("node", &self.node)
            .finish()
    }
}

impl DrainBatch {
    pub fn new(
        flows: Vec<CompactFlow>,
        losses: Vec<(&'static str, u64)>,
        recorded_at: DateTime<Utc>,
    ) -> Self {
        Self {
            flows: Arc::new(flows),
            losses,
            recorded_at,
            enrich: None,
            node: None,
        }
    }

    /// Number of flow records.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// The full records, [`WRITE_CHUNK`] at a time, in order, each chunk
    /// enriched when the batch has an enricher. Each call makes them anew.
    pub fn record_chunks(&self) -> impl Iterator<Item = Vec<FlowRecord>> + Send + '_ {
        self.flows.chunks(WRITE_CHUNK).map(move |chunk| {
            let mut records: Vec<FlowRecord> = chunk
                .iter()
                .map(|f| {
                    let mut r = f.to_record();
                    r.node = self.node.as_deref().map(str::to_string);
                    r
                })
                .collect();
            if let Some(e) = &self.enrich {
                e.enrich_records(&mut records);
            }
            records
        })
    }
}

/// Takes each chunk of full records a sink makes ([`FlowSink::write_teed`]).
pub type Tee<'a> = &'a mut (dyn FnMut(&[FlowRecord]) + Send);
/// A sink's write of one batch.
pub type SinkWrite<'a> = BoxFuture<'a, anyhow::Result<()>>;

/// Where drained batches go. One call per batch; implementations write it
/// atomically (the SQLite store: one transaction) so a failed batch can be
/// retried whole.
pub trait FlowSink: Send {
    /// Writes one batch, handing each chunk of full records to `tee` as it makes
    /// them (the fan-out's staged sinks take them from there).
    fn write_teed<'a>(&'a mut self, batch: &'a DrainBatch, tee: Tee<'a>) -> SinkWrite<'a>;

    /// Writes one batch.
    fn write<'a>(&'a mut self, batch: &'a DrainBatch) -> SinkWrite<'a> {
        Box::pin(async move {
            let mut nobody = |_: &[FlowRecord]| {};
            self.write_teed(batch, &mut nobody).await
        })
    }
}

/// A sink that takes a batch's records as the fan-out's writer makes them, so that each
/// record is made and given identity once for both: `stage` sees each chunk while the
/// writer writes, `publish` runs once the writer has stored the batch, `discard` when it
/// failed (the batch is retried whole and staged again).
pub trait StagedSink: Send {
    fn stage(&mut self, chunk: &[FlowRecord]);
    fn publish<'a>(&'a mut self, batch: &'a DrainBatch) -> BoxFuture<'a, ()>;
    fn discard(&mut self);
}

/// The agent's sinks. `writer` (the database when there is one, else the JSON output)
/// decides whether a batch is retried; `copies` get each batch after it, best effort (the
/// JSON output next to the database, so a retry never writes the same rows to the database
/// twice); `staged` sinks (metrics, follow streams) take the writer's records as it makes
/// them and publish after it succeeded.
#[derive(Default)]
pub struct Fanout {
    pub writer: Option<Box<dyn FlowSink>>,
    pub copies: Vec<Box<dyn FlowSink>>,
    pub staged: Vec<Box<dyn StagedSink>>,
}

impl FlowSink for Fanout {
    fn write_teed<'a>(&'a mut self, batch: &'a DrainBatch, tee: Tee<'a>) -> SinkWrite<'a> {
        Box::pin(async move {
            let Fanout {
                writer,
                copies,
                staged,
            } = self;
            let written = {
                let mut stage = |chunk: &[FlowRecord]| {
                    tee(chunk);
                    for s in staged.iter_mut() {
                        s.stage(chunk);
                    }
                };
                match writer {
                    Some(w) => w.write_teed(batch, &mut stage).await,
                    None => {
                        batch.record_chunks().for_each(|c| stage(&c));
                        Ok(())
                    }
                }
            };
            if let Err(e) = written {
                staged.iter_mut().for_each(|s| s.discard());
                return Err(e);
            }
            for sink in copies.iter_mut() {
                if let Err(e) = sink.write(batch).await {
                    tracing::warn!(error = format!("{e:#}"), "--json-out write failed");
                }
            }
            for s in staged.iter_mut() {
                s.publish(batch).await;
            }
            Ok(())
        })
    }
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub capture: CaptureOptions,
    pub interval: Duration,
    /// Name of the node the agent runs on (stamped on what it records).
    pub node: Option<String>,
    /// More node addresses than the agent's own interfaces (identity's Nodes),
    /// asked once an interval: the programs never aggregate client ports there.
    pub node_addresses: Option<NodeAddresses>,
}

/// A source of node addresses (see [`AgentConfig::node_addresses`]).
#[derive(Clone)]
pub struct NodeAddresses(pub Arc<dyn Fn() -> Vec<std::net::IpAddr> + Send + Sync>);

impl std::fmt::Debug for NodeAddresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeAddresses(..)")
    }
}

/// Totals of one agent run, for the exit log line and tests.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RunSummary {
    pub drains: u64,
    /// Drains started before the interval because the flow map was filling.
    pub early_drains: u64,
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

/// What the agent reports as it runs (serve: readiness and metrics).
pub trait AgentObserver: Send + Sync {
    /// The programs are attached: capture has started. `kernel_map_bytes`:
    /// what its maps hold in kernel memory (0 when the kernel did not say).
    fn attached(&self, _kernel_map_bytes: u64) {}
    /// One drain: how long reading and assembling took, and how full the flow
    /// maps were (entries / capacity, by map).
    fn drained(&self, _duration: Duration, _records: usize, _map_fill: &[(&'static str, f64)]) {}
}

struct NoObserver;
impl AgentObserver for NoObserver {}

/// How often the agent reads the kernel's insert counter to see whether the
/// active flow map copy is filling before the interval ends.
pub const FILL_POLL: Duration = Duration::from_millis(100);

/// Early drains come at most this often: each is a flip (and its 5 ms grace),
/// a read of the ring buffer and one SQLite transaction.
pub const MIN_DRAIN_GAP: Duration = Duration::from_millis(100);

/// Share of one flow map copy that, once inserted since the last flip, starts
/// a drain before the interval ends: the other half is the headroom the drain
/// has to empty the idle copy before the active one is full.
pub const EARLY_DRAIN_SHARE: f64 = 0.5;

/// Why a drain ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainReason {
    /// `--interval` elapsed.
    Interval,
    /// The active flow map copy filled to [`EARLY_DRAIN_SHARE`] first.
    MapFill,
}

impl DrainReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Interval => "interval",
            Self::MapFill => "map_fill",
        }
    }
}

/// Decides when to drain: at the latest every interval, earlier when the
/// kernel's insert counter says the active copy is filling.
#[derive(Debug, Clone)]
pub struct DrainTrigger {
    interval: Duration,
    /// Inserts since the flip that make a drain due.
    fill_threshold: u64,
    /// The insert counter at the last flip, and when that was.
    inserts_at_flip: u64,
    flipped_at: std::time::Instant,
}

impl DrainTrigger {
    pub fn new(
        interval: Duration,
        map_capacity: u32,
        inserts_now: u64,
        now: std::time::Instant,
    ) -> Self {
        let fill_threshold = ((f64::from(map_capacity) * EARLY_DRAIN_SHARE) as u64).max(1);
        Self {
            interval,
            fill_threshold,
            inserts_at_flip: inserts_now,
            flipped_at: now,
        }
    }

    /// Whether a drain is due now, and why.
    pub fn due(&self, inserts_now: u64, now: std::time::Instant) -> Option<DrainReason> {
        if now.saturating_duration_since(self.flipped_at) >= self.interval {
            Some(DrainReason::Interval)
        } else if inserts_now.wrapping_sub(self.inserts_at_flip) >= self.fill_threshold
            && now.saturating_duration_since(self.flipped_at) >= MIN_DRAIN_GAP.min(self.interval)
        {
            Some(DrainReason::MapFill)
        } else {
            None
        }
    }

    /// A drain is about to flip the copies: count inserts from here. (Read
    /// before the flip, so inserts racing the flip count against the new copy:
    /// the next early drain comes a little sooner, never later.)
    pub fn flipping(&mut self, inserts_now: u64, now: std::time::Instant) {
        self.inserts_at_flip = inserts_now;
        self.flipped_at = now;
    }
}

/// Runs until SIGINT/SIGTERM. Write failures are retried at the next interval;
/// only a failure of the final write is an error.
pub async fn run(config: AgentConfig, sink: &mut dyn FlowSink) -> Result<RunSummary, AgentError> {
    run_observed(config, sink, Arc::new(NoObserver)).await
}

/// [`run`], reporting to `observer`.
///
/// The drain loop (tracer) runs on a thread of its own and hands each batch to
/// the writer (exporter) on the caller's task: the writer's CPU work (full
/// records, identity, SQLite, metrics) never holds the kernel maps unread. On
/// one thread, a storm with identity and the API on got 15-19 drains in 30 s
/// instead of 33, and the maps filled.
pub async fn run_observed(
    config: AgentConfig,
    sink: &mut dyn FlowSink,
    observer: Arc<dyn AgentObserver>,
) -> Result<RunSummary, AgentError> {
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| AgentError::Signal("SIGTERM", e))?;
    let mut sigint =
        signal(SignalKind::interrupt()).map_err(|e| AgentError::Signal("SIGINT", e))?;

    let mut capture = Capture::load(config.capture.clone())?;
    let attached = capture.attach()?.join(", ");
    // Only reported: a kernel without per-map accounting must not stop the agent.
    let kernel_map_bytes = capture.kernel_map_bytes().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "kernel map memory not known");
        0
    });
    tracing::info!(
        %attached,
        interval = ?config.interval,
        node = config.node.as_deref().unwrap_or("-"),
        kernel_map_bytes,
        "capture attached"
    );
    observer.attached(kernel_map_bytes);
    // Loading parsed the kernel's BTF and the eBPF object: give that back.
    release_freed_memory();

    let (to_writer, from_drains) = tokio::sync::mpsc::unbounded_channel::<DrainBatch>();
    let writer = write_loop(sink, from_drains, config.interval);
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (done, mut drained) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("flowpol-drain".into())
        .spawn(move || {
            let result = match tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
            {
                Ok(rt) => rt.block_on(drain_loop(capture, config, observer, to_writer, stop_rx)),
                Err(e) => Err(AgentError::DrainThread(e)),
            };
            let _ = done.send(result);
        })
        .map_err(AgentError::DrainThread)?;
    // Signals are taken here, where they were registered before anything was
    // attached; the drain thread is told to stop.
    let drains = async move {
        tokio::select! {
            _ = sigterm.recv() => tracing::info!("SIGTERM: final drain"),
            _ = sigint.recv() => tracing::info!("SIGINT: final drain"),
            result = &mut drained => return result,
        }
        let _ = stop.send(true);
        drained.await
    };
    // If the drain loop fails, the channel closes and the writer still writes
    // what it was handed before the error is returned.
    let (drained, written) = futures::join!(drains, writer);
    let summary = drained.map_err(|_| {
        AgentError::DrainThread(std::io::Error::other("the drain thread panicked"))
    })??;
    written?;
    let counters = summary
        .counters
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join(" ");
    tracing::info!(
        drains = summary.drains,
        early_drains = summary.early_drains,
        records = summary.records,
        %counters,
        "capture detached"
    );
    Ok(summary)
}

/// The agent's own interface addresses and, with identity, every Node's.
fn node_addresses(config: &AgentConfig) -> std::collections::BTreeSet<std::net::IpAddr> {
    let mut addrs = crate::capture::host::own_addresses();
    if let Some(more) = &config.node_addresses {
        addrs.extend((more.0)());
    }
    addrs
}

/// The drain loop: drains when the interval is up or the flow map copy is half
/// full, hands each batch to the writer, and drains once more when `stop` turns
/// true; then detaches (drops the capture) and closes the writer's channel.
async fn drain_loop(
    mut capture: Capture,
    config: AgentConfig,
    observer: Arc<dyn AgentObserver>,
    to_writer: tokio::sync::mpsc::UnboundedSender<DrainBatch>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Result<RunSummary, AgentError> {
    // Stamped on every batch (shared, not copied per batch).
    let node: Option<Arc<str>> = config.node.as_deref().map(Arc::from);
    let mut summary = RunSummary::default();
    let mut loss_totals: Vec<(&'static str, u64)> = Vec::new();
    // Before the trigger's clock starts: the first interval drain refreshes.
    let mut tc_refreshed_at = std::time::Instant::now();
    capture.set_host_addresses(node_addresses(&config))?;
    let mut trigger = DrainTrigger::new(
        config.interval,
        capture.flow_map_capacity(),
        capture.flow_inserts()?,
        std::time::Instant::now(),
    );
    let mut poll = tokio::time::interval(FILL_POLL.min(config.interval));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut early_in_window = 0u64;
    let mut window_started = std::time::Instant::now();
    loop {
        tokio::select! {
            _ = poll.tick() => {
                let inserts = capture.flow_inserts()?;
                let now = std::time::Instant::now();
                let Some(reason) = trigger.due(inserts, now) else { continue };
                trigger.flipping(inserts, now);
                if reason == DrainReason::MapFill {
                    summary.early_drains += 1;
                    early_in_window += 1;
                }
                let batch =
                    drain_once(&mut capture, false, &node, &mut loss_totals, &mut summary)?;
                tracing::debug!(reason = reason.as_str(), records = batch.len(), "drain");
                observer.drained(now.elapsed(), batch.len(), &capture.map_fill());
                // tc mode: interfaces (pods' veths) come and go; once an
                // interval is enough (early drains may come ten times a second).
                if tc_refreshed_at.elapsed() >= config.interval {
                    capture.refresh_tc()?;
                    capture.set_host_addresses(node_addresses(&config))?;
                    tc_refreshed_at = std::time::Instant::now();
                }
                // The writer only goes away with the run, after the final drain.
                let _ = to_writer.send(batch);
                if window_started.elapsed() >= EARLY_DRAIN_REPORT {
                    if early_in_window > 0 {
                        tracing::warn!(
                            early_drains = early_in_window,
                            flow_map_entries = capture.flow_map_capacity(),
                            interval = ?config.interval,
                            "flow map half full before the interval ended: drained early \
                             (raise --flow-map-entries to drain less often)"
                        );
                    }
                    early_in_window = 0;
                    window_started = std::time::Instant::now();
                }
            }
            // A closed channel (the run is going away) stops the loop as well.
            _ = stop.wait_for(|stop| *stop) => break,
        }
    }
    let batch = drain_once(&mut capture, true, &node, &mut loss_totals, &mut summary)?;
    let _ = to_writer.send(batch);
    summary.counters = capture.counters()?;
    for p in capture.program_stats() {
        if let Some(mean) = p.mean_ns() {
            tracing::info!(
                program = p.name,
                run_count = p.run_count,
                run_time_ns = p.run_time_ns,
                mean_ns = format!("{mean:.1}"),
                "program stats"
            );
        }
    }
    drop(capture); // detaches every program
    drop(to_writer); // the writer writes what is left, then ends
    Ok(summary)
}

/// How often the agent warns (once, with a count) that the flow map filled
/// before the interval ended.
const EARLY_DRAIN_REPORT: Duration = Duration::from_secs(60);

/// Batches kept for retry while the sink fails (then the oldest are dropped).
const MAX_BACKLOG: usize = 120;

/// Compact records the write backlog holds at most (about 140 bytes each):
/// past it the oldest batches are dropped as `unwritten_records`.
const MAX_BACKLOG_RECORDS: usize = 500_000;

/// Takes the drain loop's batches and writes them in order. A failed write is
/// retried after `retry` (or at the next batch); batches wait meanwhile,
/// bounded by [`MAX_BACKLOG`] and [`MAX_BACKLOG_RECORDS`]. When the drain loop
/// ends (the channel closes) everything left is written once more; only a
/// failure of that last write is an error.
async fn write_loop(
    sink: &mut dyn FlowSink,
    mut batches: tokio::sync::mpsc::UnboundedReceiver<DrainBatch>,
    retry: Duration,
) -> Result<(), AgentError> {
    let mut backlog: Vec<DrainBatch> = Vec::new();
    let mut open = true;
    let mut retry_at: Option<tokio::time::Instant> = None;
    loop {
        while let Ok(batch) = batches.try_recv() {
            push_bounded(&mut backlog, batch);
        }
        if !open {
            break;
        }
        let may_write = retry_at.is_none_or(|t| tokio::time::Instant::now() >= t);
        if may_write && !backlog.is_empty() {
            // One batch at a time: between writes new batches join the backlog.
            match write_first(sink, &mut backlog).await {
                Some(_) => retry_at = Some(tokio::time::Instant::now() + retry),
                None => retry_at = None,
            }
            release_freed_memory();
            continue;
        }
        tokio::select! {
            batch = batches.recv() => match batch {
                Some(batch) => {
                    push_bounded(&mut backlog, batch);
                    // A new batch is a retry too (as the old loop retried each interval).
                    retry_at = None;
                }
                None => open = false,
            },
            _ = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)),
                if retry_at.is_some() => {}
        }
    }
    if let Some(err) = flush(sink, &mut backlog).await {
        let count = backlog.iter().map(DrainBatch::len).sum();
        return Err(AgentError::Sink { count, source: err });
    }
    Ok(())
}

/// Adds a batch to the backlog, dropping the oldest (as a recorded loss) past
/// the bounds.
fn push_bounded(backlog: &mut Vec<DrainBatch>, batch: DrainBatch) {
    backlog.push(batch);
    while backlog.len() > 1
        && (backlog.len() > MAX_BACKLOG + 1
            || backlog.iter().map(DrainBatch::len).sum::<usize>() > MAX_BACKLOG_RECORDS)
    {
        drop_oldest(backlog);
    }
}

/// Drops the oldest batch; the next one carries its loss (never silent).
fn drop_oldest(backlog: &mut Vec<DrainBatch>) {
    let lost = backlog.remove(0);
    tracing::error!(
        records = lost.len(),
        "write backlog full: oldest batch dropped"
    );
    if let Some(next) = backlog.first_mut() {
        next.losses.push(("unwritten_records", lost.len() as u64));
        next.losses.extend(lost.losses);
    }
}

/// Writes the first batch of the backlog (skipping empty ones). Returns the
/// failure, after which the batch stays first (bounded by [`MAX_BACKLOG`]).
async fn write_first(
    sink: &mut dyn FlowSink,
    backlog: &mut Vec<DrainBatch>,
) -> Option<anyhow::Error> {
    while let Some(batch) = backlog.first() {
        if batch.is_empty() && batch.losses.is_empty() {
            backlog.remove(0);
            continue;
        }
        return match sink.write(batch).await {
            Ok(()) => {
                backlog.remove(0);
                None
            }
            Err(err) => {
                tracing::error!(
                    error = format!("{err:#}"),
                    pending_batches = backlog.len(),
                    "writing flows failed; retrying"
                );
                if backlog.len() > MAX_BACKLOG {
                    drop_oldest(backlog);
                }
                Some(err)
            }
        };
    }
    None
}

/// Writes the backlog in order; stops at the first failure and keeps the rest
/// for the next try. Returns that failure.
async fn flush(sink: &mut dyn FlowSink, backlog: &mut Vec<DrainBatch>) -> Option<anyhow::Error> {
    while !backlog.is_empty() {
        if let Some(err) = write_first(sink, backlog).await {
            return Some(err);
        }
    }
    None
}

fn drain_once(
    capture: &mut Capture,
    final_drain: bool,
    node: &Option<Arc<str>>,
    loss_totals: &mut Vec<(&'static str, u64)>,
    summary: &mut RunSummary,
) -> Result<DrainBatch, AgentError> {
    let flows = capture.drain_compact(final_drain)?;
    let recorded_at = Utc::now();
    summary.drains += 1;
    summary.records += flows.len() as u64;
    tracing::debug!(records = flows.len(), final_drain, "drained");
    let now: Vec<(&'static str, u64)> = capture
        .counters()?
        .into_iter()
        .filter(|(n, _)| LOSS_COUNTERS.contains(n))
        .collect();
    let mut losses = Vec::new();
    for (name, value) in &now {
        let old = loss_totals
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
            losses.push((*name, value - old));
        }
    }
    *loss_totals = now;
    let mut batch = DrainBatch::new(flows, losses, recorded_at);
    batch.node = node.clone();
    Ok(batch)
}

/// glibc keeps what a drain freed in its arenas (its high-water mark stays
/// resident); hand it back to the kernel once the interval is written.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and trims the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
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
    fn write_teed<'a>(&'a mut self, batch: &'a DrainBatch, tee: Tee<'a>) -> SinkWrite<'a> {
        Box::pin(async move {
            let mut buf = Vec::new();
            for chunk in batch.record_chunks() {
                tee(&chunk);
                buf.clear();
                for r in &chunk {
                    serde_json::to_writer(&mut buf, r)?;
                    buf.push(b'\n');
                }
                self.out.write_all(&buf)?;
            }
            self.out.flush()?;
            Ok(())
        })
    }
}

/// The SQLite store: each batch in one transaction (`Store::write_drain_chunks`), with
/// retention started at most once a minute after a write. Retention runs as a task of its
/// own: pruning a full database takes seconds, and an awaited prune would hold up the
/// batches behind it (when drains and writes shared a thread, the soak run lost packets to
/// full maps each time retention ran inline).
pub struct StoreSink {
    store: crate::store::Store,
    retention: crate::store::Retention,
    last_prune: Option<std::time::Instant>,
    prune_task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for StoreSink {
    fn drop(&mut self) {
        // Each prune step is its own short transaction: stopping between them loses nothing.
        if let Some(task) = self.prune_task.take() {
            task.abort();
        }
    }
}

const PRUNE_EVERY: Duration = Duration::from_secs(60);

impl StoreSink {
    pub fn new(store: crate::store::Store, retention: crate::store::Retention) -> Self {
        Self {
            store,
            retention,
            last_prune: None,
            prune_task: None,
        }
    }
}

impl FlowSink for StoreSink {
    fn write_teed<'a>(&'a mut self, batch: &'a DrainBatch, tee: Tee<'a>) -> SinkWrite<'a> {
        Box::pin(async move {
            let losses: Vec<crate::store::CaptureLoss> = batch
                .losses
                .iter()
                .map(|(name, delta)| crate::store::CaptureLoss {
                    counter: name.to_string(),
                    delta: *delta,
                })
                .collect();
            self.store
                .write_drain_chunks(
                    batch.record_chunks().inspect(|chunk| tee(chunk)),
                    &losses,
                    batch.recorded_at,
                    batch.node.as_deref(),
                )
                .await?;
            let pruning = self.prune_task.as_ref().is_some_and(|t| !t.is_finished());
            if !pruning && self.last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                self.last_prune = Some(std::time::Instant::now());
                let (store, retention) = (self.store.clone(), self.retention);
                // A failed prune must not fail (and re-send) a batch already stored.
                self.prune_task = Some(tokio::spawn(async move {
                    match store.prune(&retention, Utc::now()).await {
                        Ok(r) if r.rows_deleted_by_age + r.rows_deleted_by_size > 0 => {
                            tracing::info!(
                                by_age = r.rows_deleted_by_age,
                                by_size = r.rows_deleted_by_size,
                                used_bytes = r.used_bytes,
                                "retention pruned flows"
                            );
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "retention failed; retrying later"),
                    }
                }));
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fails its first `failures` writes, then stores batches.
    struct FlakySink {
        failures: usize,
        written: Vec<DrainBatch>,
    }

    impl FlowSink for FlakySink {
        fn write_teed<'a>(&'a mut self, batch: &'a DrainBatch, tee: Tee<'a>) -> SinkWrite<'a> {
            Box::pin(async move {
                batch.record_chunks().for_each(|c| tee(&c));
                if self.failures > 0 {
                    self.failures -= 1;
                    anyhow::bail!("disk full");
                }
                self.written.push(batch.clone());
                Ok(())
            })
        }
    }

    fn batch(records: usize) -> DrainBatch {
        let json = r#"{"src":{"ip":"10.0.0.1","port":1},"dst":{"ip":"10.0.0.2","port":2},"protocol":"UDP","packets":1,"bytes":29,"first_seen":"2026-01-01T00:00:00Z","last_seen":"2026-01-01T00:00:00Z","verdict":"forwarded","drop_reason":null}"#;
        let record: FlowRecord = serde_json::from_str(json).unwrap();
        DrainBatch::new(
            vec![CompactFlow::from_record(&record); records],
            vec![],
            Utc::now(),
        )
    }

    #[tokio::test]
    async fn failed_writes_are_retried_in_order_and_an_overflowing_backlog_is_a_recorded_loss() {
        let mut sink = FlakySink {
            failures: MAX_BACKLOG + 1,
            written: vec![],
        };
        let mut backlog = Vec::new();
        for i in 0..=MAX_BACKLOG {
            backlog.push(batch(i % 3 + 1));
            let failed = flush(&mut sink, &mut backlog).await;
            assert!(failed.is_some(), "write {i} should fail");
        }
        // The first batch (1 record) was dropped to bound the backlog.
        assert_eq!(backlog.len(), MAX_BACKLOG);
        assert_eq!(backlog[0].losses, vec![("unwritten_records", 1)]);
        backlog.push(batch(1));
        assert!(flush(&mut sink, &mut backlog).await.is_none());
        assert!(backlog.is_empty());
        assert_eq!(sink.written.len(), MAX_BACKLOG + 1);
        assert_eq!(sink.written[0].losses, vec![("unwritten_records", 1)]);
        assert_eq!(sink.written[0].len(), 2);
    }

    #[test]
    fn the_map_filling_to_half_drains_before_the_interval_which_stays_the_upper_bound() {
        let t0 = std::time::Instant::now();
        let sec = Duration::from_secs(1);
        let mut trigger = DrainTrigger::new(Duration::from_secs(5), 1024, 10_000, t0);
        // 511 inserts since the flip: not yet; 512 (half of 1024): due, though
        // no sooner than MIN_DRAIN_GAP after the last drain.
        assert_eq!(trigger.due(10_511, t0 + sec), None);
        assert_eq!(trigger.due(10_512, t0 + MIN_DRAIN_GAP / 2), None);
        assert_eq!(trigger.due(10_512, t0 + sec), Some(DrainReason::MapFill));
        // After the flip the count starts again from there.
        trigger.flipping(10_512, t0 + sec);
        assert_eq!(trigger.due(10_900, t0 + 2 * sec), None);
        // Quiet maps still drain every interval, counted from the last drain.
        assert_eq!(trigger.due(10_600, t0 + 5 * sec), None);
        assert_eq!(
            trigger.due(10_600, t0 + 6 * sec),
            Some(DrainReason::Interval)
        );
        // A counter that wrapped around still counts forward.
        let mut wrapped = DrainTrigger::new(Duration::from_secs(5), 1024, u64::MAX - 100, t0);
        assert_eq!(wrapped.due(411, t0 + sec), Some(DrainReason::MapFill));
        wrapped.flipping(411, t0 + sec);
        assert_eq!(wrapped.due(412, t0 + 2 * sec), None);
        // A map of one entry drains at every insert (at most every MIN_DRAIN_GAP).
        let tiny = DrainTrigger::new(Duration::from_secs(5), 1, 0, t0);
        assert_eq!(tiny.due(1, t0 + MIN_DRAIN_GAP), Some(DrainReason::MapFill));
    }

    /// Holds each write until the test lets it go; records what it wrote.
    struct GatedSink {
        gate: Arc<tokio::sync::Semaphore>,
        started: Arc<std::sync::atomic::AtomicUsize>,
        written: Arc<std::sync::Mutex<Vec<usize>>>,
    }

    impl FlowSink for GatedSink {
        fn write_teed<'a>(&'a mut self, batch: &'a DrainBatch, _tee: Tee<'a>) -> SinkWrite<'a> {
            Box::pin(async move {
                self.started
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                self.gate.acquire().await.unwrap().forget();
                self.written.lock().unwrap().push(batch.len());
                Ok(())
            })
        }
    }

    #[tokio::test]
    async fn batches_handed_over_during_a_slow_write_wait_and_are_written_in_order() {
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let written = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut sink = GatedSink {
            gate: gate.clone(),
            started: started.clone(),
            written: written.clone(),
        };
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let writer = write_loop(&mut sink, rx, Duration::from_secs(3600));
        let drains = async {
            tx.send(batch(1)).unwrap();
            // The first write is stuck; the drain side goes on handing over.
            while started.load(std::sync::atomic::Ordering::SeqCst) == 0 {
                tokio::task::yield_now().await;
            }
            for n in 2..=4 {
                tx.send(batch(n)).unwrap();
            }
            assert!(written.lock().unwrap().is_empty());
            gate.add_permits(4);
            drop(tx); // the run ends: everything handed over is written
        };
        let (_, result) = futures::join!(drains, writer);
        result.unwrap();
        assert_eq!(*written.lock().unwrap(), vec![1, 2, 3, 4]);
    }

    #[test]
    fn the_backlog_is_bounded_in_records_and_says_what_it_dropped() {
        let mut backlog = Vec::new();
        let big = MAX_BACKLOG_RECORDS / 2 + 1;
        let template = batch(1).flows[0].clone();
        let sized = |n: usize| DrainBatch::new(vec![template.clone(); n], vec![], Utc::now());
        push_bounded(&mut backlog, sized(big));
        push_bounded(&mut backlog, sized(big - 2));
        assert_eq!(backlog.len(), 2);
        push_bounded(&mut backlog, sized(3));
        assert_eq!(backlog.len(), 2, "the oldest went");
        assert_eq!(backlog[0].losses, vec![("unwritten_records", big as u64)]);
        // One batch is always kept, however large.
        let mut single = Vec::new();
        push_bounded(&mut single, sized(MAX_BACKLOG_RECORDS + 1));
        assert_eq!(single.len(), 1);
    }

    /// Names every source `shop/client` and counts the records it is given.
    struct CountingEnricher(std::sync::atomic::AtomicUsize);

    impl EnrichRecords for CountingEnricher {
        fn enrich_records(&self, records: &mut [FlowRecord]) {
            self.0
                .fetch_add(records.len(), std::sync::atomic::Ordering::SeqCst);
            for r in records {
                r.src.namespace = Some("shop".into());
                r.src.pod = Some("client".into());
            }
        }
    }

    #[tokio::test]
    async fn the_fanout_resolves_each_record_once_for_the_store_and_the_metrics_which_count_stored_batches_only()
     {
        use crate::serve::metrics::{Metrics, ServeSink};
        let flows_egress = |m: &Metrics| {
            let text = m.encode().unwrap();
            text.lines()
                .find(|l| {
                    l.starts_with(r#"flowpol_flows_total{namespace="shop",verdict="forwarded",direction="egress"}"#)
                })
                .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        };
        let n = WRITE_CHUNK + 10;
        let enricher = Arc::new(CountingEnricher(Default::default()));
        let mut batch = batch(n);
        batch.enrich = Some(enricher.clone());
        let resolved = || enricher.0.load(std::sync::atomic::Ordering::SeqCst);
        let metrics = Arc::new(Metrics::new());
        let (live, _) = tokio::sync::broadcast::channel(16);
        let serve = || -> Box<dyn StagedSink> {
            Box::new(ServeSink {
                metrics: metrics.clone(),
                live: live.clone(),
                tally: Default::default(),
            })
        };

        // The store and the metrics: each record made and resolved once.
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("flows.db"))
            .await
            .unwrap();
        let mut fanout = Fanout {
            writer: Some(Box::new(StoreSink::new(
                store.clone(),
                crate::store::Retention::default(),
            ))),
            copies: vec![],
            staged: vec![serve()],
        };
        fanout.write(&batch).await.unwrap();
        assert_eq!(resolved(), n, "one resolution per record");
        assert_eq!(store.count_rows().await.unwrap(), n as u64);
        assert_eq!(flows_egress(&metrics), Some(n as u64));

        // A follow stream gets the records too (made again for it, only while it follows).
        let mut follow = live.subscribe();
        fanout.write(&batch).await.unwrap();
        let mut followed = 0;
        while let Ok(chunk) = follow.try_recv() {
            assert!(chunk.iter().all(|r| r.src.pod.as_deref() == Some("client")));
            followed += chunk.len();
        }
        assert_eq!(followed, n);
        assert_eq!(resolved(), 3 * n);
        drop(follow);
        assert_eq!(flows_egress(&metrics), Some(2 * n as u64));
        drop(fanout);
        store.close().await;

        // A writer that fails: nothing counted; the retry counts the batch once.
        let metrics_before = flows_egress(&metrics);
        let mut fanout = Fanout {
            writer: Some(Box::new(FlakySink {
                failures: 1,
                written: vec![],
            })),
            copies: vec![],
            staged: vec![serve()],
        };
        assert!(fanout.write(&batch).await.is_err());
        assert_eq!(flows_egress(&metrics), metrics_before);
        fanout.write(&batch).await.unwrap();
        assert_eq!(flows_egress(&metrics), Some(3 * n as u64));

        // No writer (only --listen): the fan-out makes the records for the staged sinks.
        let mut fanout = Fanout {
            staged: vec![serve()],
            ..Fanout::default()
        };
        let before = resolved();
        fanout.write(&batch).await.unwrap();
        assert_eq!(resolved() - before, n);
        assert_eq!(flows_egress(&metrics), Some(4 * n as u64));
    }

    /// Sums over one table of the database at `db`.
    async fn sums(store: &crate::store::Store, sql: &str) -> Vec<i64> {
        use sqlx::Row;
        let row = sqlx::query(sql).fetch_one(store.pool()).await.unwrap();
        (0..row.len())
            .map(|i| row.try_get::<Option<i64>, _>(i).unwrap().unwrap_or(-1))
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retention_runs_beside_the_writes_and_prunes_the_oldest_rows() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("flows.db"))
            .await
            .unwrap();
        let template = batch(1).flows[0].clone();
        let interval = |k: usize| {
            let flows: Vec<CompactFlow> = (0..20_000)
                .map(|i| {
                    let mut f = template.clone();
                    f.src.1 = (i % 60_000) as u16;
                    f.dst.0 = std::net::IpAddr::from([10, k as u8, (i >> 8) as u8, i as u8]);
                    f
                })
                .collect();
            DrainBatch::new(flows, vec![], Utc::now())
        };
        // Past 1 MiB of pages the oldest rows go.
        let retention = crate::store::Retention {
            max_age: None,
            max_size_bytes: Some(1 << 20),
        };
        let mut sink = StoreSink::new(store.clone(), retention);
        // The write returns with the prune it started still running beside it, or done.
        sink.write(&interval(1)).await.unwrap();
        assert!(
            sink.prune_task.is_some(),
            "the first write starts retention"
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while sink.prune_task.as_ref().is_some_and(|t| !t.is_finished()) {
            assert!(std::time::Instant::now() < deadline, "prune never ended");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let after_prune = store.count_rows().await.unwrap();
        assert!(
            after_prune > 0 && after_prune < 20_000,
            "1 MiB keeps some of the 20 000 rows, not all: {after_prune}"
        );
        assert!(store.used_bytes().await.unwrap() <= 1 << 20);
        // Within the minute, a write starts no other prune.
        sink.write(&interval(2)).await.unwrap();
        assert!(sink.prune_task.as_ref().is_some_and(|t| t.is_finished()));
        assert_eq!(store.count_rows().await.unwrap(), after_prune + 20_000);
        drop(sink);
        store.close().await;
    }
    #[tokio::test]
    async fn the_store_sink_writes_a_batch_chunk_by_chunk_exactly_as_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        let template = batch(1).flows[0].clone();
        let n = WRITE_CHUNK * 2 + 123;
        let flows: Vec<CompactFlow> = (0..n)
            .map(|i| {
                let mut f = template.clone();
                f.src.1 = (i % 60_000) as u16;
                f.dst.0 = std::net::IpAddr::from([10, 9, (i >> 8) as u8, i as u8]);
                f.packets = i as u64 % 17 + 1;
                f.bytes = i as u64 * 3 + 29;
                f.reply_bytes = i as u64 % 5;
                f.last_seen += chrono::Duration::milliseconds(i as i64);
                f
            })
            .collect();
        let mut batch = DrainBatch::new(flows.clone(), vec![("flow_map_full", 3)], Utc::now());
        batch.node = Some("node-a".into());
        assert!(batch.record_chunks().count() == 3);

        // Chunked: what the agent does.
        let chunked = crate::store::Store::open(&dir.path().join("chunked.db"))
            .await
            .unwrap();
        let mut sink = StoreSink::new(chunked.clone(), crate::store::Retention::default());
        sink.write(&batch).await.unwrap();
        // Whole: every record in one slice.
        let whole = crate::store::Store::open(&dir.path().join("whole.db"))
            .await
            .unwrap();
        let records: Vec<FlowRecord> = flows
            .iter()
            .map(|f| FlowRecord {
                node: Some("node-a".into()),
                ..f.to_record()
            })
            .collect();
        let losses = [crate::store::CaptureLoss {
            counter: "flow_map_full".into(),
            delta: 3,
        }];
        whole
            .write_drain(&records, &losses, batch.recorded_at, Some("node-a"))
            .await
            .unwrap();

        let queries = [
            "SELECT COUNT(*), SUM(packets), SUM(bytes), SUM(reply_bytes), \
             MIN(last_seen_ns), MAX(last_seen_ns) FROM flows",
            "SELECT COUNT(*), SUM(flow_count), MIN(first_flow_id), MAX(last_flow_id), \
             MIN(min_last_seen_ns), MAX(max_last_seen_ns), MIN(recorded_ns) FROM drains",
            "SELECT COUNT(*), SUM(delta) FROM capture_losses WHERE node = 'node-a'",
            "SELECT COUNT(*) FROM flows WHERE node = 'node-a'",
        ];
        for q in queries {
            assert_eq!(sums(&chunked, q).await, sums(&whole, q).await, "{q}");
        }
        let drains = sums(&chunked, queries[1]).await;
        assert_eq!(
            drains[..2],
            [1, n as i64],
            "one drains row for the interval"
        );
        let flows_row = sums(&chunked, queries[0]).await;
        assert_eq!(flows_row[0], n as i64);
        assert_eq!(
            sums(&chunked, queries[3]).await,
            [n as i64],
            "--node-name on every row"
        );
        let expected: u64 = flows.iter().map(|f| f.bytes).sum();
        assert_eq!(flows_row[2], expected as i64);
    }
}

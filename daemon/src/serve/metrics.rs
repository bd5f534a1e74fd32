//! `/metrics`: the agent's Prometheus metrics (prometheus-client, OpenMetrics
//! text), fed by a sink next to the store and by the drain loop.
use std::collections::HashMap;
#[cfg(feature = "agent")]
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use flowpol_recommender::flow::{FlowRecord, Verdict};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::ApiState;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowLabels {
    /// The end's namespace; empty for ends outside the cluster's pods.
    pub namespace: String,
    pub verdict: String,
    /// `egress`: counted at the source's namespace; `ingress`: the destination's.
    pub direction: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CounterLabels {
    pub counter: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabels {
    pub map: String,
}

/// A batch's flow and drop counts by label set, held until the batch is stored
/// ([`Metrics::record_tally`]): a batch the store fails is retried whole, and must not count twice.
#[derive(Debug, Default)]
pub struct FlowTally {
    /// (flows, bytes) by label set.
    flows: HashMap<FlowLabels, (u64, u64)>,
    /// Dropped packets by drop reason.
    drops: HashMap<String, u64>,
}

impl FlowTally {
    pub fn add(&mut self, records: &[FlowRecord]) {
        for f in records {
            let verdict = f.verdict.to_string();
            let bytes = f.bytes.saturating_add(f.reply_bytes);
            for (direction, end) in [("egress", &f.src), ("ingress", &f.dst)] {
                let labels = FlowLabels {
                    namespace: end.namespace.clone().unwrap_or_default(),
                    verdict: verdict.clone(),
                    direction,
                };
                let (flows, b) = self.flows.entry(labels).or_default();
                *flows += f.flows();
                *b = b.saturating_add(bytes);
            }
            if f.verdict == Verdict::Dropped {
                let reason = f.drop_reason.as_deref().unwrap_or("unknown");
                match self.drops.get_mut(reason) {
                    Some(n) => *n += f.packets.max(1),
                    None => {
                        self.drops.insert(reason.to_string(), f.packets.max(1));
                    }
                }
            }
        }
    }

    pub fn clear(&mut self) {
        self.flows.clear();
        self.drops.clear();
    }
}

pub struct Metrics {
    registry: Registry,
    flows: Family<FlowLabels, Counter>,
    bytes: Family<FlowLabels, Counter>,
    drops: Family<ReasonLabels, Counter>,
    losses: Family<CounterLabels, Counter>,
    map_fill: Family<MapLabels, Gauge<f64, AtomicU64>>,
    kernel_map_bytes: Gauge,
    identity_intervals: Gauge,
    identity_keys: Gauge,
    drain_duration: Histogram,
    drain_records: Counter,
    query_duration: Histogram,
    follow_lagged: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("flowpol");
        let flows = Family::<FlowLabels, Counter>::default();
        registry.register(
            "flows",
            "Flow records written (one per flow per drain interval), by namespace of each end and verdict",
            flows.clone(),
        );
        let bytes = Family::<FlowLabels, Counter>::default();
        registry.register(
            "bytes",
            "Bytes of recorded flows (both directions), by namespace of each end and verdict",
            bytes.clone(),
        );
        let drops = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "dropped_packets",
            "Packets the kernel dropped, by kernel drop reason",
            drops.clone(),
        );
        let losses = Family::<CounterLabels, Counter>::default();
        registry.register(
            "capture_losses",
            "Data capture lost or skipped, by counter (flow_map_full, ringbuf_full, ...)",
            losses.clone(),
        );
        let map_fill = Family::<MapLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "map_fill_ratio",
            "Entries in a kernel flow map at the last drain over its capacity",
            map_fill.clone(),
        );
        let kernel_map_bytes = Gauge::default();
        registry.register(
            "kernel_map_bytes",
            "Kernel memory held by the capture's eBPF maps (their memlock accounting), outside the agent's RSS",
            kernel_map_bytes.clone(),
        );
        let identity_intervals = Gauge::default();
        registry.register(
            "identity_cache_intervals",
            "Ownership intervals held in memory by the identity cache",
            identity_intervals.clone(),
        );
        let identity_keys = Gauge::default();
        registry.register(
            "identity_cache_keys",
            "Addresses and cgroups with an ownership time line in the identity cache",
            identity_keys.clone(),
        );
        let drain_duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        registry.register(
            "drain_duration_seconds",
            "Time to read the kernel maps and assemble records, per drain",
            drain_duration.clone(),
        );
        let drain_records = Counter::default();
        registry.register(
            "drained_records",
            "Records assembled by drains",
            drain_records.clone(),
        );
        let query_duration = Histogram::new(exponential_buckets(0.0005, 2.0, 16));
        registry.register(
            "api_query_duration_seconds",
            "Time to answer /api/v1/flows queries (not follow streams)",
            query_duration.clone(),
        );
        let follow_lagged = Counter::default();
        registry.register(
            "api_follow_lagged_batches",
            "Drain batches follow clients missed because they read slower than the agent records",
            follow_lagged.clone(),
        );
        Self {
            registry,
            flows,
            bytes,
            drops,
            losses,
            map_fill,
            kernel_map_bytes,
            identity_intervals,
            identity_keys,
            drain_duration,
            drain_records,
            query_duration,
            follow_lagged,
        }
    }

    /// Counts a written batch.
    pub fn record_batch(&self, records: &[FlowRecord], losses: &[(&'static str, u64)]) {
        let mut tally = FlowTally::default();
        tally.add(records);
        self.record_tally(&mut tally);
        self.record_losses(losses);
    }

    /// Adds what `tally` counted and empties it.
    pub fn record_tally(&self, tally: &mut FlowTally) {
        for (labels, (flows, bytes)) in tally.flows.drain() {
            self.flows.get_or_create(&labels).inc_by(flows);
            self.bytes.get_or_create(&labels).inc_by(bytes);
        }
        for (reason, packets) in tally.drops.drain() {
            self.drops
                .get_or_create(&ReasonLabels { reason })
                .inc_by(packets);
        }
    }

    pub fn record_losses(&self, losses: &[(&'static str, u64)]) {
        for (counter, delta) in losses {
            self.losses
                .get_or_create(&CounterLabels {
                    counter: (*counter).to_string(),
                })
                .inc_by(*delta);
        }
    }

    /// What the capture's maps hold in kernel memory (set once, at attach).
    pub fn set_kernel_map_bytes(&self, bytes: u64) {
        self.kernel_map_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub fn observe_drain(&self, duration: Duration, records: usize, map_fill: &[(&str, f64)]) {
        self.drain_duration.observe(duration.as_secs_f64());
        self.drain_records.inc_by(records as u64);
        for (map, fill) in map_fill {
            self.map_fill
                .get_or_create(&MapLabels {
                    map: (*map).to_string(),
                })
                .set(*fill);
        }
    }

    pub fn observe_query(&self, duration: Duration) {
        self.query_duration.observe(duration.as_secs_f64());
    }

    pub fn follow_lagged(&self, n: u64) {
        self.follow_lagged.inc_by(n);
    }

    pub fn set_identity_size(&self, intervals: usize, keys: usize) {
        self.identity_intervals
            .set(i64::try_from(intervals).unwrap_or(i64::MAX));
        self.identity_keys
            .set(i64::try_from(keys).unwrap_or(i64::MAX));
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

pub async fn handler(State(state): State<ApiState>) -> Response {
    if let Some(identity) = state.readiness.identity() {
        let (intervals, keys) = identity.size();
        state.metrics.set_identity_size(intervals, keys);
    }
    match state.metrics.encode() {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

/// Feeds stored batches to the metrics and to follow streams. A staged sink of the agent's
/// fan-out: it counts the records the store is writing (made and given identity once for
/// both) and adds the counts only once the store has committed the batch.
#[cfg(feature = "agent")]
pub struct ServeSink {
    pub metrics: Arc<Metrics>,
    pub live: super::LiveFlows,
    pub tally: FlowTally,
}

#[cfg(feature = "agent")]
impl crate::agent::StagedSink for ServeSink {
    fn stage(&mut self, chunk: &[FlowRecord]) {
        self.tally.add(chunk);
    }

    fn publish<'a>(
        &'a mut self,
        batch: &'a crate::agent::DrainBatch,
    ) -> futures::future::BoxFuture<'a, ()> {
        Box::pin(async move {
            self.metrics.record_tally(&mut self.tally);
            self.metrics.record_losses(&batch.losses);
            // Follow streams get full records, a chunk at a time (each its own message),
            // made again here: holding the staged ones until the commit would keep a whole
            // interval's records in memory. Only while somebody follows.
            if self.live.receiver_count() == 0 {
                return;
            }
            for chunk in batch.record_chunks() {
                if chunk.is_empty() {
                    continue;
                }
                // No receiver left is not an error: nobody follows.
                let _ = self.live.send(Arc::new(chunk));
                // Let follow streams take this chunk before the next.
                tokio::task::yield_now().await;
            }
        })
    }

    fn discard(&mut self) {
        self.tally.clear();
    }
}

/// Drain-loop reports to readiness and metrics.
#[cfg(feature = "agent")]
pub struct ServeObserver {
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<super::Readiness>,
}

#[cfg(feature = "agent")]
impl crate::agent::AgentObserver for ServeObserver {
    fn attached(&self, kernel_map_bytes: u64) {
        self.metrics.set_kernel_map_bytes(kernel_map_bytes);
        self.readiness.set_attached();
    }
    fn drained(&self, duration: Duration, records: usize, map_fill: &[(&'static str, f64)]) {
        self.metrics.observe_drain(duration, records, map_fill);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowpol_recommender::flow::{Endpoint, Protocol, TcpFlags};

    #[test]
    fn counts_flows_bytes_and_drops() {
        let m = Metrics::new();
        let t = chrono::Utc::now();
        let mut src = Endpoint::new("10.0.0.1".parse().unwrap(), 1000);
        src.namespace = Some("shop".into());
        let f = FlowRecord {
            src,
            dst: Endpoint::new("10.0.0.2".parse().unwrap(), 80),
            protocol: Protocol::Tcp,
            packets: 3,
            bytes: 100,
            reply_packets: 0,
            reply_bytes: 0,
            first_seen: t,
            last_seen: t,
            verdict: Verdict::Dropped,
            drop_reason: Some("NETFILTER_DROP".into()),
            tcp_flags: TcpFlags(1),
            connections: 0,
            cgroup_id: None,
            node: None,
        };
        // A client's five connections to one port, aggregated: five flows.
        let mut aggregated = f.clone();
        aggregated.verdict = Verdict::Forwarded;
        aggregated.drop_reason = None;
        aggregated.src.port = 0;
        aggregated.connections = 5;
        m.record_batch(&[f, aggregated], &[("ringbuf_full", 2)]);
        m.observe_drain(Duration::from_millis(3), 1, &[("flows", 0.25)]);
        m.set_kernel_map_bytes(39_082_920);
        let text = m.encode().unwrap();
        for want in [
            r#"flowpol_flows_total{namespace="shop",verdict="dropped",direction="egress"} 1"#,
            r#"flowpol_flows_total{namespace="shop",verdict="forwarded",direction="egress"} 5"#,
            r#"flowpol_bytes_total{namespace="",verdict="dropped",direction="ingress"} 100"#,
            r#"flowpol_dropped_packets_total{reason="NETFILTER_DROP"} 3"#,
            r#"flowpol_capture_losses_total{counter="ringbuf_full"} 2"#,
            r#"flowpol_map_fill_ratio{map="flows"} 0.25"#,
            "flowpol_drain_duration_seconds_count 1",
            "flowpol_kernel_map_bytes 39082920",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
    }
}

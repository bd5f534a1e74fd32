//! The cluster-wide view: find the agent pods with kube-rs, ask each one's
//! `/api/v1/flows` through the API server's pod proxy, and merge the per-node
//! answers into one list. A node that does not answer is reported, not fatal.
use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::Utc;
use flowpol_recommender::flow::{FlowRecord, aggregates_connections};
use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use serde::Serialize;
use tokio::sync::mpsc;

use super::filter::{FlowFilter, encode};
use super::flows_api::FlowsPage;
use super::{DEFAULT_PORT, MAX_PAGE, TOKEN_HEADER};

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("listing agent pods in namespace {namespace} with selector {selector:?}: {source}")]
    ListPods {
        namespace: String,
        selector: String,
        source: kube::Error,
    },
    #[error(
        "no agent pods in namespace {namespace} match {selector:?} (is flowpol deployed? see --agent-namespace / --agent-selector)"
    )]
    NoAgents { namespace: String, selector: String },
}

/// Where the agents are and how to talk to them.
#[derive(Debug, Clone)]
pub struct AgentTarget {
    pub namespace: String,
    /// Label selector of the agent pods.
    pub selector: String,
    /// The API port when a pod declares no container port named `api` or `http`.
    pub port: u16,
    /// The agents' bearer token.
    pub token: Option<String>,
}

impl Default for AgentTarget {
    fn default() -> Self {
        Self {
            namespace: "flowpol".into(),
            selector: "app.kubernetes.io/name=flowpol".into(),
            port: DEFAULT_PORT,
            token: None,
        }
    }
}

/// One agent pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AgentPod {
    pub pod: String,
    pub node: String,
    pub port: u16,
    /// Why the pod cannot be asked (not running, no address), if so.
    #[serde(skip)]
    pub unusable: Option<String>,
}

/// A node whose agent did not answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeFailure {
    pub node: String,
    pub pod: String,
    pub error: String,
}

impl std::fmt::Display for NodeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "node {} (agent pod {}): {}",
            self.node, self.pod, self.error
        )
    }
}

/// A client for talking to agents through the API server. kube-rs retries 503
/// answers for about a minute by default; through the pod proxy a 503 is an
/// agent that is down, which should be reported at once, not waited out.
pub fn agent_client(mut config: kube::Config) -> Result<kube::Client, kube::Error> {
    config.default_retry = false;
    kube::Client::try_from(config)
}

/// The agent pods the target names (sorted by node).
pub async fn find_agents(
    client: &kube::Client,
    target: &AgentTarget,
) -> Result<Vec<AgentPod>, ClusterError> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &target.namespace);
    let list = pods
        .list(&ListParams::default().labels(&target.selector))
        .await
        .map_err(|source| ClusterError::ListPods {
            namespace: target.namespace.clone(),
            selector: target.selector.clone(),
            source,
        })?;
    let mut agents: Vec<AgentPod> = list
        .items
        .into_iter()
        .map(|p| {
            let pod = p.metadata.name.clone().unwrap_or_default();
            let spec = p.spec.as_ref();
            let node = spec
                .and_then(|s| s.node_name.clone())
                .unwrap_or_else(|| pod.clone());
            // The container port named `api`, else `http` (deploy/'s DaemonSet), else the flag.
            let named = |name: &str| {
                spec.into_iter()
                    .flat_map(|s| &s.containers)
                    .flat_map(|c| c.ports.iter().flatten())
                    .find(|cp| cp.name.as_deref() == Some(name))
                    .and_then(|cp| u16::try_from(cp.container_port).ok())
            };
            let port = named("api")
                .or_else(|| named("http"))
                .unwrap_or(target.port);
            let status = p.status.as_ref();
            let phase = status.and_then(|s| s.phase.clone()).unwrap_or_default();
            let unusable = if p.metadata.deletion_timestamp.is_some() {
                Some("pod is terminating".to_string())
            } else if phase != "Running" {
                Some(format!("pod is not running (phase {phase:?})"))
            } else if status.and_then(|s| s.pod_ip.as_ref()).is_none() {
                Some("pod has no IP yet".to_string())
            } else {
                None
            };
            AgentPod {
                pod,
                node,
                port,
                unusable,
            }
        })
        .collect();
    if agents.is_empty() {
        return Err(ClusterError::NoAgents {
            namespace: target.namespace.clone(),
            selector: target.selector.clone(),
        });
    }
    agents.sort_by(|a, b| (&a.node, &a.pod).cmp(&(&b.node, &b.pod)));
    Ok(agents)
}

fn proxy_path(target: &AgentTarget, agent: &AgentPod, query: &str) -> String {
    format!(
        "/api/v1/namespaces/{}/pods/{}:{}/proxy/api/v1/flows?{query}",
        target.namespace, agent.pod, agent.port
    )
}

fn request(target: &AgentTarget, path: &str) -> http::Request<Vec<u8>> {
    let mut req = http::Request::get(path);
    if let Some(t) = &target.token {
        req = req.header(TOKEN_HEADER, t.as_str());
    }
    req.body(Vec::new())
        .unwrap_or_else(|_| http::Request::new(Vec::new()))
}

fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => {
            format!("HTTP {}: {}", status.code, status.message.trim())
        }
        other => other.to_string(),
    }
}

fn query_string(filter: &FlowFilter, extra: &[(&str, String)]) -> String {
    filter
        .to_params(Utc::now())
        .iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain(extra.iter().map(|(k, v)| (*k, v.as_str())))
        .map(|(k, v)| format!("{k}={}", encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Every flow one agent holds that `filter` selects: merged flows (the newest
/// `limit`) or, without a limit, every stored row page by page.
async fn flows_of(
    client: &kube::Client,
    target: &AgentTarget,
    agent: &AgentPod,
    filter: &FlowFilter,
    limit: Option<u32>,
) -> Result<Vec<FlowRecord>, String> {
    if let Some(why) = &agent.unusable {
        return Err(why.clone());
    }
    let get = |query: String| async move {
        let text = client
            .request_text(request(target, &proxy_path(target, agent, &query)))
            .await
            .map_err(|e| describe(&e))?;
        serde_json::from_str::<FlowsPage>(&text)
            .map_err(|e| format!("the agent's answer is not a flows page: {e}"))
    };
    if let Some(limit) = limit {
        let q = query_string(
            filter,
            &[("merged", "true".into()), ("limit", limit.to_string())],
        );
        return Ok(get(q).await?.flows);
    }
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut extra = vec![("limit", MAX_PAGE.to_string())];
        if let Some(c) = &cursor {
            extra.push(("cursor", c.clone()));
        }
        let page = get(query_string(filter, &extra)).await?;
        out.extend(page.flows);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(out),
        }
    }
}

/// Asks every agent at once; returns the merged flows (oldest first; with
/// `limit`, the newest `limit` ones) and the nodes that failed.
pub async fn gather_flows(
    client: &kube::Client,
    target: &AgentTarget,
    filter: &FlowFilter,
    limit: Option<u32>,
) -> Result<(Vec<FlowRecord>, Vec<NodeFailure>), ClusterError> {
    let agents = find_agents(client, target).await?;
    let answers = futures::future::join_all(
        agents
            .iter()
            .map(|a| async move { (a, flows_of(client, target, a, filter, limit).await) }),
    )
    .await;
    let mut per_node = Vec::new();
    let mut failures = Vec::new();
    for (agent, answer) in answers {
        match answer {
            Ok(flows) => per_node.push((agent.node.clone(), flows)),
            Err(error) => failures.push(NodeFailure {
                node: agent.node.clone(),
                pod: agent.pod.clone(),
                error,
            }),
        }
    }
    let mut flows = merge_node_flows(per_node);
    if let Some(limit) = limit {
        flows.sort_by_key(|f| std::cmp::Reverse(f.last_seen));
        flows.truncate(limit as usize);
        flows.sort_by_key(|f| f.first_seen);
    }
    Ok((flows, failures))
}

/// The identity of a flow across nodes: a connection between pods on two
/// nodes is recorded by both agents (each with its own `node`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct FlowKey {
    src: (std::net::IpAddr, u16),
    dst: (std::net::IpAddr, u16),
    protocol: u8,
    verdict: String,
    drop_reason: Option<String>,
}

fn key_of(f: &FlowRecord) -> FlowKey {
    FlowKey {
        src: (f.src.ip, f.src.port),
        dst: (f.dst.ip, f.dst.port),
        protocol: f.protocol.number(),
        verdict: f.verdict.to_string(),
        drop_reason: f.drop_reason.clone(),
    }
}

fn add_into(into: &mut FlowRecord, f: &FlowRecord) {
    into.packets = into.packets.saturating_add(f.packets);
    into.bytes = into.bytes.saturating_add(f.bytes);
    into.reply_packets = into.reply_packets.saturating_add(f.reply_packets);
    into.reply_bytes = into.reply_bytes.saturating_add(f.reply_bytes);
    into.first_seen = into.first_seen.min(f.first_seen);
    into.last_seen = into.last_seen.max(f.last_seen);
    into.tcp_flags.0 |= f.tcp_flags.0;
    into.connections = into.connections.saturating_add(f.connections);
}

/// Merges the per-node answers: within a node, rows of one flow are summed
/// (they are successive intervals); across nodes, the same flow seen by both
/// ends' agents is one flow with the larger counters (both saw the same
/// packets) and each end's identity from whichever node resolved it.
///
/// One end's agent may have aggregated a client's TCP connections to a port
/// (source port 0) while the other kept them one row each: an agent without
/// identity does not know another node's addresses, so it never aggregates
/// connections from them. Rows of such a client are folded into the
/// aggregated form first, so that both ends meet as one flow.
pub fn merge_node_flows(per_node: Vec<(String, Vec<FlowRecord>)>) -> Vec<FlowRecord> {
    let aggregated: HashSet<FlowKey> = per_node
        .iter()
        .flat_map(|(_, flows)| flows)
        .filter(|f| f.aggregated_connections().is_some())
        .map(key_of)
        .collect();
    // (key, node) → summed record.
    let mut by_node: HashMap<(FlowKey, String), FlowRecord> = HashMap::new();
    let mut order: Vec<(FlowKey, String)> = Vec::new();
    for (node, flows) in per_node {
        for mut f in flows {
            f.node.get_or_insert_with(|| node.clone());
            // A connection of a client the other end aggregated (its protocol
            // aggregates, its own port is still there).
            if f.src.port != 0 && aggregates_connections(f.protocol, 0) {
                let mut as_aggregated = key_of(&f);
                as_aggregated.src.1 = 0;
                if aggregated.contains(&as_aggregated) {
                    // One connection of that client: its SYNs (`connections`)
                    // add up like the aggregated row's.
                    f.src.port = 0;
                }
            }
            let k = (key_of(&f), node.clone());
            match by_node.get_mut(&k) {
                Some(existing) => add_into(existing, &f),
                None => {
                    order.push(k.clone());
                    by_node.insert(k, f);
                }
            }
        }
    }
    let mut merged: HashMap<FlowKey, FlowRecord> = HashMap::new();
    let mut keys: Vec<FlowKey> = Vec::new();
    for k in order {
        let Some(f) = by_node.remove(&k) else {
            continue;
        };
        match merged.get_mut(&k.0) {
            None => {
                keys.push(k.0.clone());
                merged.insert(k.0, f);
            }
            Some(m) => {
                m.packets = m.packets.max(f.packets);
                m.bytes = m.bytes.max(f.bytes);
                m.reply_packets = m.reply_packets.max(f.reply_packets);
                m.reply_bytes = m.reply_bytes.max(f.reply_bytes);
                m.connections = m.connections.max(f.connections);
                m.first_seen = m.first_seen.min(f.first_seen);
                m.last_seen = m.last_seen.max(f.last_seen);
                m.tcp_flags.0 |= f.tcp_flags.0;
                if m.src.namespace.is_none() && f.src.namespace.is_some() {
                    m.src = f.src.clone();
                }
                if m.dst.namespace.is_none() && f.dst.namespace.is_some() {
                    m.dst = f.dst.clone();
                }
            }
        }
    }
    let mut out: Vec<FlowRecord> = keys.into_iter().filter_map(|k| merged.remove(&k)).collect();
    out.sort_by_key(|f| f.first_seen);
    out
}

/// What a follow over the cluster yields.
#[derive(Debug, Clone)]
pub enum FollowEvent {
    Flow { node: String, flow: Box<FlowRecord> },
    Failed(NodeFailure),
}

/// First wait before a node's follow stream is opened again; it doubles after
/// each failure up to [`FOLLOW_RETRY_MAX`].
pub const FOLLOW_RETRY_FIRST: Duration = Duration::from_millis(500);
/// Longest wait between two attempts to reopen a node's follow stream.
pub const FOLLOW_RETRY_MAX: Duration = Duration::from_secs(30);
/// A stream that stayed open this long (or delivered a flow) was healthy: the
/// next failure waits [`FOLLOW_RETRY_FIRST`] again.
const FOLLOW_STABLE: Duration = Duration::from_secs(10);

/// Streams new flows from every agent into `tx` until the receiver is gone. A
/// node that fails, or whose stream breaks or ends (an agent restarting), is
/// sent as [`FollowEvent::Failed`] saying when it is tried again, and its stream
/// is reopened with exponential backoff; the others go on. Only an agent that
/// can never be reached (`unusable`, e.g. no API port) is given up at once.
pub async fn follow_flows(
    client: &kube::Client,
    target: &AgentTarget,
    filter: &FlowFilter,
    tx: mpsc::Sender<FollowEvent>,
) -> Result<(), ClusterError> {
    let agents = find_agents(client, target).await?;
    let query = query_string(filter, &[("follow", "true".into())]);
    let streams: Vec<_> = agents
        .into_iter()
        .map(|agent| {
            let tx = tx.clone();
            let path = proxy_path(target, &agent, &query);
            async move {
                let fail = |error: String| {
                    FollowEvent::Failed(NodeFailure {
                        node: agent.node.clone(),
                        pod: agent.pod.clone(),
                        error,
                    })
                };
                if let Some(why) = &agent.unusable {
                    let _ = tx.send(fail(why.clone())).await;
                    return;
                }
                let mut wait = FOLLOW_RETRY_FIRST;
                loop {
                    let opened = std::time::Instant::now();
                    let mut delivered = false;
                    let why = match client.request_stream(request(target, &path)).await {
                        Err(e) => describe(&e),
                        Ok(reader) => {
                            let mut lines = reader.lines();
                            let mut why = "the agent ended the stream (restarting?)".to_string();
                            while let Some(line) = lines.next().await {
                                let event = match line {
                                    Ok(l) if l.trim().is_empty() => continue,
                                    Ok(l) => match serde_json::from_str::<FlowRecord>(&l) {
                                        Ok(flow) => {
                                            delivered = true;
                                            FollowEvent::Flow {
                                                node: agent.node.clone(),
                                                flow: Box::new(flow),
                                            }
                                        }
                                        Err(e) => fail(format!(
                                            "the agent sent a line that is not a flow: {e}"
                                        )),
                                    },
                                    Err(e) => {
                                        why = format!("stream broke: {e}");
                                        break;
                                    }
                                };
                                if tx.send(event).await.is_err() {
                                    return;
                                }
                            }
                            why
                        }
                    };
                    if delivered || opened.elapsed() >= FOLLOW_STABLE {
                        wait = FOLLOW_RETRY_FIRST;
                    }
                    let report = format!(
                        "{why}; reconnecting in {}",
                        humantime::format_duration(wait)
                    );
                    if tx.send(fail(report)).await.is_err() {
                        return;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = tx.closed() => return,
                    }
                    wait = (wait * 2).min(FOLLOW_RETRY_MAX);
                }
            }
        })
        .collect();
    drop(tx);
    futures::future::join_all(streams).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowpol_recommender::flow::{Endpoint, Protocol, TcpFlags, Verdict};

    fn flow(src: &str, dst: &str, packets: u64, secs: i64) -> FlowRecord {
        let t = chrono::DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap();
        FlowRecord {
            src: Endpoint::new(src.parse().unwrap(), 40000),
            dst: Endpoint::new(dst.parse().unwrap(), 80),
            protocol: Protocol::Tcp,
            packets,
            bytes: packets * 100,
            reply_packets: 0,
            reply_bytes: 0,
            first_seen: t,
            last_seen: t,
            verdict: Verdict::Forwarded,
            drop_reason: None,
            tcp_flags: TcpFlags(1),
            connections: 0,
            cgroup_id: None,
            node: None,
        }
    }

    #[test]
    fn sums_intervals_within_a_node_and_dedups_across_nodes() {
        let a = vec![
            flow("10.0.0.1", "10.0.1.1", 3, 0),
            flow("10.0.0.1", "10.0.1.1", 2, 5),
            flow("10.0.0.2", "10.0.1.1", 1, 1),
        ];
        let mut b_flow = flow("10.0.0.1", "10.0.1.1", 5, 1);
        b_flow.dst.namespace = Some("shop".into());
        let b = vec![b_flow];
        let merged = merge_node_flows(vec![("a".into(), a), ("b".into(), b)]);
        assert_eq!(merged.len(), 2);
        let m = &merged[0];
        assert_eq!(m.src.ip.to_string(), "10.0.0.1");
        assert_eq!(m.packets, 5);
        assert_eq!(m.last_seen.timestamp(), 1_700_000_005);
        assert_eq!(m.dst.namespace.as_deref(), Some("shop"));
    }

    #[test]
    fn one_ends_connection_rows_meet_the_other_ends_aggregated_row() {
        // The server's node aggregated the client's three connections; the
        // client's node (its own address, no identity) kept one row each.
        let mut server_side = flow("172.18.0.3", "10.0.1.1", 30, 1);
        server_side.src.port = 0;
        server_side.connections = 3;
        let client_side: Vec<FlowRecord> = (0..3)
            .map(|i| {
                let mut f = flow("172.18.0.3", "10.0.1.1", 10, i);
                f.src.port = 40000 + i as u16;
                f.connections = 1;
                f
            })
            .collect();
        // Another client of the same server, aggregated nowhere: untouched.
        let other = flow("172.18.0.4", "10.0.1.1", 4, 2);
        let merged = merge_node_flows(vec![
            ("client-node".into(), [client_side, vec![other]].concat()),
            ("server-node".into(), vec![server_side]),
        ]);
        assert_eq!(merged.len(), 2, "{merged:#?}");
        let m = merged
            .iter()
            .find(|f| f.src.ip.to_string() == "172.18.0.3")
            .unwrap();
        assert_eq!((m.src.port, m.connections, m.packets), (0, 3, 30));
        assert_eq!(m.flows(), 3);
        let o = merged
            .iter()
            .find(|f| f.src.ip.to_string() == "172.18.0.4")
            .unwrap();
        assert_eq!((o.src.port, o.packets), (40000, 4));
    }
}

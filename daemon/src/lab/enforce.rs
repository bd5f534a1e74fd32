//! Enforcement: NetworkPolicy verdicts compiled to nftables in the node netns's forward path,
//! as an iptables-mode CNI enforces them. Forward runs after the Service DNAT, so rules see pod
//! IPs and pod ports; replies ride on conntrack; a pod pair that policies restrict gets exactly
//! its allowed ports and everything else is dropped (kfree_skb reason NETFILTER_DROP).
//! Traffic the node itself originates (kubelet probes) takes the output path and is not
//! filtered, as host-to-local-pod traffic is allowed by CNIs by default.
use std::fmt::Write;
use std::net::IpAddr;
use std::path::Path;

use flowpol_recommender::engine::{Engine, Settings};
use flowpol_recommender::flow::Protocol;
use flowpol_recommender::manifest;
use flowpol_recommender::model::Cluster;

use super::plan::Plan;
use super::scenario::Proto;

#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error("policies: {0}")]
    Manifest(Box<manifest::ManifestError>),
    #[error("policies: {0}")]
    Model(Box<flowpol_recommender::model::ModelError>),
}

impl From<manifest::ManifestError> for EnforceError {
    fn from(e: manifest::ManifestError) -> Self {
        EnforceError::Manifest(Box::new(e))
    }
}

impl From<flowpol_recommender::model::ModelError> for EnforceError {
    fn from(e: flowpol_recommender::model::ModelError) -> Self {
        EnforceError::Model(Box::new(e))
    }
}

/// Kinds of the lab's cluster state the engine reads (it warns about the others).
const ENGINE_KINDS: [&str; 9] = [
    "Namespace",
    "Pod",
    "ReplicaSet",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "Job",
    "Service",
    "NetworkPolicy",
];

/// Compiles the NetworkPolicies in the lab's cluster state (the List written to cluster.yaml)
/// to the enforcement ruleset, from the engine's verdicts.
pub fn compile(
    plan: &Plan,
    cluster: &serde_json::Value,
    label: &Path,
) -> Result<String, EnforceError> {
    let mut list = cluster.clone();
    if let Some(items) = list.get_mut("items").and_then(|i| i.as_array_mut()) {
        items.retain(|item| {
            item.get("kind")
                .and_then(|k| k.as_str())
                .is_some_and(|k| ENGINE_KINDS.contains(&k))
        });
    }
    let text = serde_json::to_string(&list).expect("a JSON value serializes");
    let objects = manifest::parse_str(label, &text)?;
    let cluster = Cluster::from_objects(objects)?;
    let engine = Engine::new(&cluster, Settings::default());
    let allowed = |src: IpAddr, dst: IpAddr| {
        let conns = engine.allowed_conns(engine.peer_for_ip(src), engine.peer_for_ip(dst));
        if conns.is_all() {
            return Allowed::All;
        }
        let mut ranges = Vec::new();
        for (protocol, proto) in [(Protocol::Tcp, Proto::Tcp), (Protocol::Udp, Proto::Udp)] {
            if let Some(ports) = conns.ports(protocol) {
                ranges.extend(ports.ranges().iter().map(|(lo, hi)| (proto, *lo, *hi)));
            }
        }
        Allowed::Only(ranges)
    };
    Ok(ruleset(plan, &allowed))
}

/// The nftables table enforcement lives in (node netns).
pub const POLICY_TABLE: &str = "flowpol-policy";

/// What policies allow from one address to another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Allowed {
    /// Not restricted: no policy isolates either side for this pair, or they allow everything.
    All,
    /// Only these (protocol, first port, last port) ranges; empty means nothing.
    Only(Vec<(Proto, u16, u16)>),
}

/// Every address policies can talk about in the lab: pod IPs and externals.
fn addresses(plan: &Plan) -> Vec<(IpAddr, Option<usize>)> {
    let mut v: Vec<(IpAddr, Option<usize>)> = plan
        .pods
        .iter()
        .flat_map(|p| p.ips.iter().map(move |ip| (*ip, Some(p.index))))
        .collect();
    v.extend(plan.externals.iter().map(|e| (e.address, None)));
    v
}

/// The enforcement ruleset for a plan, given the verdicts.
pub fn ruleset(plan: &Plan, allowed: &dyn Fn(IpAddr, IpAddr) -> Allowed) -> String {
    let addrs = addresses(plan);
    let mut restricted = [Vec::new(), Vec::new()];
    let mut allow = [Vec::new(), Vec::new()];
    for (src, src_pod) in &addrs {
        for (dst, dst_pod) in &addrs {
            // A pod talking to itself never crosses the node.
            if src.is_ipv4() != dst.is_ipv4()
                || src == dst
                || (src_pod.is_some() && src_pod == dst_pod)
            {
                continue;
            }
            let fam = usize::from(src.is_ipv6());
            if let Allowed::Only(ranges) = allowed(*src, *dst) {
                restricted[fam].push(format!("{src} . {dst}"));
                for (proto, lo, hi) in ranges {
                    let ports = if lo == hi {
                        lo.to_string()
                    } else {
                        format!("{lo}-{hi}")
                    };
                    allow[fam].push(format!("{src} . {dst} . {} . {ports}", proto.nft()));
                }
            }
        }
    }
    let mut s = String::new();
    let _ = writeln!(s, "table inet {POLICY_TABLE} {{");
    for (fam, ty) in [(0, "ipv4_addr"), (1, "ipv6_addr")] {
        let suffix = if fam == 0 { "4" } else { "6" };
        let _ = writeln!(s, "  set restricted{suffix} {{\n    type {ty} . {ty}");
        if !restricted[fam].is_empty() {
            let _ = writeln!(s, "    elements = {{ {} }}", restricted[fam].join(", "));
        }
        let _ = writeln!(s, "  }}");
        let _ = writeln!(
            s,
            "  set allowed{suffix} {{\n    type {ty} . {ty} . inet_proto . inet_service\n    flags interval"
        );
        if !allow[fam].is_empty() {
            let _ = writeln!(s, "    elements = {{ {} }}", allow[fam].join(", "));
        }
        let _ = writeln!(s, "  }}");
    }
    let _ = writeln!(
        s,
        "  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    ct state established,related accept\n    ip saddr . ip daddr . meta l4proto . th dport @allowed4 accept\n    ip6 saddr . ip6 daddr . meta l4proto . th dport @allowed6 accept\n    ip saddr . ip daddr @restricted4 counter drop\n    ip6 saddr . ip6 daddr @restricted6 counter drop\n  }}\n}}"
    );
    s
}

#[cfg(test)]
mod tests {
    use super::super::{plan, scenario};
    use super::*;
    use std::path::Path;

    #[test]
    fn restricted_pairs_get_their_ports_and_a_drop_others_stay_open() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/port-mismatch");
        let s = scenario::load(&dir).unwrap();
        let p = plan::build("e1", &s).unwrap();
        let client = p.pods_of("web/client")[0].ips[0];
        let webs: Vec<IpAddr> = p.pods_of("web/webapp").iter().map(|x| x.ips[0]).collect();
        // Ingress to webapp isolated: only the client, only 8080/TCP.
        let rules = ruleset(&p, &|src, dst| {
            if webs.contains(&dst) {
                if src == client {
                    Allowed::Only(vec![(Proto::Tcp, 8080, 8080)])
                } else {
                    Allowed::Only(vec![])
                }
            } else {
                Allowed::All
            }
        });
        for w in &webs {
            assert!(
                rules.contains(&format!("{client} . {w} . tcp . 8080")),
                "{rules}"
            );
            assert!(rules.contains(&format!("{client} . {w}")), "{rules}");
        }
        // webapp replicas may not talk to each other: restricted, nothing allowed.
        assert!(rules.contains(&format!("{} . {}", webs[0], webs[1])));
        assert!(!rules.contains(&format!("{} . {} . tcp", webs[0], webs[1])));
        // Nothing restricts traffic to the client.
        assert!(!rules.contains(&format!("{} . {client}", webs[0])));
        assert!(rules.contains("ct state established,related accept"));
        assert!(rules.contains("type filter hook forward"));
    }

    #[test]
    fn the_engine_restricts_exactly_what_policies_isolate() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/port-mismatch");
        let mut s = scenario::load(&dir).unwrap();
        let policy = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: webapp-from-client, namespace: web}
spec:
  podSelector: {matchLabels: {app: webapp}}
  policyTypes: [Ingress]
  ingress:
    - from: [{podSelector: {matchLabels: {app: client}}}]
      ports: [{port: http}]
"#;
        scenario::load_manifests(&mut s, Path::new("policy.yaml"), policy).unwrap();
        let p = plan::build("e3", &s).unwrap();
        let list = super::super::cluster::cluster_list(&p, &s, chrono::Utc::now());
        let rules = compile(&p, &list, Path::new("cluster.yaml")).unwrap();
        let client = p.pods_of("web/client")[0].ips[0];
        let dns = p.pods_of("kube-system/coredns")[0].ips[0];
        for w in p.pods_of("web/webapp") {
            // The named port resolves to 8080: the pod port, not the Service's 80.
            assert!(
                rules.contains(&format!("{client} . {} . tcp . 8080", w.ips[0])),
                "{rules}"
            );
            assert!(rules.contains(&format!("{dns} . {}", w.ips[0])), "{rules}");
        }
        // Egress is not isolated: nothing from webapp is restricted.
        let w0 = p.pods_of("web/webapp")[0].ips[0];
        assert!(!rules.contains(&format!("{w0} . {client}")), "{rules}");
    }

    #[test]
    fn port_ranges_are_intervals() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/three-tier");
        let p = plan::build("e2", &scenario::load(&dir).unwrap()).unwrap();
        let rules = ruleset(&p, &|_, _| {
            Allowed::Only(vec![(Proto::Udp, 53, 53), (Proto::Tcp, 8000, 8999)])
        });
        assert!(
            rules.contains(". udp . 53,") || rules.contains(". udp . 53 }"),
            "{rules}"
        );
        assert!(rules.contains(". tcp . 8000-8999"), "{rules}");
    }
}

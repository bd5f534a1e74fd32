//! A synthetic cluster generator for benchmarks: namespaces, workloads or pods, and a realistic
//! mix of NetworkPolicies (default-deny, DNS egress, per-app ingress/egress with same- and
//! cross-namespace peers, port ranges, named ports, ipBlocks with except). Deterministic.
use std::fmt::Write as _;

#[derive(Debug, Clone, Copy)]
pub struct SynthSpec {
    pub namespaces: usize,
    /// Workloads (apps) in all.
    pub workloads: usize,
    /// Pods per workload. 0 writes Deployments (one peer per template); otherwise standalone
    /// Pods, each with a unique `instance` label so every pod is its own endpoint.
    pub pods_per_workload: usize,
    /// NetworkPolicies in all (at least two per namespace: default-deny and DNS).
    pub policies: usize,
}

/// A tiny deterministic generator (no dependency needed for benchmark data).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: usize) -> usize {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % bound.max(1)
    }
}

/// Multi-document YAML for the spec.
pub fn generate_yaml(spec: SynthSpec) -> String {
    let mut rng = Lcg(42);
    let mut out = String::new();
    let ns_name = |i: usize| format!("ns-{i}");
    let app_ns = |a: usize| a % spec.namespaces;
    for n in 0..spec.namespaces {
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {}\n  labels:\n    team: team-{}\n",
            ns_name(n),
            n % 5
        );
    }
    for a in 0..spec.workloads {
        let ns = ns_name(app_ns(a));
        let tier = ["web", "api", "db"][a % 3];
        if spec.pods_per_workload == 0 {
            let _ = write!(
                out,
                "---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app-{a}\n  namespace: {ns}\nspec:\n  selector:\n    matchLabels:\n      app: app-{a}\n  template:\n    metadata:\n      labels:\n        app: app-{a}\n        tier: {tier}\n    spec:\n      containers:\n      - name: main\n        ports:\n        - {{name: http, containerPort: 8080}}\n        - {{name: metrics, containerPort: 9090}}\n"
            );
        } else {
            for p in 0..spec.pods_per_workload {
                let ip = a * spec.pods_per_workload + p;
                let _ = write!(
                    out,
                    "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: app-{a}-{p}\n  namespace: {ns}\n  labels:\n    app: app-{a}\n    tier: {tier}\n    instance: i-{ip}\nspec:\n  containers:\n  - name: main\n    ports:\n    - {{name: http, containerPort: 8080}}\n    - {{name: metrics, containerPort: 9090}}\nstatus:\n  podIP: 10.{}.{}.{}\n",
                    100 + (ip >> 16) % 100,
                    (ip >> 8) & 255,
                    ip & 255
                );
            }
        }
    }
    let mut written = 0;
    for n in 0..spec.namespaces {
        if written + 2 > spec.policies {
            break;
        }
        let ns = ns_name(n);
        let _ = write!(
            out,
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: default-deny\n  namespace: {ns}\nspec:\n  podSelector: {{}}\n  policyTypes: [Ingress, Egress]\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: allow-dns\n  namespace: {ns}\nspec:\n  podSelector: {{}}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - namespaceSelector:\n        matchLabels:\n          kubernetes.io/metadata.name: kube-system\n      podSelector:\n        matchLabels:\n          k8s-app: kube-dns\n    ports:\n    - {{protocol: UDP, port: 53}}\n    - {{protocol: TCP, port: 53}}\n"
        );
        written += 2;
    }
    let mut i = 0;
    while written < spec.policies {
        let a = i % spec.workloads.max(1);
        let ns = ns_name(app_ns(a));
        let peer = rng.next(spec.workloads);
        let peer_ns = ns_name(app_ns(peer));
        let other = rng.next(spec.workloads);
        let team = rng.next(5);
        let _ = write!(
            out,
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: app-{a}-{i}\n  namespace: {ns}\nspec:\n  podSelector:\n    matchLabels:\n      app: app-{a}\n  policyTypes: [Ingress, Egress]\n  ingress:\n  - from:\n    - podSelector:\n        matchLabels:\n          app: app-{other}\n    ports:\n    - port: http\n  - from:\n    - namespaceSelector:\n        matchLabels:\n          kubernetes.io/metadata.name: {peer_ns}\n      podSelector:\n        matchLabels:\n          app: app-{peer}\n    - namespaceSelector:\n        matchExpressions:\n        - {{key: team, operator: In, values: [team-{team}]}}\n      podSelector:\n        matchExpressions:\n        - {{key: tier, operator: NotIn, values: [db]}}\n    ports:\n    - {{port: 9000, endPort: 9100}}\n    - {{protocol: UDP, port: 5000}}\n  egress:\n  - to:\n    - namespaceSelector: {{}}\n      podSelector:\n        matchLabels:\n          tier: db\n    ports:\n    - {{port: 5432}}\n  - to:\n    - ipBlock:\n        cidr: 192.168.{}.0/24\n        except: [192.168.{}.128/25]\n    ports:\n    - {{port: 443}}\n",
            i % 256,
            i % 256,
        );
        written += 1;
        i += 1;
    }
    out
}

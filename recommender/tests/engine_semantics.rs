//! One test per NetworkPolicy semantic rule, on small hand-written clusters.
use std::path::Path;

use flowpol_recommender::connectivity::{Connectivity, OutputFormat, external_ranges};
use flowpol_recommender::engine::{Engine, PeerRef, Settings, Side};
use flowpol_recommender::flow::Protocol;
use flowpol_recommender::manifest::parse_str;
use flowpol_recommender::model::Cluster;
use flowpol_recommender::policy::Direction;

/// Namespaces a (team=red) and b (team=blue); pods with IPs (b/v6 has an IPv6 address).
const PODS: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: a, labels: {team: red}}
---
apiVersion: v1
kind: Namespace
metadata: {name: b, labels: {team: blue}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: a, labels: {app: web}}
spec:
  containers:
  - name: c
    ports:
    - {name: http, containerPort: 8080}
    - {name: dns, containerPort: 53, protocol: UDP}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: a, labels: {app: db}}
spec:
  containers:
  - name: c
    ports: [{name: pg, containerPort: 5432}]
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: b, labels: {app: client}}
spec: {containers: [{name: c}]}
status: {podIP: 10.0.1.1}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: b, labels: {app: web}}
spec:
  containers:
  - name: c
    ports: [{name: http, containerPort: 9090}]
status: {podIP: 10.0.1.2}
---
apiVersion: v1
kind: Pod
metadata: {name: v6, namespace: b, labels: {app: v6}}
spec: {containers: [{name: c}]}
status: {podIPs: [{ip: "fd00::5"}]}
"#;

fn cluster(policies: &str) -> Cluster {
    let text = format!("{PODS}\n---\n{policies}");
    let objects = parse_str(Path::new("test.yaml"), &text).expect("test manifests parse");
    Cluster::from_objects(objects).expect("test manifests are valid")
}

fn peer(c: &Cluster, name: &str) -> PeerRef {
    if let Ok(ip) = name.parse() {
        return PeerRef::Ip(ip);
    }
    let w = c.find_workload(name).expect("workload exists");
    PeerRef::Endpoint(c.workloads[w].endpoints[0])
}

fn allowed_with(
    c: &Cluster,
    settings: Settings,
    from: &str,
    to: &str,
    proto: Protocol,
    port: u16,
) -> bool {
    let engine = Engine::new(c, settings);
    engine
        .verdict(peer(c, from), peer(c, to), proto, port)
        .allowed
}

fn allowed(c: &Cluster, from: &str, to: &str, port: u16) -> bool {
    allowed_with(c, Settings::default(), from, to, Protocol::Tcp, port)
}

fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}\n---\n"
    )
}

#[test]
fn without_policies_everything_is_allowed() {
    let c = cluster("");
    assert!(allowed(&c, "b/client", "a/web", 1));
    assert!(allowed(&c, "a/web", "8.8.8.8", 443));
    assert!(allowed(&c, "8.8.8.8", "a/db", 5432));
}

#[test]
fn ingress_isolation_denies_what_no_rule_allows() {
    let c = cluster(&policy(
        "a",
        "db",
        "  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: web}}}]\n    ports: [{port: 5432}]",
    ));
    assert!(allowed(&c, "a/web", "a/db", 5432));
    assert!(!allowed(&c, "a/web", "a/db", 5433));
    assert!(
        !allowed(&c, "b/client", "a/db", 5432),
        "podSelector alone = own namespace"
    );
    assert!(
        allowed(&c, "b/client", "a/web", 8080),
        "a/web is not selected"
    );
}

#[test]
fn default_policy_types_follow_the_rules_present() {
    // No policyTypes and only egress rules: isolates Ingress (always) and Egress.
    let c = cluster(&policy(
        "a",
        "p",
        "  podSelector: {matchLabels: {app: web}}\n  egress:\n  - to: [{podSelector: {matchLabels: {app: db}}}]",
    ));
    assert!(
        !allowed(&c, "b/client", "a/web", 8080),
        "ingress isolated with no ingress rules"
    );
    assert!(allowed(&c, "a/web", "a/db", 5432));
    assert!(!allowed(&c, "a/web", "b/client", 80), "egress isolated");
    // No policyTypes and no egress rules: egress is not isolated.
    let c = cluster(&policy(
        "a",
        "p",
        "  podSelector: {matchLabels: {app: web}}",
    ));
    assert!(!allowed(&c, "a/db", "a/web", 8080));
    assert!(allowed(&c, "a/web", "8.8.8.8", 443));
    // policyTypes [Egress] alone leaves ingress open.
    let c = cluster(&policy(
        "a",
        "p",
        "  podSelector: {matchLabels: {app: web}}\n  policyTypes: [Egress]",
    ));
    assert!(allowed(&c, "a/db", "a/web", 8080));
    assert!(!allowed(&c, "a/web", "a/db", 5432));
}

#[test]
fn the_and_or_trap() {
    // One peer with both selectors: pods labelled client IN namespaces of team blue.
    let and = cluster(&policy(
        "a",
        "p",
        "  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {team: blue}}\n      podSelector: {matchLabels: {app: client}}",
    ));
    assert!(allowed(&and, "b/client", "a/web", 8080));
    assert!(!allowed(&and, "b/web", "a/web", 8080));
    // Two peers: every pod of team blue's namespaces OR client pods of the policy's namespace.
    let or = cluster(&policy(
        "a",
        "p",
        "  podSelector: {matchLabels: {app: web}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchLabels: {team: blue}}\n    - podSelector: {matchLabels: {app: client}}",
    ));
    assert!(allowed(&or, "b/client", "a/web", 8080));
    assert!(
        allowed(&or, "b/web", "a/web", 8080),
        "OR: any pod of namespace b"
    );
    assert!(!allowed(&or, "a/db", "a/web", 8080));
}

#[test]
fn empty_selectors_versus_absent_ones() {
    let sel = "  podSelector: {matchLabels: {app: db}}\n";
    // podSelector {} without namespaceSelector: every pod of the policy's namespace only.
    let c = cluster(&policy(
        "a",
        "p",
        &format!("{sel}  ingress: [{{from: [{{podSelector: {{}}}}]}}]"),
    ));
    assert!(allowed(&c, "a/web", "a/db", 1));
    assert!(!allowed(&c, "b/client", "a/db", 1));
    assert!(!allowed(&c, "8.8.8.8", "a/db", 1));
    // namespaceSelector {}: every pod of every namespace, but no external address.
    let c = cluster(&policy(
        "a",
        "p",
        &format!("{sel}  ingress: [{{from: [{{namespaceSelector: {{}}}}]}}]"),
    ));
    assert!(allowed(&c, "b/client", "a/db", 1));
    assert!(!allowed(&c, "8.8.8.8", "a/db", 1));
    // A rule without `from`: every source, external ones included.
    let c = cluster(&policy(
        "a",
        "p",
        &format!("{sel}  ingress: [{{ports: [{{port: 5432}}]}}]"),
    ));
    assert!(allowed(&c, "8.8.8.8", "a/db", 5432));
    assert!(!allowed(&c, "8.8.8.8", "a/db", 22));
    // The empty rule allows everything; an empty rule list allows nothing.
    let c = cluster(&policy("a", "p", &format!("{sel}  ingress: [{{}}]")));
    assert!(allowed(&c, "8.8.8.8", "a/db", 22));
    let c = cluster(&policy("a", "p", &format!("{sel}  ingress: []")));
    assert!(!allowed(&c, "a/web", "a/db", 5432));
    // `from: []` (empty list) also means every source.
    let c = cluster(&policy(
        "a",
        "p",
        &format!("{sel}  ingress: [{{from: []}}]"),
    ));
    assert!(allowed(&c, "b/client", "a/db", 5432));
}

#[test]
fn match_expressions_through_the_engine() {
    let c = cluster(&policy(
        "a",
        "p",
        "  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - from:\n    - namespaceSelector: {matchExpressions: [{key: team, operator: NotIn, values: [red]}]}\n      podSelector: {matchExpressions: [{key: app, operator: In, values: [client, other]}]}",
    ));
    assert!(allowed(&c, "b/client", "a/db", 5432));
    assert!(!allowed(&c, "b/web", "a/db", 5432));
    assert!(!allowed(&c, "a/web", "a/db", 5432));
}

#[test]
fn ipv4_block_with_except_and_the_pod_ip_setting() {
    let c = cluster(&policy(
        "a",
        "p",
        "  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.1.0/24]}}]",
    ));
    assert!(allowed(&c, "10.9.9.9", "a/db", 5432));
    assert!(!allowed(&c, "10.0.1.77", "a/db", 5432), "inside except");
    assert!(!allowed(&c, "11.0.0.1", "a/db", 5432), "outside cidr");
    // a/web is 10.0.0.1: the ipBlock matches it only when ipBlocks match pods.
    let matching = Settings {
        ipblock_matches_pods: true,
    };
    let external_only = Settings {
        ipblock_matches_pods: false,
    };
    assert!(allowed_with(
        &c,
        matching,
        "a/web",
        "a/db",
        Protocol::Tcp,
        5432
    ));
    assert!(!allowed_with(
        &c,
        external_only,
        "a/web",
        "a/db",
        Protocol::Tcp,
        5432
    ));
    // b/client is 10.0.1.1, in the except: never.
    assert!(!allowed_with(
        &c,
        matching,
        "b/client",
        "a/db",
        Protocol::Tcp,
        5432
    ));
}

#[test]
fn ipv6_blocks() {
    let c = cluster(&policy(
        "b",
        "p",
        "  podSelector: {matchLabels: {app: v6}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 'fd00::/16', except: ['fd00:1::/32']}}]\n    ports: [{port: 443}]",
    ));
    assert!(allowed(&c, "b/v6", "fd00::1", 443));
    assert!(!allowed(&c, "b/v6", "fd00:1::1", 443), "inside except");
    assert!(!allowed(&c, "b/v6", "2001:db8::1", 443));
    assert!(
        !allowed(&c, "b/v6", "10.0.0.9", 443),
        "an IPv6 block never matches IPv4"
    );
    // The IPv6 pod matched by address when ipBlocks match pods.
    let c = cluster(&policy(
        "b",
        "p",
        "  podSelector: {matchLabels: {app: client}}\n  ingress:\n  - from: [{ipBlock: {cidr: 'fd00::/64'}}]",
    ));
    let on = Settings {
        ipblock_matches_pods: true,
    };
    let off = Settings {
        ipblock_matches_pods: false,
    };
    assert!(allowed_with(&c, on, "b/v6", "b/client", Protocol::Tcp, 80));
    assert!(!allowed_with(
        &c,
        off,
        "b/v6",
        "b/client",
        Protocol::Tcp,
        80
    ));
    // External ranges include the IPv6 space cut by the block.
    let ranges: Vec<String> = external_ranges(&c.policies, Direction::Ingress)
        .iter()
        .map(ToString::to_string)
        .collect();
    assert!(
        ranges.contains(&"0.0.0.0-255.255.255.255".to_string()),
        "{ranges:?}"
    );
    assert!(
        ranges.contains(&"fd00::-fd00::ffff:ffff:ffff:ffff".to_string()),
        "{ranges:?}"
    );
    assert!(
        ranges.contains(&"::-fcff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".to_string()),
        "{ranges:?}"
    );
}

#[test]
fn end_port_ranges_are_inclusive() {
    let c = cluster(&policy(
        "a",
        "p",
        "  podSelector: {matchLabels: {app: db}}\n  ingress:\n  - ports: [{port: 8000, endPort: 8100}, {port: 9000, protocol: SCTP}]",
    ));
    assert!(allowed(&c, "a/web", "a/db", 8000));
    assert!(allowed(&c, "a/web", "a/db", 8100));
    assert!(!allowed(&c, "a/web", "a/db", 7999));
    assert!(!allowed(&c, "a/web", "a/db", 8101));
    let sctp = Settings::default();
    assert!(allowed_with(
        &c,
        sctp,
        "a/web",
        "a/db",
        Protocol::Sctp,
        9000
    ));
    assert!(!allowed_with(
        &c,
        sctp,
        "a/web",
        "a/db",
        Protocol::Tcp,
        9000
    ));
}

#[test]
fn protocol_defaults_to_tcp() {
    let c = cluster(&policy(
        "a",
        "p",
        "  podSelector: {matchLabels: {app: db}}\n  ingress: [{ports: [{port: 53}]}]",
    ));
    let s = Settings::default();
    assert!(allowed_with(&c, s, "a/web", "a/db", Protocol::Tcp, 53));
    assert!(!allowed_with(&c, s, "a/web", "a/db", Protocol::Udp, 53));
    // Protocols without ports (ICMP) pass only rules without `ports`.
    assert!(!allowed_with(&c, s, "a/web", "a/db", Protocol::Icmp, 0));
    let c = cluster(&policy(
        "a",
        "p",
        "  podSelector: {matchLabels: {app: db}}\n  ingress: [{from: [{podSelector: {}}]}]",
    ));
    assert!(allowed_with(&c, s, "a/web", "a/db", Protocol::Icmp, 0));
}

#[test]
fn named_ports_resolve_on_the_destination_by_name_and_protocol() {
    // Ingress to every pod of a on the port named `http`: 8080 on a/web, nothing on a/db.
    let c = cluster(&policy(
        "a",
        "p",
        "  podSelector: {}\n  ingress: [{ports: [{port: http}]}]",
    ));
    assert!(allowed(&c, "b/client", "a/web", 8080));
    assert!(!allowed(&c, "b/client", "a/web", 9090));
    assert!(
        !allowed(&c, "b/client", "a/db", 8080),
        "a/db has no port named http"
    );
    // `dns` is UDP on a/web: a TCP rule naming it resolves nowhere.
    let c = cluster(&policy(
        "a",
        "p",
        "  podSelector: {}\n  ingress: [{ports: [{port: dns}]}]",
    ));
    let s = Settings::default();
    assert!(!allowed_with(&c, s, "b/client", "a/web", Protocol::Tcp, 53));
    assert!(!allowed_with(&c, s, "b/client", "a/web", Protocol::Udp, 53));
    let c = cluster(&policy(
        "a",
        "p",
        "  podSelector: {}\n  ingress: [{ports: [{port: dns, protocol: UDP}]}]",
    ));
    assert!(allowed_with(&c, s, "b/client", "a/web", Protocol::Udp, 53));
    // Egress named ports resolve on the destination pod: `http` is 9090 on b/web.
    let c = cluster(&policy(
        "a",
        "p",
        "  podSelector: {matchLabels: {app: db}}\n  policyTypes: [Egress]\n  egress: [{ports: [{port: http}]}]",
    ));
    assert!(allowed(&c, "a/db", "b/web", 9090));
    assert!(!allowed(&c, "a/db", "b/web", 8080));
    assert!(allowed(&c, "a/db", "a/web", 8080));
    assert!(
        !allowed(&c, "a/db", "8.8.8.8", 8080),
        "a named port never resolves on an address"
    );
    // An unresolvable named port contributes nothing to the connection set either.
    let engine = Engine::new(&c, Settings::default());
    assert!(
        engine
            .allowed_conns(peer(&c, "a/db"), peer(&c, "b/client"))
            .is_empty()
    );
    assert_eq!(
        engine
            .allowed_conns(peer(&c, "a/db"), peer(&c, "b/web"))
            .to_string(),
        "TCP 9090"
    );
}

#[test]
fn policies_are_additive() {
    let c = cluster(&format!(
        "{}{}",
        policy(
            "a",
            "p1",
            "  podSelector: {matchLabels: {app: db}}\n  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 5432}]}]"
        ),
        policy(
            "a",
            "p2",
            "  podSelector: {matchLabels: {app: db}}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {team: blue}}}], ports: [{port: 9187}]}]"
        ),
    ));
    assert!(allowed(&c, "a/web", "a/db", 5432));
    assert!(allowed(&c, "b/client", "a/db", 9187));
    assert!(!allowed(&c, "b/client", "a/db", 5432));
    let engine = Engine::new(&c, Settings::default());
    assert_eq!(
        engine
            .allowed_conns(peer(&c, "b/client"), peer(&c, "a/db"))
            .to_string(),
        "TCP 9187"
    );
}

#[test]
fn a_connection_needs_egress_and_ingress_and_says_which_rule() {
    let c = cluster(&format!(
        "{}{}",
        policy(
            "b",
            "client-out",
            "  podSelector: {matchLabels: {app: client}}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 1.2.3.4/32}}]\n  - to: [{namespaceSelector: {}, podSelector: {matchLabels: {app: db}}}]\n    ports: [{port: 5432}]"
        ),
        policy(
            "a",
            "db-in",
            "  podSelector: {matchLabels: {app: db}}\n  ingress: []"
        ),
    ));
    let engine = Engine::new(&c, Settings::default());
    let v = engine.verdict(peer(&c, "b/client"), peer(&c, "a/db"), Protocol::Tcp, 5432);
    assert!(!v.allowed, "egress allows, ingress denies");
    let Side::Allowed { rule, isolated_by } = v.egress else {
        panic!("egress should allow: {v:?}")
    };
    assert_eq!(c.policies[rule.policy].name, "client-out");
    assert_eq!(
        (rule.direction, rule.rule, rule.peer, rule.port),
        (Direction::Egress, 1, Some(0), Some(0))
    );
    assert_eq!(isolated_by.len(), 1);
    let Side::Denied { isolated_by } = v.ingress else {
        panic!("ingress should deny: {v:?}")
    };
    assert_eq!(c.policies[isolated_by[0] as usize].name, "db-in");
    // Not isolated / external sides.
    let v = engine.verdict(peer(&c, "8.8.8.8"), peer(&c, "a/web"), Protocol::Tcp, 80);
    assert_eq!((v.egress, v.ingress), (Side::External, Side::NotIsolated));
    assert!(v.allowed);
    let v = engine.verdict(peer(&c, "b/client"), peer(&c, "1.2.3.4"), Protocol::Udp, 9);
    let Side::Allowed { rule, .. } = v.egress else {
        panic!("{v:?}")
    };
    assert_eq!((rule.rule, rule.peer, rule.port), (0, Some(0), None));
}

const WORKLOADS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
---
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: api-5d4f
  namespace: shop
  ownerReferences: [{apiVersion: apps/v1, kind: Deployment, name: api, uid: u1, controller: true}]
spec:
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata:
  name: api-5d4f-x1
  namespace: shop
  labels: {app: api, pod-template-hash: 5d4f}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: api-5d4f, uid: u2, controller: true}]
spec: {containers: [{name: c}]}
status: {podIP: 10.1.0.1}
---
apiVersion: v1
kind: Pod
metadata:
  name: api-5d4f-x2
  namespace: shop
  labels: {app: api, pod-template-hash: 5d4f}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: api-5d4f, uid: u2, controller: true}]
spec: {containers: [{name: c}]}
status: {podIP: 10.1.0.2}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: report, namespace: shop}
spec:
  schedule: "* * * * *"
  jobTemplate:
    spec:
      template:
        metadata: {labels: {app: report}}
        spec: {containers: [{name: c}]}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  selector: {matchLabels: {app: db}}
  serviceName: db
  template:
    metadata: {labels: {app: db}}
    spec: {containers: [{name: c, ports: [{containerPort: 5432}]}]}
---
apiVersion: v1
kind: Pod
metadata:
  name: static-etcd
  namespace: kube-system
  labels: {component: etcd}
  ownerReferences: [{apiVersion: v1, kind: Node, name: node1, uid: n1, controller: true}]
spec: {containers: [{name: c}]}
"#;

#[test]
fn pods_fold_into_their_top_owner_and_take_the_template() {
    let objects = parse_str(Path::new("w.yaml"), WORKLOADS).unwrap();
    let c = Cluster::from_objects(objects).unwrap();
    let mut names: Vec<String> = c.workloads.iter().map(|w| w.peer_name()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "default/db[StatefulSet]",
            "kube-system/static-etcd[Pod]",
            "shop/api[Deployment]",
            "shop/report[CronJob]",
        ]
    );
    let api = &c.workloads[c.find_workload("shop/api").unwrap()];
    assert_eq!(api.endpoints.len(), 1, "replicas are one peer");
    let ep = &c.endpoints[api.endpoints[0]];
    assert_eq!(ep.pods, ["api-5d4f-x1", "api-5d4f-x2"]);
    assert_eq!(ep.ips.len(), 2);
    assert!(
        !ep.labels.contains_key("pod-template-hash"),
        "labels are the template's"
    );
    assert_eq!(
        ep.named_port("http", Protocol::Tcp),
        Some(8080),
        "ports are the template's"
    );
    // Namespaces nothing defines exist, with their name label.
    let shop = c.namespace("shop").unwrap();
    assert!(!shop.defined);
    assert_eq!(
        shop.labels
            .get("kubernetes.io/metadata.name")
            .map(String::as_str),
        Some("shop")
    );
    // A pod IP finds its workload; pod and workload names find it too.
    assert_eq!(
        c.endpoint_by_ip("10.1.0.2".parse().unwrap()),
        Some(api.endpoints[0])
    );
    assert_eq!(
        c.find_workload("shop/api-5d4f-x1"),
        c.find_workload("shop/api")
    );
    assert!(c.find_workload("shop/nope").is_err());
}

#[test]
fn connectivity_lists_pairs_and_cut_external_ranges() {
    let text = format!(
        "{WORKLOADS}\n---\n{}",
        policy(
            "shop",
            "api",
            "  podSelector: {matchLabels: {app: api}}\n  ingress:\n  - from: [{ipBlock: {cidr: 192.168.0.0/16, except: [192.168.1.0/24]}}]\n    ports: [{port: http}]\n  - from: [{podSelector: {matchLabels: {app: report}}}]\n    ports: [{port: 8080, endPort: 8081}, {port: 9000, protocol: UDP}]"
        )
    );
    let c = Cluster::from_objects(parse_str(Path::new("w.yaml"), &text).unwrap()).unwrap();
    let engine = Engine::new(
        &c,
        Settings {
            ipblock_matches_pods: false,
        },
    );
    let out = Connectivity::analyze(&engine).render(OutputFormat::Txt);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.contains(&"192.168.0.0-192.168.0.255[External] => shop/api[Deployment] : TCP 8080"),
        "{out}"
    );
    assert!(
        lines.contains(&"192.168.2.0-192.168.255.255[External] => shop/api[Deployment] : TCP 8080"),
        "{out}"
    );
    assert!(
        !out.contains("192.168.1.0-192.168.1.255[External] => shop/api"),
        "{out}"
    );
    assert!(
        lines.contains(&"shop/report[CronJob] => shop/api[Deployment] : TCP 8080-8081,UDP 9000"),
        "{out}"
    );
    assert!(
        !out.contains("default/db[StatefulSet] => shop/api"),
        "{out}"
    );
    assert!(
        lines.contains(
            &"shop/api[Deployment] => 0.0.0.0-255.255.255.255[External] : All Connections"
        ),
        "{out}"
    );
    // Every format renders every line.
    for format in [
        OutputFormat::Json,
        OutputFormat::Md,
        OutputFormat::Csv,
        OutputFormat::Dot,
    ] {
        let rendered = Connectivity::analyze(&engine).render(format);
        assert!(
            rendered.contains("shop/report[CronJob]"),
            "{format:?}: {rendered}"
        );
    }
    let json: serde_json::Value =
        serde_json::from_str(&Connectivity::analyze(&engine).render(OutputFormat::Json)).unwrap();
    assert_eq!(json.as_array().unwrap().len(), lines.len());
}

#[test]
fn pods_fold_into_a_deployment_or_cronjob_through_a_missing_middle_owner() {
    let text = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata:
  name: web-7c9f8d6b5-abcde
  namespace: shop
  labels: {app: web, pod-template-hash: 7c9f8d6b5}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-7c9f8d6b5, uid: u, controller: true}]
spec: {containers: [{name: c}]}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: report, namespace: shop}
spec:
  schedule: "0 * * * *"
  jobTemplate: {spec: {template: {metadata: {labels: {app: report}}, spec: {containers: [{name: c}]}}}}
---
apiVersion: v1
kind: Pod
metadata:
  name: report-29001234-xyz12
  namespace: shop
  ownerReferences: [{apiVersion: batch/v1, kind: Job, name: report-29001234, uid: j, controller: true}]
spec: {containers: [{name: c}]}
---
apiVersion: v1
kind: Pod
metadata:
  name: other-5d4f-q
  namespace: shop
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: other-5d4f, uid: o, controller: true}]
spec: {containers: [{name: c}]}
"#;
    let c = Cluster::from_objects(parse_str(Path::new("w.yaml"), text).unwrap()).unwrap();
    let mut names: Vec<String> = c.workloads.iter().map(|w| w.peer_name()).collect();
    names.sort();
    // No Deployment `other` in the manifests: its pods stay with their ReplicaSet.
    assert_eq!(
        names,
        [
            "shop/other-5d4f[ReplicaSet]",
            "shop/report[CronJob]",
            "shop/web[Deployment]"
        ]
    );
}

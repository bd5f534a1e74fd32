//! Each lint check fires on the mistake it names, and a clean policy set has no finding.
use std::path::Path;

use flowpol_recommender::engine::{Engine, Settings};
use flowpol_recommender::lint::{Finding, lint};
use flowpol_recommender::manifest::parse_str;
use flowpol_recommender::model::Cluster;

const APPS: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec: {containers: [{name: c, ports: [{containerPort: 9000}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  selector: {app: api}
  ports: [{port: 80, targetPort: 9000}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system}
spec:
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec: {containers: [{name: c, ports: [{containerPort: 53, protocol: UDP}]}]}
"#;

/// A correct policy set for `shop`: default-deny both ways, DNS, web → api.
const CLEAN: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: shop}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: dns, namespace: shop}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress:
  - to:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
      podSelector: {matchLabels: {k8s-app: kube-dns}}
    ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 53}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-to-api, namespace: shop}
spec:
  podSelector: {matchLabels: {app: web}}
  policyTypes: [Egress]
  egress: [{to: [{podSelector: {matchLabels: {app: api}}}], ports: [{port: 9000}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api-from-web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 9000}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: kube-system}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: dns-server, namespace: kube-system}
spec:
  podSelector: {matchLabels: {k8s-app: kube-dns}}
  ingress: [{ports: [{protocol: UDP, port: 53}]}]
  egress: [{ports: [{protocol: UDP, port: 53}]}]
"#;

fn findings(policies: &str) -> Vec<Finding> {
    let text = format!("{APPS}\n---\n{policies}");
    let cluster = Cluster::from_objects(parse_str(Path::new("lint.yaml"), &text).unwrap()).unwrap();
    let engine = Engine::new(&cluster, Settings::default());
    lint(&engine)
}

fn only(findings: &[Finding], check: &str) -> Vec<Finding> {
    findings
        .iter()
        .filter(|f| f.check == check)
        .cloned()
        .collect()
}

#[test]
fn a_clean_policy_set_has_no_findings() {
    let found = findings(CLEAN);
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn namespaces_without_default_deny() {
    let found = findings("");
    let f = only(&found, "no-default-deny");
    assert_eq!(f.len(), 2, "{found:#?}");
    assert!(
        f.iter()
            .any(|f| f.namespace == "shop" && f.message.contains("Ingress and Egress"))
    );
    assert!(f.iter().all(|f| f.fix.contains("podSelector: {}")));
}

#[test]
fn empty_pod_selector_with_allow_rules() {
    let found = findings(&format!(
        "{CLEAN}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: open, namespace: shop}}\nspec:\n  podSelector: {{}}\n  ingress: [{{from: [{{namespaceSelector: {{}}}}]}}]\n"
    ));
    let f = only(&found, "empty-selector-with-allow-rules");
    assert_eq!(f.len(), 1, "{found:#?}");
    assert_eq!(f[0].policy.as_deref(), Some("shop/open"));
}

#[test]
fn namespace_and_pod_selector_split_into_two_peers() {
    let found = findings(&format!(
        "{CLEAN}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: split, namespace: shop}}\nspec:\n  podSelector: {{matchLabels: {{app: api}}}}\n  ingress:\n  - from:\n    - namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: monitoring}}}}\n    - podSelector: {{matchLabels: {{app: prometheus}}}}\n"
    ));
    let f = only(&found, "split-namespace-and-pod-selector");
    assert_eq!(f.len(), 1, "{found:#?}");
    assert_eq!(f[0].policy.as_deref(), Some("shop/split"));
    assert!(
        f[0].message.contains("spec.ingress[0].from[0]"),
        "{}",
        f[0].message
    );
    assert!(f[0].fix.contains("one peer"));
}

#[test]
fn egress_isolation_without_dns() {
    // CLEAN without its DNS policy.
    let without_dns = CLEAN.replace(
        "name: dns, namespace: shop",
        "name: dns, namespace: elsewhere",
    );
    let found = findings(&without_dns);
    let f = only(&found, "egress-without-dns");
    // One finding per set of isolating policies: api (default-deny) and web (+ web-to-api).
    assert_eq!(f.len(), 2, "{found:#?}");
    let messages: String = f.iter().map(|f| f.message.clone()).collect();
    assert!(messages.contains("shop/web[Deployment]"), "{messages}");
    assert!(messages.contains("shop/api[Deployment]"), "{messages}");
    assert!(
        f.iter()
            .all(|f| f.policy.as_deref() == Some("shop/default-deny"))
    );
    assert!(f[0].fix.contains("kube-dns"));
}

#[test]
fn dns_rule_targeting_pods_without_namespace_selector() {
    let bad_dns = CLEAN.replace(
        "    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}\n      podSelector: {matchLabels: {k8s-app: kube-dns}}",
        "    - podSelector: {matchLabels: {k8s-app: kube-dns}}",
    );
    let found = findings(&bad_dns);
    let f = only(&found, "dns-peer-without-namespace-selector");
    assert_eq!(f.len(), 1, "{found:#?}");
    assert_eq!(f[0].policy.as_deref(), Some("shop/dns"));
    assert!(f[0].fix.contains("kube-system"));
}

#[test]
fn service_port_in_place_of_the_container_port() {
    let bad = CLEAN
        .replace(
            "egress: [{to: [{podSelector: {matchLabels: {app: api}}}], ports: [{port: 9000}]}]",
            "egress: [{to: [{podSelector: {matchLabels: {app: api}}}], ports: [{port: 80}]}]",
        )
        .replace(
            "ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 9000}]}]",
            "ingress: [{from: [{podSelector: {matchLabels: {app: web}}}], ports: [{port: 80}]}]",
        );
    let found = findings(&bad);
    let f = only(&found, "service-port-not-container-port");
    assert_eq!(f.len(), 2, "{found:#?}");
    for finding in &f {
        assert!(
            finding.message.contains("Service shop/api"),
            "{}",
            finding.message
        );
        assert!(finding.fix.contains("port: 9000"), "{}", finding.fix);
    }
}

#[test]
fn a_policy_that_selects_no_pod() {
    let found = findings(&format!(
        "{CLEAN}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: typo, namespace: shop}}\nspec:\n  podSelector: {{matchLabels: {{app: wbe}}}}\n  ingress: [{{from: [{{podSelector: {{}}}}]}}]\n"
    ));
    let f = only(&found, "selects-no-pods");
    assert_eq!(f.len(), 1, "{found:#?}");
    assert_eq!(f[0].policy.as_deref(), Some("shop/typo"));
    assert!(f[0].message.contains("app=wbe"), "{}", f[0].message);
    assert!(
        f[0].message.contains("shop/web[Deployment]"),
        "{}",
        f[0].message
    );
}

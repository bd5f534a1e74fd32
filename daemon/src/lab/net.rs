//! Network plumbing as text: `ip -batch` scripts for the node and each pod, and the node's
//! nftables ruleset (kube-proxy's nftables mode: a verdict map from ClusterIP . proto . port
//! to a per-Service chain that picks an endpoint with `numgen random` and DNATs to it).
use std::fmt::Write;
use std::net::IpAddr;

use super::plan::{ExternalPlan, Plan, PodPlan};
use super::scenario::POD_GATEWAY_V4;
use super::sys::{Sys, SysError};

/// The node netns interface holding the node address (the kubelet's source). `lo`, not a
/// dummy: not every kernel has the dummy driver, and addresses on `lo` are just as local.
pub const NODE_IFACE: &str = "lo";
/// The IPv6 gateway address each node-side veth holds (link-local, per interface).
pub const POD_GATEWAY_V6: &str = "fe80::1";
/// The nftables table in the node netns.
pub const NFT_TABLE: &str = "kube-proxy";
/// kube-proxy's masquerade mark.
const MASQ_MARK: &str = "0x00004000";

fn host_len(ip: IpAddr) -> u8 {
    if ip.is_ipv4() { 32 } else { 128 }
}

/// Sysctls of the node netns: it routes between pods, so it forwards.
pub const NODE_SYSCTLS: [&str; 5] = [
    "net.ipv4.ip_forward=1",
    "net.ipv6.conf.all.forwarding=1",
    "net.ipv4.conf.all.rp_filter=0",
    "net.ipv4.conf.default.rp_filter=0",
    "net.ipv6.conf.default.accept_dad=0",
];

/// `ip -batch` script run in the node netns before any pod is wired.
pub fn node_script(plan: &Plan) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "link set lo up");
    for ip in &plan.node_addresses {
        let nodad = if ip.is_ipv6() { " nodad" } else { "" };
        let _ = writeln!(s, "addr add {ip}/{} dev {NODE_IFACE}{nodad}", host_len(*ip));
    }
    // The pods' gateway: a local address the node answers ARP for on every veth.
    let _ = writeln!(
        s,
        "addr add {POD_GATEWAY_V4}/32 dev {NODE_IFACE} scope link"
    );
    s
}

fn node_src(plan: &Plan, ip: IpAddr) -> Option<IpAddr> {
    plan.node_addresses
        .iter()
        .copied()
        .find(|n| n.is_ipv4() == ip.is_ipv4())
}

/// Node-side lines for one pod or external: the veth pair and /32 (/128) routes.
fn node_link_lines(s: &mut String, plan: &Plan, host_veth: &str, netns: &str, addrs: &[IpAddr]) {
    let _ = writeln!(
        s,
        "link add {host_veth} type veth peer name eth0 netns {netns}"
    );
    // No automatic IPv6 link-local address: no MLD or router solicitations cluttering the
    // capture (the gateway's fe80::1 is added explicitly when the lab is dual-stack).
    let _ = writeln!(s, "link set {host_veth} addrgenmode none");
    let _ = writeln!(s, "link set {host_veth} up");
    if addrs.iter().any(|a| a.is_ipv6()) {
        let _ = writeln!(s, "addr add {POD_GATEWAY_V6}/64 dev {host_veth} nodad");
    }
    for ip in addrs {
        let src = node_src(plan, *ip)
            .map(|n| format!(" src {n}"))
            .unwrap_or_default();
        let _ = writeln!(s, "route add {ip}/{} dev {host_veth}{src}", host_len(*ip));
    }
}

/// `ip -batch` script run in the node netns: every pod's and external's veth and routes.
pub fn node_links_script(plan: &Plan) -> String {
    let mut s = String::new();
    for pod in &plan.pods {
        node_link_lines(&mut s, plan, &pod.host_veth, &pod.netns, &pod.ips);
    }
    for ext in &plan.externals {
        node_link_lines(&mut s, plan, &ext.host_veth, &ext.netns, &[ext.address]);
    }
    s
}

/// `ip -batch` script run inside a pod (or external) netns.
pub fn endpoint_script(addrs: &[IpAddr]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "link set lo up");
    for ip in addrs {
        let nodad = if ip.is_ipv6() { " nodad" } else { "" };
        let _ = writeln!(s, "addr add {ip}/{} dev eth0{nodad}", host_len(*ip));
    }
    let _ = writeln!(s, "link set eth0 addrgenmode none");
    let _ = writeln!(s, "link set eth0 up");
    if let Some(v4) = addrs.iter().find(|a| a.is_ipv4()) {
        let _ = writeln!(s, "route add {POD_GATEWAY_V4}/32 dev eth0 scope link");
        let _ = writeln!(
            s,
            "route add default via {POD_GATEWAY_V4} dev eth0 src {v4}"
        );
    }
    if let Some(v6) = addrs.iter().find(|a| a.is_ipv6()) {
        let _ = writeln!(
            s,
            "route add default via {POD_GATEWAY_V6} dev eth0 src {v6}"
        );
    }
    s
}

pub fn pod_script(pod: &PodPlan) -> String {
    endpoint_script(&pod.ips)
}

pub fn external_script(ext: &ExternalPlan) -> String {
    endpoint_script(&[ext.address])
}

/// The node's NAT ruleset (kube-proxy nftables mode, simplified).
pub fn nat_ruleset(plan: &Plan) -> String {
    let mut chains = String::new();
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for (si, svc) in plan.services.iter().enumerate() {
        if svc.headless {
            continue;
        }
        for (pi, port) in svc.ports.iter().enumerate() {
            for cip in &svc.cluster_ips {
                let eps: Vec<_> = port
                    .endpoints
                    .iter()
                    .filter(|e| e.ip.is_ipv4() == cip.is_ipv4())
                    .collect();
                if eps.is_empty() {
                    continue;
                }
                let fam = if cip.is_ipv4() { "4" } else { "6" };
                let chain = format!("svc-{si}-{pi}-{fam}");
                let _ = writeln!(
                    chains,
                    "  chain {chain} {{\n    comment \"{}:{} {}/{}\"",
                    svc.key(),
                    port.name.as_deref().unwrap_or(""),
                    port.port,
                    port.protocol.as_str()
                );
                let arms: Vec<String> = (0..eps.len())
                    .map(|k| format!("{k} : goto {chain}-ep{k}"))
                    .collect();
                let _ = writeln!(
                    chains,
                    "    numgen random mod {} vmap {{ {} }}\n  }}",
                    eps.len(),
                    arms.join(", ")
                );
                for (k, ep) in eps.iter().enumerate() {
                    let (fam_kw, dest) = match ep.ip {
                        IpAddr::V4(a) => ("ip", format!("{a}:{}", ep.port)),
                        IpAddr::V6(a) => ("ip6", format!("[{a}]:{}", ep.port)),
                    };
                    // Hairpin: a pod reaching itself through its Service is masqueraded.
                    let _ = writeln!(
                        chains,
                        "  chain {chain}-ep{k} {{\n    {fam_kw} saddr {} meta mark set meta mark | {MASQ_MARK}\n    meta l4proto {} dnat {fam_kw} to {dest}\n  }}",
                        ep.ip,
                        port.protocol.nft()
                    );
                }
                let element = format!(
                    "{cip} . {} . {} : goto {chain}",
                    port.protocol.nft(),
                    port.port
                );
                if cip.is_ipv4() {
                    v4.push(element);
                } else {
                    v6.push(element);
                }
            }
        }
    }
    let mut s = String::new();
    let _ = writeln!(s, "table inet {NFT_TABLE} {{");
    for (name, ty, elems) in [
        ("service-ips", "ipv4_addr", &v4),
        ("service-ips6", "ipv6_addr", &v6),
    ] {
        let _ = writeln!(
            s,
            "  map {name} {{\n    type {ty} . inet_proto . inet_service : verdict"
        );
        if !elems.is_empty() {
            let _ = writeln!(s, "    elements = {{ {} }}", elems.join(", "));
        }
        let _ = writeln!(s, "  }}");
    }
    s.push_str(&chains);
    for (chain, hook) in [("nat-prerouting", "prerouting"), ("nat-output", "output")] {
        let _ = writeln!(
            s,
            "  chain {chain} {{\n    type nat hook {hook} priority -100; policy accept;\n    ip daddr . meta l4proto . th dport vmap @service-ips\n    ip6 daddr . meta l4proto . th dport vmap @service-ips6\n  }}"
        );
    }
    let _ = writeln!(
        s,
        "  chain nat-postrouting {{\n    type nat hook postrouting priority 100; policy accept;\n    meta mark & {MASQ_MARK} == {MASQ_MARK} masquerade\n  }}"
    );
    let _ = writeln!(s, "}}");
    s
}

/// Runs an `ip -batch` script inside a named netns.
pub fn ip_batch(sys: &dyn Sys, netns: &str, script: &str) -> Result<(), SysError> {
    if script.is_empty() {
        return Ok(());
    }
    sys.run("ip", &["-n", netns, "-batch", "-"], Some(script))
        .map(|_| ())
}

/// Runs `nft -f -` inside a named netns.
pub fn nft_apply(sys: &dyn Sys, netns: &str, ruleset: &str) -> Result<(), SysError> {
    sys.run(
        "ip",
        &["netns", "exec", netns, "nft", "-f", "-"],
        Some(ruleset),
    )
    .map(|_| ())
}

pub fn sysctl(sys: &dyn Sys, netns: &str, settings: &[&str]) -> Result<(), SysError> {
    let mut args = vec!["netns", "exec", netns, "sysctl", "-q", "-w"];
    args.extend_from_slice(settings);
    sys.run("ip", &args, None).map(|_| ())
}

/// Creates named network namespaces in one `ip -batch`.
pub fn netns_add(sys: &dyn Sys, names: &[&str]) -> Result<(), SysError> {
    let script: String = names.iter().map(|n| format!("netns add {n}\n")).collect();
    sys.run("ip", &["-batch", "-"], Some(&script)).map(|_| ())
}

/// Deletes named network namespaces; `-force` keeps going past ones already gone.
pub fn netns_del(sys: &dyn Sys, names: &[String]) -> Result<(), SysError> {
    if names.is_empty() {
        return Ok(());
    }
    let script: String = names.iter().map(|n| format!("netns del {n}\n")).collect();
    sys.run("ip", &["-force", "-batch", "-"], Some(&script))
        .map(|_| ())
}

/// Named netns whose name starts with `prefix` (from /run/netns, no command needed).
pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(super::sys::NETNS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v
}

/// Whether a netns name belongs to lab `lab_id`: `fpl-<id>-node`, `fpl-<id>-<n>` or
/// `fpl-<id>-x<n>`, and not to a lab whose id merely starts with `<id>-`.
pub fn is_lab_netns(name: &str, lab_id: &str) -> bool {
    let Some(rest) = name.strip_prefix(&format!("fpl-{lab_id}-")) else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    rest == "node" || digits(rest) || rest.strip_prefix('x').is_some_and(digits)
}

/// The network namespaces of lab `lab_id`.
pub fn lab_netns(lab_id: &str) -> Vec<String> {
    netns_with_prefix(&format!("fpl-{lab_id}-"))
        .into_iter()
        .filter(|n| is_lab_netns(n, lab_id))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::{plan, scenario};
    use super::*;
    use std::path::Path;

    fn plan_of(name: &str) -> Plan {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/examples")
            .join(name);
        plan::build("n1", &scenario::load(&dir).unwrap()).unwrap()
    }

    #[test]
    fn pods_route_through_the_node_with_host_routes_and_no_bridge() {
        let p = plan_of("three-tier");
        let node = node_links_script(&p);
        assert!(node.contains("link add p1 type veth peer name eth0 netns fpl-n1-1\n"));
        assert!(node.contains("route add 10.244.0.11/32 dev p1 src 172.18.0.2\n"));
        assert!(!node.contains("bridge"));
        let pod = pod_script(&p.pods[1]);
        assert!(pod.contains("addr add 10.244.0.11/32 dev eth0\n"));
        assert!(pod.contains("route add default via 169.254.1.1 dev eth0 src 10.244.0.11\n"));
        assert!(node_script(&p).contains("addr add 169.254.1.1/32 dev lo scope link"));
    }

    #[test]
    fn services_become_a_verdict_map_and_random_endpoint_dnat() {
        let p = plan_of("port-mismatch");
        let rules = nat_ruleset(&p);
        let svc = p.service("web/webapp").unwrap();
        let cip = svc.cluster_ips[0];
        assert!(
            rules.contains(&format!("{cip} . tcp . 80 : goto svc-")),
            "{rules}"
        );
        assert!(rules.contains("numgen random mod 2 vmap"), "{rules}");
        for ep in &svc.ports[0].endpoints {
            assert!(
                rules.contains(&format!("dnat ip to {}:8080", ep.ip)),
                "{rules}"
            );
        }
        assert!(rules.contains("10.96.0.10 . udp . 53"), "{rules}");
        assert!(rules.contains("10.96.0.10 . tcp . 53"), "{rules}");
    }

    #[test]
    fn headless_services_get_no_nat() {
        let p = plan_of("statefulset-peers");
        let rules = nat_ruleset(&p);
        let headless = p.service("kv/etcd").unwrap();
        assert!(headless.cluster_ips.is_empty());
        let client = p.service("kv/etcd-client").unwrap();
        assert!(rules.contains(&format!("{} . tcp . 2379", client.cluster_ips[0])));
        assert!(!rules.contains(". tcp . 2380"), "{rules}");
    }

    #[test]
    fn a_lab_owns_only_its_own_netns() {
        assert!(is_lab_netns("fpl-a-node", "a"));
        assert!(is_lab_netns("fpl-a-12", "a"));
        assert!(is_lab_netns("fpl-a-x0", "a"));
        // Lab "a-1" is another lab.
        assert!(!is_lab_netns("fpl-a-1-0", "a"));
        assert!(!is_lab_netns("fpl-a-1-node", "a"));
        assert!(is_lab_netns("fpl-a-1-node", "a-1"));
        assert!(!is_lab_netns("fpl-ab-node", "a"));
    }

    #[test]
    fn batches_go_to_the_named_netns_and_errors_carry_the_command() {
        let sys = super::super::sys::fake::RecordingSys {
            fail_on: Some("route add".into()),
            ..Default::default()
        };
        let p = plan_of("three-tier");
        let err = ip_batch(&sys, &p.pods[0].netns, &pod_script(&p.pods[0])).unwrap_err();
        assert!(err.to_string().contains("ip -n fpl-n1-0 -batch -"), "{err}");
        let calls = sys.calls.lock().unwrap();
        assert_eq!(calls[0].1, ["-n", "fpl-n1-0", "-batch", "-"]);
    }
}

//! tc mode (`--tc-interfaces`): `flow_tc` on tc ingress of every interface of
//! the agent's network namespace whose name matches the pattern, kept in step
//! with the interfaces as they come and go. On a node, pods' veths appear and
//! vanish all day: an interface that appears after start is attached at the
//! next refresh, and the link of one that vanished is released.
//!
//! An interface is known by name and index: a pod's veth deleted and made
//! again under the same name (Calico names them after the pod) is a new
//! interface, whose old link the kernel already detached.
use std::collections::BTreeMap;

use aya::programs::tc::SchedClassifierLinkId;
use aya::programs::{ProgramError, SchedClassifier, TcAttachType};

/// A network interface of the agent's namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub ifindex: u32,
}

/// What one refresh changed.
#[derive(Debug, Default)]
pub struct TcRefresh {
    /// Interfaces newly attached.
    pub attached: Vec<String>,
    /// Interfaces gone (or made anew) whose link was released.
    pub released: Vec<String>,
    /// Interfaces that matched but could not be attached (tried again at the
    /// next refresh).
    pub failed: Vec<(String, ProgramError)>,
}

/// The interfaces `flow_tc` is attached to, by name.
#[derive(Debug)]
pub struct TcInterfaces {
    pattern: String,
    attached: BTreeMap<String, (u32, SchedClassifierLinkId)>,
}

impl TcInterfaces {
    pub fn new(pattern: String) -> Self {
        Self {
            pattern,
            attached: BTreeMap::new(),
        }
    }

    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// Names of the interfaces attached now.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.attached.keys().map(String::as_str)
    }

    /// Attaches `prog` to the matching interfaces of `current` it is not
    /// attached to yet and releases the links of those no longer there.
    pub fn refresh(&mut self, prog: &mut SchedClassifier, current: &[Interface]) -> TcRefresh {
        let matching: Vec<&Interface> = current
            .iter()
            .filter(|i| glob_match(&self.pattern, &i.name))
            .collect();
        let known: BTreeMap<&str, u32> = self
            .attached
            .iter()
            .map(|(n, (ix, _))| (n.as_str(), *ix))
            .collect();
        let (to_attach, to_release) = plan(&matching, &known);
        let mut out = TcRefresh::default();
        for name in to_release {
            if let Some((_, link)) = self.attached.remove(&name) {
                // The kernel detached the link when the interface went away;
                // this only closes our handle (an error means it was gone).
                let _ = prog.detach(link);
                out.released.push(name);
            }
        }
        for iface in to_attach {
            // Before tcx (6.6) a clsact qdisc is needed; it may already exist.
            let _ = aya::programs::tc::qdisc_add_clsact(&iface.name);
            match prog.attach(&iface.name, TcAttachType::Ingress) {
                Ok(link) => {
                    self.attached
                        .insert(iface.name.clone(), (iface.ifindex, link));
                    out.attached.push(iface.name.clone());
                }
                Err(e) => out.failed.push((iface.name.clone(), e)),
            }
        }
        out
    }
}

/// Which of the matching interfaces to attach, and which attached names to
/// release: gone, or the same name on a new index (a new interface).
fn plan<'a>(
    matching: &[&'a Interface],
    attached: &BTreeMap<&str, u32>,
) -> (Vec<&'a Interface>, Vec<String>) {
    let now: BTreeMap<&str, u32> = matching
        .iter()
        .map(|i| (i.name.as_str(), i.ifindex))
        .collect();
    let release: Vec<String> = attached
        .iter()
        .filter(|(name, ix)| now.get(*name) != Some(*ix))
        .map(|(name, _)| name.to_string())
        .collect();
    let attach: Vec<&Interface> = matching
        .iter()
        .filter(|i| attached.get(i.name.as_str()) != Some(&i.ifindex))
        .copied()
        .collect();
    (attach, release)
}

/// The interfaces of the agent's network namespace: names from /proc/net/dev
/// (which, unlike /sys/class/net, follows the process's namespace), indexes
/// from `if_nametoindex` (also of the process's namespace). One that vanished
/// between the two reads is left out.
pub fn interfaces() -> Vec<Interface> {
    let text = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    interface_names(&text)
        .into_iter()
        .filter_map(|name| {
            let c = std::ffi::CString::new(name.as_bytes()).ok()?;
            // SAFETY: `c` is a valid NUL-terminated string for the call's duration.
            let ifindex = unsafe { libc::if_nametoindex(c.as_ptr()) };
            (ifindex != 0).then_some(Interface { name, ifindex })
        })
        .collect()
}

/// Interface names in the text of /proc/net/dev (two header lines, then `name: counters`).
fn interface_names(proc_net_dev: &str) -> Vec<String> {
    proc_net_dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(':').map(|(n, _)| n.trim().to_string()))
        .filter(|n| !n.is_empty())
        .collect()
}

/// `*` matches any run of characters, `?` one character; `,` separates alternatives.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn one(p: &[u8], n: &[u8]) -> bool {
        match (p.first(), n.first()) {
            (None, None) => true,
            (Some(b'*'), _) => one(&p[1..], n) || (!n.is_empty() && one(p, &n[1..])),
            (Some(b'?'), Some(_)) => one(&p[1..], &n[1..]),
            (Some(a), Some(b)) if a == b => one(&p[1..], &n[1..]),
            _ => false,
        }
    }
    pattern
        .split(',')
        .any(|alt| one(alt.trim().as_bytes(), name.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, ifindex: u32) -> Interface {
        Interface {
            name: name.into(),
            ifindex,
        }
    }

    #[test]
    fn interface_patterns() {
        assert!(glob_match("veth*", "veth12ab"));
        assert!(glob_match("cali*,lxc*", "lxc_health"));
        assert!(glob_match("eth?", "eth0"));
        assert!(!glob_match("eth?", "eth10"));
        assert!(!glob_match("veth*", "eth0"));
        assert!(glob_match("*", "lo"));
    }

    #[test]
    fn reads_interface_names_from_proc_net_dev() {
        let text = "Inter-|   Receive |  Transmit\n face |bytes packets|bytes\n    lo: 1 2 3\n  eth0: 4 5 6\nveth1a2b: 7 8 9\n";
        assert_eq!(interface_names(text), vec!["lo", "eth0", "veth1a2b"]);
    }

    #[test]
    fn a_refresh_attaches_new_interfaces_and_releases_gone_or_remade_ones() {
        let (a, b, b2, c) = (
            iface("cali1", 5),
            iface("cali2", 6),
            iface("cali2", 9),
            iface("cali3", 7),
        );
        let attached: BTreeMap<&str, u32> = [("cali1", 5), ("cali2", 6), ("cali4", 8)].into();
        // cali1 unchanged; cali2 made anew (index 9); cali3 new; cali4 gone.
        let (attach, release) = plan(&[&a, &b2, &c], &attached);
        assert_eq!(attach, vec![&b2, &c]);
        assert_eq!(release, vec!["cali2".to_string(), "cali4".to_string()]);
        // Nothing changed: nothing to do.
        let attached: BTreeMap<&str, u32> = [("cali1", 5), ("cali2", 6)].into();
        let (attach, release) = plan(&[&a, &b], &attached);
        assert!(attach.is_empty() && release.is_empty());
    }

    #[test]
    fn this_namespace_has_a_loopback_interface_with_its_index() {
        let all = interfaces();
        let lo = all.iter().find(|i| i.name == "lo").expect("lo listed");
        assert!(lo.ifindex > 0, "{all:?}");
    }
}

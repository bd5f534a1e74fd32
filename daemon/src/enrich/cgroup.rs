//! cgroup id → container → pod.
//!
//! The kernel tags every socket flow with the cgroup v2 id of the local socket; that id is the
//! inode number of the cgroup's directory in the cgroup2 mount. kubelet names pod cgroups after
//! the pod UID and the runtime names container cgroups after the container id, so the path alone
//! says which pod (and container) a socket belongs to, hostNetwork pods included.
//!
//! Layouts understood (any prefix, e.g. kind's `/kubelet.slice/kubelet-kubepods.slice`):
//! - cgroupfs driver: `/kubepods[/burstable|/besteffort]/pod<uid>/<container-id>`
//!   (CRI-O may prefix the container component with `crio-`);
//! - systemd driver: `/kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice/
//!   <runtime>-<container-id>.scope` with runtime `cri-containerd`, `crio`, `docker`
//!   (`crio-conmon-<id>.scope` is CRI-O's monitor process: the pod, no container).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("no cgroup2 mount in {mounts}: flowpol needs cgroup v2 (unified or hybrid)")]
    NoCgroup2 { mounts: PathBuf },
}

/// Which pod (and container) a cgroup belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CgroupOwner {
    /// Pod UID with dashes (`0b5c...-...`), as in `metadata.uid`.
    pub pod_uid: String,
    /// Container id without runtime prefix; `None` for the pod-level cgroup or a runtime helper.
    pub container_id: Option<String>,
    /// QoS class from the path: `guaranteed`, `burstable` or `besteffort`.
    pub qos: &'static str,
}

/// Parses a cgroup path (relative to the cgroup2 mount, with or without leading `/`).
/// Returns `None` for cgroups that are not inside a kubelet pod cgroup.
pub fn parse_cgroup_path(path: &str) -> Option<CgroupOwner> {
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    // The pod component and its index.
    let (idx, pod_uid) = parts
        .iter()
        .enumerate()
        .find_map(|(i, p)| pod_uid_of_component(p).map(|uid| (i, uid)))?;
    let qos = if parts[..idx]
        .iter()
        .any(|p| p.contains("burstable") && !p.contains("-pod"))
    {
        "burstable"
    } else if parts[..idx]
        .iter()
        .any(|p| p.contains("besteffort") && !p.contains("-pod"))
    {
        "besteffort"
    } else {
        "guaranteed"
    };
    // Also catch the systemd form where the QoS is only in the pod slice name.
    let qos = if qos == "guaranteed" {
        let pod_part = parts[idx];
        if pod_part.contains("-burstable-pod") {
            "burstable"
        } else if pod_part.contains("-besteffort-pod") {
            "besteffort"
        } else {
            qos
        }
    } else {
        qos
    };
    let container_id = parts
        .get(idx + 1)
        .and_then(|c| container_id_of_component(c));
    Some(CgroupOwner {
        pod_uid,
        container_id,
        qos,
    })
}

fn pod_uid_of_component(part: &str) -> Option<String> {
    // systemd: kubepods[-qos]-pod<uid_with_underscores>.slice
    if let Some(stem) = part.strip_suffix(".slice") {
        let (_, uid) = stem.rsplit_once("-pod")?;
        if !stem.contains("kubepods") {
            return None;
        }
        let uid = uid.replace('_', "-");
        return is_uid(&uid).then_some(uid);
    }
    // cgroupfs: pod<uid>
    let uid = part.strip_prefix("pod")?;
    is_uid(uid).then(|| uid.to_string())
}

/// A Kubernetes UID: 36 chars, hex and dashes at 8-4-4-4-12.
fn is_uid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn container_id_of_component(part: &str) -> Option<String> {
    let stem = part.strip_suffix(".scope").unwrap_or(part);
    if stem.starts_with("crio-conmon-") {
        return None;
    }
    let id = [
        "cri-containerd-",
        "crio-",
        "docker-",
        "containerd-",
        "cri-o-",
    ]
    .iter()
    .find_map(|p| stem.strip_prefix(p))
    .unwrap_or(stem);
    (id.len() >= 12 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_string())
}

/// Finds the cgroup2 mount point in a `/proc/mounts`-format text.
pub fn cgroup2_mount_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let (_dev, mnt, fstype) = (f.next()?, f.next()?, f.next()?);
        (fstype == "cgroup2").then(|| PathBuf::from(unescape_mount(mnt)))
    })
}

/// `/proc/mounts` escapes space, tab, newline and backslash as octal.
fn unescape_mount(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// Reads `/proc/mounts` and returns the cgroup2 mount.
pub fn find_cgroup2_mount(proc_mounts: &Path) -> Result<PathBuf, CgroupError> {
    let text = std::fs::read_to_string(proc_mounts).map_err(|source| CgroupError::Read {
        path: proc_mounts.to_path_buf(),
        source,
    })?;
    cgroup2_mount_in(&text).ok_or_else(|| CgroupError::NoCgroup2 {
        mounts: proc_mounts.to_path_buf(),
    })
}

/// The OS seam: lists every cgroup as (cgroup id, path relative to the cgroup2 root).
pub trait CgroupTree: Send + Sync {
    fn walk(&self) -> Result<Vec<(u64, String)>, CgroupError>;
}

/// The real tree: directories under the cgroup2 mount; the id is the directory's inode.
#[derive(Debug, Clone)]
pub struct FsCgroupTree {
    pub root: PathBuf,
}

impl FsCgroupTree {
    /// The cgroup2 mount found in `/proc/mounts`.
    pub fn from_proc_mounts() -> Result<Self, CgroupError> {
        Ok(Self {
            root: find_cgroup2_mount(Path::new("/proc/mounts"))?,
        })
    }
}

/// A cgroup's id is the inode number of its cgroup2 directory.
#[cfg(unix)]
fn cgroup_id(meta: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.ino()
}

/// Never reached off Unix: `FsCgroupTree::new` finds no cgroup2 mount there (the CLI still
/// builds, so a laptop can read databases and talk to agents).
#[cfg(not(unix))]
fn cgroup_id(_: &std::fs::Metadata) -> u64 {
    0
}

impl CgroupTree for FsCgroupTree {
    fn walk(&self) -> Result<Vec<(u64, String)>, CgroupError> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let meta = match std::fs::metadata(&dir) {
                Ok(m) => m,
                // Cgroups come and go while we walk.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(CgroupError::Read { path: dir, source }),
            };
            let rel = dir
                .strip_prefix(&self.root)
                .map(|p| format!("/{}", p.display()))
                .unwrap_or_else(|_| "/".into());
            out.push((cgroup_id(&meta), rel));
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(CgroupError::Read { path: dir, source }),
            };
            for entry in entries.flatten() {
                if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    stack.push(entry.path());
                }
            }
        }
        Ok(out)
    }
}

/// cgroup id → owner, rebuilt from the tree on a miss (at most once per `min_refresh`).
pub struct CgroupResolver {
    tree: Box<dyn CgroupTree>,
    min_refresh: Duration,
    state: Mutex<ResolverState>,
}

#[derive(Default)]
struct ResolverState {
    /// Every known cgroup id; `None` for cgroups that are not a pod's.
    ids: HashMap<u64, Option<CgroupOwner>>,
    last_walk: Option<Instant>,
}

impl CgroupResolver {
    pub fn new(tree: Box<dyn CgroupTree>) -> Self {
        Self {
            tree,
            min_refresh: Duration::from_millis(500),
            state: Mutex::new(ResolverState::default()),
        }
    }

    pub fn with_min_refresh(mut self, d: Duration) -> Self {
        self.min_refresh = d;
        self
    }

    /// The pod owning cgroup `id`; re-walks the tree when the id is unknown.
    pub fn resolve(&self, id: u64) -> Result<Option<CgroupOwner>, CgroupError> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(owner) = st.ids.get(&id) {
            return Ok(owner.clone());
        }
        let due = st.last_walk.is_none_or(|t| t.elapsed() >= self.min_refresh);
        if !due {
            return Ok(None);
        }
        let walked = self.tree.walk()?;
        st.last_walk = Some(Instant::now());
        // Replace, so removed cgroups (and reused inode numbers) do not linger.
        st.ids = walked
            .into_iter()
            .map(|(ino, path)| (ino, parse_cgroup_path(&path)))
            .collect();
        Ok(st.ids.get(&id).cloned().flatten())
    }

    /// Number of cgroups known from the last walk.
    pub fn known(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .ids
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const UID: &str = "0b5c8f4e-1a2b-4c3d-8e9f-001122334455";
    const CID: &str = "4f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0";

    #[test]
    fn cgroupfs_layouts_with_each_qos() {
        for (path, qos) in [
            (format!("/kubepods/burstable/pod{UID}/{CID}"), "burstable"),
            (format!("/kubepods/besteffort/pod{UID}/{CID}"), "besteffort"),
            (format!("/kubepods/pod{UID}/{CID}"), "guaranteed"),
            (
                format!("/kubepods/burstable/pod{UID}/crio-{CID}"),
                "burstable",
            ),
        ] {
            let o = parse_cgroup_path(&path).unwrap_or_else(|| panic!("{path}"));
            assert_eq!(o.pod_uid, UID, "{path}");
            assert_eq!(o.container_id.as_deref(), Some(CID), "{path}");
            assert_eq!(o.qos, qos, "{path}");
        }
    }

    #[test]
    fn systemd_layouts_with_containerd_crio_and_docker() {
        let u = UID.replace('-', "_");
        for (path, qos) in [
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{CID}.scope"
                ),
                "burstable",
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/crio-{CID}.scope"
                ),
                "besteffort",
            ),
            (
                format!("/kubepods.slice/kubepods-pod{u}.slice/docker-{CID}.scope"),
                "guaranteed",
            ),
            (
                // kind: kubelet's cgroup root under kubelet.slice
                format!(
                    "/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{u}.slice/cri-containerd-{CID}.scope"
                ),
                "besteffort",
            ),
        ] {
            let o = parse_cgroup_path(&path).unwrap_or_else(|| panic!("{path}"));
            assert_eq!(o.pod_uid, UID, "{path}");
            assert_eq!(o.container_id.as_deref(), Some(CID), "{path}");
            assert_eq!(o.qos, qos, "{path}");
        }
    }

    #[test]
    fn pod_level_and_helper_cgroups_have_no_container() {
        let u = UID.replace('-', "_");
        let pod = parse_cgroup_path(&format!("/kubepods/burstable/pod{UID}")).unwrap();
        assert_eq!(pod.container_id, None);
        let conmon = parse_cgroup_path(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/crio-conmon-{CID}.scope"
        ))
        .unwrap();
        assert_eq!(conmon.pod_uid, UID);
        assert_eq!(conmon.container_id, None);
    }

    #[test]
    fn non_pod_cgroups_are_none() {
        for p in [
            "/",
            "/system.slice/kubelet.service",
            "/user.slice/user-0.slice/session-1.scope",
            "/kubepods",
            "/kubepods/burstable",
            "/kubepods.slice/kubepods-burstable.slice",
            "/kubepods/burstable/podnot-a-uid/abc",
            "/system.slice/foo-pod0b5c8f4e_1a2b_4c3d_8e9f_001122334455.slice",
        ] {
            assert_eq!(parse_cgroup_path(p), None, "{p}");
        }
    }

    #[test]
    fn finds_cgroup2_in_a_hybrid_mount_table() {
        let mounts = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
                      cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n\
                      cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n";
        assert_eq!(
            cgroup2_mount_in(mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(cgroup2_mount_in("tmpfs /x tmpfs rw 0 0\n"), None);
        assert_eq!(
            cgroup2_mount_in("none /a\\040b cgroup2 rw 0 0"),
            Some(PathBuf::from("/a b"))
        );
    }

    struct FakeTree {
        entries: Arc<Mutex<Vec<(u64, String)>>>,
        walks: Arc<AtomicUsize>,
    }

    impl CgroupTree for FakeTree {
        fn walk(&self) -> Result<Vec<(u64, String)>, CgroupError> {
            self.walks.fetch_add(1, Ordering::SeqCst);
            Ok(self.entries.lock().unwrap().clone())
        }
    }

    #[test]
    fn resolver_walks_on_miss_and_caches_non_pod_cgroups() {
        let entries = Arc::new(Mutex::new(vec![(1, "/".to_string())]));
        let walks = Arc::new(AtomicUsize::new(0));
        let r = CgroupResolver::new(Box::new(FakeTree {
            entries: entries.clone(),
            walks: walks.clone(),
        }))
        .with_min_refresh(Duration::ZERO);
        assert_eq!(r.resolve(1).unwrap(), None);
        assert_eq!(walks.load(Ordering::SeqCst), 1);
        // Known non-pod cgroup: no new walk.
        assert_eq!(r.resolve(1).unwrap(), None);
        assert_eq!(walks.load(Ordering::SeqCst), 1);
        // A pod appears later: the miss triggers a walk that finds it.
        entries
            .lock()
            .unwrap()
            .push((42, format!("/kubepods/besteffort/pod{UID}/{CID}")));
        let o = r.resolve(42).unwrap().unwrap();
        assert_eq!(o.pod_uid, UID);
        assert_eq!(walks.load(Ordering::SeqCst), 2);
        assert_eq!(r.known(), 2);
    }

    #[test]
    fn resolver_rate_limits_walks() {
        let walks = Arc::new(AtomicUsize::new(0));
        let r = CgroupResolver::new(Box::new(FakeTree {
            entries: Arc::new(Mutex::new(vec![])),
            walks: walks.clone(),
        }))
        .with_min_refresh(Duration::from_secs(3600));
        assert_eq!(r.resolve(7).unwrap(), None);
        assert_eq!(r.resolve(8).unwrap(), None);
        assert_eq!(walks.load(Ordering::SeqCst), 1);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn real_cgroup2_root_walk_finds_its_own_inode() {
        // Not privileged: reading the cgroup tree needs no root.
        let Ok(tree) = FsCgroupTree::from_proc_mounts() else {
            panic!("this machine has no cgroup2 mount in /proc/mounts");
        };
        let root_ino = cgroup_id(&std::fs::metadata(&tree.root).unwrap());
        let all = tree.walk().unwrap();
        assert!(all.iter().any(|(i, p)| *i == root_ino && p == "/"));
    }
}

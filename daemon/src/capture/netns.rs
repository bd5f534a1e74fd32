//! Network namespaces named by path (`flowpol agent --drop-netns`): the drop
//! program tells namespaces apart by their nsfs inode number (`net.ns.inum`).
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    // `error`, not `source`: the message carries it, so a printed chain does not repeat it.
    #[error("--drop-netns {path}: {error}")]
    Open {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "--drop-netns {path}: not a network namespace ({what}; \
         want e.g. /run/netns/NAME or /proc/PID/ns/net)"
    )]
    NotNetwork { path: PathBuf, what: String },
    #[error("--drop-netns: {given} namespaces given, the kernel map holds {limit}")]
    TooMany { given: usize, limit: u32 },
}

/// `ioctl(NS_GET_NSTYPE)` (linux/nsfs.h: `_IO(0xb7, 0x3)`): the `CLONE_NEW*`
/// type of the namespace an nsfs file names.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// The inode number of the network namespace file at `path` (a bind mount
/// such as /run/netns/NAME, or /proc/PID/ns/net).
pub fn inode(path: &Path) -> Result<u32, NetnsError> {
    let open = |error| NetnsError::Open {
        path: path.to_path_buf(),
        error,
    };
    let not_network = |what: String| NetnsError::NotNetwork {
        path: path.to_path_buf(),
        what,
    };
    let file = File::open(path).map_err(open)?;
    // SAFETY: an ioctl without argument on an fd we own; on a file that is not
    // a namespace it fails (ENOTTY) and changes nothing.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    if kind < 0 {
        return Err(not_network("not a namespace file".into()));
    }
    if kind != libc::CLONE_NEWNET {
        return Err(not_network(format!("a namespace of type {kind:#x}")));
    }
    let ino = file.metadata().map_err(open)?.ino();
    u32::try_from(ino).map_err(|_| not_network(format!("inode {ino} out of range")))
}

/// The inode numbers of `paths`, deduplicated, at most `limit` of them.
pub fn inodes(paths: &[PathBuf], limit: u32) -> Result<Vec<u32>, NetnsError> {
    let mut out = paths
        .iter()
        .map(|p| inode(p))
        .collect::<Result<Vec<_>, _>>()?;
    out.sort_unstable();
    out.dedup();
    if out.len() > limit as usize {
        return Err(NetnsError::TooMany {
            given: out.len(),
            limit,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_inode_of_a_network_namespace_file() {
        let ino = inode(Path::new("/proc/self/ns/net")).unwrap();
        // nsfs gives the namespace's inode number to every file naming it.
        let meta = std::fs::metadata("/proc/self/ns/net").unwrap();
        assert_eq!(u64::from(ino), meta.ino());
        assert_eq!(
            inodes(
                &[
                    PathBuf::from("/proc/self/ns/net"),
                    PathBuf::from("/proc/thread-self/ns/net")
                ],
                8
            )
            .unwrap(),
            vec![ino]
        );
    }

    #[test]
    fn names_the_path_of_what_is_not_a_network_namespace() {
        let err = inode(Path::new("/proc/self/ns/uts"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("/proc/self/ns/uts") && err.contains("not a network namespace"),
            "{err}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("plain");
        std::fs::write(&file, "x").unwrap();
        let err = inode(&file).unwrap_err().to_string();
        assert!(
            err.contains("plain") && err.contains("not a network namespace"),
            "{err}"
        );
        let missing = dir.path().join("missing");
        let err = inode(&missing).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("--drop-netns {}", missing.display())),
            "{err}"
        );
    }

    #[test]
    fn refuses_more_namespaces_than_the_map_holds() {
        let err = inodes(&[PathBuf::from("/proc/self/ns/net")], 0).unwrap_err();
        assert!(
            matches!(err, NetnsError::TooMany { given: 1, limit: 0 }),
            "{err}"
        );
    }
}

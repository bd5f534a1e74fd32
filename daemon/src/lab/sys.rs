//! The lab's seam to the operating system: running `ip`/`nft`, creating cgroups and spawning
//! processes inside a network namespace and cgroup. Everything above it is plain data.
use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("`{cmd}` could not start: {err} (scripts/setup.sh installs iproute2 and nftables)")]
    Spawn { cmd: String, err: std::io::Error },
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Failed {
        cmd: String,
        status: String,
        stderr: String,
    },
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error("no cgroup2 mount in /proc/mounts: the lab needs cgroup v2 (unified or hybrid)")]
    NoCgroup2,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SysError + '_ {
    move |err| SysError::Io {
        path: path.to_path_buf(),
        err,
    }
}

/// What the lab asks of the system. The real implementation runs commands; tests record them.
pub trait Sys: Sync {
    /// Runs `program args...` with `stdin`, returning stdout; a non-zero exit is an error.
    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, SysError>;
}

/// Runs real commands.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealSys;

impl Sys for RealSys {
    fn run(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, SysError> {
        let cmd = format!("{program} {}", args.join(" "));
        let mut child = Command::new(program)
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| SysError::Spawn {
                cmd: cmd.clone(),
                err,
            })?;
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            pipe.write_all(text.as_bytes())
                .map_err(|err| SysError::Spawn {
                    cmd: cmd.clone(),
                    err,
                })?;
        }
        let out = child.wait_with_output().map_err(|err| SysError::Spawn {
            cmd: cmd.clone(),
            err,
        })?;
        if !out.status.success() {
            let mut shown = cmd;
            if shown.len() > 200 {
                shown.truncate(200);
                shown.push_str("...");
            }
            return Err(SysError::Failed {
                cmd: shown,
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// The cgroup2 mount point, read from /proc/mounts (hybrid hosts mount it at .../unified).
pub fn cgroup2_mount() -> Result<PathBuf, SysError> {
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(io(Path::new("/proc/mounts")))?;
    crate::enrich::cgroup::cgroup2_mount_in(&mounts).ok_or(SysError::NoCgroup2)
}

pub fn mkdir_all(path: &Path) -> Result<(), SysError> {
    std::fs::create_dir_all(path).map_err(io(path))
}

/// Kills every process in a cgroup subtree (cgroup.kill, Linux 5.14+), waits until it is
/// empty, then removes the directories bottom-up. A missing cgroup is not an error.
pub fn remove_cgroup_tree(root: &Path) -> Result<(), SysError> {
    if !root.exists() {
        return Ok(());
    }
    let kill = root.join("cgroup.kill");
    if kill.exists() {
        // Writing fails with ENODEV/ENOENT if the cgroup vanished meanwhile: fine.
        let _ = std::fs::write(&kill, "1");
    } else {
        kill_procs_recursive(root);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while populated(root) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    rmdir_recursive(root)
}

fn populated(root: &Path) -> bool {
    match std::fs::read_to_string(root.join("cgroup.events")) {
        Ok(events) => events.lines().any(|l| l.trim() == "populated 1"),
        Err(_) => false,
    }
}

fn kill_procs_recursive(dir: &Path) {
    if let Ok(procs) = std::fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: kill(2) with a pid read from the lab's own cgroup.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                kill_procs_recursive(&e.path());
            }
        }
    }
}

fn rmdir_recursive(dir: &Path) -> Result<(), SysError> {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                rmdir_recursive(&e.path())?;
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(SysError::Io {
            path: dir.to_path_buf(),
            err,
        }),
    }
}

/// Runs `work` over `items` on up to `workers` threads, returning the first error.
pub fn parallel<T: Sync, E: Send>(
    items: &[T],
    workers: usize,
    work: impl Fn(&T) -> Result<(), E> + Sync,
) -> Result<(), E> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers.max(1))
            .map(|_| {
                scope.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let Some(item) = items.get(i) else {
                            return Ok(());
                        };
                        if let Err(e) = work(item) {
                            // Stop the others early.
                            next.store(items.len(), std::sync::atomic::Ordering::SeqCst);
                            return Err(e);
                        }
                    }
                })
            })
            .collect();
        let mut first = Ok(());
        for h in handles {
            if let Ok(Err(e)) = h.join()
                && first.is_ok()
            {
                first = Err(e);
            }
        }
        first
    })
}

/// Where `ip netns` keeps the files of named network namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// The file of the named network namespace `name`.
pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Where a spawned process goes: a named network namespace and a cgroup.
pub struct Placement<'a> {
    /// Name under /run/netns.
    pub netns: &'a str,
    /// Absolute cgroup directory.
    pub cgroup: &'a Path,
    pub log: &'a Path,
}

/// Spawns `program args` inside a network namespace and cgroup, in its own session so a
/// terminal's Ctrl-C does not reach it. The child joins both in `pre_exec`, i.e. before it
/// opens a single socket, so every flow it makes is attributed to the cgroup.
pub fn spawn_in(
    program: &Path,
    args: &[OsString],
    place: &Placement<'_>,
    env: &[(&str, &str)],
) -> Result<Child, SysError> {
    let netns_path = netns_path(place.netns);
    let netns = File::open(&netns_path).map_err(io(&netns_path))?;
    let procs_path = place.cgroup.join("cgroup.procs");
    let procs = std::fs::OpenOptions::new()
        .write(true)
        .open(&procs_path)
        .map_err(io(&procs_path))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(place.log)
        .map_err(io(place.log))?;
    let log2 = log.try_clone().map_err(io(place.log))?;
    let netns_fd = netns.as_raw_fd();
    let procs_fd = procs.as_raw_fd();
    let mut cmd = Command::new(program);
    cmd.args(args).stdin(Stdio::null()).stdout(log).stderr(log2);
    for (k, v) in env {
        cmd.env(k, v);
    }
    // SAFETY: only async-signal-safe calls (setns, write, setsid) run between fork and exec;
    // the fds stay open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(netns_fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // "0" moves the writing process itself.
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) != 1 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|err| SysError::Spawn {
        cmd: format!("{} {:?} in netns {}", program.display(), args, place.netns),
        err,
    })?;
    drop(netns);
    drop(procs);
    Ok(child)
}

#[cfg(test)]
pub mod fake {
    //! A recording `Sys` for unit tests.
    use super::*;
    use std::sync::Mutex;

    /// program, arguments, stdin.
    pub type Call = (String, Vec<String>, Option<String>);

    #[derive(Default)]
    pub struct RecordingSys {
        pub calls: Mutex<Vec<Call>>,
        /// Fail the call whose joined command line contains this text.
        pub fail_on: Option<String>,
    }

    impl Sys for RecordingSys {
        fn run(
            &self,
            program: &str,
            args: &[&str],
            stdin: Option<&str>,
        ) -> Result<String, SysError> {
            let line = format!("{program} {}", args.join(" "));
            self.calls.lock().unwrap().push((
                program.to_string(),
                args.iter().map(|s| s.to_string()).collect(),
                stdin.map(str::to_string),
            ));
            if let Some(f) = &self.fail_on
                && (line.contains(f.as_str()) || stdin.is_some_and(|s| s.contains(f.as_str())))
            {
                return Err(SysError::Failed {
                    cmd: line,
                    status: "exit status: 1".into(),
                    stderr: "injected".into(),
                });
            }
            Ok(String::new())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_runs_everything_and_reports_an_error() {
        let seen = std::sync::Mutex::new(Vec::new());
        parallel(&[1, 2, 3, 4, 5], 3, |i| {
            seen.lock().unwrap().push(*i);
            Ok::<(), String>(())
        })
        .unwrap();
        let mut seen = seen.into_inner().unwrap();
        seen.sort();
        assert_eq!(seen, [1, 2, 3, 4, 5]);
        let err = parallel(&[1, 2, 3], 2, |i| {
            if *i == 2 {
                Err(format!("bad {i}"))
            } else {
                Ok(())
            }
        });
        assert_eq!(err, Err("bad 2".to_string()));
    }
}

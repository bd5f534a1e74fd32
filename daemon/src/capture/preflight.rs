//! Checks done before loading anything, each failing with what is wrong and how
//! to fix it. The parsers take file contents so tests can feed them.
use std::path::{Path, PathBuf};

use super::CaptureError;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability mask from the text of /proc/self/status.
pub fn effective_caps(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// Names of the capabilities missing to load and attach the programs.
pub fn missing_caps(cap_eff: u64) -> Vec<&'static str> {
    let has = |c: u32| cap_eff & (1u64 << c) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    let mut missing = Vec::new();
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    missing
}

pub fn check_privileges() -> Result<(), CaptureError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let caps = effective_caps(&status).unwrap_or(0);
    let missing = missing_caps(caps);
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CaptureError::NotPrivileged {
            missing: missing.join(", "),
        })
    }
}

pub fn check_btf() -> Result<(), CaptureError> {
    if Path::new(VMLINUX_BTF).exists() {
        Ok(())
    } else {
        Err(CaptureError::NoBtf {
            path: VMLINUX_BTF.into(),
            detail: "file does not exist".into(),
        })
    }
}

pub fn find_cgroup2_root() -> Result<PathBuf, CaptureError> {
    let mounts = std::fs::read_to_string("/proc/mounts").map_err(|e| CaptureError::NoCgroup2 {
        detail: format!("cannot read /proc/mounts: {e}"),
    })?;
    crate::enrich::cgroup::cgroup2_mount_in(&mounts).ok_or_else(|| CaptureError::NoCgroup2 {
        detail: "no cgroup2 entry in /proc/mounts".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_effective_caps() {
        let status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        assert_eq!(effective_caps(status), Some(0x1ff_ffff_ffff));
        assert!(missing_caps(0x1ff_ffff_ffff).is_empty());
        assert_eq!(
            missing_caps(0),
            vec!["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"]
        );
        assert_eq!(
            missing_caps((1 << CAP_BPF) | (1 << CAP_PERFMON)),
            vec!["CAP_NET_ADMIN"]
        );
    }
}

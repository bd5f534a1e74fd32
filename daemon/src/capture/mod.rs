//! Kernel capture: loads the eBPF programs, attaches them (cgroup_skb at the cgroup
//! v2 root, kfree_skb, optionally tc), and drains their maps into `FlowRecord`s.
//!
//! What `packets` and `bytes` mean: packets and bytes at the IP layer as the local
//! socket's cgroup hook saw them. `bytes` is `skb->len` from the IP header on (IP
//! header + transport header + payload, no link-layer header). A GSO/GRO
//! aggregate counts as `gso_segs` packets and its `skb->len` bytes (one set of
//! headers). Drops count the dropped packets' IP total length.
pub mod assemble;
pub mod batch;
pub mod btf;
pub mod host;
pub mod netns;
pub mod preflight;
pub mod tc;

use std::fs::File;
use std::path::PathBuf;
use std::time::Duration;

use flowpol_recommender::flow::FlowRecord;

use std::os::fd::{AsFd, AsRawFd};

use assemble::{Assembler, Clock, CompactFlow, Sources};
use aya::maps::{Array, IterableMap, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf};
use aya::programs::{
    CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, ProgramError, RawTracePoint, SchedClassifier,
    TestRun, TestRunOptions,
};
use aya::{Ebpf, EbpfLoader};
use btf::{Btf, BtfError, DropReasons, NetnsOffsets, SkbOffsets};
use flowpol_common::{
    CNT_FLOW_INSERTS, CONTROL_ACTIVE, COUNTER_COUNT, COUNTER_NAMES, DROP_NETNS_ENTRIES, DropKey,
    DropStats, FlowKey, FlowStats, OverflowEvent,
};
use tc::TcInterfaces;

static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flowpol"));

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(
        "not enough privilege to load eBPF programs: missing {missing}. Run `flowpol agent` as root, \
         or grant CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (e.g. securityContext.capabilities.add)"
    )]
    NotPrivileged { missing: String },
    #[error(
        "kernel BTF not available at {path} ({detail}): flowpol needs a kernel built with \
         CONFIG_DEBUG_INFO_BTF=y (most distribution kernels since 5.4 have it)"
    )]
    NoBtf { path: PathBuf, detail: String },
    #[error(
        "cgroup v2 is not mounted ({detail}): mount it, e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`, \
         or pass --cgroup PATH pointing at a cgroup v2 directory"
    )]
    NoCgroup2 { detail: String },
    #[error("cannot open cgroup directory {path}: {source} (is it a cgroup v2 directory?)")]
    Cgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reading kernel BTF: {0}")]
    Btf(#[from] BtfError),
    #[error(transparent)]
    Netns(#[from] netns::NetnsError),
    #[error("loading the eBPF object into the kernel failed: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("eBPF program {name}: {source}")]
    Program {
        name: &'static str,
        source: ProgramError,
    },
    #[error("attaching {what}: {source}")]
    Attach { what: String, source: ProgramError },
    #[error("eBPF map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("reading the possible CPUs from {path}: {source}")]
    Cpus {
        path: &'static str,
        source: std::io::Error,
    },
    #[error(transparent)]
    Batch(#[from] batch::BatchError),
    #[error("eBPF object has no {0} (the embedded programs do not match this binary)")]
    Missing(&'static str),
    #[error("reading the kernel's accounting of a map in {path}: {source}")]
    FdInfo {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What to load and where to attach it.
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// cgroup v2 directory to attach the socket hooks to; the cgroup v2 root when `None`.
    pub cgroup: Option<PathBuf>,
    /// Also attach tc ingress on interfaces whose name matches this pattern (`*`, `?`).
    pub tc_interfaces: Option<String>,
    /// How long a TCP SYN may wait for a SYN-ACK before the flow is `unanswered`.
    pub syn_timeout: Duration,
    /// Entries of each flow map copy.
    pub flow_map_entries: u32,
    /// One entry per TCP connection, ephemeral client port included, instead
    /// of one per client → server:port and interval.
    pub per_connection: bool,
    /// Kernel drop reasons (names, e.g. `TCP_OLD_DATA`) that are only counted
    /// (`drops_routine`), never recorded as drops.
    pub routine_drop_reasons: Vec<String>,
    /// Network namespace files (`/run/netns/NAME`, `/proc/PID/ns/net`): when
    /// any are given, only drops in those namespaces are recorded, the rest
    /// counted (`drops_other_netns`). Empty: every drop on the machine.
    pub drop_netns: Vec<PathBuf>,
}

impl CaptureOptions {
    /// Entries of each tc flow map copy: none are used without `--tc-interfaces`,
    /// and a preallocated per-CPU map costs its full size (entries × value × CPUs)
    /// in kernel memory whether used or not, so it gets the minimum, one.
    pub fn tc_flow_map_entries(&self) -> u32 {
        if self.tc_interfaces.is_some() {
            self.flow_map_entries
        } else {
            1
        }
    }
}

impl Default for CaptureOptions {
    fn default() -> Self {
        Self {
            cgroup: None,
            tc_interfaces: None,
            syn_timeout: Duration::from_secs(3),
            flow_map_entries: 65536,
            per_connection: false,
            routine_drop_reasons: flowpol_common::DEFAULT_ROUTINE_DROP_REASONS
                .iter()
                .map(|r| r.to_string())
                .collect(),
            drop_netns: Vec::new(),
        }
    }
}

type FlowMap = PerCpuHashMap<MapData, FlowKey, FlowStats>;
type DropMap = PerCpuHashMap<MapData, DropKey, DropStats>;

/// Loaded (and, after [`Capture::attach`], attached) programs with their maps.
/// Dropping it detaches everything.
pub struct Capture {
    ebpf: Ebpf,
    flows: [FlowMap; 2],
    tc_flows: [FlowMap; 2],
    drops: [DropMap; 2],
    control: Array<MapData, u32>,
    counters: PerCpuArray<MapData, u64>,
    overflow: RingBuf<MapData>,
    /// Ring-buffer events for the copy the programs write now (read early).
    held_overflow: Vec<OverflowEvent>,
    active: u32,
    reasons: DropReasons,
    assembler: Assembler,
    options: CaptureOptions,
    attached: Vec<String>,
    /// tc mode: the interfaces `flow_tc` is attached to (`--tc-interfaces`).
    tc: Option<TcInterfaces>,
    /// Entries read from the socket and tc flow maps at the last drain (serve: map fill).
    last_drained: [usize; 2],
    /// Possible CPUs: slots per value of the per-CPU maps.
    cpus: usize,
    /// The node's addresses the programs know (`HOST_ADDRS`), and the map.
    host_addrs: aya::maps::HashMap<MapData, flowpol_common::EndpointKey, u8>,
    host_addr_set: std::collections::BTreeSet<std::net::IpAddr>,
    /// Held for their memory accounting only (the programs alone use them).
    server_ports: aya::maps::HashMap<MapData, flowpol_common::EndpointKey, u8>,
    server_port_bits: Array<MapData, u64>,
}

/// Run statistics of one kernel program (`kernel.bpf_stats_enabled=1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramStats {
    pub name: &'static str,
    pub run_count: u64,
    pub run_time_ns: u64,
}

impl ProgramStats {
    /// Mean nanoseconds per run, when the program ran.
    pub fn mean_ns(&self) -> Option<f64> {
        (self.run_count > 0).then(|| self.run_time_ns as f64 / self.run_count as f64)
    }
}

const PROGRAM_NAMES: [&str; 4] = ["flow_egress", "flow_ingress", "flow_tc", "drop_kfree_skb"];

const SOCKET_PROGRAMS: [(&str, CgroupSkbAttachType); 2] = [
    ("flow_egress", CgroupSkbAttachType::Egress),
    ("flow_ingress", CgroupSkbAttachType::Ingress),
];

impl Capture {
    /// Checks privileges, BTF and cgroup v2, then loads the programs into the
    /// kernel without attaching them.
    pub fn load(options: CaptureOptions) -> Result<Self, CaptureError> {
        preflight::check_privileges()?;
        preflight::check_btf()?;
        let btf = Btf::from_sys_fs()?;
        let offsets = SkbOffsets::from_btf(&btf)?;
        let reasons = DropReasons::from_btf(&btf)?;
        let drop_netns = netns::inodes(&options.drop_netns, DROP_NETNS_ENTRIES)?;
        let netns_filter = !drop_netns.is_empty();
        // Only a filtering agent needs them (a kernel without them still loads otherwise).
        let ns = if netns_filter {
            NetnsOffsets::from_btf(&btf)?
        } else {
            NetnsOffsets::default()
        };
        drop(btf);
        let (routine, unknown) = reasons.bitmap(&options.routine_drop_reasons);
        if !unknown.is_empty() {
            // Reason names come and go between kernels: not an error.
            tracing::warn!(
                reasons = unknown.join(","),
                "routine drop reasons this kernel does not have"
            );
        }

        let mut ebpf = EbpfLoader::new()
            .override_global("SKB_OFF_HEAD", &offsets.head, true)
            .override_global("SKB_OFF_NETWORK_HEADER", &offsets.network_header, true)
            .override_global("SKB_OFF_TRANSPORT_HEADER", &offsets.transport_header, true)
            .override_global("DROP_REASON_NOT_SPECIFIED", &reasons.not_specified, true)
            .override_global("DROP_NETNS_FILTER", &u32::from(netns_filter), true)
            .override_global("SKB_OFF_DEV", &ns.skb_dev, true)
            .override_global("SKB_OFF_SK", &ns.skb_sk, true)
            .override_global("DEV_OFF_NET", &ns.dev_net, true)
            .override_global("SK_OFF_NET", &ns.sk_net, true)
            .override_global("NET_OFF_INUM", &ns.net_inum, true)
            .override_global("ROUTINE_DROP_REASONS", &routine, true)
            .override_global(
                "AGGREGATE_CLIENT_PORTS",
                &u32::from(!options.per_connection),
                true,
            )
            .map_max_entries("FLOWS_0", options.flow_map_entries)
            .map_max_entries("FLOWS_1", options.flow_map_entries)
            .map_max_entries("TC_FLOWS_0", options.tc_flow_map_entries())
            .map_max_entries("TC_FLOWS_1", options.tc_flow_map_entries())
            .load(PROGRAMS)?;

        for (name, _) in SOCKET_PROGRAMS {
            program::<CgroupSkb>(&mut ebpf, name)?
                .load()
                .map_err(|source| CaptureError::Program { name, source })?;
        }
        program::<RawTracePoint>(&mut ebpf, "drop_kfree_skb")?
            .load()
            .map_err(|source| CaptureError::Program {
                name: "drop_kfree_skb",
                source,
            })?;
        program::<SchedClassifier>(&mut ebpf, "flow_tc")?
            .load()
            .map_err(|source| CaptureError::Program {
                name: "flow_tc",
                source,
            })?;

        let flows = [
            take_map(&mut ebpf, "FLOWS_0")?,
            take_map(&mut ebpf, "FLOWS_1")?,
        ];
        let tc_flows = [
            take_map(&mut ebpf, "TC_FLOWS_0")?,
            take_map(&mut ebpf, "TC_FLOWS_1")?,
        ];
        let drops = [
            take_map(&mut ebpf, "DROPS_0")?,
            take_map(&mut ebpf, "DROPS_1")?,
        ];
        let control = take_map(&mut ebpf, "CONTROL")?;
        let host_addrs = take_map(&mut ebpf, "HOST_ADDRS")?;
        let server_ports = take_map(&mut ebpf, "SERVER_PORTS")?;
        let server_port_bits = take_map(&mut ebpf, "SERVER_PORT_BITS")?;
        {
            let mut kept: aya::maps::HashMap<_, u32, u8> = take_map(&mut ebpf, "DROP_NETNS")?;
            for ino in &drop_netns {
                kept.insert(ino, 1, 0).map_err(|source| CaptureError::Map {
                    name: "DROP_NETNS",
                    source,
                })?;
            }
        }
        let cpus =
            aya::util::nr_cpus().map_err(|(path, source)| CaptureError::Cpus { path, source })?;
        let counters = take_map(&mut ebpf, "COUNTERS")?;
        let overflow = take_map(&mut ebpf, "OVERFLOW")?;
        Ok(Self {
            ebpf,
            flows,
            tc_flows,
            drops,
            control,
            counters,
            overflow,
            held_overflow: Vec::new(),
            active: 0,
            reasons,
            assembler: Assembler::new(options.syn_timeout),
            options,
            attached: Vec::new(),
            tc: None,
            last_drained: [0; 2],
            cpus,
            host_addrs,
            host_addr_set: Default::default(),
            server_ports,
            server_port_bits,
        })
        .and_then(|mut capture: Self| {
            // Before anything is attached: no aggregated entry for a node address.
            capture.set_host_addresses(host::own_addresses())?;
            Ok(capture)
        })
    }

    /// Makes `addrs` the node addresses the programs spare from client-port
    /// aggregation (see `host`): adds the new ones, removes those gone. Past
    /// the map's size the rest are left out, with a warning.
    pub fn set_host_addresses(
        &mut self,
        addrs: std::collections::BTreeSet<std::net::IpAddr>,
    ) -> Result<(), CaptureError> {
        let map_err = |source| CaptureError::Map {
            name: "HOST_ADDRS",
            source,
        };
        for gone in self.host_addr_set.difference(&addrs) {
            match self.host_addrs.remove(&host::host_key(*gone)) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(e)),
            }
        }
        let mut room = (flowpol_common::HOST_ADDR_ENTRIES as usize)
            .saturating_sub(self.host_addr_set.intersection(&addrs).count());
        let mut kept = std::collections::BTreeSet::new();
        for ip in addrs {
            if !self.host_addr_set.contains(&ip) {
                if room == 0 {
                    tracing::warn!(
                        address = %ip,
                        entries = flowpol_common::HOST_ADDR_ENTRIES,
                        "more node addresses than the kernel map holds: this one is left out"
                    );
                    continue;
                }
                self.host_addrs
                    .insert(host::host_key(ip), 1, 0)
                    .map_err(map_err)?;
                room -= 1;
            }
            kept.insert(ip);
        }
        self.host_addr_set = kept;
        Ok(())
    }

    /// Attaches the socket hooks to the cgroup, the drop hook to `kfree_skb`, and
    /// tc ingress to the matching interfaces. Returns what was attached.
    pub fn attach(&mut self) -> Result<&[String], CaptureError> {
        let cgroup_path = match &self.options.cgroup {
            Some(p) => p.clone(),
            None => preflight::find_cgroup2_root()?,
        };
        let cgroup = File::open(&cgroup_path).map_err(|source| CaptureError::Cgroup {
            path: cgroup_path.clone(),
            source,
        })?;
        for (name, attach_type) in SOCKET_PROGRAMS {
            // Default mode: the kernel links cgroup programs as "multi", so other
            // agents' programs on the same cgroup keep running.
            program::<CgroupSkb>(&mut self.ebpf, name)?
                .attach(&cgroup, attach_type, CgroupAttachMode::Single)
                .map_err(|source| CaptureError::Attach {
                    what: format!("{name} to cgroup {}", cgroup_path.display()),
                    source,
                })?;
            self.attached
                .push(format!("cgroup_skb/{name} on {}", cgroup_path.display()));
        }
        program::<RawTracePoint>(&mut self.ebpf, "drop_kfree_skb")?
            .attach("kfree_skb")
            .map_err(|source| CaptureError::Attach {
                what: "drop_kfree_skb to raw tracepoint kfree_skb".into(),
                source,
            })?;
        self.attached.push("raw_tp/kfree_skb".into());
        if let Some(pattern) = self.options.tc_interfaces.clone() {
            let mut tc = TcInterfaces::new(pattern);
            let done = tc.refresh(
                program::<SchedClassifier>(&mut self.ebpf, "flow_tc")?,
                &tc::interfaces(),
            );
            if let Some((iface, source)) = done.failed.into_iter().next() {
                return Err(CaptureError::Attach {
                    what: format!("flow_tc to tc ingress of {iface}"),
                    source,
                });
            }
            if done.attached.is_empty() {
                // A node without pods yet has no pod interfaces: not an error.
                tracing::warn!(
                    pattern = tc.pattern(),
                    "--tc-interfaces matches no interface yet; each one is attached as it appears"
                );
            }
            for iface in done.attached {
                self.attached.push(format!("tc ingress on {iface}"));
            }
            self.tc = Some(tc);
        }
        Ok(&self.attached)
    }

    /// tc mode: attaches `flow_tc` to matching interfaces that appeared since
    /// the last call and releases the links of those that vanished. Interfaces
    /// that could not be attached are logged and tried again next time.
    pub fn refresh_tc(&mut self) -> Result<(), CaptureError> {
        let Some(tc) = self.tc.as_mut() else {
            return Ok(());
        };
        let prog = program::<SchedClassifier>(&mut self.ebpf, "flow_tc")?;
        let done = tc.refresh(prog, &tc::interfaces());
        for iface in &done.attached {
            tracing::info!(interface = %iface, "tc ingress attached");
        }
        for iface in &done.released {
            tracing::info!(interface = %iface, "interface gone: tc link released");
        }
        for (iface, error) in &done.failed {
            tracing::warn!(interface = %iface, %error, "attaching tc ingress failed; retrying at the next drain");
        }
        Ok(())
    }

    /// tc mode: the interfaces `flow_tc` is attached to now.
    pub fn tc_interfaces(&self) -> Vec<String> {
        self.tc
            .as_ref()
            .map(|t| t.names().map(str::to_string).collect())
            .unwrap_or_default()
    }

    /// Reads and empties the maps the programs wrote since the last drain and
    /// assembles them into records. `final_drain` flushes flows held back
    /// waiting for a SYN-ACK. (The agent uses [`Capture::drain_compact`].)
    pub fn drain(&mut self, final_drain: bool) -> Result<Vec<FlowRecord>, CaptureError> {
        let flows = self.drain_compact(final_drain)?;
        Ok(flows.iter().map(CompactFlow::to_record).collect())
    }

    /// [`Capture::drain`] into compact records, [`drain_chunk`] map entries at
    /// a time: the maps are never copied whole into memory.
    pub fn drain_compact(&mut self, final_drain: bool) -> Result<Vec<CompactFlow>, CaptureError> {
        let idle = self.active as usize;
        self.active ^= 1;
        self.control
            .set(CONTROL_ACTIVE, self.active, 0)
            .map_err(|source| CaptureError::Map {
                name: "CONTROL",
                source,
            })?;
        // A program that read the old index before the flip finishes within
        // microseconds; give it ample time before reading the idle copy.
        std::thread::sleep(Duration::from_millis(5));
        // Events held at the last drain were meant for the copy drained now.
        let mut overflow = std::mem::take(&mut self.held_overflow);
        while let Some(item) = self.overflow.next() {
            if item.len() >= size_of::<OverflowEvent>() {
                // SAFETY: the kernel wrote an OverflowEvent (repr(C), plain data);
                // read_unaligned copes with any alignment of the ring slot.
                let ev = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<OverflowEvent>()) };
                // Written after the flip, beside entries of the copy drained
                // next: taken now, one end of a local pair would be stored in
                // this drain and the other in the next, both as if alone.
                if usize::from(ev.copy) == idle || final_drain {
                    overflow.push(ev);
                } else {
                    self.held_overflow.push(ev);
                }
            }
        }
        let clock = Clock::now();
        let chunk = drain_chunk(self.cpus);
        let sources = Sources {
            sockets: &mut batch_drain(&self.flows[idle], self.cpus, chunk, "FLOWS"),
            tc: &mut batch_drain(&self.tc_flows[idle], self.cpus, chunk, "TC_FLOWS"),
            drops: &mut batch_drain(&self.drops[idle], self.cpus, chunk, "DROPS"),
        };
        let out =
            self.assembler
                .drain(sources, &overflow, clock, &self.reasons, final_drain, chunk)?;
        self.last_drained = [out.socket_entries, out.tc_entries];
        Ok(out.flows)
    }

    /// How full the socket and tc flow maps were at the last drain (entries
    /// read / capacity of one copy), by map name.
    pub fn map_fill(&self) -> [(&'static str, f64); 2] {
        let cap = f64::from(self.options.flow_map_entries.max(1));
        [
            ("flows", self.last_drained[0] as f64 / cap),
            ("tc_flows", self.last_drained[1] as f64 / cap),
        ]
    }

    /// Entries inserted into the flow maps (socket and tc, both copies) since
    /// load, summed over CPUs: one per-CPU array read, cheap enough to poll.
    pub fn flow_inserts(&self) -> Result<u64, CaptureError> {
        let values =
            self.counters
                .get(&CNT_FLOW_INSERTS, 0)
                .map_err(|source| CaptureError::Map {
                    name: "COUNTERS",
                    source,
                })?;
        Ok(values.iter().sum())
    }

    /// Entries of one copy of each flow map (`--flow-map-entries`).
    pub fn flow_map_capacity(&self) -> u32 {
        self.options.flow_map_entries
    }

    /// Kernel memory held by this capture's maps, as the kernel accounts it
    /// (`memlock` of each map in /proc/self/fdinfo). Preallocated per-CPU maps
    /// cost entries × value size × possible CPUs whether used or not: this is
    /// the agent's footprint outside its RSS.
    pub fn kernel_map_bytes(&self) -> Result<u64, CaptureError> {
        let fds = self
            .flows
            .iter()
            .chain(&self.tc_flows)
            .map(|m| raw_fd(m.map()))
            .chain(self.drops.iter().map(|m| raw_fd(m.map())))
            .chain([
                raw_fd(self.control.map()),
                raw_fd(self.counters.map()),
                raw_fd(self.host_addrs.map()),
                raw_fd(self.server_ports.map()),
                raw_fd(self.server_port_bits.map()),
                self.overflow.as_raw_fd(),
            ]);
        let mut total = 0;
        for fd in fds {
            let path = PathBuf::from(format!("/proc/self/fdinfo/{fd}"));
            let memlock = std::fs::read_to_string(&path).and_then(|text| {
                fdinfo_memlock(&text).ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, "no `memlock:` line")
                })
            });
            total += memlock.map_err(|source| CaptureError::FdInfo { path, source })?;
        }
        Ok(total)
    }

    /// Cumulative loss/skip counters (summed over CPUs), by name.
    pub fn counters(&self) -> Result<Vec<(&'static str, u64)>, CaptureError> {
        let mut out = Vec::with_capacity(COUNTER_COUNT as usize);
        for (i, name) in COUNTER_NAMES.iter().enumerate() {
            let values = self
                .counters
                .get(&(i as u32), 0)
                .map_err(|source| CaptureError::Map {
                    name: "COUNTERS",
                    source,
                })?;
            out.push((*name, values.iter().sum()));
        }
        Ok(out)
    }

    /// Per-program run count and total run time from the kernel. Both stay 0
    /// unless `kernel.bpf_stats_enabled=1` (the agent does not turn it on: it
    /// costs about 20 ns per run).
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        PROGRAM_NAMES
            .iter()
            .filter_map(|name| {
                let info = self.ebpf.program(name)?.info().ok()?;
                Some(ProgramStats {
                    name,
                    run_count: info.run_count(),
                    run_time_ns: info.run_time().as_nanos() as u64,
                })
            })
            .collect()
    }

    /// The running kernel's drop-reason names.
    pub fn drop_reasons(&self) -> &DropReasons {
        &self.reasons
    }

    /// Runs a socket program once on `frame` (an Ethernet frame: the kernel
    /// strips the link header for cgroup_skb) through BPF_PROG_TEST_RUN.
    pub fn test_run_socket(
        &mut self,
        egress: bool,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(u32, Duration), CaptureError> {
        let name = if egress {
            "flow_egress"
        } else {
            "flow_ingress"
        };
        let prog = program::<CgroupSkb>(&mut self.ebpf, name)?;
        let opts = TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        };
        let r = prog
            .test_run(opts)
            .map_err(|source| CaptureError::Program { name, source })?;
        Ok((r.return_value, r.duration))
    }

    /// Runs the drop program once with the raw tracepoint arguments
    /// `(skb, location, reason)`.
    pub fn test_run_drop(&mut self, skb: u64, reason: u64) -> Result<u32, CaptureError> {
        let prog = program::<RawTracePoint>(&mut self.ebpf, "drop_kfree_skb")?;
        let mut opts = aya::programs::RawTracePointRunOptions::new();
        opts.args[0] = skb;
        opts.args[2] = reason;
        let r = prog
            .test_run(opts)
            .map_err(|source| CaptureError::Program {
                name: "drop_kfree_skb",
                source,
            })?;
        Ok(r.return_value)
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, CaptureError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let p = ebpf
        .program_mut(name)
        .ok_or(CaptureError::Missing("program"))?;
    p.try_into()
        .map_err(|source| CaptureError::Program { name, source })
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, CaptureError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(CaptureError::Missing("map"))?;
    T::try_from(map).map_err(|source| CaptureError::Map { name, source })
}

/// The `memlock:` figure (bytes) of a BPF map's /proc/PID/fdinfo text.
fn fdinfo_memlock(fdinfo: &str) -> Option<u64> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Most map entries a drain reads per step (plus their mirrors): bounds the
/// memory of a drain besides its compact output.
pub const DRAIN_CHUNK: usize = 4096;

/// Per-CPU slots a drain step reads: [`DRAIN_CHUNK`] entries on 2 CPUs.
const DRAIN_CHUNK_SLOTS: usize = 2 * DRAIN_CHUNK;

/// Fewest entries a drain step reads: far more than a hash bucket holds (a
/// batch read fails when one bucket does not fit).
const MIN_DRAIN_CHUNK: usize = 64;

/// Entries per drain step with `cpus` possible CPUs. A step's buffers hold
/// every CPU's slot of each entry (64 bytes a slot, twice: the syscall's
/// buffer and the values taken from it), so a node with more CPUs reads fewer
/// entries a step: 1 MiB of slots on 2 CPUs or 128, where 4 096 entries
/// would need 64 MiB.
pub fn drain_chunk(cpus: usize) -> usize {
    (DRAIN_CHUNK_SLOTS / cpus.max(1)).clamp(MIN_DRAIN_CHUNK, DRAIN_CHUNK)
}

/// The idle copy of a per-CPU hash map, emptied by one drain a batch of
/// `chunk` entries per syscall. The programs write the other copy meanwhile,
/// so nothing changes it but the drain.
fn batch_drain<K: aya::Pod + Copy, V: aya::Pod + Copy>(
    map: &PerCpuHashMap<MapData, K, V>,
    cpus: usize,
    chunk: usize,
    name: &'static str,
) -> batch::BatchDrain<batch::SyscallMap, K, V> {
    batch::BatchDrain::new(batch::SyscallMap::new(raw_fd(map.map())), cpus, chunk, name)
}

/// A loaded map's descriptor, for raw `bpf(2)` calls and /proc/self/fdinfo.
fn raw_fd(map: &MapData) -> std::os::fd::RawFd {
    map.fd().as_fd().as_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memlock_is_read_from_a_map_fdinfo_and_missing_elsewhere() {
        let map = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t2086\nmap_type:\t5\n\
                   key_size:\t40\nvalue_size:\t64\nmax_entries:\t65536\nmap_flags:\t0x0\n\
                   map_extra:\t0x0\nmemlock:\t14702592\nmap_id:\t42\nfrozen:\t0\n";
        assert_eq!(fdinfo_memlock(map), Some(14_702_592));
        let file = "pos:\t0\nflags:\t02100002\nmnt_id:\t25\nino:\t131\n";
        assert_eq!(fdinfo_memlock(file), None);
        assert_eq!(fdinfo_memlock("memlock:\tmany\n"), None);
    }

    #[test]
    fn a_drain_step_reads_fewer_entries_on_more_cpus() {
        assert_eq!(drain_chunk(1), DRAIN_CHUNK);
        assert_eq!(drain_chunk(2), DRAIN_CHUNK);
        assert_eq!(drain_chunk(8), 1024);
        assert_eq!(drain_chunk(64), 128);
        assert_eq!(drain_chunk(1024), MIN_DRAIN_CHUNK);
        // The step's per-CPU slots stay at most what 2 CPUs read, up to 128 CPUs.
        for cpus in 1..=128 {
            assert!(drain_chunk(cpus) * cpus <= DRAIN_CHUNK_SLOTS, "{cpus} CPUs");
        }
    }

    #[test]
    fn tc_flow_maps_get_one_entry_unless_tc_is_asked_for() {
        let mut options = CaptureOptions {
            flow_map_entries: 4096,
            ..CaptureOptions::default()
        };
        assert_eq!(options.tc_flow_map_entries(), 1);
        options.tc_interfaces = Some("veth*".into());
        assert_eq!(options.tc_flow_map_entries(), 4096);
    }
}

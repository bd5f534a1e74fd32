//! `flowpol flows`: list recorded flows from a flowpol database.
//!
//! By default one line per flow: the rows of every drain interval of the same
//! flow (5-tuple, verdict, drop reason, node, cgroup and both ends' identity)
//! are merged, counters summed, `first_seen` the earliest and `last_seen` the
//! latest. `--per-interval` prints the stored rows as they are.
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use flowpol_recommender::flow::{Endpoint, FlowRecord, Protocol, Verdict, WorkloadRef};

use crate::store::{FlowOrder, FlowQuery, Store, StoreError};

#[derive(Debug, Args)]
pub struct FlowsArgs {
    /// The flowpol database to read (opened read-only).
    #[arg(
        long,
        value_name = "PATH",
        env = "FLOWPOL_DB",
        required_unless_present = "cluster"
    )]
    pub db: Option<PathBuf>,
    /// Only flows seen in this recent period (`5m`, `2h`, `1d`) or since this
    /// RFC 3339 instant (`2026-11-21T10:00:00Z`).
    #[arg(long, value_name = "DURATION|TIME", value_parser = parse_since)]
    pub since: Option<Since>,
    /// Only flows with this verdict.
    #[arg(long, value_name = "VERDICT", value_parser = parse_verdict)]
    pub verdict: Option<Verdict>,
    /// Only flows with an end in this namespace.
    #[arg(long, short = 'n', value_name = "NAMESPACE")]
    pub namespace: Option<String>,
    /// Only flows with an end in this workload (`Deployment/api`).
    #[arg(long, value_name = "KIND/NAME", value_parser = parse_workload)]
    pub workload: Option<WorkloadRef>,
    /// Only flows of this protocol (TCP, UDP, ICMP, ICMPv6, SCTP).
    #[arg(long, value_name = "PROTOCOL", value_parser = parse_protocol)]
    pub protocol: Option<Protocol>,
    /// Only flows with an end that is a pod whose labels match this selector
    /// (`app=web,tier in (a,b),!legacy`).
    #[arg(long, short = 'l', value_name = "SELECTOR")]
    pub selector: Option<crate::store::LabelSelector>,
    // --- serve: the cluster-wide view ---
    #[command(flatten)]
    pub cluster: crate::cli::flows_cluster::ClusterArgs,
    /// With --cluster: keep streaming new flows from every node until Ctrl-C.
    #[arg(long, requires = "cluster")]
    pub follow: bool,
    /// Print only the most recent N flows (still oldest first).
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// One line per stored drain-interval row instead of one per flow.
    #[arg(long)]
    pub per_interval: bool,
    /// Output format: an aligned table, or one JSON object per line.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Table)]
    pub output: OutputFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

/// The start of the period `--since` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Since {
    Ago(std::time::Duration),
    At(DateTime<Utc>),
}

impl Since {
    pub fn instant(self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Since::At(t) => t,
            // No flow predates the Unix epoch: a longer period means all of them, and
            // the instant stays one RFC 3339 can write (the --cluster client sends it).
            Since::Ago(d) => chrono::Duration::from_std(d)
                .ok()
                .and_then(|d| now.checked_sub_signed(d))
                .unwrap_or(DateTime::UNIX_EPOCH)
                .max(DateTime::UNIX_EPOCH),
        }
    }
}

pub fn parse_since(s: &str) -> Result<Since, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(Since::At(t.with_timezone(&Utc)));
    }
    humantime::parse_duration(s)
        .map(Since::Ago)
        .map_err(|e| format!("{s:?} is neither a duration (5m, 2h, 1d) nor an RFC 3339 time: {e}"))
}

fn parse_verdict(s: &str) -> Result<Verdict, String> {
    s.parse()
}

fn parse_workload(s: &str) -> Result<WorkloadRef, String> {
    s.parse()
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    s.parse()
        .map_err(|e: flowpol_recommender::flow::UnknownProtocol| e.to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum FlowsError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("starting the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("writing the output: {0}")]
    Output(#[source] std::io::Error),
    #[error("encoding a flow as JSON: {0}")]
    Json(#[source] serde_json::Error),
}

/// Rows fetched per page in `--per-interval` mode (bounds memory).
const PAGE_ROWS: u32 = 10_000;

pub fn run(args: FlowsArgs) -> anyhow::Result<ExitCode> {
    if args.cluster.cluster {
        return crate::cli::flows_cluster::run(&args);
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(FlowsError::Runtime)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match runtime.block_on(list(&args, Utc::now(), &mut out)) {
        Ok(()) => {}
        // `flowpol flows | head` is a normal way to stop reading.
        Err(FlowsError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        Err(e) => return Err(e.into()),
    }
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(FlowsError::Output(e).into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// Reads the flows `args` select and prints them to `out`; warnings (capture
/// losses in the period) go to stderr.
pub async fn list(
    args: &FlowsArgs,
    now: DateTime<Utc>,
    out: &mut dyn Write,
) -> Result<(), FlowsError> {
    let Some(db) = &args.db else {
        return Err(FlowsError::Store(StoreError::Missing {
            path: PathBuf::from("(--db not given)"),
        }));
    };
    let store = Store::open_read_only(db).await?;
    let since = args.since.map(|s| s.instant(now));
    let query = FlowQuery {
        since,
        verdict: args.verdict,
        namespace: args.namespace.clone(),
        workload: args.workload.clone(),
        labels: args.selector.clone(),
        protocol: args.protocol,
        ..Default::default()
    };
    let mut printer = Printer::new(args.output);
    if args.per_interval {
        if let Some(limit) = args.limit {
            let mut rows = store
                .query_flows(&FlowQuery {
                    limit: Some(limit),
                    order: FlowOrder::NewestFirst,
                    ..query
                })
                .await?;
            rows.reverse();
            printer.print_all(&rows, out)?;
        } else {
            let mut page_query = FlowQuery {
                limit: Some(PAGE_ROWS),
                ..query
            };
            loop {
                let page = store.query_flow_page(&page_query).await?;
                let records: Vec<FlowRecord> = page.flows.into_iter().map(|s| s.record).collect();
                printer.print_all(&records, out)?;
                match page.next {
                    Some(cursor) => page_query.after = Some(cursor),
                    None => break,
                }
            }
        }
    } else {
        let flows = match args.limit {
            Some(limit) => {
                let mut newest = store
                    .query_flows_merged(&FlowQuery {
                        limit: Some(limit),
                        order: FlowOrder::NewestFirst,
                        ..query
                    })
                    .await?;
                newest.sort_by_key(|f| f.first_seen);
                newest
            }
            None => store.query_flows_merged(&query).await?,
        };
        printer.print_all(&flows, out)?;
    }
    printer.finish(out)?;

    let losses = store.capture_losses(since).await?;
    if !losses.is_empty() {
        let list: Vec<String> = losses
            .iter()
            .map(|l| format!("{}={}", l.counter, l.total))
            .collect();
        eprintln!(
            "warning: capture lost or skipped data in this period, so flows may be missing or undercounted: {}",
            list.join(", ")
        );
    }
    store.close().await;
    Ok(())
}

/// Table rows are collected to align the columns; JSON lines stream.
pub(crate) struct Printer {
    format: OutputFormat,
    rows: Vec<[String; 9]>,
}

const HEADER: [&str; 9] = [
    "LAST SEEN",
    "PROTO",
    "SOURCE",
    "DESTINATION",
    "VERDICT",
    "PACKETS",
    "BYTES",
    "REPLY P/B",
    "DETAIL",
];

impl Printer {
    pub(crate) fn new(format: OutputFormat) -> Self {
        Self {
            format,
            rows: Vec::new(),
        }
    }

    pub(crate) fn print_all(
        &mut self,
        flows: &[FlowRecord],
        out: &mut dyn Write,
    ) -> Result<(), FlowsError> {
        for f in flows {
            match self.format {
                OutputFormat::Json => {
                    serde_json::to_writer(&mut *out, f).map_err(FlowsError::Json)?;
                    out.write_all(b"\n").map_err(FlowsError::Output)?;
                }
                OutputFormat::Table => self.rows.push(table_row(f)),
            }
        }
        Ok(())
    }

    pub(crate) fn finish(&mut self, out: &mut dyn Write) -> Result<(), FlowsError> {
        if self.format != OutputFormat::Table {
            return Ok(());
        }
        if self.rows.is_empty() {
            eprintln!("no flows match");
            return Ok(());
        }
        let mut widths = HEADER.map(str::len);
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let header = HEADER.map(String::from);
        for row in std::iter::once(&header).chain(self.rows.iter()) {
            let mut line = String::new();
            for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
                if i + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    // Counters are right-aligned, text left-aligned.
                    let right = (5..=7).contains(&i);
                    let pad = w - cell.chars().count();
                    if right {
                        line.push_str(&" ".repeat(pad));
                        line.push_str(cell);
                    } else {
                        line.push_str(cell);
                        line.push_str(&" ".repeat(pad));
                    }
                    line.push_str("  ");
                }
            }
            writeln!(out, "{}", line.trim_end()).map_err(FlowsError::Output)?;
        }
        Ok(())
    }
}

/// `[v6]:port` or `v4:port`; port 0 (a client's ephemeral ports, aggregated) as `*`.
fn addr_port(e: &Endpoint) -> String {
    let port = if e.port == 0 {
        "*".to_string()
    } else {
        e.port.to_string()
    };
    match e.ip {
        std::net::IpAddr::V6(ip) => format!("[{ip}]:{port}"),
        std::net::IpAddr::V4(ip) => format!("{ip}:{port}"),
    }
}

fn has_identity(e: &Endpoint) -> bool {
    e.namespace.is_some() || e.kind.is_some()
}

/// One unaligned table row (streaming output).
pub(crate) fn table_line(f: &FlowRecord) -> String {
    table_row(f).join("  ").trim_end().to_string()
}

fn table_row(f: &FlowRecord) -> [String; 9] {
    let icmp = matches!(f.protocol, Protocol::Icmp | Protocol::Icmpv6);
    // ICMP carries type/code in the port fields: shown in DETAIL instead.
    let source = if has_identity(&f.src) || icmp {
        f.src.display_name()
    } else {
        addr_port(&f.src)
    };
    let mut destination = if icmp {
        f.dst.display_name()
    } else if has_identity(&f.dst) && f.dst.namespace.is_some() {
        format!("{}:{}", f.dst.display_name(), f.dst.port)
    } else {
        addr_port(&f.dst)
    };
    if let Some(svc) = &f.dst.service {
        match f.dst.service_port {
            Some(p) => destination.push_str(&format!(" via {svc}:{p}")),
            None => destination.push_str(&format!(" via {svc}")),
        }
    }
    let mut detail = Vec::new();
    if let Some(reason) = &f.drop_reason {
        detail.push(reason.clone());
    }
    if icmp {
        detail.push(format!("type {} code {}", f.src.port, f.dst.port));
    }
    match f.connections {
        0 => {}
        1 => detail.push("1 connection".into()),
        n => detail.push(format!("{n} connections")),
    }
    let flags = f.tcp_flags.names();
    if !flags.is_empty() {
        detail.push(flags.join(","));
    }
    [
        f.last_seen.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        f.protocol.to_string(),
        source,
        destination,
        f.verdict.to_string(),
        f.packets.to_string(),
        f.bytes.to_string(),
        format!("{}/{}", f.reply_packets, f.reply_bytes),
        detail.join(" "),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_period_longer_than_history_means_all_of_it_and_stays_writable() {
        // Found by the api_query fuzz target: 4053 weeks and more went back past year
        // -262143, which RFC 3339 cannot write, so --cluster sent agents a bad `since`.
        let now = Utc::now();
        for text in ["4053 521 521 w", "100000000years", "9999999999w"] {
            let Ok(since) = parse_since(text) else {
                continue;
            };
            let instant = since.instant(now);
            assert_eq!(instant, DateTime::UNIX_EPOCH, "{text}");
            let written = instant.to_rfc3339();
            assert_eq!(parse_since(&written).unwrap().instant(now), instant);
        }
        assert!(parse_since("100000000years").is_ok());
    }

    #[test]
    fn since_takes_a_duration_or_a_time() {
        assert_eq!(
            parse_since("5m").unwrap(),
            Since::Ago(std::time::Duration::from_secs(300))
        );
        let at = parse_since("2026-11-21T10:00:00Z").unwrap();
        assert_eq!(
            at.instant(Utc::now()).to_rfc3339(),
            "2026-11-21T10:00:00+00:00"
        );
        let err = parse_since("yesterday").unwrap_err();
        assert!(err.contains("yesterday"), "{err}");
    }

    #[test]
    fn table_rows_name_workloads_or_addresses() {
        let t = Utc::now();
        let mut f = FlowRecord {
            src: Endpoint::new("10.0.0.1".parse().unwrap(), 40000),
            dst: Endpoint::new("fd00::2".parse().unwrap(), 443),
            protocol: Protocol::Tcp,
            packets: 3,
            bytes: 180,
            reply_packets: 0,
            reply_bytes: 0,
            first_seen: t,
            last_seen: t,
            verdict: Verdict::Dropped,
            drop_reason: Some("NETFILTER_DROP".into()),
            tcp_flags: flowpol_recommender::flow::TcpFlags(1),
            connections: 0,
            cgroup_id: None,
            node: None,
        };
        let row = table_row(&f);
        assert_eq!(row[2], "10.0.0.1:40000");
        assert_eq!(row[3], "[fd00::2]:443");
        assert_eq!(row[8], "NETFILTER_DROP SYN");
        // A client's connections aggregated: its ports are `*`, their number in DETAIL.
        let mut aggregated = f.clone();
        aggregated.src.port = 0;
        aggregated.connections = 12;
        let row = table_row(&aggregated);
        assert_eq!(row[2], "10.0.0.1:*");
        assert_eq!(row[8], "NETFILTER_DROP 12 connections SYN");
        f.dst.namespace = Some("shop".into());
        f.dst.workload = Some("Deployment/api".parse().unwrap());
        f.dst.service = Some("shop/api".into());
        f.dst.service_port = Some(80);
        f.src.namespace = Some("web".into());
        f.src.pod = Some("frontend-1".into());
        let row = table_row(&f);
        assert_eq!(row[2], "web/frontend-1");
        assert_eq!(row[3], "shop/api:443 via shop/api:80");
    }
}

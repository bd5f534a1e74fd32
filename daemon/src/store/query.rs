//! Reading flows: filters, cursor paging, and per-flow sums across intervals.
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use flowpol_recommender::flow::{Endpoint, FlowRecord, Protocol, TcpFlags, Verdict, WorkloadRef};
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{Store, StoreError, codec, write_error};

/// Columns written per flow, in bind order (`id` comes from `flow_id_high_water`, migration 0004).
pub const INSERT_COLUMNS: [&str; 19] = [
    "first_seen_ns",
    "last_seen_ns",
    "protocol",
    "src_ip",
    "src_port",
    "dst_ip",
    "dst_port",
    "packets",
    "bytes",
    "reply_packets",
    "reply_bytes",
    "verdict",
    "drop_reason",
    "tcp_flags",
    "cgroup_id",
    "node",
    "src_identity",
    "dst_identity",
    "connections",
];

/// Columns that are the same in every interval of one flow: the merge key.
const KEY_COLUMNS: &str = "f.protocol, f.src_ip, f.src_port, f.dst_ip, f.dst_port, f.verdict, \
    f.drop_reason, f.cgroup_id, f.node, f.src_identity, f.dst_identity";

/// Both ends' identity columns, from the joins `s` (source) and `d`.
const IDENTITY_COLUMNS: &str = "s.kind, s.namespace, s.pod, s.workload_kind, s.workload_name, \
    s.labels, s.service, s.service_port, s.selector, d.kind, d.namespace, d.pod, \
    d.workload_kind, d.workload_name, d.labels, d.service, d.service_port, d.selector";

const IDENTITY_JOINS: &str = "LEFT JOIN identities s ON s.id = f.src_identity \
    LEFT JOIN identities d ON d.id = f.dst_identity";

/// Where a page of rows ended; the next page starts after it. Flow ids grow
/// with every write and are never reused, so a cursor also serves to follow
/// new flows as they are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FlowCursor(pub i64);

impl fmt::Display for FlowCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for FlowCursor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .map(FlowCursor)
            .ok_or_else(|| format!("cursor {s:?} is not a flow id (a non-negative integer)"))
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FlowOrder {
    /// Oldest row first (paging forward, following).
    #[default]
    OldestFirst,
    /// Newest row first (the latest N).
    NewestFirst,
}

/// Which flows to read. Every filter is optional; together they all apply.
#[derive(Debug, Clone, Default)]
pub struct FlowQuery {
    /// Flows active at or after this instant (`last_seen >= since`).
    pub since: Option<DateTime<Utc>>,
    /// Flows that started before this instant (`first_seen < until`).
    pub until: Option<DateTime<Utc>>,
    pub verdict: Option<Verdict>,
    /// Either end is in this namespace.
    pub namespace: Option<String>,
    /// Either end belongs to this workload (in `namespace`, when also given).
    pub workload: Option<WorkloadRef>,
    pub protocol: Option<Protocol>,
    /// Either end is a pod whose labels match (with `namespace` and `workload`,
    /// when also given, on the same end).
    pub labels: Option<super::selector::LabelSelector>,
    /// Rows after this cursor (in `order`). Ignored by merged queries.
    pub after: Option<FlowCursor>,
    /// At most this many rows (or merged flows).
    pub limit: Option<u32>,
    pub order: FlowOrder,
}

/// One stored row: one flow in one drain interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFlow {
    pub id: i64,
    pub record: FlowRecord,
}

/// A page of rows and where the next one starts (None at the end).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowPage {
    pub flows: Vec<StoredFlow>,
    pub next: Option<FlowCursor>,
}

/// Flow columns in the order [`decode_row`] reads, before the identities.
const ROW_COLUMNS: &str = "f.id, f.first_seen_ns, f.last_seen_ns, f.protocol, f.src_ip, \
    f.src_port, f.dst_ip, f.dst_port, f.packets, f.bytes, f.reply_packets, f.reply_bytes, \
    f.verdict, f.drop_reason, f.tcp_flags, f.cgroup_id, f.node";

/// The same columns, aggregated over one flow's intervals (grouped by
/// [`KEY_COLUMNS`]), plus the identity ids to join afterwards.
const MERGED_COLUMNS: &str = "MIN(f.id) AS id, MIN(f.first_seen_ns) AS first_seen_ns, \
    MAX(f.last_seen_ns) AS last_seen_ns, f.protocol AS protocol, f.src_ip AS src_ip, \
    f.src_port AS src_port, f.dst_ip AS dst_ip, f.dst_port AS dst_port, \
    SUM(f.packets) AS packets, SUM(f.bytes) AS bytes, SUM(f.reply_packets) AS reply_packets, \
    SUM(f.reply_bytes) AS reply_bytes, f.verdict AS verdict, f.drop_reason AS drop_reason, \
    (MAX(f.tcp_flags & 1) | MAX(f.tcp_flags & 2) | MAX(f.tcp_flags & 4) | \
     MAX(f.tcp_flags & 8) | MAX(f.tcp_flags & 16) | MAX(f.tcp_flags & 32) | \
     MAX(f.tcp_flags & 64) | MAX(f.tcp_flags & 128)) AS tcp_flags, \
    f.cgroup_id AS cgroup_id, f.node AS node, f.src_identity AS src_identity, \
    f.dst_identity AS dst_identity, SUM(f.connections) AS connections";

fn push_filters(qb: &mut QueryBuilder<'_, Sqlite>, q: &FlowQuery, with_cursor: bool) {
    qb.push(" WHERE 1 = 1");
    if let Some(since) = &q.since {
        let since_ns = codec::time_to_ns(since);
        // Candidate rows are those of drains that saw a flow at or after
        // `since`: an id range the primary key serves, no time index needed.
        qb.push(
            " AND f.id >= (SELECT COALESCE(MIN(first_flow_id), 9223372036854775807) \
             FROM drains WHERE max_last_seen_ns >= ",
        )
        .push_bind(since_ns)
        .push(") AND f.last_seen_ns >= ")
        .push_bind(since_ns);
    }
    if let Some(until) = &q.until {
        qb.push(" AND f.first_seen_ns < ")
            .push_bind(codec::time_to_ns(until));
    }
    if let Some(v) = q.verdict {
        qb.push(" AND f.verdict = ")
            .push_bind(codec::verdict_to_db(v));
    }
    if let Some(p) = q.protocol {
        qb.push(" AND f.protocol = ")
            .push_bind(i64::from(p.number()));
    }
    if q.namespace.is_some() || q.workload.is_some() || q.labels.is_some() {
        // Either end's identity: ids from the small identities table, then
        // the flows' identity indexes.
        qb.push(" AND (");
        for (i, end) in ["src", "dst"].into_iter().enumerate() {
            if i > 0 {
                qb.push(" OR ");
            }
            qb.push(format!(
                "f.{end}_identity IN (SELECT id FROM identities WHERE 1 = 1"
            ));
            if let Some(ns) = &q.namespace {
                qb.push(" AND namespace = ").push_bind(ns.clone());
            }
            if let Some(w) = &q.workload {
                qb.push(" AND workload_kind = ")
                    .push_bind(w.kind.clone())
                    .push(" AND workload_name = ")
                    .push_bind(w.name.clone());
            }
            if let Some(sel) = &q.labels {
                push_selector(qb, sel);
            }
            qb.push(")");
        }
        qb.push(")");
    }
    if with_cursor && let Some(after) = q.after {
        match q.order {
            FlowOrder::OldestFirst => qb.push(" AND f.id > ").push_bind(after.0),
            FlowOrder::NewestFirst => qb.push(" AND f.id < ").push_bind(after.0),
        };
    }
}

/// A label selector on the `identities` row being filtered: pods only,
/// labels read from the stored JSON object.
fn push_selector(qb: &mut QueryBuilder<'_, Sqlite>, sel: &super::selector::LabelSelector) {
    use super::selector::{LabelSelector, Requirement};
    qb.push(" AND kind = 'Pod'");
    let value = |qb: &mut QueryBuilder<'_, Sqlite>, key: &str| {
        qb.push(" json_extract(labels, ")
            .push_bind(LabelSelector::json_path(key))
            .push(")");
    };
    let list = |qb: &mut QueryBuilder<'_, Sqlite>, values: &[String]| {
        qb.push(" (");
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                qb.push(", ");
            }
            qb.push_bind(v.clone());
        }
        qb.push(")");
    };
    for r in &sel.0 {
        qb.push(" AND");
        match r {
            Requirement::Equals(k, v) => {
                value(qb, k);
                qb.push(" = ").push_bind(v.clone());
            }
            Requirement::NotEquals(k, v) => {
                value(qb, k);
                qb.push(" IS NOT ").push_bind(v.clone());
            }
            Requirement::In(k, vs) => {
                value(qb, k);
                qb.push(" IN");
                list(qb, vs);
            }
            Requirement::NotIn(k, vs) => {
                qb.push(" COALESCE(");
                value(qb, k);
                qb.push(" NOT IN");
                list(qb, vs);
                qb.push(", 1)");
            }
            Requirement::Exists(k) => {
                value(qb, k);
                qb.push(" IS NOT NULL");
            }
            Requirement::DoesNotExist(k) => {
                value(qb, k);
                qb.push(" IS NULL");
            }
        }
    }
}

impl Store {
    /// Stored rows (one per flow per interval) matching `q`, as records.
    pub async fn query_flows(&self, q: &FlowQuery) -> Result<Vec<FlowRecord>, StoreError> {
        Ok(self
            .query_flow_page(q)
            .await?
            .flows
            .into_iter()
            .map(|s| s.record)
            .collect())
    }

    /// Stored rows matching `q` with their ids, and the cursor of the next page.
    pub async fn query_flow_page(&self, q: &FlowQuery) -> Result<FlowPage, StoreError> {
        let mut qb = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {ROW_COLUMNS}, {IDENTITY_COLUMNS}, f.connections FROM flows f {IDENTITY_JOINS}"
        ));
        push_filters(&mut qb, q, true);
        qb.push(match q.order {
            FlowOrder::OldestFirst => " ORDER BY f.id ASC",
            FlowOrder::NewestFirst => " ORDER BY f.id DESC",
        });
        if let Some(limit) = q.limit {
            qb.push(" LIMIT ").push_bind(i64::from(limit));
        }
        let rows = qb
            .build()
            .fetch_all(self.pool())
            .await
            .map_err(|e| write_error(self.path(), "querying flows", e))?;
        let flows = rows
            .iter()
            .map(|r| decode_row(self, r))
            .collect::<Result<Vec<_>, _>>()?;
        let next = match (q.limit, flows.last()) {
            (Some(limit), Some(last)) if flows.len() as u64 >= u64::from(limit) => {
                Some(FlowCursor(last.id))
            }
            _ => None,
        };
        Ok(FlowPage { flows, next })
    }

    /// One record per flow (same 5-tuple, verdict, drop reason, node, cgroup
    /// and identity of both ends) over the matching intervals: counters
    /// summed, earliest `first_seen`, latest `last_seen`, TCP flags OR-ed.
    /// Ordered by `first_seen` (oldest first, or newest first).
    pub async fn query_flows_merged(&self, q: &FlowQuery) -> Result<Vec<FlowRecord>, StoreError> {
        // Group on the flows table alone (identity ids are integers), then
        // join the identities of the far fewer merged rows.
        let mut qb = QueryBuilder::<Sqlite>::new(format!(
            "SELECT f.id, f.first_seen_ns, f.last_seen_ns, f.protocol, f.src_ip, f.src_port, \
             f.dst_ip, f.dst_port, f.packets, f.bytes, f.reply_packets, f.reply_bytes, \
             f.verdict, f.drop_reason, f.tcp_flags, f.cgroup_id, f.node, {IDENTITY_COLUMNS}, \
             f.connections \
             FROM (SELECT {MERGED_COLUMNS} FROM flows f"
        ));
        push_filters(&mut qb, q, false);
        qb.push(" GROUP BY ").push(KEY_COLUMNS);
        qb.push(match q.order {
            FlowOrder::OldestFirst => " ORDER BY 2 ASC, 1 ASC",
            FlowOrder::NewestFirst => " ORDER BY 3 DESC, 1 DESC",
        });
        if let Some(limit) = q.limit {
            qb.push(" LIMIT ").push_bind(i64::from(limit));
        }
        qb.push(format!(") f {IDENTITY_JOINS}"));
        qb.push(match q.order {
            FlowOrder::OldestFirst => " ORDER BY f.first_seen_ns ASC, f.id ASC",
            FlowOrder::NewestFirst => " ORDER BY f.last_seen_ns DESC, f.id DESC",
        });
        let rows = qb
            .build()
            .fetch_all(self.pool())
            .await
            .map_err(|e| write_error(self.path(), "querying merged flows", e))?;
        rows.iter()
            .map(|r| decode_row(self, r).map(|s| s.record))
            .collect()
    }

    /// Number of stored rows (one per flow per interval).
    pub async fn count_rows(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM flows")
            .fetch_one(self.pool())
            .await
            .map_err(|e| write_error(self.path(), "counting flows", e))?;
        Ok(codec::counter_from_db(n))
    }
}

/// Where `connections` comes in a row: after the flow columns and both ends'
/// identities (it joined the table last, schema 5).
const CONNECTIONS_COLUMN: usize = 35;

fn decode_row(store: &Store, r: &SqliteRow) -> Result<StoredFlow, StoreError> {
    let id: i64 = r.try_get(0).unwrap_or(-1);
    let bad = |detail: String| StoreError::BadRow {
        path: store.path().to_path_buf(),
        id,
        detail,
    };
    let get_err = |e: sqlx::Error| bad(e.to_string());
    let ts = |i: usize| -> Result<DateTime<Utc>, StoreError> {
        Ok(codec::ns_to_time(r.try_get::<i64, _>(i).map_err(get_err)?))
    };
    let counter = |i: usize| -> Result<u64, StoreError> {
        Ok(codec::counter_from_db(
            r.try_get::<i64, _>(i).map_err(get_err)?,
        ))
    };
    let protocol: i64 = r.try_get(3).map_err(get_err)?;
    let protocol = u8::try_from(protocol)
        .map(Protocol::from_number)
        .map_err(|_| bad(format!("protocol {protocol} is out of range")))?;
    let verdict: String = r.try_get(12).map_err(get_err)?;
    let verdict: Verdict = verdict.parse().map_err(bad)?;
    let flags: i64 = r.try_get(14).map_err(get_err)?;
    let flags =
        u8::try_from(flags).map_err(|_| bad(format!("tcp_flags {flags} is out of range")))?;
    let cgroup_id: Option<i64> = r.try_get(15).map_err(get_err)?;
    let src = decode_endpoint(r, 4, 5, 17, &bad)?;
    let dst = decode_endpoint(r, 6, 7, 26, &bad)?;
    Ok(StoredFlow {
        id,
        record: FlowRecord {
            src,
            dst,
            protocol,
            packets: counter(8)?,
            bytes: counter(9)?,
            reply_packets: counter(10)?,
            reply_bytes: counter(11)?,
            first_seen: ts(1)?,
            last_seen: ts(2)?,
            verdict,
            drop_reason: r.try_get(13).map_err(get_err)?,
            tcp_flags: TcpFlags(flags),
            connections: counter(CONNECTIONS_COLUMN)?,
            cgroup_id: cgroup_id.map(codec::id_from_db),
            node: r.try_get(16).map_err(get_err)?,
        },
    })
}

/// Decodes one end: address and port columns, then the 9 identity columns
/// starting at `ident` (kind, namespace, pod, workload kind, workload name,
/// labels, service, service port, selector).
fn decode_endpoint(
    r: &SqliteRow,
    ip_col: usize,
    port_col: usize,
    ident: usize,
    bad: &dyn Fn(String) -> StoreError,
) -> Result<Endpoint, StoreError> {
    let get_err = |e: sqlx::Error| bad(e.to_string());
    let ip_bytes: Vec<u8> = r.try_get(ip_col).map_err(get_err)?;
    let ip = codec::ip_from_db(&ip_bytes).ok_or_else(|| {
        bad(format!(
            "address of {} bytes is neither IPv4 nor IPv6",
            ip_bytes.len()
        ))
    })?;
    let port: i64 = r.try_get(port_col).map_err(get_err)?;
    let port = u16::try_from(port).map_err(|_| bad(format!("port {port} is out of range")))?;
    let mut e = Endpoint::new(ip, port);
    let kind: Option<String> = r.try_get(ident).map_err(get_err)?;
    e.kind = match kind {
        None => None,
        Some(k) => Some(
            codec::kind_from_db(&k).ok_or_else(|| bad(format!("unknown endpoint kind {k:?}")))?,
        ),
    };
    e.namespace = r.try_get(ident + 1).map_err(get_err)?;
    e.pod = r.try_get(ident + 2).map_err(get_err)?;
    let wk: Option<String> = r.try_get(ident + 3).map_err(get_err)?;
    let wn: Option<String> = r.try_get(ident + 4).map_err(get_err)?;
    e.workload = match (wk, wn) {
        (Some(kind), Some(name)) => Some(WorkloadRef { kind, name }),
        _ => None,
    };
    let labels: Option<String> = r.try_get(ident + 5).map_err(get_err)?;
    e.labels = codec::labels_from_db(labels.as_deref())
        .map_err(|err| bad(format!("labels are not a JSON object of strings: {err}")))?;
    e.service = r.try_get(ident + 6).map_err(get_err)?;
    let sp: Option<i64> = r.try_get(ident + 7).map_err(get_err)?;
    e.service_port = match sp {
        None => None,
        Some(p) => {
            Some(u16::try_from(p).map_err(|_| bad(format!("service port {p} is out of range")))?)
        }
    };
    let selector: Option<String> = r.try_get(ident + 8).map_err(get_err)?;
    e.selector = codec::labels_from_db(selector.as_deref())
        .map_err(|err| bad(format!("selector is not a JSON object of strings: {err}")))?;
    Ok(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_parse_and_print() {
        assert_eq!("42".parse::<FlowCursor>().unwrap(), FlowCursor(42));
        assert_eq!(FlowCursor(7).to_string(), "7");
        assert!("-1".parse::<FlowCursor>().is_err());
        assert!("abc".parse::<FlowCursor>().is_err());
    }

    #[test]
    fn merged_and_row_columns_line_up() {
        let count = |s: &str| {
            // Commas at nesting depth 0 separate columns.
            let mut depth = 0;
            let mut n = 1;
            for c in s.chars() {
                match c {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    ',' if depth == 0 => n += 1,
                    _ => {}
                }
            }
            n
        };
        // id + 16 flow columns, then 9 identity columns per end, then connections.
        assert_eq!(count(ROW_COLUMNS), 17);
        assert_eq!(count(IDENTITY_COLUMNS), 18);
        assert_eq!(count(MERGED_COLUMNS), 20);
        assert_eq!(CONNECTIONS_COLUMN, 17 + 18);
        assert_eq!(INSERT_COLUMNS[18], "connections");
        for (i, col) in INSERT_COLUMNS.iter().take(16).enumerate() {
            let row_col = ROW_COLUMNS.split(',').nth(i + 1).unwrap().trim();
            assert_eq!(row_col, format!("f.{col}"));
        }
    }
}

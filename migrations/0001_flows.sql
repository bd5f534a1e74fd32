-- flowpol schema 1: flow records and capture loss counters.
--
-- One `flows` row per flow per drain interval: the counters are the deltas of
-- that interval, so a flow that lives for a minute with a 5 s interval has 12
-- rows. Readers sum them (`flowpol flows` does by default).
--
-- Encodings (see daemon/src/store/codec.rs):
--   *_ns         Unix time in nanoseconds (UTC)
--   *_ip         4 bytes (IPv4) or 16 bytes (IPv6), network order
--   protocol     IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, 132 SCTP)
--   tcp_flags    bit set: 1 SYN, 2 SYN-ACK, 4 FIN, 8 RST
--   cgroup_id    the u64 id stored bit for bit in a signed 64-bit integer
--   *_identity   the endpoint's row in `identities`, NULL when unresolved
--
-- `id` is AUTOINCREMENT so ids are never reused, even after retention empties
-- the table: API clients page and follow by id.

-- Who owned an endpoint: one row per distinct identity, shared by every flow
-- row that names it (a flow row stays ~100 bytes instead of ~280, which is
-- most of the ingest rate). Rows are never changed once written.
--   kind         Pod | Node | APIServer | External, NULL when not resolved
--   labels       JSON object text, NULL when there are no labels
--   key          the canonical form of all the other columns (lookups)
CREATE TABLE identities (
    id             INTEGER PRIMARY KEY,
    key            TEXT    NOT NULL UNIQUE,
    kind           TEXT,
    namespace      TEXT,
    pod            TEXT,
    workload_kind  TEXT,
    workload_name  TEXT,
    labels         TEXT,
    service        TEXT,
    service_port   INTEGER
);
CREATE INDEX identities_namespace ON identities (namespace) WHERE namespace IS NOT NULL;
CREATE INDEX identities_workload ON identities (workload_name) WHERE workload_name IS NOT NULL;

CREATE TABLE flows (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    first_seen_ns      INTEGER NOT NULL,
    last_seen_ns       INTEGER NOT NULL,
    protocol           INTEGER NOT NULL,
    src_ip             BLOB    NOT NULL,
    src_port           INTEGER NOT NULL,
    dst_ip             BLOB    NOT NULL,
    dst_port           INTEGER NOT NULL,
    packets            INTEGER NOT NULL,
    bytes              INTEGER NOT NULL,
    reply_packets      INTEGER NOT NULL,
    reply_bytes        INTEGER NOT NULL,
    verdict            TEXT    NOT NULL CHECK (verdict IN ('forwarded', 'dropped', 'unanswered')),
    drop_reason        TEXT,
    tcp_flags          INTEGER NOT NULL,
    cgroup_id          INTEGER,
    node               TEXT,
    src_identity       INTEGER,
    dst_identity       INTEGER
);

-- Deliberately no secondary index on flows: each cost a third of the ingest
-- rate. Time filters find id ranges through `drains`; namespace and workload
-- filters match the (few) identity ids, then scan ~100-byte rows.

-- One row per write (drain interval): the range of flow ids it wrote and the
-- span of their last_seen. Time filters and retention by age find candidate
-- rows as id ranges through this small table, so the flows table needs no
-- time index (an index on last_seen, written out of order, cost a third of
-- the ingest rate).
CREATE TABLE drains (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    recorded_ns       INTEGER NOT NULL,
    node              TEXT,
    first_flow_id     INTEGER,
    last_flow_id      INTEGER,
    flow_count        INTEGER NOT NULL,
    min_last_seen_ns  INTEGER,
    max_last_seen_ns  INTEGER
);
CREATE INDEX drains_max_last_seen ON drains (max_last_seen_ns);

-- What capture lost or skipped (map full, ring buffer full, unparsable packet),
-- one row per counter per drain interval that saw a non-zero delta.
CREATE TABLE capture_losses (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    recorded_ns  INTEGER NOT NULL,
    node         TEXT,
    counter      TEXT    NOT NULL,
    delta        INTEGER NOT NULL
);
CREATE INDEX capture_losses_recorded ON capture_losses (recorded_ns);

-- flowpol schema 4: the same `flows` table (same columns, encodings and ids),
-- rebuilt for a cheaper insert. Per inserted row, schema 1's table made
-- SQLite read and rewrite `sqlite_sequence` (AUTOINCREMENT) and build a
-- temporary B-tree for `verdict IN (...)` (a CHECK is evaluated per row, the
-- list never cached); together about half of the ingest cost.
--
-- Flow ids are still never reused, even after retention empties the table
-- (API clients page and follow by id): the writer takes the next id from
-- `flow_id_high_water`, which only grows, in the transaction that inserts.
CREATE TABLE flows_v4 (
    id                 INTEGER PRIMARY KEY,
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
    verdict            TEXT    NOT NULL
        CHECK (verdict = 'forwarded' OR verdict = 'dropped' OR verdict = 'unanswered'),
    drop_reason        TEXT,
    tcp_flags          INTEGER NOT NULL,
    cgroup_id          INTEGER,
    node               TEXT,
    src_identity       INTEGER,
    dst_identity       INTEGER
);

INSERT INTO flows_v4 (id, first_seen_ns, last_seen_ns, protocol, src_ip, src_port, dst_ip,
    dst_port, packets, bytes, reply_packets, reply_bytes, verdict, drop_reason, tcp_flags,
    cgroup_id, node, src_identity, dst_identity)
SELECT id, first_seen_ns, last_seen_ns, protocol, src_ip, src_port, dst_ip,
    dst_port, packets, bytes, reply_packets, reply_bytes, verdict, drop_reason, tcp_flags,
    cgroup_id, node, src_identity, dst_identity
FROM flows ORDER BY id;

-- The highest flow id ever handed out (one row). Starts where AUTOINCREMENT
-- left off, so ids of rows retention already deleted are not handed out again.
CREATE TABLE flow_id_high_water (
    only_row  INTEGER PRIMARY KEY CHECK (only_row = 1),
    last_id   INTEGER NOT NULL
);
INSERT INTO flow_id_high_water (only_row, last_id) VALUES (1, MAX(
    COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'flows'), 0),
    COALESCE((SELECT MAX(id) FROM flows), 0)
));

-- Also removes the table's `sqlite_sequence` row.
DROP TABLE flows;
ALTER TABLE flows_v4 RENAME TO flows;

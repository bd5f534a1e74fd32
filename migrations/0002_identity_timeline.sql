-- Identity time line: which object owned an address (pod IP, node IP, Service IP, NodePort,
-- pod UID, API server endpoint) during [valid_from, valid_to). Times are Unix milliseconds.
CREATE TABLE identity_intervals (
    -- `ip:10.244.1.5`, `uid:<pod uid>`, `nodeport:TCP/30080`, `apiserver:<ip>`, `headless:<ip>`
    key         TEXT    NOT NULL,
    valid_from  INTEGER NOT NULL,
    -- NULL while the owner still holds the key.
    valid_to    INTEGER,
    -- The object holding the key: `Pod/<uid>`, `Node/<name>`, `Service/<ns>/<name>`.
    holder      TEXT    NOT NULL,
    -- The owner as JSON (namespace, name, workload, labels, ports, backends, ...).
    owner       TEXT    NOT NULL,
    PRIMARY KEY (key, valid_from)
) WITHOUT ROWID;

CREATE INDEX identity_intervals_valid_to ON identity_intervals (valid_to);

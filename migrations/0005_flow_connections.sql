-- flowpol schema 5: how many TCP connections a flow row covers.
--
-- A TCP client's connections to one server port are aggregated in the kernel
-- into one row per interval, its ephemeral port stored as 0 (`flowpol agent
-- --per-connection` keeps one row per connection). `connections` counts the
-- connections opened in the row's interval: the SYNs its source sent,
-- retransmissions included. 0 for other protocols, for drops, and for the
-- later intervals of a connection opened earlier; 0 too on rows written before
-- this schema.
ALTER TABLE flows ADD COLUMN connections INTEGER NOT NULL DEFAULT 0;

-- The labels a NetworkPolicy should select an endpoint's workload by: its controller's
-- selector without per-revision labels, as a JSON object; NULL when unknown (no controller,
-- or a row written before this column existed). It joins the identity's `key` only when set,
-- so the keys of identities without one stay what they were.
ALTER TABLE identities ADD COLUMN selector TEXT;

-- The web console's views of a whole organization: its delivery log across webhooks, newest first and keyset
-- paginated like a webhook's (GET /api/deliveries/), and its attempts of the last hour and day by outcome
-- (GET /api/stats/), which an index-only scan of this index counts (outcome is carried in it).
--
-- On a partitioned table the index is built on every partition, under a lock that holds log writes until it is
-- done: on a large log, apply this migration at a quiet time, or run this statement ahead (operations.md,
-- "Database"); IF NOT EXISTS then makes the migration a no-op.
CREATE INDEX IF NOT EXISTS delivery_attempts_organization_recent
    ON delivery_attempts (organization, created_at DESC, id DESC) INCLUDE (outcome);

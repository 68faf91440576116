-- The delivery log's filters at scale (issue 12): the API's listing filtered by action (per webhook and per
-- organization) and an organization's listing filtered by an unsuccessful status read an index that starts with
-- what they filter on, instead of walking every attempt of the webhook or organization newest first and
-- discarding those that do not match (a page of a rare action read thousands of rows from every partition).
-- A webhook's status filter already has delivery_attempts_webhook_outcome. The status index holds only the
-- unsuccessful attempts (a few percent of the log): `succeeded`, most of the rows, is served well enough by
-- delivery_attempts_organization_recent.
--
-- On a partitioned table each index is built on every partition, under a lock that holds log writes until it is
-- done: on a large log, apply this migration at a quiet time, or run these statements ahead (operations.md,
-- "Database"); IF NOT EXISTS then makes the migration a no-op.
CREATE INDEX IF NOT EXISTS delivery_attempts_webhook_action
    ON delivery_attempts (webhook_id, action, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS delivery_attempts_organization_action
    ON delivery_attempts (organization, action, created_at DESC, id DESC);
CREATE INDEX IF NOT EXISTS delivery_attempts_organization_unsuccessful
    ON delivery_attempts (organization, outcome, created_at DESC, id DESC) WHERE outcome <> 'succeeded';

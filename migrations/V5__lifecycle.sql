-- Data lifecycle: retention of the delivery log, events and idempotency keys; replays; a time-based disable.

-- Events are kept for the retention window, every one of them (those with no subscriber too), so that they can
-- be replayed: by organization and time for replays, by time (BRIN: nearly free to maintain on an append-only
-- table) for retention.
CREATE INDEX events_organization_created ON events (organization, created_at, id);
CREATE INDEX events_created_brin ON events USING brin (created_at);

-- Retention keeps the events whose retries are still pending: failed attempts whose next attempt is due.
CREATE INDEX delivery_attempts_pending ON delivery_attempts (next_attempt_at) WHERE outcome = 'failed';

-- Deliveries made by a replay carry its id (their delivery ids derive from it too).
ALTER TABLE delivery_attempts ADD COLUMN replay_id uuid NULL;
CREATE INDEX delivery_attempts_replay ON delivery_attempts (replay_id, delivery_id) WHERE replay_id IS NOT NULL;

CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

-- A webhook is turned off only after failing for WEBHOOK_DISABLE_AFTER with no success in between (and enough
-- attempts): failing_since is when its current run of failures began. Why and when it was turned off is kept.
ALTER TABLE webhooks
    ADD COLUMN failing_since timestamptz NULL,
    ADD COLUMN disabled_reason text NULL,
    ADD COLUMN disabled_at timestamptz NULL;

-- Replay and backfill jobs: the stored events of a window that match a webhook's subscription, sent again as new
-- deliveries, in event order, paced.
CREATE TABLE replays (
    id            uuid PRIMARY KEY,
    organization  bigint NOT NULL,
    webhook_id    bigint NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    since         timestamptz NOT NULL,
    until         timestamptz NOT NULL,
    actions       text[] NULL,                      -- the actions asked for; NULL: every one the webhook takes
    project_filter bigint NULL,                     -- what is sent, fixed at creation from the webhook's
    actions_filter text[] NULL,                     -- subscription: its project (NULL: all) and actions
    state         text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'done', 'cancelled', 'failed')),
    error         text NULL,
    total         bigint NULL,                      -- events to send, counted when the job starts
    queued        bigint NOT NULL DEFAULT 0,        -- events queued so far
    tasks_queued  bigint NOT NULL DEFAULT 0,        -- deliveries queued so far (one per chunk of an event)
    cursor_at     timestamptz NULL,                 -- the last event queued: (created_at, id)
    cursor_id     uuid NULL,
    leased_until  timestamptz NULL,                 -- a worker runs the job while it holds the lease
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz NULL
);
CREATE INDEX replays_webhook ON replays (webhook_id, created_at DESC);
CREATE INDEX replays_running ON replays (created_at) WHERE state = 'running';

-- Partitions of a configurable span (WEBHOOKD_LOG_PARTITION_MINUTES, a divisor of a day), aligned on UTC midnight,
-- from the current one to `ahead` from now. Idempotent; a range some partition already covers, even partly (one
-- of another span, made before the span changed), is skipped, and so is one whose rows sit in the default
-- partition (upkeep moves them first: webhookd_adopt_default_rows).
CREATE OR REPLACE FUNCTION webhookd_ensure_log_partitions(ahead interval, span interval) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    day_start timestamptz := date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    steps bigint := floor(extract(epoch FROM (now() - day_start)) / extract(epoch FROM span));
    lo timestamptz := day_start + steps * span;
    name text;
    made integer := 0;
BEGIN
    WHILE lo < now() + ahead LOOP
        IF span = interval '1 day' THEN
            name := format('delivery_attempts_%s', to_char(lo AT TIME ZONE 'UTC', 'YYYYMMDD'));
        ELSE
            name := format('delivery_attempts_%s', to_char(lo AT TIME ZONE 'UTC', 'YYYYMMDD"_"HH24MI'));
        END IF;
        IF to_regclass(name) IS NULL AND NOT EXISTS (
            SELECT 1 FROM webhookd_log_partitions() p WHERE p.range_start < lo + span AND p.range_end > lo
        ) THEN
            BEGIN
                EXECUTE format('CREATE TABLE %I PARTITION OF delivery_attempts FOR VALUES FROM (%L) TO (%L)',
                               name, lo, lo + span);
                made := made + 1;
            EXCEPTION WHEN duplicate_table OR check_violation OR invalid_object_definition THEN
                NULL;  -- another process made it; or rows of that range sit in the default partition
            END;
        END IF;
        lo := lo + span;
    END LOOP;
    RETURN made;
END $$;

-- The range partitions of the delivery log with their bounds (read from the catalog, whatever their names).
CREATE FUNCTION webhookd_log_partitions()
RETURNS TABLE (name text, range_start timestamptz, range_end timestamptz) LANGUAGE sql STABLE AS $$
    SELECT c.relname::text,
           substring(pg_get_expr(c.relpartbound, c.oid) FROM 'FROM \(''([^'']+)''\)')::timestamptz,
           substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([^'']+)''\)')::timestamptz
      FROM pg_inherits i
      JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = 'delivery_attempts'::regclass
       AND pg_get_expr(c.relpartbound, c.oid) <> 'DEFAULT'
$$;

-- Drops the partitions whose whole range ends before `before`: retention in O(partitions), no vacuum debt.
-- Returns the names dropped.
CREATE OR REPLACE FUNCTION webhookd_drop_log_partitions_before(before timestamptz) RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
    part record;
BEGIN
    FOR part IN SELECT p.name FROM webhookd_log_partitions() p WHERE p.range_end <= before ORDER BY p.range_start
    LOOP
        EXECUTE format('DROP TABLE %I', part.name);
        RETURN NEXT part.name;
    END LOOP;
END $$;

DROP FUNCTION webhookd_drop_log_partitions(interval);
DROP FUNCTION webhookd_ensure_log_partitions(integer);

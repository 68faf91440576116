-- Delivery-log writes already committed. A write whose commit is in doubt (the connection dropped before the
-- reply came) is made again under the same id; finding it here, it is skipped, so its attempts are not logged
-- twice nor their failures counted twice. Workers delete rows older than a day, hourly.
CREATE TABLE log_writes (
    id          uuid PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX log_writes_created_at ON log_writes (created_at);

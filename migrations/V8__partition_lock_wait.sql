-- Creating or dropping a partition of the delivery log takes a lock on delivery_attempts that conflicts with every
-- reader and writer of it, and PostgreSQL queues each later request for the table behind a DDL that waits. So a long
-- reader of the log (a backup, a report, an open transaction that read it) held retention's DDL, and behind it every
-- log write, and so every ack, for as long as the reader ran. These calls now give up after 200 ms with SQLSTATE
-- 55P03 (lock_not_available); retention then postpones that step to its next run, and a worker starting up goes on
-- (partitions are kept days ahead, and rows for a range without one wait in the default partition until retention
-- moves them). The setting holds for the call only.
ALTER FUNCTION webhookd_ensure_log_partitions(interval, interval) SET lock_timeout = '200ms';
ALTER FUNCTION webhookd_drop_log_partitions_before(timestamptz) SET lock_timeout = '200ms';

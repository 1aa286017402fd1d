-- Offsets that move under a processor are never taken silently (issue: fault paths, item 0).
--
-- consumer_offsets.processed: the offsets the runtime has passed through its batches, as a
-- multirange. The runtime only ever advances contiguously (a batch starts where the stored offset
-- stands), so the processed offsets of a partition are one range, with a hole wherever anything
-- else moved the stored offset forward. A hole is a skip: records never processed.
--
-- offset_moves: who moved a stored offset other than by processing, from where to where: an
-- operator's `kassa offsets skip-to-end` (intended) or a move the runtime found and reported
-- (not intended: nobody said so).
DO $migration$
DECLARE owner text;
BEGIN
  FOREACH owner IN ARRAY ARRAY['inventory', 'orders', 'payments', 'expiry'] LOOP
    EXECUTE format('ALTER TABLE %I.consumer_offsets ADD COLUMN processed int8multirange NOT NULL DEFAULT ''{}''', owner);
    -- What was stored before this migration was processed by the runtime as far as anyone knows.
    EXECUTE format('UPDATE %I.consumer_offsets SET processed = int8multirange(int8range(0, next_offset))', owner);
    EXECUTE format($$CREATE TABLE %I.offset_moves (
        id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        topic       text        NOT NULL,
        partition   integer     NOT NULL,
        from_offset bigint,
        to_offset   bigint      NOT NULL,
        intended    boolean     NOT NULL,
        moved_by    text        NOT NULL,
        reason      text        NOT NULL,
        moved_at    timestamptz NOT NULL DEFAULT now())$$, owner);
    EXECUTE format('CREATE INDEX ON %I.offset_moves (topic, partition)', owner);
  END LOOP;
END
$migration$;

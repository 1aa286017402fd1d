-- The runtime's tables of one processor, in their current shape, created if missing: `kassa
-- migrate` calls this for every consumer group it knows (kassa_schemas::ConsumerGroup::ALL), so a
-- new processor gets its offsets, inbox, outbox and offset moves without a migration of its own
-- (its own state tables still need one). Existing schemas are left as they are.
CREATE OR REPLACE FUNCTION public.kassa_create_runtime_tables(owner text) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
  EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I', owner);

  -- Next offset to consume per partition, and the offsets the runtime has processed.
  EXECUTE format($$CREATE TABLE IF NOT EXISTS %I.consumer_offsets (
      topic       text            NOT NULL,
      partition   integer         NOT NULL,
      next_offset bigint          NOT NULL CHECK (next_offset >= 0),
      updated_at  timestamptz     NOT NULL DEFAULT now(),
      processed   int8multirange  NOT NULL DEFAULT '{}',
      PRIMARY KEY (topic, partition))$$, owner);

  -- Event ids already applied: a redelivered or re-sent event is skipped.
  EXECUTE format($$CREATE TABLE IF NOT EXISTS %I.inbox (
      event_id     uuid        PRIMARY KEY,
      topic        text        NOT NULL,
      partition    integer     NOT NULL,
      "offset"     bigint      NOT NULL,
      processed_at timestamptz NOT NULL DEFAULT now())$$, owner);
  EXECUTE format('CREATE INDEX IF NOT EXISTS inbox_processed_brin ON %I.inbox USING brin (processed_at)', owner);

  -- Events to publish, in id order; the relay marks them sent and prunes them later.
  EXECUTE format($$CREATE TABLE IF NOT EXISTS %I.outbox (
      id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
      topic      text        NOT NULL,
      key        text,
      payload    bytea,
      headers    jsonb       NOT NULL DEFAULT '{}'::jsonb,
      created_at timestamptz NOT NULL DEFAULT now(),
      sent_at    timestamptz)$$, owner);
  EXECUTE format('CREATE INDEX IF NOT EXISTS outbox_id_idx ON %I.outbox (id) WHERE sent_at IS NULL', owner);

  -- Moves of stored offsets other than by processing (operators', and ones the runtime found).
  EXECUTE format($$CREATE TABLE IF NOT EXISTS %I.offset_moves (
      id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
      topic       text        NOT NULL,
      partition   integer     NOT NULL,
      from_offset bigint,
      to_offset   bigint      NOT NULL,
      intended    boolean     NOT NULL,
      moved_by    text        NOT NULL,
      reason      text        NOT NULL,
      moved_at    timestamptz NOT NULL DEFAULT now())$$, owner);
  EXECUTE format('CREATE INDEX IF NOT EXISTS offset_moves_topic_partition_idx ON %I.offset_moves (topic, partition)', owner);
END
$fn$;

-- The exactly-once runtime's tables, created the same way in every processor's own schema.
-- A processor's consumer offsets, inbox and outbox live beside its state so that one Postgres
-- transaction covers all of them (see DESIGN.md, "Exactly-once effects").
CREATE FUNCTION public.kassa_create_runtime_tables(owner text) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
  EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I', owner);

  -- Next offset to consume per partition; the consumer seeks here on assignment.
  EXECUTE format($$CREATE TABLE %I.consumer_offsets (
      topic       text        NOT NULL,
      partition   integer     NOT NULL,
      next_offset bigint      NOT NULL CHECK (next_offset >= 0),
      updated_at  timestamptz NOT NULL DEFAULT now(),
      PRIMARY KEY (topic, partition))$$, owner);

  -- Event ids already applied: a redelivered or re-sent event is skipped.
  EXECUTE format($$CREATE TABLE %I.inbox (
      event_id     uuid        PRIMARY KEY,
      topic        text        NOT NULL,
      partition    integer     NOT NULL,
      "offset"     bigint      NOT NULL,
      processed_at timestamptz NOT NULL DEFAULT now())$$, owner);
  EXECUTE format('CREATE INDEX ON %I.inbox (processed_at)', owner);

  -- Events to publish, in id order; the relay marks them sent and prunes them later.
  -- payload is the Confluent wire format (magic byte, schema id, Avro body); NULL payload is a tombstone.
  EXECUTE format($$CREATE TABLE %I.outbox (
      id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
      topic      text        NOT NULL,
      key        text,
      payload    bytea,
      headers    jsonb       NOT NULL DEFAULT '{}'::jsonb,
      created_at timestamptz NOT NULL DEFAULT now(),
      sent_at    timestamptz)$$, owner);
  EXECUTE format('CREATE INDEX ON %I.outbox (id) WHERE sent_at IS NULL', owner);
END
$fn$;

SELECT public.kassa_create_runtime_tables(p) FROM unnest(ARRAY['inventory', 'orders', 'payments', 'expiry']) AS p;

-- The payments processor's state (beside its runtime tables from 0001), and the simulated
-- payment provider's books (schema `simulator`: a provider of its own, not kassa's state).

-- One payment per order: what kassa believes about it at the provider, and the next call to make.
CREATE TABLE payments.payments (
    order_id          text        PRIMARY KEY,
    payment_id        uuid        NOT NULL UNIQUE,
    provider          text        NOT NULL,
    amount_minor      bigint      NOT NULL CHECK (amount_minor >= 0),
    currency          text        NOT NULL,
    payment_method_id text        NOT NULL,
    provider_ref      text,
    status            text        NOT NULL,
    stage             text        NOT NULL CHECK (stage IN ('reserved', 'confirmed', 'cancelled')),
    client_secret     text,
    captured_minor    bigint      NOT NULL DEFAULT 0,
    refunded_minor    bigint      NOT NULL DEFAULT 0,
    needs_lookup      boolean     NOT NULL DEFAULT false,
    work              text,
    due_at            timestamptz NOT NULL DEFAULT now(),
    leased_until      timestamptz,
    attempts          integer     NOT NULL DEFAULT 0,
    last_error        text,
    cause_event_id    uuid,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON payments.payments (due_at) WHERE work IS NOT NULL;
CREATE INDEX ON payments.payments (provider_ref);

-- Every call made to the provider and how it ended.
CREATE TABLE payments.attempts (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id        text        NOT NULL,
    step            text        NOT NULL,
    idempotency_key text,
    outcome         text        NOT NULL,
    detail          text,
    at              timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON payments.attempts (order_id, id);

-- Provider webhooks, once each (by the provider's event id). applied_at is null while the
-- payment it is about does not exist yet: it is applied when it does.
CREATE TABLE payments.webhooks (
    provider_event_id text        PRIMARY KEY,
    provider          text        NOT NULL,
    event_type        text        NOT NULL,
    order_id          text,
    payment_intent_id text,
    received_at       timestamptz NOT NULL,
    applied_at        timestamptz,
    outcome           text
);
CREATE INDEX ON payments.webhooks (order_id) WHERE applied_at IS NULL;

CREATE SCHEMA IF NOT EXISTS simulator;

CREATE TABLE simulator.intents (
    id             text        PRIMARY KEY,
    order_id       text        NOT NULL,
    amount_minor   bigint      NOT NULL,
    currency       text        NOT NULL,
    payment_method text        NOT NULL,
    status         text        NOT NULL,
    received_minor bigint      NOT NULL DEFAULT 0,
    refunded_minor bigint      NOT NULL DEFAULT 0,
    client_secret  text,
    error_code     text,
    error_message  text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON simulator.intents (order_id);

-- The answer stored per idempotency key (replayed for a repeated key, as Stripe does).
CREATE TABLE simulator.replies (
    key   text        PRIMARY KEY,
    op    text        NOT NULL,
    reply jsonb       NOT NULL,
    at    timestamptz NOT NULL DEFAULT now()
);

-- Every call, faults included (its count per key drives the deterministic fault injection).
CREATE TABLE simulator.calls (
    id        bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key       text        NOT NULL,
    op        text        NOT NULL,
    intent_id text,
    at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON simulator.calls (key);

-- Every effect that happened: authorize, capture, void, refund (what tests count per order).
CREATE TABLE simulator.effects (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    intent_id    text        NOT NULL,
    kind         text        NOT NULL CHECK (kind IN ('authorize', 'capture', 'void', 'refund')),
    amount_minor bigint      NOT NULL,
    at           timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON simulator.effects (intent_id);

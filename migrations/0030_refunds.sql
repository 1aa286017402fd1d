-- Refunds of completed orders (POST /admin/orders/{id}/refunds): the API's record of each asked
-- for (what it checks the next one against), the orders processor's (its decision and outcome;
-- the order's refunded total), and the payments processor's (the call to the provider, retried
-- until it answers).

CREATE TABLE IF NOT EXISTS api.refunds (
    refund_id       uuid        PRIMARY KEY,
    order_id        uuid        NOT NULL REFERENCES api.orders (order_id),
    idempotency_key text        NOT NULL,
    fingerprint     text        NOT NULL,
    amount_minor    bigint      NOT NULL CHECK (amount_minor > 0),
    reason          text        NOT NULL,
    restock         jsonb       NOT NULL DEFAULT '[]',
    requested_by    text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (order_id, idempotency_key)
);

ALTER TABLE orders.orders ADD COLUMN IF NOT EXISTS refunded_minor bigint NOT NULL DEFAULT 0;

CREATE TABLE IF NOT EXISTS orders.refunds (
    refund_id    text        PRIMARY KEY,
    order_id     text        NOT NULL,
    amount_minor bigint      NOT NULL,
    reason       text        NOT NULL,
    restock      jsonb       NOT NULL DEFAULT '[]',
    requested_by text        NOT NULL,
    state        text        NOT NULL CHECK (state IN ('requested', 'refunded', 'failed')),
    detail       text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS refunds_order_idx ON orders.refunds (order_id);

CREATE TABLE IF NOT EXISTS payments.refunds (
    refund_id       text        PRIMARY KEY,
    order_id        text        NOT NULL,
    amount_minor    bigint      NOT NULL,
    currency        text        NOT NULL,
    state           text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'refunded', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_error      text,
    traceparent     text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS refunds_due_idx ON payments.refunds (next_attempt_at) WHERE state = 'pending';

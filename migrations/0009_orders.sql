-- The orders processor's state (beside its runtime tables from 0001): orders, their lines, the
-- audit trail of every input, and the status read model the API serves.

CREATE TABLE orders.orders (
    order_id          text        PRIMARY KEY,
    state             text        NOT NULL CHECK (state IN ('pending', 'reserved', 'authorizing', 'action_required',
                                      'authorized', 'confirmed', 'completed', 'rejected', 'cancelled')),
    customer_id       text        NOT NULL,
    line_count        integer,
    currency          text,
    payment_method_id text,
    total_minor       bigint      NOT NULL DEFAULT 0,
    hold_expires_at   timestamptz,
    action_due_at     timestamptz,
    reason            text,
    detail            text,
    provider          text,
    provider_ref      text,
    client_secret     text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON orders.orders (state, updated_at) WHERE state NOT IN ('completed', 'rejected', 'cancelled');

-- Each line with a result from inventory.
CREATE TABLE orders.order_lines (
    order_id         text        NOT NULL REFERENCES orders.orders ON DELETE CASCADE,
    line_index       integer     NOT NULL,
    sku              text        NOT NULL,
    quantity         integer     NOT NULL,
    unit_price_minor bigint      NOT NULL,
    status           text        NOT NULL CHECK (status IN ('reserved', 'rejected', 'released', 'committed', 'restocked')),
    reject_reason    text,
    expires_at       timestamptz,
    PRIMARY KEY (order_id, line_index)
);

-- The audit trail: one row per step an input took, or one row for an input that changed nothing
-- (applied = false, with the reason). from_state is null when the order was not known.
CREATE TABLE orders.transitions (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    order_id       text        NOT NULL,
    from_state     text,
    to_state       text,
    trigger        text,
    applied        boolean     NOT NULL,
    cause_event_id uuid        NOT NULL,
    cause_type     text        NOT NULL,
    reason         text,
    at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON orders.transitions (order_id, id);

-- The read model of an order's status, for the API's GET /api/orders/{id}. Each batch that
-- changes orders notifies 'kassa_order_status' with the order ids, for long polling.
CREATE VIEW orders.order_status AS
SELECT order_id, state, customer_id, total_minor, currency, reason, detail, hold_expires_at,
       CASE WHEN state = 'action_required' THEN client_secret END AS client_secret,
       CASE WHEN state = 'action_required' THEN action_due_at END AS action_due_at,
       created_at, updated_at
FROM orders.orders;

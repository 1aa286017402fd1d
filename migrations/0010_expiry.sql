-- The expiry processor's state (beside its runtime tables from 0001): one deadline per order and
-- kind. The ticker fires due 'pending' rows (FOR UPDATE SKIP LOCKED, so instances share the work).

CREATE TABLE expiry.deadlines (
    order_id   text        NOT NULL,
    kind       text        NOT NULL CHECK (kind IN ('hold', 'payment_action')),
    due_at     timestamptz NOT NULL,
    state      text        NOT NULL CHECK (state IN ('pending', 'fired', 'cancelled')),
    fired_at   timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, kind)
);
CREATE INDEX ON expiry.deadlines (due_at) WHERE state = 'pending';
CREATE INDEX ON expiry.deadlines (updated_at) WHERE state <> 'pending';

-- Who hears of an order: the storefront it was placed at (carried from the checkout request on),
-- and the notifications processor's state (beside its runtime tables, which `kassa migrate`
-- creates for every processor).
ALTER TABLE orders.orders ADD COLUMN IF NOT EXISTS storefront text;

CREATE SCHEMA IF NOT EXISTS notifications;

-- A storefront's webhook endpoints, registered through the admin API. The secret signs every
-- delivery (Kassa-Signature); it is shown once, when the endpoint is registered.
CREATE TABLE IF NOT EXISTS notifications.endpoints (
    id          uuid        PRIMARY KEY,
    storefront  text        NOT NULL,
    url         text        NOT NULL,
    events      text[]      NOT NULL,
    secret      text        NOT NULL,
    enabled     boolean     NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS endpoints_storefront_idx ON notifications.endpoints (storefront) WHERE enabled;

-- What a storefront gives for its customers' notifications: the link a customer follows to
-- complete a payment action ({order_id} replaced).
CREATE TABLE IF NOT EXISTS notifications.storefronts (
    storefront         text        PRIMARY KEY,
    payment_action_url text,
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- Whom to tell of an order, learned from OrderReserved: its storefront and contact email.
CREATE TABLE IF NOT EXISTS notifications.orders (
    order_id    text        PRIMARY KEY,
    storefront  text,
    customer_id text        NOT NULL,
    email       text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS notifications_orders_created_brin ON notifications.orders USING brin (created_at);

-- One notification to one recipient (a webhook endpoint, or an email address): written in the
-- same transaction as the order event that caused it, sent by the dispatcher until delivered or
-- its retry window (3 days) is over. notification_id is the stable id receivers deduplicate on.
CREATE TABLE IF NOT EXISTS notifications.deliveries (
    id              uuid        PRIMARY KEY,
    notification_id uuid        NOT NULL,
    channel         text        NOT NULL CHECK (channel IN ('webhook', 'email')),
    endpoint_id     uuid        REFERENCES notifications.endpoints (id) ON DELETE CASCADE,
    recipient       text        NOT NULL,
    order_id        text        NOT NULL,
    event_type      text        NOT NULL,
    payload         jsonb       NOT NULL,
    state           text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    delivered_at    timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (notification_id, channel, recipient)
);
CREATE INDEX IF NOT EXISTS deliveries_due_idx ON notifications.deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS deliveries_endpoint_idx ON notifications.deliveries (endpoint_id, created_at DESC);
CREATE INDEX IF NOT EXISTS deliveries_order_idx ON notifications.deliveries (order_id);

-- Every attempt at a delivery: when, how long, what the receiver answered or why it failed.
CREATE TABLE IF NOT EXISTS notifications.attempts (
    delivery_id uuid        NOT NULL REFERENCES notifications.deliveries (id) ON DELETE CASCADE,
    attempt     integer     NOT NULL,
    started_at  timestamptz NOT NULL,
    duration_ms integer     NOT NULL,
    status_code integer,
    error       text,
    PRIMARY KEY (delivery_id, attempt)
);

-- The API's keys and its record of accepted orders.

-- API keys, stored as SHA-256 hashes of the secret (the secret itself is shown once, at creation).
CREATE TABLE api.api_keys (
    key_hash   bytea       PRIMARY KEY,
    kind       text        NOT NULL CHECK (kind IN ('storefront', 'admin')),
    name       text        NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);

-- Every order the API accepted (its lines went to Kafka), so an accepted order answers
-- `accepted`, never 404, until the orders processor has seen it.
CREATE TABLE api.orders (
    order_id          uuid        PRIMARY KEY,
    storefront        text        NOT NULL,
    customer_id       text        NOT NULL,
    currency          char(3)     NOT NULL,
    total_minor       bigint      NOT NULL CHECK (total_minor >= 0),
    lines             jsonb       NOT NULL,
    payment_method_id text        NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON api.orders (customer_id);

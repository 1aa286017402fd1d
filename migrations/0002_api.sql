-- The API's own schema: the catalog it prices carts from, and Idempotency-Key records.
CREATE SCHEMA IF NOT EXISTS api;

-- Products the storefront may sell. Prices are integer minor units of `currency`; never floats.
CREATE TABLE api.products (
    sku         text        PRIMARY KEY CHECK (sku ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    name        text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    price_minor bigint      NOT NULL CHECK (price_minor >= 0),
    currency    char(3)     NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    active      boolean     NOT NULL DEFAULT true,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per Idempotency-Key (per storefront key): the request's fingerprint and, once Kafka has
-- acknowledged, the response to replay. Rows older than 24 h are pruned.
CREATE TABLE api.idempotency_keys (
    storefront      text        NOT NULL,
    key             text        NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash    bytea       NOT NULL,
    order_id        uuid        NOT NULL,
    response_status integer,
    response_body   jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (storefront, key)
);
CREATE INDEX ON api.idempotency_keys (created_at);

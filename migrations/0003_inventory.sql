-- The inventory processor's state (beside its runtime tables from 0001).

-- Stock per SKU. on_hand + reserved + committed changes only by restock / stock count.
-- version guards against two instances writing one SKU (each batch updates where it read).
CREATE TABLE inventory.stock (
    sku        text        PRIMARY KEY,
    on_hand    bigint      NOT NULL CHECK (on_hand >= 0),
    reserved   bigint      NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    committed  bigint      NOT NULL DEFAULT 0 CHECK (committed >= 0),
    version    bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One row per order line that asked: its hold, or its rejection (so a repeat gets the same answer).
CREATE TABLE inventory.reservations (
    order_id      text        NOT NULL,
    line_index    integer     NOT NULL,
    sku           text        NOT NULL,
    quantity      integer     NOT NULL,
    status        text        NOT NULL CHECK (status IN ('active', 'committed', 'released', 'restocked', 'rejected')),
    reject_reason text,
    customer_id   text,
    flash_sale    boolean     NOT NULL DEFAULT false,
    expires_at    timestamptz NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, line_index)
);
CREATE INDEX ON inventory.reservations (sku) WHERE status = 'active';

-- Commands that changed nothing (release of an unknown or finished hold, …), for the record.
CREATE TABLE inventory.ignored_commands (
    event_id    uuid        PRIMARY KEY,
    command     text        NOT NULL,
    sku         text        NOT NULL,
    order_id    text,
    line_index  integer,
    reason      text        NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

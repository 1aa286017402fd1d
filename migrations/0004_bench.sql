-- `kassa bench`'s naive baseline: the design kassa is measured against (one transaction and one
-- row lock per request). Not used by kassa itself.
CREATE SCHEMA IF NOT EXISTS bench;

CREATE TABLE bench.naive_stock (
    sku      text   PRIMARY KEY,
    on_hand  bigint NOT NULL CHECK (on_hand >= 0),
    reserved bigint NOT NULL DEFAULT 0 CHECK (reserved >= 0)
);

CREATE TABLE bench.naive_reservations (
    order_id   text    NOT NULL,
    line_index integer NOT NULL,
    sku        text    NOT NULL,
    quantity   integer NOT NULL,
    status     text    NOT NULL,
    PRIMARY KEY (order_id, line_index)
);

-- Stock commands (a delivery, a count) are not idempotent by content: applied twice, a delivery
-- counts twice and an old count overwrites a newer one. Their ids are kept for good (they are
-- few), so a replay after the inbox forgot them is recognised and ignored.
CREATE TABLE inventory.stock_commands (
    event_id   uuid        PRIMARY KEY,
    sku        text        NOT NULL,
    command    text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- Flash-sale tokens to give back in Redis for released holds: written in the batch transaction
-- that released them, deleted once Redis has taken them. Redis keeps a marker per id, so a
-- give-back retried after a timeout (or a crash) is applied at most once.
CREATE TABLE inventory.flash_give_backs (
    id           uuid        PRIMARY KEY,
    sku          text        NOT NULL,
    customer_id  text,
    units        integer     NOT NULL CHECK (units > 0),
    created_at   timestamptz NOT NULL DEFAULT now(),
    attempted_at timestamptz
);
CREATE INDEX ON inventory.flash_give_backs (created_at);

-- The route an Idempotency-Key was used on, so a replay can be recognised without its body
-- (a cart checkout's body is the cart, which the accepted order emptied).
ALTER TABLE api.idempotency_keys ADD COLUMN route text NOT NULL DEFAULT '';

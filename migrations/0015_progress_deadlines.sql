-- Progress deadlines: an order waiting on stock being committed (authorized) or its payment
-- captured (confirmed) is never left waiting for ever. The expiry ticker fires a 'progress'
-- deadline and re-arms it `repeat_every` later (doubling, up to an hour) until the order is decided.
ALTER TABLE expiry.deadlines DROP CONSTRAINT deadlines_kind_check;
ALTER TABLE expiry.deadlines ADD CONSTRAINT deadlines_kind_check CHECK (kind IN ('hold', 'payment_action', 'progress'));
ALTER TABLE expiry.deadlines ADD COLUMN repeat_every interval;

-- Idempotency-key generations: Stripe replays a key's first answer (a 500 included) for a day,
-- so once a look-up proved that a call answered with an error did nothing, the next call uses a
-- key of the next generation. unsure_work is the work whose last call got no sure answer.
ALTER TABLE payments.payments ADD COLUMN key_generation integer NOT NULL DEFAULT 0;
ALTER TABLE payments.payments ADD COLUMN unsure_work text;

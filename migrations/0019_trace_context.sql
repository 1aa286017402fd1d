-- The W3C trace context of the input that caused a piece of background work, so what the payments
-- worker and the expiry ticker publish stays in the order's one trace.
ALTER TABLE payments.payments ADD COLUMN traceparent text;
ALTER TABLE expiry.deadlines ADD COLUMN traceparent text;

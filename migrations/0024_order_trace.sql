-- The trace each order belongs to (W3C traceparent): the storefront's, or one the API started.
-- Cancellations, hold renewals and the provider's webhooks about the order continue it.
ALTER TABLE api.orders ADD COLUMN IF NOT EXISTS traceparent text;

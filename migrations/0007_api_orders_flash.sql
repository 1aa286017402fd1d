-- Which of an order's SKUs went through a flash-sale gate, with the sale's hold (seconds), so a
-- retried publish sends the same lines the first attempt did.
ALTER TABLE api.orders ADD COLUMN flash jsonb NOT NULL DEFAULT '{}'::jsonb;

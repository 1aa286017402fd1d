-- Order search for operators (`GET /admin/orders`): newest first, a page at a time, by time,
-- customer or SKU.
CREATE INDEX IF NOT EXISTS orders_created_at_order_id ON api.orders (created_at DESC, order_id DESC);
CREATE INDEX IF NOT EXISTS orders_customer_created_at ON api.orders (customer_id, created_at DESC);
CREATE INDEX IF NOT EXISTS orders_lines ON api.orders USING gin (lines jsonb_path_ops);

-- A customer's order history (GET /api/orders): the storefront's orders of one customer, newest
-- first, a page at a time after a (created_at, order_id) cursor.
CREATE INDEX IF NOT EXISTS orders_history
    ON api.orders (storefront, customer_id, created_at DESC, order_id DESC);

-- The read model grows: the payment's provider ids, and each order's audit trail (the steps
-- taken, not the inputs ignored), for the API's GET /api/orders/{id}.
CREATE OR REPLACE VIEW orders.order_status AS
SELECT order_id, state, customer_id, total_minor, currency, reason, detail, hold_expires_at,
       CASE WHEN state = 'action_required' THEN client_secret END AS client_secret,
       CASE WHEN state = 'action_required' THEN action_due_at END AS action_due_at,
       created_at, updated_at, provider, provider_ref
FROM orders.orders;

CREATE VIEW orders.order_trail AS
SELECT order_id, id, from_state, to_state, trigger, cause_type, at
FROM orders.transitions
WHERE applied;

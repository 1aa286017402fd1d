-- Where an order ships and whom to tell, as the storefront gave them at checkout (null: not
-- given): the API's record of the order, and the orders processor's, which puts it in
-- OrderCompleted.
ALTER TABLE api.orders ADD COLUMN IF NOT EXISTS fulfilment jsonb;
ALTER TABLE orders.orders ADD COLUMN IF NOT EXISTS fulfilment jsonb;

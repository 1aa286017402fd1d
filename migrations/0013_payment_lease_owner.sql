-- Who holds a payment's lease: a worker restarted under the same instance id takes its dead
-- predecessor's leases back at once instead of waiting for them to run out.
ALTER TABLE payments.payments ADD COLUMN leased_by text;

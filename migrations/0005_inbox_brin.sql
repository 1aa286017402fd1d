-- The inbox is only ever pruned by age, and rows arrive in time order: a BRIN index on
-- processed_at serves the prune for almost nothing per insert, where the B-tree cost one index
-- entry per event on the hot path.
DO $$
DECLARE owner text;
BEGIN
  FOREACH owner IN ARRAY ARRAY['inventory', 'orders', 'payments', 'expiry'] LOOP
    EXECUTE format('DROP INDEX IF EXISTS %I.inbox_processed_at_idx', owner);
    EXECUTE format('CREATE INDEX inbox_processed_brin ON %I.inbox USING brin (processed_at)', owner);
  END LOOP;
END
$$;

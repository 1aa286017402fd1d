-- The benchmarks (kassa-bench) keep their naive baseline's tables in a schema they create when
-- they run; kassa's own database carries none of them (migration 0004 made them, once).
DROP SCHEMA IF EXISTS bench CASCADE;

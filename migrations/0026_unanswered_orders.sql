-- Orders stored but not answered (Kafka did not acknowledge their lines, or the API stopped
-- mid-request) are published by a sweep in the API; this finds them without reading every key.
CREATE INDEX idempotency_keys_unanswered ON api.idempotency_keys (created_at)
    WHERE response_status IS NULL;

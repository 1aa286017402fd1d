//! Kafka client settings that are part of the contract, as plain key/value pairs so this crate needs
//! no Kafka client: any producer that sets them lands keys where Java clients do.

/// Producer settings every kassa producer uses: murmur2 partitioning (Java's), idempotence, acks=all.
pub const PRODUCER_SETTINGS: &[(&str, &str)] = &[
    ("partitioner", "murmur2_random"),
    ("enable.idempotence", "true"),
    ("acks", "all"),
];

/// Consumer settings every kassa consumer uses: only committed transactions, offsets owned by us
/// (librdkafka commits to Kafka, once a second, only the offsets kassa stored after its
/// Postgres transaction committed; that copy is for lag tools).
pub const CONSUMER_SETTINGS: &[(&str, &str)] = &[
    ("isolation.level", "read_committed"),
    ("enable.auto.commit", "true"),
    ("auto.commit.interval.ms", "1000"),
    ("enable.auto.offset.store", "false"),
    ("auto.offset.reset", "earliest"),
];

/// How long an event topic keeps a record (`retention.ms`): 7 days.
pub const EVENT_RETENTION_MS: u64 = 7 * 24 * 3600 * 1000;
/// How long a dead-letter topic keeps a record: 30 days, for someone to look at it.
pub const DEAD_LETTER_RETENTION_MS: u64 = 30 * 24 * 3600 * 1000;
/// How often a topic rolls a new segment (`segment.ms`): 1 day. Kafka deletes whole segments, so
/// a record can be read for up to retention + one segment.
pub const SEGMENT_MS: u64 = 24 * 3600 * 1000;
/// The longest a record of an event topic can be delivered (again) after it was written.
pub const LONGEST_REDELIVERY_MS: u64 = EVENT_RETENTION_MS + SEGMENT_MS;

/// The murmur2 partition Java's default partitioner picks for a non-null key, for checks and tools.
pub fn java_partition(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) & 0x7fff_ffff) % partitions
}

/// Kafka's murmur2 hash (org.apache.kafka.common.utils.Utils.murmur2).
fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let mut h: u32 = SEED ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::java_partition;

    #[test]
    fn matches_the_java_client() {
        // Printed by org.apache.kafka.common.utils.Utils.murmur2 / toPositive(..) % 12 (kafka-clients 4.1.1).
        assert_eq!(super::murmur2(b"kafka"), 0xd067_cf64);
        assert_eq!(super::murmur2(b"giberish123456789"), 0x8f55_2b0c);
        assert_eq!(super::murmur2(b""), 0x106e_08d9);
        assert_eq!(super::murmur2(b"SKU-1"), 0xca02_0fc4);
        assert_eq!(java_partition(b"kafka", 12), 4);
        assert_eq!(java_partition(b"SKU-1", 12), 8);
        assert_eq!(java_partition(b"abc", 12), 3);
    }
}

//! kassa: the `kassa` binary's library face for the integration tests. The operator library is
//! `kassa-ops` and the benchmarks are `kassa-bench`; they are re-exported here under the names
//! the tests use.

pub use kassa_bench::{self as bench, http};
pub use kassa_ops::{
    admin_api, asyncapi, databases, dlq, kafka, lag, migrate, offsets, probes, provider, reconcile,
    search, seed, settings, story, supervisor, tail, topic_config, topics,
};

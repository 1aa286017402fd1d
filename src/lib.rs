//! kassa: the operator-facing pieces shared by the `kassa` binary and the integration tests —
//! settings, database migrations, topic administration, processor offsets, the demo catalog and
//! the storefront's HTTP retry behaviour.

pub mod bench;
pub mod http;
pub mod kafka;
pub mod migrate;
pub mod offsets;
pub mod seed;
pub mod settings;
pub mod supervisor;
pub mod topics;

//! kassa: the operator-facing pieces shared by the `kassa` binary and the integration tests —
//! settings, database migrations, topic administration, processor offsets and the demo catalog.

pub mod bench;
pub mod kafka;
pub mod migrate;
pub mod offsets;
pub mod seed;
pub mod settings;
pub mod topics;

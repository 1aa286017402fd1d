//! kassa's operator library: what the `kassa` binary, its benchmarks and the integration tests
//! share — every setting ([`settings`]), the databases ([`databases`]) and their migrations
//! ([`migrate`]), topic
//! administration ([`topics`], [`topic_config`]), the processors' stored offsets ([`offsets`]) and how far behind
//! they are ([`lag`]), whether the books square ([`reconcile`]), an order's
//! story ([`story`]), decoded records of the topics ([`tail`]), dead letters
//! ([`dlq`]), order search ([`search`]), the same views over HTTP ([`admin_api`]), the demo catalog
//! ([`seed`]), the Kafka producer settings ([`kafka`]) and the [`supervisor`] that runs
//! components in one process until they are told to stop.

pub mod admin_api;
pub mod asyncapi;
pub mod databases;
pub mod dlq;
pub mod kafka;
pub mod lag;
pub mod migrate;
pub mod offsets;
pub mod probes;
pub mod provider;
pub mod reconcile;
pub mod search;
pub mod seed;
pub mod settings;
pub mod story;
pub mod supervisor;
pub mod tail;
pub mod topic_config;
pub mod topics;
pub mod webhooks_admin;

//! kassa's integration tests, one binary against the real services (`scripts/dev env --test`):
//! Kafka, the Schema Registry, PostgreSQL, Redis and localstripe. One module per subject;
//! `common` is the harness (the API in this process, processors as child processes, fault
//! proxies, readers of topics). Modules that run processors take turns through
//! `common::saga::start_processors` (one set of processors, with one set of settings, at a
//! time) or `common::inventory::exclusive` (inventory tests running their own).

mod common;

mod api_admin_flash;
mod api_carts;
mod api_contract;
mod api_fuzz;
mod api_hostile;
mod api_long_polls;
mod api_order_history;
mod api_orders;
mod api_stop;
mod api_webhooks;
mod connectivity;
mod contract;
mod databases;
mod deployment;
mod flash_accounting;
mod fulfilment;
mod inventory;
mod inventory_faults;
mod notifications;
mod observability;
mod offsets;
mod ops;
mod refunds;
mod replays;
mod saga;
mod saga_faults;
mod saga_stripe;
mod schema_compatibility;
mod topics;
mod transactions;

//! kassa's stream processors and the exactly-once runtime they share.
//!
//! # Layout
//!
//! - One folder a processor (`inventory/`, `orders/`, `payments/`, `expiry/`,
//!   `notifications/`): its handler, its
//!   background tasks, its settings and its [`Processor`] implementation, which says what it
//!   consumes and how it runs. No processor imports another; they talk through topics.
//! - [`runtime`]: the exactly-once loop every processor runs in (batches, inbox, offsets in
//!   Postgres, the outbox relay, dead letters). It knows no processor.
//! - [`processor`]: what a processor is; [`settings`]: what the processors share of their
//!   settings.
//! - The `processors!` list below: the one place that names each processor. It makes the
//!   [`ConsumerGroup`] enum, the settings of all processors ([`Settings`], with each one's
//!   optional database in [`DatabaseUrls`]), their configs ([`Own`]) and [`run`].

pub mod processor;
pub mod runtime;
pub mod settings;

use std::sync::Arc;

use kassa_schemas::{Codec, Topic};
use tokio::sync::watch;

pub use processor::{Processor, ProcessorConfig, ProcessorError, Shared};
pub use runtime::RuntimeConfig;

/// Declares the processors, each as `Variant => module, "KASSA_<MODULE>_DATABASE_URL"` where
/// `module::Variant` implements [`Processor`]: the modules, the [`ConsumerGroup`] enum,
/// [`Settings`], [`DatabaseUrls`], [`Own`] and [`run`].
macro_rules! processors {
    ($($variant:ident => $module:ident, $database_env:literal),+ $(,)?) => {
        $(pub mod $module;)+

        /// A consumer group: one per processor, each with its own dead-letter topic.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ConsumerGroup {
            $(
                #[doc = concat!("The ", stringify!($module), " processor.")]
                $variant,
            )+
        }

        impl ConsumerGroup {
            /// Every consumer group.
            pub const ALL: [ConsumerGroup; [$(stringify!($variant)),+].len()] =
                [$(ConsumerGroup::$variant),+];

            /// The processor's name, which is also its Postgres schema.
            pub const fn name(self) -> &'static str {
                match self {
                    $(ConsumerGroup::$variant => <$module::$variant as Processor>::NAME,)+
                }
            }

            /// The topics the group consumes.
            pub const fn inputs(self) -> &'static [Topic] {
                match self {
                    $(ConsumerGroup::$variant => <$module::$variant as Processor>::INPUTS,)+
                }
            }

            /// The variable that gives the processor a database of its own
            /// (`KASSA_<PROCESSOR>_DATABASE_URL`).
            pub const fn database_url_variable(self) -> &'static str {
                match self {
                    $(ConsumerGroup::$variant => $database_env,)+
                }
            }

            /// How the group's partitions are assigned ([`Processor::ASSIGNMENT`]).
            pub const fn assignment(self) -> &'static str {
                match self {
                    $(ConsumerGroup::$variant => <$module::$variant as Processor>::ASSIGNMENT,)+
                }
            }
        }

        /// Every processor's own settings, a heading each in `kassa --help`.
        #[derive(Debug, Clone, clap::Args)]
        #[group(skip)]
        pub struct Settings {
            $(
                #[doc = concat!("The ", stringify!($module), " processor's settings.")]
                #[command(flatten, next_help_heading = concat!("Processor: ", stringify!($module)))]
                pub $module: <$module::$variant as Processor>::Settings,
            )+
            /// Where each processor keeps its schema, when not in `KASSA_DATABASE_URL`'s database.
            #[command(flatten, next_help_heading = "Databases")]
            pub databases: DatabaseUrls,
        }

        /// Each processor's own PostgreSQL URL, for processors kept in databases of their own.
        #[derive(Debug, Clone, clap::Args)]
        #[group(skip)]
        pub struct DatabaseUrls {
            $(
                /// A processor's own PostgreSQL URL (unset: `KASSA_DATABASE_URL`).
                // The id is spelled out: a field named after a processor (`orders`) must not take
                // the id of another command's argument of that name (`kassa bench saga --orders`).
                #[arg(
                    id = concat!(stringify!($module), "_database_url"),
                    long = concat!(stringify!($module), "-database-url"),
                    env = $database_env,
                    help = concat!(
                        "PostgreSQL URL of the ", stringify!($module),
                        " processor's schema, when it lives in a database of its own \
                         (unset: KASSA_DATABASE_URL's database)"
                    ),
                    hide_env_values = true,
                    global = true
                )]
                pub $module: Option<kassa_schemas::secret::Secret>,
            )+
        }

        impl DatabaseUrls {
            /// The URL set for `group`'s processor, if one is.
            pub fn of(&self, group: ConsumerGroup) -> Option<&kassa_schemas::secret::Secret> {
                match group {
                    $(ConsumerGroup::$variant => self.$module.as_ref(),)+
                }
            }
        }

        /// One processor's config, which also says which processor it is.
        #[derive(Clone)]
        pub enum Own {
            $(
                #[doc = concat!("The ", stringify!($module), " processor's.")]
                $variant(<$module::$variant as Processor>::Config),
            )+
        }

        impl Own {
            /// The config of the processor of `group`, from the settings (an error names a bad
            /// setting).
            pub fn of(
                group: ConsumerGroup,
                settings: &Settings,
                common: &settings::Common,
            ) -> Result<Own, String> {
                Ok(match group {
                    $(ConsumerGroup::$variant => Own::$variant(
                        <$module::$variant as Processor>::config(&settings.$module, common)?,
                    ),)+
                })
            }

            /// The processor this config is for.
            pub const fn group(&self) -> ConsumerGroup {
                match self {
                    $(Own::$variant(_) => ConsumerGroup::$variant,)+
                }
            }
        }

        /// Runs the processor `config` is for until `shutdown` turns true.
        pub async fn run(
            config: ProcessorConfig,
            shutdown: watch::Receiver<bool>,
        ) -> Result<(), ProcessorError> {
            let shared = &config.shared;
            let codec = Arc::new(Codec::new(&shared.registry_url)?);
            match &config.own {
                $(Own::$variant(own) => {
                    <$module::$variant as Processor>::run(shared, codec, own, shutdown).await
                })+
            }
        }
    };
}

processors! {
    Inventory => inventory, "KASSA_INVENTORY_DATABASE_URL",
    Orders => orders, "KASSA_ORDERS_DATABASE_URL",
    Payments => payments, "KASSA_PAYMENTS_DATABASE_URL",
    Expiry => expiry, "KASSA_EXPIRY_DATABASE_URL",
    Notifications => notifications, "KASSA_NOTIFICATIONS_DATABASE_URL",
}

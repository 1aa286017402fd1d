//! The `kassa` command: run components, and the admin tasks around them.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use kassa::settings::Settings;
use kassa::supervisor::Component;
use kassa::topics::TopicOutcome;
use kassa_schemas::registry::{Registry, Verdict};

mod logging;
mod operate;

/// The allocator: kassa allocates many small, short-lived values per message (decoded records,
/// keys, encoded events); glibc's malloc and free took a fifth of the processors' CPU in the
/// inventory bench's profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// kassa — checkout back end: HTTP intake and Kafka-driven stream processors.
#[derive(Parser)]
#[command(name = "kassa", version, about)]
struct Cli {
    #[command(flatten)]
    settings: Settings,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply the database migrations (every processor's schema, and the API's).
    Migrate,
    /// Kafka topics.
    Topics {
        #[command(subcommand)]
        action: TopicsAction,
    },
    /// Avro schemas in the Schema Registry.
    Schemas {
        #[command(subcommand)]
        action: SchemasAction,
    },
    /// Load the small demo catalog (products and their stock).
    Seed {
        /// Only when the catalog has none of the demo products yet (setup run on every start).
        #[arg(long)]
        once: bool,
    },
    /// Print a contract document generated from the code.
    Docs {
        #[command(subcommand)]
        what: DocsWhat,
    },
    /// API keys.
    Keys {
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Benchmarks against the real services, printed beside the naive baseline.
    Bench {
        #[command(subcommand)]
        what: BenchWhat,
    },
    /// Operators' commands: lag, tail, order, reconcile, dlq, offsets.
    #[command(flatten)]
    Operate(operate::Command),
    /// Ask a running component's `/health` once (a container's health check): exit 0 on 200.
    Health {
        /// Ask the API (on `KASSA_HTTP_ADDR`) instead of a processor (on `KASSA_OPS_ADDR`).
        #[arg(long)]
        api: bool,
        /// Ask this URL instead.
        #[arg(long, conflicts_with = "api")]
        url: Option<String>,
    },
    /// Run a component until SIGTERM / Ctrl-C.
    Run {
        /// `api`, a processor (`inventory`, `orders`, `payments`, `expiry`), or `all` (every
        /// component in one process).
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(Component::names()))]
        component: String,
    },
}

#[derive(Subcommand)]
enum DocsWhat {
    /// The AsyncAPI 3.0 document of kassa's topics (committed as docs/asyncapi.json).
    Asyncapi,
    /// The OpenAPI document of the HTTP API (served at /openapi.json).
    Openapi,
}

#[derive(Subcommand)]
enum TopicsAction {
    /// Create every topic and each consumer group's `.dlq` topic (idempotent).
    Create,
}

#[derive(Subcommand)]
enum SchemasAction {
    /// Register every topic's schema under `<topic>-value`, compatibility BACKWARD_TRANSITIVE.
    Register,
    /// Check schemas against the registered versions; exits non-zero on an incompatible change.
    Check {
        /// Directory of `<topic>.avsc` files to check (default: the schemas built into this binary).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum KeysAction {
    /// Create a key and print its secret (shown once; only its hash is stored).
    Create {
        /// `storefront` (for /api) or `admin` (for /admin).
        kind: KeyKindArg,
        /// A name to recognise it by.
        name: String,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum KeyKindArg {
    Storefront,
    Admin,
}

#[derive(Clone, Copy, ValueEnum)]
enum TrafficArg {
    Mixed,
    Simple,
}

#[derive(Subcommand)]
enum BenchWhat {
    /// POST /api/orders open-loop at rising rates (HDR latencies from intended send time), then the flash-sale sold-out path.
    Api {
        /// Rates to try, requests per second.
        #[arg(long, value_delimiter = ',', default_value = "250,500,1000")]
        rates: Vec<u32>,
        /// Rate of the flash-sale (sold-out) step, requests per second.
        #[arg(long, default_value_t = 1000)]
        flash_rate: u32,
        /// Seconds per rate.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// The whole checkout (API + processors, simulated gateway): latencies per stage and final state, CPU per order, the machine's limits, then the naive checkout on the same orders.
    Saga {
        /// Orders to place.
        #[arg(long, default_value_t = 2_000)]
        orders: usize,
        /// Orders per second, open loop.
        #[arg(long, default_value_t = 200)]
        rate: u32,
        /// The orders: mixed (1-3 lines over 200 SKUs, 5% declined, 5% out of stock) or simple (one line, every card authorizes).
        #[arg(long, value_enum, default_value = "mixed")]
        traffic: TrafficArg,
        /// Run each processor as a `kassa run <processor>` process of its own, as deployed (default: all in the bench's process).
        #[arg(long)]
        separate: bool,
        /// Runs back to back, each with fresh processors and SKUs (a stall shows as one slow run).
        #[arg(long, default_value_t = 1)]
        runs: usize,
        /// Leave out the naive checkout.
        #[arg(long)]
        no_naive: bool,
    },
    /// Long polls at scale: waiters on every order while the orders flow; each answer's delay after its order's change.
    Polls {
        /// Orders to place (they wait for the orders processor until every waiter is parked).
        #[arg(long, default_value_t = 1_000)]
        orders: usize,
        /// Long-polling requests, spread evenly over the orders.
        #[arg(long, default_value_t = 10_000)]
        waiters: usize,
        /// Restart Postgres (`scripts/dev down/up postgres`) halfway instead of cutting the API's listener.
        #[arg(long)]
        restart_postgres: bool,
    },
    /// Reservation requests → committed outcome events, kassa's processor vs one row lock per request.
    Inventory {
        /// SKUs the requests spread over (1 = one hot SKU).
        #[arg(long, default_value_t = 1)]
        skus: usize,
        /// Requests to send to kassa's processor.
        #[arg(long, default_value_t = 100_000)]
        requests: usize,
        /// Requests for the naive baseline (one transaction each: its rate does not grow with
        /// the count, and 100,000 would take over a minute).
        #[arg(long, default_value_t = 20_000)]
        naive_requests: usize,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let logging = logging::init(&cli.settings.process);
    let code = match execute(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    };
    logging.shutdown();
    code
}

async fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = cli.settings;
    // The deployment's Kafka client properties: read and checked before any client is made.
    let kafka = kassa_schemas::kafka_link::Properties::from_env()?;
    kassa_schemas::registry_link::Access::from_env()?;
    if !kafka.names().is_empty() {
        tracing::info!(properties = ?kafka.names(), "Kafka clients take the deployment's properties");
    }
    match cli.command {
        Command::Migrate => {
            let databases = kassa::databases::Databases::connect(&settings).await?;
            let migrated = kassa::migrate::run_all(&databases).await?;
            if let [only] = migrated.as_slice() {
                println!("migrations: {} applied, database up to date", only.applied);
            } else {
                for m in &migrated {
                    let (applied, url, holds) = (m.applied, &m.url, m.holds.join(", "));
                    println!("migrations: {applied} applied, {url} ({holds}) up to date");
                }
            }
        }
        Command::Operate(command) => return operate::execute(command, &settings).await,
        Command::Topics {
            action: TopicsAction::Create,
        } => {
            let outcomes = kassa::topics::create_all(&settings).await?;
            for outcome in &outcomes {
                match outcome {
                    TopicOutcome::Created(t) => {
                        println!(
                            "created  {t} ({} partitions, replication {})",
                            settings.topics.partitions, settings.topics.replication
                        )
                    }
                    TopicOutcome::Existed(t) => println!("exists   {t}"),
                }
            }
        }
        Command::Schemas {
            action: SchemasAction::Register,
        } => {
            let registry = Registry::new(&settings.schema_registry_url);
            for r in registry.register_all().await? {
                println!("registered {} (id {})", r.subject, r.id);
            }
        }
        Command::Schemas {
            action: SchemasAction::Check { dir },
        } => {
            let registry = Registry::new(&settings.schema_registry_url);
            let verdicts = registry.check_all(dir.as_deref()).await?;
            let mut incompatible = 0;
            for (subject, verdict) in &verdicts {
                let text = match verdict {
                    Verdict::Compatible => "compatible",
                    Verdict::NewSubject => "new subject",
                    Verdict::Incompatible => {
                        incompatible += 1;
                        "INCOMPATIBLE with a registered version"
                    }
                };
                println!("{subject}: {text}");
            }
            if incompatible > 0 {
                eprintln!(
                    "error: {incompatible} schema(s) would break consumers (compatibility BACKWARD_TRANSITIVE)"
                );
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Docs { what } => match what {
            DocsWhat::Asyncapi => print!("{}", kassa::asyncapi::pretty()),
            DocsWhat::Openapi => {
                let extension = kassa::admin_api::extension(&settings);
                let longest = settings.api_config().max_hold_seconds;
                println!("{}", kassa_api::openapi::document_of(&extension, longest));
            }
        },
        Command::Seed { once } => {
            let pool = kassa::migrate::connect(&settings).await?;
            if once && kassa::seed::seeded(&pool).await? {
                println!("the demo catalog is there already: not seeded again");
                return Ok(ExitCode::SUCCESS);
            }
            let n = kassa::seed::seed(&settings, &pool)
                .await
                .context("seeding the demo catalog")?;
            println!("seeded {n} demo products and their stock");
        }
        Command::Health { api, url } => {
            let addr = if api {
                settings.api.addr
            } else {
                settings.process.ops_addr
            };
            let url = url.unwrap_or_else(|| kassa::probes::health_url(addr));
            let limit = std::time::Duration::from_secs(5);
            if let Err(why) = kassa::probes::check_health(&url, limit).await {
                eprintln!("unhealthy: {why}");
                return Ok(ExitCode::FAILURE);
            }
            println!("healthy: {url}");
        }
        Command::Keys {
            action: KeysAction::Create { kind, name },
        } => {
            let pool = kassa::migrate::connect(&settings).await?;
            let kind = match kind {
                KeyKindArg::Storefront => kassa_api::auth::KeyKind::Storefront,
                KeyKindArg::Admin => kassa_api::auth::KeyKind::Admin,
            };
            let secret = kassa_api::auth::create_key(&pool, kind, &name)
                .await
                .context("creating the key")?;
            println!("{secret}");
        }
        Command::Bench {
            what:
                BenchWhat::Api {
                    rates,
                    flash_rate,
                    seconds,
                },
        } => {
            kassa::bench::api::run(&settings, &rates, flash_rate, seconds).await?;
        }
        Command::Bench {
            what:
                BenchWhat::Saga {
                    orders,
                    rate,
                    traffic,
                    separate,
                    runs,
                    no_naive,
                },
        } => {
            let traffic = match traffic {
                TrafficArg::Mixed => kassa::bench::traffic::Traffic::Mixed,
                TrafficArg::Simple => kassa::bench::traffic::Traffic::Simple,
            };
            let options = kassa::bench::saga::Options {
                orders,
                rate,
                traffic,
                separate,
                runs,
                naive: !no_naive,
            };
            kassa::bench::saga::run(&settings, options).await?;
        }
        Command::Bench {
            what:
                BenchWhat::Polls {
                    orders,
                    waiters,
                    restart_postgres,
                },
        } => {
            kassa::bench::polls::run(&settings, orders, waiters, restart_postgres).await?;
        }
        Command::Bench {
            what:
                BenchWhat::Inventory {
                    skus,
                    requests,
                    naive_requests,
                },
        } => {
            kassa::bench::inventory(&settings, skus, requests, naive_requests).await?;
        }
        Command::Run { component } => run(&settings, &component).await?,
    }
    Ok(ExitCode::SUCCESS)
}

async fn run(settings: &Settings, component: &str) -> anyhow::Result<()> {
    let components = Component::parse(component).context("an unknown component")?;
    // One metrics recorder for every component of this process (served by the API's /metrics).
    kassa_api::telemetry::handle();
    let running = kassa::supervisor::start(settings, &components)?;
    let stop = running.stopper();
    let on_stdin_eof = settings.process.stop_on_stdin_eof;
    tokio::spawn(async move {
        shutdown_signal(on_stdin_eof).await;
        let _ = stop.send(true);
    });
    Ok(running.wait().await?)
}

/// Completes on SIGTERM or Ctrl-C (and, with `on_stdin_eof`, when stdin closes).
async fn shutdown_signal(on_stdin_eof: bool) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    // For supervisors (and the tests) that hold our stdin: stop when it closes, e.g. they died.
    // (A plain thread: a blocked read must not keep the process from exiting.)
    let stdin_closed = async {
        if on_stdin_eof {
            let (closed, on_close) = tokio::sync::oneshot::channel::<()>();
            std::thread::spawn(move || {
                use std::io::Read;
                let mut buffer = [0u8; 64];
                while matches!(std::io::stdin().read(&mut buffer), Ok(n) if n > 0) {}
                let _ = closed.send(());
            });
            let _ = on_close.await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! { _ = ctrl_c => {}, _ = term => {}, _ = stdin_closed => {} }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn arguments_named_like_a_processor_parse_beside_the_processors_database_settings() {
        // `--orders` (bench) once shared its id with the orders processor's database URL and
        // every `kassa bench saga` panicked before it began.
        for line in [
            &["kassa", "bench", "saga", "--orders", "10", "--rate", "5"][..],
            &[
                "kassa",
                "bench",
                "saga",
                "--orders-database-url",
                "postgres://db/x",
            ],
            &["kassa", "run", "orders"],
        ] {
            let parsed = <Cli as clap::Parser>::try_parse_from(line);
            assert!(parsed.is_ok(), "{line:?}: {:?}", parsed.err());
        }
    }
}

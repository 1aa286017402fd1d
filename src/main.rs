//! The `kassa` command: run components, and the admin tasks around them.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use kassa::settings::Settings;
use kassa::supervisor::Component;
use kassa::topics::TopicOutcome;
use kassa_processors::ConsumerGroup;
use kassa_schemas::registry::{Registry, Verdict};

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
    Seed,
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
    /// How far each processor is behind: per input partition Kafka's end, the offset stored in
    /// Postgres (the one that counts) and the lag; per processor the unpublished outbox rows.
    /// Exits 0 within the thresholds, 1 over them, 2 when it could not measure.
    Lag {
        /// Only this processor.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(ConsumerGroup::ALL.map(ConsumerGroup::name)))]
        group: Option<String>,
        /// Fail (exit 1) when a processor is more records behind than this.
        #[arg(long)]
        max_lag: Option<i64>,
        /// Fail (exit 1) when an outbox row has waited longer than this to be published, in
        /// seconds.
        #[arg(long, value_name = "SECONDS", value_parser = kassa_processors::settings::seconds)]
        max_outbox_age: Option<std::time::Duration>,
        /// Print JSON (`groups`, `breaches`) instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Decoded records of kassa's topics (read_committed, through the registry); an
    /// undecodable record is shown with its raw bytes and why, a dead letter with its reason
    /// and origin.
    Tail {
        /// `all`, topics (`orders.events`), or dead-letter topics (`payments.dlq`).
        #[arg(required = true)]
        topics: Vec<String>,
        /// Where to start: `beginning`, `end`, an offset, or an RFC 3339 time.
        #[arg(long, default_value = "beginning")]
        from: kassa::tail::Start,
        /// Only records with this key.
        #[arg(long)]
        key: Option<String>,
        /// Only records about this order (its key or correlation id).
        #[arg(long)]
        order: Option<String>,
        /// Only events of this type (e.g. `OrderCompleted`).
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Keep waiting for new records (Ctrl-C stops).
        #[arg(long)]
        follow: bool,
        /// Stop after this many records.
        #[arg(long)]
        limit: Option<usize>,
        /// One JSON object a line instead of text.
        #[arg(long)]
        json: bool,
    },
    /// One order's whole story in time order, from every processor's records, and a one-line
    /// diagnosis: where it is, what it waits for, since when. Exits 1 when no component knows
    /// the order, 2 when it could not look.
    Order {
        /// The order id.
        id: String,
        /// Print JSON (`order_id`, `state`, `entries`, `diagnosis`) instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Check that the books square (stock, orders, inventory, payments; stuck orders) and list
    /// every discrepancy with its ids. Exits 0 when they square, 1 when not, 2 when it could
    /// not check.
    Reconcile {
        /// Only orders created since this RFC 3339 time (and the SKUs they reserved).
        #[arg(long, value_name = "TIME", value_parser = kassa::offsets::parse_time)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// How long compensation may trail an order's decision, and how far past its deadline
        /// an undecided order counts as stuck, in seconds.
        #[arg(long = "margin-seconds", value_name = "SECONDS", default_value = "300", value_parser = kassa_processors::settings::seconds)]
        margin: std::time::Duration,
        /// Print JSON (a list of `class`, `ids`, `detail`) instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// The processors' stored consumer offsets (the ones in Postgres that count).
    Offsets {
        #[command(subcommand)]
        action: OffsetsAction,
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
enum TopicsAction {
    /// Create every topic and each consumer group's `.dlq` topic (idempotent).
    Create,
}

#[derive(Subcommand)]
enum OffsetsAction {
    /// Show each processor's lag per input topic (`kassa lag` shows it per partition).
    Show,
    /// Move a stopped processor's stored offsets: to the earliest records, the latest, a time
    /// (to replay after a bug fix) or given offsets. Refused while the group has live members
    /// (unless --force); every move is recorded. Records read again are dropped by the
    /// processor's inbox when it processed them within the inbox's retention.
    #[command(group(clap::ArgGroup::new("to").required(true).args(["to_earliest", "to_latest", "to_time", "to_offset"])))]
    Reset {
        /// The processor: `inventory`, `orders`, `payments` or `expiry`.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(ConsumerGroup::ALL.map(ConsumerGroup::name)))]
        group: String,
        /// Where to: the first records still kept.
        #[arg(long)]
        to_earliest: bool,
        /// Where to: the end of every input partition.
        #[arg(long)]
        to_latest: bool,
        /// Where to: the first record written at or after this RFC 3339 time.
        #[arg(long, value_name = "TIME", value_parser = kassa::offsets::parse_time)]
        to_time: Option<chrono::DateTime<chrono::Utc>>,
        /// Where to: these offsets, `[TOPIC:]PARTITION:OFFSET` each (others stay).
        #[arg(long, value_name = "[TOPIC:]P:O", num_args = 1..)]
        to_offset: Vec<String>,
        /// Why (recorded with the move).
        #[arg(long, required_unless_present = "dry_run")]
        reason: Option<String>,
        /// Move even while instances are consuming (they report the move as intended).
        #[arg(long)]
        force: bool,
        /// Print the moves without making them.
        #[arg(long)]
        dry_run: bool,
    },
    /// Skip a stopped processor's backlog: move its offsets to the end of its input topics
    /// (`reset --to-latest`). Refused while the group has live members (unless --force); the
    /// move is recorded.
    SkipToEnd {
        /// The processor: `inventory`, `orders`, `payments` or `expiry`.
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(ConsumerGroup::ALL.map(ConsumerGroup::name)))]
        group: String,
        /// Why the backlog is skipped (recorded with the move).
        #[arg(long)]
        reason: String,
        /// Skip even while instances are consuming (they report the skip as intended).
        #[arg(long)]
        force: bool,
    },
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
    /// The whole checkout in one process (API + processors, simulated gateway): accept → confirmed and → completed latencies.
    Saga {
        /// Orders to place.
        #[arg(long, default_value_t = 2_000)]
        orders: usize,
        /// Orders per second, open loop.
        #[arg(long, default_value_t = 200)]
        rate: u32,
    },
    /// Reservation requests → committed outcome events, kassa's processor vs one row lock per request.
    Inventory {
        /// SKUs the requests spread over (1 = one hot SKU).
        #[arg(long, default_value_t = 1)]
        skus: usize,
        /// Requests to send.
        #[arg(long, default_value_t = 20_000)]
        requests: usize,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_new(&cli.settings.process.log).unwrap_or_else(|e| {
            eprintln!("KASSA_LOG: {e}; logging at info");
            tracing_subscriber::EnvFilter::new("info")
        });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    match execute(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn execute(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = cli.settings;
    match cli.command {
        Command::Migrate => {
            let pool = kassa::migrate::connect(&settings).await?;
            let applied = kassa::migrate::run(&pool).await?;
            println!("migrations: {applied} applied, database up to date");
        }
        Command::Lag {
            group,
            max_lag,
            max_outbox_age,
            json,
        } => {
            let groups = match group {
                Some(name) => vec![ConsumerGroup::from_name(&name).context("an unknown group")?],
                None => ConsumerGroup::ALL.to_vec(),
            };
            let measured = async {
                let pool = kassa::migrate::connect(&settings)
                    .await
                    .context("connecting to PostgreSQL")?;
                anyhow::Ok(kassa::lag::measure(&settings, &pool, &groups).await?)
            }
            .await;
            let lag = match measured {
                Ok(lag) => lag,
                Err(error) => {
                    eprintln!("error: the lag could not be measured: {error:#}");
                    return Ok(ExitCode::from(2));
                }
            };
            let limits = kassa::lag::Thresholds {
                max_lag,
                max_outbox_age,
            };
            let breaches = limits.breaches(&lag);
            if json {
                let report = serde_json::json!({ "groups": lag, "breaches": breaches });
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", kassa::lag::table(&lag));
            }
            for breach in &breaches {
                eprintln!("over the threshold: {breach}");
            }
            return Ok(if breaches.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        Command::Tail {
            topics,
            from,
            key,
            order,
            event_type,
            follow,
            limit,
            json,
        } => {
            let options = kassa::tail::Options {
                topics: kassa::tail::resolve(&topics)?,
                start: from,
                key,
                order,
                event_type,
                follow,
                limit,
            };
            let shown = kassa::tail::tail(&settings, &options, |record| {
                if json {
                    println!("{}", serde_json::to_string(record).unwrap_or_default());
                } else {
                    println!("{}", kassa::tail::line(record));
                }
            });
            match shown.await {
                Ok(n) => eprintln!("{n} record(s)"),
                Err(error) => {
                    eprintln!("error: {error}");
                    return Ok(ExitCode::from(2));
                }
            }
        }
        Command::Order { id, json } => {
            let looked = async {
                let pool = kassa::migrate::connect(&settings)
                    .await
                    .context("connecting to PostgreSQL")?;
                anyhow::Ok(kassa::story::story(&pool, &id).await?)
            }
            .await;
            let story = match looked {
                Ok(Some(story)) => story,
                Ok(None) => {
                    eprintln!("no component knows an order {id}");
                    return Ok(ExitCode::from(1));
                }
                Err(error) => {
                    eprintln!("error: the order could not be looked up: {error:#}");
                    return Ok(ExitCode::from(2));
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&story)?);
            } else {
                print!("{}", kassa::story::report(&story));
            }
        }
        Command::Reconcile {
            since,
            margin,
            json,
        } => {
            let options = kassa::reconcile::Options { since, margin };
            let checked = async {
                let pool = kassa::migrate::connect(&settings)
                    .await
                    .context("connecting to PostgreSQL")?;
                anyhow::Ok(kassa::reconcile::reconcile(&pool, &options).await?)
            }
            .await;
            let found = match checked {
                Ok(found) => found,
                Err(error) => {
                    eprintln!("error: the books could not be checked: {error:#}");
                    return Ok(ExitCode::from(2));
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&found)?);
            } else {
                print!("{}", kassa::reconcile::report(&found));
            }
            return Ok(if found.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        Command::Offsets { action } => {
            let pool = kassa::migrate::connect(&settings)
                .await
                .context("connecting to PostgreSQL")?;
            match action {
                OffsetsAction::Show => {
                    let lag = kassa::lag::measure(&settings, &pool, &ConsumerGroup::ALL).await?;
                    for (group, measured) in ConsumerGroup::ALL.iter().zip(&lag) {
                        for topic in group.inputs() {
                            let of_topic = measured.partitions.iter();
                            let lag: i64 = of_topic
                                .filter(|p| p.topic == topic.name())
                                .map(|p| p.lag)
                                .sum();
                            println!("{:<10} {:<20} lag {lag}", group.name(), topic.name());
                        }
                    }
                }
                OffsetsAction::Reset {
                    group,
                    to_earliest: _,
                    to_latest,
                    to_time,
                    to_offset,
                    reason,
                    force,
                    dry_run,
                } => {
                    use kassa::offsets::Target;
                    let group = ConsumerGroup::from_name(&group).context("an unknown group")?;
                    let target = if to_latest {
                        Target::Latest
                    } else if let Some(at) = to_time {
                        Target::Time(at)
                    } else if !to_offset.is_empty() {
                        let parsed: Result<Vec<_>, String> = to_offset
                            .iter()
                            .map(|o| kassa::offsets::parse_offset(o, group))
                            .collect();
                        Target::Offsets(parsed.map_err(anyhow::Error::msg)?)
                    } else {
                        Target::Earliest
                    };
                    let moves = if dry_run {
                        kassa::offsets::plan(&settings, &pool, group, &target).await?
                    } else {
                        let request = kassa::offsets::MoveRequest {
                            moved_by: operator(),
                            reason: reason.unwrap_or_default(),
                            force,
                        };
                        kassa::offsets::reset(&settings, &pool, group, &target, &request).await?
                    };
                    for m in &moves {
                        let from = m.from.map_or_else(|| "-".to_owned(), |f| f.to_string());
                        println!("{:<28} {:>4}  {from:>10} -> {}", m.topic, m.partition, m.to);
                    }
                    let verb = if dry_run {
                        "would move (dry run)"
                    } else {
                        "moved"
                    };
                    println!("{}: {verb} {} partition(s)", group.name(), moves.len());
                }
                OffsetsAction::SkipToEnd {
                    group,
                    reason,
                    force,
                } => {
                    let group = ConsumerGroup::from_name(&group).context("an unknown group")?;
                    let request = kassa::offsets::MoveRequest {
                        moved_by: operator(),
                        reason,
                        force,
                    };
                    let moves =
                        kassa::offsets::skip_to_end(&settings, &pool, group, &request).await?;
                    let skipped: i64 = moves.iter().map(|m| m.to - m.from.unwrap_or(0)).sum();
                    println!(
                        "{}: skipped {skipped} offsets; now at the end of {} partitions",
                        group.name(),
                        moves.len()
                    );
                }
            }
        }
        Command::Topics {
            action: TopicsAction::Create,
        } => {
            let outcomes = kassa::topics::create_all(&settings).await?;
            for outcome in &outcomes {
                match outcome {
                    TopicOutcome::Created(t) => {
                        println!("created  {t} ({} partitions)", settings.topics.partitions)
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
        Command::Seed => {
            let pool = kassa::migrate::connect(&settings).await?;
            let n = kassa::seed::seed(&settings, &pool)
                .await
                .context("seeding the demo catalog")?;
            println!("seeded {n} demo products and their stock");
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
            what: BenchWhat::Saga { orders, rate },
        } => {
            kassa::bench::saga::run(&settings, orders, rate).await?;
        }
        Command::Bench {
            what: BenchWhat::Inventory { skus, requests },
        } => {
            kassa::bench::inventory(&settings, skus, requests).await?;
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

/// Who runs this command, for the records of what operators did: `user@host`.
fn operator() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into());
    format!("{user}@{host}")
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
}

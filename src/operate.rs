//! The operator's commands: how far each processor is behind (`lag`), decoded records
//! (`tail`), an order's story (`order`), whether the books square (`reconcile`), dead letters
//! (`dlq`) and stored offsets (`offsets`). Each prints tables for people or `--json` for scripts.

use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use kassa::databases::Databases;
use kassa::settings::Settings;
use kassa_processors::ConsumerGroup;

/// The operator's commands.
#[derive(Subcommand)]
pub enum Command {
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
        /// Also read every recorded intent back from the payment provider and compare.
        #[arg(long)]
        provider: bool,
        /// Print JSON (a list of `class`, `ids`, `detail`) instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Each processor's dead letters: list, show, redrive (after the cause is fixed; once at
    /// most) or discard them; every redrive and discard is recorded.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// The processors' stored consumer offsets (the ones in Postgres that count).
    Offsets {
        #[command(subcommand)]
        action: OffsetsAction,
    },
}

#[derive(Subcommand)]
pub enum OffsetsAction {
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

/// What to do with dead letters. A dead letter's id is `<group>/<partition>/<offset>`.
#[derive(Subcommand)]
pub enum DlqAction {
    /// List dead letters with their origin, reason and status (discarded ones with --all).
    List {
        /// Only this processor's.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(ConsumerGroup::ALL.map(ConsumerGroup::name)))]
        group: Option<String>,
        /// Only those dead-lettered since this RFC 3339 time.
        #[arg(long, value_name = "TIME", value_parser = kassa::offsets::parse_time)]
        since: Option<chrono::DateTime<chrono::Utc>>,
        /// Discarded ones too.
        #[arg(long)]
        all: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one dead letter: headers (reason, origin), the decoded message or its raw bytes.
    Show {
        /// Its id.
        id: String,
    },
    /// Publish the original messages again to the topics they came from, to be processed anew
    /// (exactly once in effect; a dead letter is redriven once at most).
    Redrive {
        /// Their ids.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Why (recorded).
        #[arg(long)]
        reason: String,
    },
    /// Mark dead letters dealt with: `list` no longer shows them (recorded).
    Discard {
        /// Their ids.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Why (recorded).
        #[arg(long)]
        reason: String,
    },
}

/// Runs a `kassa dlq` command.
async fn dlq(action: DlqAction, settings: &Settings) -> anyhow::Result<ExitCode> {
    use kassa::dlq::DeadLetterId;
    let databases = Databases::connect(settings).await?;
    let parse = |ids: &[String]| -> anyhow::Result<Vec<DeadLetterId>> {
        ids.iter()
            .map(|id| Ok(id.parse::<DeadLetterId>()?))
            .collect()
    };
    match action {
        DlqAction::List {
            group,
            since,
            all,
            json,
        } => {
            let groups = match group {
                Some(name) => vec![ConsumerGroup::from_name(&name).context("an unknown group")?],
                None => ConsumerGroup::ALL.to_vec(),
            };
            let mut letters = Vec::new();
            for group in groups {
                letters.extend(kassa::dlq::list(settings, &databases, group, since).await?);
            }
            letters.retain(|d| all || !d.discarded());
            if json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
            } else {
                print!("{}", kassa::dlq::table(&letters));
            }
        }
        DlqAction::Show { id } => {
            let id: DeadLetterId = id.parse()?;
            let letter = kassa::dlq::show(settings, &databases, id).await?;
            println!("{}", serde_json::to_string_pretty(&letter)?);
        }
        DlqAction::Redrive { ids, reason } => {
            let mut failed = 0;
            for id in parse(&ids)? {
                match kassa::dlq::redrive(settings, &databases, id, &operator(), &reason).await {
                    Ok(topic) => println!("{id}: redriven to {topic}"),
                    Err(error) => {
                        eprintln!("{id}: {error}");
                        failed += 1;
                    }
                }
            }
            if failed > 0 {
                return Ok(ExitCode::from(1));
            }
        }
        DlqAction::Discard { ids, reason } => {
            for id in parse(&ids)? {
                kassa::dlq::discard(settings, &databases, id, &operator(), &reason).await?;
                println!("{id}: discarded");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs an operator's command.
pub async fn execute(command: Command, settings: &Settings) -> anyhow::Result<ExitCode> {
    let settings = settings.clone();
    match command {
        Command::Dlq { action } => return dlq(action, &settings).await,
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
                let databases = Databases::connect(&settings).await?;
                anyhow::Ok(kassa::lag::measure(&settings, &databases, &groups).await?)
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
                let report = kassa::lag::Report {
                    groups: lag,
                    breaches: breaches.clone(),
                };
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
                partition: None,
                until: None,
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
                let databases = Databases::connect(&settings).await?;
                let pool = databases.joined("kassa order")?;
                anyhow::Ok(kassa::story::story(pool, &id).await?)
            }
            .await;
            let mut story = match looked {
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
            if let Err(error) = kassa::story::add_events(&settings, &mut story).await {
                eprintln!("error: the order's events could not be read: {error}");
                return Ok(ExitCode::from(2));
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&story)?);
            } else {
                print!("{}", kassa::story::report(&story));
            }
        }
        Command::Reconcile {
            since,
            margin,
            provider,
            json,
        } => {
            let options = kassa::reconcile::Options { since, margin };
            let checked = async {
                let databases = Databases::connect(&settings).await?;
                let pool = databases.joined("kassa reconcile")?;
                let mut found = kassa::reconcile::reconcile(pool, &options).await?;
                if provider {
                    found.extend(kassa::provider::check(&settings, pool, &options).await?);
                }
                anyhow::Ok(found)
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
            let databases = Databases::connect(&settings).await?;
            match action {
                OffsetsAction::Show => {
                    let lag =
                        kassa::lag::measure(&settings, &databases, &ConsumerGroup::ALL).await?;
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
                        kassa::offsets::plan(&settings, databases.of(group), group, &target).await?
                    } else {
                        let request = kassa::offsets::MoveRequest {
                            moved_by: operator(),
                            reason: reason.unwrap_or_default(),
                            force,
                        };
                        kassa::offsets::reset(
                            &settings,
                            databases.of(group),
                            group,
                            &target,
                            &request,
                        )
                        .await?
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
                    let moves = kassa::offsets::skip_to_end(
                        &settings,
                        databases.of(group),
                        group,
                        &request,
                    )
                    .await?;
                    let skipped: i64 = moves.iter().map(|m| m.to - m.from.unwrap_or(0)).sum();
                    println!(
                        "{}: skipped {skipped} offsets; now at the end of {} partitions",
                        group.name(),
                        moves.len()
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
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

//! The machine's limits, measured in the same run as a bench (they drift: pgbench gave 7,043
//! transactions/s one day and 2,855 another on the same machine): Kafka's own producer benchmark
//! (`ProducerPerformance`: acks=all, idempotent, 250-byte records, 12 partitions) and `pgbench`
//! (TPC-B-like, scale 10, 8 clients on 2 threads for 10 s, in a database of its own). The tools'
//! paths come from `scripts/dev env` (`KASSA_BENCH_KAFKA_TOOLS`, `KASSA_BENCH_PGBENCH`).

use std::process::Command;

use kassa_ops::settings::Settings;

/// The topic Kafka's producer benchmark writes to (created if missing: the broker does not).
const TOPIC: &str = "kassa-bench-limit";
/// The database pgbench works in (created, then dropped).
const DATABASE: &str = "kassa_bench_limit";

/// What each limit came to, or why it could not be measured.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Records a second Kafka's own producer sent.
    pub kafka_records: Result<f64, String>,
    /// Transactions a second pgbench committed.
    pub pg_transactions: Result<f64, String>,
}

impl Limits {
    /// Runs both benchmarks, one after the other (nothing else should run meanwhile).
    pub async fn measure(settings: &Settings, pool: &sqlx::PgPool) -> Self {
        let brokers = settings.kafka_brokers.clone();
        let kafka_records = tokio::task::spawn_blocking(move || kafka(&brokers))
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
        let pg_transactions = pgbench(settings, pool).await;
        Self {
            kafka_records,
            pg_transactions,
        }
    }

    /// Prints the limits and kassa's use as a share of each (`used`: the run's figures).
    pub fn print(&self, used: &super::usage::Usage) {
        let seconds = used.wall.as_secs_f64();
        match &self.kafka_records {
            Ok(limit) => println!(
                "limit, Kafka's ProducerPerformance: {limit:.0} records/s; this run wrote {:.0} records/s ({:.1}% of it)",
                used.kafka_offsets.unwrap_or(0) as f64 / seconds,
                100.0 * used.kafka_offsets.unwrap_or(0) as f64 / seconds / limit
            ),
            Err(e) => println!("limit, Kafka's ProducerPerformance: not measured ({e})"),
        }
        match &self.pg_transactions {
            Ok(limit) => println!(
                "limit, pgbench: {limit:.0} transactions/s; this run committed {:.0}/s ({:.1}% of it)",
                used.pg_commits as f64 / seconds,
                100.0 * used.pg_commits as f64 / seconds / limit
            ),
            Err(e) => println!("limit, pgbench: not measured ({e})"),
        }
    }
}

/// A tool's path from the environment `scripts/dev env` sets.
fn tool(variable: &str) -> Result<String, String> {
    std::env::var(variable)
        .map_err(|_| format!("{variable} is not set: eval \"$(scripts/dev env)\" first"))
}

/// Runs `command`; its standard output, or why it failed.
fn output(command: &mut Command, what: &str) -> Result<String, String> {
    let out = command
        .output()
        .map_err(|e| format!("{what} did not start: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().last().unwrap_or_default();
        return Err(format!("{what} failed: {last}"));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Kafka's `ProducerPerformance` on a topic of its own: records a second.
fn kafka(brokers: &str) -> Result<f64, String> {
    let run = tool("KASSA_BENCH_KAFKA_TOOLS")?;
    output(
        Command::new(&run).args([
            "org.apache.kafka.tools.TopicCommand",
            "--bootstrap-server",
            brokers,
            "--create",
            "--if-not-exists",
            "--topic",
            TOPIC,
            "--partitions",
            "12",
            "--replication-factor",
            "1",
        ]),
        "TopicCommand",
    )?;
    let servers = format!("bootstrap.servers={brokers}");
    let report = output(
        Command::new(&run).args([
            "org.apache.kafka.tools.ProducerPerformance",
            "--topic",
            TOPIC,
            "--num-records",
            "300000",
            "--record-size",
            "250",
            "--throughput",
            "-1",
            "--producer-props",
            &servers,
            "acks=all",
            "enable.idempotence=true",
        ]),
        "ProducerPerformance",
    )?;
    records_per_second(&report).ok_or_else(|| "no records/sec in its report".to_owned())
}

/// The records a second in ProducerPerformance's summary line.
fn records_per_second(report: &str) -> Option<f64> {
    let line = report.lines().rev().find(|l| l.contains("records/sec"))?;
    let before = line.split(" records/sec").next()?;
    before.rsplit(' ').next()?.parse().ok()
}

/// pgbench in a database of its own: transactions a second.
async fn pgbench(settings: &Settings, pool: &sqlx::PgPool) -> Result<f64, String> {
    let run = tool("KASSA_BENCH_PGBENCH")?;
    let mut url = reqwest::Url::parse(settings.database_url.expose())
        .map_err(|e| format!("the database URL does not parse: {e}"))?;
    url.set_path(&format!("/{DATABASE}"));
    let statement = |sql: String| async move {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(pool)
            .await
            .map(drop)
            .map_err(|e| format!("pgbench's database: {e}"))
    };
    statement(format!("DROP DATABASE IF EXISTS {DATABASE}")).await?;
    statement(format!("CREATE DATABASE {DATABASE}")).await?;
    let uri = url.to_string();
    let measured = tokio::task::spawn_blocking(move || {
        output(
            Command::new(&run).args(["-i", "-s", "10", "-q", &uri]),
            "pgbench -i",
        )?;
        let report = output(
            Command::new(&run).args(["-c", "8", "-j", "2", "-T", "10", &uri]),
            "pgbench",
        )?;
        transactions_per_second(&report).ok_or_else(|| "no tps in its report".to_owned())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    statement(format!("DROP DATABASE IF EXISTS {DATABASE}")).await?;
    measured
}

/// The transactions a second in pgbench's report.
fn transactions_per_second(report: &str) -> Option<f64> {
    let line = report.lines().find(|l| l.starts_with("tps = "))?;
    line["tps = ".len()..].split(' ').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tools_reports_give_their_rates() {
        let producer = "300000 records sent, 93750.0 records/sec (22.35 MB/sec), 51.84 ms avg latency, 590.00 ms max latency.";
        assert_eq!(records_per_second(producer), Some(93750.0));
        let pg = "latency average = 2.5 ms\ntps = 2854.960422 (without initial connection time)\n";
        assert_eq!(transactions_per_second(pg), Some(2854.960422));
        assert_eq!(records_per_second("nothing"), None);
    }
}

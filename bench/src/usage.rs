//! What a bench run used of the machine, between two samples: CPU seconds per process group
//! (kassa, the Kafka broker, Postgres, Redis, the registry, localstripe) and of the whole machine
//! from `/proc`, Postgres transactions and statements (`pg_stat_database`,
//! `pg_stat_statements` where `scripts/dev` loaded it), and Kafka records written (from the
//! topics' high watermarks; kassa's producers are idempotent, not transactional, so no markers).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kassa_schemas::Topic;
use rdkafka::consumer::{BaseConsumer, Consumer};
use sqlx::PgPool;

use kassa_ops::settings::Settings;

/// Clock ticks a second in `/proc` times (USER_HZ: 100 on Linux's mainstream architectures).
const TICKS_A_SECOND: f64 = 100.0;

/// The process groups reported, in order: this process (the bench, the API and, in one-process
/// runs, the processors), then the processors it started as processes of their own.
const GROUPS: [&str; 11] = [
    "kassa",
    "kassa inventory",
    "kassa orders",
    "kassa payments",
    "kassa expiry",
    "kassa notifications",
    "Kafka",
    "Postgres",
    "Redis",
    "registry",
    "localstripe",
];

/// The counters at one moment.
#[derive(Debug, Clone)]
pub struct Sample {
    at: Instant,
    /// CPU ticks per group (children reaped included: a Postgres backend that ended counts in the
    /// postmaster's).
    ticks: BTreeMap<&'static str, u64>,
    /// The machine's busy and total ticks (all cores).
    machine: (u64, u64),
    pg_commits: i64,
    pg_statements: Option<Statements>,
    kafka_offsets: Option<i64>,
}

/// Statements Postgres ran in kassa's database, by the schema each names first (`""`: none):
/// how many, and how long their execution took in ms.
pub type Statements = BTreeMap<String, (i64, f64)>;

/// What was used between two samples.
#[derive(Debug, Clone)]
pub struct Usage {
    /// Wall time between the samples.
    pub wall: Duration,
    /// CPU seconds per group.
    pub cpu: Vec<(&'static str, f64)>,
    /// The share of the machine's CPU (all cores) that was busy.
    pub machine_busy: f64,
    /// Postgres transactions committed in kassa's database.
    pub pg_commits: i64,
    /// Statements Postgres ran there, by schema (the simulated gateway's is `simulator`; None:
    /// pg_stat_statements not loaded).
    pub pg_statements: Option<Statements>,
    /// Kafka records written on kassa's topics (None: the broker did not answer).
    pub kafka_offsets: Option<i64>,
}

impl Sample {
    /// Reads every counter now.
    pub async fn take(settings: &Settings, pool: &PgPool) -> Self {
        let brokers = settings.kafka_brokers.clone();
        let kafka_offsets = tokio::task::spawn_blocking(move || kafka_offsets(&brokers))
            .await
            .ok()
            .flatten();
        Self {
            at: Instant::now(),
            ticks: group_ticks(),
            machine: machine_ticks(),
            pg_commits: super::pg_commits(pool).await.unwrap_or(0),
            pg_statements: pg_statements(pool).await,
            kafka_offsets,
        }
    }

    /// What was used from `self` to `later`.
    pub fn until(&self, later: &Sample) -> Usage {
        let cpu = GROUPS
            .iter()
            .map(|g| {
                let ticks = later
                    .ticks
                    .get(g)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(self.ticks.get(g).copied().unwrap_or(0));
                (*g, ticks as f64 / TICKS_A_SECOND)
            })
            .collect();
        let busy = later.machine.0.saturating_sub(self.machine.0) as f64;
        let total = later.machine.1.saturating_sub(self.machine.1).max(1) as f64;
        Usage {
            wall: later.at - self.at,
            cpu,
            machine_busy: busy / total,
            pg_commits: later.pg_commits - self.pg_commits,
            pg_statements: later
                .pg_statements
                .as_ref()
                .zip(self.pg_statements.as_ref())
                .map(|(later, earlier)| {
                    later
                        .iter()
                        .map(|(schema, (calls, ms))| {
                            let (calls_before, ms_before) =
                                earlier.get(schema).copied().unwrap_or((0, 0.0));
                            (schema.clone(), (calls - calls_before, ms - ms_before))
                        })
                        .collect()
                }),
            kafka_offsets: later
                .kafka_offsets
                .zip(self.kafka_offsets)
                .map(|(b, a)| b - a),
        }
    }
}

impl Usage {
    /// CPU milliseconds of every counted process per order (`orders` went through).
    pub fn cpu_per_order_ms(&self, orders: usize) -> f64 {
        self.cpu.iter().map(|(_, s)| s).sum::<f64>() * 1000.0 / orders.max(1) as f64
    }

    /// Prints the use per order (`orders` orders went through meanwhile).
    pub fn print(&self, orders: usize) {
        let orders = orders.max(1) as f64;
        let seconds = self.wall.as_secs_f64();
        println!(
            "machine: {:.0}% of all cores busy over {seconds:.1} s; CPU per order by process:",
            self.machine_busy * 100.0
        );
        let total: f64 = self.cpu.iter().map(|(_, s)| s).sum();
        for (group, cpu) in self.cpu.iter().filter(|(_, s)| *s > 0.0) {
            println!(
                "  {group:<19} {:>7.2} ms/order  ({:>5.1}% of one core)",
                cpu * 1000.0 / orders,
                cpu * 100.0 / seconds
            );
        }
        println!("  {:<19} {:>7.2} ms/order", "all", total * 1000.0 / orders);
        let statements = self.pg_statements.as_ref().map_or(
            "n/a (pg_stat_statements not loaded)".to_owned(),
            |by_schema| {
                let all: i64 = by_schema.values().map(|(calls, _)| calls).sum();
                let simulator = by_schema.get("simulator").map_or(0, |(calls, _)| *calls);
                format!(
                    "{:.1} (of them {:.1} in the simulated gateway, not counting its BEGIN/COMMIT)",
                    all as f64 / orders,
                    simulator as f64 / orders
                )
            },
        );
        println!(
            "Postgres: {:.0} transactions/s, {:.1} transactions and {statements} statements per order",
            self.pg_commits as f64 / seconds,
            self.pg_commits as f64 / orders
        );
        if let Some(by_schema) = &self.pg_statements {
            // Schemas that ran nothing meanwhile are left out.
            let mut named: Vec<_> = by_schema
                .iter()
                .filter(|(schema, (calls, _))| !schema.is_empty() && *calls > 0)
                .collect();
            named.sort_by(|a, b| b.1.1.total_cmp(&a.1.1));
            let shares: Vec<String> = named
                .iter()
                .map(|(schema, (calls, ms))| {
                    format!(
                        "{schema} {:.2} ({:.1})",
                        ms / orders,
                        *calls as f64 / orders
                    )
                })
                .collect();
            println!(
                "Postgres statement execution by schema, ms (statements) per order: {}",
                shares.join(", ")
            );
        }
        match self.kafka_offsets {
            Some(n) => println!(
                "Kafka: {:.0} records/s written (kassa writes no transactions: no markers), {:.1} per order",
                n as f64 / seconds,
                n as f64 / orders
            ),
            None => println!("Kafka: offsets not read"),
        }
    }
}

/// Which group a process belongs to, by its parent, name and command line. `own` is this
/// process's name (`kassa`, or whatever its executable is called): the processors it starts
/// run the same executable.
fn group_of(pid: u32, parent: u32, comm: &str, cmdline: &str, own: &str) -> Option<&'static str> {
    let me = std::process::id();
    if pid == me {
        return Some("kassa");
    }
    if parent == me && comm == own {
        // A `kassa run <processor>` this bench started.
        let processor = cmdline
            .split_whitespace()
            .skip_while(|w| *w != "run")
            .nth(1);
        return GROUPS.iter().copied().find(|g| {
            g.strip_prefix("kassa ")
                .is_some_and(|p| Some(p) == processor)
        });
    }
    match comm {
        "postgres" => Some("Postgres"),
        "redis-server" => Some("Redis"),
        _ if cmdline.contains("kafka.Kafka") => Some("Kafka"),
        _ if cmdline.contains("quarkus-run") => Some("registry"),
        _ if cmdline.contains("localstripe") => Some("localstripe"),
        _ => None,
    }
}

/// CPU ticks (user, system, and of reaped children) of each group's processes now.
fn group_ticks() -> BTreeMap<&'static str, u64> {
    let mut ticks = BTreeMap::new();
    let own = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
    let own = own.trim_end();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return ticks;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default();
        let Some((comm, parent, used)) = parse_stat(&stat) else {
            continue;
        };
        if let Some(group) = group_of(pid, parent, comm, &cmdline, own) {
            *ticks.entry(group).or_default() += used;
        }
    }
    ticks
}

/// A `/proc/<pid>/stat` line's name, parent pid and utime + stime + cutime + cstime.
fn parse_stat(stat: &str) -> Option<(&str, u32, u64)> {
    // The name is in parentheses and may hold spaces; the fields after it are plain.
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = &stat[open + 1..close];
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    // After the name: state (0), ppid (1), … utime (11), stime (12), cutime (13), cstime (14).
    let parent = fields.get(1)?.parse().ok()?;
    let sum = fields
        .get(11..15)?
        .iter()
        .map(|f| f.parse::<u64>().ok())
        .sum::<Option<u64>>()?;
    Some((comm, parent, sum))
}

/// The machine's (busy, total) ticks over all cores, from `/proc/stat`.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().next() else {
        return (0, 0);
    };
    let fields: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let total: u64 = fields.iter().take(8).sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total.saturating_sub(idle), total)
}

/// Statements Postgres has run in this database, by the schema each names first (None without
/// pg_stat_statements).
async fn pg_statements(pool: &PgPool) -> Option<Statements> {
    let rows = sqlx::query_as::<_, (String, i64, f64)>(
        "SELECT coalesce(substring(query FROM
                  '(?:INTO|FROM|UPDATE|JOIN)\\s+(api|orders|payments|inventory|expiry|notifications|simulator|ops|bench)\\.'), ''),
                sum(calls)::int8, sum(total_exec_time)::float8
         FROM pg_stat_statements s
         JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = current_database()
         GROUP BY 1",
    )
    .fetch_all(pool)
    .await
    .ok()?;
    Some(
        rows.into_iter()
            .map(|(schema, calls, ms)| (schema, (calls, ms)))
            .collect(),
    )
}

/// The sum of the high watermarks of kassa's topics.
fn kafka_offsets(brokers: &str) -> Option<i64> {
    let consumer: BaseConsumer = kassa_schemas::kafka_link::client_config(brokers)
        .create()
        .ok()?;
    let timeout = Duration::from_secs(5);
    let mut sum = 0;
    for topic in Topic::ALL {
        let metadata = consumer.fetch_metadata(Some(topic.name()), timeout).ok()?;
        for t in metadata.topics() {
            for p in t.partitions() {
                sum += consumer.fetch_watermarks(t.name(), p.id(), timeout).ok()?.1;
            }
        }
    }
    Some(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_its_name_and_cpu_ticks() {
        let line = "1234 (postgres: ka ssa) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 7 3 20 0 1 0 100 0 0";
        assert_eq!(
            parse_stat(line),
            Some(("postgres: ka ssa", 1, 250 + 50 + 7 + 3))
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn processes_fall_into_their_groups() {
        let me = std::process::id();
        assert_eq!(group_of(me, 1, "kassa", "", "kassa"), Some("kassa"));
        assert_eq!(
            group_of(9, me, "kassa", "/x/kassa run payments", "kassa"),
            Some("kassa payments")
        );
        assert_eq!(
            group_of(9, me, "kassa", "/x/kassa run notifications", "kassa"),
            Some("kassa notifications")
        );
        assert_eq!(
            group_of(9, me, "kassa-new", "/tmp/kassa-new run orders", "kassa-new"),
            Some("kassa orders"),
            "the processors run this bench's executable, whatever it is called"
        );
        assert_eq!(
            group_of(9, 1, "kassa", "/x/kassa run payments", "kassa"),
            None,
            "a kassa this bench did not start is not counted"
        );
        assert_eq!(
            group_of(1, 0, "postgres", "postgres: kassa", "kassa"),
            Some("Postgres")
        );
        assert_eq!(
            group_of(
                2,
                1,
                "java",
                "java -cp libs/* kafka.Kafka /x/kafka.properties",
                "kassa"
            ),
            Some("Kafka")
        );
        assert_eq!(
            group_of(3, 1, "java", "java -jar quarkus-run.jar", "kassa"),
            Some("registry")
        );
        assert_eq!(group_of(4, 1, "bash", "bash", "kassa"), None);
    }
}

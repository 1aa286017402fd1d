//! How every Kafka client kassa makes connects: the brokers (`KASSA_KAFKA_BROKERS`) plus the
//! librdkafka properties a deployment adds for its cluster (TLS, SASL, timeouts, …), from a
//! properties file named by `KASSA_KAFKA_CONFIG` and from `KASSA_KAFKA__<property>` variables,
//! which win over the file. They are read once per process and applied to every producer,
//! consumer and admin client. Properties kassa's guarantees rest on (idempotence, acks, isolation,
//! offsets, group membership) cannot be overridden. Values are never logged: only names.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;

/// The variable naming a properties file (`key=value` lines).
pub const CONFIG_FILE_VARIABLE: &str = "KASSA_KAFKA_CONFIG";
/// The prefix of variables that each set one property: `KASSA_KAFKA__security.protocol=SSL`, or
/// with the shell's spelling `KASSA_KAFKA__SECURITY_PROTOCOL=SSL` (upper case, `_` for `.`).
pub const PROPERTY_PREFIX: &str = "KASSA_KAFKA__";

/// Properties kassa sets itself: the brokers have their own setting, the rest hold up the
/// exactly-once runtime and the partitioning contract.
const RESERVED: &[&str] = &[
    "bootstrap.servers",
    "metadata.broker.list",
    "group.id",
    "group.instance.id",
    "partition.assignment.strategy",
    "partitioner",
    "enable.idempotence",
    "acks",
    "request.required.acks",
    "isolation.level",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "transactional.id",
];

/// Why the deployment's Kafka properties cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KafkaLinkError {
    /// The properties file could not be read.
    #[error("Kafka client properties: {CONFIG_FILE_VARIABLE}={path} cannot be read: {reason}")]
    Read {
        /// The file.
        path: String,
        /// What the system said.
        reason: String,
    },
    /// A line of the file is not `key=value`.
    #[error(
        "Kafka client properties: {CONFIG_FILE_VARIABLE}={path} line {line} is not `key=value` (or `key: value`)"
    )]
    Line {
        /// The file.
        path: String,
        /// The line's number, from 1.
        line: usize,
    },
    /// A property kassa sets itself.
    #[error(
        "Kafka client properties: {property} (from {origin}) is set by kassa itself and cannot be overridden{hint}"
    )]
    Reserved {
        /// The property.
        property: String,
        /// Where it came from (the file, or the variable's name).
        origin: String,
        /// What to use instead, if anything.
        hint: &'static str,
    },
    /// librdkafka refused a property (unknown, bad value, or a feature not built in).
    #[error("Kafka client properties: {0}")]
    Refused(String),
    /// The brokers did not answer, or refused the connection (TLS, authentication).
    #[error("Kafka at {brokers} cannot be reached: {reason}")]
    Unreachable {
        /// The bootstrap servers tried.
        brokers: String,
        /// What librdkafka last reported (a refused certificate, failed authentication, …).
        reason: String,
    },
}

/// The deployment's properties, in the order they apply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties(Vec<(String, String)>);

impl Properties {
    /// The properties from `file` (its path and text, if one is named) and then from `variables`
    /// (name, value) that start with [`PROPERTY_PREFIX`]; a later one replaces an earlier one.
    pub fn parse(
        file: Option<(&str, &str)>,
        variables: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, KafkaLinkError> {
        let mut properties = Properties::default();
        if let Some((path, text)) = file {
            for (number, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') || line.starts_with('!') {
                    continue;
                }
                let at = line.find(['=', ':']).ok_or_else(|| KafkaLinkError::Line {
                    path: path.to_owned(),
                    line: number + 1,
                })?;
                let (key, value) = (line[..at].trim(), line[at + 1..].trim());
                if key.is_empty() {
                    return Err(KafkaLinkError::Line {
                        path: path.to_owned(),
                        line: number + 1,
                    });
                }
                properties.set(key.to_owned(), value.to_owned(), path)?;
            }
        }
        let mut variables: Vec<(String, String)> = variables
            .into_iter()
            .filter(|(name, _)| {
                name.starts_with(PROPERTY_PREFIX) && name.len() > PROPERTY_PREFIX.len()
            })
            .collect();
        variables.sort();
        for (name, value) in variables {
            let raw = &name[PROPERTY_PREFIX.len()..];
            let key = if raw.contains('.') {
                raw.to_owned()
            } else {
                raw.to_ascii_lowercase().replace('_', ".")
            };
            properties.set(key, value, &name)?;
        }
        Ok(properties)
    }

    /// The properties of this process's environment (read once; later calls give the same).
    pub fn from_env() -> Result<&'static Properties, KafkaLinkError> {
        static READ: OnceLock<Result<Properties, KafkaLinkError>> = OnceLock::new();
        READ.get_or_init(|| {
            let file = match std::env::var(CONFIG_FILE_VARIABLE) {
                Ok(path) if !path.is_empty() => {
                    let text =
                        std::fs::read_to_string(&path).map_err(|e| KafkaLinkError::Read {
                            path: path.clone(),
                            reason: e.to_string(),
                        })?;
                    Some((path, text))
                }
                _ => None,
            };
            let properties = Self::parse(
                file.as_ref().map(|(p, t)| (p.as_str(), t.as_str())),
                std::env::vars(),
            )?;
            properties.check()?;
            Ok(properties)
        })
        .as_ref()
        .map_err(Clone::clone)
    }

    /// The properties' names (for a log line: values may be secrets).
    pub fn names(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }

    /// Sets `key` (from `origin`), refusing the ones kassa sets itself.
    fn set(&mut self, key: String, value: String, origin: &str) -> Result<(), KafkaLinkError> {
        if RESERVED.contains(&key.as_str()) {
            let hint = if key == "bootstrap.servers" || key == "metadata.broker.list" {
                ": use KASSA_KAFKA_BROKERS"
            } else {
                ""
            };
            return Err(KafkaLinkError::Reserved {
                property: key,
                origin: origin.to_owned(),
                hint,
            });
        }
        self.0.retain(|(k, _)| *k != key);
        self.0.push((key, value));
        Ok(())
    }

    /// Whether librdkafka takes every property (a producer is made and dropped, which connects
    /// to nothing): unknown names, bad values and features not built in show here, at startup.
    pub fn check(&self) -> Result<(), KafkaLinkError> {
        if self.0.is_empty() {
            return Ok(());
        }
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", "127.0.0.1:9");
        self.apply(&mut config);
        config
            .create::<rdkafka::producer::BaseProducer>()
            .map(drop)
            .map_err(|e| KafkaLinkError::Refused(without_value(e)))
    }

    /// Adds the properties to `config`.
    pub fn apply(&self, config: &mut ClientConfig) {
        for (key, value) in &self.0 {
            config.set(key, value);
        }
    }
}

/// Names a property librdkafka refused without its value (rdkafka's message ends with it, and
/// a misspelt `sasl.pasword` would print the password); a value quoted in the reason is hidden
/// too where the property's name says it may be a secret.
fn without_value(error: KafkaError) -> String {
    match error {
        KafkaError::ClientConfig(_, reason, key, value) => {
            let secret = ["password", "secret", "pem", "jaas", "token", "key"]
                .iter()
                .any(|s| key.contains(s));
            let reason = if secret && !value.is_empty() {
                reason.replace(&value, "***")
            } else {
                reason
            };
            format!("{key}: {reason}")
        }
        other => other.to_string(),
    }
}

/// A client configuration for `brokers` with the deployment's properties: where every kassa
/// Kafka client starts. (A process that could not read them stops at startup, in `kassa`'s main;
/// a library caller that did not check gets the brokers alone.)
pub fn client_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    if let Ok(properties) = Properties::from_env() {
        properties.apply(&mut config);
    }
    config
}

/// Sets each of kassa's `defaults` that the deployment's properties leave unset: kassa's choice
/// of a tuning property (a linger, a timeout), which an operator may make instead.
pub fn default_unless_set(config: &mut ClientConfig, defaults: &[(&str, &str)]) {
    for (key, value) in defaults {
        if config.get(key).is_none() {
            config.set(*key, *value);
        }
    }
}

/// The last error librdkafka reported for a client, in its log or its error callback (refused
/// certificates and failed authentication show there, not in the failed request's error).
#[derive(Default)]
struct LastError(Mutex<Option<String>>);

impl LastError {
    fn keep(&self, seen: String) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(seen);
    }
}

impl rdkafka::ClientContext for LastError {
    fn error(&self, error: KafkaError, reason: &str) {
        self.keep(format!("{reason} ({error})"));
    }

    // Failed TLS handshakes and authentication show in librdkafka's log.
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, log_message: &str) {
        if (level as i32) <= (rdkafka::config::RDKafkaLogLevel::Error as i32) {
            self.keep(log_message.to_owned());
        }
        tracing::debug!(fac, log_message, "librdkafka (connection check)");
    }
}

impl rdkafka::consumer::ConsumerContext for LastError {}

/// Asks `brokers` for their topics with the deployment's properties (blocking, up to `within`):
/// each topic's partition count when they answer; otherwise why not, in librdkafka's words (a
/// certificate it could not verify, credentials the broker refused, nobody listening).
pub fn partition_counts(
    brokers: &str,
    within: Duration,
) -> Result<HashMap<String, usize>, KafkaLinkError> {
    let consumer: BaseConsumer<LastError> = client_config(brokers)
        .create_with_context(LastError::default())
        .map_err(|e| KafkaLinkError::Refused(without_value(e)))?;
    let metadata = consumer.fetch_metadata(None, within).map_err(|e| {
        // rdkafka delivers librdkafka's logs and errors as events on the client's queue: serve
        // what is waiting there.
        for _ in 0..3 {
            let _ = consumer.poll(Duration::from_millis(50));
        }
        let seen = consumer
            .context()
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        KafkaLinkError::Unreachable {
            brokers: brokers.to_owned(),
            reason: seen.unwrap_or_else(|| e.to_string()),
        }
    })?;
    Ok(metadata
        .topics()
        .iter()
        .map(|t| (t.name().to_owned(), t.partitions().len()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn a_file_and_variables_make_the_properties_and_variables_win() {
        let file = "# cluster\n\nsecurity.protocol = SASL_SSL\n! also a comment\nsasl.mechanism: SCRAM-SHA-512\nsasl.username=kassa\n";
        let properties = Properties::parse(
            Some(("client.properties", file)),
            vars(&[
                ("KASSA_KAFKA__sasl.username", "shop"),
                ("KASSA_KAFKA__SSL_CA_LOCATION", "/etc/ca.pem"),
                ("KASSA_KAFKA_BROKERS", "not a property"),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        let mut pairs = properties.0.clone();
        pairs.sort();
        assert_eq!(
            pairs,
            vars(&[
                ("sasl.mechanism", "SCRAM-SHA-512"),
                ("sasl.username", "shop"),
                ("security.protocol", "SASL_SSL"),
                ("ssl.ca.location", "/etc/ca.pem"),
            ])
        );
    }

    #[test]
    fn a_bad_line_is_named_by_file_and_number() {
        let error =
            Properties::parse(Some(("c.properties", "a=1\njust words\n")), vec![]).unwrap_err();
        assert_eq!(
            error,
            KafkaLinkError::Line {
                path: "c.properties".into(),
                line: 2
            }
        );
        assert!(error.to_string().contains("c.properties line 2"));
    }

    #[test]
    fn what_kassa_sets_itself_cannot_be_overridden() {
        let error = Properties::parse(None, vars(&[("KASSA_KAFKA__ENABLE_IDEMPOTENCE", "false")]))
            .unwrap_err();
        assert!(
            matches!(&error, KafkaLinkError::Reserved { property, origin, .. }
                if property == "enable.idempotence" && origin == "KASSA_KAFKA__ENABLE_IDEMPOTENCE"),
            "{error}"
        );
        let error = Properties::parse(Some(("f", "bootstrap.servers=x:1")), vec![]).unwrap_err();
        assert!(
            error.to_string().contains("use KASSA_KAFKA_BROKERS"),
            "{error}"
        );
    }

    #[test]
    fn an_operators_tuning_wins_over_kassas_default_and_the_assignment_is_kassas() {
        let properties = Properties::parse(
            Some(("f", "session.timeout.ms=45000")),
            vars(&[("KASSA_KAFKA__LINGER_MS", "10")]),
        )
        .unwrap();
        let mut config = ClientConfig::new();
        properties.apply(&mut config);
        default_unless_set(
            &mut config,
            &[
                ("linger.ms", "2"),
                ("session.timeout.ms", "6000"),
                ("heartbeat.interval.ms", "1000"),
            ],
        );
        assert_eq!(config.get("linger.ms"), Some("10"));
        assert_eq!(config.get("session.timeout.ms"), Some("45000"));
        assert_eq!(config.get("heartbeat.interval.ms"), Some("1000"));
        let error = Properties::parse(
            None,
            vars(&[("KASSA_KAFKA__PARTITION_ASSIGNMENT_STRATEGY", "range")]),
        )
        .unwrap_err();
        assert!(
            matches!(&error, KafkaLinkError::Reserved { property, .. } if property == "partition.assignment.strategy"),
            "{error}"
        );
    }

    #[test]
    fn librdkafka_refuses_an_unknown_property_and_no_value_is_shown() {
        let properties = Properties::parse(
            None,
            vars(&[
                ("KASSA_KAFKA__sasl.pasword", "hunter2"),
                ("KASSA_KAFKA__sasl.password", "hunter2"),
            ]),
        )
        .unwrap();
        let error = properties.check().unwrap_err().to_string();
        assert!(error.contains("sasl.pasword"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
        assert_eq!(properties.names(), vec!["sasl.password", "sasl.pasword"]);
        let bad_value =
            Properties::parse(None, vars(&[("KASSA_KAFKA__ssl.keystore.password", "x")]))
                .unwrap()
                .check();
        assert!(bad_value.is_ok(), "{bad_value:?}");
        let bad_value =
            Properties::parse(None, vars(&[("KASSA_KAFKA__security.protocol", "TLS9")]))
                .unwrap()
                .check()
                .unwrap_err()
                .to_string();
        assert!(bad_value.contains("security.protocol"), "{bad_value}");
    }

    #[test]
    fn tls_and_sasl_properties_are_taken() {
        let properties = Properties::parse(
            None,
            vars(&[
                ("KASSA_KAFKA__security.protocol", "SASL_SSL"),
                ("KASSA_KAFKA__sasl.mechanism", "SCRAM-SHA-512"),
                ("KASSA_KAFKA__sasl.username", "kassa"),
                ("KASSA_KAFKA__sasl.password", "secret"),
                (
                    "KASSA_KAFKA__ssl.endpoint.identification.algorithm",
                    "https",
                ),
            ]),
        )
        .unwrap();
        properties
            .check()
            .expect("librdkafka is built with TLS and SCRAM");
    }
}

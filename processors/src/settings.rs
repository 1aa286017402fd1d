//! What the processors share of their settings: what [`crate::Processor::config`] is given next
//! to a processor's own settings, where kassa runs, and the parsers of the duration flags.

use std::time::Duration;

/// Where kassa runs, for the defaults that must differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Environment {
    /// A developer's machine or a test run: the simulated gateway may be the default.
    Development,
    /// Anything else: nothing that charges nobody is ever a default.
    Production,
}

/// The settings more than one component reads, given to every processor's `config`.
#[derive(Debug, Clone)]
pub struct Common {
    /// Where kassa runs.
    pub environment: Environment,
    /// Static Kafka group membership id of this instance, if any.
    pub instance_id: Option<String>,
    /// Reservation hold when a checkout request names none.
    pub default_hold: Duration,
    /// The longest reservation hold a customer's renewal may ask for.
    pub max_hold: Duration,
}

/// A whole number of seconds, as a duration (at least one second): the parser of `…-seconds`.
pub fn seconds(text: &str) -> Result<Duration, String> {
    let n: u64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number of seconds"))?;
    Ok(Duration::from_secs(n.max(1)))
}

/// A whole number of milliseconds, as a duration: the parser of `…-ms`.
pub fn millis(text: &str) -> Result<Duration, String> {
    let n: u64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number of milliseconds"))?;
    Ok(Duration::from_millis(n))
}

/// `duration` as a chrono duration (saturating).
pub fn chrono_of(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_whole_seconds_and_never_zero() {
        assert_eq!(seconds("90"), Ok(Duration::from_secs(90)));
        assert_eq!(seconds("0"), Ok(Duration::from_secs(1)));
        assert!(seconds("1.5").is_err());
        assert_eq!(millis("0"), Ok(Duration::ZERO));
        assert!(millis("ten").is_err());
    }
}

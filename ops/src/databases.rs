//! The databases kassa's schemas live in: `KASSA_DATABASE_URL`'s (the API's and the operator's
//! schemas, and by default every processor's) and any processor's own
//! (`KASSA_<PROCESSOR>_DATABASE_URL`). One pool a distinct database; the operator's tools take
//! each processor's pool from here, and the views that join several processors' schemas in one
//! query ask for them [`Databases::joined`].

use std::time::Duration;

use kassa_processors::ConsumerGroup;
use sqlx::PgPool;

use crate::settings::{Settings, redact_url_password};

/// Why the databases cannot be used as asked.
#[derive(Debug, thiserror::Error)]
pub enum DatabasesError {
    /// A database URL does not parse.
    #[error("database URL {url}: {source}")]
    Url {
        /// The URL, password redacted.
        url: String,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// A database could not be reached.
    #[error("cannot connect to PostgreSQL at {url} ({holds}): {source}")]
    Connect {
        /// The URL, password redacted.
        url: String,
        /// Whose schemas it holds.
        holds: String,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// A view joins processors' schemas that live in different databases.
    #[error(
        "{view} joins several processors' schemas in one query, so it needs them in one \
         database; {elsewhere} (KASSA_<PROCESSOR>_DATABASE_URL)"
    )]
    Split {
        /// The view asked for.
        view: &'static str,
        /// The processors whose database differs from `KASSA_DATABASE_URL`'s.
        elsewhere: String,
    },
}

/// Whose schemas `KASSA_DATABASE_URL`'s database holds besides the processors'.
pub const MAIN_HOLDS: &str = "api, ops";

/// One pool a distinct database, and which processors' schemas each holds.
#[derive(Clone)]
pub struct Databases {
    /// Each processor's database: the main one's pool unless its URL differs.
    of: Vec<(ConsumerGroup, PgPool)>,
    /// Every distinct database, `KASSA_DATABASE_URL`'s first: its redacted URL, whose schemas it
    /// holds, its pool.
    distinct: Vec<(String, Vec<&'static str>, PgPool)>,
}

impl Databases {
    /// Pools of at most `max` connections for every database the settings name; nothing
    /// connects until a pool is used.
    pub fn lazy(settings: &Settings, max: u32, acquire: Duration) -> Result<Self, DatabasesError> {
        let options = kassa_schemas::postgres_link::pool_options()
            .max_connections(max)
            .acquire_timeout(acquire);
        let mut distinct: Vec<(String, Vec<&'static str>, PgPool)> = Vec::new();
        let mut urls: Vec<String> = Vec::new();
        let mut pool_for = |url: &str, holds: &'static str| -> Result<PgPool, DatabasesError> {
            if let Some(i) = urls.iter().position(|u| u == url) {
                distinct[i].1.push(holds);
                return Ok(distinct[i].2.clone());
            }
            let pool = options
                .clone()
                .connect_lazy(url)
                .map_err(|source| DatabasesError::Url {
                    url: redact_url_password(url),
                    source,
                })?;
            urls.push(url.to_owned());
            distinct.push((redact_url_password(url), vec![holds], pool.clone()));
            Ok(pool)
        };
        pool_for(settings.database_url.expose(), MAIN_HOLDS)?;
        let of = ConsumerGroup::ALL
            .into_iter()
            .map(|g| Ok((g, pool_for(settings.database_url_of(g).expose(), g.name())?)))
            .collect::<Result<_, DatabasesError>>()?;
        Ok(Databases { of, distinct })
    }

    /// [`Databases::lazy`] with a small pool each (for the operator's tools), every database
    /// reached once, so that one that cannot be is named now.
    pub async fn connect(settings: &Settings) -> Result<Self, DatabasesError> {
        let databases = Self::lazy(settings, 2, Duration::from_secs(10))?;
        for (url, holds, pool) in &databases.distinct {
            pool.acquire()
                .await
                .map_err(|source| DatabasesError::Connect {
                    url: url.clone(),
                    holds: holds.join(", "),
                    source,
                })?;
        }
        Ok(databases)
    }

    /// `KASSA_DATABASE_URL`'s database: the `api` and `ops` schemas.
    pub fn main(&self) -> &PgPool {
        &self.distinct[0].2
    }

    /// The database `group`'s processor keeps its schema in.
    pub fn of(&self, group: ConsumerGroup) -> &PgPool {
        &self
            .of
            .iter()
            .find(|(g, _)| *g == group)
            .expect("every group has a pool")
            .1
    }

    /// The one database that holds every schema, for `view`, which joins them; refused when a
    /// processor keeps its schema elsewhere.
    pub fn joined(&self, view: &'static str) -> Result<&PgPool, DatabasesError> {
        if self.distinct.len() == 1 {
            return Ok(self.main());
        }
        let elsewhere: Vec<&str> = self.distinct[1..]
            .iter()
            .flat_map(|(_, holds, _)| holds.iter().copied())
            .collect();
        let kept = if elsewhere.len() == 1 {
            "is kept in a database of its own"
        } else {
            "are kept in databases of their own"
        };
        Err(DatabasesError::Split {
            view,
            elsewhere: format!("{} {kept}", elsewhere.join(", ")),
        })
    }

    /// The distinct databases the processors of `groups` keep their schemas in.
    pub fn of_groups(&self, groups: &[ConsumerGroup]) -> impl Iterator<Item = &PgPool> {
        self.distinct
            .iter()
            .filter(|(_, holds, _)| groups.iter().any(|g| holds.contains(&g.name())))
            .map(|(_, _, pool)| pool)
    }

    /// Every distinct database: its URL (password redacted), whose schemas it holds, its pool.
    pub fn distinct(&self) -> impl Iterator<Item = (&str, &[&'static str], &PgPool)> {
        self.distinct
            .iter()
            .map(|(url, holds, pool)| (url.as_str(), holds.as_slice(), pool))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kassa_schemas::secret::Secret;

    #[tokio::test]
    async fn processors_share_a_pool_unless_their_url_differs_and_joins_are_refused_then() {
        let mut settings = Settings::from_env();
        settings.database_url = Secret::new("postgres://kassa:s3cret@db-main/kassa");
        let one = Databases::lazy(&settings, 1, Duration::from_secs(1)).unwrap();
        assert_eq!(one.distinct().count(), 1);
        assert!(one.joined("kassa reconcile").is_ok());

        settings.processors.databases.payments =
            Some(Secret::new("postgres://kassa:s3cret@db-payments/kassa"));
        let two = Databases::lazy(&settings, 1, Duration::from_secs(1)).unwrap();
        let listed: Vec<(&str, Vec<&str>)> =
            two.distinct().map(|(u, h, _)| (u, h.to_vec())).collect();
        assert_eq!(
            listed,
            [
                (
                    "postgres://kassa:***@db-main/kassa",
                    vec!["api, ops", "inventory", "orders", "expiry", "notifications"]
                ),
                ("postgres://kassa:***@db-payments/kassa", vec!["payments"]),
            ]
        );
        let refused = two.joined("kassa reconcile").unwrap_err().to_string();
        assert!(
            refused.contains("kassa reconcile joins")
                && refused.contains("payments is kept in a database of its own"),
            "{refused}"
        );
        assert!(!refused.contains("s3cret"), "{refused}");
    }
}

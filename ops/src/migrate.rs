//! Applies the SQL migrations under `migrations/` (one Postgres schema per processor, plus `api`
//! and `ops`) to every database kassa's settings name: `KASSA_DATABASE_URL`'s and any processor's
//! own. Each database gets every schema; a processor uses only its own, where its URL points.

use sqlx::PgPool;
use sqlx::migrate::Migrator;

use crate::databases::{Databases, DatabasesError, MAIN_HOLDS};

/// The migrations, embedded at build time so the binary needs no source tree.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Why a database could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// A database could not be reached.
    #[error(transparent)]
    Connect(#[from] DatabasesError),
    /// A migration failed to apply.
    #[error("migration failed on {url}: {source}")]
    Apply {
        /// The database's URL, password redacted.
        url: String,
        /// What failed.
        source: sqlx::migrate::MigrateError,
    },
    /// A processor's runtime tables could not be created.
    #[error("creating a processor's runtime tables on {url}: {source}")]
    RuntimeTables {
        /// The database's URL, password redacted.
        url: String,
        /// The driver's error.
        source: sqlx::Error,
    },
}

/// Connects to `KASSA_DATABASE_URL`'s database (a small pool, for admin work and tests).
pub async fn connect(settings: &crate::settings::Settings) -> Result<PgPool, MigrateError> {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(settings.database_url.expose())
        .await
        .map_err(|source| {
            MigrateError::Connect(DatabasesError::Connect {
                url: settings.database_url_redacted(),
                holds: MAIN_HOLDS.into(),
                source,
            })
        })
}

/// What `run` did to one database.
#[derive(Debug, Clone)]
pub struct Migrated {
    /// The database's URL, password redacted.
    pub url: String,
    /// Whose schemas kassa uses there.
    pub holds: Vec<&'static str>,
    /// Migrations applied now.
    pub applied: usize,
}

/// Applies every pending migration to each database, then makes sure every processor
/// (consumer group) has its runtime tables there; says what it did to each.
pub async fn run_all(databases: &Databases) -> Result<Vec<Migrated>, MigrateError> {
    let mut done = Vec::new();
    for (url, holds, pool) in databases.distinct() {
        done.push(Migrated {
            url: url.to_owned(),
            holds: holds.to_vec(),
            applied: run_on(pool, url).await?,
        });
    }
    Ok(done)
}

/// Brings the one database of `pool` up to date; how many migrations it applied.
pub async fn run(pool: &PgPool) -> Result<usize, MigrateError> {
    run_on(pool, "the database").await
}

/// Brings the database at `url` (password redacted, for errors) up to date; how many migrations
/// it applied.
async fn run_on(pool: &PgPool, url: &str) -> Result<usize, MigrateError> {
    let before = applied(pool).await;
    MIGRATOR
        .run(pool)
        .await
        .map_err(|source| MigrateError::Apply {
            url: url.to_owned(),
            source,
        })?;
    for group in kassa_processors::ConsumerGroup::ALL {
        sqlx::query("SELECT public.kassa_create_runtime_tables($1)")
            .bind(group.name())
            .execute(pool)
            .await
            .map_err(|source| MigrateError::RuntimeTables {
                url: url.to_owned(),
                source,
            })?;
    }
    Ok(applied(pool).await.saturating_sub(before))
}

async fn applied(pool: &PgPool) -> usize {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM _sqlx_migrations WHERE success")
        .fetch_one(pool)
        .await
        .map(|n| n as usize)
        .unwrap_or(0)
}

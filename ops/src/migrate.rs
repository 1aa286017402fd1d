//! Applies the SQL migrations under `migrations/` (one Postgres schema per processor, plus `api`).

use sqlx::PgPool;
use sqlx::migrate::Migrator;

/// The migrations, embedded at build time so the binary needs no source tree.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Why the database could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The database could not be reached.
    #[error("cannot connect to PostgreSQL at {url}: {source}")]
    Connect {
        /// The database URL, password redacted.
        url: String,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// A migration failed to apply.
    #[error("migration failed: {0}")]
    Apply(#[from] sqlx::migrate::MigrateError),
    /// A processor's runtime tables could not be created.
    #[error("creating a processor's runtime tables: {0}")]
    RuntimeTables(sqlx::Error),
}

/// Connects to the database (a small pool, for admin work).
pub async fn connect(settings: &crate::settings::Settings) -> Result<PgPool, MigrateError> {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect(settings.database_url.expose())
        .await
        .map_err(|source| MigrateError::Connect {
            url: settings.database_url_redacted(),
            source,
        })
}

/// Applies every pending migration, then makes sure every processor (consumer group) has its
/// runtime tables; returns how many migrations were applied now.
pub async fn run(pool: &PgPool) -> Result<usize, MigrateError> {
    let before = applied(pool).await;
    MIGRATOR.run(pool).await?;
    for group in kassa_processors::ConsumerGroup::ALL {
        sqlx::query("SELECT public.kassa_create_runtime_tables($1)")
            .bind(group.name())
            .execute(pool)
            .await
            .map_err(MigrateError::RuntimeTables)?;
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

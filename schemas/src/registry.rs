//! Schema Registry administration: register every topic's schema under `<topic>-value`, pin its
//! compatibility to BACKWARD_TRANSITIVE, and check a set of schemas against what is registered.

use std::path::Path;

use schema_registry_converter::async_impl::schema_registry::{is_compatible_schema, post_schema};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{SchemaType, SuppliedSchema};
use serde_json::json;

use crate::codec::{sr_settings, supplied};
use crate::topics::Topic;

/// The compatibility level kassa holds every subject to.
pub const COMPATIBILITY: &str = "BACKWARD_TRANSITIVE";

/// Why registry administration failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The registry refused or could not be reached.
    #[error("schema registry: {0}")]
    Registry(#[from] SRCError),
    /// A plain HTTP call to the registry failed.
    #[error("schema registry {what}: {detail}")]
    Http {
        /// What was being done.
        what: String,
        /// The status or transport error.
        detail: String,
    },
    /// A schema file could not be read or is not valid Avro.
    #[error("schema file {path}: {detail}")]
    File {
        /// The file.
        path: String,
        /// What is wrong.
        detail: String,
    },
}

/// A subject and the id the registry gave its current schema.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// `<topic>-value`.
    pub subject: String,
    /// The registry's schema id (what goes on the wire).
    pub id: u32,
}

/// The verdict on one subject from `check`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Compatible with every registered version.
    Compatible,
    /// The subject does not exist yet: the schema would be its first version.
    NewSubject,
    /// Incompatible with a registered version: registering it would be refused.
    Incompatible,
}

/// Registry administration against one registry URL.
pub struct Registry {
    url: String,
    http: reqwest::Client,
}

impl Registry {
    /// A client for the registry at `url` (e.g. `http://…/apis/ccompat/v7`).
    pub fn new(url: &str) -> Self {
        let http = crate::registry_link::client_builder(std::time::Duration::from_secs(10))
            .build()
            .expect("an HTTP client with the checked access builds");
        Self {
            url: url.trim_end_matches('/').to_owned(),
            http,
        }
    }

    /// Registers this build's schema of every topic and pins each subject to BACKWARD_TRANSITIVE.
    /// Idempotent: an unchanged schema keeps its id; an incompatible one is refused.
    pub async fn register_all(&self) -> Result<Vec<Registered>, RegistryError> {
        let settings = sr_settings(&self.url)?;
        let mut out = Vec::new();
        for topic in Topic::ALL {
            let subject = topic.subject();
            // Pin the level before registering so the registration itself is checked; a subject
            // that does not exist yet takes the level right after its first version.
            let pinned = self.set_compatibility(&subject).await.is_ok();
            let registered = post_schema(&settings, subject.clone(), supplied(topic)).await?;
            if !pinned {
                self.set_compatibility(&subject).await?;
            }
            out.push(Registered {
                subject,
                id: registered.id,
            });
        }
        Ok(out)
    }

    /// Checks each topic's schema from `dir/<topic>.avsc` (or this build's, when `dir` is None)
    /// against the registered versions under the subject's compatibility level.
    pub async fn check_all(
        &self,
        dir: Option<&Path>,
    ) -> Result<Vec<(String, Verdict)>, RegistryError> {
        let settings = sr_settings(&self.url)?;
        let mut out = Vec::new();
        for topic in Topic::ALL {
            let schema = match dir {
                Some(dir) => read_schema_file(&dir.join(format!("{}.avsc", topic.base_name())))?,
                None => topic.schema_json().to_owned(),
            };
            let subject = topic.subject();
            let verdict = if !self.subject_exists(&subject).await? {
                Verdict::NewSubject
            } else if is_compatible_schema(
                &settings,
                subject.clone(),
                SuppliedSchema::new(None, SchemaType::Avro, schema),
            )
            .await?
            {
                Verdict::Compatible
            } else {
                Verdict::Incompatible
            };
            out.push((subject, verdict));
        }
        Ok(out)
    }

    /// The compatibility level configured for `subject`, if any.
    pub async fn compatibility(&self, subject: &str) -> Result<Option<String>, RegistryError> {
        let url = format!("{}/config/{subject}", self.url);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| http_error("GET config", e))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let body: serde_json::Value = checked(response, "GET config")
            .await?
            .json()
            .await
            .map_err(|e| http_error("GET config", e))?;
        // Confluent answers `compatibilityLevel`; Apicurio also `compatibility`.
        Ok(body["compatibilityLevel"]
            .as_str()
            .or(body["compatibility"].as_str())
            .map(str::to_owned))
    }

    async fn set_compatibility(&self, subject: &str) -> Result<(), RegistryError> {
        let url = format!("{}/config/{subject}", self.url);
        let response = self
            .http
            .put(&url)
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .json(&json!({ "compatibility": COMPATIBILITY }))
            .send()
            .await
            .map_err(|e| http_error("PUT config", e))?;
        checked(response, "PUT config").await.map(drop)
    }

    async fn subject_exists(&self, subject: &str) -> Result<bool, RegistryError> {
        let url = format!("{}/subjects/{subject}/versions", self.url);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| http_error("GET versions", e))?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(false);
        }
        checked(response, "GET versions").await.map(|_| true)
    }
}

fn read_schema_file(path: &Path) -> Result<String, RegistryError> {
    let file_error = |detail: String| RegistryError::File {
        path: path.display().to_string(),
        detail,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
    apache_avro::Schema::parse_str(&text).map_err(|e| file_error(e.to_string()))?;
    Ok(text)
}

/// A transport error with its causes (a refused certificate is a cause of "error sending
/// request"), without the URL.
fn http_error(what: &str, e: reqwest::Error) -> RegistryError {
    let e = e.without_url();
    let mut detail = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        detail.push_str(": ");
        detail.push_str(&c.to_string());
        cause = c.source();
    }
    RegistryError::Http {
        what: what.to_owned(),
        detail,
    }
}

async fn checked(
    response: reqwest::Response,
    what: &str,
) -> Result<reqwest::Response, RegistryError> {
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    Err(RegistryError::Http {
        what: what.to_owned(),
        detail: format!("{status}: {}", body.chars().take(300).collect::<String>()),
    })
}

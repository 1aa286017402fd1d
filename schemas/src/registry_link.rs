//! How kassa reaches the Schema Registry: its URL (`KASSA_SCHEMA_REGISTRY_URL`, `https://` for
//! TLS) plus the deployment's access, read once per process from the environment: basic auth
//! (`KASSA_SCHEMA_REGISTRY_USERNAME` and `KASSA_SCHEMA_REGISTRY_PASSWORD`) or a bearer token
//! (`KASSA_SCHEMA_REGISTRY_TOKEN`), and a CA of one's own (`KASSA_SCHEMA_REGISTRY_CA`, a PEM file)
//! besides the system's. Every registry client kassa makes (the codec's, the administration's)
//! starts from [`client_builder`]; credentials travel as a default header marked sensitive and
//! are never printed.

use std::sync::OnceLock;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};

/// Basic auth: the user.
pub const USERNAME_VARIABLE: &str = "KASSA_SCHEMA_REGISTRY_USERNAME";
/// Basic auth: the password.
pub const PASSWORD_VARIABLE: &str = "KASSA_SCHEMA_REGISTRY_PASSWORD";
/// A bearer token (instead of basic auth).
pub const TOKEN_VARIABLE: &str = "KASSA_SCHEMA_REGISTRY_TOKEN";
/// A PEM file of CAs to trust besides the system's.
pub const CA_VARIABLE: &str = "KASSA_SCHEMA_REGISTRY_CA";

/// Why the registry access settings cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryLinkError {
    /// The CA file could not be read or holds no certificate.
    #[error("schema registry: {CA_VARIABLE}={path}: {reason}")]
    Ca {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The credentials do not make one way of logging in.
    #[error("schema registry: {0}")]
    Credentials(&'static str),
}

/// The deployment's access to the registry.
#[derive(Clone, Default)]
pub struct Access {
    /// The `Authorization` header's value, if any (never printed).
    authorization: Option<HeaderValue>,
    /// CAs to trust besides the system's.
    roots: Vec<reqwest::Certificate>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("credentials", &self.authorization.is_some())
            .field("roots", &self.roots.len())
            .finish()
    }
}

impl Access {
    /// The access `variable` (a lookup of the environment) describes.
    pub fn parse(variable: impl Fn(&str) -> Option<String>) -> Result<Self, RegistryLinkError> {
        let set = |name: &str| variable(name).filter(|v| !v.is_empty());
        let authorization = match (
            set(USERNAME_VARIABLE),
            set(PASSWORD_VARIABLE),
            set(TOKEN_VARIABLE),
        ) {
            (None, None, None) => None,
            (Some(user), password, None) => {
                use base64::Engine;
                let pair = format!("{user}:{}", password.unwrap_or_default());
                let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
                Some(format!("Basic {encoded}"))
            }
            (None, None, Some(token)) => Some(format!("Bearer {token}")),
            (None, Some(_), None) => {
                return Err(RegistryLinkError::Credentials(
                    "KASSA_SCHEMA_REGISTRY_PASSWORD is set without KASSA_SCHEMA_REGISTRY_USERNAME",
                ));
            }
            (_, _, Some(_)) => {
                return Err(RegistryLinkError::Credentials(
                    "set a user and password or a token (KASSA_SCHEMA_REGISTRY_TOKEN), not both",
                ));
            }
        };
        let authorization = authorization
            .map(|value| {
                let mut value = HeaderValue::from_str(&value).map_err(|_| {
                    RegistryLinkError::Credentials(
                        "the credentials hold characters an HTTP header cannot",
                    )
                })?;
                value.set_sensitive(true);
                Ok(value)
            })
            .transpose()?;
        let roots = match set(CA_VARIABLE) {
            None => Vec::new(),
            Some(path) => {
                let ca = |reason: String| RegistryLinkError::Ca {
                    path: path.clone(),
                    reason,
                };
                let pem = std::fs::read(&path).map_err(|e| ca(e.to_string()))?;
                let roots = reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| ca(format!("not PEM certificates: {e}")))?;
                if roots.is_empty() {
                    return Err(ca("holds no certificate".into()));
                }
                roots
            }
        };
        Ok(Self {
            authorization,
            roots,
        })
    }

    /// The access of this process's environment (read once; later calls give the same).
    pub fn from_env() -> Result<&'static Access, RegistryLinkError> {
        static READ: OnceLock<Result<Access, RegistryLinkError>> = OnceLock::new();
        READ.get_or_init(|| Self::parse(|name| std::env::var(name).ok()))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Whether requests carry credentials.
    pub fn has_credentials(&self) -> bool {
        self.authorization.is_some()
    }

    /// An HTTP client builder with this access: the credentials as a default header, the CAs
    /// added, answers bounded by `timeout`.
    pub fn client_builder(&self, timeout: Duration) -> reqwest::ClientBuilder {
        let mut headers = HeaderMap::new();
        if let Some(value) = &self.authorization {
            headers.insert(AUTHORIZATION, value.clone());
        }
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .default_headers(headers);
        for root in &self.roots {
            builder = builder.add_root_certificate(root.clone());
        }
        builder
    }
}

/// An HTTP client builder for the registry with this process's access (a process that could not
/// read it stops at startup, in `kassa`'s main; a library caller that did not check gets none).
pub fn client_builder(timeout: Duration) -> reqwest::ClientBuilder {
    Access::from_env()
        .cloned()
        .unwrap_or_default()
        .client_builder(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(pairs: &'static [(&'static str, &'static str)]) -> Result<Access, RegistryLinkError> {
        Access::parse(|name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn basic_auth_or_a_token_becomes_a_sensitive_header() {
        let basic = from(&[(USERNAME_VARIABLE, "kassa"), (PASSWORD_VARIABLE, "s3cret")]).unwrap();
        let value = basic.authorization.clone().unwrap();
        assert_eq!(value.to_str().unwrap(), "Basic a2Fzc2E6czNjcmV0");
        assert!(value.is_sensitive());
        assert!(!format!("{value:?}").contains("a2Fzc2E6czNjcmV0"));
        let token = from(&[(TOKEN_VARIABLE, "t0ken")]).unwrap();
        assert_eq!(
            token.authorization.unwrap().to_str().unwrap(),
            "Bearer t0ken"
        );
        assert!(!from(&[]).unwrap().has_credentials());
    }

    #[test]
    fn half_or_double_credentials_and_a_bad_ca_file_are_refused() {
        assert!(from(&[(PASSWORD_VARIABLE, "s3cret")]).is_err());
        assert!(from(&[(USERNAME_VARIABLE, "kassa"), (TOKEN_VARIABLE, "t")]).is_err());
        let missing = from(&[(CA_VARIABLE, "/nonexistent/ca.pem")]).unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/ca.pem"),
            "{missing}"
        );
    }
}

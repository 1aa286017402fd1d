//! Runs kassa's components in one process until told to stop: `kassa run <component>` (one, or
//! `all`), and the benchmark that runs the whole saga in one process. The list of components is
//! the API plus one per consumer group (`kassa_processors::ConsumerGroup::ALL`): a processor added
//! there can be run here without a change.

use kassa_processors::ConsumerGroup;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::settings::Settings;

/// A component `kassa run` can start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Component {
    /// The HTTP API.
    Api,
    /// A stream processor.
    Processor(ConsumerGroup),
}

impl Component {
    /// Every component: the API and every processor.
    pub fn all() -> Vec<Component> {
        std::iter::once(Component::Api)
            .chain(ConsumerGroup::ALL.into_iter().map(Component::Processor))
            .collect()
    }

    /// The names `kassa run` takes: `api`, each processor's name, and `all`.
    pub fn names() -> Vec<&'static str> {
        std::iter::once("api")
            .chain(ConsumerGroup::ALL.into_iter().map(ConsumerGroup::name))
            .chain(["all"])
            .collect()
    }

    /// The components a name stands for (`all`: every one).
    pub fn parse(name: &str) -> Option<Vec<Component>> {
        match name {
            "all" => Some(Component::all()),
            "api" => Some(vec![Component::Api]),
            other => ConsumerGroup::from_name(other).map(|g| vec![Component::Processor(g)]),
        }
    }
}

/// Why a component stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    /// The settings do not make a working component.
    #[error("{0}")]
    Settings(String),
    /// A processor failed.
    #[error(transparent)]
    Processor(#[from] kassa_processors::ProcessorError),
    /// The API failed.
    #[error(transparent)]
    Api(#[from] kassa_api::ServeError),
    /// The processors' operations endpoints failed.
    #[error(transparent)]
    Probes(#[from] crate::probes::ProbesError),
    /// A component panicked.
    #[error("a component panicked: {0}")]
    Panicked(String),
}

/// Components running until [`Running::stop`].
pub struct Running {
    stop: watch::Sender<bool>,
    tasks: JoinSet<Result<(), SupervisorError>>,
}

/// Starts `components` with `settings`, and for the processors among them one set of operations
/// endpoints (`/metrics`, `/health`, `/ready` on `KASSA_OPS_ADDR`).
pub fn start(settings: &Settings, components: &[Component]) -> Result<Running, SupervisorError> {
    let (stop, stopped) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let groups: Vec<ConsumerGroup> = components
        .iter()
        .filter_map(|c| match c {
            Component::Processor(group) => Some(*group),
            Component::Api => None,
        })
        .collect();
    if !groups.is_empty() {
        let settings = settings.clone();
        let mut stopped = stopped.clone();
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        tasks.spawn(async move { Ok(crate::probes::serve(&settings, groups, shutdown).await?) });
    }
    for component in components {
        match *component {
            Component::Processor(group) => {
                let config = settings
                    .processor_config(group)
                    .map_err(SupervisorError::Settings)?;
                let stopped = stopped.clone();
                tasks.spawn(async move { Ok(kassa_processors::run(config, stopped).await?) });
            }
            Component::Api => {
                let config = settings.api_config();
                let mut stopped = stopped.clone();
                let shutdown = async move {
                    let _ = stopped.wait_for(|s| *s).await;
                };
                tasks.spawn(async move { Ok(kassa_api::serve(config, shutdown).await?) });
            }
        }
    }
    Ok(Running { stop, tasks })
}

impl Running {
    /// A handle that stops every component when sent `true` (for a signal handler).
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }

    /// Tells every component to finish what it has in flight and stop.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Waits until every component has stopped; the first failure, if any.
    pub async fn wait(mut self) -> Result<(), SupervisorError> {
        let mut first = Ok(());
        while let Some(done) = self.tasks.join_next().await {
            let result = done
                .map_err(|e| SupervisorError::Panicked(e.to_string()))
                .and_then(|r| r);
            if let Err(e) = result {
                tracing::error!(error = %e, "a component stopped with an error");
                // One failed component stops the others: a half-running process is worse.
                self.stop.send_replace(true);
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

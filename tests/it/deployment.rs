//! How kassa is deployed, read as a user would check it without a Docker engine or a cluster:
//! `docker-compose.yml` and the `Dockerfile` agree with `scripts/versions.env` and run the whole
//! saga (every service health-checked, the processors not behind a profile, setup idempotent);
//! the Helm chart lints, renders each processor as a StatefulSet whose pod name is its static
//! membership id, and refuses more instances than partitions; `kassa health` (the image's health
//! check) tells a healthy component from a silent one.

use crate::common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kassa_processors::ConsumerGroup;
use serde_json::Value;

use crate::common::processes::Component;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `scripts/versions.env` as its shell reads it with nothing overridden (`${X:-default}` is
/// the default).
fn versions() -> HashMap<String, String> {
    read("scripts/versions.env")
        .lines()
        .filter_map(|line| {
            let line = line.split('#').next()?.trim();
            let (key, value) = line.split_once('=')?;
            let value = value.trim();
            let value = match value.strip_prefix("${").and_then(|v| v.strip_suffix('}')) {
                Some(expansion) => expansion.split_once(":-").map_or("", |(_, d)| d),
                None => value,
            };
            Some((key.to_owned(), value.to_owned()))
        })
        .collect()
}

/// YAML documents as JSON values, through PyYAML in the API tools' Python (`scripts/dev up`).
fn yaml_documents(text: &str) -> Vec<Value> {
    let tools = std::env::var("KASSA_TEST_API_TOOLS").expect(
        "KASSA_TEST_API_TOOLS: the Python tools of `scripts/dev up` (`scripts/dev env --test`)",
    );
    let mut child = Command::new(Path::new(&tools).join("python"))
        .args([
            "-c",
            "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python runs");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "not YAML: {text}");
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn compose_and_the_dockerfile_use_the_versions_and_ports_of_versions_env() {
    let v = versions();
    let compose = &yaml_documents(&read("docker-compose.yml"))[0];
    let services = &compose["services"];
    let image = |service: &str| {
        services[service]["image"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(
        image("kafka"),
        format!("apache/kafka:{}", v["KAFKA_VERSION"])
    );
    assert_eq!(
        image("postgres"),
        format!("postgres:{}", v["POSTGRES_MAJOR"])
    );
    assert_eq!(
        image("registry"),
        format!("apicurio/apicurio-registry:{}", v["APICURIO_VERSION"])
    );
    assert_eq!(
        image("redis"),
        format!("redis:{}", v["REDIS_IMAGE_VERSION"])
    );
    for service in ["localstripe", "localstripe-webhooks"] {
        assert_eq!(
            image(service),
            format!("adrienverge/localstripe:{}", v["LOCALSTRIPE_VERSION"])
        );
    }
    let published = |service: &str| -> Vec<String> {
        services[service]["ports"]
            .as_array()
            .map(|ports| {
                ports
                    .iter()
                    .map(|p| p.as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    for (service, port, inside) in [
        ("kafka", "KAFKA_PORT", "19092"),
        ("postgres", "POSTGRES_PORT", "5432"),
        ("registry", "REGISTRY_PORT", "8080"),
        ("redis", "REDIS_PORT", "6379"),
        ("localstripe", "LOCALSTRIPE_PORT", "8420"),
        ("api", "API_PORT", "8080"),
    ] {
        assert_eq!(
            published(service),
            [format!("127.0.0.1:{}:{inside}", v[port])],
            "{service}'s port"
        );
    }
    let every_port: Vec<String> = services
        .as_object()
        .unwrap()
        .keys()
        .flat_map(|s| published(s))
        .collect();
    assert!(
        every_port.iter().all(|p| p.starts_with("127.0.0.1:")),
        "published on loopback only: {every_port:?}"
    );

    let dockerfile = read("Dockerfile");
    for arg in ["RUST_IMAGE_VERSION", "DEBIAN_RELEASE"] {
        assert!(
            dockerfile.contains(&format!("ARG {arg}={}\n", v[arg])),
            "the Dockerfile's {arg} is versions.env's {}",
            v[arg]
        );
    }
}

#[test]
fn compose_runs_the_whole_saga_with_every_service_health_checked() {
    let compose = &yaml_documents(&read("docker-compose.yml"))[0];
    let services = compose["services"].as_object().unwrap();
    let one_shot = ["kassa-setup", "localstripe-webhooks"];
    for (name, service) in services {
        assert!(
            service.get("profiles").is_none(),
            "{name} starts with `docker compose up`, behind no profile"
        );
        let check = &service["healthcheck"];
        if one_shot.contains(&name.as_str()) {
            assert!(
                service["restart"]
                    .as_str()
                    .unwrap_or_default()
                    .starts_with("on-failure"),
                "{name} runs once, again on failure"
            );
            continue;
        }
        // kassa's own services use the image's HEALTHCHECK unless they name their own.
        let kassa = service["image"] == "kassa:dev";
        assert!(
            check["disable"] != true && (check["test"].is_array() || kassa),
            "{name} has a health check"
        );
    }
    let dockerfile = read("Dockerfile");
    assert!(
        dockerfile.contains(r#"HEALTHCHECK "#) && dockerfile.contains(r#"CMD ["kassa", "health"]"#)
    );
    assert_eq!(
        services["api"]["healthcheck"]["test"],
        serde_json::json!(["CMD", "kassa", "health", "--api"])
    );
    for group in ConsumerGroup::ALL {
        let service = &services[group.name()];
        assert_eq!(service["command"], serde_json::json!(["run", group.name()]));
        assert_eq!(
            service["depends_on"]["kassa-setup"]["condition"],
            "service_completed_successfully",
            "{} starts after the setup",
            group.name()
        );
    }
    let setup = services["kassa-setup"]["command"][0].as_str().unwrap();
    for step in [
        "kassa migrate",
        "kassa topics create",
        "kassa schemas register",
        "kassa seed --once",
    ] {
        assert!(setup.contains(step), "the setup runs {step}: {setup}");
    }
    assert!(
        !setup.contains("kassa seed\n"),
        "the demo catalog is not seeded again on every start: {setup}"
    );
    let secret = compose["x-kassa-env"]["KASSA_STRIPE_WEBHOOK_SECRET"]
        .as_str()
        .unwrap();
    let hooks = services["localstripe-webhooks"]["command"][0]
        .as_str()
        .unwrap();
    assert!(
        hooks.contains(secret) && hooks.contains("http://api:8080/webhooks/stripe"),
        "localstripe signs its webhooks with the API's secret: {hooks}"
    );
}

#[test]
fn the_image_builds_its_dependencies_in_a_layer_of_their_own_and_runs_as_nobody_special() {
    let dockerfile = read("Dockerfile");
    let cook = dockerfile
        .find("cargo chef cook")
        .expect("a dependency layer");
    let sources = dockerfile[cook..]
        .find("COPY . .")
        .expect("the sources after it");
    assert!(dockerfile[cook + sources..].contains("cargo build --release --locked --bin kassa"));
    let runtime = &dockerfile[dockerfile.rfind("\nFROM ").unwrap()..];
    assert!(
        runtime.starts_with("\nFROM debian:${DEBIAN_RELEASE}-slim"),
        "{runtime}"
    );
    assert!(
        runtime.contains("USER 10001"),
        "the runtime stage runs as a user of its own"
    );
    assert!(
        !runtime.contains("cargo"),
        "no toolchain in the runtime image"
    );
}

/// The chart's directory.
fn chart() -> String {
    root()
        .join("deploy/helm/kassa")
        .to_string_lossy()
        .into_owned()
}

/// Runs the Helm of `scripts/dev up helm` with `args`: its success and what it wrote.
fn helm(args: &[&str]) -> (bool, String, String) {
    let helm = std::env::var("KASSA_TEST_HELM")
        .expect("KASSA_TEST_HELM: the Helm of `scripts/dev up helm` (`scripts/dev env --test`)");
    let output = Command::new(helm).args(args).output().expect("helm runs");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// The values every render needs (a cluster's services).
const REQUIRED: [&str; 4] = [
    "--set",
    "kafka.brokers=kafka-0.kafka:9093",
    "--set",
    "schemaRegistry.url=https://registry/apis/ccompat/v7",
];

/// The chart rendered with the required values and `more`, as objects.
fn rendered(more: &[&str]) -> Vec<Value> {
    let chart = chart();
    let mut args = vec!["template", "shop", chart.as_str()];
    args.extend(REQUIRED);
    args.extend(more);
    let (ok, out, err) = helm(&args);
    assert!(ok, "helm template: {err}");
    yaml_documents(&out)
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

fn env_of(container: &Value) -> HashMap<String, Value> {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["name"].as_str().unwrap().to_owned(), e.clone()))
        .collect()
}

#[test]
fn the_chart_lints_and_renders_the_api_each_processor_and_the_setup() {
    let chart = chart();
    let mut lint = vec!["lint", chart.as_str(), "--strict"];
    lint.extend(REQUIRED);
    let (ok, out, err) = helm(&lint);
    assert!(ok, "helm lint: {out}{err}");

    let objects = rendered(&[]);
    let workloads: Vec<&Value> = of_kind(&objects, "Deployment")
        .into_iter()
        .chain(of_kind(&objects, "StatefulSet"))
        .chain(of_kind(&objects, "Job"))
        .collect();
    for workload in &workloads {
        let name = workload["metadata"]["name"].as_str().unwrap();
        let pod = &workload["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        for container in pod["containers"].as_array().unwrap() {
            let resources = &container["resources"];
            assert!(
                resources["requests"]["cpu"].is_string()
                    && resources["limits"]["memory"].is_string(),
                "{name}: resources set"
            );
            let env = env_of(container);
            for secret in [
                "KASSA_DATABASE_URL",
                "KASSA_REDIS_URL",
                "KASSA_STRIPE_SECRET_KEY",
            ] {
                assert!(
                    env[secret]["valueFrom"]["secretKeyRef"]["key"].is_string()
                        && env[secret].get("value").is_none(),
                    "{name}: {secret} from a Secret"
                );
            }
            assert_eq!(env["KASSA_KAFKA_BROKERS"]["value"], "kafka-0.kafka:9093");
        }
    }

    let api = of_kind(&objects, "Deployment");
    assert_eq!(api.len(), 1);
    let api_name = api[0]["metadata"]["name"].as_str().unwrap();
    let container = &api[0]["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["args"], serde_json::json!(["run", "api"]));
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/health");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/ready");
    let hpa = of_kind(&objects, "HorizontalPodAutoscaler");
    assert_eq!(hpa.len(), 1);
    assert_eq!(hpa[0]["spec"]["scaleTargetRef"]["name"], api_name);
    assert_eq!(hpa[0]["spec"]["metrics"][0]["resource"]["name"], "cpu");

    let budgets: Vec<&str> = of_kind(&objects, "PodDisruptionBudget")
        .iter()
        .map(|p| p["metadata"]["name"].as_str().unwrap())
        .collect();
    assert!(budgets.contains(&api_name), "{budgets:?}");
    let sets = of_kind(&objects, "StatefulSet");
    assert_eq!(sets.len(), ConsumerGroup::ALL.len());
    for group in ConsumerGroup::ALL {
        let set = sets
            .iter()
            .find(|s| {
                s["spec"]["template"]["spec"]["containers"][0]["args"]
                    == serde_json::json!(["run", group.name()])
            })
            .unwrap_or_else(|| panic!("a StatefulSet runs {}", group.name()));
        let name = set["metadata"]["name"].as_str().unwrap();
        let container = &set["spec"]["template"]["spec"]["containers"][0];
        let env = env_of(container);
        assert_eq!(
            env["KASSA_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name",
            "{name}: the pod's name is its static membership id"
        );
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/health");
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/ready");
        assert_eq!(container["livenessProbe"]["httpGet"]["port"], "ops");
        assert!(
            budgets.contains(&name),
            "{name} has a PodDisruptionBudget: {budgets:?}"
        );
        let governing = of_kind(&objects, "Service")
            .into_iter()
            .find(|s| s["metadata"]["name"] == set["spec"]["serviceName"])
            .expect("its governing Service");
        assert_eq!(governing["spec"]["clusterIP"], "None");
    }

    let jobs = of_kind(&objects, "Job");
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        jobs[0]["metadata"]["annotations"]["helm.sh/hook"],
        "pre-install,pre-upgrade"
    );
    let setup = jobs[0]["spec"]["template"]["spec"]["containers"][0]["command"].to_string();
    for step in [
        "kassa migrate",
        "kassa topics create",
        "kassa schemas register",
    ] {
        assert!(setup.contains(step), "the setup job runs {step}: {setup}");
    }
}

#[test]
fn the_chart_passes_kafka_properties_a_ca_and_own_databases_through() {
    let objects = rendered(&[
        "--set",
        "kafka.config.security\\.protocol=SASL_SSL",
        "--set",
        "caBundle.secretName=kassa-ca",
        "--set",
        "secretEnv.KASSA_ORDERS_DATABASE_URL.secret=kassa-orders",
        "--set",
        "secretEnv.KASSA_ORDERS_DATABASE_URL.key=url",
    ]);
    let set = of_kind(&objects, "StatefulSet")[0];
    let pod = &set["spec"]["template"]["spec"];
    let env = env_of(&pod["containers"][0]);
    assert_eq!(env["KASSA_KAFKA__SECURITY_PROTOCOL"]["value"], "SASL_SSL");
    assert_eq!(env["KASSA_REDIS_CA"]["value"], "/etc/kassa/ca/ca.pem");
    assert_eq!(
        env["KASSA_ORDERS_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"],
        "kassa-orders"
    );
    let volumes = pod["volumes"].to_string();
    assert!(volumes.contains("\"secretName\":\"kassa-ca\""), "{volumes}");
}

#[test]
fn the_chart_refuses_more_instances_than_partitions_missing_services_and_wrong_values() {
    let chart = chart();
    let mut args = vec!["template", "shop", chart.as_str()];
    args.extend(REQUIRED);
    args.extend([
        "--set",
        "topics.partitions=6",
        "--set",
        "processors.orders.replicas=7",
    ]);
    let (ok, _, err) = helm(&args);
    assert!(!ok);
    assert!(
        err.contains("processors.orders.replicas is 7, but its topics have 6 partitions"),
        "{err}"
    );
    let (ok, _, err) = helm(&["template", "shop", chart.as_str()]);
    assert!(!ok);
    assert!(err.contains("kafka.brokers"), "{err}");
    for (value, refusal) in [
        ("processors.orders.replicas=two", "got string, want integer"),
        (
            "processors.billing.replicas=1",
            "'inventory', 'orders', 'payments', 'expiry', 'notifications'",
        ),
    ] {
        let mut args = vec!["template", "shop", chart.as_str(), "--set", value];
        args.extend(REQUIRED);
        let (ok, _, err) = helm(&args);
        assert!(!ok && err.contains(refusal), "{value}: {err}");
    }
}

#[test]
fn the_chart_is_of_this_kassa() {
    let chart = yaml_documents(&read("deploy/helm/kassa/Chart.yaml"));
    assert_eq!(chart[0]["appVersion"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test(flavor = "multi_thread")]
async fn kassa_health_tells_a_healthy_component_from_a_silent_one() {
    common::setup().await;
    let (_api, base) = Component::start_api(&[]);
    let addr = base.trim_start_matches("http://").to_owned();
    common::saga::wait_for(Duration::from_secs(60), "kassa health --api passes", || {
        let addr = addr.clone();
        async move {
            let (ok, _) = common::run_kassa(&["health", "--api"], &[("KASSA_HTTP_ADDR", &addr)]);
            ok
        }
    })
    .await;
    let silent = format!("127.0.0.1:{}", common::http::free_port());
    let (ok, text) = common::run_kassa(&["health"], &[("KASSA_OPS_ADDR", &silent)]);
    assert!(!ok);
    assert!(
        text.contains(&format!(
            "unhealthy: http://{silent}/health does not answer"
        )),
        "{text}"
    );
}

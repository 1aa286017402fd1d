//! `kassa schemas check` against the real registry: today's schemas pass; a change that would break
//! readers under BACKWARD_TRANSITIVE is refused, with the subject named and a non-zero exit.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::setup;

fn kassa(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_kassa"))
        .args(args)
        .output()
        .expect("run kassa")
}

/// A temporary copy of the schema files, removed when dropped.
struct SchemaCopy(PathBuf);

impl SchemaCopy {
    /// The directory, as `kassa schemas check --dir` takes it.
    fn arg(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temp path")
    }
}

impl Drop for SchemaCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A copy of `schemas/avro` in a fresh directory, with `edit` applied to one file's JSON.
fn edited_copy(file: &str, edit: impl FnOnce(&mut serde_json::Value)) -> SchemaCopy {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/avro");
    let dir = std::env::temp_dir().join(format!("kassa-schemas-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let copy = SchemaCopy(dir.clone());
    for entry in std::fs::read_dir(&source).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    let target = dir.join(file);
    let mut schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&target).unwrap()).unwrap();
    edit(&mut schema);
    std::fs::write(&target, serde_json::to_string_pretty(&schema).unwrap()).unwrap();
    copy
}

/// The fields of the payload branch `record` in an envelope schema.
fn branch_fields<'a>(
    schema: &'a mut serde_json::Value,
    record: &str,
) -> &'a mut Vec<serde_json::Value> {
    let payload = schema["fields"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|f| f["name"] == "payload")
        .unwrap();
    let branch = payload["type"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|b| b["name"] == record)
        .unwrap();
    branch["fields"].as_array_mut().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn the_schemas_of_this_build_are_compatible() {
    setup().await;
    let output = kassa(&["schemas", "check"]);
    assert!(
        output.status.success(),
        "{}{}",
        stdout(&output),
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        stdout(&output).matches(": compatible").count(),
        8,
        "{}",
        stdout(&output)
    );
}

#[tokio::test]
async fn a_new_field_without_default_is_refused() {
    setup().await;
    let dir = edited_copy("orders.requests.avsc", |schema| {
        branch_fields(schema, "CancelRequested")
            .push(serde_json::json!({"name": "channel", "type": "string"}));
    });
    let output = kassa(&["schemas", "check", "--dir", dir.arg()]);
    assert!(
        !output.status.success(),
        "an incompatible change must fail the check"
    );
    assert!(
        stdout(&output).contains("orders.requests-value: INCOMPATIBLE"),
        "{}",
        stdout(&output)
    );
    assert_eq!(stdout(&output).matches(": compatible").count(), 7);
}

#[tokio::test]
async fn a_changed_field_type_is_refused() {
    setup().await;
    let dir = edited_copy("inventory.events.avsc", |schema| {
        let quantity = branch_fields(schema, "Reserved")
            .iter_mut()
            .find(|f| f["name"] == "quantity")
            .unwrap();
        quantity["type"] = serde_json::json!("string");
    });
    let output = kassa(&["schemas", "check", "--dir", dir.arg()]);
    assert!(!output.status.success());
    assert!(
        stdout(&output).contains("inventory.events-value: INCOMPATIBLE"),
        "{}",
        stdout(&output)
    );
}

#[tokio::test]
async fn a_new_field_with_a_default_is_accepted() {
    setup().await;
    let dir = edited_copy("orders.requests.avsc", |schema| {
        branch_fields(schema, "CancelRequested")
            .push(serde_json::json!({"name": "channel", "type": "string", "default": "web"}));
    });
    let output = kassa(&["schemas", "check", "--dir", dir.arg()]);
    assert!(output.status.success(), "{}", stdout(&output));
    assert!(stdout(&output).contains("orders.requests-value: compatible"));
}

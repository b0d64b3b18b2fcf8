//! servalctl's resource verbs over any datastore: `apply` / `create` / `get` / `delete`, with
//! resources from YAML or JSON (several documents per file), validated before anything is
//! written, and errors that name the file, the document and the field.

pub mod bgp;
pub mod calico;
pub mod ipam;
pub mod kinds;
pub mod parity;

use std::fmt::Write as _;

use serde_json::Value;

use crate::datastore::{AnyBackend, Datastore, DatastoreError};
use kinds::Kind;

/// Why a servalctl command failed.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The input could not be read or parsed.
    #[error("{file}: {message}")]
    Input {
        /// File name (or `-`).
        file: String,
        /// What is wrong, with document, line and field where known.
        message: String,
    },
    /// Unknown kind name.
    #[error("unknown resource kind {0:?}; known: {known}", known = kinds::names())]
    UnknownKind(String),
    /// The datastore refused.
    #[error(transparent)]
    Datastore(#[from] DatastoreError),
}

/// What to do with each document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// Create or update.
    Apply,
    /// Create; fail if it exists.
    Create,
    /// Update; fail if it does not exist.
    Replace,
    /// Delete.
    Delete,
    /// Parse and validate only.
    Validate,
}

/// One parsed document.
#[derive(Debug)]
pub struct Document {
    /// Its kind.
    pub kind: Kind,
    /// The object (apiVersion/kind/metadata/spec).
    pub object: Value,
    /// 1-based position in its file.
    pub index: usize,
}

/// YAML documents of a file with the line each starts on (1-based).
fn yaml_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut cur = String::new();
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        if line.trim_end() == "---" || line.starts_with("--- ") {
            if !cur.trim().is_empty() {
                docs.push((start, std::mem::take(&mut cur)));
            }
            cur.clear();
            start = i + 2;
            continue;
        }
        cur.push_str(line);
        cur.push('\n');
    }
    if !cur.trim().is_empty() {
        docs.push((start, cur));
    }
    docs
}

/// The line of the first field named in a validation message (`spec.blockSize: ...`).
fn line_of_field(doc: &str, message: &str) -> Option<usize> {
    let path = message
        .lines()
        .map(str::trim)
        .find_map(|l| l.split_once(": ").map(|(p, _)| p))
        .filter(|p| p.contains('.') && !p.contains(' '))?;
    let key = path.rsplit('.').next()?.split('[').next()?;
    doc.lines()
        .position(|l| l.contains(&format!("{key}:")))
        .map(|i| i + 1)
}

/// Splits YAML (or JSON) into documents and checks each one's kind and fields; errors name
/// the file, the document, the line (for YAML) and the field.
pub fn parse(source: &str, text: &str) -> Result<Vec<Document>, CtlError> {
    let input = |message: String| CtlError::Input {
        file: source.to_string(),
        message,
    };
    let docs: Vec<(Option<(usize, String)>, Value)> = if text.trim_start().starts_with(['{', '[']) {
        match serde_json::from_str::<Value>(text).map_err(|e| input(e.to_string()))? {
            Value::Array(items) => items.into_iter().map(|v| (None, v)).collect(),
            v => vec![(None, v)],
        }
    } else {
        let mut out = Vec::new();
        for (i, (start, doc)) in yaml_documents(text).into_iter().enumerate() {
            let v: Value = serde_saphyr::from_str(&doc).map_err(|e| {
                let first = e.to_string().lines().next().unwrap_or("").to_string();
                input(format!(
                    "document {} (starting at line {start}): {}",
                    i + 1,
                    first.trim_start_matches("error: ")
                ))
            })?;
            out.push((Some((start, doc)), v));
        }
        out
    };
    let mut out = Vec::new();
    for (i, (yaml, mut object)) in docs.into_iter().enumerate() {
        let index = i + 1;
        if object.is_null() {
            continue;
        }
        let kind_name = object
            .get("kind")
            .and_then(Value::as_str)
            .ok_or_else(|| input(format!("document {index}: no `kind` field")))?
            .to_string();
        let kind_name = kind_name.as_str();
        let kind = kinds::lookup(kind_name).ok_or_else(|| {
            input(format!(
                "document {index}: {}",
                CtlError::UnknownKind(kind_name.into())
            ))
        })?;
        match object.get("apiVersion").and_then(Value::as_str) {
            None | Some(calico::SERVAL_API_VERSION) => {}
            // An operator's Calico YAML applies unchanged; it is stored as Serval's.
            Some(calico::CALICO_API_VERSION) => {
                object["apiVersion"] = Value::String(calico::SERVAL_API_VERSION.into());
            }
            Some(v) => {
                return Err(input(format!(
                    "document {index} ({kind_name}): apiVersion {v:?}: expected {} or {}",
                    calico::SERVAL_API_VERSION,
                    calico::CALICO_API_VERSION
                )));
            }
        }
        if let Err(e) = (kind.check)(&object) {
            let e = calico::explain_unknown_field(kind.name, &e.to_string());
            let at = yaml.and_then(|(start, doc)| {
                (kind.locate)(&doc)
                    .map(|(l, c)| format!(" line {} column {c}", start + l - 1))
                    .or_else(|| line_of_field(&doc, &e).map(|l| format!(" line {}", start + l - 1)))
            });
            return Err(input(format!(
                "document {index} ({kind_name}){}: {e}",
                at.unwrap_or_default()
            )));
        }
        out.push(Document {
            kind,
            object,
            index,
        });
    }
    Ok(out)
}

/// Applies `verb` to each document in order; returns one line per document.
pub async fn run(
    ds: &Datastore<AnyBackend>,
    verb: Verb,
    docs: &[Document],
) -> Result<Vec<String>, CtlError> {
    let mut lines = Vec::new();
    for d in docs {
        let name = d.object["metadata"]["name"].as_str().unwrap_or_default();
        let what = match verb {
            Verb::Validate => "valid",
            Verb::Apply => (d.kind.apply)(ds, d.object.clone(), true, true).await?,
            Verb::Create => (d.kind.apply)(ds, d.object.clone(), true, false).await?,
            Verb::Replace => (d.kind.apply)(ds, d.object.clone(), false, true).await?,
            Verb::Delete => {
                let ns = d.object["metadata"]["namespace"].as_str();
                (d.kind.delete)(ds, ns.map(String::from), name.to_string()).await?;
                "deleted"
            }
        };
        lines.push(format!("{} {name:?} {what}", d.kind.name));
    }
    Ok(lines)
}

/// RFC 7386 merge patch: objects merge, `null` deletes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// A `label` argument servalctl cannot apply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    /// Changing a value needs `--overwrite`, as with kubectl.
    #[error("label {key:?} already has value {old}; use --overwrite to change it")]
    WouldOverwrite {
        /// The label.
        key: String,
        /// Its value now (JSON).
        old: Value,
    },
    /// Neither `key=value` nor `key-`.
    #[error("{0:?}: expected key=value or key-")]
    Syntax(String),
}

/// `label` arguments: `k=v` sets, `k-` removes.
pub fn label_patch(
    args: &[String],
    existing: &Value,
    overwrite: bool,
) -> Result<Value, LabelError> {
    let mut labels = serde_json::Map::new();
    for a in args {
        if let Some(k) = a.strip_suffix('-') {
            labels.insert(k.to_string(), Value::Null);
        } else if let Some((k, v)) = a.split_once('=') {
            if !overwrite && existing.get(k).is_some_and(|old| old != v) {
                return Err(LabelError::WouldOverwrite {
                    key: k.to_string(),
                    old: existing[k].clone(),
                });
            }
            labels.insert(k.to_string(), Value::String(v.to_string()));
        } else {
            return Err(LabelError::Syntax(a.clone()));
        }
    }
    Ok(serde_json::json!({"metadata": {"labels": labels}}))
}

/// Applies a merge patch to one object and writes it back (validated like any write).
pub async fn patch(
    ds: &Datastore<AnyBackend>,
    kind: &Kind,
    namespace: Option<String>,
    name: &str,
    patch: &Value,
) -> Result<&'static str, CtlError> {
    let objects = (kind.list)(ds, namespace.clone()).await?;
    let mut current = objects
        .into_iter()
        .find(|o| o["metadata"]["name"].as_str() == Some(name))
        .ok_or_else(|| DatastoreError::NotFound {
            kind: kind.name.to_string(),
            name: name.to_string(),
        })?;
    merge_patch(&mut current, patch);
    (kind.check)(&current).map_err(|message| CtlError::Input {
        file: "patch".into(),
        message: format!("{} {name:?}: {message}", kind.name),
    })?;
    (kind.apply)(ds, current, false, true).await
}

/// `validate`'s report: every document already passed [`parse`].
pub fn run_offline(docs: &[Document]) -> Vec<String> {
    docs.iter()
        .map(|d| {
            format!(
                "{} {:?} valid",
                d.kind.name,
                d.object["metadata"]["name"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

/// Renders objects as a plain aligned table of name (and namespace) and a few spec fields.
pub fn table(kind: &Kind, objects: &[Value], wide: bool) -> String {
    let columns = if wide {
        kind.wide_columns
    } else {
        kind.columns
    };
    let mut header: Vec<String> = Vec::new();
    if kind.namespaced {
        header.push("NAMESPACE".into());
    }
    header.push("NAME".into());
    header.extend(columns.iter().map(|(h, _)| (*h).to_string()));
    let mut rows = vec![header];
    for o in objects {
        let mut row = Vec::new();
        if kind.namespaced {
            row.push(
                o["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            );
        }
        row.push(o["metadata"]["name"].as_str().unwrap_or("").to_string());
        for (_, pointer) in columns {
            row.push(match o.pointer(pointer) {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
            });
        }
        rows.push(row);
    }
    aligned(&rows)
}

/// Rows as left-aligned columns three spaces apart (calicoctl's plain tables), trailing
/// blanks trimmed.
pub fn aligned<R: AsRef<[String]>>(rows: &[R]) -> String {
    let n = rows.first().map_or(0, |r| r.as_ref().len());
    let widths: Vec<usize> = (0..n)
        .map(|c| rows.iter().map(|r| r.as_ref()[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .as_ref()
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("   ").trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_checked_before_anything_is_written() {
        let text = "apiVersion: serval.dev/v1\nkind: IPPool\nmetadata: {name: a}\nspec: {cidr: 10.1.0.0/16}\n---\n\
                    apiVersion: serval.dev/v1\nkind: BGPPeer\nmetadata: {name: tor}\nspec: {peerIP: 10.0.0.1, asNumber: 65000}\n";
        let docs = parse("pools.yaml", text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].kind.name, "BGPPeer");

        let bad = "apiVersion: serval.dev/v1\nkind: IPPool\nmetadata: {name: a}\nspec: {cidr: 10.1.0.1/16}\n";
        let e = parse("bad.yaml", bad).unwrap_err().to_string();
        assert!(
            e.starts_with("bad.yaml: document 1 (IPPool) line 4:"),
            "{e}"
        );
        assert!(e.contains("spec.cidr"), "{e}");

        let typo =
            "kind: IPPool\nmetadata: {name: a}\nspec: {cidr: 10.1.0.0/16, natOutgonig: true}\n";
        let e = parse("typo.yaml", typo).unwrap_err().to_string();
        assert!(e.contains("natOutgonig"), "{e}");
        assert!(
            e.starts_with("typo.yaml: document 1 (IPPool) line 3 column"),
            "{e}"
        );

        // Lines count from the top of the file, across documents.
        let two = "kind: IPPool\nmetadata: {name: a}\nspec: {cidr: 10.1.0.0/16}\n---\nkind: IPPool\nmetadata:\n  name: b\nspec:\n  cidr: 10.2.0.0/16\n  blockSize: 40\n";
        let e = parse("two.yaml", two).unwrap_err().to_string();
        assert!(
            e.starts_with("two.yaml: document 2 (IPPool) line 10:"),
            "{e}"
        );
        assert!(e.contains("spec.blockSize"), "{e}");
        let wrong_type =
            "kind: IPPool\nmetadata: {name: a}\nspec:\n  cidr: 10.1.0.0/16\n  blockSize: big\n";
        let e = parse("t.yaml", wrong_type).unwrap_err().to_string();
        assert!(
            e.starts_with("t.yaml: document 1 (IPPool) line 5 column"),
            "{e}"
        );
        assert!(e.contains("spec.blockSize"), "{e}");

        let e = parse("x.yaml", "kind: Frobnicator\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown resource kind \"Frobnicator\""), "{e}");
        // Calico's YAML applies unchanged, stored as Serval's.
        let docs = parse("x.yaml", "kind: IPPool\napiVersion: projectcalico.org/v3\nmetadata: {name: a}\nspec: {cidr: 10.1.0.0/16}\n")
            .unwrap();
        assert_eq!(docs[0].object["apiVersion"], "serval.dev/v1");
        // A Calico field Serval lacks is named as such, with its line.
        let e = parse("x.yaml", "apiVersion: projectcalico.org/v3\nkind: BGPPeer\nmetadata: {name: a}\nspec: {peerIP: 10.0.0.1, asNumber: 65000, reversePeering: Manual}\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 4") && e.contains("spec.reversePeering: Calico's BGPPeer field \"reversePeering\" is not supported by Serval yet"),
            "{e}"
        );
        let e = parse("x.yaml", "kind: IPPool\napiVersion: crd.projectcalico.org/v1\nmetadata: {name: a}\nspec: {cidr: 10.1.0.0/16}\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("expected serval.dev/v1 or projectcalico.org/v3"),
            "{e}"
        );
        let e = parse("x.yaml", "kind: [unclosed\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("x.yaml: "), "{e}");
    }

    #[test]
    fn merge_patch_and_labels() {
        let mut v = serde_json::json!({"spec": {"cidr": "10.0.0.0/16", "natOutgoing": true}, "metadata": {"name": "p"}});
        merge_patch(
            &mut v,
            &serde_json::json!({"spec": {"natOutgoing": null, "vxlanMode": "Always"}}),
        );
        assert_eq!(
            v["spec"],
            serde_json::json!({"cidr": "10.0.0.0/16", "vxlanMode": "Always"})
        );
        let existing = serde_json::json!({"zone": "a"});
        let p = label_patch(&["rack=r1".into(), "old-".into()], &existing, false).unwrap();
        assert_eq!(
            p,
            serde_json::json!({"metadata": {"labels": {"rack": "r1", "old": null}}})
        );
        let e = label_patch(&["zone=b".into()], &existing, false).unwrap_err();
        assert_eq!(
            e,
            LabelError::WouldOverwrite {
                key: "zone".into(),
                old: "a".into()
            }
        );
        assert!(e.to_string().contains("--overwrite"), "{e}");
        assert!(label_patch(&["zone=b".into()], &existing, true).is_ok());
        assert_eq!(
            label_patch(&["nonsense".into()], &existing, true),
            Err(LabelError::Syntax("nonsense".into()))
        );
    }

    #[test]
    fn tables_are_aligned() {
        let kind = kinds::lookup("ippool").unwrap();
        let objs = vec![
            serde_json::json!({"metadata":{"name":"default-ipv4-ippool"},"spec":{"cidr":"10.244.0.0/16"}}),
            serde_json::json!({"metadata":{"name":"b"},"spec":{"cidr":"10.9.0.0/16","vxlanMode":"Always"}}),
        ];
        assert_eq!(
            table(&kind, &objs, false),
            "NAME                  CIDR            SELECTOR\n\
             default-ipv4-ippool   10.244.0.0/16\n\
             b                     10.9.0.0/16\n"
        );
        let wide = table(&kind, &objs, true);
        assert!(
            wide.starts_with("NAME                  CIDR            NAT   IPIPMODE   VXLANMODE"),
            "{wide}"
        );
    }
}

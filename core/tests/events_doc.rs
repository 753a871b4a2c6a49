//! Keeps `docs/EVENTS.md`, the public event catalog, true to the code.
//!
//! Conventions the catalog follows (and this test enforces):
//! - every event type has a section headed `## <EventType>` (a heading that is a single
//!   CamelCase word is an event heading), in the catalog order of `EventType::ALL`;
//! - every ```json block that is an envelope (an object with `type` and `data`) parses
//!   with `Envelope::from_json`;
//! - an example inside an event's section is of that type, at the current schema
//!   version, and every field of its `data` is named (as `` `field` ``) in the section;
//! - every event type has at least one example in its section;
//! - examples are copied from the golden vectors: compacted, each hashes to a record
//!   of some `core/tests/vectors/*.history.json` — except for the types listed in
//!   [`NOT_IN_VECTORS`], which no vector contains yet.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use trustfold_core::envelope::Envelope;
use trustfold_core::event::EventType;
use trustfold_core::hash::Hash;

/// Event types no golden vector contains yet; their examples come from the real rules
/// and say so in the catalog. Remove a type from this list once a vector shows it.
const NOT_IN_VECTORS: &[&str] = &[];

const DOC: &str = "docs/EVENTS.md";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// A `## ` section of the catalog.
struct Section {
    title: String,
    line: usize,
    text: String,
}

/// A ```json block that is an envelope.
struct Example {
    line: usize,
    /// The section it appears in.
    section: String,
    json: String,
    value: serde_json::Value,
}

struct Catalog {
    sections: Vec<Section>,
    examples: Vec<Example>,
}

fn is_event_heading(title: &str) -> bool {
    title.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && title.chars().all(|c| c.is_ascii_alphanumeric())
}

fn catalog() -> Catalog {
    let path = root().join(DOC);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut sections: Vec<Section> = Vec::new();
    let mut examples = Vec::new();
    let mut fence: Option<(usize, bool, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if let Some((start, is_json, body)) = &mut fence {
            if line.trim_start().starts_with("```") {
                if *is_json {
                    let section = sections.last().map(|s| s.title.clone()).unwrap_or_default();
                    let value: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| {
                        panic!("{DOC} line {start}: the ```json block is not valid JSON: {e}")
                    });
                    if value.get("type").is_some() && value.get("data").is_some() {
                        examples.push(Example {
                            line: *start,
                            section,
                            json: body.clone(),
                            value,
                        });
                    }
                }
                fence = None;
            } else {
                body.push_str(line);
                body.push('\n');
            }
            if let Some(s) = sections.last_mut() {
                s.text.push_str(line);
                s.text.push('\n');
            }
            continue;
        }
        if let Some(lang) = line.trim_start().strip_prefix("```") {
            fence = Some((n, lang.trim() == "json", String::new()));
        } else if let Some(title) = line.strip_prefix("## ") {
            sections.push(Section {
                title: title.trim().to_string(),
                line: n,
                text: String::new(),
            });
            continue;
        }
        if let Some(s) = sections.last_mut() {
            s.text.push_str(line);
            s.text.push('\n');
        }
    }
    assert!(fence.is_none(), "{DOC}: a ``` fence is never closed");
    Catalog { sections, examples }
}

fn example_type(e: &Example) -> String {
    e.value["type"]
        .as_str()
        .unwrap_or("<not a string>")
        .to_string()
}

fn fail_if_any(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{DOC} is out of date ({what}):\n  - {}",
        problems.join("\n  - ")
    );
}

#[test]
fn every_event_type_has_a_section_in_catalog_order() {
    let c = catalog();
    let mut problems = Vec::new();
    let headings: Vec<&Section> = c
        .sections
        .iter()
        .filter(|s| is_event_heading(&s.title))
        .collect();
    let mut seen = BTreeSet::new();
    for s in &headings {
        if EventType::from_name(&s.title).is_none() {
            problems.push(format!(
                "line {}: `## {}` is not an event type (EventType::from_name knows no such name); \
                 remove or rename the section",
                s.line, s.title
            ));
        }
        if !seen.insert(s.title.as_str()) {
            problems.push(format!("line {}: `## {}` appears twice", s.line, s.title));
        }
    }
    for t in EventType::ALL {
        if !seen.contains(t.name()) {
            problems.push(format!(
                "event {} has no `## {}` section",
                t.name(),
                t.name()
            ));
        }
    }
    let documented: Vec<&str> = headings
        .iter()
        .filter(|s| EventType::from_name(&s.title).is_some())
        .map(|s| s.title.as_str())
        .collect();
    let expected: Vec<&str> = EventType::ALL
        .iter()
        .map(|t| t.name())
        .filter(|n| documented.contains(n))
        .collect();
    if problems.is_empty() && documented != expected {
        let first = documented
            .iter()
            .zip(&expected)
            .find(|(a, b)| a != b)
            .map(|(a, b)| format!("found `## {a}` where `## {b}` should come"))
            .unwrap_or_default();
        problems.push(format!(
            "event sections are not in the catalog order of EventType::ALL: {first}"
        ));
    }
    fail_if_any("event sections", &problems);
}

#[test]
fn every_example_parses_as_an_envelope() {
    let c = catalog();
    assert!(!c.examples.is_empty(), "{DOC} has no envelope examples");
    let mut problems = Vec::new();
    for e in &c.examples {
        if let Err(err) = Envelope::from_json(e.json.as_bytes()) {
            problems.push(format!(
                "line {} (section `{}`): the {} example no longer parses: {err}",
                e.line,
                e.section,
                example_type(e)
            ));
        }
    }
    fail_if_any("examples that do not parse", &problems);
}

#[test]
fn every_event_type_has_a_current_example_in_its_section() {
    let c = catalog();
    let mut problems = Vec::new();
    let mut with_example = BTreeSet::new();
    for e in &c.examples {
        if !is_event_heading(&e.section) {
            continue; // e.g. the v1 example in the upcasting section
        }
        let ty = example_type(e);
        if ty != e.section {
            problems.push(format!(
                "line {}: the example in section `## {}` is of type {ty}",
                e.line, e.section
            ));
            continue;
        }
        let Some(t) = EventType::from_name(&ty) else {
            continue; // reported by the section test
        };
        with_example.insert(t);
        let v = e.value["v"].as_u64().unwrap_or(0);
        if v != u64::from(t.current_version()) {
            problems.push(format!(
                "line {}: the {ty} example is schema v{v}, but {ty} is now v{}: \
                 update the example and the field table (and document the upcast)",
                e.line,
                t.current_version()
            ));
        }
        let section = c.sections.iter().find(|s| s.title == e.section);
        if let (Some(s), Some(data)) = (section, e.value["data"].as_object()) {
            for field in data.keys() {
                if !s.text.contains(&format!("`{field}`")) {
                    problems.push(format!(
                        "line {}: the {ty} example has data field `{field}`, which section \
                         `## {ty}` does not document",
                        e.line
                    ));
                }
            }
        }
    }
    for t in EventType::ALL {
        if !with_example.contains(t) {
            problems.push(format!(
                "event {} has no ```json envelope example in its `## {}` section",
                t.name(),
                t.name()
            ));
        }
    }
    fail_if_any("event examples", &problems);
}

/// Strips the whitespace a pretty-printer adds, leaving strings untouched.
fn compact(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !c.is_whitespace() {
            out.push(c);
        }
    }
    out
}

#[test]
fn examples_are_copied_from_the_golden_vectors() {
    let dir = root().join("core/tests/vectors");
    let mut hashes = BTreeSet::new();
    let mut types_in_vectors: BTreeMap<String, String> = BTreeMap::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("vectors dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.to_string_lossy().ends_with(".history.json"))
        .collect();
    files.sort();
    for path in &files {
        let bytes = std::fs::read(path).expect("vector");
        let records = trustfold_core::history::parse(&bytes)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for r in &records {
            hashes.insert(r.hash);
            let v: serde_json::Value = serde_json::from_str(r.event.get()).expect("event json");
            if let Some(t) = v["type"].as_str() {
                types_in_vectors.entry(t.to_string()).or_insert_with(|| {
                    path.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into()
                });
            }
        }
    }
    let c = catalog();
    let mut problems = Vec::new();
    for e in &c.examples {
        let ty = example_type(e);
        let found = hashes.contains(&Hash::of(compact(&e.json).as_bytes()));
        if !found && !NOT_IN_VECTORS.contains(&ty.as_str()) {
            problems.push(format!(
                "line {}: the {ty} example is not byte-for-byte an event of any vector history \
                 (after removing pretty-printing whitespace): copy a real one from core/tests/vectors/",
                e.line
            ));
        }
    }
    for t in NOT_IN_VECTORS {
        if let Some(file) = types_in_vectors.get(*t) {
            problems.push(format!(
                "{t} now appears in the vector {file}: use that event as the example and \
                 remove {t} from NOT_IN_VECTORS in core/tests/events_doc.rs"
            ));
        }
    }
    fail_if_any("examples not from vectors", &problems);
}

//! Turns a YAML reader error into a [`PolicyIssue`] with a field path.
//!
//! serde-saphyr reports where an error happened (line and column) but not which field that
//! is. To name the field, the text is walked once more with the YAML event parser that
//! serde-saphyr itself uses, recording the dotted path of every node; the error's position
//! is then looked up among them. This runs only when loading has already failed, so its cost
//! never touches a valid load.

use super::error::PolicyIssue;
use serde_saphyr::granit_parser::{Event, Parser};
use serde_saphyr::{DefaultMessageFormatter, Error as YamlError, MessageFormatter};

/// Describes `err` (raised while reading `text`) as a positioned, path-qualified issue.
pub(crate) fn issue_from_yaml(text: &str, err: &YamlError) -> PolicyIssue {
    let err = err.without_snippet();
    let message = match err {
        // The library's own wording speaks to its programmers ("set DuplicateKeyPolicy").
        YamlError::DuplicateMappingKey { key: Some(key), .. } => format!(
            "`{}` is given twice in one mapping; each name may appear once",
            clean(key)
        ),
        YamlError::DuplicateMappingKey { key: None, .. } => {
            "a key is given twice in one mapping; each may appear once".to_owned()
        }
        // Nothing but blank lines and comments.
        _ if text
            .lines()
            .all(|l| matches!(l.trim().chars().next(), None | Some('#'))) =>
        {
            "the file is empty: it holds no settings at all".to_owned()
        }
        _ => clean(&DefaultMessageFormatter.format_message(err)),
    };
    let Some(at) = err.location().filter(|l| l.line() > 0) else {
        // Positionless errors are rare (options, budgets); the document is the best guess.
        return PolicyIssue {
            line: 1,
            column: 1,
            path: String::new(),
            message,
        };
    };
    let nodes = node_paths(text);
    let here = (at.line(), at.column());
    let (path, (line, column)) = match err {
        // Reported somewhere inside the mapping that lacks the field (the reader points at
        // its last key). Name the field under the innermost mapping around that position and
        // point at the key that introduces the mapping, where a reader would add the field.
        YamlError::SerdeMissingField { field, .. } => {
            let mut around = nodes
                .iter()
                .filter(|n| n.at <= here && n.end.is_some_and(|e| here <= e));
            let owner = around.next_back();
            let intro = owner.and_then(|m| nodes.iter().find(|n| n.is_key && n.path == m.path));
            (join(owner, field), intro.or(owner).map_or(here, |n| n.at))
        }
        // Reported at the offending key, whose recorded path already ends with its name.
        YamlError::SerdeUnknownField { field, .. } => match innermost(&nodes, here) {
            Some(node) if node.is_key => (node.path.clone(), here),
            other => (join(other, field), here),
        },
        _ => (
            innermost(&nodes, here)
                .map(|n| n.path.clone())
                .unwrap_or_default(),
            here,
        ),
    };
    PolicyIssue {
        line,
        column,
        path,
        message,
    }
}

/// A node of the document: where it starts (1-based line and column) and its dotted path.
/// A mapping key carries the path of the value it introduces; a mapping also records where
/// it ends.
#[derive(Debug)]
struct Node {
    at: (u64, u64),
    end: Option<(u64, u64)>,
    path: String,
    is_key: bool,
}

/// Where the walk is inside a collection.
enum Frame {
    /// In a mapping (recorded as node `node`); `key` is the path of the value about to come,
    /// `None` while a key is due.
    Map {
        path: String,
        key: Option<String>,
        node: usize,
    },
    /// In a sequence, at item `next`.
    Seq { path: String, next: usize },
}

/// Walks the document's events and records every node's path, in document order. A syntax
/// error ends the walk early; the nodes seen before it are still useful.
fn node_paths(text: &str) -> Vec<Node> {
    let mut nodes = Vec::new();
    let mut stack: Vec<Frame> = Vec::new();
    for event in Parser::new_from_str(text) {
        let Ok((event, span)) = event else { break };
        let at = (span.start.line() as u64, span.start.col() as u64 + 1);
        match event {
            Event::Scalar(value, ..) => {
                if let Some(Frame::Map {
                    path,
                    key: key @ None,
                    ..
                }) = stack.last_mut()
                {
                    let own = child(path, &value);
                    nodes.push(Node::new(at, own.clone(), true));
                    *key = Some(own);
                } else {
                    nodes.push(Node::new(at, value_path(&mut stack), false));
                }
            }
            Event::Alias(..) => nodes.push(Node::new(at, value_path(&mut stack), false)),
            Event::MappingStart(..) => {
                let path = value_path(&mut stack);
                stack.push(Frame::Map {
                    path: path.clone(),
                    key: None,
                    node: nodes.len(),
                });
                nodes.push(Node::new(at, path, false));
            }
            Event::SequenceStart(..) => {
                let path = value_path(&mut stack);
                nodes.push(Node::new(at, path.clone(), false));
                stack.push(Frame::Seq { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                if let Some(Frame::Map { node, .. }) = stack.pop() {
                    if let Some(map) = nodes.get_mut(node) {
                        map.end = Some(at);
                    }
                }
            }
            _ => {}
        }
    }
    nodes
}

impl Node {
    fn new(at: (u64, u64), path: String, is_key: bool) -> Self {
        Self {
            at,
            end: None,
            path,
            is_key,
        }
    }
}

/// The path of the value node about to be read, advancing the enclosing collection.
fn value_path(stack: &mut [Frame]) -> String {
    match stack.last_mut() {
        None => String::new(),
        Some(Frame::Map { path, key, .. }) => key.take().unwrap_or_else(|| path.clone()),
        Some(Frame::Seq { path, next }) => {
            let own = format!("{path}[{next}]");
            *next += 1;
            own
        }
    }
}

fn child(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}.{name}")
    }
}

fn join(node: Option<&Node>, field: &str) -> String {
    child(node.map_or("", |n| n.path.as_str()), field)
}

/// The last node starting at or before `here`: the most specific one covering it.
fn innermost(nodes: &[Node], here: (u64, u64)) -> Option<&Node> {
    nodes.iter().take_while(|n| n.at <= here).last()
}

/// Keeps only the first line of the reader's message and drops control characters, so one
/// issue stays one line of output.
fn clean(message: &str) -> String {
    let first = message.lines().next().unwrap_or_default();
    first.chars().filter(|c| !c.is_control()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn issue<T: serde::de::DeserializeOwned + std::fmt::Debug>(text: &str) -> PolicyIssue {
        match serde_saphyr::from_str::<T>(text) {
            Ok(v) => panic!("expected an error, got {v:?}"),
            Err(e) => issue_from_yaml(text, &e),
        }
    }

    #[test]
    fn paths_follow_mappings_and_sequences() {
        let text = "a:\n  b: [x, {c: 1}]\n  d:\n    - e: 2\n      f: 3\n";
        let found: Vec<_> = node_paths(text)
            .into_iter()
            .map(|n| (n.at, n.path))
            .collect();
        assert!(found.contains(&((2, 10), "a.b[1]".to_owned())));
        assert!(found.contains(&((2, 11), "a.b[1].c".to_owned())));
        assert!(found.contains(&((5, 7), "a.d[0].f".to_owned())));
    }

    #[test]
    fn type_errors_name_the_value() {
        #[derive(Debug, serde::Deserialize)]
        struct Doc {
            #[allow(dead_code)]
            outer: std::collections::BTreeMap<String, u64>,
        }
        let found = issue::<Doc>("outer:\n  x: 1\n  y: [2]\n");
        assert_eq!((found.line, found.path.as_str()), (3, "outer.y"));
    }
}

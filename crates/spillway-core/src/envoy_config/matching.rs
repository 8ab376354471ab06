//! The per-request walk: from one descriptor's entries to the node (and limits) it lands on.
//!
//! At each level an entry tries, in order: the node with its key and exactly its value, the
//! first `prefix*` node of its key whose prefix the value starts with, and the key-only node
//! (any value). The walk stops without a match as soon as an entry finds nothing; a limit
//! applies only if the descriptor's *last* entry lands on a node that has one, so a descriptor
//! longer or shorter than the configured path is not limited (upstream's rule).

use super::{Domain, KeyNodes, Level, Node, Rule};
use crate::key::StateKey;

/// A descriptor that landed on a configured node.
#[derive(Debug)]
pub struct Found<'a> {
    /// What the node says.
    pub rule: &'a Rule,
    /// The counter key's values: each entry's value, or the pattern for entries matched by a
    /// shared (`share_threshold`) prefix node.
    pub values: Vec<String>,
}

impl Found<'_> {
    /// The counter key of `limit` for this descriptor.
    pub fn key_for(&self, def: &crate::policy::LimitDef) -> StateKey {
        StateKey {
            limit: def.name.to_arc(),
            fingerprint: def.fingerprint,
            values: self.values.iter().collect(),
        }
    }
}

impl Domain {
    /// Walks the tree with `entries` (key, value pairs in descriptor order). `None` when the
    /// descriptor matches no node carrying a rule: the request is not limited by it.
    pub fn find<'a, 'e>(
        &'a self,
        entries: impl ExactSizeIterator<Item = (&'e str, &'e str)>,
    ) -> Option<Found<'a>> {
        let last = entries.len().checked_sub(1)?;
        let mut level = &self.root;
        let mut values = Vec::with_capacity(last + 1);
        for (i, (key, value)) in entries.enumerate() {
            let (node, shared) = level.keys.get(key)?.lookup(value)?;
            values.push(shared.unwrap_or(value).to_owned());
            if i == last {
                return node.rule.as_ref().map(|rule| Found { rule, values });
            }
            level = &node.children;
        }
        None
    }
}

impl KeyNodes {
    /// The node `value` selects, and the pattern its counter key records instead of the
    /// value when the node shares one counter among all the values it matches.
    fn lookup(&self, value: &str) -> Option<(&Node, Option<&str>)> {
        if let Some(node) = self.exact.get(value) {
            return Some((node, None));
        }
        let prefixed = self.prefixes.iter().find(|(p, _)| value.starts_with(&**p));
        if let Some((_, node)) = prefixed {
            return Some((node, node.share.then_some(&*node.pattern)));
        }
        self.any.as_ref().map(|node| (node, None))
    }
}

impl Level {
    /// Whether nothing is configured at this level.
    pub(super) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

//! Requests whose limits live in several cluster slots.
//!
//! A Lua script may only touch keys of one slot, so such a request cannot be decided in one
//! atomic step. It is decided slot by slot instead, in the order its limits first appear:
//!
//! 1. Each slot's limits go through the check script, which charges them only if every
//!    enforced limit of that slot allows, and returns what it overwrote.
//! 2. If a slot denies, the slots charged before it are refunded (each key restored to its
//!    previous value, if nobody has written it since), the slots after it are only looked at
//!    (for their decisions), and the request is denied.
//!
//! Between steps 1 and 2 a concurrent request can see the tokens this one took and be denied
//! although, in the end, this one charged nothing: the window lasts one round trip per slot.
//! That can only under-admit. A refund that loses a race with another writer leaves its charge
//! in place (again only under-admitting); it never restores more than it took.
//! Look-only requests ([`CheckMode::Peek`]) simply ask every slot.

use crate::keys;
use crate::script::Undo;
use crate::store::RedisStore;
use spillway_core::algorithm::Decision;
use spillway_core::request::CheckMode;
use spillway_core::store::{Check, StoreError};

/// Groups check indexes by slot, slots in order of first appearance.
fn groups(keys: &[String]) -> Vec<Vec<usize>> {
    let mut out: Vec<(u16, Vec<usize>)> = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let slot = keys::slot(key);
        match out.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, members)) => members.push(i),
            None => out.push((slot, vec![i])),
        }
    }
    out.into_iter().map(|(_, members)| members).collect()
}

/// Decides `checks` (with their Redis `keys`) slot by slot; see the module docs.
pub(crate) async fn check(
    store: &RedisStore,
    keys: &[String],
    checks: &[Check<'_>],
    mode: CheckMode,
) -> Result<Vec<Decision>, StoreError> {
    let mut decisions: Vec<Option<Decision>> = vec![None; checks.len()];
    // (indexes, undo records) of the slots charged so far.
    let mut charged: Vec<(Vec<usize>, Vec<Undo>)> = Vec::new();
    let mut denied = mode == CheckMode::Peek;
    let mut failure = None;
    for group in groups(keys) {
        let refs: Vec<&str> = group.iter().map(|&i| keys[i].as_str()).collect();
        let sub: Vec<Check<'_>> = group.iter().map(|&i| checks[i]).collect();
        let sub_mode = if denied {
            CheckMode::Peek
        } else {
            CheckMode::Consume
        };
        match store.run_script(&refs, &sub, sub_mode, !denied).await {
            Ok(reply) => {
                for (&i, d) in group.iter().zip(reply.decisions) {
                    decisions[i] = Some(d);
                }
                if !reply.admitted {
                    denied = true;
                } else if sub_mode == CheckMode::Consume {
                    charged.push((group, reply.undo));
                }
            }
            Err(err) => {
                failure = Some(err);
                denied = true;
                break;
            }
        }
    }
    if denied && mode == CheckMode::Consume {
        for (group, undo) in &charged {
            for (&i, record) in group.iter().zip(undo) {
                if !store.refund(&keys[i], record).await {
                    tracing::debug!("a cross-slot refund lost a race; the charge stays");
                }
            }
        }
    }
    if let Some(err) = failure {
        return Err(err);
    }
    decisions
        .into_iter()
        .map(|d| d.ok_or_else(|| StoreError::Protocol("a slot returned no decision".into())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_keep_first_appearance_order() {
        let keys: Vec<String> = ["a:{x}:1", "a:{y}:1", "a:{x}:2"].map(String::from).into();
        assert_eq!(groups(&keys), vec![vec![0, 2], vec![1]]);
    }
}

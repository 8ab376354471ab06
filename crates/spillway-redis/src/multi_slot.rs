//! Requests whose limits live in several cluster slots.
//!
//! A Lua script may only touch keys of one slot, so such a request cannot be decided in one
//! atomic step. It is decided by all its slots at once instead, with compensation:
//!
//! 1. Every slot's limits go through the check script concurrently (one pipelined call per
//!    slot on the multiplexed cluster connection, so the request costs one round trip, not
//!    one per slot). Each script charges its limits only if every enforced limit of its slot
//!    allows, and returns what it overwrote.
//! 2. If any slot denies (or fails), every slot that charged is refunded (each key restored to
//!    its previous value by a compare-and-set, if nobody has written it since), and then the
//!    request is reported denied (or failed).
//!
//! Steps 1 and 2 run in a task spawned on the runtime, which the caller awaits. The caller may
//! give up first (its own timeout, or the server's time budget dropping the call); the task
//! still hears every slot's answer, since the cluster client waits up to [`SETTLE`] for one, and
//! refunds whatever it charged when nobody takes the admission. An admission that arrived just
//! as the caller gave up is refunded by the caller's side. So a request that fails or times
//! out leaves no charge behind once its refunds land, unless a slot never answers within
//! [`SETTLE`] (its charge, if it happened, stays: under-admission only).
//!
//! Between steps 1 and 2 a concurrent request can see the tokens this one took and be denied
//! although, in the end, this one charged nothing: the window lasts about one round trip (more
//! when the caller gave up on a slow slot). That can only under-admit. A refund that loses a
//! race with another writer leaves its charge in place (again only under-admitting); it never
//! restores more than it took. Look-only requests ([`CheckMode::Peek`]) simply ask every slot.
//!
//! These requests do not go through the batcher's queues, so they have a bound of their own:
//! at most [`IN_FLIGHT`] slot calls of consuming requests across slots at once in one store
//! (a far region's store has its own), each holding its share until the request has settled
//! and its task has refunded what nobody took (a request spanning `n` slots takes `n`; the
//! refund of an admission that arrived just as its caller gave up runs outside it). One that
//! finds no room is refused at once as [`StoreError::Overloaded`] (no breaker counts it). Without it, a client sending requests over many slots could
//! pile up tasks and calls that outlive their callers by up to two [`SETTLE`]s.

use crate::keys;
use crate::runner::Runner;
use crate::script::{Encoded, Reply, Undo};
use spillway_core::algorithm::Decision;
use spillway_core::request::CheckMode;
use spillway_core::store::{Check, StoreError};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

/// How long a spawned request waits for a slot's late answer (and the cluster client keeps
/// waiting for one) so that it can refund the charge.
pub const SETTLE: Duration = Duration::from_secs(2);

/// The most slot calls of consuming requests across slots in flight at once (see the module
/// docs); the same as the batcher's bound on waiting requests, [`crate::batch::QUEUE`].
pub const IN_FLIGHT: usize = crate::batch::QUEUE;

/// Room in `room` for a request's `calls` slot calls, or [`StoreError::Overloaded`] at once.
fn take_room(room: &Arc<Semaphore>, calls: usize) -> Result<OwnedSemaphorePermit, StoreError> {
    let calls = u32::try_from(calls).unwrap_or(u32::MAX);
    Arc::clone(room).try_acquire_many_owned(calls).map_err(|_| {
        StoreError::Overloaded(format!(
            "more than {IN_FLIGHT} slot calls of requests across slots in flight"
        ))
    })
}

/// A request's keys by cluster slot, each key's slot computed once.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Slots {
    /// Every key hashes to this slot (the common case, found without allocating).
    One(u16),
    /// Check indexes by slot, slots in order of first appearance (no keys: none).
    Many(Vec<(u16, Vec<usize>)>),
}

impl Slots {
    /// Check indexes by slot, for `len` keys (`One` is every index in its slot).
    pub(crate) fn groups(self, len: usize) -> Vec<(u16, Vec<usize>)> {
        match self {
            Self::One(slot) => vec![(slot, (0..len).collect())],
            Self::Many(groups) => groups,
        }
    }
}

/// The one slot of `checks`' keys if they share one (`None` for no checks): [`slots`]'s
/// question without building its groups.
pub(crate) fn one_slot(checks: &[Check<'_>]) -> Option<u16> {
    let (first, rest) = checks.split_first()?;
    let slot = keys::state_slot(first.key);
    rest.iter()
        .all(|c| keys::state_slot(c.key) == slot)
        .then_some(slot)
}

/// The slots of `checks`' keys, hashing each key's tag once: [`keys::state_slot`], the same
/// slot the guard's failure domains come from (see [`crate::topology`]), and the slot of the
/// Redis key [`keys::KeyLayout::key`] builds, without reading the built key again.
pub(crate) fn slots(checks: &[Check<'_>]) -> Slots {
    let Some(first) = checks.first().map(|c| keys::state_slot(c.key)) else {
        return Slots::Many(Vec::new());
    };
    let Some((split, other)) = checks
        .iter()
        .enumerate()
        .skip(1)
        .map(|(i, c)| (i, keys::state_slot(c.key)))
        .find(|&(_, slot)| slot != first)
    else {
        return Slots::One(first);
    };
    // Keys before `split` share the first slot; group the rest as they come.
    let mut out = vec![(first, (0..split).collect()), (other, vec![split])];
    for (i, check) in checks.iter().enumerate().skip(split + 1) {
        let slot = keys::state_slot(check.key);
        match out.iter_mut().find(|(s, _)| *s == slot) {
            Some((_, members)) => members.push(i),
            None => out.push((slot, vec![i])),
        }
    }
    Slots::Many(out)
}

/// What a request spanning slots needs once the caller's borrows are gone.
struct Job {
    runner: Runner,
    keys: Arc<[String]>,
    checks: Arc<[Encoded]>,
    /// Check indexes, one group per slot.
    groups: Vec<Vec<usize>>,
    mode: CheckMode,
}

/// Keys charged by an admitted request, with what restores each.
type Charges = Vec<(String, Undo)>;

/// What the spawned task hands back: the decisions and, for an admission, its charges.
type Settled = Result<(Vec<Decision>, Charges), StoreError>;

impl Job {
    /// Every slot's script at once; one reply (or error) per group, in group order.
    async fn run_slots(&self, limit: Duration) -> Vec<Result<Reply, StoreError>> {
        let undo = self.mode == CheckMode::Consume;
        let calls: Vec<_> = self
            .groups
            .iter()
            .map(|group| {
                let (runner, keys, checks) =
                    (self.runner.clone(), self.keys.clone(), self.checks.clone());
                let (group, mode) = (group.clone(), self.mode);
                tokio::spawn(async move {
                    let pairs = group.iter().map(|&i| (keys[i].as_str(), checks[i]));
                    runner.run_script(limit, pairs, mode, undo).await
                })
            })
            .collect();
        let mut replies = Vec::with_capacity(calls.len());
        for call in calls {
            replies.push(call.await.unwrap_or_else(|e| {
                Err(StoreError::Protocol(format!(
                    "a slot's call did not finish: {e}"
                )))
            }));
        }
        replies
    }

    /// Charges every slot, refunds them all unless every slot admitted, and settles.
    async fn settle(self) -> Settled {
        let replies = self.run_slots(SETTLE.max(self.runner.timeout)).await;
        let mut decisions: Vec<Option<Decision>> = vec![None; self.checks.len()];
        let mut charges = Charges::new();
        let mut failure = None;
        let mut admitted = true;
        for (group, reply) in self.groups.iter().zip(replies) {
            match reply {
                Ok(reply) => {
                    admitted &= reply.admitted;
                    for (&i, d) in group.iter().zip(reply.decisions) {
                        decisions[i] = Some(d);
                    }
                    // The script charged (and reported undo records) only if its slot admitted.
                    for (&i, undo) in group.iter().zip(reply.undo) {
                        charges.push((self.keys[i].clone(), undo));
                    }
                }
                Err(err) => {
                    admitted = false;
                    failure.get_or_insert(err);
                }
            }
        }
        if !admitted {
            refund_all(&self.runner, charges).await;
            charges = Charges::new();
        }
        if let Some(err) = failure {
            return Err(err);
        }
        let decisions = decisions
            .into_iter()
            .map(|d| d.ok_or_else(|| StoreError::Protocol("a slot returned no decision".into())))
            .collect::<Result<_, _>>()?;
        Ok((decisions, charges))
    }
}

/// Refunds `charges` concurrently, logging the ones that lost a race (their charge stays).
async fn refund_all(runner: &Runner, charges: Charges) {
    let limit = SETTLE.max(runner.timeout);
    let calls: Vec<_> = charges
        .into_iter()
        .map(|(key, undo)| {
            let runner = runner.clone();
            tokio::spawn(async move { runner.refund(limit, &key, &undo).await })
        })
        .collect();
    for call in calls {
        if !matches!(call.await, Ok(true)) {
            tracing::debug!("a cross-slot refund lost a race or failed; the charge stays");
        }
    }
}

/// The caller's end of a spawned request. Dropped before it took the answer (the caller gave
/// up), it refunds an admission that already arrived; one still on its way finds the channel
/// closed and is refunded by the task.
struct Pending {
    answer: oneshot::Receiver<Settled>,
    runner: Runner,
    runtime: tokio::runtime::Handle,
    taken: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        self.answer.close();
        if let Ok(Ok((_, charges))) = self.answer.try_recv() {
            if !charges.is_empty() {
                let runner = self.runner.clone();
                self.runtime
                    .spawn(async move { refund_all(&runner, charges).await });
            }
        }
    }
}

/// Decides `checks` (with their Redis `keys`, grouped by slot in `groups`, see [`slots`])
/// across slots; see the module docs.
pub(crate) async fn check(
    runner: &Runner,
    keys: Vec<String>,
    groups: Vec<(u16, Vec<usize>)>,
    checks: &[Check<'_>],
    mode: CheckMode,
) -> Result<Vec<Decision>, StoreError> {
    let job = Job {
        runner: runner.clone(),
        groups: groups.into_iter().map(|(_, group)| group).collect(),
        keys: keys.into(),
        checks: checks.iter().map(Encoded::new).collect(),
        mode,
    };
    if mode == CheckMode::Peek {
        // Nothing is charged, so nothing needs finishing if the caller goes away.
        let mut decisions: Vec<Option<Decision>> = vec![None; checks.len()];
        for (group, reply) in job.groups.iter().zip(job.run_slots(runner.timeout).await) {
            for (&i, d) in group.iter().zip(reply?.decisions) {
                decisions[i] = Some(d);
            }
        }
        return decisions
            .into_iter()
            .map(|d| d.ok_or_else(|| StoreError::Protocol("a slot returned no decision".into())))
            .collect();
    }
    // Held by the task until it has settled, and refunded what nobody took.
    let permit =
        take_room(&runner.cross_slot_room, job.groups.len()).map_err(crate::error::record)?;
    let (send, answer) = oneshot::channel();
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
        StoreError::Protocol("a request across slots needs a tokio runtime to finish on".into())
    })?;
    let refunder = runner.clone();
    runtime.spawn(async move {
        let _permit = permit;
        if let Err(Ok((_, charges))) = send.send(job.settle().await) {
            // The caller gave up before the answer came: nobody was admitted, so refund.
            refund_all(&refunder, charges).await;
        }
    });
    let mut pending = Pending {
        answer,
        runner: runner.clone(),
        runtime,
        taken: false,
    };
    let waited = tokio::time::timeout(runner.timeout, &mut pending.answer).await;
    // Past the timeout nothing was taken: dropping `pending` refunds a late admission.
    pending.taken = waited.is_ok();
    match waited {
        Ok(Ok(settled)) => settled.map(|(decisions, _)| decisions),
        Ok(Err(_)) => Err(crate::error::record(StoreError::Protocol(
            "the task deciding a request across slots stopped".into(),
        ))),
        Err(_) => Err(crate::error::record(StoreError::Timeout(runner.timeout))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use spillway_core::algorithm::{FixedWindow, LimitParams};
    use spillway_core::key::StateKey;

    fn state_key(values: &[&str]) -> StateKey {
        StateKey {
            limit: "l".into(),
            fingerprint: 7,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    fn params() -> LimitParams {
        LimitParams::FixedWindow(FixedWindow::new(10, 1_000_000).unwrap())
    }

    fn checks<'a>(keys: &'a [StateKey], params: &'a LimitParams) -> Vec<Check<'a>> {
        keys.iter()
            .map(|key| Check {
                key,
                params,
                cost: 1,
                enforced: true,
                metered: false,
            })
            .collect()
    }

    #[test]
    fn requests_across_slots_past_the_room_are_refused_as_overloaded() {
        let room = Arc::new(Semaphore::new(5));
        let first = take_room(&room, 3).expect("room for 3");
        let refused = take_room(&room, 3).expect_err("2 left");
        assert!(refused.is_overload(), "{refused:?}");
        let second = take_room(&room, 2).expect("room for 2");
        drop(first);
        assert!(take_room(&room, 3).is_ok(), "freed when the first settled");
        drop(second);
    }

    #[test]
    fn groups_keep_first_appearance_order() {
        let keys = [
            ["x", "1"],
            ["x", "3"],
            ["y", "1"],
            ["x", "2"],
            ["z", "1"],
            ["y", "2"],
        ]
        .map(|v| state_key(&v));
        let params = params();
        let checks = checks(&keys, &params);
        let (x, y, z) = (keys::slot("{x}"), keys::slot("{y}"), keys::slot("{z}"));
        assert_eq!(
            slots(&checks),
            Slots::Many(vec![(x, vec![0, 1, 3]), (y, vec![2, 5]), (z, vec![4])])
        );
        assert_eq!(slots(&checks[..2]), Slots::One(x));
        assert_eq!(slots(&checks[..2]).groups(2), vec![(x, vec![0, 1])]);
        assert_eq!(slots(&[]), Slots::Many(Vec::new()));
    }

    #[test]
    fn every_key_is_grouped_in_the_slot_of_the_key_redis_gets() {
        // Tags that only look like tags, or would end one, once encoded; a long value stands
        // for its digest; a limit without dimensions is tagged by its name.
        let long = "t".repeat(200);
        let tags = ["acme", "{b}", "}", "a}b{", "", "%7D", "é", &long, "acme"];
        let mut keys: Vec<StateKey> = tags.iter().map(|t| state_key(&[t, "u"])).collect();
        keys.push(StateKey {
            limit: "global {x}".into(),
            fingerprint: 7,
            values: Default::default(),
        });
        let params = params();
        let checks = checks(&keys, &params);
        for prefix in ["rl", "spillway.prod-1"] {
            let layout = keys::KeyLayout::new(prefix).unwrap();
            let mut seen = vec![None; keys.len()];
            for (slot, group) in slots(&checks).groups(keys.len()) {
                for i in group {
                    seen[i] = Some(slot);
                }
            }
            for (i, key) in keys.iter().enumerate() {
                assert_eq!(
                    seen[i],
                    Some(keys::slot(&layout.key(key))),
                    "{prefix} {key:?}"
                );
            }
        }
    }
}

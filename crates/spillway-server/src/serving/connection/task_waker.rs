//! [`TaskWaker`]: a waker of our own around the waker of the task driving a connection, made
//! once for that task and kept, for [`super::Seldom`]'s nudges and [`super::inline`]'s
//! wake-ups alike.
//!
//! Making one per poll would cost an allocation per request; keeping one is safe as long as
//! the task is the same, which `Waker::will_wake` tells (the first poll finds none kept, and
//! in theory the connection could move to another task).

use std::sync::Arc;
use std::task::{Wake, Waker};

/// What a [`TaskWaker`] wraps: a [`Wake`] that passes its wake-ups on to one task.
pub(super) trait OnTask: Wake + Send + Sync + 'static {
    /// A fresh one for `task`.
    fn for_task(task: Waker) -> Self;

    /// The task it wakes.
    fn task(&self) -> &Waker;
}

/// The current task's `W`, with a [`Waker`] of it ready to hand out.
pub(super) struct TaskWaker<W> {
    current: Option<(Arc<W>, Waker)>,
}

impl<W> Default for TaskWaker<W> {
    fn default() -> Self {
        Self { current: None }
    }
}

impl<W: OnTask> TaskWaker<W> {
    /// The `W` for `task` and its waker: the kept one when it was made for `task`, else a new
    /// one, kept from now on (`true` then).
    pub(super) fn for_task(&mut self, task: &Waker) -> (&Arc<W>, &Waker, bool) {
        let made = !matches!(&self.current, Some((wake, _)) if wake.task().will_wake(task));
        if made {
            self.current = None;
        }
        let (wake, waker) = self.current.get_or_insert_with(|| {
            let wake = Arc::new(W::for_task(task.clone()));
            (wake.clone(), Waker::from(wake))
        });
        (wake, waker, made)
    }
}

/// A task for tests that counts the times it was woken.
#[cfg(test)]
pub(super) mod counted {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Wake, Waker};

    /// Counts its wake-ups.
    #[derive(Default)]
    pub(in crate::serving::connection) struct Counted(AtomicUsize);

    impl Counted {
        /// How many times it has been woken.
        pub(in crate::serving::connection) fn wakes(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    impl Wake for Counted {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// A counting task and its waker.
    pub(in crate::serving::connection) fn task() -> (Arc<Counted>, Waker) {
        let task = Arc::new(Counted::default());
        (task.clone(), Waker::from(task))
    }
}

#[cfg(test)]
mod tests {
    use super::counted::task;
    use super::*;

    /// Passes wake-ups on to its task.
    struct Relay(Waker);

    impl Wake for Relay {
        fn wake(self: Arc<Self>) {
            self.0.wake_by_ref();
        }
    }

    impl OnTask for Relay {
        fn for_task(task: Waker) -> Self {
            Self(task)
        }

        fn task(&self) -> &Waker {
            &self.0
        }
    }

    /// One is made for the first task and kept while the same task polls; another task gets
    /// a new one, which then wakes that task.
    #[test]
    fn one_is_kept_per_task() {
        let (first, first_waker) = task();
        let mut kept = TaskWaker::<Relay>::default();
        let (made_for_first, waker, made) = kept.for_task(&first_waker);
        let (made_for_first, waker) = (made_for_first.clone(), waker.clone());
        assert!(made);
        let (again, again_waker, made) = kept.for_task(&first_waker.clone());
        assert!(!made);
        assert!(Arc::ptr_eq(again, &made_for_first));
        assert!(again_waker.will_wake(&waker));
        let (second, second_waker) = task();
        let (_, waker, made) = kept.for_task(&second_waker);
        assert!(made);
        waker.wake_by_ref();
        assert_eq!((first.wakes(), second.wakes()), (0, 1));
    }
}

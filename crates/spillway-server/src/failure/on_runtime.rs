//! [`OnRuntime`]: store calls polled with the main runtime entered.
//!
//! Requests are served on serving threads, each running a single-threaded runtime that only
//! runs while its thread serves (see [`crate::serving`]). Work a request starts on the store's
//! shared parts must not live there: a store client that reconnects spawns its connection's
//! task wherever it is asked, and a shared connection's task left on a serving thread's
//! runtime would stall every other thread's calls whenever that thread is busy or gone; a
//! report's per-slot tasks must outlive their caller. The failure guard ([`super::guard`])
//! wraps every such store call in an [`OnRuntime`] holding the main runtime's handle, so
//! whatever the call spawns lands there.
//!
//! The exception is a call the serving thread's own lane serves
//! ([`spillway_core::store::Store::served_on_this_thread`]): that lane's connection and
//! dispatcher live on the thread's runtime on purpose, for the thread's requests only, so the
//! guard polls it where it is (entering the main runtime would also put its timers on the
//! main runtime's timer wheel, a lock every thread would share).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::runtime::Handle;

/// A future polled with a given runtime entered, so that whatever it spawns, and the I/O and
/// timers it creates, belong to that runtime rather than to the thread polling it. Store
/// calls are already boxed futures, hence `Unpin`.
pub struct OnRuntime<F> {
    runtime: Option<Handle>,
    future: F,
}

impl<F: Future + Unpin> OnRuntime<F> {
    /// `future`, entering `runtime` on each poll (or nothing, without one).
    pub fn new(runtime: Option<Handle>, future: F) -> Self {
        Self { runtime, future }
    }
}

impl<F: Future + Unpin> Future for OnRuntime<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let _entered = this.runtime.as_ref().map(Handle::enter);
        Pin::new(&mut this.future).poll(cx)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// The name of [`main_runtime`]'s thread, which tests read back to tell where work ran.
    pub(in crate::failure) const MAIN: &str = "the-main-runtime";

    /// A runtime standing for the server's main one: one worker thread, named [`MAIN`].
    pub(in crate::failure) fn main_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name(MAIN)
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn work_polled_on_a_serving_thread_spawns_on_the_given_runtime() {
        let main = main_runtime();
        let handle = main.handle().clone();
        let spawned_on = |runtime: Option<Handle>| {
            std::thread::spawn(move || {
                let serving = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("runtime");
                serving.block_on(OnRuntime::new(
                    runtime,
                    Box::pin(async {
                        tokio::spawn(async { std::thread::current().name().map(str::to_owned) })
                            .await
                            .expect("spawned task")
                    }),
                ))
            })
            .join()
            .expect("serving thread")
        };
        assert_eq!(spawned_on(Some(handle)).as_deref(), Some(MAIN));
        // Without a runtime to enter, the task stays on the serving thread (unnamed here).
        assert_eq!(spawned_on(None), None);
    }
}

//! [`OnRuntime`]: store calls polled with the main runtime entered.
//!
//! Requests are served on serving threads, each running a single-threaded runtime that only
//! runs while its thread serves (see [`crate::serving`]). Work a request starts on a shared
//! store must not live there: a store client that reconnects spawns its connection's task
//! wherever it is asked, and a task left on a serving thread's runtime would stall whenever
//! that thread is busy or gone. The failure guard ([`super::guard`]) wraps every store call in
//! an [`OnRuntime`] holding the main runtime's handle, so whatever the call spawns lands there.

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
mod tests {
    use super::*;

    #[test]
    fn work_polled_on_a_serving_thread_spawns_on_the_given_runtime() {
        let main = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("the-main-runtime")
            .enable_all()
            .build()
            .expect("runtime");
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
        assert_eq!(
            spawned_on(Some(handle)).as_deref(),
            Some("the-main-runtime")
        );
        // Without a runtime to enter, the task stays on the serving thread (unnamed here).
        assert_eq!(spawned_on(None), None);
    }
}

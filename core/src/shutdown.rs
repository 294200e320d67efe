//! The signal every binary stops on: Ctrl-C (SIGINT) or SIGTERM (what
//! `kill`, systemd and process supervisors send).

use std::future::Future;

/// Installs the handlers now and returns a future that completes on the
/// first Ctrl-C or SIGTERM. Call it before announcing readiness: a signal
/// that arrives between "listening" and the first poll is then still a clean
/// shutdown, not the default action (death). If a handler cannot be
/// installed, that source is ignored rather than stopping at once.
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt = signal(SignalKind::interrupt()).ok();
        let mut terminate = signal(SignalKind::terminate()).ok();
        async move {
            let interrupted = async {
                match interrupt.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            let terminated = async {
                match terminate.as_mut() {
                    Some(s) => s.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = interrupted => tracing::info!("Ctrl-C: shutting down"),
                _ = terminated => tracing::info!("SIGTERM: shutting down"),
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            if tokio::signal::ctrl_c().await.is_ok() {
                tracing::info!("Ctrl-C: shutting down");
            } else {
                std::future::pending::<()>().await;
            }
        }
    }
}

//! What a lesson tells whoever watches it while it plays (the progress line,
//! `explain`, the live page): when its parts are up, and when it has been
//! judged, while its parts are still up so they can be asked what they
//! recorded.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::play::Outcome;

/// Events queued for a watcher at most; a lesson sends only two.
const EVENTS_QUEUED_MAX: usize = 16;
/// How long a lesson waits for a watcher to take an event or to finish
/// reading the parts after the verdict: a stuck watcher cannot hold a lesson.
pub const WATCHER_WAIT_MS_MAX: u64 = 30_000;

/// Where a lesson's parts answer.
#[derive(Debug, Clone)]
pub struct Parts {
    pub lesson: String,
    /// The payment service, e.g. `http://127.0.0.1:40123`.
    pub service_url: String,
    /// Every replica of the service (the first is `service_url`).
    pub replica_urls: Vec<String>,
    /// The chaos proxy's control API.
    pub proxy_api: String,
    /// The second hop's receipts service, in a lesson that has one.
    pub receipts_url: Option<String>,
    /// The proxy's routes, one per replica (the first is `parts::PROXY_NAME`).
    pub routes: Vec<String>,
    /// The lesson's scratch directory (database, client history, parts.log).
    pub dir: PathBuf,
    /// Payments played and the money they are meant to move, in minor units.
    pub payments: usize,
    pub intended_minor: i128,
}

pub enum Event {
    /// The parts are up; the act is about to start.
    Started(Parts),
    /// The lesson is judged; its parts stay up until `release` is sent (or
    /// dropped, or [`WATCHER_WAIT_MS_MAX`] passes).
    Judged {
        parts: Parts,
        outcome: Box<Outcome>,
        release: oneshot::Sender<()>,
    },
}

/// The sending side, kept in the runner's settings.
#[derive(Clone)]
pub struct Observer(mpsc::Sender<Event>);

impl Observer {
    pub fn channel() -> (Observer, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(EVENTS_QUEUED_MAX);
        (Observer(tx), rx)
    }

    pub async fn started(&self, parts: Parts) {
        let wait = Duration::from_millis(WATCHER_WAIT_MS_MAX);
        let _ = self.0.send_timeout(Event::Started(parts), wait).await;
    }

    /// Tells the watcher the verdict and waits (bounded) until it has read
    /// what it needs from the parts.
    pub async fn judged(&self, parts: Parts, outcome: &Outcome) {
        let wait = Duration::from_millis(WATCHER_WAIT_MS_MAX);
        let (release, released) = oneshot::channel();
        let event = Event::Judged {
            parts,
            outcome: Box::new(outcome.clone()),
            release,
        };
        if self.0.send_timeout(event, wait).await.is_ok() {
            let _ = tokio::time::timeout(wait, released).await;
        }
    }
}

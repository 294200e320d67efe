//! The outbox relay: a task of the service that delivers pending events to
//! the receipts service at least once.
//!
//! A round reads up to `batch_events_max` due events on a reader connection
//! of its own (blocking pool), posts each to `--receipts-url` +
//! `/receipts` with at most `in_flight_max` at once (reqwest, pooled
//! connections, a connect timeout and a deadline per attempt), and hands what
//! it learnt to the writer as one op: delivered after a 2xx only, refused
//! after a permanent 4xx (the dead letter), else pending again at a time the
//! shared retry rules give (`eo_core::retry`: `Retry-After` honoured, else
//! full jitter from a stream seeded per event and attempt). A round that
//! delivered nothing makes the relay itself back off (bounded), so an
//! unreachable receiver costs a few small writer ops a second, never a busy
//! loop. Idle, it sleeps until the next event is due, the writer wakes it
//! (a COMMIT that made events pending) or `idle_poll_ms_max` passes.
//!
//! Nothing is kept in memory between rounds: what is pending is in the
//! database, so a restart re-sends it. The relay never writes itself and
//! never waits on the payment path: its ops are queued like any other.

use std::sync::Arc;
use std::time::Duration;

use eo_core::retry::{self, Next};
use eo_core::seed::splitmix64;
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::JoinSet;

use crate::clock;
use crate::config::{Config, RelayLimits};
use crate::outbox::{self, Due, Mark, Marks, Pending};
use crate::readers::Readers;
use crate::writer::{self, Op};

/// How long the relay waits for the writer to take and answer its marks.
const MARK_WAIT_MS_MAX: u64 = 30_000;

/// The relay task, seen from the service: stopped by [`RelayHandle::stop`]
/// (the round in progress finishes, its marks included) or, dropped, aborted
/// (what was sent and not marked is sent again later: at least once).
pub(crate) struct RelayHandle {
    stop: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RelayHandle {
    pub(crate) async fn stop(mut self, wait: Duration) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take()
            && tokio::time::timeout(wait, task).await.is_err()
        {
            tracing::warn!("the outbox relay did not stop in time; its pending events are sent at the next start");
        }
    }
}

impl Drop for RelayHandle {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

pub(crate) struct Relay {
    readers: Arc<Readers>,
    writer: mpsc::Sender<Op>,
    wake: Arc<Notify>,
    http: reqwest::Client,
    endpoint: String,
    limits: RelayLimits,
    seed: u64,
    crash: Crash,
}

/// `--crash-relay-after-send`: dice rolled per acknowledged event, before
/// the round's marks reach the writer.
struct Crash {
    probability: f64,
    rng: Xoshiro256PlusPlus,
}

impl Relay {
    /// The relay for `config` (which must have a receipts URL), reading
    /// through `readers` and marking through `writer`.
    pub(crate) fn new(
        config: &Config,
        readers: Arc<Readers>,
        writer: mpsc::Sender<Op>,
        wake: Arc<Notify>,
    ) -> anyhow::Result<Relay> {
        let base = config.receipts_url.as_deref().unwrap_or_default();
        let endpoint = crate::config::receipts_endpoint(base).map_err(anyhow::Error::msg)?;
        let limits = config.relay;
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_millis(limits.connect_ms_max))
            .timeout(Duration::from_millis(limits.attempt_ms_max))
            .pool_max_idle_per_host(limits.in_flight_max)
            .retry(reqwest::retry::never())
            .build()?;
        Ok(Relay {
            readers,
            writer,
            wake,
            http,
            endpoint,
            limits,
            seed: config.seed,
            crash: Crash {
                probability: config.crash_relay_after_send,
                rng: Xoshiro256PlusPlus::seed_from_u64(config.seed ^ 0x5E1A_7C00_C0DE_0003),
            },
        })
    }

    /// Starts the relay on `runtime`.
    pub(crate) fn spawn(self, runtime: &tokio::runtime::Handle) -> RelayHandle {
        let (stop, stopped) = watch::channel(false);
        let task = runtime.spawn(self.run(stopped));
        RelayHandle { stop, task: Some(task) }
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        tracing::info!(endpoint = %self.endpoint, "outbox relay started");
        let mut idle_rng = retry::stream(self.seed, u64::MAX);
        let mut failed_rounds = 0u32;
        while !*stop.borrow() {
            let now_ms = clock::now_ms();
            let limit = self.limits.batch_events_max;
            // Idle waits end when new events commit; a backoff does not.
            let (wait, wakeable) = match self.readers.read(move |c| outbox::due(c, now_ms, limit)).await {
                Ok(due) if due.events.is_empty() => (self.idle_wait(&due, now_ms), true),
                Ok(due) => {
                    let full = due.events.len() >= limit;
                    let settled = self.round(due).await;
                    (
                        self.after_round(settled, full, &mut failed_rounds, &mut idle_rng),
                        false,
                    )
                }
                Err(e) => {
                    tracing::debug!(error = %e.detail, "outbox relay: cannot read pending events");
                    failed_rounds = failed_rounds.saturating_add(1);
                    (self.backoff(failed_rounds, &mut idle_rng), false)
                }
            };
            if !wait.is_zero() {
                let woken = async {
                    match wakeable {
                        true => self.wake.notified().await,
                        false => std::future::pending().await,
                    }
                };
                tokio::select! {
                    () = woken => {}
                    () = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => {}
                }
            }
        }
        tracing::info!("outbox relay stopped");
    }

    /// The wait after a round. One that settled nothing means the receiver
    /// is failing: when the round was full (a backlog), the relay itself
    /// backs off, or it would cycle through the whole backlog at full speed;
    /// a partial round's events are paced by their own backoff.
    fn after_round(
        &self,
        settled: bool,
        full: bool,
        failed_rounds: &mut u32,
        rng: &mut Xoshiro256PlusPlus,
    ) -> Duration {
        if settled {
            if *failed_rounds > 0 {
                tracing::info!(
                    failed_rounds = *failed_rounds,
                    "the receipts service takes events again"
                );
            }
            *failed_rounds = 0;
            return Duration::ZERO;
        }
        *failed_rounds = failed_rounds.saturating_add(1);
        if *failed_rounds == 1 {
            tracing::info!("the receipts service settled nothing this round; events stay pending");
        }
        match full {
            true => self.backoff(*failed_rounds, rng),
            false => Duration::ZERO,
        }
    }

    /// Nothing due: until the next event is, at most the idle bound.
    fn idle_wait(&self, due: &Due, now_ms: i64) -> Duration {
        let until_next = due
            .next_due_ms
            .map_or(u64::MAX, |at| u64::try_from(at.saturating_sub(now_ms)).unwrap_or(0));
        Duration::from_millis(until_next.clamp(1, self.limits.idle_poll_ms_max))
    }

    fn backoff(&self, failed_rounds: u32, rng: &mut Xoshiro256PlusPlus) -> Duration {
        let l = &self.limits;
        retry::delay(l.backoff_base_ms, l.backoff_cap_ms, failed_rounds, rng).max(Duration::from_millis(1))
    }

    /// Delivers `due` and has the writer mark the results. True when the
    /// round settled at least one event (delivered or refused).
    async fn round(&mut self, due: Due) -> bool {
        let marks = self.deliver_all(due.events).await;
        let delivered = marks.iter().filter(|(_, m)| *m == Mark::Delivered).count();
        let settled = marks.iter().filter(|(_, m)| !matches!(m, Mark::Retry { .. })).count();
        self.maybe_crash(delivered);
        let marks = Marks {
            ledger_id: due.ledger_id,
            marks,
        };
        let (reply, answer) = oneshot::channel();
        let wait = Duration::from_millis(MARK_WAIT_MS_MAX);
        let sent = self.writer.send_timeout(Op::OutboxMark { marks, reply }, wait).await;
        let marked = match sent {
            Ok(()) => tokio::time::timeout(wait, answer).await,
            Err(_) => return false,
        };
        match marked {
            Ok(Ok(Ok(_))) => settled > 0,
            other => {
                // Not marked: the events stay pending and are sent again.
                tracing::debug!(answer = ?other.map(|r| r.map(|r| r.map_err(|e| e.to_string()))), "outbox relay: marks not written");
                false
            }
        }
    }

    /// Posts every event, `in_flight_max` at a time; one mark per event.
    async fn deliver_all(&self, events: Vec<Pending>) -> Vec<(i64, Mark)> {
        let mut marks = Vec::with_capacity(events.len());
        let mut tasks = JoinSet::new();
        let mut events = events.into_iter();
        loop {
            while tasks.len() < self.limits.in_flight_max {
                let Some(pending) = events.next() else { break };
                let attempt = Attempt {
                    http: self.http.clone(),
                    endpoint: self.endpoint.clone(),
                    limits: self.limits,
                    seed: self.seed,
                };
                tasks.spawn(attempt.deliver(pending));
            }
            match tasks.join_next().await {
                Some(Ok(mark)) => marks.push(mark),
                // A delivery task that panicked: its event stays pending.
                Some(Err(e)) => tracing::warn!(error = %e, "an outbox delivery failed unexpectedly"),
                None => break,
            }
        }
        marks
    }

    fn maybe_crash(&mut self, delivered: usize) {
        if self.crash.probability <= 0.0 {
            return;
        }
        for _ in 0..delivered {
            if self.crash.rng.random::<f64>() < self.crash.probability {
                tracing::error!("crash injected after a delivery, before marking it: killing the process");
                eprintln!(
                    "payment-service: crash injected relay-after-send (--crash-relay-after-send is set); kill -9 self"
                );
                writer::kill_self();
            }
        }
    }
}

/// One delivery attempt of one event.
struct Attempt {
    http: reqwest::Client,
    endpoint: String,
    limits: RelayLimits,
    seed: u64,
}

impl Attempt {
    async fn deliver(self, pending: Pending) -> (i64, Mark) {
        let id = pending.event.payment_id;
        let retry_number = u32::try_from(pending.attempts.saturating_add(1)).unwrap_or(u32::MAX);
        let retry_after = match self.http.post(&self.endpoint).json(&pending.event).send().await {
            Ok(response) => {
                let (status, next) = (
                    response.status(),
                    retry::classify_status(response.status(), response.headers()).1,
                );
                // Read the (small) answer so the connection can be reused.
                let _ = response.bytes().await;
                match next {
                    Next::Done => return (id, Mark::Delivered),
                    Next::Stop => {
                        tracing::info!(event = %pending.event.event_id, status = status.as_u16(), "event refused by the receipts service: dead letter");
                        return (
                            id,
                            Mark::Refused {
                                status: status.as_u16(),
                            },
                        );
                    }
                    Next::Retry { retry_after } => {
                        tracing::debug!(event = %pending.event.event_id, status = status.as_u16(), "delivery failed; retry");
                        retry_after
                    }
                }
            }
            Err(e) => {
                tracing::debug!(event = %pending.event.event_id, error = %e, "delivery failed; retry");
                None
            }
        };
        // A stream per (event, attempt): the same seed gives the same waits
        // whatever the order in which deliveries finish.
        let mut rng = retry::stream(self.seed ^ splitmix64(u64::from(retry_number)), id.unsigned_abs());
        let l = &self.limits;
        let jitter = retry::delay(l.backoff_base_ms, l.backoff_cap_ms, retry_number, &mut rng);
        let wait_ms = i64::try_from(retry::wait(retry_after, jitter).as_millis()).unwrap_or(i64::MAX);
        let next_attempt_ms = clock::now_ms().saturating_add(wait_ms);
        (id, Mark::Retry { next_attempt_ms })
    }
}

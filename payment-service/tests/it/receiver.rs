//! A fake receipts service for the relay's tests: an axum router on
//! 127.0.0.1 that records every event it is sent (with when) and answers as
//! scripted: 201, 503 with `Retry-After`, another status, or late.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use eo_core::wire::PaymentEvent;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::{TestApp, WAIT};

/// What the fake answers to one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Created,
    /// 503 with `Retry-After: s`.
    Unavailable {
        retry_after_s: u64,
    },
    Status(u16),
    /// 201 after this long (longer than the relay's deadline: a timeout).
    Late(Duration),
}

#[derive(Default)]
struct Shared {
    received: Mutex<Vec<(PaymentEvent, Instant)>>,
    script: Mutex<VecDeque<Answer>>,
    otherwise: Mutex<Option<Answer>>,
}

pub struct FakeReceiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
}

impl FakeReceiver {
    /// Starts on a free port, answering 201 unless scripted otherwise.
    pub async fn start() -> FakeReceiver {
        FakeReceiver::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts on `addr` (a port a previous receiver had: "back up").
    pub async fn start_on(addr: SocketAddr) -> FakeReceiver {
        let listener = TcpListener::bind(addr).await.expect("bind the fake receiver");
        let addr = listener.local_addr().expect("addr");
        let shared = Arc::new(Shared::default());
        let app = axum::Router::new()
            .route(eo_core::wire::RECEIPTS_PATH, axum::routing::post(receive))
            .with_state(Arc::clone(&shared));
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        FakeReceiver {
            addr,
            shared,
            stop: Some(stop),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next answers, in order; then `otherwise` (201 unless set).
    pub fn script(&self, answers: &[Answer]) {
        self.shared.script.lock().unwrap().extend(answers.iter().copied());
    }

    pub fn otherwise(&self, answer: Answer) {
        *self.shared.otherwise.lock().unwrap() = Some(answer);
    }

    pub fn received(&self) -> Vec<(PaymentEvent, Instant)> {
        self.shared.received.lock().unwrap().clone()
    }

    pub fn events(&self) -> Vec<PaymentEvent> {
        self.received().into_iter().map(|(e, _)| e).collect()
    }

    /// Waits (bounded) until `n` events have arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<PaymentEvent> {
        let deadline = Instant::now() + WAIT;
        loop {
            let events = self.events();
            if events.len() >= n {
                return events;
            }
            assert!(Instant::now() < deadline, "only {} of {n} events arrived", events.len());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for FakeReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn receive(State(shared): State<Arc<Shared>>, Json(event): Json<PaymentEvent>) -> Response {
    shared.received.lock().unwrap().push((event, Instant::now()));
    let next = shared.script.lock().unwrap().pop_front();
    let answer = next.or(*shared.otherwise.lock().unwrap()).unwrap_or(Answer::Created);
    match answer {
        Answer::Created => StatusCode::CREATED.into_response(),
        Answer::Unavailable { retry_after_s } => {
            let mut r = StatusCode::SERVICE_UNAVAILABLE.into_response();
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_s));
            r
        }
        Answer::Status(code) => StatusCode::from_u16(code).unwrap().into_response(),
        Answer::Late(wait) => {
            tokio::time::sleep(wait).await;
            StatusCode::CREATED.into_response()
        }
    }
}

/// The service's outbox figures, once `done` says they are final (bounded).
pub async fn outbox_until(app: &TestApp, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let stats = app.stats().await;
        if done(&stats["outbox"]) {
            return stats;
        }
        assert!(Instant::now() < deadline, "outbox never got there: {}", stats["outbox"]);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A loopback port nothing listens on (bound, then released).
pub async fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}

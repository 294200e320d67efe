//! A deterministic lost-request / lost-acknowledgement proxy for the tests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::{WAIT, read_message, reply_and_close, reset};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Pass,
    /// Read the request, then reset the client: the service never sees it.
    LoseRequest,
    /// Forward the request, read the service's answer, then reset the client.
    LoseAnswer,
}

/// The fault for connection `index`: a pure function of (seed, index), about
/// 30 % lost requests and 30 % lost answers, as in the workshop.
pub fn seeded(seed: u64, index: usize) -> Fault {
    match eo_core::seed::splitmix64(seed ^ (index as u64).wrapping_mul(0x9e37_79b9)) % 10 {
        0..=2 => Fault::LoseRequest,
        3..=5 => Fault::LoseAnswer,
        _ => Fault::Pass,
    }
}

pub struct FaultProxy {
    pub url: String,
    pub lost_requests: Arc<AtomicUsize>,
    pub lost_answers: Arc<AtomicUsize>,
}

/// Proxies to `upstream`, one request per connection, applying `plan` by
/// connection index (connections counted in accept order).
pub async fn spawn_proxy(upstream: SocketAddr, plan: impl Fn(usize) -> Fault + Send + Sync + 'static) -> FaultProxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (lost_requests, lost_answers) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (lr, la) = (Arc::clone(&lost_requests), Arc::clone(&lost_answers));
    let plan = Arc::new(plan);
    tokio::spawn(async move {
        let mut index = 0;
        while let Ok((client, _)) = listener.accept().await {
            let fault = plan(index);
            index += 1;
            let (lr, la) = (Arc::clone(&lr), Arc::clone(&la));
            tokio::spawn(async move {
                let _ = tokio::time::timeout(WAIT, handle(client, upstream, fault, &lr, &la)).await;
            });
        }
    });
    FaultProxy {
        url,
        lost_requests,
        lost_answers,
    }
}

async fn handle(
    mut client: TcpStream,
    upstream: SocketAddr,
    fault: Fault,
    lost_requests: &AtomicUsize,
    lost_answers: &AtomicUsize,
) -> std::io::Result<()> {
    let request = read_message(&mut client).await?;
    if fault == Fault::LoseRequest {
        lost_requests.fetch_add(1, Ordering::Relaxed);
        reset(client);
        return Ok(());
    }
    let mut service = TcpStream::connect(upstream).await?;
    service.write_all(&request).await?;
    let answer = read_message(&mut service).await?;
    if fault == Fault::LoseAnswer {
        lost_answers.fetch_add(1, Ordering::Relaxed);
        reset(client);
        return Ok(());
    }
    reply_and_close(client, &answer).await;
    Ok(())
}

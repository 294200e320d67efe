//! One direction of a proxied connection: read from one socket, pass the
//! chunk through the direction's toxics, write to the other socket.
//!
//! Both directions of a connection run as two futures inside one task
//! (`proxy.rs`), so a link needs no locks: it reads the current toxic chain
//! from a `watch` channel (the control plane only ever *sends* to it, never
//! waits for the data plane), and everything else is local state.
//!
//! With no toxic in its direction a link runs the fast path: read, write,
//! two relaxed counter bumps. The slow path is a small state machine over a
//! latency queue, one close/reset deadline, and per-toxic roll state.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use rand::RngExt;
use rand::rngs::Xoshiro256PlusPlus;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

use crate::config::{
    LATENCY_QUEUE_BYTES_MAX, LINK_BUFFER_BYTES_MAX, LINK_BUFFER_BYTES_MIN, LINK_YIELD_BYTES, TOXIC_DURATION_MS_MAX,
};
use crate::proxy::{Chain, ProxyShared};
use crate::rng::{self, Purpose};
use crate::toxic::{Direction, Scope, Toxic, ToxicType};

/// How a link ended; the connection decides what that means for both sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkEnd {
    /// The source sent EOF and the FIN was forwarded (half-close).
    Eof,
    /// A toxic closes the whole connection with FIN (timeout, limit_data).
    Close,
    /// A toxic resets the whole connection: RST to both peers (reset_peer).
    Reset,
    /// An I/O error: a peer vanished; the connection mirrors the abort.
    Broken,
}

/// Counts request/response exchanges on a connection, shared by its two
/// links. An exchange starts each time the client sends after the upstream
/// has sent (or for the first time), which is exactly an HTTP/1.1 request on
/// a keep-alive connection without pipelining.
#[derive(Default)]
pub struct ExchangeTracker {
    /// 0: nothing yet, 1: client spoke last, 2: upstream spoke last.
    last: AtomicU8,
    requests: AtomicU64,
}

impl ExchangeTracker {
    /// Notes data in `dir` and returns the exchange it belongs to.
    fn on_data(&self, dir: Direction) -> u64 {
        let tag = dir as u8 + 1;
        if self.last.load(Relaxed) != tag {
            self.last.store(tag, Relaxed);
            if dir == Direction::Upstream {
                return self.requests.fetch_add(1, Relaxed) + 1;
            }
        }
        self.requests.load(Relaxed)
    }
}

/// What the two links of one connection share.
pub struct ConnCtx {
    pub seed: u64,
    pub proxy: Arc<ProxyShared>,
    /// Accept-order index of this connection on its proxy.
    pub connection: u64,
    pub exchanges: ExchangeTracker,
    /// Set on every chunk; the idle guard clears and checks it.
    pub activity: AtomicBool,
}

impl ConnCtx {
    fn counters(&self, dir: Direction) -> (&AtomicU64, &AtomicU64) {
        let s = &self.proxy.stats;
        match dir {
            Direction::Upstream => (&s.upstream_bytes_received, &s.upstream_bytes_sent),
            Direction::Downstream => (&s.downstream_bytes_received, &s.downstream_bytes_sent),
        }
    }
}

/// Per toxic, per link: the roll and what the toxic did for the current key.
struct ToxicState {
    name: String,
    /// The exchange the roll belongs to (0 for connection scope).
    key: Option<u64>,
    roll: f64,
    /// A fault was recorded for this key (record once per key).
    recorded: bool,
    /// limit_data: bytes forwarded under this key.
    limit_sent: u64,
    /// timeout: the close deadline was armed for this key.
    timeout_armed: bool,
}

/// Shaping decided when a chunk is read, applied when it is written.
#[derive(Clone, Copy, Default)]
struct Shape {
    /// slicer: (average_size, size_variation, delay µs).
    slicer: Option<(i64, i64, i64)>,
    /// bandwidth: KB/s (1 KB = 1000 B, as toxiproxy); 0 means unlimited.
    rate: i64,
}

struct Queued {
    release: Instant,
    data: Vec<u8>,
    shape: Shape,
}

struct Deadline {
    at: Instant,
    end: LinkEnd,
    toxic: String,
}

/// The slow path's state.
struct Slow {
    states: Vec<ToxicState>,
    queue: VecDeque<Queued>,
    queued_bytes: usize,
    deadline: Option<Deadline>,
    /// reset_peer fired: drop everything until the deadline.
    resetting: bool,
    /// No more reading: the source ended, or limit_data was reached.
    stop_reading: bool,
    /// How to end once the queue is drained (set with `stop_reading`).
    finish: LinkEnd,
    /// Jitter and slice sizes (one stream per link, seeded like the rolls).
    shape_rng: Xoshiro256PlusPlus,
    pace_next: Instant,
}

impl Slow {
    fn new(shape_rng: Xoshiro256PlusPlus) -> Self {
        Slow {
            states: Vec::new(),
            queue: VecDeque::new(),
            queued_bytes: 0,
            deadline: None,
            resetting: false,
            stop_reading: false,
            finish: LinkEnd::Eof,
            shape_rng,
            pace_next: Instant::now(),
        }
    }

    /// Nothing pending: the fast path may take over.
    fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.deadline.is_none() && !self.stop_reading
    }

    fn arm(&mut self, at: Instant, end: LinkEnd, toxic: &str) {
        let replace = match &self.deadline {
            None => true,
            Some(d) => at < d.at || (at == d.at && end == LinkEnd::Reset),
        };
        if replace {
            self.deadline = Some(Deadline {
                at,
                end,
                toxic: toxic.to_owned(),
            });
        }
    }
}

/// Everything a link needs to decide and record.
struct Link<'a> {
    ctx: &'a ConnCtx,
    dir: Direction,
}

impl Link<'_> {
    /// The state of `t`, rolled for `key` (re-rolled when the key changes).
    fn state<'s>(&self, slow: &'s mut Slow, t: &Toxic, key: u64) -> &'s mut ToxicState {
        let idx = match slow.states.iter().position(|s| s.name == t.name) {
            Some(i) => i,
            None => {
                slow.states.push(ToxicState {
                    name: t.name.clone(),
                    key: None,
                    roll: 0.0,
                    recorded: false,
                    limit_sent: 0,
                    timeout_armed: false,
                });
                slow.states.len() - 1
            }
        };
        let st = &mut slow.states[idx];
        if st.key != Some(key) {
            st.key = Some(key);
            st.roll = rng::toxicity_roll(
                self.ctx.seed,
                &self.ctx.proxy.name,
                self.ctx.connection,
                self.dir,
                &t.name,
                key,
            );
            st.recorded = false;
            st.limit_sent = 0;
            st.timeout_armed = false;
        }
        st
    }

    fn record(&self, st: &mut ToxicState, t: &Toxic, exchange: u64) {
        if !st.recorded {
            st.recorded = true;
            self.ctx
                .proxy
                .stats
                .record_fault(self.ctx.connection, exchange, &t.name, t.ty, self.dir);
        }
    }

    /// Called when the chain changes (and when the slow path starts):
    /// arms connection-scoped timeout toxics, which in toxiproxy start their
    /// clock when they join the link, not when data flows; disarms a close
    /// whose toxic was removed or no longer fires; forgets removed toxics.
    fn on_chain(&self, slow: &mut Slow, toxics: &[Toxic]) {
        slow.states.retain(|s| toxics.iter().any(|t| t.name == s.name));
        let now = Instant::now();
        for t in toxics {
            if t.ty == ToxicType::Timeout && t.scope == Scope::Connection {
                let st = self.state(slow, t, 0);
                let fires = t.fires(st.roll);
                let ms = t.millis("timeout");
                if fires && !ms.is_zero() && !st.timeout_armed {
                    st.timeout_armed = true;
                    slow.arm(now + ms, LinkEnd::Close, &t.name);
                }
            }
        }
        if let Some(d) = &slow.deadline
            && d.end == LinkEnd::Close
        {
            let still = toxics.iter().find(|t| t.name == d.toxic).is_some_and(|t| {
                slow.states
                    .iter()
                    .find(|s| s.name == t.name)
                    .is_some_and(|s| t.fires(s.roll))
            });
            if !still {
                slow.deadline = None;
            }
        }
    }

    /// Runs one read chunk through the toxics. Returns how many bytes of it
    /// pass, when they may be released, and how to shape them.
    fn process(&self, slow: &mut Slow, toxics: &[Toxic], len: usize, exchange: u64) -> (usize, Instant, Shape) {
        let now = Instant::now();
        let mut release = now;
        let mut shape = Shape::default();
        let mut pass = len;
        for t in toxics {
            let key = if t.scope == Scope::Request { exchange } else { 0 };
            let st = self.state(slow, t, key);
            if !t.fires(st.roll) {
                continue;
            }
            match t.ty {
                ToxicType::Noop | ToxicType::SlowClose => {}
                ToxicType::ResetPeer => {
                    self.record(st, t, exchange);
                    let at = now + t.millis("timeout");
                    slow.resetting = true;
                    slow.arm(at, LinkEnd::Reset, &t.name);
                    return (0, now, shape);
                }
                ToxicType::Timeout => {
                    self.record(st, t, exchange);
                    let ms = t.millis("timeout");
                    if !ms.is_zero() && !st.timeout_armed {
                        st.timeout_armed = true;
                        slow.arm(now + ms, LinkEnd::Close, &t.name);
                    }
                    return (0, now, shape);
                }
                ToxicType::LimitData => {
                    let limit = t.attribute("bytes").max(0) as u64;
                    let remaining = limit.saturating_sub(st.limit_sent);
                    let reached = (pass as u64) >= remaining;
                    if reached {
                        pass = remaining as usize;
                        self.record(st, t, exchange);
                    }
                    st.limit_sent += pass as u64;
                    if reached {
                        slow.stop_reading = true;
                        slow.finish = LinkEnd::Close;
                    }
                    if pass == 0 {
                        return (0, now, shape);
                    }
                }
                ToxicType::Latency | ToxicType::Bandwidth | ToxicType::Slicer => {
                    self.record(st, t, exchange);
                    shape_chunk(t, &mut slow.shape_rng, &mut release, &mut shape);
                }
            }
        }
        (pass, release, shape)
    }

    /// The slow_close delay for the end of this direction, if one fires.
    fn slow_close_delay(&self, slow: &mut Slow, toxics: &[Toxic]) -> Duration {
        let exchange = self.ctx.exchanges.requests.load(Relaxed);
        let mut delay = Duration::ZERO;
        for t in toxics.iter().filter(|t| t.ty == ToxicType::SlowClose) {
            let key = if t.scope == Scope::Request { exchange } else { 0 };
            let st = self.state(slow, t, key);
            if t.fires(st.roll) {
                self.record(st, t, exchange);
                delay += t.millis("delay");
            }
        }
        delay
    }
}

/// What a firing latency, bandwidth or slicer toxic does to a chunk: delay
/// its release, or pace or slice its write.
fn shape_chunk(t: &Toxic, rng: &mut Xoshiro256PlusPlus, release: &mut Instant, shape: &mut Shape) {
    match t.ty {
        ToxicType::Latency => {
            let jitter = t.attribute("jitter").clamp(0, TOXIC_DURATION_MS_MAX);
            let mut ms = t.attribute("latency").clamp(0, TOXIC_DURATION_MS_MAX);
            if jitter > 0 {
                ms += rng.random_range(-jitter..jitter);
            }
            *release += Duration::from_millis(ms.clamp(0, TOXIC_DURATION_MS_MAX) as u64);
        }
        ToxicType::Bandwidth => {
            let rate = t.attribute("rate");
            if rate > 0 {
                shape.rate = if shape.rate == 0 { rate } else { shape.rate.min(rate) };
            }
        }
        ToxicType::Slicer => {
            let avg = t.attribute("average_size");
            if avg > 0 {
                shape.slicer = Some((avg, t.attribute("size_variation"), t.attribute("delay")));
            }
        }
        _ => {}
    }
}

/// Sleeps until `at`, or forever when there is no deadline (no timer is
/// registered then, which keeps the common case cheap).
async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Writes `data` with slicing and bandwidth pacing.
async fn write_shaped<W: AsyncWrite + Unpin>(
    dst: &mut W,
    data: &[u8],
    shape: Shape,
    rng: &mut Xoshiro256PlusPlus,
    pace_next: &mut Instant,
) -> std::io::Result<()> {
    if shape.slicer.is_none() && shape.rate <= 0 {
        return dst.write_all(data).await;
    }
    let mut rest = data;
    let mut first = true;
    while !rest.is_empty() {
        let piece_len = match shape.slicer {
            Some((avg, var, delay_us)) => {
                if !first && delay_us > 0 {
                    let us = delay_us.min(TOXIC_DURATION_MS_MAX.saturating_mul(1000)) as u64;
                    tokio::time::sleep(Duration::from_micros(us)).await;
                }
                let var = var.clamp(0, avg);
                let size = if var > 0 {
                    avg.saturating_add(rng.random_range(-var..=var))
                } else {
                    avg
                };
                (size.max(1) as usize).min(rest.len())
            }
            None => rest.len(),
        };
        first = false;
        let (piece, tail) = rest.split_at(piece_len);
        rest = tail;
        if shape.rate > 0 {
            // rate KB/s = rate bytes per ms; send at most 100 ms worth at a
            // time, sleeping before each piece for its share (toxiproxy).
            let rate = shape.rate as u64;
            let piece_max = (rate.saturating_mul(100)).clamp(1, usize::MAX as u64) as usize;
            for sub in piece.chunks(piece_max) {
                let cost = Duration::from_micros((sub.len() as u64).saturating_mul(1000) / rate);
                let now = Instant::now();
                *pace_next = (*pace_next).max(now) + cost;
                sleep_until(*pace_next).await;
                dst.write_all(sub).await?;
            }
        } else {
            dst.write_all(piece).await?;
        }
    }
    Ok(())
}

/// Cooperative scheduling for a link: a yield once [`LINK_YIELD_BYTES`] were
/// forwarded since the last one (so after every read of a full-size buffer),
/// so that a bulk flow whose sockets never block cannot hold a worker thread
/// (see the constant).
#[derive(Default)]
struct Fairness {
    since_yield: usize,
}

impl Fairness {
    async fn forwarded(&mut self, n: usize) {
        self.since_yield += n;
        if self.since_yield >= LINK_YIELD_BYTES {
            self.since_yield = 0;
            tokio::task::yield_now().await;
        }
    }
}

/// Forwards the end of the stream as a half-close.
async fn finish_eof<W: AsyncWrite + Unpin>(dst: &mut W) -> LinkEnd {
    // A failed shutdown means the peer is already gone; the connection
    // is closing either way.
    let _ = dst.shutdown().await;
    LinkEnd::Eof
}

/// Runs one direction until it ends. Cancel-safe: the connection drops this
/// future to stop it (proxy disabled, idle, or the other direction reset).
pub async fn pump<R, W>(
    ctx: &ConnCtx,
    dir: Direction,
    src: &mut R,
    dst: &mut W,
    chain_rx: watch::Receiver<Arc<Chain>>,
) -> LinkEnd
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut pump = Pump::new(ctx, dir, chain_rx);
    loop {
        let fast = pump.chain.for_direction(dir).is_empty() && pump.slow.is_idle();
        let step = if fast {
            pump.fast_step(src, dst).await
        } else {
            pump.slow_step(src, dst).await
        };
        if let Some(end) = step {
            return end;
        }
    }
}

/// One direction's state between events. A step returns `Some` when the
/// link ends.
struct Pump<'a> {
    link: Link<'a>,
    received: &'a AtomicU64,
    sent: &'a AtomicU64,
    buf: Vec<u8>,
    chain_rx: watch::Receiver<Arc<Chain>>,
    chain: Arc<Chain>,
    /// The sender lives as long as the proxy; once it is gone, stop watching
    /// (a closed `changed()` would otherwise resolve in a busy loop).
    watching: bool,
    slow: Slow,
    /// The slow path ran since the link last took the fast one.
    slow_started: bool,
    fairness: Fairness,
}

impl<'a> Pump<'a> {
    fn new(ctx: &'a ConnCtx, dir: Direction, mut chain_rx: watch::Receiver<Arc<Chain>>) -> Self {
        let (received, sent) = ctx.counters(dir);
        let chain = chain_rx.borrow_and_update().clone();
        let shape_rng = rng::rng_for(ctx.seed, &ctx.proxy.name, ctx.connection, dir, "", 0, Purpose::Shape);
        Pump {
            link: Link { ctx, dir },
            received,
            sent,
            buf: vec![0u8; LINK_BUFFER_BYTES_MIN],
            chain_rx,
            chain,
            watching: true,
            slow: Slow::new(shape_rng),
            slow_started: false,
            fairness: Fairness::default(),
        }
    }

    /// Takes a new chain; false when the sender is gone.
    fn on_chain_change(&mut self, changed: Result<(), watch::error::RecvError>) -> bool {
        match changed {
            Ok(()) => {
                self.chain = self.chain_rx.borrow_and_update().clone();
                true
            }
            Err(_) => {
                self.watching = false;
                false
            }
        }
    }

    /// Notes `n` bytes read; returns the exchange they belong to.
    fn on_read(&self, n: usize) -> u64 {
        let ctx = self.link.ctx;
        ctx.activity.store(true, Relaxed);
        self.received.fetch_add(n as u64, Relaxed);
        ctx.exchanges.on_data(self.link.dir)
    }

    /// No toxic in this direction: read, write, count.
    async fn fast_step<R, W>(&mut self, src: &mut R, dst: &mut W) -> Option<LinkEnd>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        self.slow_started = false;
        let read = tokio::select! {
            biased;
            changed = self.chain_rx.changed(), if self.watching => {
                self.on_chain_change(changed);
                return None;
            }
            r = src.read(&mut self.buf) => r,
        };
        let n = match read {
            Ok(0) => return Some(finish_eof(dst).await),
            Ok(n) => n,
            Err(_) => return Some(LinkEnd::Broken),
        };
        self.on_read(n);
        if dst.write_all(&self.buf[..n]).await.is_err() {
            return Some(LinkEnd::Broken);
        }
        self.sent.fetch_add(n as u64, Relaxed);
        if n == self.buf.len() && self.buf.len() < LINK_BUFFER_BYTES_MAX {
            // A full read means a bulk flow: grow the buffer.
            self.buf.resize(self.buf.len() * 2, 0);
        }
        self.fairness.forwarded(n).await;
        None
    }

    /// Toxics apply, or something is still pending (queue, deadline, end).
    async fn slow_step<R, W>(&mut self, src: &mut R, dst: &mut W) -> Option<LinkEnd>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let chain = self.chain.clone();
        let toxics = chain.for_direction(self.link.dir);
        if !self.slow_started {
            self.slow_started = true;
            self.link.on_chain(&mut self.slow, toxics);
        }
        let slow = &self.slow;
        if slow.stop_reading && slow.queue.is_empty() && !slow.resetting {
            return Some(self.finish(toxics, dst).await);
        }
        let can_read = !slow.stop_reading && slow.queued_bytes < LATENCY_QUEUE_BYTES_MAX;
        let deadline_at = slow.deadline.as_ref().map(|d| d.at);
        let head_at = slow.queue.front().map(|q| q.release);
        tokio::select! {
            biased;
            changed = self.chain_rx.changed(), if self.watching => {
                if self.on_chain_change(changed) {
                    let chain = self.chain.clone();
                    self.link.on_chain(&mut self.slow, chain.for_direction(self.link.dir));
                }
                None
            }
            () = sleep_until_opt(deadline_at) => self.on_deadline(toxics),
            () = sleep_until_opt(head_at) => self.release_head(dst).await,
            r = src.read(&mut self.buf), if can_read => self.on_slow_read(r, toxics, dst).await,
        }
    }

    /// The source ended (or limit_data was reached) and the queue is empty.
    async fn finish<W: AsyncWrite + Unpin>(&mut self, toxics: &[Toxic], dst: &mut W) -> LinkEnd {
        if self.slow.finish != LinkEnd::Eof {
            return self.slow.finish;
        }
        let delay = self.link.slow_close_delay(&mut self.slow, toxics);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        finish_eof(dst).await
    }

    /// The reset/close deadline passed: the link ends.
    fn on_deadline(&mut self, toxics: &[Toxic]) -> Option<LinkEnd> {
        let d = self.slow.deadline.take()?;
        if d.end == LinkEnd::Close
            && let Some(t) = toxics.iter().find(|t| t.name == d.toxic)
        {
            // An idle link closed by a timeout toxic records here.
            let key = if t.scope == Scope::Request {
                self.link.ctx.exchanges.requests.load(Relaxed)
            } else {
                0
            };
            let st = self.link.state(&mut self.slow, t, key);
            self.link.record(st, t, key);
        }
        Some(d.end)
    }

    /// The head of the latency queue is due: write it.
    async fn release_head<W: AsyncWrite + Unpin>(&mut self, dst: &mut W) -> Option<LinkEnd> {
        let q = self.slow.queue.pop_front()?;
        self.slow.queued_bytes -= q.data.len();
        let slow = &mut self.slow;
        let r = write_shaped(dst, &q.data, q.shape, &mut slow.shape_rng, &mut slow.pace_next).await;
        if r.is_err() {
            return Some(LinkEnd::Broken);
        }
        self.sent.fetch_add(q.data.len() as u64, Relaxed);
        None
    }

    /// A read on the slow path: through the toxics, then queued or written.
    async fn on_slow_read<W: AsyncWrite + Unpin>(
        &mut self,
        read: std::io::Result<usize>,
        toxics: &[Toxic],
        dst: &mut W,
    ) -> Option<LinkEnd> {
        let n = match read {
            Ok(0) => {
                self.slow.stop_reading = true;
                return None;
            }
            Ok(n) => n,
            Err(_) => return Some(LinkEnd::Broken),
        };
        let exchange = self.on_read(n);
        self.fairness.forwarded(n).await;
        if self.slow.resetting {
            return None; // reset_peer fired: the rest of the stream is dropped
        }
        let (pass, release, shape) = self.link.process(&mut self.slow, toxics, n, exchange);
        if pass == 0 {
            return None;
        }
        let slow = &mut self.slow;
        if release > Instant::now() || !slow.queue.is_empty() {
            slow.queued_bytes += pass;
            let data = self.buf[..pass].to_vec();
            slow.queue.push_back(Queued { release, data, shape });
            return None;
        }
        let r = write_shaped(dst, &self.buf[..pass], shape, &mut slow.shape_rng, &mut slow.pace_next).await;
        if r.is_err() {
            return Some(LinkEnd::Broken);
        }
        self.sent.fetch_add(pass as u64, Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::pin::Pin;
    use std::sync::atomic::AtomicU64;
    use std::task::{Context, Poll};

    use super::*;
    use crate::proxy::ProxyShared;

    /// A source that is always ready (unlike a socket, it never touches
    /// tokio's budget): `left` bytes of zeros, then EOF.
    struct AlwaysReady {
        left: usize,
    }

    impl AsyncRead for AlwaysReady {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let n = buf.remaining().min(self.left);
            buf.put_slice(&vec![0u8; n]);
            self.left -= n;
            Poll::Ready(Ok(()))
        }
    }

    /// A destination that is always ready and discards everything.
    struct Discard;

    impl AsyncWrite for Discard {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// The copy loop yields every `LINK_YIELD_BYTES` even when its sockets
    /// never block, so that another task on the same (single) thread runs.
    /// Deterministic: without the yield the other task never runs before
    /// the link ends.
    #[tokio::test]
    async fn a_link_that_never_blocks_still_yields() {
        let shared = ProxyShared::new("p".into(), &[]);
        let ctx = ConnCtx {
            seed: 1,
            proxy: shared.clone(),
            connection: 0,
            exchanges: ExchangeTracker::default(),
            activity: AtomicBool::new(false),
        };
        let polls = Arc::new(AtomicU64::new(0));
        let counter = polls.clone();
        let other = tokio::spawn(async move {
            loop {
                counter.fetch_add(1, Relaxed);
                tokio::task::yield_now().await;
            }
        });
        let rounds = 64;
        let mut src = AlwaysReady {
            left: rounds * LINK_YIELD_BYTES,
        };
        let end = pump(
            &ctx,
            Direction::Upstream,
            &mut src,
            &mut Discard,
            shared.chain.subscribe(),
        )
        .await;
        other.abort();
        assert_eq!(end, LinkEnd::Eof);
        assert_eq!(
            shared.stats.upstream_bytes_sent.load(Relaxed),
            (rounds * LINK_YIELD_BYTES) as u64
        );
        // One yield per LINK_YIELD_BYTES, or per read when a read is bigger.
        let per_yield = LINK_YIELD_BYTES.max(LINK_BUFFER_BYTES_MAX);
        let expected = (rounds * LINK_YIELD_BYTES / per_yield - 1) as u64;
        let polled = polls.load(Relaxed);
        assert!(
            polled >= expected,
            "the other task ran {polled} times, expected {expected}"
        );
    }
}

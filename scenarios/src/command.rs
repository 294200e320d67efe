//! `--service-cmd`: a service this runner did not write, started with a shell
//! command, restarted whenever it dies, and killed (kill -9, its whole
//! process group: `sh -c "java -jar ..."` forks) on request or when the
//! lesson ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::TcpStream;
use tokio::sync::{Notify, oneshot};

use crate::parts::{POLL_MS, SERVICE_START_MS_MAX, STEP_TIMEOUT_MS, Service};

/// Restarts of one lesson's service at most, so a command that dies at once
/// cannot loop for ever.
const RESTARTS_MAX: u64 = 100;

/// A shell running the command, leader of its own process group.
struct Group(tokio::process::Child);

impl Group {
    fn spawn(cmd: &str) -> anyhow::Result<Group> {
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start the service command {cmd:?}"))?;
        Ok(Group(child))
    }

    /// kill -9 to the whole group (the shell and what it started).
    fn kill(&self) {
        if let Some(pid) = self.0.id().and_then(|pid| i32::try_from(pid).ok()) {
            // SAFETY: kill(2) has no memory-safety preconditions; a negative
            // pid names the process group this child leads.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }

    /// Waits (bounded) until the service accepts connections at `addr`.
    async fn wait_until_up(&mut self, addr: SocketAddr, url: &str) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(SERVICE_START_MS_MAX);
        loop {
            if TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            if let Some(status) = self.0.try_wait()? {
                bail!("the service command exited ({status}) before it listened at {url}; run it by hand to see why");
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("the service command did not listen at {url} within {SERVICE_START_MS_MAX} ms");
            }
            tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
        }
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits (bounded) until nothing accepts connections at `addr` any more: the
/// killed service's last process has let go of its port.
async fn wait_until_down(addr: SocketAddr) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(STEP_TIMEOUT_MS);
    while TcpStream::connect(addr).await.is_ok() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(POLL_MS)).await;
    }
}

/// Starts `cmd` and supervises it: restarted when it dies (or is killed
/// through [`Service::restart`]), killed when the lesson stops it.
pub(crate) async fn supervise(cmd: &str, url: &str, addr: SocketAddr) -> anyhow::Result<Service> {
    if TcpStream::connect(addr).await.is_ok() {
        bail!(
            "something already answers at {url}: stop it, or leave out --service-cmd to judge the service running there"
        );
    }
    let mut child = Group::spawn(cmd)?;
    child.wait_until_up(addr, url).await?;
    let restarts = Arc::new(AtomicU64::new(0));
    let restart = Arc::new(Notify::new());
    let (stop, mut stopped) = oneshot::channel::<()>();
    let (cmd, kill, counter, at) = (
        cmd.to_owned(),
        Arc::clone(&restart),
        Arc::clone(&restarts),
        url.to_owned(),
    );
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                () = kill.notified() => child.kill(),
                status = child.0.wait() => {
                    tracing::debug!(?status, "the service command ended; starting it again");
                    if counter.load(Ordering::Relaxed) >= RESTARTS_MAX {
                        bail!("the service command died {RESTARTS_MAX} times; giving up");
                    }
                    wait_until_down(addr).await;
                    child = Group::spawn(&cmd)?;
                    child.wait_until_up(addr, &at).await?;
                    // Counted once it is back: a restart is complete.
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                _ = &mut stopped => {
                    child.kill();
                    let _ = tokio::time::timeout(Duration::from_millis(STEP_TIMEOUT_MS), child.0.wait()).await;
                    return Ok(());
                }
            }
        }
    });
    Ok(Service {
        url: url.to_owned(),
        addr,
        restarts,
        restart: Some(restart),
        stop: Some(stop),
        task,
    })
}

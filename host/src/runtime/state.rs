//! What one plugin call's store holds: a WASI context with nothing real
//! behind it (stdout and stderr captured, a frozen clock, seeded random, no
//! files, no network), the plugin log, and the memory limiter.
//!
//! Why deterministic stand-ins rather than refusing the imports: the
//! JavaScript and Python runtimes a plugin may be built with import clocks,
//! random, filesystem and sockets whether or not the plugin's code uses them.
//! Refusing them refuses those languages; giving them the host's would let a
//! plugin see real time, host randomness, files or the network. Instead a
//! call sees the same world every time it runs on the same input, so a dry
//! run shows exactly what the delivery will do:
//! - wall clock: frozen at the call's [`Determinism::now`] (the event's
//!   `occurred_at`, the window's end);
//! - monotonic clock: frozen at 0 (a plugin that sleeps or spins on it only
//!   runs into its time limit);
//! - random (secure and insecure): a ChaCha stream seeded from the call's
//!   input, so the same event gives the same numbers;
//! - filesystem: no preopened directory, so no path can be opened;
//! - sockets: every address refused and name lookup off (wasmtime-wasi's
//!   defaults, spelled out here so a change of default cannot open them).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use std::time::Duration;

use bytes::Bytes;
use rand::SeedableRng;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

use super::types::{LogLevel, LogLine};
use crate::util::truncate;

/// Caps on what a plugin may log in one call.
#[derive(Debug, Clone, Copy)]
pub struct LogLimits {
    /// Lines beyond this are counted, not kept.
    pub max_lines: usize,
    /// Longer lines are cut at a character boundary and marked `…`.
    pub max_line_bytes: usize,
}

/// What a call's clocks and random generator show: derived from its input,
/// never from the host.
#[derive(Debug, Clone, Copy)]
pub struct Determinism {
    /// The wall clock's frozen reading, since the Unix epoch.
    pub now: Duration,
    /// Seed of the call's random stream.
    pub seed: [u8; 32],
}

/// A wall clock that always reads the same instant.
struct FrozenWallClock(Duration);

impl HostWallClock for FrozenWallClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }
    fn now(&self) -> Duration {
        self.0
    }
}

/// A monotonic clock that never advances.
struct FrozenMonotonicClock;

impl HostMonotonicClock for FrozenMonotonicClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        0
    }
}

/// Per-call store data.
pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    /// Lines from `host.log`, in order.
    pub(super) log: Vec<LogLine>,
    /// Lines dropped over `max_lines` (reported as one final line).
    pub(super) dropped_lines: usize,
    pub(super) log_limits: LogLimits,
    /// Captured stdout / stderr (bounded; the excess is dropped, never trapped
    /// on, so a chatty plugin cannot fail itself by printing).
    pub(super) stdout: CapturedOutput,
    pub(super) stderr: CapturedOutput,
    pub(super) limiter: MemoryLimiter,
    /// Ids handed out by `host.delivery-id`, by request index; the caller
    /// gives them to the deliveries it makes of the requests.
    pub(super) delivery_ids: Vec<String>,
    pub(super) id_clock: IdClock,
    /// The subscription's held items, for `host.take-held` (None: empty).
    pub(super) held: Option<std::sync::Arc<dyn super::HeldSource>>,
    /// What `host.take-held` handed out.
    pub(super) taken: Vec<super::TakenItem>,
}

/// The clock delivery ids are stamped with (the engine's: ids of records
/// pruned by age must sort by the clock that ages them).
pub type IdClock = std::sync::Arc<dyn Fn() -> jiff::Timestamp + Send + Sync>;

/// The most ids one call may ask for (far above the request limit).
const MAX_DELIVERY_IDS: usize = 1024;

impl State {
    /// The items held under `group` not taken yet in this call; recorded
    /// so the caller removes them with the call's result.
    pub fn take_held(&mut self, group: &str) -> Vec<String> {
        let Some(held) = &self.held else {
            return Vec::new();
        };
        let mut items = Vec::new();
        for taken in held.held_in_group(group) {
            if self.taken.iter().all(|t| t.key != taken.key) {
                items.push(taken.item.clone());
                self.taken.push(taken);
            }
        }
        items
    }

    /// The id of the `index`-th request's delivery, made on first ask.
    pub fn delivery_id(&mut self, index: u32) -> String {
        let index = index as usize;
        if index >= MAX_DELIVERY_IDS {
            return String::new();
        }
        while self.delivery_ids.len() <= index {
            let id = crate::util::new_id_at("dlv", (self.id_clock)());
            self.delivery_ids.push(id);
        }
        self.delivery_ids[index].clone()
    }
}

impl State {
    pub fn new(
        memory_limit: usize,
        log_limits: LogLimits,
        determinism: Determinism,
        id_clock: IdClock,
    ) -> Self {
        let cap = log_limits
            .max_lines
            .saturating_mul(log_limits.max_line_bytes);
        let stdout = CapturedOutput::new(cap);
        let stderr = CapturedOutput::new(cap);
        let mut builder = WasiCtx::builder();
        let mut insecure_seed = [0u8; 16];
        insecure_seed.copy_from_slice(&determinism.seed[..16]);
        // Secure and insecure streams differ so one does not reveal the other.
        let mut insecure = determinism.seed;
        insecure[31] ^= 0x5a;
        builder
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .wall_clock(FrozenWallClock(determinism.now))
            .monotonic_clock(FrozenMonotonicClock)
            .secure_random(rand::rngs::StdRng::from_seed(determinism.seed))
            .insecure_random(rand::rngs::StdRng::from_seed(insecure))
            .insecure_random_seed(u128::from_le_bytes(insecure_seed))
            // Far below wasmtime's 64 MiB: the bytes are copied into the
            // guest, and no plugin needs more than a key's worth.
            .max_random_size(64 * 1024)
            .socket_addr_check(|_, _| Box::pin(async { false }))
            .allow_ip_name_lookup(false)
            .allow_tcp(false)
            .allow_udp(false);
        State {
            wasi: builder.build(),
            table: ResourceTable::new(),
            log: Vec::new(),
            dropped_lines: 0,
            log_limits,
            stdout,
            stderr,
            limiter: MemoryLimiter {
                limit: memory_limit,
                exceeded: false,
            },
            delivery_ids: Vec::new(),
            id_clock,
            held: None,
            taken: Vec::new(),
        }
    }

    /// Appends one line, truncated and capped per [`LogLimits`].
    pub(super) fn push_log(&mut self, level: LogLevel, message: &str) {
        if self.log.len() >= self.log_limits.max_lines {
            self.dropped_lines += 1;
            return;
        }
        self.log.push(LogLine {
            level,
            message: truncate(message, self.log_limits.max_line_bytes),
        });
    }

    /// The whole log: `host.log` lines, then stdout, then stderr lines, then a
    /// note about dropped lines.
    pub(super) fn take_log(&mut self) -> Vec<LogLine> {
        for (pipe, level) in [
            (self.stdout.clone(), LogLevel::Info),
            (self.stderr.clone(), LogLevel::Warn),
        ] {
            let text = pipe.text();
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                self.push_log(level, line);
            }
        }
        let mut log = std::mem::take(&mut self.log);
        if self.dropped_lines > 0 {
            log.push(LogLine {
                level: LogLevel::Warn,
                message: format!(
                    "{} more log lines dropped (limit {} per call)",
                    self.dropped_lines, self.log_limits.max_lines
                ),
            });
        }
        log
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Refuses linear-memory growth past the call's limit and remembers that it
/// did, so the failure is reported as "memory limit" rather than as whatever
/// the guest's allocator does next.
pub struct MemoryLimiter {
    limit: usize,
    pub(super) exceeded: bool,
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit {
            self.exceeded = true;
            // An error (not `Ok(false)`) traps right here, at the grow.
            return Err(wasmtime::Error::msg("memory limit exceeded"));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a plugin needs a few thousand.
        Ok(desired <= 100_000)
    }
}

/// A bounded in-memory sink for the guest's stdout or stderr. Unlike
/// wasmtime-wasi's `MemoryOutputPipe`, writing past the cap silently drops
/// bytes instead of trapping the guest.
#[derive(Clone)]
pub struct CapturedOutput {
    inner: Arc<Mutex<Vec<u8>>>,
    cap: usize,
}

impl CapturedOutput {
    fn new(cap: usize) -> Self {
        CapturedOutput {
            inner: Arc::new(Mutex::new(Vec::new())),
            cap,
        }
    }

    fn append(&self, bytes: &[u8]) {
        let mut buf = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let room = self.cap.saturating_sub(buf.len());
        buf.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// Everything captured so far, lossily decoded.
    pub fn text(&self) -> String {
        let buf = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl IsTerminal for CapturedOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for CapturedOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }

    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for CapturedOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.append(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl OutputStream for CapturedOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.append(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for CapturedOutput {
    async fn ready(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_is_capped_and_reports_drops() {
        let mut state = State::new(
            1 << 20,
            LogLimits {
                max_lines: 2,
                max_line_bytes: 4,
            },
            Determinism {
                now: Duration::ZERO,
                seed: [0; 32],
            },
            std::sync::Arc::new(jiff::Timestamp::now),
        );
        for _ in 0..5 {
            state.push_log(LogLevel::Info, "abcdefgh");
        }
        let log = state.take_log();
        assert_eq!(log.len(), 3);
        assert_eq!(log[0].message, "abcd…");
        assert!(log[2].message.starts_with("3 more log lines dropped"));
    }
}

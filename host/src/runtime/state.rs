//! What one plugin call's store holds: an empty WASI context whose stdout and
//! stderr are captured, the plugin log, and the memory limiter.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

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
}

impl State {
    pub fn new(memory_limit: usize, log_limits: LogLimits) -> Self {
        let cap = log_limits
            .max_lines
            .saturating_mul(log_limits.max_line_bytes);
        let stdout = CapturedOutput::new(cap);
        let stderr = CapturedOutput::new(cap);
        let mut builder = WasiCtx::builder();
        builder.stdout(stdout.clone()).stderr(stderr.clone());
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

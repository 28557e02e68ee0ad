//! Links the WASI interfaces a guest may import (`module::WASI_ALLOWED`) so
//! that every function returns at once on the calling thread, whatever
//! thread that is.
//!
//! Owns the choice of implementation behind each WASI function. Must never
//! let a guest call wait, nor touch tokio: the daemon calls guests on its
//! async workers, where wasmtime-wasi's synchronous bindings of the
//! functions that may wait (`in_tokio`, a `block_on` of the ambient runtime)
//! panic. Must never answer differently on two replicas or two runs.
//!
//! wasmtime-wasi's own bindings serve every function that cannot wait. The
//! ones that can are ours, and each is thin: it polls wasmtime-wasi's async
//! version once, on this thread, with a waker that does nothing. The
//! resources a guest can reach here are always ready or never (stdout and
//! stderr are sinks, stdin is closed, the monotonic clock stands still: see
//! `wasi.rs`), so one poll settles the call the way waiting would have, or
//! shows that waiting would never end; then the call traps, the same way on
//! every replica, rather than hang the group.
//!
//! What is ours:
//! - `wasi:io/streams`: the `blocking-*` methods of both stream kinds, and
//!   the drop of a stream (which waits for the stream to wind down).
//! - `wasi:io/poll`: `poll`, `pollable.ready`, `pollable.block`.
//! - `wasi:clocks/monotonic-clock`: `subscribe-duration` and
//!   `subscribe-instant`, whose wasmtime-wasi pollables are tokio timers.
//!
//! `wasi:filesystem/types` keeps wasmtime-wasi's synchronous binding, which
//! does go through tokio, because a guest cannot reach those functions:
//! every one of them needs a descriptor, and a guest gets descriptors only
//! from preopened directories, of which it has none.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::cli::{WasiCli, WasiCliView};
use wasmtime_wasi::clocks::{WasiClocks, WasiClocksCtxView, WasiClocksView};
use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView};
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;
use wasmtime_wasi::p2::bindings::sync::io::{poll, streams};
use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, io as async_io, random, sync};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, DynPollable, Pollable, StreamError, StreamResult};
use wasmtime_wasi::random::{WasiRandom, WasiRandomView};

use crate::host::HostState;
use crate::wasi::FixedRandom;

/// Adds every WASI interface a guest may import to `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    type T = HostState;
    let l = linker;
    async_io::error::add_to_linker::<T, Table>(l, |s| s.table())?;
    poll::add_to_linker::<T, NoWait>(l, HostState::no_wait_io)?;
    streams::add_to_linker::<T, NoWait>(l, HostState::no_wait_io)?;
    monotonic_clock::add_to_linker::<T, StillClock>(l, |s| StillClockView(s.clocks()))?;
    clocks::wall_clock::add_to_linker::<T, WasiClocks>(l, T::clocks)?;
    random::random::add_to_linker::<T, WasiRandom>(l, T::random)?;
    random::insecure::add_to_linker::<T, WasiRandom>(l, T::random)?;
    random::insecure_seed::add_to_linker::<T, Seed>(l, |s| SeedView(&s.random))?;
    cli::exit::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::environment::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::stdin::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::stdout::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::stderr::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_input::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_output::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_stdin::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_stdout::add_to_linker::<T, WasiCli>(l, T::cli)?;
    cli::terminal_stderr::add_to_linker::<T, WasiCli>(l, T::cli)?;
    filesystem::preopens::add_to_linker::<T, WasiFilesystem>(l, T::filesystem)?;
    // Unreachable without a descriptor (see the module docs).
    sync::filesystem::types::add_to_linker::<T, WasiFilesystem>(l, T::filesystem)?;
    Ok(())
}

/// The store's resource table as the `wasi:io/error` binding sees it.
struct Table;

impl HasData for Table {
    type Data<'a> = &'a mut ResourceTable;
}

/// The store's resource table as our `wasi:io` functions see it.
struct NoWait;

impl HasData for NoWait {
    type Data<'a> = NoWaitIo<'a>;
}

pub(crate) struct NoWaitIo<'a> {
    pub(crate) table: &'a mut ResourceTable,
    /// Bytes the guest wrote to its streams since the host last charged
    /// fuel for them (`HostState::charge_host_work`).
    pub(crate) written: &'a mut u64,
}

/// `wasi:random/insecure-seed` from the store's seeded stream, not the fixed
/// value of wasmtime-wasi's context: it changes with the entry like the rest.
struct Seed;

impl HasData for Seed {
    type Data<'a> = SeedView<'a>;
}

struct SeedView<'a>(&'a FixedRandom);

impl random::insecure_seed::Host for SeedView<'_> {
    fn insecure_seed(&mut self) -> wasmtime::Result<(u64, u64)> {
        Ok(self.0.insecure_seed())
    }
}

/// The outcome of `future` if it is settled at its first poll. Polled on this
/// thread, with a waker that does nothing: never waits, never needs a runtime.
fn settled<F: Future>(future: F) -> Option<F::Output> {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// Why a call that would have to wait traps instead.
fn would_wait(function: &str) -> wasmtime::Error {
    wasmtime::Error::msg(format!(
        "the guest called WASI `{function}` on something that is not ready, and a state machine may not wait: \
         its clock never advances, stdin is closed and nothing else ever becomes ready"
    ))
}

/// `settled` for a stream function: a stream that is not ready traps.
fn stream_settled<T>(function: &str, future: impl Future<Output = StreamResult<T>>) -> StreamResult<T> {
    settled(future).unwrap_or_else(|| Err(StreamError::Trap(would_wait(function))))
}

impl streams::Host for NoWaitIo<'_> {
    fn convert_stream_error(&mut self, err: StreamError) -> wasmtime::Result<streams::StreamError> {
        streams::Host::convert_stream_error(self.table, err)
    }
}

impl streams::HostOutputStream for NoWaitIo<'_> {
    fn drop(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<()> {
        // The stream is out of the table whatever its wind-down does; one
        // that would wait is dropped without waiting, which the guest
        // cannot tell from a wait that ended.
        settled(async_io::streams::HostOutputStream::drop(self.table, stream)).unwrap_or(Ok(()))
    }

    fn check_write(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<u64> {
        streams::HostOutputStream::check_write(self.table, stream)
    }

    fn write(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        *self.written += bytes.len() as u64;
        streams::HostOutputStream::write(self.table, stream, bytes)
    }

    fn blocking_write_and_flush(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        *self.written += bytes.len() as u64;
        stream_settled(
            "output-stream.blocking-write-and-flush",
            async_io::streams::HostOutputStream::blocking_write_and_flush(self.table, stream, bytes),
        )
    }

    fn blocking_write_zeroes_and_flush(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        *self.written = self.written.saturating_add(len);
        stream_settled(
            "output-stream.blocking-write-zeroes-and-flush",
            async_io::streams::HostOutputStream::blocking_write_zeroes_and_flush(self.table, stream, len),
        )
    }

    fn subscribe(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<Resource<DynPollable>> {
        streams::HostOutputStream::subscribe(self.table, stream)
    }

    fn write_zeroes(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        *self.written = self.written.saturating_add(len);
        streams::HostOutputStream::write_zeroes(self.table, stream, len)
    }

    fn flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        streams::HostOutputStream::flush(self.table, stream)
    }

    fn blocking_flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        stream_settled(
            "output-stream.blocking-flush",
            async_io::streams::HostOutputStream::blocking_flush(self.table, stream),
        )
    }

    fn splice(&mut self, dst: Resource<DynOutputStream>, src: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        streams::HostOutputStream::splice(self.table, dst, src, len)
    }

    fn blocking_splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        stream_settled(
            "output-stream.blocking-splice",
            async_io::streams::HostOutputStream::blocking_splice(self.table, dst, src, len),
        )
    }
}

impl streams::HostInputStream for NoWaitIo<'_> {
    fn drop(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<()> {
        // As for an output stream: out of the table, wound down or not.
        settled(async_io::streams::HostInputStream::drop(self.table, stream)).unwrap_or(Ok(()))
    }

    fn read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        streams::HostInputStream::read(self.table, stream, len)
    }

    fn blocking_read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        stream_settled(
            "input-stream.blocking-read",
            async_io::streams::HostInputStream::blocking_read(self.table, stream, len),
        )
    }

    fn skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        streams::HostInputStream::skip(self.table, stream, len)
    }

    fn blocking_skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        stream_settled(
            "input-stream.blocking-skip",
            async_io::streams::HostInputStream::blocking_skip(self.table, stream, len),
        )
    }

    fn subscribe(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<Resource<DynPollable>> {
        streams::HostInputStream::subscribe(self.table, stream)
    }
}

impl poll::Host for NoWaitIo<'_> {
    /// The ready ones among `pollables`; traps if none is, since none ever
    /// would be.
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        settled(async_io::poll::Host::poll(self.table, pollables)).unwrap_or_else(|| Err(would_wait("poll")))
    }
}

impl poll::HostPollable for NoWaitIo<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        // wasmtime-wasi's `ready` polls the pollable once itself: it is
        // settled at its first poll whatever the answer.
        settled(async_io::poll::HostPollable::ready(self.table, pollable))
            .unwrap_or_else(|| Err(would_wait("pollable.ready")))
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        settled(async_io::poll::HostPollable::block(self.table, pollable))
            .unwrap_or_else(|| Err(would_wait("pollable.block")))
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        poll::HostPollable::drop(self.table, pollable)
    }
}

/// `wasi:clocks/monotonic-clock` over the context's clock, which stands
/// still (`wasi.rs`), so a deadline is either reached when subscribed to or
/// never. wasmtime-wasi's own pollables are tokio timers on the host's real
/// clock.
struct StillClock;

impl HasData for StillClock {
    type Data<'a> = StillClockView<'a>;
}

struct StillClockView<'a>(WasiClocksCtxView<'a>);

/// A deadline on a clock that stands still.
struct Deadline {
    reached: bool,
}

#[wasmtime_wasi::async_trait]
impl Pollable for Deadline {
    async fn ready(&mut self) {
        if !self.reached {
            std::future::pending::<()>().await;
        }
    }
}

impl StillClockView<'_> {
    fn deadline(&mut self, reached: bool) -> wasmtime::Result<Resource<DynPollable>> {
        let deadline = self.0.table.push(Deadline { reached })?;
        wasmtime_wasi::p2::subscribe(self.0.table, deadline)
    }
}

impl monotonic_clock::Host for StillClockView<'_> {
    fn now(&mut self) -> wasmtime::Result<monotonic_clock::Instant> {
        monotonic_clock::Host::now(&mut self.0)
    }

    fn resolution(&mut self) -> wasmtime::Result<monotonic_clock::Duration> {
        monotonic_clock::Host::resolution(&mut self.0)
    }

    fn subscribe_instant(&mut self, when: monotonic_clock::Instant) -> wasmtime::Result<Resource<DynPollable>> {
        let now = monotonic_clock::Host::now(&mut self.0)?;
        self.deadline(when <= now)
    }

    fn subscribe_duration(&mut self, duration: monotonic_clock::Duration) -> wasmtime::Result<Resource<DynPollable>> {
        self.deadline(duration == 0)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use monotonic_clock::Host as _;
    use poll::{Host as _, HostPollable as _};
    use streams::{HostInputStream as _, HostOutputStream as _};
    use wasmtime_wasi::cli::WasiCliView;
    use wasmtime_wasi::p2::OutputStream;

    use super::*;

    fn state() -> HostState {
        HostState::new(1 << 20, Arc::from("test"))
    }

    fn borrow<T: 'static>(r: &Resource<T>) -> Resource<T> {
        Resource::new_borrow(r.rep())
    }

    fn traps_for_waiting(e: &wasmtime::Error) -> bool {
        e.to_string().contains("a state machine may not wait")
    }

    /// An output stream that never has room, like a pipe nobody drains.
    struct Stuck;

    #[wasmtime_wasi::async_trait]
    impl Pollable for Stuck {
        async fn ready(&mut self) {
            std::future::pending::<()>().await;
        }
    }

    impl OutputStream for Stuck {
        fn write(&mut self, _: Bytes) -> StreamResult<()> {
            Ok(())
        }
        fn flush(&mut self) -> StreamResult<()> {
            Ok(())
        }
        fn check_write(&mut self) -> StreamResult<usize> {
            Ok(0)
        }
    }

    #[test]
    fn stdout_and_stderr_take_blocking_writes_at_once() {
        let mut s = state();
        let out = cli::stdout::Host::get_stdout(&mut s.cli()).unwrap();
        let err = cli::stderr::Host::get_stderr(&mut s.cli()).unwrap();
        let mut io = s.no_wait_io();
        for stream in [&out, &err] {
            io.blocking_write_and_flush(borrow(stream), b"hello\n".to_vec()).unwrap();
            io.blocking_write_zeroes_and_flush(borrow(stream), 16).unwrap();
            io.blocking_flush(borrow(stream)).unwrap();
        }
        // Beyond the 4096 bytes WASI allows in one call: a trap, as before.
        assert!(matches!(io.blocking_write_and_flush(borrow(&out), vec![0; 4097]), Err(StreamError::Trap(_))));
        streams::HostOutputStream::drop(&mut io, out).unwrap();
        streams::HostOutputStream::drop(&mut io, err).unwrap();
    }

    #[test]
    fn stdin_is_closed_at_once() {
        let mut s = state();
        let stdin = cli::stdin::Host::get_stdin(&mut s.cli()).unwrap();
        let mut io = s.no_wait_io();
        assert!(matches!(io.blocking_read(borrow(&stdin), 10), Err(StreamError::Closed)));
        assert!(matches!(io.blocking_skip(borrow(&stdin), 10), Err(StreamError::Closed)));
        let ready = streams::HostInputStream::subscribe(&mut io, borrow(&stdin)).unwrap();
        assert!(io.ready(borrow(&ready)).unwrap());
        io.block(borrow(&ready)).unwrap();
        poll::HostPollable::drop(&mut io, ready).unwrap();
        streams::HostInputStream::drop(&mut io, stdin).unwrap();
    }

    #[test]
    fn a_stream_that_would_wait_traps_instead() {
        let mut s = state();
        let stuck: Resource<DynOutputStream> = s.table().push(Box::new(Stuck) as DynOutputStream).unwrap();
        let mut io = s.no_wait_io();
        assert_eq!(io.check_write(borrow(&stuck)).unwrap(), 0);
        for result in [
            io.blocking_write_and_flush(borrow(&stuck), b"x".to_vec()),
            io.blocking_write_zeroes_and_flush(borrow(&stuck), 1),
            io.blocking_flush(borrow(&stuck)),
        ] {
            match result {
                Err(StreamError::Trap(e)) => assert!(traps_for_waiting(&e), "{e}"),
                other => panic!("expected a trap, got {other:?}"),
            }
        }
        let pollable = streams::HostOutputStream::subscribe(&mut io, borrow(&stuck)).unwrap();
        assert!(!io.ready(borrow(&pollable)).unwrap());
        assert!(traps_for_waiting(&io.block(borrow(&pollable)).unwrap_err()));
        poll::HostPollable::drop(&mut io, pollable).unwrap();
        // Dropping it does not wait either.
        streams::HostOutputStream::drop(&mut io, stuck).unwrap();
    }

    #[test]
    fn the_clock_stands_still_so_only_deadlines_already_reached_are_ready() {
        let mut s = state();
        let mut clock = StillClockView(s.clocks());
        assert_eq!(clock.now().unwrap(), 0);
        let reached = [clock.subscribe_duration(0).unwrap(), clock.subscribe_instant(0).unwrap()];
        let never = [clock.subscribe_duration(1).unwrap(), clock.subscribe_instant(1).unwrap()];
        let mut io = s.no_wait_io();
        for p in &reached {
            assert!(io.ready(borrow(p)).unwrap());
            io.block(borrow(p)).unwrap();
        }
        for p in &never {
            assert!(!io.ready(borrow(p)).unwrap());
            assert!(traps_for_waiting(&io.block(borrow(p)).unwrap_err()));
        }
        let list = vec![borrow(&never[0]), borrow(&reached[0]), borrow(&never[1]), borrow(&reached[1])];
        assert_eq!(io.poll(list).unwrap(), [1, 3]);
        let none_ready = io.poll(vec![borrow(&never[0]), borrow(&never[1])]).unwrap_err();
        assert!(traps_for_waiting(&none_ready), "{none_ready}");
        for p in reached.into_iter().chain(never) {
            poll::HostPollable::drop(&mut io, p).unwrap();
        }
    }

    /// A component that imports one item of every WASI interface a guest
    /// may import (with the types wit-component gives them).
    const IMPORTS_EVERY_ALLOWED_INTERFACE: &str = r#"(component
        (import "wasi:io/error@0.2.0" (instance (export "error" (type (sub resource)))))
        (import "wasi:io/poll@0.2.0" (instance $poll (export "pollable" (type (sub resource)))))
        (alias export $poll "pollable" (type $pollable))
        (import "wasi:io/streams@0.2.0" (instance $streams
            (export "input-stream" (type (sub resource)))
            (export "output-stream" (type (sub resource)))))
        (alias export $streams "input-stream" (type $input))
        (alias export $streams "output-stream" (type $output))
        (import "wasi:cli/environment@0.2.0" (instance (export "get-arguments" (func (result (list string))))))
        (import "wasi:cli/exit@0.2.0" (instance (export "exit" (func (param "status" (result))))))
        (import "wasi:cli/stdin@0.2.0" (instance
            (alias outer 1 $input (type $i)) (export "input-stream" (type $ie (eq $i)))
            (export "get-stdin" (func (result (own $ie))))))
        (import "wasi:cli/stdout@0.2.0" (instance
            (alias outer 1 $output (type $o)) (export "output-stream" (type $oe (eq $o)))
            (export "get-stdout" (func (result (own $oe))))))
        (import "wasi:cli/stderr@0.2.0" (instance
            (alias outer 1 $output (type $o)) (export "output-stream" (type $oe (eq $o)))
            (export "get-stderr" (func (result (own $oe))))))
        (import "wasi:cli/terminal-input@0.2.0" (instance $ti (export "terminal-input" (type (sub resource)))))
        (alias export $ti "terminal-input" (type $terminal-input))
        (import "wasi:cli/terminal-output@0.2.0" (instance $to (export "terminal-output" (type (sub resource)))))
        (alias export $to "terminal-output" (type $terminal-output))
        (import "wasi:cli/terminal-stdin@0.2.0" (instance
            (alias outer 1 $terminal-input (type $t)) (export "terminal-input" (type $te (eq $t)))
            (export "get-terminal-stdin" (func (result (option (own $te)))))))
        (import "wasi:cli/terminal-stdout@0.2.0" (instance
            (alias outer 1 $terminal-output (type $t)) (export "terminal-output" (type $te (eq $t)))
            (export "get-terminal-stdout" (func (result (option (own $te)))))))
        (import "wasi:cli/terminal-stderr@0.2.0" (instance
            (alias outer 1 $terminal-output (type $t)) (export "terminal-output" (type $te (eq $t)))
            (export "get-terminal-stderr" (func (result (option (own $te)))))))
        (import "wasi:clocks/wall-clock@0.2.0" (instance
            (type $datetime (record (field "seconds" u64) (field "nanoseconds" u32)))
            (export "datetime" (type $d (eq $datetime)))
            (export "now" (func (result $d)))))
        (import "wasi:clocks/monotonic-clock@0.2.0" (instance
            (alias outer 1 $pollable (type $p)) (export "pollable" (type $pe (eq $p)))
            (export "subscribe-duration" (func (param "when" u64) (result (own $pe))))))
        (import "wasi:random/random@0.2.0" (instance (export "get-random-u64" (func (result u64)))))
        (import "wasi:random/insecure@0.2.0" (instance (export "get-insecure-random-u64" (func (result u64)))))
        (import "wasi:random/insecure-seed@0.2.0" (instance (export "insecure-seed" (func (result (tuple u64 u64))))))
        (import "wasi:filesystem/types@0.2.0" (instance $fs (export "descriptor" (type (sub resource)))))
        (alias export $fs "descriptor" (type $descriptor))
        (import "wasi:filesystem/preopens@0.2.0" (instance
            (alias outer 1 $descriptor (type $d)) (export "descriptor" (type $de (eq $d)))
            (export "get-directories" (func (result (list (tuple (own $de) string)))))))
    )"#;

    #[test]
    fn the_linker_provides_every_interface_a_guest_may_import() {
        let engine = crate::Engine::new().unwrap();
        let component = wasmtime::component::Component::new(&engine.inner, IMPORTS_EVERY_ALLOWED_INTERFACE).unwrap();
        let imported: Vec<String> = component
            .component_type()
            .imports(&engine.inner)
            .map(|(name, _)| name.trim_end_matches("@0.2.0").to_string())
            .collect();
        assert_eq!(imported, crate::module::WASI_ALLOWED, "the component imports every allowed interface, in order");
        let linker = crate::host::linker(&engine.inner).unwrap();
        if let Err(e) = linker.instantiate_pre(&component) {
            panic!("{e:#}");
        }
    }
}

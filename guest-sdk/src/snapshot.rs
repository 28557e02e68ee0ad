//! `std::io` adapters over the host's snapshot resources.
//!
//! Owns chunking: a snapshot moves in pieces of at most [`CHUNK_BYTES_MAX`],
//! so no single call ever carries the whole state.

use std::io::{self, Read, Write};

use crate::bindings::waft::fsm::types::{SnapshotReader as HostReader, SnapshotWriter as HostWriter};

/// Largest chunk moved in one host call. The host refuses larger writes.
pub const CHUNK_BYTES_MAX: usize = 64 * 1024;

/// Streams bytes to the host's snapshot writer, one chunk per call.
/// Wrap it in a `BufWriter` of [`CHUNK_BYTES_MAX`] (the SDK does) so small
/// writes are gathered into full chunks.
pub struct SnapshotWriter<'a> {
    host: &'a HostWriter,
}

impl<'a> SnapshotWriter<'a> {
    pub(crate) fn new(host: &'a HostWriter) -> Self {
        Self { host }
    }
}

impl Write for SnapshotWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(CHUNK_BYTES_MAX);
        self.host.write(&buf[..n]).map_err(io::Error::other)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads bytes from the host's snapshot reader, one chunk per call.
pub struct SnapshotReader<'a> {
    host: &'a HostReader,
    chunk: Vec<u8>,
    offset: usize,
    eof: bool,
}

impl<'a> SnapshotReader<'a> {
    pub(crate) fn new(host: &'a HostReader) -> Self {
        Self { host, chunk: Vec::new(), offset: 0, eof: false }
    }
}

impl Read for SnapshotReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.offset == self.chunk.len() {
            if self.eof {
                return Ok(0);
            }
            // CHUNK_BYTES_MAX fits in u32 by construction.
            self.chunk = self.host.read(CHUNK_BYTES_MAX as u32).map_err(io::Error::other)?;
            self.offset = 0;
            if self.chunk.is_empty() {
                self.eof = true;
                return Ok(0);
            }
        }
        let n = buf.len().min(self.chunk.len() - self.offset);
        buf[..n].copy_from_slice(&self.chunk[self.offset..self.offset + n]);
        self.offset += n;
        Ok(n)
    }
}

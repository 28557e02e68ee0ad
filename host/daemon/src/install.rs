//! Snapshot transfer between daemons: the manifest a leader attaches to
//! `InstallSnapshot`, the chunks it serves, and the follower's pull loop.
//!
//! Owns the wire side of a transfer only. The follower's `waft_node::Install`
//! (and through it the snapshot store's writer) checks every chunk's offset
//! and, at commit, every file's size and CRC against the leader's manifest;
//! the driver decides when a transfer starts and what its outcome means to
//! the core. Must never hold the driver up: the pull runs in its own task and
//! reports back through the group's inbox, and a chunk read on the leader runs
//! on tokio's blocking pool.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use waft_proto::peer::{self, SnapshotChunkRequest};
use waft_storage::{ModuleHash, SnapshotFile, SnapshotId, SnapshotMeta, SnapshotStore};

/// Largest chunk one pull asks for. Well under the peer service's message
/// limit, and small enough that one chunk never holds a connection for long.
pub const PULL_CHUNK_BYTES_MAX: usize = 1024 * 1024;
/// Chunk requests a pull keeps in flight at once (unthrottled).
pub const PULL_CHUNKS_IN_FLIGHT: usize = 4;
/// How long one connection attempt to a peer may take (the peer transport's too).
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
/// Smallest chunk a throttled pull asks for, so a very low rate still moves
/// whole pages rather than a trickle of tiny requests.
pub const PULL_CHUNK_BYTES_MIN: usize = 4 * 1024;
/// How long one chunk request may take before the attempt counts as failed.
pub const PULL_CHUNK_TIMEOUT: Duration = Duration::from_secs(10);
/// Consecutive failed chunk requests before the transfer is given up (the
/// leader offers the snapshot again later, and the pull resumes where the
/// store's writer stopped only within one attempt).
pub const PULL_ATTEMPTS_MAX: u32 = 5;
/// Pause after a failed chunk request, doubled after each further failure.
pub const PULL_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// The manifest a leader attaches to `InstallSnapshot` for snapshot `id` of
/// `group`, read from its snapshot store; `None` when the snapshot is gone
/// (superseded and discarded): the follower then waits for the next offer.
pub fn manifest(snapshots: &SnapshotStore, group: u64, id: SnapshotId) -> Option<peer::SnapshotManifest> {
    let reader = match snapshots.open_for_transfer(group, id) {
        Ok(reader) => reader,
        Err(e) => {
            tracing::debug!(group, index = id.index, term = id.term, error = %e, "no manifest for snapshot");
            return None;
        }
    };
    let meta = reader.meta();
    Some(peer::SnapshotManifest {
        module_hash: Bytes::copy_from_slice(&meta.module_hash.0),
        files: meta
            .files
            .iter()
            .map(|f| peer::SnapshotFile { name: f.name.clone(), size: f.size, crc32: f.crc32 })
            .collect(),
    })
}

/// The storage meta a follower installs from: the core's snapshot meta as it
/// came over the wire plus the leader's (validated) manifest.
pub fn stored_meta(
    index: u64,
    term: u64,
    configuration: Bytes,
    manifest: &peer::SnapshotManifest,
) -> Result<SnapshotMeta, String> {
    manifest.validate().map_err(|e| e.to_string())?;
    let hash: [u8; 32] = manifest.module_hash.as_ref().try_into().map_err(|_| "module hash is not 32 bytes")?;
    Ok(SnapshotMeta {
        index,
        term,
        config: configuration,
        module_hash: ModuleHash(hash),
        files: manifest
            .files
            .iter()
            .map(|f| SnapshotFile { name: f.name.clone(), size: f.size, crc32: f.crc32 })
            .collect(),
    })
}

/// Serves one chunk of a local snapshot file (leader side).
pub async fn serve_chunk(
    snapshots: Arc<SnapshotStore>,
    req: SnapshotChunkRequest,
) -> Result<peer::SnapshotChunk, tonic::Status> {
    let max_len = (req.max_len as usize).clamp(1, PULL_CHUNK_BYTES_MAX);
    tokio::task::spawn_blocking(move || {
        let id = SnapshotId { index: req.snapshot_index, term: req.snapshot_term };
        let reader = snapshots.open_for_transfer(req.group, id).map_err(|e| {
            tonic::Status::not_found(format!(
                "group {} has no snapshot {}/{} here (superseded?): {e}",
                req.group, id.index, id.term
            ))
        })?;
        let Some(file) = reader.meta().files.iter().find(|f| f.name == req.file) else {
            return Err(tonic::Status::not_found(format!(
                "snapshot {}/{} has no file {:?}",
                id.index, id.term, req.file
            )));
        };
        let file_size = file.size;
        if req.offset > file_size {
            return Err(tonic::Status::invalid_argument(format!(
                "offset {} is past the end of {:?} ({file_size} bytes)",
                req.offset, req.file
            )));
        }
        let data = reader
            .read_chunk(&req.file, req.offset, max_len)
            .map_err(|e| tonic::Status::internal(format!("reading {:?}: {e}", req.file)))?;
        let eof = req.offset + data.len() as u64 == file_size;
        Ok(peer::SnapshotChunk { data, file_size, eof })
    })
    .await
    .map_err(|e| tonic::Status::internal(format!("chunk reader failed: {e}")))?
}

/// Where a running pull stands, shared with the driver for status reports.
#[derive(Debug)]
pub struct Progress {
    pub index: u64,
    pub term: u64,
    pub bytes_total: u64,
    pub bytes_done: AtomicU64,
}

/// Pulls every missing byte of `install` from the leader at `addr` (follower
/// side), at most `bytes_per_sec` (0: unlimited). Returns the install, ready
/// for `finish_install`, or why the transfer failed (the install is then
/// dropped, and the driver abandons it so the leader offers it again).
pub async fn pull(
    leader: tonic::transport::Endpoint,
    group: u64,
    mut install: waft_node::Install,
    bytes_per_sec: u64,
    progress: Arc<Progress>,
) -> Result<waft_node::Install, String> {
    let chunk_bytes = chunk_bytes(bytes_per_sec);
    let id = install.id();
    let client = connect(leader, "the leader").await?;
    let started = Instant::now();
    let mut moved: u64 = 0;
    let files: Vec<SnapshotFile> = install.files().to_vec();
    progress.bytes_done.store(files.iter().map(|f| install.next_offset(&f.name)).sum(), Ordering::Relaxed);
    // Unthrottled, several chunks are asked for at once, so the transfer
    // is not one round trip per chunk; they are written in order.
    let window = if bytes_per_sec == 0 { PULL_CHUNKS_IN_FLIGHT } else { 1 };
    for file in &files {
        let mut failures = 0;
        let mut in_flight = FuturesOrdered::new();
        let mut asked = install.next_offset(&file.name);
        while install.next_offset(&file.name) < file.size {
            while in_flight.len() < window && asked < file.size {
                let req = SnapshotChunkRequest {
                    group,
                    snapshot_index: id.index,
                    snapshot_term: id.term,
                    file: file.name.clone(),
                    offset: asked,
                    max_len: chunk_bytes as u64,
                };
                let mut client = client.clone();
                let offset = asked;
                in_flight.push_back(async move {
                    (offset, tokio::time::timeout(PULL_CHUNK_TIMEOUT, client.pull_snapshot_chunk(req)).await)
                });
                asked = (asked + chunk_bytes as u64).min(file.size);
            }
            let Some((offset, answer)) = in_flight.next().await else { break };
            let failed = match answer {
                Ok(Ok(chunk)) => {
                    let chunk = chunk.into_inner();
                    if chunk.file_size != file.size {
                        return Err(format!(
                            "the leader's {:?} has {} bytes, its manifest said {}",
                            file.name, chunk.file_size, file.size
                        ));
                    }
                    if chunk.data.is_empty() {
                        return Err(format!("the leader sent no bytes of {:?} at {offset} before its end", file.name));
                    }
                    if offset != install.next_offset(&file.name) {
                        // A shorter chunk before it left a gap: ask again
                        // from where the file ends.
                        Some(format!("chunk of {:?} at {offset} does not follow the last", file.name))
                    } else {
                        failures = 0;
                        let len = chunk.data.len() as u64;
                        tokio::task::block_in_place(|| install.write_chunk(&file.name, offset, &chunk.data))
                            .map_err(|e| format!("writing {:?} at {offset}: {e}", file.name))?;
                        progress.bytes_done.fetch_add(len, Ordering::Relaxed);
                        moved += len;
                        throttle(bytes_per_sec, moved, started).await;
                        if len < chunk_bytes as u64 && offset + len < file.size {
                            Some(format!("chunk of {:?} at {offset} came short", file.name))
                        } else {
                            None
                        }
                    }
                }
                Ok(Err(status)) if status.code() == tonic::Code::NotFound => {
                    return Err(format!(
                        "the leader no longer has snapshot {}/{}: {}",
                        id.index,
                        id.term,
                        status.message()
                    ));
                }
                Ok(Err(status)) => {
                    failures += 1;
                    retry_or_fail(failures, &format!("chunk of {:?} at {offset}: {status}", file.name)).await?;
                    Some(String::new())
                }
                Err(_) => {
                    failures += 1;
                    retry_or_fail(failures, &format!("chunk of {:?} at {offset} timed out", file.name)).await?;
                    Some(String::new())
                }
            };
            if let Some(why) = failed {
                if !why.is_empty() {
                    tracing::debug!(group, "{why}; asking again");
                }
                // What was asked after it is dropped and asked again.
                in_flight = FuturesOrdered::new();
                asked = install.next_offset(&file.name);
            }
        }
    }
    if !install.is_complete() {
        return Err("the transfer ended with bytes missing".to_string());
    }
    Ok(install)
}

/// The chunk size for a rate: about eight pulls a second when throttled.
pub(crate) fn chunk_bytes(bytes_per_sec: u64) -> usize {
    if bytes_per_sec == 0 {
        return PULL_CHUNK_BYTES_MAX;
    }
    ((bytes_per_sec / 8) as usize).clamp(PULL_CHUNK_BYTES_MIN, PULL_CHUNK_BYTES_MAX)
}

/// Sleeps until `moved` bytes since `started` are within `bytes_per_sec`.
pub(crate) async fn throttle(bytes_per_sec: u64, moved: u64, started: Instant) {
    if bytes_per_sec == 0 {
        return;
    }
    let due = Duration::from_secs_f64(moved as f64 / bytes_per_sec as f64);
    let elapsed = started.elapsed();
    if due > elapsed {
        tokio::time::sleep(due - elapsed).await;
    }
}

pub(crate) async fn retry_or_fail(failures: u32, what: &str) -> Result<(), String> {
    if failures >= PULL_ATTEMPTS_MAX {
        return Err(format!("gave up after {failures} failed chunk requests; last: {what}"));
    }
    tracing::debug!(failures, "{what}; retrying");
    tokio::time::sleep(PULL_RETRY_PAUSE * 2u32.pow(failures - 1)).await;
    Ok(())
}

/// A peer client of the node at `endpoint` (`who`, for the error), its
/// connection made within `CONNECT_TIMEOUT`.
pub async fn connect(
    endpoint: tonic::transport::Endpoint,
    who: &str,
) -> Result<waft_proto::peer::peer_client::PeerClient<tonic::transport::Channel>, String> {
    let addr = endpoint.uri().clone();
    let channel = endpoint
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await
        .map_err(|e| format!("cannot reach {who} at {addr}: {e}"))?;
    Ok(waft_proto::peer_client(channel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttled_pulls_ask_for_about_an_eighth_of_a_second() {
        assert_eq!(chunk_bytes(0), PULL_CHUNK_BYTES_MAX);
        assert_eq!(chunk_bytes(1), PULL_CHUNK_BYTES_MIN);
        assert_eq!(chunk_bytes(800 * 1024), 100 * 1024);
        assert_eq!(chunk_bytes(u64::MAX), PULL_CHUNK_BYTES_MAX);
    }
}

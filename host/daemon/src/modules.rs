//! Modules beside the log: a deploy's component travels from the leader to
//! every member of the group before the entry naming it (by hash) is
//! proposed, so that applying the entry is a switch, not a fetch and a
//! compile.
//!
//! Owns the wire side of a module's journey: a client's upload into a
//! node's module store (`UploadModule`), the chunks a node serves from its
//! store (`PullModuleChunk`), a member's pull, store and compile when its
//! leader asks it to prepare (`PrepareModule`), and the leader's round of
//! those asks. Must never hand a replica bytes whose hash it did not check,
//! and never hold a driver up: pulls run in the caller's task, reads and
//! compiles on tokio's blocking pool, and the result reaches the replica
//! through its group's inbox.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use waft_proto::peer::{self, ModuleChunkRequest, PrepareModuleRequest};
use waft_raft::NodeId;
use waft_storage::{ModuleHash, ModuleStore};

use crate::groups::Host;
use crate::inbox::{GroupHandle, Input};
use crate::install::{PULL_CHUNK_BYTES_MAX, PULL_CHUNK_TIMEOUT, chunk_bytes, connect, retry_or_fail, throttle};

/// The largest module a node takes by upload or pull: waft-node's bound on
/// a module a snapshot carries.
pub const MODULE_BYTES_MAX: u64 = waft_node::MODULE_BYTES_MAX;
/// The most bytes one `ModuleUpload` message may carry.
pub const UPLOAD_MESSAGE_BYTES_MAX: usize = 4 * 1024 * 1024;
/// How long a leader waits for one member to pull and compile a module
/// (64 MiB at the default pull rate, and a compile of that size, fit).
pub const PREPARE_TIMEOUT: Duration = Duration::from_secs(300);
/// Modules a node pulls or compiles for its groups at once; more asks wait.
pub const PREPARES_AT_ONCE_MAX: usize = 1;

/// Where a member's pull of a module stands, for its group's status.
#[derive(Debug)]
pub struct ModuleProgress {
    pub hash: ModuleHash,
    pub bytes_total: u64,
    pub bytes_done: AtomicU64,
}

/// A module hash from the wire: exactly 32 bytes.
pub fn hash_of(bytes: &[u8]) -> Option<ModuleHash> {
    <[u8; 32]>::try_from(bytes).ok().map(ModuleHash)
}

/// One chunk of the module `req` names, from `store` (the serving side of a
/// pull).
pub async fn serve_chunk(store: Arc<ModuleStore>, req: ModuleChunkRequest) -> Result<peer::ModuleChunk, tonic::Status> {
    let Some(hash) = hash_of(&req.module_hash) else {
        return Err(tonic::Status::invalid_argument("a module hash is 32 bytes"));
    };
    let max_len = (req.max_len as usize).clamp(1, PULL_CHUNK_BYTES_MAX);
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek, SeekFrom};
        let path = store.path_of(&hash);
        let mut file = std::fs::File::open(&path)
            .map_err(|e| tonic::Status::not_found(format!("this node holds no module {hash}: {e}")))?;
        let size = file.metadata().map_err(|e| tonic::Status::internal(format!("{}: {e}", path.display())))?.len();
        if req.offset > size {
            return Err(tonic::Status::invalid_argument(format!(
                "offset {} is past the end of module {hash} ({size} bytes)",
                req.offset
            )));
        }
        file.seek(SeekFrom::Start(req.offset)).map_err(|e| tonic::Status::internal(format!("{hash}: {e}")))?;
        let mut data = Vec::with_capacity(max_len.min((size - req.offset) as usize));
        file.take(max_len as u64)
            .read_to_end(&mut data)
            .map_err(|e| tonic::Status::internal(format!("{hash}: {e}")))?;
        Ok(peer::ModuleChunk { data: data.into(), size })
    })
    .await
    .map_err(|e| tonic::Status::internal(format!("module chunk reader failed: {e}")))?
}

/// Pulls module `hash` (`size` bytes) from the node at `from` into
/// `store`, at most `bytes_per_sec` (0: unlimited), and returns it checked
/// (size and hash) and stored. Resumes where an earlier pull of it stopped
/// (this one's, broken off, or one before a restart): what was pulled stays
/// in the store as a partial module. A failed chunk is asked again (with a
/// pause) up to the snapshot pulls' limit.
async fn pull(
    from: tonic::transport::Endpoint,
    store: Arc<ModuleStore>,
    hash: ModuleHash,
    size: u64,
    bytes_per_sec: u64,
    progress: &ModuleProgress,
) -> Result<Bytes, String> {
    let blocking = |what: &'static str, e: tokio::task::JoinError| format!("the module {what} failed: {e}");
    let resumed = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || {
            // One pull at a time on a node (`PREPARES_AT_ONCE_MAX`): what
            // others left will not be resumed next.
            store.remove_partials_except(&hash)?;
            match store.partial_len(&hash)? {
                // More than the module has: damage; start over.
                len if len > size => store.discard_partial(&hash).map(|()| 0),
                len => Ok(len),
            }
        })
        .await
        .map_err(|e| blocking("reader", e))?
        .map_err(|e| format!("cannot read what was pulled of module {hash}: {e}"))?
    };
    let mut offset = resumed;
    if offset > 0 {
        tracing::info!(module = %hash, offset, bytes = size, "resuming a module pull where it stopped");
    }
    progress.bytes_done.store(offset, Ordering::Relaxed);
    let mut client = connect(from, "the node").await?;
    let chunk = chunk_bytes(bytes_per_sec) as u64;
    let started = Instant::now();
    let mut failures = 0;
    while offset < size {
        let req = ModuleChunkRequest { module_hash: Bytes::copy_from_slice(&hash.0), offset, max_len: chunk };
        match tokio::time::timeout(PULL_CHUNK_TIMEOUT, client.pull_module_chunk(req)).await {
            Ok(Ok(answer)) => {
                let answer = answer.into_inner();
                if answer.size != size {
                    return Err(format!("the node's module {hash} has {} bytes, not {size}", answer.size));
                }
                if answer.data.is_empty() || offset + answer.data.len() as u64 > size {
                    return Err(format!("the node sent no bytes or too many of module {hash} at {offset}"));
                }
                failures = 0;
                let (store, data) = (store.clone(), answer.data);
                let len = data.len() as u64;
                tokio::task::spawn_blocking(move || store.append_partial(&hash, offset, &data))
                    .await
                    .map_err(|e| blocking("writer", e))?
                    .map_err(|e| format!("cannot store what was pulled of module {hash}: {e}"))?;
                offset += len;
                progress.bytes_done.store(offset, Ordering::Relaxed);
                throttle(bytes_per_sec, offset - resumed, started).await;
            }
            Ok(Err(status)) if status.code() == tonic::Code::NotFound => {
                return Err(format!("the node no longer holds module {hash}: {}", status.message()));
            }
            Ok(Err(status)) => {
                failures += 1;
                retry_or_fail(failures, &format!("module {hash} at {offset}: {status}")).await?;
            }
            Err(_) => {
                failures += 1;
                retry_or_fail(failures, &format!("module {hash} at {offset}: timed out")).await?;
            }
        }
    }
    tokio::task::spawn_blocking(move || store.finish_partial(&hash, size))
        .await
        .map_err(|e| blocking("checker", e))?
        .map(Bytes::from)
        .map_err(|e| format!("the bytes pulled are not module {hash} (discarded; the next pull starts over): {e}"))
}
/// Module `hash` (`size` bytes) from this node's store or, when missing
/// there, pulled into it from node `from` (see `pull`). `shown`: the group
/// whose status shows the pull's progress.
pub async fn fetch(
    host: &Host,
    hash: ModuleHash,
    size: u64,
    from: NodeId,
    from_addr: Option<String>,
    shown: Option<&GroupHandle>,
) -> Result<Bytes, tonic::Status> {
    if size > MODULE_BYTES_MAX {
        return Err(tonic::Status::invalid_argument(format!(
            "module of {size} bytes; a module holds at most {MODULE_BYTES_MAX}"
        )));
    }
    let modules = host.modules().clone();
    let held = {
        let modules = modules.clone();
        tokio::task::spawn_blocking(move || modules.get(&hash).ok())
            .await
            .map_err(|e| tonic::Status::internal(format!("module reader failed: {e}")))?
    };
    if let Some(bytes) = held {
        return Ok(Bytes::from(bytes));
    }
    let Some(addr) = from_addr.or_else(|| host.address_of(from)) else {
        return Err(tonic::Status::failed_precondition(format!("this node knows no address of node {from}")));
    };
    let endpoint = host
        .dialer()
        .endpoint(from, &addr)
        .map_err(|e| tonic::Status::internal(format!("node {from} at {addr}: {e}")))?;
    let progress = Arc::new(ModuleProgress { hash, bytes_total: size, bytes_done: AtomicU64::new(0) });
    // Clears the progress from status however the pull ends, the asker's
    // giving up (which drops this future) included.
    struct Shown(tokio::sync::mpsc::Sender<Input>);
    impl Drop for Shown {
        fn drop(&mut self) {
            let _ = self.0.try_send(Input::ModuleTransfer(None));
        }
    }
    let shown = shown.map(|group| {
        let _ = group.inbox.try_send(Input::ModuleTransfer(Some(progress.clone())));
        Shown(group.inbox.clone())
    });
    tracing::info!(module = %hash, bytes = size, from, "pulling a module");
    let started = Instant::now();
    let pulled = pull(endpoint, modules, hash, size, host.pull_bytes_per_sec(), &progress).await;
    drop(shown);
    let bytes = pulled.map_err(tonic::Status::unavailable)?;
    tracing::info!(module = %hash, bytes = size, from, ms = started.elapsed().as_millis() as u64, "module pulled");
    Ok(bytes)
}

/// Compiles module `hash`, bytes checked to hash to it, off the async
/// threads; INVALID_ARGUMENT when it does not load here.
pub async fn compile(host: &Host, hash: ModuleHash, bytes: Bytes) -> Result<waft_node::GuestModule, tonic::Status> {
    let engine = host.engine().clone();
    let started = Instant::now();
    // `bytes` came from `fetch`: the store's read or the pull checked them.
    let module = tokio::task::spawn_blocking(move || waft_node::GuestModule::load_verified(&engine, bytes, hash))
        .await
        .map_err(|e| tonic::Status::internal(format!("module compiler failed: {e}")))?
        .map_err(|e| tonic::Status::invalid_argument(format!("module {hash} does not load here: {e}")))?;
    tracing::info!(module = %hash, ms = started.elapsed().as_millis() as u64, "module compiled");
    Ok(module)
}

/// A member's side of `PrepareModule`: gets the module into this node's
/// store (pulling it from the asking node, `req.from`, if missing),
/// compiles it, and hands it to its replica of `group`. Returns once the
/// replica has it.
pub async fn prepare(host: &Host, req: PrepareModuleRequest) -> Result<(), tonic::Status> {
    let (group, from) = (req.group, req.from);
    let Some(hash) = hash_of(&req.module_hash) else {
        return Err(tonic::Status::invalid_argument("a module hash is 32 bytes"));
    };
    let Some(handle) = host.groups().get(group) else {
        return Err(tonic::Status::not_found(format!("this node serves no group {group}")));
    };
    let leader = handle.status.borrow().leader_id;
    if leader != from {
        return Err(tonic::Status::failed_precondition(format!(
            "node {from} asks to prepare a module for group {group}, whose leader here is node {leader}"
        )));
    }
    let _permit =
        host.prepares().acquire().await.map_err(|_| tonic::Status::unavailable("the node is shutting down"))?;
    let bytes = fetch(host, hash, req.size, from, None, Some(&handle)).await?;
    if host.test_compile_fault() == Some(hash) {
        // As the replica's own compile fails with the same fault at the
        // deploy's entry (the module is stored: it finds it there).
        return Err(tonic::Status::invalid_argument(format!(
            "module {hash} does not load here: a compile fault injected for a test"
        )));
    }
    let module = compile(host, hash, bytes).await?;
    handle
        .inbox
        .send(Input::Prepared(module))
        .await
        .map_err(|_| tonic::Status::unavailable(format!("group {group} stopped")))
}

/// The leader's side: asks each of `members` to prepare module `hash`
/// (`size` bytes) for `group`, all at once, and returns each one's answer.
pub async fn prepare_members(
    host: &Host,
    group: u64,
    hash: ModuleHash,
    size: u64,
    members: &[NodeId],
) -> Vec<(NodeId, Result<(), String>)> {
    let asks = members.iter().map(|&member| async move {
        let answer = async {
            let addr = host.address_of(member).ok_or_else(|| format!("no address of node {member}"))?;
            let endpoint = host.dialer().endpoint(member, &addr).map_err(|e| format!("{addr}: {e}"))?;
            let mut client = connect(endpoint, &format!("node {member}")).await?;
            let req = PrepareModuleRequest {
                group,
                module_hash: Bytes::copy_from_slice(&hash.0),
                size,
                from: host.node_id(),
            };
            match tokio::time::timeout(PREPARE_TIMEOUT, client.prepare_module(req)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(status)) => Err(format!("{:?}: {}", status.code(), status.message())),
                Err(_) => Err(format!("no answer within {PREPARE_TIMEOUT:?}")),
            }
        }
        .await;
        (member, answer)
    });
    futures_util::future::join_all(asks).await
}

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

use bytes::{Bytes, BytesMut};
use waft_proto::peer::{self, ModuleChunkRequest, PrepareModuleRequest};
use waft_raft::NodeId;
use waft_storage::{ModuleHash, ModuleStore};

use crate::groups::Host;
use crate::inbox::Input;
use crate::install::{CONNECT_TIMEOUT, PULL_CHUNK_BYTES_MAX, PULL_CHUNK_TIMEOUT, chunk_bytes, retry_or_fail, throttle};

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

/// Pulls module `hash` (`size` bytes) from the node at `from`, at most
/// `bytes_per_sec` (0: unlimited), checking its size and hash. A failed
/// chunk is asked again (with a pause) up to the snapshot pulls' limit.
async fn pull(
    from: tonic::transport::Endpoint,
    hash: ModuleHash,
    size: u64,
    bytes_per_sec: u64,
    progress: &ModuleProgress,
) -> Result<Bytes, String> {
    let addr = from.uri().clone();
    let channel = from
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await
        .map_err(|e| format!("cannot reach the leader at {addr}: {e}"))?;
    let mut client = waft_proto::peer_client(channel);
    let chunk = chunk_bytes(bytes_per_sec) as u64;
    let mut bytes = BytesMut::with_capacity(size as usize);
    let started = Instant::now();
    let mut failures = 0;
    while (bytes.len() as u64) < size {
        let offset = bytes.len() as u64;
        let req = ModuleChunkRequest { module_hash: Bytes::copy_from_slice(&hash.0), offset, max_len: chunk };
        match tokio::time::timeout(PULL_CHUNK_TIMEOUT, client.pull_module_chunk(req)).await {
            Ok(Ok(answer)) => {
                let answer = answer.into_inner();
                if answer.size != size {
                    return Err(format!(
                        "the leader's module {hash} has {} bytes, the deploy says {size}",
                        answer.size
                    ));
                }
                if answer.data.is_empty() {
                    return Err(format!("the leader sent no bytes of module {hash} at {offset} before its end"));
                }
                failures = 0;
                bytes.extend_from_slice(&answer.data);
                progress.bytes_done.store(bytes.len() as u64, Ordering::Relaxed);
                throttle(bytes_per_sec, bytes.len() as u64, started).await;
            }
            Ok(Err(status)) if status.code() == tonic::Code::NotFound => {
                return Err(format!("the leader no longer holds module {hash}: {}", status.message()));
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
    let bytes = bytes.freeze();
    if bytes.len() as u64 != size || ModuleHash::of(&bytes) != hash {
        return Err(format!("the bytes pulled do not hash to module {hash}"));
    }
    Ok(bytes)
}

/// A member's side of `PrepareModule`: gets the module into this node's
/// store (pulling it from the asking node, `req.from`, if missing), compiles it, and hands
/// it to its replica of `group`. Returns once the replica has it.
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
    if req.size > MODULE_BYTES_MAX {
        return Err(tonic::Status::invalid_argument(format!(
            "module of {} bytes; a module holds at most {MODULE_BYTES_MAX}",
            req.size
        )));
    }
    let _permit =
        host.prepares().acquire().await.map_err(|_| tonic::Status::unavailable("the node is shutting down"))?;
    let modules = host.modules().clone();
    let held = {
        let modules = modules.clone();
        tokio::task::spawn_blocking(move || modules.get(&hash).ok())
            .await
            .map_err(|e| tonic::Status::internal(format!("module reader failed: {e}")))?
    };
    let bytes = match held {
        Some(bytes) => Bytes::from(bytes),
        None => {
            let Some(addr) = host.addresses().get(&from) else {
                return Err(tonic::Status::failed_precondition(format!("this node knows no address of node {from}")));
            };
            let endpoint = host
                .dialer()
                .endpoint(from, addr)
                .map_err(|e| tonic::Status::internal(format!("node {from} at {addr}: {e}")))?;
            let progress = Arc::new(ModuleProgress { hash, bytes_total: req.size, bytes_done: AtomicU64::new(0) });
            let _ = handle.inbox.try_send(Input::ModuleTransfer(Some(progress.clone())));
            // Clears the progress from status however the pull ends, the
            // leader's giving up (which drops this future) included.
            struct Shown(tokio::sync::mpsc::Sender<Input>);
            impl Drop for Shown {
                fn drop(&mut self) {
                    let _ = self.0.try_send(Input::ModuleTransfer(None));
                }
            }
            let shown = Shown(handle.inbox.clone());
            tracing::info!(group, module = %hash, bytes = req.size, from, "pulling a module ahead of its deploy");
            let started = Instant::now();
            let pulled = pull(endpoint, hash, req.size, host.pull_bytes_per_sec(), &progress).await;
            drop(shown);
            let bytes = pulled.map_err(tonic::Status::unavailable)?;
            tracing::info!(group, module = %hash, bytes = req.size, ms = started.elapsed().as_millis() as u64, "module pulled");
            let stored = bytes.clone();
            tokio::task::spawn_blocking(move || modules.put(&stored))
                .await
                .map_err(|e| tonic::Status::internal(format!("module writer failed: {e}")))?
                .map_err(|e| tonic::Status::internal(format!("cannot store module {hash}: {e}")))?;
            bytes
        }
    };
    if host.test_compile_fault() == Some(hash) {
        // As the replica's own compile fails with the same fault at the
        // deploy's entry (the module is stored: it finds it there).
        return Err(tonic::Status::invalid_argument(format!(
            "module {hash} does not load here: a compile fault injected for a test"
        )));
    }
    let engine = host.engine().clone();
    let started = Instant::now();
    let module = tokio::task::spawn_blocking(move || waft_node::GuestModule::load(&engine, bytes))
        .await
        .map_err(|e| tonic::Status::internal(format!("module compiler failed: {e}")))?
        .map_err(|e| tonic::Status::invalid_argument(format!("module {hash} does not load here: {e}")))?;
    tracing::info!(group, module = %hash, ms = started.elapsed().as_millis() as u64, "module compiled ahead of its deploy");
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
            let addr = host.addresses().get(&member).ok_or_else(|| format!("no address of node {member}"))?;
            let endpoint = host.dialer().endpoint(member, addr).map_err(|e| format!("{addr}: {e}"))?;
            let channel = endpoint
                .connect_timeout(CONNECT_TIMEOUT)
                .connect()
                .await
                .map_err(|e| format!("cannot reach {addr}: {e}"))?;
            let mut client = waft_proto::peer_client(channel);
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

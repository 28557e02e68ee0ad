//! waft-fuzz: fuzz targets for everything waft decodes from the network or
//! from the disk, and a seeded mutation engine that runs them.
//!
//! Owns the list of targets ([`TARGETS`]); each takes arbitrary bytes and
//! must neither panic, nor allocate without a bound, nor accept bytes it
//! would write differently (a round trip is checked wherever an encoder
//! exists). Must never hold decoding logic of its own: every target calls
//! the code the daemon runs.
//!
//! Two ways to run them:
//!
//! * `cargo test -p waft-fuzz` (part of the README's test command): every
//!   target, seeded from its corpus (`host/fuzz/corpus/TARGET/`), mutated for
//!   a short while ([`engine`], `WAFT_FUZZ_MS` per target, default 1,500 ms);
//!   the seed is printed and a failing input is written to
//!   `target/waft-fuzz-failures/`.
//! * a long run, coverage-guided, with cargo-fuzz on the nightly toolchain
//!   (`host/fuzz/fuzz/`, see its README): the same functions under
//!   libFuzzer.
//!
//! Anything found becomes a file in the corpus (so every test run replays
//! it) and a regression test beside the code it broke.

pub mod engine;

use bytes::Bytes;
use prost::Message;

/// `data` with its last four bytes replaced by the CRC-32 of the rest
/// (`little`: little-endian), so a decoder's checksum passes and mutations
/// reach what lies behind it. A mutation cannot forge a checksum, and
/// neither can libFuzzer; the raw input is decoded as well.
fn resealed(data: &[u8], prefix: &[u8], little: bool) -> Option<Vec<u8>> {
    let body = data.get(..data.len().checked_sub(4)?)?;
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(prefix);
    hasher.update(body);
    let crc = hasher.finalize();
    let crc = if little { crc.to_le_bytes() } else { crc.to_be_bytes() };
    Some([body, &crc[..]].concat())
}

/// A fuzz target: a name (its corpus directory) and the function.
pub type Target = (&'static str, fn(&[u8]));

/// Every target.
pub const TARGETS: &[Target] = &[
    ("peer_batch", peer_batch),
    ("snapshot_chunk", snapshot_chunk),
    ("client_calls", client_calls),
    ("admin_requests", admin_requests),
    ("session_envelope", session_envelope),
    ("session_table", session_table),
    ("log_records", log_records),
    ("snapshot_meta", snapshot_meta),
    ("raft_configuration", raft_configuration),
    ("group_settings", group_settings),
    ("module_store", module_store),
    ("catalogue", catalogue),
    ("identity_files", identity_files),
    ("users_file", users_file),
    ("serve_config", serve_config),
];

/// A batch of peer messages as one daemon streams them to another: each
/// message converted as the peer service does (`into_raft`, the snapshot
/// manifest); what converts must convert back to the same message.
pub fn peer_batch(data: &[u8]) {
    let Ok(batch) = waft_proto::peer::PeerBatch::decode(data) else { return };
    for wire in batch.messages {
        let manifest = wire.snapshot_manifest().map(|m| m.cloned());
        if let Ok((group, message)) = wire.clone().into_raft() {
            let back = waft_proto::peer::PeerMessage::from_raft(group, message.clone());
            assert_eq!(back.into_raft(), Ok((group, message.clone())), "a converted message converts back");
            if let (waft_raft::MessageBody::InstallSnapshot { meta }, Some(Ok(manifest))) = (&message.body, manifest) {
                let _ = waft_daemon::install::stored_meta(meta.index, meta.term, meta.config.encode(), &manifest);
            }
        }
    }
}

/// A snapshot chunk request (what a follower asks a leader) and a chunk
/// (what it gets back).
pub fn snapshot_chunk(data: &[u8]) {
    let _ = waft_proto::peer::SnapshotChunkRequest::decode(data);
    if let Ok(chunk) = waft_proto::peer::SnapshotChunk::decode(data) {
        let again = waft_proto::peer::SnapshotChunk::decode(chunk.encode_to_vec().as_slice());
        assert_eq!(again.as_ref(), Ok(&chunk), "a chunk re-encodes to itself");
    }
}

/// A client's pipeline batch, and each call turned into what the service
/// proposes: the session body of a command, in its log envelope, which
/// must decode back to itself.
pub fn client_calls(data: &[u8]) {
    use waft_proto::client::call;
    let Ok(batch) = waft_proto::client::CallBatch::decode(data) else { return };
    for c in batch.calls {
        match c.request {
            Some(call::Request::Propose(req)) => {
                let body = if req.session_id == 0 {
                    waft_session::Body::Plain { payload: req.command }
                } else {
                    waft_session::Body::Command {
                        session_id: req.session_id,
                        seq: req.sequence,
                        lowest_unacked_seq: req.lowest_unacked_sequence,
                        payload: req.command,
                    }
                };
                envelope_round_trip(waft_session::Envelope { timestamp_ms: req.group, body });
            }
            Some(call::Request::Query(req)) => {
                let _ = waft_proto::client::Consistency::try_from(req.consistency);
            }
            None => {}
        }
    }
    let _ = waft_proto::client::OpenSessionRequest::decode(data);
}

fn envelope_round_trip(envelope: waft_session::Envelope) {
    if let Ok(bytes) = envelope.encode() {
        assert_eq!(waft_session::Envelope::decode(&bytes), Ok(envelope), "an envelope decodes to what was encoded");
    }
}

/// An admin request as the admin service checks it.
pub fn admin_requests(data: &[u8]) {
    if let Ok(req) = waft_proto::admin::AdminRequest::decode(data) {
        let _ = waft_daemon::inbox::Op::from_request(&req);
    }
    let _ = waft_proto::admin::SetGroupRequest::decode(data);
    let _ = waft_proto::admin::CreateGroupRequest::decode(data);
    let _ = waft_proto::admin::DeployRequest::decode(data);
}

/// A log entry's data: a session envelope.
pub fn session_envelope(data: &[u8]) {
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(envelope) = waft_session::Envelope::decode(&bytes) {
        envelope_round_trip(envelope);
    }
    let _ = waft_session::Envelope::is_verdict(data);
}

/// The session table's section of a snapshot; a table that decodes encodes
/// to a section that decodes to the same table.
pub fn session_table(data: &[u8]) {
    session_table_as_is(data);
    if let Some(sealed) = resealed(data, &[], true) {
        session_table_as_is(&sealed);
    }
}

fn session_table_as_is(data: &[u8]) {
    let cfg = waft_session::SessionConfig::default();
    if let Ok(table) = waft_session::SessionTable::decode_snapshot(cfg.clone(), data)
        && let Ok(again) = table.encode_snapshot()
    {
        let table2 = waft_session::SessionTable::decode_snapshot(cfg, &again).expect("a table's own section decodes");
        assert_eq!(table2.encode_snapshot().ok(), Some(again), "a table's section is stable");
    }
}

/// The log store's records (entries, hard state, group record) as read back
/// from RocksDB: a byte choosing the key's length (even: 17, an entry's;
/// odd: 9, a group's), the key, the value.
pub fn log_records(data: &[u8]) {
    let Some((&choice, rest)) = data.split_first() else { return };
    let key_len = if choice % 2 == 0 { 17 } else { 9 };
    let (key, value) = rest.split_at(rest.len().min(key_len));
    waft_storage::fuzzing::log_records(key, value);
    if let Some(sealed) = resealed(value, key, false) {
        waft_storage::fuzzing::log_records(key, &sealed);
    }
}

/// A snapshot's meta file (and the manifest a leader sends).
pub fn snapshot_meta(data: &[u8]) {
    for bytes in [Some(data.to_vec()), resealed(data, &[], false)].into_iter().flatten() {
        if let Ok(meta) = waft_storage::SnapshotMeta::decode(&bytes) {
            assert_eq!(waft_storage::SnapshotMeta::decode(&meta.encode()), Ok(meta), "a meta decodes to itself");
        }
    }
    if let Ok(manifest) = waft_proto::peer::SnapshotManifest::decode(data) {
        let _ = manifest.validate();
    }
}

/// A Raft configuration as a snapshot or a config entry carries it.
pub fn raft_configuration(data: &[u8]) {
    if let Ok(config) = waft_raft::Configuration::decode(data) {
        assert_eq!(waft_raft::Configuration::decode(&config.encode()), Ok(config));
    }
}

/// Group settings: an entry's change, a snapshot's file, the bare form.
pub fn group_settings(data: &[u8]) {
    for bytes in [Some(data.to_vec()), resealed(data, &[], true)].into_iter().flatten() {
        if let Ok(settings) = waft_node::GroupSettings::decode(&bytes) {
            assert_eq!(waft_node::GroupSettings::decode(&settings.encode()).ok(), Some(settings));
        }
        let _ = waft_node::GroupSettings::decode_change(&bytes);
        let _ = waft_node::GroupSettings::decode_file(&bytes);
    }
}

/// A module file in the module store whose bytes are not what its name
/// says: reading it must refuse, never hand the bytes out.
pub fn module_store(data: &[u8]) {
    let dir = std::env::temp_dir().join(format!("waft-fuzz-modules-{}", std::process::id()));
    let Ok(store) = waft_storage::ModuleStore::open(&dir) else { return };
    let claimed = waft_storage::ModuleHash::of(b"the module the name promises");
    let path = store.path_of(&claimed);
    if std::fs::write(&path, data).is_ok() {
        let got = store.get(&claimed);
        assert!(data == b"the module the name promises" || got.is_err(), "a module whose bytes differ was read");
    }
    let _ = std::fs::remove_file(&path);
    // Whatever else lies in the directory, what it lists is stored modules.
    if let Ok(name) = std::str::from_utf8(data)
        && !name.is_empty()
        && !name.contains(['/', '\0'])
        && name.len() < 200
    {
        let odd = dir.join(name);
        if std::fs::write(&odd, b"x").is_ok() {
            for hash in store.list().unwrap_or_default() {
                assert!(store.path_of(&hash).is_file(), "listed {hash:?}, which is not there");
            }
            let _ = std::fs::remove_file(&odd);
        }
    }
}

/// The catalogue of groups created at run time.
pub fn catalogue(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        waft_daemon::fuzzing::catalogue(text);
    }
}

/// The data directory's identity file and the peer book.
pub fn identity_files(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        waft_daemon::fuzzing::identity_files(text);
    }
}

/// The users file (roles per group).
pub fn users_file(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = waft_daemon::security::Users::parse(text);
        for line in text.lines() {
            let _ = waft_daemon::security::parse_grant(line);
        }
    }
}

/// `waft serve --config`'s file.
pub fn serve_config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = waft_daemon::config::FileConfig::parse(text);
    }
}

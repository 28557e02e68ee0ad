//! A group's replicated settings: everything besides the module that shapes
//! what apply or a snapshot produces. They travel through the log (a
//! `Found` entry binds a new group to its first leader's, a `Settings`
//! entry changes them) and every snapshot records them ([`SETTINGS_FILE`]),
//! so every replica decides every entry under the same limits, whatever its
//! own flags say.
//!
//! Owns the settings' bounds and byte layout. Must never trust bytes from a
//! log, a snapshot or a network: decoding checks length, magic, checksum and
//! every bound.
//!
//! Layout (little endian), the same in an entry and, after an 8-byte index,
//! in [`SETTINGS_FILE`]:
//!
//! ```text
//! magic "WAFTSET2" | 12 × u64:
//!   sessions_open_max | window_commands_max | session_idle_timeout_ms
//!   | reply_bytes_per_session_max | reply_bytes_total_max
//!   | fuel_per_entry | fuel_per_query | fuel_per_snapshot
//!   | memory_bytes_max | result_bytes_max | snapshot_bytes_max
//!   | digest_interval
//! | crc32 of everything before it
//! ```
//!
//! A record of the first layout ("WAFTSET1", the first 11 fields, from a
//! data directory written before digests) still decodes, with the default
//! digest interval.
//!
//! The settings file's index is the entry the settings took effect at; 0
//! means they are this replica's founding values, not yet bound by the
//! group's `Found` entry.

use std::fmt;

use waft_runtime::Limits;
use waft_session::SessionConfig;

/// The snapshot file holding the settings in force and their index.
pub const SETTINGS_FILE: &str = "settings";

const MAGIC: &[u8; 8] = b"WAFTSET2";
const FIELDS: usize = 12;
/// The first layout: no digest interval.
const MAGIC_V1: &[u8; 8] = b"WAFTSET1";
const FIELDS_V1: usize = 11;
/// Bytes of one encoded settings record.
pub const SETTINGS_BYTES: usize = 8 + FIELDS * 8 + 4;
const SETTINGS_BYTES_V1: usize = 8 + FIELDS_V1 * 8 + 4;
/// Bytes of the settings file: the index, then the record (at most).
pub const SETTINGS_FILE_BYTES: usize = 8 + SETTINGS_BYTES;

/// Entries between two state digests, by default: a digest saves the
/// guest's state once (the runtime's fault-recovery checkpoint moves there
/// instead of by its own count), hashes it with the session table, and
/// costs one small entry. Equal to the runtime's default
/// `Limits::replay_entries_max`, so the state is saved as often as before
/// digests.
pub const DIGEST_INTERVAL_DEFAULT: u64 = 8192;
/// Bounds of the digest interval (0 turns digests off).
pub const DIGEST_INTERVAL_MIN: u64 = 16;
pub const DIGEST_INTERVAL_MAX: u64 = 1 << 32;

/// Fuel bounds of one entry, query or hook. Below the minimum a guest
/// could not make a single host call (each costs 1,000).
pub const FUEL_MIN: u64 = 100_000;
pub const FUEL_MAX: u64 = 1_000_000_000_000;
/// Fuel bounds of one snapshot save or load.
pub const SNAPSHOT_FUEL_MAX: u64 = 100_000_000_000_000;
/// Linear memory bounds of one instance. The runtime re-decides a limit hit
/// on a fresh instance with twice the memory, so the top stays at half
/// wasm32's 4 GiB.
pub const MEMORY_BYTES_MIN: u64 = 1 << 20;
pub const MEMORY_BYTES_MAX: u64 = 2 << 30;
/// Bounds of one entry's or query's result.
pub const RESULT_BYTES_MIN: u64 = 1 << 10;
pub const RESULT_BYTES_MAX: u64 = 64 << 20;
/// Bounds of the guest's snapshot stream.
pub const SNAPSHOT_BYTES_MIN: u64 = 1 << 20;
pub const SNAPSHOT_BYTES_MAX: u64 = 1 << 40;

/// The group's settings. Equal on every replica once the group's `Found`
/// entry has applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSettings {
    /// Limits of the session table (exactly-once client sessions).
    pub sessions: SessionConfig,
    /// The guest limits that shape an entry's outcome or a snapshot; the
    /// rest of `waft_runtime::Limits` (batching, checkpoints, wall-clock
    /// backstops, log lines) is local and comes from the node.
    pub fuel_per_entry: u64,
    pub fuel_per_query: u64,
    pub fuel_per_snapshot: u64,
    pub memory_bytes_max: u64,
    pub result_bytes_max: u64,
    pub snapshot_bytes_max: u64,
    /// Replicas digest their state after every entry whose index is a
    /// multiple of this, and compare (see `crate::digest`). 0: never.
    pub digest_interval: u64,
}

/// Why settings were refused: a value out of its bounds, or bytes that are
/// not a settings record.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SettingsError(pub String);

impl Default for GroupSettings {
    fn default() -> Self {
        GroupSettings::founding(&Limits::default(), &SessionConfig::default())
    }
}

impl GroupSettings {
    /// Settings made of a node's limits and session limits: what a replica
    /// founds a group with until the group's `Found` entry binds it.
    pub fn founding(limits: &Limits, sessions: &SessionConfig) -> GroupSettings {
        GroupSettings {
            sessions: sessions.clone(),
            fuel_per_entry: limits.fuel_per_entry,
            fuel_per_query: limits.fuel_per_query,
            fuel_per_snapshot: limits.fuel_per_snapshot,
            memory_bytes_max: limits.memory_bytes_max as u64,
            result_bytes_max: limits.result_bytes_max as u64,
            snapshot_bytes_max: limits.snapshot_bytes_max,
            digest_interval: DIGEST_INTERVAL_DEFAULT,
        }
    }

    /// Whether the entry at `index` is a digest point.
    pub fn is_digest_point(&self, index: u64) -> bool {
        self.digest_interval > 0 && index > 0 && index.is_multiple_of(self.digest_interval)
    }

    /// The runtime limits to run the guest with: the node's `local` ones
    /// with the group's put over them.
    pub fn limits(&self, local: &Limits) -> Limits {
        Limits {
            fuel_per_entry: self.fuel_per_entry,
            fuel_per_query: self.fuel_per_query,
            fuel_per_snapshot: self.fuel_per_snapshot,
            // Bounded by MEMORY_BYTES_MAX and RESULT_BYTES_MAX (validate), so
            // they fit a usize on every target waft builds for.
            memory_bytes_max: usize::try_from(self.memory_bytes_max).unwrap_or(usize::MAX),
            result_bytes_max: usize::try_from(self.result_bytes_max).unwrap_or(usize::MAX),
            snapshot_bytes_max: self.snapshot_bytes_max,
            ..local.clone()
        }
    }

    /// Whether a change from `self` to `other` needs a new guest instance
    /// (its limits differ), not only a new session table.
    pub fn guest_differs(&self, other: &GroupSettings) -> bool {
        (self.fuel_per_entry, self.fuel_per_query, self.fuel_per_snapshot)
            != (other.fuel_per_entry, other.fuel_per_query, other.fuel_per_snapshot)
            || (self.memory_bytes_max, self.result_bytes_max, self.snapshot_bytes_max)
                != (other.memory_bytes_max, other.result_bytes_max, other.snapshot_bytes_max)
    }

    /// Checks every value against its bound.
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.sessions.validate().map_err(|e| SettingsError(e.to_string()))?;
        let check = |name: &str, v: u64, min: u64, max: u64| {
            if v < min || v > max {
                return Err(SettingsError(format!("{name} = {v} is outside {min}..={max}")));
            }
            Ok(())
        };
        check("fuel_per_entry", self.fuel_per_entry, FUEL_MIN, FUEL_MAX)?;
        check("fuel_per_query", self.fuel_per_query, FUEL_MIN, FUEL_MAX)?;
        check("fuel_per_snapshot", self.fuel_per_snapshot, FUEL_MIN, SNAPSHOT_FUEL_MAX)?;
        check("memory_bytes_max", self.memory_bytes_max, MEMORY_BYTES_MIN, MEMORY_BYTES_MAX)?;
        check("result_bytes_max", self.result_bytes_max, RESULT_BYTES_MIN, RESULT_BYTES_MAX)?;
        check("snapshot_bytes_max", self.snapshot_bytes_max, SNAPSHOT_BYTES_MIN, SNAPSHOT_BYTES_MAX)?;
        if self.digest_interval != 0 {
            check("digest_interval", self.digest_interval, DIGEST_INTERVAL_MIN, DIGEST_INTERVAL_MAX)?;
        }
        Ok(())
    }

    fn fields(&self) -> [u64; FIELDS] {
        let s = &self.sessions;
        [
            s.sessions_open_max,
            s.window_commands_max,
            s.session_idle_timeout_ms,
            s.reply_bytes_per_session_max,
            s.reply_bytes_total_max,
            self.fuel_per_entry,
            self.fuel_per_query,
            self.fuel_per_snapshot,
            self.memory_bytes_max,
            self.result_bytes_max,
            self.snapshot_bytes_max,
            self.digest_interval,
        ]
    }

    /// The record's bytes (see the module docs).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(SETTINGS_BYTES);
        out.extend_from_slice(MAGIC);
        for v in self.fields() {
            out.extend_from_slice(&v.to_le_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes and validates a record.
    pub fn decode(bytes: &[u8]) -> Result<GroupSettings, SettingsError> {
        let bad = |what: &str| Err(SettingsError(format!("not a settings record: {what}")));
        let magic = bytes.get(..8);
        let expected = if magic == Some(MAGIC_V1.as_slice()) { SETTINGS_BYTES_V1 } else { SETTINGS_BYTES };
        if bytes.len() != expected {
            return bad(&format!("{} bytes, not {expected}", bytes.len()));
        }
        let (body, crc) = bytes.split_at(expected - 4);
        if magic != Some(MAGIC.as_slice()) && magic != Some(MAGIC_V1.as_slice()) {
            return bad("wrong magic (written by another version of waft?)");
        }
        let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
        if stored != crc32fast::hash(body) {
            return bad("checksum mismatch");
        }
        let mut f = [0u64; FIELDS];
        f[FIELDS - 1] = DIGEST_INTERVAL_DEFAULT;
        for (i, chunk) in body[8..].chunks_exact(8).enumerate() {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            f[i] = u64::from_le_bytes(b);
        }
        let settings = GroupSettings {
            sessions: SessionConfig {
                sessions_open_max: f[0],
                window_commands_max: f[1],
                session_idle_timeout_ms: f[2],
                reply_bytes_per_session_max: f[3],
                reply_bytes_total_max: f[4],
            },
            fuel_per_entry: f[5],
            fuel_per_query: f[6],
            fuel_per_snapshot: f[7],
            memory_bytes_max: f[8],
            result_bytes_max: f[9],
            snapshot_bytes_max: f[10],
            digest_interval: f[11],
        };
        settings.validate()?;
        Ok(settings)
    }

    /// A settings change's bytes (a `Body::Settings` entry): the index of
    /// the settings it was made over (a change made over others is refused
    /// at apply, so two concurrent changes never silently undo one another)
    /// and the whole record.
    pub fn encode_change(&self, base: u64) -> Vec<u8> {
        self.encode_file(base)
    }

    /// Decodes a settings change into its base index and settings.
    pub fn decode_change(bytes: &[u8]) -> Result<(u64, GroupSettings), SettingsError> {
        GroupSettings::decode_file(bytes)
    }

    /// The settings file's bytes: `index` (the entry these took effect at)
    /// and the record.
    pub fn encode_file(&self, index: u64) -> Vec<u8> {
        let mut out = index.to_le_bytes().to_vec();
        out.extend_from_slice(&self.encode());
        out
    }

    /// Decodes a settings file into its index and settings.
    pub fn decode_file(bytes: &[u8]) -> Result<(u64, GroupSettings), SettingsError> {
        if bytes.len() != SETTINGS_FILE_BYTES && bytes.len() != 8 + SETTINGS_BYTES_V1 {
            return Err(SettingsError(format!(
                "a settings record with its index has {} bytes, not {SETTINGS_FILE_BYTES}",
                bytes.len()
            )));
        }
        let (index, record) = bytes.split_at(8);
        let mut b = [0u8; 8];
        b.copy_from_slice(index);
        Ok((u64::from_le_bytes(b), GroupSettings::decode(record)?))
    }

    /// Sets one setting by its name (as `named` spells it); the value is
    /// checked by `validate`, not here.
    pub fn set(&mut self, name: &str, value: u64) -> Result<(), SettingsError> {
        let s = &mut self.sessions;
        let field = match name {
            "sessions_open_max" => &mut s.sessions_open_max,
            "session_window_commands_max" => &mut s.window_commands_max,
            "session_idle_timeout_ms" => &mut s.session_idle_timeout_ms,
            "session_reply_bytes_max" => &mut s.reply_bytes_per_session_max,
            "session_reply_bytes_total_max" => &mut s.reply_bytes_total_max,
            "fuel_per_entry" => &mut self.fuel_per_entry,
            "fuel_per_query" => &mut self.fuel_per_query,
            "fuel_per_snapshot" => &mut self.fuel_per_snapshot,
            "memory_bytes_max" => &mut self.memory_bytes_max,
            "result_bytes_max" => &mut self.result_bytes_max,
            "snapshot_bytes_max" => &mut self.snapshot_bytes_max,
            "digest_interval" => &mut self.digest_interval,
            _ => {
                let names: Vec<&str> = self.named().iter().map(|(n, _)| *n).collect();
                return Err(SettingsError(format!("no setting named {name:?}; the settings are {}", names.join(", "))));
            }
        };
        *field = value;
        Ok(())
    }

    /// Each setting by the name `waft admin set-group` and status use.
    pub fn named(&self) -> [(&'static str, u64); FIELDS] {
        let f = self.fields();
        [
            ("sessions_open_max", f[0]),
            ("session_window_commands_max", f[1]),
            ("session_idle_timeout_ms", f[2]),
            ("session_reply_bytes_max", f[3]),
            ("session_reply_bytes_total_max", f[4]),
            ("fuel_per_entry", f[5]),
            ("fuel_per_query", f[6]),
            ("fuel_per_snapshot", f[7]),
            ("memory_bytes_max", f[8]),
            ("result_bytes_max", f[9]),
            ("snapshot_bytes_max", f[10]),
            ("digest_interval", f[11]),
        ]
    }
}

impl fmt::Display for GroupSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, v)) in self.named().iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{name}={v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_and_damage_is_refused() {
        let s = GroupSettings { fuel_per_entry: 1_234_567, ..GroupSettings::default() };
        assert_eq!(GroupSettings::decode(&s.encode()), Ok(s.clone()));
        assert_eq!(GroupSettings::decode_file(&s.encode_file(42)), Ok((42, s.clone())));
        let good = s.encode();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x10;
            assert!(GroupSettings::decode(&bad).is_err(), "a flipped bit at byte {i} went unnoticed");
        }
        for cut in 0..good.len() {
            assert!(GroupSettings::decode(&good[..cut]).is_err());
        }
    }

    #[test]
    fn a_record_of_the_first_layout_decodes_with_the_default_digest_interval() {
        let s = GroupSettings { fuel_per_entry: 7_654_321, digest_interval: 64, ..GroupSettings::default() };
        let mut v1 = MAGIC_V1.to_vec();
        for v in &s.fields()[..FIELDS_V1] {
            v1.extend_from_slice(&v.to_le_bytes());
        }
        let crc = crc32fast::hash(&v1);
        v1.extend_from_slice(&crc.to_le_bytes());
        let expected = GroupSettings { digest_interval: DIGEST_INTERVAL_DEFAULT, ..s };
        assert_eq!(GroupSettings::decode(&v1), Ok(expected.clone()));
        let mut file = 9u64.to_le_bytes().to_vec();
        file.extend_from_slice(&v1);
        assert_eq!(GroupSettings::decode_file(&file), Ok((9, expected)));
    }

    #[test]
    fn out_of_bounds_values_are_refused_even_with_a_good_checksum() {
        let d = GroupSettings::default();
        d.validate().unwrap();
        for bad in [
            GroupSettings { fuel_per_entry: 10, ..d.clone() },
            GroupSettings { memory_bytes_max: MEMORY_BYTES_MAX + 1, ..d.clone() },
            GroupSettings { result_bytes_max: 0, ..d.clone() },
            GroupSettings { snapshot_bytes_max: 1, ..d.clone() },
            GroupSettings { digest_interval: DIGEST_INTERVAL_MIN - 1, ..d.clone() },
            GroupSettings { sessions: SessionConfig { sessions_open_max: 0, ..d.sessions.clone() }, ..d.clone() },
        ] {
            let err = GroupSettings::decode(&bad.encode()).unwrap_err();
            assert_eq!(bad.validate(), Err(err));
        }
    }

    #[test]
    fn every_named_setting_can_be_set_by_its_name() {
        let d = GroupSettings::default();
        for (i, (name, v)) in d.named().into_iter().enumerate() {
            let mut s = d.clone();
            s.set(name, v + 1).unwrap();
            let changed: Vec<usize> = (0..FIELDS).filter(|&j| s.named()[j] != d.named()[j]).collect();
            assert_eq!(changed, vec![i], "{name}");
            assert_eq!(s.named()[i], (name, v + 1));
        }
        assert!(d.clone().set("fuel", 1).unwrap_err().0.contains("fuel_per_entry"));
    }

    #[test]
    fn group_limits_override_only_their_own_fields() {
        let local = Limits { call_wall_ms_max: 7, fuel_per_entry: 1, ..Limits::default() };
        let s = GroupSettings { fuel_per_entry: 5_000_000, memory_bytes_max: 8 << 20, ..GroupSettings::default() };
        let l = s.limits(&local);
        assert_eq!((l.fuel_per_entry, l.memory_bytes_max, l.call_wall_ms_max), (5_000_000, 8 << 20, 7));
        assert!(s.guest_differs(&GroupSettings::default()));
        let sessions_only =
            GroupSettings { sessions: SessionConfig { sessions_open_max: 3, ..s.sessions.clone() }, ..s.clone() };
        assert!(!s.guest_differs(&sessions_only));
    }
}

//! The canonical ABI of `on-apply`, written out by hand for the hot path.
//!
//! Owns how a batch of entries enters guest memory and how the guest's
//! results leave it. wasmtime's generic lowering fetches the memory slice
//! again for every field it stores, and its generic lifting allocates one
//! `Vec` per reply; at a thousand small entries per call those dominate
//! the host's share of an apply. Here each entry's command is still
//! allocated with its own guest `realloc` call, in the same order and with
//! the same arguments as wasmtime would (so the guest's heap, and the fuel
//! it spends, are exactly what the generic path gives), but the records are
//! written in one pass, and every reply is copied into one shared buffer.
//!
//! Must never accept what wasmtime's own lifting refuses (an out-of-bounds
//! or misaligned pointer, a bad discriminant, invalid string encoding), and
//! must charge the same hostcall fuel: the `typecheck`s delegate to
//! wasmtime's own types, so a module that loads is one whose exports have
//! exactly these shapes.
//!
//! The traits implemented here are wasmtime's (`ComponentType`, `Lower`,
//! `Lift`); their methods and the contexts they take are `doc(hidden)`, the
//! same surface `#[derive(ComponentType)]` expands to. The workspace pins
//! wasmtime to one exact version; an upgrade must re-read this file against
//! `wasmtime::component::func::typed` (the Vec/list and Result impls).

use std::cell::Cell;
use std::mem::MaybeUninit;

use bytes::Bytes;
use wasmtime::ValRaw;
use wasmtime::component::__internal::{CanonicalAbiInfo, InstanceType, InterfaceType, LiftContext, LowerContext};
use wasmtime::component::{ComponentType, Lift, Lower};

use crate::machine::Entry;

/// `waft:fsm/types.entry`, borrowing the command bytes: the shape the
/// entries list is type-checked against.
#[derive(ComponentType, Lower)]
#[component(record)]
struct EntryShape<'a> {
    index: u64,
    term: u64,
    command: &'a [u8],
}

/// Size and alignment of one `entry` record in guest memory: two u64s, then
/// the command's pointer and length.
const ENTRY_SIZE: usize = 24;
const ENTRY_ALIGN: u32 = 8;
const _: () = assert!(EntryShape::SIZE32 == ENTRY_SIZE && EntryShape::ALIGN32 == ENTRY_ALIGN);

/// `on-apply`'s parameter: `list<entry>`.
pub(crate) struct Entries<'a>(pub(crate) &'a [Entry]);

// SAFETY: the ABI and `Lower` representation are those of `[EntryShape]`
// (a pointer pair), and `typecheck` is its.
unsafe impl ComponentType for Entries<'_> {
    type Lower = [ValRaw; 2];

    const ABI: CanonicalAbiInfo = CanonicalAbiInfo::POINTER_PAIR;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <[EntryShape<'_>] as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: writes only inside ranges the guest's `realloc` returned, each of
// which `LowerContext::realloc` bounds-checks against memory.
unsafe impl Lower for Entries<'_> {
    fn linear_lower_to_flat<T>(
        &self,
        cx: &mut LowerContext<'_, T>,
        _ty: InterfaceType,
        dst: &mut MaybeUninit<[ValRaw; 2]>,
    ) -> wasmtime::Result<()> {
        let (ptr, len) = self.lower(cx)?;
        // Pointers travel as i64 whatever the memory's width, as wasmtime's
        // own `lower_pointer_pair_to_flat` does.
        dst.write([ValRaw::i64(ptr as i64), ValRaw::i64(len as i64)]);
        Ok(())
    }

    fn linear_lower_to_memory<T>(
        &self,
        cx: &mut LowerContext<'_, T>,
        _ty: InterfaceType,
        offset: usize,
    ) -> wasmtime::Result<()> {
        let (ptr, len) = self.lower(cx)?;
        let memory = cx.as_slice_mut();
        memory[offset..offset + 4].copy_from_slice(&u32::try_from(ptr)?.to_le_bytes());
        memory[offset + 4..offset + 8].copy_from_slice(&u32::try_from(len)?.to_le_bytes());
        Ok(())
    }
}

impl Entries<'_> {
    /// Allocate the record array, then each command in order (wasmtime's
    /// order, so the guest sees the same `realloc` calls), then write
    /// everything with one view of memory. Returns (array pointer, length).
    fn lower<T>(&self, cx: &mut LowerContext<'_, T>) -> wasmtime::Result<(usize, usize)> {
        let entries = self.0;
        let array_bytes = entries
            .len()
            .checked_mul(ENTRY_SIZE)
            .ok_or_else(|| wasmtime::format_err!("size overflow copying a list"))?;
        let array = cx.realloc(0, 0, ENTRY_ALIGN, array_bytes)?;
        let mut commands = Vec::with_capacity(entries.len());
        for entry in entries {
            commands.push(cx.realloc(0, 0, 1, entry.command.len())?);
        }
        // Every realloc above checked its range against memory as it was
        // then, and memory never shrinks, so the indexing below cannot fail.
        let memory = cx.as_slice_mut();
        let records = &mut memory[array..array + array_bytes];
        for ((record, entry), &command) in records.chunks_exact_mut(ENTRY_SIZE).zip(entries).zip(&commands) {
            record[0..8].copy_from_slice(&entry.index.to_le_bytes());
            record[8..16].copy_from_slice(&entry.term.to_le_bytes());
            record[16..20].copy_from_slice(&u32::try_from(command)?.to_le_bytes());
            record[20..24].copy_from_slice(&u32::try_from(entry.command.len())?.to_le_bytes());
        }
        for (entry, &command) in entries.iter().zip(&commands) {
            memory[command..command + entry.command.len()].copy_from_slice(&entry.command);
        }
        Ok((array, entries.len()))
    }
}

/// `on-apply`'s result, `list<result<list<u8>, string>>`, lifted with the
/// bytes of replies up to `SHARED_MAX` long copied into one buffer.
pub(crate) struct Replies<const SHARED_MAX: usize = SHARED_REPLY_BYTES_MAX> {
    /// The small `ok` replies, back to back.
    shared: Vec<u8>,
    /// One per entry.
    replies: Vec<Reply>,
}

enum Reply {
    /// A range of `Replies::shared`.
    Shared(usize, usize),
    /// A reply too large to share.
    Own(Bytes),
    Err(String),
}

/// Largest reply that goes into the shared buffer. Every reply of a batch
/// keeps that buffer alive, so this bounds what one long-lived reply can
/// pin: at most this times the entries of one call.
pub(crate) const SHARED_REPLY_BYTES_MAX: usize = 4 * 1024;

impl<const SHARED_MAX: usize> Replies<SHARED_MAX> {
    pub(crate) fn len(&self) -> usize {
        self.replies.len()
    }

    /// One result per entry; the small `ok` replies share one allocation.
    pub(crate) fn into_results(self) -> impl Iterator<Item = Result<Bytes, String>> {
        let shared = Bytes::from(self.shared);
        self.replies.into_iter().map(move |reply| match reply {
            Reply::Shared(start, end) => Ok(shared.slice(start..end)),
            Reply::Own(bytes) => Ok(bytes),
            Reply::Err(message) => Err(message),
        })
    }
}

thread_local! {
    /// Largest reply (ok bytes or error string) the `on-apply` call running
    /// on this thread may return: `Limits::result_bytes_max`, set around the
    /// call by `with_result_cap` (lifting has no way to the store's data).
    static RESULT_CAP: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// Runs `call` with replies capped at `cap` bytes.
pub(crate) fn with_result_cap<T>(cap: usize, call: impl FnOnce() -> T) -> T {
    let before = RESULT_CAP.with(|c| c.replace(cap));
    let out = call();
    RESULT_CAP.with(|c| c.set(before));
    out
}

/// A reply longer than `Limits::result_bytes_max`: the entry is rejected,
/// checked before a byte of it is copied.
#[derive(Debug, thiserror::Error)]
#[error("the result of {len} bytes exceeds the result limit of {max} bytes; the entry was not applied")]
pub struct ResultTooLarge {
    pub len: usize,
    pub max: usize,
}

/// Size and alignment of one `result<list<u8>, string>`: a discriminant
/// byte, then at offset 4 the payload's pointer and length.
const RESULT_SIZE: usize = 12;
const RESULT_ALIGN: usize = 4;
const RESULT_PAYLOAD: usize = 4;
const _: () = assert!(
    <Result<Vec<u8>, String> as ComponentType>::SIZE32 == RESULT_SIZE
        && <Result<Vec<u8>, String> as ComponentType>::ALIGN32 as usize == RESULT_ALIGN
);

// SAFETY: the ABI and `Lower` representation are those of
// `Vec<Result<Vec<u8>, String>>` (a pointer pair), and `typecheck` is its.
unsafe impl<const SHARED_MAX: usize> ComponentType for Replies<SHARED_MAX> {
    type Lower = [ValRaw; 2];

    const ABI: CanonicalAbiInfo = CanonicalAbiInfo::POINTER_PAIR;

    fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
        <Vec<Result<Vec<u8>, String>> as ComponentType>::typecheck(ty, types)
    }
}

// SAFETY: reads only inside guest memory, after the same bounds and
// alignment checks wasmtime's `WasmList` makes.
unsafe impl<const SHARED_MAX: usize> Lift for Replies<SHARED_MAX> {
    fn linear_lift_from_flat(cx: &mut LiftContext<'_>, ty: InterfaceType, src: &[ValRaw; 2]) -> wasmtime::Result<Self> {
        Self::lift(cx, ty, usize::try_from(src[0].get_u32())?, usize::try_from(src[1].get_u32())?)
    }

    fn linear_lift_from_memory(cx: &mut LiftContext<'_>, ty: InterfaceType, bytes: &[u8]) -> wasmtime::Result<Self> {
        let word = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
        Self::lift(cx, ty, usize::try_from(word(0))?, usize::try_from(word(4))?)
    }
}

impl<const SHARED_MAX: usize> Replies<SHARED_MAX> {
    fn lift(cx: &mut LiftContext<'_>, ty: InterfaceType, ptr: usize, len: usize) -> wasmtime::Result<Self> {
        // The error's type, for lifting it with wasmtime's own string code
        // (which knows every string encoding a component may declare).
        let err_ty = match ty {
            InterfaceType::List(list) => match cx.types[list].element {
                InterfaceType::Result(result) => cx.types[result].err,
                _ => None,
            },
            _ => None,
        };
        let Some(err_ty) = err_ty else { wasmtime::bail!("on-apply's result has an unexpected type") };
        let memory = cx.memory();
        // As `WasmList::new`: bounds, then hostcall fuel by the host-side
        // size of what the generic path would build, then alignment.
        match len.checked_mul(RESULT_SIZE).and_then(|n| ptr.checked_add(n)) {
            Some(end) if end <= memory.len() => cx.consume_fuel_array(len, size_of::<Result<Vec<u8>, String>>())?,
            _ => wasmtime::bail!("list pointer/length out of bounds of memory"),
        }
        if !ptr.is_multiple_of(RESULT_ALIGN) {
            wasmtime::bail!("list pointer is not aligned")
        }
        let items = &memory[ptr..ptr + len * RESULT_SIZE];
        // Size the buffer once: the sum of the small `ok` lengths (the loop
        // below checks each one).
        let total: usize = items
            .chunks_exact(RESULT_SIZE)
            .filter(|item| item[0] == 0)
            .map(|item| u32::from_le_bytes([item[8], item[9], item[10], item[11]]) as usize)
            .filter(|&reply_len| reply_len <= SHARED_MAX)
            .sum();
        let cap = RESULT_CAP.with(Cell::get);
        // Claimed lengths may overlap in memory and add up to far more than
        // the copying below is allowed (hostcall fuel bounds that): size the
        // buffer by at most memory's length, and let it grow past that only
        // as real bytes are copied.
        let mut shared = Vec::with_capacity(total.min(memory.len()));
        let mut replies = Vec::with_capacity(len);
        for item in items.chunks_exact(RESULT_SIZE) {
            let payload = &item[RESULT_PAYLOAD..RESULT_SIZE];
            // Both cases keep their length at payload offset 4 (bytes for
            // a list<u8>; code units for a string, bytes in UTF-8).
            let reply_len = u32::from_le_bytes([payload[4], payload[5], payload[6], payload[7]]) as usize;
            if reply_len > cap {
                return Err(ResultTooLarge { len: reply_len, max: cap }.into());
            }
            match item[0] {
                0 => {
                    let word = |at: usize| {
                        u32::from_le_bytes([payload[at], payload[at + 1], payload[at + 2], payload[at + 3]])
                    };
                    let reply = usize::try_from(word(0))?;
                    match reply.checked_add(reply_len) {
                        Some(end) if end <= memory.len() => cx.consume_fuel_array(reply_len, 1)?,
                        _ => wasmtime::bail!("list pointer/length out of bounds of memory"),
                    }
                    let reply = &memory[reply..reply + reply_len];
                    if reply_len <= SHARED_MAX {
                        let start = shared.len();
                        shared.extend_from_slice(reply);
                        replies.push(Reply::Shared(start, shared.len()));
                    } else {
                        replies.push(Reply::Own(Bytes::copy_from_slice(reply)));
                    }
                }
                1 => replies.push(Reply::Err(<String as Lift>::linear_lift_from_memory(cx, err_ty, payload)?)),
                _ => wasmtime::bail!("invalid expected discriminant"),
            }
        }
        Ok(Replies { shared, replies })
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use wasmtime::component::TypedFunc;

    use super::*;
    use crate::machine::Live;
    use crate::{Engine, Limits, Module};

    /// A guest component built by `cargo xtask guests`.
    fn guest(name: &str) -> Vec<u8> {
        let dir = std::env::var_os("WAFT_GUEST_DIR").map(PathBuf::from).unwrap_or_else(|| {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
            target.join("wasm32-wasip2/release")
        });
        let path = dir.join(format!("{name}.wasm"));
        std::fs::read(&path).unwrap_or_else(|e| {
            panic!("cannot read {}: {e}; build the guests first with `cargo xtask guests`", path.display())
        })
    }

    /// Entries at indexes 1, 2, … of term 7.
    fn batch(commands: &[&[u8]]) -> Vec<Entry> {
        commands.iter().enumerate().map(|(i, c)| Entry::new(i as u64 + 1, 7, c.to_vec())).collect()
    }

    type GenericApply<'a> = TypedFunc<(&'a [EntryShape<'a>],), (Vec<Result<Vec<u8>, String>>,)>;
    /// Replies of up to 2 bytes shared, so both kinds of reply occur.
    type OwnApply<'a> = TypedFunc<(Entries<'a>,), (Replies<2>,)>;

    /// Two instances of one module, fed the same batches: one through
    /// wasmtime's generic lowering and lifting, one through this module's.
    /// They must return the same results and leave the same fuel, which
    /// shows the guest saw the same `realloc` calls.
    fn same_as_generic(name: &str, batches: &[Vec<Entry>]) {
        let engine = Engine::new().unwrap();
        let module = Module::load(&engine, &guest(name)).unwrap();
        let limits = Limits::default();
        let mut generic = Live::instantiate(&module, &limits, "generic".into()).unwrap();
        let mut own = Live::instantiate(&module, &limits, "own".into()).unwrap();
        let fuel = 1_000_000_000;
        for entries in batches {
            let (store, func) = generic.on_apply_for_test(fuel);
            let shapes: Vec<EntryShape<'_>> =
                entries.iter().map(|e| EntryShape { index: e.index, term: e.term, command: &e.command }).collect();
            let f: GenericApply<'_> = func.typed(&*store).unwrap();
            let (want,) = f.call(&mut *store, (&shapes,)).unwrap();
            let want_fuel = store.get_fuel().unwrap();

            let (store, func) = own.on_apply_for_test(fuel);
            let f: OwnApply<'_> = func.typed(&*store).unwrap();
            let (got,) = f.call(&mut *store, (Entries(entries),)).unwrap();
            let got_fuel = store.get_fuel().unwrap();
            assert_eq!(got.len(), entries.len());
            let got: Vec<Result<Vec<u8>, String>> = got.into_results().map(|r| r.map(|b| b.to_vec())).collect();
            assert_eq!(got, want, "{name}");
            assert_eq!(got_fuel, want_fuel, "{name}: fuel left after the call");
        }
    }

    #[test]
    fn counter_results_and_fuel_match_wasmtimes_own_abi() {
        let junk = vec![b'x'; 10_000];
        let incrs: Vec<Vec<u8>> = (0..300).map(|i| format!(r#"{{"incr":{}}}"#, i * 37).into_bytes()).collect();
        let incrs: Vec<&[u8]> = incrs.iter().map(Vec::as_slice).collect();
        same_as_generic(
            "waft_counter",
            &[
                batch(&[]),
                batch(&[br#"{"incr":5}"#, b"\"get\"", b"{nope", b"", &[0x00, 0x00, 0x02], &[0x00, 0x01], &junk]),
                batch(&incrs),
                batch(&[b""]),
            ],
        );
    }

    /// More than 1 MiB of replies in one call: the guest releases its reply
    /// buffer after the call instead of keeping it, and the next call still
    /// works.
    #[test]
    fn a_batch_past_the_guests_retained_buffer_size() {
        let big: &[u8] = br#"{"incr":1000000000000}"#;
        same_as_generic("waft_counter", &[batch(&vec![big; 70_000]), batch(&[big, b"{nope"])]);
    }

    #[test]
    fn atomic_results_and_fuel_match_wasmtimes_own_abi() {
        let long_key = format!(r#"{{"set":{{"key":"{}","value":1}}}}"#, "k".repeat(5000));
        same_as_generic(
            "waft_atomic",
            &[
                batch(&[
                    br#"{"set":{"key":"a","value":1}}"#,
                    br#"{"cas":{"key":"a","expect":1,"new":2}}"#,
                    br#"{"cas":{"key":"a","expect":1,"new":3}}"#,
                    long_key.as_bytes(),
                    br#"{"incr":{"key":"a","delta":40}}"#,
                    br#"{"get":{"key":"a"}}"#,
                ]),
                batch(&[br#"{"incr":{"key":"b","delta":9223372036854775807}}"#, br#"{"incr":{"key":"b","delta":1}}"#]),
            ],
        );
    }

    #[test]
    fn probe_positions_and_rejections_match_wasmtimes_own_abi() {
        let mut commands: Vec<&[u8]> = Vec::new();
        for i in 0..50 {
            commands.push(if i % 7 == 3 { b"\"reject\"" } else { b"\"position\"" });
        }
        same_as_generic("waft_probe", &[batch(&commands), batch(&[b"\"position\""])]);
    }
}

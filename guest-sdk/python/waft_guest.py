"""Write waft state machines in Python.

Subclass `StateMachine`, implement `apply`, `query`, `save` and `load`, and
export it once at the module's top level:

    Machine = waft_guest.export(Counter)

then build a component with componentize-py against waft's WIT, world
`memory-state-machine` (`cargo xtask guests` shows the command):

    componentize-py -d wit -w memory-state-machine componentize --stub-wasi \\
        -p guest-sdk/python -p examples/counter-py counter -o counter.wasm

Commands, queries and replies use the same two forms as the Rust SDK,
told apart by the first byte:

- JSON text (anything not starting with a zero byte): decoded with `json`
  and handed to `apply` / `query` as Python values; what they return is
  encoded back as compact JSON (`{"value":5}`, `5`).
- binary: the byte 0x00, then the rest. The rest is handed over as `bytes`
  (the Rust SDK's binary form is postcard, which needs the Rust types to
  read: a Python machine reads its own binary layout), and the reply must
  be `bytes`, sent back after a 0x00.

A reply comes in the form of the request it answers. Raise `Rejected` to
refuse a command (the client gets REJECTED with the message); a refused
command must leave the state as it was. Any other exception traps: the
host rejects that entry as a GUEST_FAULT and restores the state as if it
had never been applied, on every replica alike.

What a Python guest must know (docs/writing-a-state-machine.md):

- It is built with `--stub-wasi`: it imports no WASI at all, so print,
  time, os.urandom and open trap (each a GUEST_FAULT, the same on every
  replica). The interpreter starts at build time: module-level code runs
  then, and an import inside a function traps (there are no files).
- `hash()` of a str is fixed per build: set iteration order is the same on
  every replica running one build, and may change with a rebuild. Never
  let a set's order reach the state, a reply or a save.
- `save` must return the same bytes for the same state whatever the
  instance's history (replicas compare digests of it): sort what you save
  (`json.dumps(..., sort_keys=True)`).
"""

import json

from componentize_py_types import Err, Ok
from wit_world import exports

#: First byte of a binary-form message.
BINARY_TAG = 0
#: Largest chunk the host takes or gives in one snapshot call.
SNAPSHOT_CHUNK_BYTES = 64 * 1024


class Rejected(Exception):
    """Refuses a command or a query: the client gets REJECTED with the
    message. A refused command must leave the state unchanged."""


class StateMachine:
    """A replicated state machine. Every replica calls these methods with
    the same arguments in the same order, so the state must depend on
    nothing else."""

    def apply(self, command, index):
        """Apply one committed command (a JSON value, or `bytes` in the
        binary form) at log `index`; return the reply."""
        raise NotImplementedError

    def query(self, query):
        """Answer a read-only query. Runs on a second instance: what it
        changes is not replicated and may vanish at any time."""
        raise NotImplementedError

    def save(self):
        """The whole state, as bytes."""
        raise NotImplementedError

    def load(self, data):
        """Replace the whole state with `data`, bytes an earlier `save` (of
        this or an older version of the module) returned. Raise `Rejected`
        for a state this machine cannot read: a deploy over it is refused."""
        raise NotImplementedError

    def on_leader_start(self, term):
        """This replica became leader (on the query instance)."""

    def on_leader_stop(self):
        """This replica stopped being leader."""

    def on_configuration_committed(self, voters, learners):
        """A membership change committed."""


def decode(message):
    """(value, binary): a message in either form."""
    if not message:
        raise Rejected("empty message: expected JSON text or 0x00 followed by a binary payload")
    if message[0] == BINARY_TAG:
        return bytes(message[1:]), True
    try:
        return json.loads(bytes(message).decode("utf-8")), False
    except (UnicodeDecodeError, ValueError) as e:
        raise Rejected(f"malformed JSON message: {e}")


def encode(value, binary):
    """A reply in the form of its request."""
    if binary:
        if not isinstance(value, (bytes, bytearray)):
            raise TypeError("a reply to a binary request must be bytes")
        return bytes([BINARY_TAG]) + bytes(value)
    return json.dumps(value, separators=(",", ":")).encode("utf-8")


def export(machine_class):
    """The `Machine` class componentize-py exports, running one instance of
    `machine_class` (made with no arguments). Assign it to `Machine` at the
    module's top level."""
    machine = machine_class()

    def apply_one(entry):
        try:
            command, binary = decode(entry.command)
            reply = machine.apply(command, entry.index)
        except Rejected as e:
            return Err(str(e))
        # An encoding failure here traps: the command applied, so an error
        # result (which must leave the state unchanged) would be a lie.
        return Ok(encode(reply, binary))

    class Machine(exports.Machine):
        def on_apply(self, entries):
            return [apply_one(e) for e in entries]

        def query(self, request):
            try:
                query, binary = decode(request)
                return encode(machine.query(query), binary)
            except Rejected as e:
                raise Err(str(e))

        def on_snapshot_save(self, writer):
            data = bytes(machine.save())
            for start in range(0, len(data), SNAPSHOT_CHUNK_BYTES):
                writer.write(data[start : start + SNAPSHOT_CHUNK_BYTES])

        def on_snapshot_load(self, reader):
            chunks = []
            while True:
                chunk = reader.read(SNAPSHOT_CHUNK_BYTES)
                if not chunk:
                    break
                chunks.append(bytes(chunk))
            try:
                machine.load(b"".join(chunks))
            except Rejected as e:
                raise Err(str(e))

        def on_leader_start(self, term):
            machine.on_leader_start(term)

        def on_leader_stop(self):
            machine.on_leader_stop()

        def on_configuration_committed(self, voters, learners):
            machine.on_configuration_committed(list(voters), list(learners))

    return Machine

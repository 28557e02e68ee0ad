// Write waft state machines in JavaScript.
//
// Subclass `StateMachine`, implement apply / query / save / load, and export
// an instance as the component's `machine`:
//
//     export const machine = exportMachine(new Counter());
//
// then build a component with componentize-js against waft's WIT, world
// `memory-state-machine` (`cargo xtask guests` shows the command):
//
//     componentize-js examples/counter-js/counter.js --wit wit \
//         --world-name memory-state-machine \
//         --disable stdio random clocks http fetch-event -o counter.wasm
//
// Commands, queries and replies use the same two forms as the Rust SDK,
// told apart by the first byte:
// - JSON text (anything not starting with a zero byte): parsed with
//   JSON.parse and handed to apply / query as JavaScript values; what they
//   return is sent back as JSON.stringify's text (a BigInt is sent as a
//   JSON number). JSON numbers are JavaScript numbers: exact up to 2^53.
// - binary: the byte 0x00, then the rest. The rest is handed over as a
//   Uint8Array (the Rust SDK's binary form is postcard, which needs the
//   Rust types to read: a JavaScript machine reads its own layout), and the
//   reply must be a Uint8Array, sent back after a 0x00.
//
// A reply comes in the form of the request it answers. Throw a `Rejected`
// to refuse a command (the client gets REJECTED with its message); a
// refused command must leave the state as it was. Anything else thrown
// traps: the host rejects that entry as a GUEST_FAULT and restores the state
// as if it had never been applied, on every replica alike.
//
// What a JavaScript guest must know (docs/writing-a-state-machine.md): it is
// built with every WASI feature disabled, so it imports no WASI; Date.now()
// returns the build's time and Math.random() a fixed sequence from an
// in-module generator whose state depends on the instance's history, so
// neither may reach the state, a reply or a save. Map, Set and object
// iteration order is fixed by the language. `save` must return the same
// bytes for the same state whatever the instance's history.

const BINARY_TAG = 0;
// Largest chunk the host takes or gives in one snapshot call.
const SNAPSHOT_CHUNK_BYTES = 64 * 1024;

// Refuses a command or a query: the client gets REJECTED with `message`.
export class Rejected {
  constructor(message) {
    this.message = String(message);
  }
}

// A replicated state machine. Every replica calls these methods with the
// same arguments in the same order, so the state must depend on nothing
// else.
export class StateMachine {
  // Apply one committed command (a JSON value, or a Uint8Array in the
  // binary form) at log `index` (a BigInt); return the reply.
  apply(_command, _index) {
    throw new Rejected('apply is not implemented');
  }
  // Answer a read-only query. Runs on a second instance: what it changes is
  // not replicated and may vanish at any time.
  query(_query) {
    throw new Rejected('query is not implemented');
  }
  // The whole state, as a Uint8Array.
  save() {
    return new Uint8Array(0);
  }
  // Replace the whole state with `bytes` an earlier save returned (of this
  // or an older version of the module). Throw a Rejected for a state this
  // machine cannot read: a deploy over it is refused.
  load(_bytes) {}
  onLeaderStart(_term) {}
  onLeaderStop() {}
  onConfigurationCommitted(_voters, _learners) {}
}

function decode(bytes) {
  if (bytes.length === 0) {
    throw new Rejected('empty message: expected JSON text or 0x00 followed by a binary payload');
  }
  if (bytes[0] === BINARY_TAG) {
    return [bytes.subarray(1), true];
  }
  let text;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch (e) {
    throw new Rejected('malformed JSON message: not UTF-8');
  }
  try {
    return [JSON.parse(text), false];
  } catch (e) {
    throw new Rejected(`malformed JSON message: ${e.message}`);
  }
}

function encode(value, binary) {
  if (binary) {
    if (!(value instanceof Uint8Array)) {
      throw new TypeError('a reply to a binary request must be a Uint8Array');
    }
    const out = new Uint8Array(value.length + 1);
    out[0] = BINARY_TAG;
    out.set(value, 1);
    return out;
  }
  const text = typeof value === 'bigint' ? value.toString() : JSON.stringify(value);
  return new TextEncoder().encode(text);
}

// A thrown Rejected, as the string a WIT `result` error carries; anything
// else is thrown on, to trap.
function rejection(e) {
  if (e instanceof Rejected) {
    return e.message;
  }
  throw e;
}

// The `machine` export componentize-js needs, running `machine` (a
// StateMachine).
export function exportMachine(machine) {
  return {
    onApply(entries) {
      return entries.map((entry) => {
        let command, binary, reply;
        try {
          [command, binary] = decode(entry.command);
          reply = machine.apply(command, entry.index);
        } catch (e) {
          return { tag: 'err', val: rejection(e) };
        }
        // An encoding failure here traps: the command applied, so an error
        // result (which must leave the state unchanged) would be a lie.
        return { tag: 'ok', val: encode(reply, binary) };
      });
    },

    query(request) {
      try {
        const [query, binary] = decode(request);
        return encode(machine.query(query), binary);
      } catch (e) {
        throw rejection(e);
      }
    },

    onSnapshotSave(writer) {
      const data = machine.save();
      for (let at = 0; at < data.length; at += SNAPSHOT_CHUNK_BYTES) {
        try {
          writer.write(data.subarray(at, at + SNAPSHOT_CHUNK_BYTES));
        } catch (e) {
          throw `snapshot save failed: ${e && e.payload !== undefined ? e.payload : e}`;
        }
      }
    },

    onSnapshotLoad(reader) {
      const chunks = [];
      let total = 0;
      for (;;) {
        let chunk;
        try {
          chunk = reader.read(SNAPSHOT_CHUNK_BYTES);
        } catch (e) {
          throw `snapshot load failed: ${e && e.payload !== undefined ? e.payload : e}`;
        }
        if (chunk.length === 0) {
          break;
        }
        chunks.push(chunk);
        total += chunk.length;
      }
      const data = new Uint8Array(total);
      let at = 0;
      for (const chunk of chunks) {
        data.set(chunk, at);
        at += chunk.length;
      }
      try {
        machine.load(data);
      } catch (e) {
        throw rejection(e);
      }
    },

    onLeaderStart(term) {
      machine.onLeaderStart(term);
    },
    onLeaderStop() {
      machine.onLeaderStop();
    },
    onConfigurationCommitted(voters, learners) {
      machine.onConfigurationCommitted(Array.from(voters), Array.from(learners));
    },
  };
}

// The counter state machine (examples/counter) in JavaScript, with waft's
// JavaScript SDK: the same JSON commands ({"incr": N}, "get"), the same
// replies (the value as a JSON number) and the same 8-byte snapshot, so it
// can be deployed over the Rust counter and the Rust counter over it. The
// value is a BigInt, an exact i64; a delta must be a safe integer (JSON
// numbers are JavaScript numbers).

import { Rejected, StateMachine, exportMachine } from '../../guest-sdk/js/waft-guest.js';

const I64_MIN = -(1n << 63n);
const I64_MAX = (1n << 63n) - 1n;

class Counter extends StateMachine {
  constructor() {
    super();
    this.value = 0n;
  }

  apply(command, _index) {
    if (command === 'get') {
      return this.value;
    }
    if (command !== null && typeof command === 'object' && Object.keys(command).length === 1 && 'incr' in command) {
      if (!Number.isSafeInteger(command.incr)) {
        throw new Rejected('incr takes a whole number');
      }
      const value = this.value + BigInt(command.incr);
      if (value < I64_MIN || value > I64_MAX) {
        throw new Rejected('counter overflow');
      }
      this.value = value;
      return value;
    }
    throw new Rejected(`unknown command ${JSON.stringify(command)}: expected {"incr": N} or "get"`);
  }

  query(query) {
    if (query === 'get') {
      return this.value;
    }
    throw new Rejected('unknown query: expected "get"');
  }

  save() {
    const bytes = new Uint8Array(8);
    new DataView(bytes.buffer).setBigInt64(0, this.value, true);
    return bytes;
  }

  load(bytes) {
    // A counter's state is its value and nothing else: refuse another
    // machine's state rather than misread it.
    if (bytes.length !== 8) {
      throw new Rejected("not a counter's state: expected exactly 8 bytes");
    }
    this.value = new DataView(bytes.buffer, bytes.byteOffset, 8).getBigInt64(0, true);
  }
}

export const machine = exportMachine(new Counter());

"""The counter state machine (examples/counter) in Python, with waft's
Python SDK: the same JSON commands ({"incr": N}, "get"), the same replies
(the value as a JSON number) and the same 8-byte snapshot, so it can be
deployed over the Rust counter and the Rust counter over it."""

import waft_guest
from waft_guest import Rejected

I64_MIN = -(1 << 63)
I64_MAX = (1 << 63) - 1


class Counter(waft_guest.StateMachine):
    def __init__(self):
        self.value = 0

    def apply(self, command, index):
        if command == "get":
            return self.value
        if isinstance(command, dict) and list(command) == ["incr"]:
            delta = command["incr"]
            if type(delta) is not int or not I64_MIN <= delta <= I64_MAX:
                raise Rejected("incr takes a whole number")
            value = self.value + delta
            if not I64_MIN <= value <= I64_MAX:
                raise Rejected("counter overflow")
            self.value = value
            return value
        raise Rejected(f'unknown command {command!r}: expected {{"incr": N}} or "get"')

    def query(self, query):
        if query == "get":
            return self.value
        raise Rejected('unknown query: expected "get"')

    def save(self):
        return self.value.to_bytes(8, "little", signed=True)

    def load(self, data):
        # A counter's state is its value and nothing else: refuse another
        # machine's state rather than misread it.
        if len(data) != 8:
            raise Rejected("not a counter's state: expected exactly 8 bytes")
        self.value = int.from_bytes(data, "little", signed=True)


Machine = waft_guest.export(Counter)

"""SOFAJRaft's counter scenario from Python, against a group running the
counter example (examples/counter): increments in an exactly-once session,
a lost reply's retry that does not apply twice, and linearizable reads.

    python counter.py --endpoints 127.0.0.1:7001,127.0.0.1:7002 --group 1

Commands and results are JSON text, the form every module built with a waft
SDK reads and answers in (docs/clients.md, "Results"): the counter takes
{"incr": N} and "get", and answers with the value as a JSON number.

Prints one JSON line with what it saw; exits 1 with a message on stderr if
any answer is not what the counter must give.
"""

import argparse
import json
import sys

from waft import client_pb2 as pb
from waft_client import Client


def number(result):
    return json.loads(result.decode())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", required=True, help="client addresses, comma-separated")
    parser.add_argument("--group", type=int, default=1)
    parser.add_argument("--count", type=int, default=10, help="increments to make")
    parser.add_argument("--token", default=None, help="a bearer token, if the nodes check them")
    args = parser.parse_args()

    client = Client(args.endpoints.split(","), args.group, token=args.token)
    failures = []

    def expect(what, got, want):
        if got != want:
            failures.append(f"{what}: got {got!r}, want {want!r}")

    start, _ = client.query(b'"get"')
    value = number(start)

    session = client.open_session()
    last = None
    for delta in range(1, args.count + 1):
        command = json.dumps({"incr": delta}).encode()
        # `duplicate` may be set here: a call whose outcome was unknown (a
        # leader killed under it) was sent again and had applied already.
        # Its result is still the first one's.
        result, index, _ = session.propose(command)
        value += delta
        expect(f"incr {delta}", number(result), value)
        last = (command, session.next_sequence - 1, number(result), index)

    # The reply of the last command is "lost": send it again under its
    # sequence number. The group answers with the first result, marked as a
    # duplicate (its index is the copy's entry, after the first), and the
    # counter does not move.
    command, sequence, first_result, first_index = last
    result, index, duplicate = session.propose(command, sequence=sequence)
    expect("retry", (number(result), duplicate, index > first_index), (first_result, True, True))

    # Through the log, ordered with the writes: the same value.
    result, _, _ = session.propose(b'"get"')
    expect("get through the log", number(result), value)

    read, applied = client.query(b'"get"', pb.CONSISTENCY_LINEARIZABLE)
    expect("linearizable read", number(read), value)
    session.close()
    client.close()

    if failures:
        for f in failures:
            print(f, file=sys.stderr)
        return 1
    print(json.dumps({"start": number(start), "value": value, "session": session.id, "applied_index": applied}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

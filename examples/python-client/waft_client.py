"""A minimal waft client in Python, written from proto/waft/client.proto alone.

It does what every waft client must do (docs/clients.md explains why):

- follow NOT_LEADER to the leader the answer names, or try the next node;
- wait out BUSY for the `retry_after_ms` it names;
- propose inside an exactly-once session, so that a command whose outcome is
  unknown (a deadline, a broken connection, TIMEOUT) can be sent again with
  the same sequence number: the group applies it at most once and answers
  every copy with the first result;
- read linearizably, at any voter.

The stubs come from the proto (`cargo xtask python-client` does this):

    python -m grpc_tools.protoc -I proto --python_out=GEN --grpc_python_out=GEN \\
        proto/waft/client.proto

and GEN must be on `sys.path` (it holds the package `waft`).
"""

import os
import time

import grpc

from waft import client_pb2 as pb
from waft import client_pb2_grpc as rpc

E = pb.ErrorCode

# How long one call may take before the client gives up on it (the outcome
# of a proposal is then unknown), and how long a whole operation may retry.
CALL_TIMEOUT_S = 5.0
OPERATION_DEADLINE_S = 60.0
# The pause before trying another node when no leader is known yet.
NO_LEADER_PAUSE_S = 0.05


class WaftError(Exception):
    """An in-band error that ends the operation (see docs/clients.md)."""

    def __init__(self, error):
        self.code = error.code
        self.message = error.message
        super().__init__(f"{E.Name(error.code)}: {error.message}")


class OutcomeUnknown(Exception):
    """A proposal outside a session got no answer: it may or may not have
    applied. Inside a session the client retries instead of raising this."""


def _error_of(response):
    """The in-band error of any of the client service's responses, or None."""
    if isinstance(response, pb.SessionResponse):
        return response.error if response.HasField("error") else None
    if response.WhichOneof("outcome") == "error":
        return response.error
    return None


class Client:
    """A client of one group, knowing some of its nodes' client addresses."""

    def __init__(self, endpoints, group, token=None):
        if not endpoints:
            raise ValueError("a client needs at least one endpoint")
        self.endpoints = list(endpoints)
        self.group = group
        self._next = 0
        self._leader = None
        self._channels = {}
        self._metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def close(self):
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def _stub(self, address):
        channel = self._channels.get(address)
        if channel is None:
            channel = grpc.insecure_channel(address)
            self._channels[address] = channel
        return rpc.ClientStub(channel)

    def _another(self, address):
        """A node to try after `address` failed or did not lead."""
        if self._leader == address:
            self._leader = None
        self._next = (self._next + 1) % len(self.endpoints)
        return self.endpoints[self._next]

    def call(self, method, request, retry_unknown):
        """Sends `request` until an answer ends it and returns that answer.

        `retry_unknown` says whether the request may be sent again when its
        outcome is unknown: true for reads and for anything inside a
        session (the group deduplicates it), false for a bare proposal,
        which may apply once per copy.
        """
        deadline = time.monotonic() + OPERATION_DEADLINE_S
        address = self._leader or self.endpoints[self._next]
        pause = 0.01
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{method}: no answer within {OPERATION_DEADLINE_S} s")
            try:
                response = getattr(self._stub(address), method)(
                    request, timeout=CALL_TIMEOUT_S, metadata=self._metadata
                )
            except grpc.RpcError as e:
                # The call may have reached the group: unknown outcome
                # (docs/clients.md, "Transport failures").
                if not retry_unknown:
                    raise OutcomeUnknown(f"{method} at {address}: {e.code().name}") from e
                address = self._another(address)
                time.sleep(pause)
                pause = min(pause * 2, 1.0)
                continue
            error = _error_of(response)
            if error is None:
                self._leader = address
                return response
            if error.code == E.ERROR_CODE_NOT_LEADER:
                # Surely not applied: send it again where the hint points.
                if error.leader_address:
                    address = error.leader_address
                else:
                    address = self._another(address)
                    time.sleep(NO_LEADER_PAUSE_S)
                continue
            if error.code == E.ERROR_CODE_BUSY:
                # Surely not applied: wait as told, then send it again.
                time.sleep(max(error.retry_after_ms, 1) / 1000.0)
                continue
            if error.code == E.ERROR_CODE_TIMEOUT and retry_unknown:
                continue
            raise WaftError(error)

    def open_session(self):
        return Session(self)

    def propose(self, command):
        """One command outside any session: applies once per copy that
        commits, so an unknown outcome raises OutcomeUnknown."""
        request = pb.ProposeRequest(group=self.group, command=command)
        response = self.call("Propose", request, retry_unknown=False)
        return response.result

    def query(self, request, consistency=pb.CONSISTENCY_LINEARIZABLE):
        """A read: safe to send again, so it is retried whatever happens."""
        query = pb.QueryRequest(group=self.group, request=request, consistency=consistency)
        response = self.call("Query", query, retry_unknown=True)
        return response.result, response.applied_index


class Session:
    """An exactly-once session: each command has a sequence number, and a
    copy of a command the group already applied gets the first result back
    instead of applying again."""

    def __init__(self, client):
        self.client = client
        # The same nonce on every retry of the open: a retry that finds the
        # session open gets it rather than a second one.
        request = pb.OpenSessionRequest(group=client.group, nonce=os.urandom(16))
        self.id = client.call("OpenSession", request, retry_unknown=True).session_id
        self.next_sequence = 1

    def propose(self, command, sequence=None):
        """Applies `command` once and returns (result, index, duplicate).

        `sequence` resends an earlier command under its number, as a client
        does when a reply was lost; by default the command gets the next
        number. This client sends one command at a time, so every command
        before `sequence` has its reply: the call acknowledges them, and the
        group may forget their results.
        """
        if sequence is None:
            sequence = self.next_sequence
            self.next_sequence += 1
        request = pb.ProposeRequest(
            group=self.client.group,
            command=command,
            session_id=self.id,
            sequence=sequence,
            lowest_unacked_sequence=sequence,
        )
        response = self.client.call("Propose", request, retry_unknown=True)
        return response.result, response.index, response.duplicate

    def close(self):
        request = pb.CloseSessionRequest(group=self.client.group, session_id=self.id)
        try:
            self.client.call("CloseSession", request, retry_unknown=True)
        except WaftError as e:
            # A retried close whose first copy applied finds the session gone.
            if e.code != E.ERROR_CODE_SESSION_EXPIRED:
                raise

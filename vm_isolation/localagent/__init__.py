"""A local, protocol-faithful stand-in for the executor-facing side of a Mesos agent.

No Mesos binary can be installed here, so executors are tested against this: an HTTP server
for ``POST /api/v1/executor`` (v1 executor API, JSON) plus the agent's handling of executor
processes, written from the Mesos source (apache/mesos c1b42f79, see
/work/shared/reference/mesos-executor.md for the facts and where they come from).

Faithful: request checks and their status codes and messages; UPDATE validation (16-byte
UUID, SOURCE_EXECUTOR, no TASK_STAGING, matching executor id); SUBSCRIBE stream framing
(200, ``application/json``, chunked, RecordIO, one record per chunk); SUBSCRIBED contents
and queued LAUNCH/LAUNCH_GROUP right after it; re-subscription (newest wins, replay of
unacknowledged updates, unknown STAGING tasks -> TASK_LOST); ACKNOWLEDGED after each
accepted update, duplicates acknowledged but recorded once; events with no open stream
dropped; HEARTBEAT events; the executor environment, sandbox layout and command semantics;
agent-generated TASK_FAILED on executor exit and registration timeout; SHUTDOWN then
SIGKILL of the process tree, group and session after the grace period.

Simplified (and said where it matters): JSON only (protobuf bodies get 415); one framework;
no master or scheduler (updates are recorded, not forwarded; the agent never waits for
scheduler acknowledgements); no user switching, isolation, fetcher URIs or secrets;
no authentication; Linux ``/proc`` for process trees.

Modules: :mod:`.agent` (public API), :mod:`.core` (protocol state machine),
:mod:`.lifecycle` (launch/kill/exit/timeouts), :mod:`.calls` and :mod:`.schema` (request
checks and validation), :mod:`.events`, :mod:`.stream` (one SUBSCRIBE response),
:mod:`.server` (HTTP), :mod:`.process` and :mod:`.killtree` (executor processes),
:mod:`.runs`, :mod:`.records`, :mod:`.traces` (bookkeeping), :mod:`.wire` (encodings).
"""

from __future__ import annotations

from .agent import ExecutorHandle, LocalAgent
from .process import LaunchError
from .records import TERMINAL_STATES, StatusRecord

__all__ = ["ExecutorHandle", "LaunchError", "LocalAgent", "StatusRecord", "TERMINAL_STATES"]

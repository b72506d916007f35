"""A local, protocol-faithful stand-in for the executor-facing side of a Mesos agent.

Written before a real Mesos was at hand (tests/mesos now runs the real one), it is the fast
stand-in executors are unit-tested against: an HTTP server
for ``POST /api/v1/executor`` (v1 executor API, JSON) plus the agent's handling of executor
processes, written from the Mesos source (apache/mesos c1b42f79: src/slave/http.cpp and
src/executor/executor.cpp for the executor API).

Faithful: request checks and their status codes and messages; UPDATE validation (16-byte
UUID, SOURCE_EXECUTOR, no TASK_STAGING, matching executor id); SUBSCRIBE stream framing
(200, ``application/json``, chunked, RecordIO, one record per chunk); SUBSCRIBED contents
and queued LAUNCH/LAUNCH_GROUP right after it; re-subscription (newest wins, replay of
unacknowledged updates, unknown STAGING tasks -> TASK_LOST); ACKNOWLEDGED after each
accepted update, duplicates acknowledged but recorded once; events with no open stream
dropped; HEARTBEAT events; the executor environment, sandbox layout and command semantics;
agent-generated TASK_FAILED on executor exit and registration timeout, the timer armed before
the sandbox files are copied in (the real agent arms it before the fetch); SHUTDOWN then
SIGKILL of the process tree, group and session after the grace period; an UPDATE for a task
no executor owns is accepted (202) and never ACKNOWLEDGED; a TaskInfo with both ``command``
and ``executor`` is refused (a real master rejects it), a task with ``command`` reaches the
executor without ``executor`` (as the command executor receives it), one without gets the
ExecutorInfo filled in (a custom executor's task, its command in ``data``).

Simplified (and said where it matters): JSON only (protobuf bodies get 415); one framework;
no master or scheduler (updates are recorded, not forwarded; the agent never waits for
scheduler acknowledgements); no user switching, isolation, fetcher URIs or secrets;
no authentication; Linux ``/proc`` for process trees.

Known differences from the real agent, seen with tests/mesos (Mesos 1.12 master + agent):

* ACKNOWLEDGED: the real agent sends it asynchronously, once its status update manager has
  handled (with checkpointing: written) the update; here it follows the 202 at once.
* No fetcher: ``files`` are copied as they are; the real fetcher also extracts archives
  (``extract``), caches and sets the executable bit.
* No command executor of its own: the real agent runs ``<--launcher_dir>/mesos-executor
  --launcher_dir=DIR`` (executor id = task id, 0.1 cpus / 32 MB) for a task without an
  ExecutorInfo; here the caller names the executor's command for every task.
* No framework teardown: the real master's teardown makes the agent SHUTDOWN the executor and
  then marks the framework's unfinished tasks TASK_KILLED itself (the framework is gone and
  hears nothing); here ``shutdown_executor`` only does the agent's half.
* Executor exit: the real agent learns it from its containerizer (and logs "Executor 'X' of
  framework F exited with status N"); here from the process we spawned.

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

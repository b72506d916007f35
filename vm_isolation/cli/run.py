"""vm-isolation-run: run one task through the real executor in a real guest, like mesos-execute.

    vm-isolation-run --command 'uname -a' [--cpus 1] [--mem 256] [--image NAME]
                     [--env K=V ...] [--timeout S] [--config PATH] [--keep]
                     [--master HOST:PORT [--attribute NAME:VALUE ...]]

With ``--master`` the task goes through that real Mesos master to an agent with the given
attributes (default ``vt_enabled:1``) instead: see :mod:`.run_cluster`.

Starts the local agent stand-in (vm_isolation.localagent) on 127.0.0.1, which launches
vm-isolation-executor exactly as a Mesos agent would (only MESOS_* variables, a sandbox) and
sends it the task. Prints one line per boot phase while the guest boots, the status sequence,
the task's output, and the phase timings from the terminal status. Exit status: the task's
exit status (0 for TASK_FINISHED), 1 for any other terminal state, 124 on --timeout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Optional

from ..config import conf_path
from ..localagent import TERMINAL_STATES, LocalAgent, StatusRecord
from ..scheduler.taskinfo import ExecutorCommand
from ..taskinfo import IMAGE_LABEL, task_dir_name
from .common import task_exit_status
from .run_cluster import run_on_master

EXIT_TIMEOUT = 124


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vm-isolation-run", description=__doc__.split("\n\n")[0])
    p.add_argument("--command", required=True, help="shell command to run in the guest")
    p.add_argument("--cpus", type=float, default=1.0)
    p.add_argument("--mem", type=float, default=256.0, help="MiB")
    p.add_argument("--image", help="base image name (label vm_isolation.image)")
    p.add_argument("--env", action="append", default=[], metavar="K=V", help="task environment (repeatable)")
    p.add_argument("--timeout", type=float, default=600.0, help="kill the task after this many seconds")
    p.add_argument("--config", type=Path, help="configuration file passed to the executor")
    p.add_argument("--keep", action="store_true", help="keep the agent's work directory (sandbox)")
    p.add_argument("--master", help="run through this Mesos master (HOST:PORT or zk://...) instead of locally")
    p.add_argument("--attribute", action="append", metavar="NAME:VALUE",
                   help="with --master: the agent must have this attribute (repeatable; default vt_enabled:1)")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    args = _parser().parse_args(argv)
    env_vars = []
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep:
            print(f"vm-isolation-run: --env {item!r}: expected NAME=VALUE", file=sys.stderr)
            return 2
        env_vars.append({"name": name, "value": value})
    if args.master:
        # The agents run the executor at this venv's path (one install layout on every host).
        executor = ExecutorCommand(str(Path(sys.executable).parent / "vm-isolation-executor"),
                                   str(args.config) if args.config else None)
        return run_on_master(args, {v["name"]: v["value"] for v in env_vars}, executor, say)
    work = Path(tempfile.mkdtemp(prefix="vm-isolation-run-", dir="/var/tmp"))
    try:
        return _run(args, env_vars, work)
    finally:
        if args.keep:
            print(f"vm-isolation-run: sandbox kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def _executor_command(config: Optional[Path]) -> dict[str, Any]:
    script = Path(sys.executable).parent / "vm-isolation-executor"
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "vm_isolation.cli.executor"]
    argv += ["--config", str(conf_path(config))]
    return {"value": argv[0], "shell": False, "arguments": argv}


def _task_info(args: argparse.Namespace, task_id: str, env_vars: list[dict[str, str]]) -> dict[str, Any]:
    task: dict[str, Any] = {
        "name": "vm-isolation-run",
        "task_id": {"value": task_id},
        "resources": [
            {"name": "cpus", "type": "SCALAR", "scalar": {"value": args.cpus}},
            {"name": "mem", "type": "SCALAR", "scalar": {"value": args.mem}},
        ],
        "command": {"value": args.command, "shell": True, "environment": {"variables": env_vars}},
    }
    if args.image:
        task["labels"] = {"labels": [{"key": IMAGE_LABEL, "value": args.image}]}
    return task


def _run(args: argparse.Namespace, env_vars: list[dict[str, str]], work: Path) -> int:
    suffix = uuid.uuid4().hex[:8]
    # As Mesos's command executor: the executor's id is its one task's (so it exits with it).
    executor_id = task_id = f"vm-isolation-run-{suffix}"
    with LocalAgent(work) as agent:
        handle = agent.launch_executor(executor_id, _executor_command(args.config))
        t0 = time.monotonic()
        agent.launch_task(executor_id, _task_info(args, task_id, env_vars))
        say(f"launched task {task_id} (executor {executor_id}, sandbox {handle.sandbox})")
        watcher = _Watcher(agent, task_id, handle.sandbox / "tasks" / task_dir_name(task_id) / "stderr", t0)
        final = watcher.follow(args.timeout)
        if final is None:
            say(f"no terminal status within {args.timeout:g} s: killing the task")
            agent.kill_task(executor_id, task_id)
            final = watcher.follow(60.0)
        rc = handle.wait(90.0)
        say(f"executor exited with status {rc}")
        _report(watcher, handle.sandbox, task_id)
    if final is None:
        return EXIT_TIMEOUT
    return task_exit_status(final.state, final.data)


class _Watcher:
    """Prints new statuses and the executor's boot-phase lines as they appear."""

    def __init__(self, agent: LocalAgent, task_id: str, stderr_path: Path, t0: float) -> None:
        self.agent, self.task_id, self.stderr_path, self.t0 = agent, task_id, stderr_path, t0
        self.seen = 0
        self.offset = 0
        self.times: dict[str, float] = {}

    def follow(self, timeout_s: float) -> Optional[StatusRecord]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            final = self._poll()
            if final is not None:
                return final
            with contextlib.suppress(TimeoutError):
                self.agent.wait_for_state(self.task_id, TERMINAL_STATES, 0.1)
        return self._poll()

    def _poll(self) -> Optional[StatusRecord]:
        self._phase_lines()
        final = None
        for record in self.agent.updates(self.task_id)[self.seen:]:
            self.seen += 1
            elapsed = record.received_at - self.t0
            self.times.setdefault(record.state, elapsed)
            detail = f" {record.reason}" if record.reason else ""
            say(f"[{elapsed:7.2f} s] {record.state}{detail}: {record.message or ''}")
            if record.state in TERMINAL_STATES:
                final = record
        return final

    def _phase_lines(self) -> None:
        try:
            with open(self.stderr_path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except OSError:
            return
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.decode("utf-8", "replace").splitlines():
            if line.startswith("vm-isolation: "):
                say(f"  guest: {line[len('vm-isolation: '):]}")


def _report(watcher: _Watcher, sandbox: Path, task_id: str) -> None:
    task_dir = sandbox / "tasks" / task_dir_name(task_id)
    out = (task_dir / "stdout").read_bytes() if (task_dir / "stdout").exists() else b""
    say(f"task stdout ({len(out)} bytes):")
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    updates = watcher.agent.updates(task_id)
    data = next((u.data for u in reversed(updates) if u.state in TERMINAL_STATES and u.data), None)
    if data:
        try:
            timings = json.loads(data)
            say("phase timings (s): " + ", ".join(f"{k} {v}" for k, v in timings.items()))
        except ValueError:
            pass
    for state in ("TASK_RUNNING", "TASK_FINISHED", "TASK_FAILED", "TASK_KILLED"):
        if state in watcher.times:
            say(f"LAUNCH -> {state}: {watcher.times[state]:.2f} s")


def say(text: str) -> None:
    print(f"vm-isolation-run: {text}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())

"""SSH into guests: the one module that imports paramiko.

:class:`SshRemote` is a
session to a guest's SSH server (dropbear in our images) with a pinned host key: run commands
with live output, copy files over SFTP. Every paramiko and socket exception is turned into the
project's errors here, with ``raise ... from``:

* :class:`~.errors.HostKeyMismatch`: the server is not the guest we booted; never retried.
* :class:`~.errors.SshAuthError`: the guest refused our key.
* :class:`~.errors.SshUnavailable`: no SSH server before the deadline, the session was lost,
  or a command outlived its timeout.
* :class:`~.errors.TransferError`: an SFTP copy failed.

Key material is never logged and never put into a message: only SHA256 fingerprints are.

NOTE: dropbear channel race. Opening a channel right after the previous one finished
sometimes gets a channel that dropbear closes at once (paramiko: "Unable to open channel",
"Channel is not open", "Channel closed."), mostly under CPU contention. Three measures, which
took the spike from 5 failures in 240 iterations to 0 in 280: wait (bounded) for the server's
CHANNEL_CLOSE of every finished channel before letting go of it, send EOF to the SFTP channel
so sftp-server exits before the channel is closed, and retry the channel open a few times
(see :meth:`SshRemote._open_channel` for why only the open is retried).
"""

from __future__ import annotations

import base64
import contextlib
import io
import logging
import os
import select
import shutil
import signal
import socket
import stat
import sys
import threading
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Callable, Optional, TypeVar

from .errors import HostKeyMismatch, SshAuthError, SshError, SshUnavailable, TransferError
from .sshkeys import ClientKey, fingerprint_of
from .waiting import Clock, Deadline, WaitTimeout, poll_until

# paramiko.config imports invoke (and with it yaml, asyncio and unittest.mock: ~45 ms and several
# MiB in every executor) only to run `Match exec` lines of an ssh_config, which this project never
# reads; paramiko handles its absence. A process that already imported invoke keeps it.
sys.modules.setdefault("invoke", None)  # type: ignore[arg-type]
import paramiko  # type: ignore[import-untyped]  # noqa: E402  (no type information)

log = logging.getLogger(__name__)
_T = TypeVar("_T")

Channel = Any  # a paramiko.Channel; paramiko has no type information
Output = Callable[[bytes], None]

CONNECT_RETRY_S = 0.2
"""Pause between connection attempts while the guest's SSH server starts."""
ATTEMPT_TIMEOUT_S = (1.0, 10.0)
"""Bounds of one attempt's socket/banner/auth timeouts: the deadline's remainder, clamped, so
an attempt started just before the deadline still gets a fair chance (TCG crypto is slow)."""
SYN_ANSWER_S = 0.1
"""How long one TCP connection attempt waits for the guest's SYN-ACK before a fresh SYN is sent
(for the first SYN_FAST_TRIES tries; then the attempt's own timeout). Right after the guest's
DHCP lease, the address guard may not yet let the leased address through (it follows the lease
files every 20 ms; libvirt's clean-traffic filter, used before it, took 0.5-2 s); the kernel
would resend the SYN only after its 1 s initial RTO (then 3 s), so each boot
waited for that retransmit. A guest that can answer does so within 10-30 ms here."""
SYN_FAST_TRIES = 30
AUTH_ATTEMPTS = 3
"""Our key is on the guest before its SSH server starts, so a refusal is retried only twice."""
CHANNEL_ATTEMPTS = 3
CHANNEL_RETRY_S = 0.2
CHANNEL_OPEN_TIMEOUT_S = 30.0
SERVER_CLOSE_WAIT_S = 2.0
SERVER_CLOSE_POLL_S = 0.005
LIVENESS_CHECK_S = 1.0
"""How often a quiet command's wait wakes up to check its timeout (a lost session wakes it at once)."""
STDIN_JOIN_S = 5.0
READ_CHUNK = 65536
COPY_CHUNK = 32768
UNKNOWN_SIGNAL_STATUS = 255
"""run()'s result when the command died of a signal whose name this host does not know."""

_TRANSIENT = (OSError, EOFError, paramiko.SSHException)
"""What a flaky network, a starting server or a lost session raise (socket.timeout is an OSError)."""


def _parse_host_key(line: str, phase: str) -> Any:
    try:
        key_type, blob = line.split()[:2]
        return paramiko.PKey.from_type_string(key_type, base64.b64decode(blob, validate=True))
    except (ValueError, paramiko.SSHException, paramiko.UnknownKeyType) as exc:
        raise SshError(
            "the guest's host key is not an OpenSSH public key line ('ssh-ed25519 AAAA...'); "
            "check how the image announces it", phase=phase,
        ) from exc


def _load_client_key(key: ClientKey, phase: str) -> Any:
    try:
        return paramiko.PKey.from_path(key.private_path)
    except (OSError, ValueError, paramiko.SSHException, paramiko.UnknownKeyType) as exc:
        raise SshError(f"cannot load the SSH client key {key.private_path}: {type(exc).__name__}",
                       phase=phase) from exc


# --- exit signals ----------------------------------------------------------------------------

class _ExitSignals:
    """The ``exit-signal`` requests of a session's channels, by channel id.

    NOTE: paramiko ignores a channel's ``exit-signal`` request ("Unhandled channel request")
    and leaves ``exit_status`` at -1, so a command killed by a signal would look like a lost
    channel. Each of our transports gets a copy of paramiko's per-message dispatch table (a
    private attribute, hence the guard) whose CHANNEL_REQUEST entry notes the signal name and
    then hands the request to paramiko unchanged. Without the table, signals read as lost.
    """

    def __init__(self) -> None:
        self._names: dict[int, str] = {}

    def transport(self, sock: socket.socket, **kwargs: Any) -> Any:
        """A paramiko.Transport that records exit signals (an SSHClient transport_factory).

        It also turns Nagle's algorithm off: SSH sends many small messages one after the
        other (EOF, CLOSE, the next CHANNEL_OPEN), and with Nagle plus the peer's delayed ACK
        each new channel waited about 40 ms.
        """
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport = paramiko.Transport(sock, **kwargs)
        table = getattr(transport, "_channel_handler_table", None)
        request = paramiko.common.MSG_CHANNEL_REQUEST
        if isinstance(table, dict) and request in table:
            transport._channel_handler_table = {**table, request: self._recording(table[request])}
        return transport

    def _recording(self, handle: Callable[[Channel, Any], None]) -> Callable[[Channel, Any], None]:
        def record_then_handle(channel: Channel, message: Any) -> None:
            start = message.packet.tell()
            if message.get_text() == "exit-signal":
                message.get_boolean()  # want_reply
                self._names[channel.chanid] = message.get_text()
            message.packet.seek(start)
            handle(channel, message)

        return record_then_handle

    def pop(self, chanid: int) -> Optional[str]:
        return self._names.pop(chanid, None)


def _status_for_signal(name: str) -> int:
    try:
        return 128 + signal.Signals[f"SIG{name}"].value
    except KeyError:
        log.warning("command ended by unknown signal %r; reporting exit status %d", name, UNKNOWN_SIGNAL_STATUS)
        return UNKNOWN_SIGNAL_STATUS


# --- connecting ----------------------------------------------------------------------------

class _Attempts:
    """One connect() call: its attempts, counted, and the last thing that went wrong."""

    def __init__(self, host: str, port: int, user: str, host_key: Any, pkey: Any, deadline: Deadline,
                 phase: str) -> None:
        self.host, self.port, self.user = host, port, user
        self.host_key, self.pkey, self.deadline, self.phase = host_key, pkey, deadline, phase
        self.signals = _ExitSignals()
        self.started = deadline.clock.monotonic()
        self.count = 0
        self.auth_refusals = 0
        self.last_error: Optional[BaseException] = None

    def once(self) -> Optional[Any]:
        """A connected SSHClient, or None to try again; raises on what retrying cannot fix."""
        self.count += 1
        client = paramiko.SSHClient()
        # Strict: the pinned key only, RejectPolicy for anything else; no ~/.ssh, no agent.
        known_as = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        client.get_host_keys().add(known_as, self.host_key.get_name(), self.host_key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        timeout = min(max(self.deadline.remaining(), ATTEMPT_TIMEOUT_S[0]), ATTEMPT_TIMEOUT_S[1])
        try:
            sock = _open_tcp(self.host, self.port, timeout, self.deadline)
            client.connect(
                self.host, port=self.port, username=self.user, pkey=self.pkey, sock=sock,
                allow_agent=False, look_for_keys=False, timeout=timeout, banner_timeout=timeout,
                auth_timeout=timeout, channel_timeout=CHANNEL_OPEN_TIMEOUT_S,
                transport_factory=self.signals.transport,
            )
            return client
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise HostKeyMismatch(self._mismatch(exc), phase=self.phase) from exc
        except paramiko.AuthenticationException as exc:
            client.close()
            self.last_error = exc
            self.auth_refusals += 1
            if self.auth_refusals >= AUTH_ATTEMPTS:
                raise SshAuthError(
                    f"{self.where} refused our client key ({self.pkey.fingerprint}) {self.auth_refusals} "
                    f"times ({exc}): the guest did not install it as root's authorized key; check the "
                    f"image's init (vmiso.authkey on the kernel command line)", phase=self.phase,
                ) from exc
        except _TRANSIENT as exc:
            client.close()
            self.last_error = exc
        log.debug("SSH attempt %d to %s failed: %s", self.count, self.where, _describe(self.last_error))
        return None

    @property
    def where(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


    def _mismatch(self, exc: Any) -> str:
        presented, expected = exc.key, exc.expected_key
        return (f"{self.host}:{self.port} presented host key {presented.get_name()} "
                f"{fingerprint_of(presented.asbytes())}, but the guest announced {expected.get_name()} "
                f"{fingerprint_of(expected.asbytes())}: refusing to connect; another machine answers on "
                f"that address, or the image announced the wrong key")

    def timed_out(self) -> SshUnavailable:
        elapsed = self.deadline.clock.monotonic() - self.started
        return SshUnavailable(
            f"no SSH server answered as {self.where} after {self.count} attempts in {elapsed:.1f} s "
            f"(last error: {_describe(self.last_error)}); check that the guest booted and started its "
            f"SSH server (see its console), that {self.host} is its address and that port {self.port} "
            f"is reachable from this host", phase=self.phase,
        )


def _open_tcp(host: str, port: int, timeout_s: float, deadline: Deadline) -> socket.socket:
    """A TCP connection to ``host:port``, sending a fresh SYN every SYN_ANSWER_S while none is
    answered (see SYN_ANSWER_S), then waiting up to ``timeout_s``. Raises OSError as
    socket.create_connection does (a refusal at once; TimeoutError once tries or deadline run out)."""
    for _ in range(SYN_FAST_TRIES):
        if deadline.remaining() <= SYN_ANSWER_S:
            break
        try:
            return socket.create_connection((host, port), timeout=SYN_ANSWER_S)
        except TimeoutError:
            continue
    return socket.create_connection((host, port), timeout=timeout_s)


def _describe(exc: Optional[BaseException]) -> str:
    if exc is None:
        return "none"
    if isinstance(exc, paramiko.ssh_exception.NoValidConnectionsError):  # its str() hides the reason
        return "; ".join(sorted({error.strerror or str(error) for error in exc.errors.values()}))
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _brief(command: str) -> str:
    """The command's first line, shortened, for messages."""
    lines = command.strip().splitlines() or [""]
    return lines[0] if len(lines) == 1 and len(lines[0]) <= 80 else lines[0][:77] + "..."


# --- the session -----------------------------------------------------------------------------

class SshRemote:
    """An SSH session to one guest. Thread-safe: each run() has its own channel, so one thread
    can stream a long command while another runs ``kill``; SFTP copies take turns on one
    shared SFTP channel. Build it with :meth:`connect`."""

    def __init__(self, client: Any, signals: _ExitSignals, *, where: str, clock: Clock) -> None:
        self._client = client
        self._signals = signals
        self._where = where
        self._clock = clock
        self._sftp: Any = None
        self._sftp_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._closed = False

    @classmethod
    def connect(cls, host: str, *, host_key: str, client_key: ClientKey, deadline: Deadline, user: str = "root",
                port: int = 22, phase: str = "ssh") -> SshRemote:
        """Connect to ``host``, retrying every ~0.2 s while its SSH server starts.

        ``host_key`` is the guest's ``ssh-ed25519 AAAA...`` line, learnt through a trusted
        channel; only that key is accepted. Raises :class:`HostKeyMismatch` at once,
        :class:`SshAuthError` after a few refusals, :class:`SshUnavailable` at the deadline
        (an attempt under way then may overrun it by its own timeouts, 1 s or more).
        """
        attempts = _Attempts(host, port, user, _parse_host_key(host_key, phase),
                             _load_client_key(client_key, phase), deadline, phase)
        try:
            client = poll_until(attempts.once, deadline, interval_s=CONNECT_RETRY_S, what=f"SSH on {host}")
        except WaitTimeout:
            raise attempts.timed_out() from attempts.last_error
        log.debug("SSH to %s up after %d attempts", attempts.where, attempts.count)
        return cls(client, attempts.signals, where=attempts.where, clock=deadline.clock)

    # --- commands -------------------------------------------------------------------------
    def run(self, command: str, *, on_stdout: Optional[Output] = None, on_stderr: Optional[Output] = None,
            stdin: Optional[bytes] = None, timeout_s: Optional[float] = None) -> int:
        """Run ``command`` through the guest's shell; return its exit status.

        Output chunks go to the callbacks as they arrive, on this thread (a slow callback
        only slows the sender down: SSH flow control keeps every byte). A command killed by a
        signal returns 128 + the signal's number, as a shell reports it (255 if the signal's
        name is unknown here). Raises :class:`SshUnavailable` (phase ``run``) if the session
        is lost or the command outlives ``timeout_s``; the remote process is then left as is.
        """
        deadline = None if timeout_s is None else Deadline.after(timeout_s, self._clock)
        channel = self._open_channel(f"`{_brief(command)}`", lambda ch: ch.exec_command(command), deadline)
        execution = _Execution(channel, command, self._where, self._clock, self._signals, deadline, timeout_s)
        try:
            return execution.complete(on_stdout or _discard, on_stderr or _discard, stdin)
        finally:
            channel.close()
            execution.join_stdin()
            self._signals.pop(channel.chanid)

    def run_capture(self, command: str, *, timeout_s: Optional[float] = None) -> tuple[int, bytes, bytes]:
        """run() collecting stdout and stderr: ``(exit status, stdout, stderr)``."""
        out, err = bytearray(), bytearray()
        status = self.run(command, on_stdout=out.extend, on_stderr=err.extend, timeout_s=timeout_s)
        return status, bytes(out), bytes(err)

    # --- files ----------------------------------------------------------------------------
    def put(self, data: bytes, remote_path: str, *, mode: int = 0o644) -> None:
        """Write ``data`` to ``remote_path`` with ``mode``. Raises :class:`TransferError`."""
        self._transfer(f"upload to {remote_path}", "upload",
                       lambda sftp: _write_remote(sftp, io.BytesIO(data), remote_path, mode))

    def put_file(self, local: Path, remote_path: str, *, mode: Optional[int] = None) -> None:
        """Copy ``local`` to ``remote_path``, with ``mode`` or else the local file's mode."""
        def copy(sftp: Any) -> None:
            with open(local, "rb") as source:
                chosen = stat.S_IMODE(os.fstat(source.fileno()).st_mode) if mode is None else mode
                _write_remote(sftp, source, remote_path, chosen)

        self._transfer(f"upload of {local} to {remote_path}", "upload", copy)

    def get(self, remote_path: str) -> bytes:
        """The content of ``remote_path``. Raises :class:`TransferError`."""
        def read(sftp: Any) -> bytes:
            buffer = io.BytesIO()
            sftp.getfo(remote_path, buffer)
            return buffer.getvalue()

        return self._transfer(f"download of {remote_path}", "download", read)

    # --- tunnels ----------------------------------------------------------------------------
    def connect_in_guest(self, port: int, timeout_s: float) -> Any:
        """A stream to the guest's own 127.0.0.1:``port``, opened by its SSH server (``ssh -L``):
        what a check inside the task's network sees. The channel has ``sendall``/``recv``/
        ``settimeout``/``close`` like a socket. Raises ConnectionRefusedError when nothing
        listens there, :class:`SshUnavailable` when the session is gone."""
        transport = self._live_transport(f"a connection to port {port} in the guest")
        try:
            channel = transport.open_channel("direct-tcpip", ("127.0.0.1", port), ("127.0.0.1", 0),
                                             timeout=timeout_s)
        except paramiko.ChannelException as exc:
            raise ConnectionRefusedError(f"nothing accepts connections on the guest's 127.0.0.1:{port} "
                                         f"({exc})") from None
        except _TRANSIENT as exc:
            raise SshUnavailable(f"cannot open a connection to port {port} in the guest: {_describe(exc)}",
                                 phase="run") from exc
        channel.settimeout(timeout_s)
        return channel

    def forward_to_host(self, guest_port: int, target_host: str, target_port: int) -> None:
        """Make the guest's 127.0.0.1:``guest_port`` reach ``target_host:target_port`` as seen
        from this host, through this SSH session (remote forwarding, ``ssh -R``). Each
        connection in the guest becomes a channel here, piped to a new TCP connection."""
        transport = self._client.get_transport()

        def accept(channel: Channel, _origin: Any, _server: Any) -> None:
            threading.Thread(target=_pipe, args=(channel, target_host, target_port), daemon=True,
                             name=f"tunnel-{target_port}").start()

        try:
            transport.request_port_forward("127.0.0.1", guest_port, handler=accept)
        except _TRANSIENT as exc:
            raise SshUnavailable(f"the guest refused to forward its port {guest_port} to "
                                 f"{target_host}:{target_port}: {_describe(exc)}", phase="tunnel") from exc

    def is_alive(self) -> bool:
        transport = self._client.get_transport()
        return not self._closed and transport is not None and bool(transport.is_active())

    def close(self) -> None:
        """Close the session (idempotent). Commands still running in other threads then
        raise :class:`SshUnavailable`."""
        with self._state_lock:
            if self._closed:
                return
            self._closed = True
        if self._sftp_lock.acquire(blocking=False):  # a copy under way is cut off below instead
            try:
                self._end_sftp()
            finally:
                self._sftp_lock.release()
        self._client.close()

    def __enter__(self) -> SshRemote:
        return self

    def __exit__(self, exc_type: Optional[type[BaseException]], exc: Optional[BaseException],
                 tb: Optional[TracebackType]) -> None:
        self.close()

    # --- channels -------------------------------------------------------------------------
    def _open_channel(self, what: str, start: Callable[[Channel], object],
                      deadline: Optional[Deadline] = None) -> Channel:
        """A new session channel on which ``start`` (an exec or subsystem request) succeeded.

        Retried a few times for the dropbear race (module docstring). Only the channel open
        and the request are retried, never anything after the server accepted the request:
        a request the server refused, or a channel it closed before answering, never started
        the command, while an accepted one may be running it, and trying again could run it
        twice. Raises :class:`SshUnavailable` (phase ``run``).
        """
        last: Optional[BaseException] = None
        for attempt in range(1, CHANNEL_ATTEMPTS + 1):
            transport = self._live_transport(what)
            timeout = CHANNEL_OPEN_TIMEOUT_S if deadline is None else max(
                0.1, min(CHANNEL_OPEN_TIMEOUT_S, deadline.remaining()))
            channel = None
            try:
                channel = transport.open_session(timeout=timeout)
                start(channel)
                return channel
            except _TRANSIENT as exc:
                last = exc
                if channel is not None:
                    channel.close()
            log.debug("%s: channel for %s failed (attempt %d of %d): %s",
                      self._where, what, attempt, CHANNEL_ATTEMPTS, _describe(last))
            if attempt < CHANNEL_ATTEMPTS:
                self._clock.sleep(CHANNEL_RETRY_S)
        self._live_transport(what)
        raise SshUnavailable(
            f"{self._where}: could not open an SSH channel for {what} in {CHANNEL_ATTEMPTS} attempts "
            f"(last error: {_describe(last)}); the guest's SSH server may be overloaded or failing",
            phase="run",
        ) from last

    def _live_transport(self, what: str) -> Any:
        transport = self._client.get_transport()
        if self._closed or transport is None or not transport.is_active():
            raise SshUnavailable(f"the SSH session to {self._where} is gone ({what}): "
                                 f"the guest stopped, or the session was closed", phase="run")
        return transport

    # --- SFTP -----------------------------------------------------------------------------
    def _transfer(self, what: str, phase: str, action: Callable[[Any], _T]) -> _T:
        with self._sftp_lock:
            try:
                if self._sftp is None:
                    self._sftp = self._open_sftp()
                return action(self._sftp)
            except SshUnavailable as exc:  # no SFTP channel could be opened
                raise TransferError(f"{what} failed: {exc}", phase=phase) from exc
            except _TRANSIENT as exc:
                if self._sftp is not None and self._sftp.get_channel().closed:
                    self._sftp = None  # broken: the next copy opens a new one
                gone = "" if self.is_alive() else " (the SSH session is gone)"
                raise TransferError(f"{self._where}: {what} failed{gone}: {_describe(exc)}", phase=phase) from exc

    def _open_sftp(self) -> Any:
        holder: list[Any] = []

        def start(channel: Channel) -> None:
            channel.invoke_subsystem("sftp")
            holder.append(paramiko.SFTPClient(channel))  # the version handshake; no side effects

        self._open_channel("SFTP", start)
        return holder[-1]

    def _end_sftp(self) -> None:
        sftp, self._sftp = self._sftp, None
        if sftp is None:
            return
        channel = sftp.get_channel()
        with contextlib.suppress(*_TRANSIENT):
            channel.shutdown_write()  # EOF: sftp-server exits, then dropbear closes the channel (measure 2)
        _await_server_close(channel, self._clock, self._where)
        sftp.close()


def _pipe(channel: Channel, host: str, port: int) -> None:
    """Copy bytes both ways between a forwarded channel and a TCP connection until one closes."""
    try:
        sock = socket.create_connection((host, port), timeout=10)
    except OSError as exc:
        log.warning("tunnel: cannot connect to %s:%d: %s", host, port, exc)
        channel.close()
        return
    sock.settimeout(None)
    try:
        while True:
            ready, _, _ = select.select([sock, channel], [], [], 60)
            if sock in ready:
                data = sock.recv(READ_CHUNK)
                if not data:
                    break
                channel.sendall(data)
            if channel in ready:
                data = channel.recv(READ_CHUNK)
                if not data:
                    break
                sock.sendall(data)
    except OSError as exc:
        log.debug("tunnel to %s:%d ended: %s", host, port, exc)
    finally:
        sock.close()
        channel.close()


def _discard(_chunk: bytes) -> None:
    pass


def _await_server_close(channel: Channel, clock: Clock, where: str) -> None:
    """Wait (bounded) until the server closed ``channel``: dropbear race, measure 1.

    paramiko has no event for it; ``closed`` turns true when the server's CLOSE arrives (we
    have not closed our side yet).
    """
    try:
        poll_until(lambda: True if channel.closed else None, Deadline.after(SERVER_CLOSE_WAIT_S, clock),
                   interval_s=SERVER_CLOSE_POLL_S, what="the server to close the channel")
    except WaitTimeout:
        log.debug("%s: server did not close a finished channel within %g s", where, SERVER_CLOSE_WAIT_S)


def _write_remote(sftp: Any, source: IO[bytes], remote_path: str, mode: int) -> None:
    with sftp.open(remote_path, "wb") as remote:
        remote.chmod(mode)  # before any data, so the content is never readable under a laxer mode
        remote.set_pipelined(True)
        shutil.copyfileobj(source, remote, COPY_CHUNK)


class _Execution:
    """One command on its channel: feed stdin, stream output, then read how it ended."""

    def __init__(self, channel: Channel, command: str, where: str, clock: Clock, signals: _ExitSignals,
                 deadline: Optional[Deadline], timeout_s: Optional[float]) -> None:
        self.channel = channel
        self.where = where
        self.clock = clock
        self.signals = signals
        self.command = command
        self.deadline = deadline
        self.timeout_s = timeout_s
        self.stdin_thread: Optional[threading.Thread] = None

    def complete(self, on_stdout: Output, on_stderr: Output, stdin: Optional[bytes]) -> int:
        self._start_stdin(stdin)
        self._stream(on_stdout, on_stderr)
        while not self.channel.status_event.wait(self._wait_s()):  # EOF may come before the status
            self._check_deadline()
        status = self._status()
        _await_server_close(self.channel, self.clock, self.where)
        return status

    def join_stdin(self) -> None:
        if self.stdin_thread is not None:
            self.stdin_thread.join(STDIN_JOIN_S)

    def _start_stdin(self, stdin: Optional[bytes]) -> None:
        if not stdin:
            self.channel.shutdown_write()
            return
        # Its own thread: a command that writes a lot before reading its input would otherwise
        # block us in sendall while we cannot drain its output.
        self.stdin_thread = threading.Thread(target=self._feed, args=(stdin,), name="ssh-stdin", daemon=True)
        self.stdin_thread.start()

    def _feed(self, data: bytes) -> None:
        try:
            self.channel.sendall(data)
            self.channel.shutdown_write()
        except _TRANSIENT as exc:  # the command ended without reading it all, like a broken pipe
            log.debug("stdin of `%s` not fully sent: %s", _brief(self.command), _describe(exc))

    def _stream(self, on_stdout: Output, on_stderr: Output) -> None:
        """Hand output to the callbacks until the server's EOF (or a close) and all is read."""
        channel = self.channel
        while True:
            finished = channel.eof_received or channel.closed  # before draining: nothing comes after EOF
            while channel.recv_ready() or channel.recv_stderr_ready():
                if channel.recv_ready():
                    on_stdout(channel.recv(READ_CHUNK))
                if channel.recv_stderr_ready():
                    on_stderr(channel.recv_stderr(READ_CHUNK))
            if finished:
                return
            self._check_deadline()
            select.select([channel], [], [], self._wait_s())  # woken by data on either stream or EOF

    def _wait_s(self) -> float:
        return LIVENESS_CHECK_S if self.deadline is None else min(LIVENESS_CHECK_S, self.deadline.remaining())

    def _check_deadline(self) -> None:
        if self.deadline is not None and self.deadline.expired():
            raise SshUnavailable(f"{self.where}: `{_brief(self.command)}` did not finish within "
                                 f"{self.timeout_s:g} s; it may still be running in the guest", phase="run")

    def _status(self) -> int:
        if self.channel.exit_status != -1:
            return int(self.channel.exit_status)
        name = self.signals.pop(self.channel.chanid)
        if name is not None:
            return _status_for_signal(name)
        # NOTE: paramiko closes the channels of a dying session before it marks the session
        # inactive, so "session lost" and "server closed the channel" cannot be told apart here.
        raise SshUnavailable(
            f"`{_brief(self.command)}` on {self.where} ended without an exit status: the SSH session was "
            f"lost (has the guest stopped?) or the server closed the channel; it is not run again, since it "
            f"may have started", phase="run")

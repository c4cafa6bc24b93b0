"""SIGTERM ends a training run, even one stuck in native code.

Lightning's SIGTERM handler is Python: it runs only when the main thread is back in the interpreter,
and it merely sets a flag read at batch boundaries. A run waiting in a collective (a DDP rank whose
peers stopped calling the all-reduce) or in any other native wait never gets there, so a cluster's
time limit (SIGTERM, then SIGKILL much later or never) could not stop it. Here Python's C-level
signal handler writes the signal number to a wakeup socket the moment it arrives; a watcher thread
reads it, gives Lightning's handler ``grace_s`` seconds to stop the run cleanly, and otherwise kills
this process's child processes (the other DDP ranks launched from it, loader workers) and exits
with 143 (128 + SIGTERM), as the default action would have.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

_installed = False
_keep: list = []


def _child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` from /proc (Linux); none elsewhere."""
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children += [int(c) for c in task.read_text().split()]
        except OSError:
            pass
    return children


def _descendants(pid: int) -> list[int]:
    out, todo = [], _child_pids(pid)
    while todo:
        child = todo.pop()
        out.append(child)
        todo += _child_pids(child)
    return out


def _forget_wakeup_fd() -> None:
    """In a forked child: a SIGTERM sent to it (a loader worker stopped at shutdown) is not ours."""
    try:
        signal.set_wakeup_fd(-1)
    except (ValueError, OSError):
        pass


def exit_on_sigterm(grace_s: float = 30.0) -> bool:
    """Install the watcher (once per process, main thread only; returns whether it is installed)."""
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread() or not hasattr(socket, "socketpair"):
        return _installed
    receiver, sender = socket.socketpair()
    sender.setblocking(False)
    try:
        signal.set_wakeup_fd(sender.fileno(), warn_on_full_buffer=False)
    except (ValueError, OSError):
        return False
    # The C handler writes to the wakeup fd only for signals with a Python handler: SIGTERM gets
    # Lightning's when the trainer starts; before that SIGTERM's default action ends the process.
    _keep.extend((receiver, sender))  # a collected socket would close the fd under the C handler

    def watch() -> None:
        while True:
            data = receiver.recv(64)
            if not data or signal.SIGTERM in data:
                break
        time.sleep(grace_s)
        print(f"fsseg: SIGTERM {grace_s:g} s ago and the run has not stopped (stuck in native code, e.g. "
              "a collective whose peers are gone): killing its child processes and exiting", file=sys.stderr,
              flush=True)
        for child in _descendants(os.getpid()):
            try:
                os.kill(child, signal.SIGKILL)
            except OSError:
                pass
        os._exit(128 + signal.SIGTERM)

    if hasattr(os, "register_at_fork"):  # a forked child (a loader worker) must not write to our socket
        os.register_at_fork(after_in_child=_forget_wakeup_fd)
    threading.Thread(target=watch, name="fsseg-sigterm-watch", daemon=True).start()
    _installed = True
    return True

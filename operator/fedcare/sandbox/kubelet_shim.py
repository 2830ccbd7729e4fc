"""The process kubelet's per-container wrapper (its "shim"): orphan safety and exit codes.

Run as ``python -I -S kubelet_shim.py KUBELET_PID GRACE -- COMMAND ARGS…`` (standard library
only, so it starts in milliseconds). The kubelet starts it in a new session, so the shim,
the container's process and everything they start share one process group (the
"container"): the kubelet stops a container with ``killpg(SIGTERM)``, then ``killpg(SIGKILL)``.

The shim:

* asks the kernel for ``SIGHUP`` when the kubelet dies (``prctl(PR_SET_PDEATHSIG)``; the
  kubelet may be SIGKILLed and have no chance to clean up): it then SIGTERMs its process
  group, waits up to GRACE seconds for the container's main process, and SIGKILLs the rest;
* ignores the group's own SIGTERM (the kubelet's stop: the container's process handles it;
  the shim keeps waiting to report the exit code);
* when the main process exits, SIGKILLs whatever it left in the group (a container ends
  with its main process, as with a container runtime), and exits with the main process's
  code, or 128+N when a signal N killed it (what container runtimes report: 137 = SIGKILL).

Written by hand (no library does this): ~60 lines of Linux process control.
"""

import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1


def _others_in_group() -> list[int]:
    me, pgid, found = os.getpid(), os.getpgrp(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()  # after "pid (comm) ": state ppid pgrp …
        if len(fields) > 2 and int(fields[2]) == pgid:
            found.append(int(entry))
    return found


def _signal_others(sig: int) -> None:
    for pid in _others_in_group():
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def main() -> int:
    kubelet_pid, grace = int(sys.argv[1]), float(sys.argv[2])
    command = sys.argv[sys.argv.index("--") + 1:]
    orphaned = []

    def on_parent_death(signum, frame):
        orphaned.append(True)

    signal.signal(signal.SIGHUP, on_parent_death)
    signal.signal(signal.SIGTERM, lambda signum, frame: None)  # the group's stop: for the child
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGHUP, 0, 0, 0)
    if os.getppid() != kubelet_pid:  # the kubelet died before prctl took effect
        return 137
    try:
        child = subprocess.Popen(command, restore_signals=True)
    except OSError as exc:
        print(f"sandbox kubelet: cannot start {command[0]!r}: {exc.strerror}", file=sys.stderr, flush=True)
        return 128 if isinstance(exc, PermissionError) else 127
    while True:
        try:
            status = child.wait(timeout=0.2)
            break
        except subprocess.TimeoutExpired:
            if orphaned and orphaned[0] is True:
                orphaned[0] = time.monotonic() + grace
                _signal_others(signal.SIGTERM)
            elif orphaned and time.monotonic() > orphaned[0]:
                _signal_others(signal.SIGKILL)
    _signal_others(signal.SIGKILL)
    return 128 - status if status < 0 else status


if __name__ == "__main__":
    sys.exit(main())

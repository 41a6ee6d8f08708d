"""Running polycnn as a hostile or careless user would: each case in a child process of its own,
with its exit code, its output and its peak memory (``os.wait4``'s ``ru_maxrss`` of that one
child) measured, and the files under the output name compared before and after.

Used by the ``test_hostile_*.py`` files; a helper module, not a conftest, so that it is imported
by name::

    from support.hostile import PEAK_LIMIT, Outcome, run_cli, run_python, snapshot
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading

#: every hostile case must stay under this peak resident memory
PEAK_LIMIT = 1 << 30


@dataclasses.dataclass
class Outcome:
    argv: list
    rc: int
    stdout: str
    stderr: str
    peak_bytes: int
    timed_out: bool

    def __str__(self) -> str:
        return (f"{' '.join(map(str, self.argv))}\n  exit {self.rc}"
                f"{' (timed out)' if self.timed_out else ''}, peak {self.peak_bytes / 2**20:.0f} MiB"
                f"\n  stdout: {self.stdout[-2000:]!r}\n  stderr: {self.stderr[-2000:]!r}")

    def assert_user_error(self, *needles: str, rc: int = 2) -> None:
        """Exit ``rc`` with one ``error: ...`` line naming every needle (case-insensitive), no
        traceback, under the memory limit."""
        assert not self.timed_out, f"timed out:\n{self}"
        assert self.rc == rc, f"expected exit {rc}:\n{self}"
        assert "Traceback" not in self.stderr, f"a traceback instead of one line:\n{self}"
        lines = [line for line in self.stderr.splitlines() if line.startswith("error: ")]
        assert len(lines) == 1, f"expected one 'error: ' line on stderr:\n{self}"
        for needle in needles:
            assert needle.lower() in lines[0].lower(), f"the message does not name {needle!r}:\n{self}"
        self.assert_bounded()

    def assert_bounded(self) -> None:
        assert self.peak_bytes < PEAK_LIMIT, (
            f"peak memory {self.peak_bytes / 2**20:.0f} MiB >= {PEAK_LIMIT / 2**20:.0f} MiB:\n{self}")


def child_env(extra: dict | None = None) -> dict:
    env = dict(os.environ)
    # NOTE: one BLAS thread, as in the suite: spinning OpenBLAS threads on 2 shared cores
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    env.update(extra or {})
    return {k: v for k, v in env.items() if v is not None}


#: the launcher between the test process and a case: Linux carries a process's peak resident
#: memory across fork and exec, so a case forked straight from a big pytest process would report
#: pytest's own size; forked from this small launcher it reports its own (plus the launcher's
#: few MiB). It writes the case's ``ru_maxrss`` (KiB) to the file named by its first argument
#: and exits with the case's status.
_LAUNCHER = """\
import os, sys
pid = os.posix_spawnp(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def run(argv: list, *, env: dict | None = None, cwd=None, timeout: float = 120.0,
        stdin=subprocess.DEVNULL) -> Outcome:
    """Run ``argv`` (its first entry a path to an executable) to its end, killed with its process
    group after ``timeout`` seconds, and measure that child's own peak resident memory."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r", suffix=".maxrss") as peak:
        proc = subprocess.Popen([sys.executable, "-S", "-c", _LAUNCHER, peak.name,
                                 *(str(a) for a in argv)],
                                stdout=out, stderr=err, stdin=stdin, env=child_env(env), cwd=cwd,
                                start_new_session=True)
        fired = threading.Event()

        def kill():
            fired.set()
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

        timer = threading.Timer(timeout, kill)
        timer.start()
        try:
            proc.wait()
        finally:
            timer.cancel()
        out.seek(0)
        err.seek(0)
        kib = peak.read().strip()
        # NOTE: a case killed on time-out leaves no figure: count it as over the limit
        peak_bytes = int(kib) * 1024 if kib else PEAK_LIMIT
        return Outcome(list(argv), proc.returncode, out.read().decode(errors="replace"),
                       err.read().decode(errors="replace"), peak_bytes, fired.is_set())


def run_cli(*args, **kwargs) -> Outcome:
    """``polycnn ARGS...`` in a child process."""
    return run([sys.executable, "-m", "polycnn.cli.main", *args], **kwargs)


def run_python(code: str, **kwargs) -> Outcome:
    """A Python snippet in a child process (API cases: an uncaught exception is a traceback, so
    snippets catch the error they expect and print ``error: <message>`` and exit 2 themselves,
    through :func:`api_case`)."""
    return run([sys.executable, "-c", textwrap.dedent(code)], **kwargs)


def api_case(statement: str, exception: str = "(ValueError, TypeError)") -> str:
    """A snippet that runs ``statement`` after ``import polycnn as pc, numpy as np``, and turns
    the expected exception into one ``error:`` line and exit 2, as the CLI does; any other
    exception is a traceback (exit 1) and no exception at all exits 0, so both fail the case."""
    # NOTE: the statement is indented after the template is dedented: put inside it first, its
    # second and later lines would set the template's common indent (an IndentationError)
    body = textwrap.indent(textwrap.dedent(statement).strip("\n"), "    ")
    return textwrap.dedent(f"""\
        import sys
        import numpy as np
        import polycnn as pc
        try:
        %s
        except {exception} as exc:
            print("error: " + " ".join(str(exc).split()), file=sys.stderr)
            sys.exit(2)
        """) % body


def snapshot(folder) -> dict:
    """name -> (size, mtime_ns, bytes hash) of every file under ``folder``: compare before and
    after a case to show that nothing was created, removed or damaged."""
    import hashlib

    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            st = os.lstat(path)
            digest = ""
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            found[os.path.relpath(path, folder)] = (st.st_size, st.st_mtime_ns, digest)
    return found


def tar_gz(members) -> bytes:
    """A gzipped tar archive in memory; ``members``: (name, bytes) for a file, (name, "->target")
    for a symbolic link (hostile archives: ``../`` names, links out of the folder)."""
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, body in members:
            info = tarfile.TarInfo(name)
            if isinstance(body, str):
                info.type, info.linkname = tarfile.SYMTYPE, body[2:]
                tar.addfile(info)
            else:
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


#: the stored run of a tiny shapes training (3x16x16, tutorial network), as `polycnn train`
#: writes it: the base that checkpoint cases alter
SHAPES_RUN = {"epochs": 1, "batch_size": 8, "lr": 0.05, "optimizer": "sgd", "seed": 0,
              "augment": False, "image_size": 16, "channels": 3, "n_train": 30, "n_val": 6,
              "n_test": 9, "schedule": "cosine", "warmup": None, "patience": None}


def save_shapes_checkpoint(path) -> None:
    """A valid checkpoint of the tiny shapes run at ``path``."""
    import polycnn as pc
    from polycnn import checkpoint

    model = pc.models.tutorial((3, 16, 16), 3, backend="numpy")
    checkpoint.save(path, model, epoch=1, run=SHAPES_RUN, classes=["triangle", "square", "circle"])


def raises_naming(error, statement: str, namespace: dict, *needles: str) -> None:
    """The in-process twin of a child case: ``exec(statement)`` raises ``error`` whose message
    (whitespace folded) names every needle, case-insensitively."""
    import pytest

    with pytest.raises(error) as info:
        exec(statement, namespace)
    message = " ".join(str(info.value).split())
    for needle in needles:
        assert needle.lower() in message.lower(), f"{message!r} does not name {needle!r}"

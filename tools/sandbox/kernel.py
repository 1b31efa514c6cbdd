"""The interpreter that runs inside the sandbox, one per task: it keeps variables and imports
between calls, like a notebook kernel. Standard library only; started as a script.

Protocol: one JSON request per line on stdin (`{"code": ..., "cpu_seconds": ...}`); one JSON
result per line on the original stdout. The code's own output (including that of child
processes and C extensions) goes to files on the sandbox's /tmp, read back and capped."""

import ast
import hashlib
import json
import os
import resource
import stat
import sys
import time
import traceback

WORKSPACE = "/workspace"
OUTPUT_CAP = int(os.environ.get("CADRE_OUTPUT_CAP", "20000"))


Stamp = tuple[int, int, int, int]
# File times tick coarsely on many kernels (a jiffy, up to 10 ms): a file rewritten with the
# same size within one tick keeps its stamp. Files modified this recently before a call are
# also compared by content afterwards.
RECENT_NS = 2_000_000_000


def _snapshot() -> dict[str, Stamp]:
    files: dict[str, Stamp] = {}
    for root, _dirs, names in os.walk(WORKSPACE):
        for name in names:
            path = os.path.join(root, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            files[os.path.relpath(path, WORKSPACE)] = (st.st_size, st.st_mtime_ns,
                                                       st.st_ctime_ns, st.st_ino)
    return files


def _digest(name: str) -> str | None:
    try:
        fd = os.open(os.path.join(WORKSPACE, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        digest = hashlib.sha256()
        while chunk := os.read(fd, 1 << 20):
            digest.update(chunk)
        return digest.hexdigest()
    finally:
        os.close(fd)


def _recent_digests(files: dict[str, Stamp]) -> dict[str, str | None]:
    now = time.time_ns()
    return {name: _digest(name) for name, stamp in files.items()
            if stamp[2] >= now - RECENT_NS}


def _changed(before: dict[str, Stamp], digests: dict[str, str | None],
             after: dict[str, Stamp]) -> list[str]:
    changed = []
    for name, stamp in after.items():
        if before.get(name) != stamp or (name in digests and _digest(name) != digests[name]):
            changed.append(name)
    return sorted(changed)


def _read_capped(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            data = handle.read(OUTPUT_CAP + 1)
            size = os.fstat(handle.fileno()).st_size
    except OSError:
        return ""
    text = data[:OUTPUT_CAP].decode("utf-8", "replace")
    if size > OUTPUT_CAP:
        text += f"\n[output truncated: {size - OUTPUT_CAP} more bytes]"
    return text


def _format(exc: BaseException) -> str:
    """The traceback from the cell's own frames on, without this kernel's."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != "<cell>":
        tb = tb.tb_next
    lines = traceback.format_exception(type(exc), exc, tb, limit=12)
    return "".join(lines)[-OUTPUT_CAP:]


def _save_figures() -> None:
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is None:
        return
    for number in pyplot.get_fignums():
        pyplot.figure(number).savefig(os.path.join(WORKSPACE, f"figure-{number}.png"))
    pyplot.close("all")


def _limit_cpu(seconds: int) -> None:
    """Let the next cell use `seconds` more CPU time: at the soft limit the kernel gets
    SIGXCPU and dies (should the cell ignore that signal, the wall-clock limit outside stops
    it). Only the soft limit moves. An unprivileged process may lower its hard limit but
    never raise it again: a hard limit set just above one cell's allowance refused the next
    cell's as soon as the kernel had used a second more, and the kernel exited between two
    calls (a file rewritten by the second call was never saved)."""
    used = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
    _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = int(used + seconds) + 1
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _run(code: str, namespace: dict[str, object]) -> str | None:
    tree = ast.parse(code, "<cell>", "exec")
    last: ast.Expression | None = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body[-1].value)
        tree.body.pop()
    exec(compile(tree, "<cell>", "exec"), namespace)
    if last is not None:
        value = eval(compile(last, "<cell>", "eval"), namespace)
        if value is not None:
            return repr(value)[:OUTPUT_CAP]
    return None


def main() -> None:
    protocol = os.fdopen(os.dup(1), "w", buffering=1)
    namespace: dict[str, object] = {"__name__": "__main__"}
    os.environ.setdefault("MPLBACKEND", "Agg")
    for line in sys.stdin:
        request = json.loads(line)
        before = _snapshot()
        digests = _recent_digests(before)
        out_path, err_path = "/tmp/.cell-stdout", "/tmp/.cell-stderr"
        saved = os.dup(1), os.dup(2)
        out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(out, 1)
        os.dup2(err, 2)
        _limit_cpu(request.get("cpu_seconds", 30))
        started = time.monotonic()
        value, error = None, None
        try:
            value = _run(request["code"], namespace)
            _save_figures()
        except BaseException as exc:  # the cell's error is its result
            error = _format(exc)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in (out, err, *saved):
                os.close(fd)
        changed = _changed(before, digests, _snapshot())
        protocol.write(json.dumps({
            "stdout": _read_capped(out_path), "stderr": _read_capped(err_path),
            "value": value, "error": error, "files": changed,
            "duration_ms": int((time.monotonic() - started) * 1000),
        }) + "\n")


if __name__ == "__main__":
    main()

"""The servers under test: how to launch each one, wait for it, measure it and stop it.

A server is a `ServerSpec` in `SERVERS`; its `build` function turns a `LaunchContext` into a
`Launch` (an argv plus how to learn the port). `RunningServer` owns the process from launch
to cleanup and is a context manager, so a failure or Ctrl-C never leaves a server behind.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 15.0
STOP_GRACE_S = 3.0
POLL_INTERVAL_S = 0.005
READY_PATH = "/small.txt"
MIN_OPEN_FILES = 4096
STARTUP_URL = re.compile(rb"https?://127\.0\.0\.1:(\d+)/")


class StartError(Exception):
    """A server did not come up; `status` says whether it is missing a feature or broken."""

    def __init__(self, status: Literal["unavailable", "failed"], detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class LaunchContext:
    site: Path
    workdir: Path  # scratch space for this launch: logs, configs
    pinned: bool  # the server gets a single CPU
    tls: tuple[Path, Path] | None = None  # serve HTTPS with this certificate and key


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    port: int | None  # None: read it from the start-up line on stdout
    env: dict[str, str] | None = None
    notes: tuple[str, ...] = ()
    # An early non-zero exit whose output mentions this value means "not supported yet".
    unsupported_value: str | None = None


@dataclass(frozen=True)
class ServerSpec:
    name: str
    build: Callable[[LaunchContext], Launch]
    command: str | None = None  # must be on PATH for the server to run
    optional: bool = False  # skipped silently when `command` is missing
    in_startup: bool = False  # takes part in the `startup` scenario
    tls: bool = False  # can serve HTTPS (takes part in the tls-* scenarios)

    def missing_reason(self) -> str | None:
        if self.command is None or shutil.which(self.command):
            return None
        return f"`{self.command}` not found on PATH"


# -- Launch recipes -------------------------------------------------------------------------


def free_port() -> int:
    """A port the kernel considers free right now (a small race we accept)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _sitepeek(
    model: str, log: bool = False, src: Path | None = None
) -> Callable[[LaunchContext], Launch]:
    """``src``: the source tree to run (default: this working tree's)."""

    def build(ctx: LaunchContext) -> Launch:
        argv = [sys.executable, "-m", "sitepeek", "serve", str(ctx.site)]
        # The default configuration (live reload on) with the request log quieted, as
        # the Node servers are run with --quiet too; `log`: the text log on, written
        # to a file, to show what it costs.
        argv += ["--port", "0", "--strict-port", "--workers", model]
        notes: list[str] = ["request log on (text, to a file)"] if log else []
        if not log:
            argv.append("--quiet")
        if ctx.tls is not None:
            argv += ["--cert", str(ctx.tls[0]), "--key", str(ctx.tls[1])]
        if model == "processes" and ctx.pinned:
            argv += ["--processes", "1"]
            notes.append("--processes 1 (pinned to one core)")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        tree = src or REPO / "src"
        if (tree / "sitepeek").is_dir():
            # Benchmark the working tree (or the baseline's), installed or not.
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), env.get("PYTHONPATH")]))
        return Launch(argv, None, env, tuple(notes), unsupported_value=model)

    return build


def _http_server(ctx: LaunchContext) -> Launch:
    port = free_port()
    argv = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"]
    return Launch([*argv, "--directory", str(ctx.site)], port)


def _nginx(ctx: LaunchContext) -> Launch:
    port = free_port()
    conf = ctx.workdir / "nginx.conf"
    conf.write_text(nginx_conf(ctx.site, ctx.workdir, port, ctx.tls))
    argv = ["nginx", "-c", str(conf), "-p", str(ctx.workdir)]
    if _nginx_supports_e():
        argv += ["-e", str(ctx.workdir / "error.log")]
    return Launch(argv, port, notes=("1 process, gzip level 6",))


def nginx_conf(site: Path, workdir: Path, port: int, tls: tuple[Path, Path] | None = None) -> str:
    mime = Path("/etc/nginx/mime.types")
    types = f"include {mime};" if mime.exists() else _MINIMAL_TYPES
    temp = "\n".join(
        f"  {kind}_temp_path {workdir / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    listen = f"listen 127.0.0.1:{port}"
    if tls is not None:
        # nginx's defaults otherwise (no kTLS: sendfile is not used through TLS).
        listen += f" ssl;\n    ssl_certificate {tls[0]};\n    ssl_certificate_key {tls[1]}"
    # worker_connections is raised from the default 512 so that `c1000` measures nginx,
    # not its configuration.
    return f"""daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 8192;
pid {workdir / "nginx.pid"};
error_log {workdir / "error.log"} warn;
events {{ worker_connections 4096; }}
http {{
  {types}
  default_type application/octet-stream;
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  gzip on;
  gzip_comp_level 6;
  gzip_types text/javascript application/javascript text/css;
{temp}
  server {{
    {listen};
    root {site};
  }}
}}
"""


_MINIMAL_TYPES = """types {
    text/html html;
    text/plain txt;
    text/css css;
    application/javascript js;
    application/octet-stream bin;
  }"""


def _nginx_supports_e() -> bool:
    """`-e` (error log at start-up) arrived in nginx 1.19.5; older ones reject it."""
    try:
        result = subprocess.run(
            ["nginx", "-h"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return "-e filename" in result.stdout + result.stderr


def _node(command: str, *flags: str) -> Callable[[LaunchContext], Launch]:
    def build(ctx: LaunchContext) -> Launch:
        port = free_port()
        argv = [command, str(ctx.site)]
        argv += [f.format(port=port) for f in flags]
        return Launch(argv, port)

    return build


SERVERS: dict[str, ServerSpec] = {
    spec.name: spec
    for spec in (
        ServerSpec("sitepeek-greenlets", _sitepeek("greenlets"), in_startup=True, tls=True),
        ServerSpec("sitepeek-greenlets-log", _sitepeek("greenlets", log=True)),
        ServerSpec("sitepeek-threads", _sitepeek("threads"), in_startup=True, tls=True),
        ServerSpec("sitepeek-processes", _sitepeek("processes"), in_startup=True, tls=True),
        ServerSpec("python-http.server", _http_server, in_startup=True),
        ServerSpec("nginx", _nginx, command="nginx", tls=True),
        ServerSpec(
            "sirv",
            _node("sirv", "--port", "{port}", "--host", "127.0.0.1", "--quiet"),
            command="sirv",
            optional=True,
        ),
        ServerSpec(
            "http-server",
            _node("http-server", "-p", "{port}", "-a", "127.0.0.1", "-s"),
            command="http-server",
            optional=True,
        ),
        ServerSpec(
            "live-server",
            _node("live-server", "--port={port}", "--host=127.0.0.1", "--no-browser", "--quiet"),
            command="live-server",
            optional=True,
        ),
    )
}
BASELINE = "python-http.server"


def exchange(sock: socket.socket, request: str) -> None:
    """Send one request and read its whole response (Content-Length framed; a 304 has
    no body), on a keep-alive connection: what the figures of a benchmark script ask."""
    sock.sendall(request.encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("the server closed the connection")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    length = int(match.group(1)) if match else 0
    if head.startswith(b"HTTP/1.1 304"):
        length = 0
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("the server closed the connection mid-body")
        body += chunk


def extract_source(ref: str, into: Path) -> Path:
    """The ``src`` directory of the git revision ``ref``, extracted under ``into`` (for
    PYTHONPATH): the old code, to measure next to the new in one run. ValueError when
    ``ref`` is not a revision of this repository."""
    into.mkdir(parents=True, exist_ok=True)
    try:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", ref, "src"],
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        detail = getattr(error, "stderr", b"") or str(error).encode()
        raise ValueError(f"--baseline {ref}: {detail.decode(errors='replace').strip()}") from None
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into / "src"


def baseline_servers(ref: str, names: list[str], into: Path) -> list[ServerSpec]:
    """Twins ``NAME@REF`` of the sitepeek servers among ``names``, running the source
    of the git revision ``ref`` (extracted under ``into``): the old and the new code
    measured in one run, on the same machine state."""
    extract_source(ref, into)
    twins = []
    for name in names:
        model = name.removeprefix("sitepeek-")
        if name.startswith("sitepeek-") and model in ("greenlets", "threads", "processes"):
            spec = SERVERS[name]
            twins.append(
                dataclasses.replace(
                    spec, name=f"{name}@{ref}", build=_sitepeek(model, src=into / "src")
                )
            )
    return twins


# -- Processes ------------------------------------------------------------------------------


def raise_open_files_limit() -> None:
    """preexec_fn: lift RLIMIT_NOFILE to at least MIN_OPEN_FILES for `c1000`, if allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, MIN_OPEN_FILES)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        # Unprivileged: the hard limit is the ceiling.
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))


@dataclass
class RunningServer:
    """One launch of one server. Use as `with RunningServer(...) as server:`."""

    spec: ServerSpec
    ctx: LaunchContext
    cpu_prefix: list[str]
    launch: Launch = field(init=False)
    process: subprocess.Popen[bytes] | None = field(default=None, init=False)
    port: int = field(default=0, init=False)
    launched_at: float = field(default=0.0, init=False)
    first_byte_at: float = field(default=0.0, init=False)

    def __enter__(self) -> RunningServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        scheme = "http" if self.ctx.tls is None else "https"
        return f"{scheme}://127.0.0.1:{self.port}"

    @property
    def startup_s(self) -> float:
        """From launching the command to the first byte of a 200 for READY_PATH."""
        return self.first_byte_at - self.launched_at

    def start(self) -> None:
        self.ctx.workdir.mkdir(parents=True, exist_ok=True)
        self.launch = self.spec.build(self.ctx)
        with self._log("stdout").open("wb") as out, self._log("stderr").open("wb") as err:
            # Logs go to files, not pipes: nobody has to drain them and a chatty access log
            # can never block the server on a full pipe.
            self.launched_at = time.perf_counter()
            self.process = subprocess.Popen(
                [*self.cpu_prefix, *self.launch.argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=self.launch.env,
                cwd=self.ctx.workdir,
                start_new_session=True,  # its own process group, so stop() reaches children
                # bench.py starts no threads, which is what makes preexec_fn safe here.
                preexec_fn=raise_open_files_limit,  # noqa: PLW1509
            )
        deadline = self.launched_at + START_TIMEOUT_S
        self.port = self.launch.port or self._port_from_stdout(deadline)
        self.first_byte_at = self._wait_until_serving(deadline)

    def _log(self, stream: str) -> Path:
        return self.ctx.workdir / f"{self.spec.name}.{stream}.log"

    def _output(self) -> bytes:
        return b"".join(p.read_bytes() for p in (self._log("stdout"), self._log("stderr")))

    def _port_from_stdout(self, deadline: float) -> int:
        log = self._log("stdout")
        while time.perf_counter() < deadline:
            match = STARTUP_URL.search(log.read_bytes())
            if match:
                return int(match.group(1))
            self._check_alive()
            time.sleep(POLL_INTERVAL_S)
        raise StartError("failed", f"no http://127.0.0.1:PORT/ on stdout in {START_TIMEOUT_S}s")

    def _wait_until_serving(self, deadline: float) -> float:
        last_error = "no attempt"
        while time.perf_counter() < deadline:
            self._check_alive()
            try:
                tls = self.ctx.tls is not None
                status, at = first_response_byte(self.port, READY_PATH, tls=tls)
            except OSError as error:
                last_error = repr(error)
            else:
                if status == 200:
                    return at
                last_error = f"status {status}"
            time.sleep(POLL_INTERVAL_S)
        raise StartError("failed", f"GET {READY_PATH} not 200 in {START_TIMEOUT_S}s: {last_error}")

    def _check_alive(self) -> None:
        assert self.process is not None
        code = self.process.poll()
        if code is None:
            return
        output = self._output().decode(errors="replace")
        tail = " | ".join(output.strip().splitlines()[-3:]) or "no output"
        value = self.launch.unsupported_value
        if code != 0 and value and value.lower() in output.lower():
            raise StartError("unavailable", f"exit {code}: {tail}")
        raise StartError("failed", f"exited with {code}: {tail}")

    def cpu_seconds(self) -> float | None:
        """User and system CPU time of the server and its descendants so far."""
        if self.process is None or self.process.poll() is not None:
            return None
        times = [cpu_seconds(pid) for pid in process_tree(self.process.pid)]
        return sum(t for t in times if t is not None)

    def peak_memory_mib(self) -> float | None:
        """Sum of VmHWM over the server and its descendants (shared pages count twice)."""
        if self.process is None or self.process.poll() is not None:
            return None
        peaks = [vm_hwm_kib(pid) for pid in process_tree(self.process.pid)]
        known = [kib for kib in peaks if kib is not None]
        return sum(known) / 1024 if known else None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL for the whole process group after STOP_GRACE_S."""
        if self.process is None:
            return
        deadline = time.monotonic() + STOP_GRACE_S
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(STOP_GRACE_S)
        # Worker processes may outlive their parent for a moment; give them the same grace.
        while _group_alive(self.process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _group_alive(self.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.process = None


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def first_response_byte(
    port: int, path: str, timeout: float = 1.0, tls: bool = False
) -> tuple[int, float]:
    """GET `path`; return the status code and the perf_counter() when its first byte came."""
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as plain:
        sock = _unverified().wrap_socket(plain) if tls else plain
        sock.sendall(request.encode())
        head = sock.recv(64)
        at = time.perf_counter()
        while b"\r\n" not in head:
            more = sock.recv(64)
            if not more:
                break
            head += more
        if sock is not plain:
            sock.close()
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise ConnectionError(f"not an HTTP response: {head[:40]!r}")
    return int(parts[1]), at


def _unverified() -> ssl.SSLContext:
    """Readiness only: the benchmark's own throwaway certificate is not checked."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed P-256 certificate for 127.0.0.1 (openssl), shared by every server."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"),
            *("-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2"),
            *("-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants, found by walking /proc/*/stat for parent ids."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # The process ended while we looked.
        # The command name may contain spaces and parentheses; fields resume after the last ')'.
        fields = text[text.rfind(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def cpu_seconds(pid: int) -> float | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # fields[0] is field 3, the state
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def vm_hwm_kib(pid: int) -> int | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) if match else None

"""The one configuration object that flows from the CLI through the server."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

WorkerName = Literal["greenlets", "threads", "processes"]
WORKER_NAMES: tuple[str, ...] = get_args(WorkerName)


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the server needs to know; validated on construction."""

    root: Path
    host: str = "127.0.0.1"
    port: int = 8000
    strict_port: bool = False
    workers: WorkerName = "greenlets"
    processes: int = 0  # 0: one per CPU
    max_connections: int = 1000
    # Seconds an idle keep-alive connection is kept open.
    keepalive_timeout: float = 5.0
    # Seconds a client has to send a complete request head once it started one.
    header_timeout: float = 10.0
    # Seconds a blocked write may wait for the client to read.
    send_timeout: float = 30.0
    # Seconds in-flight responses get to finish on shutdown.
    shutdown_grace: float = 0.5
    # Negotiated gzip (brotli, zstd with the extras) for text types.
    compress: bool = True
    # Live reload: watch the root (and ``watch``), inject the client into HTML.
    reload: bool = True
    reload_delay: float = 0.03  # quiet period that ends a burst of changes
    watch: tuple[Path, ...] = ()
    ignore: tuple[str, ...] = ()
    poll: bool = False

    def __post_init__(self) -> None:
        if not self.root.is_dir():
            raise ValueError(f"{self.root} is not a directory")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port} is out of range 0-65535")
        if self.workers not in WORKER_NAMES:
            raise ValueError(f"unknown worker model {self.workers!r}")
        if self.processes < 0:
            raise ValueError("processes must be 0 (one per CPU) or more")
        if self.reload_delay < 0:
            raise ValueError("reload delay must not be negative")
        for path in self.watch:
            if not path.exists():
                raise ValueError(f"watched path {path} does not exist")
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")

    @property
    def process_count(self) -> int:
        return self.processes or os.cpu_count() or 1

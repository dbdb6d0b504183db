"""Training jobs on the shared model store: status any replica reads, cancels any replica files, one job at a time.

Replicas behind a balancer share model_store/, so a job's follower may reach any of them. The
replica that runs a job writes its status to `jobs/<id>.json` (atomically, as it changes); any
replica answers GET /train/{id} from there; a cancel is a `jobs/<id>.cancel` file that the running
replica notices within a second or two. One job runs across all replicas: `jobs/.running` is a
lease that its holder renews every few seconds; a holder that died stops renewing it, and the
lease can be taken over once it is older than `lease_seconds`.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from pathlib import Path

from app.errors import Conflict
from app.lm.store import _atomic_write

JOB_ID = set("0123456789abcdef")


class JobBoard:
    def __init__(self, store_root: Path, lease_seconds: float = 15.0):
        self.dir = Path(store_root) / "jobs"
        self.lease_seconds = lease_seconds
        self.owner = f"{socket.gethostname()}:{os.getpid()}"

    @property
    def _lease(self) -> Path:
        return self.dir / ".running"

    def _path(self, job_id: str, suffix: str) -> Path | None:
        if len(job_id) != 32 or not set(job_id) <= JOB_ID:
            return None  # not an id this service makes: no file to look at
        return self.dir / f"{job_id}{suffix}"

    # ---- the one-running-job lease -----------------------------------------------------------

    def acquire(self, job_id: str) -> None:
        """Takes the lease for `job_id`, or raises Conflict naming the job that holds it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self._lease, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._read_lease()
                if holder is not None and time.time() - holder.get("renewed", 0) < self.lease_seconds:
                    raise Conflict(
                        f"training job {holder.get('job_id')} is still running; one job runs at a time"
                    ) from None
                self._break(holder)  # its holder stopped renewing it: gone
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self._lease_body(job_id), f)
            return
        raise Conflict("another replica is starting a training job; try again shortly")

    def renew(self, job_id: str) -> None:
        holder = self._read_lease()
        if holder is not None and holder.get("job_id") == job_id and holder.get("owner") == self.owner:
            _atomic_write(self._lease, json.dumps(self._lease_body(job_id)).encode())

    def release(self, job_id: str) -> None:
        holder = self._read_lease()
        if holder is not None and holder.get("job_id") == job_id and holder.get("owner") == self.owner:
            with contextlib.suppress(FileNotFoundError):
                self._lease.unlink()

    def _lease_body(self, job_id: str) -> dict:
        return {"job_id": job_id, "owner": self.owner, "renewed": time.time()}

    def _read_lease(self) -> dict | None:
        try:
            return json.loads(self._lease.read_text())
        except (OSError, ValueError):
            return None

    def _break(self, seen: dict | None) -> None:
        """Removes a stale lease, only if it is still the one that was read (a rename is atomic: of
        two replicas breaking it at once, one moves it and the other finds nothing to move)."""
        aside = self.dir / f".stale-{uuid.uuid4().hex}"
        try:
            os.rename(self._lease, aside)
        except FileNotFoundError:
            return
        try:
            moved = json.loads(aside.read_text())
        except (OSError, ValueError):
            moved = None
        if seen is not None and moved != seen:  # someone took the lease meanwhile: give it back
            with contextlib.suppress(OSError):
                os.link(aside, self._lease)
        with contextlib.suppress(OSError):
            aside.unlink()

    # ---- status and cancel requests ----------------------------------------------------------

    def publish(self, status: dict) -> None:
        path = self._path(status["job_id"], ".json")
        if path is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            _atomic_write(path, json.dumps(status).encode())

    def read(self, job_id: str) -> dict | None:
        path = self._path(job_id, ".json")
        if path is None:
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def request_cancel(self, job_id: str) -> None:
        path = self._path(job_id, ".cancel")
        if path is not None:
            path.touch()

    def cancel_requested(self, job_id: str) -> bool:
        path = self._path(job_id, ".cancel")
        return path is not None and path.exists()

    def forget(self, job_id: str) -> None:
        for suffix in (".json", ".cancel"):
            path = self._path(job_id, suffix)
            if path is not None:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

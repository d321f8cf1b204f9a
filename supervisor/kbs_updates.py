"""Policy updates from the KBS: poll a Confidential Data Hub resource, gate what is new.

Configured by `kbs_update:` (supervisor.config.KbsUpdateConfig): the resource
(`kbs:///<repository>/<type>/<tag>`), the CDH address (its ttrpc socket, or api-server-rest over
http), and the polling interval. Every `interval_s` the resource is fetched (attest.cdh); bytes that
differ from the last fetch go through exactly the gate a SIGHUP reload uses (supervisor.daemon
`apply_update`: signatures and threshold, version greater than the one in force, expiry, object
digests); the same bytes again are not re-gated. A refused or unreachable update changes nothing;
`warden status` shows the last poll (`snapshot()`).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from attest.cdh import ResourceSource, ResourceUri
from initdata.errors import GateError
from supervisor.control import Reply

log = logging.getLogger("warden.kbs")


class KbsPoller:
    def __init__(self, source: ResourceSource, uri: ResourceUri, interval_s: float,
                 apply: Callable[[bytes, str], Reply]) -> None:
        self.source = source
        self.uri = uri
        self.interval_s = interval_s
        self._apply = apply
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._last_digest: str | None = None
        self._state: dict[str, Any] = {"polls": 0, "last_poll_error": None, "last_fetched_digest": None,
                                       "last_result": None}

    @property
    def origin(self) -> str:
        return f"{self.uri} via {self.source.origin}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="warden-kbs", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"resource": str(self.uri), "via": self.source.origin, "interval_s": self.interval_s,
                    **self._state}

    def poll_once(self) -> None:
        """One fetch and, for new bytes, one gate."""
        with self._lock:
            self._state["polls"] += 1
        try:
            envelope = self.source.get_resource(self.uri)
        except GateError as exc:
            with self._lock:
                if self._state["last_poll_error"] != str(exc):
                    log.info("KBS update: %s: %s", self.origin, exc)
                self._state["last_poll_error"] = str(exc)
            return
        digest = "sha256:" + hashlib.sha256(envelope).hexdigest()
        with self._lock:
            self._state["last_poll_error"] = None
            self._state["last_fetched_digest"] = digest
            if digest == self._last_digest:
                return
            self._last_digest = digest
        reply = self._apply(envelope, self.origin)
        if reply.retry:  # not READY at the moment (a reload in progress): gate these bytes next time
            with self._lock:
                self._last_digest = None
        result = {"ok": reply.ok, "digest": digest, **(reply.body or {})}
        if reply.error:
            result["error"] = reply.error
        with self._lock:
            self._state["last_result"] = result

    def _run(self) -> None:
        while not self._stopped:
            started = time.monotonic()
            try:
                self.poll_once()
            except Exception:  # never let the poller die silently
                log.exception("KBS update poll failed")
            self._wake.wait(max(0.0, self.interval_s - (time.monotonic() - started)))
            self._wake.clear()

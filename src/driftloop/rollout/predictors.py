"""The predictor servers behind the local gateway: one kserve server per storageUri.

On a cluster every Knative revision runs in its own pods, and KServe's storage initializer
copies the revision's ``storageUri`` to ``/mnt/models`` before the predictor starts. The
local gateway (:class:`~driftloop.rollout.gateway.LocalGateway`) plays both with
:class:`PredictorServers`: a ``gs://`` model is first copied into a cache folder, a local
folder (or ``file://``) is used where it is, and each storageUri is loaded once
(hash-verified by :class:`~driftloop.serving.predictor.DriftloopModel`) and served by its own
kserve server on 127.0.0.1 (one "pod" per model, in a background thread). Revisions with the
same storageUri share their server.

Its own module because starting, caching and stopping model servers is a job of its own,
apart from routing: the gateway decides which revision answers a request, this module only
keeps a server ready for each model the split names.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from driftloop.data.storage import open_store
from driftloop.rollout.errors import RolloutError

if TYPE_CHECKING:
    from driftloop.serving.server import RunningServer

log = logging.getLogger(__name__)


class PredictorServers:
    """The running predictor servers of one model name, keyed by storageUri.

    Args:
        model_name: The model name the servers answer to (on the endpoint paths).
        cache_dir: Where ``gs://`` models are copied (default: a temporary folder, removed
            by :meth:`stop`).
    """

    def __init__(self, model_name: str, cache_dir: str | Path | None = None) -> None:
        self.model_name = model_name
        self._own_cache = cache_dir is None
        self.cache_dir = Path(cache_dir) if cache_dir else Path(
            tempfile.mkdtemp(prefix="driftloop-gateway-"))
        self._lock = threading.Lock()  # the servers: held briefly, never while loading
        self._servers: dict[str, RunningServer] = {}
        #: storageUris in the order they were loaded (each appears once).
        self.loads: list[str] = []

    def materialize(self, uri: str) -> Path:
        """Return the local folder holding the model of ``uri``, copying a ``gs://`` one.

        A copy goes to a temporary folder first and is renamed into place, so an
        interrupted copy is never taken for a complete model.

        Raises:
            RolloutError: ``uri`` is neither a local folder, ``file://`` nor ``gs://``.
        """
        if uri.startswith("gs://"):
            target = self.cache_dir / hashlib.sha256(uri.encode()).hexdigest()[:16]
            if not target.is_dir():
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                store = open_store(uri)
                partial = Path(tempfile.mkdtemp(prefix=".partial-", dir=self.cache_dir))
                for key in store.list():
                    dest = partial / key
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(store.read_bytes(key))
                partial.rename(target)
            return target
        if "://" in uri and not uri.startswith("file://"):
            raise RolloutError(f"local gateway: cannot load storageUri {uri}: only local "
                               "folders, file:// and gs:// are supported")
        return Path(uri.removeprefix("file://"))

    def ensure(self, uri: str) -> RunningServer:
        """Return the server of ``uri``, loading the model and starting one if needed.

        Raises:
            DriftloopError: The model cannot be copied or loaded.
        """
        with self._lock:
            server = self._servers.get(uri)
        if server is not None:
            return server
        from driftloop.serving.predictor import DriftloopModel
        from driftloop.serving.server import serve

        model = DriftloopModel(self.model_name, model_dir=self.materialize(uri))
        server = serve([model])
        with self._lock:
            self._servers[uri] = server
        self.loads.append(uri)
        log.info("gateway %s: loaded %s (version %s) on %s", self.model_name, uri,
                 model.version, server.url)
        return server

    def get(self, uri: str) -> RunningServer:
        """Return the running server of ``uri`` (KeyError when it was never started)."""
        with self._lock:
            return self._servers[uri]

    def stop(self) -> None:
        """Stop every server and remove a temporary cache folder (idempotent)."""
        with self._lock:
            servers, self._servers = list(self._servers.values()), {}
        for srv in servers:
            srv.stop()
        if self._own_cache:
            shutil.rmtree(self.cache_dir, ignore_errors=True)

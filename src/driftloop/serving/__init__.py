"""Serving: the KServe predictor, an in-process model server and the payload/feedback sink.

Modules:

* :mod:`driftloop.serving.predictor` -- :class:`~driftloop.serving.predictor.DriftloopModel`,
  a ``kserve.Model`` that serves a hash-verified registry version over V1 and V2.
* :mod:`driftloop.serving.server` -- run kserve's REST application on ``127.0.0.1`` under
  uvicorn in a background thread (tests, local gateway) or in the foreground (container).
* :mod:`driftloop.serving.sink` -- receives KServe InferenceLogger CloudEvents and user
  feedback and writes them durably into ``requests/`` and ``feedback/`` of a store.
* :mod:`driftloop.serving.metrics` -- get-or-create Prometheus metrics.

**kserve reads ``sys.argv`` at import time.** ``kserve.model_server`` runs
``argparse.parse_known_args()`` when it is first imported, and argparse accepts unique
prefixes, so a driftloop flag such as ``--model`` or ``--workers`` would silently become a
kserve setting (``--model`` abbreviates ``--model_name``). Every driftloop module therefore
imports kserve inside :func:`clean_argv`, which hides the process arguments for the duration
of the import. Importing this package does not import kserve (the sink does not need it).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def clean_argv() -> Iterator[None]:
    """Hide the process arguments from code that parses ``sys.argv`` on import.

    Use it around the first ``import kserve``: kserve's defaults then come from its own
    argument defaults, never from driftloop's command line. Later imports of kserve are
    cached by Python and never parse again.
    """
    saved = sys.argv
    sys.argv = saved[:1] if saved else ["driftloop"]
    try:
        yield
    finally:
        sys.argv = saved

"""driftloop: continuous training for Kubeflow Pipelines and KServe.

The core modules (storage, schema, ingest, validate, drift, trigger, train, evaluate,
registry, notify) are plain Python and import neither kfp nor kubernetes.
"""

__version__ = "0.1.0"

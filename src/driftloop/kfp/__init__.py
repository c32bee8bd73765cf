"""The Kubeflow Pipelines layer: thin components, the pipeline, compile and local runs.

Only this package imports kfp. Importing it (and compiling) imports neither scikit-learn
nor alibi-detect: every component imports :mod:`driftloop.steps` inside its body, where
the work is done.
"""

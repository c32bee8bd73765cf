"""The decision rules and their typed results: drift, trigger, gate, canary."""

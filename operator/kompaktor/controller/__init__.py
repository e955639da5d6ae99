"""The Kubernetes operator: kopf wiring around the plan (`kopf run -m kompaktor.controller`).

Importing this package registers the handlers with kopf's default registry.
"""

from kompaktor.controller import handlers as handlers
from kompaktor.controller.main import operate, run_operator

__all__ = ["operate", "run_operator"]

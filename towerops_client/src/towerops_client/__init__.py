"""Python client for the TowerOps API (httpx; sync and async).

    from towerops_client import TowerModelManager, TaskUrgency

    manager = TowerModelManager()          # TOWEROPS_URL / TOWEROPS_API_KEY
    model_id, reason, wait_time = await manager.select_model(
        task_type="code_generation", urgency=TaskUrgency.INTERACTIVE)
"""
__version__ = "0.2.0"  # the one place the client's version is written (pyproject.toml reads it)

from .client import (  # noqa: E402
    Alternative,
    AsyncTowerOpsClient,
    Selection,
    TaskUrgency,
    TowerModelManager,
    TowerOpsClient,
    TowerOpsConfigError,
    TowerOpsError,
)

__all__ = [
    "Alternative",
    "AsyncTowerOpsClient",
    "Selection",
    "TaskUrgency",
    "TowerModelManager",
    "TowerOpsClient",
    "TowerOpsConfigError",
    "TowerOpsError",
    "__version__",
]

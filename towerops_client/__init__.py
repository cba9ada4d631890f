"""Python client for the TowerOps API (httpx; sync and async).

    from towerops_client import TowerModelManager, TaskUrgency

    manager = TowerModelManager()          # TOWEROPS_URL / TOWEROPS_API_KEY
    model_id, reason, wait_time = await manager.select_model(
        task_type="code_generation", urgency=TaskUrgency.INTERACTIVE)
"""
from .client import (
    Alternative,
    AsyncTowerOpsClient,
    Selection,
    TaskUrgency,
    TowerModelManager,
    TowerOpsClient,
    TowerOpsError,
)

__all__ = [
    "Alternative",
    "AsyncTowerOpsClient",
    "Selection",
    "TaskUrgency",
    "TowerModelManager",
    "TowerOpsClient",
    "TowerOpsError",
]

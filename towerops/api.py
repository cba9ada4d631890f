"""The API's composition root: one NinjaAPI for v1, every app's router mounted here."""
from ninja import NinjaAPI

api = NinjaAPI(title="TowerOps", version="1", urls_namespace="api-v1")

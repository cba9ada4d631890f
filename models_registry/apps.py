from django.apps import AppConfig
from django.db.models.signals import m2m_changed, post_delete, post_save


class ModelsRegistryConfig(AppConfig):
    name = "models_registry"
    verbose_name = "Model registry"

    def ready(self):
        from django.core import checks

        from models_registry import conf
        from models_registry import models as m
        from models_registry.selection.world import invalidate_config

        checks.register(conf.check_settings)
        conf.refuse_bad_settings()  # for processes that run no checks: gunicorn, celery, scripts

        # Register the Celery tasks in every process (web too): services enqueue them by name.
        # (Not with bad settings: manage.py then stops at its checks, naming them.)
        if not conf.problems():
            from models_registry.runtime import tasks as runtime_tasks  # noqa: F401
            from models_registry.slo import tasks as slo_tasks  # noqa: F401

        def drop_cache(**kwargs):
            invalidate_config()

        # Edits in this process show at once; other processes see them within TOWEROPS_CONFIG_TTL_S.
        for model in (m.LlmModel, m.QualityScore, m.TaskType, m.UrgencyClass, m.Gpu, m.Endpoint, m.LoadTimeEstimate):
            post_save.connect(drop_cache, sender=model, weak=False)
            post_delete.connect(drop_cache, sender=model, weak=False)
        m2m_changed.connect(drop_cache, sender=m.Endpoint.gpus.through, weak=False)

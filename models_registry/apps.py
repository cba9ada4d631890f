from django.apps import AppConfig
from django.db.models.signals import m2m_changed, post_delete, post_save


class ModelsRegistryConfig(AppConfig):
    name = "models_registry"
    verbose_name = "Model registry"

    def ready(self):
        from models_registry import models as m
        from models_registry.state import invalidate_config

        def drop_cache(**kwargs):
            invalidate_config()

        # Edits in this process show at once; other processes see them within CONFIG_TTL_S.
        for model in (m.LlmModel, m.QualityScore, m.TaskType, m.UrgencyClass, m.Gpu, m.Endpoint, m.LoadTimeEstimate):
            post_save.connect(drop_cache, sender=model, weak=False)
            post_delete.connect(drop_cache, sender=model, weak=False)
        m2m_changed.connect(drop_cache, sender=m.Endpoint.gpus.through, weak=False)

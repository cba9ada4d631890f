from django.core.management.base import BaseCommand, CommandError

from models_registry import models as m
from models_registry.api.auth import create_key


class Command(BaseCommand):
    help = "Create an API key and print it (its last line is the key; it is shown only once)."

    def add_arguments(self, parser):
        parser.add_argument("name", help="who or what uses the key (a tool, a person), shown in the admin")
        parser.add_argument("--scopes", default="select,read",
                            help="comma-separated, of: " + ", ".join(m.ApiKey.SCOPES) + " (select: ask for a model, "
                                 "report outcomes; read: state, reports; admin: preload, unload; infer: the "
                                 "gateway's Ollama and OpenAI APIs); default: %(default)s")
        parser.add_argument("--task", default="",
                            help="the task type of this key's gateway requests when neither the model name nor "
                                 "X-TowerOps-Task gives one (a task type of the catalog)")
        parser.add_argument("--urgency", default="", choices=["", *m.UrgencyClass.Name.values],
                            help="the urgency of this key's gateway requests without X-TowerOps-Urgency "
                                 "(default: interactive)")

    def handle(self, name, scopes, task, urgency, **options):
        if task and not m.TaskType.objects.filter(name=task).exists():
            allowed = ", ".join(m.TaskType.objects.order_by("name").values_list("name", flat=True)) or "none yet"
            raise CommandError(f"--task: unknown task type {task!r}; allowed: {allowed}")
        try:
            row, plain = create_key(name, [s.strip() for s in scopes.split(",") if s.strip()])
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        if task or urgency:
            m.ApiKey.objects.filter(pk=row.pk).update(default_task=task, default_urgency=urgency)
        defaults = f", task {task or '-'}, urgency {urgency or 'interactive'}" if task or urgency else ""
        self.stdout.write(f"API key {row.name!r} with scopes {','.join(row.scopes)}{defaults} (shown once):")
        self.stdout.write(plain)

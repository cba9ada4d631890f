"""`load_profile --only-if-empty`, as deploy/bin/setup runs it at every start: the first install
imports the profile; later starts keep what was edited in the console since."""
import io
from pathlib import Path

import pytest
from django.core.management import call_command

from models_registry import models as m

TOWER_PROFILE = Path(__file__).resolve().parents[2] / "profiles" / "tower.yaml"
pytestmark = pytest.mark.django_db


def test_it_imports_into_an_empty_database_and_never_again():
    call_command("load_profile", "--only-if-empty", str(TOWER_PROFILE), stdout=io.StringIO())
    assert m.Host.objects.count() == 1
    m.TaskType.objects.filter(name="chat").update(quality_floor=0.5)  # an edit made in the console

    out = io.StringIO()
    call_command("load_profile", "--only-if-empty", str(TOWER_PROFILE), stdout=out)
    assert "not imported, the database already has a fleet" in out.getvalue()
    assert m.TaskType.objects.get(name="chat").quality_floor == 0.5

    call_command("load_profile", str(TOWER_PROFILE), stdout=io.StringIO())  # by hand, on purpose
    assert m.TaskType.objects.get(name="chat").quality_floor == 0.65

#!/usr/bin/env python
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "towerops.settings")
    from django.core.management import execute_from_command_line

    from models_registry import conf

    conf.report_through_system_checks()  # a bad TOWEROPS_* value: a system check error, not a traceback
    execute_from_command_line(sys.argv)

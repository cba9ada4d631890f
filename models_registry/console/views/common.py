"""What every console view shares: the staff check and the page-or-fragment template name."""

from __future__ import annotations

from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied


def staff_required(view):
    """Logged in (else the login page) and staff (else 403): the console's edit permission."""

    @wraps(view)
    @login_required
    def wrapper(request, *args, **kwargs):
        if not request.user.is_staff:
            raise PermissionDenied("staff only")
        return view(request, *args, **kwargs)

    return wrapper


def _template(request, page: str, fragment: str) -> str:
    name = f"console/{page}.html"
    return f"{name}#{fragment}" if request.htmx else name

"""Small filters for the console's templates."""
from django import template
from django.template.defaultfilters import floatformat
from django.utils.safestring import mark_safe
from django.utils.timezone import template_localtime

register = template.Library()


@register.filter
def get_item(mapping, key):
    return mapping.get(key) if mapping else None


@register.filter
def filesizeformat_mib(mib) -> str:
    """MiB as the profiles write sizes: GB of 1024 MiB."""
    if mib is None:
        return "—"
    return f"{mib / 1024:.1f} GB" if mib >= 1024 else f"{mib:.0f} MiB"


@register.filter
def gpu_list(vram_by_gpu) -> str:
    """((gpu key, MiB), ...) -> "tower/0 4.5 GB + tower/1 2.0 GB"."""
    return " + ".join(f"{key} {filesizeformat_mib(mib)}" for key, mib in vram_by_gpu)


@register.filter
def num(value) -> str:
    """A number as typed: 5, 0.05, 0.0001 (no padding zeros, no rounding away small weights)."""
    return "" if value is None else f"{value:g}"


_MET = {True: "▮", False: '<span class="down">▮</span>', None: '<span class="muted">·</span>'}


@register.filter
def met_strip(series) -> str:
    """One mark per hour of an SLO series (met, missed, no data): a 30-day window is 721 marks a
    metric, which a template loop renders ~20× slower."""
    return mark_safe("".join(_MET.get(p["met"], _MET[None]) for p in series))


@register.filter
def vram_rows(table) -> str:
    """The rows of a VRAM chart's table for pages read without JavaScript, one a point (time,
    mean, max), as `{{ x|date:"Y-m-d H:i:s" }}` and `{{ u|floatformat:0 }}` write them: a 24 h
    chart has 720 points, which a template loop renders in ~0.2 s."""
    return mark_safe("".join(
        f"<tr><td>{template_localtime(x):%Y-%m-%d %H:%M:%S}</td><td>{floatformat(u, 0)}</td><td>{mx}</td></tr>"
        for x, u, mx in table
    ))

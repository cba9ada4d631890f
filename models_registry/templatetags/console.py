"""Small filters for the console's templates."""
import datetime as dt

from django import template
from django.template.defaultfilters import floatformat
from django.utils import dateformat
from django.utils.html import format_html
from django.utils.safestring import mark_safe
from django.utils.timezone import get_current_timezone_name, template_localtime

register = template.Library()


@register.filter(is_safe=True)
def when(value, fmt: str = "Y-m-d H:i:s"):
    """A time as the console shows every time: in the console's zone (TIME_ZONE), followed by that
    zone's name at that instant ("19:30:00 IST", "14:00:00 UTC", "02:30:00 CEST"), in a <time>
    element carrying the UTC instant (its title shows it). `fmt` is a Django date format. Empty
    for None, so `|default:"never"` still works."""
    if value is None or value == "":
        return ""
    if not isinstance(value, dt.datetime):
        return value
    local = template_localtime(value)
    label = local.tzname() or get_current_timezone_name()
    if value.tzinfo is None:
        return format_html("{} {}", dateformat.format(local, fmt), label)
    utc = value.astimezone(dt.timezone.utc)
    return format_html('<time datetime="{}" title="{} UTC">{} {}</time>', utc.strftime("%Y-%m-%dT%H:%M:%SZ"),
                       utc.strftime("%Y-%m-%d %H:%M:%S"), dateformat.format(local, fmt), label)


@register.simple_tag
def console_zone() -> str:
    """The zone the console shows times in (TIME_ZONE): for headers, inputs and the charts."""
    return get_current_timezone_name()


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
def percent(share) -> str:
    """A share (0..1) in percent: 0.047 -> "4.7 %"; "—" for None."""
    return "—" if share is None else f"{share * 100:.1f} %"


@register.filter
def ms_to_s(ms):
    """Milliseconds (an outcome's) as seconds, to be written like the quoted waits: `|ms_to_s|floatformat:1`."""
    return None if ms is None or ms == "" else ms / 1000.0


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
    mean, max), as `{{ x|when }}` and `{{ u|floatformat:0 }}` write them: a 24 h chart has 720
    points, which a template loop renders in ~0.2 s."""
    return mark_safe("".join(
        f"<tr><td>{when(x)}</td><td>{floatformat(u, 0)}</td><td>{mx}</td></tr>" for x, u, mx in table
    ))

"""Small filters for the console's templates."""
from django import template

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

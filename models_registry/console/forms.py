"""Console forms: validation that names the field and what is allowed."""
from __future__ import annotations

import zoneinfo

from django import forms

from models_registry import models as m
from models_registry.console.preload_grid import DAYS


class PreloadWindowForm(forms.ModelForm):
    days_of_week = forms.TypedMultipleChoiceField(
        choices=list(enumerate(DAYS)), coerce=int, widget=forms.CheckboxSelectMultiple,
        label="days", error_messages={"required": "pick at least one day"},
    )
    start_time = forms.TimeField(label="start", widget=forms.TimeInput(attrs={"type": "time"}, format="%H:%M"))
    end_time = forms.TimeField(label="end", widget=forms.TimeInput(attrs={"type": "time"}, format="%H:%M"),
                               help_text="before the start: the window runs past midnight")
    timezone = forms.CharField(label="time zone", max_length=64, initial="UTC")
    models = forms.ModelMultipleChoiceField(
        queryset=m.LlmModel.objects.filter(kind="local", enabled=True).order_by("tag"),
        widget=forms.CheckboxSelectMultiple, error_messages={"required": "pick at least one model"},
    )

    class Meta:
        model = m.PreloadWindow
        fields = ["name", "days_of_week", "start_time", "end_time", "timezone", "models", "enabled"]

    def clean_timezone(self):
        name = self.cleaned_data["timezone"].strip()
        try:
            zoneinfo.ZoneInfo(name)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise forms.ValidationError(f"unknown time zone {name!r}: use an IANA name such as UTC or Europe/Berlin")
        return name

    def clean(self):
        data = super().clean()
        if data.get("start_time") is not None and data.get("start_time") == data.get("end_time"):
            self.add_error("end_time", "a window cannot end where it starts")
        return data

    def unsaved(self) -> m.PreloadWindow:
        """The window as submitted (not saved), for previews."""
        w = m.PreloadWindow(
            pk=self.instance.pk, name=self.cleaned_data.get("name") or "(this window)",
            days_of_week=sorted(set(self.cleaned_data["days_of_week"])),
            start_time=self.cleaned_data["start_time"], end_time=self.cleaned_data["end_time"],
            timezone=self.cleaned_data["timezone"], enabled=self.cleaned_data.get("enabled", True),
        )
        return w

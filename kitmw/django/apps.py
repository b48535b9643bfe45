"""``"kitmw.django"`` in ``INSTALLED_APPS``: ``manage.py check`` validates ``settings.KITMW``."""

from __future__ import annotations

from django.apps import AppConfig

__all__ = ["KitmwConfig"]


class KitmwConfig(AppConfig):  # type: ignore[misc]  # django ships no types
    """Registers kitmw's system checks (:mod:`kitmw.django.checks`); no models, no URLs."""

    name = "kitmw.django"
    label = "kitmw"
    verbose_name = "kitmw"

    def ready(self) -> None:
        from django.core import checks

        from .checks import check_settings

        checks.register(check_settings, "kitmw")

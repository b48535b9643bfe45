"""Which backends a metrics policy writes: :func:`instruments` hands out the Prometheus
side (:mod:`._instruments`), the OpenTelemetry side (:mod:`._otel`) or both."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeAlias

from ..errors import ConfigError
from ._instruments import Instruments, backend_names, prometheus_instruments
from ._otel import CombinedInstruments, OTelInstruments, combined_instruments, otel_instruments

__all__ = ["AnyInstruments", "instruments"]

#: What :func:`instruments` returns: the Prometheus side, the OpenTelemetry side, or both.
AnyInstruments: TypeAlias = "Instruments | OTelInstruments | CombinedInstruments"


def instruments(
    registry: Any = None, *, backend: str | Iterable[str] = "prometheus", meter_provider: Any = None
) -> AnyInstruments:
    """kitmw's metrics on ``registry`` (default prometheus-client's ``REGISTRY``), and with
    ``backend="otel"`` (or ``["prometheus", "otel"]``) on ``meter_provider`` (default the
    global OpenTelemetry one) through the OpenTelemetry metrics API.

    Always the same object for the same registry (and meter provider), so any number of
    policies, apps and middleware instances can share one registry without "Duplicated
    timeseries". What a metrics policy lends the other concerns of its stack (its
    ``registry`` attribute) is accepted as ``registry`` too, and returned as it is.
    """
    if isinstance(registry, (Instruments, OTelInstruments, CombinedInstruments)):
        return registry
    backends = backend_names(backend)
    prometheus: Instruments | None = None
    if "prometheus" in backends:
        prometheus = prometheus_instruments(registry)
    elif registry is not None:
        raise ConfigError(
            f"registry: a prometheus-client registry is written only by the 'prometheus' backend"
            f" (backend is {backend!r})"
        )
    if "otel" not in backends:
        if meter_provider is not None:
            raise ConfigError(
                "meter_provider: given, but the backend is 'prometheus' only; use backend='otel'"
                " (or ['prometheus', 'otel']) to record through OpenTelemetry"
            )
        assert prometheus is not None
        return prometheus
    otel = otel_instruments(meter_provider)
    return otel if prometheus is None else combined_instruments(prometheus, otel)

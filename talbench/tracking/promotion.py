"""Champion/challenger promotion in the MLflow model registry (the nightly retraining's last step).

A new model version becomes the `challenger`; the alias `champion` moves to it only when it beats
the current champion, scored on the same test split, by more than the margin. The first version of
a model, with no champion, is promoted. The decision, both scores and the margin are tags on the
version, so the registry alone tells why each version is or is not the champion.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

from talbench.tracking.mlflow_tracking import tracking_client

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG = "talbench."  # prefix of the decision's tags on the version


@dataclass(frozen=True)
class Decision:
    model: str
    version: str  # the challenger's
    promoted: bool
    challenger_score: float
    champion_score: float | None  # None: there was no champion
    champion_version: str | None
    margin: float
    reason: str

    def tags(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        values = {
            "decision": "promoted" if self.promoted else "kept champion",
            "challenger_score": f"{self.challenger_score:.6f}",
            "champion_score": "" if self.champion_score is None else f"{self.champion_score:.6f}",
            "champion_version": self.champion_version or "",
            "margin": f"{self.margin:g}",
            "reason": self.reason,
            "decided_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        return {**{TAG + k: v for k, v in values.items()}, **(extra or {})}

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def decide(challenger: float, champion: float | None, margin: float) -> tuple[bool, str]:
    """Promote when there is no champion, or when the challenger beats it by more than `margin`."""
    if champion is None:
        return True, "no champion yet: the first version is promoted"
    gain = challenger - champion
    if gain > margin:
        return True, f"beats the champion by {gain:+.4f} > margin {margin:g}"
    return False, f"gain {gain:+.4f} over the champion is not above the margin {margin:g}"


def register_challenger(model: str, source: str, run_id: str) -> str:
    """The version of `model` for the logged model `source` of run `run_id`: made once, found again on a retry."""
    client = tracking_client()
    if client.search_registered_models(filter_string=f"name = '{model}'"):
        for version in client.search_model_versions(f"name = '{model}' and run_id = '{run_id}'"):
            if version.source == source:
                return str(version.version)
    else:
        client.create_registered_model(model, description="talbench: the nightly retrained production model")
    return str(client.create_model_version(model, source, run_id=run_id).version)


def champion(model: str) -> str | None:
    """The version the alias `champion` points at, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return str(tracking_client().get_model_version_by_alias(model, CHAMPION).version)
    except MlflowException:
        return None


def promote(model: str, version: str, challenger_score: float, margin: float,
            champion_score: Callable[[str], float], tags: Mapping[str, str] | None = None) -> Decision:
    """Make `version` the challenger, compare it with the champion (scored by `champion_score(version)`
    on the same test split as the challenger) and move `champion` to it when `decide` says so.

    The decision is recorded on the version before the aliases move: a retry finds it there and
    only finishes moving the aliases.
    """
    client = tracking_client()
    recorded = client.get_model_version(model, version).tags
    if TAG + "decision" in recorded:
        decision = _recorded(model, version, recorded)
    else:
        current = champion(model)
        champion_scored = None if current is None else champion_score(current)
        promoted, reason = decide(challenger_score, champion_scored, margin)
        decision = Decision(model, version, promoted, challenger_score, champion_scored, current, margin, reason)
        for key, value in decision.tags(tags).items():
            client.set_model_version_tag(model, version, key, value)
    client.set_registered_model_alias(model, CHALLENGER, version)
    if decision.promoted:
        client.set_registered_model_alias(model, CHAMPION, version)
    return decision


def _recorded(model: str, version: str, tags: Mapping[str, str]) -> Decision:
    def number(key: str) -> float | None:
        return float(tags[TAG + key]) if tags.get(TAG + key) else None

    return Decision(model, version, tags[TAG + "decision"] == "promoted", number("challenger_score") or 0.0,
                    number("champion_score"), tags.get(TAG + "champion_version") or None,
                    number("margin") or 0.0, tags.get(TAG + "reason", ""))

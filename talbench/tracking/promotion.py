"""Champion/challenger promotion in the MLflow model registry (the nightly retraining's last step).

A new model version becomes the `challenger`; the alias `champion` moves to it only when it is
better than the current champion with the configured confidence: on the same test split, the
paired-bootstrap interval of (challenger - champion) average mAP lies wholly above the margin (0
by default: "better"). One draw above the champion is not enough. The first version of a model,
with no champion, is promoted. The decision, both scores, the difference with its interval and
the margin are tags on the version, so the registry alone tells why each version is or is not
the champion.
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
class Evidence:
    """The challenger against the champion on the same test split (talbench.eval.statistics.paired_bootstrap)."""

    champion_score: float
    difference: float  # challenger - champion, average mAP
    interval: tuple[float, float]  # of the difference, at `level`
    level: float


@dataclass(frozen=True)
class Decision:
    model: str
    version: str  # the challenger's
    promoted: bool
    challenger_score: float
    champion_score: float | None  # None: there was no champion
    champion_version: str | None
    difference: float | None
    interval: tuple[float, float] | None
    level: float | None
    margin: float
    reason: str

    def tags(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        def number(value: float | None) -> str:
            return "" if value is None else f"{value:.6f}"

        low, high = self.interval or (None, None)
        values = {
            "decision": "promoted" if self.promoted else "kept champion",
            "challenger_score": number(self.challenger_score),
            "champion_score": number(self.champion_score),
            "champion_version": self.champion_version or "",
            "difference": number(self.difference),
            "interval_low": number(low),
            "interval_high": number(high),
            "level": "" if self.level is None else f"{self.level:g}",
            "margin": f"{self.margin:g}",
            "reason": self.reason,
            "decided_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        return {**{TAG + k: v for k, v in values.items()}, **(extra or {})}

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def decide(evidence: Evidence | None, margin: float) -> tuple[bool, str]:
    """Promote when there is no champion, or when the whole interval of the gain lies above `margin`."""
    if evidence is None:
        return True, "no champion yet: the first version is promoted"
    low, high = evidence.interval
    said = f"gain {evidence.difference:+.4f}, {evidence.level:.0%} interval [{low:+.4f}, {high:+.4f}]"
    if low > margin:
        return True, f"better than the champion: {said} lies above the margin {margin:g}"
    if high < 0:
        return False, f"worse than the champion: {said}"
    return False, f"not distinguishable from the champion by more than the margin {margin:g}: {said}"


def register_challenger(model: str, source: str, run_id: str) -> str:
    """The version of `model` for the logged model `source` of run `run_id`: made once, found again on a retry."""
    client = tracking_client()
    if client.search_registered_models(filter_string=f"name = '{model}'"):
        for version in client.search_model_versions(f"name = '{model}' and run_id = '{run_id}'"):
            if version.source == source:
                return str(version.version)
    else:
        client.create_registered_model(model, description="talbench: the nightly retrained production model")
    # described and tagged as the experiment's own version of the same logged model (evaluate's)
    same = [v for v in client.search_model_versions(f"run_id = '{run_id}'") if v.source == source and v.name != model]
    described = {"description": same[0].description, "tags": same[0].tags} if same else {}
    return str(client.create_model_version(model, source, run_id=run_id, **described).version)


def champion(model: str) -> str | None:
    """The version the alias `champion` points at, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return str(tracking_client().get_model_version_by_alias(model, CHAMPION).version)
    except MlflowException:
        return None


def promote(model: str, version: str, challenger_score: float, margin: float,
            against: Callable[[str], Evidence], tags: Mapping[str, str] | None = None) -> Decision:
    """Make `version` the challenger, compare it with the champion (`against(champion version)`, on
    the same test split) and move `champion` to it when `decide` says so.

    The decision is recorded on the version before the aliases move: a retry finds it there and
    only finishes moving the aliases.
    """
    client = tracking_client()
    recorded = client.get_model_version(model, version).tags
    if TAG + "decision" in recorded:
        decision = _recorded(model, version, recorded)
    else:
        current = champion(model)
        evidence = None if current is None else against(current)
        promoted, reason = decide(evidence, margin)
        decision = Decision(model, version, promoted, challenger_score,
                            None if evidence is None else evidence.champion_score, current,
                            None if evidence is None else evidence.difference,
                            None if evidence is None else evidence.interval,
                            None if evidence is None else evidence.level, margin, reason)
        for key, value in decision.tags(tags).items():
            client.set_model_version_tag(model, version, key, value)
    client.set_registered_model_alias(model, CHALLENGER, version)
    if decision.promoted:
        client.set_registered_model_alias(model, CHAMPION, version)
    return decision


def _recorded(model: str, version: str, tags: Mapping[str, str]) -> Decision:
    def number(key: str) -> float | None:
        return float(tags[TAG + key]) if tags.get(TAG + key) else None

    low, high = number("interval_low"), number("interval_high")
    return Decision(model, version, tags[TAG + "decision"] == "promoted", number("challenger_score") or 0.0,
                    number("champion_score"), tags.get(TAG + "champion_version") or None, number("difference"),
                    None if low is None or high is None else (low, high), number("level"),
                    number("margin") or 0.0, tags.get(TAG + "reason", ""))

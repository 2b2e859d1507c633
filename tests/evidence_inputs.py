"""Constructed evidence for the decision tests: the posterior columns of a votes row from the
ensemble's probabilities of a few classes (the rest of the mass spread evenly over the others),
through the pipeline's own closed form (`stages.method.posterior.label_posterior`)."""

from __future__ import annotations

import numpy as np

from stages.contracts.formats import NUM_CLASSES
from stages.method.decisions import Rows
from stages.method.posterior import label_posterior

NOISE = 0.1
"""The label-noise rate the constructed rows assume (the default `vote.evidence.noise_ceiling`)."""


def ensemble_q(ensemble: dict[int, float]) -> np.ndarray:
    """(K,) the ensemble's probabilities: the given classes, the rest spread evenly."""
    q = np.full(NUM_CLASSES, max(0.0, 1.0 - sum(ensemble.values())) / (NUM_CLASSES - len(ensemble)))
    for c, p in ensemble.items():
        q[c] = p
    return q


def posterior_fields(label: int, ensemble: dict[int, float], noise: float = NOISE) -> dict:
    """The votes columns label_posterior, best_other, best_other_posterior and noise_rate."""
    own, best, best_post = label_posterior(ensemble_q(ensemble)[None, :], np.array([label]), noise)
    return {
        "label_posterior": float(own[0]),
        "best_other": int(best[0]),
        "best_other_posterior": float(best_post[0]),
        "noise_rate": noise,
    }


def rows(*specs: dict) -> Rows:
    """Rows from dicts: label, ensemble {class: mean prob}, candidates, misses, exemptions,
    noise (default NOISE); the posterior columns follow from the ensemble."""

    def top(spec: dict) -> list[int]:
        return sorted(spec["ensemble"], key=lambda c: (-spec["ensemble"][c], c))[:5]

    def padded(values: list, fill: float) -> list:
        return values + [fill] * (5 - len(values))

    fields = [posterior_fields(s["label"], s["ensemble"], s.get("noise", NOISE)) for s in specs]
    return Rows(
        label=np.array([s["label"] for s in specs]),
        candidates=_objects([np.array(s.get("candidates", ()), dtype=np.int64) for s in specs]),
        misses=np.array([s.get("misses", 0) for s in specs]),
        exemptions=np.array([s.get("exemptions", 0) for s in specs]),
        ensemble_top=np.array([padded(top(s), 999) for s in specs]),
        ensemble_probs=np.array([padded([s["ensemble"][c] for c in top(s)], 0.0) for s in specs]),
        label_prob=np.array([s["ensemble"].get(s["label"], 0.0) for s in specs]),
        model_top1=_objects([np.array([top(s)[0]] * 5) for s in specs]),
        label_posterior=np.array([f["label_posterior"] for f in fields]),
        best_other=np.array([f["best_other"] for f in fields]),
        best_other_posterior=np.array([f["best_other_posterior"] for f in fields]),
        noise=np.array([f["noise_rate"] for f in fields]),
    )


def _objects(items: list) -> np.ndarray:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out

"""The papers' claims, as each architecture declares them (`leanbert.Architecture.claims`), for the benchmarks that
judge them.

Every benchmark's `claims(results)` judges the claims declared for it (`declared`): in the order of
`leanbert.ARCHITECTURES`, then of each claim's `order`, one row of BENCHMARKS.md each. A claim that names a metric
the benchmark does not judge, a variant its architecture does not declare or a model no architecture declares
raises `ValueError` there, and `report.py` refuses claims for a benchmark it does not run (`check_benchmarks`): a
declared claim is judged or stops the benchmark, never silently left out.
"""

import leanbert
from leanbert.architectures import Architecture, Claim


def paper(architecture: Architecture) -> str:
    """The paper as the claims table names it: "SymBert (arXiv 2406.06366)"."""
    return f"{architecture.name} (arXiv {architecture.arxiv})"


def default_variant(architecture: Architecture) -> str:
    return next(iter(architecture.variants))


def labels() -> list[str]:
    """Every declared model by its label ("SymBert pairwise", "SharedBert", "Shatter P=2", ...)."""
    return [architecture.variant_label(variant) for architecture in leanbert.ARCHITECTURES
            for variant in architecture.variants]


def model(architecture: Architecture, claim: Claim) -> str:
    """The label of the model a claim is about: its variant's, by default the architecture's default variant's."""
    return architecture.variant_label(default_variant(architecture) if claim.variant is None else claim.variant)


def declared(benchmark: str, metrics, against: bool = False) -> list[tuple[Architecture, Claim]]:
    """(architecture, claim) of every claim declared for `benchmark`, after checking that the benchmark can judge
    each: its metric is one of `metrics`, its variant is declared, and it names a model it is against only where
    the benchmark compares with other models than BERT (`against`) and that model is declared."""
    found = [(architecture, claim) for architecture in leanbert.ARCHITECTURES for claim in architecture.claims
             if claim.benchmark == benchmark]
    for architecture, claim in found:
        where = f"{architecture.name}'s claim {claim.text!r}"
        if claim.metric not in metrics:
            raise ValueError(f"{where}: the {benchmark} benchmark cannot judge the metric {claim.metric!r} (it judges "
                             f"{', '.join(metrics)})")
        if claim.variant is not None and claim.variant not in architecture.variants:
            raise ValueError(f"{where}: {architecture.name} declares no variant {claim.variant!r}")
        if claim.against is not None and not against:
            raise ValueError(f"{where}: the {benchmark} benchmark compares with BERT only, not with {claim.against!r}")
        if claim.against is not None and claim.against not in labels():
            raise ValueError(f"{where}: no architecture declares the model {claim.against!r} it is against (declared: "
                             f"{', '.join(labels())})")
    return sorted(found, key=lambda pair: pair[1].order)  # stable: ARCHITECTURES' order among equal orders


def bound(architecture: Architecture, claim: Claim) -> float:
    """The claim's bound, for a metric that needs one: a claim without raises `ValueError`."""
    if claim.bound is None:
        raise ValueError(f"{architecture.name}'s claim {claim.text!r}: the metric {claim.metric!r} needs a bound")
    return claim.bound


def check_benchmarks(benchmarks) -> None:
    """Raise `ValueError` for a declared claim of a benchmark not among `benchmarks` (nothing would judge it)."""
    for architecture in leanbert.ARCHITECTURES:
        for claim in architecture.claims:
            if claim.benchmark not in benchmarks:
                raise ValueError(f"{architecture.name}'s claim {claim.text!r} names the benchmark "
                                 f"{claim.benchmark!r}, which no benchmark is (they are {', '.join(benchmarks)})")

"""The schema's named choices, read from the registries that implement them (never restated here).

Names: the optimizers (``reproduce.privacy.optimizers.OPTIMIZERS``), clipping rules
(``reproduce.privacy.clipping.CLIPPING_RULES``), accountants (``reproduce.privacy.accountants``), canary
kinds (``reproduce.audit.canaries.CANARY_KINDS``); architectures (``reproduce.models.registry``) are checked
at validation (``sections.registered_architecture``), so a module may register one later. Every registry module here
imports without torch.

Per-choice settings: what a choice reads is its builder's keyword-only parameters. ``settings_models``
turns each into a frozen model whose discriminator is the choice's name, and ``settings_union`` joins
them in a Pydantic discriminated union: a resolved choice (``OptimizerConfig.resolved()``,
``ClippingConfig.resolved(...)``) holds exactly what its builder reads, so "each choice reads only its
own settings" is stated by the type. A YAML section may hold several choices' settings at once (a grid
sweeps the name over it); resolving keeps the named choice's and ignores the others.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any, Callable, Literal, Mapping, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

from reproduce.audit.canaries import CANARY_KINDS
from reproduce.privacy.accountants import ACCOUNTANTS
from reproduce.privacy.clipping import CLIPPING_RULES
from reproduce.privacy.optimizers import OPTIMIZERS

OPTIMIZER_NAMES = tuple(OPTIMIZERS)
CLIPPING_RULE_NAMES = tuple(CLIPPING_RULES)
ACCOUNTANT_NAMES = tuple(ACCOUNTANTS)
AUDIT_KINDS = tuple(CANARY_KINDS)
INPUT_CANARIES = CANARY_KINDS["input"]
GRADIENT_CANARIES = CANARY_KINDS["gradient"]


class Choice(BaseModel):
    """A resolved choice: its name (the discriminator) and what its builder reads; other keys are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    def arguments(self, *, discriminator: str) -> dict[str, Any]:
        """The builder's keyword arguments: every field but the discriminator, in the builder's order."""
        return {k: getattr(self, k) for k in type(self).model_fields if k != discriminator}


def keyword_parameters(builder: Callable) -> dict[str, Any]:
    """``builder``'s keyword-only parameters and their types, in order (a class: its constructor's).

    Annotations are evaluated one at a time in the builder's module: a return annotation such as
    ``torch.optim.Optimizer`` names a module that is imported only when the builder runs.
    """
    function = builder.__init__ if inspect.isclass(builder) else builder
    namespace = getattr(function, "__globals__", {})
    out = {}
    for name, p in inspect.signature(builder).parameters.items():
        if p.kind is inspect.Parameter.KEYWORD_ONLY:
            annotation = p.annotation
            out[name] = eval(annotation, namespace) if isinstance(annotation, str) else annotation  # noqa: S307
    return out


def settings_models(registry: Mapping[str, Callable], *, discriminator: str) -> dict[str, type[Choice]]:
    """One frozen ``Choice`` model per registered name: ``discriminator: Literal[name]`` and the builder's keywords."""
    return {
        name: create_model(
            name,
            __base__=Choice,
            __module__=__name__,
            **{discriminator: (Literal[name], name)},
            **{k: (t, ...) for k, t in keyword_parameters(builder).items()},
        )
        for name, builder in registry.items()
    }


def settings_union(models: Mapping[str, type[Choice]], *, discriminator: str) -> Any:
    """The models as one type: a union discriminated by ``discriminator``."""
    # Union over a computed tuple: X | Y cannot be spelt for a number of members known only at run time
    return Annotated[Union[tuple(models.values())], Field(discriminator=discriminator)]  # noqa: UP007


def unknown_settings(models: Mapping[str, type[Choice]], *, offered: set[str], section: str) -> list[str]:
    """One line per setting a choice reads that ``section`` does not offer (a registry ahead of the schema)."""
    return [
        f"{name} reads {field!r}, which {section} has no field for"
        for name, model in models.items()
        for field in model.model_fields
        if field not in offered
    ]


OPTIMIZER_SETTINGS = settings_models(OPTIMIZERS, discriminator="name")
OptimizerSettings = settings_union(OPTIMIZER_SETTINGS, discriminator="name")
CLIPPING_SETTINGS = settings_models(CLIPPING_RULES, discriminator="rule")
ClippingSettings = settings_union(CLIPPING_SETTINGS, discriminator="rule")

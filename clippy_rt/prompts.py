"""Prompt sets: classes, each with one or more prompts (synonyms) whose max is the class logit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence, Tuple, Union

import torch

from .config import format_prompt
from .errors import InputError

PromptsLike = Union[Sequence[str], Mapping[str, Sequence[str]], "PromptSet"]

# The template that leaves prompts verbatim (``template="{}"``, ``--no-template``).
NO_TEMPLATE = "{}"


@dataclass(frozen=True)
class PromptSet:
    """``classes[i]`` is a class name; ``prompts`` is every prompt text, flattened, and
    ``prompt_class[j]`` the class index of prompt ``j``."""

    classes: Tuple[str, ...]
    prompts: Tuple[str, ...]
    prompt_class: Tuple[int, ...]

    @property
    def has_synonyms(self) -> bool:
        return len(self.prompts) != len(self.classes)

    def class_index(self) -> torch.Tensor:
        """int64 [P]: the class of each prompt."""
        return torch.tensor(self.prompt_class, dtype=torch.long)

    def class_map(self, rows: Optional[int] = None) -> torch.Tensor:
        """int64 [rows]: the class of each prompt, then prompt 0's class for the padding rows
        up to ``rows`` (a text matrix padded with copies of prompt 0's embedding)."""
        owners = list(self.prompt_class)
        owners += owners[:1] * ((rows or len(owners)) - len(owners))
        return torch.tensor(owners, dtype=torch.long)


def _check_text(text: object, what: str) -> str:
    if not isinstance(text, str):
        raise InputError(f"{what} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise InputError(f"{what} is empty")
    return text.strip()


def check_template(template: Optional[str]) -> None:
    """None, or a string with one ``{}`` where the prompt goes; else InputError."""
    if template is None:
        return
    if not isinstance(template, str):
        raise InputError(f"template must be a string holding '{{}}', got {type(template).__name__}")
    if "{}" not in template:
        raise InputError(f"template {template!r} has no '{{}}' where the prompt goes, "
                         f"e.g. 'a photo of {{article}} {{}}'")


def resolve_template(template: Optional[str], model_template: Optional[str]) -> Optional[str]:
    """The template a call fills its prompts into: ``template`` when given (``"{}"``: the
    prompts verbatim), else the model's own (its config's ``prompt_template``)."""
    return model_template if template is None else template


def model_prompt_set(prompts: PromptsLike, template: Optional[str], model_template: Optional[str]) -> PromptSet:
    """The prompt set of an engine call: lists and mappings are filled into ``template``,
    or the model's template when ``template`` is None; a PromptSet is taken as built (its
    template already applied) unless ``template`` is given."""
    if template is None and isinstance(prompts, PromptSet):
        return prompts
    return build_prompt_set(prompts, resolve_template(template, model_template))


def build_prompt_set(prompts: PromptsLike, template: Optional[str] = None) -> PromptSet:
    """Normalise a list of prompts, a ``{class: [prompt, ...]}`` mapping, or a PromptSet.

    With ``template`` (e.g. ``"a photo of {article} {}"``) each prompt is filled into it.
    A PromptSet's prompts are filled in as well. Raises InputError for an empty set, an
    empty prompt or class, a duplicate class, one prompt in two classes (ties go to the
    first class, so the second could never win on it), or a template that is not a string
    holding ``{}``.
    """
    check_template(template)
    if isinstance(prompts, PromptSet):
        if template is None:
            return prompts
        return PromptSet(prompts.classes, tuple(format_prompt(template, p) for p in prompts.prompts),
                         prompts.prompt_class)
    if isinstance(prompts, str):
        raise InputError("prompts must be a list of strings or a {class: [prompts]} mapping, got one string; "
                         "wrap it in a list")
    if isinstance(prompts, Mapping):
        items = [(_check_text(name, "class name"), value) for name, value in prompts.items()]
    else:
        try:
            items = [(_check_text(p, f"prompt {i}"), [p]) for i, p in enumerate(prompts)]
        except TypeError:
            raise InputError(f"prompts must be a list of strings, got {type(prompts).__name__}") from None
    if not items:
        raise InputError("the prompt list is empty: give at least one prompt")
    classes, texts, owners = [], [], []
    seen = set()
    prompt_owner = {}
    for index, (name, synonyms) in enumerate(items):
        if name in seen:
            raise InputError(f"duplicate class {name!r}: each class may appear once "
                             f"(put synonyms in one class: {{'{name}': [...]}} or 'a|b' on the CLI)")
        seen.add(name)
        if isinstance(synonyms, str):
            synonyms = [synonyms]
        elif isinstance(synonyms, Mapping) or not isinstance(synonyms, Iterable):
            raise InputError(f"class {name!r} must map to a list of prompts, got {type(synonyms).__name__}")
        synonyms = [_check_text(s, f"prompt for class {name!r}") for s in synonyms]
        if not synonyms:
            raise InputError(f"class {name!r} has no prompts")
        classes.append(name)
        for text in synonyms:
            text = format_prompt(template, text) if template is not None else text
            other = prompt_owner.setdefault(text, name)
            if other != name:
                raise InputError(f"prompt {text!r} is in classes {other!r} and {name!r}: the two would tie "
                                 f"and {name!r} could never win; keep it in one class")
            texts.append(text)
            owners.append(index)
    return PromptSet(tuple(classes), tuple(texts), tuple(owners))


def parse_cli_prompts(spec: str) -> PromptSet:
    """``"background|sky|wall,cat,dog"`` -> classes background (3 prompts), cat, dog.

    The class is named by its first synonym, or, written ``name=prompt|prompt``, by ``name``
    without ``name`` being a prompt (``"background=a grassy background|a sky background"``).
    """
    classes = {}
    for index, group in enumerate(spec.split(",")):
        name = None
        if "=" in group:
            name, group = (part.strip() for part in group.split("=", 1))
            if not name:
                raise InputError(f"--prompts: entry {index} has an empty class name before '='")
        synonyms = [s.strip() for s in group.split("|")]
        if not any(synonyms):
            raise InputError(f"--prompts: entry {index} is empty in {spec!r}")
        if not all(synonyms):
            raise InputError(f"--prompts: entry {index} ({group!r}) has an empty synonym")
        name = synonyms[0] if name is None else name
        if name in classes:
            raise InputError(f"--prompts: duplicate class {name!r}")
        classes[name] = synonyms
    return build_prompt_set(classes)


def class_logits(prompt_logits: torch.Tensor, prompt_set: PromptSet) -> torch.Tensor:
    """[..., P] prompt logits -> [..., C] class logits, the max over each class's prompts."""
    if not prompt_set.has_synonyms:
        return prompt_logits
    index = prompt_set.class_index().to(prompt_logits.device)
    shape = (*prompt_logits.shape[:-1], len(prompt_set.classes))
    out = torch.full(shape, float("-inf"), dtype=prompt_logits.dtype, device=prompt_logits.device)
    return out.scatter_reduce(-1, index.expand_as(prompt_logits), prompt_logits, reduce="amax")

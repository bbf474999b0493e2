"""A router's files: ``model.safetensors`` + ``config.json`` through huggingface_hub's ``PyTorchModelHubMixin``
(``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``), checked on the way in and out.

``RouterFiles`` sits between ``HarmoniCaRouter`` and the hub mixin in the class's bases: its methods call the
mixin's and add the config (what the router was made for) and the checks.
"""

from __future__ import annotations

import contextlib
import io
import json

from .layout import RouterError


class RouterFiles:
    """Saving and loading for ``HarmoniCaRouter`` and ``NoiseLevelRouter`` (which provide ``validate``,
    ``config_dict`` and ``kind``). ``HarmoniCaRouter.from_pretrained`` loads either kind, by the ``kind`` its
    config.json records (absent: a step-indexed router)."""

    kind = "step"

    # what the router serves, from its layout (both kinds hold a ``RouterLayout``)
    @property
    def num_blocks(self) -> int:
        return self.layout.num_blocks

    @property
    def num_slots(self) -> int:
        return self.layout.num_slots

    @property
    def pipeline_class(self) -> str:
        return self.layout.pipeline_class

    @property
    def transformer_class(self) -> str:
        return self.layout.transformer_class

    @property
    def scheduler_class(self) -> str:
        return self.layout.scheduler_class

    @property
    def config_dict(self) -> dict:
        config = dict(
            num_steps=self.num_steps,
            blocks=self.layout.groups,
            pipeline_class=self.pipeline_class,
            transformer_class=self.transformer_class,
            scheduler_class=self.scheduler_class,
            threshold=self.threshold,
            training=self.training_info,
        )
        if self.timesteps is not None:
            config["timesteps"] = self.timesteps
        if self.history != 1:
            config["history"] = self.history
        if self.layout.units:
            config["units"] = [list(u) for u in self.layout.units]
        return config

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Write ``model.safetensors``, ``config.json`` and the model card ``README.md`` (see huggingface_hub's
        ModelHubMixin). A card written by an earlier save (this one's or the stock mixin card) is replaced, so that
        it describes the router now in the folder; a card written by hand is kept, as the mixin does."""
        from pathlib import Path

        self.validate()
        kwargs.setdefault("config", self.config_dict)
        card = Path(save_directory) / "README.md"
        if card.is_file() and any(mark in card.read_text(errors="replace") for mark in GENERATED_CARD_MARKS):
            card.unlink()
        return super().save_pretrained(save_directory, *args, **kwargs)

    def generate_model_card(self, *args, **kwargs):
        """The router's model card: what it serves, its schedule at its threshold, how to use it and, for a
        trained router, how it was trained (the hub mixin's card would say "More Information Needed")."""
        from huggingface_hub import ModelCard

        return ModelCard(f"---\n{self._hub_mixin_info.model_card_data.to_yaml()}\n---\n\n{model_card_text(self)}")

    def push_to_hub(self, repo_id: str, *args, **kwargs):
        self.validate()
        kwargs.setdefault("config", self.config_dict)
        return super().push_to_hub(repo_id, *args, **kwargs)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, config: dict | None = None, **kwargs):
        kind = (config or {}).get("kind", "step") if isinstance(config, dict) else "step"
        if kind != cls.kind:
            other = ROUTER_KINDS.get(kind)
            if other is None or cls.kind != "step":
                raise RouterError(f"the router at {model_id} is a {kind!r} router, not a {cls.kind!r} one; load it with "
                                  "HarmoniCaRouter.from_pretrained or harmonica.enable, which take every kind")
            own = set(cls._hub_mixin_init_parameters)  # the config values the hub mixin added for this class
            hub = {k: v for k, v in kwargs.items() if k not in own}
            params = {k: config[k] for k in other._hub_mixin_init_parameters if k in config}
            return other._from_pretrained(model_id=model_id, config=config, **hub, **params)
        check_config(config, model_id, cls.CONFIG_KEYS)
        with contextlib.redirect_stdout(io.StringIO()):  # the hub mixin prints "Loading weights from local directory"
            return super()._from_pretrained(model_id=model_id, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs) -> "RouterFiles":
        """Load a router folder or hub repo (safetensors only) and check its config and values."""
        from safetensors import SafetensorError

        kwargs.setdefault("strict", True)  # a weight missing from the file is an error, not a default
        try:
            router = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except (SafetensorError, json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RouterError(
                f"cannot read the router at {pretrained_model_name_or_path}: {err}. The file is truncated or "
                "not a harmonica router; save it again with HarmoniCaRouter.save_pretrained."
            ) from err
        except TypeError as err:  # config.json lacks fields
            raise RouterError(
                f"the config.json of the router at {pretrained_model_name_or_path} is not a harmonica router "
                f"config ({err})"
            ) from err
        except RuntimeError as err:  # safetensors content does not match the config's shape
            raise RouterError(
                f"the weights of the router at {pretrained_model_name_or_path} do not match its config.json: {err}"
            ) from err
        return router.validate()


CARD_MARK = "<!-- harmonica router card: written by HarmoniCaRouter.save_pretrained from config.json -->"
GENERATED_CARD_MARKS = (CARD_MARK, "This model has been pushed to the Hub using the [PytorchModelHubMixin]")


def _family_of(pipeline_class: str) -> str | None:
    from ..families import FAMILIES

    return next((family.name for family in FAMILIES if pipeline_class in family.pipelines), None)


def model_card_text(router) -> str:
    """The body of a router's model card (markdown), from its config."""
    family = _family_of(router.pipeline_class)
    served = f"`{router.pipeline_class}`" + (f" (harmonica family `{family}`)" if family else "")
    noise_level = router.kind == "noise-level"
    forecast = ("a rebuilt branch reuses its last computed output" if router.history == 1 else
                f"a rebuilt branch is forecast from its last {router.history} computed outputs with learned "
                "coefficients")
    lines = [
        CARD_MARK,
        "",
        f"# HarmoniCa router for {router.pipeline_class}",
        "",
        "A learned feature-cache schedule for [harmonica](https://github.com/harmonica-cache/harmonica): at each "
        "sampling step, each branch (attention, feed-forward, ...) of each transformer block is either computed or "
        "rebuilt from its cached outputs, as decided by this router before sampling starts.",
        "",
        "| | |",
        "|---|---|",
        f"| pipeline | {served} |",
        f"| transformer | `{router.transformer_class}`: {router.layout.describe_blocks()} "
        f"({router.num_slots} branches) |",
        *([f"| schedulers | {', '.join(f'`{s}`' for s in router.schedulers)}, trained on {router.step_range[0]} to "
           f"{router.step_range[1]} steps: any step count (its scores are functions of the noise level) |",
           f"| threshold | {router.threshold:.4g}, or a speed per call: `harmonica.enable(pipe, router, speedup=2.0)` |"]
          if noise_level else
          [f"| scheduler | `{router.scheduler_class}`, {router.num_steps} steps (call with "
           f"`num_inference_steps={router.num_steps}`) |",
           f"| threshold | {router.threshold:.4g} (a branch is computed where its score exceeds it) |",
           f"| cache usage at that threshold | {router.cache_usage():.1%} of the branch computations are rebuilt from "
           "the cache |"]),
        f"| history | {router.history}: {forecast} |",
        "",
        "## Use",
        "",
        "```python",
        "from harmonica import HarmoniCaPipeline",
        "",
        f'pipe = HarmoniCaPipeline.from_pretrained("<{router.pipeline_class} folder or hub id>", '
        'router="<this router\'s folder or hub id>")',
        "images = pipe(...).images" if noise_level else f"images = pipe(..., num_inference_steps={router.num_steps}).images",
        "```",
        "",
        "A pipeline folder holding this router in `router/` needs no `router=` argument. "
        "`threshold=` overrides the threshold above (higher: more reuse, faster).",
    ]
    training = training_summary(router.training_info)
    if training:
        lines += ["", "## Training", "", *training]
    return "\n".join(lines) + "\n"


def training_summary(info: dict) -> list[str]:
    """Markdown lines on how a router was made, from its ``training_info`` (empty when it records nothing)."""
    config = info.get("config") or {}
    lines = []
    if "objective" in info:
        lines.append(f"* objective: {info['objective']}")
    if "trajectories" in config:
        lines.append(f"* {config['trajectories']} trajectories ({info.get('iterations', '?')} iterations), batch "
                     f"{config.get('batch_size', '?')}, guidance scale {config.get('guidance_scale', '?')}")
    if config.get("target_usage") is not None:
        lines.append(f"* trained at a target cache usage of {config['target_usage']:.0%}")
    for key, what in (("init", "initial schedule"), ("forecast_init", "initial forecast"), ("lr", "learning rate"),
                      ("beta", "cache-use penalty beta")):
        if key in config:
            lines.append(f"* {what}: {config[key]}")
    moved = info.get("moved")
    if moved and "decisions" in moved:
        lines.append(f"* moved from its initial schedule: {moved['decisions_changed']} of {moved['decisions']} "
                     "compute/rebuild decisions changed")
    for key, value in info.items():
        if key not in ("objective", "config", "iterations", "lambda", "moved", "transformer_weights", "expert_weights"):
            lines.append(f"* {key}: {value}")
    return lines


CONFIG_KEYS = ("num_steps", "blocks", "pipeline_class", "transformer_class", "scheduler_class", "threshold",
               "timesteps", "history", "units", "training")
OLD_FORMAT_KEYS = ("num_blocks", "branches")  # harmonica 0.1's first format: one block list
CLASS_KEYS = ("pipeline_class", "transformer_class", "scheduler_class")
ROUTER_KINDS: dict[str, type] = {}  # kind -> class, filled by the router classes (harmonica.router)


def check_config(config: dict | None, where, keys=CONFIG_KEYS) -> None:
    """Refuse a router config.json with unknown keys or without the classes it was made for (an empty
    class name would switch that compatibility check off)."""
    if config is None:
        raise RouterError(f"the router at {where} has no config.json")
    if not isinstance(config, dict):
        raise RouterError(f"the config.json of the router at {where} is not a JSON object")
    if any(k in config for k in OLD_FORMAT_KEYS) and "blocks" not in config:
        raise RouterError(
            f"the router at {where} was saved by harmonica 0.1 in its first format (num_blocks + branches), which "
            "this version no longer reads: load and save it again with harmonica 0.1.0 "
            "(HarmoniCaRouter.from_pretrained(path).save_pretrained(path)), or retrain it"
        )
    unknown = sorted(set(config) - set(keys))
    if unknown:
        raise RouterError(
            f"the config.json of the router at {where} has unknown keys {unknown} (known: {', '.join(keys)}); "
            "it was not written by this version of harmonica or was edited by hand"
        )
    empty = [k for k in CLASS_KEYS if k in keys and (not isinstance(config.get(k), str) or not config.get(k))]
    if empty:
        raise RouterError(
            f"the config.json of the router at {where} does not name the {', '.join(empty)} it was made for; "
            "a router file must record them (HarmoniCaRouter.for_layout(harmonica.describe(pipe), ...) does)"
        )

"""A router's files: ``model.safetensors`` + ``config.json`` through huggingface_hub's ``PyTorchModelHubMixin``
(``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``), checked on the way in and out.

``RouterFiles`` sits between ``HarmoniCaRouter`` and the hub mixin in the class's bases: its methods call the
mixin's and add the config (what the router was made for) and the checks.
"""

from __future__ import annotations

import json

from .layout import RouterError


class RouterFiles:
    """Saving and loading for ``HarmoniCaRouter`` and ``NoiseLevelRouter`` (which provide ``validate``,
    ``config_dict`` and ``kind``). ``HarmoniCaRouter.from_pretrained`` loads either kind, by the ``kind`` its
    config.json records (absent: a step-indexed router)."""

    kind = "step"

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
        return config

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Write ``model.safetensors`` and ``config.json`` (see huggingface_hub's ModelHubMixin)."""
        self.validate()
        kwargs.setdefault("config", self.config_dict)
        return super().save_pretrained(save_directory, *args, **kwargs)

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


CONFIG_KEYS = ("num_steps", "blocks", "pipeline_class", "transformer_class", "scheduler_class", "threshold",
               "timesteps", "history", "training")
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

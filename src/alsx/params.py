"""The scikit-learn estimator protocol for ``alsx.ALS``: parameters read from ``__init__``'s
signature (``get_params`` / ``set_params``, so ``sklearn.base.clone`` works), a repr of the
changed ones, and pickling without the training engine's device state."""

from __future__ import annotations

import inspect
from typing import Any

# Learned attributes tied to this process's devices: not pickled (None after unpickling).
DEVICE_STATE = ("engine_", "state_", "eval_topk_")
CACHES = ("_serving_cache",)  # derived from the tables, rebuilt on demand


class Params:
    """Mixin: ``__init__`` stores each argument under its own name and does nothing else."""

    @classmethod
    def _param_names(cls) -> list[str]:
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's arguments by name (``deep`` is accepted for scikit-learn; nothing nests)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> Any:
        """Sets constructor arguments by name (checked at the next ``fit``); returns self."""
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"invalid parameter {name!r} for {type(self).__name__}; valid parameters are {valid}")
            setattr(self, name, value)
        return self

    def __sklearn_tags__(self) -> Any:
        """What scikit-learn's checks (``check_is_fitted``) ask of an estimator; only they call this."""
        from sklearn.utils import InputTags, Tags, TargetTags  # optional: scikit-learn is not a dependency

        return Tags(estimator_type=None, target_tags=TargetTags(required=False), input_tags=InputTags(sparse=True))

    def __repr__(self) -> str:
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
        changed = [f"{k}={v!r}" for k, v in self.get_params().items() if not (v is defaults[k] or v == defaults[k])]
        return f"{type(self).__name__}({', '.join(changed)})"

    def __getstate__(self) -> dict:
        """Parameters, tables, vocabularies, seen entries and history; not the engine and device state
        (``engine_``, ``state_``, ``eval_topk_`` belong to this process's devices: None after unpickling;
        serving does not need them).

        Raises:
          TypeError: the tables are on the devices only (``fit(gather_tables=False)``).
        """
        if "row_embeddings_" in self.__dict__ and self.row_embeddings_ is None:
            raise TypeError(
                f"this {type(self).__name__} was fitted with gather_tables=False: its tables are on "
                "the devices only and do not pickle; write them with save() (ShardedEngine.write_tables)"
            )
        return {k: v for k, v in self.__dict__.items() if k not in DEVICE_STATE + CACHES}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if "row_embeddings_" in state:
            self.engine_ = self.state_ = self.eval_topk_ = None

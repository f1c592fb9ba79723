"""Random-number-generator states of every process, in a form that checkpoints can hold.

A resumed run continues the main process's randomness (drop path) where the checkpoint left it;
the augmentations and masks depend only on each sample's stream position (``dinov2.data.seeding``),
so with or without loader workers a resumed run ends with the same weights as a run that was never
interrupted.

States are stored as tensors, integers and lists only, so checkpoints stay loadable with
``weights_only`` loading (``dinov2.checkpoint.load_torch_file``).
"""

import logging
import random
from typing import Any, Dict, List

import numpy as np
import torch

from dinov2 import distributed

logger = logging.getLogger("dinov2")


def get_rng_state() -> Dict[str, Any]:
    """This process's python, numpy, torch (and CUDA, when initialised) generator states.

    Returns:
        A dict of tensors, ints, floats and lists (``weights_only``-loadable).
    """
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "position": int(position),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore the states returned by ``get_rng_state``.

    Raises:
        ValueError: ``state`` lacks one of the python, numpy or torch states.
    """
    missing = [k for k in ("python", "numpy", "torch") if k not in state]
    if missing:
        raise ValueError(f"random generator state lacks {', '.join(missing)}")
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["internal"].tolist()), py["gauss"]))
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["kind"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["position"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def gather_rng_states() -> List[Dict[str, Any]]:
    """Every rank's ``get_rng_state()``, in rank order (collective when torch.distributed is initialised)."""
    local = get_rng_state()
    if not distributed.is_enabled():
        return [local]
    states: List[Any] = [None] * distributed.get_global_size()
    torch.distributed.all_gather_object(states, local)
    return states


def restore_rank_rng_state(states: List[Dict[str, Any]], source: str) -> bool:
    """Restore this rank's entry of ``gather_rng_states()`` output saved in ``source``.

    Returns:
        True when restored; False (with a warning) when the checkpoint was written by another
        number of processes, in which case the generators keep their seeded state.
    """
    rank, world_size = distributed.get_global_rank(), distributed.get_global_size()
    if len(states) != world_size:
        logger.warning(
            f"{source} holds random states of {len(states)} process(es), this run has {world_size}: "
            "the random generators start from train.seed instead (data order is still resumed)"
        )
        return False
    set_rng_state(states[rank])
    return True

"""The clients' personal models at the end of a simulated run: ``RUN/personal/client_NNN/``, one plain
PEFT adapter folder per client (``fedit eval/generate/chat/export --client K`` use it), and
``RUN/personal/personal.json`` (the method, what each folder holds).

- fedsa: the global A with the client's own B (a client never sampled keeps the initial B);
- dual: global + local adapter as one rank-2r adapter (fedit.model.dual.concat_state: exact);
- finetune: the final global adapter after --personal-steps local steps on the client's own training
  records (seeded per client, so a rerun gives the same adapters).

The personal parts come from the client state the simulation keeps and checkpoints
(fedit.client.personal); they are written here and nowhere else.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from fedit.client.job import ClientJob, run_job
from fedit.client.personal import DUAL_LOCAL, FEDSA_B, initial_local, is_b
from fedit.config import Config
from fedit.data.prompts import TokenizedExample
from fedit.fileio import apply_umask, atomic_write_text, make_temp_dir, remove_stale_temporaries, replace_dir
from fedit.model import AdapterState, adapter_config, get_adapter_state, write_adapter_files
from fedit.model.dual import concat_config, concat_state

logger = logging.getLogger(__name__)

PERSONAL_DIR = "personal"
INDEX = "personal.json"


def client_folder(run: Path, client_id: int) -> Path:
    return Path(run) / PERSONAL_DIR / f"client_{client_id:03d}"


def personal_states(cfg: Config, global_state: AdapterState, client_states: Mapping[int, Mapping[str, Any]],
                    num_clients: int, finetune: Callable[[int], AdapterState] | None = None
                    ) -> dict[int, tuple[AdapterState, AdapterState | None]]:
    """{client: (adapter, local adapter or None)}: what each client's personal model is."""
    mode = cfg.personalization.personalization
    out: dict[int, tuple[AdapterState, AdapterState | None]] = {}
    for cid in range(num_clients):
        own = client_states.get(cid, {})
        if mode == "fedsa":
            out[cid] = ({**global_state, **{k: v for k, v in own.get(FEDSA_B, {}).items() if is_b(k)}}, None)
        elif mode == "dual":
            local = own.get(DUAL_LOCAL) or initial_local(global_state, cfg.federation.seed, cid)
            out[cid] = (global_state, local)
        elif mode == "finetune" and finetune is not None:
            out[cid] = (finetune(cid), None)
    return out


def finetuner(trainer: Any, cfg: Config, global_state: AdapterState,
              data: Callable[[int], Sequence[TokenizedExample]]) -> Callable[[int], AdapterState]:
    """finetune: client k's --personal-steps on its own records, from the final global adapter."""
    def tune(cid: int) -> AdapterState:
        examples = data(cid)
        if not examples:
            return global_state
        job = ClientJob(cid, cfg.federation.rounds + 1, global_state,
                        {"local_steps": cfg.personalization.personal_steps})
        update, _ = run_job(trainer, job, examples, cfg.train, seed=cfg.federation.seed)
        return update.state
    return tune


def write_personal(run: Path, cfg: Config, lora_config: Any,
                   states: Mapping[int, tuple[AdapterState, AdapterState | None]]) -> Path:
    """Every client's personal adapter under ``RUN/personal``."""
    return write_adapters(Path(run) / PERSONAL_DIR, cfg.personalization.personalization, lora_config, states)


def node_personal(folder: Path, bench: Any, job: Any, update: Any, state: Mapping[str, Any]) -> Path:
    """A Flower node's personal adapter after its round, in its own folder (``personal-dir``): the
    adapter it just trained (fedsa: the A it sent with its own B; dual: the global adapter it trained
    with its local adapter, as one rank-2r adapter). Nothing of it is in the reply."""
    trained = get_adapter_state(bench.model)   # the resident adapter holds what the node trained
    mode = str(job.config["personalization"])
    local = state.get(DUAL_LOCAL) if mode == "dual" else None
    return write_adapters(Path(folder), mode, adapter_config(bench.model, bench.base.path),
                          {job.client_id: (trained, local)})


def write_adapters(target: Path, mode: str, lora_config: Any,
                   states: Mapping[int, tuple[AdapterState, AdapterState | None]]) -> Path:
    """``target/client_NNN`` per client and ``target/personal.json`` (written aside, then renamed)."""
    remove_stale_temporaries(target.parent)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(target)
    try:
        for cid, (state, local) in sorted(states.items()):
            folder = tmp / client_folder(Path("."), cid).name
            folder.mkdir()
            if local is None:
                write_adapter_files(folder, lora_config, state)
            else:
                config = concat_config(lora_config)
                write_adapter_files(folder, config, concat_state(state, local))
        index = {"personalization": mode, "clients": sorted(states),
                 "holds": {"fedsa": "the global A with the client's own B",
                           "dual": "global + local adapter as one adapter of twice the rank (alpha doubled)",
                           "finetune": "the final global adapter after --personal-steps local steps"}[mode]}
        atomic_write_text(tmp / INDEX, json.dumps(index, indent=2) + "\n")
        apply_umask(tmp)
        replace_dir(tmp, target)   # the old folder goes only once the new one is in place
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("personal adapters of %d clients written to %s", len(states), target)
    return target

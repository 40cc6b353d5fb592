"""Client side: one client job (fedit.client.job) trained on a resident base model (fedit.client.train)
by the one step loop (fedit.client.trainer) and its engines (fedit.client.engines)."""

from fedit.client.job import ClientJob, ClientState, ClientUpdate, run_job
from fedit.client.runs import client_seed
from fedit.client.train import LocalTrainer

__all__ = ["ClientJob", "ClientState", "ClientUpdate", "LocalTrainer", "client_seed", "run_job"]

"""Client side: one client job (fedit.client.job) trained on a resident base model (fedit.client.train)."""

from fedit.client.job import ClientJob, ClientState, ClientUpdate, run_job
from fedit.client.train import LocalTrainer, client_seed

__all__ = ["ClientJob", "ClientState", "ClientUpdate", "LocalTrainer", "client_seed", "run_job"]

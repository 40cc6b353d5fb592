"""Client side: local LoRA training of one client at a time on a resident base model."""

from fedit.client.train import ClientUpdate, LocalTrainer, client_seed

__all__ = ["ClientUpdate", "LocalTrainer", "client_seed"]

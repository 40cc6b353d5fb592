"""Personalization methods: each client keeps a part of the model that never leaves it
(fedsa: its LoRA B; dual: a whole local adapter; finetune: local steps after the federation)."""

"""``fedit export``: a tuned model as a plain transformers folder (adapter merged into the base) or a
portable PEFT adapter, with tokenizer, chat template, generation config and a model card; optionally
uploaded to the Hugging Face hub. Torch-free at import (the ``fedit`` parser imports the CLI)."""

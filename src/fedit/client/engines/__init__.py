"""How a pass of local training is computed: the peft engine and the fused engine (see base.py)."""

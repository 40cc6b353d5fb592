"""Evaluation: held-out response loss / perplexity per category, and greedy generation."""

from fedit.eval.generate import generate_answers
from fedit.eval.loss import evaluate_loss, per_example_losses, summarize_losses

__all__ = ["evaluate_loss", "generate_answers", "per_example_losses", "summarize_losses"]

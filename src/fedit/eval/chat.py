"""``fedit chat``: talk to a tuned model in the terminal.

The conversation is rendered with the model's chat template (or Alpaca blocks with
``--template alpaca``) exactly as multi-turn training data is, answers stream as they are
generated, and the whole history goes into every turn. Commands: ``/reset`` (forget the
conversation), ``/exit`` or ``/quit`` (also Ctrl-D), ``/help``. Ctrl-C stops the answer being
written; at the prompt it quits. Answers go to stdout, everything else to stderr, so
``fedit chat < questions.txt > answers.txt`` works.
"""

from __future__ import annotations

import sys
from typing import TextIO

from fedit.config import SamplingConfig
from fedit.data.prompts import conversation_prompt
from fedit.eval.sampling import StopFlag, stream_text, with_system

HELP = "/reset forgets the conversation, /exit (or Ctrl-D) quits, Ctrl-C stops an answer"


class ChatSession:
    """The conversation so far and how to answer its next user turn."""

    def __init__(self, bench, template: str, sampling: SamplingConfig) -> None:
        self.bench, self.template, self.sampling = bench, template, sampling
        self.history: list[tuple[str, str]] = []

    def reset(self) -> None:
        self.history = []

    def prompt(self, text: str) -> str:
        turns = with_system([*self.history, ("user", text)], self.sampling.system)
        return conversation_prompt(self.bench.tokenizer, turns, self.template)

    def reply(self, text: str, out: TextIO, stop: StopFlag | None = None) -> str:
        """Stream the answer to ``text`` into ``out``; the answer joins the history."""
        pieces = []
        for piece in stream_text(self.bench, self.prompt(text), self.sampling, stop or StopFlag()):
            pieces.append(piece)
            out.write(piece)
            out.flush()
        out.write("\n")
        answer = "".join(pieces).strip()
        self.history += [("user", text), ("assistant", answer)]
        return answer


def repl(session: ChatSession, stdin: TextIO = sys.stdin, out: TextIO = sys.stdout,
         err: TextIO = sys.stderr) -> int:
    """Read user turns until /exit, EOF or Ctrl-C at the prompt; exit status 0."""
    interactive = stdin.isatty()
    err.write(f"fedit chat: {HELP}\n")
    while True:
        try:
            if interactive:
                out.write(">>> ")
                out.flush()
            line = stdin.readline()
        except KeyboardInterrupt:
            out.write("\n")
            return 0
        if not line:  # EOF (Ctrl-D)
            if interactive:
                out.write("\n")
            return 0
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit"):
            return 0
        if text == "/reset":
            session.reset()
            err.write("(conversation cleared)\n")
            continue
        if text == "/help" or (text.startswith("/") and " " not in text):
            err.write(f"{HELP}\n" if text == "/help" else f"unknown command {text}: {HELP}\n")
            continue
        stop = StopFlag()
        try:
            session.reply(text, out, stop)
        except KeyboardInterrupt:
            stop.stop = True
            out.write("\n")
            err.write("(answer stopped)\n")

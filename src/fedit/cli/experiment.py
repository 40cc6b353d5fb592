"""``fedit experiment``: the paper's comparison (base, local-only, centralized, FedIT) as one command."""

from __future__ import annotations

import argparse
import json
import logging

from fedit.cli.args import add_config_flags, config_from_args, config_help, config_source, log_config, progress
from fedit.cli.audit import add_audit_flags, check_args, summary_lines
from fedit.experiment.settings import JUDGE_PROMPTS, ExperimentSettings, JudgeSettings

# Every default below is read from the settings dataclasses: one default per setting.
_E = ExperimentSettings()
_J = {f: JudgeSettings.__dataclass_fields__[f].default for f in JudgeSettings.__dataclass_fields__}

logger = logging.getLogger(__name__)

DEFAULT_PRESET = "cpu-small"
DESCRIPTION = ("Train and evaluate base, local-only (--local-baselines K), centralized and federated "
               "(FedIT) systems on the same partition and held-out data, for one or more seeds (--seeds); "
               "write results.json, report.md and report.html to --out. Claims are made only when a paired "
               "bootstrap interval excludes no change. Rerunning on the same --out reuses finished systems. "
               "See docs/evaluation.md.")


def _count_or_all(text: str) -> int | None:
    return None if text.lower() in ("all", "0") else int(text)


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_parser(sub) -> None:
    p = sub.add_parser("experiment", help="compare base, local-only, centralized and FedIT; write a report",
                              description=DESCRIPTION)
    p.add_argument("--config", help=config_help(DEFAULT_PRESET))
    p.add_argument("--out", required=True, help="experiment directory (systems/, results.json, report.*)")
    g = p.add_argument_group("experiment options")
    g.add_argument("--local-baselines", type=int, default=_E.local_baselines, metavar="K",
                   help="clients tuned on their own data only, chosen for different category mixes "
                        f"(default {_E.local_baselines})")
    g.add_argument("--local-budget", choices=("every-round", "expected"), default=_E.local_budget,
                   help="local-only steps: R x S_k (every-round) or R x m/N x S_k (expected) "
                        f"(default {_E.local_budget})")
    g.add_argument("--systems", type=_names, default=None, metavar="LIST",
                   help="comma list of systems to run now: base, local (all), local-1.., centralized, fedit "
                        "(default all)")
    g.add_argument("--gen-records", type=_count_or_all, default=_E.gen_records, metavar="N",
                   help="test records answered greedily per system, stratified by category (all = every one; "
                        f"default {_E.gen_records})")
    g.add_argument("--max-new-tokens", type=int, default=_E.max_new_tokens,
                   help=f"answer length limit (default {_E.max_new_tokens})")
    g.add_argument("--em-categories", type=_names, default=_E.em_categories, metavar="LIST",
                   help=f"categories scored with exact match (default {','.join(_E.em_categories)})")
    g.add_argument("--examples", type=int, default=_E.examples,
                   help=f"example responses in the report (default {_E.examples})")
    g.add_argument("--seeds", type=int, default=_E.seeds, metavar="S",
                   help="repeat every trained system with the seeds --seed .. --seed+S-1 and report mean ± sd "
                        f"(default {_E.seeds})")
    g.add_argument("--vary-partition", action="store_true", default=_E.vary_partition,
                   help="each seed also draws its own data split (default: every seed uses the first seed's)")
    g.add_argument("--bootstrap", type=int, default=_E.bootstrap, metavar="N",
                   help=f"paired bootstrap resamples behind every claim (default {_E.bootstrap})")
    g.add_argument("--confidence", type=float, default=_E.confidence,
                   help=f"confidence level of the bootstrap intervals (default {_E.confidence})")
    j = p.add_argument_group("LLM judge (optional; an OpenAI-compatible chat-completions endpoint)")
    j.add_argument("--judge-url", help="base URL, e.g. https://api.openai.com/v1 (enables the judge)")
    j.add_argument("--judge-model", help="judge model name, e.g. gpt-4o")
    j.add_argument("--judge-key-env", default=_J["key_env"],
                   help=f"environment variable holding the API key (default {_J['key_env']})")
    j.add_argument("--judge-questions", default=_J["questions"],
                   help="dolly (the generated test records) or a .jsonl of questions, e.g. Vicuna-80's "
                        "question.jsonl")
    j.add_argument("--judge-max-questions", type=int, default=None, metavar="N", help="judge at most N questions")
    j.add_argument("--judge-repeats", type=int, default=_J["repeats"],
                   help=f"verdicts per question and order (default {_J['repeats']})")
    j.add_argument("--judge-temperature", type=float, default=_J["temperature"],
                   help=f"judge sampling temperature (default {_J['temperature']})")
    j.add_argument("--judge-retries", type=int, default=_J["retries"],
                   help="retries of a request that failed with HTTP 408/429/5xx or a network error (with "
                        f"backoff or the server's Retry-After), and of an unparsable verdict (default {_J['retries']})")
    j.add_argument("--judge-prompt", choices=JUDGE_PROMPTS, default=_J["prompt"],
                   help="fedit: fedit's one-line reviewer prompt; vicuna: FastChat's reviewer prompts of the "
                        f"original Vicuna evaluation (default {_J['prompt']})")
    j.add_argument("--judge-reference", metavar="FILE", default=_J["reference"],
                   help="judge every system against these reference answers (FastChat answer file: question_id, "
                        "text; e.g. answer_gpt35.jsonl with --judge-questions eval_table_question.jsonl: the "
                        "paper's Fig. 3) instead of against FedIT")
    j.add_argument("--judge-max-tokens", type=int, default=_J["max_tokens"],
                   help=f"the judge's reply length limit (default {_J['max_tokens']})")
    j.add_argument("--judge-concurrency", type=int, default=_J["concurrency"], metavar="N",
                   help="judge requests in flight at once (threads; the scores do not depend on it; default "
                        f"{_J['concurrency']})")
    a = p.add_argument_group("privacy audit (fedit audit on the federated run; docs/privacy.md)")
    a.add_argument("--audit", action="store_true", help="audit the fedit system's run(s) and add a section to the "
                                                        "report (with --audit-canaries K: canaries too)")
    add_audit_flags(a)
    add_config_flags(p, preset=DEFAULT_PRESET)
    p.set_defaults(func=cmd_experiment)


def settings_from_args(args: argparse.Namespace):
    from fedit.errors import ConfigError
    from fedit.experiment.settings import SYSTEM_KINDS

    judge = None
    if args.judge_url or args.judge_model:
        if not (args.judge_url and args.judge_model):
            raise ConfigError("--judge-url: the judge needs both --judge-url and --judge-model")
        judge = JudgeSettings(url=args.judge_url, model=args.judge_model, key_env=args.judge_key_env,
                              questions=args.judge_questions, max_questions=args.judge_max_questions,
                              repeats=args.judge_repeats, temperature=args.judge_temperature,
                              retries=args.judge_retries, prompt=args.judge_prompt,
                              reference=args.judge_reference, max_tokens=args.judge_max_tokens,
                              concurrency=args.judge_concurrency)
    elif args.judge_reference:
        raise ConfigError("--judge-reference: needs the judge (--judge-url and --judge-model)")
    return ExperimentSettings(local_baselines=args.local_baselines, local_budget=args.local_budget,
                              systems=args.systems or list(SYSTEM_KINDS), gen_records=args.gen_records,
                              max_new_tokens=args.max_new_tokens, em_categories=args.em_categories,
                              examples=args.examples, seeds=args.seeds, vary_partition=args.vary_partition,
                              bootstrap=args.bootstrap, confidence=args.confidence, judge=judge)


def _check_judge_files(judge) -> None:
    """--judge-questions and --judge-reference read (and refused in one line) before any training."""
    from fedit.experiment.judging import load_questions, load_reference

    if judge.questions != "dolly":
        questions = load_questions(judge.questions)
        if judge.reference:
            load_reference(judge.reference, questions[:judge.max_questions] if judge.max_questions else questions)


def cmd_experiment(args: argparse.Namespace) -> int:
    from fedit.experiment.runner import run_experiment

    settings = settings_from_args(args)
    cfg = config_from_args(args, preset=DEFAULT_PRESET)
    if args.audit:
        check_args(args, canaries=False)
    if settings.judge is not None:   # the endpoint and the model name, before hours of training
        from fedit.experiment.judge_client import ChatClient

        ChatClient(settings.judge).check()
        _check_judge_files(settings.judge)
    log_config(cfg, config_source(args, DEFAULT_PRESET))
    with progress() as bars:
        summary = run_experiment(cfg, settings, args.out, progress=bars)
    if args.audit:
        from fedit.experiment.audit_report import audit_experiment

        audits = audit_experiment(args.out, seed=args.audit_seed, records=args.audit_records,
                                  references=args.audit_references, confidence=args.audit_confidence)
        summary["audit"] = {run: summary_lines(a) for run, a in audits.items()}
    print(json.dumps(summary, indent=2, default=float))
    return 0

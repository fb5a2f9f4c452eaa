"""`rsa engine ...`: drive the in-process engine directly. Imports torch only inside commands."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Literal, NoReturn

import typer

from rsa_service.backends.base import BackendError, BackendOptions

logger = logging.getLogger(__name__)

engine_app = typer.Typer(no_args_is_help=True)
_QUANTIZE_HELP = "int8: the weights a decode step streams stored as int8 with per-row scales (half of bf16's bytes)."


@engine_app.callback()
def engine() -> None:
    """Drive the in-process ZAYA1 engine: generate one completion, or measure throughput."""


def parse_ids(text: str, vocab_size: int) -> list[int]:
    """'1,2,3' → [1, 2, 3], each id within the vocabulary."""
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise ValueError(f"--prompt-ids: {text!r} is not a comma-separated list of integers") from exc
    if not ids:
        raise ValueError("--prompt-ids: empty")
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"--prompt-ids: {bad[0]} is outside the vocabulary [0, {vocab_size})")
    return ids


_COMPILE_WHERE_IT_PAYS = (
    "Compile the decode step and prefill pieces (default: RSA_ENGINE_COMPILE if set, else only where it pays: on a GPU "
    "or from hidden size 1024)."
)
_DEVICE_HELP = "cpu, cuda, cuda:N, or auto (CUDA where present); default: RSA_ENGINE_DEVICE, else auto."
_THREADS_HELP = "torch intra-op threads; default: RSA_ENGINE_THREADS, else every core but one."


def _options(
    *, dtype: str, quantize: str, device: str | None, threads: int | None, compile_step: bool | None, batch: int
) -> BackendOptions:
    """The service's engine settings (RSA_ENGINE_*), with what this command's flags set instead."""
    from rsa_service.settings import Settings, backend_options

    options = backend_options(Settings(), None)
    update = {"dtype": dtype, "quantize": quantize, "max_concurrency": batch, "device": device or options.device}
    update |= {"threads": threads or options.threads}
    if compile_step is not None:
        update["compile"] = compile_step
    return BackendOptions.model_validate(options.model_dump() | update)


@engine_app.command()
def generate(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Checkpoint directory.")],
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Tokens to generate at most.")],
    prompt: Annotated[str | None, typer.Option("--prompt", help="Prompt text (BOS is prepended).")] = None,
    prompt_ids: Annotated[str | None, typer.Option("--prompt-ids", help="Prompt token ids, e.g. 1,2,3.")] = None,
    greedy: Annotated[bool, typer.Option("--greedy", help="Always take the most likely token.")] = False,
    temperature: Annotated[float, typer.Option(min=0.0)] = 1.0,
    top_p: Annotated[float, typer.Option("--top-p", min=0.0, max=1.0)] = 1.0,
    top_k: Annotated[int | None, typer.Option("--top-k", min=1)] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    dtype: Annotated[Literal["bfloat16", "float32"], typer.Option(help="Compute dtype.")] = "bfloat16",
    quantize: Annotated[Literal["none", "int8"], typer.Option(help=_QUANTIZE_HELP)] = "none",
    device: Annotated[str | None, typer.Option("--device", help=_DEVICE_HELP)] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help=_THREADS_HELP)] = None,
    compile_step: Annotated[bool | None, typer.Option("--compile/--no-compile", help=_COMPILE_WHERE_IT_PAYS)] = None,
    as_json: Annotated[bool, typer.Option("--json", help='Print {"token_ids": [...], "text": ...}.')] = False,
) -> None:
    """Generate one completion; prints only the generated tokens' text (or JSON)."""
    if (prompt is None) == (prompt_ids is None):
        _fail("give exactly one of --prompt or --prompt-ids")
    try:
        options = _options(
            dtype=dtype, quantize=quantize, device=device, threads=threads, compile_step=compile_step, batch=1
        )
        sampling = (0.0 if greedy else temperature, top_p, top_k, seed)
        ids, text = _run(checkpoint, options, prompt, prompt_ids, max_tokens, *sampling)
    except (BackendError, ValueError, OSError) as exc:
        _fail(str(exc))
    except ImportError as exc:
        _fail(f"the engine needs the 'engine' extra (pip install 'rsa-service[engine]'): {exc}")
    typer.echo(json.dumps({"token_ids": ids, "text": text}) if as_json else text)


def _run(
    checkpoint: Path,
    options: BackendOptions,
    prompt: str | None,
    prompt_ids: str | None,
    max_tokens: int,
    temperature: float,
    top_p: float,
    top_k: int | None,
    seed: int | None,
) -> tuple[list[int], str]:
    from rsa_service.backends.engine.batcher import GenSequence
    from rsa_service.backends.engine.factory import open_engine
    from rsa_service.backends.engine.sampling import SamplingParams

    if not checkpoint.is_dir():
        raise ValueError(f"--checkpoint: {checkpoint} is not a directory")
    engine = open_engine(checkpoint, options)
    tokenizer = engine.tokenizer
    vocab = engine.config.vocab_size
    ids = tokenizer.encode_plain(prompt) if prompt is not None else parse_ids(prompt_ids or "", vocab)
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
    (seq,) = engine.batcher.generate([GenSequence(ids, params, stream=tokenizer.stream())])
    return seq.output_ids, seq.text


@engine_app.command()
def bench(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", help="Checkpoint directory.")],
    batch: Annotated[int, typer.Option("--batch", min=1, help="Sequences decoded together.")] = 1,
    prompt_tokens: Annotated[int, typer.Option("--prompt-tokens", min=1, help="Random prompt length.")] = 128,
    new_tokens: Annotated[int, typer.Option("--new-tokens", min=2, help="Tokens generated per sequence.")] = 64,
    dtype: Annotated[Literal["bfloat16", "float32"], typer.Option(help="Compute dtype.")] = "bfloat16",
    quantize: Annotated[Literal["none", "int8"], typer.Option(help=_QUANTIZE_HELP)] = "none",
    device: Annotated[str | None, typer.Option("--device", help=_DEVICE_HELP)] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help=_THREADS_HELP)] = None,
    compile_step: Annotated[
        bool | None,
        typer.Option(
            "--compile/--no-compile",
            help="Compile the decode step and prefill pieces before timing (default: on, whatever the model's size, "
            "unless RSA_ENGINE_COMPILE=0).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the figures as one JSON object.")] = False,
) -> None:
    """Prefill and decode tokens/s (aggregate over the batch), peak RSS and KV bytes per token on random prompts.

    It measures speed, so the step is compiled (and warmed up, untimed) unless --no-compile or RSA_ENGINE_COMPILE=0.
    """
    try:
        from rsa_service.backends.engine.bench import run_bench
        from rsa_service.backends.engine.factory import load_runner

        if not checkpoint.is_dir():
            raise ValueError(f"--checkpoint: {checkpoint} is not a directory")
        options = _options(
            dtype=dtype, quantize=quantize, device=device, threads=threads, compile_step=compile_step, batch=batch
        )
        _, runner = load_runner(checkpoint, options, compile_decode=options.compile is not False)
        result = run_bench(runner, batch=batch, prompt_tokens=prompt_tokens, new_tokens=new_tokens)
    except (BackendError, ValueError, OSError) as exc:
        _fail(str(exc))
    except ImportError as exc:
        _fail(f"the engine needs the 'engine' extra (pip install 'rsa-service[engine]'): {exc}")
    if as_json:
        typer.echo(json.dumps(result.as_json()))
        return
    typer.echo(
        f"batch {batch}, prompt {prompt_tokens}, new {new_tokens}, {dtype}"
        f"{'' if quantize == 'none' else f' with {quantize} weights'} on {runner.device}: "
        f"prefill {result.prefill_tokens_per_s:,.0f} tok/s, decode {result.decode_tokens_per_s:,.1f} tok/s "
        f"({result.decode_step_s * 1e3:.2f} ms/step), peak RSS {result.peak_rss_bytes / 2**20:,.0f} MiB, "
        f"KV {result.state_bytes_per_token:,} B/token + {result.state_bytes_per_sequence:,} B/sequence"
    )


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)

"""The `dgemma` command: one thin function per subcommand. Each parses flags, calls the store or the runtime,
hands events to a view, and leaves error reporting to `main`."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer
from dgemma_runtime import (
    INFILL_INSTRUCTION,
    OPTION_RANGES,
    GenerationOptions,
    LoadEvent,
    LoadFinished,
    Message,
    ProgressCallback,
    Tokenizer,
    parse_infill,
)
from rich.console import Console
from rich.table import Table

from .errors import UsageProblem, run_guarded
from .images import image_tokens, take_images
from .models import store
from .views import EventClock, FramesView, JsonView, LiveView, PlainView, View, consume, image_header, print_stats

if TYPE_CHECKING:
    from dgemma_runtime import Engine

    from .record.recording import Recording

# Nothing above imports torch, FastAPI or huggingface_hub: `--help`, `list` and `ps` answer at once, and `run` through
# a server never loads them. Commands import what they need (tests/cli/test_client_server.py checks this).

app = typer.Typer(
    name="dgemma",
    help="Run Google's DiffusionGemma locally: watch the canvas denoise, chat, serve, benchmark.",
    context_settings={"help_option_names": ["-h", "--help"]},
    add_completion=False,
    pretty_exceptions_enable=False,
)

# -- shared options --------------------------------------------------------------------------------

# Typer types the sampler flags; their lower bounds come from the runtime's one table of option ranges.
Steps = Annotated[
    int | None,
    typer.Option("--steps", help="Maximum denoising steps per canvas.", min=OPTION_RANGES["max_denoising_steps"].low),
]
TMax = Annotated[float | None, typer.Option("--t-max", help="Temperature at the first step.")]
TMin = Annotated[float | None, typer.Option("--t-min", help="Temperature at the last step.")]
EntropyBound = Annotated[float | None, typer.Option("--entropy-bound", help="Entropy accepted per step.")]
Seed = Annotated[
    int | None, typer.Option("--seed", help="Random seed (same seed, same answer).", min=OPTION_RANGES["seed"].low)
]
MaxNew = Annotated[
    int | None,
    typer.Option(
        "--max-new-tokens",
        help="Answer length limit, exact (the last canvas is denoised whole, then cut).",
        min=OPTION_RANGES["max_new_tokens"].low,
    ),
]
Device = Annotated[str, typer.Option("--device", help="cpu, cuda, cuda:N or auto.")]
Dtype = Annotated[str, typer.Option("--dtype", help="float32, bfloat16, float16 or auto.")]
Precision = Literal["fp8", "nvfp4", "int8", "nf4"]  # the runtime's QUANTIZE_AT_LOAD; Typer refuses others (exit 2)
Quant = Annotated[
    Precision | None,
    typer.Option("--quant", help="Quantize a bf16 checkpoint's experts while loading (int8, nf4: the bnb extra)."),
]
QuantDense = Annotated[bool, typer.Option("--quant-dense", help="With --quant: attention and the dense MLP too.")]
CudaGraphs = Annotated[
    bool, typer.Option("--cuda-graphs", help="Replay denoising steps from CUDA graphs (GPU only; experimental).")
]

JsonOut = Annotated[bool, typer.Option("--json", help="One JSON object: the answer, thinking and stats.")]
# Ollama's --format asks the model for JSON (a mode or a schema): refused in one line rather than ignored.
OutputFormat = Annotated[
    str | None, typer.Option("--format", help="Ollama's JSON output: not supported for diffusion models yet.")
]


def refuse_format(output_format: str | None) -> None:
    if output_format is not None:
        raise UsageProblem(
            f"--format {output_format}: JSON output is not supported for diffusion models yet "
            "(--json prints the answer, thinking and stats as one JSON object)"
        )


@dataclass(frozen=True)
class LoadSettings:
    """How run, bench and serve load a model: --device, --dtype, --quant, --quant-dense, --cuda-graphs."""

    device: str
    dtype: str
    quant: Precision | None
    quant_dense: bool
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        if self.quant_dense and self.quant is None:
            raise UsageProblem("--quant-dense needs --quant (fp8, nvfp4, int8 or nf4)")


def generation_options(
    steps: int | None,
    t_max: float | None,
    t_min: float | None,
    entropy_bound: float | None,
    seed: int | None,
    max_new_tokens: int | None,
) -> GenerationOptions:
    """The sampler flags, under the names the runtime knows them by (--steps is its alias)."""
    return GenerationOptions.from_mapping(
        {
            "steps": steps,
            "t_max": t_max,
            "t_min": t_min,
            "entropy_bound": entropy_bound,
            "seed": seed,
            "max_new_tokens": max_new_tokens,
        }
    )


def load_model(
    ref: str, settings: LoadSettings, draw: bool = True, progress: ProgressCallback | None = None
) -> tuple[store.Manifest, Engine, LoadFinished]:
    """Load a model, its progress drawn on stderr (a terminal, and `draw`) and told to `progress` (the server's
    worker); Ctrl-C ends the command (exit 130). How long it took is kept for `show`."""
    from dgemma_runtime import load

    from .load_view import loading

    manifest = store.resolve(ref)

    def read(show: ProgressCallback) -> Engine:
        def heard(event: LoadEvent) -> None:
            show(event)
            if progress is not None:
                progress(event)  # may raise to stop the load (a server shutting down)

        return load(
            manifest.folder,
            settings.device,
            settings.dtype,
            settings.quant,
            settings.quant_dense,
            settings.cuda_graphs,
            heard,
        )

    engine, loaded = loading(ref, read, draw)
    store.record_load(manifest, loaded)
    if engine.tokenizer is None:
        raise UsageProblem(f"model '{ref}' has no tokenizer.json, so it cannot take text prompts")
    return manifest, engine, loaded


def read_prompt(words: list[str] | None) -> str:
    """Piped stdin goes before the words on the command line (Ollama's convention)."""
    piped = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
    return "\n\n".join(part for part in (piped.strip(), " ".join(words or []).strip()) if part)


# -- commands --------------------------------------------------------------------------------------


@app.command()
def run(
    model: Annotated[str, typer.Argument(help="A model name (see 'dgemma list') or a model folder.")],
    prompt: Annotated[list[str] | None, typer.Argument(help="The prompt; none starts a chat.")] = None,
    steps: Steps = None,
    t_max: TMax = None,
    t_min: TMin = None,
    entropy_bound: EntropyBound = None,
    seed: Seed = None,
    max_new_tokens: MaxNew = None,
    think: Annotated[bool, typer.Option("--think/--no-think", help="Let the model reason first.")] = False,
    system: Annotated[str | None, typer.Option("--system", help="System prompt.")] = None,
    infill: Annotated[
        str | None,
        typer.Option(
            "--infill",
            help="Write only the holes of this text: {} (8 tokens), {N} (N tokens), {{ and }} for braces; the "
            "prompt, if any, is the instruction.",
        ),
    ] = None,
    image: Annotated[
        list[Path] | None,
        typer.Option("--image", help="Show the model an image file (repeatable); so does a prompt word naming one."),
    ] = None,
    no_view: Annotated[bool, typer.Option("--no-view", help="Plain text instead of the live canvas.")] = False,
    json_out: JsonOut = False,
    output_format: OutputFormat = None,
    frames: Annotated[bool, typer.Option("--frames", help="NDJSON, one object per denoising step.")] = False,
    record: Annotated[
        Path | None, typer.Option("--record", help="Record the live view to FILE: .cast, .svg or .html.")
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Timing, diffusion statistics, quantization and memory.")
    ] = False,
    keep_alive: Annotated[
        str | None,
        typer.Option(
            "--keep-alive", help="With a server: how long it keeps the model after this ('5m'; 0: unload; -1: never)."
        ),
    ] = None,
    device: Device = "auto",
    dtype: Dtype = "auto",
    quant: Quant = None,
    quant_dense: QuantDense = False,
    cuda_graphs: CudaGraphs = False,
) -> None:
    """Answer a prompt, or chat when no prompt is given (through 'dgemma serve' when one is running)."""
    # A running server (DGEMMA_HOST) runs the model and keeps it loaded between commands. A folder, --device,
    # --dtype, --quant, --cuda-graphs, --infill or images are this process's business: the model loads here.
    refuse_format(output_format)
    settings = LoadSettings(device, dtype, quant, quant_dense, cuda_graphs)
    options = generation_options(steps, t_max, t_min, entropy_bound, seed, max_new_tokens).merged(infill=infill)
    if infill is not None:
        parse_infill(infill)  # a malformed template fails before the model loads
        if think:
            raise UsageProblem("--infill writes the answer directly: it cannot be combined with --think")
    said, found = take_images(" ".join(prompt or []))  # Ollama's way: image paths among the words are attached
    images = [*(image or []), *found]
    if images:
        from dgemma_runtime import open_image  # torch: only for a prompt with images

        for path in images:
            open_image(path)  # a bad image fails before the model loads
    text = read_prompt([said])
    interactive = not text and not images and infill is None and sys.stdin.isatty()
    if not (text or images or interactive or infill is not None):
        raise UsageProblem("no prompt: pass one after the model name or pipe it on stdin")
    if record is not None and interactive:
        raise UsageProblem("--record records one answer: pass a prompt")
    recording = None
    if record is not None:
        from .record.recording import Recording

        recording = Recording(record)  # a bad target fails before the model loads
    from .client import Remote, server_for  # http.client: imported by the commands that talk to a server

    given = {
        "--device": device != "auto",
        "--dtype": dtype != "auto",
        "--quant": quant is not None,
        "--cuda-graphs": cuda_graphs,
        "--infill": infill is not None,
        "images": bool(images),
    }
    server, where = server_for(model, [flag for flag, on in given.items() if on])
    if server is not None:  # the server's model: loaded once, kept between commands
        remote = Remote(server, model, keep_alive)
        options.merged().resolve(remote.defaults)  # bad values fail before any work
        if interactive:
            from .remote_chat import RemoteChat

            RemoteChat(remote, options, think=think, system=system, verbose=verbose, where=where).loop()
            return
        clock = EventClock()
        view = output_view(remote.tokenizer, remote.manifest.ref, clock, frames, json_out, no_view, think, recording)
        consume(remote.generate(text, system, think, options), view, clock)
        stats = view.finish()
        if verbose and stats is not None:
            print_stats(stats, remote.load_seconds, [("runs in", where)])
        return
    manifest, engine, loaded = load_model(model, settings)
    options.merged().resolve(engine.defaults)  # bad values fail before any work
    if interactive:
        from .chat import Chat

        def loader(ref: str) -> tuple[store.Manifest, Engine]:
            return load_model(ref, settings)[:2]

        chat = Chat(engine, manifest, options, loader, think=think, system=system, verbose=verbose)
        del engine  # the chat holds the only reference, so /load can free this model before loading the next
        chat.loop()
        return

    instruction = INFILL_INSTRUCTION if infill is not None and not text else text
    messages = ([Message("system", system)] if system else []) + [Message("user", instruction, tuple(images))]
    assert engine.tokenizer is not None
    prepared = engine.prepare(messages, think=think)  # a text-only model refuses images here
    clock = EventClock()  # one time per event, for the frames, the live view and its recording alike
    live = sys.stdout.isatty() and not no_view
    if images and live and not frames and not json_out:  # the live view's header
        shown = zip([path.name for path in images], image_tokens(prepared, engine.vision), strict=True)
        Console(highlight=False).print(image_header(list(shown)))
    view = output_view(engine.tokenizer, manifest.ref, clock, frames, json_out, no_view, think, recording)
    consume(engine.stream(prepared, options=options), view, clock)
    stats = view.finish()
    if verbose and stats is not None:
        from .facts import loaded_facts

        print_stats(stats, loaded.seconds, [*loaded_facts(engine, loaded), ("runs in", where)])


def output_view(
    tokenizer: Tokenizer,
    model: str,
    clock: EventClock,
    frames: bool,
    json_out: bool,
    no_view: bool,
    think: bool,
    recording: Recording | None,
) -> View:
    """What shows one answer of `run`, in-process or from the server alike: NDJSON frames, one JSON object, the live
    canvas on a terminal, else plain text; a recording draws the live view (offscreen when it is not shown)."""
    live = sys.stdout.isatty() and not no_view
    if frames:
        view: View = FramesView(tokenizer=tokenizer, clock=clock)
    elif json_out:
        view = JsonView(model=model)
    elif live and recording is not None:
        view = recording.live_view(tokenizer, clock, terminal=sys.stdout)
    elif live:
        view = LiveView(Console(highlight=False), tokenizer, thinking=think, clock=clock)
    else:
        view = PlainView()
    if recording is not None:  # the live view, recorded: the one above, or one drawn offscreen beside the view
        view = recording.around(view, tokenizer, clock)
    return view


@app.command()
def replay(
    frames: Annotated[
        Path, typer.Argument(help="A saved 'dgemma run --frames' stream, or a server stream with \"frames\": true.")
    ],
    record: Annotated[Path, typer.Option("--record", help="The recording to write: .cast, .svg or .html.")],
    model: Annotated[
        str | None, typer.Option("--model", help="Decode token ids with this model's tokenizer (the server's streams).")
    ] = None,
    speed: Annotated[
        float, typer.Option("--speed", min=0.01, help="Play this many times as fast as it ran (0.25: a quarter).")
    ] = 1.0,
) -> None:
    """Turn a saved frames stream into a recording of the live view, as 'run --record' makes; no model runs."""
    from .record.recording import Recording
    from .record.replay import read_stream
    from .record.replay import replay as replay_stream

    recording = Recording(record, speed)
    tokenizer = None
    if model is not None:
        path = store.resolve(model).folder / "tokenizer.json"
        if not path.exists():
            raise UsageProblem(f"model '{model}' has no tokenizer.json to decode the stream with")
        tokenizer = Tokenizer(path)
    replay_stream(read_stream(frames), recording, tokenizer)


@app.command("list")
def list_models() -> None:
    """Models in the local store (as 'ollama list')."""
    from .listing import models_table, print_table

    print_table(models_table(store.list_models(lambda problem: sys.stderr.write(f"warning: skipping {problem}\n"))))


@app.command()
def ps() -> None:
    """The model the running server holds: its size, processor, and until when it stays loaded (as 'ollama ps')."""
    from .client import Server
    from .listing import print_table, running_table

    print_table(running_table(Server.from_env().get("/api/ps")["models"]))


@app.command()
def stop(model: Annotated[str, typer.Argument(help="A model the server holds (see 'dgemma ps').")]) -> None:
    """Unload a model from the running server now."""
    from .client import Server, unload

    unload(Server.from_env(), model)


@app.command()
def show(
    model: Annotated[str, typer.Argument(help="A model name or folder.")],
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Also hash every file against the sha256 recorded when it was pulled, and compare the copies of "
            "shared weights byte for byte; exit 1 with one line per problem.",
        ),
    ] = False,
) -> None:
    """Architecture, size, sampler defaults and memory needs of a model."""
    from .facts import model_facts

    manifest = store.resolve(model)
    report = None
    if verify:  # first: a corrupt file may be what keeps the facts from being read
        from .errors import EXIT_FAILURE
        from .models.pull import verify_model
        from .models.pull_view import checked, verified_line

        report = checked(verify_model(manifest))
        if report.problems:
            sys.stderr.writelines(f"dgemma: error: {problem}\n" for problem in report.problems)
            raise typer.Exit(EXIT_FAILURE)
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    for label, value in model_facts(manifest):
        table.add_row(label, value)
    Console().print(table)
    if report is not None:
        Console(highlight=False).print(verified_line(report), soft_wrap=True)


@app.command()
def rm(models: Annotated[list[str], typer.Argument(help="Model names to delete.")]) -> None:
    """Delete models from the local store."""
    for name in models:
        store.remove(name)
        Console(stderr=True).print(f"deleted '{name}'")


@app.command()
def pull(
    model: Annotated[
        str, typer.Argument(help="diffusiongemma[:26b-fp8|:26b-nvfp4] or a hub repo: org/repo[:revision].")
    ],
    revision: Annotated[str | None, typer.Option("--revision", help="Branch, tag or commit to pull.")] = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Also compare the copies of shared weights byte for byte (cached files are always hashed against "
            "the hub, and downloaded again if corrupt); offline, hash the cached files against their blob names.",
        ),
    ] = False,
) -> None:
    """Download a model from the Hugging Face hub into the Hugging Face cache (resumable, verified)."""
    from .models.hub import target  # huggingface_hub loads only for this command
    from .models.pull import pull_model
    from .models.pull_view import render

    goal = target(model, revision)
    render(goal, pull_model(goal, verify=verify))


@app.command("bench")
def bench_command(
    model: Annotated[str, typer.Argument(help="A model name or folder.")],
    prompts: Annotated[Path | None, typer.Option("--prompts", help="A file with one prompt per line.")] = None,
    runs: Annotated[int, typer.Option("--runs", help="Timed runs after one warm-up.", min=1)] = 3,
    max_new_tokens: MaxNew = 512,
    steps: Steps = None,
    fixed_steps: Annotated[bool, typer.Option("--fixed-steps", help="No early stop: every step runs.")] = False,
    seed: Seed = 0,
    json_out: Annotated[bool, typer.Option("--json", help="The report as one JSON object.")] = False,
    device: Device = "auto",
    dtype: Dtype = "auto",
    quant: Quant = None,
    quant_dense: QuantDense = False,
    cuda_graphs: CudaGraphs = False,
) -> None:
    """Honest speed: effective and in-step tok/s, tokens per forward, steps per canvas, latency, memory."""
    from .bench import DEFAULT_PROMPTS, bench, render

    texts = [line.strip() for line in prompts.read_text().splitlines() if line.strip()] if prompts else []
    if prompts and not texts:
        raise UsageProblem(f"{prompts} holds no prompts")
    manifest, engine, loaded = load_model(model, LoadSettings(device, dtype, quant, quant_dense, cuda_graphs))
    options = generation_options(steps, None, None, None, seed, max_new_tokens)
    options.resolve(engine.defaults)
    if max_new_tokens is not None and max_new_tokens < engine.config.canvas_length:
        Console(stderr=True).print(
            f"[yellow]warning:[/yellow] --max-new-tokens {max_new_tokens} is shorter than a canvas "
            f"({engine.config.canvas_length} tokens); each run still denoises a whole canvas"
        )
    report = bench(engine, manifest, texts or list(DEFAULT_PROMPTS), runs, options, fixed_steps, loaded)
    if json_out:
        sys.stdout.write(json.dumps(report.as_dict()) + "\n")
    else:
        render(report, Console())


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option("--host", help="Address to bind (default 127.0.0.1; $DGEMMA_HOST).")
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", help="Port (default 11435; 0 picks a free one).", min=0, max=65535)
    ] = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Load at start; the model of requests naming none.")
    ] = None,
    keep_alive: Annotated[
        str, typer.Option("--keep-alive", help="Idle time before unloading ('5m'; -1: never).")
    ] = "5m",
    max_queue: Annotated[int, typer.Option("--max-queue", help="Waiting requests before answering 503.", min=1)] = 16,
    max_batch: Annotated[int, typer.Option("--max-batch", help="Requests sharing one decoder forward.", min=1)] = 8,
    device: Device = "auto",
    dtype: Dtype = "auto",
    quant: Quant = None,
    quant_dense: QuantDense = False,
    cuda_graphs: CudaGraphs = False,
    detach: Annotated[
        bool, typer.Option("--detach", help="Keep serving in the background (its log in the state folder); exit.")
    ] = False,
) -> None:
    """Serve the Ollama API (/api) and the OpenAI API (/v1) over HTTP, batching concurrent requests."""
    settings = LoadSettings(device, dtype, quant, quant_dense, cuda_graphs)
    if detach:
        from .background import detach as start

        started = start([arg for arg in sys.argv[2:] if arg != "--detach"])  # these flags, in a process of its own
        print(f"dgemma serve runs in the background on {started.url} (pid {started.pid}; log {started.log})")
        return
    from .serve.app import serve as run_server

    run_server(
        host,
        port,
        model,
        keep_alive,
        max_queue,
        max_batch,
        # no bar under the server's log: /api/ps reports the progress
        loader=lambda manifest, progress: load_model(manifest.path, settings, draw=False, progress=progress)[1],
        announce=Console(stderr=True, highlight=False).print,
    )


def print_version(asked: bool) -> None:
    if asked:
        from importlib.metadata import version

        print(f"dgemma version {version('dgemma')}")
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def global_options(
    context: typer.Context,
    version: Annotated[
        bool,
        typer.Option("--version", "-v", callback=print_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    if context.invoked_subcommand is None:  # `dgemma` alone: the help, and success (as Ollama)
        print(context.get_help())


def main() -> None:
    sys.exit(run_guarded(app))


if __name__ == "__main__":
    main()

"""The `twin` command line: set up, import writing, draft, chat, train, inspect, forget.

`twin run` is registered by `bot.cli` (the console script), the one module that may see both
loop and bot: loop knows nothing of Telegram. Its terminal half (`run_terminal`) lives here.

Commands act on the first configured owner unless `--owner` names another. Domain errors
become one red sentence and a non-zero exit code; nothing here holds logic of its own.
Long steps show one status line each; the libraries' log lines and progress bars appear only
with `twin -v` or `log_level = "DEBUG"` (loop.runtime.setup_logging).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from loop.config import Config, ConfigError, load_config

logger = logging.getLogger(__name__)
console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    help="twin: a small language model that learns to write as you do.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigOption = Annotated[Optional[Path], typer.Option("--config", "-c", help="Config file (default: $TWIN_CONFIG, then ./config.toml).", envvar="TWIN_CONFIG")]
OwnerOption = Annotated[Optional[int], typer.Option("--owner", help="Telegram user id of the owner to act on (default: the first in `owners`).")]


VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="Also show the libraries' log lines and progress bars (as log_level = \"DEBUG\" does).")]


class _State:
    config_path: Path | None = None
    verbose: bool = False


state = _State()


def fail(message: str, code: int = 1) -> None:
    err_console.print(f"[red]{message}[/red]")
    raise typer.Exit(code)


@app.callback()
def main(config: ConfigOption = None, verbose: VerboseOption = False) -> None:
    """twin learns your writing style from what you wrote and from how you correct its drafts."""
    state.config_path, state.verbose = config, verbose


def get_config() -> Config:
    try:
        config = load_config(state.config_path)
    except ConfigError as error:
        fail(str(error), 2)
    from loop.runtime import setup_logging

    setup_logging(config, verbose=state.verbose)
    return config  # type: ignore[return-value]


def owner_of(config: Config, owner: int | None) -> int:
    if owner is None:
        return config.default_owner()
    if config.owners and owner not in config.owners:
        fail(f"{owner} is not in `owners` of the config ({', '.join(map(str, config.owners))})", 2)
    return owner


def open_engine(config: Config):
    from loop.runtime import open_engine as _open

    return _open(config)


# Set-up -----------------------------------------------------------------------------------

@app.command()
def init(
    path: Annotated[Path, typer.Option(help="Where to write the config file.")] = Path("config.toml"),
    owner: Annotated[Optional[int], typer.Option("--owner", help="Your Telegram user id (ask @userinfobot).")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing config file.")] = False,
    skip_model: Annotated[bool, typer.Option("--skip-model", help="Do not prepare the embedded model now.")] = False,
) -> None:
    """Write a commented config file, create the data folder and prepare the embedded model."""
    from importlib.resources import files

    if path.exists() and not force:
        console.print(f"{path} exists already (use --force to overwrite); keeping it.")
    else:
        template = files("loop").joinpath("default_config.toml").read_text(encoding="utf-8")
        if owner is not None:
            template = template.replace("owners = []", f"owners = [{owner}]", 1)
        path.write_text(template, encoding="utf-8")
        console.print(f"wrote {path}")
    state.config_path = path
    config = get_config()
    open_engine(config).dispose()
    console.print(f"data folder: {config.data_dir}")
    if not skip_model and config.model.base == "embedded":
        from training.model import resolve_base_model

        from training.inference.serving import prepare_for_drafting

        with console.status("preparing the embedded model (once, about half a minute)…"):
            folder = resolve_base_model(config.model, config.models_dir)
        console.print(f"model: {folder}")
        with console.status("converting it for fast drafting (once, a few seconds)…"):
            serving = prepare_for_drafting(config.model, config.generation.backend, config.models_dir,
                                           llamacpp_weights=config.generation.llamacpp_weights)
        if serving is not None:
            console.print(f"drafting copy: {serving}")


@app.command("import")
def import_(
    paths: Annotated[list[Path], typer.Argument(help="Files or folders: Telegram export (result.json), WhatsApp .txt, .txt/.md, .mbox/.eml, .jsonl.")],
    format: Annotated[Optional[str], typer.Option("--format", help="Force a format: telegram, whatsapp, text, email, jsonl.")] = None,
    me: Annotated[Optional[list[str]], typer.Option("--me", help="Your name as it appears in chat exports (repeatable).")] = None,
    email: Annotated[Optional[list[str]], typer.Option("--email", help="Your e-mail address, to find your sent mails (repeatable).")] = None,
    no_mask: Annotated[bool, typer.Option("--no-mask", help="Keep e-mail addresses, phone, card and IBAN numbers as they are.")] = False,
    owner: OwnerOption = None,
) -> None:
    """Import your writing as training samples. Re-importing the same data adds nothing."""
    from loop.importing import OwnerIdentity, progress_bar, render_report, run_import
    from storage import repo
    from storage.db import session_scope

    config = get_config()
    telegram_id = owner_of(config, owner)
    engine = open_engine(config)
    with session_scope(engine) as session:
        owner_row = repo.get_or_create_owner(session=session, telegram_id=telegram_id)
        owner_db_id, owner_name = owner_row.id, owner_row.name
    # Only this owner's id: in a household install another owner's messages are "other people".
    identity = OwnerIdentity(telegram_ids=[telegram_id] if telegram_id else [],
                             names=[*config.owner_names, *(me or []), *([owner_name] if owner_name else [])],
                             emails=[*config.owner_emails, *(email or [])])
    with progress_bar(err_console) as progress:
        report = run_import(engine=engine, owner_db_id=owner_db_id, paths=paths, owner=identity, format=format,
                            mask=config.mask_personal_data and not no_mask, progress=progress,
                            limits=config.importing)
    console.print(render_report(report))
    if report.failed:
        fail(f"{len(report.failed)} file(s) could not be imported; nothing of them was stored.")


# Inspecting -------------------------------------------------------------------------------

@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON object instead of a table.")] = False,
    owner: OwnerOption = None,
) -> None:
    """Counts of writing, drafts and feedback, the active adapter, the last and next cycle."""
    from loop.twin import Twin

    config = get_config()
    telegram_id = owner_of(config, owner)
    engine = open_engine(config)
    data = Twin(config, engine, drafter=None).status(telegram_id)  # type: ignore[arg-type]
    data["next_cycle"] = _next_run(config)
    if as_json:
        print(json.dumps(data, indent=2, default=str))
        return
    table = Table(title=f"twin of {telegram_id or 'the local owner'}", show_header=False)
    table.add_row("writing samples", str(data["writing_samples"]))
    table.add_row("drafts", str(data["drafts"]))
    table.add_row("feedback", ", ".join(f"{k} {v}" for k, v in data["feedback"].items()))
    table.add_row("active adapter", f"v{data['active_adapter']}" if data["active_adapter"] else "base model (v0)")
    cycle = data["last_cycle"]
    table.add_row("last cycle", f"#{cycle['id']} {cycle['status']}: {cycle['reason']}" if cycle else "none yet")
    table.add_row("next cycle", data["next_cycle"] or "not scheduled")
    console.print(table)


def _next_run(config: Config) -> str | None:
    if not config.schedule.enabled:
        return None
    from loop.scheduler import next_run_time

    when = next_run_time(config)
    return when.isoformat() if when else None


@app.command()
def style(
    chart: Annotated[Optional[Path], typer.Option(help="Also write the profile as a PNG chart here.")] = None,
    owner: OwnerOption = None,
) -> None:
    """Your style profile: the habits the twin should keep, and not exaggerate."""
    from loop.style import owner_style_chart, owner_style_rows

    config = get_config()
    telegram_id = owner_of(config, owner)
    engine = open_engine(config)
    rows = owner_style_rows(engine, telegram_id=telegram_id)
    if not rows:
        fail("Nothing of yours is stored yet: run `twin import` or answer a few drafts first.")
    table = Table("feature", "value", title="your style")
    for label, value in rows:
        table.add_row(label, value)
    console.print(table)
    if chart is not None:
        written = owner_style_chart(engine, telegram_id=telegram_id, path=chart)
        console.print(f"chart: {written}")


@app.command()
def insight(
    version: Annotated[Optional[int], typer.Argument(help="Adapter version to look into (default: the active one).")] = None,
    against: Annotated[Optional[int], typer.Option("--against", help="Compare with this earlier version instead of the base model.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder for the PNG charts (default: <data>/owners/<id>/insight/v<VERSION>).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print every number as JSON instead of the summary.")] = False,
    owner: OwnerOption = None,
) -> None:
    """What a version learnt from you: where it changed the model, the words it now favours, how its attention moved.

    Pure measurement on your held-out replies (under a minute on the embedded model and a CPU); it never trains and
    keeps the active version as it is.
    """
    from loop.errors import InsightUnavailable
    from loop.insight import run_insight

    config = get_config()
    telegram_id = owner_of(config, owner)
    engine = open_engine(config)
    folder = out or config.owner_dir(telegram_id) / "insight" / (f"v{version}" if version else "active")
    try:
        with err_console.status("measuring what the adapter changed (under a minute)…"):
            report = run_insight(config, engine, telegram_id=telegram_id, folder=folder, version=version,
                                 against=against)
    except InsightUnavailable as error:
        fail(str(error))
    if as_json:
        print(json.dumps({**report.insight.to_json(), "charts": [str(p) for p in report.charts],
                          "total_seconds": report.seconds}, indent=2, default=str))
        return
    print(report.text)  # plain: rich would wrap the long lines and paths
    for chart in report.charts:
        print(f"chart: {chart}")
    err_console.print(f"[dim]measured in {report.seconds:.0f} s[/dim]")


@app.command()
def forget(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    owner: OwnerOption = None,
) -> None:
    """Delete everything the twin holds of you: writing, drafts, feedback, adapters, logs."""
    from loop.forget import forget_owner

    config = get_config()
    telegram_id = owner_of(config, owner)
    if not yes and not typer.confirm(f"Delete all data of owner {telegram_id}? This cannot be undone."):
        fail("nothing deleted", 1)
    forgotten = forget_owner(config, open_engine(config), telegram_id=telegram_id)
    console.print("everything deleted" if forgotten else "nothing was stored")


# Drafting ---------------------------------------------------------------------------------

def _make_twin(config: Config):
    from loop.drafting import EngineDrafter
    from loop.twin import Twin

    engine = open_engine(config)
    if config.generation.backend == "openai":  # drafts come from a shared server; only the tokenizer is loaded
        from loop.server_drafting import ServerDrafter

        return Twin(config, engine, ServerDrafter.from_config(config))
    with err_console.status("loading the model…"):
        drafter = EngineDrafter.from_config(config)
    return Twin(config, engine, drafter)


def _warm_up_before_the_prompt(twin) -> None:
    """In the terminal the warm-up runs before the first prompt, not beside it: its lines would
    land under `they>`, and the first draft would wait for it anyway."""
    with err_console.status("preparing drafting (a few seconds when the model or an adapter is new)…"):
        twin.warm_up()


@app.command()
def draft(
    text: Annotated[str, typer.Argument(help="The incoming message to answer.")],
    owner: OwnerOption = None,
) -> None:
    """Print one draft reply to TEXT in your voice (stored like any draft)."""
    from loop.drafting import DraftingError

    config = get_config()
    telegram_id = owner_of(config, owner)
    twin = _make_twin(config)
    try:
        result = twin.draft_reply(telegram_id=telegram_id, chat_key="cli:draft", incoming=text)
    except DraftingError as error:
        fail(str(error))
    print(result.text)
    err_console.print(f"[dim]draft #{result.id}, adapter v{result.adapter_version}, {result.latency_ms} ms[/dim]")


@app.command()
def chat(owner: OwnerOption = None) -> None:
    """Talk with your twin in the terminal: accept, edit, reject or ask for another draft."""
    from loop.terminal import chat_loop

    config = get_config()
    telegram_id = owner_of(config, owner)
    twin = _make_twin(config)
    _warm_up_before_the_prompt(twin)
    chat_loop(twin, telegram_id=telegram_id, console=console)


def prepare_run(config: Config, owner: int | None):
    """The first half of `twin run` (the command itself is bot.cli's: it may start the bot): the
    owner, the embedded model prepared on first start, and the twin. Returns (telegram id, twin)."""
    telegram_id = owner_of(config, owner)
    if config.model.base == "embedded":
        from training.model import resolve_base_model

        with err_console.status("preparing the embedded model (first start only, about half a minute)…"):
            resolve_base_model(config.model, config.models_dir)
    return telegram_id, _make_twin(config)


def run_terminal(config: Config, twin, telegram_id: int) -> None:
    """`twin run` without a token: the terminal chat, with the nightly scheduler beside it."""
    from loop.scheduler import start_scheduler
    from loop.terminal import chat_loop

    _warm_up_before_the_prompt(twin)
    err_console.print("TWIN_TELEGRAM_TOKEN is not set: starting the terminal chat (Ctrl-D to quit).")
    scheduler = start_scheduler(config, twin.engine, notify=lambda _owner, text, chart: console.print(text)) if config.schedule.enabled else None
    try:
        chat_loop(twin, telegram_id=telegram_id, console=console)
    finally:
        if scheduler is not None:
            scheduler.shutdown(wait=False)


# Training ---------------------------------------------------------------------------------

@app.command()
def train(
    force: Annotated[bool, typer.Option(help="Train even if fewer than schedule.min_new_feedback items arrived.")] = False,
    queue: Annotated[Optional[bool], typer.Option("--queue/--now", help="Queue the cycle for `twin worker` instead of running it here (default: --queue when schedule.train_in_bot = false, else --now).")] = None,
    owner: OwnerOption = None,
) -> None:
    """Run one learning cycle now, in the foreground: train, evaluate, promote or keep (or queue it for a worker)."""
    from loop.cycle import CycleAlreadyRunning, run_cycle

    config = get_config()
    telegram_id = owner_of(config, owner)
    if queue if queue is not None else not config.schedule.train_in_bot:
        from loop.worker import enqueue

        queued = enqueue(open_engine(config), telegram_id=telegram_id, trigger="cli", force=force)
        console.print(f"queued as request #{queued.request_id}" if queued.new
                      else f"already queued (request #{queued.request_id})")
        return
    try:
        outcome = run_cycle(config, open_engine(config), telegram_id=telegram_id, force=force, trigger="cli", progress=True)
    except CycleAlreadyRunning as error:
        fail(str(error))
    console.print(outcome.report_text)
    if outcome.chart_path:
        console.print(f"chart: {outcome.chart_path}")
    if outcome.status == "failed":
        raise typer.Exit(1)


@app.command()
def worker(
    concurrency: Annotated[Optional[int], typer.Option("--concurrency", "-n", min=1, max=64, help="Cycles to run at once, one per owner, each in its own training process (default: worker.concurrency).")] = None,
    once: Annotated[bool, typer.Option("--once", help="Run what is due now, wait for it, then exit (instead of waiting for more).")] = False,
) -> None:
    """Train the queued cycles of every owner, on this machine or another one that reaches the database (README, "Scale")."""
    from loop.worker import Worker

    config = get_config()
    runner = Worker(config, open_engine(config), concurrency=concurrency or config.worker.concurrency,
                    poll_s=config.worker.poll_s)
    err_console.print(f"worker {runner.id}: {runner.concurrency} cycle(s) at a time"
                      + ("; until the queue is empty" if once else "; Ctrl-C stops"))
    try:
        summary = runner.run(once=once)
    except KeyboardInterrupt:
        runner.stop.set()
        fail("stopped (a cycle cut short is marked failed by its owner's next cycle, its request queued again)", 130)
    for item in summary.ran:
        console.print(f"owner {item['owner']}: cycle #{item['cycle']} {item['status']} ({item['seconds']} s)")


@app.command()
def cycles(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    owner: OwnerOption = None,
) -> None:
    """The history of learning cycles."""
    from loop.cycle import list_cycles

    config = get_config()
    rows = list_cycles(open_engine(config), telegram_id=owner_of(config, owner))
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    table = Table("#", "started", "status", "candidate", "reason")
    for row in rows:
        table.add_row(str(row["id"]), str(row["started_at"])[:16], row["status"],
                      f"v{row['candidate_version']}" if row.get("candidate_version") else "-", row["reason"])
    console.print(table)


@app.command()
def rollback(
    version: Annotated[Optional[int], typer.Argument(help="Adapter version to activate (0 = base model; default: the previous one).")] = None,
    owner: OwnerOption = None,
) -> None:
    """Activate an earlier adapter; a running bot uses it from its next draft on."""
    from loop.cycle import rollback as do_rollback
    from storage.repo import AdapterNotFound

    config = get_config()
    try:
        active = do_rollback(config, open_engine(config), telegram_id=owner_of(config, owner), version=version)
    except (AdapterNotFound, ValueError) as error:
        fail(str(error))
    console.print(f"active adapter: v{active}" if active else "active: the base model (v0)")


@app.command("register-adapters")
def register_adapters() -> None:
    """Have the drafting server (generation.backend = "openai") serve every owner's active adapter
    and no retired one: vLLM loads and unloads them now; for llama.cpp's server the models file is
    written, and the server serves it after a restart."""
    from loop.server_drafting import ServedAdapters, active_adapter_refs, make_client
    from training.inference.openai_server import ServerError

    config = get_config()
    if config.generation.backend != "openai":
        fail('drafts are made here, not by a server: set generation.backend = "openai" and generation.server_url')
    client = make_client(config)
    try:
        report = ServedAdapters(config, client).sync(active_adapter_refs(open_engine(config)))
    except ServerError as error:
        fail(str(error))
    finally:
        client.close()
    console.print(f"{len(report.served)} active adapters: {', '.join(report.served) or 'none'}")
    console.print(f"loaded: {', '.join(report.loaded) or 'none'}; unloaded: {', '.join(report.unloaded) or 'none'}")
    if report.models_file is not None:
        console.print(f"models file: {report.models_file}")
        if report.restart_needed:
            console.print("(re)start the server to apply it: python -m llama_cpp.server --config_file "
                          f"{report.models_file}")


def entry() -> None:  # pragma: no cover - console script shim
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())

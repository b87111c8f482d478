"""`dgemma run --record FILE` and `dgemma replay`: the live view recorded as an asciicast, an animated SVG and a
replay page, each checked frame by frame against the `--frames` stream of the same run, opened by asciinema and
by a real headless Chromium, and made again from the saved frames (and from the server's stream)."""

from __future__ import annotations

import html
import io
import json
import re
import shutil
import subprocess
import sys
import time
import unicodedata
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.support.cli import DGEMMA, FAST, PROMPT, TIMEOUT, Screen, assert_one_line_error, dgemma, ok, squeeze

FORMATS = (".cast", ".svg", ".html")
RUN = ("--seed", "1", *FAST)
SIZE = (80, 24)  # what an offscreen recording gets with no terminal and no COLUMNS/LINES
LEGEND = "unresolved  accepted this step  settled  self-corrected"
SVG = "{http://www.w3.org/2000/svg}"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium (Debian: apt-get install chromium)")


# -- what the live view should show, from the frames stream alone ----------------------------------------------


def visible(text: str) -> str:
    return "".join(c if c in "\n\t" or unicodedata.category(c) != "Cc" else "·" for c in text)


def shown(piece: str) -> str:
    """A token's text as the live view draws it: a special token as a mark, newlines with a visible ⏎."""
    if piece.startswith("<") and piece.endswith(">") and len(piece) > 2:
        return "·"
    return visible(piece.replace("\ufffd", "·").replace("\n", "⏎\n"))


@dataclass(frozen=True)
class Picture:
    t: float
    said: str  # the answer so far
    canvas: str  # the canvas as drawn ('' between canvases)
    status: str  # the last status line


RATE = re.compile(r" · \d+ tok/s")  # the view's own estimate, from timings: checked present, not recomputed


def without_rate(text: str) -> str:
    assert RATE.search(text), text
    return RATE.sub("", text)


def pictures(records: list[dict]) -> list[Picture]:
    """The live view after each record of a `--frames` stream (no thinking: `run` answers without it), its status
    line without the tok/s figure."""
    said, canvas, status = "", "", ""
    found = []
    for record in records:
        if record["type"] == "step":
            canvas = "".join(shown(text) for text in record["texts"])
            status = (
                f"canvas {record['canvas'] + 1} · step {record['step']}/{record['max_steps']} · "
                f"accepted {sum(record['accepted'])}/{len(record['ids'])} · entropy {record['mean_entropy']:.2f}"
            )
        elif record["type"] == "canvas":
            said += visible(record["text"] if said else record["text"].lstrip())
            canvas = ""
        found.append(Picture(record["t"], said, canvas, status))
    return found


# -- runs --------------------------------------------------------------------------------------------------------


@dataclass
class Recorded:
    path: Path
    records: list[dict]  # the --frames stream of the same run

    @property
    def answer(self) -> str:
        return pictures(self.records)[-1].said


@pytest.fixture(scope="module")
def recorded(model, shared_env, tmp_path_factory):
    """`recorded(suffix)`: `dgemma run ... --frames --record live.SUFFIX` with stdout piped, memoised."""
    folder = tmp_path_factory.mktemp("recorded")
    memo: dict[str, Recorded] = {}

    def record(suffix: str) -> Recorded:
        if suffix not in memo:
            path = folder / f"live{suffix}"
            result = ok(dgemma(shared_env, "run", str(model), PROMPT, *RUN, "--frames", "--record", str(path)))
            assert result.stderr == ""
            (folder / f"frames{suffix}.ndjson").write_text(result.stdout)
            memo[suffix] = Recorded(path, [json.loads(line) for line in result.stdout.splitlines()])
        return memo[suffix]

    return record


def frames_file(recording: Recorded) -> Path:
    return recording.path.with_name(f"frames{recording.path.suffix}.ndjson")


# -- the frames stream carries what a recording needs ------------------------------------------------------------


def test_frames_carry_times_and_token_texts(recorded):
    records = recorded(".cast").records
    times = [record["t"] for record in records]
    assert times == sorted(times) and times[0] > 0
    for record in (record for record in records if record["type"] == "step"):
        assert len(record["texts"]) == len(record["ids"]) and all(isinstance(text, str) for text in record["texts"])


# -- asciicast -----------------------------------------------------------------------------------------------------


def read_cast(path: Path) -> tuple[dict, list[list]]:
    """A strict asciicast v2 reader; the asciinema package's own parser must agree when it is installed."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header, events = json.loads(lines[0]), [json.loads(line) for line in lines[1:]]
    assert header["version"] == 2
    assert isinstance(header["width"], int) and isinstance(header["height"], int)
    last = 0.0
    for event in events:
        assert isinstance(event, list) and len(event) == 3, event
        t, code, data = event
        assert isinstance(t, (int, float)) and t >= last, event
        assert code in ("o", "r") and isinstance(data, str), event
        last = t
    try:
        from asciinema.asciicast import v2
    except ImportError:
        return header, events
    with path.open(encoding="utf-8") as file, v2.open_from_file(file.readline(), file) as cast:
        assert cast.v2_header == header
        assert list(cast.events()) == events
    return header, events


def output(events: list[list]) -> str:
    return "".join(data for _, code, data in events if code == "o")


def test_the_cast_draws_every_step_at_its_time_and_leaves_the_answer(recorded):
    recording = recorded(".cast")
    header, events = read_cast(recording.path)
    assert (header["width"], header["height"]) == SIZE
    drawn = [event for event in events if event[1] == "o"]
    assert "\x1b[38;5;244m" in output(events) and "\x1b[1;32m" in output(events)  # grey and green: colours kept
    screen, done = Screen(), 0
    for picture, record in zip(pictures(recording.records), recording.records, strict=True):
        if record["type"] == "final":  # the view closes at this same time: checked below
            break
        while done < len(drawn) and drawn[done][0] <= picture.t:
            screen.feed(drawn[done][2])
            done += 1
        if picture.status:  # the text above, the canvas, the status line and the legend, at this event's time
            drawn_now = without_rate(screen.text)
            assert squeeze(drawn_now) == squeeze(picture.said + picture.canvas + picture.status + LEGEND)
    for _, _, data in drawn[done:]:
        screen.feed(data)
    assert squeeze(screen.text) == squeeze(recording.answer)  # the live region goes; the answer stays


def test_recording_while_piped_keeps_stdout_the_answer(model, env, oneshot, tmp_path):
    path = tmp_path / "answer.cast"
    result = ok(dgemma(env, "run", str(model), PROMPT, *RUN, "--record", str(path)))
    assert result.stdout == oneshot(1).stdout and result.stderr == ""
    assert squeeze(Screen().feed(output(read_cast(path)[1])).text) == squeeze(result.stdout)


def on_a_terminal(program: str, args: list[str], env: dict[str, str], rows_columns: tuple[int, int]) -> str:
    """Everything `program ARGS` writes to a pseudo-terminal of that size, once it has exited with 0."""
    pexpect = pytest.importorskip("pexpect")
    transcript = io.StringIO()
    child = pexpect.spawn(
        program,
        args,
        env=env | {"TERM": "xterm-256color"},
        dimensions=rows_columns,
        encoding="utf-8",
        timeout=TIMEOUT,
    )
    child.logfile_read = transcript
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, transcript.getvalue()
    return transcript.getvalue()


def test_the_cast_on_a_terminal_is_exactly_what_the_terminal_got(model, shared_env, tmp_path, oneshot):
    path = tmp_path / "terminal.cast"
    shown = on_a_terminal(DGEMMA, ["run", str(model), PROMPT, *RUN, "--record", str(path)], shared_env, (30, 100))
    header, events = read_cast(path)
    assert (header["width"], header["height"], header["env"]["TERM"]) == (100, 30, "xterm-256color")
    recorded = output(events)
    # Before the view, a slow load draws (and erases) its progress bar on stderr: the loading, not the view.
    assert shown.endswith(recorded)
    before = shown[: len(shown) - len(recorded)]
    assert before == "" or "reading" in before, before
    assert squeeze(Screen().feed(recorded).text) == squeeze(oneshot(1).stdout)


def test_asciinema_plays_the_cast(recorded, shared_env, tmp_path):
    player = shutil.which("asciinema", path=str(Path(sys.executable).parent)) or shutil.which("asciinema")
    if player is None:
        pytest.skip("no asciinema player (pip install asciinema)")
    recording = recorded(".cast")
    shown = on_a_terminal(
        player, ["play", "--speed", "20", str(recording.path)], shared_env | {"HOME": str(tmp_path)}, SIZE[::-1]
    )
    assert squeeze(Screen().feed(shown).text) == squeeze(recording.answer)


# -- SVG -----------------------------------------------------------------------------------------------------------


def svg_frames(path: Path) -> list[tuple[float, list[str]]]:
    """(time, text of each row) per frame; blank runs are left out of the rows, so compare them squeezed."""
    root = ET.parse(path).getroot()
    return [
        (float(group.get("data-t")), ["".join(row.itertext()) for row in group.iter(f"{SVG}text")])
        for group in root.iter(f"{SVG}g")
        if group.get("class") == "frame"
    ]


def test_the_svg_is_self_contained_css_animation(recorded):
    text = recorded(".svg").path.read_text(encoding="utf-8")
    root = ET.fromstring(text)
    assert root.tag == f"{SVG}svg"
    assert not list(root.iter(f"{SVG}script")) and "<script" not in text
    assert "http" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing to fetch
    assert "@keyframes" in text


def test_every_svg_frame_shows_that_moment_of_the_live_view(recorded):
    recording = recorded(".svg")
    expected = {picture.t: picture for picture in pictures(recording.records)}
    frames = svg_frames(recording.path)
    steps = {record["t"] for record in recording.records if record["type"] == "step"}
    assert steps <= {t for t, _ in frames}, "a step of the run is missing from the animation"
    for t, rows in frames:
        picture = expected[t]
        assert without_rate(rows[-2]) == picture.status and squeeze(rows[-1]) == squeeze(LEGEND)
        assert squeeze("".join(rows[:-2])) == squeeze(picture.said + picture.canvas)
    assert squeeze("".join(frames[-1][1][:-2])) == squeeze(recording.answer)


# -- HTML ----------------------------------------------------------------------------------------------------------


def page_data(path: Path) -> dict:
    found = re.search(r'<script type="application/json" id="data">(.*?)</script>', path.read_text(), re.DOTALL)
    assert found, "no frame data in the page"
    return json.loads(found.group(1))


def test_the_page_holds_every_frame_with_its_token_states(recorded):
    recording = recorded(".html")
    text = recording.path.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text), "the page fetches something"
    data = page_data(recording.path)
    records = recording.records
    assert len(data["frames"]) == len(records)  # a frame per event
    for (t, said_runs, status, ids, states, held), picture, record in zip(
        data["frames"], pictures(records), records, strict=True
    ):
        assert t == picture.t and (without_rate(status) if status else status) == picture.status
        assert "".join(text for text, _ in data["said"][:said_runs]) == picture.said
        assert "".join(data["vocab"][str(token)] for token in ids) == picture.canvas
        if record["type"] != "step":
            continue
        assert ids == record["ids"]
        named = [data["states"][int(state)] for state in states]
        for state, accepted, steady in zip(named, record["accepted"], held, strict=True):
            assert state != "accepted" or accepted  # green: accepted this step
            assert state != "settled" or steady >= 3  # plain: unchanged for SETTLED_STEPS
            assert state != "unresolved" or (not accepted and steady < 3)


# -- a real browser ------------------------------------------------------------------------------------------------


def chromium(page: Path, tmp_path: Path, *flags: str) -> tuple[str, list[str]]:
    """Chromium's DOM of `page` after it loaded, and the console messages it logged."""
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            "--enable-logging=stderr",
            "--v=0",
            *flags,
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout, [line for line in result.stderr.splitlines() if ":CONSOLE" in line]


@needs_chromium
def test_chromium_plays_the_page_to_the_final_answer(recorded, tmp_path):
    recording = recorded(".html")
    # Virtual time runs the player's timers at once: the page plays through and stops on the last frame.
    dom, console = chromium(recording.path, tmp_path, "--virtual-time-budget=60000")
    assert console == []
    frames = len(page_data(recording.path)["frames"])
    assert f"frame {frames}/{frames}" in dom
    said = re.search(r'<span id="said">(.*?)</span><span id="canvas">', dom, re.DOTALL)
    assert said and squeeze(html.unescape(re.sub(r"<[^>]+>", "", said.group(1)))) == squeeze(recording.answer)


SEEK = """<script>
const strip = document.getElementById("strip");
const frames = [...document.querySelectorAll("g.frame")];
const width = parseFloat(document.querySelector("svg").getAttribute("width"));
const [animation] = document.getAnimations();
animation.pause();
const shownAt = (ms) => {
  animation.currentTime = ms;
  return Math.round(-new DOMMatrix(getComputedStyle(strip).transform).m41 / width);
};
const times = frames.map((g) => 1000 * parseFloat(g.dataset.t));
const shown = times.map((t, k) => shownAt(k + 1 < times.length ? (t + times[k + 1]) / 2 : t + 1000));
const result = document.createElement("pre");
result.id = "result";
result.textContent = JSON.stringify({shown, frames: frames.length, animations: document.getAnimations().length});
document.body.append(result);
</script>"""


@needs_chromium
def test_chromium_animates_the_svg_frame_by_frame(recorded, tmp_path):
    recording = recorded(".svg")
    dom, console = chromium(recording.path, tmp_path)
    assert console == [] and "parsererror" not in dom and "<svg" in dom
    # The same SVG inline in a page that seeks its CSS animation to each frame's time and reads which is shown.
    page = tmp_path / "seek.html"
    page.write_text(f"<!DOCTYPE html><html><body>{recording.path.read_text()}{SEEK}</body></html>")
    dom, console = chromium(page, tmp_path)
    assert console == []
    result = json.loads(re.search(r'<pre id="result">(.*?)</pre>', dom).group(1))
    assert result["animations"] == 1
    assert result["shown"] == list(range(result["frames"]))  # each frame in its turn; the answer last


# -- replay ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", FORMATS)
def test_replaying_the_frames_makes_the_same_recording(recorded, env, tmp_path, suffix):
    recording = recorded(suffix)
    replayed = tmp_path / f"replayed{suffix}"
    result = ok(dgemma(env, "replay", str(frames_file(recording)), "--record", str(replayed)))
    assert result.stdout == result.stderr == ""
    assert replayed.read_bytes() == recording.path.read_bytes()


def test_replay_speed_changes_when_frames_show_not_what_they_show(recorded, env, tmp_path):
    recording = recorded(".svg")
    slow = tmp_path / "slow.svg"
    ok(dgemma(env, "replay", str(frames_file(recording)), "--record", str(slow), "--speed", "0.5"))
    live, replayed = svg_frames(recording.path), svg_frames(slow)
    assert [rows for _, rows in replayed] == [rows for _, rows in live]  # the tok/s drawn too
    assert [t for t, _ in replayed] == pytest.approx([2 * t for t, _ in live], abs=1e-5)


def test_the_servers_frames_replay_to_the_same_animation(model, recorded, shared_env, tmp_path):
    log = tmp_path / "serve.txt"
    with log.open("w") as err:
        server = subprocess.Popen(
            [DGEMMA, "serve", "--port", "0", "--model", str(model)],
            env=shared_env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (url := re.search(r"on (http://127\.0\.0\.1:\d+)", log.read_text())):
            assert server.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        body = {"prompt": PROMPT, "frames": True, "options": {"seed": 1, "num_predict": 32}}
        with httpx.Client(base_url=url.group(1), timeout=TIMEOUT) as http:
            streamed = http.post("/api/generate", json=body)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert streamed.status_code == 200, streamed.text
    stream = tmp_path / "server.ndjson"
    stream.write_text(streamed.text)

    # The server's step objects carry no token texts: the model's tokenizer decodes them.
    error = assert_one_line_error(dgemma(shared_env, "replay", str(stream), "--record", str(tmp_path / "x.svg")), 1)
    assert "--model" in error
    ok(dgemma(shared_env, "replay", str(stream), "--record", str(tmp_path / "server.svg"), "--model", str(model)))
    from_run = tmp_path / "run.svg"
    ok(dgemma(shared_env, "replay", str(frames_file(recorded(".svg"))), "--record", str(from_run)))

    def without_rates(frames: list[tuple[float, list[str]]]) -> list[list[str]]:
        return [[re.sub(r" · \d+ tok/s$", "", row) for row in rows] for _, rows in frames]  # times differ

    assert without_rates(svg_frames(tmp_path / "server.svg")) == without_rates(svg_frames(from_run))


# -- refusals --------------------------------------------------------------------------------------------------------


def test_an_unknown_format_is_refused_before_the_model_loads(env, tmp_path):
    result = dgemma(env, "run", "no-such-model", PROMPT, "--record", str(tmp_path / "out.gif"))
    assert "out.gif" in assert_one_line_error(result, 2)
    assert not (tmp_path / "out.gif").exists()


@pytest.mark.parametrize("target", ["missing-folder/out.svg", "a-folder.cast"])
def test_an_unwritable_target_is_refused_before_the_model_loads(env, tmp_path, target):
    (tmp_path / "a-folder.cast").mkdir()
    result = dgemma(env, "run", "no-such-model", PROMPT, "--record", str(tmp_path / target))
    assert assert_one_line_error(result, 1).endswith(str(tmp_path / target))  # the OS's reason, then the path


def test_replay_refuses_what_is_not_a_frames_stream(env, tmp_path):
    stream = tmp_path / "notes.ndjson"
    stream.write_text('{"type": "step", "canvas": 0}\n')
    assert "notes.ndjson:1" in assert_one_line_error(
        dgemma(env, "replay", str(stream), "--record", str(tmp_path / "x.html")), 1
    )
    assert not (tmp_path / "x.html").exists()

"""`dgemma run` in a pseudo-terminal (100x30, xterm-256color): the live canvas view and the chat REPL."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import pytest

from tests.support.cli import PROMPT, Screen, dgemma, ok, plain, squeeze
from tests.support.terminal import PROMPT_MARK, STATUS

pexpect = pytest.importorskip("pexpect")


def statuses(text: str) -> list[tuple[int, int, int]]:
    """The (canvas, step, max steps) status lines drawn, consecutive repeats (plain redraws) dropped."""
    found = [tuple(map(int, m)) for m in STATUS.findall(text)]
    return [s for i, s in enumerate(found) if i == 0 or s != found[i - 1]]


# -- the live view -------------------------------------------------------------------------------------------


def test_the_live_view_redraws_each_step_in_place_and_leaves_the_answer(model, shared_env, spawn):
    flags = ("--max-new-tokens", "48", "--steps", "8", "--seed", "1")
    piped = json.loads(ok(dgemma(shared_env, "run", str(model), PROMPT, *flags, "--json")).stdout)
    terminal = spawn("run", str(model), PROMPT, *flags)
    assert terminal.wait() == 0
    raw = terminal.transcript

    drawn = statuses(raw)  # every step of every canvas, in order
    expected = [(c + 1, s + 1, 8) for c, steps in enumerate(piped["stats"]["steps_per_canvas"]) for s in range(steps)]
    assert drawn == expected
    # In place: whenever a status line has just been drawn, it is the only one on the screen.
    screen, done = Screen(), 0
    for match in STATUS.finditer(raw):
        screen.feed(raw[done : match.end()])
        done = match.end()
        assert len(STATUS.findall(screen.text)) == 1, screen.text
    assert "\x1b[1A" in raw and "\x1b[2K" in raw  # by moving up and erasing
    # The cursor is hidden while drawing and shown again at the end.
    assert raw.index("\x1b[?25l") < raw.index("canvas 1 · step 1/8") < raw.rindex("\x1b[?25h")
    # Once the live region is gone, the answer is what stays on the screen.
    final = screen.feed(raw[done:]).text
    assert squeeze(final) == squeeze(piped["answer"]), final
    assert "unresolved" not in final  # the legend went with the canvas


def test_ctrl_c_stops_a_one_shot_answer_and_leaves_the_terminal_sane(model, spawn):
    terminal = spawn("run", str(model), PROMPT, "--max-new-tokens", "2048", "--seed", "1")
    if terminal.expect(r"canvas 2 · step", pexpect.EOF) == 1:
        pytest.skip("the random model stopped at an end-of-turn token before canvas 2")
    terminal.child.sendintr()
    assert terminal.wait() == 130
    raw = terminal.transcript
    assert raw.rindex("\x1b[?25h") > raw.rindex("\x1b[?25l")  # the cursor is back
    assert "Traceback" not in raw and "KeyboardInterrupt" not in raw
    final = Screen().feed(raw).text
    assert not STATUS.search(final) and "unresolved" not in final  # the live region is gone ...
    assert squeeze(final), "what was said before Ctrl-C is gone"  # ... what was said stays


def test_the_live_canvas_never_writes_a_raw_escape_character(model, spawn):
    seed = seed_drawing(model, "\x1b")
    terminal = spawn("run", str(model), PROMPT, "--max-new-tokens", "32", "--seed", str(seed))
    assert terminal.wait() == 0
    assert "\x1b" not in plain(terminal.transcript)  # every ESC left begins a real escape sequence


def seed_drawing(model, text: str) -> int:
    """A seed whose canvas, at some step, shows a token that decodes to `text` under the default sampler: found
    in-process with the same runtime and options the CLI uses, then proved on the executable."""
    import dgemma_runtime

    from dgemma_cli.app import generation_options

    engine = dgemma_runtime.load(model, device="auto", dtype="auto")
    tokenizer = engine.tokenizer
    wanted = {i for i in range(tokenizer.vocab_size) if tokenizer.decode([i], skip_special_tokens=False) == text}
    prompt = tokenizer.chat([dgemma_runtime.Message("user", PROMPT)])
    for seed in range(200):
        options = generation_options(None, None, None, None, seed, 32)
        for event in engine.stream(prompt, options=options):
            if isinstance(event, dgemma_runtime.StepEvent) and wanted & set(event.ids):
                return seed
    pytest.skip(f"no seed below 200 draws {text!r}")


# -- the chat REPL -------------------------------------------------------------------------------------------


def test_the_repl_answers_takes_parameters_and_exits_on_bye(model, spawn, oneshot):
    terminal = spawn("run", str(model), "--max-new-tokens", "32", "--seed", "1")
    terminal.expect(PROMPT_MARK)

    first = terminal.ask(PROMPT)
    assert {max_steps for _, _, max_steps in statuses(first)} == {8}

    terminal.say("/set parameter steps 4", re.escape("Set parameter 'steps' to '4'."))
    terminal.expect(PROMPT_MARK)
    second = terminal.ask("Tell me another one")
    assert statuses(second) and {max_steps for _, _, max_steps in statuses(second)} == {4}

    terminal.say("/show parameters", r"max_denoising_steps\s+4\s")
    terminal.expect(PROMPT_MARK)
    terminal.child.sendline("/bye")
    assert terminal.wait() == 0

    screen = Screen().feed(terminal.transcript).text
    assert screen.startswith(f"{PROMPT_MARK}{PROMPT}\n"), screen
    assert squeeze(oneshot(1).stdout) in squeeze(screen)  # the first turn is the one-shot answer
    assert "max_new_tokens        32" in screen
    assert screen.endswith(f"{PROMPT_MARK}/bye")
    assert not STATUS.search(screen) and "unresolved" not in screen  # no live region left behind


def test_load_in_the_repl_keeps_the_command_line_settings(model, spawn):
    """/load takes the next model the way the command line loaded the first: here quantized to NVFP4."""
    terminal = spawn("run", str(model), "--quant", "nvfp4", "--verbose", "--max-new-tokens", "16")
    terminal.expect(PROMPT_MARK)
    terminal.say(f"/load {model}", re.escape(f"Loading model '{model}'"))
    terminal.expect(PROMPT_MARK)
    answer = terminal.ask(PROMPT)
    assert "quantization" in answer and "nvfp4 (quantized while loading)" in answer
    terminal.child.sendline("/bye")
    assert terminal.wait() == 0


@dataclass
class Interrupted:
    stopped: bool  # Ctrl-C came while the answer was still being written
    transcript: str
    screen: list[str]  # the lines on the terminal at the end
    exit_status: int  # after Ctrl-D at the prompt


@pytest.fixture(scope="module")
def interrupted(model, spawn) -> Interrupted:
    """A chat: a long answer, Ctrl-C in its third canvas (if it gets there), then Ctrl-D at the prompt."""
    terminal = spawn("run", str(model), "--max-new-tokens", "2048", "--seed", "1")
    terminal.expect(PROMPT_MARK)
    terminal.child.sendline(PROMPT)
    terminal.expect(STATUS.pattern)
    stopped = terminal.expect(r"canvas 3 · step", PROMPT_MARK) == 0  # may end early at a random EOS
    if stopped:
        terminal.child.sendintr()
        terminal.expect(PROMPT_MARK)
    terminal.child.sendeof()
    status = terminal.wait()
    screen = Screen().feed(terminal.transcript).text.splitlines()
    return Interrupted(stopped, terminal.transcript, screen, status)


def test_ctrl_c_returns_to_the_prompt_and_ctrl_d_exits(interrupted):
    assert interrupted.screen[0] == PROMPT_MARK + PROMPT
    assert interrupted.screen[-1].startswith(PROMPT_MARK)  # back at the prompt
    assert not any(STATUS.search(line) for line in interrupted.screen)
    if interrupted.stopped:
        assert "(stopped)" in interrupted.screen
        stopped_at = interrupted.screen.index("(stopped)")
        assert stopped_at > 1 and squeeze(interrupted.screen[stopped_at - 1])  # what was said stays above it
    assert "Traceback" not in interrupted.transcript
    assert interrupted.exit_status == 0


def test_ctrl_c_leaves_the_answer_on_screen_once(interrupted):
    if not interrupted.stopped:
        pytest.skip("the answer ended before Ctrl-C")
    said = interrupted.screen[1 : interrupted.screen.index("(stopped)")]
    after = interrupted.screen[interrupted.screen.index("(stopped)") + 1 :]
    assert len(after) == 1 and after[0].startswith(PROMPT_MARK), f"printed again after '(stopped)': {after}"
    assert squeeze("".join(said)), "nothing of the answer is left"

"""The chat REPL on a pseudo-terminal: bare /set, /show and /load print their usage, a wrong /set parameter names
the valid ones, Ctrl-C at an empty prompt says how to leave, and Up brings back a \"\"\" message of several lines
whole."""

from __future__ import annotations

import re

from dgemma_runtime import OPTION_NAMES

from tests.support.cli import FAST, Screen
from tests.support.terminal import PROMPT_MARK, STATUS, Terminal

UP = "\x1b[A"
HINT = "Use Ctrl + d or /bye to exit."


def test_the_repl_helps_and_keeps_a_multiline_message_whole(model, shared_env):
    terminal = Terminal(shared_env, "run", str(model), *FAST, "--seed", "1")
    try:
        terminal.expect(PROMPT_MARK)
        for command, usage in (
            ("/set", "/set parameter NAME VALUE"),
            ("/show", "/show info | parameters | system"),
            ("/load", "/load MODEL"),
            ("/set parameter steps", "Usage: /set parameter NAME VALUE, where NAME is one of: "),
        ):
            said = terminal.say(command, re.escape(usage))
            terminal.expect(PROMPT_MARK)
            assert "Unknown command" not in said, said
        said = terminal.say("/set parameter bogus 1", "the options are")
        terminal.expect(PROMPT_MARK)
        listed = Screen().feed(terminal.since(terminal.transcript.rindex("bogus"))).text.replace("\n", "")
        assert all(name in listed for name in OPTION_NAMES), listed

        start = terminal.mark()
        terminal.child.sendintr()  # at an empty prompt: how to leave
        terminal.expect(re.escape(HINT))
        terminal.expect(PROMPT_MARK)
        terminal.child.send("half a thought")
        terminal.child.sendintr()  # on a line being written: it is cleared, nothing said
        terminal.expect(PROMPT_MARK)
        assert terminal.since(start).count(HINT) == 1

        terminal.child.sendline('"""Tell me a story')
        terminal.expect(re.escape("..."))  # the message goes on
        terminal.child.sendline('about a fox"""')
        terminal.expect(STATUS.pattern)
        terminal.expect(PROMPT_MARK)
        terminal.child.send(UP)  # the whole message, both lines, as one history entry
        terminal.expect("about a fox")
        terminal.child.send("\r")
        terminal.expect(STATUS.pattern)
        terminal.expect(PROMPT_MARK)
        terminal.child.sendline("/bye")
        assert terminal.wait() == 0
    finally:
        terminal.kill()
    screen = Screen().feed(terminal.transcript).text.splitlines()
    asked = [i for i, line in enumerate(screen) if line == f'{PROMPT_MARK}"""Tell me a story']
    assert len(asked) == 2, screen
    assert all(screen[i + 1] == '... about a fox"""' for i in asked), screen
